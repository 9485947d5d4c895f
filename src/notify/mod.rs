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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::broker::{Broker, Observer, Outcome};
use crate::clock::SharedClock;
use crate::secret::WebhookSecret;
use crate::token::AccountName;

mod deliver;

pub use self::deliver::signature;
use self::deliver::Deliveries;

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
    let deliveries = Deliveries::new(entries, tasks, count, cancel.clone());
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
                let listening = deliveries.has_entries();
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
}
