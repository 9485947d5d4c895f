//! A refresh storm through the real daemon: N accounts all due at once, a fast fake token
//! endpoint with a fixed latency (rotating refresh tokens, as Dropbox and Box do), and the
//! figures issue #13 asks for, printed one row per N.
//!
//! The parts: the fake token endpoint is `tokenbroker::testing::FakeProvider` (in this
//! process) with `set_latency`; the seeding writes N accounts straight into a new store
//! (batched, as an import storm is), each with a token that has 50 minutes left, so every
//! account is due when the daemon starts; the release binary is then started on that store
//! and measured from outside: `/proc/PID` for CPU, bytes written, memory and threads, and a
//! paced `GET /v1/token/…` load over the Unix socket for latency during the storm.
//!
//! ```sh
//! cargo build --release --features test-support --example storm
//! cargo build --release --bin tokenbroker    # after: the daemon as shipped, without the fake
//! target/release/examples/storm 1000 10000 100000
//! ```
//!
//! Options (before the sizes): `--latency-ms 50`, `--max-concurrent 16`, `--no-rotate`,
//! `--token-bytes 1300` (the length of each access token issued), and `--sigterm-at 0.5`
//! (stop the daemon with SIGTERM once that share of the storm's calls has been made, then
//! count the grants lost: stored refresh tokens that the provider no longer accepts).
//! `--idle` seeds tokens that are not due and prints only the daemon's memory once it is
//! ready and has settled. `STORM_DAEMON` names another daemon binary to measure (an older
//! build, say; by default `target/release/tokenbroker`). `STORM_WRAPPER` runs the daemon under a program (its words are
//! put before the daemon's command), e.g. `STORM_WRAPPER="valgrind --tool=massif"`.
//! `STORM_POSTGRES` (a PostgreSQL server's URL, as `.ci/postgres start DIR` prints it) puts
//! the accounts in a new database there instead of sled (the broker's CPU then leaves out
//! the database server's). With it, `--brokers 1,3` runs each size with that many brokers
//! on the one database instead, all accounts falling due at one instant after every broker
//! is ready, and prints the refreshes per second they sustain together.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a measuring tool: prints, reads the monotonic clock, and stops on any failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokenbroker::secret::{AccessToken, RefreshToken};
use tokenbroker::store::{Change, Config};
use tokenbroker::testing::FakeProvider;
use tokenbroker::token::{AccountRecord, IssuedToken};

/// What a seeded token has left when the daemon starts: every account is due at once.
const LEFT_AT_START: Duration = Duration::from_secs(50 * 60);
const LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// The daemon's default `min_valid`: a refresh must land before a token has less left.
const MIN_VALID: Duration = Duration::from_secs(5 * 60);

struct Options {
    latency: Duration,
    max_concurrent: usize,
    rotate: bool,
    token_bytes: usize,
    sigterm_at: Option<f64>,
    idle: bool,
    /// `--brokers 1,3`: run each storm with that many brokers on one PostgreSQL database.
    brokers: Vec<usize>,
    sizes: Vec<usize>,
}

fn options() -> Options {
    let mut options = Options {
        latency: Duration::from_millis(50),
        max_concurrent: 16,
        rotate: true,
        token_bytes: 1300,
        sigterm_at: None,
        idle: false,
        brokers: Vec::new(),
        sizes: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the option");
        match arg.as_str() {
            "--latency-ms" => options.latency = Duration::from_millis(value().parse().unwrap()),
            "--max-concurrent" => options.max_concurrent = value().parse().unwrap(),
            "--no-rotate" => options.rotate = false,
            "--token-bytes" => options.token_bytes = value().parse().unwrap(),
            "--sigterm-at" => options.sigterm_at = Some(value().parse().unwrap()),
            "--idle" => options.idle = true,
            "--brokers" => {
                options.brokers = value()
                    .split(',')
                    .map(|count| count.parse().expect("a number of brokers"))
                    .collect();
            }
            size => options.sizes.push(size.parse().expect("an account count")),
        }
    }
    if options.sizes.is_empty() {
        options.sizes = vec![1000, 10_000, 100_000];
    }
    options
}

fn name(index: usize) -> String {
    format!("acct-{index:06}")
}

/// N accounts, each with a grant the fake accepts and a token about to be due.
async fn seed(
    store: &Config,
    fake: &FakeProvider,
    count: usize,
    token_bytes: usize,
    left: Duration,
) -> Duration {
    let started = Instant::now();
    let store = tokenbroker::store::open(store, 1).await.unwrap();
    let expires_at = SystemTime::now() + left;
    let indexes: Vec<usize> = (0..count).collect();
    for chunk in indexes.chunks(512) {
        let batch: Vec<Change> = chunk
            .iter()
            .map(|&index| {
                let mut record = AccountRecord::new(
                    name(index).parse().unwrap(),
                    "fake".into(),
                    RefreshToken::new(fake.grant(&name(index))),
                );
                record.token = Some(IssuedToken::new(
                    AccessToken::new(format!("seeded-{index:0token_bytes$}")),
                    "Bearer".into(),
                    expires_at,
                    LIFETIME,
                    None,
                ));
                record.last_refresh = Some(expires_at - LIFETIME);
                Change::Put(record)
            })
            .collect();
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.write(&batch).unwrap())
            .await
            .unwrap();
    }
    store.flush().unwrap();
    started.elapsed()
}

/// The store the daemon will use: sled in `work`, or with `STORM_POSTGRES` (a server's URL)
/// a new database on that server, with the key in `work`.
async fn store_config(work: &Path) -> Config {
    let dir = work.join("store");
    let Ok(server) = std::env::var("STORM_POSTGRES") else {
        return Config {
            key_file: dir.join("store-key"),
            dir,
            backend: tokenbroker::store::Backend::sled(),
        };
    };
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = format!("storm_{:016x}", rand::random::<u64>());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, query) = server.split_once('?').unwrap_or((&server, ""));
    let base = base.rsplit_once('/').map_or(base, |(host, _)| host);
    let key_file = work.join("store-key");
    std::fs::write(&key_file, hex::encode([7u8; 32])).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    Config {
        dir,
        key_file,
        backend: tokenbroker::store::Backend::Postgres {
            url: tokenbroker::secret::DatabaseUrl::new(format!("{base}/{name}?{query}")),
            lease_timeout: Duration::from_secs(35),
            ca_certificates: Vec::new(),
        },
    }
}

fn config(work: &Path, store: &Config, fake: &FakeProvider, max_concurrent: usize) -> PathBuf {
    config_with(work, store, fake, max_concurrent, "")
}

/// As `config`, with more lines in `[refresh]`.
fn config_with(
    work: &Path,
    store: &Config,
    fake: &FakeProvider,
    max_concurrent: usize,
    refresh: &str,
) -> PathBuf {
    let backend = match &store.backend {
        tokenbroker::store::Backend::Sled { .. } => String::new(),
        tokenbroker::store::Backend::Postgres { url, .. } => format!(
            "backend = \"postgres\"\nurl = \"{}\"\nkey_file = \"{}\"\n",
            url.expose(),
            store.key_file.display()
        ),
    };
    let text = format!(
        r#"
[server]
socket = "{work}/tb.sock"
http = ""
metrics = "aggregate"

[store]
dir = "{work}/store"
{backend}
[refresh]
max_concurrent = {max_concurrent}
{refresh}

[providers.fake]
preset = "generic"
client_id = "client"
auth_method = "none"
token_url = "{token_url}"
timeout = "30s"
"#,
        work = work.display(),
        token_url = fake.token_url(),
    );
    let path = work.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon's CPU time so far (user and system), from `/proc/PID/stat`.
fn cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// The threads' CPU time so far, by what they do (their names), in a fixed order.
fn cpu_by_part(pid: u32) -> [Duration; PARTS.len()] {
    let mut parts = [Duration::ZERO; PARTS.len()];
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let part = PARTS
            .iter()
            .position(|(prefix, _)| comm.starts_with(prefix))
            .unwrap_or(PARTS.len() - 1);
        parts[part] += stat_cpu(&task.path().join("stat").display().to_string());
    }
    parts
}

/// Thread name prefixes, and what the threads do.
const PARTS: [(&str, &str); 5] = [
    (
        "tokio-rt-worker",
        "runtime (HTTP to the provider and callers, JSON, sealing)",
    ),
    (
        "tokenbroker-sto",
        "store writer (journal append and fdatasync, sled insert)",
    ),
    ("sled-io", "sled's I/O threads"),
    ("tokenbroker-log", "log writer"),
    ("", "other"),
];

fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    if stat.is_empty() {
        return Duration::ZERO;
    }
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); after the command, 12 and 13.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Bytes the daemon has caused to be written to storage (`write_bytes` of `/proc/PID/io`).
fn written(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/io"), "write_bytes")
}

/// Bytes the store's threads (the writer thread and sled's I/O threads) have handed to the
/// kernel in write calls (`wchar`): what the store writes, before the page cache rounds it
/// up to whole pages.
fn store_written(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("sled-io") || comm.starts_with("tokenbroker-sto") {
            total += proc_field(&task.path().join("io").display().to_string(), "wchar");
        }
    }
    total
}

/// A `Name: value` field of a `/proc` file, as a number (kB for the memory ones).
fn proc_field(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn http(socket: &Path) -> reqwest::Client {
    tokenbroker::provider::install_crypto_provider();
    reqwest::Client::builder()
        .unix_socket(socket.to_owned())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, child: &mut Child) {
    for _ in 0..24_000 {
        let answer = client.get("http://localhost/readyz").send().await;
        if answer.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited before it was ready: {status}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the daemon was not ready within 2 minutes");
}

/// How many accounts the daemon lists with `status` (1 if any, else 0: one is enough).
async fn any_with_status(client: &reqwest::Client, status: &str) -> bool {
    let url = format!("http://localhost/v1/accounts?status={status}&limit=1");
    let body: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
    body["accounts"]
        .as_array()
        .is_some_and(|accounts| !accounts.is_empty())
}

/// Runs `command` (the daemon, or a wrapper around it) as `serve --config config`, logging
/// to `log`.
fn serve(mut command: Command, config: &Path, log: std::fs::File) -> Daemon {
    let child = command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (cargo build --release first)"));
    Daemon(child)
}

/// Kills the daemon if this tool stops early (a failed assertion), so no daemon is left over.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn terminate(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

struct Row {
    accounts: usize,
    seed: Duration,
    ready: Duration,
    cycle: Duration,
    bound: Duration,
    cpu_per_refresh: Duration,
    parts_per_refresh: [Duration; PARTS.len()],
    bytes_per_refresh: u64,
    store_bytes_per_refresh: u64,
    startup_mb: u64,
    calls: usize,
    refused: usize,
    p50: Duration,
    p99: Duration,
    gets: usize,
    rss_idle_mb: u64,
    rss_peak_mb: u64,
    rss_storm_mb: u64,
    threads_peak: u64,
    margin: Duration,
    lost: usize,
}

async fn run(options: &Options, accounts: usize) -> Option<Row> {
    let work = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_recording(false);
    fake.set_rotation(options.rotate);
    fake.set_access_token_length(options.token_bytes);
    let left = if options.idle {
        LIFETIME - MIN_VALID
    } else {
        LEFT_AT_START
    };
    let store = store_config(work.path()).await;
    let seed = seed(&store, &fake, accounts, options.token_bytes, left).await;
    fake.set_latency(options.latency);
    let config = config(work.path(), &store, &fake, options.max_concurrent);
    let log = std::fs::File::create(work.path().join("daemon.log")).unwrap();
    let binary = daemon_binary();
    let started = Instant::now();
    let wrapper = std::env::var("STORM_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let mut daemon = serve(command, &config, log);
    let child = &mut daemon.0;
    let pid = child.id();
    eprintln!("daemon pid {pid}, in {}", work.path().display());
    let client = http(&work.path().join("tb.sock"));
    wait_ready(&client, child).await;
    let ready = started.elapsed();
    let written_start = written(pid);
    if options.idle {
        // Long enough for an allocator that returns memory after a delay to have done so.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let status = format!("/proc/{pid}/status");
        let (rss, peak) = (proc_field(&status, "VmRSS"), proc_field(&status, "VmHWM"));
        println!(
            "{accounts:>8} accounts, idle: ready in {} ms, RSS {} MB ({} bytes per account), peak {} MB",
            ready.as_millis(),
            rss / 1024,
            rss * 1024 / accounts as u64,
            peak / 1024
        );
        let rollup = format!("/proc/{pid}/smaps_rollup");
        println!(
            "          anonymous {} MB, file-backed {} MB",
            proc_field(&rollup, "Anonymous") / 1024,
            (proc_field(&rollup, "Rss") - proc_field(&rollup, "Anonymous")) / 1024
        );
        terminate(pid);
        child.wait().unwrap();
        return None;
    }

    // Threads, sampled until the storm is over, and memory from a tenth of its calls on
    // (`steady`): the storm's own, apart from what the open held before the allocator gave
    // it back (`VmHWM` has that).
    let storming = Arc::new(AtomicBool::new(true));
    let steady = Arc::new(AtomicBool::new(false));
    let sampled = {
        let (storming, steady) = (storming.clone(), steady.clone());
        tokio::spawn(async move {
            let (mut threads, mut rss) = (0, 0);
            let status = format!("/proc/{pid}/status");
            while storming.load(Ordering::SeqCst) {
                threads = u64::max(threads, proc_field(&status, "Threads"));
                if steady.load(Ordering::SeqCst) {
                    rss = u64::max(rss, proc_field(&status, "VmRSS"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (threads, rss / 1024)
        })
    };
    // Four callers, each asking for a token every 5 ms, timed one by one.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (client, storming, latencies) =
                (client.clone(), storming.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut index = caller;
                while storming.load(Ordering::SeqCst) {
                    let url = format!("http://localhost/v1/token/{}", name(index % accounts));
                    let asked = Instant::now();
                    let response = client.get(url).send().await.unwrap();
                    let ok = response.status().is_success();
                    let _ = response.bytes().await;
                    let took = asked.elapsed();
                    assert!(ok, "a token request failed during the storm");
                    latencies.lock().unwrap().push(took);
                    index += 7919; // a prime: the callers walk the accounts in a scattered order
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    // The storm: every account's call made, then none left refreshing (stored).
    let stop_after = options
        .sigterm_at
        .map(|share| (accounts as f64 * share) as usize);
    let bound = options
        .latency
        .mul_f64(accounts.div_ceil(options.max_concurrent) as f64);
    let limit = Instant::now() + bound * 3 + Duration::from_secs(60);
    let target = stop_after.unwrap_or(accounts);
    // CPU and bytes per refresh are taken between a tenth and nine tenths of the calls: the
    // storm at its steady rate, without the start-up (sled rewrites its free segments when
    // it opens: `startup_MB`) and the tail.
    let mut window = Vec::new();
    let mut parts = Vec::new();
    while fake.token_calls() < target {
        assert!(
            Instant::now() < limit,
            "the storm stalled at {} calls",
            fake.token_calls()
        );
        let calls = fake.token_calls();
        if window.len() < 2 && calls >= accounts * (1 + 8 * window.len()) / 10 {
            window.push((calls, cpu(pid), written(pid), store_written(pid)));
            parts.push(cpu_by_part(pid));
            steady.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if stop_after.is_none() {
        while any_with_status(&client, "refreshing").await {
            assert!(Instant::now() < limit, "accounts still refreshing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let cycle = started.elapsed() - ready;
    let (cpu_per_refresh, bytes_per_refresh, store_bytes_per_refresh) = match window[..] {
        [(calls_from, cpu_from, disk_from, store_from), (calls_to, cpu_to, disk_to, store_to)] => {
            let calls = (calls_to - calls_from).max(1);
            (
                (cpu_to - cpu_from) / calls as u32,
                (disk_to - disk_from) / calls as u64,
                (store_to - store_from) / calls as u64,
            )
        }
        _ => (Duration::ZERO, 0, 0),
    };
    let startup_mb = written_start / 1_000_000;
    let parts_per_refresh = match (&parts[..], &window[..]) {
        ([from, to], [(calls_from, ..), (calls_to, ..)]) => {
            let calls = (calls_to - calls_from).max(1) as u32;
            std::array::from_fn(|i| (to[i] - from[i]) / calls)
        }
        _ => [Duration::ZERO; PARTS.len()],
    };
    storming.store(false, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    let (threads_peak, rss_storm_mb) = sampled.await.unwrap();
    let status = format!("/proc/{pid}/status");
    let rss_peak_mb = proc_field(&status, "VmHWM") / 1024;
    if stop_after.is_none() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rss_idle_mb = proc_field(&status, "VmRSS") / 1024;
    let seeded_expiry_left = LEFT_AT_START.saturating_sub(started.elapsed());

    // Stop it; then every stored grant must be one the provider still accepts.
    terminate(pid);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "the daemon exited with {exit}");
    let lost = lost_grants(&store, &fake, accounts).await;
    let calls = fake.token_calls();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Some(Row {
        accounts,
        seed,
        ready,
        cycle,
        bound,
        cpu_per_refresh,
        parts_per_refresh,
        bytes_per_refresh,
        store_bytes_per_refresh,
        startup_mb,
        calls,
        refused: fake.refused_refreshes(),
        p50: at(0.5),
        p99: at(0.99),
        gets: latencies.len(),
        rss_idle_mb,
        rss_peak_mb,
        rss_storm_mb,
        threads_peak,
        margin: seeded_expiry_left.saturating_sub(MIN_VALID),
        lost,
    })
}

/// The stored grants (all `accounts` of them) that the provider no longer accepts.
async fn lost_grants(store: &Config, fake: &FakeProvider, accounts: usize) -> usize {
    let reopened = tokenbroker::store::open(store, 1).await.unwrap();
    let stored = tokio::task::spawn_blocking(move || reopened.load_all().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), accounts);
    stored
        .iter()
        .filter(|record| !fake.is_valid(record.refresh_token.expose()))
        .count()
}

/// The daemon to measure: `STORM_DAEMON`, or the release build beside this tool.
fn daemon_binary() -> PathBuf {
    std::env::var_os("STORM_DAEMON").map_or_else(
        || {
            let examples = std::env::current_exe().unwrap();
            examples
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("tokenbroker")
        },
        PathBuf::from,
    )
}

/// One storm shared by several brokers on one PostgreSQL database.
struct GroupRow {
    accounts: usize,
    brokers: usize,
    cycle: Duration,
    bound: Duration,
    cpu_per_refresh: Duration,
    calls: usize,
    refused: usize,
    lost: usize,
}

/// `brokers` daemons on one new database with `accounts` accounts that all fall due at the
/// same instant, a little after the last broker is ready (the seeded tokens are due once
/// they have `ahead` left: 1 h, the default; no jitter): how long until every account is
/// refreshed and stored, against `accounts × latency ÷ (brokers × max_concurrent)`, with
/// every refresh token presented once (a rotating fake refuses a reuse) and none lost.
async fn run_group(options: &Options, accounts: usize, brokers: usize) -> GroupRow {
    assert!(
        std::env::var_os("STORM_POSTGRES").is_some(),
        "--brokers needs STORM_POSTGRES: brokers share accounts only in PostgreSQL"
    );
    let work = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_recording(false);
    fake.set_rotation(options.rotate);
    fake.set_access_token_length(options.token_bytes);
    let store = store_config(work.path()).await;
    // Time for every broker to open the store and be ready before the accounts fall due.
    let head_start = Duration::from_secs(10) + Duration::from_millis(accounts as u64);
    let ahead = Duration::from_secs(3600);
    // The seeded tokens' expiry is taken when the seeding starts.
    let seeding = Instant::now();
    seed(
        &store,
        &fake,
        accounts,
        options.token_bytes,
        ahead + head_start,
    )
    .await;
    let due = seeding + head_start;
    fake.set_latency(options.latency);
    let mut daemons = Vec::new();
    for index in 0..brokers {
        let home = work.path().join(format!("broker-{index}"));
        std::fs::create_dir_all(&home).unwrap();
        let config = config_with(
            &home,
            &store,
            &fake,
            options.max_concurrent,
            "jitter = \"0s\"\ncheck_interval = \"1s\"",
        );
        let log = std::fs::File::create(home.join("daemon.log")).unwrap();
        let mut daemon = serve(Command::new(daemon_binary()), &config, log);
        let client = http(&home.join("tb.sock"));
        wait_ready(&client, &mut daemon.0).await;
        daemons.push((daemon, client));
    }
    assert!(
        Instant::now() < due,
        "the brokers were not ready before the accounts fell due"
    );
    eprintln!("{brokers} brokers ready, in {}", work.path().display());
    let pids: Vec<u32> = daemons.iter().map(|(daemon, _)| daemon.0.id()).collect();
    let cpu_before: Duration = pids.iter().map(|&pid| cpu(pid)).sum();
    let bound = options
        .latency
        .mul_f64(accounts.div_ceil(options.max_concurrent * brokers) as f64);
    let limit = due + bound * 3 + Duration::from_secs(60);
    while fake.token_calls() < accounts {
        assert!(
            Instant::now() < limit,
            "the storm stalled at {} calls",
            fake.token_calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, client) in &daemons {
        while any_with_status(client, "refreshing").await {
            assert!(Instant::now() < limit, "accounts still refreshing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let cycle = due.elapsed();
    let cpu_after: Duration = pids.iter().map(|&pid| cpu(pid)).sum();
    for (mut daemon, _) in daemons {
        terminate(daemon.0.id());
        let exit = daemon.0.wait().unwrap();
        assert!(exit.success(), "a broker exited with {exit}");
    }
    let lost = lost_grants(&store, &fake, accounts).await;
    let calls = fake.token_calls();
    GroupRow {
        accounts,
        brokers,
        cycle,
        bound,
        cpu_per_refresh: (cpu_after - cpu_before) / calls.max(1) as u32,
        calls,
        refused: fake.refused_refreshes(),
        lost,
    }
}

/// `--brokers`: one row per size and number of brokers.
async fn groups(options: &Options) {
    println!(
        "latency {:?}, max_concurrent {} per broker, rotation {}, access tokens of {} bytes, one PostgreSQL database",
        options.latency,
        options.max_concurrent,
        if options.rotate { "on" } else { "off" },
        options.token_bytes,
    );
    println!(
        "{:>8} {:>7} {:>8} {:>8} {:>6} {:>10} {:>9} {:>7} {:>7} {:>5}",
        "accounts",
        "brokers",
        "cycle_s",
        "bound_s",
        "x",
        "refresh/s",
        "cpu_ms/rf",
        "calls",
        "refused",
        "lost"
    );
    for &accounts in &options.sizes {
        for &brokers in &options.brokers {
            let row = run_group(options, accounts, brokers).await;
            println!(
                "{:>8} {:>7} {:>8.2} {:>8.2} {:>6.2} {:>10.0} {:>9.3} {:>7} {:>7} {:>5}",
                row.accounts,
                row.brokers,
                row.cycle.as_secs_f64(),
                row.bound.as_secs_f64(),
                row.cycle.as_secs_f64() / row.bound.as_secs_f64(),
                row.accounts as f64 / row.cycle.as_secs_f64(),
                row.cpu_per_refresh.as_secs_f64() * 1000.0,
                row.calls,
                row.refused,
                row.lost,
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let options = options();
    if !options.brokers.is_empty() {
        groups(&options).await;
        return;
    }
    println!(
        "latency {:?}, max_concurrent {}, rotation {}, access tokens of {} bytes{}",
        options.latency,
        options.max_concurrent,
        if options.rotate { "on" } else { "off" },
        options.token_bytes,
        options
            .sigterm_at
            .map_or(String::new(), |s| format!(", SIGTERM at {s} of the storm"))
    );
    println!(
        "{:>8} {:>7} {:>8} {:>9} {:>9} {:>6} {:>9} {:>10} {:>9} {:>10} {:>7} {:>8} {:>8} {:>7} {:>8} {:>9} {:>8} {:>7} {:>9} {:>5}",
        "accounts",
        "seed_s",
        "ready_ms",
        "cycle_s",
        "bound_s",
        "x",
        "cpu_ms/rf",
        "store_B/rf",
        "disk_B/rf",
        "startup_MB",
        "calls",
        "refused",
        "get_p50",
        "get_p99",
        "gets",
        "rss_idle",
        "rss_storm",
        "rss_max",
        "threads",
        "lost"
    );
    for &accounts in &options.sizes {
        let Some(row) = run(&options, accounts).await else {
            continue;
        };
        println!(
            "{:>8} {:>7.2} {:>8} {:>9.1} {:>9.1} {:>6.2} {:>9.3} {:>10} {:>9} {:>10} {:>7} {:>8} {:>6.2}ms {:>5.2}ms {:>8} {:>6}MB {:>7}MB {:>6}MB {:>7} {:>5}",
            row.accounts,
            row.seed.as_secs_f64(),
            row.ready.as_millis(),
            row.cycle.as_secs_f64(),
            row.bound.as_secs_f64(),
            row.cycle.as_secs_f64() / row.bound.as_secs_f64(),
            row.cpu_per_refresh.as_secs_f64() * 1000.0,
            row.store_bytes_per_refresh,
            row.bytes_per_refresh,
            row.startup_mb,
            row.calls,
            row.refused,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.gets,
            row.rss_idle_mb,
            row.rss_storm_mb,
            row.rss_peak_mb,
            row.threads_peak,
            row.lost,
        );
        let parts: Vec<String> = PARTS
            .iter()
            .zip(row.parts_per_refresh)
            .map(|((_, what), cpu)| format!("{:.3} ms {what}", cpu.as_secs_f64() * 1000.0))
            .collect();
        println!("  CPU per refresh: {}", parts.join("; "));
        if row.margin.is_zero() {
            println!("  the storm ended after the seeded tokens fell under min_valid");
        }
    }
}
