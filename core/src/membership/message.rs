//! Membership messages: postcard, inside a wire envelope of kind
//! [`crate::service::kind::MEMBERSHIP`]. SPEC.md section 12 gives the byte layout.
//!
//! A datagram is a [`Head`] followed by its body, in this order: `items` digest items (only in a
//! [`Message::Digest`]), `updates` membership updates (in every message: dissemination
//! piggybacks on everything), then `groups` application-state groups (only in a
//! [`Message::Delta`]), each group followed by its entries. Items are separate postcard values so
//! a node streams them straight out of its table into the buffer, and checks a received body item
//! by item without building a copy of it.
//!
//! Decoding is canonical: every value must re-encode to exactly the bytes it was read from (no
//! overlong varints), counts are bounded, a group's versions rise strictly above its base, and
//! nothing may follow the last item. A datagram is checked whole before any of it is applied.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::crdt::NodeId;
use crate::net::MTU_MIN;

/// Most digest items one datagram carries: a digest covers a window of the table, never the
/// whole of it, so its size does not grow with the cluster.
pub const DIGEST_ITEMS_MAX: usize = 16;
/// Most membership updates one datagram carries.
pub const UPDATES_MAX: usize = 64;
/// Most application-state groups one delta carries.
pub const GROUPS_MAX: usize = 16;
/// The largest encoded head: incarnation, variant, `PingReq`'s fields with an IPv6 address, and
/// the update count.
pub const HEAD_LEN_MAX: usize = 5 + 1 + (5 + 5 + ADDRESS_LEN_MAX) + 1;
/// The largest encoded address: variant, 16 bytes, port varint.
pub const ADDRESS_LEN_MAX: usize = 1 + 16 + 3;
/// The largest encoded update: node, incarnation, state, address, version.
pub const UPDATE_LEN_MAX: usize = 5 + 5 + 1 + ADDRESS_LEN_MAX + 10;
/// The largest encoded digest item: node, incarnation, state, version.
pub const DIGEST_ITEM_LEN_MAX: usize = 5 + 5 + 1 + 10;
/// The largest encoded group head: node, base, entry count.
pub const GROUP_LEN_MAX: usize = 5 + 10 + 10 + 1;
/// Most member records one [`Message::MembersPage`] carries.
pub const RECORDS_MAX: usize = 64;
/// The largest encoded member record: node, address, state, incarnation, and the two optional
/// `u32`s (a tag byte and a varint each).
pub const RECORD_LEN_MAX: usize = 5 + ADDRESS_LEN_MAX + 1 + 5 + 2 * (1 + 5);
/// Client ids have this bit set (`bedrock_std::client`); node ids are below it.
pub const CLIENT_ID_BIT: u32 = 0x8000_0000;

// A full digest always fits the smallest MTU, so a digest never has to be cut mid-window.
const _: () = assert!(HEAD_LEN_MAX + DIGEST_ITEMS_MAX * DIGEST_ITEM_LEN_MAX <= MTU_MIN);
const _: () = assert!(UPDATES_MAX <= u8::MAX as usize);
const _: () = assert!(GROUPS_MAX <= u8::MAX as usize);
const _: () = assert!(RECORDS_MAX <= u8::MAX as usize);
// `take` re-encodes every value in a scratch buffer of this size.
const _: () = assert!(RECORD_LEN_MAX <= HEAD_LEN_MAX + 8);
const _: () = assert!(UPDATE_LEN_MAX <= HEAD_LEN_MAX + 8);

/// A member's state. The order is the precedence at equal incarnation: a later state overrides
/// an earlier one (SWIM: suspect overrides alive, dead overrides suspect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Answering probes.
    Alive,
    /// A probe failed; it is declared dead unless it refutes in time.
    Suspect,
    /// Declared dead; kept as a tombstone for a while, then forgotten.
    Dead,
    /// Announced its own departure; kept as a tombstone for a while, then forgotten.
    Left,
}

/// A socket address on the wire. IPv6 flow info and scope id are not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Address {
    /// IPv4 octets and port.
    V4([u8; 4], u16),
    /// IPv6 octets and port.
    V6([u8; 16], u16),
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(ip) => Self::V4(ip.octets(), addr.port()),
            IpAddr::V6(ip) => Self::V6(ip.octets(), addr.port()),
        }
    }
}

impl From<Address> for SocketAddr {
    fn from(address: Address) -> Self {
        match address {
            Address::V4(octets, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port),
            Address::V6(octets, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port),
        }
    }
}

/// What a datagram is, after the sender's incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A direct probe: answer `Ack` with the same `seq`.
    Ping {
        /// The prober's sequence number.
        seq: u32,
    },
    /// The answer to a `Ping`, or a relayed answer to a `PingReq`.
    Ack {
        /// The sequence number of the probe answered.
        seq: u32,
    },
    /// Probe `target` on the sender's behalf; relay its ack as `Ack { seq }`, or send
    /// `Nack { seq }` when it does not answer in time.
    PingReq {
        /// The requester's sequence number.
        seq: u32,
        /// The member to probe.
        target: NodeId,
        /// Where it is.
        address: Address,
    },
    /// An indirect probe got no answer: the relay itself is alive (Lifeguard).
    Nack {
        /// The requester's sequence number.
        seq: u32,
    },
    /// Push-pull: `items` digest items follow. The receiver answers with a `Delta` of what it
    /// knows better, and asks with a digest (`reply` false) for what it lacks; with `reply`, its
    /// digest also carries a window of its own table.
    Digest {
        /// Whether the receiver should also send a window of its own table.
        reply: bool,
        /// Digest items after the head.
        items: u8,
    },
    /// Push-pull answer: `groups` application-state groups follow the updates.
    Delta {
        /// Groups after the updates.
        groups: u8,
    },
    /// A client asks for the member table: the records (this node's own included) with node
    /// ids above `after`, in id order. Carries no updates; answered with a
    /// [`Message::MembersPage`] to the asking address only, and the asker never enters the table.
    Members {
        /// The client's request id, echoed in the answer.
        request: u64,
        /// Only records of node ids above this one (0: from the start).
        after: NodeId,
    },
    /// The answer to [`Message::Members`]: `records` [`MemberRecord`]s follow the head, in
    /// ascending node id order, as many as fit one datagram. Carries no updates.
    MembersPage {
        /// The request id of the `Members` answered.
        request: u64,
        /// The answering node's id (its own record is among the records).
        node: NodeId,
        /// Member records after the head.
        records: u8,
        /// Whether records with higher node ids remain: ask again with `after` = the last id.
        more: bool,
    },
}

/// The start of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The sender's membership incarnation: the message is direct evidence that it is alive
    /// at this incarnation.
    pub incarnation: u32,
    /// What the datagram is.
    pub message: Message,
    /// Membership updates in the body.
    pub updates: u8,
}

/// A membership record being disseminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Whom it is about.
    pub node: NodeId,
    /// The incarnation the state holds for.
    pub incarnation: u32,
    /// The state.
    pub state: State,
    /// Where the member is.
    pub address: Address,
    /// The sender holds every application entry of the member up to this version (0: none
    /// known). Not part of the precedence: a receiver holding less pulls the entries above
    /// its own version from the sender.
    pub version: u64,
}

/// One line of a digest: what the sender knows about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestItem {
    /// The node.
    pub node: NodeId,
    /// Its incarnation as the sender knows it (0: unknown).
    pub incarnation: u32,
    /// Its state as the sender knows it.
    pub state: State,
    /// The sender holds every application entry of the node up to this version.
    pub version: u64,
}

/// The head of a run of one node's application entries in a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Whose entries.
    pub node: NodeId,
    /// The entries are every entry of the node with a version in `(base, version]`, in version
    /// order.
    pub base: u64,
    /// The sender holds every entry up to this version; a receiver that held everything up to
    /// `base` holds everything up to it after applying the entries. Below the sender's own
    /// version when the entries did not all fit.
    pub version: u64,
    /// Entries after this head (may be 0: the node has nothing in the range).
    pub entries: u8,
}

/// One line of a [`Message::MembersPage`]: what the answering node knows about a member (or
/// about itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member.
    pub node: NodeId,
    /// Where it is.
    pub address: Address,
    /// Its state as known there.
    pub state: State,
    /// Its incarnation as known there.
    pub incarnation: u32,
    /// Its phi-accrual suspicion score in thousandths (saturated at `u32::MAX`); `None` before
    /// two messages were heard from it, and for the answering node itself.
    pub phi_milli: Option<u32>,
    /// Milliseconds since the last message heard from it directly (saturated); `None` when
    /// none was, and for the answering node itself.
    pub heard_ms: Option<u32>,
}

/// One item of a checked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A digest item.
    Digest(DigestItem),
    /// A membership update.
    Update(Update),
    /// The head of a group; its entries follow as [`Item::Entry`].
    Group(Group),
    /// A member record of a [`Message::MembersPage`].
    Record(MemberRecord),
    /// One application entry of the last group.
    Entry {
        /// The key.
        key: u8,
        /// The entry's version.
        version: u64,
        /// The value.
        value: &'a [u8],
    },
}

/// Bytes that are not a valid message: dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Decodes one postcard value that must re-encode to exactly the bytes it came from.
fn take<'a, T: Serialize + Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, &'a [u8]), Malformed> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| Malformed)?;
    let used = &bytes[..bytes.len() - rest.len()];
    let mut scratch = [0u8; HEAD_LEN_MAX + 8];
    let again = postcard::to_slice(&value, &mut scratch).map_err(|_| Malformed)?;
    if again != used {
        return Err(Malformed);
    }
    Ok((value, rest))
}

/// Checks a whole datagram, calling `visit` with every body item in order, and returns its
/// head. Call once with a no-op to check, then again to apply: nothing is applied from a
/// datagram that is malformed anywhere.
pub fn walk<'a>(
    bytes: &'a [u8],
    value_max: usize,
    visit: &mut impl FnMut(Item<'a>),
) -> Result<Head, Malformed> {
    let (head, mut rest) = take::<Head>(bytes)?;
    let (items, groups, records) = match head.message {
        Message::Digest { items, .. } => (usize::from(items), 0, 0),
        Message::Delta { groups } => (0, usize::from(groups), 0),
        Message::MembersPage { records, .. } => (0, 0, usize::from(records)),
        _ => (0, 0, 0),
    };
    let client = matches!(
        head.message,
        Message::Members { .. } | Message::MembersPage { .. }
    );
    let bounded = items <= DIGEST_ITEMS_MAX
        && usize::from(head.updates) <= UPDATES_MAX
        && groups <= GROUPS_MAX
        && records <= RECORDS_MAX
        && !(client && head.updates != 0)
        && !matches!(head.message, Message::Digest { items: 0, .. })
        && !matches!(
            head.message,
            Message::MembersPage {
                records: 0,
                more: true,
                ..
            }
        );
    if !bounded {
        return Err(Malformed);
    }
    for _ in 0..items {
        let (item, tail) = take::<DigestItem>(rest)?;
        visit(Item::Digest(item));
        rest = tail;
    }
    for _ in 0..head.updates {
        let (update, tail) = take::<Update>(rest)?;
        visit(Item::Update(update));
        rest = tail;
    }
    for _ in 0..groups {
        rest = walk_group(rest, value_max, visit)?;
    }
    let mut previous = None;
    for _ in 0..records {
        let (record, tail) = take::<MemberRecord>(rest)?;
        // Strictly ascending node ids: a page lists each member once, in order.
        if previous.is_some_and(|previous| record.node <= previous) {
            return Err(Malformed);
        }
        previous = Some(record.node);
        visit(Item::Record(record));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Malformed);
    }
    Ok(head)
}

fn walk_group<'a>(
    bytes: &'a [u8],
    value_max: usize,
    visit: &mut impl FnMut(Item<'a>),
) -> Result<&'a [u8], Malformed> {
    let (group, mut rest) = take::<Group>(bytes)?;
    if group.base >= group.version {
        return Err(Malformed);
    }
    visit(Item::Group(group));
    let mut previous = group.base;
    for _ in 0..group.entries {
        let ((key, version, len), tail) = take::<(u8, u64, u32)>(rest)?;
        let len = len as usize;
        if version <= previous || version > group.version || len > value_max || len > tail.len() {
            return Err(Malformed);
        }
        let (value, tail) = tail.split_at(len);
        visit(Item::Entry {
            key,
            version,
            value,
        });
        previous = version;
        rest = tail;
    }
    Ok(rest)
}

/// Encodes a client's [`Message::Members`] request into `buffer`; returns its length.
pub fn members_request(request: u64, after: NodeId, buffer: &mut [u8]) -> Option<usize> {
    let head = Head {
        incarnation: 0,
        message: Message::Members { request, after },
        updates: 0,
    };
    put(&head, buffer, 0, buffer.len())
}

/// Encodes `value` into `buffer` at `at`, returning the new end, or `None` if it does not fit
/// before `limit`.
pub fn put<T: Serialize>(value: &T, buffer: &mut [u8], at: usize, limit: usize) -> Option<usize> {
    let area = buffer.get_mut(at..limit.min(buffer.len()))?;
    postcard::to_slice(value, area)
        .ok()
        .map(|used| at + used.len())
}

/// Encodes one application entry at `at`, returning the new end, or `None` if it does not fit
/// before `limit`.
pub fn put_entry(
    key: u8,
    version: u64,
    value: &[u8],
    buffer: &mut [u8],
    at: usize,
    limit: usize,
) -> Option<usize> {
    let len = u32::try_from(value.len()).ok()?;
    let end = put(&(key, version, len), buffer, at, limit)?;
    let value_end = end.checked_add(value.len())?;
    if value_end > limit.min(buffer.len()) {
        return None;
    }
    buffer[end..value_end].copy_from_slice(value);
    Some(value_end)
}

/// The encoded size of an entry.
pub fn entry_len(version: u64, value_len: usize) -> usize {
    1 + crate::varint::len(version) + crate::varint::len(value_len as u64) + value_len
}

/// Writes `head` in front of a body that was written at [`HEAD_LEN_MAX`], moving the body down
/// to follow it; returns the datagram's length.
pub fn finish(head: &Head, buffer: &mut [u8], body_end: usize) -> Option<usize> {
    let mut scratch = [0u8; HEAD_LEN_MAX];
    let head_len = postcard::to_slice(head, &mut scratch).ok()?.len();
    buffer.copy_within(HEAD_LEN_MAX..body_end, head_len);
    buffer[..head_len].copy_from_slice(&scratch[..head_len]);
    Some(head_len + body_end - HEAD_LEN_MAX)
}
