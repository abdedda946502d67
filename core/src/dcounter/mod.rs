//! The distributed counter (Q4): a grow-only CRDT counter replicated by gossip, with durable
//! local increments.
//!
//! Every node keeps a G-Counter (per node, the highest count seen; the value is the sum). A node
//! increments only its own entry, and only through its storage log: an increment is appended,
//! synced by the driver's group commit ([`Service::commit`]), and acknowledged after that.
//! Entries spread by push-pull gossip: every `gossip_interval` a node pushes to one random peer
//! the entries that peer has not acknowledged, and asks for a push back.
//!
//! Deltas: each change of an entry takes a fresh *stamp* from a local clock. A push carries every
//! entry whose stamp lies in a range `(low, high]`; the receiver merges them and acknowledges the
//! range; the sender remembers, per peer, the stamp up to which everything was acknowledged, so
//! the next push carries only what changed since (delta-state gossip). When a peer restarts
//! (a new incarnation in the wire envelope) its acknowledgements are forgotten and it gets the
//! whole state again. Pushes are cut into chunks that fit one datagram, so a cluster of any size
//! gossips within the MTU.
//!
//! # Guarantees
//!
//! - An acknowledged increment is durable on the node that took it, and is never counted twice:
//!   merge keeps the larger count per node, so duplicated, reordered or replayed pushes change
//!   nothing; a retried client request (same client id and request id, within the last
//!   `DONE` requests) is applied once.
//! - Gossip carries a node's own count only as far as it is durable: an increment whose commit
//!   failed never reaches a peer, so a restart cannot leave peers holding a count the node lost
//!   (their per-node maximum would swallow its next acknowledged increments).
//! - Once the network delivers enough pushes between every pair of connected nodes (partitions
//!   healed), every node's value is the exact sum of every acknowledged increment.
//! - Memory is fixed by the const generics: `N` nodes, `P` peers, `DONE` remembered requests,
//!   `PENDING` replies waiting for a sync.
//!
//! # Not guaranteed
//!
//! - Entries of other nodes are checkpointed to storage only from time to time: a node that
//!   restarts relearns them from its peers. A node lost for good takes with it the increments
//!   no other node had merged yet.
//! - A node id must not be reused by a node that lost its storage: its new increments would be
//!   hidden under the count its peers remember until they pass it. Give such a node a new id.
//!   The same holds after recovery cut synced records (mid-log corruption, or damage to the
//!   last synced batch, which recovery cannot tell from a torn tail): the recovered own count
//!   may be below what peers hold, and increments acknowledged before the peers' count is
//!   passed are absorbed. The node warns at start when recovery found damage.
//! - Anyone holding the cluster key is trusted as a node (SPEC.md §6.7): it can push any count
//!   for any node id. A captured client request can be replayed once the envelope's replay
//!   record and the `DONE` window have both forgotten it (SPEC.md §6.7).
//! - A cluster larger than `N` nodes cannot be represented: merges that would need more entries
//!   are refused and counted ([`Stats::capacity_refusals`]).

mod message;
#[cfg(test)]
mod tests;

pub use message::{decode, encode, Malformed, Message, Refusal, ENTRIES_MAX, ENTRY_LEN_MAX};

use core::time::Duration;

use heapless::{Deque, Vec};
use serde::{Deserialize, Serialize};

use crate::crdt::{MaxMap, NodeId};
use crate::frame::EmitError;
use crate::log::{self, AppendError, Appended, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::service::{self, Peer, Service, Transmit};
use crate::storage::Storage;
use crate::time::Instant;

/// Kind of a frame holding one local increment ([`AddRecord`]).
pub const KIND_ADD: u8 = log::KIND_USER_MIN;
/// Kind of a frame holding the whole state: every count and the remembered requests.
pub const KIND_CHECKPOINT: u8 = log::KIND_USER_MIN + 1;

/// Gossip messages (pushes, acknowledgements) and immediate answers waiting to be sent; more are
/// dropped and counted (gossip and clients retry). Replies that waited for a sync are sent from
/// the `PENDING` table instead, so a large group commit never overflows this.
const OUTBOX: usize = 32;
/// Acknowledged ranges kept per peer while an earlier range is still missing.
const ACK_RANGES: usize = 4;
/// The largest push head: variant, epoch, low, high, count, pull and digest varints.
const HEAD_LEN_MAX: usize = 1 + 5 + 10 + 10 + 5 + 1 + 10;

/// How a distributed counter node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// This node's id; it increments only its own entry.
    pub node: NodeId,
    /// This node's incarnation (grows at every start); it scopes the stamps in pushes.
    pub incarnation: u32,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Most push datagrams sent to one peer per round.
    pub chunks_per_round: u32,
    /// A checkpoint replaces every this-many increment records (at least 1).
    pub checkpoint_every: u32,
    /// Merged entries of other nodes are checkpointed at most this often.
    pub checkpoint_interval: Duration,
    /// The log underneath; its `payload_max` is raised to what a checkpoint needs.
    pub log: log::Config,
}

impl Config {
    /// Defaults for node `node` in its incarnation `incarnation`: a round every 200 ms, up to 4
    /// push datagrams per round, a checkpoint every 1024 increments or 5 s.
    pub fn new(node: NodeId, incarnation: u32) -> Self {
        Self {
            node,
            incarnation,
            gossip_interval: Duration::from_millis(200),
            chunks_per_round: 4,
            checkpoint_every: 1024,
            checkpoint_interval: Duration::from_secs(5),
            log: log::Config::default(),
        }
    }
}

/// One local increment, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRecord {
    /// The amount added to this node's count.
    pub by: u64,
    /// The client that asked.
    pub client: NodeId,
    /// The client's request id.
    pub request: u64,
    /// The value the client was told.
    pub value: u64,
}

/// A request already applied: a retry gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Done {
    client: NodeId,
    request: u64,
    value: u64,
}

/// A reply that waits for the next sync, then to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    to: SocketAddr,
    /// The client that asked.
    client: NodeId,
    request: u64,
    /// The value recorded with the increment: a retry after the sync gets it.
    value: u64,
    /// `None` until the sync is done; then the answer to send.
    answer: Option<Message>,
}

/// What the node knows about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerState {
    addr: SocketAddr,
    /// The peer's incarnation when it last spoke; 0 before it has.
    incarnation: u32,
    /// Every entry with a stamp up to this one has been acknowledged by the peer.
    acked: u64,
    /// Acknowledged ranges above `acked`, waiting for the gap below them to close.
    ranges: [(u64, u64); ACK_RANGES],
    /// Where the next push chunk of this round starts.
    cursor: u64,
}

/// A message to send, encoded when it is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    Push {
        peer: usize,
        pull: bool,
    },
    Ack {
        to: SocketAddr,
        epoch: u32,
        low: u64,
        high: u64,
        digest: u64,
    },
    Reply {
        to: SocketAddr,
        request: u64,
        value: u64,
    },
    Refuse {
        to: SocketAddr,
        request: u64,
        reason: Refusal,
    },
}

/// Counts of what the node did and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Gossip rounds started.
    pub rounds: u64,
    /// Push datagrams sent.
    pub pushes_sent: u64,
    /// Pushes received and merged.
    pub pushes_merged: u64,
    /// Entries that raised a count here.
    pub entries_raised: u64,
    /// Payloads that did not decode: dropped.
    pub malformed: u64,
    /// Merges refused because the state holds `N` nodes already.
    pub capacity_refusals: u64,
    /// Messages dropped because the outbox was full.
    pub outbox_full: u64,
    /// Retried client requests answered from memory.
    pub retries_answered: u64,
    /// Local increments acknowledged.
    pub increments: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Syncs done by [`Service::commit`].
    pub syncs: u64,
}

/// Why a commit failed: the storage failed and the service is poisoned; nothing staged since the
/// previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Appending a checkpoint failed.
    Append(AppendError<E>),
    /// The sync failed.
    Sync(SyncError<E>),
}

/// Errors of [`DistributedCounter::open`].
pub type DistributedCounterOpenError<E> = OpenError<E, ReplayError>;

/// The largest checkpoint payload: the counts of `N` nodes and `DONE` requests.
pub const fn checkpoint_len_max(nodes: usize, done: usize) -> usize {
    // Two sequence lengths, then per node (u32, u64) and per request (u32, u64, u64) varints.
    10 + nodes * ENTRY_LEN_MAX + done * (5 + 10 + 10)
}

/// A distributed counter node over a storage log. See the [module docs](self).
#[derive(Debug)]
pub struct DistributedCounter<
    S,
    B,
    const N: usize,
    const P: usize,
    const DONE: usize,
    const PENDING: usize,
> {
    log: Log<S, B>,
    config: Config,
    counts: MaxMap<N>,
    /// Per node, the stamp of the entry's last change.
    stamps: MaxMap<N>,
    clock: u64,
    peers: Vec<PeerState, P>,
    done: Deque<Done, DONE>,
    pending: Vec<Pending, PENDING>,
    outbox: Deque<Outgoing, OUTBOX>,
    /// Whether the log holds appended frames not yet synced.
    staged: bool,
    since_checkpoint: u32,
    remote_changes: bool,
    next_checkpoint: Instant,
    next_round: Instant,
    pending_release: Option<Appended>,
    /// The digest of the gossiped state, `None` after a change until it is needed again.
    digest_cache: Option<u64>,
    /// This node's own count as far as it is durable: what gossip carries for it. Staged
    /// increments join it only when their commit succeeds, so peers never learn an increment
    /// that a failed sync and a restart could take back (their per-node maximum would then
    /// swallow the node's next acknowledged increments).
    durable_own: u64,
    /// A commit failed: the store is poisoned, and every request is refused.
    poisoned: bool,
    stats: Stats,
}

/// The state replay rebuilds.
struct Replayed<const N: usize, const DONE: usize> {
    node: NodeId,
    counts: MaxMap<N>,
    done: Deque<Done, DONE>,
    since_checkpoint: u32,
}

impl<const N: usize, const DONE: usize> Replayed<N, DONE> {
    fn apply(&mut self, entry: log::Entry<'_>) -> Result<(), ReplayError> {
        let sequence = entry.sequence;
        match entry.kind {
            KIND_ADD => {
                let record: AddRecord =
                    decode_exact(entry.payload).ok_or(ReplayError::BadPayload { sequence })?;
                self.counts
                    .add(self.node, record.by)
                    .map_err(|_| ReplayError::Capacity { sequence })?;
                // A local increment (the node's own id as client) is never retried by a client.
                if record.client != self.node {
                    remember(&mut self.done, record.client, record.request, record.value);
                }
                self.since_checkpoint = self.since_checkpoint.saturating_add(1);
            }
            KIND_CHECKPOINT => {
                let (counts, done): (MaxMap<N>, Vec<Done, DONE>) =
                    decode_exact(entry.payload).ok_or(ReplayError::BadPayload { sequence })?;
                if !is_canonical(&counts) {
                    return Err(ReplayError::BadPayload { sequence });
                }
                self.counts = counts;
                self.done.clear();
                for request in done {
                    remember(
                        &mut self.done,
                        request.client,
                        request.request,
                        request.value,
                    );
                }
                self.since_checkpoint = 0;
            }
            kind => return Err(ReplayError::UnknownKind { sequence, kind }),
        }
        Ok(())
    }
}

/// Decodes a postcard value that must use every byte.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// Node ids strictly increasing and no zero count: the only form `MaxMap` ever holds.
fn is_canonical<const N: usize>(map: &MaxMap<N>) -> bool {
    let mut previous: Option<NodeId> = None;
    map.iter().all(|(node, count)| {
        let ordered = previous.is_none_or(|before| before < node);
        previous = Some(node);
        ordered && count != 0
    })
}

/// Records a finished request, forgetting the oldest when full.
fn remember<const DONE: usize>(
    done: &mut Deque<Done, DONE>,
    client: NodeId,
    request: u64,
    value: u64,
) {
    if done.is_full() {
        done.pop_front();
    }
    // Room was just made.
    let _ = done.push_back(Done {
        client,
        request,
        value,
    });
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const N: usize,
        const P: usize,
        const DONE: usize,
        const PENDING: usize,
    > DistributedCounter<S, B, N, P, DONE, PENDING>
{
    /// Opens the node's counter stored in `storage`, recovering its own count, the last
    /// checkpointed counts of other nodes and the remembered requests. `peers` are the nodes it
    /// gossips with (more are learned when they push); at most `P` are kept.
    pub fn open(
        storage: S,
        buffer: B,
        config: Config,
        peers: &[SocketAddr],
    ) -> Result<(Self, Recovery), DistributedCounterOpenError<S::Error>> {
        let mut replayed = Replayed::<N, DONE> {
            node: config.node,
            counts: MaxMap::new(),
            done: Deque::new(),
            since_checkpoint: 0,
        };
        let payload_max = u32::try_from(checkpoint_len_max(N, DONE)).unwrap_or(u32::MAX);
        let log_config = log::Config {
            payload_max: config.log.payload_max.max(payload_max),
            ..config.log
        };
        let (log, recovery) =
            Log::open(storage, buffer, log_config, |entry| replayed.apply(entry))?;
        let mut node = Self {
            log,
            config,
            counts: replayed.counts,
            stamps: MaxMap::new(),
            clock: 0,
            peers: Vec::new(),
            done: replayed.done,
            pending: Vec::new(),
            outbox: Deque::new(),
            staged: false,
            since_checkpoint: replayed.since_checkpoint,
            remote_changes: false,
            next_checkpoint: Instant::ZERO,
            next_round: Instant::ZERO,
            pending_release: None,
            digest_cache: None,
            durable_own: 0,
            poisoned: false,
            stats: Stats::default(),
        };
        node.durable_own = node.counts.get(node.config.node);
        node.config.checkpoint_every = node.config.checkpoint_every.max(1);
        node.config.chunks_per_round = node.config.chunks_per_round.max(1);
        node.restamp_all();
        for &addr in peers {
            node.peer_index(addr);
        }
        Ok((node, recovery))
    }

    /// Gives every entry its own stamp, so pushes can cut the state into ranges.
    fn restamp_all(&mut self) {
        let mut nodes: Vec<NodeId, N> = Vec::new();
        for (node, _) in self.counts.iter() {
            // Both maps hold at most N nodes.
            let _ = nodes.push(node);
        }
        for node in nodes {
            self.touch(node);
        }
    }

    /// Records that `node`'s count changed: it gets the next stamp.
    fn touch(&mut self, node: NodeId) {
        // `stamps` holds exactly the nodes of `counts`: gossip pairs them entry by entry.
        debug_assert!(
            self.counts.get(node) != 0,
            "a stamp for a node without a count"
        );
        if self.counts.get(node) == 0 {
            return;
        }
        self.digest_cache = None;
        self.clock += 1;
        let current = self.stamps.get(node);
        // A stamp only grows, and `counts` already holds `node`, so `stamps` has room for it.
        let _ = self.stamps.add(node, self.clock - current);
    }

    /// The sum of every count this node knows (saturating at `u64::MAX`).
    pub fn value(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, (_, count)| sum.saturating_add(count))
    }

    /// The sum of the counts as gossip carries them: this node's own only as far as it is
    /// durable (saturating at `u64::MAX`).
    pub fn durable_value(&self) -> u64 {
        self.gossiped(0, u64::MAX)
            .fold(0u64, |sum, (_, count)| sum.saturating_add(count))
    }

    /// The per-node counts: the G-Counter state.
    pub fn counts(&self) -> &MaxMap<N> {
        &self.counts
    }

    /// What the node did and dropped.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The log underneath.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    /// The storage, mutable: see [`Log::storage_mut`].
    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Gives the storage and buffer back, dropping what was not committed (as a crash would).
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// Commits what is staged and marks a clean shutdown in the same sync, so that the next
    /// open appends in place (see [`Log::close`]). Replies still queued are not sent.
    pub fn close(mut self) -> Result<(), CommitError<S::Error>> {
        if let Some(checkpoint) = self.pending_release.take() {
            self.log
                .release_before(checkpoint)
                .map_err(CommitError::Sync)?;
        }
        self.log.close().map_err(CommitError::Sync)
    }

    /// Adds `by` to this node's count as a local call (no client): staged now, durable and
    /// acknowledged when the next [`Service::commit`] returns. Returns the node's new view.
    pub fn incr(&mut self, by: u64) -> Result<u64, Refusal> {
        self.stage_add(by, self.config.node, 0)
    }

    /// Appends an increment record and applies it; the caller sends the reply after commit.
    fn stage_add(&mut self, by: u64, client: NodeId, request: u64) -> Result<u64, Refusal> {
        let own = self.config.node;
        if self.poisoned {
            return Err(Refusal::Unavailable);
        }
        if by == 0 {
            // Nothing to record, and no entry to create (a zero count is never stored).
            return Ok(self.value());
        }
        let count = self
            .counts
            .get(own)
            .checked_add(by)
            .ok_or(Refusal::Overflow)?;
        if self.counts.get(own) == 0 && self.counts.len() >= N {
            return Err(Refusal::Unavailable);
        }
        let value = self.value().saturating_add(by);
        let record = AddRecord {
            by,
            client,
            request,
            value,
        };
        self.log
            .append_postcard(KIND_ADD, &record)
            .map_err(|_| Refusal::Unavailable)?;
        self.staged = true;
        // Checked above: the count fits and there is room for the node.
        let _ = self.counts.add(own, count - self.counts.get(own));
        self.touch(own);
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.config.checkpoint_every || self.log.free_segments() <= 2 {
            // A failed checkpoint leaves the increment staged; the next one will try again.
            let staging = (client != own).then_some(Done {
                client,
                request,
                value,
            });
            let _ = self.stage_checkpoint(staging);
        }
        Ok(value)
    }

    /// Appends the whole state; the segments before it are released with the next sync.
    fn stage_checkpoint(&mut self, staging: Option<Done>) -> Result<(), AppendError<S::Error>> {
        // The checkpoint's counts include the staged increments, so its requests must too: a
        // restart that replays it must recognise their retries (they go into `done` in memory
        // only once their sync succeeds).
        let mut remembered = self.done.clone();
        for pending in self.pending.iter().filter(|p| p.answer.is_none()) {
            remember(
                &mut remembered,
                pending.client,
                pending.request,
                pending.value,
            );
        }
        if let Some(request) = staging {
            remember(
                &mut remembered,
                request.client,
                request.request,
                request.value,
            );
        }
        let mut done: Vec<Done, DONE> = Vec::new();
        for &request in remembered.iter() {
            let _ = done.push(request);
        }
        let appended = self.log.append(KIND_CHECKPOINT, |area| {
            postcard::to_slice(&(&self.counts, &done), area)
                .map(|used| used.len())
                .map_err(|_| EmitError::BufferTooSmall)
        })?;
        self.staged = true;
        self.since_checkpoint = 0;
        self.remote_changes = false;
        self.pending_release = Some(appended);
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// The index of the peer at `addr`, added when there is room.
    fn peer_index(&mut self, addr: SocketAddr) -> Option<usize> {
        if let Some(index) = self.peers.iter().position(|peer| peer.addr == addr) {
            return Some(index);
        }
        let fresh = PeerState {
            addr,
            incarnation: 0,
            acked: 0,
            ranges: [(0, 0); ACK_RANGES],
            cursor: 0,
        };
        self.peers.push(fresh).ok()?;
        Some(self.peers.len() - 1)
    }

    /// Forgets what a peer acknowledged when it restarted: it may have lost merged entries.
    /// Forgets what a peer acknowledged when it restarted (a newer incarnation): it may have
    /// lost merged entries. Returns false for a message from an older incarnation than the
    /// newest seen, which must not count as an acknowledgement.
    fn observe_incarnation(&mut self, index: usize, incarnation: u32) -> bool {
        let peer = &mut self.peers[index];
        if incarnation < peer.incarnation {
            return false;
        }
        if peer.incarnation != incarnation {
            peer.incarnation = incarnation;
            peer.acked = 0;
            peer.cursor = 0;
            peer.ranges = [(0, 0); ACK_RANGES];
        }
        true
    }

    fn enqueue(&mut self, outgoing: Outgoing) {
        if self.outbox.push_back(outgoing).is_err() {
            self.stats.outbox_full += 1;
        }
    }

    /// Queues this round's pushes to peer `index`, starting where it acknowledged.
    fn queue_pushes(&mut self, index: usize, pull: bool) {
        let peer = &mut self.peers[index];
        peer.cursor = peer.acked;
        for chunk in 0..self.config.chunks_per_round {
            self.enqueue(Outgoing::Push {
                peer: index,
                pull: pull && chunk == 0,
            });
        }
    }
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const N: usize,
        const P: usize,
        const DONE: usize,
        const PENDING: usize,
    > DistributedCounter<S, B, N, P, DONE, PENDING>
{
    fn handle_push(&mut self, from: Peer, head: Message, rest: &[u8]) {
        let Message::Push {
            epoch,
            low,
            high,
            count,
            pull,
            digest,
        } = head
        else {
            return;
        };
        let Ok(entries) = message::entries(rest, count) else {
            self.stats.malformed += 1;
            return;
        };
        let mut complete = true;
        for (node, value) in entries {
            complete &= self.raise(node, value);
        }
        self.stats.pushes_merged += 1;
        // An incomplete merge is not acknowledged, so the sender keeps offering the range.
        let mine = self.digest();
        if complete {
            self.enqueue(Outgoing::Ack {
                to: from.addr,
                epoch,
                low,
                high,
                digest: mine,
            });
        }
        if let Some(index) = self.peer_index(from.addr) {
            if !self.observe_incarnation(index, from.incarnation) {
                return; // A late push of an earlier life: its entries merged, nothing more.
            }
            if digest == mine {
                // The sender's state equals ours: it holds everything we have.
                self.peers[index].acked = self.clock;
            } else if pull {
                self.queue_pushes(index, false);
            }
        }
    }

    /// The digest of the whole state (see [`message::digest`]), cached until the next change.
    fn digest(&mut self) -> u64 {
        if let Some(digest) = self.digest_cache {
            return digest;
        }
        let digest = message::digest(self.gossiped(0, u64::MAX));
        self.digest_cache = Some(digest);
        digest
    }

    /// Merges one entry; false when it could not be stored (capacity).
    fn raise(&mut self, node: NodeId, value: u64) -> bool {
        let current = self.counts.get(node);
        if value <= current {
            return true;
        }
        if self.counts.add(node, value - current).is_err() {
            self.stats.capacity_refusals += 1;
            return false;
        }
        if node == self.config.node {
            // Peers hold a count of ours above what we recovered (our storage was replaced):
            // it was durable once, and gossip already carries it.
            self.durable_own = self.durable_own.max(value);
        }
        self.touch(node);
        self.remote_changes = true;
        self.stats.entries_raised += 1;
        true
    }

    fn handle_ack(&mut self, from: Peer, epoch: u32, (low, high): (u64, u64), digest: u64) {
        if epoch != self.config.incarnation || high > self.clock {
            return;
        }
        let Some(index) = self.peer_index(from.addr) else {
            return;
        };
        if !self.observe_incarnation(index, from.incarnation) {
            return; // An acknowledgement from an earlier life of the peer proves nothing now.
        }
        if digest == self.digest() {
            // The peer's state equals ours: it holds every entry, whatever ranges it missed.
            self.peers[index].acked = self.clock;
            return;
        }
        let peer = &mut self.peers[index];
        if low > peer.acked {
            // A later chunk arrived first: keep its range until the gap closes.
            let slot = peer
                .ranges
                .iter()
                .enumerate()
                .min_by_key(|(_, range)| range.1)
                .map_or(0, |(slot, _)| slot);
            peer.ranges[slot] = (low, high);
            return;
        }
        peer.acked = peer.acked.max(high);
        // Absorb stored ranges that now touch the acknowledged prefix (bounded: ACK_RANGES).
        for _ in 0..ACK_RANGES {
            let acked = peer.acked;
            match peer
                .ranges
                .iter_mut()
                .find(|range| range.0 <= acked && range.1 > acked)
            {
                Some(range) => {
                    peer.acked = range.1;
                    *range = (0, 0);
                }
                None => break,
            }
        }
    }

    fn handle_incr(&mut self, from: Peer, request: u64, by: u64) {
        let same = |client: NodeId, id: u64| client == from.node && id == request;
        if self.pending.iter().any(|p| same(p.client, p.request)) {
            return; // Its reply goes out after the sync that is coming.
        }
        // Only requests whose sync succeeded are remembered, so this answer is durable.
        if let Some(done) = self
            .done
            .iter()
            .find(|done| same(done.client, done.request))
        {
            let value = done.value;
            self.stats.retries_answered += 1;
            self.enqueue(Outgoing::Reply {
                to: from.addr,
                request,
                value,
            });
            return;
        }
        let outcome = if self.pending.is_full() {
            Err(Refusal::Busy)
        } else if by == 0 {
            // Nothing to add: the answer is the durable value, at once.
            let value = self.durable_value();
            self.enqueue(Outgoing::Reply {
                to: from.addr,
                request,
                value,
            });
            return;
        } else {
            self.stage_add(by, from.node, request)
        };
        match outcome {
            Ok(value) => {
                // Room was checked above.
                let _ = self.pending.push(Pending {
                    to: from.addr,
                    client: from.node,
                    request,
                    value,
                    answer: None,
                });
            }
            Err(reason) => self.enqueue(Outgoing::Refuse {
                to: from.addr,
                request,
                reason,
            }),
        }
    }

    fn handle_get(&mut self, from: Peer, request: u64) {
        // The durable view: a client reads what it was told is durable, and nothing that a
        // failed sync could take back.
        let value = self.durable_value();
        self.enqueue(Outgoing::Reply {
            to: from.addr,
            request,
            value,
        });
    }

    /// Encodes the next push chunk to peer `index` into `buffer`; `None` when it has nothing to
    /// carry (a later chunk of a round whose changes fitted the earlier ones).
    fn encode_push(&mut self, index: usize, pull: bool, buffer: &mut [u8]) -> Option<usize> {
        let low = self.skip_acknowledged(index)?;
        if low > self.clock || (!pull && low == self.clock) {
            return None;
        }
        let room = buffer.len().checked_sub(HEAD_LEN_MAX)?;
        let high = self.chunk_end(low, room);
        let count = self.in_range(low, high).count();
        let head = Message::Push {
            epoch: self.config.incarnation,
            low,
            high,
            count: u32::try_from(count).ok()?,
            pull,
            digest: self.digest(),
        };
        let mut end = message::encode(&head, buffer)?;
        for (node, value) in self.in_range(low, high) {
            end = message::encode_entry(node, value, buffer, end)?;
        }
        self.peers[index].cursor = high;
        self.stats.pushes_sent += 1;
        Some(end)
    }

    /// Where the next chunk to peer `index` starts: its cursor, moved past the ranges the peer
    /// already acknowledged (a lost chunk does not make every later chunk go again).
    fn skip_acknowledged(&mut self, index: usize) -> Option<u64> {
        let peer = self.peers.get_mut(index)?;
        let mut low = peer.cursor.max(peer.acked);
        for _ in 0..ACK_RANGES {
            match peer
                .ranges
                .iter()
                .find(|range| range.0 <= low && range.1 > low)
            {
                Some(range) => low = range.1,
                None => break,
            }
        }
        peer.cursor = low;
        Some(low)
    }

    /// The entries whose stamps lie in `(low, high]`, in node order.
    fn in_range(&self, low: u64, high: u64) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.gossiped(low, high)
    }

    /// What gossip says: every count, this node's own as far as it is durable, zeros left out,
    /// restricted to the entries whose stamps lie in `(low, high]`.
    fn gossiped(&self, low: u64, high: u64) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        let own = self.config.node;
        let durable_own = self.durable_own;
        self.counts
            .iter()
            .zip(self.stamps.iter())
            .filter(move |&(_, (_, stamp))| stamp > low && stamp <= high)
            .map(move |((node, count), _)| (node, if node == own { durable_own } else { count }))
            .filter(|&(_, count)| count != 0)
    }

    /// The largest stamp `high` such that the entries with stamps in `(low, high]` take at most
    /// `room` bytes (and number at most [`ENTRIES_MAX`]). Stamps are distinct, so the size grows
    /// by one entry per stamp and a binary search over the clock finds it.
    fn chunk_end(&self, low: u64, room: usize) -> u64 {
        let fits = |high: u64| {
            let (mut bytes, mut count) = (0usize, 0u32);
            for (node, value) in self.in_range(low, high) {
                bytes += message::entry_len(node, value);
                count += 1;
            }
            bytes <= room && count <= ENTRIES_MAX
        };
        if fits(self.clock) {
            return self.clock;
        }
        let (mut good, mut bad) = (low, self.clock);
        while bad - good > 1 {
            let middle = good + (bad - good) / 2;
            if fits(middle) {
                good = middle;
            } else {
                bad = middle;
            }
        }
        good
    }

    fn encode_outgoing(&mut self, outgoing: Outgoing, buffer: &mut [u8]) -> Option<Transmit> {
        let (to, message) = match outgoing {
            Outgoing::Push { peer, pull } => {
                let to = self.peers.get(peer)?.addr;
                let len = self.encode_push(peer, pull, buffer)?;
                return Some(Transmit { to, len });
            }
            Outgoing::Ack {
                to,
                epoch,
                low,
                high,
                digest,
            } => (
                to,
                Message::Ack {
                    epoch,
                    low,
                    high,
                    digest,
                },
            ),
            Outgoing::Reply { to, request, value } => (to, Message::Value { request, value }),
            Outgoing::Refuse {
                to,
                request,
                reason,
            } => (to, Message::Refused { request, reason }),
        };
        let len = message::encode(&message, buffer)?;
        Some(Transmit { to, len })
    }

    fn sync(&mut self) -> Result<(), CommitError<S::Error>> {
        if let Some(checkpoint) = self.pending_release.take() {
            self.log
                .release_before(checkpoint)
                .map_err(CommitError::Sync)?;
        }
        self.log.sync().map_err(CommitError::Sync)?;
        self.stats.syncs += 1;
        Ok(())
    }
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const N: usize,
        const P: usize,
        const DONE: usize,
        const PENDING: usize,
    > Service for DistributedCounter<S, B, N, P, DONE, PENDING>
{
    const KIND: u8 = service::kind::COUNTER;
    type Error = CommitError<S::Error>;

    fn handle_message(&mut self, _now: Instant, from: Peer, payload: &[u8]) {
        let Ok((head, rest)) = message::decode(payload) else {
            self.stats.malformed += 1;
            return;
        };
        match head {
            Message::Push { .. } => self.handle_push(from, head, rest),
            Message::Ack {
                epoch,
                low,
                high,
                digest,
            } => self.handle_ack(from, epoch, (low, high), digest),
            Message::Incr { request, by } => self.handle_incr(from, request, by),
            Message::Get { request } => self.handle_get(from, request),
            // Replies are for clients; a node ignores them.
            Message::Value { .. } | Message::Refused { .. } => {}
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        if self.remote_changes && now >= self.next_checkpoint {
            self.next_checkpoint = now + self.config.checkpoint_interval;
            // A failed append leaves `remote_changes` set: the next deadline tries again.
            let _ = self.stage_checkpoint(None);
        }
        if now < self.next_round {
            return;
        }
        self.stats.rounds += 1;
        // ±10% jitter keeps nodes that started together from gossiping in lockstep.
        let interval = self.config.gossip_interval;
        let tenth = u64::try_from(interval.as_micros() / 10).unwrap_or(u64::MAX);
        let jitter = rng.below(tenth.saturating_mul(2).saturating_add(1));
        self.next_round = now
            + interval.saturating_sub(Duration::from_micros(tenth))
            + Duration::from_micros(jitter);
        if !self.peers.is_empty() {
            let count = u64::try_from(self.peers.len()).unwrap_or(u64::MAX);
            let index = usize::try_from(rng.below(count)).unwrap_or(0);
            self.queue_pushes(index, true);
        }
    }

    fn poll_transmit(&mut self, _now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        if let Some(index) = self.pending.iter().position(|p| p.answer.is_some()) {
            let pending = self.pending.swap_remove(index);
            if let Some(answer) = pending.answer {
                if let Some(len) = message::encode(&answer, buffer) {
                    return Some(Transmit {
                        to: pending.to,
                        len,
                    });
                }
            }
        }
        while let Some(outgoing) = self.outbox.pop_front() {
            if let Some(transmit) = self.encode_outgoing(outgoing, buffer) {
                return Some(transmit);
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let checkpoint = self.remote_changes.then_some(self.next_checkpoint);
        Some(checkpoint.map_or(self.next_round, |at| at.min(self.next_round)))
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        if !self.staged {
            return Ok(());
        }
        self.staged = false;
        let synced = self.sync();
        let value = self.value();
        for pending in self.pending.iter_mut().filter(|p| p.answer.is_none()) {
            let request = pending.request;
            pending.answer = Some(match synced {
                Ok(()) => {
                    self.stats.increments += 1;
                    remember(&mut self.done, pending.client, request, pending.value);
                    Message::Value { request, value }
                }
                Err(_) => Message::Refused {
                    request,
                    reason: Refusal::Unavailable,
                },
            });
        }
        if synced.is_err() {
            // The storage is poisoned: refuse everything from now on (a restart recovers).
            self.poisoned = true;
        }
        synced?;
        let own = self.config.node;
        if self.counts.get(own) != self.durable_own {
            // The staged increments are durable: gossip may carry them now (a new stamp).
            self.durable_own = self.counts.get(own);
            self.touch(own);
        }
        Ok(())
    }
}

impl<E: core::fmt::Display> core::fmt::Display for CommitError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Append(error) => write!(f, "appending a checkpoint failed: {error}"),
            Self::Sync(error) => write!(f, "sync failed: {error}"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for CommitError<E> {}
