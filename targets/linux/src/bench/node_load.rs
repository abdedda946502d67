//! (f) Durable increments per second through one node from C concurrent UDP clients, beside
//! the raw `pwrite` + `fdatasync` rate (a) measured in turns with them, in the same run.
//!
//! The node is what `bedrock node` runs: the std event loop over a UDP socket on 127.0.0.1,
//! the encrypted wire envelope (a random key), and the distributed counter on a `FileStorage`
//! in the scratch directory (8 MiB of 64 KiB segments, no peers). It runs on its own thread.
//! One client thread holds C sockets, each a client with its own id that keeps exactly one
//! `Incr` outstanding: it sends the next request as soon as the `Value` reply of the previous
//! one arrives, and sends a request again (same request id) when no reply came within
//! [`RETRY`]. The node answers an increment only after the `fdatasync` that made it durable,
//! and one sync covers every request that arrived in one loop iteration (group commit), so the
//! increments per sync grow with C.
//!
//! Syncs and acknowledged increments are the node's own counts (`Stats::syncs`,
//! `Stats::increments`), read at the start and at the end of each measured window. Each level
//! runs [`ROUNDS`] rounds: (a) for a quarter of the round, then the clients for the rest; at the
//! end of a window the clients stop sending and wait for their outstanding replies (not
//! counted), so that (a) runs on an idle node.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter, Message, Stats};
use bedrock::driver::Driver;
use bedrock::net::{Datagram, MTU_DEFAULT};
use bedrock::service::kind;
use bedrock::wire::{self, Key, Keyring, Wire};
use bedrock_std::client::{random_bytes, random_u64};
use bedrock_std::node::EventLoop;
use bedrock_std::{FileOptions, FileStorage, UdpDatagram};

use super::{Rate, RawSync};
use crate::error::{fail, Error};

/// Concurrent clients of each level.
pub const LEVELS: [usize; 3] = [1, 16, 64];
/// A request without a reply after this long is sent again with the same request id.
const RETRY: Duration = Duration::from_millis(200);
/// Requests answered before the first measured window.
const WARM_UP: Duration = Duration::from_millis(100);
/// Rounds per level: raw syncs, then the clients.
pub const ROUNDS: u32 = 4;
/// The longest the clients wait for outstanding replies at the end of a window.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// The node's capacities, as `bedrock node` has them.
const NODES_MAX: usize = 1024;
const PEERS_MAX: usize = 64;
const DONE_MAX: usize = 1024;
const PENDING_MAX: usize = 256;
const SENDERS_MAX: usize = 256;
const STORE_CAPACITY: u64 = 8 << 20;
const ERASE_SIZE: u32 = 64 << 10;
const LOG_BUFFER_BYTES: usize = 256 << 10;

const _: () = assert!(LEVELS[LEVELS.len() - 1] <= PENDING_MAX);
const _: () = assert!(LEVELS[LEVELS.len() - 1] < SENDERS_MAX);

type NodeCounter =
    DistributedCounter<FileStorage, Vec<u8>, NODES_MAX, PEERS_MAX, DONE_MAX, PENDING_MAX>;
type NodeWire = Wire<1, SENDERS_MAX>;
type ClientWire = Wire<1, 4>;

/// What one level measured.
#[derive(Debug, Clone)]
pub struct Level {
    /// Concurrent clients.
    pub clients: usize,
    /// Replies received in the window, and the window.
    pub replies: Rate,
    /// The node's acknowledged increments in the window.
    pub increments: u64,
    /// The node's syncs in the window.
    pub syncs: u64,
    /// Request latencies (first send to reply), sorted.
    pub latencies: Vec<Duration>,
    /// Requests sent again for want of a reply.
    pub retries: u64,
    /// Raw `pwrite` + `fdatasync`, in turns with the clients.
    pub raw: Rate,
    /// Per round: increments per second over raw syncs per second.
    pub ratios: Vec<f64>,
}

impl Level {
    /// Acknowledged increments per second, as the clients saw them.
    pub fn per_second(&self) -> f64 {
        self.replies.per_second()
    }

    pub fn syncs_per_second(&self) -> f64 {
        self.syncs as f64 / self.replies.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn increments_per_sync(&self) -> f64 {
        self.increments as f64 / self.syncs.max(1) as f64
    }

    /// The latency at `percent` (nearest rank).
    pub fn latency(&self, percent: usize) -> Duration {
        let index =
            (self.latencies.len() * percent / 100).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).copied().unwrap_or_default()
    }
}

/// Measures every level of [`LEVELS`] for `budget` in all, in [`ROUNDS`] rounds that each run
/// raw syncs for a quarter of the round's share, then the clients for the rest: the device's
/// drift hits both alike.
pub fn figures(scratch: &Path, budget: Duration) -> Result<Vec<Level>, Error> {
    let mut raw = RawSync::new(scratch)?;
    let mut levels = Vec::new();
    for clients in LEVELS {
        let dir = scratch.join(format!("node-{clients}"));
        levels.push(measure(&dir, clients, budget, &mut raw)?);
    }
    Ok(levels)
}

/// A node running on its own thread, publishing its counter's stats after every iteration.
struct RunningNode {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    thread: thread::JoinHandle<Result<(), String>>,
}

impl RunningNode {
    fn start(dir: &Path, key: Key, cluster: u32) -> Result<Self, Error> {
        let options = FileOptions {
            capacity: Some(STORE_CAPACITY),
            read_size: 1,
            write_size: 8,
            erase_size: ERASE_SIZE,
        };
        let storage = FileStorage::open(dir, options)
            .map_err(|error| fail(format!("cannot open {}: {error}", dir.display())))?;
        let config = dcounter::Config::new(NodeId(1), 1);
        let (mut counter, _) = NodeCounter::open(storage, vec![0; LOG_BUFFER_BYTES], config, &[])
            .map_err(|error| {
            fail(format!("cannot open the benchmark node's counter: {error}"))
        })?;
        let wire = NodeWire::encrypted(cluster, NodeId(1), 1, Keyring::new(key));
        let local: SocketAddr = ([127, 0, 0, 1], 0).into();
        let socket = UdpDatagram::bind(local, MTU_DEFAULT)
            .map_err(|error| fail(format!("cannot bind a UDP socket: {error}")))?;
        let addr = socket
            .local_addr()
            .map_err(|error| fail(format!("no local address: {error}")))?;
        let seed = random_u64().map_err(|error| fail(error.to_string()))?;
        let mut event_loop = EventLoop::new(Driver::new(wire), socket, seed);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (stop_flag, published) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                event_loop
                    .iterate(&mut counter)
                    .map_err(|error| error.to_string())?;
                if let Ok(mut stats) = published.lock() {
                    *stats = counter.stats();
                }
            }
            counter.close().map_err(|error| error.to_string())
        });
        Ok(Self {
            addr,
            stop,
            stats,
            thread,
        })
    }

    fn stats(&self) -> Stats {
        self.stats.lock().map(|stats| *stats).unwrap_or_default()
    }

    fn stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| fail("the benchmark node panicked"))?
            .map_err(|error| fail(format!("the benchmark node failed: {error}")))
    }
}

/// One client: a socket, an envelope sender of its own, one request outstanding.
struct LoadClient {
    socket: UdpDatagram,
    wire: ClientWire,
    request: u64,
    first_sent: Instant,
    last_sent: Instant,
    outstanding: bool,
}

fn measure(
    dir: &Path,
    clients: usize,
    budget: Duration,
    raw: &mut RawSync,
) -> Result<Level, Error> {
    let secret = random_bytes::<32>().map_err(|error| fail(error.to_string()))?;
    let key = Key::new(1, secret);
    let cluster = random_u64().map_err(|error| fail(error.to_string()))? as u32;
    let node = RunningNode::start(dir, key.clone(), cluster)?;
    let measured = rounds(&node, clients, budget, cluster, &key, raw);
    let stopped = node.stop();
    let level = measured?;
    stopped?;
    Ok(level)
}

fn rounds(
    node: &RunningNode,
    count: usize,
    budget: Duration,
    cluster: u32,
    key: &Key,
    raw: &mut RawSync,
) -> Result<Level, Error> {
    let mut load = Load::new(count, cluster, key)?;
    load.run(node, WARM_UP)?;
    let mut level = Level {
        clients: count,
        replies: Rate::default(),
        increments: 0,
        syncs: 0,
        latencies: Vec::new(),
        retries: 0,
        raw: Rate::default(),
        ratios: Vec::new(),
    };
    let round = budget / ROUNDS;
    for _ in 0..ROUNDS {
        let raw_rate = raw.run_for(round / 4)?;
        let before = node.stats();
        let window = load.run(node, round * 3 / 4)?;
        level.increments += window.stats.increments - before.increments;
        level.syncs += window.stats.syncs - before.syncs;
        level
            .ratios
            .push(window.replies.per_second() / raw_rate.per_second());
        level.replies.add(window.replies);
        level.raw.add(raw_rate);
        level.retries += window.retries;
        level.latencies.extend(window.latencies);
    }
    level.latencies.sort_unstable();
    Ok(level)
}

/// What the clients saw in one window.
struct Window {
    replies: Rate,
    latencies: Vec<Duration>,
    retries: u64,
    /// The node's stats at the end of the window.
    stats: Stats,
}

/// The clients of one level.
struct Load {
    clients: Vec<LoadClient>,
    buffer: Vec<u8>,
    polled: Vec<libc::pollfd>,
}

impl Load {
    fn new(count: usize, cluster: u32, key: &Key) -> Result<Self, Error> {
        let polled = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        Ok(Self {
            clients: new_clients(count, cluster, key)?,
            buffer: vec![0u8; MTU_DEFAULT],
            polled: vec![polled; count],
        })
    }

    /// Keeps one request per client outstanding for `window`, then stops sending new ones and
    /// waits (at most [`DRAIN_MAX`]) for the outstanding replies, which are not counted.
    fn run(&mut self, node: &RunningNode, window: Duration) -> Result<Window, Error> {
        let start = Instant::now();
        let end = start + window;
        let mut latencies = Vec::new();
        let mut retries = 0;
        let mut stats = None;
        loop {
            let now = Instant::now();
            let draining = now >= end;
            if draining && stats.is_none() {
                stats = Some(node.stats());
            }
            let outstanding = self.clients.iter().any(|client| client.outstanding);
            if draining && (!outstanding || now >= end + DRAIN_MAX) {
                break;
            }
            for client in &mut self.clients {
                if !client.outstanding && !draining {
                    client.request += 1;
                    client.first_sent = now;
                    client.outstanding = true;
                    send(client, node.addr, &mut self.buffer)?;
                } else if client.outstanding && now.duration_since(client.last_sent) >= RETRY {
                    retries += 1;
                    send(client, node.addr, &mut self.buffer)?;
                }
            }
            wait_readable(&self.clients, &mut self.polled)?;
            let now = Instant::now();
            for (client, polled) in self.clients.iter_mut().zip(&self.polled) {
                if polled.revents == 0 || !receive(client, &mut self.buffer) {
                    continue;
                }
                client.outstanding = false;
                if now < end {
                    latencies.push(now.duration_since(client.first_sent));
                }
            }
        }
        Ok(Window {
            replies: Rate {
                operations: latencies.len() as u64,
                elapsed: window,
            },
            latencies,
            retries,
            stats: stats.unwrap_or_default(),
        })
    }
}

fn new_clients(count: usize, cluster: u32, key: &Key) -> Result<Vec<LoadClient>, Error> {
    let incarnation = random_u64().map_err(|error| fail(error.to_string()))? as u32;
    let now = Instant::now();
    (0..count)
        .map(|index| {
            let local: SocketAddr = ([127, 0, 0, 1], 0).into();
            let socket = UdpDatagram::bind(local, MTU_DEFAULT)
                .map_err(|error| fail(format!("cannot bind a UDP socket: {error}")))?;
            let sender = NodeId(0x8000_0000 | index as u32);
            Ok(LoadClient {
                socket,
                wire: ClientWire::encrypted(
                    cluster,
                    sender,
                    incarnation,
                    Keyring::new(key.clone()),
                ),
                request: 0,
                first_sent: now,
                last_sent: now,
                outstanding: false,
            })
        })
        .collect()
}

fn send(client: &mut LoadClient, node: SocketAddr, buffer: &mut [u8]) -> Result<(), Error> {
    let trailer = client.wire.overhead() - wire::HEADER_LEN;
    let end = buffer.len() - trailer;
    let request = Message::Incr {
        request: client.request,
        by: 1,
    };
    let len = dcounter::encode(&request, &mut buffer[wire::HEADER_LEN..end])
        .ok_or_else(|| fail("an increment request does not fit a datagram"))?;
    let sealed = client
        .wire
        .seal(kind::COUNTER, buffer, len)
        .map_err(|_| fail("could not seal an increment request"))?;
    // A datagram the kernel drops is sent again after RETRY, as any client would.
    let _ = client.socket.send(node, &buffer[..sealed]);
    client.last_sent = Instant::now();
    Ok(())
}

/// Takes every waiting datagram; true when one is the reply to the outstanding request.
fn receive(client: &mut LoadClient, buffer: &mut [u8]) -> bool {
    let mut answered = false;
    while let Ok(Some(received)) = client.socket.recv(buffer) {
        let Ok(opened) = client.wire.open(&mut buffer[..received.len]) else {
            continue;
        };
        if let Ok((Message::Value { request, .. }, _)) = dcounter::decode(opened.payload) {
            answered |= client.outstanding && request == client.request;
        }
    }
    answered
}

/// Waits until a client socket is readable or the shortest retry is due (at most 10 ms).
fn wait_readable(clients: &[LoadClient], polled: &mut [libc::pollfd]) -> Result<(), Error> {
    for (entry, client) in polled.iter_mut().zip(clients) {
        entry.fd = client.socket.socket().as_raw_fd();
        entry.revents = 0;
    }
    // SAFETY: `polled` is a valid, initialized array of `polled.len()` pollfd entries that
    // outlives the call, and every descriptor in it is an open socket owned by `clients`.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 10) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(fail(format!("poll failed: {error}")));
        }
    }
    Ok(())
}
