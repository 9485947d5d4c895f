//! `SIGHUP`: reload the configuration without dropping tokens or connections.
//!
//! Providers, clients, admin uids, the refresh policy, declared accounts (seeded if new,
//! `required` for `/readyz`) and token sinks take effect at once. Listeners, the store,
//! `public_url`, the scheduler's tick and `max_concurrent` are fixed for the process's life:
//! a change to them is reported and applies at the next restart. A configuration that does
//! not load keeps the one in force, and says why in the log.

use std::sync::Arc;

use super::runtime::{Live, Runtime};
use super::{notify, seed_declared_accounts};
use crate::broker::Broker;
use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;
use crate::sink::Sinks;

/// Loads the configuration afresh (the same file and environment as at start-up).
pub type Loader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// What a reload changes (the runtime, swapped whole), what acts on the change, and the
/// configuration in force.
pub(super) struct Reloader {
    pub(super) broker: Broker,
    pub(super) runtime: Live,
    pub(super) sinks: Arc<Sinks>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) own_uid: u32,
    pub(super) settings: Settings,
}

impl Reloader {
    /// Applies the configuration `load` gives, or keeps the current one if it fails.
    pub(super) async fn reload(&mut self, load: Option<&Loader>) {
        let Some(load) = load else {
            tracing::warn!("SIGHUP received: dev mode has no configuration file to reload");
            return;
        };
        tracing::info!("SIGHUP received: reloading the configuration");
        // sd_notify(3): RELOADING=1 comes with the monotonic time it started.
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
        }
        match self.apply(load()).await {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(reason) => tracing::error!(
                error = %reason,
                "configuration not reloaded; the previous one stays in force"
            ),
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn apply(&mut self, loaded: Result<Settings, ConfigError>) -> Result<(), String> {
        let new = loaded.map_err(|error| format!("configuration error in {error}"))?;
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        let applied = self.keep_fixed(new);
        let started_at = self.runtime.load().started_at();
        let runtime = Runtime::new(&applied, self.own_uid, &self.metrics, started_at)
            .map_err(|error| format!("a provider cannot be set up: {error}"))?;
        // One swap: from here on every reader sees the new configuration, all of it.
        self.runtime.replace(runtime);
        self.broker.retune();
        self.sinks.write_all();
        let seeded = seed_declared_accounts(&self.broker, &applied.accounts).await;
        self.settings = applied;
        seeded.map_err(|error| format!("declared accounts could not all be seeded: {error:#}"))
    }

    /// `new`, with the settings that cannot change while running taken from the ones in
    /// force; each such change is reported.
    fn keep_fixed(&self, mut new: Settings) -> Settings {
        let old = &self.settings;
        let fixed = |key: &str, changed: bool| {
            if changed {
                tracing::warn!(key, "this setting changed; it applies at the next restart");
            }
        };
        fixed("server.socket", new.api.socket != old.api.socket);
        fixed(
            "server.socket_group",
            new.api.socket_group != old.api.socket_group,
        );
        fixed("server.http", new.api.http != old.api.http);
        fixed(
            "server.public_url",
            new.api.public_url != old.api.public_url,
        );
        fixed("store", new.store != old.store);
        fixed("refresh.check_interval", new.scheduler != old.scheduler);
        fixed(
            "refresh.max_concurrent",
            new.broker.max_concurrent != old.broker.max_concurrent,
        );
        new.api.socket = old.api.socket.clone();
        new.api.socket_group = old.api.socket_group;
        new.api.http = old.api.http;
        new.api.public_url = old.api.public_url.clone();
        new.store = old.store.clone();
        new.scheduler = old.scheduler.clone();
        new.broker.max_concurrent = old.broker.max_concurrent;
        new
    }
}
