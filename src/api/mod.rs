//! The HTTP API, identical on the Unix socket and on loopback TCP.
//!
//! [`Service`] checks every request for a web page's marks and identifies its caller, once,
//! then hands it to the token route or the router; `listen` owns the accept loops, their
//! timeouts and connection limits. Handlers call the broker, and count through `metrics`.

mod access;
mod browser;
mod connect;
mod error;
mod handlers;
pub mod listen;
mod pages;
mod token;
pub mod types;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use url::Url;

pub use self::access::{Access, Caller, Client, Peer};
pub use self::connect::callback_url;
pub use self::error::ApiError;
pub use self::token::{Answer, AUDIT_TARGET};
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::secret::ApiKey;
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

/// What the API reads of the configuration a reload changes: who may call, and what makes
/// the daemon ready. The daemon keeps them in its one runtime value, with everything else a
/// reload changes, and swaps that whole; [`FixedRules`] is the same for rules that never
/// change.
pub trait Rules: Send + Sync + std::fmt::Debug {
    /// Identifies a caller from its connection and `Authorization` key, as [`Access`] does.
    ///
    /// # Errors
    /// As [`Access::identify`].
    fn identify(&self, peer: &Peer, bearer: Option<&ApiKey>) -> Result<Caller, ApiError>;
    /// What `/readyz` checks.
    fn readiness(&self) -> Readiness;
}

/// Rules that never change.
#[derive(Debug)]
pub struct FixedRules {
    /// Who may call.
    pub access: Access,
    /// What makes the daemon ready.
    pub readiness: Readiness,
}

impl Rules for FixedRules {
    fn identify(&self, peer: &Peer, bearer: Option<&ApiKey>) -> Result<Caller, ApiError> {
        self.access.identify(peer, bearer)
    }

    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core.
    pub broker: Broker,
    /// Caller identification and readiness, as the current configuration has them.
    pub rules: Arc<dyn Rules>,
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

/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";
/// The label of requests refused before routing, as coming from a web page.
const REFUSED: &str = "refused";

/// Who a request is from, as [`Service::answer`] found before routing it: the caller, or why
/// it could not be identified. Handlers take it (or the [`Caller`] in it) as an extractor.
#[derive(Debug, Clone)]
pub(crate) struct Admitted(pub(crate) Result<Caller, ApiError>);

/// The API as the listeners serve it: every request is checked for a web page's marks and
/// its caller identified, once; token requests then go to the token route's function, and
/// everything else to the router.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<ServiceInner>,
}

#[derive(Debug)]
struct ServiceInner {
    state: AppState,
    router: Router,
}

impl Service {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        let inner = ServiceInner {
            router: router(state.clone()),
            state,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Answers one request from `peer`, waiting for the answer if it must.
    pub async fn call<B>(&self, request: Request<B>, peer: Peer) -> Response
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.answer(request, peer).response().await
    }

    /// Answers one request from `peer`: at once for a token held in memory and for a
    /// refused request, else as a future. The request is dropped before an answer given at
    /// once is returned, so that nothing holds on to the connection's read buffer, which its
    /// head was parsed from, while the next request is read.
    pub fn answer<B>(&self, mut request: Request<B>, peer: Peer) -> Answer
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let state = &self.inner.state;
        let headers = request.headers();
        if let Err(refused) = browser::check(headers, &peer, &state.public_url) {
            let response = refused.into_response();
            state
                .metrics
                .request(REFUSED.into(), response.status().as_u16());
            return Answer::Now(response).closing();
        }
        let caller = handlers::identify(state, &peer, headers.get(header::AUTHORIZATION));
        // A caller that is no client gets its answer (a probe's, a page's, a refusal) and the
        // connection ends: keeping one open is for clients, so that nobody else can hold the
        // listener's connections by asking for /healthz now and then.
        let identified = caller.is_ok();
        let answer =
            if request.method() == Method::GET && request.uri().path().starts_with(token::PREFIX) {
                let accept = request.headers().get(header::ACCEPT);
                token::get(state, caller, request.uri(), accept)
            } else {
                request.extensions_mut().insert(Admitted(caller));
                let service = self.clone();
                Answer::Later(Box::pin(async move { service.route(request).await }))
            };
        if identified {
            answer
        } else {
            answer.closing()
        }
    }

    /// Answers a request through the router.
    async fn route<B>(&self, request: Request<B>) -> Response
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
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
        if extensions.remove::<token::Counted>().is_some() {
            return;
        }
        let route = extensions
            .remove::<RouteLabel>()
            .map_or(Cow::Borrowed(UNMATCHED), |label| label.0);
        if route == token::ROUTE {
            let client = extensions.remove::<TokenClient>();
            let client = client.as_ref().map_or("unidentified", |client| &client.0);
            metrics.token_counters(client, token::ROUTE, status).inc();
        } else {
            metrics.request(route, status);
        }
    }
}

/// The API's routes. The router reads who is calling from the request's `Admitted` extension,
/// which [`Service::answer`] puts there.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(token::ROUTE, get(token::route).post(handlers::post_token))
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
        .route("/v1/connect/{ticket}/code", post(connect::submit_code));
    Router::new()
        .merge(api)
        // The pages a person's browser visits while connecting an account.
        .route("/oauth/start/{ticket}", get(connect::oauth_start))
        .route("/oauth/callback", get(connect::oauth_callback))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/readyz/{account}", get(handlers::account_ready))
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
