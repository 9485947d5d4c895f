//! `tokenbroker exec`: run a command with an account's token, in its environment or, with
//! `--file`, in a private file kept fresh while the command runs (signals passed on).

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::api::types::TokenBody;
use crate::config::Env;
use crate::token::AccountName;

use super::args::Command;
use super::client::{segment, Client};

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
