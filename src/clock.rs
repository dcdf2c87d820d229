//! Time, injected.
//!
//! The engine never reads the system clock directly: windows, `since(...)`, decay and
//! timers all ask a [`Clock`]. Production uses [`SystemClock`]; tests use
//! [`ManualClock`] and move time by exact amounts, so "30 minutes later" is a function
//! call and a test of expiry is deterministic on any machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock {
            now: AtomicI64::new(start_ms),
        }
    }

    /// Moves the clock forward (or backward: the engine never lets its own time go back).
    pub fn advance_ms(&self, delta: i64) {
        self.now.fetch_add(delta, Ordering::SeqCst);
    }

    pub fn advance_secs(&self, delta: i64) {
        self.advance_ms(delta * 1000);
    }

    pub fn set_ms(&self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}
