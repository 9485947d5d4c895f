//! The command line against a running daemon, and the dev mode.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::{Home, BINARY};
use tokenbroker::testing::FakeProvider;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_commands_round_trip() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    let refresh_file = home.write("rt", &format!("{}\n", fake.grant("files")));
    let imported = stdout(&daemon.cli(
        &[
            "import",
            "files",
            "--provider",
            "fake",
            "--refresh-token-file",
            refresh_file.to_str().unwrap(),
        ],
        None,
    ));
    assert!(imported.contains("files: active"), "{imported}");

    let token = stdout(&daemon.cli(&["token", "files"], None));
    assert_eq!(token.trim(), fake.issued_access_tokens()[0]);
    let json: Value = serde_json::from_str(&stdout(
        &daemon.cli(&["token", "files", "--json", "--min-valid", "5m"], None),
    ))
    .unwrap();
    assert_eq!(json["token_type"], "Bearer");

    let table = stdout(&daemon.cli(&["accounts"], None));
    assert!(
        table.starts_with("NAME") && table.contains("files") && table.contains("active"),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&stdout(&daemon.cli(&["accounts", "--json"], None))).unwrap();
    assert_eq!(listed["accounts"][0]["name"], "files");

    stdout(&daemon.cli(&["refresh", "files"], None));
    assert_eq!(fake.token_calls(), 2);
    stdout(&daemon.cli(&["remove", "files"], None));
    let missing = daemon.cli(&["token", "files"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account named files"));
    let refused = daemon.cli(
        &[
            "import",
            "other",
            "--provider",
            "fake",
            "--refresh-token-stdin",
        ],
        Some("not-a-grant"),
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid_grant"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn a_missing_daemon_gets_a_clear_message_and_bad_usage_exit_2() {
    let output = std::process::Command::new(BINARY)
        .args(["accounts", "--socket", "/nonexistent/tb.sock"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach tokenbroker at /nonexistent/tb.sock"),
        "{stderr}"
    );
    let usage = std::process::Command::new(BINARY)
        .args(["import", "x"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_serves_a_demo_token_on_both_listeners_and_warns() {
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let mut daemon = home
        .start_dev(&[("TOKENBROKER__SERVER__HTTP", &http)])
        .await;
    daemon.logged("NOTHING IS SECURED").await;
    let (status, body) = daemon.request("GET", "/v1/token/demo", None).await;
    assert_eq!(status, 200, "{body}");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((1..=60).contains(&expires_in), "60-second tokens: {body}");
    let over_tcp = reqwest::Client::new()
        .get(format!("http://{http}/v1/token/demo"))
        .bearer_auth("dev")
        .send()
        .await
        .unwrap();
    assert_eq!(over_tcp.status(), 200);
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_passes_a_fresh_token_and_the_commands_exit_status() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    daemon.import("dropbox-main", &fake.grant("d"));
    let token = fake.issued_access_tokens()[0].clone();
    let script = format!("test \"$DROPBOX_MAIN_TOKEN\" = '{token}' && exit 7; exit 1");
    let output = daemon.cli(
        &[
            "exec",
            "--account",
            "dropbox-main",
            "--",
            "sh",
            "-c",
            &script,
        ],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = daemon.cli(
        &[
            "exec",
            "--account",
            "dropbox-main",
            "--env",
            "TOK",
            "--",
            "sh",
            "-c",
            "printf %s \"$TOK\"",
        ],
        None,
    );
    assert_eq!(stdout(&output), token);
    let killed = daemon.cli(
        &[
            "exec",
            "--account",
            "dropbox-main",
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ],
        None,
    );
    assert_eq!(
        killed.status.code(),
        Some(128 + 15),
        "a signal's death is reported as 128 + signal"
    );
    let refused = daemon.cli(&["exec", "--account", "nope", "--", "true"], None);
    assert_eq!(
        refused.status.code(),
        Some(69),
        "no token, no command, and a status no command of its own gave"
    );
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let bash = std::process::Command::new(BINARY)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let bash = stdout(&bash);
    assert!(
        bash.contains("tokenbroker") && bash.contains("connect") && bash.contains("--min-valid"),
        "{bash}"
    );
    let man = stdout(
        &std::process::Command::new(BINARY)
            .arg("man")
            .output()
            .unwrap(),
    );
    assert!(
        man.starts_with(".ie") || man.contains(".TH tokenbroker"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("exec"));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_flat_object_per_line() {
    let home = Home::new();
    let socket = home.socket().display().to_string();
    let port = support::free_port().to_string();
    let http = format!("127.0.0.1:{port}");
    let args = [
        "--log-format".as_ref(),
        "json".as_ref(),
        "serve".as_ref(),
        "--dev".as_ref(),
    ];
    let mut daemon = home
        .spawn(
            &args,
            &[
                ("TOKENBROKER__SERVER__SOCKET", &socket),
                ("TOKENBROKER__SERVER__HTTP", &http),
            ],
        )
        .await;
    assert_eq!(daemon.request("GET", "/v1/token/demo", None).await.0, 200);
    let status = daemon.terminate();
    let logs = daemon.logs();
    assert!(status.success(), "{status:?}: {logs}");
    let events: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ready = events
        .iter()
        .find(|e| e["message"] == "tokenbroker ready")
        .expect("a ready event");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(
        ready["socket"],
        socket.as_str(),
        "fields are flattened to the top level"
    );
    assert!(events
        .iter()
        .any(|e| e["message"] == "token served" && e["account"] == "demo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_answers_for_container_health_checks() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let required = "\n[accounts.main]\nprovider = \"fake\"\nrequired = true\n";
    let daemon = home
        .start(&home.config(&fake.token_url(), "", required), &[])
        .await;
    assert_eq!(
        stdout(&daemon.cli(&["probe", "/healthz"], None)).trim(),
        "ok"
    );
    let not_ready = daemon.cli(&["probe", "/readyz"], None);
    assert_eq!(not_ready.status.code(), Some(1));
    let message = String::from_utf8_lossy(&not_ready.stderr);
    assert!(message.contains("required account main"), "{message}");
    daemon.import("main", &fake.grant("main"));
    assert_eq!(
        stdout(&daemon.cli(&["probe", "/readyz"], None)).trim(),
        "ok"
    );
    assert_eq!(
        daemon.cli(&["probe", "/v1/accounts"], None).status.code(),
        Some(2)
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    for args in [&["man"][..], &["completions", "bash"]] {
        let mut child = std::process::Command::new(BINARY)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the only reading end before the command writes: its write gets EPIPE.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// `accounts` against `socket`, run as `user` when given; returns its stderr.
fn accounts_error(socket: &std::path::Path, user: Option<&str>) -> String {
    let mut command = match user {
        Some(user) => {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", user, "--", BINARY]);
            command
        }
        None => std::process::Command::new(BINARY),
    };
    let output = command
        .args(["accounts", "--socket"])
        .arg(socket)
        .env_remove("TOKENBROKER_SOCKET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_errors_name_their_cause_and_what_to_do() {
    let home = Home::new();
    let missing = accounts_error(&home.path("none.sock"), None);
    assert!(
        missing.contains("ENOENT") && missing.contains("is the daemon running"),
        "{missing}"
    );
    let stale = home.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let refused = accounts_error(&stale, None);
    assert!(refused.contains("ECONNREFUSED"), "{refused}");
    // Permission denied needs another user than root, who passes every permission check.
    if rustix::process::getuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let private = home.path("private.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(home.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let denied = accounts_error(&private, Some("nobody"));
        assert!(
            denied.contains("EACCES") && denied.contains("socket_group"),
            "{denied}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_can_be_tried_end_to_end_in_dev_mode() {
    use std::io::BufRead;
    let home = Home::new();
    let http = format!("127.0.0.1:{}", support::free_port());
    let public_url = format!("http://{http}");
    let daemon = home
        .start_dev(&[
            ("TOKENBROKER__SERVER__HTTP", &http),
            ("TOKENBROKER__SERVER__PUBLIC_URL", &public_url),
        ])
        .await;
    let mut child = std::process::Command::new(BINARY)
        .args(["connect", "second", "--provider", "dev"])
        .env("TOKENBROKER_SOCKET", &daemon.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let link = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    let (link, mut stdout) = link.await.unwrap();
    // The browser's part: the start link, the dev provider's page that approves at once,
    // and the daemon's callback.
    let page = reqwest::get(link.trim()).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("second"));
    let status = support::wait_bounded(&mut child, std::time::Duration::from_secs(20));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("connected second"), "{rest}");
    let (code, body) = daemon.request("GET", "/v1/token/second", None).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_stops_with_the_error_when_the_flow_cannot_start() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    // The fake provider of this configuration has no authorization endpoint.
    let mut child = std::process::Command::new(BINARY)
        .args(["connect", "x", "--provider", "fake"])
        .env("TOKENBROKER_SOCKET", &daemon.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = support::wait_bounded(&mut child, std::time::Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("authorization endpoint"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_journald_each_line_starts_with_its_syslog_priority() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[("JOURNAL_STREAM", "8:12345")]).await;
    daemon.import("files", &fake.grant("files"));
    // A refused grant logs at error level.
    fake.push([tokenbroker::testing::Reply::oauth_error(
        400,
        "invalid_grant",
        "revoked",
    )]);
    daemon
        .request("POST", "/v1/accounts/files/refresh", None)
        .await;
    daemon.request("GET", "/v1/token/files", None).await;
    daemon.logged("connected again").await;
    assert!(daemon.terminate().success());
    let logs = daemon.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            ["<3>ERROR ", "<4> WARN ", "<6> INFO "]
                .iter()
                .any(|start| line.starts_with(start)),
            "{line}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("<3>")), "{logs}");
}

#[test]
fn the_man_page_has_its_sections_and_every_page_it_names_exists() {
    let man = |args: &[&str]| {
        let output = std::process::Command::new(BINARY)
            .arg("man")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let (code, page) = man(&[]);
    assert_eq!(code, Some(0));
    for section in ["\"EXIT STATUS\"", "ENVIRONMENT", "FILES", "EXAMPLES"] {
        assert!(page.contains(&format!(".SH {section}")), "{section}");
    }
    let named: std::collections::BTreeSet<String> = page
        .match_indices("tokenbroker\\-")
        .filter_map(|(at, _)| {
            let rest = &page[at + "tokenbroker\\-".len()..];
            let end = rest.find("(1)")?;
            Some(rest[..end].replace("\\-", "-"))
        })
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    assert!(
        named.contains("serve") && !named.contains("help"),
        "{named:?}"
    );
    for name in &named {
        let (code, sub) = man(&[name]);
        assert_eq!(code, Some(0), "{name}");
        assert!(
            sub.contains(&format!(".TH tokenbroker-{name} 1")),
            "{name}: {}",
            &sub[..200.min(sub.len())]
        );
    }
    assert_eq!(man(&["no-such-command"]).0, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_are_listed_in_pages_and_filtered_by_status_and_name() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    for name in ["a1", "a2", "a3", "a4", "b5"] {
        daemon.import(name, &fake.grant(name));
    }
    fake.push([tokenbroker::testing::Reply::oauth_error(
        400,
        "invalid_grant",
        "revoked",
    )]);
    daemon
        .request("POST", "/v1/accounts/a3/refresh", None)
        .await;
    let names = |body: &Value| -> Vec<String> {
        body["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, first) = daemon.request("GET", "/v1/accounts?limit=2", None).await;
    assert_eq!(
        (names(&first), first["next"].as_str()),
        (vec!["a1".into(), "a2".into()], Some("a2"))
    );
    let (_, second) = daemon
        .request("GET", "/v1/accounts?limit=2&after=a2", None)
        .await;
    assert_eq!(names(&second), ["a3", "a4"]);
    let (_, last) = daemon
        .request("GET", "/v1/accounts?limit=2&after=a4", None)
        .await;
    assert_eq!((names(&last), last.get("next")), (vec!["b5".into()], None));
    let (_, reauth) = daemon
        .request("GET", "/v1/accounts?status=needs_reauth", None)
        .await;
    assert_eq!(names(&reauth), ["a3"]);
    let (_, pattern) = daemon
        .request("GET", "/v1/accounts?name=a*&status=active&limit=10", None)
        .await;
    assert_eq!(names(&pattern), ["a1", "a2", "a4"]);
    for bad in [
        "status=bogus",
        "limit=0",
        "limit=5000",
        "name=%5B",
        "sort=name",
    ] {
        let (code, body) = daemon
            .request("GET", &format!("/v1/accounts?{bad}"), None)
            .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let table = stdout(&daemon.cli(&["accounts", "--status", "needs_reauth"], None));
    assert!(table.contains("a3") && !table.contains("a1"), "{table}");
    let limited = stdout(&daemon.cli(
        &["accounts", "--name", "a*", "--limit", "2", "--json"],
        None,
    ));
    let limited: Value = serde_json::from_str(&limited).unwrap();
    assert_eq!(names(&limited), ["a1", "a2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_follows_pages_past_a_thousand_accounts() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    let imports = (0..1003).map(|n| {
        let body =
            serde_json::json!({"provider": "fake", "refresh_token": fake.grant(&format!("g{n}"))});
        let daemon = &daemon;
        async move {
            daemon
                .request("PUT", &format!("/v1/accounts/acct-{n:04}"), Some(body))
                .await
                .0
        }
    });
    let codes = futures_util::future::join_all(imports).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let (_, first) = daemon.request("GET", "/v1/accounts", None).await;
    assert_eq!(first["accounts"].as_array().unwrap().len(), 1000);
    assert_eq!(first["next"], "acct-0999");
    let listed = stdout(&daemon.cli(&["accounts", "--json"], None));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 1003);
}

/// OPERATIONS.md: `RUST_LOG=info,tokenbroker::audit=warn` drops the token-served line alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_line_has_a_target_of_its_own() {
    let http = format!("127.0.0.1:{}", support::free_port());
    let home = Home::new();
    let daemon = home
        .start_dev(&[
            ("RUST_LOG", "info,tokenbroker::audit=warn"),
            ("TOKENBROKER__SERVER__HTTP", &http),
        ])
        .await;
    let (code, _) = daemon.request("GET", "/v1/token/demo", None).await;
    assert_eq!(code, 200);
    let (code, _) = daemon.request("GET", "/v1/accounts/demo", None).await;
    assert_eq!(code, 200);
    // Stopped first, so that every line it would write has been written.
    let mut daemon = daemon;
    let status = daemon.terminate();
    let logs = daemon.logs();
    assert!(status.success(), "{status:?}: {logs}");
    assert!(
        logs.contains("tokenbroker ready"),
        "other info lines stay: {logs}"
    );
    assert!(!logs.contains("token served"), "{logs}");

    drop(daemon);
    let home = Home::new();
    let daemon = home
        .start_dev(&[("RUST_LOG", "info"), ("TOKENBROKER__SERVER__HTTP", &http)])
        .await;
    daemon.request("GET", "/v1/token/demo", None).await;
    let logs = daemon.logged("token served").await;
    assert!(
        logs.contains(" INFO tokenbroker::audit: token served client="),
        "{logs}"
    );
}

/// `tokenbroker wait`, started before the daemon (no socket yet) and before the account
/// exists, returns once the account holds a token, and not before; an account that never
/// comes, or a token that cannot be good enough, times out with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn wait_returns_once_the_account_is_ready_and_times_out_with_the_reason() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let mut waiting = std::process::Command::new(BINARY)
        .args(["wait", "a", "--timeout", "60s"])
        .env("TOKENBROKER_SOCKET", home.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    let (status, _) = daemon.request("GET", "/readyz/a", None).await;
    assert_eq!(status, 404, "no account a yet");
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "wait returned before the account existed"
    );
    daemon.import("a", &fake.grant("a"));
    let output = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a is ready\n");

    let unknown = daemon.cli(&["wait", "nope", "--timeout", "1s"], None);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("nope is not ready after 1s") && stderr.contains("no account named"),
        "{stderr}"
    );
    let malformed = daemon.cli(&["wait", "Not-A-Name", "--timeout", "60s"], None);
    assert_eq!(malformed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("account names are"),
        "{}",
        String::from_utf8_lossy(&malformed.stderr)
    );

    let too_long = daemon.cli(
        &["wait", "a", "--min-valid", "10h", "--timeout", "1s"],
        None,
    );
    assert_eq!(too_long.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&too_long.stderr);
    assert!(
        stderr.contains("a is not ready after 1s")
            && stderr.contains("less than a caller may be given"),
        "{stderr}"
    );
}

/// `exec --file` for a job that outlives three token lifetimes: every second the job reads
/// its token file and uses the token against the provider's API, which accepts only tokens
/// that have not expired. The file is private, and gone once the job exits.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_file_keeps_a_long_jobs_token_fresh_and_removes_it() {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(serde_json::json!(4));
    let home = Home::new();
    let refresh =
        "check_interval = \"1s\"\nmin_interval = \"1s\"\njitter = \"0s\"\nmin_valid = \"1s\"";
    let daemon = home
        .start(&home.config(&fake.token_url(), refresh, ""), &[])
        .await;
    daemon.import("long-job", &fake.grant("long-job"));
    let job = format!(
        r#"test "$BEARER_TOKEN_FILE" = "$LONG_JOB_TOKEN_FILE" || exit 10
stat -c %a "$BEARER_TOKEN_FILE"
for i in $(seq 14); do
  curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$BEARER_TOKEN_FILE")" {check} || exit 11
  sleep 1
done
echo "$BEARER_TOKEN_FILE""#,
        check = fake.check_url()
    );
    let output = tokio::task::spawn_blocking(move || {
        daemon.cli(
            &[
                "exec",
                "--account",
                "long-job",
                "--file",
                "--min-valid",
                "2s",
                "--",
                "sh",
                "-c",
                &job,
            ],
            None,
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?} {stdout} {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("600"), "{stdout}");
    let file = lines.next().unwrap();
    assert!(
        !std::path::Path::new(file).exists(),
        "{file} is still there"
    );
    assert!(
        fake.token_calls() >= 4,
        "the job outlived at least three tokens"
    );
}

/// `exec --file` passes the signals it gets on to its command (a service manager stopping
/// the job reaches the job), and exits with the command's status.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_file_passes_signals_on_to_the_command() {
    use std::io::BufRead as _;
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    daemon.import("a", &fake.grant("a"));
    let job = r#"trap 'echo "got TERM"; exit 3' TERM; echo ready; while :; do sleep 0.1; done"#;
    let mut exec = std::process::Command::new(BINARY)
        .args(["exec", "--account", "a", "--file", "--", "sh", "-c", job])
        .env("TOKENBROKER_SOCKET", home.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(exec.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = rustix::process::Pid::from_raw(i32::try_from(exec.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "got TERM\n");
    assert_eq!(exec.wait().unwrap().code(), Some(3));
}

/// The binary's jemalloc has one arena (`.cargo/config.toml`): with jemalloc's default of
/// one per thread, what a refresh storm freed stayed with the arena that allocated it, about
/// 100 MB at 100k accounts (docs/BENCHMARKS.md). jemalloc says how it was built when asked
/// to print its statistics at exit.
#[test]
fn the_allocator_is_built_with_one_arena() {
    let output = std::process::Command::new(BINARY)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stats = String::from_utf8_lossy(&output.stderr);
    assert!(
        stats.contains("config.malloc_conf: \"narenas:1\"") && stats.contains("opt.narenas: 1"),
        "jemalloc's build-time configuration: {}",
        stats
            .lines()
            .filter(|line| line.contains("malloc_conf") || line.contains("narenas"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}
