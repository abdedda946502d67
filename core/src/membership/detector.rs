//! The arithmetic of failure detection, as pure functions: phi accrual, the suspicion timeout
//! that shrinks with confirmations, and the retransmission count. `no_std` has no logarithm, so
//! [`log2`] interpolates linearly between powers of two (error below 0.09): the timeouts only
//! need to grow slowly and monotonically with the cluster, not to be exact.

use core::time::Duration;

/// Inter-arrival times kept per member for the phi score.
pub const ARRIVALS: usize = 16;

/// The recent inter-arrival times of messages from one member, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrivals {
    intervals_ms: [u32; ARRIVALS],
    len: u8,
    next: u8,
    last_ms: Option<u64>,
}

impl Arrivals {
    /// No arrival yet.
    pub const fn new() -> Self {
        Self {
            intervals_ms: [0; ARRIVALS],
            len: 0,
            next: 0,
            last_ms: None,
        }
    }

    /// Records an arrival at `now_ms`. Arrivals closer than `floor_ms` to the previous one
    /// are one burst (a ping and its piggybacked digest): they move the last arrival but add no
    /// interval, so bursts do not shrink the mean and inflate phi.
    pub fn record(&mut self, now_ms: u64, floor_ms: u64) {
        if let Some(last) = self.last_ms {
            let interval = now_ms.saturating_sub(last);
            if interval < floor_ms {
                self.last_ms = Some(now_ms);
                return;
            }
            self.intervals_ms[usize::from(self.next)] = u32::try_from(interval).unwrap_or(u32::MAX);
            self.next = (self.next + 1) % ARRIVALS as u8;
            self.len = (self.len + 1).min(ARRIVALS as u8);
        }
        self.last_ms = Some(now_ms);
    }

    /// When the last arrival was, in milliseconds (`None` before the first).
    pub fn last_ms(&self) -> Option<u64> {
        self.last_ms
    }

    /// The phi score at `now_ms`, assuming exponentially distributed inter-arrival times (as
    /// Cassandra and chitchat do): `phi = -log10(P(no arrival for t)) = t / (mean · ln 10)`.
    /// `None` until two arrivals were seen.
    pub fn phi(&self, now_ms: u64) -> Option<f32> {
        let last = self.last_ms?;
        if self.len == 0 {
            return None;
        }
        let window = &self.intervals_ms[..usize::from(self.len)];
        let sum: u64 = window.iter().map(|&ms| u64::from(ms)).sum();
        let mean = (sum as f32 / f32::from(self.len)).max(1.0);
        let elapsed = now_ms.saturating_sub(last) as f32;
        Some(elapsed / (mean * core::f32::consts::LN_10))
    }
}

impl Default for Arrivals {
    fn default() -> Self {
        Self::new()
    }
}

/// log2 of `x` (1 when `x` < 1 is clamped to 0): the exponent plus the mantissa as a linear
/// fraction.
pub fn log2(x: f32) -> f32 {
    if x <= 1.0 {
        return 0.0;
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = (bits & 0x7f_ffff) as f32 / 8_388_608.0;
    exponent as f32 + mantissa
}

/// log10 of `x`, approximated through [`log2`].
pub fn log10(x: f32) -> f32 {
    log2(x) * core::f32::consts::LOG10_2
}

/// The suspicion timeout after `confirmations` independent confirmations (memberlist's
/// formula): it starts at `max_mult · min` and falls toward `min = mult · max(1, log10(n)) ·
/// period` as `log(c + 1) / log(needed + 1)`, reaching `min` at `needed` confirmations.
pub fn suspicion_timeout(
    mult: u32,
    max_mult: u32,
    members: usize,
    period: Duration,
    confirmations: usize,
    needed: usize,
) -> Duration {
    let scale = log10(members.max(1) as f32).max(1.0);
    let min = period.mul_f32(mult as f32 * scale);
    let max = min.saturating_mul(max_mult.max(1));
    if needed == 0 || confirmations >= needed {
        return min;
    }
    let fraction = log2((confirmations + 1) as f32) / log2((needed + 1) as f32);
    let shrink = (max - min).mul_f32(fraction.clamp(0.0, 1.0));
    (max - shrink).max(min)
}

/// How many datagrams carry each update: `mult · ceil(log10(n + 1))` (memberlist's
/// retransmit multiplier), at least 1, at most 255.
pub fn retransmits(mult: u32, members: usize) -> u8 {
    let mut digits = 0u32;
    let mut power = 1usize;
    while power < members.saturating_add(1) {
        power = power.saturating_mul(10);
        digits += 1;
    }
    u8::try_from(mult.saturating_mul(digits.max(1)))
        .unwrap_or(u8::MAX)
        .max(1)
}
