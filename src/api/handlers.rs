//! The route handlers: identify the caller, check what it may have, ask the broker.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::Segment;
use super::token;
use super::types::{
    AccountBody, AccountReadyBody, AccountsBody, HealthBody, ImportBody, RejectedBody, MAX_PAGE,
};
use super::{Admitted, ApiError, AppState, Caller, Peer, TokenClient};
use crate::broker::BrokerError;
use crate::secret::{AccessToken, ApiKey, RefreshToken};
use crate::token::AccountName;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only accounts in this status.
    status: Option<String>,
    /// Only accounts whose name matches this glob pattern.
    name: Option<String>,
    /// At most this many (1 to `MAX_PAGE`, default `MAX_PAGE`).
    limit: Option<usize>,
    /// Start after this name (a page's `next`).
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadyQuery {
    min_valid: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    revoke: bool,
}

pub(super) async fn post_token(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Segment(account): Segment,
    body: Result<Json<RejectedBody>, JsonRejection>,
) -> Response {
    labelled(&caller, async {
        let caller = &caller;
        let name = readable(caller, &account)?;
        let Json(body) = body?;
        let rejected = AccessToken::new(body.rejected);
        let served = app
            .broker
            .reject(&name, &rejected)
            .await
            .map_err(|e| hide_unknown(caller, e))?;
        let wants_text = token::wants_text(headers.get(header::ACCEPT));
        Ok(token::served_response(
            caller,
            name.as_str(),
            &served,
            wants_text,
        ))
    })
    .await
}

/// The answer of a token route, labelled with its client for the metrics.
async fn labelled(
    caller: &Caller,
    answer: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let mut response = answer.await.unwrap_or_else(IntoResponse::into_response);
    response
        .extensions_mut()
        .insert(TokenClient(caller.shared_name()));
    response
}

pub(super) async fn list_accounts(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<AccountsBody>, ApiError> {
    let Query(query) = query?;
    let status = query
        .status
        .as_deref()
        .map(|text| {
            crate::broker::Status::from_name(text).ok_or_else(|| {
                ApiError::BadRequest(
                    "bad_query",
                    "status is one of active, refreshing, degraded, needs_reauth".into(),
                )
            })
        })
        .transpose()?;
    let pattern = query
        .name
        .as_deref()
        .map(|text| {
            glob::Pattern::new(text).map_err(|e| {
                ApiError::BadRequest("bad_query", format!("name is not a glob pattern: {e}"))
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(
            "bad_query",
            format!("limit is 1 to {MAX_PAGE}"),
        ));
    }
    let now = app.clock.now();
    let (page, more) = app
        .broker
        .accounts_page(query.after.as_deref(), limit, |v| {
            caller.may_read(v.name.as_str())
                && status.is_none_or(|s| v.status == s)
                && pattern.as_ref().is_none_or(|p| p.matches(v.name.as_str()))
        });
    let next = page
        .last()
        .filter(|_| more)
        .map(|v| v.name.as_str().to_owned());
    let accounts = page.iter().map(|v| AccountBody::new(v, now)).collect();
    Ok(Json(AccountsBody { accounts, next }))
}

pub(super) async fn get_account(
    State(app): State<AppState>,
    caller: Caller,
    Segment(account): Segment,
) -> Result<Json<AccountBody>, ApiError> {
    let name = readable(&caller, &account)?;
    let view = app
        .broker
        .account(&name)
        .map_err(|e| hide_unknown(&caller, e))?;
    Ok(Json(AccountBody::new(&view, app.clock.now())))
}

pub(super) async fn import_account(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Segment(account): Segment,
    body: Result<Json<ImportBody>, JsonRejection>,
) -> Result<Json<AccountBody>, ApiError> {
    let name: AccountName = account.parse()?;
    let Json(body) = body?;
    let refresh_token = RefreshToken::new(body.refresh_token);
    let view = app
        .broker
        .import(name.clone(), &body.provider, refresh_token)
        .await?;
    tracing::info!(client = caller.name(), uid = caller.uid, pid = caller.pid, account = %name, provider = body.provider, "grant imported");
    Ok(Json(AccountBody::new(&view, app.clock.now())))
}

pub(super) async fn refresh_account(
    State(app): State<AppState>,
    _admin: Admin,
    Segment(account): Segment,
) -> Result<Json<AccountBody>, ApiError> {
    let name = existing(&account)?;
    let view = app.broker.refresh_now(&name).await?;
    Ok(Json(AccountBody::new(&view, app.clock.now())))
}

pub(super) async fn delete_account(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Segment(account): Segment,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query?;
    let name = existing(&account)?;
    app.broker.remove(&name, query.revoke).await?;
    tracing::info!(client = caller.name(), uid = caller.uid, account = %name, revoked = query.revoke, "account removed by admin");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rekey(
    State(app): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = app.broker.rekey().await?;
    tracing::info!(
        client = caller.name(),
        uid = caller.uid,
        accounts = count,
        "store re-sealed by admin"
    );
    Ok(Json(serde_json::json!({ "resealed": count })))
}

pub(super) async fn metrics(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !caller.may_read_metrics() {
        return Err(ApiError::Forbidden(format!(
            "client {} may not read the metrics (they name accounts and clients; `metrics = true` allows it)",
            caller.name()
        )));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let text = app.metrics.render(&app.broker, app.clock.now(), format);
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

pub(super) async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        problems: vec![],
    })
}

/// Readiness, for probes and for anyone who can connect. Required accounts are named only to
/// callers that may see every account; others learn how many are not ready.
pub(super) async fn readyz(
    State(app): State<AppState>,
    admitted: Admitted,
) -> (StatusCode, Json<HealthBody>) {
    let sees_names = admitted.0.as_ref().is_ok_and(Caller::sees_all);
    let readiness = app.rules.readiness();
    let mut problems = Vec::new();
    let stall_limit = readiness.check_interval * 3 + std::time::Duration::from_secs(5);
    // Measured on the monotonic clock, so a step of the wall clock can neither hide a
    // stalled scheduler nor make a tick look as if it happened in the future.
    match app.broker.since_last_tick() {
        Some(since) if since > stall_limit => problems.push(format!(
            "the scheduler has not ticked for {}s",
            since.as_secs()
        )),
        None if app
            .clock
            .monotonic()
            .saturating_duration_since(readiness.started_at)
            > stall_limit =>
        {
            problems.push("the scheduler has never ticked".into())
        }
        _ => {}
    }
    if let Some(problem) = app.broker.store_problem() {
        problems.push(format!("the store cannot be written: {problem}"));
    }
    let not_ready: Vec<_> = readiness
        .required
        .iter()
        .filter(|name| !app.broker.has_valid_token(name))
        .collect();
    if sees_names {
        for name in not_ready {
            problems.push(format!("required account {name} has no valid token"));
        }
    } else if !not_ready.is_empty() {
        problems.push(format!(
            "{} required account(s) have no valid token",
            not_ready.len()
        ));
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if problems.is_empty() {
        "ok"
    } else {
        "unavailable"
    };
    (
        status,
        Json(HealthBody {
            status: word.into(),
            problems,
        }),
    )
}

/// One account's readiness, for a client allowed the account: `200` when its token would be
/// served at once (with `?min_valid=` left, as `GET /v1/token` takes it), else `503` with
/// the reason. `tokenbroker wait` asks this.
pub(super) async fn account_ready(
    State(app): State<AppState>,
    caller: Caller,
    Segment(account): Segment,
    query: Result<Query<ReadyQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<AccountReadyBody>), ApiError> {
    let name = readable(&caller, &account)?;
    let Query(query) = query?;
    let min_valid = query.min_valid.map(std::time::Duration::from_secs);
    let view = app
        .broker
        .account(&name)
        .map_err(|e| hide_unknown(&caller, e))?;
    if app.broker.token_ready(&name, min_valid) {
        let body = AccountReadyBody {
            status: "ok".into(),
            reason: None,
        };
        return Ok((StatusCode::OK, Json(body)));
    }
    let body = AccountReadyBody {
        status: "unavailable".into(),
        reason: Some(not_ready_because(&view, app.clock.now())),
    };
    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)))
}

/// Why an account's token cannot be served at once, in words for the person or job waiting.
fn not_ready_because(view: &crate::broker::AccountView, now: std::time::SystemTime) -> String {
    use crate::broker::Status;
    let mut reason = match (view.status, view.expires_at) {
        (Status::NeedsReauth, _) => {
            "the provider refused its grant: connect the account again".to_owned()
        }
        (_, None) => "it has no token yet".to_owned(),
        (_, Some(at)) => {
            let left = at.duration_since(now).unwrap_or_default().as_secs();
            format!("its token has {left}s left, less than a caller may be given")
        }
    };
    if view.status == Status::Refreshing {
        reason.push_str("; a refresh is under way");
    }
    if view.status != Status::NeedsReauth {
        if let Some(error) = &view.last_error {
            reason.push_str("; the last refresh failed: ");
            reason.push_str(error);
        }
    }
    reason
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

// === helpers ===

pub(super) fn identify(
    app: &AppState,
    peer: &Peer,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, ApiError> {
    let bearer = match authorization {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::Unauthorized)?;
            let (scheme, key) = text.split_once(' ').ok_or(ApiError::Unauthorized)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(ApiError::Unauthorized);
            }
            Some(ApiKey::new(key.trim()))
        }
    };
    app.rules.identify(peer, bearer.as_ref())
}

/// Who the request is from, as [`super::Service`] identified it before routing.
impl<S: Send + Sync> FromRequestParts<S> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .remove::<Admitted>()
            .ok_or_else(|| ApiError::Internal("the request was not admitted".into()))
    }
}

/// Handlers take the caller as an extractor: the one identified before routing, from the
/// connection's [`Peer`] and the `Authorization` header.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Admitted::from_request_parts(parts, state).await?.0
    }
}

/// A caller allowed the admin routes.
pub(super) struct Admin(pub(super) Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.is_admin() {
            return Err(ApiError::Forbidden(format!(
                "client {} is not an admin",
                caller.name()
            )));
        }
        Ok(Self(caller))
    }
}

/// The account's name, if the caller may have it. Names that cannot exist are answered like
/// names that do not, so neither tells a restricted caller anything.
pub(super) fn readable(caller: &Caller, account: &str) -> Result<AccountName, ApiError> {
    may_have(caller, account)?;
    existing(account)
}

/// What [`readable`] checks, without making an `AccountName`: `account` is a valid name the
/// caller may have.
pub(super) fn may_have(caller: &Caller, account: &str) -> Result<(), ApiError> {
    if !caller.may_read(account) {
        return Err(forbidden(caller, account));
    }
    if AccountName::is_valid(account) {
        Ok(())
    } else if caller.sees_all() {
        Err(no_such_account(account))
    } else {
        Err(forbidden(caller, account))
    }
}

/// The name of an account that may exist: one that cannot is 404, like one that does not.
pub(super) fn existing(account: &str) -> Result<AccountName, ApiError> {
    account.parse().map_err(|_| no_such_account(account))
}

fn no_such_account(account: &str) -> ApiError {
    ApiError::NotFound(format!("no account named {account:?}"))
}

/// An unknown account is 404 only for callers allowed every account; 403 for the rest.
pub(super) fn hide_unknown(caller: &Caller, error: BrokerError) -> ApiError {
    match error {
        BrokerError::UnknownAccount(name) if !caller.sees_all() => forbidden(caller, name.as_str()),
        other => other.into(),
    }
}

fn forbidden(caller: &Caller, account: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "client {} may not have account {account:?}",
        caller.name()
    ))
}
