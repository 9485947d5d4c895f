//! `/metrics` from the real binary: strict Prometheus text that moves with refreshes and
//! token requests, and never shows a secret.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::{eventually, Daemon, Home};
use tokenbroker::testing::{FakeProvider, Reply};

/// Parses OpenMetrics text strictly: every line is `# HELP`, `# TYPE`, `# UNIT`, `# EOF` (last)
/// or `name{label="value",…} number`. Returns each sample, keyed by name and labels.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let is_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let kind = words.next().unwrap();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            assert!(is_name(words.next().unwrap()), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            let inner = inner.unwrap_or_else(|| panic!("labels in {line}"));
            for pair in inner.split("\",") {
                let (key, quoted) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(is_name(key), "{line}");
                assert!(!quoted.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

/// What Prometheus 2.x sends: OpenMetrics preferred, the classic format accepted.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

async fn scrape(daemon: &Daemon) -> (BTreeMap<String, f64>, String) {
    let (status, content_type, text) = daemon
        .get_text_accepting("/metrics", PROMETHEUS_ACCEPT)
        .await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    (parse(&text), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_with_refreshes_and_requests() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "jitter = \"0s\"", "");
    let daemon = home.start(&config, &[]).await;
    daemon.import("main", &fake.grant("main"));

    let (before, _) = scrape(&daemon).await;
    let refreshed = r#"tokenbroker_refreshes_total{account="main",outcome="refreshed"}"#;
    assert_eq!(
        before.get(refreshed),
        None,
        "an import is not a scheduled refresh: {before:?}"
    );
    assert_eq!(before[r#"tokenbroker_accounts{status="active"}"#], 1.0);
    assert_eq!(
        before[r#"tokenbroker_accounts{status="needs_reauth"}"#],
        0.0
    );
    let expiry = before[r#"tokenbroker_token_expiry_seconds{account="main"}"#];
    assert!(expiry > 14000.0 && expiry <= 14400.0, "{expiry}");
    assert!(before["tokenbroker_scheduler_last_tick_timestamp_seconds"] > 1.7e9);

    for _ in 0..3 {
        assert_eq!(
            daemon
                .request("POST", "/v1/accounts/main/refresh", None)
                .await
                .0,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(daemon.request("GET", "/v1/token/main", None).await.0, 200);
    }
    assert_eq!(daemon.request("GET", "/v1/token/nope", None).await.0, 404);
    fake.push([Reply::Json(400, json!({"error": "invalid_grant"}), vec![])]);
    assert_eq!(
        daemon
            .request("POST", "/v1/accounts/main/refresh", None)
            .await
            .0,
        503
    );

    let (after, text) = scrape(&daemon).await;
    assert_eq!(after[refreshed], 3.0);
    assert_eq!(
        after[r#"tokenbroker_refreshes_total{account="main",outcome="needs_reauth"}"#],
        1.0
    );
    assert_eq!(
        after[r#"tokenbroker_refresh_duration_seconds_count{account="main"}"#],
        4.0
    );
    assert_eq!(after[r#"tokenbroker_accounts{status="needs_reauth"}"#], 1.0);
    assert_eq!(after[r#"tokenbroker_accounts{status="active"}"#], 0.0);
    let token_requests = |status: u16| {
        after[&format!(
            r#"tokenbroker_token_requests_total{{client="admin",route="/v1/token/{{account}}",status="{status}"}}"#
        )]
    };
    assert_eq!(token_requests(200), 2.0);
    assert_eq!(token_requests(404), 1.0);
    assert_eq!(
        after[r#"tokenbroker_http_requests_total{route="/v1/accounts/{name}/refresh",status="200"}"#],
        3.0
    );
    assert_eq!(
        after[r#"tokenbroker_http_requests_total{route="/metrics",status="200"}"#],
        1.0
    );
    // No token ever shows.
    for token in fake.issued_access_tokens() {
        assert!(!text.contains(&token));
    }
    assert!(!text.contains(&fake.grant("main")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_tick_advances_in_the_metrics() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "check_interval = \"1s\"", "");
    let daemon = home.start(&config, &[]).await;
    let (first, _) = scrape(&daemon).await;
    let tick = "tokenbroker_scheduler_last_tick_timestamp_seconds";
    eventually("a later tick", Duration::from_secs(10), || async {
        scrape(&daemon).await.0[tick] > first[tick]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_classic_text_format_passes_promtool_and_names_each_accounts_status() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    daemon.import("files", &fake.grant("files"));
    daemon.request("GET", "/v1/token/files", None).await;
    for accept in ["text/plain;version=0.0.4", "*/*"] {
        let (status, content_type, text) = daemon.get_text_accepting("/metrics", accept).await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE tokenbroker_http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("tokenbroker_account_status{account=\"files\",status=\"active\"} 1"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "tokenbroker_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        promtool_accepts(&text);
    }
}

/// `promtool check metrics` accepts `text` (outside CI, without promtool, nothing is checked).
fn promtool_accepts(text: &str) {
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut promtool) = promtool else {
        support::missing("promtool (Debian package prometheus)");
        return;
    };
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregate_metrics_count_accounts_and_name_only_those_in_trouble() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\n", "[server]\nmetrics = \"aggregate\"\n");
    let config = home.write("aggregate.toml", &text);
    let daemon = home.start(&config, &[]).await;
    daemon.import("fine", &fake.grant("fine"));
    daemon.import("broken", &fake.grant("broken"));
    fake.push([Reply::oauth_error(400, "invalid_grant", "revoked")]);
    daemon
        .request("POST", "/v1/accounts/broken/refresh", None)
        .await;
    let (_, _, text) = daemon.get_text_accepting("/metrics", "text/plain").await;
    promtool_accepts(&text);
    assert!(
        !text.contains("account=\"fine\""),
        "no series for an active account:\n{text}"
    );
    assert!(
        text.contains("tokenbroker_account_status{account=\"broken\",status=\"needs_reauth\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tokenbroker_refreshes_total{outcome=\"needs_reauth\"} 1"),
        "{text}"
    );
    for (within, count) in [("3600", 0), ("14400", 2), ("+Inf", 2)] {
        let line =
            format!("tokenbroker_accounts_expiring_within_seconds{{within=\"{within}\"}} {count}");
        assert!(text.contains(&line), "{line}\n{text}");
    }
    let bad = home.write(
        "bad.toml",
        &text_with(&config, "metrics = \"aggregate\"", "metrics = \"lots\""),
    );
    let output = home.serve_fails(&bad);
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.metrics"));
}

fn text_with(path: &std::path::Path, from: &str, to: &str) -> String {
    std::fs::read_to_string(path).unwrap().replace(from, to)
}
