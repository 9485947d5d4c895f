//! Grants survive what an operator meets: SIGTERM mid-refresh, a full disk, a damaged journal.
//! Each runs the real binary on real files against a provider that rotates refresh tokens
//! and refuses a spent one, so a lost grant shows up as `invalid_grant`.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, Daemon, Home, Tmpfs};
use tokenbroker::testing::{FakeProvider, Reply};

/// The account's status and last error, as `GET /v1/accounts/{name}` says.
async fn status(daemon: &Daemon, name: &str) -> (String, String) {
    let (_, body) = daemon
        .request("GET", &format!("/v1/accounts/{name}"), None)
        .await;
    let text = |key: &str| body[key].as_str().unwrap_or_default().to_owned();
    (text("status"), text("last_error"))
}

/// After a restart, the stored grant must be the one the provider holds valid.
async fn grant_still_works(daemon: &Daemon, fake: &FakeProvider, name: &str) {
    let (code, body) = daemon
        .request("POST", &format!("/v1/accounts/{name}/refresh"), None)
        .await;
    assert_eq!(code, 200, "the stored grant was refused: {body}");
    assert_eq!(fake.valid_refresh_tokens().len(), 1);
}

/// Imports `rotating`, fills the disk, and refreshes (the provider rotating each time) until
/// a rotated grant could not be stored; returns the filler file.
async fn refresh_onto_a_full_disk(
    daemon: &Daemon,
    fake: &FakeProvider,
    disk: &Tmpfs,
) -> std::path::PathBuf {
    daemon.import("rotating", &fake.grant("rotating"));
    let filler = disk.fill();
    for _ in 0..20 {
        let (code, body) = daemon
            .request("POST", "/v1/accounts/rotating/refresh", None)
            .await;
        assert_eq!(code, 200, "{body}");
        let (status, error) = status(daemon, "rotating").await;
        if status == "degraded" {
            assert!(error.contains("No space left on device"), "{error}");
            return filler;
        }
    }
    panic!("a full disk never failed a write:\n{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_slow_rotating_refresh_keeps_the_grant() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let refresh = "check_interval = \"1s\"\nmin_interval = \"1s\"";
    let config = home.config(&fake.token_url(), refresh, "");
    let mut daemon = home.start(&config, &[]).await;
    // Tokens of 4 s are due for refresh after 2 s: the scheduler refreshes, not a caller.
    fake.set_expires_in(json!(4));
    daemon.import("rotating", &fake.grant("rotating"));
    fake.set_expires_in(json!(3600));
    // The provider rotates at once and takes 1.5 s to answer (within the 2 s timeout).
    fake.push([Reply::IssueSlowly(Duration::from_millis(1500))]);
    fake.wait_for_calls(2, Duration::from_secs(10)).await;
    let status = daemon.terminate();
    assert!(status.success(), "a clean stop exits 0, got {status}");
    let logs = daemon.logs();
    assert!(!logs.contains("abandoned"), "{logs}");
    let daemon = home.start(&config, &[]).await;
    grant_still_works(&daemon, &fake, "rotating").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_reported_recovers_without_a_restart_and_loses_no_grant() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let Some(disk) = Tmpfs::mount(&home.store(), "16m") else {
        return;
    };
    let config = home.config(&fake.token_url(), "check_interval = \"1s\"", "");
    let mut daemon = home.start(&config, &[]).await;
    let filler = refresh_onto_a_full_disk(&daemon, &fake, &disk).await;
    let (code, ready) = daemon.request("GET", "/readyz", None).await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["problems"].to_string().contains("store"),
        "readiness names the store: {ready}"
    );
    // The newest token is served meanwhile (see DESIGN.md: the rotation is already spent).
    let (code, token) = daemon.request("GET", "/v1/token/rotating", None).await;
    assert_eq!(code, 200, "{token}");
    assert_eq!(
        token["access_token"].as_str(),
        fake.issued_access_tokens().last().map(String::as_str)
    );

    // Space comes back: the next tick stores the grant, with no restart.
    std::fs::remove_file(filler).unwrap();
    eventually(
        "the account is active again",
        Duration::from_secs(10),
        || async { status(&daemon, "rotating").await.0 == "active" },
    )
    .await;
    eventually("/readyz is 200 again", Duration::from_secs(10), || async {
        daemon.request("GET", "/readyz", None).await.0 == 200
    })
    .await;
    daemon.logged("the store is writable again").await;
    let stopped = daemon.terminate();
    assert!(stopped.success(), "{stopped}\n{}", daemon.logs());
    let daemon = home.start(&config, &[]).await;
    grant_still_works(&daemon, &fake, "rotating").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_with_a_grant_that_could_not_be_stored_fails_and_names_it() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let Some(disk) = Tmpfs::mount(&home.store(), "16m") else {
        return;
    };
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    refresh_onto_a_full_disk(&daemon, &fake, &disk).await;
    let stopped = daemon.terminate();
    assert!(!stopped.success(), "an unsaved grant must not exit 0");
    let logs = daemon.logs();
    assert!(
        logs.lines().any(|l| l.contains("ERROR")
            && l.contains("rotating")
            && l.contains("could not be stored")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_journal_with_a_healthy_database_starts_with_a_warning() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    daemon.import("rotating", &fake.grant("rotating"));
    for _ in 0..3 {
        daemon
            .request("POST", "/v1/accounts/rotating/refresh", None)
            .await;
    }
    assert!(daemon.terminate().success());
    let journal = home.store().join("journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    bytes.truncate(bytes.len() - 7);
    std::fs::write(&journal, bytes).unwrap();
    let daemon = home.start(&config, &[]).await;
    let logs = daemon.logged("journal").await;
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("journal")),
        "{logs}"
    );
    let (code, body): (u16, Value) = daemon.request("GET", "/v1/token/rotating", None).await;
    assert_eq!(code, 200, "{body}");
    grant_still_works(&daemon, &fake, "rotating").await;
}

/// `count` accounts written straight into the daemon's store (as a big import leaves it),
/// each with a grant the fake accepts and a token with 50 minutes left: all due at start.
fn seed_due_accounts(home: &Home, fake: &FakeProvider, count: usize) {
    use tokenbroker::secret::{AccessToken, RefreshToken};
    use tokenbroker::store::{Change, Config, SledStore, Store};
    use tokenbroker::token::{AccountRecord, IssuedToken};
    let store = SledStore::open(&Config {
        dir: home.store(),
        key_file: home.store().join("store-key"),
        backend: tokenbroker::store::Backend::sled(),
    })
    .unwrap();
    let expires_at = std::time::SystemTime::now() + Duration::from_secs(50 * 60);
    let changes: Vec<Change> = (0..count)
        .map(|index| {
            let name = format!("acct-{index:05}");
            let mut record = AccountRecord::new(
                name.parse().unwrap(),
                "fake".into(),
                RefreshToken::new(fake.grant(&name)),
            );
            record.token = Some(IssuedToken::new(
                AccessToken::new(format!("seeded-{index}")),
                "Bearer".into(),
                expires_at,
                Duration::from_secs(4 * 3600),
                None,
            ));
            Change::Put(record)
        })
        .collect();
    for batch in changes.chunks(512) {
        store.write(batch).unwrap();
    }
}

/// With no memory for tokens (`store.token_memory_mib = 0`), so that every token served
/// and every refresh's record goes through the store's read-back too.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_middle_of_a_refresh_storm_loses_no_grant() {
    const ACCOUNTS: usize = 2000;
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    fake.set_recording(false);
    let home = Home::new();
    seed_due_accounts(&home, &fake, ACCOUNTS);
    fake.set_latency(Duration::from_millis(5));
    let config = home.config(&fake.token_url(), "max_concurrent = 16", "");
    let config = home.with_store_line(&config, "token_memory_mib = 0");
    let mut daemon = home.start(&config, &[]).await;
    fake.wait_for_calls(ACCOUNTS / 2, Duration::from_secs(60))
        .await;
    let status = daemon.terminate();
    assert!(status.success(), "a clean stop exits 0, got {status}");
    let stopped_at = fake.token_calls();
    assert!(stopped_at < ACCOUNTS, "the storm was over before SIGTERM");
    // Every grant in the store is one the provider still accepts: rotated ones were stored.
    let store = tokenbroker::store::SledStore::open(&tokenbroker::store::Config {
        dir: home.store(),
        key_file: home.store().join("store-key"),
        backend: tokenbroker::store::Backend::sled(),
    })
    .unwrap();
    let stored = tokenbroker::store::Store::load_all(&store).unwrap();
    assert_eq!(stored.len(), ACCOUNTS);
    let lost: Vec<_> = stored
        .iter()
        .filter(|r| !fake.is_valid(r.refresh_token.expose()))
        .map(|r| r.name.to_string())
        .collect();
    assert!(
        lost.is_empty(),
        "{} grants lost, e.g. {:?}",
        lost.len(),
        &lost[..1]
    );
    drop(store);
    // Started again, it refreshes the rest, each exactly once, and no grant is refused.
    let daemon = home.start(&config, &[]).await;
    eventually("the rest refreshed", Duration::from_secs(60), || async {
        let (_, body) = daemon
            .request("GET", "/v1/accounts?status=refreshing&limit=1", None)
            .await;
        fake.token_calls() >= ACCOUNTS && body["accounts"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(fake.refused_refreshes(), 0);
    assert_eq!(fake.token_calls(), ACCOUNTS, "one call per account in all");
    // Every token the store holds is served, read back: the refreshed ones, not the seeds.
    for index in [0, ACCOUNTS / 2, ACCOUNTS - 1] {
        let (status, body) = daemon
            .request("GET", &format!("/v1/token/acct-{index:05}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert!(token.starts_with("fake-access"), "{token}");
    }
}
