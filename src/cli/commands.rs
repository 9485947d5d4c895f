//! What each client command does (`token`, `accounts`, `wait`, `probe`, `import`,
//! `refresh`, `remove`, `rekey`, `man`; `exec` and `connect` have modules of their own), and
//! printing their results.

use std::io::Read as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context as _};

use crate::api::types::{AccountBody, AccountsBody, ImportBody, TokenBody, MAX_PAGE};
use crate::clock::{Clock, SystemClock};
use crate::config::Env;
use crate::token::AccountName;

use super::args::{Cli, Command};
use super::client::{segment, Client};

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
            super::connect::connect(&client, &name, &provider, no_redirect, device).await?;
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
        Command::Serve { .. }
        | Command::CheckConfig { .. }
        | Command::Exec { .. }
        | Command::Store { .. } => {
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
}
