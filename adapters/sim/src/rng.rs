//! A small seeded pseudo-random generator: xoshiro256** seeded through splitmix64.
//!
//! Guaranteed: the same seed yields the same sequence on every platform and every build, because
//! the algorithm uses only wrapping integer arithmetic and [`SimRng::chance`] compares an exactly
//! representable `f64`. That is what lets one seed replay one simulated run byte for byte.
//!
//! Not guaranteed: any cryptographic quality. Never use it for keys or nonces.

/// A deterministic xoshiro256** generator. Cheap to clone; a clone continues the same sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    state: [u64; 4],
}

/// One step of splitmix64, the generator recommended to seed xoshiro from a single `u64`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimRng {
    /// A generator whose whole sequence is fixed by `seed`. Every seed, zero included, is fine.
    pub fn new(seed: u64) -> Self {
        let mut mix = seed;
        let state = [
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
        ];
        // splitmix64 is a bijection over distinct inputs, so the four words are never all zero.
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// A uniformly distributed value in `0..bound`; `0` when `bound` is `0`.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Lemire's multiply-shift with rejection: unbiased and almost always one draw.
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniformly distributed value in `low..=high`; `low` when `high < low`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// `true` with probability `probability` (clamped to `0.0..=1.0`; NaN counts as `0.0`).
    pub fn chance(&mut self, probability: f64) -> bool {
        // Draw even for the edge cases so the sequence does not depend on the probability.
        let unit = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        unit < probability
    }

    /// Fills `bytes` with random bytes.
    pub fn fill_bytes(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// A new generator seeded from this one: an independent stream for a sub-component (one per
    /// simulated node or disk), so adding draws in one component does not shift the others.
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }
}

impl bedrock::rng::Rng for SimRng {
    fn next_u64(&mut self) -> u64 {
        SimRng::next_u64(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut first = SimRng::new(42);
        let mut second = SimRng::new(42);
        for _ in 0..1000 {
            assert_eq!(first.next_u64(), second.next_u64());
        }
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
    }

    #[test]
    fn the_sequence_matches_the_reference_algorithm() {
        // xoshiro256** from state [1, 2, 3, 4], as in the reference C implementation.
        let mut rng = SimRng {
            state: [1, 2, 3, 4],
        };
        let expected = [11520, 0, 1509978240, 1215971899390074240];
        for value in expected {
            assert_eq!(rng.next_u64(), value);
        }
    }

    #[test]
    fn bounded_draws_stay_in_bounds() {
        let mut rng = SimRng::new(7);
        for bound in 1..200 {
            assert!(rng.below(bound) < bound);
        }
        assert_eq!(rng.below(0), 0);
        for _ in 0..100 {
            let value = rng.between(10, 12);
            assert!((10..=12).contains(&value));
        }
        assert_eq!(rng.between(5, 3), 5);
        let _ = rng.between(0, u64::MAX);
    }

    #[test]
    fn chance_respects_certain_and_impossible_events() {
        let mut rng = SimRng::new(3);
        for _ in 0..1000 {
            assert!(rng.chance(1.0));
            assert!(!rng.chance(0.0));
            assert!(!rng.chance(f64::NAN));
        }
        let hits = (0..10_000).filter(|_| rng.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits} hits");
    }

    #[test]
    fn fill_bytes_covers_partial_words() {
        let mut rng = SimRng::new(9);
        let mut bytes = [0u8; 13];
        rng.fill_bytes(&mut bytes);
        assert!(bytes.iter().any(|&byte| byte != 0));
    }
}
