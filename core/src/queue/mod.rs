//! Reliable message delivery (Q1): named queues over a storage log, with idempotent producers,
//! delivery leases and durable acknowledgements.
//!
//! A producer sends a message with its producer id and a sequence number; the queue appends a
//! SEND record (the payload stays in the log) and indexes the message in RAM: its id, queue,
//! log position and state (PENDING, or LEASED with a lease expiry and a delivery token). A
//! consumer receives the oldest PENDING message of a queue under a lease; it acknowledges it
//! with the delivery token, which appends a DELIVERED record; a lease that expires makes the
//! message PENDING again, to be redelivered under a new token, and the old token is refused.
//! Writes are staged and become durable with the group commit ([`Service::commit`](crate::service::Service::commit)); the
//! service replies to a write only after it.
//!
//! # Guarantees
//!
//! - A message acknowledged as sent is durable; it stays in the index until a durable
//!   acknowledgement, and is delivered at least once more if the queue restarts before that.
//! - Idempotent producer: per producer id the queue remembers the highest sequence stored and
//!   its message id. A retry of that sequence returns the original id without storing again;
//!   a lower sequence is refused ([`SendError::SequenceBehind`]: a retry of an older send,
//!   stored already, or out of order); higher sequences may skip numbers. The table holds the
//!   `PRODUCERS` producers that sent most recently; the least recently active one is forgotten
//!   when a new producer arrives, and a retry from a forgotten producer is stored again. The
//!   table is checkpointed, so the window survives restarts.
//! - Order per producer within a queue: ids grow in send order, and [`Queue::receive`] hands
//!   out the PENDING message with the lowest id first. (A redelivery comes after the later
//!   messages already leased, as in every queue with leases.)
//! - A stale acknowledgement (a token from a lease that expired or was redelivered) is
//!   refused and changes nothing.
//! - Space is reclaimed: at every checkpoint the segments before both the checkpoint and the
//!   oldest undelivered SEND are released, so a bounded backlog keeps the log bounded, and
//!   recovery replays only from the oldest live message (or the last checkpoint).
//! - Memory is fixed: `MESSAGES` live messages, `QUEUES` queue names, `PRODUCERS` producers,
//!   `REPLIES` replies waiting. Past a capacity a send is refused ([`SendError::Full`]) and
//!   nothing is lost.
//!
//! # Not guaranteed
//!
//! - Leases live in RAM: after a restart every undelivered message is PENDING again, and
//!   attempt numbers start over. Delivery is at least once; an effect happens exactly once
//!   when the consumer records it with [`IdempotentConsumer`].
//! - Delivery tokens include the configured incarnation: it must grow at every start, or a
//!   token from before a restart may match a new delivery.
//! - The storage must keep room for acknowledgements: sends are refused while fewer than
//!   [`SEND_RESERVE_SEGMENTS`] segments are free, so acks (which free space) can still be
//!   written. A backlog that fills the storage stalls sends until consumers catch up.
//! - A message left unacknowledged pins the segment holding its SEND until
//!   [`Queue::relocate`] copies it to the head of the log ([`Queue::needs_relocation`] says
//!   when). The service does so at a commit when space runs low, if a scratch buffer was lent
//!   ([`Queue::set_relocation_scratch`]); without one, sends are refused
//!   ([`SendError::StorageFull`]) once the log wraps around to the pinned segment. A backlog
//!   of live messages that fills the log still stalls sends: relocation moves messages, it
//!   does not make room for more of them. There is no dead-letter queue: a message that
//!   always fails is redelivered until acknowledged. Every restart begins a fresh segment,
//!   so many restarts without commits can fill the log too; acks are then refused
//!   ([`AckError::Append`]) until a commit releases space.
//! - A consumer that acks a message whose `Acked` reply was lost gets [`AckError::NotLive`]
//!   on its retry: the message is delivered either way.

mod consumer;
mod index;
mod message;
mod record;
mod service;
#[cfg(test)]
mod tests;

pub use consumer::{
    ConsumerConfig, ConsumerError, IdempotentConsumer, Processed, Replay, KIND_EFFECT, KIND_STATE,
};
pub use message::{decode, encode, Malformed, Message, Refusal};
pub use record::{
    checkpoint_len_max, send_len_max, CheckpointRecord, SendRecord, KIND_CHECKPOINT,
    KIND_DELIVERED, KIND_SEND,
};
pub use service::CommitError;

use core::time::Duration;

use heapless::{Deque, String, Vec};

use index::Index;

use crate::log::{self, AppendError, Appended, Log, OpenError, Recovery, ReplayError};
use crate::storage::Storage;
use crate::time::Instant;

/// Longest queue name in bytes.
pub const NAME_MAX: usize = 32;
/// Sends are refused while fewer segments than this are free, keeping room for acks.
pub const SEND_RESERVE_SEGMENTS: u32 = 2;
/// Deliveries remembered for retried `Receive` requests.
const RECENT_DELIVERIES: usize = 32;

/// A message's id: unique in one queue node's storage, growing in send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MessageId(pub u64);

/// How a queue behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Grows at every start: delivery tokens carry it, so a token from before a restart never
    /// matches a new delivery.
    pub incarnation: u32,
    /// Largest message payload in bytes.
    pub message_max: u32,
    /// A checkpoint (and a release of old segments) follows every this-many records (at least 1).
    pub checkpoint_every: u32,
    /// Longest lease a client may ask for.
    pub lease_max: Duration,
    /// The log underneath; its `payload_max` is raised to what the records need.
    pub log: log::Config,
}

impl Config {
    /// Defaults for incarnation `incarnation`: messages up to 1024 bytes, a checkpoint every 64
    /// records, leases up to 10 minutes.
    pub fn new(incarnation: u32) -> Self {
        Self {
            incarnation,
            message_max: 1024,
            checkpoint_every: 64,
            lease_max: Duration::from_secs(600),
            log: log::Config::default(),
        }
    }
}

/// A live message's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Pending,
    Leased { until: Instant, token: u64 },
}

/// One undelivered message, as indexed in RAM (its payload stays in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Live {
    pub id: MessageId,
    /// Index into the queue-name table.
    pub queue: usize,
    /// Where its SEND record is.
    pub at: Appended,
    pub state: State,
    /// Deliveries since this start.
    pub attempts: u32,
}

/// A producer's highest stored sequence and the id it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerState {
    pub producer: u64,
    pub sequence: u64,
    pub id: u64,
}

/// Records `(producer, sequence) → id` when it is the producer's highest, forgetting the least
/// recently active producer when full. The table stays ordered least recently active first.
pub(crate) fn remember_producer<const P: usize>(
    producers: &mut Vec<ProducerState, P>,
    producer: u64,
    sequence: u64,
    id: u64,
) {
    if let Some(index) = producers.iter().position(|p| p.producer == producer) {
        if producers[index].sequence > sequence {
            return;
        }
        producers.remove(index);
    } else if producers.is_full() && !producers.is_empty() {
        producers.remove(0);
    }
    // Room was made above (a table of capacity 0 remembers nothing).
    let _ = producers.push(ProducerState {
        producer,
        sequence,
        id,
    });
}

/// The table index of queue `name`, taking a free or unused slot for a new name; `None` when
/// every slot names a queue with live messages.
pub(crate) fn queue_slot<const M: usize, const Q: usize>(
    names: &mut Vec<String<NAME_MAX>, Q>,
    live: &Index<M, Q>,
    name: &str,
) -> Option<usize> {
    if let Some(index) = names.iter().position(|n| n.as_str() == name) {
        return Some(index);
    }
    let owned = String::try_from(name).ok()?;
    if names.push(owned.clone()).is_ok() {
        return Some(names.len() - 1);
    }
    let unused = (0..names.len()).find(|&index| !live.queue_in_use(index))?;
    names[unused] = owned;
    Some(unused)
}

/// A message handed to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Delivery {
    /// The message id.
    pub id: MessageId,
    /// The token [`Queue::ack`] and [`Queue::extend`] must be given.
    pub token: u64,
    /// Deliveries of this message since the queue started, this one included.
    pub attempt: u32,
    /// The producer that sent it.
    pub producer: u64,
    /// The producer's sequence number.
    pub sequence: u64,
    /// The payload's length: it was copied into the start of the caller's buffer.
    pub len: usize,
}

/// Counts of what the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Live (undelivered) messages.
    pub live: u32,
    /// Of those, leased.
    pub leased: u32,
    /// Messages stored since open.
    pub sent: u64,
    /// Retried sends answered with the original id.
    pub duplicates: u64,
    /// Deliveries handed out.
    pub deliveries: u64,
    /// Leases that expired (their messages become PENDING again).
    pub expired: u64,
    /// Acknowledgements staged.
    pub acked: u64,
    /// Acks and extends refused as stale.
    pub stale: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// SEND records copied forward by the service's relocation.
    pub relocated: u64,
    /// Syncs done.
    pub syncs: u64,
    /// Payloads that did not decode: dropped.
    pub malformed: u64,
    /// Replies dropped because the reply table was full.
    pub replies_dropped: u64,
}

/// Why [`Queue::send`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SendError<E> {
    /// The payload is larger than `message_max`; nothing changed.
    TooLarge,
    /// The queue name is empty or longer than [`NAME_MAX`]; nothing changed.
    BadName,
    /// `MESSAGES` messages are live, or `QUEUES` queues hold live messages; nothing changed.
    Full,
    /// Fewer than [`SEND_RESERVE_SEGMENTS`] segments are free; nothing changed.
    StorageFull,
    /// The producer stored a higher sequence number already (`highest`); nothing changed.
    SequenceBehind {
        /// The producer's highest stored sequence.
        highest: u64,
    },
    /// The append failed; nothing was stored. A storage error poisons the queue.
    Append(AppendError<E>),
    /// The queue is poisoned by an earlier storage error; nothing changed.
    Poisoned,
}

/// Why [`Queue::receive`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReceiveError<E> {
    /// The caller's buffer cannot hold the payload of `needed` bytes; nothing changed.
    BufferTooSmall {
        /// The payload's length.
        needed: usize,
    },
    /// The message's record could not be read back; nothing changed.
    Read(log::ReadError<E>),
    /// The record read back is not the message's SEND (corrupted storage); nothing changed.
    Corrupted,
    /// 2^32 deliveries in this incarnation used every token; nothing changed. Restart with a
    /// new incarnation.
    TokensExhausted,
}

/// Why [`Queue::ack`] or [`Queue::extend`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AckError<E> {
    /// The message is not live: acknowledged already, or never sent; nothing changed.
    NotLive,
    /// The token is not the message's current lease (redelivered, expired or never leased);
    /// nothing changed.
    StaleDelivery,
    /// Appending DELIVERED failed; nothing changed. A storage error poisons the queue.
    Append(AppendError<E>),
    /// The queue is poisoned by an earlier storage error; nothing changed.
    Poisoned,
}

/// Why [`Queue::relocate`] failed. Records moved before the failure stay moved (each is a
/// complete copy); the rest are where they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RelocateError<E> {
    /// A record could not be read back (or `scratch` is too small for it).
    Read(log::ReadError<E>),
    /// A record read back is not the message's SEND (corrupted storage).
    Corrupted,
    /// Appending a copy or the checkpoint failed. A storage error poisons the queue.
    Append(AppendError<E>),
    /// The queue is poisoned by an earlier storage error; nothing changed.
    Poisoned,
}

/// Errors of [`Queue::open`].
pub type QueueOpenError<E> = OpenError<E, ReplayError>;

/// A message queue node over a storage log. See the [module docs](self).
#[derive(Debug)]
pub struct Queue<
    S,
    B,
    const MESSAGES: usize,
    const QUEUES: usize,
    const PRODUCERS: usize,
    const REPLIES: usize,
> {
    log: Log<S, B>,
    config: Config,
    /// Undelivered messages, ordered by id.
    live: Index<MESSAGES, QUEUES>,
    names: Vec<String<NAME_MAX>, QUEUES>,
    producers: Vec<ProducerState, PRODUCERS>,
    next_id: u64,
    next_token: u32,
    since_checkpoint: u32,
    staged: bool,
    pending_release: Option<Appended>,
    poisoned: bool,
    /// Replies waiting for the next commit, then ready to send.
    replies: Deque<service::Reply, REPLIES>,
    /// The latest deliveries made for clients, so a retried `Receive` (its `Delivery` lost)
    /// gets the same lease again instead of a second message.
    recent: Deque<service::RecentDelivery, RECENT_DELIVERIES>,
    /// No lease ends before this (a lower bound: see [`Queue::next_expiry`]); `None` when no
    /// message is leased.
    earliest_lease: Option<Instant>,
    /// Lent by [`Queue::set_relocation_scratch`]: lets the service relocate pinned messages.
    scratch: Option<B>,
    stats: Stats,
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const MESSAGES: usize,
        const QUEUES: usize,
        const PRODUCERS: usize,
        const REPLIES: usize,
    > Queue<S, B, MESSAGES, QUEUES, PRODUCERS, REPLIES>
{
    /// Opens the queue stored in `storage`: replay rebuilds the index of undelivered messages
    /// (all PENDING) and the producer table.
    pub fn open(
        storage: S,
        buffer: B,
        config: Config,
    ) -> Result<(Self, Recovery), QueueOpenError<S::Error>> {
        let mut replayed = record::Replayed::<MESSAGES, QUEUES, PRODUCERS>::new();
        let message_max = config.message_max as usize;
        let needed = send_len_max(message_max).max(checkpoint_len_max(PRODUCERS));
        let log_config = log::Config {
            payload_max: config
                .log
                .payload_max
                .max(u32::try_from(needed).unwrap_or(u32::MAX)),
            ..config.log
        };
        let (log, recovery) =
            Log::open(storage, buffer, log_config, |entry| replayed.apply(entry))?;
        let mut config = config;
        config.checkpoint_every = config.checkpoint_every.max(1);
        let queue = Self {
            log,
            config,
            live: replayed.live,
            names: replayed.names,
            producers: replayed.producers,
            next_id: replayed.next_id,
            next_token: 0,
            since_checkpoint: 0,
            staged: false,
            pending_release: None,
            poisoned: false,
            replies: Deque::new(),
            recent: Deque::new(),
            earliest_lease: None,
            scratch: None,
            stats: Stats::default(),
        };
        Ok((queue, recovery))
    }

    /// Lends a buffer of at least [`send_len_max`]`(message_max)` bytes with which the service
    /// ([`Service::commit`](crate::service::Service::commit)) relocates the messages that pin
    /// the oldest segment when space runs low (see [`Queue::relocate`]). Without it, a message
    /// left unacknowledged pins its segment and sends are refused once the log wraps around to
    /// it.
    pub fn set_relocation_scratch(&mut self, scratch: B) {
        self.scratch = Some(scratch);
    }

    /// Stores `payload` in `queue` for `producer` under its `sequence`: staged now, durable when
    /// the next [`Service::commit`](crate::service::Service::commit) returns. A retry of the producer's highest sequence returns
    /// the original id and stores nothing.
    pub fn send(
        &mut self,
        now: Instant,
        queue: &str,
        producer: u64,
        sequence: u64,
        payload: &[u8],
    ) -> Result<MessageId, SendError<S::Error>> {
        let _ = now; // Sends do not depend on time; kept for a uniform API.
        if self.poisoned {
            return Err(SendError::Poisoned);
        }
        if let Some(known) = self.producers.iter().find(|p| p.producer == producer) {
            if known.sequence == sequence {
                self.stats.duplicates += 1;
                return Ok(MessageId(known.id));
            }
            if known.sequence > sequence {
                return Err(SendError::SequenceBehind {
                    highest: known.sequence,
                });
            }
        }
        if queue.is_empty() || queue.len() > NAME_MAX {
            return Err(SendError::BadName);
        }
        if payload.len() > self.config.message_max as usize {
            return Err(SendError::TooLarge);
        }
        if self.live.is_full() {
            return Err(SendError::Full);
        }
        if self.log.free_segments() < SEND_RESERVE_SEGMENTS {
            return Err(SendError::StorageFull);
        }
        // Checked before the append, so a refused name leaves no record behind.
        let mut names = self.names.clone();
        let slot = queue_slot(&mut names, &self.live, queue).ok_or(SendError::Full)?;
        let id = self.next_id;
        let next_id = id.checked_add(1).ok_or(SendError::Full)?;
        let record = SendRecord {
            id,
            queue,
            producer,
            sequence,
            payload,
        };
        let at = self
            .log
            .append_postcard(KIND_SEND, &record)
            .map_err(|error| self.append_failed(error))
            .map_err(SendError::Append)?;
        self.names = names;
        self.next_id = next_id;
        remember_producer(&mut self.producers, producer, sequence, id);
        // Ids only grow, so this appends; room was checked above.
        let _ = self.live.insert(Live {
            id: MessageId(id),
            queue: slot,
            at,
            state: State::Pending,
            attempts: 0,
        });
        self.stats.sent += 1;
        self.after_write();
        Ok(MessageId(id))
    }

    /// Leases the oldest PENDING message of `queue` for `lease` (at most the configured
    /// `lease_max`), copying its payload into `out`. `Ok(None)` when nothing is pending.
    pub fn receive(
        &mut self,
        now: Instant,
        queue: &str,
        lease: Duration,
        out: &mut [u8],
    ) -> Result<Option<Delivery>, ReceiveError<S::Error>> {
        self.expire(now);
        let Some((index, live)) = self.next_pending(queue) else {
            return Ok(None);
        };
        let (producer, sequence, len) = {
            let (frame, payload) = self
                .log
                .read_ref(live.at.position)
                .map_err(ReceiveError::Read)?;
            let record: SendRecord<'_> =
                record::decode_exact(payload).ok_or(ReceiveError::Corrupted)?;
            if frame.kind != KIND_SEND || record.id != live.id.0 {
                return Err(ReceiveError::Corrupted);
            }
            let len = record.payload.len();
            let target = out
                .get_mut(..len)
                .ok_or(ReceiveError::BufferTooSmall { needed: len })?;
            target.copy_from_slice(record.payload);
            (record.producer, record.sequence, len)
        };
        let (token, attempt) = self
            .lease(index, now, lease)
            .ok_or(ReceiveError::TokensExhausted)?;
        Ok(Some(Delivery {
            id: live.id,
            token,
            attempt,
            producer,
            sequence,
            len,
        }))
    }

    /// The oldest PENDING message of `queue` and its index.
    fn next_pending(&mut self, queue: &str) -> Option<(usize, Live)> {
        let slot = self.names.iter().position(|n| n.as_str() == queue)?;
        let index = self.live.next_pending(slot)?;
        Some((index, self.live.entry(index)?))
    }

    /// Leases the message at `index`: a fresh token, one more attempt.
    fn lease(&mut self, index: usize, now: Instant, lease: Duration) -> Option<(u64, u32)> {
        let counter = self.next_token.checked_add(1)?;
        self.next_token = counter;
        let token = (u64::from(self.config.incarnation) << 32) | u64::from(counter);
        let until = now.saturating_add(lease.min(self.config.lease_max));
        let attempts = self.live.deliver(index, until, token)?;
        self.earliest_lease = Some(self.earliest_lease.map_or(until, |at| at.min(until)));
        self.stats.deliveries += 1;
        Some((token, attempts))
    }

    /// Makes every lease that ended by `now` PENDING again. Walks the index only when the
    /// earliest lease end (a lower bound kept by every lease and extension) has passed.
    fn expire(&mut self, now: Instant) {
        if self.earliest_lease.is_none_or(|at| at > now) {
            return;
        }
        let (expired, earliest) = self.live.expire(now);
        self.stats.expired += expired;
        self.earliest_lease = earliest;
    }

    /// The index of live message `id` leased under `token` (lease not ended at `now`).
    fn leased(
        &mut self,
        now: Instant,
        id: MessageId,
        token: u64,
    ) -> Result<usize, AckError<S::Error>> {
        self.expire(now);
        let index = self.live.find(id).ok_or(AckError::NotLive)?;
        let live = self.live.entry(index).ok_or(AckError::NotLive)?;
        match live.state {
            State::Leased { token: current, .. } if current == token => Ok(index),
            _ => {
                self.stats.stale += 1;
                Err(AckError::StaleDelivery)
            }
        }
    }

    /// Marks message `id` delivered, given the token of its current lease: staged now, durable
    /// when the next [`Service::commit`](crate::service::Service::commit) returns. The message leaves the index at once.
    pub fn ack(
        &mut self,
        now: Instant,
        id: MessageId,
        token: u64,
    ) -> Result<(), AckError<S::Error>> {
        if self.poisoned {
            return Err(AckError::Poisoned);
        }
        let index = self.leased(now, id, token)?;
        self.log
            .append_postcard(KIND_DELIVERED, &id.0)
            .map_err(|error| self.append_failed(error))
            .map_err(AckError::Append)?;
        self.live.remove(index);
        self.stats.acked += 1;
        self.after_write();
        Ok(())
    }

    /// Extends the lease of delivery `token` of message `id` to `lease` from `now` (at most
    /// `lease_max`). Nothing is written: leases live in RAM.
    pub fn extend(
        &mut self,
        now: Instant,
        id: MessageId,
        token: u64,
        lease: Duration,
    ) -> Result<(), AckError<S::Error>> {
        let index = self.leased(now, id, token)?;
        let until = now.saturating_add(lease.min(self.config.lease_max));
        self.live.extend(index, until, token);
        self.earliest_lease = Some(self.earliest_lease.map_or(until, |at| at.min(until)));
        Ok(())
    }

    /// Whether live messages pin the oldest live segment while space is low: then
    /// [`Queue::relocate`] would let the next checkpoint release it.
    pub fn needs_relocation(&self) -> bool {
        // Epochs grow with log sequence numbers: the oldest SEND is in the oldest epoch.
        self.log.free_segments() <= SEND_RESERVE_SEGMENTS
            && self
                .live
                .oldest_at()
                .is_some_and(|at| at.position.epoch < self.log.newest_epoch())
    }

    /// Copies the SEND records of the live messages in the oldest segment holding any to the
    /// head of the log (same bytes, same id), so that a message left unacknowledged does not
    /// pin old segments, and stages a checkpoint that releases them with the next commit.
    /// `scratch` must hold one SEND payload. Returns how many records moved. Replay takes the
    /// last copy of a record as the message's position.
    pub fn relocate(&mut self, scratch: &mut [u8]) -> Result<u32, RelocateError<S::Error>> {
        if self.poisoned {
            return Err(RelocateError::Poisoned);
        }
        let Some(epoch) = self.live.oldest_at().map(|at| at.position.epoch) else {
            return Ok(0);
        };
        if epoch >= self.log.newest_epoch() {
            return Ok(0);
        }
        let mut moved = 0u32;
        for index in 0..self.live.end() {
            let Some(live) = self.live.entry(index) else {
                continue;
            };
            if live.at.position.epoch != epoch {
                continue;
            }
            let frame = self
                .log
                .read(live.at.position, scratch)
                .map_err(RelocateError::Read)?;
            let bytes = scratch.get(..frame.payload_len).unwrap_or(&[]);
            let record: Option<SendRecord<'_>> = record::decode_exact(bytes);
            if frame.kind != KIND_SEND || record.is_none_or(|record| record.id != live.id.0) {
                return Err(RelocateError::Corrupted);
            }
            let at = self
                .log
                .append(KIND_SEND, |area| {
                    let target = area
                        .get_mut(..bytes.len())
                        .ok_or(crate::frame::EmitError::BufferTooSmall)?;
                    target.copy_from_slice(bytes);
                    Ok(bytes.len())
                })
                .map_err(|error| self.append_failed(error))
                .map_err(RelocateError::Append)?;
            self.live.set_at(index, at);
            self.staged = true;
            moved = moved.saturating_add(1);
        }
        self.staged = true;
        self.stage_checkpoint()
            .map_err(|error| self.append_failed(error))
            .map_err(RelocateError::Append)?;
        Ok(moved)
    }

    /// Whether message `id` is live (stored, not yet acknowledged).
    pub fn is_live(&self, id: MessageId) -> bool {
        self.live.find(id).is_some()
    }

    /// What the queue holds and did.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        stats.live = u32::try_from(self.live.count()).unwrap_or(u32::MAX);
        stats.leased = u32::try_from(self.live.leased()).unwrap_or(u32::MAX);
        stats
    }

    /// When the earliest lease may end: no later than the earliest lease end (earlier when
    /// that lease was acknowledged or extended since; the expiry it causes then finds nothing
    /// to do and tightens the bound). `None` when nothing has been leased since.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.earliest_lease
    }

    /// The log underneath.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    /// Gives the storage and buffer back, dropping what was not committed (as a crash would).
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// Commits what is staged and marks a clean shutdown in the same sync (see [`Log::close`]).
    /// Replies still waiting are not sent.
    pub fn close(mut self) -> Result<(), CommitError<S::Error>> {
        if self.pending_release.is_some() {
            // The checkpoint first, then its release (see `release_after_sync`).
            self.log.sync().map_err(CommitError::Sync)?;
            self.release_after_sync()?;
        }
        self.log.close().map_err(CommitError::Sync)
    }

    /// A failed append: a storage error poisons the queue (the log is poisoned too).
    fn append_failed(&mut self, error: AppendError<S::Error>) -> AppendError<S::Error> {
        if matches!(error, AppendError::Storage(_) | AppendError::Poisoned) {
            self.poisoned = true;
        }
        error
    }

    /// Counts a staged record and checkpoints when one is due or space runs low.
    fn after_write(&mut self) {
        self.staged = true;
        self.since_checkpoint = self.since_checkpoint.saturating_add(1);
        let low = self.log.free_segments() <= SEND_RESERVE_SEGMENTS;
        // When space is low, one checkpoint per commit is enough: its release is what helps.
        let low_and_unreleased = low && self.pending_release.is_none();
        if self.since_checkpoint >= self.config.checkpoint_every || low_and_unreleased {
            // A failed checkpoint leaves the write staged; the next write tries again.
            let _ = self.stage_checkpoint();
        }
    }

    /// Appends the producer table and id counter; the segments before both it and the oldest
    /// live SEND are released with the next sync.
    fn stage_checkpoint(&mut self) -> Result<(), AppendError<S::Error>> {
        let mut producers = Vec::new();
        for p in &self.producers {
            // Both tables hold PRODUCERS entries at most.
            let _ = producers.push((p.producer, p.sequence, p.id));
        }
        let record = CheckpointRecord::<PRODUCERS> {
            next_id: self.next_id,
            oldest_live: self.live.first().map_or(self.next_id, |live| live.id.0),
            producers,
        };
        let appended = self
            .log
            .append_postcard(KIND_CHECKPOINT, &record)
            .map_err(|error| self.append_failed(error))?;
        // The oldest SEND by position: relocation moves records, so it need not be the
        // lowest id.
        let release = self
            .live
            .oldest_at()
            .filter(|oldest| oldest.sequence < appended.sequence)
            .unwrap_or(appended);
        self.staged = true;
        self.since_checkpoint = 0;
        self.pending_release = Some(release);
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// Releases what the last checkpoint allows and syncs. An error poisons the queue.
    fn sync(&mut self) -> Result<(), CommitError<S::Error>> {
        self.log.sync().map_err(CommitError::Sync)?;
        self.stats.syncs += 1;
        self.release_after_sync()
    }

    /// Releases what the last checkpoint allows (the oldest live SEND), once that checkpoint
    /// (producer table, id counter) and relocated copies are durable (see
    /// [`Log::release_checkpointed`]).
    fn release_after_sync(&mut self) -> Result<(), CommitError<S::Error>> {
        if let Some(frame) = self.pending_release.take() {
            self.log
                .release_checkpointed(frame)
                .map_err(CommitError::Sync)?;
        }
        Ok(())
    }

    /// Makes staged records durable (one sync); cheap when nothing is staged.
    pub(crate) fn sync_staged(&mut self) -> Result<(), CommitError<S::Error>> {
        if !self.staged {
            return Ok(());
        }
        self.staged = false;
        let low = self.log.free_segments() <= SEND_RESERVE_SEGMENTS;
        if low && self.pending_release.is_none() && self.since_checkpoint > 0 {
            // Space is low (restarts each begin a fresh segment): release what can be released
            // with this sync. A failed append leaves the release to a later commit.
            let _ = self.stage_checkpoint();
        }
        let synced = self.sync();
        if synced.is_err() {
            self.poisoned = true;
        }
        synced
    }
}

impl<E: core::fmt::Display> core::fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge => write!(f, "the message is larger than the configured maximum"),
            Self::BadName => write!(f, "the queue name is empty or longer than {NAME_MAX} bytes"),
            Self::Full => write!(f, "the live-message index or the queue table is full"),
            Self::StorageFull => write!(f, "the storage is nearly full: ack messages first"),
            Self::SequenceBehind { highest } => write!(
                f,
                "the producer already stored sequence {highest}: a retry of an older send, or out of order"
            ),
            Self::Append(error) => write!(f, "append failed: {error}"),
            Self::Poisoned => write!(f, "an earlier storage error poisoned the queue"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for SendError<E> {}

impl<E: core::fmt::Display> core::fmt::Display for ReceiveError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "the buffer cannot hold the {needed}-byte message")
            }
            Self::Read(error) => write!(f, "reading the message failed: {error}"),
            Self::Corrupted => write!(f, "the record read back is not the message's"),
            Self::TokensExhausted => write!(f, "every delivery token of this incarnation is used"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for ReceiveError<E> {}

impl<E: core::fmt::Display> core::fmt::Display for AckError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotLive => write!(
                f,
                "the message is not live: acknowledged already, or never sent"
            ),
            Self::StaleDelivery => {
                write!(f, "the delivery token is not the message's current lease")
            }
            Self::Append(error) => write!(f, "append failed: {error}"),
            Self::Poisoned => write!(f, "an earlier storage error poisoned the queue"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for AckError<E> {}

impl<E: core::fmt::Display> core::fmt::Display for RelocateError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Read(error) => write!(f, "reading a record to relocate failed: {error}"),
            Self::Corrupted => write!(f, "a record read back is not the message's"),
            Self::Append(error) => write!(f, "append failed: {error}"),
            Self::Poisoned => write!(f, "an earlier storage error poisoned the queue"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for RelocateError<E> {}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "not a valid queue message")
    }
}
