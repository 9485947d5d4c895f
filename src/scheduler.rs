//! The sweep tick: a tokio-cron-scheduler job that asks the broker to start due refreshes.
//!
//! A cron-expression job (not `new_repeated`, which stops firing after running late), guarded
//! against overlap. The scheduler owns timing only; which accounts are due is the broker's
//! wall-clock comparison, so a machine that slept catches up on the first tick after waking.
//! tokio-cron-scheduler computes its next tick from the wall clock, so a backward step of
//! the clock stops its ticks for as long as the step: a guard on the monotonic clock notices
//! missing ticks and sweeps itself until they return.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;

/// The scheduler's settings, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Time between sweeps.
    pub check_interval: Duration,
}

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The interval has no cron form.
    #[error(
        "check_interval {0:?} must be 1 to 59 seconds, or a whole number of minutes from 1 to 59"
    )]
    Interval(Duration),
    /// tokio-cron-scheduler refused.
    #[error("the scheduler failed to start: {0}")]
    Start(String),
}

impl From<JobSchedulerError> for SchedulerError {
    fn from(error: JobSchedulerError) -> Self {
        Self::Start(error.to_string())
    }
}

/// The cron expression (with seconds) for a sweep every `interval`.
///
/// # Errors
/// Intervals with no cron form: zero, fractional seconds, over an hour, or minutes and seconds mixed.
pub fn cron_expression(interval: Duration) -> Result<String, SchedulerError> {
    let seconds = interval.as_secs();
    if interval.subsec_nanos() != 0 {
        return Err(SchedulerError::Interval(interval));
    }
    match seconds {
        1..=59 => Ok(format!("*/{seconds} * * * * *")),
        60..=3540 if seconds % 60 == 0 => Ok(format!("0 */{} * * * *", seconds / 60)),
        _ => Err(SchedulerError::Interval(interval)),
    }
}

/// A running sweep job and its guard.
#[allow(missing_debug_implementations)] // JobScheduler has no Debug
pub struct Scheduler {
    inner: JobScheduler,
    /// Ends the guard task (spawned on the tracker the caller gave).
    stop_guard: CancellationToken,
}

/// What a tick does, shared by the cron job and the guard: one sweep at a time, then
/// `on_tick` (the watchdog ping), and a count the guard watches.
struct Runner {
    sweep: Arc<dyn Fn() -> usize + Send + Sync>,
    on_tick: Arc<dyn Fn() + Send + Sync>,
    running: AtomicBool,
    ticks: AtomicU64,
}

impl Runner {
    fn tick(&self) {
        // Cron runs are spawned and may overlap if one is slow; let only one sweep at a time.
        if self.running.swap(true, Ordering::AcqRel) {
            tracing::debug!("previous sweep still running; skipping this tick");
            return;
        }
        let started = (self.sweep)();
        self.running.store(false, Ordering::Release);
        self.ticks.fetch_add(1, Ordering::AcqRel);
        (self.on_tick)();
        tracing::trace!(tasks_started = started, "sweep");
    }

    fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }
}

impl Scheduler {
    /// Starts sweeping every `config.check_interval`; `on_tick` runs after each sweep (the
    /// daemon pings the systemd watchdog there, so the pings stop if the sweeps do).
    ///
    /// # Errors
    /// A bad interval, or the scheduler failed to start.
    /// The guard task is spawned on `tasks`; `shutdown` ends it.
    pub async fn start(
        broker: Broker,
        config: &Config,
        on_tick: Arc<dyn Fn() + Send + Sync>,
        tasks: &TaskTracker,
    ) -> Result<Self, SchedulerError> {
        let sweep = move || broker.sweep().len();
        Self::start_with(Arc::new(sweep), config, on_tick, tasks).await
    }

    /// As `start`, with `sweep` doing the work of each tick (it returns how many tasks it
    /// started).
    async fn start_with(
        sweep: Arc<dyn Fn() -> usize + Send + Sync>,
        config: &Config,
        on_tick: Arc<dyn Fn() + Send + Sync>,
        tasks: &TaskTracker,
    ) -> Result<Self, SchedulerError> {
        let expression = cron_expression(config.check_interval)?;
        let runner = Arc::new(Runner {
            sweep,
            on_tick,
            running: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let job = Job::new_async(expression.as_str(), {
            let runner = runner.clone();
            move |_id, _scheduler| {
                let runner = runner.clone();
                Box::pin(async move { runner.tick() })
            }
        })?;
        let inner = JobScheduler::new().await?;
        inner.add(job).await?;
        inner.start().await?;
        let stop_guard = CancellationToken::new();
        let guarding = guard(runner, config.check_interval);
        let stopped = stop_guard.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = guarding => {}
                () = stopped.cancelled() => {}
            }
        });
        Ok(Self { inner, stop_guard })
    }

    /// Stops ticking.
    pub async fn shutdown(mut self) {
        self.stop_guard.cancel();
        if let Err(error) = self.inner.shutdown().await {
            tracing::warn!(error = %error, "scheduler did not shut down cleanly");
        }
    }
}

/// Every two intervals of the monotonic clock, sweeps if no tick came in that time.
async fn guard(runner: Arc<Runner>, interval: Duration) {
    let mut timer = tokio::time::interval(interval * 2);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await; // the first tick is immediate
    let mut seen = runner.ticks();
    let mut covering = false;
    loop {
        timer.tick().await;
        let ticks = runner.ticks();
        if ticks == seen {
            if !covering {
                tracing::warn!(
                    "the scheduler's ticks stopped (did the wall clock step back?); sweeping on the monotonic clock until they return"
                );
                covering = true;
            }
            runner.tick();
        } else if covering {
            tracing::info!("the scheduler's ticks are back");
            covering = false;
        }
        seen = runner.ticks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_map_to_cron_expressions() {
        assert_eq!(
            cron_expression(Duration::from_secs(30)).unwrap(),
            "*/30 * * * * *"
        );
        assert_eq!(
            cron_expression(Duration::from_secs(1)).unwrap(),
            "*/1 * * * * *"
        );
        assert_eq!(
            cron_expression(Duration::from_secs(300)).unwrap(),
            "0 */5 * * * *"
        );
        for bad in [0, 90, 3600, 7200] {
            assert!(cron_expression(Duration::from_secs(bad)).is_err(), "{bad}");
        }
        assert!(cron_expression(Duration::from_millis(1500)).is_err());
    }

    fn counting_runner(sweeps: &Arc<std::sync::atomic::AtomicUsize>) -> Arc<Runner> {
        let counted = sweeps.clone();
        Arc::new(Runner {
            sweep: Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                0
            }),
            on_tick: Arc::new(|| {}),
            running: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        })
    }

    /// The cron job's ticks stop (its next tick is computed from a wall clock that stepped
    /// back); the guard, on tokio's monotonic clock (paused here), sweeps in their place.
    #[tokio::test(start_paused = true)]
    async fn the_guard_sweeps_when_the_wall_clock_ticks_stop_and_not_otherwise() {
        use std::sync::atomic::AtomicUsize;
        let sweeps = Arc::new(AtomicUsize::new(0));
        let runner = counting_runner(&sweeps);
        let interval = Duration::from_secs(30);
        let guard = tokio::spawn(guard(runner.clone(), interval));
        // Ticks come every interval, as they should: the guard leaves them alone.
        for _ in 0..10 {
            tokio::time::sleep(interval).await;
            runner.tick();
        }
        assert_eq!(
            sweeps.load(Ordering::SeqCst),
            10,
            "only the cron ticks swept"
        );
        // Ticks stop for ten minutes: the guard sweeps every two intervals meanwhile.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let covered = sweeps.load(Ordering::SeqCst) - 10;
        assert!(
            (9..=10).contains(&covered),
            "{covered} guard sweeps in 600 s"
        );
        guard.abort();
    }

    /// A sweep that never returns (a deadlock, a hung store) stops the ticks' `on_tick`, and
    /// with it the watchdog pings, so systemd restarts the service; later ticks are skipped
    /// rather than piled up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_stalled_sweep_stops_the_watchdog_pings() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::mpsc;

        let sweeps = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let (stalled_tx, stalled_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let sweep = {
            let sweeps = sweeps.clone();
            move || {
                // The third sweep hangs until the test releases it.
                if sweeps.fetch_add(1, Ordering::SeqCst) == 2 {
                    stalled_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                }
                0
            }
        };
        let on_tick = {
            let pings = pings.clone();
            move || {
                pings.fetch_add(1, Ordering::SeqCst);
            }
        };
        let config = Config {
            check_interval: Duration::from_secs(1),
        };
        let tasks = TaskTracker::new();
        let scheduler = Scheduler::start_with(Arc::new(sweep), &config, Arc::new(on_tick), &tasks)
            .await
            .unwrap();
        let stalled =
            tokio::task::spawn_blocking(move || stalled_rx.recv_timeout(Duration::from_secs(10)));
        stalled.await.unwrap().expect("the third tick within 10 s");
        assert_eq!(pings.load(Ordering::SeqCst), 2, "a ping per finished sweep");
        // Three more ticks come and go (skipped: the sweep is still running); no ping.
        let mut waited = 0;
        while sweeps.load(Ordering::SeqCst) == 3 && waited < 4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            waited += 1;
        }
        assert_eq!(
            sweeps.load(Ordering::SeqCst),
            3,
            "no sweep overlaps the stalled one"
        );
        assert_eq!(pings.load(Ordering::SeqCst), 2, "no pings while stalled");
        release_tx.send(()).unwrap();
        let mut waited = 0;
        while pings.load(Ordering::SeqCst) < 4 && waited < 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(
            pings.load(Ordering::SeqCst) >= 4,
            "pings resume once the sweep returns"
        );
        scheduler.shutdown().await;
    }
}
