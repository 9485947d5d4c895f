//! What the broker's callers see: its settings, the view of an account, a served token,
//! the report of a shutdown, its errors, and the observer that metrics and sinks implement.

use std::time::{Duration, SystemTime};

use crate::token::{AccountName, IssuedToken, RefreshPolicy};

/// What we tell a caller to wait when an account needs to be connected again.
const REAUTH_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The broker's settings, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// When to refresh and how to back off.
    pub policy: RefreshPolicy,
    /// Refreshes in flight at once, all providers together.
    pub max_concurrent: usize,
}

/// Where the broker reads what a reload may change: the providers and the refresh policy.
/// The daemon keeps them in its one runtime value, with everything else a reload changes,
/// and swaps that whole; [`Fixed`] is the same for a broker nothing reconfigures.
pub trait Tuning: Send + Sync {
    /// When to refresh and how to back off. Read for every token served: it must be cheap.
    fn policy(&self) -> RefreshPolicy;
    /// The configured provider named `name`.
    fn provider(&self, name: &str) -> Option<std::sync::Arc<crate::provider::Provider>>;
}

/// Providers and a policy that never change.
#[derive(Debug)]
pub struct Fixed {
    providers: std::collections::HashMap<String, std::sync::Arc<crate::provider::Provider>>,
    policy: RefreshPolicy,
}

impl Fixed {
    /// These providers, by their names, and this policy.
    pub fn new(
        providers: Vec<std::sync::Arc<crate::provider::Provider>>,
        policy: RefreshPolicy,
    ) -> std::sync::Arc<Self> {
        let providers = providers
            .into_iter()
            .map(|provider| (provider.name().to_owned(), provider))
            .collect();
        std::sync::Arc::new(Self { providers, policy })
    }
}

impl Tuning for Fixed {
    fn policy(&self) -> RefreshPolicy {
        self.policy
    }

    fn provider(&self, name: &str) -> Option<std::sync::Arc<crate::provider::Provider>> {
        self.providers.get(name).cloned()
    }
}

/// How a refresh attempt ended, for observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new token.
    Refreshed,
    /// A transient failure (network, timeout, 5xx, 429): retried with backoff.
    Transient,
    /// The grant was refused: the account needs re-auth.
    Reauth,
    /// The client was refused, or the provider is not configured.
    Configuration,
}

impl Outcome {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::Transient => "transient_failure",
            Self::Reauth => "needs_reauth",
            Self::Configuration => "configuration_error",
        }
    }
}

/// Told what happens to accounts: metrics and token sinks listen. Calls are made from the
/// broker's tasks and must return at once (count, or hand the work to a task of your own).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A refresh attempt of `account` ended after `took`.
    fn refresh_finished(&self, account: &AccountName, outcome: Outcome, took: Duration) {
        let _ = (account, outcome, took);
    }

    /// `account` holds a new access token (refreshed, imported or connected).
    fn token_changed(&self, account: &AccountName) {
        let _ = account;
    }

    /// `account` has a new grant, imported or connected (and stored).
    fn grant_installed(&self, account: &AccountName) {
        let _ = account;
    }

    /// `account` was removed (and the removal stored).
    fn account_removed(&self, account: &AccountName) {
        let _ = account;
    }

    /// A sweep ran at `now` (by the broker's clock).
    fn swept(&self, now: SystemTime) {
        let _ = now;
    }
}

/// An account's state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Holding a token and refreshing on schedule.
    Active,
    /// A refresh is in flight.
    Refreshing,
    /// The last refresh failed (transiently, or on configuration); the old token is served while valid.
    Degraded,
    /// The provider refused the grant; the account must be connected again.
    NeedsReauth,
}

impl Status {
    /// Every status, in the order they are listed.
    pub const ALL: [Self; 4] = [
        Self::Active,
        Self::Refreshing,
        Self::Degraded,
        Self::NeedsReauth,
    ];

    /// The status of this name (`as_str`), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used by the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Refreshing => "refreshing",
            Self::Degraded => "degraded",
            Self::NeedsReauth => "needs_reauth",
        }
    }
}

/// An account without its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// The account's name.
    pub name: AccountName,
    /// Its provider's name.
    pub provider: String,
    /// Where it stands.
    pub status: Status,
    /// When the current access token expires.
    pub expires_at: Option<SystemTime>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// The provider's id for the user.
    pub provider_user_id: Option<String>,
    /// The last successful refresh.
    pub last_refresh: Option<SystemTime>,
    /// The last failure, without secrets.
    pub last_error: Option<String>,
    /// When the next refresh (or retry) is due.
    pub next_refresh: Option<SystemTime>,
    /// When the refresh token itself ends, when the provider said.
    pub refresh_token_expires_at: Option<SystemTime>,
}

/// What `Broker::shut_down` could not finish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Accounts whose refresh was still in flight when the wait ran out: if the provider
    /// rotated their refresh token, the new one may never have reached the store.
    pub abandoned: Vec<AccountName>,
    /// Accounts holding a grant in memory that could not be stored.
    pub unsaved: Vec<AccountName>,
    /// Some task (a refresh, or an import or removal of an account named in neither list)
    /// was still running when the wait ran out.
    pub unfinished: bool,
}

/// A token handed to a client.
#[derive(Debug, Clone)]
pub struct ServedToken {
    /// The token (its JSON, once rendered, shared with the account's).
    pub token: IssuedToken,
    /// Time left at the moment it was served.
    pub expires_in: Duration,
}

impl ServedToken {
    /// `token`, with `expires_in` left.
    pub fn new(token: &IssuedToken, expires_in: Duration) -> Self {
        Self {
            token: token.clone(),
            expires_in,
        }
    }

    /// Its JSON, as the API serves it.
    pub fn json(&self) -> Vec<u8> {
        self.token.json(self.expires_in)
    }
}

/// Why the broker could not do what was asked. Messages carry no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// No such account.
    #[error("no account named {0}")]
    UnknownAccount(AccountName),
    /// The account's provider is not configured.
    #[error("provider {0:?} is not configured")]
    UnknownProvider(String),
    /// The grant was refused; the account must be connected again.
    #[error("account {0} needs to be connected again (the provider refused its grant)")]
    NeedsReauth(AccountName),
    /// No token good enough could be had.
    #[error("no valid token for account {name}: {message}")]
    Unavailable {
        /// The account.
        name: AccountName,
        /// Why, without secrets.
        message: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The caller asked for more validity than a token of this provider ever has.
    #[error("min_valid of {requested}s exceeds the {lifetime}s lifetime of this account's tokens")]
    MinValidTooLarge {
        /// Seconds requested.
        requested: u64,
        /// Seconds a token lives.
        lifetime: u64,
    },
    /// The provider refused a new grant, so nothing was stored.
    #[error("the provider did not accept the refresh token: {0}")]
    GrantRejected(String),
    /// The store failed; nothing was acknowledged.
    #[error("store failure: {0}")]
    Store(String),
    /// A broker task failed unexpectedly (a bug); nothing was acknowledged.
    #[error("internal failure: {0}")]
    Internal(String),
    /// Revocation at the provider failed or is impossible; the account was kept.
    #[error("revocation failed, so the account was kept: {0}")]
    Revoke(String),
}

impl BrokerError {
    /// How long a client should wait before asking again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(*retry_after),
            Self::NeedsReauth(_) => Some(REAUTH_RETRY_AFTER),
            _ => None,
        }
    }
}
