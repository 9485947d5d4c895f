//! The whole daemon in the test's own process: `daemon::bind` and `daemon::run` with a clock
//! the test holds, so that time-dependent behaviour is driven by the test, not waited for.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::Home;
use tokenbroker::clock::{Clock, ManualClock};
use tokenbroker::config::{self, Env};
use tokenbroker::daemon;
use tokenbroker::testing::{FakeProvider, Reply};

const HOUR: Duration = Duration::from_secs(3600);

async fn request(
    client: &reqwest::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), format!("http://localhost{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_in_process_on_listeners_and_a_clock_it_is_given() {
    let daemon = InProcess::start().await;
    assert_ne!(
        daemon.port, 0,
        "port 0 is bound to a real port before the daemon runs"
    );
    assert_eq!(daemon.fake.token_calls(), 1);
    let (code, body) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(daemon.fake.token_calls(), 1, "served from memory");

    // Four hours later by the daemon's clock, the token has run out: asking refreshes it.
    daemon.clock.advance(HOUR * 4);
    let (code, body) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        daemon.fake.token_calls(),
        2,
        "the daemon's clock is the one the test moved"
    );
    assert!(body["expires_in"].as_u64().unwrap() > 3 * 3600, "{body}");
    daemon.stop().await;
}

/// A daemon in this process on a clock the test moves, its scheduler ticking every second
/// (real time) and sweeping by the test's clock; no jitter, so due times are exact.
struct InProcess {
    fake: FakeProvider,
    _home: Home,
    clock: ManualClock,
    /// The loopback TCP port `bind` chose for port 0.
    port: u16,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// The daemon holding account `a`, imported with a 4-hour token (one token call).
    async fn start() -> Self {
        let fake = FakeProvider::start().await;
        let home = Home::new();
        let refresh = "check_interval = \"1s\"\njitter = \"0s\"\nbackoff_base = \"1m\"\nbackoff_max = \"10m\"";
        let written = home.config(&fake.token_url(), refresh, "");
        // Port 0: the system picks a free port when `bind` binds it.
        let text = std::fs::read_to_string(&written)
            .unwrap()
            .replace("http = \"\"", "http = \"127.0.0.1:0\"");
        let path = home.write("in-process.toml", &text);
        let settings = config::load(&path, &Env::new()).unwrap();
        let listeners = daemon::bind(&settings).await.unwrap();
        let port = listeners.tcp_addr().unwrap().port();
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(daemon::run(
            settings,
            listeners,
            Arc::new(clock.clone()),
            async {
                let _ = stopped.await;
            },
            None,
        ));
        tokenbroker::provider::install_crypto_provider();
        let client = reqwest::Client::builder()
            .unix_socket(home.socket())
            .build()
            .unwrap();
        let daemon = Self {
            fake,
            _home: home,
            clock,
            port,
            client,
            stop: Some(stop),
            running,
        };
        let grant = daemon.fake.grant("a");
        let (code, body) = daemon
            .request(
                "PUT",
                "/v1/accounts/a",
                Some(json!({"provider": "fake", "refresh_token": grant})),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        daemon
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        request(&self.client, method, path, body).await
    }

    async fn status(&self) -> Value {
        self.request("GET", "/v1/accounts/a", None).await.1["status"].clone()
    }

    /// Moves the daemon's clock on by `by`, then waits for a sweep at the new time (the
    /// scheduler reports each tick's time, by this clock, in `/metrics`), and for the
    /// refreshes it started.
    async fn advance_and_sweep(&self, by: Duration) {
        self.clock.advance(by);
        let now = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = tokio::time::Instant::now();
        loop {
            let text = self
                .client
                .get("http://localhost/metrics")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let tick = text.lines().find_map(|line| {
                line.strip_prefix("tokenbroker_scheduler_last_tick_timestamp_seconds ")?
                    .parse::<f64>()
                    .ok()
            });
            if tick.is_some_and(|tick| tick >= now) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no sweep at the new time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A refresh the sweep started shows as `refreshing` until it is done.
        while self.status().await == "refreshing" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a refresh hangs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.running.await.unwrap().unwrap();
    }
}

/// A 4-hour token is refreshed when an hour is left (`ahead`, the default), not before, and
/// a caller's `min_valid` is honoured from the cache.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_refreshed_ahead_of_expiry_and_served_with_min_valid_left() {
    let daemon = InProcess::start().await;
    daemon
        .advance_and_sweep(HOUR * 3 - Duration::from_secs(1))
        .await;
    assert_eq!(daemon.fake.token_calls(), 1, "not due before 3 h");
    daemon.advance_and_sweep(Duration::from_secs(1)).await;
    assert_eq!(daemon.fake.token_calls(), 2, "due once an hour is left");
    let (code, body) = daemon
        .request("GET", "/v1/token/a?min_valid=3600", None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["expires_in"].as_u64().unwrap() > 3 * 3600, "{body}");
    assert_eq!(daemon.fake.token_calls(), 2, "served from memory");
    daemon.stop().await;
}

/// A refused grant stops every refresh, however long the daemon runs on: needs_reauth,
/// 503 to callers, and no further call.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_stops_refreshing_and_shows_in_accounts() {
    let daemon = InProcess::start().await;
    daemon.fake.push([Reply::oauth_error(
        400,
        "invalid_grant",
        "refresh token is invalid or revoked",
    )]);
    daemon.advance_and_sweep(HOUR * 3).await;
    assert_eq!(daemon.fake.token_calls(), 2);
    assert_eq!(daemon.status().await, "needs_reauth");
    let (_, account) = daemon.request("GET", "/v1/accounts/a", None).await;
    assert!(
        account["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid or revoked"),
        "{account}"
    );
    // Past the old token's expiry and through many sweeps: no call.
    for _ in 0..3 {
        daemon.advance_and_sweep(HOUR * 4).await;
    }
    let (status, body) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("needs_reauth"))
    );
    assert_eq!(daemon.fake.token_calls(), 2);
    daemon.stop().await;
}

/// Three outages in a row: the account is degraded, the old token is served while it is
/// valid, each retry comes within `backoff_max`, and the fourth call recovers.
#[tokio::test(flavor = "multi_thread")]
async fn three_outages_degrade_serve_the_old_token_then_recover() {
    let daemon = InProcess::start().await;
    let old = daemon.fake.issued_access_tokens()[0].clone();
    daemon.fake.push(
        (0..3).map(|_| Reply::Json(503, json!({"error": "temporarily_unavailable"}), vec![])),
    );
    daemon.advance_and_sweep(HOUR * 3).await;
    assert_eq!(daemon.fake.token_calls(), 2);
    assert_eq!(daemon.status().await, "degraded");
    let (status, body) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["access_token"],
        json!(old),
        "the old token is served while valid"
    );
    // Each retry waits a random part of its backoff (full jitter), at most `backoff_max`:
    // one call per 10 minutes, whatever the random part.
    for calls in 3..=5 {
        daemon.advance_and_sweep(Duration::from_secs(10 * 60)).await;
        assert_eq!(daemon.fake.token_calls(), calls);
    }
    assert_eq!(daemon.status().await, "active");
    let (_, body) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(
        body["access_token"],
        json!(daemon.fake.issued_access_tokens()[1])
    );
    daemon.stop().await;
}
