//! Wiring and lifecycle: bind, open the store, spawn, notify systemd, wait (reloading on
//! `SIGHUP`), drain.
//!
//! The only module that handles signals, and where the listeners and sinks are spawned
//! (the scheduler and the store keep their own guard task and writer thread). `bind` and
//! `run` are apart, and `run` takes the listeners, the clock and the shutdown future as
//! arguments, so tests run the whole daemon in their own process (port 0, their own clock)
//! and stop it any way they like.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::reload::Loader;
use self::reload::Reloader;
use self::runtime::Runtime;
use crate::api::{self, listen, AppState};
use crate::broker::{Broker, ShutdownReport};
use crate::clock::SharedClock;
use crate::config::{DeclaredAccount, Settings};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::sink::{self, Sinks};
use crate::store;

mod activation;
mod reload;
mod runtime;

/// Extra time, beyond the connection drain, that tasks get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The daemon's listeners: the Unix socket (its file removed when this is dropped) and
/// loopback TCP, bound by [`bind`] or taken from systemd.
#[derive(Debug)]
pub struct Listeners {
    socket: SocketFile,
    tcp: Option<TcpListener>,
}

impl Listeners {
    /// Where the TCP listener is (a test binds port 0 and asks).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|tcp| tcp.local_addr().ok())
    }
}

/// Takes the sockets systemd passed, or binds `server.socket` and `server.http`. The first
/// step of a daemon: it also makes everything the process creates private (umask 077) and
/// raises the open-file limit.
///
/// # Errors
/// A socket cannot be bound (a live daemon's socket is never replaced), or what systemd
/// passed cannot be used.
pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
    // Everything we create (store files, temporary files) is private unless made otherwise.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    forbid_core_dumps();
    raise_open_file_limit();
    let activated = activation::take()?;
    let socket = match activated.unix {
        Some(listener) => {
            let passed = listener.local_addr().ok();
            let path = passed.as_ref().and_then(|a| a.as_pathname());
            tracing::info!(socket = ?path, "serving the Unix socket systemd passed (socket activation)");
            if path != Some(settings.api.socket.as_path()) {
                tracing::warn!(
                    passed = ?path,
                    configured = %settings.api.socket.display(),
                    "the socket systemd passed is not server.socket; the CLI looks for server.socket"
                );
            }
            SocketFile::passed(&settings.api.socket, listener)?
        }
        None => SocketFile::bind(&settings.api.socket, settings.api.socket_group)?,
    };
    let tcp = match (activated.tcp, settings.api.http) {
        (Some(listener), _) => {
            tracing::info!("serving the TCP socket systemd passed (socket activation)");
            Some(TcpListener::from_std(listener).context("while taking the passed TCP socket")?)
        }
        (None, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("while binding {addr}"))?,
        ),
        (None, None) => None,
    };

    Ok(Listeners { socket, tcp })
}

/// Runs the daemon on `listeners` (from [`bind`]) and `clock` until `shutdown` completes,
/// then stops cleanly. On `SIGHUP` the configuration is loaded again with `reload` (`None`:
/// nothing to reload, as in dev mode).
///
/// # Errors
/// The store cannot be opened, the scheduler cannot start, or the `SIGHUP` handler cannot
/// be installed.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
    reload: Option<Loader>,
) -> anyhow::Result<()> {
    // Before anything answers on the listeners: a SIGHUP sent as soon as the daemon
    // answers must reload it, not end it (the signal's default action).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("while installing the SIGHUP handler")?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let store = store::open(&settings.store, settings.broker.max_concurrent)
        .await
        .context("while opening the store")?;
    let metrics = Arc::new(Metrics::new(settings.metrics));
    let own_uid = rustix::process::getuid().as_raw();
    let runtime = Runtime::new(&settings, own_uid, &metrics, clock.monotonic())
        .context("while setting up providers")?;
    let runtime = runtime::Live::new(runtime);
    // The broker's tasks (refreshes, imports, device flows) are on a tracker of their own:
    // shutdown waits for them longer than for connections.
    let broker = Broker::open(
        store.clone(),
        Arc::new(runtime.clone()),
        clock.clone(),
        settings.broker.max_concurrent,
        TaskTracker::new(),
    )
    .context("while loading accounts")?;
    let following = store.follow({
        let broker = broker.clone();
        Arc::new(move |stored| broker.adopt(stored))
    });
    drop(store);
    seed_declared_accounts(&broker, &settings.accounts).await?;
    broker.add_observer(metrics.clone());

    let state_clock = clock.clone();
    let state = AppState {
        broker: broker.clone(),
        rules: Arc::new(runtime.clone()),
        clock,
        public_url: settings.api.public_url.clone(),
        metrics: metrics.clone(),
    };
    let api = api::Service::new(state);
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    if let Some(following) = following {
        let cancel = cancel.clone();
        tasks.spawn(async move { cancel.run_until_cancelled(following).await });
    }
    let Listeners { mut socket, tcp } = listeners;
    tasks.spawn(listen::serve_unix(
        socket.take_listener(),
        api.clone(),
        cancel.clone(),
    ));
    if let Some(tcp) = tcp {
        tasks.spawn(listen::serve_tcp(tcp, api, cancel.clone()));
    }
    let (notifier, happenings) = crate::notify::Notifier::new();
    broker.add_observer(notifier);
    tasks.spawn(crate::notify::run(
        happenings,
        broker.clone(),
        Arc::new(runtime.clone()),
        state_clock,
        tasks.clone(),
        {
            let metrics = metrics.clone();
            Arc::new(move |event, delivered| metrics.notification(event.as_str(), delivered))
        },
        cancel.clone(),
    ));
    let (sinks, sink_changes) = Sinks::new(Arc::new(runtime.clone()));
    broker.add_observer(sinks.clone());
    tasks.spawn(sink::run(
        sinks.clone(),
        broker.clone(),
        sink_changes,
        cancel.clone(),
    ));
    sinks.write_all();
    let scheduler = Scheduler::start(
        broker.clone(),
        &settings.scheduler,
        watchdog(&settings),
        &tasks,
    )
    .await?;
    broker.sweep(); // catch up at once rather than at the first tick

    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        socket = %settings.api.socket.display(),
        http = settings.api.http.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        accounts = broker.account_count(),
        "tokenbroker ready"
    );

    let mut live = Reloader {
        broker: broker.clone(),
        runtime,
        sinks,
        metrics,
        own_uid,
        settings,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => live.reload(reload.as_ref()).await,
        }
    }

    tracing::info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    scheduler.shutdown().await;
    tasks.close();
    // Refreshes in flight are waited for (each is bounded by its provider's timeout), so
    // that a rotated refresh token reaches the store; meanwhile the listeners drain.
    let wait = refresh_wait(&live.settings);
    let (report, drained) = tokio::join!(
        broker.shut_down(wait),
        tokio::time::timeout(listen::DRAIN_TIMEOUT + SHUTDOWN_GRACE, tasks.wait()),
    );
    if drained.is_err() {
        tracing::warn!("some connections or sinks did not finish in time");
    }
    let flushed = tokio::task::spawn_blocking({
        let broker = broker.clone();
        move || broker.flush()
    })
    .await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("final store flush failed");
    }
    drop(socket);
    shutdown_outcome(&report, wait)
}

/// How long shutdown waits for refreshes in flight: the slowest provider's timeout, and a
/// little for the store write after it. `TimeoutStopSec` in the unit leaves room for this.
fn refresh_wait(settings: &Settings) -> Duration {
    let slowest = settings
        .providers
        .iter()
        .map(|p| p.timeout)
        .max()
        .unwrap_or_default();
    slowest + SHUTDOWN_GRACE
}

/// Logs what shutdown could not finish; any grant left only in memory makes the exit a
/// failure, so that an operator (and systemd) see it.
fn shutdown_outcome(report: &ShutdownReport, wait: Duration) -> anyhow::Result<()> {
    for name in &report.abandoned {
        tracing::error!(account = %name, waited_s = wait.as_secs(), "shutdown abandoned a refresh still in flight; if the provider rotated the refresh token, the grant may need to be connected again");
    }
    if report.unfinished && report.abandoned.is_empty() {
        tracing::error!(
            waited_s = wait.as_secs(),
            "shutdown abandoned an import or removal still in flight"
        );
    }
    for name in &report.unsaved {
        tracing::error!(account = %name, "shutdown with a grant that could not be stored: its newest refresh token is lost with this process; free the store's disk before restarting, and connect the account again if the provider rotates refresh tokens");
    }
    if report.unsaved.is_empty() && report.abandoned.is_empty() && !report.unfinished {
        tracing::info!("stopped");
        return Ok(());
    }
    let mut names: Vec<String> = report.unsaved.iter().map(ToString::to_string).collect();
    names.extend(report.abandoned.iter().map(ToString::to_string));
    bail!(
        "stopped without storing every grant (accounts: {})",
        if names.is_empty() {
            "an import in flight".to_owned()
        } else {
            names.join(", ")
        }
    )
}

/// Installs the SIGTERM and SIGINT handlers at once and returns what completes on the first
/// of them. Call it before `bind`: a signal that comes while the daemon is still starting
/// must stop it cleanly, not kill it (the default action). (`run` handles SIGHUP itself.)
///
/// # Errors
/// The signal handlers cannot be installed.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn seed_declared_accounts(
    broker: &Broker,
    accounts: &[DeclaredAccount],
) -> anyhow::Result<()> {
    for account in accounts {
        if let Some(refresh_token) = &account.refresh_token {
            if broker
                .seed(
                    account.name.clone(),
                    &account.provider,
                    refresh_token.clone(),
                )
                .await?
            {
                tracing::info!(account = %account.name, provider = account.provider, "seeded account from the configuration");
            }
        }
    }
    Ok(())
}

/// What each scheduler tick does for systemd: a watchdog ping when the unit asks for them.
/// The pings come from the tick itself, so a stalled scheduler gets the service restarted.
fn watchdog(settings: &Settings) -> std::sync::Arc<dyn Fn() + Send + Sync> {
    match sd_notify::watchdog_enabled() {
        Some(limit) => {
            if settings.scheduler.check_interval * 2 > limit {
                tracing::warn!(
                    check_interval = ?settings.scheduler.check_interval,
                    watchdog = ?limit,
                    "refresh.check_interval is more than half of WatchdogSec; systemd may restart a healthy daemon"
                );
            }
            std::sync::Arc::new(|| notify(&[sd_notify::NotifyState::Watchdog]))
        }
        None => std::sync::Arc::new(|| {}),
    }
}

/// Lets the daemon hold as many connections as the system allows (the soft limit is often
/// 1024), so a flood of connections meets the listener's own cap, not `EMFILE`.
/// A core dump would hold every refresh token in clear: the process writes none (core
/// limit 0) and is not dumpable (no core, and no attaching by other processes of its uid).
fn forbid_core_dumps() {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(error) = setrlimit(Resource::Core, none) {
        tracing::warn!(error = %error, "cannot set the core file limit to 0");
    }
    if let Err(error) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %error, "cannot make the process non-dumpable");
    }
}

fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %error, "cannot raise the open-file limit");
        }
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(error = %error, "cannot notify systemd");
    }
}

/// The bound Unix socket; its file is removed when this is dropped, on every exit path.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// We created the file (and remove it at exit); a socket systemd passed is its own.
    owned: bool,
}

impl SocketFile {
    /// Binds the socket (mode 0660), replacing a stale file but never a live daemon's socket.
    fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("while creating {}", parent.display()))?;
                // Clients must be able to reach the socket; its own mode guards it.
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(metadata) => {
                use std::os::unix::fs::FileTypeExt;
                if !metadata.file_type().is_socket() {
                    bail!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    );
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!(
                        "another process is listening on {}; is tokenbroker already running?",
                        path.display()
                    );
                }
                std::fs::remove_file(path).with_context(|| {
                    format!("while removing the stale socket {}", path.display())
                })?;
                tracing::info!(socket = %path.display(), "replaced a stale socket file");
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("while checking {}", path.display()))
            }
        }
        // Bound, given its mode and group in a directory of our own (0700), then renamed into
        // place: nobody who can write to the socket's directory can swap the new socket for
        // a link between the bind and the chmod, and have us chmod or chown another file.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staging = tempfile::Builder::new()
            .prefix(".tb")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .with_context(|| format!("while binding {}", path.display()))?;
        let staged = staging.path().join("s");
        let listener = UnixListener::bind(&staged)
            .with_context(|| format!("while binding {}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))
                .with_context(|| format!("while giving {} to group {gid}", path.display()))?;
        }
        std::fs::rename(&staged, path)
            .with_context(|| format!("while binding {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
            owned: true,
        })
    }

    /// A socket systemd bound and passed (its mode and group are the socket unit's).
    fn passed(path: &Path, listener: std::os::unix::net::UnixListener) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            listener: Some(
                UnixListener::from_std(listener).context("while taking the passed Unix socket")?,
            ),
            owned: false,
        })
    }

    fn take_listener(&mut self) -> UnixListener {
        self.listener.take().expect("the listener is taken once")
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Issue #15: a user who can write to the socket's directory swaps the new socket for a
    /// link to a file of the daemon's the moment it appears. Binding must never chmod (or
    /// chown) through that link.
    #[tokio::test]
    async fn binding_the_socket_never_follows_a_planted_link() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "the daemon's own file").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("tb.sock");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let attacker = std::thread::spawn({
            let (path, victim, stop) = (path.clone(), victim.clone(), stop.clone());
            move || {
                let mut swapped = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let is_socket =
                        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
                    if is_socket && std::fs::remove_file(&path).is_ok() {
                        let _ = std::os::unix::fs::symlink(&victim, &path);
                        swapped += 1;
                    }
                }
                swapped
            }
        });
        for _ in 0..3000 {
            if let Ok(socket) = super::SocketFile::bind(&path, None) {
                drop(socket);
            }
            let _ = std::fs::remove_file(&path);
            let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "binding changed the mode of a linked file");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(attacker.join().unwrap() > 0, "the attack never ran");
    }

    #[test]
    fn the_daemon_cannot_dump_core() {
        super::forbid_core_dumps();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
