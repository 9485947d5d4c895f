//! What writing one "token served" log line costs: `tracing-subscriber`'s human format
//! against the daemon's audit layer (`tokenbroker::logging::audit`) over it, the same event
//! written to `io::sink` (so that only formatting and dispatch are timed), one after the
//! other in the same run.
//!
//! `cargo run --release --example log_line [EVENTS]`
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a measuring tool: prints, and reads the monotonic clock"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenbroker::logging::audit::Audit;
use tracing_subscriber::layer::SubscriberExt;

fn main() {
    let events: u32 = std::env::args()
        .nth(1)
        .map_or(500_000, |n| n.parse().unwrap());
    let human = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_ansi(false)
    };
    println!("{events} events per run, nanoseconds per event");
    println!(
        "{:>6} {:>9} {:>9} {:>7}",
        "round", "default", "ours", "ratio"
    );
    for round in 1..=3 {
        let default = time(tracing_subscriber::registry().with(human()), events);
        let ours = time(
            tracing_subscriber::registry().with(Audit::new(
                tokenbroker::api::AUDIT_TARGET,
                human(),
                std::io::sink,
            )),
            events,
        );
        let per_event = |d: Duration| d.as_nanos() as f64 / f64::from(events);
        println!(
            "{round:>6} {:>9.0} {:>9.0} {:>7.2}",
            per_event(default),
            per_event(ours),
            per_event(ours) / per_event(default)
        );
    }
}

/// Logs `events` token-served records as `api::token` does: the message a string field, uid
/// and pid options.
fn time(subscriber: impl tracing::Subscriber + Send + Sync, events: u32) -> Duration {
    let client = Arc::<str>::from("nightly-backup");
    tracing::subscriber::with_default(subscriber, || {
        let start = Instant::now();
        for i in 0..events {
            let pid = 4242 + i32::try_from(i % 8).unwrap();
            tracing::info!(target: tokenbroker::api::AUDIT_TARGET, message = "token served", client = &*client, uid = Some(1000u32), pid = Some(pid), account = %"dropbox-team", expires_in = 14_000u64);
        }
        start.elapsed()
    })
}
