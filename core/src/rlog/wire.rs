//! The replicated log's record and message formats (SPEC.md section 9).
//!
//! ```text
//! Record (storage frame kind 32, and the body of an Entry message), postcard struct:
//!   origin   u32 varint          the replica that wrote the entry
//!   counter  u64 varint          its per-origin number, from 1
//!   request  Option<(u32, u64)>  0, or 1 then the client's node id and request id
//!   context  varint n, n bytes   the version vector: (node u32, count u64) varint pairs,
//!                                node ids strictly increasing, counts nonzero,
//!                                context[origin] == counter
//!   data     varint n, n bytes   the application's bytes
//! ```
//!
//! Messages are one postcard enum, [`Message`]; its variant index is the first byte.

use crate::crdt::{NodeId, VersionVector};
use serde::{Deserialize, Serialize};

/// Kind of the storage frame holding one entry.
pub const KIND_ENTRY: u8 = 32;

/// An entry's identity: the replica that wrote it and its number there (from 1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Dot {
    /// The replica that wrote the entry.
    pub origin: NodeId,
    /// The entry's number among that replica's entries, from 1.
    pub counter: u64,
}

/// A place in the read order: entries are ordered by causal depth (the sum of their version
/// vector, which grows along every causal chain), then by dot. Reads return entries after it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadKey {
    /// Sum of the entry's version vector.
    pub depth: u64,
    /// The entry's dot.
    pub dot: Dot,
}

impl ReadKey {
    /// Before every entry: a read from here starts at the beginning.
    pub const START: Self = Self {
        depth: 0,
        dot: Dot {
            origin: NodeId(0),
            counter: 0,
        },
    };
}

/// Why a client's append was refused. Nothing was written in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// The data is larger than the replica's limit.
    TooLarge,
    /// The storage log is full.
    Full,
    /// A capacity (version vector, acknowledgement queue) is exhausted; retry later.
    Busy,
    /// The replica's storage failed; it must be restarted.
    Unavailable,
}

/// One entry in a read reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadEntry<'a> {
    /// The entry's identity.
    pub dot: Dot,
    /// Its causal depth (the sum of its context): entries of equal depth are concurrent.
    pub depth: u64,
    /// Where it stands in its sibling group: 0 when it is concurrent with no entry (alone in
    /// its group); otherwise [`Self::CONTINUES_BEFORE`] and [`Self::CONTINUES_AFTER`] say
    /// whether the group has entries before and after it in the read order.
    pub siblings: u32,
    /// The application's bytes.
    #[serde(borrow)]
    pub data: &'a [u8],
}

impl ReadEntry<'_> {
    /// Flag of [`ReadEntry::siblings`]: the entry's sibling group has entries before it (no
    /// cut falls just before it).
    pub const CONTINUES_BEFORE: u32 = 1;
    /// Flag of [`ReadEntry::siblings`]: the entry's sibling group has entries after it.
    pub const CONTINUES_AFTER: u32 = 2;

    /// True when the entry is concurrent with at least one other entry.
    pub fn has_siblings(&self) -> bool {
        self.siblings & (Self::CONTINUES_BEFORE | Self::CONTINUES_AFTER) != 0
    }

    /// True when the entry opens its sibling group (a group of one included).
    pub fn starts_group(&self) -> bool {
        self.siblings & Self::CONTINUES_BEFORE == 0
    }

    /// True when the entry closes its sibling group (a group of one included).
    pub fn ends_group(&self) -> bool {
        self.siblings & Self::CONTINUES_AFTER == 0
    }
}

/// Every message of the replicated log, replica to replica and client to replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Anti-entropy: the sender's version vector for the nodes in `[low, high]` (a node not
    /// listed has 0). A receiver sends back the entries the sender lacks and, unless `reply`, its
    /// own digest of the same range.
    Digest {
        /// True when this digest answers another one (no digest is sent back).
        reply: bool,
        /// First node id covered.
        low: NodeId,
        /// Last node id covered.
        high: NodeId,
        /// `(node u32, count u64)` varint pairs, node ids increasing, counts nonzero.
        #[serde(borrow)]
        pairs: &'a [u8],
    },
    /// One entry: a record (see the module docs).
    Entry {
        /// The record's bytes, as stored.
        #[serde(borrow)]
        record: &'a [u8],
    },
    /// A client asks to append `data`; answered by [`Message::Appended`] once durable.
    Append {
        /// The client's id for the request; a retry with the same id is applied once.
        request_id: u64,
        /// The application's bytes.
        #[serde(borrow)]
        data: &'a [u8],
    },
    /// The append of `request_id` is durable on the replica, as entry `dot`.
    Appended {
        /// The request answered.
        request_id: u64,
        /// The entry written.
        dot: Dot,
    },
    /// The append of `request_id` was refused.
    Refused {
        /// The request answered.
        request_id: u64,
        /// Why.
        reason: Refusal,
    },
    /// A client asks for up to `max` entries after `from` in the read order.
    Read {
        /// Echoed in the reply.
        request_id: u64,
        /// Entries after this key.
        from: ReadKey,
        /// At most this many entries (capped by the replica's page size and the datagram).
        max: u16,
    },
    /// Entries after the request's `from`, in the read order.
    ReadReply {
        /// The request answered.
        request_id: u64,
        /// The key to read from next.
        next: ReadKey,
        /// True when no entry follows `next` (at the time of the read).
        done: bool,
        /// Concatenated postcard [`ReadEntry`] values.
        #[serde(borrow)]
        entries: &'a [u8],
    },
}

impl<'a> Message<'a> {
    /// Decodes a message; `None` for bytes that are not one (trailing bytes included).
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((message, [])) => Some(message),
            _ => None,
        }
    }

    /// Encodes the message into `buffer`, returning its length; `None` when it does not fit.
    pub fn encode(&self, buffer: &mut [u8]) -> Option<usize> {
        postcard::to_slice(self, buffer).ok().map(|used| used.len())
    }
}

/// Iterates the entries of a [`Message::ReadReply`]; stops at the first malformed one.
pub fn read_entries(bytes: &[u8]) -> impl Iterator<Item = ReadEntry<'_>> + '_ {
    let mut rest = bytes;
    core::iter::from_fn(move || {
        let (entry, tail) = postcard::take_from_bytes::<ReadEntry<'_>>(rest).ok()?;
        rest = tail;
        Some(entry)
    })
}

/// The fixed part of a record, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record<'a> {
    pub origin: NodeId,
    pub counter: u64,
    pub request: Option<(NodeId, u64)>,
    #[serde(borrow)]
    pub context: &'a [u8],
    #[serde(borrow)]
    pub data: &'a [u8],
}

/// A record whose bytes were checked: canonical context holding the entry's own dot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checked<'a> {
    pub record: Record<'a>,
    /// Sum of the context: the entry's causal depth.
    pub depth: u64,
}

impl<'a> Checked<'a> {
    pub fn key(&self) -> ReadKey {
        ReadKey {
            depth: self.depth,
            dot: self.dot(),
        }
    }

    pub fn dot(&self) -> Dot {
        Dot {
            origin: self.record.origin,
            counter: self.record.counter,
        }
    }
}

/// Decodes and checks a record; `None` when it is not a well-formed one.
pub(super) fn check_record(bytes: &[u8], data_max: usize) -> Option<Checked<'_>> {
    let record = match postcard::take_from_bytes::<Record<'_>>(bytes) {
        Ok((record, [])) => record,
        _ => return None,
    };
    if record.counter == 0 || record.data.len() > data_max || record_len(&record) != bytes.len() {
        return None;
    }
    let (_, depth) = check_pairs(record.context, NodeId(0), NodeId(u32::MAX))?;
    if pairs_get(record.context, record.origin) != record.counter {
        return None;
    }
    Some(Checked { record, depth })
}

/// The canonical encoded length of `record`: postcard accepts overlong varints, and a record is
/// stored and forwarded byte for byte, so only the shortest form is taken (every replica then
/// holds the same bytes for an entry).
fn record_len(record: &Record<'_>) -> usize {
    let request = record.request.map_or(1, |(client, id)| {
        1 + crate::varint::len(u64::from(client.0)) + crate::varint::len(id)
    });
    let bytes = |len: usize| crate::varint::len(len as u64) + len;
    crate::varint::len(u64::from(record.origin.0))
        + crate::varint::len(record.counter)
        + request
        + bytes(record.context.len())
        + bytes(record.data.len())
}

/// Iterates `(node, count)` pairs; ends at the first pair that does not decode.
pub(super) fn pairs(bytes: &[u8]) -> impl Iterator<Item = (NodeId, u64)> + '_ {
    let mut rest = bytes;
    core::iter::from_fn(move || {
        let (pair, tail) = postcard::take_from_bytes::<(NodeId, u64)>(rest).ok()?;
        rest = tail;
        Some(pair)
    })
}

/// Checks that `bytes` are pairs with node ids strictly increasing within `[low, high]` and
/// nonzero counts, every byte used; returns how many and their sum.
pub(super) fn check_pairs(bytes: &[u8], low: NodeId, high: NodeId) -> Option<(usize, u64)> {
    let mut rest = bytes;
    let (mut count, mut sum) = (0usize, 0u64);
    let mut previous: Option<NodeId> = None;
    // Every pair takes at least two bytes: the loop ends.
    while !rest.is_empty() {
        let ((node, value), tail) = postcard::take_from_bytes::<(NodeId, u64)>(rest).ok()?;
        let used = rest.len() - tail.len();
        rest = tail;
        let ordered = previous.is_none_or(|previous| previous < node);
        let canonical = used == crate::varint::len(u64::from(node.0)) + crate::varint::len(value);
        if !ordered || !canonical || node < low || node > high || value == 0 {
            return None;
        }
        previous = Some(node);
        count += 1;
        sum = sum.checked_add(value)?;
    }
    Some((count, sum))
}

/// The count of `node` in checked pairs (0 when absent).
pub(super) fn pairs_get(bytes: &[u8], node: NodeId) -> u64 {
    pairs(bytes)
        .find(|&(id, _)| id == node)
        .map_or(0, |(_, value)| value)
}

/// Bytes of one encoded pair.
pub(super) fn pair_len(node: NodeId, value: u64) -> usize {
    crate::varint::len(u64::from(node.0)) + crate::varint::len(value)
}

/// Writes postcard values one after another into a buffer.
pub(super) struct Writer<'a> {
    pub buffer: &'a mut [u8],
    pub at: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buffer: &'a mut [u8]) -> Self {
        Self { buffer, at: 0 }
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Option<()> {
        let area = self.buffer.get_mut(self.at..)?;
        let used = postcard::to_slice(value, area).ok()?.len();
        self.at += used;
        Some(())
    }
}

/// The context of a new local entry: `have` with `origin`'s count set to `counter`, visited in
/// node order.
pub(super) fn for_each_context<const N: usize>(
    have: &VersionVector<N>,
    origin: NodeId,
    counter: u64,
    mut visit: impl FnMut(NodeId, u64) -> Option<()>,
) -> Option<()> {
    let mut placed = false;
    for (node, value) in have.iter() {
        if !placed && node >= origin {
            visit(origin, counter)?;
            placed = true;
        }
        if node != origin {
            visit(node, value)?;
        }
    }
    if !placed {
        visit(origin, counter)?;
    }
    Some(())
}

/// Encodes a new local record into `area`; returns its length, `None` when it does not fit.
pub(super) fn encode_local<const N: usize>(
    area: &mut [u8],
    have: &VersionVector<N>,
    dot: Dot,
    request: Option<(NodeId, u64)>,
    data: &[u8],
) -> Option<usize> {
    let mut context_len = 0usize;
    for_each_context(have, dot.origin, dot.counter, |node, value| {
        context_len += pair_len(node, value);
        Some(())
    })?;
    let mut writer = Writer::new(area);
    writer.put(&dot.origin)?;
    writer.put(&dot.counter)?;
    writer.put(&request)?;
    writer.put(&(context_len as u64))?;
    for_each_context(have, dot.origin, dot.counter, |node, value| {
        writer.put(&(node, value))
    })?;
    writer.put(data)?;
    Some(writer.at)
}
