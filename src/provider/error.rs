//! What a token endpoint can do wrong, and what the broker should do about each case.
//!
//! Every failure is one of three kinds: transient (retry with backoff), re-auth (the grant
//! is dead), or configuration (our client is refused: alert, retry slowly, do not prompt).

use std::time::Duration;

/// What the broker should do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Network, timeout, 5xx, 429, or a garbled answer: retry with backoff.
    Transient,
    /// The provider refused the grant (`invalid_grant`): it must be connected again.
    Reauth,
    /// The provider refused our client or request (`invalid_client`, a 404, ...): an operator
    /// must fix the configuration; the grant itself is not known to be bad.
    Configuration,
}

/// A failed call to a provider. Messages never carry a secret or a raw response body.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer: connection refused or reset, DNS, TLS.
    #[error("cannot reach the {endpoint} endpoint")]
    Network {
        /// Which endpoint.
        endpoint: &'static str,
        /// The cause (reqwest's message names the URL, which holds no secret).
        #[source]
        source: reqwest::Error,
    },
    /// The call took longer than the configured timeout.
    #[error("the {endpoint} endpoint did not answer in time")]
    Timeout {
        /// Which endpoint.
        endpoint: &'static str,
    },
    /// 429 Too Many Requests.
    #[error("rate limited by the provider")]
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer.
    #[error("the provider answered HTTP {status}")]
    Unavailable {
        /// The status code.
        status: u16,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The answer was not a usable token response (garbage, missing fields, too large).
    #[error("the provider's answer is unusable: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
    /// `invalid_grant`: the refresh token is invalid, expired or revoked.
    #[error(
        "the provider refused the grant (invalid_grant{})",
        describe(description)
    )]
    InvalidGrant {
        /// The provider's `error_description`, cleaned.
        description: Option<String>,
    },
    /// `invalid_client` or `unauthorized_client`: our client id or secret is refused.
    #[error("the provider refused the client credentials ({code}{}); check client_id and the client secret", describe(description))]
    ClientRejected {
        /// The OAuth error code.
        code: String,
        /// The provider's `error_description`, cleaned.
        description: Option<String>,
    },
    /// Another OAuth error (`invalid_scope`, `invalid_request`, ...).
    #[error("the provider rejected the request ({code}{})", describe(description))]
    Rejected {
        /// The OAuth error code.
        code: String,
        /// The provider's `error_description`, cleaned.
        description: Option<String>,
    },
    /// A status that is neither success nor an OAuth error (a 404, a redirect).
    #[error("the {endpoint} endpoint answered HTTP {status}; check the provider's URLs")]
    UnexpectedStatus {
        /// Which endpoint.
        endpoint: &'static str,
        /// The status code.
        status: u16,
    },
    /// Discovery found no usable metadata.
    #[error("discovery at {issuer} failed: {reason}")]
    Discovery {
        /// The configured issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The provider has no endpoint or method for what was asked.
    #[error("provider {provider} has no {what}")]
    Unsupported {
        /// The provider's name.
        provider: String,
        /// What it lacks.
        what: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Codes that mean a person must sign in again (OpenID Connect Core §3.1.2.6).
const SIGN_IN_CODES: &[&str] = &["interaction_required", "consent_required", "login_required"];

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|text| format!(": {text}"))
        .unwrap_or_default()
}

impl ProviderError {
    /// What the broker should do about it.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Network { .. }
            | Self::Timeout { .. }
            | Self::RateLimited { .. }
            | Self::Unavailable { .. }
            | Self::Malformed { .. } => FailureKind::Transient,
            // Discovery fails mostly because the server is down or unreachable; retry it.
            Self::Discovery { .. } => FailureKind::Transient,
            Self::InvalidGrant { .. } => FailureKind::Reauth,
            // Microsoft's answer when a new MFA or consent policy applies: only a person
            // signing in again can satisfy it, however often we retry.
            Self::Rejected { code, .. } if SIGN_IN_CODES.contains(&code.as_str()) => {
                FailureKind::Reauth
            }
            Self::ClientRejected { .. }
            | Self::Rejected { .. }
            | Self::UnexpectedStatus { .. }
            | Self::Unsupported { .. }
            | Self::Client(_) => FailureKind::Configuration,
        }
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The OAuth error code the provider sent, if it sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Self::InvalidGrant { .. } => Some("invalid_grant"),
            Self::ClientRejected { code, .. } | Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A short stable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Network { .. } => "network",
            Self::Timeout { .. } => "timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "provider_unavailable",
            Self::Malformed { .. } => "malformed_response",
            Self::InvalidGrant { .. } => "invalid_grant",
            Self::ClientRejected { .. } => "invalid_client",
            Self::Rejected { .. } => "rejected",
            Self::UnexpectedStatus { .. } => "unexpected_status",
            Self::Discovery { .. } => "discovery_failed",
            Self::Unsupported { .. } => "unsupported",
            Self::Client(_) => "client",
        }
    }
}
