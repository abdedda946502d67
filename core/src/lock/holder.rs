//! The two other ends of a lock: the holder's view of its lease, and the fencing check a
//! protected resource runs on every request.

use core::time::Duration;

use crate::time::Instant;

/// When a holder must treat its lease as lost, by its own monotonic clock: `lease · (1 − ε)`
/// after `first_sent`, the moment it first sent the request that the grant or renewal
/// answers.
///
/// The server counts the lease (`lease`, as its answer reports) from the moment it answered,
/// which came after every send of the request: counting from the first send takes the whole
/// round trip off (the issue's `TTL · (1 − ε) − RTT`, with the round trip measured from the
/// first try, so a retried request whose first send was the one answered stays safe). The
/// `(1 − ε)` covers a holder's clock running up to `ε` faster than the server's; the server in
/// turn grants the lock to nobody else before `ttl · (1 + ε)` (see
/// [`guarded`](super::guarded)). Rounded down to the microsecond.
pub fn holder_deadline(first_sent: Instant, lease: Duration, drift_ppm: u32) -> Instant {
    let micros = lease.as_micros();
    let margin = micros
        .saturating_mul(u128::from(drift_ppm))
        .div_ceil(1_000_000);
    let safe = u64::try_from(micros.saturating_sub(margin)).unwrap_or(u64::MAX);
    first_sent.saturating_add(Duration::from_micros(safe))
}

/// A request refused by a [`Fence`]: its token is below the highest one the resource has seen,
/// so a later holder of the lock has used the resource since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StaleToken {
    /// The token the request carried.
    pub token: u64,
    /// The highest token the resource has seen.
    pub highest: u64,
}

impl core::fmt::Display for StaleToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "fencing token {} is stale: the resource has seen token {}",
            self.token, self.highest
        )
    }
}

impl core::error::Error for StaleToken {}

/// The fencing check of a resource protected by a lock (Kleppmann's fencing tokens): every
/// request to the resource carries the token of the grant its sender holds, and the resource
/// refuses any token below the highest it has accepted.
///
/// A holder that lost its lease without knowing (a pause, a partition) carries a token below
/// its successor's: once the successor used the resource, the stale holder is refused. The
/// same token may be used any number of times (one grant, many writes).
///
/// For the check to hold across the resource's restarts, the highest token must be made
/// durable with (or before) the effect it admitted, and restored with [`Fence::restore`]: a
/// resource that forgot it would take a stale write. A check and its effect must be atomic
/// with respect to other requests (one thread, a lock, or a file lock around both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fence {
    highest: u64,
    refused: u64,
}

impl Fence {
    /// A fence that has seen no token.
    pub const fn new() -> Self {
        Self {
            highest: 0,
            refused: 0,
        }
    }

    /// A fence that has seen tokens up to `highest` (as recorded with the resource's state).
    pub const fn restore(highest: u64) -> Self {
        Self {
            highest,
            refused: 0,
        }
    }

    /// Checks `token` without recording it.
    pub fn check(&self, token: u64) -> Result<(), StaleToken> {
        if token < self.highest {
            return Err(StaleToken {
                token,
                highest: self.highest,
            });
        }
        Ok(())
    }

    /// Admits a request carrying `token`, raising the highest token seen, or refuses it (and
    /// counts the refusal).
    pub fn admit(&mut self, token: u64) -> Result<(), StaleToken> {
        match self.check(token) {
            Ok(()) => {
                self.highest = token;
                Ok(())
            }
            Err(stale) => {
                self.refused += 1;
                Err(stale)
            }
        }
    }

    /// The highest token admitted (0 for none).
    pub const fn highest(&self) -> u64 {
        self.highest
    }

    /// How many requests were refused since this fence was made or restored.
    pub const fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_refuses_tokens_below_the_highest() {
        let mut fence = Fence::new();
        assert_eq!(fence.admit(3), Ok(()));
        assert_eq!(fence.admit(3), Ok(()), "one grant may write many times");
        assert_eq!(fence.admit(7), Ok(()));
        assert_eq!(
            fence.admit(5),
            Err(StaleToken {
                token: 5,
                highest: 7
            })
        );
        assert_eq!(fence.highest(), 7, "a refusal does not lower the fence");
        assert_eq!(fence.refused(), 1);
        let restored = Fence::restore(fence.highest());
        assert!(restored.check(6).is_err());
        assert!(restored.check(7).is_ok());
    }

    #[test]
    fn holder_deadline_takes_the_drift_and_round_trip_off() {
        let sent = Instant::from_micros(1_000_000);
        // 10 s lease, 1 % drift: lost 9.9 s after the first send.
        let end = holder_deadline(sent, Duration::from_secs(10), 10_000);
        assert_eq!(end, Instant::from_micros(10_900_000));
        // The server re-grants only after 10.1 s from its answer, which came after the send.
        let server_guard =
            sent.saturating_add(super::super::guarded(Duration::from_secs(10), 10_000));
        assert!(end < server_guard);
        // No drift: exactly the lease from the first send.
        assert_eq!(
            holder_deadline(sent, Duration::from_millis(1500), 0),
            Instant::from_micros(2_500_000)
        );
        // A drift of 100 % leaves nothing.
        assert_eq!(
            holder_deadline(sent, Duration::from_secs(5), 1_000_000),
            sent
        );
    }
}
