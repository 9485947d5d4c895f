//! The refresh engine: the sweep that finds due accounts, the dispatcher that starts their
//! attempts as provider permits free up, single-flight sharing of an attempt, and what an
//! attempt's answer does to the account (store first, then serve; backoff on failure).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};
use tokio::task::{JoinHandle, JoinSet};

use super::{read, Broker, BrokerError, Outcome, Slot, SlotState, Trigger, CLOCK_STEP_TOLERANCE};
use crate::provider::{FailureKind, ProviderError, TokenResponse};
use crate::token::{AccountRecord, IssuedToken};

impl Broker {
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
        drop(queue);
        self.notify(|observer| observer.swept(now));
        started
    }

    /// Starts the queued refreshes, each when a provider permit is free, and keeps at most
    /// twice `max_concurrent` attempts alive (those past the provider are storing their
    /// result): a writer that falls behind slows the dispatch rather than piling up tasks.
    /// Ends when the queue is empty and its attempts have finished, or at shutdown.
    pub(super) async fn dispatch(self) {
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
    pub(super) fn next_queued(&self) -> Option<Arc<Slot>> {
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
    pub(super) fn correct_stepped_expiry(
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

    /// Runs one attempt for `slot`, or shares one: callers that arrive while an attempt is
    /// in flight wait for it and take its outcome instead of starting another. `satisfied`
    /// tells a caller that got the lock after someone else's attempt that it needs none.
    pub(super) async fn refresh_shared(
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
    pub(super) fn may_call_provider(
        &self,
        state: &SlotState,
        trigger: Trigger,
    ) -> Result<(), BrokerError> {
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
    pub(super) async fn attempt(
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

    pub(super) async fn on_success(&self, slot: &Slot, response: TokenResponse, now: SystemTime) {
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
    pub(super) async fn on_lifeless(&self, slot: &Slot, response: TokenResponse, now: SystemTime) {
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

    pub(super) async fn on_failure(&self, slot: &Slot, error: AttemptError, now: SystemTime) {
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
    pub(super) fn note_failure(
        &self,
        state: &mut SlotState,
        error: &ProviderError,
        now: SystemTime,
    ) {
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
}

/// What stopped an attempt.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Unconfigured(BrokerError),
}

impl AttemptError {
    pub(super) fn kind(&self) -> FailureKind {
        match self {
            Self::Provider(error) => error.kind(),
            Self::Unconfigured(_) => FailureKind::Configuration,
        }
    }
}

/// The record after a successful refresh: a new refresh token replaces the old one only
/// when the provider sent one (Dropbox never does).
pub(super) fn with_response(
    mut record: AccountRecord,
    response: TokenResponse,
    now: SystemTime,
) -> AccountRecord {
    record.token = Some(IssuedToken::new(
        response.access_token,
        response.token_type,
        now + response.lifetime,
        response.lifetime,
        response
            .scope
            .or_else(|| record.token.as_ref().and_then(|t| t.scope.clone())),
    ));
    // A refresh token's own expiry is known only as long as the provider keeps saying it:
    // a new refresh token without it has an unknown one.
    let rotated = response.refresh_token.is_some();
    if let Some(rotated) = response.refresh_token {
        record.refresh_token = rotated;
    }
    match response.refresh_token_lifetime {
        Some(lifetime) => record.refresh_token_expires_at = Some(now + lifetime),
        None if rotated => record.refresh_token_expires_at = None,
        None => {}
    }
    record.provider_user_id = response.user_id.or(record.provider_user_id);
    record.needs_reauth = false;
    record.last_refresh = Some(now);
    record.last_error = None;
    record
}
