//! The leaderless replicated log (Q5): every replica accepts appends, replicas exchange entries
//! by anti-entropy, and every replica ends up holding the same entries; concurrent writes are
//! kept as siblings.
//!
//! # Model
//!
//! - An entry is identified by a [`Dot`]: the replica that wrote it (its origin) and a counter
//!   from 1. It carries a version vector, its *context*: what its origin held when it wrote it,
//!   with its own count set to the entry's counter.
//! - A replica accepts the entries of each origin strictly in counter order, so what it holds is
//!   summarized by one version vector, `have` (`have[x]` = entries of origin `x` held).
//! - Entries live in the storage [`Log`] (one frame each, kind [`KIND_ENTRY`], the bytes of
//!   SPEC.md section 6); RAM holds only bounded indexes ([`index`]).
//! - Reads return the entries in one total order, the same on every replica whatever the order
//!   they arrived in: by *causal depth* (the sum of the context, which grows along every causal
//!   chain, so the order is consistent with causality), then by dot. Entries whose contexts are
//!   concurrent are *siblings*, whatever their depths: the read order is cut into the smallest
//!   runs that keep every concurrent pair together (sibling groups), and each read entry says
//!   whether its group continues before and after it (0: concurrent with no entry). [`resolve`]
//!   picks one entry of a group by a rule the application chooses. See [`read`] for the proof
//!   and the cost.
//!
//! # Guarantees
//!
//! - An append is acknowledged (a client's [`Message::Appended`]; for [`Rlog::append`], a dot
//!   that [`Rlog::is_durable`] reports) only after the [`Service::commit`] whose sync made it
//!   durable. One sync covers every append and received entry of a loop iteration.
//! - Only durable entries are served to peers, advertised in digests or returned by reads, so a
//!   crash never takes back an entry another replica or client has seen, and a dot is never
//!   given to two different entries.
//! - Anti-entropy: every `interval`, a random configured peer gets this replica's digest (its
//!   durable `have`, in chunks that fit the datagram, so 1,000 nodes fit an MTU of 508 bytes in a
//!   few datagrams); the peer answers with the entries the sender lacks (at most
//!   `entries_per_digest` datagrams per chunk received) and its own digest, which brings back
//!   what the peer lacks (push-pull). Repeated rounds converge: after quiescence every replica
//!   holds the same entries, and reads return them in the same order.
//! - An entry received out of order (a gap) or again (a duplicate) is dropped and counted; a
//!   retried client request id is applied once (the last [`index::DEDUP_CAPACITY`] requests are
//!   remembered, and recovered from the log on open). Malformed payloads are counted, never a
//!   panic.
//! - Recovery on open replays the log: `have`, the segment summaries and the request table.
//!
//! # Capacities and what happens past them
//!
//! - `N` nodes in a version vector: an entry of an `N+1`th origin is refused (counted in
//!   [`Stats::refused`], or [`RlogError::Capacity`] for a local append); nothing is lost, the
//!   origin's entries stay with the replicas that hold them.
//! - `P` configured peers: [`Rlog::open`] refuses more.
//! - `SEG` segment summaries, at least the log's segment count (else `open` refuses). Each lists
//!   [`index::ORIGINS_PER_SEGMENT`] origins; a segment with more is searched in full when
//!   looked up (slower, nothing lost).
//! - [`JOBS`] outgoing anti-entropy jobs and [`ACKS`] waiting replies: past them work is dropped
//!   and counted (the next round redoes it; a client retries).
//! - An entry's record (context and data) must fit the log's `payload_max` and a datagram; data
//!   is bounded by `data_max`. A context holds one pair per origin the writer had heard of, so
//!   clusters with many writing origins need a large enough `payload_max` and MTU.
//!
//! - Space reclamation ([`reclaim`]): when the storage log runs out of free segments, the oldest
//!   segments are released once every configured peer's digests show it holds every entry in
//!   them, never before. A configured peer that never reports back blocks it: appends then fail
//!   with [`RlogError::Full`] and received entries are refused, and nothing stored is lost.
//!
//! # Not provided
//!
//! - Reading released entries: reads and anti-entropy serve the entries still stored; see
//!   [`reclaim`] for what reclamation does not do.
//! - Reads walk the whole live log once per page (bounded RAM, no per-entry index): cost grows
//!   with the log (reading all of 2 001 entries through `bedrock log read` took 0.21 s, all of
//!   10 001 took 4.5 s: quadratic). Finding a segment's first live frame (anti-entropy,
//!   reclamation) also walks from the live start.
//! - A replica whose recovery cut durable entries (mid-log corruption, or a wiped directory
//!   under the same node id) continues its own counter from what it recovered: its next appends
//!   reuse dots that peers already hold with other data, so peers drop them as duplicates. Such
//!   a replica must rejoin under a new node id (the node warns when recovery found damage).

mod causal;
pub mod index;
pub mod read;
pub mod reclaim;
mod sync;
#[cfg(test)]
mod tests;
pub mod wire;

use crate::crdt::{NodeId, VersionVector};
use crate::frame::EmitError;
use crate::log::{self, AppendError, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::service::{self, Peer, Service, Transmit};
use crate::storage::Storage;
use crate::time::Instant;
use core::time::Duration;
use heapless::{Deque, Vec};
use index::{Dedup, Summaries};

pub use read::{resolve, ReadPage};
pub use reclaim::KIND_FLOOR;
pub use wire::{Dot, Message, ReadEntry, ReadKey, Refusal, KIND_ENTRY};

/// Outgoing anti-entropy jobs (digests being sent, entries being streamed, reads being answered).
pub const JOBS: usize = 32;
/// Client replies waiting to be sent (most of them for the next commit).
pub const ACKS: usize = 64;
/// Entries a read page holds at most.
pub const READ_PAGE: usize = 16;
/// Record bytes besides the data and the context's pairs: origin, counter, request, lengths.
pub const RECORD_OVERHEAD: usize = 5 + 10 + (1 + 5 + 10) + 3 + 3;

/// How a replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RlogConfig {
    /// This replica's id, the origin of its entries; unique in the cluster.
    pub node: NodeId,
    /// Largest data of one entry.
    pub data_max: u32,
    /// Time between anti-entropy rounds.
    pub interval: Duration,
    /// Entry datagrams sent at most in answer to one digest chunk.
    pub entries_per_digest: u32,
    /// The storage log; its `payload_max` bounds a whole record.
    pub log: log::Config,
}

impl RlogConfig {
    /// A configuration for replica `node` with defaults: 256 data bytes, a round every 100 ms,
    /// 16 entries per digest, records up to 1024 bytes.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            data_max: 256,
            interval: Duration::from_millis(100),
            entries_per_digest: 16,
            log: log::Config {
                payload_max: 1024,
                ..log::Config::default()
            },
        }
    }
}

/// Counters of what the replica dropped or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Payloads that did not decode (messages or records).
    pub malformed: u64,
    /// Well-formed messages a replica does not take (replies meant for clients).
    pub unexpected: u64,
    /// Entries received that were already held.
    pub duplicates: u64,
    /// Entries received ahead of a missing one.
    pub gaps: u64,
    /// Entries received and stored.
    pub accepted: u64,
    /// Entries or appends refused: storage full, vector capacity, too large.
    pub refused: u64,
    /// Jobs or replies dropped because their queue was full.
    pub dropped: u64,
    /// Entries a peer lacked that could not be found or sent (read error, too large).
    pub unsent: u64,
    /// Entry datagrams sent.
    pub entries_sent: u64,
    /// Digest datagrams sent.
    pub digests_sent: u64,
    /// Segments of the storage log released because every peer held their entries.
    pub reclaimed: u64,
}

/// Why [`Rlog::open`] failed. Opening writes nothing that changes what the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RlogOpenError<E> {
    /// The storage log did not open, or a record did not replay.
    Open(OpenError<E, ReplayError>),
    /// More peers than `P`, fewer summaries `SEG` than the log has segments, or a `payload_max`
    /// too small for one entry of `data_max` bytes.
    Capacity,
}

/// Why an append (or a read) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RlogError<E> {
    /// The data is larger than `data_max`, or the record larger than the log's `payload_max`;
    /// nothing changed.
    TooLarge,
    /// The version vector holds `N` origins already; nothing changed.
    Capacity,
    /// The storage log is full and no segment could be released (some configured peer has not
    /// reported holding the oldest entries, or there are no peers); nothing changed.
    Full,
    /// The storage log refused the append otherwise (poisoned, storage error, epochs
    /// exhausted); nothing was staged. A storage error poisons the replica.
    Append(AppendError<E>),
    /// A read of the storage log failed; nothing changed (a failed write of the batch poisons
    /// the log).
    Read(log::ReadError<E>),
}

/// A client reply waiting for its commit (or ready to go).
#[derive(Debug, Clone, Copy)]
struct Ack {
    to: SocketAddr,
    request_id: u64,
    reply: Result<Dot, Refusal>,
    /// False while the entry waits for the commit that makes it durable.
    ready: bool,
}

/// Work that produces datagrams, one per `poll_transmit`.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Send this replica's digest of `[next, high]` to `to`, one chunk at a time.
    Digest {
        to: SocketAddr,
        reply: bool,
        next: NodeId,
        high: NodeId,
    },
    /// Send entries `next..=last` of `origin` to `to`, walking the log from `cursor`.
    Entries {
        to: SocketAddr,
        origin: NodeId,
        next: u64,
        last: u64,
        cursor: log::Cursor,
    },
    /// Answer a client's read.
    Read {
        to: SocketAddr,
        request_id: u64,
        from: ReadKey,
        max: u16,
    },
}

/// A replica of the replicated log. See the [module docs](self).
///
/// `N`: nodes in a version vector; `P`: configured peers; `SEG`: segment summaries (at least
/// the storage log's segment count).
#[derive(Debug)]
pub struct Rlog<S, B, const N: usize, const P: usize, const SEG: usize> {
    log: Log<S, B>,
    config: RlogConfig,
    peers: Vec<SocketAddr, P>,
    /// Entries held, durable or staged.
    held: VersionVector<N>,
    /// Entries held durably: what is served and advertised.
    durable: VersionVector<N>,
    summaries: Summaries<SEG>,
    dedup: Dedup,
    /// What each configured peer's digests say it holds (index as in `peers`).
    peer_have: [VersionVector<N>; P],
    /// The newest segment holding a floor frame.
    floor_epoch: u32,
    acks: Deque<Ack, ACKS>,
    jobs: Deque<Job, JOBS>,
    next_round: Instant,
    /// Something was appended since the last commit.
    staged: bool,
    stats: Stats,
}

/// The state recovery rebuilds.
struct Replay<const N: usize, const SEG: usize> {
    have: VersionVector<N>,
    summaries: Summaries<SEG>,
    dedup: Dedup,
    /// The newest segment holding a floor frame; 0 before the first one.
    floor_epoch: u32,
}

/// Replays a floor frame: `have` rises to it.
fn replay_floor<const N: usize, const SEG: usize>(
    state: &mut Replay<N, SEG>,
    entry: log::Entry<'_>,
) -> Result<(), ReplayError> {
    let sequence = entry.sequence;
    if wire::check_pairs(entry.payload, NodeId(0), NodeId(u32::MAX)).is_none() {
        return Err(ReplayError::BadPayload { sequence });
    }
    for (node, count) in wire::pairs(entry.payload) {
        let known = state.have.get(node);
        if count > known {
            state
                .have
                .add(node, count - known)
                .map_err(|_| ReplayError::Capacity { sequence })?;
        }
    }
    state.floor_epoch = state.floor_epoch.max(entry.position.epoch);
    Ok(())
}

/// Replays one frame into the state being rebuilt.
fn replay<const N: usize, const SEG: usize>(
    config: &RlogConfig,
    state: &mut Replay<N, SEG>,
    entry: log::Entry<'_>,
) -> Result<(), ReplayError> {
    let sequence = entry.sequence;
    if entry.kind == KIND_FLOOR {
        return replay_floor(state, entry);
    }
    if entry.kind != KIND_ENTRY {
        let kind = entry.kind;
        return Err(ReplayError::UnknownKind { sequence, kind });
    }
    let checked = wire::check_record(entry.payload, usize::MAX)
        .ok_or(ReplayError::BadPayload { sequence })?;
    let dot = checked.dot();
    let known = state.have.get(dot.origin);
    if dot.counter <= known {
        return Ok(());
    }
    // Before the first floor frame, an origin's first entry may follow released ones.
    let after_release = known == 0 && state.floor_epoch == 0;
    if dot.counter != known + 1 && !after_release {
        return Err(ReplayError::Gap { sequence });
    }
    state
        .have
        .add(dot.origin, dot.counter - known)
        .map_err(|_| ReplayError::Capacity { sequence })?;
    let (summaries, dedup) = (&mut state.summaries, &mut state.dedup);
    summaries.note(entry.position.epoch, dot);
    if let (Some((client, request_id)), true) = (checked.record.request, dot.origin == config.node)
    {
        dedup.remember(client, request_id, dot);
    }
    Ok(())
}

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize>
    Rlog<S, B, N, P, SEG>
{
    /// Opens the replica stored in `storage`, replaying its entries, with `peers` to exchange
    /// entries with.
    pub fn open(
        storage: S,
        buffer: B,
        config: RlogConfig,
        peers: &[SocketAddr],
    ) -> Result<(Self, Recovery), RlogOpenError<S::Error>> {
        let peers = Vec::from_slice(peers).map_err(|_| RlogOpenError::Capacity)?;
        let needed = config.data_max as usize + RECORD_OVERHEAD + 15;
        if (config.log.payload_max as usize) < needed {
            return Err(RlogOpenError::Capacity);
        }
        let mut state = Replay {
            have: VersionVector::new(),
            summaries: Summaries::new(),
            dedup: Dedup::new(),
            floor_epoch: 0,
        };
        let (log, recovery) = Log::open(storage, buffer, config.log, |entry| {
            replay(&config, &mut state, entry)
        })
        .map_err(RlogOpenError::Open)?;
        let Replay {
            have,
            summaries,
            dedup,
            floor_epoch,
        } = state;
        if (log.segments() as usize) > SEG {
            return Err(RlogOpenError::Capacity);
        }
        let replica = Self {
            log,
            config,
            peers,
            durable: have.clone(),
            held: have,
            summaries,
            dedup,
            peer_have: core::array::from_fn(|_| VersionVector::new()),
            floor_epoch,
            acks: Deque::new(),
            jobs: Deque::new(),
            next_round: Instant::ZERO,
            staged: false,
            stats: Stats::default(),
        };
        Ok((replica, recovery))
    }

    /// Stages a local append of `data` and returns its dot. The entry is durable (and may be
    /// acknowledged) only once the next [`Service::commit`] returns `Ok`.
    pub fn append(&mut self, _now: Instant, data: &[u8]) -> Result<Dot, RlogError<S::Error>> {
        self.append_request(data, None)
    }

    fn append_request(
        &mut self,
        data: &[u8],
        request: Option<(NodeId, u64)>,
    ) -> Result<Dot, RlogError<S::Error>> {
        let me = self.config.node;
        if data.len() > self.config.data_max as usize {
            return Err(RlogError::TooLarge);
        }
        let known = self.held.get(me);
        if known == 0 && self.held.len() >= N {
            return Err(RlogError::Capacity);
        }
        let counter = known.checked_add(1).ok_or(RlogError::Capacity)?;
        let dot = Dot {
            origin: me,
            counter,
        };
        let appended = match self.append_local(dot, request, data) {
            Err(AppendError::Full) if self.reclaim() => self.append_local(dot, request, data),
            other => other,
        };
        let appended = appended.map_err(|error| match error {
            AppendError::Encode(_) => RlogError::TooLarge,
            AppendError::Full => RlogError::Full,
            error => RlogError::Append(error),
        })?;
        // Checked above: the origin is present or there is room for it.
        self.held.add(me, 1).map_err(|_| RlogError::Capacity)?;
        self.summaries.note(appended.position.epoch, dot);
        self.write_floor(appended.position.epoch);
        self.staged = true;
        if let Some((client, request_id)) = request {
            self.dedup.remember(client, request_id, dot);
        }
        Ok(dot)
    }

    /// Appends the record of a new local entry.
    fn append_local(
        &mut self,
        dot: Dot,
        request: Option<(NodeId, u64)>,
        data: &[u8],
    ) -> Result<log::Appended, AppendError<S::Error>> {
        let held = &self.held;
        self.log.append(KIND_ENTRY, |area| {
            wire::encode_local(area, held, dot, request, data).ok_or(EmitError::BufferTooSmall)
        })
    }

    /// True once the entry `dot` is durable here.
    pub fn is_durable(&self, dot: Dot) -> bool {
        dot.counter != 0 && dot.counter <= self.durable.get(dot.origin)
    }

    /// The entries held durably: per origin, how many.
    pub fn have(&self) -> &VersionVector<N> {
        &self.durable
    }

    /// What was dropped, refused and sent so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// This replica's node id.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The storage log underneath, for statistics.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    /// The storage, mutable: see [`Log::storage_mut`] (for simulators arming power cuts).
    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Commits what is staged and writes the log's clean-shutdown marker in the same sync, so
    /// the next open appends in place instead of in a fresh segment (see [`Log::close`]).
    /// Acknowledgements still queued are not sent: their clients retry, and find their request
    /// applied once.
    pub fn close(self) -> Result<(), SyncError<S::Error>> {
        self.log.close()
    }

    /// Gives the storage and buffer back, dropping what was not committed (as a crash would).
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// Takes a client's append: applied once per request id, answered after the commit.
    fn on_append(&mut self, from: Peer, request_id: u64, data: &[u8]) {
        if let Some(dot) = self.dedup.find(from.node, request_id) {
            // Still staged: the reply waiting for the commit answers the retry too.
            if self.is_durable(dot) {
                self.push_ack(from.addr, request_id, Ok(dot), true);
            }
            return;
        }
        if self.acks.is_full() {
            self.stats.dropped += 1;
            return;
        }
        let reply = match self.append_request(data, Some((from.node, request_id))) {
            Ok(dot) => Ok(dot),
            Err(RlogError::TooLarge) => Err(Refusal::TooLarge),
            Err(RlogError::Full) => Err(Refusal::Full),
            Err(RlogError::Capacity) => Err(Refusal::Busy),
            Err(_) => Err(Refusal::Unavailable),
        };
        if reply.is_err() {
            self.stats.refused += 1;
        }
        self.push_ack(from.addr, request_id, reply, reply.is_err());
    }

    fn push_ack(
        &mut self,
        to: SocketAddr,
        request_id: u64,
        reply: Result<Dot, Refusal>,
        ready: bool,
    ) {
        let ack = Ack {
            to,
            request_id,
            reply,
            ready,
        };
        if self.acks.push_back(ack).is_err() {
            self.stats.dropped += 1;
        }
    }

    fn push_job(&mut self, job: Job) {
        if self.jobs.push_back(job).is_err() {
            self.stats.dropped += 1;
        }
    }

    /// Sends the first reply if its commit happened.
    fn poll_ack(&mut self, buffer: &mut [u8]) -> Option<Transmit> {
        let ack = self.acks.pop_front_if(|ack| ack.ready)?;
        let message = match ack.reply {
            Ok(dot) => Message::Appended {
                request_id: ack.request_id,
                dot,
            },
            Err(reason) => Message::Refused {
                request_id: ack.request_id,
                reason,
            },
        };
        let Some(len) = message.encode(buffer) else {
            self.stats.dropped += 1;
            return None;
        };
        Some(Transmit { to: ack.to, len })
    }
}

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize> Service
    for Rlog<S, B, N, P, SEG>
{
    const KIND: u8 = service::kind::REPLICATED_LOG;
    type Error = SyncError<S::Error>;

    fn handle_message(&mut self, _now: Instant, from: Peer, payload: &[u8]) {
        let Some(message) = Message::decode(payload) else {
            self.stats.malformed += 1;
            return;
        };
        match message {
            Message::Digest {
                reply,
                low,
                high,
                pairs,
            } => self.on_digest(from.addr, reply, low, high, pairs),
            Message::Entry { record } => self.on_entry(record),
            Message::Append { request_id, data } => self.on_append(from, request_id, data),
            Message::Read {
                request_id,
                from: key,
                max,
            } => self.push_job(Job::Read {
                to: from.addr,
                request_id,
                from: key,
                max,
            }),
            Message::Appended { .. } | Message::Refused { .. } | Message::ReadReply { .. } => {
                self.stats.unexpected += 1;
            }
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        if now < self.next_round {
            return;
        }
        self.next_round = now + self.config.interval;
        if self.peers.is_empty() {
            return;
        }
        let index = rng.below(self.peers.len() as u64) as usize;
        let Some(&to) = self.peers.get(index) else {
            return;
        };
        self.push_job(Job::Digest {
            to,
            reply: false,
            next: NodeId(0),
            high: NodeId(u32::MAX),
        });
    }

    fn poll_transmit(&mut self, _now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        if let Some(transmit) = self.poll_ack(buffer) {
            return Some(transmit);
        }
        // Each job either sends a datagram or finishes: bounded by the queue's capacity.
        for _ in 0..JOBS {
            let job = self.jobs.pop_front()?;
            let (transmit, rest) = self.run_job(job, buffer);
            if let Some(rest) = rest {
                // Just popped one: there is room.
                self.push_job(rest);
            }
            if transmit.is_some() {
                return transmit;
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (!self.peers.is_empty()).then_some(self.next_round)
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        if !self.staged {
            return Ok(());
        }
        self.log.sync()?;
        self.staged = false;
        self.durable = self.held.clone();
        for ack in self.acks.iter_mut() {
            ack.ready = true;
        }
        // One segment ahead: a crash with every slot live leaves a head without the room a
        // release needs (see the reclaim module docs).
        if self.log.free_segments() <= 1 {
            self.reclaim();
        }
        Ok(())
    }
}

impl<E: core::fmt::Display> core::fmt::Display for RlogOpenError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Open(error) => error.fmt(f),
            Self::Capacity => f.write_str(
                "too many peers, too few segment summaries, or payload_max too small for data_max",
            ),
        }
    }
}

impl<E: core::fmt::Display> core::fmt::Display for RlogError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge => f.write_str("the entry is larger than the configured limit"),
            Self::Capacity => f.write_str("the version vector is at its capacity of origins"),
            Self::Full => f.write_str(
                "the storage log is full, and its oldest entries cannot be released until every \
                 configured peer reports holding them",
            ),
            Self::Append(error) => error.fmt(f),
            Self::Read(error) => error.fmt(f),
        }
    }
}
