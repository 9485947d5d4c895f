//! The real binary refreshing against the fake provider: single flight and the
//! Dropbox-shaped answers. (Refresh timing, re-auth and backoff, which depend on time, run
//! in `tests/in_process.rs` on a clock the test moves.)
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, Home};
use tokenbroker::testing::{FakeProvider, Reply};

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
