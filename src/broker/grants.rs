//! Grant management: import a refresh token obtained elsewhere (proved by a refresh before
//! it replaces anything), seed declared accounts, remove an account (revoking its grant at
//! the provider first when asked), and re-seal the store under a new key.

use super::outcome::with_response;
use std::time::Duration;

use super::{read, write, AccountView, Broker, BrokerError, Slot};
use crate::provider::{FailureKind, ProviderError, TokenResponse};
use crate::secret::RefreshToken;
use crate::store::Change;
use crate::token::{AccountName, AccountRecord};

impl Broker {
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
    pub(super) async fn install(
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
        self.notify(|observer| observer.grant_installed(&name));
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
            broker.notify(|observer| observer.account_removed(&name));
            Ok(())
        })
        .await?
    }

    /// Revokes the account's grant at its provider; called with the flight lock held.
    pub(super) async fn revoke_locked(&self, slot: &Slot) -> Result<(), BrokerError> {
        let record = self.bring_in(slot).await?.record.clone();
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
}
