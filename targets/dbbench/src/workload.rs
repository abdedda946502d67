//! db_bench's workloads over any [`Engine`]: keys, values, and the timed loops.
//!
//! Keys are 16 bytes, the entry's number in decimal with leading zeros (db_bench's
//! `%016d`), so that key order is number order. Values are 100 bytes: 50 pseudo-random bytes
//! and the same 50 again, which compresses to about half (db_bench's default compression
//! ratio of 0.5). Every random choice comes from a [`Rng`] with a fixed seed, so every engine
//! sees the same keys in the same order.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Entry, Result};

pub const KEY_LEN: usize = 16;
pub const VALUE_LEN: usize = 100;
/// Bytes of user data per entry.
pub const ENTRY_LEN: u64 = (KEY_LEN + VALUE_LEN) as u64;

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0; the bias is below 2^-40 for the bounds used here).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// The key of entry `number`.
pub fn key(number: u64) -> [u8; KEY_LEN] {
    let mut key = [b'0'; KEY_LEN];
    let mut rest = number;
    for byte in key.iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// A value: 50 random bytes, twice.
pub fn value(rng: &mut Rng) -> [u8; VALUE_LEN] {
    let mut value = [0u8; VALUE_LEN];
    let half = VALUE_LEN / 2;
    for chunk in value[..half].chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    value.copy_within(..half, half);
    value
}

/// Operations done in some time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub operations: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Which keys a write workload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// 0, 1, 2, … (fillseq).
    Sequential,
    /// Uniform over `0..entries`, with repeats (fillrandom, overwrite).
    Random,
}

/// Writes `entries` entries in batches of `batch`, each batch synced, until all are written
/// or `budget` has passed (checked after each batch). `first` is the first sequential key.
pub fn fill(
    engine: &dyn Engine,
    order: Order,
    entries: u64,
    batch: usize,
    sync: bool,
    budget: Duration,
    seed: u64,
) -> Result<Rate> {
    let mut rng = Rng::new(seed);
    let mut buffer: Vec<Entry> = Vec::with_capacity(batch);
    let start = Instant::now();
    let mut written = 0;
    while written < entries {
        buffer.clear();
        let count = (entries - written).min(batch as u64);
        for offset in 0..count {
            let number = match order {
                Order::Sequential => written + offset,
                Order::Random => rng.below(entries),
            };
            buffer.push((key(number), value(&mut rng)));
        }
        engine.put_batch(&buffer, sync)?;
        written += count;
        if start.elapsed() >= budget {
            break;
        }
    }
    Ok(Rate {
        operations: written,
        elapsed: start.elapsed(),
    })
}

/// Writes the sequential keys `from..entries` untimed, in unsynced batches, then one synced
/// empty-ish batch (the last entry again) so that all of it is durable.
pub fn complete_fill(engine: &dyn Engine, from: u64, entries: u64, batch: usize) -> Result<()> {
    let mut rng = Rng::new(0xF111);
    let mut buffer: Vec<Entry> = Vec::with_capacity(batch);
    let mut next = from;
    while next < entries {
        buffer.clear();
        let end = (next + batch as u64).min(entries);
        for number in next..end {
            buffer.push((key(number), value(&mut rng)));
        }
        engine.put_batch(&buffer, false)?;
        next = end;
    }
    let last = entries.saturating_sub(1);
    engine.put_batch(&[(key(last), value(&mut rng))], true)
}

/// Random gets of existing keys (`0..entries`), `group` keys per call, until `budget`.
/// Returns the rate and how many keys were not found (0 when the database is whole).
pub fn read_random(
    engine: &dyn Engine,
    entries: u64,
    group: usize,
    budget: Duration,
    seed: u64,
) -> Result<(Rate, u64)> {
    let mut rng = Rng::new(seed);
    let mut keys = Vec::with_capacity(group);
    let start = Instant::now();
    let mut done = 0;
    let mut missing = 0;
    loop {
        keys.clear();
        keys.extend((0..group).map(|_| key(rng.below(entries))));
        let found = engine.get_many(&keys)?;
        done += group as u64;
        missing += group as u64 - found;
        if start.elapsed() >= budget {
            break;
        }
    }
    Ok((
        Rate {
            operations: done,
            elapsed: start.elapsed(),
        },
        missing,
    ))
}

/// One ordered scan from the first entry, until the end or `budget` (checked every 1024
/// entries).
pub fn read_seq(engine: &dyn Engine, budget: Duration) -> Result<Rate> {
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut visited = 0u64;
    let operations = engine.scan(&mut |key, value| {
        bytes += (key.len() + value.len()) as u64;
        visited += 1;
        !visited.is_multiple_of(1024) || start.elapsed() < budget
    })?;
    black_box(bytes);
    Ok(Rate {
        operations,
        elapsed: start.elapsed(),
    })
}

/// `writers` threads each writing one random entry per synced call until `budget`.
pub fn synced_writes(
    engine: &dyn Engine,
    entries: u64,
    writers: usize,
    budget: Duration,
    seed: u64,
) -> Result<Rate> {
    let start = Instant::now();
    let counts: Vec<Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let builder = std::thread::Builder::new().stack_size(crate::STACK_BYTES);
                builder.spawn_scoped(scope, move || -> Result<u64> {
                    let mut rng = Rng::new(seed ^ (writer as u64).wrapping_mul(0x1234_5678_9ABC));
                    let mut done = 0;
                    loop {
                        let entry = (key(rng.below(entries)), value(&mut rng));
                        engine.put_batch(&[entry], true)?;
                        done += 1;
                        if start.elapsed() >= budget {
                            return Ok(done);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err("a writer thread panicked".into())),
                Err(error) => Err(format!("cannot start a writer thread: {error}").into()),
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut operations = 0;
    for count in counts {
        operations += count?;
    }
    Ok(Rate {
        operations,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_decimal_digits_in_number_order() {
        assert_eq!(&key(42), b"0000000000000042");
        assert!(key(9) < key(10));
        assert!(key(999_999) < key(1_000_000));
    }

    #[test]
    fn values_are_a_hundred_bytes_of_two_equal_halves() {
        let mut rng = Rng::new(1);
        let value = value(&mut rng);
        assert_eq!(value[..50], value[50..]);
        assert_ne!(value[..8], value[8..16]);
    }

    #[test]
    fn the_generator_is_deterministic_and_stays_below_its_bound() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.below(1000);
            assert_eq!(x, b.below(1000));
            assert!(x < 1000);
        }
    }
}
