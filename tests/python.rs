//! The Python client (`clients/python`) against the real daemon: tokens over the socket and
//! TCP, a rejected token, the `requests` and `httpx` auth classes and the Dropbox SDK
//! factory (against a stand-in, never Dropbox). It needs a Python with requests, httpx and
//! dropbox: `$TOKENBROKER_PYTHON`, else `target/python-venv/bin/python`, which `.ci/run`
//! makes. Without one the test is skipped, except in CI, where it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Home;
use tokenbroker::testing::FakeProvider;

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("TOKENBROKER_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-venv/bin/python"),
        PathBuf::from,
    );
    let ready = Command::new(&python)
        .args(["-c", "import requests, httpx, dropbox"])
        .output()
        .is_ok_and(|output| output.status.success());
    ready.then_some(python)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_works_against_a_running_daemon() {
    let Some(python) = python() else {
        support::missing(
            "a Python with requests, httpx and dropbox (.ci/run makes target/python-venv)",
        );
        return;
    };
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let key = "python-test-key";
    let (daemon, port) = home
        .start_with_tcp_client(&fake.token_url(), "py", key)
        .await;
    daemon.import("dropbox-main", &fake.grant("dropbox-main"));

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking({
        let socket = home.socket();
        let check = fake.check_url();
        let root = root.to_owned();
        move || {
            Command::new(python)
                .args(["-m", "unittest", "discover", "-v", "-s"])
                .arg(root.join("clients/python/tests"))
                .env("PYTHONPATH", root.join("clients/python"))
                .env("TOKENBROKER_SOCKET", socket)
                .env("TOKENBROKER_URL", format!("http://127.0.0.1:{port}"))
                .env("TOKENBROKER_API_KEY", key)
                .env("TOKENBROKER_ACCOUNT", "dropbox-main")
                .env("CHECK_URL", check)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("Ran 7 tests"), "{report}");
}
