//! The core: serve an account's access token, refresh it at most once at a time, and make
//! every change durable before it is acknowledged.
//!
//! The broker composes the store, the providers and the clock. It knows nothing of HTTP,
//! clap or signals. It does spawn one short task per refresh attempt: a caller that hangs up
//! must not cut an attempt off between the provider's answer and the store write (that would
//! lose a rotated refresh token), so attempts run detached and callers only wait for them.
//! Every such task is tracked, and `shut_down` waits for them: a refresh in flight at
//! SIGTERM is finished and stored, never dropped.
//!
//! Scheduled refreshes do not get a task each while they wait: a sweep puts the due accounts
//! in one queue, most urgent first, and one dispatcher task starts an attempt whenever a
//! provider permit is free. A storm of 100k due accounts is 100k queue entries and at most
//! twice `max_concurrent` attempts alive, and a caller's own refresh waits for one permit,
//! not behind the whole storm.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::task::TaskTracker;

mod connect;

pub use self::connect::{
    Callback, ConnectError, Mode as ConnectMode, Next as ConnectNext, Outcome as ConnectOutcome,
    Started as ConnectStarted, FLOW_LIFETIME,
};
use crate::clock::SharedClock;
use crate::provider::{FailureKind, Provider, ProviderError, TokenResponse};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{Change, Store, StoreError, Writer};
use crate::token::{AccountName, AccountRecord, IssuedToken, RefreshPolicy};

/// A wall clock ahead of the monotonic one by less than this is not taken for a step.
const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(1);
/// A caller that presents a rejected token may force a refresh at most this often.
pub const REJECTED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
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
    /// The bearer token.
    pub access_token: AccessToken,
    /// `Bearer`.
    pub token_type: String,
    /// When it expires.
    pub expires_at: SystemTime,
    /// Time left at the moment it was served.
    pub expires_in: Duration,
    /// Granted scopes.
    pub scope: Option<String>,
}

impl ServedToken {
    /// `token`, with `expires_in` left.
    pub fn new(token: &IssuedToken, expires_in: Duration) -> Self {
        Self {
            access_token: token.access_token.clone(),
            token_type: token.token_type.clone(),
            expires_at: token.expires_at,
            expires_in,
            scope: token.scope.clone(),
        }
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

/// The broker. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

type RandomSource = Arc<dyn Fn() -> f64 + Send + Sync>;

struct Inner {
    store: Writer,
    /// Why the last store write failed, until one succeeds again.
    store_problem: Mutex<Option<String>>,
    /// Every task the broker spawns (refresh attempts, imports, removals, store retries).
    tasks: TaskTracker,
    /// Set by `shut_down`: no new call to a provider is started.
    closing: AtomicBool,
    /// Cancelled by `shut_down`: waits that need not finish (a device flow's polling
    /// interval) end at once.
    cancel: tokio_util::sync::CancellationToken,
    clock: SharedClock,
    providers: RwLock<HashMap<String, Arc<Provider>>>,
    /// Read for every token served, changed only by a reload: an `ArcSwap`, whose reads
    /// write to no memory another thread reads.
    policy: ArcSwap<RefreshPolicy>,
    observers: RwLock<Vec<Arc<dyn Observer>>>,
    accounts: RwLock<BTreeMap<AccountName, Arc<Slot>>>,
    /// Calls to providers in flight at most (`max_concurrent`).
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    /// Scheduled refreshes waiting for a permit.
    queue: Mutex<Queue>,
    random: RandomSource,
    /// The last sweep, by the wall clock (for metrics) and the monotonic one (for staleness).
    last_tick: Mutex<Option<(SystemTime, tokio::time::Instant)>>,
    flows: Mutex<connect::Flows>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field(
                "accounts",
                &self.accounts.read().map(|a| a.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

/// The accounts a sweep found due, in the order their attempts start, and whether the
/// dispatcher task that starts them is running.
#[derive(Debug, Default)]
struct Queue {
    due: std::collections::VecDeque<Arc<Slot>>,
    dispatching: bool,
}

/// One account: its state, and the lock that makes its refreshes single-flight.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    flight: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct SlotState {
    record: AccountRecord,
    /// When the next scheduled refresh or retry is due.
    due_at: SystemTime,
    /// No call to the provider before this (its `Retry-After`).
    not_before: Option<SystemTime>,
    /// Consecutive failed attempts.
    failures: u32,
    /// Attempts finished so far; a waiter that saw another number shares the latest outcome.
    attempts: u64,
    /// Whether the latest attempt succeeded; waiters that shared it take this outcome.
    last_attempt_ok: bool,
    last_forced: Option<SystemTime>,
    /// The latest record could not be written; the next sweep tries again.
    unsaved: bool,
    /// When the token expires by the monotonic clock, for a token issued since start.
    expires_mono: Option<tokio::time::Instant>,
    /// In the dispatcher's queue (shown as refreshing).
    queued: bool,
}

/// Why a refresh is wanted; decides whether backoff may be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The sweep found the account due.
    Schedule,
    /// A caller needs a fresher token; waits out backoff.
    Demand,
    /// An admin or a rejected token asked; skips backoff, not `Retry-After`.
    Force,
}

impl Broker {
    /// Loads every stored account and returns a broker ready to serve them.
    ///
    /// # Errors
    /// The store cannot be read.
    /// Every task the broker starts is spawned on `tasks`, which the caller owns; the
    /// broker closes it and waits for it in `shut_down`.
    pub fn open(
        store: Arc<dyn Store>,
        providers: Vec<Arc<Provider>>,
        clock: SharedClock,
        config: Config,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        Self::open_with_random(
            store,
            providers,
            clock,
            config,
            tasks,
            Arc::new(rand::random::<f64>),
        )
    }

    /// As `open`, with a chosen source of randomness for jitter (tests pass a constant).
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn open_with_random(
        store: Arc<dyn Store>,
        providers: Vec<Arc<Provider>>,
        clock: SharedClock,
        config: Config,
        tasks: TaskTracker,
        random: RandomSource,
    ) -> Result<Self, StoreError> {
        let records = store.load_all()?;
        let inner = Inner {
            store: Writer::start(store),
            store_problem: Mutex::new(None),
            tasks,
            closing: AtomicBool::new(false),
            cancel: tokio_util::sync::CancellationToken::new(),
            clock,
            providers: RwLock::new(by_name(providers)),
            policy: ArcSwap::from_pointee(config.policy),
            observers: RwLock::new(Vec::new()),
            accounts: RwLock::new(BTreeMap::new()),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            max_concurrent: config.max_concurrent.max(1),
            queue: Mutex::new(Queue::default()),
            random,
            last_tick: Mutex::new(None),
            flows: Mutex::new(connect::Flows::default()),
        };
        let broker = Self {
            inner: Arc::new(inner),
        };
        for record in records {
            let slot = broker.new_slot(record);
            let name = slot.state().record.name.clone();
            write(&broker.inner.accounts).insert(name, slot);
        }
        Ok(broker)
    }

    /// Adds an observer, told of every refresh and new token from now on.
    pub fn add_observer(&self, observer: Arc<dyn Observer>) {
        write(&self.inner.observers).push(observer);
    }

    /// Takes a reloaded configuration: providers and the refresh policy apply from the next
    /// refresh on. Tokens and refreshes in flight are kept; an account whose provider is gone
    /// keeps serving its token and fails its next refresh as unconfigured. `max_concurrent`
    /// is fixed for the broker's life.
    pub fn reconfigure(&self, providers: Vec<Arc<Provider>>, policy: RefreshPolicy) {
        *write(&self.inner.providers) = by_name(providers);
        self.inner.policy.store(Arc::new(policy));
        // Accounts on their regular schedule move to the new margin; those backing off keep
        // their retry time.
        for slot in read(&self.inner.accounts).values() {
            let mut state = slot.state();
            if state.failures == 0 {
                if let Some(token) = &state.record.token {
                    state.due_at = policy.due_at(token, (self.inner.random)());
                }
            }
        }
    }

    /// The current token if it can be served from memory right now, as `token` would serve it;
    /// `None` when `token` would have to refresh or fail. Never waits.
    pub fn cached_token(
        &self,
        name: &AccountName,
        min_valid: Option<Duration>,
    ) -> Option<ServedToken> {
        self.with_cached_token(name.as_str(), min_valid, ServedToken::new)
    }

    /// What `view` makes of the current token and the time it has left, read where it is
    /// kept rather than copied out, if `cached_token` would serve it; `name` is looked up as
    /// it is, without making an `AccountName` of it. `view` runs while the account is locked:
    /// it must be short (the API renders its answer in it).
    pub fn with_cached_token<R>(
        &self,
        name: &str,
        min_valid: Option<Duration>,
        view: impl FnOnce(&IssuedToken, Duration) -> R,
    ) -> Option<R> {
        // The slot is used where the map holds it, not cloned: an `Arc` count that every
        // thread serving the account would write to.
        let accounts = read(&self.inner.accounts);
        let state = accounts.get(name)?.state();
        let (token, left) = self.valid_token(&state, min_valid).ok().flatten()?;
        Some(view(token, left))
    }

    /// The current token if it has at least `min_valid` left (the policy's default when
    /// `None`); otherwise refreshes first, one upstream call however many callers wait.
    ///
    /// # Errors
    /// Unknown account, needs re-auth, or no good-enough token could be had.
    pub async fn token(
        &self,
        name: &AccountName,
        min_valid: Option<Duration>,
    ) -> Result<ServedToken, BrokerError> {
        let slot = self.slot(name)?;
        if let Some(token) = self.servable(&slot.state(), min_valid)? {
            return Ok(token);
        }
        let now_ok = |broker: &Self, state: &SlotState| {
            broker.servable(state, min_valid).ok().flatten().is_some()
        };
        self.refresh_shared(&slot, Trigger::Demand, now_ok).await?;
        let state = slot.state();
        self.servable(&state, min_valid)?
            .ok_or_else(|| self.unavailable(&state))
    }

    /// A caller's API call was refused with `rejected`. If that is still the current token,
    /// refresh at once (at most every 30 s); either way answer with the current token.
    ///
    /// # Errors
    /// As `token`.
    pub async fn reject(
        &self,
        name: &AccountName,
        rejected: &AccessToken,
    ) -> Result<ServedToken, BrokerError> {
        let slot = self.slot(name)?;
        let must_refresh = {
            let state = slot.state();
            let now = self.now();
            let is_current = state
                .record
                .token
                .as_ref()
                .is_some_and(|t| &t.access_token == rejected);
            let recently = state.last_forced.is_some_and(|at| {
                now.duration_since(at).unwrap_or(Duration::ZERO) < REJECTED_REFRESH_INTERVAL
            });
            is_current && !recently
        };
        if must_refresh {
            slot.state().last_forced = Some(self.now());
            let still_current = |_: &Self, state: &SlotState| {
                state
                    .record
                    .token
                    .as_ref()
                    .is_some_and(|t| &t.access_token != rejected)
            };
            self.refresh_shared(&slot, Trigger::Force, still_current)
                .await?;
        }
        self.token(name, None).await
    }

    /// Refreshes now, skipping backoff (not `Retry-After`); for admins.
    ///
    /// # Errors
    /// Unknown account, needs re-auth, or the refresh failed.
    pub async fn refresh_now(&self, name: &AccountName) -> Result<AccountView, BrokerError> {
        let slot = self.slot(name)?;
        self.refresh_shared(&slot, Trigger::Force, |_, _| false)
            .await?;
        self.account(name)
    }

    /// Stores a refresh token obtained elsewhere, after proving it works with a refresh.
    /// An existing account's grant is replaced only once the new one has worked. A provider
    /// that cannot be reached leaves the grant stored and retried (the view says degraded).
    ///
    /// # Errors
    /// Unknown provider, the provider refused the grant (nothing stored), or the store failed.
    pub async fn import(
        &self,
        name: AccountName,
        provider: &str,
        refresh_token: RefreshToken,
    ) -> Result<AccountView, BrokerError> {
        let handle = self.provider(provider)?;
        let broker = self.clone();
        let provider = provider.to_owned();
        // Detached for the same reason as refreshes: a rotated token must reach the store.
        self.detached(async move {
            let answer = {
                let _permit = broker
                    .inner
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                handle.refresh(&refresh_token).await
            };
            broker.install(name, &provider, refresh_token, answer).await
        })
        .await?
    }

    /// Stores the grant that `answer` (a refresh, or a code exchange) proved, replacing the
    /// account's old grant only now that the new one has worked. A transient failure stores
    /// the grant anyway, degraded and retried; any other failure stores nothing.
    async fn install(
        &self,
        name: AccountName,
        provider: &str,
        refresh_token: RefreshToken,
        answer: Result<TokenResponse, ProviderError>,
    ) -> Result<AccountView, BrokerError> {
        let now = self.now();
        let monotonic = self.inner.clock.monotonic();
        let lifetime = answer.as_ref().map(|r| r.lifetime).unwrap_or_default();
        let mut record = AccountRecord::new(name.clone(), provider.to_owned(), refresh_token);
        let failure = match answer {
            Ok(response) => {
                record = with_response(record, response, now);
                None
            }
            Err(error) if error.kind() == FailureKind::Transient => {
                tracing::warn!(account = %name, provider, error = %error, "first refresh of a new grant failed; it is stored and will be retried");
                record.last_error = Some(error.to_string());
                Some(error)
            }
            Err(error) => return Err(BrokerError::GrantRejected(error.to_string())),
        };
        let existing = read(&self.inner.accounts).get(&name).cloned();
        let _flight = match &existing {
            Some(slot) => Some(slot.flight.clone().lock_owned().await),
            None => None,
        };
        self.persist(record.clone())
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?;
        tracing::info!(account = %name, provider, "grant stored");
        let slot = self.new_slot(record);
        {
            let mut state = slot.state();
            match failure {
                Some(error) => self.note_failure(&mut state, &error, now),
                None => state.expires_mono = Some(monotonic + lifetime),
            }
        }
        let has_token = slot.state().record.token.is_some();
        write(&self.inner.accounts).insert(name.clone(), slot);
        if has_token {
            self.notify(|observer| observer.token_changed(&name));
        }
        self.account(&name)
    }

    /// Adds a grant from the configuration if the store has none for that name yet; the
    /// next sweep refreshes it. Returns whether it was added.
    ///
    /// # Errors
    /// The store failed.
    pub async fn seed(
        &self,
        name: AccountName,
        provider: &str,
        refresh_token: RefreshToken,
    ) -> Result<bool, BrokerError> {
        if read(&self.inner.accounts).contains_key(&name) {
            return Ok(false);
        }
        let record = AccountRecord::new(name.clone(), provider.to_owned(), refresh_token);
        self.persist(record.clone())
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?;
        write(&self.inner.accounts)
            .entry(name)
            .or_insert_with(|| self.new_slot(record));
        Ok(true)
    }

    /// Forgets an account, after any refresh of it in flight has finished. With `revoke`,
    /// the grant is first revoked at the provider, and the account is forgotten only once
    /// the provider confirmed (or said the grant was already dead).
    ///
    /// # Errors
    /// Unknown account, revocation failed or is impossible (the account is kept), or the
    /// store failed (the account is kept).
    pub async fn remove(&self, name: &AccountName, revoke: bool) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        let broker = self.clone();
        let name = name.clone();
        self.detached(async move {
            let _flight = slot.flight.lock().await;
            if revoke {
                broker.revoke_locked(&slot).await?;
            }
            broker
                .write(Change::Remove(name.clone()))
                .await
                .map_err(|e| BrokerError::Store(e.to_string()))?;
            write(&broker.inner.accounts).remove(&name);
            tracing::info!(account = %name, revoked = revoke, "account removed");
            Ok(())
        })
        .await?
    }

    /// Revokes the account's grant at its provider; called with the flight lock held.
    async fn revoke_locked(&self, slot: &Slot) -> Result<(), BrokerError> {
        let record = slot.state().record.clone();
        let provider = self.provider(&record.provider)?;
        let style = provider.config().preset.revocation().ok_or_else(|| {
            BrokerError::Revoke(format!("provider {} offers no revocation; remove the account without revoking and revoke it in the provider's settings", record.provider))
        })?;
        let mut access_token = record
            .token
            .as_ref()
            .filter(|t| t.remaining(self.now()) > Duration::from_secs(60))
            .map(|t| t.access_token.clone());
        if style.needs_access_token() && access_token.is_none() {
            // Dropbox and GitHub revoke through an access token: get a fresh one first.
            match provider.refresh(&record.refresh_token).await {
                Ok(response) => {
                    let refreshed = with_response(record.clone(), response, self.now());
                    self.persist(refreshed.clone())
                        .await
                        .map_err(|e| BrokerError::Store(e.to_string()))?;
                    access_token = refreshed.token.as_ref().map(|t| t.access_token.clone());
                    slot.state().record = refreshed;
                }
                // The grant is already dead: nothing left to revoke.
                Err(ProviderError::InvalidGrant { .. }) => return Ok(()),
                Err(error) => return Err(BrokerError::Revoke(error.to_string())),
            }
        }
        let refresh_token = slot.state().record.refresh_token.clone();
        provider
            .revoke(&refresh_token, access_token.as_ref())
            .await
            .map_err(|e| BrokerError::Revoke(e.to_string()))?;
        tracing::info!(account = %record.name, provider = record.provider, "grant revoked at the provider");
        Ok(())
    }

    /// Queues a refresh of every account that is due and not already queued, most urgent
    /// first, starts the dispatcher if it is not running, and retries unsaved records.
    /// Returns at once; the handles (the dispatcher, when this sweep started it, and the
    /// retries) finish when the work does.
    pub fn sweep(&self) -> Vec<JoinHandle<()>> {
        let now = self.now();
        let monotonic = self.inner.clock.monotonic();
        *self
            .inner
            .last_tick
            .lock()
            .expect("tick lock is never poisoned") = Some((now, monotonic));
        if self.closing() {
            return Vec::new();
        }
        // While the store cannot be written, a refresh that rotates the grant would leave the
        // only copy of the new refresh token in memory: hold scheduled refreshes back until
        // the store is writable again, unless the token would otherwise run out.
        let store_ok = self.store_problem().is_none();
        let policy = self.policy();
        let slots: Vec<Arc<Slot>> = read(&self.inner.accounts).values().cloned().collect();
        let mut started = Vec::new();
        let mut due = Vec::new();
        let mut corrected = 0;
        for slot in slots {
            let unsaved = {
                let mut state = slot.state();
                if self.correct_stepped_expiry(&mut state, now, monotonic) {
                    corrected += 1;
                }
                let left = self.time_left(&state);
                let running_out =
                    left.is_none_or(|left| left <= policy.min_valid.max(policy.ahead / 2));
                if !state.queued
                    && !state.record.needs_reauth
                    && now >= state.due_at
                    && state.not_before.is_none_or(|t| now >= t)
                    && (store_ok || running_out)
                {
                    state.queued = true;
                    due.push((left.unwrap_or_default(), slot.clone()));
                }
                state.unsaved
            };
            if unsaved {
                let broker = self.clone();
                started.push(self.inner.tasks.spawn(async move {
                    // After any refresh in flight, so that what is written is the newest.
                    let _flight = slot.flight.lock().await;
                    let record = slot.state().record.clone();
                    if broker.persist(record.clone()).await.is_ok() {
                        let mut state = slot.state();
                        if state.record == record {
                            state.unsaved = false;
                        }
                    }
                }));
            }
        }
        if corrected > 0 {
            tracing::warn!(
                accounts = corrected,
                "the wall clock stepped back: token expiry and refresh times were moved to where the monotonic clock puts them"
            );
        }
        // The token with the least time left goes first.
        due.sort_by_key(|(left, _)| *left);
        let mut queue = self
            .inner
            .queue
            .lock()
            .expect("queue lock is never poisoned");
        queue.due.extend(due.into_iter().map(|(_, slot)| slot));
        if !queue.dispatching && !queue.due.is_empty() {
            queue.dispatching = true;
            let broker = self.clone();
            started.push(
                self.inner
                    .tasks
                    .spawn(async move { broker.dispatch().await }),
            );
        }
        started
    }

    /// Starts the queued refreshes, each when a provider permit is free, and keeps at most
    /// twice `max_concurrent` attempts alive (those past the provider are storing their
    /// result): a writer that falls behind slows the dispatch rather than piling up tasks.
    /// Ends when the queue is empty and its attempts have finished, or at shutdown.
    async fn dispatch(self) {
        let mut running = JoinSet::new();
        while let Some(slot) = self.next_queued() {
            while running.try_join_next().is_some() {}
            if running.len() >= 2 * self.inner.max_concurrent {
                running.join_next().await;
            }
            // After a refresh or store retry of it in flight, which may make this one needless.
            let flight = slot.flight.clone().lock_owned().await;
            {
                let mut state = slot.state();
                state.queued = false;
                let still_due = self.now() >= state.due_at;
                if !still_due || self.may_call_provider(&state, Trigger::Schedule).is_err() {
                    continue;
                }
            }
            let permit = self
                .inner
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let broker = self.clone();
            running.spawn(self.inner.tasks.track_future(async move {
                broker.attempt(&slot, flight, Some(permit)).await;
            }));
        }
        while running.join_next().await.is_some() {}
    }

    /// The next queued account; at shutdown, or when the queue is empty, none (and the
    /// queue is emptied, and the dispatcher marked stopped, under the same lock).
    fn next_queued(&self) -> Option<Arc<Slot>> {
        let mut queue = self
            .inner
            .queue
            .lock()
            .expect("queue lock is never poisoned");
        if self.closing() {
            for slot in queue.due.drain(..) {
                slot.state().queued = false;
            }
        }
        let next = queue.due.pop_front();
        if next.is_none() {
            queue.dispatching = false;
        }
        next
    }

    /// After a backward step of the wall clock, a token's wall-clock expiry claims time the
    /// provider will not give. Moves it (and the refresh due with it) to where the monotonic
    /// clock says it is; returns whether it did.
    fn correct_stepped_expiry(
        &self,
        state: &mut SlotState,
        now: SystemTime,
        monotonic: tokio::time::Instant,
    ) -> bool {
        let (Some(token), Some(deadline)) = (state.record.token.as_mut(), state.expires_mono)
        else {
            return false;
        };
        let left = deadline.saturating_duration_since(monotonic);
        if token.remaining(now) <= left + CLOCK_STEP_TOLERANCE {
            return false;
        }
        token.expires_at = now + left;
        if state.failures == 0 {
            state.due_at = self.policy().due_at(token, (self.inner.random)());
        }
        true
    }

    /// When the scheduler last swept, by the wall clock.
    pub fn last_tick(&self) -> Option<SystemTime> {
        self.ticked().map(|(wall, _)| wall)
    }

    /// How long ago the scheduler last swept, by the monotonic clock: a wall-clock step
    /// cannot make a stalled scheduler look fresh.
    pub fn since_last_tick(&self) -> Option<Duration> {
        let (_, at) = self.ticked()?;
        Some(self.inner.clock.monotonic().saturating_duration_since(at))
    }

    fn ticked(&self) -> Option<(SystemTime, tokio::time::Instant)> {
        *self
            .inner
            .last_tick
            .lock()
            .expect("tick lock is never poisoned")
    }

    /// Up to `limit` accounts that `keep` accepts, in name order, starting after the name
    /// `after`; and whether more follow. Only the accounts looked at are viewed, so a page
    /// costs its own size (and the ones skipped over), not the whole store.
    pub fn accounts_page(
        &self,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&AccountView) -> bool,
    ) -> (Vec<AccountView>, bool) {
        use std::ops::Bound;
        let accounts = read(&self.inner.accounts);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Vec::new();
        for slot in accounts
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, s)| s)
        {
            let view = view(slot);
            if keep(&view) {
                if page.len() == limit {
                    return (page, true);
                }
                page.push(view);
            }
        }
        (page, false)
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Vec<AccountView> {
        let slots: Vec<Arc<Slot>> = read(&self.inner.accounts).values().cloned().collect();
        slots.iter().map(|slot| view(slot)).collect()
    }

    /// One account.
    ///
    /// # Errors
    /// Unknown account.
    pub fn account(&self, name: &AccountName) -> Result<AccountView, BrokerError> {
        let slot = self.slot(name)?;
        Ok(view(&slot))
    }

    /// Whether the account holds a token that is still valid now.
    pub fn has_valid_token(&self, name: &AccountName) -> bool {
        let Ok(slot) = self.slot(name) else {
            return false;
        };
        let state = slot.state();
        !state.record.needs_reauth && self.time_left(&state).is_some_and(|left| !left.is_zero())
    }

    /// Re-seals every stored account under a new store key; returns how many.
    ///
    /// # Errors
    /// The key is not managed by tokenbroker, or the store failed.
    pub async fn rekey(&self) -> Result<usize, BrokerError> {
        let store = self.inner.store.store().clone();
        // A blocking task runs to its end even if the caller goes away.
        tokio::task::spawn_blocking(move || store.rekey())
            .await
            .map_err(|_| BrokerError::Internal("the rekey task failed".into()))?
            .map_err(|e| BrokerError::Store(e.to_string()))
    }

    /// Flushes the store; for shutdown.
    ///
    /// # Errors
    /// The flush failed.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.store.store().flush()
    }

    /// Why the store cannot be written, if the last write failed.
    pub fn store_problem(&self) -> Option<String> {
        self.inner
            .store_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops starting calls to providers, waits up to `limit` for the refreshes, imports and
    /// removals in flight to finish and store their results, tries once more to store what
    /// could not be stored, and says what is left.
    pub async fn shut_down(&self, limit: Duration) -> ShutdownReport {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let finished = tokio::time::timeout(limit, self.inner.tasks.wait())
            .await
            .is_ok();
        let slots: Vec<Arc<Slot>> = read(&self.inner.accounts).values().cloned().collect();
        let mut report = ShutdownReport::default();
        for slot in slots {
            let Ok(_flight) = slot.flight.try_lock() else {
                report.abandoned.push(slot.state().record.name.clone());
                continue;
            };
            let unsaved = {
                let state = slot.state();
                state.unsaved.then(|| state.record.clone())
            };
            if let Some(record) = unsaved {
                let name = record.name.clone();
                match self.persist(record).await {
                    Ok(()) => slot.state().unsaved = false,
                    Err(_) => report.unsaved.push(name),
                }
            }
        }
        report.unfinished = !finished;
        report
    }

    fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    // === the refresh machinery ===

    /// Runs one attempt for `slot`, or shares one: callers that arrive while an attempt is
    /// in flight wait for it and take its outcome instead of starting another. `satisfied`
    /// tells a caller that got the lock after someone else's attempt that it needs none.
    async fn refresh_shared(
        &self,
        slot: &Arc<Slot>,
        trigger: Trigger,
        satisfied: impl Fn(&Self, &SlotState) -> bool,
    ) -> Result<(), BrokerError> {
        let seen = slot.state().attempts;
        let guard = slot.flight.clone().lock_owned().await;
        {
            let state = slot.state();
            if state.attempts != seen {
                return if state.last_attempt_ok {
                    Ok(())
                } else {
                    Err(self.unavailable(&state))
                };
            }
            if satisfied(self, &state) {
                return Ok(());
            }
            self.may_call_provider(&state, trigger)?;
        }
        let broker = self.clone();
        let detached_slot = slot.clone();
        let attempt = self
            .inner
            .tasks
            .spawn(async move { broker.attempt(&detached_slot, guard, None).await });
        let succeeded = attempt
            .await
            .map_err(|_| BrokerError::Internal("a refresh task failed".into()))?;
        if succeeded {
            Ok(())
        } else {
            Err(self.unavailable(&slot.state()))
        }
    }

    /// Refuses a provider call that the account's state forbids.
    fn may_call_provider(&self, state: &SlotState, trigger: Trigger) -> Result<(), BrokerError> {
        let now = self.now();
        if self.closing() {
            return Err(BrokerError::Unavailable {
                name: state.record.name.clone(),
                message: "tokenbroker is shutting down".into(),
                retry_after: Duration::from_secs(5),
            });
        }
        if state.record.needs_reauth {
            return Err(BrokerError::NeedsReauth(state.record.name.clone()));
        }
        let held_off = state.not_before.is_some_and(|t| now < t);
        let backing_off = trigger == Trigger::Demand && state.failures > 0 && now < state.due_at;
        if held_off || backing_off {
            return Err(self.unavailable(state));
        }
        Ok(())
    }

    /// One call to the provider and its consequences. Holds the flight lock throughout, and a
    /// provider permit (`permit`, or one it waits for) during the call. Returns whether it
    /// succeeded; why it failed is in the account's state.
    async fn attempt(
        &self,
        slot: &Slot,
        _flight: OwnedMutexGuard<()>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let (name, provider_name, refresh_token) = {
            let state = slot.state();
            (
                state.record.name.clone(),
                state.record.provider.clone(),
                state.record.refresh_token.clone(),
            )
        };
        let started = tokio::time::Instant::now();
        let answer = match self.provider(&provider_name) {
            Ok(provider) => {
                let _permit = match permit {
                    Some(permit) => permit,
                    None => self
                        .inner
                        .permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                if self.closing() {
                    // Shutdown began while this attempt waited for a permit: no new call.
                    return false;
                }
                tracing::debug!(account = %name, provider = provider_name, "refreshing");
                provider.refresh(&refresh_token).await.map_err(Into::into)
            }
            Err(error) => Err(AttemptError::Unconfigured(error)),
        };
        let took = started.elapsed();
        let now = self.now();
        let outcome = match answer {
            Ok(response) if response.lifetime.is_zero() => {
                self.on_lifeless(slot, response, now).await;
                Outcome::Transient
            }
            Ok(response) => {
                self.on_success(slot, response, now).await;
                Outcome::Refreshed
            }
            Err(error) => {
                let outcome = match error.kind() {
                    FailureKind::Transient => Outcome::Transient,
                    FailureKind::Reauth => Outcome::Reauth,
                    FailureKind::Configuration => Outcome::Configuration,
                };
                self.on_failure(slot, error, now).await;
                outcome
            }
        };
        let succeeded = outcome == Outcome::Refreshed;
        {
            let mut state = slot.state();
            state.attempts += 1;
            state.last_attempt_ok = succeeded;
        }
        self.notify(|observer| observer.refresh_finished(&name, outcome, took));
        if succeeded {
            self.notify(|observer| observer.token_changed(&name));
        }
        succeeded
    }

    async fn on_success(&self, slot: &Slot, response: TokenResponse, now: SystemTime) {
        let rotated = response.refresh_token.is_some();
        let lifetime = response.lifetime;
        let expires_mono = self.inner.clock.monotonic() + lifetime;
        let record = with_response(slot.state().record.clone(), response, now);
        // The new grant reaches the disk before its access token can be served.
        let saved = self.persist(record.clone()).await;
        let mut state = slot.state();
        let token = record
            .token
            .as_ref()
            .expect("a successful refresh holds a token");
        state.due_at = self.policy().due_at(token, (self.inner.random)());
        state.not_before = None;
        state.failures = 0;
        state.record = record;
        state.expires_mono = Some(expires_mono);
        match saved {
            Ok(()) => {
                state.unsaved = false;
                tracing::info!(account = %state.record.name, expires_in = lifetime.as_secs(), rotated, "refreshed");
            }
            Err(error) => {
                // The provider may have rotated the grant already: keep the new one in memory,
                // serve it, and let the sweep retry the write.
                state.unsaved = true;
                state.record.last_error =
                    Some(format!("refreshed, but the store write failed: {error}"));
                tracing::error!(account = %state.record.name, error = %error, "refreshed, but the store write failed; retrying on the next tick");
            }
        }
    }

    /// The provider answered with a token but gave it no lifetime (`expires_in` zero,
    /// negative or not a number). A rotated refresh token in it is kept like any other; the
    /// access token is never served (its lifetime is zero), and the account is retried after
    /// a backoff, as after a transient failure, rather than refreshed on every tick.
    async fn on_lifeless(&self, slot: &Slot, response: TokenResponse, now: SystemTime) {
        let record = with_response(slot.state().record.clone(), response, now);
        let saved = self.persist(record.clone()).await;
        let mut state = slot.state();
        state.expires_mono = Some(self.inner.clock.monotonic());
        let policy = self.policy();
        state.failures = state.failures.saturating_add(1);
        state.due_at = now + policy.backoff(state.failures, None, (self.inner.random)());
        state.record = record;
        state.unsaved = saved.is_err();
        let message = "the provider's answer gave the access token no lifetime (expires_in zero, negative or not a number); it is not served";
        state.record.last_error = Some(message.into());
        tracing::warn!(account = %state.record.name, failures = state.failures, "{message}; will retry");
    }

    async fn on_failure(&self, slot: &Slot, error: AttemptError, now: SystemTime) {
        let (kind, message) = (error.kind(), error.to_string());
        let record = {
            let mut state = slot.state();
            match &error {
                AttemptError::Provider(provider_error) => {
                    self.note_failure(&mut state, provider_error, now)
                }
                AttemptError::Unconfigured(_) => {
                    state.failures += 1;
                    state.due_at = now + self.policy().backoff_max;
                }
            }
            state.record.last_error = Some(message.clone());
            if kind == FailureKind::Reauth {
                state.record.needs_reauth = true;
            }
            let name = &state.record.name;
            match kind {
                FailureKind::Reauth => {
                    tracing::error!(account = %name, error = %message, "grant refused; the account must be connected again")
                }
                FailureKind::Configuration => {
                    tracing::error!(account = %name, error = %message, "refresh refused: configuration error")
                }
                FailureKind::Transient => {
                    tracing::warn!(account = %name, error = %message, failures = state.failures, "refresh failed; will retry")
                }
            }
            state.record.clone()
        };
        // Best effort: the status survives a restart if the disk allows. The record may hold
        // a rotation that is not stored yet, so a failed write leaves it unsaved (retried).
        match self.persist(record).await {
            Ok(()) => slot.state().unsaved = false,
            Err(store_error) => {
                slot.state().unsaved = true;
                tracing::warn!(error = %store_error, "could not record the failure in the store");
            }
        }
    }

    /// Schedules the retry after a provider failure.
    fn note_failure(&self, state: &mut SlotState, error: &ProviderError, now: SystemTime) {
        let policy = self.policy();
        state.failures = state.failures.saturating_add(1);
        state.not_before = error.retry_after().map(|wait| now + wait);
        state.due_at = match error.kind() {
            FailureKind::Transient => {
                now + policy.backoff(state.failures, error.retry_after(), (self.inner.random)())
            }
            FailureKind::Configuration => {
                now + policy
                    .backoff_max
                    .max(error.retry_after().unwrap_or_default())
            }
            FailureKind::Reauth => now,
        };
    }

    // === helpers ===

    /// The token `state` holds, copied out, if it is good enough for `min_valid`.
    fn servable(
        &self,
        state: &SlotState,
        min_valid: Option<Duration>,
    ) -> Result<Option<ServedToken>, BrokerError> {
        let valid = self.valid_token(state, min_valid)?;
        Ok(valid.map(|(token, left)| ServedToken::new(token, left)))
    }

    fn wanted_validity(
        &self,
        state: &SlotState,
        min_valid: Option<Duration>,
    ) -> Result<Duration, BrokerError> {
        let lifetime = state.record.token.as_ref().map(|t| t.lifetime);
        match (min_valid, lifetime) {
            (Some(requested), Some(lifetime)) if requested >= lifetime => {
                Err(BrokerError::MinValidTooLarge {
                    requested: requested.as_secs(),
                    lifetime: lifetime.as_secs(),
                })
            }
            (Some(requested), _) => Ok(requested),
            (None, Some(lifetime)) => Ok(self.policy().default_min_valid(lifetime)),
            (None, None) => Ok(self.policy().min_valid),
        }
    }

    /// The token `state` holds and the time it has left, if it is good enough for
    /// `min_valid`. What "good enough" means depends on the token held (its lifetime caps the
    /// default `min_valid`), so it is worked out afresh against each state, before and after
    /// a refresh.
    fn valid_token<'s>(
        &self,
        state: &'s SlotState,
        min_valid: Option<Duration>,
    ) -> Result<Option<(&'s IssuedToken, Duration)>, BrokerError> {
        let wanted = self.wanted_validity(state, min_valid)?;
        if state.record.needs_reauth {
            return Err(BrokerError::NeedsReauth(state.record.name.clone()));
        }
        let (Some(token), Some(left)) = (&state.record.token, self.time_left(state)) else {
            return Ok(None);
        };
        Ok((left >= wanted && left > Duration::ZERO).then_some((token, left)))
    }

    /// Time the held token has left: the lesser of its wall-clock expiry and, for a token
    /// issued since this process started, its monotonic one (which a step of the wall clock
    /// cannot stretch).
    fn time_left(&self, state: &SlotState) -> Option<Duration> {
        let token = state.record.token.as_ref()?;
        let by_wall = token.remaining(self.now());
        Some(match state.expires_mono {
            Some(deadline) => {
                by_wall.min(deadline.saturating_duration_since(self.inner.clock.monotonic()))
            }
            None => by_wall,
        })
    }

    fn unavailable(&self, state: &SlotState) -> BrokerError {
        let name = state.record.name.clone();
        if state.record.needs_reauth {
            return BrokerError::NeedsReauth(name);
        }
        let now = self.now();
        let retry_at = state.not_before.unwrap_or(state.due_at).max(state.due_at);
        let retry_after = retry_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        let message = state
            .record
            .last_error
            .clone()
            .unwrap_or_else(|| "the token is too close to expiry".into());
        BrokerError::Unavailable {
            name,
            message,
            retry_after,
        }
    }

    fn new_slot(&self, record: AccountRecord) -> Arc<Slot> {
        let now = self.now();
        let due_at = match &record.token {
            Some(token) => self.policy().due_at(token, (self.inner.random)()),
            None => now,
        };
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                record,
                due_at,
                not_before: None,
                failures: 0,
                attempts: 0,
                last_attempt_ok: true,
                last_forced: None,
                unsaved: false,
                expires_mono: None,
                queued: false,
            }),
            flight: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn persist(&self, record: AccountRecord) -> Result<(), StoreError> {
        self.write(Change::Put(record)).await
    }

    /// Writes through the store's writer, keeping note of whether the store is writable.
    async fn write(&self, change: Change) -> Result<(), StoreError> {
        let written = self.inner.store.write(change).await;
        let mut problem = self
            .inner
            .store_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *problem = written.as_ref().err().map(ToString::to_string);
        written
    }

    /// Runs `work` as its own tracked task and waits for it, so that the caller hanging up
    /// cannot stop it halfway (between a provider's answer and the store write, say).
    async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.inner
            .tasks
            .spawn(work)
            .await
            .map_err(|_| BrokerError::Internal("a broker task failed".into()))
    }

    fn slot(&self, name: &AccountName) -> Result<Arc<Slot>, BrokerError> {
        read(&self.inner.accounts)
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownAccount(name.clone()))
    }

    fn provider(&self, name: &str) -> Result<Arc<Provider>, BrokerError> {
        read(&self.inner.providers)
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownProvider(name.to_owned()))
    }

    fn policy(&self) -> RefreshPolicy {
        **self.inner.policy.load()
    }

    fn notify(&self, tell: impl Fn(&dyn Observer)) {
        for observer in read(&self.inner.observers).iter() {
            tell(observer.as_ref());
        }
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }
}

/// What stopped an attempt.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Unconfigured(BrokerError),
}

impl AttemptError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Provider(error) => error.kind(),
            Self::Unconfigured(_) => FailureKind::Configuration,
        }
    }
}

/// The record after a successful refresh: a new refresh token replaces the old one only
/// when the provider sent one (Dropbox never does).
fn with_response(
    mut record: AccountRecord,
    response: TokenResponse,
    now: SystemTime,
) -> AccountRecord {
    record.token = Some(IssuedToken {
        access_token: response.access_token,
        token_type: response.token_type,
        expires_at: now + response.lifetime,
        lifetime: response.lifetime,
        scope: response
            .scope
            .or_else(|| record.token.as_ref().and_then(|t| t.scope.clone())),
    });
    if let Some(rotated) = response.refresh_token {
        record.refresh_token = rotated;
    }
    record.provider_user_id = response.user_id.or(record.provider_user_id);
    record.needs_reauth = false;
    record.last_refresh = Some(now);
    record.last_error = None;
    record
}

fn view(slot: &Slot) -> AccountView {
    let in_flight = slot.flight.try_lock().is_err();
    let state = slot.state();
    let refreshing = in_flight || state.queued;
    let record = &state.record;
    let status = if record.needs_reauth {
        Status::NeedsReauth
    } else if refreshing {
        Status::Refreshing
    } else if state.failures > 0 || state.unsaved {
        Status::Degraded
    } else {
        Status::Active
    };
    AccountView {
        name: record.name.clone(),
        provider: record.provider.clone(),
        status,
        expires_at: record.token.as_ref().map(|t| t.expires_at),
        scope: record.token.as_ref().and_then(|t| t.scope.clone()),
        provider_user_id: record.provider_user_id.clone(),
        last_refresh: record.last_refresh,
        last_error: record.last_error.clone(),
        next_refresh: (!record.needs_reauth).then_some(state.due_at),
    }
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // Every update of the state is a set of plain assignments; a panic cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn by_name(providers: Vec<Arc<Provider>>) -> HashMap<String, Arc<Provider>> {
    providers
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect()
}

fn read<T: ?Sized>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T: ?Sized>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
