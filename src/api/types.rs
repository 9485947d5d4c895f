//! The JSON bodies of the HTTP API, shared by the daemon and the CLI.
//!
//! Bodies that carry a secret have a redacting `Debug`; the token body is the one place an
//! access token is deliberately exposed (and it is sent with `Cache-Control: no-store`).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::broker::AccountView;
use crate::secret::REDACTED;
pub use crate::token::TokenBody;

/// `POST /v1/token/{account}`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedBody {
    /// The access token the caller's API call was refused with.
    pub rejected: String,
}

impl fmt::Debug for RejectedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectedBody")
            .field("rejected", &REDACTED)
            .finish()
    }
}

/// `PUT /v1/accounts/{name}`: import a grant.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// The configured provider's name.
    pub provider: String,
    /// The refresh token.
    pub refresh_token: String,
}

impl fmt::Debug for ImportBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportBody")
            .field("provider", &self.provider)
            .field("refresh_token", &REDACTED)
            .finish()
    }
}

/// An account's status, without secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBody {
    /// The account's name.
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// `active`, `refreshing`, `degraded` or `needs_reauth`.
    pub status: String,
    /// RFC 3339 expiry of the current token.
    pub expires_at: Option<String>,
    /// Whole seconds left on the current token.
    pub expires_in: Option<u64>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// The provider's id for the user.
    pub provider_user_id: Option<String>,
    /// RFC 3339 time of the last successful refresh.
    pub last_refresh: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// RFC 3339 time of the next scheduled refresh or retry.
    pub next_refresh: Option<String>,
    /// RFC 3339 time at which the grant (the refresh token itself) ends, for providers
    /// that say (GitHub, Box); after it the account must be connected again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<String>,
}

impl AccountBody {
    /// The body for `view` as seen at `now`.
    pub fn new(view: &AccountView, now: SystemTime) -> Self {
        Self {
            name: view.name.to_string(),
            provider: view.provider.clone(),
            status: view.status.as_str().to_owned(),
            expires_at: view.expires_at.map(rfc3339),
            expires_in: view
                .expires_at
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO).as_secs()),
            scope: view.scope.clone(),
            provider_user_id: view.provider_user_id.clone(),
            last_refresh: view.last_refresh.map(rfc3339),
            last_error: view.last_error.clone(),
            next_refresh: view.next_refresh.map(rfc3339),
            refresh_token_expires_at: view.refresh_token_expires_at.map(rfc3339),
        }
    }
}

/// `GET /v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsBody {
    /// The accounts the caller may see (one page of them).
    pub accounts: Vec<AccountBody>,
    /// Where the next page starts (`?after=` this), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Most accounts in one answer of `GET /v1/accounts`, and the default page size.
pub const MAX_PAGE: usize = 1000;

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code.
    pub error: String,
    /// Words for a human.
    pub message: String,
}

/// `GET /readyz` and `/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthBody {
    /// `ok` or `unavailable`.
    pub status: String,
    /// What is not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `GET /readyz/{account}`: whether a job asking for the account's token now gets one at
/// once, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountReadyBody {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Why not, when unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// The account name to connect (or reconnect).
    pub account: String,
    /// The configured provider.
    pub provider: String,
    /// `redirect` (default), `no_redirect` or `device`.
    pub mode: Option<String>,
}

/// The answer to `POST /v1/connect`: what the person must do next. Its ticket and URLs
/// are capabilities, left out of `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ConnectBody {
    /// Follows the flow in `GET /v1/connect/{ticket}`.
    pub ticket: String,
    /// RFC 3339 time after which the flow is void.
    pub expires_at: String,
    /// Redirect flow: open this in a browser.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_url: Option<String>,
    /// No-redirect flow: open this, approve, and paste the code shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// Device flow: the code to type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_code: Option<String>,
    /// Device flow: where to type it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri: Option<String>,
    /// Device flow: the same with the code filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
}

impl fmt::Debug for ConnectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectBody")
            .field("ticket", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/connect/{ticket}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectStatusBody {
    /// `pending`, `connected` or `failed`.
    pub status: String,
    /// The connected account.
    pub account: Option<AccountBody>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `POST /v1/connect/{ticket}/code`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    /// The code the provider showed.
    pub code: String,
}

impl fmt::Debug for CodeBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeBody").field("code", &REDACTED).finish()
    }
}
