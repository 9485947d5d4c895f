//! Broker behaviour in controlled time: a `ManualClock`, a real sled store in a temp
//! directory, and the fake provider on loopback.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::secret::RefreshToken;
use crate::store::{self, SledStore};
use crate::testing::{FakeProvider, Reply};

const HOUR: Duration = Duration::from_secs(3600);
const START: Duration = Duration::from_secs(1_800_000_000);

struct Harness {
    fake: FakeProvider,
    clock: ManualClock,
    store: Arc<SledStore>,
    /// Set: every store write fails with ENOSPC, as on a full disk.
    disk_full: Arc<std::sync::atomic::AtomicBool>,
    /// The broker's reads of one account from the store.
    loads: Arc<std::sync::atomic::AtomicUsize>,
    /// Set: every read of one account fails.
    unreadable: Arc<std::sync::atomic::AtomicBool>,
    broker: Broker,
    /// What the broker reads its providers and policy from; a test may swap it (a reload).
    tuning: Arc<Reloadable>,
    _dir: tempfile::TempDir,
}

/// Providers and a policy that a test replaces, as a reload replaces the daemon's.
struct Reloadable(arc_swap::ArcSwap<Fixed>);

impl Reloadable {
    fn set(&self, providers: Vec<Arc<Provider>>, policy: RefreshPolicy) {
        self.0.store(Fixed::new(providers, policy));
    }
}

impl Tuning for Reloadable {
    fn policy(&self) -> RefreshPolicy {
        self.0.load().policy()
    }

    fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.0.load().provider(name)
    }
}

/// The real store, whose writes fail while `full` is set.
#[derive(Debug)]
struct FillableDisk {
    store: Arc<SledStore>,
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Reads of one account (`load`) so far.
    loads: Arc<std::sync::atomic::AtomicUsize>,
    /// Reads of one account fail while set.
    unreadable: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FillableDisk {
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
        self.store.load_all()
    }
    fn write(&self, changes: &[store::Change]) -> Result<(), StoreError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                operation: "journal write",
                cause: Arc::new(std::io::Error::from_raw_os_error(28)),
            });
        }
        self.store.write(changes)
    }
    fn rekey(&self) -> Result<usize, StoreError> {
        self.store.rekey()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
    fn load(&self, name: &AccountName) -> Result<Option<AccountRecord>, StoreError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.unreadable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Engine {
                operation: "read",
                reason: "the disk is gone".into(),
            });
        }
        self.store.load(name)
    }
    fn reads_back(&self) -> Option<usize> {
        self.store.reads_back()
    }
}

fn name(text: &str) -> AccountName {
    text.parse().unwrap()
}

async fn harness() -> Harness {
    harness_with(RefreshPolicy {
        jitter: Duration::ZERO,
        ..RefreshPolicy::default()
    })
    .await
}

async fn harness_with(policy: RefreshPolicy) -> Harness {
    harness_with_random(policy, Arc::new(|| 0.5)).await
}

async fn harness_with_random(policy: RefreshPolicy, random: RandomSource) -> Harness {
    // No memory for tokens: every sweep leaves every token's text to the store, so that each
    // test also proves that serving, refreshing and failing work on tokens read back.
    harness_with_memory(policy, random, 0).await
}

async fn harness_with_memory(
    policy: RefreshPolicy,
    random: RandomSource,
    token_memory: usize,
) -> Harness {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SledStore::open(&store::Config {
            key_file: dir.path().join("store").join("store-key"),
            dir: dir.path().join("store"),
            backend: store::Backend::Sled { token_memory },
        })
        .unwrap(),
    );
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + START);
    let provider = Provider::new(fake.provider_config("fake")).unwrap();
    let disk_full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let unreadable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let disk = FillableDisk {
        store: store.clone(),
        full: disk_full.clone(),
        loads: loads.clone(),
        unreadable: unreadable.clone(),
    };
    let tuning = Arc::new(Reloadable(arc_swap::ArcSwap::new(Fixed::new(
        vec![Arc::new(provider)],
        policy,
    ))));
    let broker = Broker::open_with_random(
        Arc::new(disk),
        tuning.clone(),
        Arc::new(clock.clone()),
        4,
        TaskTracker::new(),
        random,
    )
    .unwrap();
    Harness {
        fake,
        clock,
        store,
        disk_full,
        loads,
        unreadable,
        broker,
        tuning,
        _dir: dir,
    }
}

impl Harness {
    /// Imports account `a` with a 4-hour token; one token call.
    async fn import(&self) -> String {
        let refresh = self.fake.grant("a");
        self.broker
            .import(name("a"), "fake", RefreshToken::new(&refresh))
            .await
            .unwrap();
        refresh
    }

    /// Seeds `acct-000`, `acct-001`, … (no token yet; the next sweep fetches them).
    async fn seed_accounts(&self, count: usize) {
        for index in 0..count {
            let label = format!("acct-{index:03}");
            self.broker
                .seed(
                    name(&label),
                    "fake",
                    RefreshToken::new(self.fake.grant(&label)),
                )
                .await
                .unwrap();
        }
    }

    async fn sweep(&self) {
        for handle in self.broker.sweep() {
            handle.await.unwrap();
        }
    }

    /// Another broker on the same store and clock, with one provider `name` at `endpoints`.
    fn second_broker(
        &self,
        name: &str,
        endpoints: crate::provider::Endpoints,
        tasks: TaskTracker,
    ) -> Broker {
        let mut config = self.fake.provider_config(name);
        config.endpoints = crate::provider::EndpointSource::Fixed(endpoints);
        Broker::open_with_random(
            self.store.clone(),
            Fixed::new(
                vec![Arc::new(Provider::new(config).unwrap())],
                RefreshPolicy::default(),
            ),
            Arc::new(self.clock.clone()),
            1,
            tasks,
            Arc::new(|| 0.5),
        )
        .unwrap()
    }

    fn stored_refresh_token(&self) -> String {
        let records = self.store.load_all().unwrap();
        records[0].refresh_token.expose().to_owned()
    }

    fn status(&self) -> Status {
        self.broker.account(&name("a")).unwrap().status
    }
}

#[tokio::test]
async fn a_fresh_token_is_served_from_memory() {
    let h = harness().await;
    h.import().await;
    assert_eq!(h.fake.token_calls(), 1);
    for _ in 0..5 {
        let served = h.broker.token(&name("a"), None).await.unwrap();
        assert_eq!(
            served.token.access_token.expose(),
            h.fake.issued_access_tokens()[0]
        );
        assert_eq!(served.expires_in, HOUR * 4);
    }
    assert_eq!(h.fake.token_calls(), 1);
}

/// A provider that says how long its refresh tokens last (GitHub, Box): the grant's end is
/// kept with the account, stored, and moved on by each refresh that says so again; a
/// rotated refresh token without it has an end no one knows.
#[tokio::test]
async fn the_refresh_tokens_own_expiry_is_kept_when_the_provider_says_it() {
    let h = harness().await;
    let half_a_year = Duration::from_secs(15_897_600);
    h.fake
        .set_refresh_token_expires_in(Some(serde_json::json!(half_a_year.as_secs())));
    h.import().await;
    let grant_ends = |h: &Harness| {
        h.broker
            .account(&name("a"))
            .unwrap()
            .refresh_token_expires_at
    };
    assert_eq!(grant_ends(&h), Some(h.clock.now() + half_a_year));
    let stored = h.store.load_all().unwrap();
    assert_eq!(stored[0].refresh_token_expires_at, grant_ends(&h), "stored");

    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2);
    assert_eq!(
        grant_ends(&h),
        Some(h.clock.now() + half_a_year),
        "moved on"
    );

    // Not said again with a rotated refresh token: unknown.
    h.fake.set_refresh_token_expires_in(None);
    h.fake.set_rotation(true);
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 3);
    assert_eq!(grant_ends(&h), None);
}

#[tokio::test]
async fn the_sweep_refreshes_ahead_of_expiry_and_not_before() {
    let h = harness().await;
    h.import().await;
    // Due at min(ahead 1h, 4h/2) before expiry: 3 h after issue.
    h.clock.advance(HOUR * 3 - Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 1, "not yet due");
    h.clock.advance(Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2, "due");
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(
        served.token.access_token.expose(),
        h.fake.issued_access_tokens()[1]
    );
    assert_eq!(served.expires_in, HOUR * 4);
}

#[tokio::test]
async fn a_machine_that_slept_past_expiry_catches_up_on_the_next_tick() {
    let h = harness().await;
    h.import().await;
    h.clock.advance(HOUR * 9); // suspended through two expiries
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2);
    assert_eq!(
        h.broker.token(&name("a"), None).await.unwrap().expires_in,
        HOUR * 4
    );
}

#[tokio::test]
async fn every_served_token_has_at_least_min_valid_left() {
    let h = harness().await;
    h.import().await;
    h.clock.advance(HOUR * 4 - Duration::from_secs(120));
    // Two minutes left: fine by default (60 s), not for a caller that wants five.
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(served.expires_in, Duration::from_secs(120));
    assert_eq!(h.fake.token_calls(), 1);
    let served = h
        .broker
        .token(&name("a"), Some(Duration::from_secs(300)))
        .await
        .unwrap();
    assert!(served.expires_in >= Duration::from_secs(300));
    assert_eq!(h.fake.token_calls(), 2);
    // After a wall-clock jump past expiry the token is refreshed, never served expired.
    h.clock.advance(HOUR * 5);
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(served.expires_in, HOUR * 4);
    assert_eq!(h.fake.token_calls(), 3);
}

#[tokio::test]
async fn min_valid_beyond_the_lifetime_is_refused_without_a_call() {
    let h = harness().await;
    h.import().await;
    let error = h
        .broker
        .token(&name("a"), Some(HOUR * 5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::MinValidTooLarge {
                lifetime: 14400,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(h.fake.token_calls(), 1);
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let h = harness().await;
    h.import().await;
    h.clock.advance(HOUR * 4); // expired: every caller needs a refresh
    h.fake.push([Reply::Delay(
        Duration::from_millis(200),
        Box::new(Reply::Issue),
    )]);
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let broker = h.broker.clone();
            tokio::spawn(async move {
                broker
                    .token(&name("a"), None)
                    .await
                    .map(|t| t.token.access_token.expose().to_owned())
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert_eq!(
        h.fake.token_calls(),
        2,
        "one import call and one shared refresh"
    );
    let fresh = &h.fake.issued_access_tokens()[1];
    assert!(tokens.iter().all(|t| t == fresh));
}

#[tokio::test]
async fn concurrent_callers_share_one_failure_too() {
    let h = harness().await;
    h.import().await;
    h.clock.advance(HOUR * 4);
    h.fake.push([Reply::Delay(
        Duration::from_millis(200),
        Box::new(Reply::oauth_error(503, "temporarily_unavailable", "")),
    )]);
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let broker = h.broker.clone();
            tokio::spawn(async move { broker.token(&name("a"), None).await })
        })
        .collect();
    for caller in callers {
        assert!(matches!(
            caller.await.unwrap(),
            Err(BrokerError::Unavailable { .. })
        ));
    }
    assert_eq!(
        h.fake.token_calls(),
        2,
        "the failure is shared, not retried by every waiter"
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_before_the_new_token_is_served() {
    let h = harness().await;
    h.fake.set_rotation(true);
    let original = h.import().await;
    let after_import = h.stored_refresh_token();
    assert_ne!(after_import, original, "the import's rotation is stored");
    assert!(h.fake.is_valid(&after_import));
    h.clock.advance(HOUR * 4);
    let served = h.broker.token(&name("a"), None).await.unwrap();
    let stored = h.stored_refresh_token();
    assert_ne!(stored, after_import);
    assert!(
        h.fake.is_valid(&stored),
        "the store holds the one valid refresh token"
    );
    assert_eq!(
        served.token.access_token.expose(),
        h.fake.issued_access_tokens()[1]
    );
}

#[tokio::test]
async fn a_response_without_a_refresh_token_keeps_the_stored_one_byte_for_byte() {
    let h = harness().await;
    let original = h.import().await;
    h.clock.advance(HOUR * 4);
    h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(h.fake.token_calls(), 2);
    assert_eq!(h.stored_refresh_token().as_bytes(), original.as_bytes());
    let sent: Vec<_> = h
        .fake
        .requests()
        .iter()
        .map(|r| r.form["refresh_token"].clone())
        .collect();
    assert_eq!(sent, vec![original.clone(), original]);
}

#[tokio::test]
async fn invalid_grant_marks_needs_reauth_and_stops_calling() {
    let h = harness().await;
    h.import().await;
    h.fake.push([Reply::oauth_error(
        400,
        "invalid_grant",
        "refresh token is invalid or revoked",
    )]);
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert_eq!(h.status(), Status::NeedsReauth);
    assert!(h
        .broker
        .account(&name("a"))
        .unwrap()
        .last_error
        .unwrap()
        .contains("invalid or revoked"));
    for _ in 0..3 {
        h.clock.advance(HOUR);
        h.sweep().await;
        assert!(matches!(
            h.broker.token(&name("a"), None).await,
            Err(BrokerError::NeedsReauth(_))
        ));
        assert!(matches!(
            h.broker.refresh_now(&name("a")).await,
            Err(BrokerError::NeedsReauth(_))
        ));
    }
    assert_eq!(h.fake.token_calls(), 2);
    assert!(
        h.store.load_all().unwrap()[0].needs_reauth,
        "the status survives a restart"
    );
}

#[tokio::test]
async fn a_refused_client_is_a_configuration_error_retried_slowly() {
    let h = harness().await;
    h.import().await;
    h.fake.push([Reply::Json(
        400,
        json!({"error": "invalid_client: Invalid client_id or client_secret"}),
        vec![],
    )]);
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    let view = h.broker.account(&name("a")).unwrap();
    assert_eq!(
        view.status,
        Status::Degraded,
        "not needs_reauth: the grant is not known to be bad"
    );
    assert!(view.last_error.unwrap().contains("client"));
    // The old token is still served, and no retry happens before backoff_max.
    assert!(h.broker.token(&name("a"), None).await.is_ok());
    h.clock.advance(Duration::from_secs(299));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2);
    h.clock.advance(Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 3);
    assert_eq!(h.status(), Status::Active);
}

#[tokio::test]
async fn retry_after_is_honoured_from_the_header_in_both_forms_and_from_json() {
    for reply in [
        Reply::Json(429, json!({}), vec![("retry-after", "30".into())]),
        // The HTTP-date form, measured against the answer's own Date (our clock is elsewhere).
        Reply::Json(
            503,
            json!({}),
            vec![
                ("date", "Wed, 21 Oct 2026 07:27:00 GMT".into()),
                ("retry-after", "Wed, 21 Oct 2026 07:27:30 GMT".into()),
            ],
        ),
        Reply::Json(
            429,
            json!({"error": {"reason": {".tag": "too_many_requests"}, "retry_after": 30}}),
            vec![],
        ),
    ] {
        let h = harness().await;
        h.import().await;
        h.fake.push([reply]);
        h.clock.advance(HOUR * 4); // expired, so callers need a refresh
        let error = h.broker.token(&name("a"), None).await.unwrap_err();
        assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
        h.clock.advance(Duration::from_secs(29));
        h.sweep().await;
        assert!(h.broker.token(&name("a"), None).await.is_err());
        assert!(
            h.broker.refresh_now(&name("a")).await.is_err(),
            "not even an admin may call early"
        );
        assert_eq!(
            h.fake.token_calls(),
            2,
            "no call before Retry-After elapsed"
        );
        h.clock.advance(Duration::from_secs(1));
        assert!(h.broker.token(&name("a"), None).await.is_ok());
        assert_eq!(h.fake.token_calls(), 3);
    }
}

#[tokio::test]
async fn outages_degrade_serve_the_old_token_and_recover() {
    let h = harness().await;
    h.import().await;
    let old = h.fake.issued_access_tokens()[0].clone();
    h.fake
        .push((0..3).map(|_| Reply::Raw(503, b"busy".to_vec())));
    h.clock.advance(HOUR * 3);
    for attempt in 1..=3 {
        h.sweep().await;
        assert_eq!(h.fake.token_calls(), 1 + attempt);
        assert_eq!(h.status(), Status::Degraded);
        assert_eq!(
            h.broker
                .token(&name("a"), None)
                .await
                .unwrap()
                .token
                .access_token
                .expose(),
            old
        );
        h.clock.advance(Duration::from_secs(10)); // past any backoff of 1, 2, 4 s (capped jitter 0.5)
    }
    h.sweep().await;
    assert_eq!(h.status(), Status::Active);
    assert_ne!(
        h.broker
            .token(&name("a"), None)
            .await
            .unwrap()
            .token
            .access_token
            .expose(),
        old
    );
}

#[tokio::test]
async fn hostile_answers_keep_the_old_token_and_bounded_time() {
    let big = vec![b'x'; 1024 * 1024];
    let trickle = Reply::Trickle {
        chunk: b"{".to_vec(),
        every: Duration::from_millis(100),
        count: 100,
    };
    let replies = [
        Reply::Raw(200, b"<html>garbage".to_vec()),
        Reply::Raw(200, big),
        Reply::Hang,
        trickle,
        Reply::Json(200, json!({"access_token": "bad token\r\nX: y"}), vec![]),
    ];
    for reply in replies {
        let h = harness().await;
        h.import().await;
        let old = h.fake.issued_access_tokens()[0].clone();
        h.fake.push([reply.clone()]);
        h.clock.advance(HOUR * 3);
        let started = tokio::time::Instant::now();
        h.sweep().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{reply:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(h.status(), Status::Degraded, "{reply:?}");
        assert_eq!(
            h.broker
                .token(&name("a"), None)
                .await
                .unwrap()
                .token
                .access_token
                .expose(),
            old,
            "{reply:?}"
        );
    }
}

#[tokio::test]
async fn import_of_a_refused_grant_stores_nothing_and_keeps_the_old_one() {
    let h = harness().await;
    let original = h.import().await;
    let error = h
        .broker
        .import(name("a"), "fake", RefreshToken::new("not-a-valid-grant"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::GrantRejected(_)), "{error}");
    assert_eq!(h.stored_refresh_token(), original);
    assert!(matches!(
        h.broker
            .import(name("b"), "nope", RefreshToken::new("x"))
            .await,
        Err(BrokerError::UnknownProvider(_))
    ));
    assert_eq!(h.store.load_all().unwrap().len(), 1);
}

#[tokio::test]
async fn a_rejected_token_forces_one_refresh_per_thirty_seconds() {
    let h = harness().await;
    h.import().await;
    let first = AccessToken::new(h.fake.issued_access_tokens()[0].clone());
    let served = h.broker.reject(&name("a"), &first).await.unwrap();
    assert_ne!(served.token.access_token, first);
    assert_eq!(h.fake.token_calls(), 2);
    // Presenting the old token again gets the current one without a call.
    assert_eq!(
        h.broker
            .reject(&name("a"), &first)
            .await
            .unwrap()
            .token
            .access_token,
        served.token.access_token
    );
    // Rejecting the new one within 30 s does not call either.
    assert_eq!(
        h.broker
            .reject(&name("a"), &served.token.access_token)
            .await
            .unwrap()
            .token
            .access_token,
        served.token.access_token
    );
    assert_eq!(h.fake.token_calls(), 2);
    h.clock.advance(REJECTED_REFRESH_INTERVAL);
    assert_ne!(
        h.broker
            .reject(&name("a"), &served.token.access_token)
            .await
            .unwrap()
            .token
            .access_token,
        served.token.access_token
    );
    assert_eq!(h.fake.token_calls(), 3);
}

#[tokio::test]
async fn accounts_survive_a_reopen_and_removal_is_durable() {
    let h = harness().await;
    h.import().await;
    h.broker
        .seed(name("b"), "fake", RefreshToken::new(h.fake.grant("b")))
        .await
        .unwrap();
    assert!(
        !h.broker
            .seed(name("b"), "fake", RefreshToken::new("other"))
            .await
            .unwrap(),
        "seeding never overwrites"
    );
    h.broker.remove(&name("a"), false).await.unwrap();
    let names: Vec<_> = h
        .store
        .load_all()
        .unwrap()
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(names, ["b"]);
    assert!(matches!(
        h.broker.token(&name("a"), None).await,
        Err(BrokerError::UnknownAccount(_))
    ));
    // A seeded account has no token yet; the first sweep fetches one.
    h.sweep().await;
    assert!(h.broker.has_valid_token(&name("b")));
}

#[tokio::test]
async fn refreshes_respect_max_concurrent_and_show_refreshing() {
    let h = harness().await; // max_concurrent 4
    h.seed_accounts(8).await;
    h.fake
        .push((0..8).map(|_| Reply::Delay(Duration::from_millis(300), Box::new(Reply::Issue))));
    let handles = h.broker.sweep();
    h.fake.wait_for_calls(4, Duration::from_secs(5)).await;
    let statuses: Vec<Status> = h.broker.accounts().iter().map(|a| a.status).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == Status::Refreshing)
            .count(),
        8,
        "all eight are refreshing: {statuses:?}"
    );
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(h.fake.token_calls(), 8);
    assert_eq!(
        h.fake.max_in_flight(),
        4,
        "never more than max_concurrent at the provider"
    );
    assert!(h
        .broker
        .accounts()
        .iter()
        .all(|a| a.status == Status::Active));
}

#[tokio::test]
async fn an_expired_state_is_refused_without_a_token_call() {
    let h = harness().await;
    let callback: url::Url = "http://127.0.0.1:8765/oauth/callback".parse().unwrap();
    let start_base: url::Url = "http://127.0.0.1:8765/oauth/start/".parse().unwrap();
    let endpoints = crate::provider::Endpoints {
        token: h.fake.token_url().parse().unwrap(),
        authorize: Some(h.fake.authorize_url().parse().unwrap()),
        revoke: None,
        device: None,
    };
    let broker = h.second_broker("web", endpoints, TaskTracker::new());
    let started = broker
        .begin_connect(
            name("late"),
            "web",
            ConnectMode::Redirect,
            &callback,
            &start_base,
        )
        .await
        .unwrap();
    let authorize = broker.oauth_start(&started.ticket).await.unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    h.clock.advance(FLOW_LIFETIME + Duration::from_secs(1));
    let late = Callback {
        code: Some(crate::secret::AuthorizationCode::new("code")),
        state: Some(state),
        ..Callback::default()
    };
    assert!(matches!(
        broker.oauth_callback(late).await,
        Err(ConnectError::BadState)
    ));
    assert_eq!(h.fake.token_calls(), 0);
    assert!(broker.accounts().is_empty());
    // An unused start ticket expires the same way.
    let started = broker
        .begin_connect(
            name("later"),
            "web",
            ConnectMode::Redirect,
            &callback,
            &start_base,
        )
        .await
        .unwrap();
    h.clock.advance(FLOW_LIFETIME);
    assert!(matches!(
        broker.oauth_start(&started.ticket).await,
        Err(ConnectError::UnknownTicket)
    ));
}

#[tokio::test]
async fn a_seeded_account_without_a_token_gets_one_valid_by_its_own_lifetime() {
    let h = harness().await;
    h.fake.set_expires_in(json!(59)); // shorter than the default min_valid of 60 s
    h.broker
        .seed(name("new"), "fake", RefreshToken::new(h.fake.grant("new")))
        .await
        .unwrap();
    let served = h.broker.token(&name("new"), None).await.unwrap();
    assert_eq!(served.expires_in, Duration::from_secs(59));
    assert_eq!(h.fake.token_calls(), 1);
}

#[tokio::test]
async fn tickets_and_states_stay_out_of_debug_output() {
    let h = harness().await;
    let callback: url::Url = "http://127.0.0.1:8765/oauth/callback".parse().unwrap();
    let start_base: url::Url = "http://127.0.0.1:8765/oauth/start/".parse().unwrap();
    let started = h
        .broker
        .begin_connect(
            name("web"),
            "fake",
            ConnectMode::Redirect,
            &callback,
            &start_base,
        )
        .await
        .unwrap();
    let shown = format!("{started:?} {:?}", h.broker.inner.flows.lock().unwrap());
    assert!(!shown.contains(&started.ticket), "{shown}");
    let answer = Callback {
        state: Some("state-SECRET-value".into()),
        code: Some(crate::secret::AuthorizationCode::new("code-SECRET")),
        ..Callback::default()
    };
    let shown = format!("{answer:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    let body = crate::api::types::ConnectBody {
        ticket: started.ticket.clone(),
        start_url: Some(format!("{start_base}{}", started.ticket)),
        ..Default::default()
    };
    assert!(!format!("{body:?}").contains(&started.ticket));
}

#[tokio::test]
async fn a_reconfigured_policy_reschedules_accounts_on_their_regular_schedule() {
    let h = harness().await;
    h.import().await;
    // Ahead 1 h by default: due 3 h after issue. With ahead 2 h, due after 2 h.
    let providers = vec![Arc::new(
        Provider::new(h.fake.provider_config("fake")).unwrap(),
    )];
    h.tuning.set(
        providers,
        RefreshPolicy {
            ahead: HOUR * 2,
            jitter: Duration::ZERO,
            ..RefreshPolicy::default()
        },
    );
    h.broker.retune();
    h.clock.advance(HOUR * 2 - Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 1, "not yet due");
    h.clock.advance(Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2, "due under the new margin");

    // A provider dropped by a reload: the token is still served, the next refresh fails as
    // a configuration error without a call.
    h.tuning.set(vec![], RefreshPolicy::default());
    h.broker.retune();
    assert!(h.broker.token(&name("a"), None).await.is_ok());
    h.clock.advance(HOUR * 4);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2);
    assert_eq!(h.status(), Status::Degraded);
}

/// Records what the broker tells its observers.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Observer for Recorder {
    fn refresh_finished(&self, account: &AccountName, outcome: Outcome, _took: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", account.as_str(), outcome.as_str()));
    }

    fn token_changed(&self, account: &AccountName) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} new token", account.as_str()));
    }
}

#[tokio::test]
async fn observers_hear_of_refreshes_and_new_tokens_but_not_of_failures_as_tokens() {
    let h = harness().await;
    let recorder = Arc::new(Recorder::default());
    h.broker.add_observer(recorder.clone());
    h.import().await;
    h.broker.refresh_now(&name("a")).await.unwrap();
    h.fake.push([Reply::Json(503, json!({}), vec![])]);
    let _ = h.broker.refresh_now(&name("a")).await;
    h.fake
        .push([Reply::Json(400, json!({"error": "invalid_grant"}), vec![])]);
    let _ = h.broker.refresh_now(&name("a")).await;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "a new token",
            "a refreshed",
            "a new token",
            "a transient_failure",
            "a needs_reauth"
        ]
    );
}

#[tokio::test]
async fn a_token_dead_by_the_monotonic_clock_is_not_served_after_the_wall_clock_steps_back() {
    let h = harness().await;
    h.import().await;
    // The wall clock steps back an hour, then four hours pass: by the wall clock the token
    // still has an hour, but the provider issued it four hours ago and it is dead.
    h.clock.set(h.clock.now() - HOUR);
    h.clock.advance(HOUR * 4);
    h.fake
        .push([Reply::oauth_error(503, "temporarily_unavailable", "down")]);
    let served = h.broker.token(&name("a"), None).await;
    assert!(
        matches!(served, Err(BrokerError::Unavailable { .. })),
        "served a dead token: {served:?}"
    );
    assert_eq!(h.fake.token_calls(), 2, "it tried to refresh instead");
    assert!(
        !h.broker.token_ready(&name("a"), None),
        "nor is it served from memory"
    );
    assert!(!h.broker.has_valid_token(&name("a")));
}

#[tokio::test]
async fn after_a_backward_step_the_expiry_and_the_refresh_follow_the_monotonic_clock() {
    let h = harness().await;
    h.import().await;
    h.clock.set(h.clock.now() - HOUR);
    h.clock.advance(Duration::from_secs(60));
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(served.expires_in, HOUR * 4 - Duration::from_secs(60));
    h.sweep().await;
    let view = h.broker.account(&name("a")).unwrap();
    assert_eq!(
        view.expires_at,
        Some(h.clock.now() + HOUR * 4 - Duration::from_secs(60)),
        "the wall-clock expiry was moved back with the clock"
    );
    // Due 3 h after issue by the monotonic clock, though the wall clock says 2 h.
    h.clock.advance(HOUR * 3 - Duration::from_secs(60));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2, "refreshed on time");
}

#[tokio::test]
async fn an_answer_without_a_lifetime_is_not_served_and_is_retried_after_a_backoff() {
    let h = harness().await;
    h.fake.set_rotation(true);
    h.fake.set_expires_in(json!(0));
    let grant = h.fake.grant("a");
    h.broker
        .import(name("a"), "fake", RefreshToken::new(&grant))
        .await
        .unwrap();
    h.clock.advance(HOUR * 3);
    h.fake.set_expires_in(json!(-5));
    let answer = h.broker.token(&name("a"), None).await;
    assert!(
        matches!(answer, Err(BrokerError::Unavailable { .. })),
        "{answer:?}"
    );
    assert_eq!(h.fake.token_calls(), 2);
    let view = h.broker.account(&name("a")).unwrap();
    assert_eq!(view.status, Status::Degraded);
    assert!(view.last_error.unwrap().contains("no lifetime"));
    // The rotated grant was kept; no call until the backoff has passed, then a good one.
    assert!(h.fake.is_valid(&h.stored_refresh_token()));
    h.sweep().await;
    assert_eq!(
        h.fake.token_calls(),
        2,
        "backing off, not refreshing every tick"
    );
    h.fake.set_expires_in(json!(3600));
    h.clock.advance(Duration::from_secs(10));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 3);
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(served.expires_in, HOUR);
}

#[tokio::test]
async fn while_the_store_cannot_be_written_scheduled_refreshes_wait_unless_the_token_runs_out() {
    let h = harness().await;
    h.fake.set_rotation(true);
    h.import().await;
    h.disk_full.store(true, std::sync::atomic::Ordering::SeqCst);
    // A forced refresh rotates the grant, which cannot be stored: kept in memory, unsaved.
    h.broker.refresh_now(&name("a")).await.unwrap();
    assert_eq!(h.status(), Status::Degraded);
    assert!(h.broker.store_problem().unwrap().contains("No space left"));
    // Due 3 h after issue, but another rotation would exist only in memory too: held back.
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert_eq!(
        h.fake.token_calls(),
        2,
        "no refresh while the store is full"
    );
    // Within half an `ahead` of expiry, the token must be had: refreshed after all.
    h.clock.advance(HOUR / 2 + Duration::from_secs(1));
    h.sweep().await;
    assert_eq!(
        h.fake.token_calls(),
        3,
        "refreshed before the token runs out"
    );
    // Space comes back: the next sweep stores the newest grant.
    h.disk_full
        .store(false, std::sync::atomic::Ordering::SeqCst);
    h.sweep().await;
    assert_eq!(h.status(), Status::Active);
    assert!(h.broker.store_problem().is_none());
    assert!(h.fake.is_valid(&h.stored_refresh_token()));
}

/// `count` accounts with tokens (one call each, at once), then the clock moved until every
/// one of them is due: a storm, with every unscripted provider answer taking `latency`.
async fn storm(count: usize, latency: Duration) -> Harness {
    let h = harness().await;
    h.seed_accounts(count).await;
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), count);
    h.fake.set_latency(latency);
    h.fake.set_rotation(true);
    h.clock.advance(HOUR * 3 + HOUR / 2);
    h
}

#[tokio::test]
async fn a_storm_of_due_accounts_waits_in_a_queue_not_as_a_task_each() {
    const ACCOUNTS: usize = 300;
    let h = storm(ACCOUNTS, Duration::from_millis(5)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let idle = metrics.num_alive_tasks();
    let handles = h.broker.sweep();
    let mut most = 0;
    h.fake
        .wait_for_calls(ACCOUNTS + 8, Duration::from_secs(10))
        .await;
    while h.fake.token_calls() < 2 * ACCOUNTS - 8 {
        most = most.max(metrics.num_alive_tasks() - idle);
        tokio::task::yield_now().await;
    }
    for handle in handles {
        handle.await.unwrap();
    }
    // The dispatcher, at most 2 × max_concurrent attempts, and the fake's connections.
    assert!(most <= 1 + 2 * 4 + 8, "{most} tasks alive during the storm");
    assert_eq!(
        h.fake.token_calls(),
        2 * ACCOUNTS,
        "exactly one call per account"
    );
    assert_eq!(h.fake.refused_refreshes(), 0);
    assert_eq!(
        h.fake.max_in_flight(),
        4,
        "max_concurrent kept the provider busy"
    );
    let stored = h.store.load_all().unwrap();
    assert!(stored
        .iter()
        .all(|r| h.fake.is_valid(r.refresh_token.expose())));
}

#[tokio::test]
async fn a_caller_that_needs_a_fresher_token_does_not_wait_behind_a_storm() {
    const ACCOUNTS: usize = 300;
    let h = storm(ACCOUNTS, Duration::from_millis(5)).await;
    let handles = h.broker.sweep();
    h.fake
        .wait_for_calls(ACCOUNTS + 8, Duration::from_secs(10))
        .await;
    // The last account in the queue (all expire together, so in name order), asked for
    // more validity than its token has left: a refresh on demand.
    let last = name(&format!("acct-{:03}", ACCOUNTS - 1));
    let served = h.broker.token(&last, Some(HOUR * 3)).await.unwrap();
    let calls_then = h.fake.token_calls();
    assert!(served.expires_in > HOUR * 3);
    assert!(
        calls_then < ACCOUNTS + ACCOUNTS / 2,
        "served after {} of the storm's {ACCOUNTS} calls",
        calls_then - ACCOUNTS
    );
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(
        h.fake.token_calls(),
        2 * ACCOUNTS,
        "the queued refresh of the account refreshed on demand was dropped"
    );
}

#[tokio::test]
async fn a_device_flow_is_a_tracked_task_that_shutdown_ends() {
    let h = harness().await;
    let endpoints = crate::provider::Endpoints {
        token: h.fake.token_url().parse().unwrap(),
        authorize: None,
        revoke: None,
        device: Some(h.fake.device_url().parse().unwrap()),
    };
    let tasks = TaskTracker::new();
    let broker = h.second_broker("tv", endpoints, tasks.clone());
    let unused: url::Url = "http://127.0.0.1:8765/oauth/".parse().unwrap();
    broker
        .begin_connect(name("tv"), "tv", ConnectMode::Device, &unused, &unused)
        .await
        .unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "the device poller runs on the tracker it was given"
    );
    // The user never approves: the poller would wait up to the flow's lifetime.
    let report = broker.shut_down(Duration::from_secs(10)).await;
    assert!(!report.unfinished, "shutdown waited for the device flow");
    assert!(tasks.is_empty());
}

#[tokio::test]
async fn asking_for_more_validity_than_a_fresh_token_has_refreshes_at_most_every_30_s() {
    let h = harness().await;
    h.import().await;
    assert_eq!(h.fake.token_calls(), 1);
    // A token of 4 h, asked for with 4 h - 1 s left: fine at once, not two seconds later.
    let greedy = Some(HOUR * 4 - Duration::from_secs(1));
    h.broker.token(&name("a"), greedy).await.unwrap();
    h.clock.advance(Duration::from_secs(2));
    for _ in 0..12 {
        let answer = h.broker.token(&name("a"), greedy).await;
        assert!(
            matches!(&answer, Err(BrokerError::Unavailable { retry_after, .. }) if *retry_after == Duration::from_secs(28)),
            "{answer:?}"
        );
    }
    assert_eq!(h.fake.token_calls(), 1, "no refresh per request");
    // The default validity is still served meanwhile.
    h.broker.token(&name("a"), None).await.unwrap();
    h.clock.advance(REJECTED_REFRESH_INTERVAL);
    h.broker.token(&name("a"), greedy).await.unwrap();
    assert_eq!(
        h.fake.token_calls(),
        2,
        "once the floor has passed, refreshed"
    );
}

/// Another broker's refresh of a due account reaches this one (a shared store's change feed)
/// while its own attempt waits for a provider permit: the attempt, once it has the permit and
/// the claim, finds a fresh token and makes no call (issue #16: one upstream call per
/// account per due time across the group; a 3-broker storm made 10,008 calls for 10,000).
#[tokio::test]
async fn a_token_adopted_while_an_attempt_waits_for_a_permit_settles_it_without_a_call() {
    for trigger in ["schedule", "caller"] {
        let h = harness().await;
        h.import().await;
        h.clock.advance(HOUR * 3 + Duration::from_secs(60));
        // Every permit taken: the attempt waits for one, as behind other refreshes.
        let permits = h
            .broker
            .inner
            .permits
            .clone()
            .acquire_many_owned(4)
            .await
            .unwrap();
        let slot = h.broker.slot(&name("a")).unwrap();
        let attempts = slot.state().attempts;
        let caller = h.broker.clone();
        let waiting = if trigger == "schedule" {
            let handles = h.broker.sweep();
            tokio::spawn(async move {
                for handle in handles {
                    handle.await.unwrap();
                }
            })
        } else {
            // More validity than the held token has (59 min): a refresh is wanted.
            tokio::spawn(async move {
                caller.token(&name("a"), Some(HOUR * 2)).await.unwrap();
            })
        };
        // The attempt has its flight lock and waits for a permit (the dispatcher took it off
        // the queue; a caller's attempt holds the lock).
        let mut polls = 0;
        while slot.state().queued || slot.flight.try_lock().is_ok() {
            polls += 1;
            assert!(polls < 1000, "{trigger}: the attempt never started");
            tokio::task::yield_now().await;
        }
        let mut newer = slot.state().record.clone();
        newer.refresh_token = RefreshToken::new(h.fake.grant("a"));
        newer.token = Some(IssuedToken::new(
            AccessToken::new("from-another-broker"),
            "Bearer".into(),
            h.clock.now() + HOUR * 4,
            HOUR * 4,
            None,
        ));
        h.broker.adopt(Stored::Put(newer));
        drop(permits);
        waiting.await.unwrap();
        assert_eq!(h.fake.token_calls(), 1, "{trigger}: only the import's call");
        assert!(
            slot.state().attempts > attempts,
            "{trigger}: the attempt ran"
        );
        let served = h.broker.token(&name("a"), None).await.unwrap();
        assert_eq!(served.token.access_token.expose(), "from-another-broker");
    }
}

/// Accounts due in the same second are refreshed in an order of the broker's own (its random
/// source), not by name: brokers sharing a store find the same accounts due, and in one
/// order they would all reach for the same account at once (a 3-broker storm sustained
/// 748 refreshes a second in name order, 834 in each broker's own).
#[tokio::test]
async fn accounts_due_in_the_same_second_are_refreshed_in_the_brokers_own_order() {
    let drawn = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let random: RandomSource = Arc::new(move || {
        let n = drawn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ((n + 1) * 7919 % 1000) as f64 / 1000.0
    });
    let policy = RefreshPolicy {
        jitter: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let h = harness_with_random(policy, random).await;
    h.seed_accounts(20).await;
    h.sweep().await;
    let order: Vec<String> = h
        .fake
        .requests()
        .iter()
        .filter_map(|r| r.form.get("refresh_token").cloned())
        .collect();
    assert_eq!(order.len(), 20);
    let by_name: Vec<String> = (0..20)
        .map(|i| h.fake.grant(&format!("acct-{i:03}")))
        .collect();
    assert_ne!(
        order[..4].iter().collect::<std::collections::BTreeSet<_>>(),
        by_name[..4].iter().collect(),
        "not the first names first"
    );
    // Name order from the broker's starting point on, wrapping round: the store is written
    // in key order.
    let start = by_name.iter().position(|grant| grant == &order[0]).unwrap();
    let mut rotated = by_name.clone();
    rotated.rotate_left(start);
    assert_eq!(order, rotated, "name order from where this broker starts");
}

/// A failure's backoff is stored with the account: a broker opened on the store afterwards
/// (a restart, or another broker sharing it) keeps to the provider's `Retry-After` rather
/// than calling at once.
#[tokio::test]
async fn a_stored_failures_retry_after_holds_for_a_broker_opened_afterwards() {
    let h = harness().await;
    h.import().await;
    h.fake.push([Reply::Json(
        429,
        json!({"error": "rate_limited"}),
        vec![("Retry-After", "600".into())],
    )]);
    h.clock.advance(HOUR * 3 + Duration::from_secs(60));
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 2);
    let stored = h.store.load_all().unwrap();
    assert_eq!(
        stored[0].retry_at,
        Some(h.clock.now() + Duration::from_secs(600))
    );

    h.clock.advance(Duration::from_secs(60));
    let reopened = Broker::open_with_random(
        h.store.clone(),
        h.tuning.clone(),
        Arc::new(h.clock.clone()),
        4,
        TaskTracker::new(),
        Arc::new(|| 0.5),
    )
    .unwrap();
    for handle in reopened.sweep() {
        handle.await.unwrap();
    }
    assert_eq!(h.fake.token_calls(), 2, "still within Retry-After");
    assert_eq!(
        reopened.account(&name("a")).unwrap().status,
        Status::Degraded
    );
    h.clock.advance(Duration::from_secs(540));
    for handle in reopened.sweep() {
        handle.await.unwrap();
    }
    assert_eq!(h.fake.token_calls(), 3, "after it, refreshed");
    let stored = h.store.load_all().unwrap();
    assert_eq!(stored[0].retry_at, None, "cleared by the success");
}

/// Whether the broker holds the account's token text in memory (without asking for it,
/// which would keep the next one there).
fn in_memory(h: &Harness, account: &str) -> bool {
    in_memory_of(&h.broker, account)
}

fn in_memory_of(broker: &Broker, account: &str) -> bool {
    let slot = broker.slot(&name(account)).unwrap();
    let state = slot.state();
    state.record.token.is_some() && !state.stored_only()
}

/// The token `h`'s broker serves for `account`.
async fn issued(h: &Harness, account: &str) -> Result<String, BrokerError> {
    h.broker
        .token(&name(account), None)
        .await
        .map(|served| served.token.access_token.expose().to_owned())
}

fn loads(h: &Harness) -> usize {
    h.loads.load(std::sync::atomic::Ordering::SeqCst)
}

/// Token texts beyond the memory for them are left to the store at each sweep, those not
/// asked for since the sweep before first, and read back, once, when asked for; a refresh
/// keeps a token where its predecessor was.
#[tokio::test]
async fn tokens_beyond_their_memory_are_left_to_the_store_and_read_back_when_asked() {
    let policy = RefreshPolicy {
        jitter: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    // Room for two 100-byte tokens.
    let h = harness_with_memory(policy, Arc::new(|| 0.5), 250).await;
    h.fake.set_access_token_length(100);
    for account in ["a", "b", "c"] {
        let refresh = h.fake.grant(account);
        h.broker
            .import(name(account), "fake", RefreshToken::new(&refresh))
            .await
            .unwrap();
    }
    assert!(["a", "b", "c"].iter().all(|a| in_memory(&h, a)));
    let first = h.fake.issued_access_tokens();
    assert_eq!(issued(&h, "b").await.unwrap(), first[1]);

    // One too many: the first idle one (by name) goes to the store.
    h.sweep().await;
    let held = |h: &Harness| {
        ["a", "b", "c"]
            .into_iter()
            .filter(|a| in_memory(h, a))
            .collect::<Vec<_>>()
    };
    assert_eq!(held(&h), ["b", "c"]);
    assert!(h.broker.token_ready(&name("a"), None), "ready all the same");
    assert_eq!(h.broker.account(&name("a")).unwrap().status, Status::Active);
    assert_eq!(loads(&h), 0, "nothing but a caller reads it back");

    // Asked for: read back once, served without a refresh, then from memory.
    for _ in 0..3 {
        assert_eq!(issued(&h, "a").await.unwrap(), first[0]);
    }
    assert_eq!(loads(&h), 1, "read back once");
    assert_eq!(h.fake.token_calls(), 3, "no refresh to serve it");
    assert_eq!(held(&h), ["a", "b", "c"]);
    // Now `b` is the one nobody asked for lately.
    h.sweep().await;
    assert_eq!(held(&h), ["a", "c"]);

    // Refreshed: each new token is kept where its predecessor was.
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 6);
    assert_eq!(held(&h), ["a", "c"], "b's new token is the store's");
    let refreshed = h.fake.issued_access_tokens()[3..].to_vec();
    assert!(
        refreshed.contains(&issued(&h, "b").await.unwrap()),
        "b's new token"
    );
    assert_eq!(loads(&h), 2);

    // A broker opened on the store keeps texts while they fit, in the store's order.
    let endpoints = crate::provider::Endpoints {
        token: h.fake.token_url().parse().unwrap(),
        authorize: None,
        revoke: None,
        device: None,
    };
    let other = h.second_broker("fake", endpoints, TaskTracker::new());
    assert!(in_memory_of(&other, "a") && in_memory_of(&other, "b"));
    assert!(
        !in_memory_of(&other, "c"),
        "beyond the store's memory for tokens"
    );
    let served = other.token(&name("c"), None).await.unwrap();
    assert_eq!(
        served.token.access_token.expose(),
        issued(&h, "c").await.unwrap(),
        "the token both brokers know"
    );
    assert!(refreshed.contains(&served.token.access_token.expose().to_owned()));
    assert!(in_memory_of(&other, "c"));
}

/// A failed refresh of an account whose token is the store's is stored with that token,
/// read back first: the stored token is never replaced by an empty one. When it cannot be
/// read back, the failure stays in memory and the stored account is left as it was.
#[tokio::test]
async fn a_failure_is_stored_with_the_token_that_was_left_to_the_store() {
    let h = harness().await;
    h.import().await;
    h.clock.advance(HOUR * 3);
    h.sweep().await;
    assert!(!in_memory(&h, "a"));
    let current = h.fake.issued_access_tokens()[1].clone();
    let stored_token = |h: &Harness| {
        let record = h.store.load_all().unwrap().remove(0);
        (
            record.token.map(|t| t.access_token.expose().to_owned()),
            record.last_error,
        )
    };

    h.clock.advance(HOUR * 3);
    h.fake
        .push([Reply::oauth_error(503, "temporarily_unavailable", "down")]);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 3);
    let (token, last_error) = stored_token(&h);
    assert_eq!(token.as_deref(), Some(current.as_str()), "the stored token");
    assert!(last_error.is_some(), "the failure is stored");
    assert_eq!(loads(&h), 1, "read back to store the failure");

    // Left to the store again by the next refresh; then the store cannot be read.
    h.clock.advance(HOUR);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 4);
    assert!(!in_memory(&h, "a"));
    let newest = h.fake.issued_access_tokens()[2].clone();
    h.unreadable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.clock.advance(HOUR * 3);
    h.fake
        .push([Reply::oauth_error(503, "temporarily_unavailable", "down")]);
    h.sweep().await;
    assert_eq!(h.fake.token_calls(), 5);
    assert_eq!(
        stored_token(&h),
        (Some(newest.clone()), None),
        "left as it was"
    );
    assert_eq!(
        h.status(),
        Status::Degraded,
        "the failure is known in memory"
    );
    let refused = h.broker.token(&name("a"), None).await.unwrap_err();
    assert!(
        refused.to_string().contains("store_unavailable"),
        "{refused}"
    );
    h.unreadable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let served = h.broker.token(&name("a"), None).await.unwrap();
    assert_eq!(served.token.access_token.expose(), newest);
}

/// What sinks ask for after a new token: the current one, read back if it is only in the
/// store, and never a refresh.
#[tokio::test]
async fn the_current_token_is_read_back_for_sinks_without_a_refresh() {
    let h = harness().await;
    h.import().await;
    h.sweep().await;
    assert!(!in_memory(&h, "a"), "no memory for tokens in this harness");
    let current = h
        .broker
        .current_token(&name("a"), Some(Duration::ZERO))
        .await
        .unwrap()
        .expect("a valid token");
    assert_eq!(
        current.token.access_token.expose(),
        h.fake.issued_access_tokens()[0]
    );
    assert_eq!(loads(&h), 1);
    assert_eq!(h.fake.token_calls(), 1, "read back, not refreshed");
    // A store that cannot read it back is an error the sinks log, not "no valid token".
    h.sweep().await;
    h.unreadable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let unreadable = h
        .broker
        .current_token(&name("a"), Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        unreadable.to_string().contains("store_unavailable"),
        "{unreadable}"
    );
}
