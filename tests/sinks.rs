//! Token sinks written by the real binary: each format, the mode, whole-file replacement
//! under a reader polling in a loop, and a refused grant leaving the file alone.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, Daemon, Home};
use tokenbroker::testing::{FakeProvider, Reply};

struct Sinks {
    raw: PathBuf,
    json: PathBuf,
    env: PathBuf,
}

async fn daemon_with_sinks(fake: &FakeProvider, home: &Home) -> (Daemon, Sinks) {
    std::fs::create_dir(home.path("run")).unwrap();
    let sinks = Sinks {
        raw: home.path("run/main.token"),
        json: home.path("run/main.json"),
        env: home.path("run/main.env"),
    };
    let accounts = format!(
        r#"
[accounts.main]
provider = "fake"
sinks = [
  {{ path = "{}", format = "raw", mode = "0640" }},
  {{ path = "{}", format = "json" }},
  {{ path = "{}", format = "env", mode = "0644" }},
]

[accounts.other]
provider = "fake"
sinks = [{{ path = "{}" }}]
"#,
        sinks.raw.display(),
        sinks.json.display(),
        sinks.env.display(),
        home.path("run/other.token").display(),
    );
    let config = home.config(&fake.token_url(), "jitter = \"0s\"", &accounts);
    let daemon = home.start(&config, &[]).await;
    daemon.import("main", &fake.grant("main"));
    (daemon, sinks)
}

async fn wait_for_sink(sinks: &Sinks, token: &str) {
    eventually(
        "the sink to hold the latest token",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&sinks.raw).is_ok_and(|text| text == token) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sinks_hold_the_token_in_each_format_with_their_mode() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, sinks) = daemon_with_sinks(&fake, &home).await;
    let token = fake.issued_access_tokens()[0].clone();
    wait_for_sink(&sinks, &token).await;
    eventually(
        "every sink to be written",
        Duration::from_secs(10),
        || async { sinks.json.exists() && sinks.env.exists() },
    )
    .await;

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&sinks.json).unwrap()).unwrap();
    assert_eq!(json["access_token"], token.as_str());
    assert_eq!(json["token_type"], "Bearer");
    let (_, served) = daemon.request("GET", "/v1/token/main", None).await;
    assert_eq!(json["expires_at"], served["expires_at"]);
    let env = std::fs::read_to_string(&sinks.env).unwrap();
    assert!(
        env.starts_with(&format!("MAIN_TOKEN={token}\nMAIN_TOKEN_EXPIRES_AT=")),
        "{env}"
    );

    let mode = |path: &PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sinks.raw), 0o640);
    assert_eq!(mode(&sinks.json), 0o600, "the default mode");
    assert_eq!(mode(&sinks.env), 0o644);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_polling_the_sink_never_sees_a_partial_file() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, sinks) = daemon_with_sinks(&fake, &home).await;
    wait_for_sink(&sinks, &fake.issued_access_tokens()[0]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (path, stop) = (sinks.raw.clone(), stop.clone());
        move || {
            let mut seen = Vec::new();
            // Bounded: the test stops it after the refreshes, or it gives up after 2M reads.
            for _ in 0..2_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                seen.push(std::fs::read_to_string(&path).unwrap());
            }
            seen
        }
    });
    for _ in 0..20 {
        let (status, body) = daemon
            .request("POST", "/v1/accounts/main/refresh", None)
            .await;
        assert_eq!(status, 200, "{body}");
        wait_for_sink(&sinks, fake.issued_access_tokens().last().unwrap()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    let issued = fake.issued_access_tokens();
    assert_eq!(issued.len(), 21);
    assert!(seen.len() > 20, "the reader read {} times", seen.len());
    for text in &seen {
        assert!(
            issued.contains(text),
            "the reader saw {text:?}, which is no whole token"
        );
    }
    // No temporary files are left beside the sinks.
    let names: Vec<_> = std::fs::read_dir(home.path("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_grant_leaves_the_sink_as_it_was_and_the_status_says_why() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, sinks) = daemon_with_sinks(&fake, &home).await;
    wait_for_sink(&sinks, &fake.issued_access_tokens()[0]).await;
    let before = std::fs::read(&sinks.raw).unwrap();
    let modified = std::fs::metadata(&sinks.raw).unwrap().modified().unwrap();

    fake.push([Reply::Json(400, json!({"error": "invalid_grant"}), vec![])]);
    let (status, _) = daemon
        .request("POST", "/v1/accounts/main/refresh", None)
        .await;
    assert_eq!(status, 503);
    let (_, account) = daemon.request("GET", "/v1/accounts/main", None).await;
    assert_eq!(account["status"], "needs_reauth", "{account}");
    assert!(
        account["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{account}"
    );
    // Sinks are written one account after another from one queue: once another account's
    // sink has been written, anything queued for this one has been handled.
    daemon.import("other", &fake.grant("other"));
    eventually(
        "the other account's sink",
        Duration::from_secs(10),
        || async { home.path("run/other.token").exists() },
    )
    .await;
    assert_eq!(std::fs::read(&sinks.raw).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&sinks.raw).unwrap().modified().unwrap(),
        modified
    );
}
