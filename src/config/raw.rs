//! The configuration file's shape, exactly as written: every section and key, nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(default)]
    pub(super) server: Server,
    #[serde(default)]
    pub(super) store: Store,
    #[serde(default)]
    pub(super) refresh: Refresh,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, Provider>,
    #[serde(default)]
    pub(super) clients: Vec<Client>,
    #[serde(default)]
    pub(super) accounts: BTreeMap<String, Account>,
    #[serde(default)]
    pub(super) notify: Vec<Notify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Notify {
    #[serde(default)]
    pub(super) events: Vec<String>,
    #[serde(default)]
    pub(super) accounts: Vec<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) webhook: Option<String>,
    pub(super) secret_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Server {
    pub(super) socket: Option<PathBuf>,
    pub(super) http: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) socket_group: Option<String>,
    #[serde(default)]
    pub(super) admin_uids: Vec<u32>,
    /// `per_account` or `aggregate`.
    pub(super) metrics: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Store {
    pub(super) backend: Option<String>,
    pub(super) dir: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) url: Option<String>,
    pub(super) url_file: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) token_memory_mib: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Refresh {
    #[serde(default, with = "humantime_serde")]
    pub(super) ahead: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) jitter: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) check_interval: Option<Duration>,
    pub(super) max_concurrent: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) min_valid: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) min_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backoff_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backoff_max: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Provider {
    pub(super) preset: String,
    pub(super) client_id: String,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) issuer: Option<String>,
    pub(super) authorize_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) revoke_url: Option<String>,
    pub(super) device_url: Option<String>,
    pub(super) tenant: Option<String>,
    pub(super) auth_method: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) default_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("preset", &self.preset)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Client {
    pub(super) name: String,
    #[serde(default)]
    pub(super) uids: Vec<u32>,
    #[serde(default)]
    pub(super) gids: Vec<u32>,
    pub(super) api_key_sha256: Option<String>,
    pub(super) api_key_file: Option<String>,
    #[serde(default)]
    pub(super) accounts: Vec<String>,
    #[serde(default)]
    pub(super) admin: bool,
    #[serde(default)]
    pub(super) metrics: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Account {
    pub(super) provider: String,
    pub(super) refresh_token_file: Option<String>,
    #[serde(default)]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) sinks: Vec<Sink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sink {
    pub(super) path: PathBuf,
    pub(super) format: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) group: Option<String>,
}

/// `server.socket` from a file, read leniently (unknown keys ignored, errors swallowed).
pub(super) fn socket_from_file(path: &Path) -> Option<PathBuf> {
    #[derive(Deserialize)]
    struct Lenient {
        server: Option<LenientServer>,
    }
    #[derive(Deserialize)]
    struct LenientServer {
        socket: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let file = config::File::from_str(&text, config::FileFormat::Toml);
    let lenient: Lenient = config::Config::builder()
        .add_source(file)
        .build()
        .ok()?
        .try_deserialize()
        .ok()?;
    lenient.server?.socket
}
