//! What each client command does: `exec`, `token`, `accounts`, `import`, `connect`,
//! `refresh`, `remove`, `man`, and printing their results.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};

use crate::api::types::{
    AccountBody, AccountsBody, ConnectBody, ConnectRequest, ConnectStatusBody, ImportBody,
    TokenBody, MAX_PAGE,
};
use crate::clock::{Clock, SystemClock};
use crate::config::Env;
use crate::token::AccountName;

use super::args::{Cli, Command};
use super::client::Client;

/// Standard output was closed by its reader (`tokenbroker man | head`): the command ends
/// quietly and successfully, as Unix tools do, instead of panicking in `println!`.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes `bytes` to standard output; a closed pipe becomes [`StdoutClosed`].
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(error) => Err(error).context("while writing to standard output"),
    }
}

/// `exec` could not get the account's token, so the command was never started; told apart
/// from the command's own failures by its exit status, [`NoToken::EXIT_STATUS`].
#[derive(Debug, thiserror::Error)]
#[error("no token for the command, which was not started: {0:#}")]
pub struct NoToken(anyhow::Error);

impl NoToken {
    /// `EX_UNAVAILABLE` from sysexits.h.
    pub const EXIT_STATUS: u8 = 69;
}

/// `tokenbroker exec`: fetches a token, runs the command with it, and returns the command's
/// exit status (128 + the signal's number if a signal ended it). With `--file`, the token
/// is in a private file that is kept fresh while the command runs.
///
/// # Errors
/// [`NoToken`] if the token cannot be had; the command cannot be started.
pub async fn exec(command: Command, env: &Env) -> anyhow::Result<u8> {
    let Command::Exec {
        account,
        env: variable,
        min_valid,
        file,
        command,
        daemon,
    } = command
    else {
        bail!("not the exec command");
    };
    let name: AccountName = account
        .parse()
        .map_err(|error| anyhow::anyhow!("{account:?}: {error}"))?;
    let client = Client::new(&daemon, env)?;
    let query = min_valid
        .map(|d| format!("?min_valid={}", d.as_secs()))
        .unwrap_or_default();
    let path = format!("/v1/token/{}{query}", segment(&account));
    let token: TokenBody = client
        .call(reqwest::Method::GET, &path, None)
        .await
        .map_err(NoToken)?;
    let (program, arguments) = command.split_first().expect("clap requires a command");
    let mut child = tokio::process::Command::new(program);
    child.args(arguments);
    let status = if file {
        let kept = TokenFile::create(&token)?;
        child
            .env("BEARER_TOKEN_FILE", kept.path())
            .env(format!("{}_FILE", name.token_variable()), kept.path());
        // Caught from before the command starts, so that none can end `exec` instead.
        let signals = PASSED_ON
            .iter()
            .map(|passed| {
                let kind = tokio::signal::unix::SignalKind::from_raw(passed.as_raw());
                Ok((*passed, tokio::signal::unix::signal(kind)?))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let child = child
            .spawn()
            .with_context(|| format!("while starting {}", program.to_string_lossy()))?;
        let status = keep_fresh(child, signals, &kept, &client, &path, token).await?;
        drop(kept);
        status
    } else {
        let variable = variable.unwrap_or_else(|| name.token_variable());
        child
            .env(&variable, &token.access_token)
            .status()
            .await
            .with_context(|| format!("while starting {}", program.to_string_lossy()))?
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(u8::try_from(code).unwrap_or(1))
}

/// A token file only its owner can read, in a directory of its own; removed when dropped.
struct TokenFile {
    dir: tempfile::TempDir,
}

impl TokenFile {
    fn create(token: &TokenBody) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("tokenbroker-exec-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .with_context(|| format!("while making a private directory in {}", base.display()))?;
        let file = Self { dir };
        file.write(token)?;
        Ok(file)
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("token")
    }

    /// Replaces the file's token, atomically: a reader sees the old one or the new one.
    fn write(&self, token: &TokenBody) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let mut temporary = tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(self.dir.path())
            .context("while writing the token file")?;
        temporary
            .write_all(token.access_token.as_bytes())
            .and_then(|()| temporary.as_file().sync_all())
            .context("while writing the token file")?;
        temporary
            .persist(self.path())
            .context("while writing the token file")?;
        Ok(())
    }
}

/// The signals `exec --file` passes on to its command.
const PASSED_ON: [rustix::process::Signal; 6] = {
    use rustix::process::Signal;
    [
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::QUIT,
        Signal::USR1,
        Signal::USR2,
    ]
};

/// Waits for `child`, rewriting `file` with a new token from `path` whenever the one in it
/// has used up half the time it had left when fetched, and passing on the signals `exec`
/// gets. A failure to get a new token is reported and retried; the file keeps the
/// token it has meanwhile.
async fn keep_fresh(
    mut child: tokio::process::Child,
    mut signals: Vec<(rustix::process::Signal, tokio::signal::unix::Signal)>,
    file: &TokenFile,
    client: &Client,
    path: &str,
    mut token: TokenBody,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut next = renewal(token.expires_in);
    loop {
        let received =
            futures_util::future::select_all(signals.iter_mut().map(|(passed, stream)| {
                Box::pin(async move { stream.recv().await.map(|()| *passed) })
            }));
        tokio::select! {
            status = child.wait() => return Ok(status?),
            (passed, _, _) = received => {
                let pid = child
                    .id()
                    .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
                if let (Some(passed), Some(pid)) = (passed, pid) {
                    // The command may just have exited: then there is no one to tell.
                    let _ = rustix::process::kill_process(pid, passed);
                }
            }
            () = tokio::time::sleep(next) => {
                match client.call::<TokenBody>(reqwest::Method::GET, path, None).await {
                    Ok(fresh) => {
                        file.write(&fresh)?;
                        next = renewal(fresh.expires_in);
                        token = fresh;
                    }
                    Err(error) => {
                        eprintln!("tokenbroker exec: the token file keeps its token ({}s left): {error:#}", token.expires_in);
                        next = Duration::from_secs(5);
                    }
                }
            }
        }
    }
}

/// When to fetch the next token for a file whose token has `expires_in` seconds left: at
/// half of it, and never more often than once a second.
fn renewal(expires_in: u64) -> Duration {
    Duration::from_secs(expires_in / 2).max(Duration::from_secs(1))
}

/// Runs a client command against the daemon.
///
/// # Errors
/// The daemon cannot be reached or answered with an error.
pub async fn run_client(command: Command, env: &Env) -> anyhow::Result<()> {
    match command {
        Command::Accounts {
            json,
            status,
            name,
            limit,
            daemon,
        } => {
            let client = Client::new(&daemon, env)?;
            let body = list_accounts(&client, status, name, limit).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                write_stdout(accounts_table(&body.accounts, SystemClock.now()).as_bytes())?;
            }
        }
        Command::Wait {
            name,
            timeout,
            min_valid,
            daemon,
        } => {
            // A name that cannot exist never becomes ready: no reason to wait for it.
            name.parse::<AccountName>()
                .map_err(|error| anyhow::anyhow!("{name:?}: {error}"))?;
            let client = Client::new(&daemon, env)?;
            client.wait_ready(&name, timeout, min_valid).await?;
            say!("{name} is ready");
        }
        Command::Probe { route, daemon } => {
            let client = Client::new(&daemon, env)?;
            let body = client.health(&route).await?;
            say!("{}", body.status);
        }
        Command::Token {
            name,
            min_valid,
            json,
            daemon,
        } => {
            let client = Client::new(&daemon, env)?;
            let query = min_valid
                .map(|d| format!("?min_valid={}", d.as_secs()))
                .unwrap_or_default();
            let body: TokenBody = client
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/token/{}{query}", segment(&name)),
                    None,
                )
                .await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                say!("{}", body.access_token);
            }
        }
        Command::Import {
            name,
            provider,
            refresh_token_file,
            refresh_token_stdin: _,
            daemon,
        } => {
            let refresh_token = read_refresh_token(refresh_token_file.as_deref())?;
            let client = Client::new(&daemon, env)?;
            let body = ImportBody {
                provider,
                refresh_token,
            };
            let account: AccountBody = client
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/accounts/{}", segment(&name)),
                    Some(serde_json::to_value(&body)?),
                )
                .await?;
            report(&account)?;
        }
        Command::Refresh { name, daemon } => {
            let client = Client::new(&daemon, env)?;
            let account: AccountBody = client
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/accounts/{}/refresh", segment(&name)),
                    None,
                )
                .await?;
            report(&account)?;
        }
        Command::Remove {
            name,
            revoke,
            daemon,
        } => {
            let client = Client::new(&daemon, env)?;
            let query = if revoke { "?revoke=true" } else { "" };
            let path = format!("/v1/accounts/{}{query}", segment(&name));
            client.call_empty(reqwest::Method::DELETE, &path).await?;
            say!(
                "removed {name}{}",
                if revoke {
                    " (revoked at the provider)"
                } else {
                    ""
                }
            );
        }
        Command::Rekey { daemon } => {
            let client = Client::new(&daemon, env)?;
            let answer: serde_json::Value = client
                .call(reqwest::Method::POST, "/v1/admin/rekey", None)
                .await?;
            say!(
                "re-sealed {} accounts under a new store key",
                answer["resealed"]
            );
        }
        Command::Connect {
            name,
            provider,
            no_redirect,
            device,
            daemon,
        } => {
            let client = Client::new(&daemon, env)?;
            connect(&client, &name, &provider, no_redirect, device).await?;
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "tokenbroker",
                &mut script,
            );
            write_stdout(&script)?;
        }
        Command::Man { command } => write_stdout(&man_page(command.as_deref())?)?,
        Command::Serve { .. } | Command::CheckConfig { .. } | Command::Exec { .. } => {
            bail!("not a client command")
        }
    }
    Ok(())
}

/// The sections clap does not know: exit status, environment, files and examples.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
A runtime failure (the daemon unreachable, a refused request; for \fBserve\fR, a failure
at start, or a stop that could not store every grant).
.TP
2
A usage error.
.TP
78
A configuration error (EX_CONFIG); the message names the file and key. The systemd unit
does not restart on it.
.PP
\fBexec\fR exits with the command's own status (128 + the signal that ended it).
.SH ENVIRONMENT
.TP
TOKENBROKER__SECTION__KEY
Overrides any configuration key, e.g. TOKENBROKER__REFRESH__AHEAD=30m.
.TP
TOKENBROKER_SOCKET
The daemon's socket, for the client commands.
.TP
CREDENTIALS_DIRECTORY
Where relative secret files are looked up first (systemd LoadCredential=).
.TP
RUST_LOG
The log filter, as \-\-log\-level.
.TP
JOURNAL_STREAM
Set by systemd: log lines get syslog priorities and no timestamps.
.TP
NO_COLOR
No colours in logs on a terminal.
.TP
XDG_RUNTIME_DIR
Where \fBserve \-\-dev\fR puts its socket (tokenbroker\-dev.sock), and where the client
commands look for it.
.SH FILES
.TP
/etc/tokenbroker/config.toml
The configuration.
.TP
/run/tokenbroker/tokenbroker.sock
The API socket (server.socket).
.TP
/var/lib/tokenbroker
The store (store.dir): the database, its journal and the store key.
.SH EXAMPLES
.nf
tokenbroker check\-config
tokenbroker connect dropbox\-main \-\-provider dropbox
tokenbroker accounts
tokenbroker token dropbox\-main
tokenbroker exec \-\-account dropbox\-main \-\- ./backup.sh
curl \-\-unix\-socket /run/tokenbroker/tokenbroker.sock http://localhost/v1/token/dropbox\-main
.fi
.SH "SEE ALSO"
\fBtokenbroker man COMMAND\fR prints the page of each command listed above.
"#;

/// The main man page, or one command's.
fn man_page(command: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut cli = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cli.build();
    let mut page = Vec::new();
    if let Some(name) = command {
        let sub = cli
            .find_subcommand(name)
            .filter(|sub| !sub.is_hide_set())
            .ok_or_else(|| anyhow::anyhow!("no command {name:?}; `tokenbroker man` lists them"))?;
        clap_mangen::Man::new(sub.clone()).render(&mut page)?;
        return Ok(page);
    }
    let man = clap_mangen::Man::new(cli);
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// Runs a connect flow to its end, printing what the person must do.
async fn connect(
    client: &Client,
    name: &str,
    provider: &str,
    no_redirect: bool,
    device: bool,
) -> anyhow::Result<()> {
    // Listen for Ctrl-C before anything is printed, so an early one cancels the flow too.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mode = if no_redirect {
        "no_redirect"
    } else if device {
        "device"
    } else {
        "redirect"
    };
    let request = ConnectRequest {
        account: name.to_owned(),
        provider: provider.to_owned(),
        mode: Some(mode.to_owned()),
    };
    let started: ConnectBody = client
        .call(
            reqwest::Method::POST,
            "/v1/connect",
            Some(serde_json::to_value(&request)?),
        )
        .await?;
    let ticket = segment(&started.ticket);
    if let Some(url) = &started.authorize_url {
        eprintln!("1. Open this URL in a browser and approve access for {name}:");
        say!("{url}");
        eprintln!("2. Paste the code the provider shows, then press Enter:");
        let code = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await??;
        if code.trim().is_empty() {
            client
                .call_empty(reqwest::Method::DELETE, &format!("/v1/connect/{ticket}"))
                .await?;
            bail!("no code entered; nothing was connected");
        }
        let body = serde_json::json!({ "code": code.trim() });
        let status: ConnectStatusBody = client
            .call(
                reqwest::Method::POST,
                &format!("/v1/connect/{ticket}/code"),
                Some(body),
            )
            .await?;
        return connect_result(status);
    }
    if let Some(url) = &started.start_url {
        eprintln!("Open this link in a browser to connect {name} at {provider} (single use, valid until {}):", started.expires_at);
        say!("{url}");
    }
    if let (Some(code), Some(uri)) = (&started.user_code, &started.verification_uri) {
        // The provider's words: a hostile one must not reach the terminal's escape sequences.
        eprintln!(
            "On any device, go to {} and enter the code:",
            printable(uri)
        );
        say!("{}", printable(code));
        if let Some(complete) = &started.verification_uri_complete {
            eprintln!("(or open {})", printable(complete));
        }
    }
    eprintln!("Waiting for approval; press Ctrl-C to cancel.");
    loop {
        let path = format!("/v1/connect/{ticket}?wait=25");
        let poll = client.call::<ConnectStatusBody>(reqwest::Method::GET, &path, None);
        let status = tokio::select! {
            status = poll => status?,
            _ = interrupt.recv() => {
                client.call_empty(reqwest::Method::DELETE, &format!("/v1/connect/{ticket}")).await?;
                bail!("cancelled; nothing was connected");
            }
        };
        if status.status != "pending" {
            return connect_result(status);
        }
    }
}

/// `text` with what a terminal would act on (control characters, and the invisible marks
/// that reorder text) shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let reorders = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || reorders {
                '?'
            } else {
                c
            }
        })
        .collect()
}

fn connect_result(status: ConnectStatusBody) -> anyhow::Result<()> {
    match (status.status.as_str(), status.account) {
        ("connected", Some(account)) => {
            let user = printable(account.provider_user_id.as_deref().unwrap_or("unknown"));
            let expires = account.expires_at.as_deref().unwrap_or("unknown");
            say!(
                "connected {} at {} (provider user id {user}); token expires at {expires}",
                account.name,
                account.provider
            );
            Ok(())
        }
        _ => bail!(
            "not connected: {}",
            status
                .error
                .unwrap_or_else(|| "the flow ended without a result".into())
        ),
    }
}

fn report(account: &AccountBody) -> anyhow::Result<()> {
    let expires = account
        .expires_in
        .map_or_else(|| "-".to_owned(), format_secs);
    say!(
        "{}: {} (provider {}, token expires in {expires})",
        account.name,
        account.status,
        account.provider
    );
    if let Some(error) = &account.last_error {
        eprintln!("warning: {error}");
    }
    Ok(())
}

fn read_refresh_token(file: Option<&Path>) -> anyhow::Result<String> {
    let mut text = String::new();
    match file {
        Some(path) => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("while reading {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("while reading the refresh token from standard input")?;
        }
    }
    let token = text.trim();
    if token.is_empty() {
        bail!("the refresh token is empty");
    }
    Ok(token.to_owned())
}

/// An account name as a path segment: anything not in the name alphabet is escaped, so a
/// bad name reaches the daemon (and is refused there) rather than changing the path.
pub(super) fn segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Every account the filters select (up to `limit`), following the daemon's pages.
async fn list_accounts(
    client: &Client,
    status: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<AccountsBody> {
    let mut accounts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(status) = &status {
            query.append_pair("status", status);
        }
        if let Some(name) = &name {
            query.append_pair("name", name);
        }
        if let Some(limit) = limit {
            query.append_pair("limit", &(limit - accounts.len()).min(MAX_PAGE).to_string());
        }
        if let Some(after) = &after {
            query.append_pair("after", after);
        }
        let path = format!("/v1/accounts?{}", query.finish());
        let page: AccountsBody = client.call(reqwest::Method::GET, &path, None).await?;
        accounts.extend(page.accounts);
        match page.next {
            Some(next) if limit.is_none_or(|limit| accounts.len() < limit) => after = Some(next),
            _ => {
                return Ok(AccountsBody {
                    accounts,
                    next: None,
                })
            }
        }
    }
}

/// The `accounts` table.
pub fn accounts_table(accounts: &[AccountBody], now: SystemTime) -> String {
    let mut rows = vec![[
        "NAME",
        "PROVIDER",
        "STATUS",
        "EXPIRES IN",
        "LAST REFRESH",
        "GRANT ENDS IN",
        "LAST ERROR",
    ]
    .map(String::from)];
    for account in accounts {
        let last_refresh = account
            .last_refresh
            .as_deref()
            .and_then(|text| humantime::parse_rfc3339(text).ok())
            .map_or_else(
                || "-".to_owned(),
                |at| {
                    format!(
                        "{} ago",
                        format_secs(now.duration_since(at).unwrap_or_default().as_secs())
                    )
                },
            );
        rows.push([
            account.name.clone(),
            account.provider.clone(),
            account.status.clone(),
            account
                .expires_in
                .map_or_else(|| "-".to_owned(), format_secs),
            last_refresh,
            account
                .refresh_token_expires_at
                .as_deref()
                .and_then(|text| humantime::parse_rfc3339(text).ok())
                .map_or_else(
                    || "-".to_owned(),
                    |at| format_secs(at.duration_since(now).unwrap_or_default().as_secs()),
                ),
            account.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn format_secs(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        // A grant's lifetime, in days once it is two or more.
        _ if h >= 48 => format!("{}d", h / 24),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_table_aligns_and_formats_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let account = AccountBody {
            name: "dropbox-main".into(),
            provider: "dropbox".into(),
            status: "active".into(),
            expires_at: None,
            expires_in: Some(14_399),
            scope: None,
            provider_user_id: None,
            last_refresh: Some(
                humantime::format_rfc3339_seconds(now - Duration::from_secs(61)).to_string(),
            ),
            last_error: None,
            next_refresh: None,
            refresh_token_expires_at: None,
        };
        let github = AccountBody {
            name: "gh".into(),
            provider: "github".into(),
            refresh_token_expires_at: Some(
                humantime::format_rfc3339_seconds(now + Duration::from_secs(183 * 86_400))
                    .to_string(),
            ),
            ..account.clone()
        };
        let table = accounts_table(&[account, github], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NAME          PROVIDER  STATUS  EXPIRES IN  LAST REFRESH  GRANT ENDS IN  LAST ERROR"
        );
        assert_eq!(
            lines[1],
            "dropbox-main  dropbox   active  3h59m       1m01s ago     -              -"
        );
        assert_eq!(
            lines[2],
            "gh            github    active  3h59m       1m01s ago     183d           -"
        );
    }

    #[test]
    fn a_providers_text_reaches_the_terminal_without_its_escapes() {
        assert_eq!(printable("WDJB-MJHT"), "WDJB-MJHT");
        assert_eq!(
            printable("https://evil.example/\u{1b}]0;pwned\u{7}\u{1b}[2J\r\n"),
            "https://evil.example/?]0;pwned??[2J??"
        );
        assert_eq!(printable("abc\u{202e}fed"), "abc?fed");
        assert_eq!(printable("zürich ✓"), "zürich ✓");
    }

    #[test]
    fn names_cannot_change_the_request_path() {
        assert_eq!(segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(segment("ok-name.1"), "ok-name.1");
    }
}
