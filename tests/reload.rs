//! `SIGHUP` on the real binary: a changed client list applies at once, tokens and open
//! connections survive, and a broken configuration keeps the one in force.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{eventually, Daemon, Home};
use tokenbroker::testing::FakeProvider;

fn client(name: &str, key: &str, account: &str) -> String {
    format!(
        "\n[[clients]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\naccounts = [\"{account}\"]\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key))
    )
}

fn hang_up(daemon: &Daemon) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.pid()).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
}

/// The status of `GET /v1/token/main` over TCP with `key`, on `http`'s pooled connections.
async fn status_with(http: &reqwest::Client, port: u16, key: &str) -> u16 {
    http.get(format!("http://127.0.0.1:{port}/v1/token/main"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Writes a configuration with TCP on `port` and the given clients over `path`.
fn rewrite(home: &Home, fake: &FakeProvider, path: &Path, port: u16, clients: &str) {
    let text = std::fs::read_to_string(home.config(&fake.token_url(), "", clients))
        .unwrap()
        .replace("http = \"\"", &format!("http = \"127.0.0.1:{port}\""));
    std::fs::write(path, text).unwrap();
}

/// A daemon on TCP whose one client, `job`, has `key-one` and account `main`, which holds a
/// token; its configuration file and port.
async fn start_with_one_client(fake: &FakeProvider, home: &Home) -> (Daemon, PathBuf, u16) {
    let config = home.config(&fake.token_url(), "", &client("job", "key-one", "main"));
    let (config, port) = home.with_tcp(&config);
    let daemon = home.start(&config, &[]).await;
    daemon.import("main", &fake.grant("main"));
    (daemon, config, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_changes_who_gets_a_token_without_a_restart() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, config, port) = start_with_one_client(&fake, &home).await;
    let http = reqwest::Client::new();
    assert_eq!(status_with(&http, port, "key-one").await, 200);
    assert_eq!(status_with(&http, port, "key-two").await, 401);
    let pid = daemon.pid();

    rewrite(
        &home,
        &fake,
        &config,
        port,
        &client("job", "key-two", "main"),
    );
    hang_up(&daemon);
    eventually("the new client list", Duration::from_secs(10), || async {
        status_with(&http, port, "key-two").await == 200
    })
    .await;
    assert_eq!(status_with(&http, port, "key-one").await, 401);
    // The same process, the same token: nothing was restarted or refreshed.
    assert_eq!(daemon.pid(), pid);
    assert_eq!(fake.token_calls(), 1);
    let (_, body) = daemon.request("GET", "/v1/token/main", None).await;
    assert_eq!(
        body["access_token"],
        fake.issued_access_tokens()[0].as_str()
    );
    daemon.logged("configuration reloaded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_configuration_on_sighup_keeps_the_old_one_and_says_why() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, config, port) = start_with_one_client(&fake, &home).await;
    let http = reqwest::Client::new();

    for broken in [
        "[server\nthis is not TOML",
        "[refresh]\nahead = \"whenever\"\n",
    ] {
        std::fs::write(&config, broken).unwrap();
        let reloads_before = daemon.logs().matches("configuration not reloaded").count();
        hang_up(&daemon);
        eventually(
            "the reload to be refused",
            Duration::from_secs(10),
            || async {
                daemon.logs().matches("configuration not reloaded").count() > reloads_before
            },
        )
        .await;
        assert_eq!(status_with(&http, port, "key-one").await, 200, "{broken}");
    }
    let logs = daemon.logs();
    assert!(logs.contains("TOML parse error"), "{logs}");
    assert!(logs.contains("refresh.ahead"), "{logs}");
    assert_eq!(daemon.request("GET", "/healthz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_seeds_newly_declared_accounts_and_starts_their_sinks() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let fast = "check_interval = \"1s\"";
    let config = home.config(&fake.token_url(), fast, "");
    let daemon = home.start(&config, &[]).await;
    assert_eq!(
        daemon.request("GET", "/v1/accounts/added", None).await.0,
        404
    );

    let grant = home.write("added-refresh", &fake.grant("added"));
    let sink = home.path("added.token");
    let declared = format!(
        "\n[accounts.added]\nprovider = \"fake\"\nrefresh_token_file = \"{}\"\nrequired = true\nsinks = [{{ path = \"{}\" }}]\n",
        grant.display(),
        sink.display()
    );
    std::fs::write(
        &config,
        std::fs::read_to_string(home.config(&fake.token_url(), fast, &declared)).unwrap(),
    )
    .unwrap();
    hang_up(&daemon);
    eventually(
        "the declared account's sink",
        Duration::from_secs(15),
        || async { std::fs::read_to_string(&sink).is_ok_and(|t| !t.is_empty()) },
    )
    .await;
    let token = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(fake.issued_access_tokens(), vec![token]);
    let (status, body) = daemon.request("GET", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
}
