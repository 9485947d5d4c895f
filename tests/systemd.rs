//! The daemon under systemd's notify protocol, with a fake `NOTIFY_SOCKET`: `READY=1` once it
//! serves, `WATCHDOG=1` from every scheduler tick, `RELOADING=1` then `READY=1` on SIGHUP,
//! `STOPPING=1` on SIGTERM; and socket activation.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time
#![allow(clippy::print_stderr)] // says why a test is skipped

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::Home;
use tokenbroker::testing::FakeProvider;

fn next_message(socket: &UnixDatagram) -> (String, Instant) {
    let mut buffer = [0u8; 4096];
    let length = socket
        .recv(&mut buffer)
        .expect("a notification within the timeout");
    (
        String::from_utf8_lossy(&buffer[..length])
            .trim_end()
            .to_owned(),
        Instant::now(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_watchdog_pings_from_the_tick_reloading_and_stopping() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let notify_path = home.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = home.config(&fake.token_url(), "check_interval = \"1s\"", "");
    let notify_env = notify_path.display().to_string();
    let mut daemon = home
        .start(
            &config,
            &[
                ("NOTIFY_SOCKET", &notify_env),
                ("WATCHDOG_USEC", "10000000"),
            ],
        )
        .await;

    let (first, _) = next_message(&notify);
    assert_eq!(
        first, "READY=1",
        "ready comes first, once the listeners are bound"
    );
    let mut pings = Vec::new();
    while pings.len() < 3 {
        let (message, at) = next_message(&notify);
        assert_eq!(message, "WATCHDOG=1");
        pings.push(at);
    }
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(2500),
            "one ping per 1 s tick, got {gap:?}"
        );
    }
    // A reload is announced, then readiness again.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.pid()).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    let mut reload = Vec::new();
    while reload.len() < 2 {
        let (message, _) = next_message(&notify);
        if message != "WATCHDOG=1" {
            reload.push(message);
        }
    }
    let mut announced = reload[0].lines();
    assert_eq!(announced.next(), Some("RELOADING=1"), "{reload:?}");
    assert!(
        announced
            .next()
            .is_some_and(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    assert_eq!(reload[1], "READY=1");

    assert!(daemon.terminate().success());
    // Pings may still be queued; STOPPING=1 must follow them.
    notify
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut after = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(length) = notify.recv(&mut buffer) {
        after.push(
            String::from_utf8_lossy(&buffer[..length])
                .trim_end()
                .to_owned(),
        );
    }
    assert_eq!(
        after
            .iter()
            .filter(|m| *m != "WATCHDOG=1")
            .collect::<Vec<_>>(),
        vec!["STOPPING=1"],
        "{after:?}"
    );
}

/// `systemd-socket-activate` binds the sockets, starts the daemon on the first connection and
/// passes them (`LISTEN_FDS`), as `tokenbroker.socket` does under systemd.
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_the_passed_sockets_and_leaves_them_to_systemd() {
    if !std::path::Path::new(SOCKET_ACTIVATE).exists() {
        support::missing(&format!("{SOCKET_ACTIVATE} (Debian package systemd)"));
        return;
    }
    let fake = FakeProvider::start().await;
    let home = Home::new();
    // TCP is off in the configuration: the passed TCP socket is served anyway.
    let config = home.config(&fake.token_url(), "", "");
    let port = support::free_port();
    let socket = home.socket();
    let tcp = format!("127.0.0.1:{port}");
    let wrapper: Vec<&std::ffi::OsStr> = vec![
        SOCKET_ACTIVATE.as_ref(),
        "-l".as_ref(),
        socket.as_os_str(),
        "-l".as_ref(),
        tcp.as_ref(),
    ];
    let mut daemon = home
        .spawn_via(
            &wrapper,
            &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
            &[],
        )
        .await;
    daemon.import("main", &fake.grant("main"));
    assert_eq!(daemon.request("GET", "/v1/token/main", None).await.0, 200);
    let over_tcp = reqwest::get(format!("http://{tcp}/healthz")).await.unwrap();
    assert_eq!(over_tcp.status(), 200);
    daemon.logged("Unix socket systemd passed").await;
    let logs = daemon.logged("TCP socket systemd passed").await;
    assert!(!logs.contains("is not server.socket"), "{logs}");

    assert!(daemon.terminate().success());
    assert!(socket.exists(), "the socket file is systemd's to remove");
}
