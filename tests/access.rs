//! Who may have a token, through the real binary: another local user on the socket (run
//! with `setpriv` as uid 65534), and clients that stall or flood the listeners.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on other processes takes real time

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Home, BINARY};
use tokenbroker::testing::FakeProvider;

const NOBODY: u32 = 65534;

fn can_switch_users() -> bool {
    rustix::process::getuid().is_root() && Path::new("/usr/bin/setpriv").exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn another_user_gets_only_the_accounts_its_client_allows() {
    if !can_switch_users() {
        support::missing("root and setpriv, to run clients as other users");
        return;
    }
    let fake = FakeProvider::start().await;
    let home = Home::new();
    // The other user must be able to reach the socket and run the binary.
    std::fs::set_permissions(home.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = home.path("tokenbroker");
    std::fs::copy(BINARY, &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "\n[[clients]]\nname = \"nightly\"\nuids = [{NOBODY}]\naccounts = [\"allowed-*\"]\n"
    );
    let config = home.config(&fake.token_url(), "", &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "http = \"\"",
        &format!("http = \"\"\nsocket_group = \"{NOBODY}\""),
    );
    let daemon = home.start(&home.write("config.toml", &text), &[]).await;
    let metadata = std::fs::metadata(home.socket()).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&metadata), NOBODY);
    daemon.import("allowed-a", &fake.grant("a"));
    daemon.import("other-b", &fake.grant("b"));

    let as_nobody = |args: &[&str]| {
        Command::new("/usr/bin/setpriv")
            .args([
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".into(),
            ])
            .arg(&binary)
            .args(args)
            .arg("--socket")
            .arg(home.socket())
            .output()
            .unwrap()
    };
    let allowed = as_nobody(&["token", "allowed-a"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&allowed.stdout).trim(),
        fake.issued_access_tokens()[0]
    );
    for (account, what) in [
        ("other-b", "an account it may not have"),
        ("allowed-nope", "an account that does not exist"),
    ] {
        let refused = as_nobody(&["token", account]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{what}");
        assert!(
            stderr.contains("(forbidden)") && stderr.contains("may not have"),
            "{what}: {stderr}"
        );
    }
    let listing = as_nobody(&["accounts", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(
        listed["accounts"].as_array().unwrap().len(),
        1,
        "it sees only what it may have"
    );
    let admin_route = as_nobody(&["refresh", "allowed-a"]);
    assert!(String::from_utf8_lossy(&admin_route.stderr).contains("not an admin"));
    let log = daemon.logged("token served").await;
    let expected =
        format!(" INFO tokenbroker::audit: token served client=\"nightly\" uid={NOBODY} pid=");
    let line = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_else(|| panic!("{log}"));
    // `2026-11-29T07:42:58.123456Z  INFO …`: the same line as every other one.
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        humantime::parse_rfc3339(time).is_ok() && time.len() == 27,
        "{line}"
    );
    let (_, fields) = rest.split_once(" pid=").unwrap();
    let (pid, fields) = fields.split_once(' ').unwrap();
    let (account, expires_in) = fields.split_once(" expires_in=").unwrap();
    assert!(
        pid.parse::<u32>().is_ok() && expires_in.parse::<u64>().is_ok(),
        "{line}"
    );
    assert_eq!(account, "account=allowed-a", "{line}");
}

fn resident_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The API key of the client `svc`, allowed every account, of [`flooded_daemon`].
const CLIENT_KEY: &str = "flood-test-key";

/// The flooding tests run one at a time: each needs the machine's attention to measure a
/// client's wait while thousands of its sockets are open.
static FLOODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A daemon on loopback TCP with the client `svc` and an account `a`, for tests that hold
/// thousands of sockets themselves (the open-file limit is raised to allow it).
async fn flooded_daemon() -> (FakeProvider, Home, support::Daemon, u16) {
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, limit);
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, port) = home
        .start_with_tcp_client(&fake.token_url(), "svc", CLIENT_KEY)
        .await;
    daemon.import("a", &fake.grant("a"));
    (fake, home, daemon, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_and_flooding_clients_do_not_starve_the_others() {
    let _alone = FLOODING.lock().await;
    let (_fake, _home, daemon, port) = flooded_daemon().await;
    let key = CLIENT_KEY;
    let memory_before = resident_kib(daemon.pid());

    // 500 slowloris clients trickling a header, 500 that connect and say nothing.
    let mut held = Vec::new();
    for n in 0..1000 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        if n % 2 == 0 {
            stream
                .write_all(b"GET /v1/token/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
        }
        held.push(stream);
    }
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = daemon.request("GET", "/v1/token/a", None).await;
        assert_eq!(status, 200);
        let over_tcp = http
            .get(format!("http://127.0.0.1:{port}/v1/token/a"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(over_tcp.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a legitimate client waited {:?}",
            started.elapsed()
        );
        for stream in held.iter_mut().step_by(2) {
            let _ = stream.write_all(b"x");
        }
    }
    let memory_during = resident_kib(daemon.pid());
    assert!(
        memory_during < memory_before + 64 * 1024,
        "memory grew from {memory_before} KiB to {memory_during} KiB"
    );
    // The stalled connections are closed by the header timeout (5 s).
    let mut closed = 0;
    for stream in held.iter_mut().take(20) {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut sink = Vec::new();
        if std::io::Read::read_to_end(stream, &mut sink).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "stalled connections are closed by the daemon");
}

/// Issue #15's lockout: a local user with no key holds the connection slots with keep-alive
/// connections that ask for `/healthz` again and again. A client still gets its token within
/// a second. (Connections that say nothing are `api::listen`'s tests, at a small cap.)
#[tokio::test(flavor = "multi_thread")]
async fn nobody_can_hold_the_connection_slots() {
    let _alone = FLOODING.lock().await;
    let (_fake, _home, _daemon, port) = flooded_daemon().await;
    let key = CLIENT_KEY;

    let probe = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut asking = Vec::new();
    for _ in 0..1100 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = stream.write_all(probe);
        asking.push(stream);
    }
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let over_tcp = tokio::time::timeout(
            Duration::from_secs(1),
            http.get(format!("http://127.0.0.1:{port}/v1/token/a"))
                .bearer_auth(key)
                .send(),
        )
        .await
        .expect("a client waited more than a second for its token")
        .unwrap();
        assert_eq!(over_tcp.status(), 200);
        for stream in &mut asking {
            let _ = stream.write_all(probe);
        }
    }
}
