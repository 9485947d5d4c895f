//! The whole daemon in the test's own process: `daemon::bind` and `daemon::run` with a clock
//! the test holds, so that time-dependent behaviour is driven by the test, not waited for.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::Home;
use tokenbroker::clock::ManualClock;
use tokenbroker::config::{self, Env};
use tokenbroker::daemon;
use tokenbroker::testing::FakeProvider;

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
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let written = home.config(&fake.token_url(), "", "");
    // Port 0: the system picks a free port when `bind` binds it.
    let text = std::fs::read_to_string(&written)
        .unwrap()
        .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let path = home.write("in-process.toml", &text);
    let socket = home.socket();
    let settings = config::load(&path, &Env::new()).unwrap();

    let listeners = daemon::bind(&settings).await.unwrap();
    let port = listeners.tcp_addr().unwrap().port();
    assert_ne!(
        port, 0,
        "port 0 is bound to a real port before the daemon runs"
    );
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
        .unix_socket(socket)
        .build()
        .unwrap();
    let grant = fake.grant("a");
    let (code, body) = request(
        &client,
        "PUT",
        "/v1/accounts/a",
        Some(json!({"provider": "fake", "refresh_token": grant})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(fake.token_calls(), 1);
    let (code, body) = request(&client, "GET", "/v1/token/a", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(fake.token_calls(), 1, "served from memory");

    // Four hours later by the daemon's clock, the token has run out: asking refreshes it.
    clock.advance(HOUR * 4);
    let (code, body) = request(&client, "GET", "/v1/token/a", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        fake.token_calls(),
        2,
        "the daemon's clock is the one the test moved"
    );
    assert!(body["expires_in"].as_u64().unwrap() > 3 * 3600, "{body}");

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
