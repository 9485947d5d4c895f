//! Notifications from the real binary: a command and a signed webhook get exactly one event
//! per change of state, through needs_reauth → reconnect → recovered, and a receiver that
//! hangs delays neither the other receivers nor token serving.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use support::{eventually, Home};
use tokenbroker::secret::WebhookSecret;
use tokenbroker::testing::{FakeProvider, Reply};

/// Quick ticks, 2 s tokens: a refresh about every second.
const FAST: &str = "check_interval = \"1s\"\nmin_interval = \"1s\"\njitter = \"0s\"\nmin_valid = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"";

/// A webhook receiver that keeps the events whose signature is right, and counts the rest.
#[derive(Clone, Default)]
struct Receiver {
    events: Arc<Mutex<Vec<Value>>>,
    badly_signed: Arc<Mutex<usize>>,
}

async fn start_receiver(secret: &'static str) -> (Receiver, u16) {
    let receiver = Receiver::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let receiver = receiver.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                let expected = tokenbroker::notify::signature(&WebhookSecret::new(secret), &body);
                let signed = headers
                    .get("x-tokenbroker-signature")
                    .and_then(|v| v.to_str().ok());
                if signed == Some(expected.as_str()) {
                    receiver
                        .events
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    StatusCode::NO_CONTENT
                } else {
                    *receiver.badly_signed.lock().unwrap() += 1;
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, port)
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_change_of_state_is_told_once_to_a_command_and_a_signed_webhook() {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(json!(2));
    let home = Home::new();
    let (receiver, port) = start_receiver("hook-secret-value").await;
    let secret = home.write("hook-secret", "hook-secret-value\n");
    let lines = home.path("events.jsonl");
    let notify = format!(
        r#"
[[notify]]
command = ["sh", "-c", "cat >> '{lines}'; echo >> '{lines}'"]

[[notify]]
webhook = "http://127.0.0.1:{port}/hook"
secret_file = "{secret}"
events = ["needs_reauth", "recovered", "connected"]
accounts = ["a*"]

[[notify]]
command = ["sleep", "1000"]
"#,
        lines = lines.display(),
        secret = secret.display(),
    );
    let daemon = home
        .start(&home.config(&fake.token_url(), FAST, &notify), &[])
        .await;
    let from_command = || {
        std::fs::read_to_string(&lines)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .collect::<Vec<_>>()
    };

    daemon.import("a", &fake.grant("a"));
    // The refused grant: the next refresh, about a second later.
    fake.push([Reply::oauth_error(400, "invalid_grant", "revoked")]);
    eventually("needs_reauth told", Duration::from_secs(10), || async {
        names(&from_command()).contains(&"needs_reauth".to_owned())
    })
    .await;
    // While the hanging command holds its deliveries, tokens are served at once.
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(2),
        daemon.request("GET", "/v1/accounts/a", None),
    )
    .await
    .expect("the daemon answered while a receiver hangs");
    assert_eq!(status, 200);

    daemon.import("a", &fake.grant("a-again"));
    eventually("recovered told", Duration::from_secs(10), || async {
        names(&from_command()).contains(&"recovered".to_owned())
            && names(&receiver.events.lock().unwrap()).contains(&"recovered".to_owned())
    })
    .await;
    // Several more refreshes, each a success: nobody is told of them.
    let calls = fake.token_calls();
    fake.wait_for_calls(calls + 3, Duration::from_secs(15))
        .await;
    let (status, token) = daemon.request("GET", "/v1/token/a", None).await;
    assert_eq!(status, 200, "{token}");

    let expected = ["connected", "needs_reauth", "connected", "recovered"];
    assert_eq!(names(&from_command()), expected);
    assert_eq!(names(&receiver.events.lock().unwrap()), expected);
    assert_eq!(*receiver.badly_signed.lock().unwrap(), 0);
    let told = from_command();
    assert_eq!(told[1]["account"], "a");
    assert_eq!(told[1]["provider"], "fake");
    assert_eq!(told[1]["status"], "needs_reauth");
    assert!(
        told[1]["reason"].as_str().unwrap().contains("revoked"),
        "{}",
        told[1]
    );
    // No secret in any event.
    let text = std::fs::read_to_string(&lines).unwrap();
    for token in fake.issued_access_tokens() {
        assert!(!text.contains(&token));
    }
    assert!(!text.contains("fake-refresh"), "{text}");

    let (_, _, metrics) = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"tokenbroker_notifications_total{event="recovered",outcome="delivered"} 2"#
        ),
        "{metrics}"
    );
}

/// A grant whose refresh token the provider says ends in six days is told of once, however
/// many sweeps and refreshes follow (until its end moves).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_that_ends_within_a_week_is_told_once() {
    let fake = FakeProvider::start().await;
    fake.set_refresh_token_expires_in(Some(json!(6 * 86_400)));
    let home = Home::new();
    let lines = home.path("events.jsonl");
    let notify = format!(
        "\n[[notify]]\nevents = [\"refresh_token_expiring\"]\ncommand = [\"sh\", \"-c\", \"cat >> '{}'; echo >> '{}'\"]\n",
        lines.display(),
        lines.display()
    );
    let daemon = home
        .start(
            &home.config(&fake.token_url(), "check_interval = \"1s\"", &notify),
            &[],
        )
        .await;
    daemon.import("gh", &fake.grant("gh"));
    eventually(
        "refresh_token_expiring told",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&lines)
                .is_ok_and(|text| text.contains("refresh_token_expiring"))
        },
    )
    .await;
    // Three more sweeps (one a second): still one event.
    let (_, _, before) = daemon.get_text("/metrics").await;
    let tick = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("tokenbroker_scheduler_last_tick_timestamp_seconds "))
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let first = tick(&before);
    eventually("three more sweeps", Duration::from_secs(10), || async {
        tick(&daemon.get_text("/metrics").await.2) >= first + 3.0
    })
    .await;
    let text = std::fs::read_to_string(&lines).unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["account"], "gh");
}

/// A flapping provider (it fails, then answers, over and over) pages no one: the account
/// never fails three times in a row and its token never runs out. A reload that adds an
/// entry takes effect at once: the new entry is told of the next change.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_provider_pages_no_one_and_a_reload_adds_a_receiver() {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(json!(4));
    let home = Home::new();
    let first = home.path("first.jsonl");
    let second = home.path("second.jsonl");
    let entry = |path: &std::path::Path| {
        format!(
            "\n[[notify]]\ncommand = [\"sh\", \"-c\", \"cat >> '{}'; echo >> '{}'\"]\n",
            path.display(),
            path.display()
        )
    };
    let config = home.config(&fake.token_url(), FAST, &entry(&first));
    let daemon = home.start(&config, &[]).await;
    daemon.import("a", &fake.grant("a"));
    let unavailable = || Reply::Json(503, json!({"error": "temporarily_unavailable"}), vec![]);
    fake.push((0..4).flat_map(|_| [unavailable(), Reply::Issue]));
    let calls = fake.token_calls();
    fake.wait_for_calls(calls + 8, Duration::from_secs(30))
        .await;
    let told = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
            .collect::<Vec<_>>()
    };
    eventually("connected told", Duration::from_secs(5), || async {
        !told(&first).is_empty()
    })
    .await;
    assert_eq!(told(&first), [json!("connected")], "flapping told someone");

    // SIGHUP with a second entry: it hears of the next change, removing the account.
    std::fs::write(
        &config,
        std::fs::read_to_string(home.config(
            &fake.token_url(),
            FAST,
            &format!("{}{}", entry(&first), entry(&second)),
        ))
        .unwrap(),
    )
    .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.pid()).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    eventually("the reload", Duration::from_secs(10), || async {
        daemon.logs().contains("configuration reloaded")
    })
    .await;
    let (status, _) = daemon.request("DELETE", "/v1/accounts/a", None).await;
    assert_eq!(status, 204);
    eventually("removed told to both", Duration::from_secs(10), || async {
        told(&second) == [json!("removed")]
            && told(&first) == [json!("connected"), json!("removed")]
    })
    .await;
}
