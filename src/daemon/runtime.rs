//! What a reload changes, as one value: built from `Settings`, read by the broker, the API
//! and the sinks through the cell they share, and swapped whole on `SIGHUP`, so that no
//! reader ever sees part of one configuration and part of another.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::api::{Access, ApiError, Caller, Peer, Readiness, Rules};
use crate::broker::Tuning;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::provider::{Provider, ProviderError};
use crate::secret::ApiKey;
use crate::sink::{self, Targets};
use crate::token::RefreshPolicy;

/// The configuration in force, ready to use.
#[derive(Debug)]
pub(super) struct Runtime {
    providers: HashMap<String, Arc<Provider>>,
    policy: RefreshPolicy,
    access: Access,
    readiness: Readiness,
    sinks: Arc<[sink::Config]>,
    notify: Arc<[crate::notify::Config]>,
}

impl Runtime {
    /// Everything a reload changes, from `settings`: the providers set up, the clients
    /// counted in `metrics` (the daemon runs as `own_uid`, started at `started_at`).
    ///
    /// # Errors
    /// A provider cannot be set up.
    pub(super) fn new(
        settings: &Settings,
        own_uid: u32,
        metrics: &Metrics,
        started_at: tokio::time::Instant,
    ) -> Result<Self, ProviderError> {
        let providers = settings
            .providers
            .iter()
            .cloned()
            .map(|config| Provider::new(config).map(|p| (p.name().to_owned(), Arc::new(p))))
            .collect::<Result<_, _>>()?;
        let access = Access::new(
            &settings.api.admin_uids,
            own_uid,
            settings.api.clients.clone(),
            metrics,
        );
        let readiness = Readiness {
            required: settings
                .accounts
                .iter()
                .filter(|a| a.required)
                .map(|a| a.name.clone())
                .collect(),
            check_interval: settings.scheduler.check_interval,
            started_at,
        };
        let sinks = settings
            .accounts
            .iter()
            .flat_map(|account| account.sinks.iter().cloned())
            .collect();
        Ok(Self {
            providers,
            policy: settings.broker.policy,
            access,
            readiness,
            sinks,
            notify: settings.notify.clone().into(),
        })
    }

    /// When the daemon started, by the monotonic clock (kept across reloads).
    pub(super) fn started_at(&self) -> tokio::time::Instant {
        self.readiness.started_at
    }
}

/// The one cell the runtime lives in, shared by everyone who reads it.
#[derive(Debug, Clone)]
pub(super) struct Live(Arc<ArcSwap<Runtime>>);

impl Live {
    pub(super) fn new(runtime: Runtime) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(runtime)))
    }

    /// Puts `runtime` in force, whole.
    pub(super) fn replace(&self, runtime: Runtime) {
        self.0.store(Arc::new(runtime));
    }

    pub(super) fn load(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.0.load()
    }
}

impl Tuning for Live {
    fn policy(&self) -> RefreshPolicy {
        self.0.load().policy
    }

    fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.0.load().providers.get(name).cloned()
    }
}

impl Rules for Live {
    fn identify(&self, peer: &Peer, bearer: Option<&ApiKey>) -> Result<Caller, ApiError> {
        self.0.load().access.identify(peer, bearer)
    }

    fn readiness(&self) -> Readiness {
        self.0.load().readiness.clone()
    }
}

impl crate::notify::Entries for Live {
    fn entries(&self) -> Arc<[crate::notify::Config]> {
        Arc::clone(&self.0.load().notify)
    }
}

impl Targets for Live {
    fn sinks(&self) -> Arc<[sink::Config]> {
        Arc::clone(&self.0.load().sinks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one provider and one TCP client, both named after `name`.
    fn runtime(name: &str, dir: &std::path::Path) -> Runtime {
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name));
        let toml = format!(
            r#"
[server]
socket = "{dir}/tb.sock"

[store]
dir = "{dir}/store"

[refresh]
ahead = "{ahead}"

[providers.{name}]
preset = "generic"
client_id = "client"
auth_method = "none"
token_url = "http://127.0.0.1:9/token"

[[clients]]
name = "{name}"
api_key_sha256 = "{hash}"
accounts = ["*"]

[accounts.{name}]
provider = "{name}"
required = true
sinks = [{{ path = "{dir}/{name}.token" }}]
"#,
            dir = dir.display(),
            ahead = if name == "first" { "1h" } else { "2h" },
        );
        let settings =
            crate::config::load_str(&toml, "test", dir, &crate::config::Env::new()).unwrap();
        let metrics = Metrics::new(crate::metrics::Detail::PerAccount);
        Runtime::new(&settings, 0, &metrics, tokio::time::Instant::now()).unwrap()
    }

    /// A reload is one swap: until it, every reader sees the old configuration whole (its
    /// clients, providers, policy, required accounts and sinks); from it, the new one.
    #[tokio::test]
    async fn one_swap_changes_everything_a_reload_changes() {
        let dir = tempfile::tempdir().unwrap();
        let live = Live::new(runtime("first", dir.path()));
        let peer = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        let sees = |name: &str| {
            let caller = Rules::identify(&live, &peer, Some(&ApiKey::new(name)));
            (
                caller.is_ok_and(|caller| caller.name() == name),
                Tuning::provider(&live, name).is_some(),
                Rules::readiness(&live)
                    .required
                    .iter()
                    .any(|a| a.as_str() == name),
                Targets::sinks(&live)
                    .iter()
                    .any(|s| s.account.as_str() == name),
            )
        };
        assert_eq!(sees("first"), (true, true, true, true));
        assert_eq!(sees("second"), (false, false, false, false));
        let ahead = Tuning::policy(&live).ahead;

        live.replace(runtime("second", dir.path()));
        assert_eq!(sees("first"), (false, false, false, false));
        assert_eq!(sees("second"), (true, true, true, true));
        assert_ne!(Tuning::policy(&live).ahead, ahead);
    }
}
