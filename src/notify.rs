//! Notifications: telling a person when an account needs them, by a command or a signed
//! webhook, once per change of state.
//!
//! The broker tells [`Notifier`] (an observer) what happened, which returns at once; one
//! task ([`run`]) turns happenings into events by each account's state ([`Tracker`], pure)
//! and hands each event to every matching `[[notify]]` entry on a task of its own, retried
//! with backoff for a bounded time. A slow or hanging receiver delays no one else.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::broker::{Broker, Observer, Outcome};
use crate::clock::SharedClock;
use crate::secret::WebhookSecret;
use crate::token::AccountName;

/// Attempts per delivery, and the wait before the first retry (doubled for each next one).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// One attempt (a command's run, a webhook's answer) gets at most this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at most; further ones wait their turn.
const MAX_IN_FLIGHT: usize = 16;
/// Failed refreshes in a row that make an account degraded.
const FAILURES_TO_DEGRADE: u32 = 3;
/// A refresh token that ends within this is told of.
const EXPIRING_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Refresh tokens' ends are looked at on a sweep at most this often.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The provider refused the grant: a person must connect the account again.
    NeedsReauth,
    /// Refreshing has failed three times in a row, or for longer than the token had left.
    Degraded,
    /// Back to a working token after `needs_reauth` or `degraded`.
    Recovered,
    /// A grant was imported or connected.
    Connected,
    /// The account was removed.
    Removed,
    /// The refresh token itself ends within a week (providers that say when: GitHub, Box).
    RefreshTokenExpiring,
}

impl Event {
    /// Every event, in the order the configuration lists them.
    pub const ALL: [Self; 6] = [
        Self::NeedsReauth,
        Self::Degraded,
        Self::Recovered,
        Self::Connected,
        Self::Removed,
        Self::RefreshTokenExpiring,
    ];

    /// The event's name, as configured and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedsReauth => "needs_reauth",
            Self::Degraded => "degraded",
            Self::Recovered => "recovered",
            Self::Connected => "connected",
            Self::Removed => "removed",
            Self::RefreshTokenExpiring => "refresh_token_expiring",
        }
    }

    /// The event named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == name)
    }
}

/// Where an entry's events go.
#[derive(Clone)]
pub enum Target {
    /// A program, run with the event on stdin and in its environment.
    Command(Vec<String>),
    /// A URL the event is POSTed to, signed with the secret when there is one.
    Webhook {
        /// https, or http on loopback.
        url: Url,
        /// Signs the body: `X-Tokenbroker-Signature: sha256=<hex HMAC-SHA256>`.
        secret: Option<WebhookSecret>,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command(command) => f.debug_tuple("Command").field(command).finish(),
            // A webhook's path is often its credential (Slack's, say): the host only.
            Self::Webhook { url, secret } => f
                .debug_struct("Webhook")
                .field("host", &url.host_str().unwrap_or_default())
                .field("secret", secret)
                .finish(),
        }
    }
}

impl Target {
    /// A label for logs and metrics: the program or the URL's host.
    fn label(&self) -> String {
        match self {
            Self::Command(command) => command.first().cloned().unwrap_or_default(),
            Self::Webhook { url, .. } => url.host_str().unwrap_or_default().to_owned(),
        }
    }
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone)]
pub struct Config {
    /// The events it wants (every one when the configuration names none).
    pub events: Vec<Event>,
    /// Glob patterns of the accounts it wants (every one when none).
    pub accounts: Vec<glob::Pattern>,
    /// Where they go.
    pub target: Target,
}

impl Config {
    fn wants(&self, event: Event, account: &AccountName) -> bool {
        self.events.contains(&event)
            && (self.accounts.is_empty()
                || self.accounts.iter().any(|p| p.matches(account.as_str())))
    }
}

/// Where the entries are read from: the configuration in force, which a reload replaces
/// whole (the daemon's runtime).
pub trait Entries: Send + Sync + fmt::Debug {
    /// Every `[[notify]]` entry.
    fn entries(&self) -> Arc<[Config]>;
}

/// What the broker said happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happening {
    /// A refresh attempt ended so.
    Refreshed(Outcome),
    /// A grant was imported or connected.
    Installed,
    /// The account was removed.
    Removed,
}

/// Where an account stands, for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Standing {
    #[default]
    Fine,
    Degraded,
    NeedsReauth,
}

/// The standing and failures in a row of each account in trouble (a healthy account has
/// no entry): the events that changes of state make, never one per attempt.
#[derive(Debug, Default)]
pub struct Tracker {
    accounts: HashMap<AccountName, (Standing, u32)>,
    /// The refresh-token end each account was told of.
    expiring_told: HashMap<AccountName, SystemTime>,
}

impl Tracker {
    /// The events `happening` makes for `account`; `token_gone` tells whether its token has
    /// run out (failing for longer than the token had left is degraded at once).
    pub fn on(
        &mut self,
        account: &AccountName,
        happening: Happening,
        token_gone: bool,
    ) -> Vec<Event> {
        let (was, failures) = self.accounts.get(account).copied().unwrap_or_default();
        let (standing, failures, events) = match happening {
            Happening::Removed => {
                self.accounts.remove(account);
                self.expiring_told.remove(account);
                return vec![Event::Removed];
            }
            Happening::Installed if was == Standing::Fine => {
                (Standing::Fine, 0, vec![Event::Connected])
            }
            Happening::Installed => (Standing::Fine, 0, vec![Event::Connected, Event::Recovered]),
            Happening::Refreshed(Outcome::Refreshed) if was == Standing::Fine => {
                (Standing::Fine, 0, vec![])
            }
            Happening::Refreshed(Outcome::Refreshed) => (Standing::Fine, 0, vec![Event::Recovered]),
            Happening::Refreshed(Outcome::Reauth) if was == Standing::NeedsReauth => {
                (was, failures, vec![])
            }
            Happening::Refreshed(Outcome::Reauth) => {
                (Standing::NeedsReauth, failures, vec![Event::NeedsReauth])
            }
            Happening::Refreshed(Outcome::Transient | Outcome::Configuration) => {
                let failures = failures + 1;
                if was == Standing::Fine && (failures >= FAILURES_TO_DEGRADE || token_gone) {
                    (Standing::Degraded, failures, vec![Event::Degraded])
                } else {
                    (was, failures, vec![])
                }
            }
        };
        // Only accounts in trouble are kept: a healthy one costs nothing, however many.
        if standing == Standing::Fine && failures == 0 {
            self.accounts.remove(account);
        } else {
            self.accounts.insert(account.clone(), (standing, failures));
        }
        events
    }

    /// `refresh_token_expiring`, once for each end an account's refresh token has, when it
    /// ends within a week of `now`.
    pub fn expiry(
        &mut self,
        account: &AccountName,
        ends: SystemTime,
        now: SystemTime,
    ) -> Option<Event> {
        let soon = ends.duration_since(now).unwrap_or_default() <= EXPIRING_WITHIN;
        if !soon || self.expiring_told.get(account) == Some(&ends) {
            return None;
        }
        self.expiring_told.insert(account.clone(), ends);
        Some(Event::RefreshTokenExpiring)
    }
}

/// The observer the broker tells; returns at once.
#[derive(Debug)]
pub struct Notifier {
    happened: mpsc::UnboundedSender<Told>,
}

/// What the broker told.
#[derive(Debug)]
enum Told {
    /// Something happened to an account.
    Account(AccountName, Happening),
    /// A sweep ran at this time.
    Swept(SystemTime),
}

/// The receiving end, for [`run`].
#[derive(Debug)]
pub struct Happenings(mpsc::UnboundedReceiver<Told>);

impl Notifier {
    /// The observer, and the queue [`run`] takes.
    pub fn new() -> (Arc<Self>, Happenings) {
        let (happened, receiver) = mpsc::unbounded_channel();
        (Arc::new(Self { happened }), Happenings(receiver))
    }

    fn tell(&self, account: &AccountName, happening: Happening) {
        // The receiver lives as long as the daemon; after it, no one is told.
        let _ = self
            .happened
            .send(Told::Account(account.clone(), happening));
    }
}

impl Observer for Notifier {
    fn refresh_finished(&self, account: &AccountName, outcome: Outcome, _took: Duration) {
        self.tell(account, Happening::Refreshed(outcome));
    }

    fn grant_installed(&self, account: &AccountName) {
        self.tell(account, Happening::Installed);
    }

    fn account_removed(&self, account: &AccountName) {
        self.tell(account, Happening::Removed);
    }

    fn swept(&self, now: SystemTime) {
        let _ = self.happened.send(Told::Swept(now));
    }
}

/// The JSON an event is sent as; never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// What happened.
    pub event: Event,
    /// To which account.
    pub account: String,
    /// Its provider.
    pub provider: Option<String>,
    /// Its status now.
    pub status: Option<String>,
    /// Why, in words (the last failure).
    pub reason: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// When its current token expires (RFC 3339).
    pub expires_at: Option<String>,
}

/// Counts deliveries: `(event, delivered)`.
pub type Counter = Arc<dyn Fn(Event, bool) + Send + Sync>;

/// Turns happenings into events and delivers them, until `cancel` fires.
pub async fn run(
    mut happenings: Happenings,
    broker: Broker,
    entries: Arc<dyn Entries>,
    clock: SharedClock,
    tasks: TaskTracker,
    count: Counter,
    cancel: CancellationToken,
) {
    let deliveries = Deliveries {
        entries,
        tasks,
        http: crate::provider::outbound_client(ATTEMPT_TIMEOUT),
        count,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        cancel: cancel.clone(),
    };
    let mut tracker = Tracker::default();
    let mut expiry_checked: Option<SystemTime> = None;
    loop {
        let Some(Some(told)) = cancel.run_until_cancelled(happenings.0.recv()).await else {
            return;
        };
        let now = clock.now();
        match told {
            Told::Account(account, happening) => {
                // The account is looked at only when a failure must be weighed or someone
                // may be told: a refresh storm with no `[[notify]]` costs a queue entry each.
                let failed = matches!(
                    happening,
                    Happening::Refreshed(Outcome::Transient | Outcome::Configuration)
                );
                let listening = !deliveries.entries.entries().is_empty();
                let view = if failed || listening {
                    broker.account(&account).ok()
                } else {
                    None
                };
                let token_gone = view
                    .as_ref()
                    .is_none_or(|v| v.expires_at.is_none_or(|at| at <= now));
                let mut events = tracker.on(&account, happening, token_gone);
                // A new grant or refresh may bring a refresh token that ends soon; time
                // passing is caught by the sweeps.
                if happening != Happening::Removed {
                    let ends = view.as_ref().and_then(|v| v.refresh_token_expires_at);
                    events.extend(ends.and_then(|ends| tracker.expiry(&account, ends, now)));
                }
                deliveries.send(&account, view.as_ref(), events, now);
            }
            Told::Swept(at) => {
                let due = expiry_checked.is_none_or(|last| {
                    at.duration_since(last).unwrap_or_default() >= EXPIRY_CHECK_INTERVAL
                });
                if !due {
                    continue;
                }
                expiry_checked = Some(at);
                broker.for_each_account(|view| {
                    let event = view
                        .refresh_token_expires_at
                        .and_then(|ends| tracker.expiry(&view.name, ends, at));
                    if let Some(event) = event {
                        deliveries.send(&view.name, Some(&view), vec![event], now);
                    }
                });
            }
        }
    }
}

/// What delivering needs: the entries in force, where the tasks go, the webhook client,
/// the counter, and the bound on deliveries in flight.
struct Deliveries {
    entries: Arc<dyn Entries>,
    tasks: TaskTracker,
    http: reqwest::Client,
    count: Counter,
    in_flight: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Deliveries {
    /// Hands `account`'s `events` to every entry that wants them, in order, on a task per
    /// entry.
    fn send(
        &self,
        account: &AccountName,
        view: Option<&crate::broker::AccountView>,
        events: Vec<Event>,
        now: SystemTime,
    ) {
        let messages: Vec<Message> = events
            .into_iter()
            .map(|event| Message {
                event,
                account: account.to_string(),
                provider: view.map(|v| v.provider.clone()),
                status: view.map(|v| v.status.as_str().to_owned()),
                reason: view.and_then(|v| v.last_error.clone()),
                at: humantime::format_rfc3339_seconds(now).to_string(),
                expires_at: view
                    .and_then(|v| v.expires_at)
                    .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            })
            .collect();
        for message in &messages {
            tracing::info!(account = %account, event = message.event.as_str(), "account event");
        }
        for entry in self.entries.entries().iter() {
            let wanted: Vec<Message> = messages
                .iter()
                .filter(|message| entry.wants(message.event, account))
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let (target, http, count, in_flight, cancel) = (
                entry.target.clone(),
                self.http.clone(),
                self.count.clone(),
                Arc::clone(&self.in_flight),
                self.cancel.clone(),
            );
            self.tasks.spawn(async move {
                let Ok(_permit) = in_flight.acquire_owned().await else {
                    return;
                };
                for message in wanted {
                    let delivered = tokio::select! {
                        () = cancel.cancelled() => return,
                        delivered = deliver(&message, &target, &http) => delivered,
                    };
                    count(message.event, delivered);
                }
            });
        }
    }
}

/// Delivers `message` to `target`, retrying with backoff; whether it arrived.
async fn deliver(message: &Message, target: &Target, http: &reqwest::Client) -> bool {
    let body = serde_json::to_vec(message).expect("a message of strings always serialises");
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let outcome = match target {
            Target::Command(command) => run_command(command, message, &body).await,
            Target::Webhook { url, secret } => post(http, url, secret.as_ref(), &body).await,
        };
        match outcome {
            Ok(()) => return true,
            Err(error) => tracing::warn!(
                account = message.account,
                event = message.event.as_str(),
                target = target.label(),
                attempt,
                error,
                "notification not delivered"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    tracing::error!(
        account = message.account,
        event = message.event.as_str(),
        target = target.label(),
        "notification given up after {ATTEMPTS} attempts"
    );
    false
}

async fn run_command(command: &[String], message: &Message, body: &[u8]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let (program, arguments) = command.split_first().ok_or("an empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .env("TOKENBROKER_EVENT", message.event.as_str())
        .env("TOKENBROKER_ACCOUNT", &message.account)
        .env(
            "TOKENBROKER_STATUS",
            message.status.as_deref().unwrap_or_default(),
        )
        .env(
            "TOKENBROKER_REASON",
            message.reason.as_deref().unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {program}: {error}"))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin is fine.
            let _ = stdin.write_all(body).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
        Ok(Err(error)) => Err(format!("{program}: {error}")),
        Err(_) => Err(format!(
            "{program} did not finish within {}s; killed",
            ATTEMPT_TIMEOUT.as_secs()
        )),
    }
}

async fn post(
    http: &reqwest::Client,
    url: &Url,
    secret: Option<&WebhookSecret>,
    body: &[u8],
) -> Result<(), String> {
    let mut request = http
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request.header("X-Tokenbroker-Signature", signature(secret, body));
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(format!("the webhook answered HTTP {}", answer.status())),
        // Without the URL, whose path may be a credential.
        Err(error) => Err(format!(
            "the webhook cannot be reached: {}",
            error.without_url()
        )),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &WebhookSecret, body: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> AccountName {
        "a".parse().unwrap()
    }

    fn run(tracker: &mut Tracker, happenings: &[(Happening, bool)]) -> Vec<Event> {
        happenings
            .iter()
            .flat_map(|(happening, gone)| tracker.on(&name(), *happening, *gone))
            .collect()
    }

    use Happening::{Installed, Refreshed, Removed};
    use Outcome::{Reauth, Refreshed as Ok_, Transient};

    #[test]
    fn one_event_per_change_of_state_never_one_per_attempt() {
        let mut tracker = Tracker::default();
        let events = run(
            &mut tracker,
            &[
                (Installed, false),
                (Refreshed(Ok_), false),
                (Refreshed(Ok_), false),
                (Refreshed(Reauth), false),
                (Refreshed(Reauth), true),
                (Installed, false),
                (Refreshed(Ok_), false),
                (Removed, true),
            ],
        );
        assert_eq!(
            events,
            [
                Event::Connected,
                Event::NeedsReauth,
                Event::Connected,
                Event::Recovered,
                Event::Removed
            ]
        );
    }

    #[test]
    fn three_failures_in_a_row_or_a_token_run_out_degrade_and_flapping_does_not() {
        let mut tracker = Tracker::default();
        let flapping: Vec<_> = (0..20)
            .map(|i| (Refreshed(if i % 3 == 2 { Ok_ } else { Transient }), false))
            .collect();
        assert_eq!(
            run(&mut tracker, &flapping),
            [],
            "two failures, then a success, over and over"
        );
        let events = run(
            &mut tracker,
            &[
                (Refreshed(Transient), false),
                (Refreshed(Transient), false),
                (Refreshed(Transient), false),
                (Refreshed(Transient), false),
                (Refreshed(Ok_), false),
                (Refreshed(Transient), true),
            ],
        );
        assert_eq!(events, [Event::Degraded, Event::Recovered, Event::Degraded]);
    }

    #[test]
    fn a_refresh_token_ending_within_a_week_is_told_once_per_end() {
        let mut tracker = Tracker::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(
            tracker.expiry(&name(), now + day * 30, now),
            None,
            "a month away"
        );
        assert_eq!(
            tracker.expiry(&name(), now + day * 6, now),
            Some(Event::RefreshTokenExpiring)
        );
        assert_eq!(
            tracker.expiry(&name(), now + day * 6, now + day),
            None,
            "told already"
        );
        // A refresh moved the end (and it is still close): told of the new end.
        assert_eq!(
            tracker.expiry(&name(), now + day * 7, now + day),
            Some(Event::RefreshTokenExpiring)
        );
    }

    /// A webhook URL's path can be its credential: neither `Debug` nor a failed delivery's
    /// error shows it.
    #[tokio::test]
    async fn a_webhooks_path_reaches_no_log() {
        let url: Url = "http://127.0.0.1:9/services/T0/B0/secret-path-part"
            .parse()
            .unwrap();
        let target = Target::Webhook {
            url: url.clone(),
            secret: Some(WebhookSecret::new("signing-key")),
        };
        let shown = format!("{target:?}");
        assert!(
            !shown.contains("secret-path-part") && !shown.contains("signing-key"),
            "{shown}"
        );
        let http = crate::provider::outbound_client(Duration::from_secs(2));
        let error = post(&http, &url, None, b"{}").await.unwrap_err();
        assert!(!error.contains("secret-path-part"), "{error}");
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let secret = WebhookSecret::new("Jefe");
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
