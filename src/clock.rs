//! The one place that reads wall-clock time, and the monotonic clock beside it.
//!
//! Expiry and due times are wall-clock instants (so a machine that slept catches up when it
//! wakes); the monotonic clock keeps a backward step of the wall clock from stretching them
//! (a token is valid for the lesser of the two readings). Everything that needs "now" takes a
//! `Clock`, and tests hand in a `ManualClock`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The current monotonic time: never steps back, does not count a suspended machine.
    fn monotonic(&self) -> Instant;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The single sanctioned read of the system clock.
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Readings>>,
}

#[derive(Debug, Clone, Copy)]
struct Readings {
    wall: SystemTime,
    monotonic: Instant,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(Readings {
                wall: start,
                monotonic: Instant::now(),
            })),
        }
    }

    /// Lets time pass: both clocks move forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.readings();
        now.wall += by;
        now.monotonic += by;
    }

    /// Steps the wall clock to an arbitrary instant, backwards included (as an operator or
    /// NTP would); the monotonic clock does not move.
    pub fn set(&self, to: SystemTime) {
        self.readings().wall = to;
    }

    /// Moves only the wall clock forward: a machine that was suspended (the monotonic
    /// clock does not count a suspension), or a forward step.
    pub fn jump(&self, by: Duration) {
        self.readings().wall += by;
    }

    fn readings(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.now.lock().expect("clock lock is never poisoned")
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.readings().wall
    }

    fn monotonic(&self) -> Instant {
        self.readings().monotonic
    }
}
