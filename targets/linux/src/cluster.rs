//! The networked commands: `bedrock keygen`, `bedrock node`, and the client side of
//! `bedrock counter incr|get --node ADDR`.
//!
//! # A node's data directory
//!
//! - `counter/`: the distributed counter's store (a [`FileStorage`] of [`COUNTER_CAPACITY`]);
//! - `incarnation`: the number bumped at every start (see `bedrock_std::incarnation`).
//!
//! The directory's stores are locked while the node runs: a second node on the same directory
//! fails at once with the first one's pid.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bedrock::checksum::crc32c;
use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter, Message, Refusal};
use bedrock::driver::Driver;
use bedrock::service::kind;
use bedrock::wire::{Key, Keyring, Wire};
use bedrock_std::client::{self, Client, ClientError, CLIENT_KEYS};
use bedrock_std::node::EventLoop;
use bedrock_std::udp::UdpDatagram;
use bedrock_std::{incarnation, FileOptions, FileStorage};

use crate::error::{fail, Error};
use crate::output;

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

/// The counter store of a node: 8 MiB in 128 segments of 64 KiB.
pub const COUNTER_CAPACITY: u64 = 8 << 20;
const ERASE_SIZE: u32 = 64 << 10;
const LOG_BUFFER_BYTES: usize = 256 << 10;

type NodeCounter = DistributedCounter<FileStorage, Vec<u8>, NODES_MAX, PEERS_MAX, DONE_MAX, PENDING_MAX>;

/// How to reach a cluster: its label and key.
#[derive(Debug, Clone)]
pub struct Access {
    /// The cluster label; its CRC-32C is the envelope's cluster id.
    pub cluster: String,
    /// The key file; `None` only with `plaintext`.
    pub key_file: Option<PathBuf>,
    /// Plaintext envelopes (checksummed, not authenticated), when asked for explicitly.
    pub plaintext: bool,
}

impl Access {
    fn cluster_id(&self) -> u32 {
        crc32c(self.cluster.as_bytes())
    }

    fn keys<const K: usize>(&self) -> Result<Option<Keyring<K>>, Error> {
        match (&self.key_file, self.plaintext) {
            (Some(_), true) => Err(fail("--key-file and --plaintext exclude each other")),
            (None, false) => Err(fail(
                "a key file is needed (--key-file FILE, made by `bedrock keygen`), or \
                 --plaintext to send unauthenticated datagrams on purpose",
            )),
            (None, true) => Ok(None),
            (Some(path), false) => load_keys(path).map(Some),
        }
    }
}

fn load_keys<const K: usize>(path: &Path) -> Result<Keyring<K>, Error> {
    let text = fs::read_to_string(path)
        .map_err(|error| fail(format!("cannot read key file {}: {error}", path.display())))?;
    Keyring::parse(&text).map_err(|error| fail(format!("key file {}: {error}", path.display())))
}

/// `bedrock keygen --out FILE`: a new random key, written to a new file readable by its owner
/// only.
pub fn keygen(out: &Path) -> Result<ExitCode, Error> {
    let random = client::random_bytes::<33>()
        .map_err(|error| fail(format!("no randomness from the operating system: {error}")))?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&random[1..]);
    let keys = Keyring::<1>::new(Key::new(random[0], secret));
    let mut text = String::new();
    keys.write_text(&mut text)
        .map_err(|_| fail("could not format the key"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|error| fail(format!("cannot create {}: {error}", out.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| fail(format!("cannot write {}: {error}", out.display())))?;
    output::line(format_args!("wrote key {} to {}", random[0], out.display()))?;
    Ok(ExitCode::SUCCESS)
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
        write_size: 8,
        erase_size: ERASE_SIZE,
    };
    FileStorage::open(dir, file_options)
        .map_err(|error| fail(format!("cannot open {}: {error}", dir.display())))
}

fn open_counter(
    options: &NodeOptions,
    storage: FileStorage,
    incarnation: u32,
) -> Result<NodeCounter, Error> {
    let dir = options.data.join("counter");
    let config = dcounter::Config::new(NodeId(options.id), incarnation);
    let (counter, recovery) =
        NodeCounter::open(storage, vec![0; LOG_BUFFER_BYTES], config, &options.peers)
            .map_err(|error| fail(format!("cannot recover {}: {error}", dir.display())))?;
    if !recovery.is_clean() {
        eprintln!(
            "warning: {}: recovery found damage (torn tail: {}, corruption: {}); see `bedrock inspect`",
            dir.display(),
            recovery.torn_tail.is_some(),
            recovery.corruption.is_some()
        );
    }
    Ok(counter)
}

/// `bedrock node`: runs a node until SIGINT or SIGTERM, then closes its stores cleanly.
pub fn node(options: NodeOptions) -> Result<ExitCode, Error> {
    if options.id == 0 || options.id >= 0x8000_0000 {
        return Err(fail("--id must be from 1 to 2147483647 (higher ids are for clients)"));
    }
    fs::create_dir_all(&options.data)
        .map_err(|error| fail(format!("cannot create {}: {error}", options.data.display())))?;
    let keys = options.access.keys::<{ CLIENT_KEYS }>()?;
    // The counter store's lock guards the incarnation file too: take it first.
    let counter_storage = open_store(&options.data.join("counter"), COUNTER_CAPACITY)?;
    let incarnation = incarnation::bump(&options.data)
        .map_err(|error| fail(format!("cannot record the incarnation: {error}")))?;
    let mut counter = open_counter(&options, counter_storage, incarnation)?;
    let wire: Wire<{ CLIENT_KEYS }, SENDERS_MAX> = match keys {
        Some(keys) => Wire::encrypted(options.access.cluster_id(), NodeId(options.id), incarnation, keys),
        None => Wire::plaintext(options.access.cluster_id(), NodeId(options.id), incarnation),
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
    eprintln!(
        "node {} (incarnation {incarnation}) listening on {}, {} peers, counter {}",
        options.id,
        options.listen,
        options.peers.len(),
        counter.value()
    );
    let result = event_loop.run(&mut counter, &stop);
    let stats = event_loop.stats();
    eprintln!(
        "node {} stopping: {} datagrams in, {} out, {} rejected, {} truncated",
        options.id, stats.received, stats.sent, stats.rejected, stats.truncated
    );
    result.map_err(|error| fail(error.to_string()))?;
    counter
        .close()
        .map_err(|error| fail(format!("closing the counter store failed: {error}")))?;
    Ok(ExitCode::SUCCESS)
}

fn client_for(node: SocketAddr, access: &Access) -> Result<Client, Error> {
    let keys = access.keys::<{ CLIENT_KEYS }>()?;
    Client::new(node, access.cluster_id(), keys).map_err(|error| fail(error.to_string()))
}

fn client_error(error: ClientError) -> Error {
    fail(error.to_string())
}

/// Sends one counter request and waits for its answer.
fn counter_request(client: &mut Client, request: Message) -> Result<u64, Error> {
    let id = match request {
        Message::Incr { request, .. } | Message::Get { request } => request,
        _ => return Err(fail("not a client request")),
    };
    let answer = client
        .request(
            kind::COUNTER,
            |area| dcounter::encode(&request, area),
            |payload| match dcounter::decode(payload) {
                Ok((Message::Value { request, value }, _)) if request == id => Some(Ok(value)),
                Ok((Message::Refused { request, reason }, _)) if request == id => {
                    Some(Err(reason))
                }
                _ => None,
            },
        )
        .map_err(client_error)?;
    answer.map_err(|reason| {
        fail(match reason {
            Refusal::Overflow => "the node's count would pass 2^64 - 1; nothing was added",
            Refusal::Unavailable => "the node cannot take writes (its storage failed or is full)",
            Refusal::Busy => "the node is busy; try again",
            _ => "the node refused the request",
        })
    })
}

/// `bedrock counter incr --node ADDR`: adds `by` through a node and prints the node's view of
/// the total once the increment is durable there.
pub fn remote_incr(node: SocketAddr, access: &Access, by: u64) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let value = counter_request(&mut client, Message::Incr { request, by })?;
    output::line(value)?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock counter get --node ADDR`: prints the node's view of the total.
pub fn remote_get(node: SocketAddr, access: &Access) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let value = counter_request(&mut client, Message::Get { request })?;
    output::line(value)?;
    Ok(ExitCode::SUCCESS)
}
