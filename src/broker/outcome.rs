//! What an attempt's answer does to the account: a new token stored under the claim before
//! it is served, a lifeless token kept but never served, a failure's backoff or re-auth.

use std::time::SystemTime;

use super::{Broker, BrokerError, Slot, SlotState};
use crate::provider::{FailureKind, ProviderError, TokenResponse};
use crate::store::Lease;
use crate::token::{AccountRecord, IssuedToken};

impl Broker {
    pub(super) async fn on_success(
        &self,
        slot: &Slot,
        lease: Lease,
        response: TokenResponse,
        now: SystemTime,
    ) {
        let rotated = response.refresh_token.is_some();
        let lifetime = response.lifetime;
        let expires_mono = self.inner.clock.monotonic() + lifetime;
        let record = with_response(slot.state().record.clone(), response, now);
        // The new grant reaches the store before its access token can be served.
        let saved = self.commit(lease, record.clone()).await;
        let mut state = slot.state();
        let token = record
            .token
            .as_ref()
            .expect("a successful refresh holds a token");
        state.due_at = self.policy().due_at(token, (self.inner.random)());
        state.not_before = None;
        state.failures = 0;
        // A token whose text the store held is replaced by one it holds too, once stored.
        let in_store = state.stored_only();
        state.record = record;
        state.expires_mono = Some(expires_mono);
        match saved {
            Ok(()) => {
                state.unsaved = false;
                if in_store {
                    state.leave_to_store();
                }
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
    pub(super) async fn on_lifeless(
        &self,
        slot: &Slot,
        lease: Lease,
        response: TokenResponse,
        now: SystemTime,
    ) {
        let record = with_response(slot.state().record.clone(), response, now);
        let saved = self.commit(lease, record.clone()).await;
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

    pub(super) async fn on_failure(
        &self,
        slot: &Slot,
        lease: Lease,
        error: AttemptError,
        now: SystemTime,
    ) {
        // The failure is stored with the account's token: its text first, if it was left
        // to the store. Without it the failure is recorded in memory only.
        let (record, unreadable) = match self.bring_in(slot).await {
            Ok(mut state) => (self.failed(&mut state, &error, now), None),
            Err(unreadable) => (
                self.failed(&mut slot.state(), &error, now),
                Some(unreadable),
            ),
        };
        if let Some(unreadable) = unreadable {
            tracing::warn!(account = %record.name, error = %unreadable, "could not record the failure in the store");
            lease.release().await;
            return;
        }
        // Best effort: the status survives a restart if the disk allows. The record may hold
        // a rotation that is not stored yet, so a failed write leaves it unsaved (retried).
        match self.commit(lease, record).await {
            Ok(()) => slot.state().unsaved = false,
            Err(store_error) => {
                slot.state().unsaved = true;
                tracing::warn!(error = %store_error, "could not record the failure in the store");
            }
        }
    }

    /// What a failed attempt does to the account: its backoff (or re-auth), its error, and
    /// the log line; returns the record to store.
    fn failed(
        &self,
        state: &mut SlotState,
        error: &AttemptError,
        now: SystemTime,
    ) -> AccountRecord {
        let (kind, message) = (error.kind(), error.to_string());
        match error {
            AttemptError::Provider(provider_error) => self.note_failure(state, provider_error, now),
            AttemptError::Unconfigured(_) => {
                state.failures += 1;
                state.due_at = now + self.policy().backoff_max;
            }
        }
        state.record.last_error = Some(message.clone());
        if kind == FailureKind::Reauth {
            state.record.needs_reauth = true;
        }
        // Stored with the failure: another broker that adopts it keeps to it too.
        state.record.retry_at = (kind != FailureKind::Reauth).then_some(state.due_at);
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
    record.retry_at = None;
    record
}
