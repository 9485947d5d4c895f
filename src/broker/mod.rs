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
//!
//! This file is the facade (opening, serving tokens, listing, shutdown) and the state the
//! parts share; `engine` refreshes, `grants` imports, seeds, removes and re-keys, `slot` is
//! one account in memory, `types` what callers see, `connect` the flows that connect one.
//!
//! Memory: on a store that [reads back](crate::store::Store::reads_back) (the embedded one),
//! the text of access tokens is kept in memory up to the store's budget
//! (`store.token_memory_mib`). Each sweep leaves the tokens beyond it to the store, those no
//! caller asked for since the sweep before first, and a token left there is read back when
//! it is asked for. What else is known of a token (its expiry, lifetime and scope) stays in
//! memory, so scheduling, listings and readiness never read the store.
//!
//! Why it is one file: it is the core's whole public surface, each operation a short
//! method over the parts named above, with the state they share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

mod connect;
mod engine;
mod grants;
mod outcome;
mod slot;
mod types;

pub use self::connect::{
    Callback, ConnectError, Mode as ConnectMode, Next as ConnectNext, Outcome as ConnectOutcome,
    Started as ConnectStarted, FLOW_LIFETIME,
};
use self::slot::{view, Slot, SlotState};
pub use self::types::{
    AccountView, BrokerError, Config, Fixed, Observer, Outcome, ServedToken, ShutdownReport,
    Status, Tuning,
};
use crate::clock::SharedClock;
use crate::provider::Provider;
use crate::secret::AccessToken;
use crate::store::{Change, Lease, Store, StoreError, Stored, Writer};
use crate::token::{AccountName, AccountRecord, IssuedToken, RefreshPolicy};

/// Reads of tokens back from the store in flight at most (each on a blocking thread).
const READ_BACKS: usize = 4;
/// A wall clock ahead of the monotonic one by less than this is not taken for a step.
const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(1);
/// A caller that presents a rejected token, or asks for more validity than a good token has,
/// may cause a refresh at most this often.
pub const REJECTED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The broker. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

type RandomSource = Arc<dyn Fn() -> f64 + Send + Sync>;

struct Inner {
    store: Writer,
    /// Bytes of token text kept in memory at most, when the store reads back the tokens
    /// left to it (`Store::reads_back`); `None`: every token is kept.
    token_memory: Option<usize>,
    /// Reads back in flight at most, each on a blocking thread: however many callers ask
    /// for accounts whose tokens are in the store, a few threads read for them.
    read_backs: Semaphore,
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
    /// The providers and the refresh policy, as the current configuration has them.
    tuning: Arc<dyn Tuning>,
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
    /// broker closes it and waits for it in `shut_down`. Providers and the refresh policy
    /// are read from `tuning` whenever they are needed; `max_concurrent` is fixed.
    pub fn open(
        store: Arc<dyn Store>,
        tuning: Arc<dyn Tuning>,
        clock: SharedClock,
        max_concurrent: usize,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        Self::open_with_random(
            store,
            tuning,
            clock,
            max_concurrent,
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
        tuning: Arc<dyn Tuning>,
        clock: SharedClock,
        max_concurrent: usize,
        tasks: TaskTracker,
        random: RandomSource,
    ) -> Result<Self, StoreError> {
        let records = store.load_all()?;
        let token_memory = store.reads_back();
        let inner = Inner {
            token_memory,
            read_backs: Semaphore::new(READ_BACKS),
            store: Writer::start(store),
            store_problem: Mutex::new(None),
            tasks,
            closing: AtomicBool::new(false),
            cancel: tokio_util::sync::CancellationToken::new(),
            clock,
            tuning,
            observers: RwLock::new(Vec::new()),
            accounts: RwLock::new(BTreeMap::new()),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            queue: Mutex::new(Queue::default()),
            random,
            last_tick: Mutex::new(None),
            flows: Mutex::new(connect::Flows::default()),
        };
        let broker = Self {
            inner: Arc::new(inner),
        };
        // Tokens are kept in memory in the store's order while they fit.
        let mut room = token_memory.unwrap_or(usize::MAX);
        for record in records {
            let slot = broker.new_slot(record);
            let name = {
                let mut state = slot.state();
                let text = state.text_len();
                if text <= room {
                    room -= text;
                } else {
                    state.leave_to_store();
                }
                state.record.name.clone()
            };
            write(&broker.inner.accounts).insert(name, slot);
        }
        Ok(broker)
    }

    /// Adds an observer, told of every refresh and new token from now on.
    pub fn add_observer(&self, observer: Arc<dyn Observer>) {
        write(&self.inner.observers).push(observer);
    }

    /// After a reload changed what `tuning` gives: providers and the refresh policy apply
    /// from the next refresh on. Tokens and refreshes in flight are kept; an account whose
    /// provider is gone keeps serving its token and fails its next refresh as unconfigured.
    pub fn retune(&self) {
        let policy = self.policy();
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

    /// Whether `token` would serve the account's current token at once, without a refresh
    /// (it may still read the token's text back from the store). Never waits.
    pub fn token_ready(&self, name: &AccountName, min_valid: Option<Duration>) -> bool {
        let accounts = read(&self.inner.accounts);
        accounts.get(name).is_some_and(|slot| {
            self.valid_token(&slot.state(), min_valid)
                .ok()
                .flatten()
                .is_some()
        })
    }

    /// The current token, if it has at least `min_valid` left, read back from the store if
    /// it was left there; `None` when there is no such token (it needs re-auth, or ran
    /// out). Never refreshes.
    ///
    /// # Errors
    /// Unknown account, or the store cannot read the token back.
    pub async fn current_token(
        &self,
        name: &AccountName,
        min_valid: Option<Duration>,
    ) -> Result<Option<ServedToken>, BrokerError> {
        let slot = self.slot(name)?;
        let mut state = self.bring_in(&slot).await?;
        state.asked = true;
        Ok(self.servable(&state, min_valid).ok().flatten())
    }

    /// What `view` makes of the current token and the time it has left, read where it is
    /// kept rather than copied out, if `token` would serve it at once from memory; `name` is
    /// looked up as
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
        let mut state = accounts.get(name)?.state();
        if state.stored_only() {
            return None;
        }
        state.asked = true;
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
        if let Some(token) = self.serve(&slot, min_valid).await? {
            return Ok(token);
        }
        if min_valid.is_some() {
            self.may_refresh_for_more_validity(&slot.state())?;
        }
        // Good enough whether its text is in memory or only in the store.
        let now_ok = |broker: &Self, state: &SlotState| {
            broker
                .valid_token(state, min_valid)
                .ok()
                .flatten()
                .is_some()
        };
        self.refresh_shared(&slot, Trigger::Demand, now_ok).await?;
        self.serve(&slot, min_valid)
            .await?
            .ok_or_else(|| self.unavailable(&slot.state()))
    }

    /// The token `slot` holds, copied out, if it is good enough for `min_valid`: read back
    /// first if it is only in the store.
    async fn serve(
        &self,
        slot: &Slot,
        min_valid: Option<Duration>,
    ) -> Result<Option<ServedToken>, BrokerError> {
        let mut state = self.bring_in(slot).await?;
        state.asked = true;
        self.servable(&state, min_valid)
    }

    /// A caller that asks for more validity than a good token has (a large `min_valid`) gets
    /// a refresh at most every [`REJECTED_REFRESH_INTERVAL`] (or a tenth of the token's
    /// lifetime, if less): otherwise every request could cost an upstream call. A token that is not good by the default rule is always
    /// refreshed.
    fn may_refresh_for_more_validity(&self, state: &SlotState) -> Result<(), BrokerError> {
        let Some(token) = &state.record.token else {
            return Ok(());
        };
        if self.valid_token(state, None)?.is_none() {
            return Ok(());
        }
        // A tenth of the lifetime for short-lived tokens: a 10 s token may be refreshed every
        // second, a 4 h one every 30 s.
        let floor = REJECTED_REFRESH_INTERVAL.min(token.lifetime / 10);
        let since = self
            .now()
            .duration_since(token.issued_at())
            .unwrap_or(Duration::ZERO);
        if since >= floor {
            return Ok(());
        }
        Err(BrokerError::Unavailable {
            name: state.record.name.clone(),
            message: format!(
                "this token was issued {}s ago; a token with more time left is fetched at most every {}s",
                since.as_secs(),
                floor.as_secs()
            ),
            retry_after: (floor - since).max(Duration::from_secs(1)),
        })
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
            let mut state = self.bring_in(&slot).await?;
            state.asked = true;
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
        let mut views = Vec::new();
        self.for_each_account(|view| views.push(view));
        views
    }

    /// Hands `visit` a view of every account, by name, one at a time: what looks at every
    /// account (a metrics scrape, the notifier's hourly check) holds one view at a time, not
    /// 100k of them. The map is not locked while `visit` runs.
    pub fn for_each_account(&self, mut visit: impl FnMut(AccountView)) {
        let slots: Vec<Arc<Slot>> = read(&self.inner.accounts).values().cloned().collect();
        for slot in &slots {
            visit(view(slot));
        }
    }

    /// How many accounts there are.
    pub fn account_count(&self) -> usize {
        read(&self.inner.accounts).len()
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

    // === helpers ===

    /// The token `state` holds, copied out, if it is good enough for `min_valid` and its
    /// text is in memory.
    fn servable(
        &self,
        state: &SlotState,
        min_valid: Option<Duration>,
    ) -> Result<Option<ServedToken>, BrokerError> {
        let valid = self.valid_token(state, min_valid)?;
        Ok(valid
            .filter(|_| !state.stored_only())
            .map(|(token, left)| ServedToken::new(token, left)))
    }

    /// The account's state, locked, with its access token's text in memory: read back from
    /// the store first if it was left there. Handed back under the lock that put it there,
    /// so that no sweep can leave it to the store again before the caller has used it.
    ///
    /// The store holds the token memory knows of, or a newer one whose record is being put
    /// in place (a refresh or import stores before it updates memory): either is the
    /// account's, and the newer one replaces this record a moment later.
    ///
    /// # Errors
    /// The store cannot be read (`store_unavailable`, retried by the caller), or it lost the
    /// account.
    async fn bring_in<'s>(
        &self,
        slot: &'s Slot,
    ) -> Result<std::sync::MutexGuard<'s, SlotState>, BrokerError> {
        let name = {
            let state = slot.state();
            if !state.stored_only() {
                return Ok(state);
            }
            state.record.name.clone()
        };
        let store = self.inner.store.store().clone();
        let looked_up = name.clone();
        let _reading = self
            .inner
            .read_backs
            .acquire()
            .await
            .expect("the semaphore is never closed");
        {
            let state = slot.state();
            if !state.stored_only() {
                // Another caller read it back meanwhile.
                return Ok(state);
            }
        }
        let loaded = tokio::task::spawn_blocking(move || store.load(&looked_up))
            .await
            .map_err(|_| BrokerError::Internal("a store read failed".into()))?
            .map_err(|error| BrokerError::Unavailable {
                name: name.clone(),
                message: format!(
                    "store_unavailable: the token cannot be read from the store: {error}"
                ),
                retry_after: Duration::from_secs(5),
            })?;
        let mut state = slot.state();
        if !state.stored_only() {
            return Ok(state);
        }
        let text = loaded
            .and_then(|record| record.token)
            .map(|token| token.access_token);
        match (state.record.token.as_mut(), text) {
            (Some(token), Some(text)) => {
                token.access_token = text;
                Ok(state)
            }
            _ => Err(BrokerError::Internal(format!(
                "the store holds no access token for account {name}, whose token was left to it"
            ))),
        }
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
        // A stored failure's backoff holds after a restart too.
        let due_at = due_at.max(record.retry_at.unwrap_or(due_at));
        let failures = u32::from(record.retry_at.is_some_and(|at| now < at));
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                record,
                due_at,
                not_before: None,
                failures,
                attempts: 0,
                last_attempt_ok: true,
                last_forced: None,
                unsaved: false,
                expires_mono: None,
                queued: false,
                asked: false,
            }),
            flight: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn persist(&self, record: AccountRecord) -> Result<(), StoreError> {
        without_text(&record)?;
        self.write(Change::Put(record)).await
    }

    /// Writes through the store's writer, keeping note of whether the store is writable.
    async fn write(&self, change: Change) -> Result<(), StoreError> {
        let written = self.inner.store.write(change).await;
        self.note_store(written.as_ref().map(|_| ()));
        written
    }

    /// Stores a refresh's outcome under its claim: in the claim's own transaction when the
    /// store holds one, through the writer otherwise.
    async fn commit(&self, lease: Lease, record: AccountRecord) -> Result<(), StoreError> {
        without_text(&record)?;
        match lease.into_held() {
            Some(held) => {
                let committed = held.commit(record).await;
                self.note_store(committed.as_ref().map(|_| ()));
                committed
            }
            None => self.persist(record).await,
        }
    }

    /// Keeps note of whether the store could be written (or reached), for `/readyz`.
    fn note_store(&self, outcome: Result<(), &StoreError>) {
        let mut problem = self
            .inner
            .store_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *problem = outcome.err().map(ToString::to_string);
    }

    /// Takes what another broker stored for an account (reported by a shared store).
    pub fn adopt(&self, stored: Stored) {
        match stored {
            Stored::Put(record) => {
                let name = record.name.clone();
                let existing = read(&self.inner.accounts).get(&name).cloned();
                match existing {
                    Some(slot) => {
                        self.adopt_into(&slot, record);
                    }
                    None => {
                        let slot = self.new_slot(record);
                        write(&self.inner.accounts).insert(name.clone(), slot);
                        tracing::info!(account = %name, "account added by another broker");
                        self.notify(|observer| observer.token_changed(&name));
                    }
                }
            }
            Stored::Removed(name) => {
                if write(&self.inner.accounts).remove(&name).is_some() {
                    tracing::info!(account = %name, "account removed by another broker");
                    self.notify(|observer| observer.account_removed(&name));
                }
            }
        }
    }

    /// Replaces the account's record with one stored by another broker, and schedules its
    /// next refresh from it; returns whether its token is fresh (not due for a refresh).
    fn adopt_into(&self, slot: &Slot, record: AccountRecord) -> bool {
        let now = self.now();
        let policy = self.policy();
        let mut state = slot.state();
        let changed = state.record.token != record.token;
        state.due_at = match &record.token {
            Some(token) => policy.due_at(token, (self.inner.random)()),
            None => now,
        };
        // Another broker's failed attempt: its backoff (and the provider's Retry-After)
        // holds here too, and counts as one more failure.
        let backoff = record.retry_at.filter(|at| now < *at);
        if let Some(at) = backoff {
            state.due_at = state.due_at.max(at);
        }
        state.failures = match backoff {
            Some(_) => state.failures.saturating_add(1),
            None => 0,
        };
        state.record = record;
        state.not_before = None;
        state.unsaved = false;
        state.expires_mono = None;
        let fresh =
            !state.record.needs_reauth && state.record.token.is_some() && now < state.due_at;
        let name = state.record.name.clone();
        drop(state);
        if changed {
            tracing::debug!(account = %name, "adopted a token another broker stored");
            self.notify(|observer| observer.token_changed(&name));
        }
        fresh
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
        self.inner
            .tuning
            .provider(name)
            .ok_or_else(|| BrokerError::UnknownProvider(name.to_owned()))
    }

    fn policy(&self) -> RefreshPolicy {
        self.inner.tuning.policy()
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

/// Refuses to write a record whose token's text was left to the store: writing it would
/// replace the stored token with an empty one. Every path that writes a slot's record reads
/// the text back first; this is the check that none was missed.
fn without_text(record: &AccountRecord) -> Result<(), StoreError> {
    let empty = slot::text_is_in_store(record);
    debug_assert!(!empty, "a record without its token's text reached a write");
    if empty {
        return Err(StoreError::Engine {
            operation: "write",
            reason: format!(
                "account {}: a record without its access token's text was not written",
                record.name
            ),
        });
    }
    Ok(())
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
