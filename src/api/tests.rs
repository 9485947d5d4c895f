//! The router driven with `oneshot`: status codes, access rules and bodies, with no socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::task::TaskTracker;

use super::access::tests::client;
use super::*;
use crate::broker::{self, Broker};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::provider::Provider;
use crate::store::{self, SledStore};
use crate::testing::{FakeProvider, Reply};
use crate::token::RefreshPolicy;

pub(super) const ADMIN: Peer = Peer::Unix {
    uid: 0,
    gid: 0,
    pid: Some(1),
};
const BACKUP_UID: Peer = Peer::Unix {
    uid: 1001,
    gid: 1001,
    pid: Some(7),
};
const STRANGER: Peer = Peer::Unix {
    uid: 4242,
    gid: 4242,
    pid: Some(8),
};
const TCP: Peer = Peer::Tcp(std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    5000,
));

/// The API as the listeners serve it (`service`), with the router and state behind it.
pub(super) struct Api {
    pub(super) fake: FakeProvider,
    pub(super) service: Service,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new(fake: FakeProvider, state: AppState, dir: tempfile::TempDir) -> Self {
        Self {
            fake,
            service: Service::new(state.clone()),
            state,
            _dir: dir,
        }
    }
}

pub(super) async fn api() -> Api {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SledStore::open(&store::Config {
            key_file: dir.path().to_owned().join("store-key"),
            dir: dir.path().to_owned(),
            // No memory for tokens: every sweep leaves their text to the store.
            backend: store::Backend::Sled { token_memory: 0 },
        })
        .unwrap(),
    );
    let provider = Arc::new(Provider::new(fake.provider_config("fake")).unwrap());
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let broker = Broker::open(
        store,
        broker::Fixed::new(vec![provider], RefreshPolicy::default()),
        clock.clone(),
        2,
        TaskTracker::new(),
    )
    .unwrap();
    let clients = vec![
        client("backup", None, &[1001], &["dropbox-*"]),
        client("sidecar", Some("sidecar-key"), &[], &["corp"]),
        client("ops", Some("ops-key"), &[], &["*"]),
        Client {
            metrics: true,
            ..client("scraper", Some("scraper-key"), &[], &[])
        },
    ];
    let metrics = Arc::new(crate::metrics::Metrics::new(
        crate::metrics::Detail::PerAccount,
    ));
    let rules = Arc::new(FixedRules {
        access: Access::new(&[], 999_999, clients, &metrics),
        readiness: Readiness {
            required: vec!["corp".parse().unwrap()],
            check_interval: Duration::from_secs(30),
            started_at: clock.monotonic(),
        },
    });
    let state = AppState {
        broker,
        rules,
        clock,
        public_url: "http://127.0.0.1:8765".parse().unwrap(),
        metrics,
    };
    Api::new(fake, state, dir)
}

impl Api {
    async fn call(
        &self,
        peer: Peer,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let request = request.body(body).unwrap();
        let response = self.service.call(request, peer).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    async fn json(
        &self,
        peer: Peer,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, _, bytes) = self.call(peer, method, uri, &headers, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub(super) async fn import(&self, name: &str) {
        let refresh = self.fake.grant(name);
        let (status, body) = self
            .json(
                ADMIN,
                "PUT",
                &format!("/v1/accounts/{name}"),
                None,
                Some(json!({"provider": "fake", "refresh_token": refresh})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "active");
    }
}

#[tokio::test]
async fn tokens_come_as_json_or_plain_text_and_are_never_cached() {
    let api = api().await;
    api.import("dropbox-main").await;
    let issued = api.fake.issued_access_tokens()[0].clone();
    let (status, headers, bytes) = api
        .call(BACKUP_UID, "GET", "/v1/token/dropbox-main", &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["access_token"], issued);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 14000);
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    let (status, headers, bytes) = api
        .call(
            BACKUP_UID,
            "GET",
            "/v1/token/dropbox-main",
            &[("accept", "text/plain")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(String::from_utf8(bytes).unwrap(), issued);
}

#[tokio::test]
async fn status_codes_follow_the_design() {
    let api = api().await;
    api.import("corp").await;
    api.import("dropbox-main").await;
    // An unknown account is 403 for a restricted client (names do not leak), 404 for `*`.
    let cases = [
        (TCP, "/v1/token/corp", None, StatusCode::UNAUTHORIZED),
        (
            TCP,
            "/v1/token/corp",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (TCP, "/v1/token/corp", Some("sidecar-key"), StatusCode::OK),
        (
            TCP,
            "/v1/token/dropbox-main",
            Some("sidecar-key"),
            StatusCode::FORBIDDEN,
        ),
        (
            TCP,
            "/v1/token/nope",
            Some("sidecar-key"),
            StatusCode::FORBIDDEN,
        ),
        (
            BACKUP_UID,
            "/v1/token/dropbox-nope",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            TCP,
            "/v1/token/nope",
            Some("ops-key"),
            StatusCode::NOT_FOUND,
        ),
        (
            TCP,
            "/v1/token/..%2Fetc",
            Some("ops-key"),
            StatusCode::NOT_FOUND,
        ),
        (STRANGER, "/v1/token/corp", None, StatusCode::FORBIDDEN),
        (ADMIN, "/v1/token/corp", None, StatusCode::OK),
    ];
    for (peer, uri, key, expected) in cases {
        let (status, body) = api.json(peer, "GET", uri, key, None).await;
        assert_eq!(status, expected, "{peer:?} {uri} {key:?}: {body}");
    }
    let (status, headers, _) = api.call(TCP, "GET", "/v1/token/corp", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn admin_routes_need_an_admin() {
    let api = api().await;
    api.import("corp").await;
    let import = json!({"provider": "fake", "refresh_token": "x"});
    assert_eq!(
        api.json(
            TCP,
            "PUT",
            "/v1/accounts/corp",
            Some("ops-key"),
            Some(import.clone())
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.json(
            BACKUP_UID,
            "PUT",
            "/v1/accounts/dropbox-x",
            None,
            Some(import)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.json(
            TCP,
            "POST",
            "/v1/accounts/corp/refresh",
            Some("sidecar-key"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.json(
            TCP,
            "DELETE",
            "/v1/accounts/corp",
            Some("sidecar-key"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = api
        .json(ADMIN, "POST", "/v1/accounts/corp/refresh", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.fake.token_calls(), 2);
    assert_eq!(
        api.json(ADMIN, "DELETE", "/v1/accounts/corp", None, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.json(ADMIN, "GET", "/v1/accounts/corp", None, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn account_lists_show_only_what_the_caller_may_see_and_no_secrets() {
    let api = api().await;
    api.import("corp").await;
    api.import("dropbox-main").await;
    let (_, all) = api.json(ADMIN, "GET", "/v1/accounts", None, None).await;
    assert_eq!(all["accounts"].as_array().unwrap().len(), 2);
    let (_, some) = api
        .json(BACKUP_UID, "GET", "/v1/accounts", None, None)
        .await;
    let names: Vec<_> = some["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["dropbox-main"]);
    let text = all.to_string();
    for secret in api
        .fake
        .issued_access_tokens()
        .into_iter()
        .chain(api.fake.valid_refresh_tokens())
    {
        assert!(!text.contains(&secret), "account status leaks a secret");
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let api = api().await;
    api.import("corp").await;
    for (method, uri, body) in [
        ("GET", "/v1/token/corp?min_valid=abc", None),
        ("GET", "/v1/token/corp?bogus=1", None),
        ("GET", "/v1/token/corp?min_valid=999999", None),
        ("POST", "/v1/token/corp", Some(json!({"nope": 1}))),
        (
            "PUT",
            "/v1/accounts/corp",
            Some(json!({"provider": "fake"})),
        ),
        (
            "PUT",
            "/v1/accounts/Bad%20Name",
            Some(json!({"provider": "fake", "refresh_token": "x"})),
        ),
        (
            "PUT",
            "/v1/accounts/new",
            Some(json!({"provider": "missing", "refresh_token": "x"})),
        ),
        (
            "PUT",
            "/v1/accounts/new",
            Some(json!({"provider": "fake", "refresh_token": "not-valid"})),
        ),
    ] {
        let (status, body) = api.json(ADMIN, method, uri, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{method} {uri}: {body}"
        );
    }
    let (status, _, bytes) = api
        .call(
            ADMIN,
            "PUT",
            "/v1/accounts/x",
            &[("content-type", "application/json")],
            Some(json!("a".repeat(100_000))),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn a_dead_grant_answers_503_with_retry_after() {
    let api = api().await;
    api.import("corp").await;
    api.fake
        .push([Reply::oauth_error(400, "invalid_grant", "revoked")]);
    let (status, body) = api
        .json(ADMIN, "POST", "/v1/accounts/corp/refresh", None, None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, headers, bytes) = api.call(ADMIN, "GET", "/v1/token/corp", &[], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "needs_reauth");
    let (_, account) = api
        .json(ADMIN, "GET", "/v1/accounts/corp", None, None)
        .await;
    assert_eq!(account["status"], "needs_reauth");
}

#[tokio::test]
async fn readiness_needs_required_accounts_and_a_ticking_scheduler() {
    let api = api().await;
    let (status, body) = api.json(ADMIN, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["problems"].to_string().contains("corp"), "{body}");
    // Anyone who can connect may probe, but learns no account's name.
    for key in [None, Some("sidecar-key")] {
        let (status, body) = api.json(TCP, "GET", "/readyz", key, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{key:?}");
        assert_eq!(
            body["problems"],
            json!(["1 required account(s) have no valid token"]),
            "{key:?}"
        );
    }
    api.import("corp").await;
    assert_eq!(
        api.json(TCP, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.json(TCP, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

/// `/readyz/{account}` tells a client allowed the account whether its token would be served
/// at once, and why not; others learn nothing about it.
#[tokio::test]
async fn an_account_is_ready_when_its_token_would_be_served_at_once() {
    let api = api().await;
    api.fake.set_expires_in(json!(3600));
    let sidecar = Some("sidecar-key");
    let ready = |key: Option<&'static str>, path: &'static str| {
        let api = &api;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let mut headers = vec![("host", "127.0.0.1:8765")];
            headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
            let (status, _, body) = api.call(TCP, "GET", path, &headers, None).await;
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = ready(Some("ops-key"), "/readyz/corp").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    api.import("corp").await;
    let (status, body) = ready(sidecar, "/readyz/corp").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    // A sweep leaves its text to the store (the API's store keeps none in memory), and it
    // is as ready as before: the request for it would read it back and serve it at once.
    for handle in api.state.broker.sweep() {
        handle.await.unwrap();
    }
    assert!(api
        .state
        .broker
        .with_cached_token("corp", None, |_, _| ())
        .is_none());
    let (status, body) = ready(sidecar, "/readyz/corp").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = ready(sidecar, "/readyz/corp?min_valid=7200").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("less than a caller may be given"),
        "{body}"
    );
    // Not the sidecar's account, existing or not; no key at all.
    for (key, path, expected) in [
        (sidecar, "/readyz/dropbox-main", StatusCode::FORBIDDEN),
        (sidecar, "/readyz/nope", StatusCode::FORBIDDEN),
        (None, "/readyz/corp", StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = ready(key, path).await;
        assert_eq!(status, expected, "{key:?} {path}: {body}");
        assert!(body.get("reason").is_none(), "{body}");
    }
}

/// `/metrics` names accounts and clients: it is for admins and clients allowed it, not for
/// whoever can reach the port.
#[tokio::test]
async fn metrics_are_for_admins_and_clients_allowed_them() {
    let api = api().await;
    api.import("corp").await;
    for (peer, key, expected) in [
        (TCP, None, StatusCode::UNAUTHORIZED),
        (TCP, Some("sidecar-key"), StatusCode::FORBIDDEN),
        (STRANGER, None, StatusCode::FORBIDDEN),
        (TCP, Some("scraper-key"), StatusCode::OK),
        (ADMIN, None, StatusCode::OK),
    ] {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("host", "127.0.0.1:8765")];
        headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
        let (status, _, body) = api.call(peer, "GET", "/metrics", &headers, None).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, expected, "{peer:?} {key:?}: {body}");
        assert_eq!(body.contains("corp"), status == StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_stalled_scheduler_makes_the_daemon_unready() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SledStore::open(&store::Config {
            key_file: dir.path().to_owned().join("store-key"),
            dir: dir.path().to_owned(),
            backend: store::Backend::sled(),
        })
        .unwrap(),
    );
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let providers = vec![Arc::new(
        Provider::new(fake.provider_config("fake")).unwrap(),
    )];
    let broker = Broker::open(
        store,
        broker::Fixed::new(providers, RefreshPolicy::default()),
        Arc::new(clock.clone()),
        2,
        TaskTracker::new(),
    )
    .unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::new(
        crate::metrics::Detail::PerAccount,
    ));
    let rules = Arc::new(FixedRules {
        access: Access::new(&[], 0, vec![], &metrics),
        readiness: Readiness {
            required: vec![],
            check_interval: Duration::from_secs(30),
            started_at: clock.monotonic(),
        },
    });
    let state = AppState {
        broker: broker.clone(),
        rules,
        clock: Arc::new(clock.clone()),
        public_url: "http://127.0.0.1:8765".parse().unwrap(),
        metrics,
    };
    let api = Api::new(fake, state, dir);
    broker.sweep();
    assert_eq!(
        api.json(TCP, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(96));
    let (status, body) = api.json(TCP, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["problems"].to_string().contains("not ticked"),
        "{body}"
    );
    broker.sweep();
    assert_eq!(
        api.json(TCP, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    // The wall clock steps back an hour: the last tick now lies in the wall clock's future,
    // which must not pass for a fresh one once the scheduler stops.
    clock.set(clock.now() - Duration::from_secs(3600));
    clock.advance(Duration::from_secs(96));
    let (status, body) = api.json(TCP, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn web_pages_reach_no_route_and_browsers_reach_the_connect_pages() {
    let api = api().await;
    api.import("corp").await;
    let key = ("authorization", "Bearer sidecar-key");
    let cases = [
        (TCP, vec![key, ("host", "127.0.0.1:8765")], StatusCode::OK),
        (TCP, vec![key, ("host", "localhost")], StatusCode::OK),
        (
            TCP,
            vec![key, ("host", "evil.example:8765")],
            StatusCode::FORBIDDEN,
        ),
        (
            TCP,
            vec![
                key,
                ("host", "127.0.0.1:8765"),
                ("origin", "http://evil.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (ADMIN, vec![("origin", "null")], StatusCode::FORBIDDEN),
        // Socket clients name any host (curl --unix-socket http://whatever/...).
        (ADMIN, vec![("host", "tokenbroker")], StatusCode::OK),
    ];
    for (peer, headers, expected) in cases {
        let (status, _, body) = api
            .call(peer, "GET", "/v1/token/corp", &headers, None)
            .await;
        assert_eq!(
            status,
            expected,
            "{headers:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // Every route, the probes, the metrics and the connect pages included: a request with
    // a web page's Origin, or over TCP under a foreign Host, is refused before routing.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/accounts",
        "/oauth/start/unknown",
        "/oauth/callback?code=x&state=y",
        "/no/such/route",
    ] {
        for headers in [
            vec![
                key,
                ("host", "127.0.0.1:8765"),
                ("origin", "http://127.0.0.1:8765"),
            ],
            vec![key, ("host", "rebound.example:8765")],
        ] {
            let (status, _, body) = api.call(TCP, "GET", path, &headers, None).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} {headers:?}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // A browser navigating to a connect page sends no Origin with its GET, under our Host.
    let (status, _, _) = api
        .call(
            TCP,
            "GET",
            "/oauth/start/unknown",
            &[("host", "127.0.0.1:8765")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE, "the connect pages stay reachable");
}

#[test]
fn arbitrary_requests_never_panic_or_fail_inside() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(api());
    runtime.block_on(api.import("corp"));
    let config = ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    };
    let strategy = (
        prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
        prop_oneof![
            Just("/v1/token/"),
            Just("/v1/accounts/"),
            Just("/v1/connect/"),
            Just("/oauth/"),
            Just("/v1/"),
            Just("/")
        ],
        "[a-zA-Z0-9%._~?=&/-]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..120),
        any::<bool>(),
    );
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, |(method, prefix, rest, body, as_admin)| {
            let uri = format!("{prefix}{rest}");
            prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
            let request = Request::builder()
                .method(method)
                .uri(&uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap();
            let peer = if as_admin { ADMIN } else { TCP };
            let response = runtime.block_on(api.service.call(request, peer));
            let status = response.status();
            let is_html = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/html"));
            let bytes = runtime
                .block_on(response.into_body().collect())
                .unwrap()
                .to_bytes();
            prop_assert!(!status.is_server_error(), "{method} {uri}: {status}");
            if status.is_client_error() && !is_html {
                let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                prop_assert!(
                    error["error"].is_string() && error["message"].is_string(),
                    "{method} {uri}: {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Token requests are counted by client, route and status, whether answered from memory,
/// after a refresh or with an error, and each client under its own name.
#[tokio::test]
async fn token_requests_are_counted_by_client_however_they_are_answered() {
    let api = api().await;
    api.import("corp").await;
    let sidecar = [
        ("authorization", "Bearer sidecar-key"),
        ("host", "127.0.0.1:8765"),
    ];
    let ops = [
        ("authorization", "Bearer ops-key"),
        ("host", "127.0.0.1:8765"),
    ];
    for _ in 0..3 {
        let (status, _, _) = api.call(TCP, "GET", "/v1/token/corp", &sidecar, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = api.call(TCP, "GET", "/v1/token/corp", &ops, None).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let (status, _, _) = api.call(ADMIN, "GET", "/v1/token/corp", &[], None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let too_long = "/v1/token/corp?min_valid=99999999";
    let (status, _, _) = api.call(ADMIN, "GET", too_long, &[], None).await;
    assert!(status.is_client_error());

    let text = api.state.metrics.render(
        &api.state.broker,
        api.state.clock.now(),
        crate::metrics::Format::OpenMetrics,
    );
    let count = |series: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse::<f64>()
            .unwrap()
    };
    let token = |client: &str, status: u16| {
        count(&format!(
            r#"tokenbroker_token_requests_total{{client="{client}",route="/v1/token/{{account}}",status="{status}"}}"#
        ))
    };
    assert_eq!(token("sidecar", 200), 3.0);
    assert_eq!(token("ops", 200), 1.0);
    assert_eq!(token("admin", 200), 2.0);
    assert_eq!(token("admin", status.as_u16()), 1.0);
    let route_ok = r#"tokenbroker_http_requests_total{route="/v1/token/{account}",status="200"}"#;
    assert_eq!(count(route_ok), 6.0);
}

#[test]
fn the_bare_token_is_for_callers_that_accept_text_plain() {
    let wants = |accept: Option<&'static str>| {
        token::wants_text(accept.map(HeaderValue::from_static).as_ref())
    };
    for accept in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/json;q=0.5, text/plain",
        "application/json,\ttext/plain;q=0.9",
    ] {
        assert!(wants(Some(accept)), "{accept}");
    }
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("text/html"),
    ] {
        assert!(!wants(accept), "{accept:?}");
    }
}
