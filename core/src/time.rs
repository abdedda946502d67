//! Core's notion of time: an [`Instant`] of a monotonic clock, in microseconds, passed in by the
//! caller. Core never reads a clock; adapters do (`std::time::Instant`, a hardware timer, or the
//! simulator's virtual clock).
//!
//! Guaranteed: arithmetic saturates instead of panicking or wrapping, so a clock value from any
//! source is safe to compute with. Not guaranteed: any relation to wall-clock time; an `Instant`
//! only means something relative to other instants of the same clock.

use core::ops::Add;
use core::time::Duration;

/// A point in time of a monotonic clock, as microseconds since an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The clock's origin.
    pub const ZERO: Self = Self { micros: 0 };
    /// The latest representable instant: a deadline that never comes.
    pub const MAX: Self = Self { micros: u64::MAX };

    /// The instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Self { micros }
    }

    /// The instant `millis` milliseconds after the origin (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Self {
            micros: millis.saturating_mul(1000),
        }
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// `self + duration`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Self {
            micros: self.micros.saturating_add(micros),
        }
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    fn add(self, duration: Duration) -> Self {
        self.saturating_add(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let near_end = Instant::from_micros(u64::MAX - 5);
        assert_eq!(near_end + Duration::from_secs(1), Instant::MAX);
        assert_eq!(
            Instant::ZERO.saturating_duration_since(near_end),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_millis(3).saturating_duration_since(Instant::from_micros(1000)),
            Duration::from_micros(2000)
        );
    }
}
