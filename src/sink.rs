//! Token sinks: files that always hold an account's current access token, for jobs that
//! would rather read a file than speak HTTP.
//!
//! After every new token (a refresh, an import, a connect) each of the account's sinks is
//! rewritten atomically: a temporary file in the same directory, written, given its mode
//! (and owner and group, where configured), fsynced, renamed over the old one, and the
//! directory fsynced. A reader sees the old file or the new one, never a part. An account that
//! cannot refresh (`needs_reauth`, an outage) leaves its sinks as they were.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Observer, ServedToken};
use crate::token::AccountName;

/// What a sink file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The bare token, no newline: `Authorization: Bearer $(cat FILE)`.
    Raw,
    /// `{"access_token", "token_type", "expires_at", "scope"}`.
    Json,
    /// `VAR=token` and `VAR_EXPIRES_AT=…` lines, for `EnvironmentFile=` and `. FILE`.
    Env,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "raw" => Ok(Self::Raw),
            "json" => Ok(Self::Json),
            "env" => Ok(Self::Env),
            other => Err(format!("unknown sink format {other:?} (raw, json or env)")),
        }
    }
}

/// One sink, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The account whose token it holds.
    pub account: AccountName,
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner's uid, if it should not be ours (needs root).
    pub owner: Option<u32>,
    /// Its group's gid, if it should not be ours.
    pub group: Option<u32>,
}

/// A sink that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write token sink {path}: {reason}", path = .path.display())]
pub struct SinkError {
    path: PathBuf,
    reason: std::io::Error,
}

/// Where the sinks are read from: the configuration in force, which a reload replaces whole
/// (the daemon keeps them in its one runtime value).
pub trait Targets: Send + Sync + std::fmt::Debug {
    /// Every configured sink.
    fn sinks(&self) -> Arc<[Config]>;
}

/// Every configured sink, kept current: the broker tells it of new tokens (it is an
/// [`Observer`]), and [`run`] rewrites the files.
#[derive(Debug)]
pub struct Sinks {
    targets: Arc<dyn Targets>,
    changed: mpsc::UnboundedSender<AccountName>,
}

/// The receiving end, for [`run`].
#[derive(Debug)]
pub struct Changes(mpsc::UnboundedReceiver<AccountName>);

impl Sinks {
    /// The sinks `targets` names, and the queue of accounts whose sinks need writing.
    pub fn new(targets: Arc<dyn Targets>) -> (Arc<Self>, Changes) {
        let (changed, receiver) = mpsc::unbounded_channel();
        let sinks = Arc::new(Self { targets, changed });
        (sinks, Changes(receiver))
    }

    /// Queues a write of every sink whose account holds a token (at start-up, and after a
    /// reload).
    pub fn write_all(&self) {
        for account in self.accounts() {
            let _ = self.changed.send(account);
        }
    }

    fn accounts(&self) -> Vec<AccountName> {
        let mut accounts: Vec<AccountName> =
            self.configs().iter().map(|c| c.account.clone()).collect();
        accounts.sort();
        accounts.dedup();
        accounts
    }

    /// The sinks of `account`.
    fn of(&self, account: &AccountName) -> Vec<Config> {
        self.configs()
            .iter()
            .filter(|sink| &sink.account == account)
            .cloned()
            .collect()
    }

    fn configs(&self) -> Arc<[Config]> {
        self.targets.sinks()
    }
}

impl Observer for Sinks {
    fn token_changed(&self, account: &AccountName) {
        let has_sinks = self.configs().iter().any(|sink| &sink.account == account);
        if has_sinks {
            // The receiver lives as long as the daemon; after it, nothing needs writing.
            let _ = self.changed.send(account.clone());
        }
    }
}

/// Writes sinks as their accounts get new tokens, until `cancel` fires. An account that has
/// no valid token (it needs re-auth, or its token expired in an outage) is left as it was.
pub async fn run(
    sinks: Arc<Sinks>,
    broker: Broker,
    mut changes: Changes,
    cancel: CancellationToken,
) {
    loop {
        let Some(Some(account)) = cancel.run_until_cancelled(changes.0.recv()).await else {
            return;
        };
        let configs = sinks.of(&account);
        let token = match broker.current_token(&account, Some(Duration::ZERO)).await {
            Ok(Some(token)) => token,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(account = %account, error = %error, "token sinks not written: the token could not be read; they keep the previous token");
                continue;
            }
        };
        let written = tokio::task::spawn_blocking(move || {
            configs
                .iter()
                .map(|sink| (sink.path.clone(), write(sink, &token)))
                .collect::<Vec<_>>()
        })
        .await;
        let written = written.unwrap_or_else(|_| {
            tracing::error!(account = %account, "the token sink writer failed; the sinks keep their previous token");
            Vec::new()
        });
        for (path, result) in written {
            match result {
                Ok(()) => {
                    tracing::debug!(account = %account, path = %path.display(), "token sink written")
                }
                Err(error) => {
                    tracing::error!(account = %account, error = %error, "token sink not written; it keeps the previous token")
                }
            }
        }
    }
}

/// Rewrites `sink` with `token`, atomically. Blocking: call it from a blocking thread.
///
/// # Errors
/// The directory is missing or not writable, the disk is full, or the owner or group cannot
/// be set. The old file is then left in place.
pub fn write(sink: &Config, token: &ServedToken) -> Result<(), SinkError> {
    let failed = |reason| SinkError {
        path: sink.path.clone(),
        reason,
    };
    let contents = render(sink, token);
    let dir = match sink.path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".tokenbroker-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    fill(temporary.as_file_mut(), &contents, sink).map_err(failed)?;
    temporary
        .persist(&sink.path)
        .map_err(|error| failed(error.error))?;
    // The rename itself reaches the disk only with the directory.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)
}

/// Writes the new file's contents, owner, group and mode, and makes them durable.
fn fill(file: &mut File, contents: &[u8], sink: &Config) -> std::io::Result<()> {
    file.write_all(contents)?;
    if sink.owner.is_some() || sink.group.is_some() {
        std::os::unix::fs::fchown(&*file, sink.owner, sink.group)?;
    }
    file.set_permissions(fs::Permissions::from_mode(sink.mode))?;
    file.sync_all()
}

/// The file's contents for `token`.
fn render(sink: &Config, served: &ServedToken) -> Vec<u8> {
    let token = &served.token;
    match sink.format {
        Format::Raw => token.access_token.expose().as_bytes().to_vec(),
        Format::Json => {
            // The API's token JSON, with the seconds left when the file was written.
            let mut json = served.json();
            json.push(b'\n');
            json
        }
        Format::Env => {
            let expires_at = humantime::format_rfc3339_seconds(token.expires_at);
            let variable = sink.account.token_variable();
            let mut text = String::new();
            let _ = writeln!(
                text,
                "{variable}={}",
                shell_quoted(token.access_token.expose())
            );
            let _ = writeln!(text, "{variable}_EXPIRES_AT={expires_at}");
            text.into_bytes()
        }
    }
}

/// The value as is when it needs no quoting (the usual token alphabet), else single-quoted.
fn shell_quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~+/=:-".contains(&b));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::secret::AccessToken;
    use crate::token::IssuedToken;

    fn token(value: &str) -> ServedToken {
        ServedToken {
            token: IssuedToken::new(
                AccessToken::new(value),
                "Bearer".into(),
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                Duration::from_secs(14_400),
                Some("files.read".into()),
            ),
            expires_in: Duration::from_secs(100),
        }
    }

    fn sink(dir: &Path, format: Format, mode: u32) -> Config {
        Config {
            account: "dropbox-main".parse().unwrap(),
            path: dir.join("token"),
            format,
            mode,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn each_format_holds_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (Format::Raw, "sl.abc".to_owned()),
            (
                Format::Json,
                "{\"access_token\":\"sl.abc\",\"token_type\":\"Bearer\",\"expires_at\":\"2027-01-15T08:00:00Z\",\"expires_in\":100,\"scope\":\"files.read\"}\n".to_owned(),
            ),
            (
                Format::Env,
                "DROPBOX_MAIN_TOKEN=sl.abc\nDROPBOX_MAIN_TOKEN_EXPIRES_AT=2027-01-15T08:00:00Z\n"
                    .to_owned(),
            ),
        ];
        for (format, expected) in cases {
            let sink = sink(dir.path(), format, 0o640);
            write(&sink, &token("sl.abc")).unwrap();
            assert_eq!(
                fs::read_to_string(&sink.path).unwrap(),
                expected,
                "{format:?}"
            );
            let mode = fs::metadata(&sink.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "{format:?}");
        }
        // Only the sink itself is left: no temporary files.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn owner_and_group_are_set_as_root_and_refused_otherwise() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), Format::Raw, 0o640);
        sink.owner = Some(65534);
        sink.group = Some(65534);
        let written = write(&sink, &token("sl.abc"));
        if rustix::process::geteuid().is_root() {
            written.unwrap();
            let metadata = fs::metadata(&sink.path).unwrap();
            assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
        } else {
            let error = written.unwrap_err();
            assert!(error.to_string().contains("not permitted"), "{error}");
            assert!(!sink.path.exists());
        }
    }

    #[test]
    fn unusual_tokens_are_quoted_for_the_shell() {
        assert_eq!(shell_quoted("a.b-c_d~e+f/g=="), "a.b-c_d~e+f/g==");
        assert_eq!(shell_quoted("a b"), "'a b'");
        assert_eq!(shell_quoted("it's$x"), r"'it'\''s$x'");
    }

    #[test]
    fn a_failed_write_says_which_file_and_leaves_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let missing = sink(&dir.path().join("missing"), Format::Raw, 0o600);
        let error = write(&missing, &token("new-secret-token")).unwrap_err();
        assert!(error.to_string().contains("missing/token"), "{error}");
        assert!(!error.to_string().contains("new-secret-token"));
        // The rename fails (a non-empty directory is in the way, even for root): what was
        // there stays, and no temporary file is left behind.
        let blocked = sink(dir.path(), Format::Raw, 0o600);
        fs::create_dir(&blocked.path).unwrap();
        fs::write(blocked.path.join("keep"), "old").unwrap();
        assert!(write(&blocked, &token("new-secret-token")).is_err());
        assert_eq!(
            fs::read_to_string(blocked.path.join("keep")).unwrap(),
            "old"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
