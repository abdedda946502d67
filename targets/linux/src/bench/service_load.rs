//! What (g) and (h) share: a node running one service on its own thread, and C concurrent UDP
//! clients that each keep one request outstanding, measured in rounds that each start a fresh
//! node, beside the raw `pwrite` + `fdatasync` rate (a) measured in turns with them.
//!
//! The node is what `bedrock node` runs: the std event loop over a UDP socket on 127.0.0.1 and
//! the encrypted wire envelope (a random key), with the service on a `FileStorage` in the
//! scratch directory. One client thread holds C sockets, each a client with its own id that
//! keeps exactly one request outstanding: it sends the next request as soon as the answer to
//! the previous one arrives, and sends a request again (same request id, same contents) when no
//! answer came within [`RETRY`]. Writes are answered after the sync that made them durable, and
//! one sync covers every request that arrived in one loop iteration (group commit).
//!
//! A queue or a job table has a fixed capacity, and the figures are of a node that is neither
//! full nor empty, so every round starts a fresh node (a fresh store, filled first when the
//! clients consume) and its window ends when its time is up or when the node's own count says
//! the capacity is nearly used ([`Bench::exhausted`]), whichever comes first. Rounds go on
//! until the windows add up to three quarters of the level's budget (at least [`ROUNDS_MIN`]
//! rounds); after each window the clients wait for their outstanding answers (not counted) and
//! the node stops, then (a) runs for a third of the window, so (a) takes a quarter of the time
//! as in (f).

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bedrock::crdt::NodeId;
use bedrock::driver::Driver;
use bedrock::net::{Datagram, MTU_DEFAULT};
use bedrock::service::Service;
use bedrock::wire::{self, Key, Keyring, Wire};
use bedrock_std::client::{random_bytes, random_u64};
use bedrock_std::node::EventLoop;
use bedrock_std::UdpDatagram;

use super::{median_of, Rate, RawSync, Row};
use crate::error::{fail, Error};

/// A request without an answer after this long is sent again with the same request id.
const RETRY: Duration = Duration::from_millis(200);
/// The longest the clients wait for outstanding answers at the end of a window.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Fewest rounds per level.
pub const ROUNDS_MIN: u32 = 4;
/// Most rounds per level, however short the windows.
const ROUNDS_MAX: u32 = 200;
/// Stack of the node thread: the services keep their tables inline.
const NODE_STACK: usize = 64 << 20;

/// The node's replay table of senders, as `bedrock node` has it.
const SENDERS_MAX: usize = 256;

type NodeWire = Wire<1, SENDERS_MAX>;
type ClientWire = Wire<1, 4>;

/// What the node counts, published after every loop iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Syncs done.
    pub syncs: u64,
    /// Writes made durable that the figure counts (messages stored, acks, jobs completed).
    pub writes: u64,
    /// What fills the capacity: live messages, unfinished jobs.
    pub live: u64,
}

/// What a client's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Queue: `Sent`.
    Sent,
    /// Queue: `Delivery`; jobs: `Claimed`.
    Leased,
    /// Queue: `Empty`; jobs: `NoJob`.
    Nothing,
    /// Queue: `Acked`; jobs: `Done` of a completion.
    Done,
    /// `Refused`, for any reason.
    Refused,
}

impl Answered {
    fn index(self) -> usize {
        self as usize
    }
}

/// One client's protocol: the request it has outstanding, and what an answer means.
pub trait Actor {
    /// A fresh node is about to be used: forget what only the previous one knew.
    fn restart(&mut self);
    /// Starts a new request with id `request` (the previous one was answered).
    fn begin(&mut self, request: u64);
    /// Encodes the current request's message (the same each time it is sent again).
    fn encode(&self, out: &mut [u8]) -> Option<usize>;
    /// An opened payload: what it answered, when it answers the current request.
    fn answer(&mut self, payload: &[u8]) -> Option<Answered>;
}

/// One figure: how to make its node and its clients.
pub trait Bench: Clone + Send + 'static {
    type Service: Service + Send + 'static;
    type Actor: Actor;

    /// Opens the service on a fresh store in `dir`, filled as the figure needs; runs on the
    /// node thread.
    fn open(&self, dir: &Path, incarnation: u32) -> Result<Self::Service, String>;
    /// What the node counts.
    fn snapshot(service: &Self::Service) -> Snapshot;
    /// Closes the service.
    fn close(service: Self::Service) -> Result<(), String>;
    /// Client `index` of `count`.
    fn actor(&self, index: usize, count: usize) -> Self::Actor;
    /// Whether the window must end: the capacity is nearly used (or used up).
    fn exhausted(&self, snapshot: &Snapshot, clients: usize) -> bool;
}

/// What one level measured.
#[derive(Debug, Clone, Default)]
pub struct Level {
    /// Concurrent clients.
    pub clients: usize,
    /// The windows, summed: `operations` unused.
    pub window: Duration,
    /// Answers in the windows, by [`Answered`].
    pub answers: [u64; 5],
    /// The node's count of durable writes in the windows.
    pub writes: u64,
    /// The node's syncs in the windows.
    pub syncs: u64,
    /// Request latencies (first send to answer), sorted.
    pub latencies: Vec<Duration>,
    /// Requests sent again for want of an answer.
    pub retries: u64,
    /// Raw `pwrite` + `fdatasync`, in turns with the clients.
    pub raw: Rate,
    /// Per round: answers of kind `main` per second over raw syncs per second.
    pub ratios: Vec<f64>,
    /// Rounds, and of those how many ended because the capacity was nearly used.
    pub rounds: u32,
    pub exhausted: u32,
}

impl Level {
    fn seconds(&self) -> f64 {
        self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Answers of `kind` per second.
    pub fn per_second(&self, kind: Answered) -> f64 {
        self.answers[kind.index()] as f64 / self.seconds()
    }

    pub fn count(&self, kind: Answered) -> u64 {
        self.answers[kind.index()]
    }

    pub fn syncs_per_second(&self) -> f64 {
        self.syncs as f64 / self.seconds()
    }

    /// The node's durable writes per sync.
    pub fn writes_per_sync(&self) -> f64 {
        self.writes as f64 / self.syncs.max(1) as f64
    }

    /// The latency at `percent` (nearest rank).
    pub fn latency(&self, percent: usize) -> Duration {
        let index =
            (self.latencies.len() * percent / 100).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).copied().unwrap_or_default()
    }

    /// Per-round ratios, as printed.
    pub fn ratio_list(&self) -> String {
        self.ratios
            .iter()
            .map(|ratio| format!("{ratio:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Measures `bench` with `clients` concurrent clients for `budget`; the per-round ratios are of
/// answers of kind `main`. Stores go in `scratch/{name}-{round}`, removed after each round.
pub fn level<B: Bench>(
    bench: &B,
    name: &str,
    scratch: &Path,
    clients: usize,
    main: Answered,
    budget: Duration,
    raw: &mut RawSync,
) -> Result<Level, Error> {
    let secret = random_bytes::<32>().map_err(|error| fail(error.to_string()))?;
    let key = Key::new(1, secret);
    let cluster = random_u64().map_err(|error| fail(error.to_string()))? as u32;
    let mut load = Load::new(bench, clients, cluster, &key)?;
    let mut level = Level {
        clients,
        ..Level::default()
    };
    let target = budget * 3 / 4;
    let round_window = budget * 3 / 4 / ROUNDS_MIN;
    let started = Instant::now();
    while level.rounds < ROUNDS_MIN
        || (level.window < target && level.rounds < ROUNDS_MAX && started.elapsed() < budget * 4)
    {
        let dir = scratch.join(format!("{name}-{}", level.rounds));
        // Every node is a new sender to the clients: a fresh incarnation each time.
        let node = RunningNode::start(bench, &dir, key.clone(), cluster, level.rounds + 1)?;
        let measured = load.run(bench, &node, round_window);
        let stopped = node.stop();
        let window = measured?;
        stopped?;
        std::fs::remove_dir_all(&dir)
            .map_err(|error| fail(format!("could not remove {}: {error}", dir.display())))?;
        let raw_rate = raw.run_for(window.elapsed / 3)?;
        let main_rate = window.answers[main.index()] as f64 / window.elapsed.as_secs_f64();
        level.ratios.push(main_rate / raw_rate.per_second());
        level.raw.add(raw_rate);
        level.window += window.elapsed;
        for (total, count) in level.answers.iter_mut().zip(window.answers) {
            *total += count;
        }
        level.writes += window.end.writes - window.start.writes;
        level.syncs += window.end.syncs - window.start.syncs;
        level.retries += window.retries;
        level.latencies.extend(window.latencies);
        level.rounds += 1;
        level.exhausted += u32::from(window.exhausted);
    }
    level.latencies.sort_unstable();
    Ok(level)
}

/// A node running one service on its own thread, publishing its counts after every iteration.
pub struct RunningNode<S> {
    /// The node's UDP address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: thread::JoinHandle<Result<(), String>>,
    service: std::marker::PhantomData<fn() -> S>,
}

impl<S: Service + Send + 'static> RunningNode<S> {
    /// Opens `bench`'s service in `dir` on a node thread and starts its event loop.
    pub fn start<B: Bench<Service = S>>(
        bench: &B,
        dir: &Path,
        key: Key,
        cluster: u32,
        incarnation: u32,
    ) -> Result<Self, Error> {
        Self::start_as(bench, dir, key, cluster, (NodeId(1), incarnation))
    }

    /// [`Self::start`] for node `id` (nodes that one client talks to need ids of their own:
    /// the client keeps one replay window per sender id).
    pub fn start_as<B: Bench<Service = S>>(
        bench: &B,
        dir: &Path,
        key: Key,
        cluster: u32,
        (id, incarnation): (NodeId, u32),
    ) -> Result<Self, Error> {
        let wire = NodeWire::encrypted(cluster, id, incarnation, Keyring::new(key));
        let local: SocketAddr = ([127, 0, 0, 1], 0).into();
        let socket = UdpDatagram::bind(local, MTU_DEFAULT)
            .map_err(|error| fail(format!("cannot bind a UDP socket: {error}")))?;
        let addr = socket
            .local_addr()
            .map_err(|error| fail(format!("no local address: {error}")))?;
        let seed = random_u64().map_err(|error| fail(error.to_string()))?;
        let mut event_loop = EventLoop::new(Driver::new(wire), socket, seed);
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let (stop_flag, published) = (Arc::clone(&stop), Arc::clone(&snapshot));
        let (ready, opened) = mpsc::channel();
        let bench = bench.clone();
        let dir = dir.to_path_buf();
        // The service is opened (and filled) on the node thread: its tables are large values.
        let thread = thread::Builder::new()
            .stack_size(NODE_STACK)
            .spawn(move || {
                let mut service = match bench.open(&dir, incarnation) {
                    Ok(service) => service,
                    Err(error) => {
                        let _ = ready.send(Err(error.clone()));
                        return Err(error);
                    }
                };
                if let Ok(mut snapshot) = published.lock() {
                    *snapshot = B::snapshot(&service);
                }
                let _ = ready.send(Ok(()));
                while !stop_flag.load(Ordering::Relaxed) {
                    event_loop
                        .iterate(&mut service)
                        .map_err(|error| error.to_string())?;
                    if let Ok(mut snapshot) = published.lock() {
                        *snapshot = B::snapshot(&service);
                    }
                }
                B::close(service)
            })
            .map_err(|error| fail(format!("cannot start the node thread: {error}")))?;
        match opened.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(fail(format!("cannot open the benchmark node: {error}"))),
            Err(_) => return Err(fail("the benchmark node stopped while opening")),
        }
        Ok(Self {
            addr,
            stop,
            snapshot,
            thread,
            service: std::marker::PhantomData,
        })
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .map(|snapshot| *snapshot)
            .unwrap_or_default()
    }

    /// Stops the event loop and closes the service.
    pub fn stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| fail("the benchmark node panicked"))?
            .map_err(|error| fail(format!("the benchmark node failed: {error}")))
    }
}

/// What the clients saw in one window.
struct Window {
    /// From the first request to the end of the window (time up, or capacity nearly used).
    elapsed: Duration,
    answers: [u64; 5],
    latencies: Vec<Duration>,
    retries: u64,
    /// The node's counts at the start and at the end of the window.
    start: Snapshot,
    end: Snapshot,
    /// Whether the window ended because the capacity was nearly used.
    exhausted: bool,
}

/// One client: a socket, an envelope sender of its own, one request outstanding.
struct Client<A> {
    actor: A,
    socket: UdpDatagram,
    wire: ClientWire,
    request: u64,
    first_sent: Instant,
    last_sent: Instant,
    outstanding: bool,
}

/// The clients of one level.
struct Load<A> {
    clients: Vec<Client<A>>,
    buffer: Vec<u8>,
    polled: Vec<libc::pollfd>,
}

impl<A: Actor> Load<A> {
    fn new<B: Bench<Actor = A>>(
        bench: &B,
        count: usize,
        cluster: u32,
        key: &Key,
    ) -> Result<Self, Error> {
        let incarnation = random_u64().map_err(|error| fail(error.to_string()))? as u32;
        let now = Instant::now();
        let clients = (0..count)
            .map(|index| {
                let local: SocketAddr = ([127, 0, 0, 1], 0).into();
                let socket = UdpDatagram::bind(local, MTU_DEFAULT)
                    .map_err(|error| fail(format!("cannot bind a UDP socket: {error}")))?;
                let sender = NodeId(0x8000_0000 | index as u32);
                Ok(Client {
                    actor: bench.actor(index, count),
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
            .collect::<Result<Vec<_>, Error>>()?;
        let polled = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        Ok(Self {
            clients,
            buffer: vec![0u8; MTU_DEFAULT],
            polled: vec![polled; count],
        })
    }

    /// Keeps one request per client outstanding for `window` or until the capacity is nearly
    /// used, then stops sending new ones and waits (at most [`DRAIN_MAX`]) for the outstanding
    /// answers, which are not counted.
    fn run<B: Bench<Actor = A>>(
        &mut self,
        bench: &B,
        node: &RunningNode<B::Service>,
        window: Duration,
    ) -> Result<Window, Error> {
        for client in &mut self.clients {
            client.actor.restart();
        }
        let start_snapshot = node.snapshot();
        let start = Instant::now();
        let mut end = start + window;
        let mut answers = [0u64; 5];
        let mut latencies = Vec::new();
        let mut retries = 0;
        let mut end_snapshot = None;
        let mut exhausted = false;
        loop {
            let now = Instant::now();
            if end_snapshot.is_none() {
                let snapshot = node.snapshot();
                if bench.exhausted(&snapshot, self.clients.len()) {
                    exhausted = true;
                    end = now;
                }
                if now >= end {
                    end_snapshot = Some(snapshot);
                }
            }
            let draining = end_snapshot.is_some();
            let outstanding = self.clients.iter().any(|client| client.outstanding);
            if draining && (!outstanding || now >= end + DRAIN_MAX) {
                break;
            }
            for client in &mut self.clients {
                if !client.outstanding && !draining {
                    client.request += 1;
                    client.actor.begin(client.request);
                    client.first_sent = now;
                    client.outstanding = true;
                    send::<B>(client, node.addr, &mut self.buffer)?;
                } else if client.outstanding && now.duration_since(client.last_sent) >= RETRY {
                    retries += 1;
                    send::<B>(client, node.addr, &mut self.buffer)?;
                }
            }
            wait_readable(&self.clients, &mut self.polled)?;
            let now = Instant::now();
            for (client, polled) in self.clients.iter_mut().zip(&self.polled) {
                if polled.revents == 0 {
                    continue;
                }
                let Some(answered) = receive(client, &mut self.buffer) else {
                    continue;
                };
                client.outstanding = false;
                if now < end {
                    answers[answered.index()] += 1;
                    latencies.push(now.duration_since(client.first_sent));
                }
            }
        }
        Ok(Window {
            elapsed: end.duration_since(start),
            answers,
            latencies,
            retries,
            start: start_snapshot,
            end: end_snapshot.unwrap_or_default(),
            exhausted,
        })
    }
}

fn send<B: Bench>(
    client: &mut Client<B::Actor>,
    node: SocketAddr,
    buffer: &mut [u8],
) -> Result<(), Error> {
    let trailer = client.wire.overhead() - wire::HEADER_LEN;
    let end = buffer.len() - trailer;
    let len = client
        .actor
        .encode(&mut buffer[wire::HEADER_LEN..end])
        .ok_or_else(|| fail("a request does not fit a datagram"))?;
    let sealed = client
        .wire
        .seal(<B::Service as Service>::KIND, buffer, len)
        .map_err(|_| fail("could not seal a request"))?;
    // A datagram the kernel drops is sent again after RETRY, as any client would.
    let _ = client.socket.send(node, &buffer[..sealed]);
    client.last_sent = Instant::now();
    Ok(())
}

/// Takes every waiting datagram; what the answer to the outstanding request was, if it came.
fn receive<A: Actor>(client: &mut Client<A>, buffer: &mut [u8]) -> Option<Answered> {
    let mut answered = None;
    while let Ok(Some(received)) = client.socket.recv(buffer) {
        let Ok(opened) = client.wire.open(&mut buffer[..received.len]) else {
            continue;
        };
        if client.outstanding && answered.is_none() {
            answered = client.actor.answer(opened.payload);
        }
    }
    answered
}

/// Waits until a client socket is readable or the shortest retry is due (at most 10 ms).
fn wait_readable<A>(clients: &[Client<A>], polled: &mut [libc::pollfd]) -> Result<(), Error> {
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

// ---------------------------------------------------------------------------------------------
// Printing

pub fn clients(count: usize) -> String {
    match count {
        1 => "1 client".to_string(),
        count => format!("{count} clients"),
    }
}

pub fn row(figure: String, measured: String, level: &Level) -> Row {
    Row {
        figure,
        measured,
        limit: format!("{:.0} ops/s (a)", level.raw.per_second()),
        ratio: format!("{:.2}x", median_of(&level.ratios)),
        goal: "-",
        result: "-".to_string(),
    }
}

pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The rounds and how the windows ended.
pub fn rounds(level: &Level) -> String {
    format!(
        "{} rounds ({} ended by capacity) of {:.2} s in all",
        level.rounds,
        level.exhausted,
        level.window.as_secs_f64()
    )
}
