//! (j) Uncontended lock acquire+release per second through one lock node, from [`LEVELS`]
//! concurrent clients that each use a lock of their own, beside the raw `pwrite` + `fdatasync`
//! rate (a) measured in turns with them; see [`super::service_load`] for the node, the clients
//! and the rounds. (k) The fail-over time of a lock whose holder died, beside its ttl.
//!
//! The service is `bedrock::lock::LockServer` as `bedrock node` runs it, on its own
//! `FileStorage`. In (j) every client loops `Acquire` → `Granted` → `Release` → `Released` on
//! its own lock name, so no request waits for another client: a cycle costs two durable writes
//! (GRANT, RELEASE), each answered after its sync, and two round trips.
//!
//! In (k) a client acquires a lock with a ttl from [`FAILOVER_TTLS`] and dies (it never renews
//! nor releases); a second client asks for the lock at once, and again after the `retry_ms`
//! every refusal carries, until granted. The fail-over time runs from the dead holder's sending
//! of its `Acquire` (before the server's grant) to the second client's `Granted`. The server may
//! grant the lock again only after `ttl · (1 + ε)` from its grant, so that is the floor; what
//! lies above it is the round trips, the syncs and the retry's sleep.
//!
//! (l) Quorum acquire+release cycles per second through [`QUORUM_NODES`] lock nodes (node
//! threads with ids of their own, each on its own `FileStorage`), from one client driving
//! `bedrock::lock::quorum::QuorumLock` in a `Driver` over one UDP socket, as `bedrock lock run`
//! with several `--node`s does. A cycle is `Acquire` on every node, `AcquireAtLeast T` on every
//! node (a renewal on each node that granted `T` or more, a new grant on the others), then
//! `Release` on every node: at least two durable writes per node (GRANT, RELEASE) and three
//! round trips, each step waiting for a majority (acquire) or every node (release). Beside it,
//! (a) in turns with it; the latency of an acquire (both steps) is given as p50 and p99.

use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use bedrock::crdt::NodeId;
use bedrock::driver::Driver;
use bedrock::lock::quorum::{Event, QuorumConfig, QuorumLock};
use bedrock::lock::{self, Message, Refusal};
use bedrock::net::MTU_MAX;
use bedrock::rng::SplitMix64;
use bedrock::service::kind;
use bedrock::time::Instant;
use bedrock::wire::Wire;
use bedrock::wire::{Key, Keyring};
use bedrock_std::client::{random_bytes, random_u64, Client};
use bedrock_std::clock::MonotonicClock;
use bedrock_std::udp::UdpDatagram;
use bedrock_std::FileStorage;

use super::service_load::{
    self, clients, micros, rounds, row, Actor, Answered, Bench, Level, RunningNode, Snapshot,
};
use super::{median_of, Rate, RawSync, Row};
use crate::error::{fail, Error};
use crate::node::{self, NodeLock};

/// Concurrent clients of (j), each with its own lock.
pub const LEVELS: [usize; 2] = [1, 16];
/// The lease (j) asks for: long enough that no lease ends during a cycle.
const TTL: Duration = Duration::from_secs(10);
/// The longest lease the benchmark's server grants (as `bedrock node`'s default).
const TTL_MAX: Duration = Duration::from_secs(60);
/// The ttls of (k).
pub const FAILOVER_TTLS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Fail-overs measured per ttl, at least.
const FAILOVERS_MIN: u32 = 3;
/// Fail-overs measured per ttl, at most.
const FAILOVERS_MAX: u32 = 20;
/// The nodes of (l).
pub const QUORUM_NODES: usize = 3;
/// Rounds of (l): quorum cycles, then (a), in turns.
const QUORUM_ROUNDS: u32 = 6;

fn open_lock(dir: &Path) -> Result<NodeLock, String> {
    let storage = FileStorage::open(dir, node::store_options(node::LOCK_CAPACITY))
        .map_err(|error| format!("cannot open {}: {error}", dir.display()))?;
    let config = node::lock_config(TTL_MAX, node::LOCK_DRIFT_PPM);
    node::open_node_lock(storage, config, Instant::ZERO)
        .map(|(server, _)| server)
        .map_err(|error| format!("cannot open the benchmark lock server: {error}"))
}

#[derive(Debug, Clone, Copy)]
struct LockBench;

impl Bench for LockBench {
    type Service = NodeLock;
    type Actor = Locker;

    fn open(&self, dir: &Path, _incarnation: u32) -> Result<NodeLock, String> {
        open_lock(dir)
    }

    fn snapshot(server: &NodeLock) -> Snapshot {
        let stats = server.stats();
        Snapshot {
            syncs: stats.syncs,
            writes: stats.grants + stats.releases,
            live: server.locks().len() as u64,
        }
    }

    fn close(server: NodeLock) -> Result<(), String> {
        server.close().map_err(|error| error.to_string())
    }

    fn actor(&self, index: usize, _count: usize) -> Locker {
        Locker {
            name: format!("bench-{index}").into_bytes(),
            request: 0,
            current: Request::Acquire,
            next_release: None,
        }
    }

    fn exhausted(&self, _snapshot: &Snapshot, _clients: usize) -> bool {
        // Every cycle frees what it took.
        false
    }
}

#[derive(Debug, Clone, Copy)]
enum Request {
    Acquire,
    Release { token: u64 },
}

/// A client that acquires its own lock and releases it at once, over and over.
#[derive(Debug)]
pub struct Locker {
    name: Vec<u8>,
    request: u64,
    current: Request,
    /// The grant to release with the next request.
    next_release: Option<u64>,
}

impl Actor for Locker {
    fn restart(&mut self) {
        // A grant by the previous node means nothing to the next one.
        self.next_release = None;
    }

    fn begin(&mut self, request: u64) {
        self.request = request;
        self.current = match self.next_release.take() {
            Some(token) => Request::Release { token },
            None => Request::Acquire,
        };
    }

    fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let request = self.request;
        let name = &self.name[..];
        let message = match self.current {
            Request::Acquire => Message::Acquire {
                request,
                name,
                ttl_ms: TTL.as_millis() as u64,
            },
            Request::Release { token } => Message::Release {
                request,
                name,
                token,
            },
        };
        lock::encode(&message, out)
    }

    fn answer(&mut self, payload: &[u8]) -> Option<Answered> {
        let message = lock::decode(payload).ok()?;
        let (request, answered) = match message {
            Message::Granted { request, token, .. } => {
                if request == self.request {
                    self.next_release = Some(token);
                }
                (request, Answered::Leased)
            }
            Message::Released { request } => (request, Answered::Done),
            Message::Refused { request, .. } => (request, Answered::Refused),
            _ => return None,
        };
        (request == self.request).then_some(answered)
    }
}

/// The fail-overs of one ttl.
#[derive(Debug)]
pub struct Failover {
    pub ttl: Duration,
    /// `ttl · (1 + ε)`: the earliest the server may grant the lock again.
    pub floor: Duration,
    /// Each fail-over, sorted.
    pub times: Vec<Duration>,
    /// Refusals the second client got before its grant, in all.
    pub refusals: u64,
}

impl Failover {
    fn median(&self) -> Duration {
        self.times
            .get(self.times.len() / 2)
            .copied()
            .unwrap_or_default()
    }
}

/// (l): quorum cycles.
#[derive(Debug)]
pub struct Quorum {
    /// Cycles and the time they took, over every round.
    pub cycles: Rate,
    /// (a) in its turns.
    pub raw: Rate,
    /// Each round's cycles per second over (a)'s syncs per second.
    pub ratios: Vec<f64>,
    /// Each acquire (both steps), sorted.
    pub acquires: Vec<Duration>,
    /// Attempts that failed (and were tried again).
    pub failed: u64,
    /// Requests sent again for want of an answer.
    pub retries: u64,
}

impl Quorum {
    fn acquire_latency(&self, percent: usize) -> Duration {
        let index =
            (self.acquires.len() * percent / 100).min(self.acquires.len().saturating_sub(1));
        self.acquires.get(index).copied().unwrap_or_default()
    }
}

/// (j), (k) and (l).
#[derive(Debug)]
pub struct Figures {
    pub levels: Vec<Level>,
    pub failovers: Vec<Failover>,
    pub quorum: Option<Quorum>,
}

/// (j), (k) and (l), each when its flag says so.
pub fn figures(
    scratch: &Path,
    budget: Duration,
    raw: &mut RawSync,
    (cycles, failover_times, quorum_cycles): (bool, bool, bool),
) -> Result<Figures, Error> {
    let mut levels = Vec::new();
    for count in LEVELS.into_iter().filter(|_| cycles) {
        let level = service_load::level(
            &LockBench,
            "lock",
            scratch,
            count,
            Answered::Done,
            budget,
            raw,
        )?;
        levels.push(level);
    }
    let mut failovers = Vec::new();
    for ttl in FAILOVER_TTLS.into_iter().filter(|_| failover_times) {
        failovers.push(failover(scratch, ttl, budget)?);
    }
    let quorum = if quorum_cycles {
        Some(quorum(scratch, budget, raw)?)
    } else {
        None
    };
    Ok(Figures {
        levels,
        failovers,
        quorum,
    })
}

/// Measures (l): [`QUORUM_NODES`] node threads, one quorum client, (a) in turns.
fn quorum(scratch: &Path, budget: Duration, raw: &mut RawSync) -> Result<Quorum, Error> {
    let random = || random_u64().map_err(|error| fail(error.to_string()));
    let secret = random_bytes::<32>().map_err(|error| fail(error.to_string()))?;
    let key = Key::new(1, secret);
    let cluster = random()? as u32;
    let mut nodes = Vec::new();
    let mut started = Ok(());
    for index in 0..QUORUM_NODES {
        let dir = scratch.join(format!("lock-quorum-{index}"));
        let id = NodeId(index as u32 + 1);
        match RunningNode::start_as(&LockBench, &dir, key.clone(), cluster, (id, 1)) {
            Ok(node) => nodes.push(node),
            Err(error) => {
                started = Err(error);
                break;
            }
        }
    }
    let measured = started.and_then(|()| quorum_cycles(&nodes, &key, cluster, budget, raw));
    let mut stopped = Ok(());
    for node in nodes {
        stopped = stopped.and(node.stop());
    }
    let measured = measured?;
    stopped?;
    for index in 0..QUORUM_NODES {
        let dir = scratch.join(format!("lock-quorum-{index}"));
        std::fs::remove_dir_all(&dir)
            .map_err(|error| fail(format!("could not remove {}: {error}", dir.display())))?;
    }
    Ok(measured)
}

/// A quorum client over one socket, as `bedrock lock run` drives it.
struct QuorumClient {
    lock: QuorumLock<QUORUM_NODES>,
    driver: Driver<1, { QUORUM_NODES + 1 }>,
    socket: UdpDatagram,
    rng: SplitMix64,
    buffer: Vec<u8>,
    clock: MonotonicClock,
    /// The last cycle's token: every next one must be higher.
    last_token: u64,
}

impl QuorumClient {
    /// Steps until `done` takes an event, or the attempt's time (and some) has passed.
    fn until<T>(&mut self, mut done: impl FnMut(Event) -> Option<T>) -> Result<T, Error> {
        let give_up = StdInstant::now() + Duration::from_secs(10);
        loop {
            let now = self.clock.now();
            let next = self
                .driver
                .step(
                    now,
                    &mut self.socket,
                    &mut self.lock,
                    &mut self.rng,
                    &mut self.buffer,
                )
                .map_err(|error| fail(error.to_string()))?;
            while let Some(event) = self.lock.poll_event() {
                if let Some(value) = done(event) {
                    return Ok(value);
                }
            }
            if StdInstant::now() > give_up {
                return Err(fail("the benchmark's quorum client got no answers"));
            }
            let wait = next.map_or(Duration::from_millis(10), |at| {
                at.saturating_duration_since(self.clock.now())
                    .min(Duration::from_millis(10))
            });
            if !wait.is_zero() {
                self.socket
                    .wait(Some(wait))
                    .map_err(|error| fail(format!("waiting on the socket failed: {error}")))?;
            }
        }
    }

    /// One acquire+release cycle: the acquire's latency, and whether it was tried again.
    fn cycle(&mut self) -> Result<(Duration, u64), Error> {
        let start = StdInstant::now();
        let mut failed = 0;
        loop {
            self.lock.acquire(self.clock.now());
            let token = self.until(|event| match event {
                Event::Acquired { token } => Some(Some(token)),
                Event::Failed { .. } => Some(None),
                Event::Lost | Event::Released => None,
            })?;
            match token {
                Some(token) if token > self.last_token => {
                    self.last_token = token;
                    break;
                }
                Some(token) => {
                    return Err(fail(format!(
                        "quorum token {token} after token {}: tokens must grow",
                        self.last_token
                    )))
                }
                None => failed += 1,
            }
        }
        let acquired = start.elapsed();
        self.lock.release(self.clock.now());
        self.until(|event| (event == Event::Released).then_some(()))?;
        Ok((acquired, failed))
    }
}

fn quorum_cycles(
    nodes: &[RunningNode<NodeLock>],
    key: &Key,
    cluster: u32,
    budget: Duration,
    raw: &mut RawSync,
) -> Result<Quorum, Error> {
    let random = || random_u64().map_err(|error| fail(error.to_string()));
    let servers: Vec<_> = nodes.iter().map(|node| node.addr).collect();
    let config = QuorumConfig {
        ttl: TTL,
        ..QuorumConfig::default()
    };
    let lock = QuorumLock::new(b"quorum-bench", &servers, config, random()?)
        .ok_or_else(|| fail("cannot make the benchmark's quorum lock"))?;
    let sender = NodeId((random()? as u32) | 0x8000_0000);
    let wire = Wire::encrypted(cluster, sender, random()? as u32, Keyring::new(key.clone()));
    let socket = UdpDatagram::bind(([127, 0, 0, 1], 0).into(), MTU_MAX)
        .map_err(|error| fail(format!("cannot bind a UDP socket: {error}")))?;
    let mut client = QuorumClient {
        lock,
        driver: Driver::new(wire),
        socket,
        rng: SplitMix64::new(random()?),
        buffer: vec![0; MTU_MAX + 1],
        clock: MonotonicClock::new(),
        last_token: 0,
    };
    let mut result = Quorum {
        cycles: Rate::default(),
        raw: Rate::default(),
        ratios: Vec::new(),
        acquires: Vec::new(),
        failed: 0,
        retries: 0,
    };
    let round = budget / QUORUM_ROUNDS;
    for _ in 0..QUORUM_ROUNDS {
        let start = StdInstant::now();
        let mut cycles = 0;
        while start.elapsed() < round {
            let (acquired, failed) = client.cycle()?;
            result.acquires.push(acquired);
            result.failed += failed;
            cycles += 1;
        }
        let rate = Rate {
            operations: cycles,
            elapsed: start.elapsed(),
        };
        let synced = raw.run_for(round / 3)?;
        result.ratios.push(rate.per_second() / synced.per_second());
        result.cycles.add(rate);
        result.raw.add(synced);
    }
    result.retries = client.lock.stats().retries;
    result.acquires.sort_unstable();
    Ok(result)
}

/// Measures (k) for `ttl` on one node: as many fail-overs as fit twice the budget, within
/// [`FAILOVERS_MIN`] and [`FAILOVERS_MAX`].
fn failover(scratch: &Path, ttl: Duration, budget: Duration) -> Result<Failover, Error> {
    let secret = random_bytes::<32>().map_err(|error| fail(error.to_string()))?;
    let key = Key::new(1, secret);
    let cluster = random_u64().map_err(|error| fail(error.to_string()))? as u32;
    let dir = scratch.join(format!("lock-failover-{}", ttl.as_millis()));
    let node = RunningNode::start(&LockBench, &dir, key.clone(), cluster, 1)?;
    let measured = failovers(&node, &key, cluster, ttl, budget);
    let stopped = node.stop();
    let measured = measured?;
    stopped?;
    std::fs::remove_dir_all(&dir)
        .map_err(|error| fail(format!("could not remove {}: {error}", dir.display())))?;
    Ok(measured)
}

fn failovers(
    node: &RunningNode<NodeLock>,
    key: &Key,
    cluster: u32,
    ttl: Duration,
    budget: Duration,
) -> Result<Failover, Error> {
    let client = || {
        Client::new(node.addr, cluster, Some(Keyring::new(key.clone())))
            .map_err(|error| fail(format!("cannot make a benchmark client: {error}")))
    };
    let (mut dead, mut next) = (client()?, client()?);
    let count = ((budget.as_secs_f64() * 2.0 / ttl.as_secs_f64()) as u32)
        .clamp(FAILOVERS_MIN, FAILOVERS_MAX);
    let mut result = Failover {
        ttl,
        floor: lock::guarded(ttl, node::LOCK_DRIFT_PPM),
        times: Vec::new(),
        refusals: 0,
    };
    let mut request = 0u64;
    for round in 0..count {
        let name = format!("failover-{round}").into_bytes();
        request += 1;
        // The server's grant comes after this: the fail-over counted from here is never
        // shorter than what the server allows.
        let granted = StdInstant::now();
        let dead_token = match acquire(&mut dead, request, &name, ttl)? {
            Ok(token) => token,
            Err((reason, _)) => {
                return Err(fail(format!(
                    "the benchmark's first acquire of a fresh lock was refused: {reason}"
                )))
            }
        };
        let token = loop {
            request += 1;
            match acquire(&mut next, request, &name, ttl)? {
                Ok(token) => break token,
                Err((Refusal::Held, retry)) => {
                    result.refusals += 1;
                    std::thread::sleep(retry);
                }
                Err((reason, _)) => {
                    return Err(fail(format!(
                        "the benchmark's acquire was refused: {reason}"
                    )))
                }
            }
        };
        result.times.push(granted.elapsed());
        if token <= dead_token {
            return Err(fail(format!(
                "fencing token {token} granted after token {dead_token}: tokens must grow"
            )));
        }
    }
    result.times.sort_unstable();
    Ok(result)
}

/// One acquire, retried until answered: the token, or the refusal and how long to wait.
fn acquire(
    client: &mut Client,
    request: u64,
    name: &[u8],
    ttl: Duration,
) -> Result<Result<u64, (Refusal, Duration)>, Error> {
    let message = Message::Acquire {
        request,
        name,
        ttl_ms: ttl.as_millis() as u64,
    };
    client
        .request(
            kind::LOCK,
            |out| lock::encode(&message, out),
            |payload| match lock::decode(payload).ok()? {
                Message::Granted {
                    request: answered,
                    token,
                    ..
                } if answered == request => Some(Ok(token)),
                Message::Refused {
                    request: answered,
                    reason,
                    retry_ms,
                } if answered == request => Some(Err((reason, Duration::from_millis(retry_ms)))),
                _ => None,
            },
        )
        .map_err(|error| fail(format!("a benchmark lock request failed: {error}")))
}

impl Figures {
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .levels
            .iter()
            .map(|level| {
                row(
                    format!("j. lock acquire+release, {}", clients(level.clients)),
                    format!("{:.0} cycles/s", level.per_second(Answered::Done)),
                    level,
                )
            })
            .collect();
        if let Some(quorum) = &self.quorum {
            rows.push(Row {
                figure: format!("l. quorum lock acquire+release, {QUORUM_NODES} nodes, 1 client"),
                measured: format!("{:.0} cycles/s", quorum.cycles.per_second()),
                limit: format!("{:.0} ops/s (a)", quorum.raw.per_second()),
                ratio: format!("{:.3}x", median_of(&quorum.ratios)),
                goal: "-",
                result: "-".to_string(),
            });
        }
        for failover in &self.failovers {
            let median = failover.median();
            rows.push(Row {
                figure: format!(
                    "k. lock fail-over, dead holder, ttl {} ms",
                    failover.ttl.as_millis()
                ),
                measured: format!(
                    "{:.0} ms ({:.3}x ttl)",
                    median.as_secs_f64() * 1e3,
                    median.as_secs_f64() / failover.ttl.as_secs_f64()
                ),
                limit: format!("{:.0} ms ttl(1+e)", failover.floor.as_secs_f64() * 1e3),
                ratio: format!(
                    "{:.3}x",
                    median.as_secs_f64() / failover.floor.as_secs_f64()
                ),
                goal: "-",
                result: "-".to_string(),
            });
        }
        rows
    }

    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.levels.is_empty() {
            notes.push(format!(
                "j: one node on 127.0.0.1 (event loop thread, encrypted envelopes, \
             bedrock::lock::LockServer as `bedrock node` runs it: a {} MiB FileStorage); each \
             client loops Acquire -> Release on a lock of its own with a {} s ttl, every grant \
             and release answered after its sync; (a) after each window for a third of it",
                node::LOCK_CAPACITY >> 20,
                TTL.as_secs()
            ));
        }
        for level in &self.levels {
            notes.push(format!(
                "j: {}: {:.0} acquire+release cycles/s ({:.0} grants/s) in {:.0} syncs/s, {:.1} \
                 writes per sync; {} refused, {} sent again; latency (acquire or release) p50 \
                 {:.0} us, p99 {:.0} us; {}; (a) in its turns {:.0} ops/s; per-round ratios {}",
                clients(level.clients),
                level.per_second(Answered::Done),
                level.per_second(Answered::Leased),
                level.syncs_per_second(),
                level.writes_per_sync(),
                level.count(Answered::Refused),
                level.retries,
                micros(level.latency(50)),
                micros(level.latency(99)),
                rounds(level),
                level.raw.per_second(),
                level.ratio_list()
            ));
        }
        for failover in &self.failovers {
            let millis: Vec<f64> = failover
                .times
                .iter()
                .map(|time| time.as_secs_f64() * 1e3)
                .collect();
            notes.push(format!(
                "k: ttl {} ms, drift bound {} ppm, floor ttl(1+e) {:.1} ms: {} fail-overs, min \
                 {:.1} / median {:.1} / max {:.1} ms, {} refusals before the grants; a \
                 holder acquires and dies, a second client asks at once and again after each \
                 refusal's retry_ms; timed from the dead holder's Acquire sent to the next \
                 Granted received",
                failover.ttl.as_millis(),
                node::LOCK_DRIFT_PPM,
                failover.floor.as_secs_f64() * 1e3,
                failover.times.len(),
                millis.first().copied().unwrap_or_default(),
                median_of(&millis),
                millis.last().copied().unwrap_or_default(),
                failover.refusals
            ));
        }
        if let Some(quorum) = &self.quorum {
            notes.push(format!(
                "l: {QUORUM_NODES} lock nodes on 127.0.0.1 (node threads with ids 1 to \
                 {QUORUM_NODES}, encrypted envelopes, a LockServer each on its own {} MiB \
                 FileStorage); one client drives QuorumLock over one UDP socket: Acquire on \
                 all, AcquireAtLeast T on all, Release on all, {} s ttl; {:.0} cycles/s, \
                 acquire (both steps) p50 {:.0} us, p99 {:.0} us; {} cycles, {} failed attempts \
                 tried again, {} requests sent again; (a) in turns {:.0} ops/s; per-round \
                 ratios {}",
                node::LOCK_CAPACITY >> 20,
                TTL.as_secs(),
                quorum.cycles.per_second(),
                micros(quorum.acquire_latency(50)),
                micros(quorum.acquire_latency(99)),
                quorum.cycles.operations,
                quorum.failed,
                quorum.retries,
                quorum.raw.per_second(),
                quorum
                    .ratios
                    .iter()
                    .map(|ratio| format!("{ratio:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        notes
    }
}
