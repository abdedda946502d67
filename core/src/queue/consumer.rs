//! The idempotent consumer: a consumer-side helper that makes the effect of each message happen
//! once, however often the queue delivers it.
//!
//! The consumer's effect (the bytes that describe what processing a message changed) and the
//! message's id go into one frame of the consumer's own storage log, synced before
//! [`IdempotentConsumer::process`] returns: the frame's CRC makes the pair atomic, so after any
//! crash either both are durable or neither is. The consumer acknowledges the message to the
//! queue only after `process` returned; a redelivery (the ack was lost, or the consumer crashed
//! before acking) finds the id and answers [`Processed::AlreadyDone`].
//!
//! ```text
//! kind 16 EFFECT  id u64, effect bytes
//! kind 17 STATE   seen: seq of u64 (oldest first), state bytes
//! ```
//!
//! # Guarantees
//!
//! - Replay on open hands the application the last STATE snapshot and then every EFFECT after
//!   it, in order ([`Replay`]): the application rebuilds its state from them, so its state
//!   reflects each processed message exactly once.
//! - The processed-id table remembers the last `SEEN` processed ids. A STATE checkpoint carries
//!   it, so the window survives restarts.
//! - Space is reclaimed: [`IdempotentConsumer::checkpoint`] writes the application's snapshot and
//!   releases every segment before it.
//!
//! # Not guaranteed
//!
//! - A redelivery of a message processed more than `SEEN` messages ago is processed again: keep
//!   `SEEN` above the number of messages that may be processed while one delivery's ack is in
//!   doubt. Within a lease that is about the messages processed in one lease time, but after a
//!   queue restart every unacknowledged message is pending again and comes back in id order,
//!   so an in-doubt message may return behind the whole backlog of its queue: the safe size is
//!   the queue's live-message capacity (`MESSAGES`), or the largest backlog the application
//!   allows. (The simulation found a duplicate with `SEEN` = 32 and a backlog above it.)
//! - Checkpoints are the application's to take (it owns the snapshot): when the log fills,
//!   `process` fails with [`ConsumerError::Full`] until it does.

use heapless::{Deque, Vec};

use super::record::decode_exact;
use super::MessageId;
use crate::frame::EmitError;
use crate::log::{self, AppendError, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::storage::Storage;

/// Kind of a frame holding one processed message: its id and the consumer's effect.
pub const KIND_EFFECT: u8 = log::KIND_USER_MIN;
/// Kind of a frame holding the processed-id table and the application's snapshot.
pub const KIND_STATE: u8 = log::KIND_USER_MIN + 1;

/// How an idempotent consumer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Largest effect in bytes.
    pub effect_max: u32,
    /// Largest application snapshot in bytes.
    pub state_max: u32,
    /// The log underneath; its `payload_max` is raised to what the records need.
    pub log: log::Config,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            effect_max: 256,
            state_max: 256,
            log: log::Config::default(),
        }
    }
}

/// What replay hands the application, in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay<'a> {
    /// The snapshot of the last checkpoint: the application's state is exactly this.
    State(&'a [u8]),
    /// The effect of processing message `id`: apply it.
    Effect {
        /// The message processed.
        id: MessageId,
        /// Its effect.
        effect: &'a [u8],
    },
}

/// What [`IdempotentConsumer::process`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Processed {
    /// The effect and the id are durable: apply the effect, then ack the message.
    Processed,
    /// The id was processed already: do nothing but ack the message.
    AlreadyDone,
}

/// Why an idempotent consumer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConsumerError<E> {
    /// The effect or snapshot is larger than configured; nothing changed.
    TooLarge,
    /// Every segment is live: take a checkpoint; nothing changed.
    Full,
    /// The append failed; nothing was written. A storage error poisons the consumer.
    Append(AppendError<E>),
    /// The sync failed: the consumer is poisoned, and whether the effect is durable is unknown
    /// until a reopen replays it (or not). Do not apply the effect, do not ack.
    Sync(SyncError<E>),
    /// An earlier storage error poisoned the consumer; nothing changed. Reopen it.
    Poisoned,
}

impl<E: core::fmt::Display> core::fmt::Display for ConsumerError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge => write!(f, "the effect or snapshot is larger than configured"),
            Self::Full => write!(f, "the consumer's log is full: take a checkpoint"),
            Self::Append(error) => write!(f, "append failed: {error}"),
            Self::Sync(error) => write!(f, "sync failed, outcome unknown: {error}"),
            Self::Poisoned => write!(f, "an earlier storage error poisoned the consumer"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for ConsumerError<E> {}

/// Remembers a processed id, forgetting the oldest when full.
fn remember<const SEEN: usize>(seen: &mut Deque<u64, SEEN>, id: u64) {
    if seen.is_full() {
        seen.pop_front();
    }
    // Room was just made (a table of capacity 0 remembers nothing).
    let _ = seen.push_back(id);
}

/// Applies one replayed frame to the table and hands it to the application.
fn replay_entry<const SEEN: usize>(
    seen: &mut Deque<u64, SEEN>,
    entry: log::Entry<'_>,
    visit: &mut impl FnMut(Replay<'_>),
) -> Result<(), ReplayError> {
    let sequence = entry.sequence;
    let bad = ReplayError::BadPayload { sequence };
    match entry.kind {
        KIND_EFFECT => {
            let (id, effect): (u64, &[u8]) = decode_exact(entry.payload).ok_or(bad)?;
            // Yielded again before a release became durable: already applied.
            if seen.iter().any(|&done| done == id) {
                return Ok(());
            }
            remember(seen, id);
            visit(Replay::Effect {
                id: MessageId(id),
                effect,
            });
        }
        KIND_STATE => {
            let (ids, state): (Vec<u64, SEEN>, &[u8]) = decode_exact(entry.payload).ok_or(bad)?;
            seen.clear();
            for id in ids {
                remember(seen, id);
            }
            visit(Replay::State(state));
        }
        kind => return Err(ReplayError::UnknownKind { sequence, kind }),
    }
    Ok(())
}

/// A consumer's effects and processed ids on its own storage log. See the [queue module
/// docs](super) and the guarantees below.
///
/// Effect and id share one frame (atomic by its CRC), synced before [`Self::process`] returns;
/// the last `SEEN` processed ids are remembered (checkpointed with the application's snapshot by
/// [`Self::checkpoint`]); a redelivery of an older id is processed again.
#[derive(Debug)]
pub struct IdempotentConsumer<S, B, const SEEN: usize> {
    log: Log<S, B>,
    config: ConsumerConfig,
    seen: Deque<u64, SEEN>,
    poisoned: bool,
}

impl<S: Storage, B: AsMut<[u8]>, const SEEN: usize> IdempotentConsumer<S, B, SEEN> {
    /// Opens the consumer stored in `storage`, handing `visit` the last snapshot and every
    /// effect after it, in order.
    pub fn open(
        storage: S,
        buffer: B,
        config: ConsumerConfig,
        mut visit: impl FnMut(Replay<'_>),
    ) -> Result<(Self, Recovery), OpenError<S::Error, ReplayError>> {
        let effect_len = 10 + 5 + config.effect_max as usize;
        let state_len = 5 + SEEN.saturating_mul(10) + 5 + config.state_max as usize;
        let needed = u32::try_from(effect_len.max(state_len)).unwrap_or(u32::MAX);
        let log_config = log::Config {
            payload_max: config.log.payload_max.max(needed),
            ..config.log
        };
        let mut seen = Deque::new();
        let (log, recovery) = Log::open(storage, buffer, log_config, |entry| {
            replay_entry(&mut seen, entry, &mut visit)
        })?;
        let consumer = Self {
            log,
            config,
            seen,
            poisoned: false,
        };
        Ok((consumer, recovery))
    }

    /// Whether message `id` is among the last `SEEN` processed.
    pub fn is_done(&self, id: MessageId) -> bool {
        self.seen.iter().any(|&done| done == id.0)
    }

    /// Records `effect` as the outcome of processing message `id`, durably and atomically with
    /// the id, unless `id` was processed already. Apply the effect only on
    /// [`Processed::Processed`]; ack the message to the queue on either outcome.
    pub fn process(
        &mut self,
        id: MessageId,
        effect: &[u8],
    ) -> Result<Processed, ConsumerError<S::Error>> {
        if self.poisoned {
            return Err(ConsumerError::Poisoned);
        }
        if self.is_done(id) {
            return Ok(Processed::AlreadyDone);
        }
        if effect.len() > self.config.effect_max as usize {
            return Err(ConsumerError::TooLarge);
        }
        self.append(KIND_EFFECT, &(id.0, effect))?;
        self.log.sync().map_err(|error| self.sync_failed(error))?;
        remember(&mut self.seen, id.0);
        Ok(Processed::Processed)
    }

    /// Writes the application's snapshot `state` with the processed-id table, releases every
    /// segment before it, and syncs. Replay then starts from this snapshot.
    pub fn checkpoint(&mut self, state: &[u8]) -> Result<(), ConsumerError<S::Error>> {
        if self.poisoned {
            return Err(ConsumerError::Poisoned);
        }
        if state.len() > self.config.state_max as usize {
            return Err(ConsumerError::TooLarge);
        }
        let mut ids: Vec<u64, SEEN> = Vec::new();
        for &id in self.seen.iter() {
            // Both hold SEEN ids at most.
            let _ = ids.push(id);
        }
        let appended = self.append(KIND_STATE, &(ids, state))?;
        self.log
            .release_before(appended)
            .map_err(|error| self.sync_failed(error))?;
        self.log.sync().map_err(|error| self.sync_failed(error))
    }

    /// Syncs and marks a clean shutdown (see [`Log::close`]).
    pub fn close(self) -> Result<(), ConsumerError<S::Error>> {
        self.log.close().map_err(ConsumerError::Sync)
    }

    /// Gives the storage and buffer back, as a crash would leave them.
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// The log underneath.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    fn append<T: serde::Serialize>(
        &mut self,
        kind: u8,
        value: &T,
    ) -> Result<log::Appended, ConsumerError<S::Error>> {
        self.log
            .append(kind, |area| {
                postcard::to_slice(value, area)
                    .map(|used| used.len())
                    .map_err(|_| EmitError::BufferTooSmall)
            })
            .map_err(|error| match error {
                AppendError::Full => ConsumerError::Full,
                AppendError::Storage(_) | AppendError::Poisoned => {
                    self.poisoned = true;
                    ConsumerError::Append(error)
                }
                _ => ConsumerError::Append(error),
            })
    }

    fn sync_failed(&mut self, error: SyncError<S::Error>) -> ConsumerError<S::Error> {
        self.poisoned = true;
        ConsumerError::Sync(error)
    }
}
