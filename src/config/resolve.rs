//! Turning the raw file into each module's `Config`, checking every value on the way.
//!
//! Problems are collected, not returned at the first, so one run of `check-config` shows
//! them all. Each names its key. Secret files are read here; their contents never appear
//! in a message.
//!
//! Why it is one file: one resolver per section of the file, in the file's order, all
//! adding to the one list of problems; split, each would take and return the list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use url::Url;

use super::raw::{self, Raw};
use super::{DeclaredAccount, Settings, DEFAULT_SOCKET};
use crate::api::{self, Client};
use crate::provider::{self, AuthMethod, EndpointSource, Endpoints, Preset};
use crate::secret::{ClientSecret, RefreshToken};
use crate::token::{AccountName, RefreshPolicy};
use crate::{broker, scheduler, sink, store};

const DEFAULT_HTTP: &str = "127.0.0.1:8765";
const DEFAULT_STORE_DIR: &str = "/var/lib/tokenbroker";
const DEFAULT_KEY_FILE: &str = "store-key";
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONCURRENT: usize = 8;
/// `store.token_memory_mib` at most (1 TiB).
const MAX_TOKEN_MEMORY_MIB: u64 = 1 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the slowest provider call a refresh may hold its row in PostgreSQL.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// A secret file larger than this is surely the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where relative secret files are looked up.
#[derive(Debug)]
pub(super) struct Context {
    /// The configuration file's directory.
    pub(super) base_dir: PathBuf,
    /// systemd's `$CREDENTIALS_DIRECTORY`, searched first.
    pub(super) credentials_dir: Option<PathBuf>,
    /// What is allowed but unwise, said as it is found.
    pub(super) warnings: std::cell::RefCell<Vec<String>>,
    /// The keys of secrets given inline in the file (their values never).
    pub(super) inline_secrets: std::cell::RefCell<Vec<String>>,
}

pub(super) fn settings(raw: Raw, context: &Context) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let (socket, checked) = server(&raw.server, &mut problems);
    let socket_group = raw
        .server
        .socket_group
        .as_deref()
        .and_then(|group| resolve_group(group, "server.socket_group", &mut problems));
    let policy = refresh_policy(&raw.refresh, &mut problems);
    let check_interval = raw.refresh.check_interval.unwrap_or(DEFAULT_CHECK_INTERVAL);
    if let Err(error) = scheduler::cron_expression(check_interval) {
        problems.push(format!("refresh.check_interval: {error}"));
    }
    let max_concurrent = raw.refresh.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
    if max_concurrent == 0 {
        problems.push("refresh.max_concurrent: must be at least 1".into());
    }
    let providers: Vec<provider::Config> = raw
        .providers
        .iter()
        .filter_map(|(name, p)| provider(name, p, context, &mut problems))
        .collect();
    let clients = raw
        .clients
        .iter()
        .enumerate()
        .filter_map(|(i, c)| client(i, c, context, &mut problems))
        .collect();
    let accounts = raw
        .accounts
        .iter()
        .filter_map(|(name, account)| declared_account(name, account, &raw, context, &mut problems))
        .collect();
    let notify = super::notify::entries(&raw.notify, context, &mut problems);
    let metrics = match raw.server.metrics.as_deref() {
        None | Some("per_account") => crate::metrics::Detail::PerAccount,
        Some("aggregate") => crate::metrics::Detail::Aggregate,
        Some(other) => {
            problems.push(format!(
                "server.metrics: {other:?} is not per_account or aggregate"
            ));
            crate::metrics::Detail::PerAccount
        }
    };
    let store_dir = raw
        .store
        .dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE_DIR.into());
    let key_file = store_key_path(raw.store.key_file.as_deref(), &store_dir, context);
    if let Some(problem) = foreign_store_dir(&store_dir) {
        problems.push(format!("store.dir: {} {problem}", store_dir.display()));
    }
    if let Some(mode) = super::readable_by_others(&key_file) {
        problems.push(format!(
            "store.key_file: {} can be read by other users (mode {mode:04o}); it unlocks every stored refresh token: chmod 600 it",
            key_file.display()
        ));
    }
    let backend = store_backend(&raw.store, &providers, context, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let store = store::Config {
        dir: store_dir,
        key_file,
        backend: backend.expect("no problems means the backend resolved"),
    };
    let (http, public_url) = checked.expect("no problems means the server section resolved");
    Ok(Settings {
        source: String::new(),
        api: api::Config {
            socket,
            socket_group,
            http,
            public_url,
            admin_uids: raw.server.admin_uids.clone(),
            clients,
        },
        store,
        broker: broker::Config {
            policy,
            max_concurrent,
        },
        scheduler: scheduler::Config { check_interval },
        providers,
        accounts,
        metrics,
        notify,
        warnings: Vec::new(),
    })
}

/// `store.backend`: for sled, the memory its tokens may take; for PostgreSQL, its URL (a
/// password only through `url_file`) and how long a refresh may hold a row: the slowest
/// provider's timeouts and a margin.
fn store_backend(
    raw: &raw::Store,
    providers: &[provider::Config],
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<store::Backend> {
    match raw.backend.as_deref() {
        None | Some("sled") => {
            if raw.url.is_some() || raw.url_file.is_some() || raw.ca_file.is_some() {
                problems.push(
                    "store.url, url_file and ca_file: only for store.backend = \"postgres\"".into(),
                );
            }
            let token_memory = match raw.token_memory_mib {
                None => store::DEFAULT_TOKEN_MEMORY,
                Some(mib) if mib <= MAX_TOKEN_MEMORY_MIB => (mib as usize) << 20,
                Some(_) => {
                    problems.push(format!(
                        "store.token_memory_mib: at most {MAX_TOKEN_MEMORY_MIB} (1 TiB)"
                    ));
                    store::DEFAULT_TOKEN_MEMORY
                }
            };
            Some(store::Backend::Sled { token_memory })
        }
        Some("postgres") => {
            if raw.token_memory_mib.is_some() {
                problems.push(
                    "store.token_memory_mib: only for store.backend = \"sled\" (brokers on a shared store keep every token in memory)".into(),
                );
            }
            let url = match (&raw.url, &raw.url_file) {
                (Some(_), Some(_)) => {
                    problems.push("store: give url or url_file, not both".into());
                    return None;
                }
                (Some(url), None) => url.clone(),
                (None, Some(file)) => read_secret(file, "store.url_file", context, problems)?,
                (None, None) => {
                    problems.push(
                        "store.backend = \"postgres\" needs store.url or store.url_file".into(),
                    );
                    return None;
                }
            };
            let parsed = match tokio_postgres::Config::from_str(&url) {
                Err(error) => {
                    problems.push(format!("store.url: not a PostgreSQL URL: {error}"));
                    return None;
                }
                Ok(parsed) if parsed.get_password().is_some() && raw.url.is_some() => {
                    problems.push("store.url: carries a password; put the URL in a file named by store.url_file instead (mode 600)".into());
                    return None;
                }
                Ok(parsed) => parsed,
            };
            warn_without_tls(&parsed, context);
            let ca_certificates = match &raw.ca_file {
                Some(file) => read_certificates(file, context, problems)?,
                None => Vec::new(),
            };
            let slowest = providers
                .iter()
                .map(|p| p.connect_timeout + p.timeout)
                .max()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT + DEFAULT_TIMEOUT);
            Some(store::Backend::Postgres {
                url: crate::secret::DatabaseUrl::new(url),
                lease_timeout: slowest + LEASE_MARGIN,
                ca_certificates,
            })
        }
        Some(other) => {
            problems.push(format!("store.backend: {other:?} is not sled or postgres"));
            None
        }
    }
}

/// The socket path, and the TCP address with the public URL when both are valid.
type ServerParts = (PathBuf, Option<(Option<SocketAddr>, Url)>);

fn server(raw: &raw::Server, problems: &mut Vec<String>) -> ServerParts {
    let socket = raw.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    if socket.as_os_str().is_empty() {
        problems.push("server.socket: must not be empty".into());
    }
    let http_text = raw.http.clone().unwrap_or_else(|| DEFAULT_HTTP.into());
    let http = if http_text.is_empty() {
        Ok(None)
    } else {
        match http_text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Ok(Some(addr)),
            Ok(addr) => Err(format!("server.http: {addr} is not a loopback address; tokenbroker listens on loopback only (127.0.0.1 or [::1])")),
            Err(_) => Err(format!("server.http: {http_text:?} is not an address like 127.0.0.1:8765 (use \"\" to turn TCP off)")),
        }
    };
    let default_public = http.as_ref().ok().copied().flatten().map_or_else(
        || format!("http://{DEFAULT_HTTP}"),
        |addr| format!("http://{addr}"),
    );
    let public_text = raw.public_url.clone().unwrap_or(default_public);
    let public_url = match Url::parse(&public_text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(format!(
            "server.public_url: {public_text:?} is not an http(s) URL"
        )),
    };
    let parts = match (http, public_url) {
        (Ok(http), Ok(public_url)) => Some((http, public_url)),
        (http, public_url) => {
            problems.extend(http.err());
            problems.extend(public_url.err());
            None
        }
    };
    (socket, parts)
}

fn refresh_policy(raw: &raw::Refresh, problems: &mut Vec<String>) -> RefreshPolicy {
    let defaults = RefreshPolicy::default();
    let policy = RefreshPolicy {
        ahead: raw.ahead.unwrap_or(defaults.ahead),
        jitter: raw.jitter.unwrap_or(defaults.jitter),
        min_valid: raw.min_valid.unwrap_or(defaults.min_valid),
        min_interval: raw.min_interval.unwrap_or(defaults.min_interval),
        backoff_base: raw.backoff_base.unwrap_or(defaults.backoff_base),
        backoff_max: raw.backoff_max.unwrap_or(defaults.backoff_max),
    };
    if policy.ahead.is_zero() {
        problems.push("refresh.ahead: must be more than zero".into());
    }
    if policy.ahead < policy.min_valid {
        problems.push(format!(
            "refresh.ahead ({}) must be at least refresh.min_valid ({}), or tokens would fall below min_valid before their scheduled refresh",
            humantime::format_duration(policy.ahead),
            humantime::format_duration(policy.min_valid)
        ));
    }
    if policy.min_interval < Duration::from_secs(1) {
        problems.push("refresh.min_interval: must be at least 1s".into());
    }
    if policy.backoff_base.is_zero() || policy.backoff_base > policy.backoff_max {
        problems.push(
            "refresh.backoff_base: must be more than zero and at most refresh.backoff_max".into(),
        );
    }
    policy
}

fn provider(
    name: &str,
    raw: &raw::Provider,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<provider::Config> {
    let key = |field: &str| format!("providers.{name}.{field}");
    let before = problems.len();
    let preset = Preset::from_name(&raw.preset);
    if preset.is_none() {
        problems.push(format!(
            "{}: unknown preset {:?} (dropbox, google, microsoft, github, box or generic)",
            key("preset"),
            raw.preset
        ));
    }
    if raw.tenant.is_some() && preset != Some(Preset::Microsoft) {
        problems.push(format!(
            "{}: only the microsoft preset takes a tenant",
            key("tenant")
        ));
    }
    let tenant = raw.tenant.clone().unwrap_or_else(|| "common".to_owned());
    if raw.client_id.trim().is_empty() {
        problems.push(format!("{}: must not be empty", key("client_id")));
    }
    let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{}: give client_secret or client_secret_file, not both",
                key("client_secret")
            ));
            None
        }
        (Some(inline), None) => {
            context
                .inline_secrets
                .borrow_mut()
                .push(key("client_secret"));
            Some(ClientSecret::new(inline.clone()))
        }
        (None, Some(file)) => {
            read_secret(file, &key("client_secret_file"), context, problems).map(ClientSecret::new)
        }
        (None, None) => None,
    };
    let auth_method = match raw.auth_method.as_deref() {
        None if client_secret.is_some() && preset.is_some_and(Preset::secret_auth_in_body) => {
            AuthMethod::Post
        }
        None if client_secret.is_some() => AuthMethod::Basic,
        None => AuthMethod::None,
        Some("basic") => AuthMethod::Basic,
        Some("post") => AuthMethod::Post,
        Some("none") => AuthMethod::None,
        Some(other) => {
            problems.push(format!(
                "{}: {other:?} is not basic, post or none",
                key("auth_method")
            ));
            AuthMethod::None
        }
    };
    match (auth_method, client_secret.is_some()) {
        (AuthMethod::Basic | AuthMethod::Post, false) => problems.push(format!(
            "{}: {auth_method:?} needs client_secret or client_secret_file",
            key("auth_method")
        )),
        (AuthMethod::None, true) => problems.push(format!(
            "{}: a public client (none) takes no client secret",
            key("auth_method")
        )),
        _ => {}
    }
    let url = |field: &str, value: &Option<String>, problems: &mut Vec<String>| -> Option<Url> {
        let text = value.as_ref()?;
        match Url::parse(text) {
            Ok(url) => match provider::check_endpoint(&url) {
                Ok(()) => Some(url),
                Err(problem) => {
                    problems.push(format!("{}: {text:?} {problem}", key(field)));
                    None
                }
            },
            Err(error) => {
                problems.push(format!("{}: {text:?} is not a URL ({error})", key(field)));
                None
            }
        }
    };
    let token_url = url("token_url", &raw.token_url, problems);
    let authorize_url = url("authorize_url", &raw.authorize_url, problems);
    let revoke_url = url("revoke_url", &raw.revoke_url, problems);
    let device_url = url("device_url", &raw.device_url, problems);
    let issuer = url("issuer", &raw.issuer, problems);
    let preset = preset?;
    // An `issuer` beside explicit URLs is not discovered: it is what callbacks must name.
    let mut stated_issuer = None;
    let endpoints = match (preset.endpoints(&tenant), issuer, token_url) {
        // A preset: its endpoints, each of which may be overridden (a proxy, a test server).
        (Some(fixed), issuer, token) => {
            if issuer.is_some() {
                problems.push(format!(
                    "{}: the {} preset has fixed endpoints; override token_url etc. instead",
                    key("issuer"),
                    raw.preset
                ));
            }
            EndpointSource::Fixed(Endpoints {
                token: token.unwrap_or(fixed.token),
                authorize: authorize_url.or(fixed.authorize),
                revoke: revoke_url.or(fixed.revoke),
                device: device_url.or(fixed.device),
            })
        }
        (None, Some(issuer), Some(token)) => {
            stated_issuer = Some(issuer.as_str().trim_end_matches('/').to_owned());
            EndpointSource::Fixed(Endpoints {
                token,
                authorize: authorize_url,
                revoke: revoke_url,
                device: device_url,
            })
        }
        (None, Some(issuer), None) => EndpointSource::Discover { issuer },
        (None, None, Some(token)) => EndpointSource::Fixed(Endpoints {
            token,
            authorize: authorize_url,
            revoke: revoke_url,
            device: device_url,
        }),
        (None, None, None) => {
            if raw.issuer.is_none() && raw.token_url.is_none() {
                problems.push(format!(
                    "{}: a generic provider needs issuer or token_url",
                    key("token_url")
                ));
            }
            return None;
        }
    };
    let expected_issuer = match &endpoints {
        EndpointSource::Discover { issuer } => {
            Some(issuer.as_str().trim_end_matches('/').to_owned())
        }
        EndpointSource::Fixed(_) => stated_issuer.or_else(|| preset.issuer(&tenant)),
    };
    let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let connect_timeout = raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    if timeout.is_zero() || connect_timeout.is_zero() {
        problems.push(format!(
            "{}: timeouts must be more than zero",
            key("timeout")
        ));
    }
    if raw
        .default_lifetime
        .is_some_and(|d| d < Duration::from_secs(1))
    {
        problems.push(format!("{}: must be at least 1s", key("default_lifetime")));
    }
    (problems.len() == before).then(|| provider::Config {
        name: name.to_owned(),
        preset,
        client_id: raw.client_id.clone(),
        client_secret,
        auth_method,
        endpoints,
        scopes: raw.scopes.clone(),
        issuer: expected_issuer,
        default_lifetime: raw.default_lifetime.unwrap_or(preset.default_lifetime()),
        connect_timeout,
        timeout,
    })
}

fn client(
    index: usize,
    raw: &raw::Client,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<Client> {
    let key = |field: &str| format!("clients[{index}].{field}");
    let before = problems.len();
    if raw.name.trim().is_empty() {
        problems.push(format!("{}: must not be empty", key("name")));
    }
    let api_key_sha256 = match (&raw.api_key_sha256, &raw.api_key_file) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{}: give api_key_sha256 or api_key_file, not both",
                key("api_key_sha256")
            ));
            None
        }
        (Some(text), None) => match hex::decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        {
            Some(digest) => Some(digest),
            None => {
                problems.push(format!(
                    "{}: must be 64 hex digits (sha256sum of the key)",
                    key("api_key_sha256")
                ));
                None
            }
        },
        (None, Some(file)) => read_secret(file, &key("api_key_file"), context, problems)
            .map(|k| Sha256::digest(k.as_bytes()).into()),
        (None, None) => None,
    };
    if raw.uids.is_empty()
        && raw.gids.is_empty()
        && raw.api_key_sha256.is_none()
        && raw.api_key_file.is_none()
    {
        problems.push(format!(
            "{}: a client needs uids, gids, api_key_sha256 or api_key_file",
            key("name")
        ));
    }
    let accounts = raw
        .accounts
        .iter()
        .filter_map(|pattern| match glob::Pattern::new(pattern) {
            Ok(compiled) => Some(compiled),
            Err(error) => {
                problems.push(format!(
                    "{}: {pattern:?} is not a glob pattern ({error})",
                    key("accounts")
                ));
                None
            }
        })
        .collect();
    (problems.len() == before).then(|| Client {
        name: raw.name.as_str().into(),
        uids: raw.uids.clone(),
        gids: raw.gids.clone(),
        api_key_sha256,
        accounts,
        admin: raw.admin,
        metrics: raw.metrics,
    })
}

fn declared_account(
    name: &str,
    raw: &raw::Account,
    all: &Raw,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<DeclaredAccount> {
    let key = |field: &str| format!("accounts.{name}.{field}");
    let parsed: Option<AccountName> = match name.parse() {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            problems.push(format!("accounts.{name}: {error}"));
            None
        }
    };
    if !all.providers.contains_key(&raw.provider) {
        problems.push(format!(
            "{}: no provider named {:?} is configured",
            key("provider"),
            raw.provider
        ));
    }
    let refresh_token = raw
        .refresh_token_file
        .as_ref()
        .and_then(|file| read_secret(file, &key("refresh_token_file"), context, problems))
        .map(RefreshToken::new);
    let name = parsed?;
    let sinks = raw
        .sinks
        .iter()
        .enumerate()
        .filter_map(|(index, sink)| {
            resolve_sink(&name, sink, &key(&format!("sinks[{index}]")), problems)
        })
        .collect();
    Some(DeclaredAccount {
        name,
        provider: raw.provider.clone(),
        refresh_token,
        required: raw.required,
        sinks,
    })
}

fn resolve_sink(
    account: &AccountName,
    raw: &raw::Sink,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<sink::Config> {
    let before = problems.len();
    if !raw.path.is_absolute() || raw.path.file_name().is_none() {
        problems.push(format!(
            "{key}.path: {:?} must be an absolute file path",
            raw.path
        ));
    }
    let format = raw
        .format
        .as_deref()
        .unwrap_or("raw")
        .parse()
        .map_err(|error| problems.push(format!("{key}.format: {error}")))
        .ok();
    let mode_text = raw.mode.as_deref().unwrap_or("0600");
    let mode = u32::from_str_radix(mode_text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777);
    if mode.is_none() {
        problems.push(format!(
            "{key}.mode: {mode_text:?} is not an octal file mode like \"0640\""
        ));
    }
    let owner = raw
        .owner
        .as_deref()
        .and_then(|owner| resolve_user(owner, &format!("{key}.owner"), problems));
    let group = raw
        .group
        .as_deref()
        .and_then(|group| resolve_group(group, &format!("{key}.group"), problems));
    (problems.len() == before).then(|| sink::Config {
        account: account.clone(),
        path: raw.path.clone(),
        format: format.expect("checked above"),
        mode: mode.expect("checked above"),
        owner,
        group,
    })
}

/// A user name or number, as a uid.
fn resolve_user(user: &str, key: &str, problems: &mut Vec<String>) -> Option<u32> {
    resolve_id(user, key, "user", problems, |name| {
        nix::unistd::User::from_name(name).map(|found| found.map(|u| u.uid.as_raw()))
    })
}

/// A group name or number, as a gid.
fn resolve_group(group: &str, key: &str, problems: &mut Vec<String>) -> Option<u32> {
    resolve_id(group, key, "group", problems, |name| {
        nix::unistd::Group::from_name(name).map(|found| found.map(|g| g.gid.as_raw()))
    })
}

/// A number as given, or a name looked up in the system's `kind` database.
fn resolve_id(
    text: &str,
    key: &str,
    kind: &str,
    problems: &mut Vec<String>,
    look_up: impl FnOnce(&str) -> nix::Result<Option<u32>>,
) -> Option<u32> {
    if let Ok(id) = text.parse::<u32>() {
        return Some(id);
    }
    match look_up(text) {
        Ok(Some(id)) => Some(id),
        Ok(None) => {
            problems.push(format!("{key}: no {kind} named {text:?}"));
            None
        }
        Err(error) => {
            problems.push(format!("{key}: cannot look up {text:?}: {error}"));
            None
        }
    }
}

/// Where the store key is: absolute as given; relative in `$CREDENTIALS_DIRECTORY` if it is
/// there (systemd `LoadCredential=`, TPM-bound keys), else in the store directory, where a
/// new store generates it.
/// Why an existing store directory cannot be trusted, if it cannot: a symbolic link, owned
/// by another user, or writable by others (any of them could plant files the daemon would
/// then write or read as its own key). A directory that does not exist yet is made private.
fn foreign_store_dir(dir: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let metadata = std::fs::symlink_metadata(dir).ok()?;
    let ours = rustix::process::geteuid().as_raw();
    let mode = metadata.permissions().mode() & 0o777;
    if metadata.file_type().is_symlink() {
        Some("is a symbolic link; give the directory itself".into())
    } else if metadata.uid() != ours {
        Some(format!(
            "is owned by uid {}, not by the daemon's uid {ours}",
            metadata.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "can be written by other users (mode {mode:04o}); chmod 700 it"
        ))
    } else {
        None
    }
}

/// A database reached over the network without `sslmode=require` is reached in the clear:
/// say so, unless it is this host.
fn warn_without_tls(url: &tokio_postgres::Config, context: &Context) {
    if url.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return;
    }
    for host in url.get_hosts() {
        let tokio_postgres::config::Host::Tcp(name) = host else {
            continue;
        };
        let local = name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !local {
            context.warnings.borrow_mut().push(format!(
                "store.url: the database at {name} is reached without TLS; add sslmode=require to the URL"
            ));
        }
    }
}

/// `store.ca_file`: the PEM certificates a database server's certificate must chain to,
/// found like a secret file (`$CREDENTIALS_DIRECTORY` first, then beside the configuration).
fn read_certificates(
    file: &str,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let candidates = secret_candidates(Path::new(file), context);
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        problems.push(format!("store.ca_file: {file:?} not found"));
        return None;
    };
    let certificates: Result<Vec<_>, _> =
        match rustls::pki_types::CertificateDer::pem_file_iter(path) {
            Ok(certificates) => certificates.collect(),
            Err(error) => Err(error),
        };
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Some(certificates),
        Ok(_) => {
            problems.push(format!(
                "store.ca_file: {} holds no PEM certificate",
                path.display()
            ));
            None
        }
        Err(error) => {
            problems.push(format!("store.ca_file: {}: {error}", path.display()));
            None
        }
    }
}

fn store_key_path(key_file: Option<&Path>, store_dir: &Path, context: &Context) -> PathBuf {
    let key_file = key_file.unwrap_or(Path::new(DEFAULT_KEY_FILE));
    if key_file.is_absolute() {
        return key_file.to_owned();
    }
    context
        .credentials_dir
        .as_ref()
        .map(|credentials| credentials.join(key_file))
        .filter(|candidate| candidate.is_file())
        .unwrap_or_else(|| store_dir.join(key_file))
}

/// Reads a secret file: absolute as given; relative in `$CREDENTIALS_DIRECTORY` first, then
/// beside the configuration file. Surrounding whitespace (a trailing newline) is dropped.
pub(super) fn read_secret(
    file: &str,
    key: &str,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<String> {
    let candidates = secret_candidates(Path::new(file), context);
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        problems.push(format!(
            "{key}: {file:?} not found (looked at {})",
            tried.join(", ")
        ));
        return None;
    };
    if let Some(mode) = super::readable_by_others(path) {
        context.warnings.borrow_mut().push(format!(
            "{key}: {} can be read by other users (mode {mode:04o}): chmod 600 it",
            path.display()
        ));
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_SECRET_FILE_BYTES {
        problems.push(format!(
            "{key}: {} is {size} bytes, too large for a secret",
            path.display()
        ));
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Ok(_) => {
            problems.push(format!("{key}: {} is empty", path.display()));
            None
        }
        Err(error) => {
            problems.push(format!("{key}: cannot read {}: {error}", path.display()));
            None
        }
    }
}

fn secret_candidates(file: &Path, context: &Context) -> Vec<PathBuf> {
    if file.is_absolute() {
        return vec![file.to_owned()];
    }
    let mut candidates = Vec::new();
    if let Some(credentials) = &context.credentials_dir {
        candidates.push(credentials.join(file));
    }
    candidates.push(context.base_dir.join(file));
    candidates
}
