//! `bedrock node`: one cluster node running the distributed counter, the replicated log, the
//! message queue, the job scheduler, the lock server and membership over authenticated UDP,
//! until SIGINT or SIGTERM.
//!
//! The counter and the log are shared by the cluster (gossip, anti-entropy); the queue, the
//! scheduler and the locks are the node's own: a client talks to the node that holds its queue,
//! its jobs or its locks (`bedrock queue …`, `bedrock jobs …` and `bedrock lock …` with `--node
//! ADDR`), and nothing is replicated.
//! Membership (SWIM with Lifeguard, see [`crate::membership`]) learns the cluster from the
//! seeds (`--join`, and the `--peer` addresses), detects failures and logs every change; `bedrock
//! members --node ADDR` prints a node's view. On SIGINT or SIGTERM the node first announces
//! that it leaves (for at most [`LEAVE_MAX_PERIODS`] probe periods), then stops.
//!
//! # A node's data directory
//!
//! - `counter/`: the distributed counter's store;
//! - `log/`: the replicated log's store;
//! - `queue/`: the message queue's store;
//! - `jobs/`: the job scheduler's store;
//! - `lock/`: the lock server's store;
//! - `incarnation`: the number bumped at every start (see `bedrock_std::incarnation`), and
//!   raised to the membership incarnation whenever membership bumps it.
//!
//! Each store is its own locked [`FileStorage`]. The counter's lock is taken first and guards
//! the incarnation file too: a second node on the same directory fails at once, with the first
//! one's pid, before it changes anything.
//!
//! # Geometry of the counter store
//!
//! [`COUNTER_CAPACITY`] = 8 MiB in 128 segments of 64 KiB, write size 8. The counter checkpoints
//! its state every 1024 increments or 5 s and releases the segments before the checkpoint, so
//! the ring never fills; the checkpoint of 1024 nodes and 1024 remembered requests fits one
//! frame.
//!
//! # Geometry of the log store
//!
//! [`LOG_CAPACITY`] = 8 MiB in [`LOG_SEGMENTS`] = 128 segments of 64 KiB, write size 8, so
//! `Rlog`'s segment summaries (`SEG`) number exactly the segments (checked at compile time).
//!
//! - A record (one entry: origin, counter, client request, version-vector context, data) is at
//!   most [`LOG_PAYLOAD_MAX`] = 1024 bytes; the lent buffer of [`LOG_BUFFER_BYTES`] = 64 KiB
//!   holds many such frames, so one loop iteration's appends go out in one write, and recovery
//!   and reads fetch a segment per system call.
//! - An entry's data is at most [`DATA_MAX`] = 512 bytes at the default MTU of 1400 bytes, so
//!   a record has room for a context of [`CONTEXT_RESERVE`] bytes or more (one pair per origin
//!   the writer has heard of: 2 to 15 bytes, about 3 with small ids and counts), an `Entry`
//!   message fits one datagram, and a read reply to a client carries at least one entry. With a
//!   smaller `--mtu` the data limit shrinks to what one datagram carries ([`data_max`]). The
//!   log's version vectors hold [`LOG_ORIGINS_MAX`] = 64 writing nodes; an append whose record
//!   (data plus context) passes 1024 bytes is refused as too large.
//! - Capacity: a frame is 28 bytes of header and checksum plus the record, padded to 8 bytes.
//!   The record adds about 22 bytes to the data with one origin, 2 to 4 per further origin: an
//!   entry of 100 data bytes among 3 origins takes about 160 bytes, so the store holds about
//!   50 000 of them; entries of 512 bytes, about 14 000.
//! - When the store is full, `Rlog` releases its oldest segments once every configured peer's
//!   digests show it holds their entries; released entries are no longer returned by reads.
//!   A configured peer that never answers blocks this: appends are then refused as full
//!   (`bedrock log append` says so) and entries from peers are refused and counted; nothing
//!   stored is lost. A node without peers never releases anything.
//! - Reads walk the whole live log once per page of 16 entries, so a page of a full store costs
//!   one 8 MiB scan of the page cache.
//! - On SIGINT or SIGTERM both stores are closed: what is staged is synced together with a
//!   clean-shutdown marker, so the next start appends in place. After a crash or SIGKILL the
//!   next start recovers like after a crash and appends in a fresh segment (each such restart
//!   costs at most the rest of one segment, 64 KiB of the 128).
//!
//! Every node of a cluster must run with the same `--mtu`: an entry written under a larger one
//! may not fit a smaller node's datagrams.
//!
//! # Geometry of the queue store
//!
//! [`QUEUE_CAPACITY`] = 8 MiB in 128 segments of 64 KiB, write size 8, with a lent buffer of
//! one segment.
//!
//! - A message is at most [`MESSAGE_MAX`] = 1280 bytes at the default MTU of 1400 bytes: the
//!   largest that both a `Send` request (with a 32-byte queue name) and the `Delivery` reply
//!   carry in one datagram (checked at compile time and by a unit test). With a smaller
//!   `--mtu` the limit shrinks to what one `Delivery` carries ([`message_max`]).
//! - Capacities: [`QUEUE_MESSAGES`] = 4096 live (sent, not yet acknowledged) messages in all
//!   queues, [`QUEUE_NAMES`] = 64 queue names holding live messages, [`QUEUE_PRODUCERS`] = 1024
//!   producers remembered for idempotent retries (the most recently active; `bedrock queue
//!   send` takes a fresh random producer id per invocation unless given one, so a scripted
//!   producer stays remembered for the next 1023 other producers' sends), 256 replies waiting
//!   for a sync. A send past a capacity is refused as full and stores nothing.
//! - A SEND frame is 28 bytes of header and checksum plus about 20 bytes, the queue name and
//!   the message, padded to 8: 4096 messages of the largest size take 5.7 MiB, so the live
//!   index fills before the store does while consumers keep up. Sends are refused while fewer
//!   than 2 segments are free (room for acks). A checkpoint (the producer table, at most 30 KiB)
//!   follows every 256 records and releases the segments before the oldest live message.
//! - A message left unacknowledged does not pin the store: when at most 2 segments are free,
//!   a commit copies the live messages of the oldest segment to the head of the log (a scratch
//!   buffer of one message is lent for it) and the checkpoint after it releases that segment.
//!   A backlog of live messages that fills the store still refuses sends as full until
//!   consumers acknowledge.
//! - Leases live in RAM: after a restart every unacknowledged message is pending again.
//!   Delivery tokens carry the node's incarnation, so a receipt from before a restart is
//!   refused as stale.
//!
//! # Geometry of the jobs store
//!
//! [`JOBS_CAPACITY`] = 16 MiB in 64 segments of 256 KiB (erase blocks of 64 KiB), write size 8,
//! with a lent buffer of one segment: a checkpoint holds the whole index, at most 134 KiB for
//! [`JOBS_MAX`] = 1024 unfinished jobs (pending, running or dead) and [`JOBS_DONE`] = 1024
//! finished jobs remembered (for `--key` deduplication and repeated completions), and must fit
//! one segment. A payload is at most 1024 bytes (`bedrock::jobs::PAYLOAD_LEN_MAX`, whose
//! `Claimed` answer fits one datagram at the default MTU); with a smaller `--mtu`, at most
//! what one `Claimed` answer carries ([`job_payload_max`]): a larger submit is refused as too
//! large rather than stored as a job whose claims could never be answered.
//! 256 answers may wait for a sync. A checkpoint follows every 256 records.
//!
//! The lease a claim or heartbeat grants is `--job-lease` (30 s by default); a failed attempt
//! waits a backoff from `--job-backoff` (1 s) doubling up to 5 minutes, jittered. Fencing
//! tokens are stored with the claims: they never repeat across restarts, and a running job's
//! lease is granted again in full at a restart (its worker may still be running).
//!
//! The scheduler is opened just before the event loop's clock starts, so the durations it
//! rebuilds at a restart end no earlier than they should.
//!
//! # Geometry of the lock store
//!
//! [`LOCK_CAPACITY`] = 1 MiB in 16 segments of 64 KiB, write size 8, with a lent buffer of one
//! segment. The server holds [`LOCKS`] = 1024 locks (held, or ended and not yet reused) and
//! [`LOCK_PENDING`] = 256 answers waiting for a sync; a grant of a new lock past the table is
//! refused as full unless an ended lock can be evicted. The server's tables take about 94 KiB.
//! A GRANT or RELEASE frame is about 80 bytes; a checkpoint (the next token and every lock, at
//! most 48 KiB for 1024 locks, so it fits one segment) follows every 256 records, or sooner
//! when free segments run short, and releases the segments before it.
//!
//! The longest lease is `--lock-ttl-max` (60 s by default), and the drift bound ε is
//! `--lock-drift-ppm` (10 000 ppm = 1 % by default): after a grant or renewal of `ttl`, the
//! lock goes to nobody else before `ttl · (1 + ε)`. Renewals live in memory only: after a
//! restart every lock the log shows held stays held for `--lock-ttl-max` and goes to nobody else
//! before `--lock-ttl-max · (1 + ε)` from the start (the lock-delay), whatever its holder's
//! lease was. A clean stop closes the lock store like the others (a close marker: the next
//! start appends right after it).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::{Driver, DriverStats};
use bedrock::jobs::{self, Scheduler};
use bedrock::lock::{self, LockServer};
use bedrock::log::{self, Recovery};
use bedrock::queue::{self, Queue};
use bedrock::rlog::{Rlog, RlogConfig, RECORD_OVERHEAD};
use bedrock::time::Instant;
use bedrock::wire::{Wire, OVERHEAD};
use bedrock_std::client::{self, CLIENT_KEYS};
use bedrock_std::node::EventLoop;
use bedrock_std::udp::UdpDatagram;
use bedrock_std::{incarnation, FileError, FileOptions, FileStorage};

use crate::cluster::Access;
use crate::error::{fail, Error};
use crate::membership::{self, NodeMembership};

/// Most nodes a cluster's counter holds.
pub const NODES_MAX: usize = 1024;
/// Peers a node gossips with (configured plus learned).
const PEERS_MAX: usize = 64;
/// Client requests remembered for retries.
const DONE_MAX: usize = 1024;
/// Replies waiting for one sync.
pub const PENDING_MAX: usize = 256;
/// Senders whose replay windows a node keeps.
const SENDERS_MAX: usize = 256;
/// The longest a stopping node spends announcing that it leaves, in probe periods.
pub const LEAVE_MAX_PERIODS: u32 = 3;

/// Erase block and segment size of both stores.
pub const ERASE_SIZE: u32 = 64 << 10;
/// Write size (the word) of both stores.
const WRITE_SIZE: u32 = 8;

/// The counter store of a node: 8 MiB in 128 segments of 64 KiB.
pub const COUNTER_CAPACITY: u64 = 8 << 20;
const COUNTER_BUFFER_BYTES: usize = 256 << 10;

/// The log store of a node: 8 MiB.
pub const LOG_CAPACITY: u64 = 8 << 20;
/// Segments of the log store, and the segment summaries `Rlog` keeps.
pub const LOG_SEGMENTS: usize = 128;
/// Largest record of one entry.
pub const LOG_PAYLOAD_MAX: u32 = 1024;
/// The log's lent buffer: one segment.
pub const LOG_BUFFER_BYTES: usize = ERASE_SIZE as usize;
/// Origins (writing nodes) the log's version vectors hold.
pub const LOG_ORIGINS_MAX: usize = 64;
/// Largest data of one entry at the default MTU.
pub const DATA_MAX: u32 = 512;
/// Bytes of a record kept for the context besides the data.
pub const CONTEXT_RESERVE: usize = 256;
/// Bytes an `Entry` message adds to its record: the variant and a two-byte length.
const ENTRY_MESSAGE_OVERHEAD: usize = 3;

const _: () = assert!(LOG_CAPACITY / ERASE_SIZE as u64 == LOG_SEGMENTS as u64);
const _: () =
    assert!(DATA_MAX as usize + RECORD_OVERHEAD + CONTEXT_RESERVE <= LOG_PAYLOAD_MAX as usize);
// One padded frame of the largest record, and a close marker, fit the lent buffer many times.
const _: () = assert!(LOG_BUFFER_BYTES >= 16 * (LOG_PAYLOAD_MAX as usize + 64));
// At the default MTU, the largest record fits one `Entry` datagram.
const _: () = assert!(
    LOG_PAYLOAD_MAX as usize + ENTRY_MESSAGE_OVERHEAD + OVERHEAD <= bedrock::net::MTU_DEFAULT
);

/// The queue store of a node: 8 MiB in 128 segments of 64 KiB.
pub const QUEUE_CAPACITY: u64 = 8 << 20;
/// The queue's lent buffer: one segment.
const QUEUE_BUFFER_BYTES: usize = ERASE_SIZE as usize;
/// Live (unacknowledged) messages a node's queue holds, in all queues.
pub const QUEUE_MESSAGES: usize = 4096;
/// Queue names with live messages.
pub const QUEUE_NAMES: usize = 64;
/// Producers remembered for idempotent retries.
pub const QUEUE_PRODUCERS: usize = 1024;
/// Queue replies waiting for one sync.
pub const QUEUE_REPLIES: usize = 256;
/// Largest message at the default MTU.
pub const MESSAGE_MAX: u32 = 1280;
/// Records between two queue checkpoints.
const QUEUE_CHECKPOINT_EVERY: u32 = 256;
/// The longest lease a consumer may ask for; longer asks get this.
pub const QUEUE_LEASE_MAX: Duration = Duration::from_secs(600);
/// Bytes a `Delivery` reply adds to its message at most: the variant, request, id and token
/// (10 each), attempt (5) and a two-byte length.
pub const DELIVERY_OVERHEAD: usize = 1 + 10 + 10 + 10 + 5 + 2;
/// Bytes a `Send` request adds to its message at most: the variant, request (10), a queue name
/// of 32 bytes with its length, producer and sequence (10 each) and a two-byte length.
pub const SEND_OVERHEAD: usize = 1 + 10 + 1 + queue::NAME_MAX + 10 + 10 + 2;

const _: () = assert!(QUEUE_CAPACITY / ERASE_SIZE as u64 == 128);
const _: () =
    assert!(MESSAGE_MAX as usize + DELIVERY_OVERHEAD + OVERHEAD <= bedrock::net::MTU_DEFAULT);
const _: () = assert!(MESSAGE_MAX as usize + SEND_OVERHEAD + OVERHEAD <= bedrock::net::MTU_DEFAULT);
const _: () = assert!(
    QUEUE_BUFFER_BYTES
        >= 4 * (queue::send_len_max(MESSAGE_MAX as usize) + 64)
            + queue::checkpoint_len_max(QUEUE_PRODUCERS)
);

/// The jobs store of a node: 16 MiB in 64 segments of 256 KiB.
pub const JOBS_CAPACITY: u64 = 16 << 20;
/// Segments of the jobs store: a checkpoint of the whole index must fit one.
pub const JOBS_SEGMENT: u32 = 256 << 10;
/// The scheduler's lent buffer: one segment.
const JOBS_BUFFER_BYTES: usize = JOBS_SEGMENT as usize;
/// Unfinished jobs (pending, running, dead) a node holds.
pub const JOBS_MAX: usize = 1024;
/// Finished jobs remembered for deduplication.
pub const JOBS_DONE: usize = 1024;
/// Scheduler answers waiting for one sync.
pub const JOBS_PENDING: usize = 256;
/// Records between two scheduler checkpoints.
const JOBS_CHECKPOINT_EVERY: u32 = 256;
/// The longest backoff after a failed attempt.
const JOBS_BACKOFF_CAP: Duration = Duration::from_secs(300);

const _: () = assert!(JOBS_SEGMENT.is_multiple_of(ERASE_SIZE));
const _: () = assert!(JOBS_CAPACITY / JOBS_SEGMENT as u64 == 64);
// A checkpoint frame and the control frames fit one segment, and the lent buffer.
const _: () =
    assert!(jobs::checkpoint_len_max(JOBS_MAX, JOBS_DONE) + 1024 <= JOBS_SEGMENT as usize);

/// The lock store of a node: 1 MiB in 16 segments of 64 KiB.
pub const LOCK_CAPACITY: u64 = 1 << 20;
/// The lock server's lent buffer: one segment.
const LOCK_BUFFER_BYTES: usize = ERASE_SIZE as usize;
/// Locks a node's lock server holds (held, or ended and not yet evicted).
pub const LOCKS: usize = 1024;
/// Lock answers waiting for one sync.
pub const LOCK_PENDING: usize = 256;
/// Records between two lock checkpoints.
const LOCK_CHECKPOINT_EVERY: u32 = 256;
/// The drift bound of a node's leases by default: 1 %.
pub const LOCK_DRIFT_PPM: u32 = 10_000;
/// The largest drift bound accepted: 50 %.
pub const LOCK_DRIFT_PPM_MAX: u32 = 500_000;

const _: () = assert!(LOCK_CAPACITY / ERASE_SIZE as u64 == 16);
// A checkpoint of every lock, with the control frames, fits one segment and the lent buffer.
const _: () = assert!(lock::checkpoint_len_max(LOCKS) + 1024 <= ERASE_SIZE as usize);

pub type NodeCounter =
    DistributedCounter<FileStorage, Vec<u8>, NODES_MAX, PEERS_MAX, DONE_MAX, PENDING_MAX>;
type NodeLog = Rlog<FileStorage, Vec<u8>, LOG_ORIGINS_MAX, PEERS_MAX, LOG_SEGMENTS>;
pub type NodeQueue =
    Queue<FileStorage, Vec<u8>, QUEUE_MESSAGES, QUEUE_NAMES, QUEUE_PRODUCERS, QUEUE_REPLIES>;
pub type NodeJobs = Scheduler<FileStorage, Vec<u8>, JOBS_MAX, JOBS_DONE, JOBS_PENDING>;
pub type NodeLock = LockServer<FileStorage, Vec<u8>, LOCKS, LOCK_PENDING>;

/// The largest queue message a node with datagrams of `mtu` bytes takes: [`MESSAGE_MAX`], or
/// less when a `Delivery` reply would not fit one datagram.
pub fn message_max(mtu: usize) -> u32 {
    let room = mtu.saturating_sub(OVERHEAD + DELIVERY_OVERHEAD);
    u32::try_from(room).unwrap_or(u32::MAX).min(MESSAGE_MAX)
}

/// Bytes a `Claimed` answer adds to its payload at most: the variant, request, job, token and
/// lease (10 each), attempts (5) and a two-byte length.
pub const CLAIMED_OVERHEAD: usize = 1 + 10 + 10 + 10 + 10 + 5 + 2;

/// The largest job payload a node with datagrams of `mtu` bytes takes: what one `Claimed`
/// answer carries, at most `bedrock::jobs::PAYLOAD_LEN_MAX`.
pub fn job_payload_max(mtu: usize) -> usize {
    mtu.saturating_sub(OVERHEAD + CLAIMED_OVERHEAD)
        .min(jobs::PAYLOAD_LEN_MAX)
}

/// The largest entry data a node with datagrams of `mtu` bytes takes: [`DATA_MAX`], or less
/// when a record with [`CONTEXT_RESERVE`] bytes of context would not fit one datagram.
pub fn data_max(mtu: usize) -> u32 {
    let room =
        mtu.saturating_sub(OVERHEAD + ENTRY_MESSAGE_OVERHEAD + RECORD_OVERHEAD + CONTEXT_RESERVE);
    u32::try_from(room).unwrap_or(u32::MAX).min(DATA_MAX)
}

/// What `bedrock node` runs with.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id, 1 to 2^31 - 1.
    pub id: u32,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Peers to gossip with.
    pub peers: Vec<SocketAddr>,
    /// Membership seeds besides the peers.
    pub joins: Vec<SocketAddr>,
    /// The membership probe period.
    pub probe_interval: Duration,
    /// The data directory.
    pub data: PathBuf,
    /// Cluster label and key.
    pub access: Access,
    /// The datagram MTU.
    pub mtu: usize,
    /// The lease a job claim or heartbeat grants.
    pub job_lease: Duration,
    /// The backoff after a job's first failed attempt (doubling, jittered, up to 5 minutes).
    pub job_backoff: Duration,
    /// The longest lease a lock grant or renewal may ask for; also the lock-delay at a restart.
    pub lock_ttl_max: Duration,
    /// The drift bound of lock leases, in parts per million.
    pub lock_drift_ppm: u32,
}

fn open_store(dir: &Path, capacity: u64) -> Result<FileStorage, Error> {
    FileStorage::open(dir, store_options(capacity)).map_err(|error| match error {
        FileError::Locked { .. } => fail(error.to_string()),
        error => fail(format!("cannot open {}: {error}", dir.display())),
    })
}

fn warn_about(dir: &Path, recovery: &Recovery) {
    if !recovery.is_clean() {
        eprintln!(
            "warning: {}: recovery found damage (torn tail: {}, corruption: {}); see `bedrock inspect`",
            dir.display(),
            recovery.torn_tail.is_some(),
            recovery.corruption.is_some()
        );
    }
}

/// Opens a node's distributed counter on `storage` with `peers`, with the lent buffer
/// `bedrock node` uses.
pub fn open_node_counter(
    storage: FileStorage,
    config: dcounter::Config,
    peers: &[SocketAddr],
) -> Result<(NodeCounter, Recovery), String> {
    NodeCounter::open(storage, vec![0; COUNTER_BUFFER_BYTES], config, peers)
        .map_err(|error| error.to_string())
}

fn open_counter(
    options: &NodeOptions,
    storage: FileStorage,
    incarnation: u32,
) -> Result<NodeCounter, Error> {
    let dir = options.data.join("counter");
    let config = dcounter::Config::new(NodeId(options.id), incarnation);
    let (counter, recovery) = open_node_counter(storage, config, &options.peers)
        .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    warn_about(&dir, &recovery);
    Ok(counter)
}

fn open_log(options: &NodeOptions, storage: FileStorage) -> Result<NodeLog, Error> {
    let dir = options.data.join("log");
    let config = RlogConfig {
        data_max: data_max(options.mtu),
        log: log::Config {
            segment_size: ERASE_SIZE,
            payload_max: LOG_PAYLOAD_MAX,
            ..log::Config::default()
        },
        ..RlogConfig::new(NodeId(options.id))
    };
    let (replica, recovery) =
        NodeLog::open(storage, vec![0; LOG_BUFFER_BYTES], config, &options.peers)
            .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    warn_about(&dir, &recovery);
    Ok(replica)
}

/// The configuration of a node's queue: incarnation `incarnation`, datagrams of `mtu` bytes.
pub fn queue_config(incarnation: u32, mtu: usize) -> queue::Config {
    queue::Config {
        message_max: message_max(mtu),
        checkpoint_every: QUEUE_CHECKPOINT_EVERY,
        lease_max: QUEUE_LEASE_MAX,
        log: log::Config {
            segment_size: ERASE_SIZE,
            ..log::Config::default()
        },
        // Delivery tokens carry the incarnation: a receipt from an earlier run is stale.
        ..queue::Config::new(incarnation)
    }
}

/// Opens a node's queue on `storage`, with the lent buffers `bedrock node` uses (the bench
/// opens its queues here too).
pub fn open_node_queue(
    storage: FileStorage,
    config: queue::Config,
) -> Result<(NodeQueue, Recovery), String> {
    let (mut queue, recovery) = NodeQueue::open(storage, vec![0; QUEUE_BUFFER_BYTES], config)
        .map_err(|error| error.to_string())?;
    queue.set_relocation_scratch(vec![0; queue::send_len_max(config.message_max as usize)]);
    Ok((queue, recovery))
}

fn open_queue(
    options: &NodeOptions,
    storage: FileStorage,
    incarnation: u32,
) -> Result<NodeQueue, Error> {
    let dir = options.data.join("queue");
    let (queue, recovery) = open_node_queue(storage, queue_config(incarnation, options.mtu))
        .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    warn_about(&dir, &recovery);
    Ok(queue)
}

/// The configuration of a node's scheduler: `lease`, `backoff` (the first retry's), datagrams
/// of `mtu` bytes.
pub fn jobs_config(lease: Duration, backoff: Duration, mtu: usize) -> jobs::Config {
    jobs::Config {
        lease,
        backoff_base: backoff,
        backoff_cap: JOBS_BACKOFF_CAP.max(backoff),
        checkpoint_every: JOBS_CHECKPOINT_EVERY,
        payload_max: job_payload_max(mtu),
        log: log::Config {
            segment_size: JOBS_SEGMENT,
            ..log::Config::default()
        },
    }
}

/// Opens a node's scheduler on `storage` at `now`, with the lent buffer `bedrock node` uses.
pub fn open_node_jobs(
    storage: FileStorage,
    config: jobs::Config,
    now: Instant,
) -> Result<(NodeJobs, Recovery), String> {
    NodeJobs::open(storage, vec![0; JOBS_BUFFER_BYTES], config, now)
        .map_err(|error| error.to_string())
}

/// The configuration of a node's lock server: leases of at most `ttl_max` (also the lock-delay
/// after a restart), a drift bound of `drift_ppm`.
pub fn lock_config(ttl_max: Duration, drift_ppm: u32) -> lock::Config {
    lock::Config {
        ttl_max,
        drift_ppm,
        checkpoint_every: LOCK_CHECKPOINT_EVERY,
        log: log::Config {
            segment_size: ERASE_SIZE,
            ..log::Config::default()
        },
    }
}

/// Opens a node's lock server on `storage` at `now`, with the lent buffer `bedrock node` uses.
pub fn open_node_lock(
    storage: FileStorage,
    config: lock::Config,
    now: Instant,
) -> Result<(NodeLock, Recovery), String> {
    NodeLock::open(storage, vec![0; LOCK_BUFFER_BYTES], config, now)
        .map_err(|error| error.to_string())
}

/// Opens the lock server at `Instant::ZERO`, like the scheduler (see `open_jobs`): the
/// lock-delay of the locks held at a restart is counted from the loop's start.
fn open_lock(options: &NodeOptions, storage: FileStorage) -> Result<NodeLock, Error> {
    let dir = options.data.join("lock");
    let config = lock_config(options.lock_ttl_max, options.lock_drift_ppm);
    let (server, recovery) = open_node_lock(storage, config, Instant::ZERO)
        .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    warn_about(&dir, &recovery);
    Ok(server)
}

/// The options of a node store of `capacity` bytes whose segments are erase blocks of
/// 64 KiB (the jobs store groups four of them into each log segment).
pub fn store_options(capacity: u64) -> FileOptions {
    FileOptions {
        capacity: Some(capacity),
        read_size: 1,
        write_size: WRITE_SIZE,
        erase_size: ERASE_SIZE,
    }
}

/// Opens the scheduler at `Instant::ZERO`: call it just before the event loop (whose clock
/// starts at zero when it is created) so that rebuilt leases and delays end no earlier than
/// they should.
fn open_jobs(options: &NodeOptions, storage: FileStorage) -> Result<NodeJobs, Error> {
    let dir = options.data.join("jobs");
    let config = jobs_config(options.job_lease, options.job_backoff, options.mtu);
    let (scheduler, recovery) = open_node_jobs(storage, config, Instant::ZERO)
        .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    warn_about(&dir, &recovery);
    Ok(scheduler)
}

fn check_options(options: &NodeOptions) -> Result<(), Error> {
    if options.id == 0 || options.id >= 0x8000_0000 {
        return Err(fail(
            "--id must be from 1 to 2147483647 (higher ids are for clients)",
        ));
    }
    if options.peers.len() > PEERS_MAX {
        return Err(fail(format!(
            "at most {PEERS_MAX} --peer options are supported"
        )));
    }
    if options.peers.contains(&options.listen) {
        return Err(fail("--peer lists this node's own --listen address"));
    }
    let probes = Duration::from_millis(10)..=Duration::from_secs(60);
    if !probes.contains(&options.probe_interval) {
        return Err(fail("--probe-interval must be from 10ms to 60s"));
    }
    if options.joins.contains(&options.listen) {
        return Err(fail("--join lists this node's own --listen address"));
    }
    if options.job_lease.is_zero() {
        return Err(fail("--job-lease must be longer than 0"));
    }
    if options.lock_ttl_max < Duration::from_millis(1) {
        return Err(fail("--lock-ttl-max must be at least 1ms"));
    }
    if options.lock_drift_ppm > LOCK_DRIFT_PPM_MAX {
        return Err(fail(format!(
            "--lock-drift-ppm must be at most {LOCK_DRIFT_PPM_MAX} (50 %)"
        )));
    }
    if data_max(options.mtu) == 0 {
        return Err(fail(format!(
            "--mtu {} leaves no room for log entries",
            options.mtu
        )));
    }
    Ok(())
}

/// Entries the log holds durably, and the origins they come from.
fn log_size(replica: &NodeLog) -> (u64, usize) {
    let have = replica.have();
    let entries = have
        .iter()
        .fold(0u64, |sum, (_, count)| sum.saturating_add(count));
    (entries, have.len())
}

/// Unfinished jobs, and of those the dead ones.
fn jobs_size(scheduler: &NodeJobs) -> (usize, usize) {
    let jobs = scheduler.jobs();
    let dead = jobs
        .iter()
        .filter(|job| job.state == jobs::State::Dead)
        .count();
    (jobs.len(), dead)
}

/// The services a node runs, as the event loop takes them.
type NodeServices = (
    NodeCounter,
    NodeLog,
    NodeQueue,
    NodeJobs,
    NodeMembership,
    NodeLock,
);

fn addresses(addrs: &[SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    addrs.join(" ")
}

fn start_line(options: &NodeOptions, incarnation: u32, services: &NodeServices) {
    let (counter, replica, queue, scheduler, _, locks) = services;
    let seeds = membership::seeds(&options.joins, &options.peers, options.listen);
    let (entries, origins) = log_size(replica);
    let (unfinished, dead) = jobs_size(scheduler);
    eprintln!(
        "node {} (incarnation {incarnation}) listening on {}, peers [{}], seeds [{}], counter {}, \
         log {entries} entries from {origins} origins, queue {} live messages, jobs {unfinished} \
         unfinished ({dead} dead), {} locks known, lock ttl max {} ms",
        options.id,
        options.listen,
        addresses(&options.peers),
        addresses(&seeds),
        counter.value(),
        queue.stats().live,
        locks.locks().len(),
        options.lock_ttl_max.as_millis(),
    );
}

fn stop_line(id: u32, stats: DriverStats, services: &NodeServices) {
    let (counter, replica, queue, scheduler, members, locks) = services;
    let members = members.get();
    let member_stats = members.stats();
    let (entries, _) = log_size(replica);
    let log_stats = replica.stats();
    let queue_stats = queue.stats();
    let jobs_stats = scheduler.stats();
    let lock_stats = locks.stats();
    let (unfinished, dead) = jobs_size(scheduler);
    eprintln!(
        "node {id} stopping: {} datagrams in, {} out, {} rejected, {} truncated; counter {}, \
         {} increments; log {entries} entries, {} received, {} refused, {} segments released; \
         queue {} live messages, {} sent, {} acked, {} expired; jobs {unfinished} unfinished \
         ({dead} dead), {} submitted, {} completed, {} failed, {} expired; locks {} known, {} \
         grants, {} renewals, {} releases, {} refused held, {} refused stale; membership {} live \
         members, incarnation {}, {} suspicions, {} refutations, {} declared dead",
        stats.received,
        stats.sent,
        stats.rejected,
        stats.truncated,
        counter.value(),
        counter.stats().increments,
        log_stats.accepted,
        log_stats.refused,
        log_stats.reclaimed,
        queue_stats.live,
        queue_stats.sent,
        queue_stats.acked,
        queue_stats.expired,
        jobs_stats.submitted,
        jobs_stats.completed,
        jobs_stats.failed,
        jobs_stats.expired,
        locks.locks().len(),
        lock_stats.grants,
        lock_stats.renewals,
        lock_stats.releases,
        lock_stats.held,
        lock_stats.stale,
        members.live_count(),
        members.incarnation(),
        member_stats.suspicions,
        member_stats.refutations,
        member_stats.confirmed_dead,
    );
}

/// Announces that the node leaves and keeps the loop running until the announcement went out
/// its share of times, nobody is left to tell, or [`LEAVE_MAX_PERIODS`] probe periods passed.
fn leave<const K: usize, const SENDERS: usize>(
    event_loop: &mut EventLoop<K, SENDERS>,
    services: &mut NodeServices,
    probe_interval: Duration,
) -> Result<(), bedrock_std::node::LoopError> {
    services.4.leave();
    let until = std::time::Instant::now() + probe_interval * LEAVE_MAX_PERIODS;
    while !services.4.left() && std::time::Instant::now() < until {
        event_loop.iterate(services)?;
    }
    Ok(())
}

/// `bedrock node`: runs a node until SIGINT or SIGTERM, then closes its stores cleanly.
pub fn node(options: NodeOptions) -> Result<ExitCode, Error> {
    check_options(&options)?;
    fs::create_dir_all(&options.data)
        .map_err(|error| fail(format!("cannot create {}: {error}", options.data.display())))?;
    let keys = options.access.keys::<{ CLIENT_KEYS }>()?;
    // The counter store's lock guards the incarnation file and the other stores too: take it
    // first.
    let counter_storage = open_store(&options.data.join("counter"), COUNTER_CAPACITY)?;
    let log_storage = open_store(&options.data.join("log"), LOG_CAPACITY)?;
    let queue_storage = open_store(&options.data.join("queue"), QUEUE_CAPACITY)?;
    let jobs_storage = open_store(&options.data.join("jobs"), JOBS_CAPACITY)?;
    let lock_storage = open_store(&options.data.join("lock"), LOCK_CAPACITY)?;
    let incarnation = incarnation::bump(&options.data)
        .map_err(|error| fail(format!("cannot record the incarnation: {error}")))?;
    let counter = open_counter(&options, counter_storage, incarnation)?;
    let replica = open_log(&options, log_storage)?;
    let queue = open_queue(&options, queue_storage, incarnation)?;
    let (cluster, id) = (options.access.cluster_id(), NodeId(options.id));
    let wire: Wire<{ CLIENT_KEYS }, SENDERS_MAX> = match keys {
        Some(keys) => Wire::encrypted(cluster, id, incarnation, keys),
        None => Wire::plaintext(cluster, id, incarnation),
    };
    let socket = UdpDatagram::bind(options.listen, options.mtu)
        .map_err(|error| fail(format!("cannot listen on {}: {error}", options.listen)))?;
    let seed = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|error| fail(format!("cannot handle signals: {error}")))?;
    }
    let seeds = membership::seeds(&options.joins, &options.peers, options.listen);
    let members = NodeMembership::new(
        membership::config(options.probe_interval),
        options.id,
        options.listen,
        incarnation,
        &seeds,
        options.data.clone(),
    );
    // Opened last, right before the loop's clock starts (see `open_jobs`).
    let scheduler = open_jobs(&options, jobs_storage)?;
    let locks = open_lock(&options, lock_storage)?;
    let mut event_loop = EventLoop::new(Driver::new(wire), socket, seed);
    // Kept on the heap while the loop runs: the services' fixed tables take about 0.8 MB.
    let mut services: Box<NodeServices> =
        Box::new((counter, replica, queue, scheduler, members, locks));
    start_line(&options, incarnation, &services);
    let result = event_loop
        .run(&mut *services, &stop)
        .and_then(|()| leave(&mut event_loop, &mut services, options.probe_interval));
    stop_line(options.id, event_loop.stats(), &services);
    let (counter, replica, queue, scheduler, _, locks) = *services;
    // Every close runs whatever the loop's outcome; the first failure is reported.
    let locks_closed = locks.close();
    let jobs_closed = scheduler.close();
    let queue_closed = queue.close();
    let log_closed = replica.close();
    let closed = counter.close();
    result.map_err(|error| fail(error.to_string()))?;
    closed.map_err(|error| fail(format!("closing the counter store failed: {error}")))?;
    log_closed.map_err(|error| fail(format!("closing the log store failed: {error}")))?;
    queue_closed.map_err(|error| fail(format!("closing the queue store failed: {error}")))?;
    jobs_closed.map_err(|error| fail(format!("closing the jobs store failed: {error}")))?;
    locks_closed.map_err(|error| fail(format!("closing the lock store failed: {error}")))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock::net::MTU_DEFAULT;

    #[test]
    fn the_largest_send_and_delivery_fit_one_datagram_at_the_default_mtu() {
        let payload = [0xa5u8; MESSAGE_MAX as usize];
        let name = "q".repeat(queue::NAME_MAX);
        let mut buffer = vec![0u8; MTU_DEFAULT];
        let room = MTU_DEFAULT - OVERHEAD;
        let send = queue::Message::Send {
            request: u64::MAX,
            queue: &name,
            producer: u64::MAX,
            sequence: u64::MAX,
            payload: &payload,
        };
        let len = queue::encode(&send, &mut buffer).unwrap();
        assert_eq!(len, payload.len() + SEND_OVERHEAD);
        assert!(len <= room);
        let delivery = queue::Message::Delivery {
            request: u64::MAX,
            id: u64::MAX,
            token: u64::MAX,
            attempt: u32::MAX,
            payload: &payload,
        };
        let len = queue::encode(&delivery, &mut buffer).unwrap();
        assert_eq!(len, payload.len() + DELIVERY_OVERHEAD);
        assert!(len <= room);
        assert_eq!(message_max(MTU_DEFAULT), MESSAGE_MAX);
        assert_eq!(
            message_max(508),
            (508 - OVERHEAD - DELIVERY_OVERHEAD) as u32
        );
        assert_eq!(message_max(0), 0);
    }

    #[test]
    fn the_largest_claimed_answer_fits_one_datagram() {
        for mtu in [MTU_DEFAULT, 508] {
            let payload = vec![0xA5u8; job_payload_max(mtu)];
            let claimed = jobs::Message::Claimed {
                request: u64::MAX,
                job: u64::MAX,
                token: u64::MAX,
                lease_ms: u64::MAX,
                attempts: u32::MAX,
                payload: &payload,
            };
            let mut buffer = vec![0u8; 2 * MTU_DEFAULT];
            let len = jobs::encode(&claimed, &mut buffer).unwrap();
            assert_eq!(len, payload.len() + CLAIMED_OVERHEAD);
            assert!(len + OVERHEAD <= mtu, "mtu {mtu}: {len}");
        }
        assert_eq!(job_payload_max(MTU_DEFAULT), jobs::PAYLOAD_LEN_MAX);
    }
}
