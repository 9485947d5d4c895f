//! The HTTP API, identical on the Unix socket and on loopback TCP.
//!
//! `router()` is pure (tests drive it with `oneshot`); `listen` owns the accept loops, their
//! timeouts and connection limits. Handlers call only the broker.

mod access;
mod browser;
mod connect;
mod error;
mod fast;
mod handlers;
pub mod listen;
mod pages;
pub mod types;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use url::Url;

pub use self::access::{Access, Caller, Client, Peer};
pub use self::connect::callback_url;
pub use self::error::ApiError;
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::metrics::{Metrics, TokenCounters};
use crate::token::AccountName;

/// The largest request body accepted (an import is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request, refresh included, must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The API's settings, as plain data.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group given to the socket (mode 0660), so its members can connect.
    pub socket_group: Option<u32>,
    /// Loopback TCP address; `None` turns TCP off.
    pub http: Option<SocketAddr>,
    /// Base of the OAuth redirect URI.
    pub public_url: Url,
    /// Extra admin uids.
    pub admin_uids: Vec<u32>,
    /// Configured clients.
    pub clients: Vec<Client>,
}

/// What `/readyz` checks beyond the store being open.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Accounts that must hold a valid token.
    pub required: Vec<AccountName>,
    /// The scheduler's tick interval; a tick older than three of these means it has stalled.
    pub check_interval: Duration,
    /// When the daemon started, by the monotonic clock.
    pub started_at: tokio::time::Instant,
}

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core.
    pub broker: Broker,
    /// Caller identification.
    pub access: Arc<ArcSwap<Access>>,
    /// Readiness rules.
    pub readiness: Arc<ArcSwap<Readiness>>,
    /// The clock.
    pub clock: SharedClock,
    /// Base of the OAuth redirect URI and of connect links.
    pub public_url: Url,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Which client a token response went to, for the metrics.
#[derive(Debug, Clone)]
pub(crate) struct TokenClient(pub(crate) Arc<str>);

/// The route a response came from (its template, as the router matched it), a metrics label.
#[derive(Debug, Clone)]
struct RouteLabel(Cow<'static, str>);

const TOKEN_ROUTE: &str = "/v1/token/{account}";
/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The API as the listeners serve it: token requests that can be answered from memory take
/// the fast path, everything else goes through the router.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<ServiceInner>,
}

#[derive(Debug)]
struct ServiceInner {
    state: AppState,
    router: Router,
    /// The counters of tokens served from memory to admin uids (clients keep their own).
    admins_served: OnceLock<TokenCounters>,
}

impl Service {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        let inner = ServiceInner {
            router: router(state.clone()),
            state,
            admins_served: OnceLock::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Answers one request from `peer`.
    pub async fn call<B>(&self, request: Request<B>, peer: Peer) -> Response
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        match self.from_memory(request, peer) {
            FromMemory::Answered(response) => response,
            FromMemory::Route(request) => self.route(request, peer).await,
        }
    }

    /// The answer to a token request served from memory, at once; any other request is
    /// handed back untouched, for [`Service::route`]. The request is dropped here when
    /// answered, so that nothing holds on to the connection's read buffer, which its head
    /// was parsed from, while the next request is read.
    pub fn from_memory<B>(&self, request: Request<B>, peer: Peer) -> FromMemory<B> {
        let state = &self.inner.state;
        let Some((response, caller)) = fast::token(state, &peer, &request) else {
            return FromMemory::Route(request);
        };
        caller
            .served_counters(&self.inner.admins_served, &state.metrics, TOKEN_ROUTE)
            .inc();
        FromMemory::Answered(response)
    }

    /// Answers a request from `peer` through the router.
    pub async fn route<B>(&self, mut request: Request<B>, peer: Peer) -> Response
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        request.extensions_mut().insert(peer);
        let mut response = match self.inner.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        self.count(&mut response);
        response
    }

    /// Counts a response of the router, labelled by the route it matched and, on the token
    /// routes, by the client that asked. The labels are taken off the response.
    fn count(&self, response: &mut Response) {
        let metrics = &self.inner.state.metrics;
        let status = response.status().as_u16();
        let extensions = response.extensions_mut();
        let route = extensions
            .remove::<RouteLabel>()
            .map_or(Cow::Borrowed(UNMATCHED), |label| label.0);
        if route == TOKEN_ROUTE {
            let client = extensions.remove::<TokenClient>();
            let client = client.as_ref().map_or("unidentified", |client| &client.0);
            metrics.token_counters(client, TOKEN_ROUTE, status).inc();
        } else {
            metrics.request(route, status);
        }
    }
}

/// What [`Service::from_memory`] made of a request.
#[derive(Debug)]
pub enum FromMemory<B> {
    /// A token served from memory; the request is gone.
    Answered(Response),
    /// Not a token held in memory: the request, untouched, for [`Service::route`].
    Route(Request<B>),
}

/// The API's routes. The router reads the caller's [`Peer`] from the request's extensions.
pub fn router(state: AppState) -> Router {
    // The API proper: never for web pages (DNS rebinding, a page on the same machine).
    let api = Router::new()
        .route(
            TOKEN_ROUTE,
            get(handlers::get_token).post(handlers::post_token),
        )
        .route("/v1/accounts", get(handlers::list_accounts))
        .route(
            "/v1/accounts/{name}",
            get(handlers::get_account)
                .put(handlers::import_account)
                .delete(handlers::delete_account),
        )
        .route(
            "/v1/accounts/{name}/refresh",
            post(handlers::refresh_account),
        )
        .route("/v1/admin/rekey", post(handlers::rekey))
        .route("/v1/connect", post(connect::start_flow))
        .route(
            "/v1/connect/{ticket}",
            get(connect::flow_status).delete(connect::cancel_flow),
        )
        .route("/v1/connect/{ticket}/code", post(connect::submit_code))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser::refuse_web_pages,
        ));
    Router::new()
        .merge(api)
        // The pages a person's browser visits while connecting an account.
        .route("/oauth/start/{ticket}", get(connect::oauth_start))
        .route("/oauth/callback", get(connect::oauth_callback))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route_layer(axum::middleware::map_response(label_route))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Labels a response with the route that answered it, for the metrics. A `route_layer`: it
/// runs for requests that matched a route (the rest are counted as unmatched).
async fn label_route(matched: Option<MatchedPath>, mut response: Response) -> Response {
    if let Some(matched) = matched {
        let label = RouteLabel(Cow::Owned(matched.as_str().to_owned()));
        response.extensions_mut().insert(label);
    }
    response
}

#[cfg(test)]
mod tests;
