//! Loading the configuration: defaults < TOML file < `TOKENBROKER__SECTION__KEY` environment.
//!
//! `load` reads and validates everything (secret files included) before anything is created
//! on disk, collecting every problem into one `ConfigError` that names the file and the key.
//! The result, `Settings`, is assembled from each module's own plain `Config`.

mod notify;
mod raw;
mod resolve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::secret::RefreshToken;
use crate::token::AccountName;
use crate::{api, broker, provider, scheduler, sink, store};

/// Where the daemon looks for its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/tokenbroker/config.toml";
/// Where the socket is when nothing says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tokenbroker/tokenbroker.sock";
const ENV_PREFIX: &str = "TOKENBROKER";

/// The process environment, passed in rather than read, so tests never mutate it.
pub type Env = HashMap<String, String>;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where it came from, for messages.
    pub source: String,
    /// Listeners and clients.
    pub api: api::Config,
    /// The store.
    pub store: store::Config,
    /// Refresh policy and concurrency.
    pub broker: broker::Config,
    /// The sweep tick.
    pub scheduler: scheduler::Config,
    /// Configured providers.
    pub providers: Vec<provider::Config>,
    /// Accounts declared in the configuration.
    pub accounts: Vec<DeclaredAccount>,
    /// What `/metrics` shows of each account.
    pub metrics: crate::metrics::Detail,
    /// Who is told of account events (`[[notify]]`).
    pub notify: Vec<crate::notify::Config>,
    /// What is allowed but unwise (a secret other users can read), for the log.
    pub warnings: Vec<String>,
}

/// An account named in the configuration.
#[derive(Debug, Clone)]
pub struct DeclaredAccount {
    /// Its name.
    pub name: AccountName,
    /// Its provider.
    pub provider: String,
    /// Seeds the store when it holds no grant for this account yet.
    pub refresh_token: Option<RefreshToken>,
    /// `/readyz` fails while it has no valid token.
    pub required: bool,
    /// Files rewritten with each new token.
    pub sinks: Vec<sink::Config>,
}

/// An unusable configuration; the daemon exits with `EX_CONFIG` (78).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {}", problems.join("\n  "))]
pub struct ConfigError {
    /// The file (or "the built-in dev configuration").
    pub source_name: String,
    /// Each problem, naming its key.
    pub problems: Vec<String>,
}

/// Loads and validates the configuration file at `path` with environment overrides.
///
/// # Errors
/// A missing or unreadable file, bad TOML, unknown keys, bad values, unreadable secret files.
pub fn load(path: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let source_name = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError {
            source_name,
            problems: vec!["the configuration file does not exist or is not a file".into()],
        });
    }
    let file = config::File::from(path)
        .format(config::FileFormat::Toml)
        .required(true);
    let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
    build(file, Some(path), source_name, &base_dir, env)
}

/// Loads a configuration given as TOML text (the dev mode's built-in one), with environment
/// overrides; relative secret files resolve against `base_dir`.
///
/// # Errors
/// As `load`.
pub fn load_str(
    toml: &str,
    source_name: &str,
    base_dir: &Path,
    env: &Env,
) -> Result<Settings, ConfigError> {
    build(
        config::File::from_str(toml, config::FileFormat::Toml),
        None,
        source_name.to_owned(),
        base_dir,
        env,
    )
}

/// A parse error's message without the lines it quotes from the file (`5 | client_secret =
/// "…`): a syntax error on a line holding an inline secret must not print the secret. The
/// line and column stay, and so does what is wrong.
fn without_file_text(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let quoted = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !quoted.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file's mode if users other than ours may read it: anyone (world-readable), or a
/// group that is not our own (a file `root:tokenbroker 0640`, as the install makes the
/// configuration, is read by the daemon's group alone and is fine).
pub(crate) fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let metadata = std::fs::metadata(path).ok()?;
    let mode = metadata.permissions().mode() & 0o777;
    let ours = rustix::process::getegid().as_raw();
    let others = mode & 0o004 != 0 || (mode & 0o040 != 0 && metadata.gid() != ours);
    others.then_some(mode)
}

fn build<S>(
    file: S,
    config_path: Option<&Path>,
    source_name: String,
    base_dir: &Path,
    env: &Env,
) -> Result<Settings, ConfigError>
where
    S: config::Source + Send + Sync + 'static,
{
    let overrides: HashMap<String, String> = env
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("server.admin_uids")
        .source(Some(overrides));
    let raw = config::Config::builder()
        .add_source(file)
        .add_source(environment)
        .build()
        .and_then(|loaded| loaded.try_deserialize::<raw::Raw>())
        .map_err(|error| ConfigError {
            source_name: source_name.clone(),
            problems: vec![without_file_text(&error.to_string())],
        })?;
    let context = resolve::Context {
        base_dir: base_dir.to_owned(),
        credentials_dir: env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        warnings: std::cell::RefCell::default(),
        inline_secrets: std::cell::RefCell::default(),
    };
    resolve::settings(raw, &context)
        .map(|mut settings| {
            settings.source = source_name.clone();
            settings.warnings = context.warnings.take();
            let inline = context.inline_secrets.take();
            if let (Some(path), Some(first)) = (config_path, inline.first()) {
                if let Some(mode) = readable_by_others(path) {
                    settings.warnings.push(format!(
                        "{} holds secrets inline ({first}{}) and can be read by other users (mode {mode:04o}): chmod 600 it, or move them into *_file settings",
                        path.display(),
                        if inline.len() > 1 { ", …" } else { "" },
                    ));
                }
            }
            settings
        })
        .map_err(|problems| ConfigError {
            source_name,
            problems,
        })
}

/// The socket path a client command should use: from the configuration file if it is
/// readable and names one, else the default. Never fails: a client that cannot read the
/// daemon's configuration may still reach its socket.
/// Where `serve --dev` puts its socket unless told otherwise, and where client commands
/// look for a dev daemon: `$XDG_RUNTIME_DIR/tokenbroker-dev.sock` (the user's own 0700
/// runtime directory), else `/tmp/tokenbroker-dev-<uid>/tokenbroker.sock`.
pub fn dev_socket_path(env: &Env) -> PathBuf {
    match env.get("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => Path::new(dir).join("tokenbroker-dev.sock"),
        None => PathBuf::from(format!(
            "/tmp/tokenbroker-dev-{}/tokenbroker.sock",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Whether the directory holding a dev socket is this user's alone (owned by us, a real
/// directory, writable by nobody else), so that no other user can stand in for the daemon.
pub fn is_private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir()
            && m.uid() == rustix::process::getuid().as_raw()
            && m.permissions().mode() & 0o022 == 0
    })
}

/// The socket path the client commands use: `TOKENBROKER__SERVER__SOCKET`, else the
/// configuration file's `server.socket`, else the default.
pub fn socket_path(path: &Path, env: &Env) -> PathBuf {
    let from_env = env
        .get(&format!("{ENV_PREFIX}__SERVER__SOCKET"))
        .map(PathBuf::from);
    from_env
        .or_else(|| raw::socket_from_file(path))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

impl Settings {
    /// A human summary of the effective configuration, with every secret left out.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!("configuration {} is valid", self.source)];
        lines.push(format!("  socket      {}", self.api.socket.display()));
        lines.push(format!(
            "  http        {}",
            self.api.http.map_or("off".into(), |a| a.to_string())
        ));
        lines.push(format!("  public_url  {}", self.api.public_url));
        lines.push(match &self.store.backend {
            crate::store::Backend::Sled { token_memory } => {
                format!(
                    "  store       {} (sled; up to {} MiB of tokens in memory)",
                    self.store.dir.display(),
                    token_memory >> 20
                )
            }
            // Never the URL: it may carry a password.
            crate::store::Backend::Postgres {
                url,
                lease_timeout,
                ..
            } => {
                let tls = std::str::FromStr::from_str(url.expose()).is_ok_and(
                    |url: tokio_postgres::Config| {
                        url.get_ssl_mode() == tokio_postgres::config::SslMode::Require
                    },
                );
                format!(
                    "  store       PostgreSQL{}, shared (row locks held at most {}); local files in {}",
                    if tls { " over verified TLS" } else { "" },
                    humantime::format_duration(*lease_timeout),
                    self.store.dir.display()
                )
            }
        });
        let policy = &self.broker.policy;
        lines.push(format!(
            "  refresh     ahead {} jitter {} min_valid {} check_interval {} max_concurrent {}",
            humantime::format_duration(policy.ahead),
            humantime::format_duration(policy.jitter),
            humantime::format_duration(policy.min_valid),
            humantime::format_duration(self.scheduler.check_interval),
            self.broker.max_concurrent
        ));
        for provider in &self.providers {
            let secret = if provider.client_secret.is_some() {
                "set"
            } else {
                "none"
            };
            lines.push(format!(
                "  provider    {} ({:?}, auth {:?}, client secret {secret})",
                provider.name, provider.preset, provider.auth_method
            ));
        }
        for client in &self.api.clients {
            let patterns: Vec<&str> = client.accounts.iter().map(glob::Pattern::as_str).collect();
            lines.push(format!(
                "  client      {} (accounts {}{})",
                client.name,
                patterns.join(", "),
                if client.admin { ", admin" } else { "" }
            ));
        }
        for account in &self.accounts {
            lines.push(format!(
                "  account     {} (provider {}{})",
                account.name,
                account.provider,
                if account.required { ", required" } else { "" }
            ));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests;
