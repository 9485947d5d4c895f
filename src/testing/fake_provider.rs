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
    /// Issue (and rotate) at once, as a provider commits its answer, then take this long to
    /// deliver it: the old refresh token is spent even if the client goes away meanwhile.
    IssueSlowly(Duration),
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
    /// Sent as `refresh_token_expires_in` when set (GitHub, Box).
    refresh_token_expires_in: Option<Value>,
    issued: u64,
    issued_access_tokens: Vec<String>,
    requests: Vec<RecordedRequest>,
    /// Whether requests are kept in `requests` (a benchmark of 100k refreshes turns it off).
    recording: bool,
    /// Token-endpoint requests so far, recorded or not.
    token_calls: usize,
    /// Refresh requests refused because the refresh token was not (or no longer) valid.
    refused_refreshes: usize,
    /// How long every unscripted token request takes to answer.
    latency: Duration,
    /// Issued access tokens are padded to this many bytes (Dropbox's are about 1.3 KB).
    access_token_length: usize,
    /// The device flow's user code and verification URI path (a hostile provider's, say).
    device_user_code: String,
    device_uri_path: String,
    in_flight: usize,
    max_in_flight: usize,
    /// Issued authorization codes and what they were issued for.
    codes: std::collections::HashMap<String, CodeGrant>,
    /// Access token → the refresh token it was minted from (for Dropbox-style revocation).
    minted_from: std::collections::HashMap<String, String>,
    /// Access token → when it stops being accepted by `/api/check` (numeric `expires_in`).
    accepted_until: std::collections::HashMap<String, tokio::time::Instant>,
    /// Whether the user approved the pending device flow.
    device_approved: bool,
    /// `iss` added to authorization redirects, if set.
    callback_iss: Option<String>,
    /// Require `token_access_type=offline` for a refresh token (Dropbox's rule).
    dropbox_mode: bool,
    /// Refuse HTTP Basic client authentication with `invalid_client` (Box's rule).
    body_credentials_only: bool,
    /// Authorize requests seen (their query parameters).
    authorize_requests: Vec<BTreeMap<String, String>>,
    /// Revocation requests seen: (path, form or bearer token).
    revocations: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    token_access_type: Option<String>,
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
                refresh_token_expires_in: None,
                issued: 0,
                issued_access_tokens: Vec::new(),
                requests: Vec::new(),
                recording: true,
                token_calls: 0,
                refused_refreshes: 0,
                latency: Duration::ZERO,
                access_token_length: 0,
                device_user_code: "WDJB-MJHT".into(),
                device_uri_path: "/device".into(),
                in_flight: 0,
                max_in_flight: 0,
                codes: std::collections::HashMap::new(),
                minted_from: std::collections::HashMap::new(),
                accepted_until: std::collections::HashMap::new(),
                device_approved: false,
                callback_iss: None,
                dropbox_mode: false,
                body_credentials_only: false,
                authorize_requests: Vec::new(),
                revocations: Vec::new(),
            })),
            changed: Arc::new(Notify::new()),
            nonce: format!("{:08x}", rand::random::<u32>()),
            base: format!("http://{addr}"),
        };
        let router = Router::new()
            .route("/oauth2/token", post(token))
            .route(
                "/oauth2/authorize",
                get(authorize_page).post(authorize_decision),
            )
            .route("/oauth2/device", post(device_authorization))
            .route("/oauth2/revoke", post(revoke_rfc7009))
            .route("/2/auth/token/revoke", post(revoke_dropbox))
            .route(
                "/applications/{client_id}/grant",
                axum::routing::delete(revoke_github),
            )
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/api/check", get(check_access_token))
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

    /// The resource API that accepts the fake's unexpired access tokens (`GET`, bearer).
    pub fn check_url(&self) -> String {
        format!("http://{}/api/check", self.addr)
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
                authorize: Some(self.authorize_url().parse().expect("a URL")),
                revoke: None,
                device: None,
            }),
            scopes: vec![],
            issuer: None,
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

    /// Sends `refresh_token_expires_in` (GitHub's and Box's refresh-token lifetime) with
    /// every token from now on; `None` stops it.
    pub fn set_refresh_token_expires_in(&self, value: Option<Value>) {
        self.lock().refresh_token_expires_in = value;
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
        self.lock().token_calls
    }

    /// Refresh requests refused so far because the refresh token was invalid (a rotated
    /// one presented again, say).
    pub fn refused_refreshes(&self) -> usize {
        self.lock().refused_refreshes
    }

    /// Every unscripted token request takes `latency` to answer, as a real provider does.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Issued access tokens are padded with `x` to `length` bytes, as long as a real
    /// provider's (a benchmark's memory depends on it).
    pub fn set_access_token_length(&self, length: usize) {
        self.lock().access_token_length = length;
    }

    /// The device flow's user code and the path of its verification URI (any text: a
    /// hostile provider's escape sequences, say).
    pub fn set_device_texts(&self, user_code: &str, uri_path: &str) {
        let mut inner = self.lock();
        inner.device_user_code = user_code.into();
        inner.device_uri_path = uri_path.into();
    }

    /// Whether `requests` keeps each request (on by default; a benchmark turns it off).
    pub fn set_recording(&self, on: bool) {
        self.lock().recording = on;
    }

    /// The authorization endpoint.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth2/authorize", self.shared.base)
    }

    /// The device authorization endpoint.
    pub fn device_url(&self) -> String {
        format!("{}/oauth2/device", self.shared.base)
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revoke_url(&self) -> String {
        format!("{}/oauth2/revoke", self.shared.base)
    }

    /// GitHub's revocation URL, with the `{client_id}` placeholder the preset fills in.
    pub fn github_revoke_url(&self) -> String {
        format!("{}/applications/{{client_id}}/grant", self.shared.base)
    }

    /// Behave like Box: credentials only in the request body; HTTP Basic is refused with
    /// `invalid_client` at the token and revocation endpoints.
    pub fn set_body_credentials_only(&self, on: bool) {
        self.lock().body_credentials_only = on;
    }

    /// The Dropbox-style revocation endpoint (`POST /2/auth/token/revoke`, bearer token).
    pub fn dropbox_revoke_url(&self) -> String {
        format!("{}/2/auth/token/revoke", self.shared.base)
    }

    /// Behave like Dropbox: a code exchange yields a refresh token only when the authorize
    /// request carried `token_access_type=offline`.
    pub fn set_dropbox_mode(&self, on: bool) {
        self.lock().dropbox_mode = on;
    }

    /// Adds `iss=<value>` to authorization redirects (RFC 9207).
    pub fn set_callback_iss(&self, iss: Option<String>) {
        self.lock().callback_iss = iss;
    }

    /// The user approves the pending device flow.
    pub fn approve_device(&self) {
        self.lock().device_approved = true;
    }

    /// The query parameters of every authorize request.
    pub fn authorize_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().authorize_requests.clone()
    }

    /// Every revocation request: its path and what it presented.
    pub fn revocations(&self) -> Vec<(String, String)> {
        self.lock().revocations.clone()
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
        "device_authorization_endpoint": format!("{}/oauth2/device", shared.base),
        "revocation_endpoint": format!("{}/oauth2/revoke", shared.base),
        "code_challenge_methods_supported": ["S256"],
    }))
}

/// The consent page: it must be rendered and its button clicked (no JavaScript).
async fn authorize_page(
    State(shared): State<Shared>,
    axum::extract::Query(query): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    shared
        .inner
        .lock()
        .expect("fake provider lock")
        .authorize_requests
        .push(query.clone());
    let hidden: String = query
        .iter()
        .map(|(k, v)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                escape(k),
                escape(v)
            )
        })
        .collect();
    let client = escape(query.get("client_id").map_or("", String::as_str));
    axum::response::Html(format!(
        r#"<!doctype html><html><head><title>Fake provider: authorize</title></head><body>
<h1>Allow {client} to access your files?</h1>
<form method="post" action="/oauth2/authorize">{hidden}
<button type="submit" id="allow" name="decision" value="allow">Allow</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form></body></html>"#
    ))
    .into_response()
}

async fn authorize_decision(State(shared): State<Shared>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let state = form.get("state").cloned().unwrap_or_default();
    let redirect_uri = form.get("redirect_uri").cloned();
    let mut inner = shared.inner.lock().expect("fake provider lock");
    let iss = inner.callback_iss.clone();
    let target = |params: Vec<(&str, String)>| -> Response {
        let Some(redirect) = &redirect_uri else {
            let code = params
                .iter()
                .find(|(k, _)| *k == "code")
                .map_or_else(String::new, |(_, v)| v.clone());
            return axum::response::Html(format!(
                "<p>Copy this code into the application: <code id=\"code\">{}</code></p>",
                escape(&code)
            ))
            .into_response();
        };
        let mut url = url::Url::parse(redirect).expect("a redirect URI");
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in &params {
                query.append_pair(key, value);
            }
            query.append_pair("state", &state);
            if let Some(iss) = &iss {
                query.append_pair("iss", iss);
            }
        }
        (StatusCode::FOUND, [("location", url.to_string())]).into_response()
    };
    if form.get("decision").map(String::as_str) != Some("allow") {
        return target(vec![
            ("error", "access_denied".into()),
            ("error_description", "the user denied access".into()),
        ]);
    }
    let code = format!("fake-code-{:016x}", rand::random::<u64>());
    inner.codes.insert(
        code.clone(),
        CodeGrant {
            redirect_uri: redirect_uri.clone(),
            code_challenge: form.get("code_challenge").cloned(),
            token_access_type: form.get("token_access_type").cloned(),
        },
    );
    target(vec![("code", code)])
}

async fn device_authorization(State(shared): State<Shared>) -> Json<Value> {
    let (user_code, path) = {
        let inner = shared.inner.lock().expect("fake provider lock");
        (
            inner.device_user_code.clone(),
            inner.device_uri_path.clone(),
        )
    };
    Json(json!({
        "device_code": format!("fake-device-{}", shared.nonce),
        "user_code": user_code,
        "verification_uri": format!("{}{path}", shared.base),
        "expires_in": 120,
        "interval": 1,
    }))
}

/// RFC 7009, answering an unknown or dead token as Google does: 400 `invalid_token`.
async fn revoke_rfc7009(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let token = form.get("token").cloned().unwrap_or_default();
    let mut inner = shared.inner.lock().expect("fake provider lock");
    inner
        .revocations
        .push(("/oauth2/revoke".into(), token.clone()));
    if inner.body_credentials_only && headers.contains_key("authorization") {
        return invalid_client();
    }
    if inner.valid_refresh_tokens.remove(&token) {
        StatusCode::OK.into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "invalid_token", "error_description": "Token expired or revoked"}),
            ),
        )
            .into_response()
    }
}

/// GitHub's `DELETE /applications/{client_id}/grant`: Basic credentials of that client, the
/// access token in a JSON body; 204, or 404 for a token it does not know.
async fn revoke_github(
    State(shared): State<Shared>,
    axum::extract::Path(client_id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    if basic.is_none_or(|pair| !pair.starts_with(&format!("{client_id}:"))) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Requires authentication"})),
        )
            .into_response();
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut inner = shared.inner.lock().expect("fake provider lock");
    inner
        .revocations
        .push((format!("/applications/{client_id}/grant"), token.clone()));
    match inner.minted_from.get(&token).cloned() {
        Some(refresh) => {
            inner.valid_refresh_tokens.remove(&refresh);
            StatusCode::NO_CONTENT.into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
    }
}

fn invalid_client() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_client", "error_description": "The client credentials are invalid"})),
    )
        .into_response()
}

async fn revoke_dropbox(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut inner = shared.inner.lock().expect("fake provider lock");
    inner
        .revocations
        .push(("/2/auth/token/revoke".into(), bearer.clone()));
    match inner.minted_from.get(&bearer).cloned() {
        Some(refresh) => {
            inner.valid_refresh_tokens.remove(&refresh);
            Json(Value::Null).into_response()
        }
        None => (StatusCode::UNAUTHORIZED, Json(json!({"error_summary": "invalid_access_token/", "error": {".tag": "invalid_access_token"}}))).into_response(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reply = {
        let mut inner = shared.inner.lock().expect("fake provider lock");
        if inner.recording {
            inner.requests.push(RecordedRequest {
                path: "/oauth2/token".into(),
                form: form.clone(),
                authorization: authorization.clone(),
                received_at: tokio::time::Instant::now().into_std(),
            });
        }
        inner.token_calls += 1;
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        let latency = inner.latency;
        inner.script.pop_front().unwrap_or(if latency.is_zero() {
            Reply::Issue
        } else {
            Reply::Delay(latency, Box::new(Reply::Issue))
        })
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
            Reply::IssueSlowly(wait) => {
                let response = issue(shared, form, has_basic);
                tokio::time::sleep(wait).await;
                return response;
            }
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
    let mut inner = shared.inner.lock().expect("fake provider lock");
    if has_basic && inner.body_credentials_only {
        return invalid_client();
    }
    let mut with_refresh = inner.rotate;
    let presented = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            if !inner.valid_refresh_tokens.contains(&presented) {
                inner.refused_refreshes += 1;
                return error("invalid_grant", "refresh token is invalid or revoked");
            }
            Some(presented)
        }
        Some("authorization_code") => {
            let Some(grant) = form.get("code").and_then(|code| inner.codes.remove(code)) else {
                return error("invalid_grant", "code doesn't exist or has expired");
            };
            if grant.redirect_uri != form.get("redirect_uri").cloned() {
                return error("invalid_grant", "redirect_uri mismatch");
            }
            if let Some(challenge) = &grant.code_challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                let computed = {
                    use base64::Engine as _;
                    use sha2::Digest as _;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sha2::Sha256::digest(verifier.as_bytes()))
                };
                if &computed != challenge {
                    return error("invalid_grant", "invalid code_verifier");
                }
            }
            with_refresh =
                !inner.dropbox_mode || grant.token_access_type.as_deref() == Some("offline");
            None
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            if !inner.device_approved {
                return error("authorization_pending", "the user has not approved yet");
            }
            with_refresh = true;
            None
        }
        _ => return error("unsupported_grant_type", "not scripted"),
    };
    inner.issued += 1;
    let mut access_token = format!("fake-access-{}-{}", shared.nonce, inner.issued);
    let padding = inner.access_token_length.saturating_sub(access_token.len());
    access_token.extend(std::iter::repeat_n('x', padding));
    inner.issued_access_tokens.push(access_token.clone());
    let mut body = json!({"access_token": access_token, "token_type": "bearer", "expires_in": inner.expires_in.clone(), "account_id": "dbid:fake-user"});
    if let Some(lifetime) = &inner.refresh_token_expires_in {
        body["refresh_token_expires_in"] = lifetime.clone();
    }
    let refresh = if with_refresh {
        let rotated = format!("fake-refresh-{}-issued-{}", shared.nonce, inner.issued);
        if let Some(old) = &presented {
            inner.valid_refresh_tokens.remove(old);
        }
        inner.valid_refresh_tokens.insert(rotated.clone());
        body["refresh_token"] = json!(rotated);
        rotated
    } else {
        presented.unwrap_or_default()
    };
    if let Some(seconds) = inner.expires_in.as_u64() {
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
        inner.accepted_until.insert(access_token.clone(), until);
    }
    inner.minted_from.insert(access_token, refresh);
    Json(body).into_response()
}

/// The fake's resource API: 200 for an access token it issued that has not expired yet
/// (by the `expires_in` it was issued with), 401 for anything else.
async fn check_access_token(State(shared): State<Shared>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let inner = shared
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let valid = token
        .and_then(|token| inner.accepted_until.get(token))
        .is_some_and(|until| tokio::time::Instant::now() < *until);
    if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("a valid status code in a test script")
}
