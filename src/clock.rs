//! The one place that reads wall-clock time.
//!
//! Expiry and due times are wall-clock instants (so a machine that slept catches up when it
//! wakes); everything that needs "now" takes a `Clock`, and tests hand in a `ManualClock`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
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
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward (a wall-clock jump, or time passing).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().expect("clock lock is never poisoned");
        *now += by;
    }

    /// Sets the clock to an arbitrary instant, backwards included.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().expect("clock lock is never poisoned") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().expect("clock lock is never poisoned")
    }
}
