//! The durable counter: a `u64` that survives any crash with every acknowledged increment.
//!
//! Each increment appends a `+n` frame to a [`Log`]; every `checkpoint_every` records (or
//! when the log runs short of free segments) the record written is a checkpoint holding the
//! whole value instead, after which the segments before it are reclaimed. Recovery replays the
//! log: a checkpoint sets the value, an increment adds to it.
//!
//! # Guarantees
//!
//! - [`Counter::incr`] returns the new value only after its record is synced. After any crash the
//!   recovered value is at least the last value returned and at most the last value attempted.
//! - Several increments can share one sync: [`Counter::stage`] each, then [`Counter::commit`]
//!   (group commit). Staged increments are acknowledged only when `commit` returns.
//! - The value never wraps: an increment that would overflow is refused with
//!   [`CounterError::Overflow`] and changes nothing.
//! - Storage stays bounded: checkpoints let the log erase old segments.
//!
//! # Not guaranteed
//!
//! - After mid-log corruption (reported by recovery), the value is that of the consistent prefix
//!   before the damage: acknowledged increments after it are lost, and recovery says so.

use crate::frame::EmitError;
use crate::log::{self, AppendError, Appended, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::storage::Storage;

/// Kind of a frame holding an increment.
pub const KIND_ADD: u8 = log::KIND_USER_MIN;
/// Kind of a frame holding the whole value.
pub const KIND_CHECKPOINT: u8 = log::KIND_USER_MIN + 1;
/// Largest payload a counter frame has: one postcard varint of a u64.
pub const PAYLOAD_MAX: u32 = 10;

/// How a counter is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CounterConfig {
    /// A checkpoint replaces every this-many increment records (at least 1).
    pub checkpoint_every: u32,
    /// The log underneath; its `payload_max` is raised to [`PAYLOAD_MAX`] if smaller.
    pub log: log::Config,
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            log: log::Config {
                payload_max: PAYLOAD_MAX,
                ..log::Config::default()
            },
        }
    }
}

/// Why an increment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CounterError<E> {
    /// The new value would not fit in a u64; nothing changed.
    Overflow,
    /// The record could not be appended; nothing was staged. See [`AppendError`].
    Append(AppendError<E>),
    /// The sync failed: no staged increment is acknowledged and the counter is poisoned.
    Sync(SyncError<E>),
}

/// Errors of [`Counter::open`].
pub type CounterOpenError<E> = OpenError<E, ReplayError>;

/// A durable counter over a log. See the [module docs](self).
#[derive(Debug)]
pub struct Counter<S, B> {
    log: Log<S, B>,
    durable_value: u64,
    staged_value: u64,
    since_checkpoint: u32,
    checkpoint_every: u32,
    pending_release: Option<Appended>,
}

/// Replays one record into `value`.
fn replay(
    value: &mut u64,
    since_checkpoint: &mut u32,
    entry: log::Entry<'_>,
) -> Result<(), ReplayError> {
    let sequence = entry.sequence;
    let amount = match postcard::take_from_bytes::<u64>(entry.payload) {
        Ok((amount, [])) => amount,
        _ => return Err(ReplayError::BadPayload { sequence }),
    };
    match entry.kind {
        KIND_ADD => {
            *value = value
                .checked_add(amount)
                .ok_or(ReplayError::Capacity { sequence })?;
            *since_checkpoint = since_checkpoint.saturating_add(1);
        }
        KIND_CHECKPOINT => {
            *value = amount;
            *since_checkpoint = 0;
        }
        kind => return Err(ReplayError::UnknownKind { sequence, kind }),
    }
    Ok(())
}

impl<S: Storage, B: AsMut<[u8]>> Counter<S, B> {
    /// Opens the counter stored in `storage`, recovering its value.
    pub fn open(
        storage: S,
        buffer: B,
        config: CounterConfig,
    ) -> Result<(Self, Recovery), CounterOpenError<S::Error>> {
        let mut value = 0u64;
        let mut since_checkpoint = 0u32;
        let log_config = log::Config {
            payload_max: config.log.payload_max.max(PAYLOAD_MAX),
            ..config.log
        };
        let (log, recovery) = Log::open(storage, buffer, log_config, |entry| {
            replay(&mut value, &mut since_checkpoint, entry)
        })?;
        let counter = Self {
            log,
            durable_value: value,
            staged_value: value,
            since_checkpoint,
            checkpoint_every: config.checkpoint_every.max(1),
            pending_release: None,
        };
        Ok((counter, recovery))
    }

    /// Adds `by` and returns the new value once it is durable (one sync).
    pub fn incr(&mut self, by: u64) -> Result<u64, CounterError<S::Error>> {
        self.stage(by)?;
        self.commit()
    }

    /// Appends an increment without syncing and returns the value it leads to. Nothing is
    /// acknowledged until [`Counter::commit`] returns.
    pub fn stage(&mut self, by: u64) -> Result<u64, CounterError<S::Error>> {
        let value = self
            .staged_value
            .checked_add(by)
            .ok_or(CounterError::Overflow)?;
        // Checkpoint on schedule, and early when the log runs short of segments, so that a
        // crash never leaves recovery without a free segment to continue in.
        let checkpoint =
            self.since_checkpoint + 1 >= self.checkpoint_every || self.log.free_segments() <= 2;
        let (kind, amount) = if checkpoint {
            (KIND_CHECKPOINT, value)
        } else {
            (KIND_ADD, by)
        };
        let appended = self
            .log
            .append(kind, |area| {
                postcard::to_slice(&amount, area)
                    .map(|used| used.len())
                    .map_err(|_| EmitError::BufferTooSmall)
            })
            .map_err(CounterError::Append)?;
        self.staged_value = value;
        if checkpoint {
            self.since_checkpoint = 0;
            self.pending_release = Some(appended);
        } else {
            self.since_checkpoint += 1;
        }
        Ok(value)
    }

    /// Syncs every staged increment and returns the durable value.
    pub fn commit(&mut self) -> Result<u64, CounterError<S::Error>> {
        // The release goes out with the checkpoint, in the same sync, so that a crash right
        // after the commit does not leave the freed segments counted as live.
        if let Some(checkpoint) = self.pending_release.take() {
            self.log
                .release_before(checkpoint)
                .map_err(CounterError::Sync)?;
        }
        self.log.sync().map_err(CounterError::Sync)?;
        self.durable_value = self.staged_value;
        Ok(self.durable_value)
    }

    /// Commits what is staged and marks a clean shutdown in the same sync, so that the next open
    /// appends in place (see [`Log::close`]). Returns the durable value.
    pub fn close(mut self) -> Result<u64, CounterError<S::Error>> {
        if let Some(checkpoint) = self.pending_release.take() {
            self.log
                .release_before(checkpoint)
                .map_err(CounterError::Sync)?;
        }
        // One sync covers the staged records and the close marker.
        self.log.close().map_err(CounterError::Sync)?;
        Ok(self.staged_value)
    }

    /// The durable value: every increment acknowledged so far.
    pub fn value(&self) -> u64 {
        self.durable_value
    }

    /// The log underneath, for statistics.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    /// Gives the storage and buffer back.
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }
}

impl<E: core::fmt::Display> core::fmt::Display for CounterError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Overflow => f.write_str("the counter would overflow a u64"),
            Self::Append(error) => error.fmt(f),
            Self::Sync(error) => error.fmt(f),
        }
    }
}

#[cfg(test)]
#[allow(clippy::drop_non_drop)] // a drop marks where a process would stop
mod tests {
    use super::*;
    use crate::storage::RamStorage;

    type Ram = RamStorage<4096>;

    fn ram() -> Ram {
        RamStorage::new(8, 512, 0xFF).unwrap()
    }

    fn open(storage: &mut Ram, checkpoint_every: u32) -> (Counter<&mut Ram, [u8; 128]>, Recovery) {
        let config = CounterConfig {
            checkpoint_every,
            ..CounterConfig::default()
        };
        Counter::open(storage, [0u8; 128], config).unwrap()
    }

    #[test]
    fn increments_survive_a_reopen() {
        let mut storage = ram();
        let (mut counter, _) = open(&mut storage, 4);
        assert_eq!(counter.incr(5).unwrap(), 5);
        assert_eq!(counter.incr(7).unwrap(), 12);
        drop(counter);
        let (counter, recovery) = open(&mut storage, 4);
        assert_eq!(counter.value(), 12);
        assert!(recovery.is_clean());
    }

    #[test]
    fn staged_increments_share_one_sync_and_count_only_when_committed() {
        let mut storage = ram();
        let (mut counter, _) = open(&mut storage, 100);
        assert_eq!(counter.stage(1).unwrap(), 1);
        assert_eq!(counter.stage(2).unwrap(), 3);
        assert_eq!(counter.value(), 0, "not acknowledged before commit");
        assert_eq!(counter.commit().unwrap(), 3);
        assert_eq!(counter.value(), 3);
    }

    #[test]
    fn an_overflowing_increment_is_refused_and_changes_nothing() {
        let mut storage = ram();
        let (mut counter, _) = open(&mut storage, 4);
        counter.incr(u64::MAX - 1).unwrap();
        assert_eq!(counter.incr(2), Err(CounterError::Overflow));
        assert_eq!(counter.incr(1).unwrap(), u64::MAX);
        drop(counter);
        let (counter, _) = open(&mut storage, 4);
        assert_eq!(counter.value(), u64::MAX);
    }

    #[test]
    fn checkpoints_keep_a_small_storage_from_filling() {
        let mut storage = ram();
        let (mut counter, _) = open(&mut storage, 16);
        for by in 1..=5000u64 {
            counter.incr(by).unwrap();
        }
        let expected = 5000 * 5001 / 2;
        assert_eq!(counter.value(), expected);
        drop(counter);
        let (counter, recovery) = open(&mut storage, 16);
        assert_eq!(counter.value(), expected);
        assert!(recovery.frames < 64, "replay is bounded by checkpoints");
    }

    #[test]
    fn increments_after_mid_log_corruption_survive_the_next_reopen() {
        let mut storage = ram();
        let (mut counter, _) = open(&mut storage, 1000);
        for _ in 0..10 {
            counter.incr(1).unwrap();
        }
        drop(counter);
        // Damage the third increment record: segment 1 starts at 512, after its header.
        // The header payload is three varints: start epoch 1, segment size 512, write size 8.
        let header = crate::frame::padded_len(1 + 2 + 1, 8);
        let record = crate::frame::padded_len(1, 8);
        let third = 512 + header + 2 * record;
        storage.bytes_mut()[third + 25] ^= 0x40;
        let (mut counter, recovery) = open(&mut storage, 1000);
        let corruption = recovery.corruption.expect("reported");
        assert_eq!(corruption.expected_sequence, Some(2));
        assert_eq!(corruption.frames_skipped, 7);
        assert_eq!(counter.value(), 2, "the consistent prefix");
        counter.incr(100).unwrap();
        drop(counter);
        let (counter, recovery) = open(&mut storage, 1000);
        assert_eq!(counter.value(), 102);
        assert!(recovery.is_clean());
    }
}
