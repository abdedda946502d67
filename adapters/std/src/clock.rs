//! [`MonotonicClock`]: core's [`Instant`] read from `std::time::Instant`.
//!
//! Guaranteed: the clock never goes backwards (it is the operating system's monotonic clock,
//! `CLOCK_MONOTONIC` on Linux), and it starts at [`Instant::ZERO`] when it is created, so the
//! values stay small and readable in logs. Not guaranteed: any relation to wall-clock time or to
//! another `MonotonicClock`'s values; on Linux the clock does not advance while the machine is
//! suspended.

use std::time::Instant as StdInstant;

use bedrock::time::Instant;

/// Microseconds since the clock was created, as core's [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: StdInstant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: StdInstant::now(),
        }
    }

    /// The time since the clock was created (saturating after about 584,000 years).
    pub fn now(&self) -> Instant {
        let micros = self.origin.elapsed().as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_starts_near_zero_and_never_goes_backwards() {
        let clock = MonotonicClock::new();
        let first = clock.now();
        assert!(first < Instant::from_millis(1000));
        std::thread::sleep(Duration::from_millis(2));
        let second = clock.now();
        assert!(second.saturating_duration_since(first) >= Duration::from_millis(2));
        assert!(clock.now() >= second);
    }
}
