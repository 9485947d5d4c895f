//! The connect routes: the admin API that starts and follows flows, and the two browser
//! pages (`/oauth/start/{ticket}`, `/oauth/callback`) that need no credentials of their own:
//! the ticket and the state are the capabilities, single-use and short-lived.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use url::Url;

use super::error::Segment;
use super::handlers::Admin;
use super::pages;
use super::types::{AccountBody, CodeBody, ConnectBody, ConnectRequest, ConnectStatusBody};
use super::{ApiError, AppState};
use crate::broker::{Callback, ConnectError, ConnectMode, ConnectNext, ConnectOutcome};
use crate::secret::AuthorizationCode;

/// The longest a client may ask `GET /v1/connect/{ticket}` to wait.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    wait: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

impl std::fmt::Debug for CallbackQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQuery")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

pub(super) async fn start_flow(
    State(app): State<AppState>,
    Admin(caller): Admin,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Json<ConnectBody>, ApiError> {
    let Json(request) = body?;
    let account = request.account.parse()?;
    let mode = match request.mode.as_deref().unwrap_or("redirect") {
        "redirect" => ConnectMode::Redirect,
        "no_redirect" => ConnectMode::NoRedirect,
        "device" => ConnectMode::Device,
        other => {
            return Err(ApiError::BadRequest(
                "bad_mode",
                format!("mode {other:?} is not redirect, no_redirect or device"),
            ))
        }
    };
    let started = app
        .broker
        .begin_connect(
            account,
            &request.provider,
            mode,
            &callback_url(&app.public_url),
            &start_base(&app.public_url),
        )
        .await
        .map_err(connect_error)?;
    tracing::info!(
        client = caller.name(),
        uid = caller.uid,
        account = request.account,
        provider = request.provider,
        "connect flow requested"
    );
    let mut body = ConnectBody {
        ticket: started.ticket,
        expires_at: humantime::format_rfc3339_seconds(started.expires_at).to_string(),
        ..ConnectBody::default()
    };
    match started.next {
        ConnectNext::Open(url) => body.start_url = Some(url.to_string()),
        ConnectNext::EnterCode(url) => body.authorize_url = Some(url.to_string()),
        ConnectNext::Device {
            user_code,
            verification_uri,
            verification_uri_complete,
        } => {
            body.user_code = Some(user_code);
            body.verification_uri = Some(verification_uri);
            body.verification_uri_complete = verification_uri_complete;
        }
    }
    Ok(Json(body))
}

pub(super) async fn flow_status(
    State(app): State<AppState>,
    _admin: Admin,
    Segment(ticket): Segment,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectStatusBody>, ApiError> {
    let Query(query) = query?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_WAIT);
    let outcome = app
        .broker
        .connect_outcome(&ticket, wait)
        .await
        .map_err(connect_error)?;
    Ok(Json(status_body(&app, outcome)))
}

pub(super) async fn submit_code(
    State(app): State<AppState>,
    _admin: Admin,
    Segment(ticket): Segment,
    body: Result<Json<CodeBody>, JsonRejection>,
) -> Result<Json<ConnectStatusBody>, ApiError> {
    let Json(body) = body?;
    let code = AuthorizationCode::new(body.code.trim());
    let outcome = match app.broker.submit_code(&ticket, &code).await {
        Ok(view) => ConnectOutcome::Connected(view),
        Err(ConnectError::UnknownTicket) => return Err(connect_error(ConnectError::UnknownTicket)),
        Err(error) => ConnectOutcome::Failed(error.to_string()),
    };
    Ok(Json(status_body(&app, outcome)))
}

pub(super) async fn cancel_flow(
    State(app): State<AppState>,
    _admin: Admin,
    Segment(ticket): Segment,
) -> Result<StatusCode, ApiError> {
    app.broker.cancel_connect(&ticket);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /oauth/start/{ticket}`: the link the admin opens; redirects to the provider.
pub(super) async fn oauth_start(State(app): State<AppState>, Segment(ticket): Segment) -> Response {
    match app.broker.oauth_start(&ticket).await {
        Ok(url) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, url.to_string()),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response(),
        Err(error) => pages::failed(
            StatusCode::GONE,
            &error.to_string(),
            "Run `tokenbroker connect` again for a fresh link.",
        ),
    }
}

/// `GET /oauth/callback`: where the provider sends the browser back.
pub(super) async fn oauth_callback(
    State(app): State<AppState>,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let callback = Callback {
        code: query.code.map(AuthorizationCode::new),
        state: query.state,
        error: query.error,
        error_description: query.error_description,
        iss: query.iss,
    };
    match app.broker.oauth_callback(callback).await {
        Ok(view) => pages::connected(view.name.as_str(), &view.provider, view.expires_at),
        Err(error) => {
            let advice = match &error {
                ConnectError::Provider { error, .. } if error == "access_denied" => "Access was denied at the provider. If that was a mistake, run `tokenbroker connect` again and approve.",
                ConnectError::BadState | ConnectError::WrongIssuer { .. } => "This page was not reached through a pending `tokenbroker connect`. Start again from the command line.",
                _ => "Check the provider's configuration (client id, secret, redirect URI), then run `tokenbroker connect` again.",
            };
            pages::failed(StatusCode::BAD_REQUEST, &error.to_string(), advice)
        }
    }
}

fn status_body(app: &AppState, outcome: ConnectOutcome) -> ConnectStatusBody {
    match outcome {
        ConnectOutcome::Pending => ConnectStatusBody {
            status: "pending".into(),
            account: None,
            error: None,
        },
        ConnectOutcome::Connected(view) => ConnectStatusBody {
            status: "connected".into(),
            account: Some(AccountBody::new(&view, app.clock.now())),
            error: None,
        },
        ConnectOutcome::Failed(error) => ConnectStatusBody {
            status: "failed".into(),
            account: None,
            error: Some(error),
        },
    }
}

fn connect_error(error: ConnectError) -> ApiError {
    match error {
        ConnectError::Broker(broker) => broker.into(),
        ConnectError::UnknownTicket => ApiError::NotFound(error.to_string()),
        other => ApiError::BadRequest("connect_failed", other.to_string()),
    }
}

/// `{public_url}/oauth/callback`, the redirect URI to register at the provider.
pub fn callback_url(public_url: &Url) -> Url {
    Url::parse(&format!(
        "{}/oauth/callback",
        public_url.as_str().trim_end_matches('/')
    ))
    .expect("a valid public URL plus a path")
}

fn start_base(public_url: &Url) -> Url {
    Url::parse(&format!(
        "{}/oauth/start/",
        public_url.as_str().trim_end_matches('/')
    ))
    .expect("a valid public URL plus a path")
}
