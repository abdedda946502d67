//! Seeded simulation of a five-node cluster running the distributed counter and the replicated
//! log over the simulated network: 30% loss, duplication, reordering (latency jitter), corrupted datagrams, partitions
//! that heal, and nodes that crash (power cut at a random storage operation, or at once) and
//! restart with a new incarnation. Clients send increments and log appends to random nodes and
//! retry each (same request id, same node) until it is acknowledged.
//!
//! Invariants: after the partitions heal and the crashes stop, every node's value is exactly the
//! sum of the acknowledged increments (none lost, none counted twice); a node never reports a
//! value above the sum of the increments attempted; every replica's log holds the same entries in
//! the same order with the same sibling marks, and every acknowledged append is among them with
//! its data. Each seed replays one run exactly; a failing
//! seed is printed.

use std::net::SocketAddr;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter, Message};
use bedrock::driver::Driver;
use bedrock::net::Datagram;
use bedrock::rlog::{self, ReadKey, Rlog, RlogConfig};
use bedrock::service::kind;
use bedrock::storage::Geometry;
use bedrock::time::Instant;
use bedrock::wire::{self, Key, Keyring, Wire};
use bedrock_sim::{NetFaults, SimNetwork, SimRng, SimStorage, TornSpec};

const NODES: usize = 5;
const CLIENTS: usize = 3;
const SEEDS: u64 = 1000;
const CLUSTER: u32 = 0x5EED;
/// Virtual time of the chaos phase.
const CHAOS: Duration = Duration::from_secs(20);
/// The most virtual time the cluster gets to converge after healing.
const CONVERGE_MAX: Duration = Duration::from_secs(120);

type Counter = DistributedCounter<SimStorage, Vec<u8>, 16, 8, 64, 32>;
type Replica = Rlog<SimStorage, Vec<u8>, 16, 8, 32>;
type NodeServices = (Counter, Replica);
type ClusterWire = Wire<1, 16>;

fn key() -> Keyring<1> {
    Keyring::new(Key::new(1, [0x42; 32]))
}

fn node_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7000))
}

fn client_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, index as u8 + 1], 9000))
}

struct Node {
    addr: SocketAddr,
    incarnation: u32,
    /// `None` while the node is down.
    running: Option<(NodeServices, Driver<1, 16>)>,
    /// The storages (counter, log) of a node that is down.
    parked: Option<(SimStorage, SimStorage)>,
    deadline: Option<Instant>,
    rng: SimRng,
    /// Crashes so far (power cuts included).
    crashes: u32,
}

impl Node {
    fn new(index: usize, seed: u64) -> Self {
        let geometry = Geometry {
            read_size: 1,
            write_size: 8,
            erase_size: 4096,
            capacity: 16 * 4096,
            erased_value: 0xFF,
        };
        let counter_storage =
            SimStorage::new(geometry, seed ^ ((index as u64 + 1) * 0x9E37)).unwrap();
        let log_geometry = Geometry {
            capacity: 32 * 4096,
            ..geometry
        };
        let log_storage =
            SimStorage::new(log_geometry, seed ^ ((index as u64 + 1) * 0x7F4A)).unwrap();
        let mut node = Self {
            addr: node_addr(index),
            incarnation: 0,
            running: None,
            parked: Some((counter_storage, log_storage)),
            deadline: Some(Instant::ZERO),
            rng: SimRng::new(seed.wrapping_mul(31).wrapping_add(index as u64)),
            crashes: 0,
        };
        node.start(index);
        node
    }

    fn start(&mut self, index: usize) {
        let (counter_storage, log_storage) = self.parked.take().expect("parked storages");
        self.incarnation += 1;
        let peers: Vec<SocketAddr> = (0..NODES).filter(|&i| i != index).map(node_addr).collect();
        let mut config = dcounter::Config::new(NodeId(index as u32 + 1), self.incarnation);
        config.checkpoint_every = 8;
        config.checkpoint_interval = Duration::from_secs(2);
        config.log.segment_size = 4096;
        let (counter, _) = Counter::open(counter_storage, vec![0; 8192], config, &peers)
            .unwrap_or_else(|error| panic!("node {index} failed to recover its counter: {error}"));
        let mut log_config = RlogConfig::new(NodeId(index as u32 + 1));
        log_config.log.segment_size = 4096;
        let (replica, _) = Replica::open(log_storage, vec![0; 8192], log_config, &peers)
            .unwrap_or_else(|error| panic!("node {index} failed to recover its log: {error:?}"));
        let wire =
            ClusterWire::encrypted(CLUSTER, NodeId(index as u32 + 1), self.incarnation, key());
        self.running = Some(((counter, replica), Driver::new(wire)));
        self.deadline = Some(Instant::ZERO);
    }

    /// Power is cut: what was not synced may be lost or torn; queued datagrams are lost.
    fn crash(&mut self, network: &mut SimNetwork) {
        self.crashes += 1;
        if let Some(((counter, replica), _)) = self.running.take() {
            let (mut counter_storage, _) = counter.into_parts();
            let (mut log_storage, _) = replica.into_parts();
            for storage in [&mut counter_storage, &mut log_storage] {
                storage.clear_power_cut();
                storage.crash();
            }
            self.parked = Some((counter_storage, log_storage));
        }
        network.clear_inbox(self.addr);
    }

    fn value(&self) -> Option<u64> {
        self.running
            .as_ref()
            .map(|((counter, _), _)| counter.value())
    }

    fn replica(&mut self) -> Option<&mut Replica> {
        self.running.as_mut().map(|((_, replica), _)| replica)
    }
}

struct Client {
    addr: SocketAddr,
    wire: Wire<1, 16>,
    /// The request being sent: node index, request id, and what it asks.
    current: Option<(usize, u64, Request)>,
    next_send: Instant,
    next_request: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Incr(u64),
    Append,
}

/// The data of a client's append: unique per client and request.
fn append_data(client: SocketAddr, request: u64) -> Vec<u8> {
    format!("{client}/{request}").into_bytes()
}

struct Cluster {
    network: SimNetwork,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    rng: SimRng,
    acknowledged: u64,
    attempted: u64,
    /// Every acknowledged append: its dot and data.
    appended: Vec<(rlog::Dot, Vec<u8>)>,
    buffer: Vec<u8>,
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let faults = NetFaults {
            drop: 0.3,
            duplicate: 0.1,
            corrupt: 0.01,
            latency_min_micros: 100,
            latency_max_micros: 30_000,
        };
        let mut network = SimNetwork::new(seed).with_faults(faults);
        for index in 0..NODES {
            network.add_endpoint(node_addr(index));
        }
        let clients = (0..CLIENTS)
            .map(|index| {
                network.add_endpoint(client_addr(index));
                let id = NodeId(0x8000_0000 | index as u32);
                Client {
                    addr: client_addr(index),
                    wire: Wire::encrypted(CLUSTER, id, 1, key()),
                    current: None,
                    next_send: Instant::ZERO,
                    next_request: 1,
                }
            })
            .collect();
        Self {
            network,
            nodes: (0..NODES).map(|index| Node::new(index, seed)).collect(),
            clients,
            rng: SimRng::new(seed ^ 0xC1A0),
            acknowledged: 0,
            attempted: 0,
            appended: Vec::new(),
            buffer: vec![0; 1400],
        }
    }

    fn now(&self) -> Instant {
        self.network.now()
    }

    /// Steps every running node that has a datagram waiting or a deadline due.
    fn step_nodes(&mut self) {
        let now = self.now();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            let due = node.deadline.is_some_and(|at| at <= now);
            let Some((services, driver)) = node.running.as_mut() else {
                continue;
            };
            if !due && self.network.inbox_len(node.addr) == 0 {
                continue;
            }
            let mut endpoint = self.network.endpoint(node.addr);
            let stepped = driver.step(
                now,
                &mut endpoint,
                services,
                &mut node.rng,
                &mut self.buffer,
            );
            let power_cut = services.0.log().storage().is_power_cut()
                || services.1.log().storage().is_power_cut();
            match stepped {
                Ok(deadline) if !power_cut => node.deadline = deadline,
                // A failed sync poisons the node: it restarts, as its operator would.
                _ => {
                    node.crash(&mut self.network);
                    node.start(index);
                }
            }
        }
    }

    fn step_clients(&mut self, new_requests: bool) {
        let now = self.now();
        for client in &mut self.clients {
            receive_replies(
                client,
                &mut self.network,
                &mut self.acknowledged,
                &mut self.appended,
                &mut self.buffer,
            );
            if client.current.is_none() && new_requests {
                let node = self.rng.below(NODES as u64) as usize;
                let request = if self.rng.chance(0.5) {
                    let by = 1 + self.rng.below(1000);
                    self.attempted += by;
                    Request::Incr(by)
                } else {
                    Request::Append
                };
                client.current = Some((node, client.next_request, request));
                client.next_request += 1;
                client.next_send = now;
            }
            if client.next_send <= now {
                if let Some((node, id, request)) = client.current {
                    send_request(
                        client,
                        &mut self.network,
                        node,
                        id,
                        request,
                        &mut self.buffer,
                    );
                    client.next_send = now + Duration::from_millis(250);
                }
            }
        }
    }

    /// Chaos: a crash, a partition or a heal, at random.
    fn disturb(&mut self) {
        let roll = self.rng.below(100);
        let index = self.rng.below(NODES as u64) as usize;
        if roll < 15 {
            let node = &mut self.nodes[index];
            if node.running.is_some() {
                node.crash(&mut self.network);
                node.start(index);
            }
        } else if roll < 30 {
            // Cut power at one of the node's next storage operations, torn at a random byte.
            let later = 1 + self.rng.below(12);
            if let Some(((counter, _), _)) = self.nodes[index].running.as_mut() {
                let storage = counter.storage_mut();
                storage.set_power_cut_at(storage.ops_done() + later, TornSpec::Random);
            }
        } else if roll < 45 {
            let side: Vec<usize> = (0..NODES).filter(|_| self.rng.chance(0.5)).collect();
            for &a in &side {
                for b in (0..NODES).filter(|b| !side.contains(b)) {
                    self.network.cut_link(node_addr(a), node_addr(b));
                    self.network.cut_link(node_addr(b), node_addr(a));
                }
            }
        } else if roll < 60 {
            self.heal();
        }
    }

    fn heal(&mut self) {
        for a in 0..NODES {
            for b in 0..NODES {
                self.network.restore_link(node_addr(a), node_addr(b));
            }
        }
    }

    /// Moves the clock to the next thing that happens, at most to `limit`.
    fn advance(&mut self, limit: Instant) {
        let node_deadlines = self.nodes.iter().filter_map(|node| node.deadline);
        let client_deadlines = self
            .clients
            .iter()
            .filter(|client| client.current.is_some())
            .map(|client| client.next_send);
        let next = node_deadlines
            .chain(client_deadlines)
            .chain(self.network.next_delivery())
            .min()
            .unwrap_or(limit)
            .min(limit)
            .max(self.now());
        self.network.advance_to(next);
    }

    fn converged(&mut self) -> bool {
        let requests_done = self.clients.iter().all(|client| client.current.is_none());
        let counters = self
            .nodes
            .iter()
            .all(|node| node.value() == Some(self.acknowledged));
        let first_have = self.nodes[0]
            .replica()
            .map(|replica| replica.have().clone());
        let logs = first_have.is_some()
            && self
                .nodes
                .iter_mut()
                .all(|node| node.replica().map(|replica| replica.have().clone()) == first_have);
        requests_done && counters && logs
    }

    /// Checks that every replica lists the same entries and holds every acknowledged append.
    fn check_logs(&mut self, seed: u64) -> Result<(u64, u64), String> {
        let mut listings = Vec::new();
        for node in &mut self.nodes {
            let replica = node
                .replica()
                .ok_or(format!("seed {seed}: a node is down"))?;
            listings.push(read_all(replica)?);
        }
        for (index, listing) in listings.iter().enumerate().skip(1) {
            if listing != &listings[0] {
                return Err(format!(
                    "seed {seed}: node {index}'s log differs from node 0's ({} vs {} entries)",
                    listing.len(),
                    listings[0].len()
                ));
            }
        }
        for (dot, data) in &self.appended {
            let found = listings[0]
                .iter()
                .any(|(d, _, _, bytes)| d == dot && bytes == data);
            if !found {
                return Err(format!(
                    "seed {seed}: acknowledged append {dot:?} is missing"
                ));
            }
        }
        let siblings = listings[0].iter().filter(|entry| entry.2 > 0).count() as u64;
        Ok((listings[0].len() as u64, siblings))
    }
}

fn send_request(
    client: &mut Client,
    network: &mut SimNetwork,
    node: usize,
    id: u64,
    request: Request,
    buffer: &mut [u8],
) {
    let payload_end = buffer.len() - wire::TAG_LEN;
    let area = &mut buffer[wire::HEADER_LEN..payload_end];
    let (kind, len) = match request {
        Request::Incr(by) => (
            kind::COUNTER,
            dcounter::encode(&Message::Incr { request: id, by }, area).unwrap(),
        ),
        Request::Append => {
            let data = append_data(client.addr, id);
            let message = rlog::Message::Append {
                request_id: id,
                data: &data,
            };
            (kind::REPLICATED_LOG, message.encode(area).unwrap())
        }
    };
    let sealed = client.wire.seal(kind, buffer, len).unwrap();
    let _ = network
        .endpoint(client.addr)
        .send(node_addr(node), &buffer[..sealed]);
}

fn receive_replies(
    client: &mut Client,
    network: &mut SimNetwork,
    acknowledged: &mut u64,
    appended: &mut Vec<(rlog::Dot, Vec<u8>)>,
    buffer: &mut [u8],
) {
    while let Ok(Some(received)) = network.endpoint(client.addr).recv(buffer) {
        let Ok(opened) = client.wire.open(&mut buffer[..received.len]) else {
            continue;
        };
        let Some((_, current, request)) = client.current else {
            continue;
        };
        let done = match (opened.kind, request) {
            (kind::COUNTER, Request::Incr(by)) => match dcounter::decode(opened.payload) {
                Ok((Message::Value { request, .. }, _)) if request == current => {
                    *acknowledged += by;
                    true
                }
                _ => false,
            },
            (kind::REPLICATED_LOG, Request::Append) => {
                match rlog::Message::decode(opened.payload) {
                    Some(rlog::Message::Appended { request_id, dot }) if request_id == current => {
                        appended.push((dot, append_data(client.addr, current)));
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if done {
            client.current = None;
        }
    }
}

/// Every entry of a replica in read order: dot, depth, sibling count, data.
/// One entry as a read lists it: dot, depth, sibling count, data.
type Listed = (rlog::Dot, u64, u32, Vec<u8>);

fn read_all(replica: &mut Replica) -> Result<Vec<Listed>, String> {
    let mut entries = Vec::new();
    let mut from = ReadKey::START;
    for _ in 0..100_000 {
        let page = replica
            .read(from, 16, |entry| {
                entries.push((entry.dot, entry.depth, entry.siblings, entry.data.to_vec()));
                true
            })
            .map_err(|error| format!("read failed: {error:?}"))?;
        if page.done {
            return Ok(entries);
        }
        from = page.next;
    }
    Err("the read never ended".to_string())
}

struct Outcome {
    converge_rounds: u64,
    restarts: u32,
    entries: u64,
    siblings: u64,
}

fn run(seed: u64) -> Result<Outcome, String> {
    let mut cluster = Cluster::new(seed);
    let chaos_end = Instant::ZERO + CHAOS;
    let mut next_disturbance = Instant::from_millis(500);
    let mut restarts = 0;
    while cluster.now() < chaos_end {
        cluster.advance(next_disturbance.min(chaos_end));
        if cluster.now() >= next_disturbance {
            cluster.disturb();
            next_disturbance = cluster.now() + Duration::from_millis(200 + cluster.rng.below(1500));
        }
        for (index, node) in cluster.nodes.iter_mut().enumerate() {
            if node.running.is_none() {
                node.start(index);
                restarts += 1;
            }
        }
        cluster.step_nodes();
        cluster.step_clients(true);
        check_bounds(&cluster, seed)?;
    }
    cluster.heal();
    let healed = cluster.now();
    let give_up = healed + CONVERGE_MAX;
    while !cluster.converged() {
        if cluster.now() >= give_up {
            let values: Vec<Option<u64>> = cluster.nodes.iter().map(Node::value).collect();
            return Err(format!(
                "seed {seed}: no convergence {} s after healing: values {values:?}, \
                 acknowledged {}, attempted {}",
                CONVERGE_MAX.as_secs(),
                cluster.acknowledged,
                cluster.attempted
            ));
        }
        cluster.advance(give_up);
        cluster.step_nodes();
        cluster.step_clients(false);
        check_bounds(&cluster, seed)?;
    }
    let converge = cluster.now().saturating_duration_since(healed);
    restarts += cluster.nodes.iter().map(|node| node.crashes).sum::<u32>();
    let (entries, siblings) = cluster.check_logs(seed)?;
    Ok(Outcome {
        converge_rounds: (converge.as_millis() / 200) as u64,
        restarts,
        entries,
        siblings,
    })
}

fn check_bounds(cluster: &Cluster, seed: u64) -> Result<(), String> {
    for (index, node) in cluster.nodes.iter().enumerate() {
        if let Some(value) = node.value() {
            if value > cluster.attempted {
                return Err(format!(
                    "seed {seed}: node {index} counts {value}, more than the {} attempted",
                    cluster.attempted
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn five_nodes_converge_to_the_exact_sum_and_identical_logs() {
    let mut rounds = Vec::new();
    let mut restarts = 0;
    let (mut entries, mut siblings) = (0, 0);
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        match run(seed) {
            Ok(outcome) => {
                rounds.push(outcome.converge_rounds);
                restarts += outcome.restarts;
                entries += outcome.entries;
                siblings += outcome.siblings;
            }
            Err(failure) => failures.push(failure),
        }
    }
    rounds.sort_unstable();
    let percentile = |p: usize| rounds.get(rounds.len() * p / 100).copied().unwrap_or(0);
    println!(
        "sim_cluster: {SEEDS} seeds, 5 nodes, 30% loss, 10% duplication, reordering, partitions, \
         {restarts} crash-restarts; gossip rounds (200 ms) to converge after healing: median {}, \
         p99 {}, max {}",
        percentile(50),
        percentile(99),
        rounds.last().copied().unwrap_or(0)
    );
    println!(
        "sim_cluster: replicated log: {entries} entries on every replica in total, {siblings} \
         of them concurrent with another (siblings)"
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
