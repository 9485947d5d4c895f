//! The Prometheus metrics: what `/metrics` shows, and the counters behind it.
//!
//! Counters and the refresh-latency histogram are updated as things happen (the broker
//! tells [`Metrics`] of refreshes as an [`Observer`]; the API counts requests). Gauges that
//! describe the present (seconds until each token expires, accounts by status, the last
//! scheduler tick) are read from the broker when scraped. No label carries a secret: labels
//! are account names, client names, routes, outcomes and status codes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::broker::{Broker, Observer, Outcome, Status};
use crate::token::AccountName;

/// What `/metrics` shows of each account (`server.metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// Series per account: refreshes, refresh time, seconds to expiry, status (the default;
    /// about 1 KB per account and scrape).
    #[default]
    PerAccount,
    /// For many accounts: totals, a count of accounts by time to expiry, and by name only
    /// the accounts that are not `active`.
    Aggregate,
}

/// The thresholds of `accounts_expiring_within_seconds`: expired, a minute, five minutes,
/// a quarter of an hour, an hour, four hours, and every account.
const EXPIRY_THRESHOLDS: [(&str, f64); 7] = [
    ("0", 0.0),
    ("60", 60.0),
    ("300", 300.0),
    ("900", 900.0),
    ("3600", 3600.0),
    ("14400", 14400.0),
    ("+Inf", f64::INFINITY),
];

/// The text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what Prometheus asks for first.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4 (`promtool check metrics`, older scrapers,
    /// a person with curl).
    Classic,
}

impl Format {
    /// The format a scraper's `Accept` header asks for: OpenMetrics when it names it (with a
    /// non-zero quality), else the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let kind = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    /// The `Content-Type` of text in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    account: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountStatusLabels {
    account: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WithinLabel {
    within: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NotificationLabels {
    event: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenRequestLabels {
    client: String,
    route: &'static str,
    status: u16,
}

/// The counters one kind of token request increments (its route's, as
/// [`Metrics::request`] counts other routes, and its client's), resolved by
/// [`Metrics::token_counters`].
#[derive(Debug, Clone, Default)]
pub struct TokenCounters {
    route: Counter,
    client: Counter,
}

impl TokenCounters {
    /// Counts one request.
    pub fn inc(&self) {
        self.route.inc();
        self.client.inc();
    }
}

type Seconds = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 10 ms to about 82 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Every metric tokenbroker exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    detail: Detail,
    refreshes: Family<RefreshLabels, Counter>,
    refresh_seconds: Family<AccountLabel, Histogram, fn() -> Histogram>,
    refreshes_by_outcome: Family<OutcomeLabel, Counter>,
    refresh_seconds_all: Histogram,
    expiring_within: Family<WithinLabel, Gauge>,
    expires_in: Family<AccountLabel, Seconds>,
    accounts: Family<StatusLabel, Gauge>,
    account_status: Family<AccountStatusLabels, Gauge>,
    last_tick: Seconds,
    requests: Family<RequestLabels, Counter>,
    token_requests: Family<TokenRequestLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
}

impl Metrics {
    /// Every metric, registered and at zero, showing accounts as `detail` says.
    pub fn new(detail: Detail) -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::with_prefix("tokenbroker")),
            detail,
            refreshes: Family::default(),
            refresh_seconds: Family::new_with_constructor(latency_histogram),
            refreshes_by_outcome: Family::default(),
            refresh_seconds_all: latency_histogram(),
            expiring_within: Family::default(),
            expires_in: Family::default(),
            accounts: Family::default(),
            account_status: Family::default(),
            last_tick: Seconds::default(),
            requests: Family::default(),
            token_requests: Family::default(),
            notifications: Family::default(),
        };
        {
            let mut registry = metrics.lock();
            let took = "Time a refresh took, provider call and store write included";
            match detail {
                Detail::PerAccount => {
                    registry.register(
                        "refreshes",
                        "Refresh attempts by account and outcome",
                        metrics.refreshes.clone(),
                    );
                    registry.register(
                        "refresh_duration_seconds",
                        took,
                        metrics.refresh_seconds.clone(),
                    );
                    registry.register(
                        "token_expiry_seconds",
                        "Seconds until the account's current access token expires (negative: expired)",
                        metrics.expires_in.clone(),
                    );
                }
                Detail::Aggregate => {
                    registry.register(
                        "refreshes",
                        "Refresh attempts by outcome",
                        metrics.refreshes_by_outcome.clone(),
                    );
                    registry.register(
                        "refresh_duration_seconds",
                        took,
                        metrics.refresh_seconds_all.clone(),
                    );
                    registry.register(
                        "accounts_expiring_within_seconds",
                        "Accounts whose access token expires within this many seconds (0: expired; +Inf: every account with a token)",
                        metrics.expiring_within.clone(),
                    );
                }
            }
            registry.register("accounts", "Accounts by status", metrics.accounts.clone());
            registry.register(
                "account_status",
                match detail {
                    Detail::PerAccount => "1 for each account's current status (active, refreshing, degraded, needs_reauth)",
                    Detail::Aggregate => "1 for each account that is not active, by its status (refreshing, degraded, needs_reauth)",
                },
                metrics.account_status.clone(),
            );
            registry.register(
                "build",
                "The running tokenbroker's version",
                prometheus_client::metrics::info::Info::new(BuildLabels {
                    version: env!("CARGO_PKG_VERSION"),
                }),
            );
            registry.register(
                "scheduler_last_tick_timestamp_seconds",
                "Unix time of the last refresh scheduler tick",
                metrics.last_tick.clone(),
            );
            registry.register(
                "http_requests",
                "API requests by route and status",
                metrics.requests.clone(),
            );
            registry.register(
                "token_requests",
                "Token requests by client, route and status",
                metrics.token_requests.clone(),
            );
            registry.register(
                "notifications",
                "Notifications by event and outcome (delivered, or failed after every retry)",
                metrics.notifications.clone(),
            );
        }
        metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one notification `event`, delivered or failed after every retry.
    pub fn notification(&self, event: &'static str, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.notifications
            .get_or_create(&NotificationLabels { event, outcome })
            .inc();
    }

    /// Counts one API request under its route template.
    pub fn request(&self, route: Cow<'static, str>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// The counters of token requests from `client` (`unidentified` when it could not be
    /// told) on `route` answered `status`: the route's and the client's. The API keeps each
    /// client's `200` counters with the client, so that counting a token served is two
    /// increments.
    pub fn token_counters(&self, client: &str, route: &'static str, status: u16) -> TokenCounters {
        TokenCounters {
            route: self
                .requests
                .get_or_create(&RequestLabels {
                    route: Cow::Borrowed(route),
                    status,
                })
                .clone(),
            client: self
                .token_requests
                .get_or_create(&TokenRequestLabels {
                    client: client.to_owned(),
                    route,
                    status,
                })
                .clone(),
        }
    }

    /// The metrics in `format`, the present read from `broker`.
    pub fn render(&self, broker: &Broker, now: SystemTime, format: Format) -> String {
        let registry = self.lock();
        self.expires_in.clear();
        self.account_status.clear();
        let mut within = [0i64; EXPIRY_THRESHOLDS.len()];
        let mut by_status = [0i64; Status::ALL.len()];
        let per_account = self.detail == Detail::PerAccount;
        broker.for_each_account(|view| {
            for (count, status) in by_status.iter_mut().zip(Status::ALL) {
                *count += i64::from(status == view.status);
            }
            if per_account || view.status != Status::Active {
                self.account_status
                    .get_or_create(&AccountStatusLabels {
                        account: view.name.as_str().to_owned(),
                        status: view.status.as_str(),
                    })
                    .set(1);
            }
            if let Some(expires_at) = view.expires_at {
                let left = match expires_at.duration_since(now) {
                    Ok(left) => left.as_secs_f64(),
                    Err(past) => -past.duration().as_secs_f64(),
                };
                if per_account {
                    self.expires_in
                        .get_or_create(&AccountLabel {
                            account: view.name.as_str().to_owned(),
                        })
                        .set(left);
                }
                for (count, (_, threshold)) in within.iter_mut().zip(EXPIRY_THRESHOLDS) {
                    *count += i64::from(left <= threshold);
                }
            }
        });
        if !per_account {
            for ((label, _), count) in EXPIRY_THRESHOLDS.into_iter().zip(within) {
                self.expiring_within
                    .get_or_create(&WithinLabel { within: label })
                    .set(count);
            }
        }
        for (status, count) in Status::ALL.into_iter().zip(by_status) {
            self.accounts
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(count);
        }
        if let Some(tick) = broker.last_tick() {
            let since_epoch = tick
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.last_tick.set(since_epoch.as_secs_f64());
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            // Writing to a String cannot fail; say so rather than serve half a page.
            text.clear();
            let _ = writeln!(text, "# metrics could not be encoded\n# EOF");
        }
        match format {
            Format::OpenMetrics => text,
            Format::Classic => classic(&text),
        }
    }
}

/// The classic text format of what prometheus-client wrote as OpenMetrics. For the metric
/// types used here (counters, gauges, histograms, one info) the two differ only in that a
/// counter's family is named with its `_total` suffix and an info's with `_info` (a gauge in
/// the classic format), and in OpenMetrics' `# UNIT`, `_created` and `# EOF` lines, which
/// the classic format lacks.
fn classic(openmetrics: &str) -> String {
    let typed = |kind: &'static str| {
        openmetrics
            .lines()
            .filter_map(move |line| line.strip_prefix("# TYPE ")?.strip_suffix(kind))
            .collect::<std::collections::HashSet<&str>>()
    };
    let (counters, infos) = (typed(" counter"), typed(" info"));
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if !line.starts_with('#') && name.ends_with("_created") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match comment {
            Some((prefix, rest)) => {
                let (family, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(family);
                if counters.contains(family) {
                    text.push_str("_total");
                }
                if infos.contains(family) {
                    text.push_str("_info");
                }
                text.push(' ');
                text.push_str(if infos.contains(family) && tail == "info" {
                    "gauge"
                } else {
                    tail
                });
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

impl Observer for Metrics {
    fn refresh_finished(&self, account: &AccountName, outcome: Outcome, took: Duration) {
        if self.detail == Detail::Aggregate {
            self.refreshes_by_outcome
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str(),
                })
                .inc();
            self.refresh_seconds_all.observe(took.as_secs_f64());
            return;
        }
        let account = account.as_str().to_owned();
        self.refreshes
            .get_or_create(&RefreshLabels {
                account: account.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.refresh_seconds
            .get_or_create(&AccountLabel { account })
            .observe(took.as_secs_f64());
    }
}
