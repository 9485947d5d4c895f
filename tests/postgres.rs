//! Several real brokers on one PostgreSQL database (`store.backend = "postgres"`), against a
//! provider that rotates the refresh token on every refresh and refuses any reuse.
//!
//! The database comes from `TOKENBROKER_TEST_POSTGRES` (a URL; `.ci/postgres start DIR`
//! starts a throwaway cluster and prints one). Each test makes a database of its own there.
//! Without it the tests are skipped, and in CI they fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::{eventually, Daemon, Home};
use tokenbroker::testing::{FakeProvider, Reply};

/// A database of the test's own, and the key every broker on it shares.
struct Database {
    url: String,
    admin: tokio_postgres::Client,
    key: tempfile::TempDir,
}

impl Database {
    /// A fresh database, or `None` (the test is skipped) outside CI without PostgreSQL.
    async fn create() -> Option<Self> {
        let Ok(server) = std::env::var("TOKENBROKER_TEST_POSTGRES") else {
            support::missing(
                "PostgreSQL: set TOKENBROKER_TEST_POSTGRES (.ci/postgres start DIR prints it)",
            );
            return None;
        };
        let admin = connect(&server).await;
        let name = format!("tb_{:016x}", rand::random::<u64>());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = with_database(&server, &name);
        let admin = connect(&url).await;
        let key = tempfile::tempdir().unwrap();
        write_key(&key.path().join("store-key"), 7);
        Some(Self { url, admin, key })
    }

    fn key_file(&self) -> PathBuf {
        self.key.path().join("store-key")
    }

    /// A broker's configuration in `home`: the fake provider, this database, the shared key.
    fn config(&self, home: &Home, fake: &FakeProvider, refresh: &str) -> PathBuf {
        self.config_with_key(home, fake, refresh, &self.key_file())
    }

    fn config_with_key(
        &self,
        home: &Home,
        fake: &FakeProvider,
        refresh: &str,
        key_file: &Path,
    ) -> PathBuf {
        self.config_with(home, fake, refresh, key_file, &self.url, "")
    }

    /// A broker's configuration reaching the database at `url`, with more `store` lines.
    fn config_with(
        &self,
        home: &Home,
        fake: &FakeProvider,
        refresh: &str,
        key_file: &Path,
        url: &str,
        store_lines: &str,
    ) -> PathBuf {
        let url_file = home.write("pg-url", url);
        std::fs::set_permissions(
            &url_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let config = home.config(&fake.token_url(), refresh, "");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[store]\n",
            &format!(
                "[store]\nbackend = \"postgres\"\nurl_file = \"pg-url\"\nkey_file = \"{}\"\n{store_lines}",
                key_file.display()
            ),
        );
        home.write("config.toml", &text)
    }

    /// The server's TCP port, where it speaks TLS, and the certificate of the authority that
    /// signed its certificate for the name `localhost` (`.ci/postgres` makes both and keeps
    /// the authority's in the data directory as `ca.crt`); or `None` (the test is skipped)
    /// outside CI when the server has no TLS.
    async fn over_tls(&self) -> Option<(u16, String)> {
        let show = |setting: &'static str| async move {
            let row = self
                .admin
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        };
        if show("ssl").await != "on" {
            support::missing(
                "PostgreSQL with TLS on 127.0.0.1 (.ci/postgres start DIR sets it up)",
            );
            return None;
        }
        let port: u16 = show("port").await.parse().unwrap();
        let certificate = Path::new(&show("data_directory").await).join("ca.crt");
        Some((port, std::fs::read_to_string(certificate).unwrap()))
    }

    fn name(&self) -> &str {
        let base = self
            .url
            .split_once('?')
            .map_or(self.url.as_str(), |(base, _)| base);
        base.rsplit_once('/').unwrap().1
    }

    /// The process id of the broker whose session holds an open transaction (a refresh
    /// holding its row lock), and that session's backend.
    async fn wait_for_holder(&self) -> (i32, i32) {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(holder) = self.holder().await {
                return holder;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no broker took the refresh"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn holder(&self) -> Option<(i32, i32)> {
        let rows = self
            .admin
            .query(
                "SELECT application_name, pid FROM pg_stat_activity
                 WHERE state LIKE 'idle in transaction%' AND application_name LIKE 'tokenbroker/%'
                   AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        rows.first().map(|row| {
            let name: String = row.get(0);
            (name["tokenbroker/".len()..].parse().unwrap(), row.get(1))
        })
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    format!("{base}/{name}?{query}")
}

fn write_key(path: &Path, byte: u8) {
    std::fs::write(path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A database of the test's own and a provider that rotates the refresh token on every
/// refresh and refuses any reuse.
async fn rotating() -> Option<(Database, FakeProvider)> {
    let database = Database::create().await?;
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    Some((database, fake))
}

/// Refreshes that come every few seconds for tokens of 6 s: several lifetimes per test.
const QUICK: &str = "ahead = \"3s\"\njitter = \"0s\"\ncheck_interval = \"1s\"\nmin_valid = \"1s\"\nmin_interval = \"1s\"";

/// Whether every broker serves the provider's newest access token for `account`.
async fn all_serve_the_newest(
    brokers: &[(Home, Daemon)],
    fake: &FakeProvider,
    account: &str,
) -> bool {
    let newest = fake.issued_access_tokens().last().cloned();
    for (_, daemon) in brokers {
        if token(daemon, account).await != newest {
            return false;
        }
    }
    true
}

/// `count` brokers on `database`, each in a home of its own.
async fn brokers(
    database: &Database,
    fake: &FakeProvider,
    refresh: &str,
    count: usize,
) -> Vec<(Home, Daemon)> {
    let mut brokers = Vec::new();
    for _ in 0..count {
        let home = Home::new();
        let config = database.config(&home, fake, refresh);
        let daemon = home.start(&config, &[]).await;
        brokers.push((home, daemon));
    }
    brokers
}

async fn token(daemon: &Daemon, account: &str) -> Option<String> {
    let (status, body) = daemon
        .request("GET", &format!("/v1/token/{account}"), None)
        .await;
    (status == 200).then(|| body["access_token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_present_each_rotated_grant_once_and_serve_the_current_token() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    // Longer than the brokers' ticks are apart (the scheduler polls twice a second), so
    // that every broker finds the account due while another is refreshing it.
    fake.set_latency(Duration::from_millis(700));
    fake.set_expires_in(json!(6));
    let brokers = brokers(&database, &fake, QUICK, 3).await;
    brokers[0].1.import("shared", &fake.grant("shared"));
    // Over several lifetimes: the import, then a refresh every 3 s or so.
    fake.wait_for_calls(6, Duration::from_secs(40)).await;
    let presented: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| r.form.get("refresh_token").cloned())
        .collect();
    let mut distinct = presented.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        presented.len(),
        "every refresh token presented exactly once: {presented:?}"
    );
    assert_eq!(fake.refused_refreshes(), 0, "no refresh token reused");
    eventually(
        "every broker to serve the newest token",
        Duration::from_secs(5),
        || all_serve_the_newest(&brokers, &fake, "shared"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_callers_on_three_brokers_cause_one_upstream_call() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    fake.set_expires_in(json!(10));
    let brokers = brokers(&database, &fake, "jitter = \"0s\"", 3).await;
    brokers[0].1.import("busy", &fake.grant("busy"));
    for (_, daemon) in &brokers {
        eventually(
            "each broker to hold the token, with less than 9 s left",
            Duration::from_secs(5),
            || async {
                let body = daemon.request("GET", "/v1/accounts/busy", None).await.1;
                body["expires_in"].as_u64().is_some_and(|left| left < 9)
            },
        )
        .await;
    }
    fake.set_expires_in(json!(3600));
    fake.push([Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Issue),
    )]);
    let requests: Vec<_> = (0..200)
        .map(|i| {
            brokers[i % 3]
                .1
                .request("GET", "/v1/token/busy?min_valid=9", None)
        })
        .collect();
    let answers = futures_util::future::join_all(requests).await;
    assert_eq!(
        fake.token_calls(),
        2,
        "one import call and one refresh for 200 callers on three brokers"
    );
    let fresh = &fake.issued_access_tokens()[1];
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], json!(fresh));
    }
    assert_eq!(fake.refused_refreshes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_through_one_broker_is_served_by_the_others_within_a_second() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    let brokers = brokers(&database, &fake, "", 3).await;
    brokers[1].1.import("new", &fake.grant("new"));
    let issued = fake.issued_access_tokens()[0].clone();
    let imported = tokio::time::Instant::now();
    for (_, daemon) in &brokers {
        eventually(
            "the import to reach every broker",
            Duration::from_secs(1),
            || async { token(daemon, "new").await.as_deref() == Some(issued.as_str()) },
        )
        .await;
    }
    assert!(imported.elapsed() < Duration::from_secs(1));
    let removed = brokers[2].1.cli(&["remove", "new"], None);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    for (_, daemon) in &brokers {
        eventually(
            "the removal to reach every broker",
            Duration::from_secs(1),
            || async { daemon.request("GET", "/v1/accounts/new", None).await.0 == 404 },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_with_another_key_refuses_to_start() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    let first = brokers(&database, &fake, "", 1).await;
    first[0].1.import("a", &fake.grant("a"));
    let home = Home::new();
    let other_key = home.path("other-key");
    write_key(&other_key, 9);
    let config = database.config_with_key(&home, &fake, "", &other_key);
    let output = home.serve_fails(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("sealed with key"), "{stderr}");
    let missing = Home::new();
    let config = database.config_with_key(&missing, &fake, "", &missing.path("no-key"));
    let output = missing.serve_fails(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("never generated"),
        "a missing key is not generated: {stderr}"
    );
    assert!(!missing.path("no-key").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_broker_that_holds_a_slow_refresh_hands_it_to_another() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    fake.set_expires_in(json!(6));
    let mut brokers = brokers(&database, &fake, QUICK, 3).await;
    brokers[0].1.import("slow", &fake.grant("slow"));
    // The next refresh hangs before the provider issues anything.
    fake.push([Reply::Delay(
        Duration::from_secs(30),
        Box::new(Reply::Issue),
    )]);
    let (pid, _) = database.wait_for_holder().await;
    let index = brokers.iter().position(|(_, d)| d.pid() == pid).unwrap();
    brokers[index].1.kill();
    let (_, killed) = brokers.remove(index);
    drop(killed);
    fake.wait_for_calls(3, Duration::from_secs(10)).await;
    eventually(
        "the others to serve the token of the takeover",
        Duration::from_secs(5),
        || async {
            fake.issued_access_tokens().len() >= 2
                && all_serve_the_newest(&brokers, &fake, "slow").await
        },
    )
    .await;
    assert_eq!(fake.refused_refreshes(), 0, "the grant survived the kill");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_session_is_terminated_cannot_commit() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    fake.set_expires_in(json!(6));
    let brokers = brokers(&database, &fake, QUICK, 1).await;
    brokers[0].1.import("cut", &fake.grant("cut"));
    fake.push([Reply::Delay(
        Duration::from_secs(1), // under the provider timeout (2 s): it is delivered
        Box::new(Reply::Issue),
    )]);
    let (_, backend) = database.wait_for_holder().await;
    let before: i64 = database
        .admin
        .query_one(
            "SELECT version FROM tokenbroker_accounts WHERE name = 'cut'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    database
        .admin
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    brokers[0].1.logged("cannot commit a refresh").await;
    // The rotated grant is kept and stored later, by compare-and-set on the version the
    // broker saw: one write, no lost grant.
    let stored = || async {
        database
            .admin
            .query_one(
                "SELECT version FROM tokenbroker_accounts WHERE name = 'cut'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    eventually(
        "the kept grant to be stored",
        Duration::from_secs(10),
        || async { stored().await > before },
    )
    .await;
    fake.wait_for_calls(3, Duration::from_secs(15)).await;
    assert_eq!(
        fake.refused_refreshes(),
        0,
        "the kept grant was the one to use next"
    );
}

/// A cluster of the test's own, which it stops and starts (`.ci/postgres`).
struct OwnCluster {
    dir: tempfile::TempDir,
}

impl OwnCluster {
    fn start() -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Self { dir };
        let url = cluster.run("start");
        (cluster, url)
    }

    fn run(&self, action: &str) -> String {
        succeeds(
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres"))
                .arg(action)
                .arg(self.dir.path()),
        )
        .trim()
        .to_owned()
    }
}

impl OwnCluster {
    /// A cluster of the test's own with a database on it, and a provider that rotates
    /// and issues 6 s tokens; `None` (skipped) where the shared one is not provided.
    async fn rotating() -> Option<(Self, Database, FakeProvider)> {
        if std::env::var_os("TOKENBROKER_TEST_POSTGRES").is_none() {
            support::missing(
                "PostgreSQL: set TOKENBROKER_TEST_POSTGRES (.ci/postgres start DIR prints it)",
            );
            return None;
        }
        let (cluster, url) = Self::start();
        let database = Database {
            admin: connect(&url).await,
            url,
            key: tempfile::tempdir().unwrap(),
        };
        write_key(&database.key_file(), 7);
        let fake = FakeProvider::start().await;
        fake.set_rotation(true);
        fake.set_expires_in(json!(6));
        Some((cluster, database, fake))
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_postgres_down_past_a_lifetime_brokers_serve_what_is_valid_and_recover_alone() {
    let Some((cluster, database, fake)) = OwnCluster::rotating().await else {
        return;
    };
    let brokers = brokers(&database, &fake, QUICK, 2).await;
    brokers[0].1.import("steady", &fake.grant("steady"));
    fake.wait_for_calls(2, Duration::from_secs(10)).await;
    for (_, daemon) in &brokers {
        eventually(
            "both brokers to hold the refreshed token",
            Duration::from_secs(5),
            || async {
                token(daemon, "steady").await.as_ref() == fake.issued_access_tokens().last()
            },
        )
        .await;
    }
    drop(database);
    cluster.run("stop");
    let calls = fake.token_calls();
    let held = fake.issued_access_tokens().last().cloned();
    // Served while valid, from memory.
    assert_eq!(token(&brokers[1].1, "steady").await, held);
    eventually(
        "the token to run out unrefreshed",
        Duration::from_secs(10),
        || async { token(&brokers[1].1, "steady").await.is_none() },
    )
    .await;
    let view = brokers[1]
        .1
        .request("GET", "/v1/accounts/steady", None)
        .await
        .1;
    assert_eq!(view["status"], "degraded", "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("store_unavailable"),
        "{view}"
    );
    assert_eq!(
        fake.token_calls(),
        calls,
        "no refresh whose new grant could not be stored"
    );
    cluster.run("start");
    eventually(
        "the brokers to refresh and serve again, unrestarted",
        Duration::from_secs(15),
        || async {
            fake.token_calls() > calls && all_serve_the_newest(&brokers, &fake, "steady").await
        },
    )
    .await;
    assert_eq!(fake.refused_refreshes(), 0, "no grant lost");
    // Seconds of reconnecting, said once; and the return.
    for (_, daemon) in &brokers {
        daemon
            .logged("the shared store's change feed is back")
            .await;
        let logs = daemon.logs();
        assert_eq!(
            logs.matches("lost the shared store's change feed").count(),
            1,
            "{logs}"
        );
    }
}

/// `tokenbroker store copy --from FROM --config TO`, which must succeed; its output.
fn store_copy(from: &Path, to: &Path) -> String {
    succeeds(
        std::process::Command::new(support::BINARY)
            .args(["store", "copy", "--from"])
            .arg(from)
            .arg("--config")
            .arg(to),
    )
}

/// Runs `command`, which must succeed; its output.
fn succeeds(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn store_copy_moves_a_sled_store_into_postgres_and_back() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    let sled_home = Home::new();
    let sled_config = sled_home.config(&fake.token_url(), "", "");
    let mut sled = sled_home.start(&sled_config, &[]).await;
    sled.import("one", &fake.grant("one"));
    sled.import("two", &fake.grant("two"));
    let served = (token(&sled, "one").await, token(&sled, "two").await);
    assert!(sled.terminate().success());

    let pg_home = Home::new();
    let pg_config = database.config(&pg_home, &fake, "");
    assert_eq!(
        store_copy(&sled_config, &pg_config),
        "copied 2 accounts; kept 0 the target already had\n"
    );
    let calls = fake.token_calls();
    let pg = pg_home.start(&pg_config, &[]).await;
    assert_eq!((token(&pg, "one").await, token(&pg, "two").await), served);
    assert_eq!(
        store_copy(&sled_config, &pg_config),
        "copied 0 accounts; kept 2 the target already had\n",
        "what the target has is kept"
    );

    let back_home = Home::new();
    let back_config = back_home.config(&fake.token_url(), "", "");
    assert_eq!(
        store_copy(&pg_config, &back_config),
        "copied 2 accounts; kept 0 the target already had\n"
    );
    let back = back_home.start(&back_config, &[]).await;
    assert_eq!(
        (token(&back, "one").await, token(&back, "two").await),
        served
    );
    assert_eq!(
        fake.token_calls(),
        calls,
        "the grants moved without a refresh"
    );
    assert_eq!(fake.refused_refreshes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_whose_commit_failed_survives_a_kill_and_is_stored_at_the_next_start() {
    let Some((cluster, database, fake)) = OwnCluster::rotating().await else {
        return;
    };
    let home = Home::new();
    let config = database.config(&home, &fake, QUICK);
    let mut broker = home.start(&config, &[]).await;
    broker.import("kept", &fake.grant("kept"));
    // The provider rotates the grant and answers a second later; meanwhile the database
    // goes away, so the commit fails.
    fake.push([Reply::Delay(Duration::from_secs(1), Box::new(Reply::Issue))]);
    database.wait_for_holder().await;
    cluster.run("stop");
    let pending = home.store().join("pending");
    eventually(
        "the uncommitted grant to be kept on disk",
        Duration::from_secs(5),
        || async { pending.exists() },
    )
    .await;
    assert_eq!(fake.token_calls(), 2);
    broker.kill();
    cluster.run("start");
    let broker = home.start(&config, &[]).await;
    assert_eq!(
        token(&broker, "kept").await.as_ref(),
        fake.issued_access_tokens().last(),
        "the kept grant's token is served"
    );
    assert!(!pending.exists(), "stored, so no longer pending");
    fake.wait_for_calls(3, Duration::from_secs(10)).await;
    assert_eq!(
        fake.refused_refreshes(),
        0,
        "the next refresh used the kept grant"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_starting_together_on_a_new_database_all_come_up_on_one_schema() {
    // (That the tables are made under the schema lock is proven by the test of that lock;
    // this proves the start is idempotent and agrees.)
    let Some((database, fake)) = rotating().await else {
        return;
    };
    let homes: Vec<Home> = (0..3).map(|_| Home::new()).collect();
    let configs: Vec<PathBuf> = homes
        .iter()
        .map(|home| database.config(home, &fake, ""))
        .collect();
    let starts = homes
        .iter()
        .zip(&configs)
        .map(|(home, config)| home.start(config, &[]));
    let brokers = futures_util::future::join_all(starts).await;
    brokers[2].import("first", &fake.grant("first"));
    for broker in &brokers {
        eventually(
            "every broker to serve the account",
            Duration::from_secs(1),
            || async { token(broker, "first").await.is_some() },
        )
        .await;
    }
    let key_ids: i64 = database
        .admin
        .query_one(
            "SELECT count(*) FROM tokenbroker_meta WHERE name = 'key_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key_ids, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_comes_back_with_postgres_without_waiting_for_a_write() {
    let Some((cluster, database, fake)) = OwnCluster::rotating().await else {
        return;
    };
    fake.set_expires_in(json!(3600));
    let home = Home::new();
    let broker = home.start(&database.config(&home, &fake, QUICK), &[]).await;
    broker.import("long", &fake.grant("long"));
    assert_eq!(broker.request("GET", "/readyz", None).await.0, 200);
    cluster.run("stop");
    let refused = broker.cli(&["refresh", "long"], None);
    assert!(!refused.status.success(), "no refresh without the store");
    let (status, body) = broker.request("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("store_unavailable"), "{body}");
    let calls = fake.token_calls();
    cluster.run("start");
    eventually("/readyz to pass again", Duration::from_secs(10), || async {
        broker.request("GET", "/readyz", None).await.0 == 200
    })
    .await;
    assert_eq!(
        fake.token_calls(),
        calls,
        "no write was needed to know it is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_reaches_postgres_over_verified_tls_and_refuses_a_server_it_cannot_verify() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    let Some((port, certificate)) = database.over_tls().await else {
        return;
    };
    let over_tls = |host: &str| {
        format!(
            "postgres://postgres@{host}:{port}/{}?sslmode=require",
            database.name()
        )
    };
    let home = Home::new();
    home.write("db-ca.pem", &certificate);
    let config = database.config_with(
        &home,
        &fake,
        "",
        &database.key_file(),
        &over_tls("localhost"),
        "ca_file = \"db-ca.pem\"\n",
    );
    let broker = home.start(&config, &[]).await;
    broker.import("secure", &fake.grant("secure"));
    assert!(token(&broker, "secure").await.is_some());
    let sessions = database
        .admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE ssl) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid)
             WHERE application_name = $1",
            &[&format!("tokenbroker/{}", broker.pid())],
        )
        .await
        .unwrap();
    let (all, encrypted): (i64, i64) = (sessions.get(0), sessions.get(1));
    assert!(
        all >= 2,
        "the pool and the change feed are connected: {all}"
    );
    assert_eq!(encrypted, all, "every session of the broker is encrypted");

    // Refused: a certificate not signed by anything the system trusts (no ca_file), and one
    // trusted but for the name localhost, not 127.0.0.1.
    for (host, store_lines, reason) in [
        ("localhost", "", "UnknownIssuer"),
        (
            "127.0.0.1",
            "ca_file = \"db-ca.pem\"\n",
            "not valid for name",
        ),
    ] {
        let refused = Home::new();
        refused.write("db-ca.pem", &certificate);
        let config = database.config_with(
            &refused,
            &fake,
            "",
            &database.key_file(),
            &over_tls(host),
            store_lines,
        );
        let output = refused.serve_fails(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(reason), "{host}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_creates_the_schema_only_under_the_schema_lock() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    // The lock every broker takes before it creates or checks the tables (a transaction-
    // scoped advisory lock; its number is shared by every version of the broker).
    const SCHEMA_LOCK: i64 = 0x746f_6b65_6e62;
    database
        .admin
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await
        .unwrap();
    let home = Home::new();
    let config = database.config(&home, &fake, "");
    let tables = || async {
        database
            .admin
            .query_one("SELECT to_regclass('tokenbroker_accounts')::text", &[])
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };
    let waiting_for_the_lock = async {
        eventually(
            "the broker to wait for the schema lock",
            Duration::from_secs(10),
            || async {
                assert_eq!(
                    tables().await,
                    None,
                    "no table is created while another start holds the lock"
                );
                let row = database
                    .admin
                    .query_one(
                        "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)
                         WHERE locktype = 'advisory' AND NOT granted
                           AND application_name LIKE 'tokenbroker/%'
                           AND datname = current_database()",
                        &[],
                    )
                    .await
                    .unwrap();
                row.get::<_, i64>(0) == 1
            },
        )
        .await;
        assert_eq!(tables().await, None);
        database
            .admin
            .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .await
            .unwrap();
    };
    let (broker, ()) = tokio::join!(home.start(&config, &[]), waiting_for_the_lock);
    broker.import("after", &fake.grant("after"));
    assert!(token(&broker, "after").await.is_some());
}

/// When the scheduler of `daemon` last swept, as Unix seconds (its metrics).
async fn last_tick(daemon: &Daemon) -> f64 {
    let (_, _, text) = daemon.get_text("/metrics").await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("tokenbroker_scheduler_last_tick_timestamp_seconds ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_providers_retry_after_holds_on_every_broker() {
    let Some((database, fake)) = rotating().await else {
        return;
    };
    fake.set_expires_in(json!(6));
    let brokers = brokers(&database, &fake, QUICK, 2).await;
    // Every refresh from now on is told to come back in a minute.
    let limited = || {
        Reply::Json(
            429,
            json!({"error": "rate_limited"}),
            vec![("Retry-After", "60".into())],
        )
    };
    brokers[0].1.import("limited", &fake.grant("limited"));
    fake.push((0..10).map(|_| limited()));
    fake.wait_for_calls(2, Duration::from_secs(15)).await;
    // Each broker holds the failure (the one that did not call, from the store)...
    for (_, daemon) in &brokers {
        eventually(
            "every broker to hold the failed attempt",
            Duration::from_secs(5),
            || async {
                let body = daemon.request("GET", "/v1/accounts/limited", None).await.1;
                body["last_error"].is_string()
            },
        )
        .await;
    }
    // ...and sweeps twice more, with the token due, without calling.
    for (_, daemon) in &brokers {
        let held = last_tick(daemon).await;
        eventually(
            "two more sweeps on every broker",
            Duration::from_secs(10),
            || async { last_tick(daemon).await >= held + 2.0 },
        )
        .await;
    }
    assert_eq!(
        fake.token_calls(),
        2,
        "the import and the refresh told to wait; no broker called again within the minute"
    );
}
