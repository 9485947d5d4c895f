//! The one mapping from failures to HTTP answers: a status, a stable code, a short message.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::ErrorBody;
use crate::broker::BrokerError;
use crate::token::InvalidAccountName;

/// A failed API request. Messages never carry upstream text verbatim or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No API key, or a wrong one.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (only told to callers allowed every account).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// The route exists, but not for this method.
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// The request body is larger than the API accepts.
    #[error("the request body is too large")]
    TooLarge,
    /// No valid token could be had now.
    #[error("{message}")]
    Unavailable {
        /// The stable code.
        code: &'static str,
        /// Words for a human.
        message: String,
        /// When to ask again.
        retry_after: Option<Duration>,
    },
    /// Something failed inside the broker.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge
        } else {
            Self::BadRequest("bad_body", rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest("bad_query", rejection.body_text())
    }
}

impl From<InvalidAccountName> for ApiError {
    fn from(error: InvalidAccountName) -> Self {
        Self::BadRequest("bad_name", error.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let message = error.to_string();
        match error {
            BrokerError::UnknownAccount(_) => Self::NotFound(message),
            BrokerError::UnknownProvider(_) => Self::BadRequest("unknown_provider", message),
            BrokerError::MinValidTooLarge { .. } => {
                Self::BadRequest("min_valid_too_large", message)
            }
            BrokerError::GrantRejected(_) => Self::BadRequest("grant_rejected", message),
            BrokerError::NeedsReauth(_) => Self::Unavailable {
                code: "needs_reauth",
                message,
                retry_after: error.retry_after(),
            },
            BrokerError::Unavailable { retry_after, .. } => Self::Unavailable {
                code: "refresh_failed",
                message,
                retry_after: Some(retry_after),
            },
            BrokerError::Store(_) | BrokerError::Internal(_) => Self::Internal(message),
            BrokerError::Revoke(_) => Self::Unavailable {
                code: "revoke_failed",
                message,
                retry_after: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable {
                retry_after: Some(wait),
                ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            _ => {}
        }
        response
    }
}

/// A path segment (`{account}`, `{name}`, `{ticket}`); a segment that cannot be decoded is
/// answered with the API's JSON error rather than axum's plain-text one.
#[derive(Debug)]
pub(super) struct Segment(pub(super) String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(segment)| Self(segment))
            .map_err(|rejection| ApiError::BadRequest("bad_path", rejection.body_text()))
    }
}
