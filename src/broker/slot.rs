//! One account in memory: its record and refresh state behind a lock, the async lock that
//! makes its refreshes single-flight, and the view of it that clients see. An account may
//! leave its access token's text to the store (`SlotState::stored_only`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::{AccountView, Status};
use crate::token::AccountRecord;

/// One account: its state, and the lock that makes its refreshes single-flight.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: Mutex<SlotState>,
    pub(super) flight: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
pub(super) struct SlotState {
    pub(super) record: AccountRecord,
    /// When the next scheduled refresh or retry is due.
    pub(super) due_at: SystemTime,
    /// No call to the provider before this (its `Retry-After`).
    pub(super) not_before: Option<SystemTime>,
    /// Consecutive failed attempts.
    pub(super) failures: u32,
    /// Attempts finished so far; a waiter that saw another number shares the latest outcome.
    pub(super) attempts: u64,
    /// Whether the latest attempt succeeded; waiters that shared it take this outcome.
    pub(super) last_attempt_ok: bool,
    pub(super) last_forced: Option<SystemTime>,
    /// The latest record could not be written; the next sweep tries again.
    pub(super) unsaved: bool,
    /// When the token expires by the monotonic clock, for a token issued since start.
    pub(super) expires_mono: Option<tokio::time::Instant>,
    /// In the dispatcher's queue (shown as refreshing).
    pub(super) queued: bool,
    /// A caller asked for the account's token since the last sweep.
    pub(super) asked: bool,
}

impl SlotState {
    /// Whether the access token's text is only in the store: a sweep left it there, to keep
    /// within the memory for tokens. `record.token` keeps what else is known of it. The
    /// text is read back (`Broker::bring_in`) before anything needs it, and the record is
    /// never written meanwhile.
    pub(super) fn stored_only(&self) -> bool {
        text_is_in_store(&self.record)
    }

    /// Leaves the access token's text to the store, which holds it: called only once the
    /// record holding it is durable.
    pub(super) fn leave_to_store(&mut self) {
        if let Some(token) = self.record.token.as_mut() {
            token.access_token = crate::secret::AccessToken::new(String::new());
        }
    }

    /// The bytes of token text held in memory.
    pub(super) fn text_len(&self) -> usize {
        self.record
            .token
            .as_ref()
            .map_or(0, |token| token.access_token.expose().len())
    }
}

/// Whether `record`'s token text was left to the store: its place holds an empty text,
/// which no provider issues (`provider::response` refuses an empty token).
pub(super) fn text_is_in_store(record: &AccountRecord) -> bool {
    record
        .token
        .as_ref()
        .is_some_and(|token| token.access_token.expose().is_empty())
}

pub(super) fn view(slot: &Slot) -> AccountView {
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
        refresh_token_expires_at: record.refresh_token_expires_at,
    }
}

impl Slot {
    pub(super) fn state(&self) -> MutexGuard<'_, SlotState> {
        // Every update of the state is a set of plain assignments; a panic cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
