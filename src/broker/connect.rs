//! Connecting accounts: one-time start tickets, the single-use `state` and PKCE verifier of
//! each browser flow, the no-redirect and device flows, and installing the grant they yield.
//!
//! A flow lives 10 minutes. Its `state` is bound to its ticket and so to one provider: a
//! callback is accepted only for the provider it was issued for (and, when the provider
//! names itself with `iss`, only if that matches), so several providers cannot be mixed up.
//!
//! Why it is one file: the browser, no-redirect and device flows share one table of
//! tickets and states, their expiry and the install of the grant they end in.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use url::Url;

use super::{AccountView, Broker, BrokerError};
use crate::provider::{random_token, Pkce, Preset, Provider, ProviderError, TokenResponse};
use crate::secret::{AuthorizationCode, PkceVerifier, REDACTED};
use crate::token::AccountName;

/// How long a start ticket, its state and a device flow stay usable.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8628 §3.5: `slow_down` adds this to the polling interval, for good.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Which flow to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Browser: open `{public_url}/oauth/start/{ticket}`, approve, land on the callback.
    Redirect,
    /// The provider shows the code; the admin pastes it back.
    NoRedirect,
    /// RFC 8628: the user enters a code on another device.
    Device,
}

/// What the admin must do next.
#[derive(Clone)]
pub enum Next {
    /// Open this URL in a browser.
    Open(Url),
    /// Open this URL, approve, and paste the code shown.
    EnterCode(Url),
    /// Go to `verification_uri` and type `user_code`.
    Device {
        /// The code to type.
        user_code: String,
        /// Where to type it.
        verification_uri: String,
        /// The same with the code filled in.
        verification_uri_complete: Option<String>,
    },
}

/// A started flow.
#[derive(Clone)]
pub struct Started {
    /// Identifies the flow in later calls.
    pub ticket: String,
    /// When it stops being usable.
    pub expires_at: SystemTime,
    /// What to do next.
    pub next: Next,
}

/// Where a flow stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Waiting for the user.
    Pending,
    /// The account is connected.
    Connected(AccountView),
    /// It failed; the words say why and carry no secret.
    Failed(String),
}

/// Why a connect request or callback was refused. Nothing is stored in any of these cases.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// No such ticket, or it was already used, or it expired.
    #[error(
        "this link is unknown, already used, or expired (links are single-use and live 10 minutes)"
    )]
    UnknownTicket,
    /// The callback's state is missing, unknown, already used or expired.
    #[error("the sign-in answer does not belong to a pending connection (unknown, reused or expired state)")]
    BadState,
    /// The callback names another issuer than the flow's provider.
    #[error("the sign-in answer came from {got:?}, not from provider {provider} (possible mix-up attack)")]
    WrongIssuer {
        /// The flow's provider.
        provider: String,
        /// The `iss` the callback carried.
        got: String,
    },
    /// The provider reported an error (the user denied access, say).
    #[error("the provider answered {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Provider {
        /// The OAuth error code.
        error: String,
        /// Its description, cleaned.
        description: Option<String>,
    },
    /// The callback had no code.
    #[error("the sign-in answer carried no authorization code")]
    MissingCode,
    /// The code exchange failed.
    #[error("exchanging the code failed: {0}")]
    Exchange(String),
    /// The provider gave no refresh token.
    #[error("the provider issued no refresh token, so the account could not be kept fresh: {0}")]
    NoRefreshToken(&'static str),
    /// The flow is not of the kind this call needs.
    #[error("this connection is not a {0} flow")]
    WrongMode(&'static str),
    /// Starting the flow failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The query of `GET /oauth/callback`.
#[derive(Default, Clone)]
pub struct Callback {
    /// `code`.
    pub code: Option<AuthorizationCode>,
    /// `state`.
    pub state: Option<String>,
    /// `error`.
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `iss` (RFC 9207).
    pub iss: Option<String>,
}

/// Pending flows, by ticket, and the state each browser flow is waiting for.
#[derive(Default)]
pub(super) struct Flows {
    by_ticket: HashMap<String, Flow>,
    ticket_by_state: HashMap<String, String>,
}

#[derive(Debug)]
struct Flow {
    account: AccountName,
    provider: String,
    mode: Mode,
    expires_at: SystemTime,
    /// The start link was used (it is single-use).
    started: bool,
    pkce: Option<Pkce>,
    redirect_uri: Option<Url>,
    outcome: watch::Sender<Outcome>,
}

// Tickets and states are capabilities (a ticket starts a flow, a state completes one), and
// the URLs below carry them: their Debug output leaves them out.

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(_) => f.write_str("Open([REDACTED])"),
            Self::EnterCode(_) => f.write_str("EnterCode([REDACTED])"),
            Self::Device {
                user_code,
                verification_uri,
                ..
            } => f
                .debug_struct("Device")
                .field("user_code", user_code)
                .field("verification_uri", verification_uri)
                .finish_non_exhaustive(),
        }
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("ticket", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("next", &self.next)
            .finish()
    }
}

impl fmt::Debug for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callback")
            .field("code", &self.code)
            .field("state", &self.state.as_ref().map(|_| REDACTED))
            .field("error", &self.error)
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Flows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flows")
            .field("pending", &self.by_ticket.len())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts connecting `account` at `provider`. `callback` is `{public_url}/oauth/callback`,
    /// `start_base` is `{public_url}/oauth/start/`.
    ///
    /// # Errors
    /// Unknown provider, or the provider refused to start a device flow.
    pub async fn begin_connect(
        &self,
        account: AccountName,
        provider: &str,
        mode: Mode,
        callback: &Url,
        start_base: &Url,
    ) -> Result<Started, ConnectError> {
        let handle = self.provider(provider)?;
        let ticket = random_token();
        let expires_at = self.now() + FLOW_LIFETIME;
        let (outcome, _) = watch::channel(Outcome::Pending);
        let mut flow = Flow {
            account,
            provider: provider.to_owned(),
            mode,
            expires_at,
            started: false,
            pkce: None,
            redirect_uri: None,
            outcome,
        };
        let next = match mode {
            Mode::Redirect => {
                // Fail now, where the caller sees it, if the provider cannot be sent to (no
                // authorization endpoint, discovery failing), rather than in a browser page
                // while the caller waits.
                handle
                    .authorize_url("check", None, Some(callback))
                    .await
                    .map_err(|e| ConnectError::Exchange(e.to_string()))?;
                flow.redirect_uri = Some(callback.clone());
                Next::Open(
                    start_base
                        .join(&ticket)
                        .map_err(|e| ConnectError::Exchange(e.to_string()))?,
                )
            }
            Mode::NoRedirect => {
                flow.started = true;
                flow.pkce = handle.uses_pkce().then(Pkce::generate);
                let url = handle
                    .authorize_url(&random_token(), flow.pkce.as_ref(), None)
                    .await
                    .map_err(|e| ConnectError::Exchange(e.to_string()))?;
                Next::EnterCode(url)
            }
            Mode::Device => {
                flow.started = true;
                let device = handle
                    .start_device()
                    .await
                    .map_err(|e| ConnectError::Exchange(e.to_string()))?;
                let next = Next::Device {
                    user_code: device.user_code.clone(),
                    verification_uri: device.verification_uri.clone(),
                    verification_uri_complete: device.verification_uri_complete.clone(),
                };
                flow.expires_at = self.now() + device.expires_in.min(FLOW_LIFETIME);
                let broker = self.clone();
                let ticket = ticket.clone();
                // Tracked like every broker task; shutdown ends its waits (not a poll in flight,
                // whose answer may carry the grant).
                self.inner.tasks.spawn(async move {
                    broker
                        .poll_device(&ticket, handle, device.device_code, device.interval)
                        .await
                });
                next
            }
        };
        let expires_at = flow.expires_at;
        let flow_account = flow.account.clone();
        self.flows().by_ticket.insert(ticket.clone(), flow);
        // The ticket is a capability (it starts the flow): never logged, not even in part.
        tracing::info!(account = %flow_account, ?mode,
            provider,
            "connect flow started"
        );
        Ok(Started {
            ticket,
            expires_at,
            next,
        })
    }

    /// `GET /oauth/start/{ticket}`: uses up the ticket and returns the provider's authorize
    /// URL with a fresh single-use state and PKCE challenge.
    ///
    /// # Errors
    /// Unknown, used or expired ticket.
    pub async fn oauth_start(&self, ticket: &str) -> Result<Url, ConnectError> {
        let state = random_token();
        let (provider, pkce, redirect_uri) = {
            let now = self.now();
            let mut flows = self.flows();
            let flow = flows
                .by_ticket
                .get_mut(ticket)
                .filter(|f| f.mode == Mode::Redirect && !f.started && now < f.expires_at)
                .ok_or(ConnectError::UnknownTicket)?;
            flow.started = true;
            let handle = self.provider(&flow.provider)?;
            flow.pkce = handle.uses_pkce().then(Pkce::generate);
            let parts = (handle, flow.pkce.clone(), flow.redirect_uri.clone());
            flows
                .ticket_by_state
                .insert(state.clone(), ticket.to_owned());
            parts
        };
        // A failure here ends the flow, so that whoever waits for it hears of it.
        match provider
            .authorize_url(&state, pkce.as_ref(), redirect_uri.as_ref())
            .await
        {
            Ok(url) => Ok(url),
            Err(error) => Err(self.fail(ticket, ConnectError::Exchange(error.to_string()))),
        }
    }

    /// `GET /oauth/callback`: checks the state before anything else, then exchanges the code.
    ///
    /// # Errors
    /// A bad state or issuer (no token call is made), a provider error, or a failed exchange.
    pub async fn oauth_callback(&self, callback: Callback) -> Result<AccountView, ConnectError> {
        let state = callback.state.as_deref().ok_or(ConnectError::BadState)?;
        // Single use: the state is gone whatever happens next.
        let ticket = self
            .flows()
            .ticket_by_state
            .remove(state)
            .ok_or(ConnectError::BadState)?;
        let (provider, expired) = {
            let flows = self.flows();
            let flow = flows.by_ticket.get(&ticket).ok_or(ConnectError::BadState)?;
            (flow.provider.clone(), self.now() >= flow.expires_at)
        };
        if expired {
            return Err(self.fail(&ticket, ConnectError::BadState));
        }
        let handle = self.provider(&provider)?;
        if let Some(iss) = &callback.iss {
            // RFC 9207: the issuer we know (discovered, a preset's, or configured beside
            // explicit URLs); without one, the origin of the authorization endpoint the
            // flow was sent to, which is where a genuine answer comes from.
            let config = handle.config();
            let accepted = match (&config.issuer, &config.endpoints) {
                (Some(expected), _) => expected.trim_end_matches('/') == iss.trim_end_matches('/'),
                (None, crate::provider::EndpointSource::Fixed(endpoints)) => {
                    let origin = |url: &Url| url.origin().ascii_serialization();
                    endpoints
                        .authorize
                        .as_ref()
                        .zip(Url::parse(iss).ok())
                        .is_some_and(|(authorize, iss)| origin(authorize) == origin(&iss))
                }
                (None, crate::provider::EndpointSource::Discover { .. }) => false,
            };
            if !accepted {
                return Err(self.fail(
                    &ticket,
                    ConnectError::WrongIssuer {
                        provider,
                        got: iss.clone(),
                    },
                ));
            }
        }
        if let Some(error) = callback.error {
            let description = callback
                .error_description
                .map(|d| crate::provider::clean_text(&d));
            return Err(self.fail(
                &ticket,
                ConnectError::Provider {
                    error: crate::provider::clean_text(&error),
                    description,
                },
            ));
        }
        let code = callback.code.ok_or(ConnectError::MissingCode)?;
        self.finish_with_code(&ticket, handle, code).await
    }

    /// The no-redirect flow: the admin pasted the code the provider showed.
    ///
    /// # Errors
    /// Unknown ticket, wrong kind of flow, or a failed exchange.
    pub async fn submit_code(
        &self,
        ticket: &str,
        code: &AuthorizationCode,
    ) -> Result<AccountView, ConnectError> {
        let provider = {
            let flows = self.flows();
            let flow = flows
                .by_ticket
                .get(ticket)
                .filter(|f| self.now() < f.expires_at)
                .ok_or(ConnectError::UnknownTicket)?;
            if flow.mode != Mode::NoRedirect {
                return Err(ConnectError::WrongMode("no-redirect"));
            }
            flow.provider.clone()
        };
        let handle = self.provider(&provider)?;
        self.finish_with_code(ticket, handle, code.clone()).await
    }

    /// Waits up to `wait` for a flow to finish and reports where it stands.
    ///
    /// # Errors
    /// Unknown ticket.
    pub async fn connect_outcome(
        &self,
        ticket: &str,
        wait: Duration,
    ) -> Result<Outcome, ConnectError> {
        let mut receiver = self
            .flows()
            .by_ticket
            .get(ticket)
            .map(|f| f.outcome.subscribe())
            .ok_or(ConnectError::UnknownTicket)?;
        let _ = tokio::time::timeout(wait, receiver.wait_for(|o| *o != Outcome::Pending)).await;
        let outcome = receiver.borrow().clone();
        Ok(outcome)
    }

    /// Abandons a flow (the admin pressed Ctrl-C); its link and state stop working.
    pub fn cancel_connect(&self, ticket: &str) {
        let mut flows = self.flows();
        if let Some(flow) = flows.by_ticket.remove(ticket) {
            flow.outcome
                .send_replace(Outcome::Failed("cancelled".into()));
            flows.ticket_by_state.retain(|_, t| t != ticket);
            tracing::info!(account = %flow.account, "connect flow cancelled");
        }
    }

    /// Exchanges the code and installs the grant, detached from the caller: once the provider
    /// has issued a grant, it must be stored even if the browser went away.
    async fn finish_with_code(
        &self,
        ticket: &str,
        provider: std::sync::Arc<Provider>,
        code: AuthorizationCode,
    ) -> Result<AccountView, ConnectError> {
        let (verifier, redirect_uri): (Option<PkceVerifier>, Option<Url>) = {
            let flows = self.flows();
            let flow = flows
                .by_ticket
                .get(ticket)
                .ok_or(ConnectError::UnknownTicket)?;
            (
                flow.pkce.as_ref().map(|p| p.verifier.clone()),
                flow.redirect_uri.clone(),
            )
        };
        let broker = self.clone();
        let ticket = ticket.to_owned();
        // Tracked, so that shutdown waits for a code exchange in flight to store its grant.
        self.detached(async move {
            let answer = provider
                .exchange_code(&code, verifier.as_ref(), redirect_uri.as_ref())
                .await;
            broker.finish(&ticket, answer).await
        })
        .await
        .map_err(|_| ConnectError::Exchange("the exchange task failed".into()))?
    }

    /// Installs the grant a flow obtained, or records why it failed.
    async fn finish(
        &self,
        ticket: &str,
        answer: Result<TokenResponse, ProviderError>,
    ) -> Result<AccountView, ConnectError> {
        let response = match answer {
            Ok(response) if response.refresh_token.is_some() => response,
            Ok(_) => {
                let provider = self
                    .flows()
                    .by_ticket
                    .get(ticket)
                    .map(|f| f.provider.clone());
                let hint = provider
                    .and_then(|name| self.provider(&name).ok())
                    .map_or(Preset::Generic, |p| p.config().preset)
                    .no_refresh_token_hint();
                return Err(self.fail(ticket, ConnectError::NoRefreshToken(hint)));
            }
            Err(error) => return Err(self.fail(ticket, ConnectError::Exchange(error.to_string()))),
        };
        let (account, provider) = {
            let flows = self.flows();
            let flow = flows
                .by_ticket
                .get(ticket)
                .ok_or(ConnectError::UnknownTicket)?;
            (flow.account.clone(), flow.provider.clone())
        };
        let refresh_token = response.refresh_token.clone().expect("checked above");
        let view = self
            .install(account.clone(), &provider, refresh_token, Ok(response))
            .await
            .map_err(|e| self.fail(ticket, e.into()))?;
        tracing::info!(account = %account, provider, "account connected");
        if let Some(flow) = self.flows().by_ticket.get(ticket) {
            flow.outcome.send_replace(Outcome::Connected(view.clone()));
        }
        Ok(view)
    }

    fn fail(&self, ticket: &str, error: ConnectError) -> ConnectError {
        if let Some(flow) = self.flows().by_ticket.get(ticket) {
            tracing::warn!(account = %flow.account, provider = flow.provider, error = %error, "connect flow failed");
            flow.outcome
                .send_replace(Outcome::Failed(error.to_string()));
        }
        error
    }

    async fn poll_device(
        &self,
        ticket: &str,
        provider: std::sync::Arc<Provider>,
        device_code: crate::secret::DeviceCode,
        mut interval: Duration,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.inner.cancel.cancelled() => {
                    tracing::info!("a device flow was left unfinished: tokenbroker is shutting down");
                    return;
                }
            }
            let live = self
                .flows()
                .by_ticket
                .get(ticket)
                .is_some_and(|f| self.now() < f.expires_at);
            if !live {
                self.fail(
                    ticket,
                    ConnectError::Provider {
                        error: "expired_token".into(),
                        description: Some("the device code expired".into()),
                    },
                );
                return;
            }
            let answer = provider.poll_device(&device_code).await;
            match answer.as_ref().err().and_then(ProviderError::oauth_code) {
                Some("authorization_pending") => continue,
                Some("slow_down") => {
                    interval += SLOW_DOWN_STEP;
                    continue;
                }
                _ => {}
            }
            let _ = self.finish(ticket, answer).await;
            return;
        }
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, Flows> {
        let mut flows = self
            .inner
            .flows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget flows well past their lifetime, so abandoned ones cannot pile up.
        let cutoff = self
            .now()
            .checked_sub(FLOW_LIFETIME)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if flows.by_ticket.len() > 64 {
            flows.by_ticket.retain(|_, f| f.expires_at > cutoff);
            let Flows {
                by_ticket,
                ticket_by_state,
            } = &mut *flows;
            ticket_by_state.retain(|_, t| by_ticket.contains_key(t));
        }
        flows
    }
}
