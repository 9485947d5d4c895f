//! Starting, stopping and crashing the real binary: what survives and what is refused.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Home, BINARY};
use tokenbroker::testing::{FakeProvider, Reply};

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_accounts_and_sigterm_removes_the_socket() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    daemon.import("kept", &fake.grant("kept"));
    let (_, first) = daemon.request("GET", "/v1/token/kept", None).await;
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(
        !home.socket().exists(),
        "the socket file is removed on shutdown"
    );
    let daemon = home.start(&config, &[]).await;
    let (status, again) = daemon.request("GET", "/v1/token/kept", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["access_token"], first["access_token"],
        "the stored token is served without a refresh"
    );
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_refresh_token_survives_sigkill_right_after_serving() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    daemon.import("rotating", &fake.grant("rotating"));
    for round in 0..5 {
        // Force a rotation, and kill the broker the moment it has answered.
        let (status, body) = daemon
            .request("POST", "/v1/accounts/rotating/refresh", None)
            .await;
        assert_eq!(status, 200, "round {round}: {body}");
        daemon.kill();
        daemon = home.start(&config, &[]).await;
        let (status, body) = daemon.request("GET", "/v1/accounts/rotating", None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("active")),
            "round {round}: {body}"
        );
    }
    // Every refresh presented the one valid token: no invalid_grant was ever answered.
    let (status, body) = daemon
        .request("POST", "/v1/accounts/rotating/refresh", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.token_calls(), 7);
    assert_eq!(fake.valid_refresh_tokens().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_exits_78_and_creates_nothing() {
    let home = Home::new();
    let cases = [
        ("[server]\nhttp = \"0.0.0.0:8765\"\n", "server.http"),
        ("[refresh]\nahead = \"soon\"\n", "refresh.ahead"),
        (
            "[accounts.main]\nprovider = \"missing\"\n",
            "accounts.main.provider",
        ),
        ("[server]\nbogus = 1\n", "bogus"),
    ];
    for (section, key) in cases {
        let config = home.write(
            "bad.toml",
            &format!("[store]\ndir = \"{}\"\n{section}", home.store().display()).replace(
                "[server]\n",
                &format!("[server]\nsocket = \"{}\"\n", home.socket().display()),
            ),
        );
        let output = home.serve_fails(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains("bad.toml") && stderr.contains(key),
            "names the file and {key}: {stderr}"
        );
        assert!(
            !home.store().exists() && !home.socket().exists(),
            "nothing is created on disk"
        );
        let check = std::process::Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(78));
    }
    let missing = std::process::Command::new(BINARY)
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_prints_the_effective_settings_without_secrets() {
    let home = Home::new();
    home.write("secret", "top-SECRET-client-secret");
    let extra = "\n[providers.d]\npreset = \"dropbox\"\nclient_id = \"key\"\nclient_secret_file = \"secret\"\n";
    let config = home.config("http://127.0.0.1:9/token", "", extra);
    let output = std::process::Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("is valid") && stdout.contains("provider    d (Dropbox"),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRET"));
    assert!(!home.store().exists(), "check-config touches nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_neither_shares_the_store_nor_steals_the_socket() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let first = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    // Same socket, other store: the live socket is not stolen.
    let same_socket = home.write(
        "second.toml",
        &format!(
            "[server]\nsocket = \"{}\"\nhttp = \"\"\n[store]\ndir = \"{}\"\n",
            home.socket().display(),
            home.path("other-store").display()
        ),
    );
    let output = home.serve_fails(&same_socket);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("another process is listening"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        first.request("GET", "/healthz", None).await.0,
        200,
        "the first daemon still answers"
    );
    // Same store, other socket: the store's lock is reported clearly.
    let same_store = home.write(
        "third.toml",
        &format!(
            "[server]\nsocket = \"{}\"\nhttp = \"\"\n[store]\ndir = \"{}\"\n",
            home.path("other.sock").display(),
            home.store().display()
        ),
    );
    let output = home.serve_fails(&same_store);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("locked by another process"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !home.path("other.sock").exists(),
        "a failed start leaves no socket behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_file_is_replaced() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    daemon.kill(); // leaves its socket file behind
    assert!(home.socket().exists());
    let daemon = home.start(&config, &[]).await;
    assert_eq!(daemon.request("GET", "/healthz", None).await.0, 200);
}

/// Connections waiting for a request are closed after 5 to 7.5 s; one whose request takes
/// longer than that to answer (a refresh from a slow provider) is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_slower_to_answer_than_the_idle_timeout_is_still_answered() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let slow = format!(
        "\n[providers.slow]\npreset = \"generic\"\nclient_id = \"client\"\nauth_method = \"none\"\ntoken_url = \"{}\"\ntimeout = \"30s\"\n",
        fake.token_url()
    );
    let daemon = home
        .start(&home.config(&fake.token_url(), "", &slow), &[])
        .await;
    let import = daemon.cli(
        &[
            "import",
            "slow",
            "--provider",
            "slow",
            "--refresh-token-stdin",
        ],
        Some(&fake.grant("slow")),
    );
    assert!(import.status.success(), "{import:?}");
    fake.push([Reply::Delay(Duration::from_secs(8), Box::new(Reply::Issue))]);
    let started = Instant::now();
    let (status, body) = daemon
        .request("POST", "/v1/accounts/slow/refresh", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_are_closed_within_seconds() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let (config, port) = home.with_tcp(&config);
    let daemon = home.start(&config, &[]).await;
    let started = Instant::now();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut unix = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    unix.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut sink = Vec::new();
    tcp.read_to_end(&mut sink)
        .expect("the daemon closes the TCP connection");
    unix.read_to_end(&mut sink)
        .expect("the daemon closes the socket connection");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        started.elapsed()
    );
    // Meanwhile whole requests are still answered.
    assert_eq!(daemon.request("GET", "/healthz", None).await.0, 200);
    let (status, body) = daemon.request("GET", "/v1/token/none", None).await;
    assert_eq!((status, body["error"].clone()), (404, json!("not_found")));
}

/// A core dump would hold every refresh token in clear: the daemon allows none.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_writes_no_core_dump() {
    let http = format!("127.0.0.1:{}", support::free_port());
    let home = Home::new();
    let daemon = home
        .start_dev(&[("TOKENBROKER__SERVER__HTTP", &http)])
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    let numbers: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(numbers, ["0", "0"], "{core}");
}

/// SIGTERM while the daemon is still starting (its socket bound, the store opening) stops
/// it cleanly: the handler is installed before anything else, not once it is ready.
#[test]
fn sigterm_during_start_up_is_a_clean_stop() {
    let home = Home::new();
    let config = home.config("http://127.0.0.1:9/token", "", "");
    let mut child = std::process::Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !home.socket().exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(1));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = support::wait_bounded(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(!home.socket().exists(), "the socket file was removed");
}
