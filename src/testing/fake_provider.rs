//! A real token endpoint on 127.0.0.1 that tests script and inspect.
//!
//! By default it behaves like a provider: it knows which refresh tokens are valid, issues
//! numbered access tokens, optionally rotates refresh tokens (the old one then fails with
//! `invalid_grant`), and refuses a request that authenticates twice. Scripted replies
//! (errors, garbage, hangs) take precedence, one per request. Every request is recorded.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Behave like a provider (validate the refresh token, issue a token).
    Issue,
    /// A JSON answer with a status and extra headers.
    Json(u16, Value, Vec<(&'static str, String)>),
    /// Raw bytes with a status.
    Raw(u16, Vec<u8>),
    /// Never answer.
    Hang,
    /// Send headers, then `count` chunks of `chunk`, one every `every`.
    Trickle {
        /// Bytes per chunk.
        chunk: Vec<u8>,
        /// Pause between chunks.
        every: Duration,
        /// Number of chunks.
        count: usize,
    },
    /// Wait, then answer with the inner reply.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    /// A standard OAuth error body.
    pub fn oauth_error(status: u16, code: &str, description: &str) -> Self {
        Self::Json(
            status,
            json!({"error": code, "error_description": description}),
            vec![],
        )
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The path.
    pub path: String,
    /// The form fields.
    pub form: BTreeMap<String, String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// When it arrived.
    pub received_at: std::time::Instant,
}

#[derive(Debug)]
struct Inner {
    script: VecDeque<Reply>,
    valid_refresh_tokens: HashSet<String>,
    rotate: bool,
    expires_in: Value,
    issued: u64,
    issued_access_tokens: Vec<String>,
    requests: Vec<RecordedRequest>,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Debug, Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    nonce: String,
    base: String,
}

/// The fake provider; stops serving when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    shared: Shared,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl FakeProvider {
    /// Starts a fake on an ephemeral loopback port.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                script: VecDeque::new(),
                valid_refresh_tokens: HashSet::new(),
                rotate: false,
                expires_in: json!(14400),
                issued: 0,
                issued_access_tokens: Vec::new(),
                requests: Vec::new(),
                in_flight: 0,
                max_in_flight: 0,
            })),
            changed: Arc::new(Notify::new()),
            nonce: format!("{:08x}", rand::random::<u32>()),
            base: format!("http://{addr}"),
        };
        let router = Router::new()
            .route("/oauth2/token", post(token))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            shared,
            addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, also the issuer for discovery.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// A generic public-client provider configuration pointing at this fake, with short
    /// timeouts so hostile-answer tests stay quick.
    pub fn provider_config(&self, name: &str) -> crate::provider::Config {
        use crate::provider::{AuthMethod, Config, EndpointSource, Endpoints, Preset};
        Config {
            name: name.into(),
            preset: Preset::Generic,
            client_id: "client".into(),
            client_secret: None,
            auth_method: AuthMethod::None,
            endpoints: EndpointSource::Fixed(Endpoints {
                token: self.token_url().parse().expect("a URL"),
                authorize: None,
                revoke: None,
            }),
            scopes: vec![],
            default_lifetime: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
        }
    }

    /// Makes a refresh token valid and returns it (unique per fake, so tests can grep for it).
    pub fn grant(&self, label: &str) -> String {
        let token = format!("fake-refresh-{}-{label}", self.shared.nonce);
        self.lock().valid_refresh_tokens.insert(token.clone());
        token
    }

    /// Whether a refresh token is still valid.
    pub fn is_valid(&self, refresh_token: &str) -> bool {
        self.lock().valid_refresh_tokens.contains(refresh_token)
    }

    /// Rotate refresh tokens on every refresh (the used one becomes invalid).
    pub fn set_rotation(&self, rotate: bool) {
        self.lock().rotate = rotate;
    }

    /// The `expires_in` value of issued tokens (any JSON, to test odd values).
    pub fn set_expires_in(&self, value: Value) {
        self.lock().expires_in = value;
    }

    /// Queues scripted replies, answered in order before normal behaviour resumes.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// Every request to the token endpoint so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == "/oauth2/token")
            .cloned()
            .collect()
    }

    /// Number of token-endpoint requests so far.
    pub fn token_calls(&self) -> usize {
        self.requests().len()
    }

    /// The most token requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Every access token issued, in order.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.lock().issued_access_tokens.clone()
    }

    /// Every refresh token currently valid.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        self.lock().valid_refresh_tokens.iter().cloned().collect()
    }

    /// Waits until at least `count` token requests have arrived.
    ///
    /// # Panics
    /// If they have not arrived within `limit`.
    pub async fn wait_for_calls(&self, count: usize, limit: Duration) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let notified = self.shared.changed.notified();
                if self.token_calls() >= count {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "expected {count} token requests within {limit:?}, saw {}",
            self.token_calls()
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("fake provider lock")
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn discovery(State(shared): State<Shared>) -> Json<Value> {
    Json(json!({
        "issuer": shared.base,
        "token_endpoint": format!("{}/oauth2/token", shared.base),
        "authorization_endpoint": format!("{}/oauth2/authorize", shared.base),
    }))
}

async fn token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reply = {
        let mut inner = shared.inner.lock().expect("fake provider lock");
        inner.requests.push(RecordedRequest {
            path: "/oauth2/token".into(),
            form: form.clone(),
            authorization: authorization.clone(),
            received_at: tokio::time::Instant::now().into_std(),
        });
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        inner.script.pop_front().unwrap_or(Reply::Issue)
    };
    shared.changed.notify_waiters();
    // Counts the request as answered even if the client gives up and the future is dropped.
    let _done = InFlight(shared.inner.clone());
    answer(&shared, reply, &form, authorization.is_some()).await
}

struct InFlight(Arc<Mutex<Inner>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.0.lock() {
            inner.in_flight -= 1;
        }
    }
}

async fn answer(
    shared: &Shared,
    mut reply: Reply,
    form: &BTreeMap<String, String>,
    has_basic: bool,
) -> Response {
    loop {
        match reply {
            Reply::Delay(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Json(status, body, headers) => {
                let mut response = (status_code(status), Json(body)).into_response();
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(name, value.parse().expect("header value"));
                }
                return response;
            }
            Reply::Raw(status, bytes) => return (status_code(status), bytes).into_response(),
            Reply::Trickle {
                chunk,
                every,
                count,
            } => {
                let stream = futures_util::stream::unfold(0, move |sent| {
                    let chunk = chunk.clone();
                    async move {
                        if sent == count {
                            return None;
                        }
                        tokio::time::sleep(every).await;
                        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), sent + 1))
                    }
                });
                return Response::new(Body::from_stream(stream));
            }
            Reply::Issue => return issue(shared, form, has_basic),
        }
    }
}

fn issue(shared: &Shared, form: &BTreeMap<String, String>, has_basic: bool) -> Response {
    let error = |code: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": code, "error_description": description})),
        )
            .into_response()
    };
    if has_basic && form.contains_key("client_secret") {
        return error(
            "invalid_request",
            "client authenticated in more than one way",
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return error("unsupported_grant_type", "only refresh_token is scripted");
    }
    let mut inner = shared.inner.lock().expect("fake provider lock");
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if !inner.valid_refresh_tokens.contains(&presented) {
        return error("invalid_grant", "refresh token is invalid or revoked");
    }
    inner.issued += 1;
    let access_token = format!("fake-access-{}-{}", shared.nonce, inner.issued);
    inner.issued_access_tokens.push(access_token.clone());
    let mut body = json!({"access_token": access_token, "token_type": "bearer", "expires_in": inner.expires_in.clone()});
    if inner.rotate {
        let rotated = format!("fake-refresh-{}-rotated-{}", shared.nonce, inner.issued);
        inner.valid_refresh_tokens.remove(&presented);
        inner.valid_refresh_tokens.insert(rotated.clone());
        body["refresh_token"] = json!(rotated);
    }
    Json(body).into_response()
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("a valid status code in a test script")
}
