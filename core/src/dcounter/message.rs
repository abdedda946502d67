//! The distributed counter's messages: postcard, inside a wire envelope of kind
//! [`crate::service::kind::COUNTER`]. SPEC.md gives the byte layout.
//!
//! A push carries a chunk of counter entries after its postcard head, each entry its own postcard
//! `(node, count)` pair, so a node can stream entries straight out of its state and check a
//! received chunk entry by entry without building a copy of it.

use serde::{Deserialize, Serialize};

use crate::crdt::NodeId;

/// Most entries a push may carry; more is malformed (and could not fit [`crate::net::MTU_MAX`]
/// anyway at the smallest entry size).
pub const ENTRIES_MAX: u32 = 4096;
/// The largest encoded size of one entry: a u32 and a u64 varint.
pub const ENTRY_LEN_MAX: usize = 5 + 10;

/// Why a request was refused. The request changed nothing, except as [`Refusal::Unavailable`]
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// The node's own count would pass `u64::MAX`.
    Overflow,
    /// The node cannot take writes: its storage failed (it is poisoned) or is full. When this
    /// answers a request whose sync failed, the outcome is unknown: the record may still have
    /// reached the medium, and the node counts it after a restart if it did.
    Unavailable,
    /// Too many requests wait for the next sync; retry.
    Busy,
}

/// One message between nodes, or between a client and a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message {
    /// Node → node: every entry of the sender whose change stamp lies in `(low, high]`, `count`
    /// of them, follow this head. `epoch` is the sender's incarnation (its stamps restart with
    /// it). With `pull`, the receiver answers with a push of its own (push-pull gossip).
    Push {
        /// The sender's incarnation, echoed in the acknowledgement.
        epoch: u32,
        /// Stamps above this one are included.
        low: u64,
        /// Stamps up to this one are included.
        high: u64,
        /// Number of entries after the head.
        count: u32,
        /// Whether the receiver should push back.
        pull: bool,
        /// `digest` of the sender's whole state: a receiver whose state has the same digest
        /// holds everything the sender has, and need not push back what the sender already has.
        digest: u64,
    },
    /// Node → node: the push `(low, high]` of incarnation `epoch` arrived and was merged.
    Ack {
        /// The incarnation the push came from.
        epoch: u32,
        /// The push's `low`.
        low: u64,
        /// The push's `high`.
        high: u64,
        /// `digest` of the receiver's whole state after the merge: when it equals the
        /// sender's, the receiver holds every entry the sender has.
        digest: u64,
    },
    /// Client → node: add `by` to this node's count. A retry with the same `request` (from the
    /// same client) is applied once.
    Incr {
        /// The client's request id.
        request: u64,
        /// The amount.
        by: u64,
    },
    /// Client → node: read the value.
    Get {
        /// The client's request id.
        request: u64,
    },
    /// Node → client: the request is done (an increment is durable) and this is the node's view
    /// of the total.
    Value {
        /// The request answered.
        request: u64,
        /// The sum of every count the node knows.
        value: u64,
    },
    /// Node → client: the request was refused.
    Refused {
        /// The request answered.
        request: u64,
        /// Why.
        reason: Refusal,
    },
}

/// A 64-bit digest of a whole counter state: FNV-1a over each `(node, count)` pair's 12
/// little-endian bytes in node order, then a splitmix64 finalizer. Equal states have equal
/// digests; different states collide with probability about 2^-64 (peers are authenticated, so
/// collisions are accidents, never attacks). A collision would only make a sender skip a push
/// until one of the two states changes again.
pub fn digest(entries: impl Iterator<Item = (NodeId, u64)>) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for (node, count) in entries {
        let node = node.0.to_le_bytes();
        let count = count.to_le_bytes();
        for &byte in node.iter().chain(count.iter()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01B3);
        }
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    hash ^ (hash >> 31)
}

/// The encoded size of one push entry.
pub fn entry_len(node: NodeId, count: u64) -> usize {
    crate::varint::len(u64::from(node.0)) + crate::varint::len(count)
}

/// Bytes that are not a valid message: dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Encodes `message` into `out`, returning its length, or `None` if it does not fit.
pub fn encode(message: &Message, out: &mut [u8]) -> Option<usize> {
    postcard::to_slice(message, out).ok().map(|used| used.len())
}

/// Appends one push entry to `out` at `at`, returning the new end, or `None` if it does not fit.
pub fn encode_entry(node: NodeId, count: u64, out: &mut [u8], at: usize) -> Option<usize> {
    let area = out.get_mut(at..)?;
    postcard::to_slice(&(node, count), area)
        .ok()
        .map(|used| at + used.len())
}

/// Decodes a message head and returns the bytes after it (a push's entries; empty otherwise).
pub fn decode(bytes: &[u8]) -> Result<(Message, &[u8]), Malformed> {
    let (message, rest) = postcard::take_from_bytes::<Message>(bytes).map_err(|_| Malformed)?;
    let entries_ok = match message {
        Message::Push {
            count, low, high, ..
        } => count <= ENTRIES_MAX && low <= high,
        _ => rest.is_empty(),
    };
    if !entries_ok {
        return Err(Malformed);
    }
    Ok((message, rest))
}

/// The entries of a push: exactly `count` well-formed pairs and nothing after them, each count
/// nonzero. Checked in full before any is applied.
pub fn entries(bytes: &[u8], count: u32) -> Result<Entries<'_>, Malformed> {
    let mut rest = bytes;
    for _ in 0..count {
        let ((_, value), tail) =
            postcard::take_from_bytes::<(NodeId, u64)>(rest).map_err(|_| Malformed)?;
        if value == 0 {
            return Err(Malformed);
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Malformed);
    }
    Ok(Entries { rest: bytes })
}

/// An iterator over checked push entries.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl Iterator for Entries<'_> {
    type Item = (NodeId, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let (entry, tail) = postcard::take_from_bytes::<(NodeId, u64)>(self.rest).ok()?;
        self.rest = tail;
        Some(entry)
    }
}
