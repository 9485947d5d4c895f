//! `GET /v1/token/{account}`: the one function that answers it, called by the listener for
//! every token request and mounted on the router as the same route.
//!
//! Almost every request the daemon sees is a job asking for a token it already holds, so the
//! answer is a value at once for a token in memory and for every error, and a future only
//! when the token must first be read back from the store or refreshed.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::handlers::{existing, hide_unknown, may_have};
use super::{Admitted, ApiError, AppState, Caller};
use crate::token::IssuedToken;

/// The route's template, as the router and the metrics name it.
pub(super) const ROUTE: &str = "/v1/token/{account}";
/// What a token request's path starts with.
pub(super) const PREFIX: &str = "/v1/token/";

/// The query a token request may carry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenQuery {
    min_valid: Option<u64>,
}

/// An answer, at once or to wait for.
pub enum Answer {
    /// Answered now: a token held in memory, or an error.
    Now(Response),
    /// A refresh comes first.
    Later(BoxFuture<'static, Response>),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now(response) => f.debug_tuple("Now").field(&response.status()).finish(),
            Self::Later(_) => f.write_str("Later"),
        }
    }
}

impl Answer {
    /// The same answer, with `Connection: close`: the connection ends once it is written.
    pub(super) fn closing(self) -> Self {
        fn close(mut response: Response) -> Response {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        match self {
            Self::Now(response) => Self::Now(close(response)),
            Self::Later(answer) => Self::Later(Box::pin(async move { close(answer.await) })),
        }
    }

    /// The response, waited for if it must be.
    pub async fn response(self) -> Response {
        match self {
            Self::Now(response) => response,
            Self::Later(answer) => answer.await,
        }
    }
}

/// Answers `GET` of `uri` (a token route's) from an admitted caller. The answer is counted
/// here, by client and status.
pub(super) fn get(
    app: &AppState,
    caller: Result<Caller, ApiError>,
    uri: &Uri,
    accept: Option<&HeaderValue>,
) -> Answer {
    let caller = match caller {
        Ok(caller) => caller,
        Err(refused) => return Answer::Now(counted(app, None, refused.into_response())),
    };
    let wants_text = wants_text(accept);
    match from_memory(app, &caller, uri, wants_text) {
        Ok(Found::Served(response)) => Answer::Now(counted(app, Some(&caller), response)),
        Ok(Found::Wait(account, min_valid)) => {
            let app = app.clone();
            Answer::Later(Box::pin(async move {
                let response = match app.broker.token(&account, min_valid).await {
                    Ok(served) => served_response(&caller, account.as_str(), &served, wants_text),
                    Err(error) => hide_unknown(&caller, error).into_response(),
                };
                counted(&app, Some(&caller), response)
            }))
        }
        Err(error) => Answer::Now(counted(app, Some(&caller), error.into_response())),
    }
}

/// The route as the router mounts it: the same function, answered the same way.
pub(super) async fn route(
    State(app): State<AppState>,
    admitted: Admitted,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut response = get(&app, admitted.0, &uri, headers.get(header::ACCEPT))
        .response()
        .await;
    response.extensions_mut().insert(Counted);
    response
}

/// Marks a response already counted, so the router's count leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counted;

/// What memory holds for a request.
enum Found {
    /// The token, served.
    Served(Response),
    /// None good enough in memory: the broker reads the token back from the store, or
    /// refreshes it, first.
    Wait(crate::token::AccountName, Option<Duration>),
}

fn from_memory(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
    wants_text: bool,
) -> Result<Found, ApiError> {
    let segment = uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let account = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("bad_path", "the path is not UTF-8".into()))?;
    may_have(caller, &account)?;
    let min_valid = match uri.query() {
        None => None,
        Some(_) => {
            let Query(query) = Query::<TokenQuery>::try_from_uri(uri)?;
            query.min_valid.map(Duration::from_secs)
        }
    };
    // Rendered where the broker keeps the token, without copying it out.
    let served = app
        .broker
        .with_cached_token(&account, min_valid, |token, left| {
            (body(token, left, wants_text), left)
        });
    match served {
        Some((body, left)) => Ok(Found::Served(response(
            caller, &account, left, body, wants_text,
        ))),
        // `may_have` passed above: the name is valid, so this makes it an `AccountName`.
        None => Ok(Found::Wait(existing(&account)?, min_valid)),
    }
}

/// The body of a token response: the bare token for `text/plain`, else its JSON.
fn body(token: &IssuedToken, left: Duration, wants_text: bool) -> Vec<u8> {
    if wants_text {
        token.access_token.expose().as_bytes().to_vec()
    } else {
        token.json(left)
    }
}

/// The answer with a token the broker handed out (after a refresh, or for a rejected one).
pub(super) fn served_response(
    caller: &Caller,
    account: &str,
    served: &crate::broker::ServedToken,
    wants_text: bool,
) -> Response {
    let body = body(&served.token, served.expires_in, wants_text);
    response(caller, account, served.expires_in, body, wants_text)
}

/// The answer with a token, which is logged.
fn response(
    caller: &Caller,
    account: &str,
    expires_in: Duration,
    body: Vec<u8>,
    wants_text: bool,
) -> Response {
    log_served(caller, account, expires_in);
    // Header values made at compile time (`from_static` run at run time checks every byte).
    let content_type = if wants_text {
        const { HeaderValue::from_static("text/plain; charset=utf-8") }
    } else {
        const { HeaderValue::from_static("application/json") }
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(
        header::CACHE_CONTROL,
        const { HeaderValue::from_static("no-store") },
    );
    response
}

/// The target of the audit line written for every token handed out: `RUST_LOG` can set its
/// level apart from the rest (`tokenbroker::audit=warn` turns it off), and the daemon's
/// human log format writes its events through a layer of their own.
pub const AUDIT_TARGET: &str = "tokenbroker::audit";

/// The audit line of every token handed out: who had which account's token (never the token).
fn log_served(caller: &Caller, account: &str, expires_in: Duration) {
    // The message as a string field, not a format string: the audit layer writes a string
    // directly, where a format string goes through `core::fmt` (see docs/BENCHMARKS.md).
    tracing::info!(
        target: AUDIT_TARGET,
        message = "token served",
        client = caller.name(),
        uid = caller.uid,
        pid = caller.pid,
        account = %account,
        expires_in = expires_in.as_secs(),
    );
}

/// Whether the caller asked for the bare token (`Accept: text/plain`), from its `Accept`.
pub(super) fn wants_text(accept: Option<&HeaderValue>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii_start().starts_with(b"text/plain"))
    })
}

/// Counts a token route's answer, by client and status: a token served to a known client is
/// two increments of counters kept with the client.
pub(super) fn counted(app: &AppState, caller: Option<&Caller>, response: Response) -> Response {
    let status = response.status();
    match caller {
        Some(caller) if status == StatusCode::OK => caller.served().inc(),
        _ => {
            let client = caller.map_or(Cow::Borrowed("unidentified"), |c| c.name().into());
            app.metrics
                .token_counters(&client, ROUTE, status.as_u16())
                .inc();
        }
    }
    response
}
