//! What one store write costs at several store sizes: the embedded store (sled and its
//! journal) seeded with N accounts, then accounts rewritten one write at a time (each its
//! own sync, as a lone refresh is) and in batches (as the writer thread groups a storm of
//! refreshes). A cost that grows with N would show here; per write it should not.
//!
//! `open_ms` is what the daemon does at start: open the store and load every account.
//!
//! `cargo run --release --example store_scale -- [N…]` (default 1000 10000 100000), on the
//! disk the temporary directory is on (`TMPDIR`).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a measuring tool: prints, and reads the monotonic clock"
)]

use std::time::{Duration, Instant};

use tokenbroker::secret::{AccessToken, RefreshToken};
use tokenbroker::store::{Change, Config, SledStore, Store};
use tokenbroker::token::{AccountRecord, IssuedToken};

/// A record of the size a refreshed Dropbox account has (tokens of Dropbox's lengths).
fn record(n: usize, version: usize) -> AccountRecord {
    let mut record = AccountRecord::new(
        format!("acct-{n:06}").parse().unwrap(),
        "dropbox".into(),
        RefreshToken::new(format!("{:064}-{version}", n)),
    );
    record.token = Some(IssuedToken::new(
        AccessToken::new(format!("sl.{}{version}", "x".repeat(1300))),
        "Bearer".into(),
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        Duration::from_secs(14400),
        Some("files.content.read account_info.read".into()),
    ));
    record
}

fn journal_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("journal")).map_or(0, |m| m.len())
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000, 100_000]
    } else {
        sizes
    };
    const SINGLE: usize = 200;
    const BATCHED: usize = 5000;
    const BATCH: usize = 64;
    println!(
        "{:>8} {:>10} {:>12} {:>14} {:>14} {:>16}",
        "accounts", "seed_s", "open_ms", "single_ms/wr", "batched_us/wr", "journal_B/write"
    );
    for n in sizes {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            dir: tmp.path().join("store"),
            key_file: tmp.path().join("store").join("store-key"),
            backend: tokenbroker::store::Backend::sled(),
        };
        let store = SledStore::open(&config).unwrap();
        let started = Instant::now();
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(512) {
            let batch: Vec<Change> = chunk.iter().map(|&i| Change::Put(record(i, 0))).collect();
            store.write(&batch).unwrap();
        }
        let seed = started.elapsed();
        drop(store);
        let started = Instant::now();
        let store = loop {
            // sled releases its lock from a background thread after the handle is dropped.
            match SledStore::open(&config) {
                Ok(store) => break store,
                Err(_) if started.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("{error}"),
            }
        };
        // What the daemon does at start: open, then load every account.
        assert_eq!(store.load_all().unwrap().len(), n);
        let open = started.elapsed();
        // Rewrites spread over the store, as refreshes are.
        let pick = |k: usize| (k * 7919) % n;
        let before = journal_len(&config.dir);
        let started = Instant::now();
        for k in 0..SINGLE {
            store.write(&[Change::Put(record(pick(k), 1))]).unwrap();
        }
        let single = started.elapsed() / SINGLE as u32;
        let grown = journal_len(&config.dir).saturating_sub(before) / SINGLE as u64;
        let started = Instant::now();
        for chunk in (0..BATCHED).collect::<Vec<_>>().chunks(BATCH) {
            let batch: Vec<Change> = chunk
                .iter()
                .map(|&k| Change::Put(record(pick(k + SINGLE), 2)))
                .collect();
            store.write(&batch).unwrap();
        }
        let batched = started.elapsed() / BATCHED as u32;
        println!(
            "{n:>8} {:>10.2} {:>12.0} {:>14.3} {:>14.1} {:>16}",
            seed.as_secs_f64(),
            open.as_secs_f64() * 1000.0,
            single.as_secs_f64() * 1000.0,
            batched.as_secs_f64() * 1e6,
            grown
        );
    }
}
