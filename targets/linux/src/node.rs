//! `bedrock node`: one cluster node running the distributed counter and the replicated log
//! over authenticated UDP, until SIGINT or SIGTERM.
//!
//! # A node's data directory
//!
//! - `counter/`: the distributed counter's store;
//! - `log/`: the replicated log's store;
//! - `incarnation`: the number bumped at every start (see `bedrock_std::incarnation`).
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

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::{Driver, DriverStats};
use bedrock::log::{self, Recovery};
use bedrock::rlog::{Rlog, RlogConfig, RECORD_OVERHEAD};
use bedrock::wire::{Wire, OVERHEAD};
use bedrock_std::client::{self, CLIENT_KEYS};
use bedrock_std::node::EventLoop;
use bedrock_std::udp::UdpDatagram;
use bedrock_std::{incarnation, FileError, FileOptions, FileStorage};

use crate::cluster::Access;
use crate::error::{fail, Error};

/// Most nodes a cluster's counter holds.
pub const NODES_MAX: usize = 1024;
/// Peers a node gossips with (configured plus learned).
const PEERS_MAX: usize = 64;
/// Client requests remembered for retries.
const DONE_MAX: usize = 1024;
/// Replies waiting for one sync.
const PENDING_MAX: usize = 256;
/// Senders whose replay windows a node keeps.
const SENDERS_MAX: usize = 256;

/// Erase block and segment size of both stores.
const ERASE_SIZE: u32 = 64 << 10;
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

type NodeCounter =
    DistributedCounter<FileStorage, Vec<u8>, NODES_MAX, PEERS_MAX, DONE_MAX, PENDING_MAX>;
type NodeLog = Rlog<FileStorage, Vec<u8>, LOG_ORIGINS_MAX, PEERS_MAX, LOG_SEGMENTS>;

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
    /// The data directory.
    pub data: PathBuf,
    /// Cluster label and key.
    pub access: Access,
    /// The datagram MTU.
    pub mtu: usize,
}

fn open_store(dir: &Path, capacity: u64) -> Result<FileStorage, Error> {
    let file_options = FileOptions {
        capacity: Some(capacity),
        read_size: 1,
        write_size: WRITE_SIZE,
        erase_size: ERASE_SIZE,
    };
    FileStorage::open(dir, file_options).map_err(|error| match error {
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

fn open_counter(
    options: &NodeOptions,
    storage: FileStorage,
    incarnation: u32,
) -> Result<NodeCounter, Error> {
    let dir = options.data.join("counter");
    let config = dcounter::Config::new(NodeId(options.id), incarnation);
    let (counter, recovery) = NodeCounter::open(
        storage,
        vec![0; COUNTER_BUFFER_BYTES],
        config,
        &options.peers,
    )
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

fn start_line(options: &NodeOptions, incarnation: u32, counter: &NodeCounter, replica: &NodeLog) {
    let peers: Vec<String> = options.peers.iter().map(SocketAddr::to_string).collect();
    let (entries, origins) = log_size(replica);
    eprintln!(
        "node {} (incarnation {incarnation}) listening on {}, peers [{}], counter {}, log {entries} \
         entries from {origins} origins",
        options.id,
        options.listen,
        peers.join(" "),
        counter.value(),
    );
}

fn stop_line(id: u32, stats: DriverStats, counter: &NodeCounter, replica: &NodeLog) {
    let (entries, _) = log_size(replica);
    let log_stats = replica.stats();
    eprintln!(
        "node {id} stopping: {} datagrams in, {} out, {} rejected, {} truncated; counter {}, \
         {} increments; log {entries} entries, {} received, {} refused, {} segments released",
        stats.received,
        stats.sent,
        stats.rejected,
        stats.truncated,
        counter.value(),
        counter.stats().increments,
        log_stats.accepted,
        log_stats.refused,
        log_stats.reclaimed,
    );
}

/// `bedrock node`: runs a node until SIGINT or SIGTERM, then closes its stores cleanly.
pub fn node(options: NodeOptions) -> Result<ExitCode, Error> {
    check_options(&options)?;
    fs::create_dir_all(&options.data)
        .map_err(|error| fail(format!("cannot create {}: {error}", options.data.display())))?;
    let keys = options.access.keys::<{ CLIENT_KEYS }>()?;
    // The counter store's lock guards the incarnation file and the log store too: take it first.
    let counter_storage = open_store(&options.data.join("counter"), COUNTER_CAPACITY)?;
    let log_storage = open_store(&options.data.join("log"), LOG_CAPACITY)?;
    let incarnation = incarnation::bump(&options.data)
        .map_err(|error| fail(format!("cannot record the incarnation: {error}")))?;
    let counter = open_counter(&options, counter_storage, incarnation)?;
    let replica = open_log(&options, log_storage)?;
    let (cluster, id) = (options.access.cluster_id(), NodeId(options.id));
    let wire: Wire<{ CLIENT_KEYS }, SENDERS_MAX> = match keys {
        Some(keys) => Wire::encrypted(cluster, id, incarnation, keys),
        None => Wire::plaintext(cluster, id, incarnation),
    };
    let socket = UdpDatagram::bind(options.listen, options.mtu)
        .map_err(|error| fail(format!("cannot listen on {}: {error}", options.listen)))?;
    let seed = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let mut event_loop = EventLoop::new(Driver::new(wire), socket, seed);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|error| fail(format!("cannot handle signals: {error}")))?;
    }
    start_line(&options, incarnation, &counter, &replica);
    let mut services = (counter, replica);
    let result = event_loop.run(&mut services, &stop);
    let (counter, replica) = services;
    stop_line(options.id, event_loop.stats(), &counter, &replica);
    // Both closes run whatever the loop's outcome; the first failure is reported.
    let log_closed = replica.close();
    let closed = counter.close();
    result.map_err(|error| fail(error.to_string()))?;
    closed.map_err(|error| fail(format!("closing the counter store failed: {error}")))?;
    log_closed.map_err(|error| fail(format!("closing the log store failed: {error}")))?;
    Ok(ExitCode::SUCCESS)
}
