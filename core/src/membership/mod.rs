//! Membership (Q7, Q8): SWIM failure detection with Lifeguard's refinements, dissemination
//! piggybacked on every message, and push-pull anti-entropy of per-node versioned application
//! state, all within one datagram of the MTU however large the cluster.
//!
//! # How it works
//!
//! - **Table.** Up to `N` other members, each identified by its node id: node id, address,
//!   incarnation, state (alive, suspect, dead, left) with the instant it entered it, a phi
//!   window, and up to `KEYS` application entries of at most `VALUE_MAX` bytes. A restart (a
//!   higher incarnation) replaces the record in place, so mass restarts never grow the table.
//! - **Precedence.** A record is `(incarnation, state)`, compared in that order with
//!   alive < suspect < dead < left: every update is a merge that keeps the larger (SWIM's rules
//!   as a lattice). Only a node may raise its own incarnation, which is how it refutes.
//! - **Probing.** Every protocol period the node pings the next member of a shuffled
//!   round-robin order (an affine permutation redrawn each cycle from the caller's randomness).
//!   Without an ack within the probe timeout it asks `indirect_probes` other members to ping it
//!   (`PingReq`); they relay the ack, or a `Nack` when the target stays silent. Without any ack by
//!   the end of the period the target is suspected.
//! - **Lifeguard.** A local health score (0..=`health_max`) rises with failed probes, missing
//!   nacks and refutations of suspicions about oneself, and falls with successful probes; the
//!   probe period and timeout are multiplied by `health + 1`, so a node that is itself slow
//!   probes less eagerly. A node that finds it was stalled (a gap of more than three scaled
//!   periods between timer calls) sets its health to the maximum and restarts its suspicion
//!   timers instead of declaring dead every member it could not hear while it slept.
//! - **Suspicion.** A suspect is declared dead when its suspicion timeout runs out. The timeout
//!   starts at `suspicion_max_mult` times the minimum `suspicion_mult · log10(n) · period` and
//!   shrinks toward it as distinct members forward the same suspicion (memberlist's formula).
//! - **Dissemination.** Each changed record is piggybacked on the next
//!   `retransmit_mult · ceil(log10(n + 1))` datagrams the node sends (pings, acks, digests,
//!   deltas), round-robin over the table. A record carries the version of the member's
//!   application entries the sender holds, and a record whose version rose (a node's own `set`,
//!   or entries received) is piggybacked again like a state change.
//! - **Pulls.** A node that hears of a version above the one it holds pulls the entries from
//!   the sender: a digest of its own view of that member (no window), answered with a delta. At
//!   most 16 pulls wait or fly at once, those waiting for one peer go in one digest, and at most
//!   one per member is in flight per probe period (an unanswered one is sent again, up to three
//!   times in all). So a new version spreads as an epidemic, in
//!   O(log N) periods, not only when push-pull windows happen to cover its record.
//! - **Push-pull.** Every gossip interval the node sends `fanout` random live members a digest
//!   of a rotating window of at most 16 records (itself first): `(node, incarnation, state,
//!   application version)`. The receiver answers with a delta of what it knows better
//!   (records, and application entries above the digest's version) and a digest of what it
//!   lacks plus a window of its own table; that digest is answered with a delta in turn. When
//!   application entries wait, membership updates take at most half of a delta's room, so
//!   membership traffic cannot starve application state.
//! - **Application state.** Only a node writes its own entries; each write takes the next
//!   version of that node. Versions start at `start_incarnation << 32` so a restarted node's
//!   versions are above its previous life's, and a receiver drops the previous life's entries
//!   when the first entry of a new life arrives.
//! - **Client query.** A client (a sender id with [`CLIENT_ID_BIT`] set) sends
//!   [`Message::Members`] and gets [`Message::MembersPage`]s listing the table (this node's own
//!   record included) in node id order, with each member's phi and time since last heard, as
//!   many records as fit one datagram; it pages with `after`. The answer goes to the asking
//!   address only; a client never enters the table, and any other message from a client id is
//!   dropped and counted.
//! - **Tombstones.** Dead and left records stay for `tombstone` (so a late message of an old
//!   incarnation cannot resurrect them), then are removed. Each gossip round also sends a digest
//!   to one random tombstone: a node declared dead across a healed partition then learns it and
//!   refutes.
//!
//! # Incarnations
//!
//! `Membership::new` takes the start incarnation (the one the wire envelope carries, persisted
//! and bumped at every start; 0 is taken as 1). The membership incarnation starts there, travels
//! in every message's head, and grows past it at each refutation or leave; the envelope's
//! incarnation is not used. The node should persist [`Membership::incarnation`] when
//! [`Event::IncarnationBumped`] reports it and start next time above it; if it does not, its
//! first message after a restart is refuted once more (one round trip), nothing worse.
//!
//! # Guarantees
//!
//! - Every datagram fits the buffer `poll_transmit` is given, down to [`crate::net::MTU_MIN`];
//!   digests cover a bounded window, never the whole table.
//! - The table never holds two records of one node id; memory is fixed by `N`, `KEYS` and
//!   `VALUE_MAX`. On a 64-bit host a member (`Member<KEYS, VALUE_MAX>`) is 184 bytes plus
//!   `VALUE_MAX + 24` rounded up to 8 per key (344 bytes for 4 keys of 16 bytes), and the
//!   service adds at most 8 KiB of queues and own state; the member's fixed part is its
//!   address (32), the phi window (16 × u32 and an instant), four suspicion confirmers and the
//!   state fields. A unit test checks these figures.
//! - Bad input is dropped and counted, never a panic; only the caller's time and randomness
//!   are used, so a run replays from its seed.
//!
//! # Not guaranteed
//!
//! - Suspicion confirmations count distinct *senders* of a suspicion, not distinct accusers:
//!   a suspicion relayed through several members counts as confirmed by each.
//! - A cluster larger than `N` others is not represented: new members are refused and counted
//!   (a tombstone is evicted first when there is one).
//! - Application entries cannot be deleted (a value may be set empty); a node writes at most
//!   2^32 versions per start.
//! - A partition that lasts longer than `tombstone` heals only through the seeds of a node
//!   that knows no live member.
//! - Anyone holding the cluster key is trusted as a node (SPEC.md §6.7).

mod detector;
mod message;
mod service;
mod table;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_client;

pub use detector::{log10, log2, retransmits, suspicion_timeout, Arrivals, ARRIVALS};
pub use message::{
    finish, members_request, put, put_entry, walk, Address, DigestItem, Group, Head, Item,
    Malformed, MemberRecord, Message, State, Update, CLIENT_ID_BIT, DIGEST_ITEMS_MAX,
    DIGEST_ITEM_LEN_MAX, GROUPS_MAX, HEAD_LEN_MAX, RECORDS_MAX, RECORD_LEN_MAX, UPDATES_MAX,
    UPDATE_LEN_MAX,
};

use core::time::Duration;

use heapless::{Deque, Vec};

use crate::crdt::NodeId;
use crate::net::SocketAddr;
use crate::rng::SplitMix64;
use crate::time::Instant;

/// Suspicion confirmations remembered per member.
pub const CONFIRMATIONS_MAX: usize = 4;
/// Seeds remembered.
pub const SEEDS_MAX: usize = 8;
/// Indirect probes this node relays at once for others; more are refused.
const RELAYS: usize = 8;
/// Small messages (pings, acks, window digests) waiting to be sent.
const OUTBOX: usize = 32;
/// Push-pull answers waiting to be sent (each holds a digest's worth of items).
const REQUESTS: usize = 8;
/// Events kept until polled; more are dropped and counted.
const EVENTS: usize = 32;
/// Application-state pulls waiting or in flight; more wait for a later update or a digest.
const PULLS: usize = 16;
/// Times a pull is sent (once per period) before it is given up to push-pull.
const PULL_ATTEMPTS: u8 = 4;

/// How a membership node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Time between probes (at full health).
    pub probe_interval: Duration,
    /// Time to wait for a direct ack before asking others to probe (at full health).
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly; also the confirmations that shrink a suspicion
    /// timeout to its minimum (at most [`CONFIRMATIONS_MAX`] count).
    pub indirect_probes: u8,
    /// The highest local health score (Lifeguard's awareness): periods stretch up to
    /// `health_max + 1` times.
    pub health_max: u8,
    /// Suspicion timeout minimum: `suspicion_mult · max(1, log10(n)) · probe_interval`.
    pub suspicion_mult: u32,
    /// Suspicion timeout maximum, as a multiple of the minimum.
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked on `retransmit_mult · ceil(log10(n + 1))` datagrams.
    pub retransmit_mult: u32,
    /// Time between push-pull rounds.
    pub gossip_interval: Duration,
    /// Members sent a digest each push-pull round.
    pub fanout: u8,
    /// How long dead and left records are kept before they are forgotten.
    pub tombstone: Duration,
}

impl Default for Config {
    /// A 1 s probe period with a 500 ms probe timeout, 3 indirect probes, health up to 8,
    /// suspicion 4 · log10(n) periods (6 times that before confirmations), 4 retransmissions
    /// per decade of members, a push-pull round every second to 3 members, 60 s tombstones.
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            health_max: 8,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            gossip_interval: Duration::from_secs(1),
            fanout: 3,
            tombstone: Duration::from_secs(60),
        }
    }
}

/// One application entry of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<const VALUE_MAX: usize> {
    /// The key.
    pub key: u8,
    /// The version the owner gave it when it wrote it.
    pub version: u64,
    /// The value.
    pub value: Vec<u8, VALUE_MAX>,
}

/// What this node knows about one member (or about itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Member<const KEYS: usize, const VALUE_MAX: usize> {
    node: NodeId,
    addr: SocketAddr,
    incarnation: u32,
    state: State,
    since: Instant,
    /// Distinct members that forwarded the current suspicion.
    confirmations: Vec<NodeId, CONFIRMATIONS_MAX>,
    arrivals: Arrivals,
    /// Every entry up to this version is held.
    version: u64,
    entries: Vec<Entry<VALUE_MAX>, KEYS>,
    /// Datagrams that will still piggyback this record.
    transmits: u8,
}

// The documented size of a member with no application entries, on 64-bit hosts.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(core::mem::size_of::<Member<0, 0>>() <= 184);

impl<const KEYS: usize, const VALUE_MAX: usize> Member<KEYS, VALUE_MAX> {
    fn new(node: NodeId, addr: SocketAddr, incarnation: u32, state: State, now: Instant) -> Self {
        Self {
            node,
            addr,
            incarnation,
            state,
            since: now,
            confirmations: Vec::new(),
            arrivals: Arrivals::new(),
            version: 0,
            entries: Vec::new(),
            transmits: 0,
        }
    }

    /// The member's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }
    /// Where it is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Its incarnation as known here.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
    /// Its state as known here.
    pub fn state(&self) -> State {
        self.state
    }
    /// When it entered that state (local clock).
    pub fn since(&self) -> Instant {
        self.since
    }
    /// Every application entry up to this version is held.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Its application entries.
    pub fn entries(&self) -> &[Entry<VALUE_MAX>] {
        &self.entries
    }
    /// The value of `key`, if held.
    pub fn get(&self, key: u8) -> Option<&[u8]> {
        self.entry(key).map(|entry| entry.value.as_slice())
    }
    /// Distinct members that confirmed its current suspicion.
    pub fn confirmations(&self) -> usize {
        self.confirmations.len()
    }
    /// The phi-accrual suspicion score at `now` (`None` before two messages were heard).
    pub fn phi(&self, now: Instant) -> Option<f32> {
        self.arrivals.phi(now.as_micros() / 1000)
    }
    /// Milliseconds from the last message heard from it directly to `now` (`None` when none
    /// was).
    pub fn heard_ms(&self, now: Instant) -> Option<u64> {
        let last = self.arrivals.last_ms()?;
        Some((now.as_micros() / 1000).saturating_sub(last))
    }

    fn entry(&self, key: u8) -> Option<&Entry<VALUE_MAX>> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    /// The record's precedence: incarnation first, then state.
    fn precedence(&self) -> (u32, State) {
        (self.incarnation, self.state)
    }

    fn digest_item(&self) -> DigestItem {
        DigestItem {
            node: self.node,
            incarnation: self.incarnation,
            state: self.state,
            version: self.version,
        }
    }

    fn update(&self) -> Update {
        Update {
            node: self.node,
            incarnation: self.incarnation,
            state: self.state,
            address: self.addr.into(),
            version: self.version,
        }
    }

    fn is_tombstone(&self) -> bool {
        matches!(self.state, State::Dead | State::Left)
    }
}

/// What changed, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// A node joined (or rejoined after it was dead or left).
    Joined {
        /// The node.
        node: NodeId,
        /// Its incarnation.
        incarnation: u32,
    },
    /// A member is suspected.
    Suspected {
        /// The node.
        node: NodeId,
        /// The incarnation suspected.
        incarnation: u32,
    },
    /// A suspected member refuted the suspicion: alive again at a higher incarnation.
    Alive {
        /// The node.
        node: NodeId,
        /// Its new incarnation.
        incarnation: u32,
    },
    /// A member was declared dead.
    Dead {
        /// The node.
        node: NodeId,
    },
    /// A member announced that it left.
    Left {
        /// The node.
        node: NodeId,
    },
    /// A tombstone was forgotten.
    Removed {
        /// The node.
        node: NodeId,
    },
    /// This node raised its own incarnation (to refute, or to leave): persist it.
    IncarnationBumped {
        /// The new incarnation.
        incarnation: u32,
    },
}

/// Counts of what the node did and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Direct probes sent.
    pub probes: u64,
    /// Acks of this node's probes received (direct or relayed).
    pub acks: u64,
    /// Indirect probe requests sent.
    pub indirect_probes: u64,
    /// Nacks received from relays.
    pub nacks: u64,
    /// Members this node suspected itself.
    pub suspicions: u64,
    /// Suspicions of others that were refuted (a false positive prevented).
    pub suspicions_refuted: u64,
    /// Suspicions about this node that it refuted.
    pub refutations: u64,
    /// Members this node declared dead.
    pub confirmed_dead: u64,
    /// Payloads that did not decode: dropped.
    pub malformed: u64,
    /// New members refused because the table was full.
    pub capacity_refusals: u64,
    /// Messages dropped because a queue was full.
    pub queue_full: u64,
    /// Messages dropped because they could not be encoded into the buffer given (smaller than
    /// a head and one item).
    pub unencodable: u64,
    /// Events dropped because nobody polled them.
    pub events_dropped: u64,
    /// Times the timers found this node had stalled.
    pub stalls: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
}

/// Why [`Membership::set`] refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SetError {
    /// The value is longer than `VALUE_MAX`.
    TooLong,
    /// `KEYS` keys are held already.
    Full,
    /// This node left; its state no longer changes.
    Left,
}

/// The probe in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    node: NodeId,
    seq: u32,
    /// When to ask others, if no ack came.
    indirect_at: Instant,
    indirect_sent: bool,
    /// When the probe is judged.
    end: Instant,
    nacks_expected: u8,
    nacks: u8,
}

/// An indirect probe this node runs for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relay {
    requester: SocketAddr,
    their_seq: u32,
    our_seq: u32,
    deadline: Instant,
}

/// A small message to send, encoded when polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    Ping {
        to: SocketAddr,
        seq: u32,
    },
    Ack {
        to: SocketAddr,
        seq: u32,
    },
    PingReq {
        to: SocketAddr,
        seq: u32,
        target: NodeId,
        addr: SocketAddr,
    },
    Nack {
        to: SocketAddr,
        seq: u32,
    },
    /// A digest of the next window of the table, asking for a reply.
    Digest {
        to: SocketAddr,
    },
    /// A page of the member table for a client, encoded from the table as it is when polled.
    Members {
        to: SocketAddr,
        request: u64,
        after: NodeId,
    },
}

/// A push-pull answer: a delta for the items (the asker's view), or a digest of them (what
/// this node lacks), with a window of the table when `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    to: SocketAddr,
    delta: bool,
    window: bool,
    items: Vec<DigestItem, DIGEST_ITEMS_MAX>,
}

/// A pull of a member's application entries: an update said member `from` (the latest to say
/// so) holds them up to `version`, above what this node holds. Sent as a digest of this node's
/// view of the member (merged with other pulls waiting for the same peer); at most one per
/// member is in flight per period, and a pull not answered within a period is sent again, up
/// to [`PULL_ATTEMPTS`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pull {
    node: NodeId,
    from: NodeId,
    version: u64,
    /// When it was last sent.
    sent: Instant,
    /// Times sent.
    attempts: u8,
    /// Waiting to be sent.
    waiting: bool,
}

/// The shuffled round-robin probe order: index `(offset + step · stride) mod len`, with
/// `stride` coprime to `len`, redrawn when a cycle ends or the table size changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Cycle {
    offset: usize,
    stride: usize,
    step: usize,
    len: usize,
}

/// A membership node. See the [module docs](self).
#[derive(Debug)]
pub struct Membership<const N: usize, const KEYS: usize, const VALUE_MAX: usize> {
    config: Config,
    /// This node's own record: its id, address, incarnation, state and entries.
    own: Member<KEYS, VALUE_MAX>,
    members: Vec<Member<KEYS, VALUE_MAX>, N>,
    seeds: Vec<SocketAddr, SEEDS_MAX>,
    health: u8,
    seq: u32,
    probe: Option<Probe>,
    next_probe: Instant,
    next_gossip: Instant,
    last_tick: Option<Instant>,
    cycle: Cycle,
    digest_cursor: usize,
    update_cursor: usize,
    relays: Vec<Relay, RELAYS>,
    outbox: Deque<Outgoing, OUTBOX>,
    requests: Deque<Request, REQUESTS>,
    pulls: Vec<Pull, PULLS>,
    events: Deque<Event, EVENTS>,
    rng: SplitMix64,
    stats: Stats,
}

impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Membership<N, KEYS, VALUE_MAX> {
    /// A node `node` at `addr`, started with `incarnation` (persisted and bumped at every
    /// start; 0 counts as 1), that joins through `seeds` (at most [`SEEDS_MAX`] kept).
    pub fn new(
        config: Config,
        node: NodeId,
        addr: SocketAddr,
        incarnation: u32,
        seeds: &[SocketAddr],
    ) -> Self {
        let incarnation = incarnation.max(1);
        let mut own = Member::new(node, addr, incarnation, State::Alive, Instant::ZERO);
        own.version = u64::from(incarnation) << 32;
        Self {
            config,
            own,
            members: Vec::new(),
            seeds: seeds
                .iter()
                .copied()
                .filter(|&seed| seed != addr)
                .take(SEEDS_MAX)
                .collect(),
            health: 0,
            seq: 0,
            probe: None,
            next_probe: Instant::ZERO,
            next_gossip: Instant::ZERO,
            last_tick: None,
            cycle: Cycle::default(),
            digest_cursor: 0,
            update_cursor: 0,
            relays: Vec::new(),
            outbox: Deque::new(),
            requests: Deque::new(),
            pulls: Vec::new(),
            events: Deque::new(),
            rng: SplitMix64::new(u64::from(node.0) ^ (u64::from(incarnation) << 32)),
            stats: Stats::default(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.own.node
    }
    /// This node's membership incarnation (persist it when it was bumped).
    pub fn incarnation(&self) -> u32 {
        self.own.incarnation
    }
    /// This node's own record (its state and application entries).
    pub fn own(&self) -> &Member<KEYS, VALUE_MAX> {
        &self.own
    }
    /// The other members known, tombstones included.
    pub fn members(&self) -> &[Member<KEYS, VALUE_MAX>] {
        &self.members
    }
    /// The record of `node` (this node's own when it is this node's id).
    pub fn member(&self, node: NodeId) -> Option<&Member<KEYS, VALUE_MAX>> {
        if node == self.own.node {
            return Some(&self.own);
        }
        self.members.iter().find(|member| member.node == node)
    }
    /// Members (this node excluded) that are alive or suspect.
    pub fn live_count(&self) -> usize {
        self.members.iter().filter(|m| !m.is_tombstone()).count()
    }
    /// The local health score: 0 is healthy; periods are stretched `health + 1` times.
    pub fn health(&self) -> u8 {
        self.health
    }
    /// What the node did and dropped.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sets this node's entry `key` to `value` with the next version, and returns it. The
    /// new version is piggybacked like a state change; receivers pull the entries.
    pub fn set(&mut self, key: u8, value: &[u8]) -> Result<u64, SetError> {
        if self.own.state == State::Left {
            return Err(SetError::Left);
        }
        let value = Vec::from_slice(value).map_err(|_| SetError::TooLong)?;
        let version = self.own.version + 1;
        if let Some(entry) = self.own.entries.iter_mut().find(|e| e.key == key) {
            entry.version = version;
            entry.value = value;
        } else {
            let entry = Entry {
                key,
                version,
                value,
            };
            self.own.entries.push(entry).map_err(|_| SetError::Full)?;
        }
        self.own.version = version;
        // The new version rides on the next datagrams' updates: receivers pull the entries.
        self.own.transmits = self.retransmits();
        Ok(version)
    }

    /// Announces that this node leaves: its record becomes `Left` at a higher incarnation and
    /// is piggybacked on the next probes. The node stops probing once the announcement has
    /// been sent its share of times; it keeps answering.
    pub fn leave(&mut self) {
        if self.own.state == State::Left {
            return;
        }
        self.own.incarnation = self.own.incarnation.saturating_add(1);
        self.own.state = State::Left;
        self.own.transmits = self.retransmits();
        self.emit(Event::IncarnationBumped {
            incarnation: self.own.incarnation,
        });
    }

    /// Whether this node left and has sent its announcement its share of times.
    pub fn has_left(&self) -> bool {
        self.own.state == State::Left && self.own.transmits == 0
    }

    /// Members that count for the timeouts: live others plus this node.
    fn cluster_size(&self) -> usize {
        self.live_count() + 1
    }

    fn retransmits(&self) -> u8 {
        retransmits(self.config.retransmit_mult, self.cluster_size())
    }

    /// The probe period, stretched by local health.
    fn period(&self) -> Duration {
        self.config
            .probe_interval
            .saturating_mul(u32::from(self.health) + 1)
    }

    fn emit(&mut self, event: Event) {
        if self.events.push_back(event).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    fn send(&mut self, outgoing: Outgoing) {
        if self.outbox.push_back(outgoing).is_err() {
            self.stats.queue_full += 1;
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.members.iter().position(|member| member.node == node)
    }
}
