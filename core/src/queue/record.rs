//! The queue's storage records (SPEC.md section 10.2), and replay.
//!
//! ```text
//! kind 16 SEND       id u64, queue str, producer u64, sequence u64, payload bytes
//! kind 17 DELIVERED  id u64
//! kind 18 CHECKPOINT next_id u64, oldest_live u64, producers: seq of (producer u64, sequence u64, id u64)
//! ```
//!
//! Every integer is a postcard varint; a str or bytes field is a varint length and the bytes.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{Index, Live, MessageId, ProducerState, State, NAME_MAX};
use crate::log::{self, Appended, ReplayError};

/// Kind of a frame holding one stored message ([`SendRecord`]).
pub const KIND_SEND: u8 = log::KIND_USER_MIN;
/// Kind of a frame recording that a message was acknowledged: its id, a postcard u64.
pub const KIND_DELIVERED: u8 = log::KIND_USER_MIN + 1;
/// Kind of a frame holding the producer table and the id counter ([`CheckpointRecord`]).
pub const KIND_CHECKPOINT: u8 = log::KIND_USER_MIN + 2;

/// One stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord<'a> {
    /// The message id the queue gave it.
    pub id: u64,
    /// The queue's name.
    pub queue: &'a str,
    /// The producer that sent it.
    pub producer: u64,
    /// The producer's sequence number for it.
    pub sequence: u64,
    /// The message.
    pub payload: &'a [u8],
}

/// What replay needs from before the live start: the producer table and the id counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord<const PRODUCERS: usize> {
    /// The id the next message gets.
    pub next_id: u64,
    /// The oldest undelivered message when the checkpoint was written (`next_id` when none).
    pub oldest_live: u64,
    /// Per producer `(producer, highest sequence, its message id)`, least recently used first.
    pub producers: Vec<(u64, u64, u64), PRODUCERS>,
}

/// The largest SEND payload for messages of up to `message_max` bytes.
pub const fn send_len_max(message_max: usize) -> usize {
    // id, producer, sequence varints; name and payload length varints and bytes.
    3 * 10 + 5 + NAME_MAX + 5 + message_max
}

/// The largest CHECKPOINT payload for `producers` producers.
pub const fn checkpoint_len_max(producers: usize) -> usize {
    2 * 10 + 5 + producers * 30
}

/// Decodes a postcard value that must use every byte.
pub(crate) fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// The state replay rebuilds: the SENDs minus the DELIVEREDs after the live start, and the
/// producer table of the last checkpoint updated by the SENDs after it.
#[derive(Debug)]
pub(crate) struct Replayed<const MESSAGES: usize, const QUEUES: usize, const PRODUCERS: usize> {
    pub live: Index<MESSAGES, QUEUES>,
    pub names: Vec<String<NAME_MAX>, QUEUES>,
    pub producers: Vec<ProducerState, PRODUCERS>,
    pub next_id: u64,
}

impl<const MESSAGES: usize, const QUEUES: usize, const PRODUCERS: usize>
    Replayed<MESSAGES, QUEUES, PRODUCERS>
{
    pub fn new() -> Self {
        Self {
            live: Index::new(),
            names: Vec::new(),
            producers: Vec::new(),
            next_id: 1,
        }
    }

    pub fn apply(&mut self, entry: log::Entry<'_>) -> Result<(), ReplayError> {
        let sequence = entry.sequence;
        let bad = ReplayError::BadPayload { sequence };
        match entry.kind {
            KIND_SEND => {
                let record: SendRecord<'_> = decode_exact(entry.payload).ok_or(bad)?;
                let at = Appended {
                    sequence,
                    position: entry.position,
                };
                self.apply_send(&record, at)
                    .ok_or(ReplayError::Capacity { sequence })
            }
            KIND_DELIVERED => {
                let id: u64 = decode_exact(entry.payload).ok_or(bad)?;
                // A DELIVERED whose SEND was released (or replayed twice) removes nothing.
                if let Some(index) = self.live.find(MessageId(id)) {
                    self.live.remove(index);
                }
                Ok(())
            }
            KIND_CHECKPOINT => {
                let record: CheckpointRecord<PRODUCERS> = decode_exact(entry.payload).ok_or(bad)?;
                self.next_id = self.next_id.max(record.next_id);
                self.producers.clear();
                for (producer, sequence, id) in record.producers {
                    super::remember_producer(&mut self.producers, producer, sequence, id);
                }
                Ok(())
            }
            kind => Err(ReplayError::UnknownKind { sequence, kind }),
        }
    }

    /// Adds a replayed message to the index; `None` past a capacity.
    fn apply_send(&mut self, record: &SendRecord<'_>, at: Appended) -> Option<()> {
        super::remember_producer(
            &mut self.producers,
            record.producer,
            record.sequence,
            record.id,
        );
        self.next_id = self.next_id.max(record.id.checked_add(1)?);
        if let Some(index) = self.live.find(MessageId(record.id)) {
            // A relocated copy (or one yielded again before a release became durable): the
            // later copy is the message's position.
            self.live.set_at(index, at);
            return Some(());
        }
        let queue = super::queue_slot(&mut self.names, &self.live, record.queue)?;
        let live = Live {
            id: MessageId(record.id),
            queue,
            at,
            state: State::Pending,
            attempts: 0,
        };
        self.live.insert(live).ok()
    }
}
