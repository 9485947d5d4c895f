//! The real binary refreshing against the fake provider: timing, min_valid, single flight,
//! and the Dropbox-shaped answers.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, Daemon, Home};
use tokenbroker::testing::{FakeProvider, Reply};

/// Quick ticks and no jitter, so refreshes happen within seconds.
const FAST: &str = "check_interval = \"1s\"\nmin_interval = \"1s\"\njitter = \"0s\"\nmin_valid = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"";

/// A daemon on `FAST` settings holding `account`, whose tokens live `expires_in` seconds.
async fn fast_daemon(expires_in: u64, account: &str) -> (FakeProvider, Home, Daemon) {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(json!(expires_in));
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), FAST, ""), &[])
        .await;
    daemon.import(account, &fake.grant(account));
    (fake, home, daemon)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_refreshed_ahead_of_expiry_and_served_with_min_valid_left() {
    let (fake, _home, daemon) = fast_daemon(4, "short").await;
    // Lifetime 4 s: due at half-life (2 s), well before expiry.
    fake.wait_for_calls(3, Duration::from_secs(15)).await;
    let calls = fake.requests();
    for pair in calls.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(900) && gap < Duration::from_millis(3900),
            "refreshed {gap:?} after the previous token"
        );
    }
    for _ in 0..5 {
        let (status, body) = daemon
            .request("GET", "/v1/token/short?min_valid=3", None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["expires_in"].as_u64().unwrap() >= 3, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_callers_cause_one_upstream_call() {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(json!(10));
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "jitter = \"0s\"", ""), &[])
        .await;
    daemon.import("busy", &fake.grant("busy"));
    eventually(
        "the token to have less than 9 s left",
        Duration::from_secs(5),
        || async {
            daemon.request("GET", "/v1/accounts/busy", None).await.1["expires_in"]
                .as_u64()
                .unwrap()
                < 9
        },
    )
    .await;
    fake.set_expires_in(json!(3600));
    fake.push([Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Issue),
    )]);
    let requests: Vec<_> = (0..200)
        .map(|_| daemon.request("GET", "/v1/token/busy?min_valid=9", None))
        .collect();
    let answers = futures_util::future::join_all(requests).await;
    assert_eq!(
        fake.token_calls(),
        2,
        "one import call and one refresh for 200 callers"
    );
    let fresh = &fake.issued_access_tokens()[1];
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], json!(fresh));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dropbox_preset_authenticates_one_way_and_keeps_its_refresh_token() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    home.write("dropbox-secret", "app-secret-value\n");
    let extra = format!(
        "\n[providers.dropbox]\npreset = \"dropbox\"\nclient_id = \"app-key\"\nclient_secret_file = \"dropbox-secret\"\ntoken_url = \"{}\"\n",
        fake.token_url()
    );
    let daemon = home
        .start(&home.config(&fake.token_url(), "", &extra), &[])
        .await;
    let refresh_token = fake.grant("dropbox");
    let output = daemon.cli(
        &[
            "import",
            "dropbox-main",
            "--provider",
            "dropbox",
            "--refresh-token-stdin",
        ],
        Some(&refresh_token),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = daemon.cli(&["refresh", "dropbox-main"], None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(request.form["grant_type"], "refresh_token");
        assert_eq!(
            request.form["refresh_token"], refresh_token,
            "the stored refresh token is sent unchanged"
        );
        // Basic auth with the app key and secret, never the secret in the body as well.
        assert_eq!(
            request.authorization.as_deref(),
            Some("Basic YXBwLWtleTphcHAtc2VjcmV0LXZhbHVl")
        );
        assert!(!request.form.contains_key("client_secret"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_stops_refreshing_and_shows_in_accounts() {
    let (fake, _home, daemon) = fast_daemon(4, "gone").await;
    fake.push([Reply::oauth_error(
        400,
        "invalid_grant",
        "refresh token is invalid or revoked",
    )]);
    fake.wait_for_calls(2, Duration::from_secs(10)).await;
    eventually("needs_reauth", Duration::from_secs(5), || async {
        daemon.request("GET", "/v1/accounts/gone", None).await.1["status"] == "needs_reauth"
    })
    .await;
    let table = String::from_utf8(daemon.cli(&["accounts"], None).stdout).unwrap();
    assert!(
        table.contains("needs_reauth") && table.contains("invalid or revoked"),
        "{table}"
    );
    let (status, body) = daemon.request("GET", "/v1/token/gone", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("needs_reauth"))
    );
    // Checking that nothing happens needs a window of time. First await the condition that
    // makes the window meaningful: the old token has expired, so any retry would be overdue.
    eventually(
        "the old token to expire",
        Duration::from_secs(10),
        || async { daemon.request("GET", "/v1/accounts/gone", None).await.1["expires_in"] == 0 },
    )
    .await;
    // Then watch three 1 s ticks: still exactly the import and the refused refresh.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_outages_degrade_serve_the_old_token_then_recover() {
    let (fake, _home, daemon) = fast_daemon(6, "flaky").await;
    let old = fake.issued_access_tokens()[0].clone();
    fake.push(
        (0..3).map(|_| Reply::Json(503, json!({"error": "temporarily_unavailable"}), vec![])),
    );
    fake.wait_for_calls(2, Duration::from_secs(10)).await;
    eventually("degraded", Duration::from_secs(5), || async {
        daemon.request("GET", "/v1/accounts/flaky", None).await.1["status"] == "degraded"
    })
    .await;
    let (status, body) = daemon.request("GET", "/v1/token/flaky", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["access_token"],
        json!(old),
        "the old token is served while valid"
    );
    fake.wait_for_calls(5, Duration::from_secs(10)).await;
    eventually("active again", Duration::from_secs(5), || async {
        daemon.request("GET", "/v1/accounts/flaky", None).await.1["status"] == "active"
    })
    .await;
    let (_, body) = daemon.request("GET", "/v1/token/flaky", None).await;
    assert_eq!(body["access_token"], json!(fake.issued_access_tokens()[1]));
}
