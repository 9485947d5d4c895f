//! The refresh engine: the sweep that finds due accounts, the dispatcher that starts their
//! attempts as provider permits free up, single-flight sharing of an attempt, and what an
//! attempt's answer does to the account (store first, then serve; backoff on failure).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};
use tokio::task::{JoinHandle, JoinSet};

use super::outcome::AttemptError;
use super::{read, Broker, BrokerError, Outcome, Slot, SlotState, Trigger, CLOCK_STEP_TOLERANCE};
use crate::provider::FailureKind;
use crate::store::{Claim, Lease};
use crate::token::{AccountName, AccountRecord};

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
        if !store_ok {
            // A store reached over a connection says when it is back, so that /readyz and
            // the held-back refreshes need not wait for some write to succeed.
            if let Some(check) = self.inner.store.store().reachable() {
                let broker = self.clone();
                started.push(self.inner.tasks.spawn(async move {
                    if check.await.is_ok() {
                        broker.note_store(Ok(()));
                    }
                }));
            }
        }
        let mut due = Vec::new();
        let mut corrected = 0;
        let mut texts = TextsInMemory::default();
        for (index, slot) in slots.iter().enumerate() {
            let unsaved = {
                let mut state = slot.state();
                if self.inner.token_memory.is_some() {
                    texts.note(index, &mut state);
                }
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
                let slot = slot.clone();
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
        if let Some(budget) = self.inner.token_memory {
            texts.keep_within(budget, &slots);
        }
        if corrected > 0 {
            tracing::warn!(
                accounts = corrected,
                "the wall clock stepped back: token expiry and refresh times were moved to where the monotonic clock puts them"
            );
        }
        // The token with the least time left goes first, to the second; within a second, in
        // name order from a point of this broker's own, wrapping round: brokers sharing a
        // store, which find the same accounts due, each start somewhere else rather than all
        // reach for the same one, and the writes still go to the store in key order (sled
        // grows by tens of MB, and spends more CPU, when a storm writes its keys at random).
        let start = (((self.inner.random)() * due.len() as f64) as usize).min(due.len());
        due.rotate_left(start);
        due.sort_by_key(|(left, _)| left.as_secs());
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
                broker
                    .attempt(&slot, flight, Some(permit), Trigger::Schedule)
                    .await;
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
            .spawn(async move { broker.attempt(&detached_slot, guard, None, trigger).await });
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
    /// provider permit (`permit`, or one it waits for) during the call. The account is
    /// claimed in the store first: a newer copy stored elsewhere is adopted (and may make the
    /// call needless), and the outcome is committed under the claim. Returns whether the
    /// account has a fresh token afterwards; why not is in the account's state.
    pub(super) async fn attempt(
        &self,
        slot: &Slot,
        _flight: OwnedMutexGuard<()>,
        permit: Option<OwnedSemaphorePermit>,
        trigger: Trigger,
    ) -> bool {
        let (name, provider_name) = {
            let state = slot.state();
            (state.record.name.clone(), state.record.provider.clone())
        };
        // The token as the attempt found it, before any wait for a permit: one adopted from
        // another broker meanwhile is a refresh already made.
        let found = expiry(slot);
        let started = tokio::time::Instant::now();
        let provider = match self.provider(&provider_name) {
            Ok(provider) => provider,
            Err(error) => {
                let lease = Lease::local();
                self.on_failure(slot, lease, AttemptError::Unconfigured(error), self.now())
                    .await;
                return self.finish_attempt(slot, &name, Outcome::Configuration, started.elapsed());
            }
        };
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
        let lease = match self.claim(slot, &name, trigger, found).await {
            Claimed::Go(lease) => lease,
            Claimed::Settled(fresh) => {
                let mut state = slot.state();
                state.attempts += 1;
                state.last_attempt_ok = fresh;
                return fresh;
            }
        };
        let refresh_token = slot.state().record.refresh_token.clone();
        tracing::debug!(account = %name, provider = provider_name, "refreshing");
        let answer = provider.refresh(&refresh_token).await;
        let took = started.elapsed();
        let now = self.now();
        let outcome = match answer {
            Ok(response) if response.lifetime.is_zero() => {
                self.on_lifeless(slot, lease, response, now).await;
                Outcome::Transient
            }
            Ok(response) => {
                self.on_success(slot, lease, response, now).await;
                Outcome::Refreshed
            }
            Err(error) => {
                let outcome = match error.kind() {
                    FailureKind::Transient => Outcome::Transient,
                    FailureKind::Reauth => Outcome::Reauth,
                    FailureKind::Configuration => Outcome::Configuration,
                };
                self.on_failure(slot, lease, error.into(), now).await;
                outcome
            }
        };
        self.finish_attempt(slot, &name, outcome, took)
    }

    /// Records an attempt's outcome and tells the observers; returns whether it succeeded.
    fn finish_attempt(
        &self,
        slot: &Slot,
        name: &AccountName,
        outcome: Outcome,
        took: Duration,
    ) -> bool {
        let succeeded = outcome == Outcome::Refreshed;
        {
            let mut state = slot.state();
            state.attempts += 1;
            state.last_attempt_ok = succeeded;
        }
        self.notify(|observer| observer.refresh_finished(name, outcome, took));
        if succeeded {
            self.notify(|observer| observer.token_changed(name));
        }
        succeeded
    }

    /// Claims the account in the store before its provider is called. A store shared with
    /// other brokers may hold a newer copy (adopted here; if its token is fresh, there is
    /// nothing to do), or another broker may be refreshing it (its outcome is adopted; this
    /// broker never calls the provider then). A store that cannot be reached allows no call:
    /// a rotated grant could not be stored.
    ///
    /// `found`: the token's expiry when the attempt began, before it waited for a permit.
    async fn claim(
        &self,
        slot: &Slot,
        name: &AccountName,
        trigger: Trigger,
        found: Option<SystemTime>,
    ) -> Claimed {
        let wait = trigger != Trigger::Schedule;
        let claimed = self.inner.store.claim(name, wait).await;
        // A token another broker stored, adopted by the claim or since the attempt began by
        // the store's change feed, settles the attempt when it is fresh. Held: for the
        // schedule, any fresh token (the dispatcher found the account due, so a fresh one
        // is another's refresh); for a caller or a forced refresh, only a token that changed
        // since the attempt began, since a refresh of a fresh token is what was asked.
        // Elsewhere: this broker may not call, so any fresh token.
        let fresh = |broker: &Self, newer: Option<AccountRecord>, changed_only: bool| {
            if let Some(record) = newer {
                broker.adopt_into(slot, record);
            }
            let changed = expiry(slot) != found;
            let state = slot.state();
            (!changed_only || changed)
                && state.record.token.is_some()
                && !state.record.needs_reauth
                && broker.now() < state.due_at
        };
        match claimed {
            Ok(Claim::Held { lease, newer }) => {
                if fresh(self, newer, trigger != Trigger::Schedule) {
                    lease.release().await;
                    Claimed::Settled(true)
                } else {
                    Claimed::Go(lease)
                }
            }
            Ok(Claim::Elsewhere { newer }) => Claimed::Settled(fresh(self, newer, false)),
            Err(error) => {
                // No backoff: the account stays due, and the next tick claims it again, so a
                // store that is back is used at once.
                self.note_store(Err(&error));
                let mut state = slot.state();
                state.failures = state.failures.saturating_add(1);
                state.record.last_error = Some(error.to_string());
                tracing::warn!(account = %name, error = %error, "not refreshing: the store cannot be reached, so a new grant could not be kept");
                Claimed::Settled(false)
            }
        }
    }
}

/// A token is told apart by its expiry (a copy of the token itself is not needed).
fn expiry(slot: &Slot) -> Option<SystemTime> {
    slot.state().record.token.as_ref().map(|t| t.expires_at)
}

/// What claiming an account said about the attempt.
enum Claimed {
    /// Call the provider; commit the outcome through this.
    Go(Lease),
    /// No call: the account has a fresh token (`true`) or may not be refreshed now.
    Settled(bool),
}

/// The token texts a sweep found in memory, by their place in the sweep's list of accounts:
/// those asked for since the sweep before, and the others, which are left to the store
/// first when there are more than the budget.
#[derive(Default)]
struct TextsInMemory {
    bytes: usize,
    recent: Vec<usize>,
    idle: Vec<usize>,
}

impl TextsInMemory {
    /// Counts the text of the account at `index`, if it holds one, and starts its next
    /// period unasked.
    fn note(&mut self, index: usize, state: &mut SlotState) {
        let text = state.text_len();
        if text == 0 {
            return;
        }
        self.bytes += text;
        if std::mem::take(&mut state.asked) {
            self.recent.push(index);
        } else {
            self.idle.push(index);
        }
    }

    /// Leaves texts to the store until at most `budget` bytes are held: idle accounts'
    /// first, then, if that is not enough, those asked for lately. An account whose record
    /// is not stored yet keeps its text (the store does not hold it).
    fn keep_within(self, budget: usize, slots: &[Arc<Slot>]) {
        let mut over = self.bytes.saturating_sub(budget);
        for &index in self.idle.iter().chain(&self.recent) {
            if over == 0 {
                return;
            }
            let mut state = slots[index].state();
            if state.unsaved || state.asked {
                continue;
            }
            over = over.saturating_sub(state.text_len());
            state.leave_to_store();
        }
    }
}
