//! How the distributed counter's gossip scales: N = 10, 100 and 1000 nodes over the simulated
//! network, with 0% and 10% loss (latency 1–2 ms, no duplication, no corruption, no crashes).
//!
//! Every node increments its own entry once at t = 0 (the heaviest case for the deltas: every
//! node must learn N entries), then the cluster gossips until every node's value is N. Printed
//! per (N, loss), over several seeds: gossip rounds to converge (median, p99, max), payload
//! bytes (sealed envelopes, as `SimNetwork::endpoint_counters` counts them) and datagrams sent
//! per node per round until convergence, and the same per node per round for a few rounds after
//! convergence (the idle cost).
//!
//! Peers: a node is configured with [`PEERS_CONFIGURED`] distinct random peers (all others when
//! N is smaller) and keeps up to [`PEERS_MAX`], learning the nodes that push to it. A full peer
//! table of N would cost N peer records per node and, since a first contact carries a node's
//! whole state, more full-state transfers; a bounded random subset keeps the graph connected
//! (16 random out-neighbours per node) and lets the per-peer acknowledgements work as deltas.
//!
//! Asserted: every node reaches the exact total within [`ROUNDS_MAX`] rounds, and no merge was
//! refused for capacity. Nothing is timed: rounds are virtual time (200 ms each).
//!
//! Storage: a [`RamStorage`] of two 16 KiB segments per node (a checkpoint of 1024 entries needs
//! up to ~15.5 KiB, so a segment must hold that), and a checkpoint interval of an hour of virtual
//! time, so that checkpoints (storage only, no network effect) are rare.

use std::net::SocketAddr;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::Driver;
use bedrock::net::{Datagram, Received, RecvError, SendError};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use bedrock::wire::{Key, Keyring, Wire};
use bedrock_sim::{NetFaults, SimNetwork, SimRng};

/// Most nodes a counter holds (the largest cluster simulated fits).
const NODES_MAX: usize = 1024;
/// Peer records per node: the configured ones plus those learned from pushes.
const PEERS_MAX: usize = 32;
/// Random peers each node is configured with.
const PEERS_CONFIGURED: usize = 16;
/// Replay windows per node: every peer it may hear from.
const SENDERS: usize = 64;
/// Bytes of one node's storage: two segments.
const STORE_BYTES: usize = 32 << 10;
const SEGMENT_BYTES: u32 = 16 << 10;
const ERASE_BYTES: u32 = 4096;
/// Virtual-time granularity of the harness: datagrams and deadlines are handled at the next tick.
const TICK: Duration = Duration::from_millis(1);
const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Convergence must happen within this many rounds (generous: the protocol needs far fewer).
const ROUNDS_MAX: u64 = 300;
/// Rounds run after convergence to measure the idle cost.
const IDLE_ROUNDS: u64 = 5;
const CLUSTER: u32 = 0x5CA1E;
/// Sealed datagrams longer than this carry entries: an ack or an empty push is at most 36 bytes
/// of envelope and 27 of message.
const CARRIES_ENTRIES: usize = 64;

const _: () = assert!(
    SEGMENT_BYTES as usize >= dcounter::checkpoint_len_max(NODES_MAX, 4) + 256,
    "a segment holds a checkpoint of every node"
);
const _: () = assert!(STORE_BYTES / SEGMENT_BYTES as usize >= 2);
const _: () = assert!(PEERS_CONFIGURED < PEERS_MAX && PEERS_MAX <= SENDERS);

type Counter = DistributedCounter<RamStorage<STORE_BYTES>, Vec<u8>, NODES_MAX, PEERS_MAX, 4, 4>;

fn node_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (index >> 8) as u8, (index & 0xFF) as u8], 7000))
}

struct Node {
    addr: SocketAddr,
    counter: Counter,
    driver: Driver<1, SENDERS>,
    rng: SimRng,
    deadline: Option<Instant>,
    converged: bool,
}

impl Node {
    fn new(index: usize, scenario: &Scenario, increments: bool, rng: &mut SimRng) -> Self {
        let nodes = scenario.nodes;
        let peers = random_peers(index, nodes, rng);
        let id = NodeId(index as u32 + 1);
        let mut config = dcounter::Config::new(id, 1);
        config.gossip_interval = GOSSIP_INTERVAL;
        config.chunks_per_round = scenario.chunks_per_round;
        config.checkpoint_interval = Duration::from_secs(3600);
        config.log.segment_size = SEGMENT_BYTES;
        let storage = RamStorage::new(8, ERASE_BYTES, 0xFF).expect("a valid geometry");
        let buffer = vec![0; SEGMENT_BYTES as usize + 1024];
        let (mut counter, _) =
            Counter::open(storage, buffer, config, &peers).expect("an empty store opens");
        if increments {
            counter.incr(1).expect("the first increment is staged");
        }
        let keys = Keyring::new(Key::new(1, [0x5A; 32]));
        Self {
            addr: node_addr(index),
            counter,
            driver: Driver::new(Wire::encrypted(CLUSTER, id, 1, keys)),
            rng: rng.fork(),
            deadline: Some(Instant::ZERO),
            converged: false,
        }
    }
}

/// `PEERS_CONFIGURED` distinct random nodes other than `index`, or all of them when fewer.
fn random_peers(index: usize, nodes: usize, rng: &mut SimRng) -> Vec<SocketAddr> {
    let mut others: Vec<usize> = (0..nodes).filter(|&other| other != index).collect();
    let wanted = PEERS_CONFIGURED.min(others.len());
    // A partial Fisher–Yates shuffle: the first `wanted` are a uniform random subset.
    for slot in 0..wanted {
        let pick = slot + rng.below((others.len() - slot) as u64) as usize;
        others.swap(slot, pick);
    }
    others.truncate(wanted);
    others.into_iter().map(node_addr).collect()
}

struct Cluster {
    network: SimNetwork,
    nodes: Vec<Node>,
    total: u64,
    converged: usize,
    buffer: Vec<u8>,
    sizes: Sizes,
}

/// Which nodes increment at t = 0.
#[derive(Debug, Clone, Copy)]
enum Writers {
    /// Every node: each must learn N entries.
    All,
    /// This many random nodes: the spread of a few changes.
    Few(usize),
}

impl Writers {
    fn choose(self, nodes: usize, rng: &mut SimRng) -> Vec<usize> {
        match self {
            Self::All => (0..nodes).collect(),
            Self::Few(count) => {
                let mut chosen = Vec::new();
                while chosen.len() < count.min(nodes) {
                    let index = rng.below(nodes as u64) as usize;
                    if !chosen.contains(&index) {
                        chosen.push(index);
                    }
                }
                chosen
            }
        }
    }

    fn label(self) -> String {
        match self {
            Self::All => "all nodes increment".to_string(),
            Self::Few(count) => format!("{count} nodes increment"),
        }
    }
}

/// Sizes of the datagrams that carry entries (longer than any ack or empty push).
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    count: u64,
    bytes: u64,
    largest: usize,
}

/// An endpoint that records the sizes of what it sends.
struct Recording<'a, D> {
    inner: D,
    sizes: &'a mut Sizes,
}

impl<D: Datagram> Datagram for Recording<'_, D> {
    type Error = D::Error;

    fn mtu(&self) -> usize {
        self.inner.mtu()
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<Self::Error>> {
        if bytes.len() > CARRIES_ENTRIES {
            self.sizes.count += 1;
            self.sizes.bytes += bytes.len() as u64;
            self.sizes.largest = self.sizes.largest.max(bytes.len());
        }
        self.inner.send(to, bytes)
    }

    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<Self::Error>> {
        self.inner.recv(buffer)
    }
}

impl Cluster {
    fn new(scenario: &Scenario, seed: u64) -> Self {
        let nodes = scenario.nodes;
        let faults = NetFaults {
            drop: scenario.loss,
            latency_min_micros: 1_000,
            latency_max_micros: 2_000,
            ..NetFaults::NONE
        };
        let mut network = SimNetwork::new(seed).with_faults(faults);
        let mut rng = SimRng::new(seed ^ 0x0060_551B);
        let incrementing = scenario.writers.choose(nodes, &mut rng);
        let nodes: Vec<Node> = (0..nodes)
            .map(|index| {
                network.add_endpoint(node_addr(index));
                Node::new(index, scenario, incrementing.contains(&index), &mut rng)
            })
            .collect();
        Self {
            network,
            total: incrementing.len() as u64,
            nodes,
            converged: 0,
            buffer: vec![0; 1400],
            sizes: Sizes::default(),
        }
    }

    /// Steps every node with a datagram waiting or a deadline due.
    fn step(&mut self) {
        let now = self.network.now();
        for node in &mut self.nodes {
            let due = node.deadline.is_some_and(|at| at <= now);
            if !due && self.network.inbox_len(node.addr) == 0 {
                continue;
            }
            let mut endpoint = Recording {
                inner: self.network.endpoint(node.addr),
                sizes: &mut self.sizes,
            };
            node.deadline = node
                .driver
                .step(
                    now,
                    &mut endpoint,
                    &mut node.counter,
                    &mut node.rng,
                    &mut self.buffer,
                )
                .expect("RAM storage never fails");
            // Counts only grow: once exact, a node stays exact.
            if !node.converged && node.counter.value() == self.total {
                node.converged = true;
                self.converged += 1;
            }
        }
    }

    /// Moves the clock to the tick of the next delivery or deadline.
    fn advance(&mut self) {
        let now = self.network.now();
        let next = self
            .nodes
            .iter()
            .filter_map(|node| node.deadline)
            .chain(self.network.next_delivery())
            .min()
            .unwrap_or(now + TICK);
        let tick = TICK.as_micros() as u64;
        let rounded = next.as_micros().div_ceil(tick) * tick;
        self.network
            .advance_to(Instant::from_micros(rounded).max(now + TICK));
    }

    fn bytes_and_datagrams_sent(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(bytes, datagrams), node| {
            let counters = self.network.endpoint_counters(node.addr);
            (
                bytes + counters.bytes_sent,
                datagrams + counters.datagrams_sent,
            )
        })
    }

    fn rounds(&self) -> f64 {
        self.network.now().as_micros() as f64 / GOSSIP_INTERVAL.as_micros() as f64
    }
}

/// One run's figures.
struct Outcome {
    rounds: f64,
    bytes_per_node_round: f64,
    datagrams_per_node_round: f64,
    idle_bytes_per_node_round: f64,
    /// Bytes sent per node until convergence, per entry the node had to learn.
    bytes_per_entry_learned: f64,
    sizes: Sizes,
    outbox_full: u64,
}

fn run(scenario: &Scenario, seed: u64) -> Result<Outcome, String> {
    let nodes = scenario.nodes;
    let loss = scenario.loss;
    let mut cluster = Cluster::new(scenario, seed);
    let give_up = Instant::ZERO + GOSSIP_INTERVAL * ROUNDS_MAX as u32;
    while cluster.converged < nodes {
        if cluster.network.now() >= give_up {
            let behind = nodes - cluster.converged;
            let lowest = cluster.nodes.iter().map(|node| node.counter.value()).min();
            return Err(format!(
                "N={nodes} loss={loss} seed {seed}: {behind} nodes short of the total {} after \
                 {ROUNDS_MAX} rounds (lowest value {lowest:?})",
                cluster.total
            ));
        }
        cluster.step();
        cluster.advance();
    }
    let rounds = cluster.rounds();
    let (bytes, datagrams) = cluster.bytes_and_datagrams_sent();
    let sizes = cluster.sizes;
    let idle_end = cluster.network.now() + GOSSIP_INTERVAL * IDLE_ROUNDS as u32;
    while cluster.network.now() < idle_end {
        cluster.step();
        cluster.advance();
    }
    let idle_rounds = cluster.rounds() - rounds;
    let (bytes_after, _) = cluster.bytes_and_datagrams_sent();
    let mut outbox_full = 0;
    for node in &cluster.nodes {
        let stats = node.counter.stats();
        if stats.capacity_refusals > 0 {
            return Err(format!(
                "N={nodes} seed {seed}: {} merges refused for capacity",
                stats.capacity_refusals
            ));
        }
        outbox_full += stats.outbox_full;
    }
    let per_node_round = |amount: u64, rounds: f64| amount as f64 / nodes as f64 / rounds;
    Ok(Outcome {
        rounds,
        bytes_per_node_round: per_node_round(bytes, rounds),
        datagrams_per_node_round: per_node_round(datagrams, rounds),
        idle_bytes_per_node_round: per_node_round(bytes_after - bytes, idle_rounds),
        bytes_per_entry_learned: bytes as f64 / nodes as f64 / cluster.total as f64,
        sizes,
        outbox_full,
    })
}

fn percentile(sorted: &[f64], percent: usize) -> f64 {
    let index = (sorted.len() * percent / 100).min(sorted.len() - 1);
    sorted[index]
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0), |(sum, count), value| (sum + value, count + 1));
    sum / f64::from(count.max(1))
}

fn report(scenario: &Scenario, seeds: u64) -> Vec<String> {
    let Scenario {
        writers,
        nodes,
        loss,
        chunks_per_round,
    } = *scenario;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        match run(scenario, seed) {
            Ok(outcome) => outcomes.push(outcome),
            Err(failure) => failures.push(failure),
        }
    }
    if outcomes.is_empty() {
        return failures;
    }
    let mut rounds: Vec<f64> = outcomes.iter().map(|outcome| outcome.rounds).collect();
    rounds.sort_by(f64::total_cmp);
    let average = |figure: fn(&Outcome) -> f64| mean(outcomes.iter().map(figure));
    let (carrying, carried_bytes, largest) =
        outcomes
            .iter()
            .fold((0, 0, 0), |(count, bytes, largest), outcome| {
                let sizes = outcome.sizes;
                (
                    count + sizes.count,
                    bytes + sizes.bytes,
                    largest.max(sizes.largest),
                )
            });
    println!(
        "sim_gossip_scale: {}, {chunks_per_round} chunks/round, N={nodes:>4}, loss {:>2.0}%, \
         {seeds:>2} seeds: rounds to converge \
         median {:4.1} p99 {:4.1} max {:4.1}; until then per node per round {:5.0} bytes in {:4.1} \
         datagrams, {:5.1} bytes per entry learned; datagrams carrying entries {:3.0} bytes on \
         average, largest {largest}; afterwards {:4.0} bytes/node/round ({IDLE_ROUNDS} rounds); \
         outbox drops {}",
        writers.label(),
        loss * 100.0,
        percentile(&rounds, 50),
        percentile(&rounds, 99),
        rounds[rounds.len() - 1],
        average(|outcome| outcome.bytes_per_node_round),
        average(|outcome| outcome.datagrams_per_node_round),
        average(|outcome| outcome.bytes_per_entry_learned),
        carried_bytes as f64 / carrying.max(1) as f64,
        average(|outcome| outcome.idle_bytes_per_node_round),
        outcomes
            .iter()
            .map(|outcome| outcome.outbox_full)
            .sum::<u64>(),
    );
    failures
}

/// One simulated configuration.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    writers: Writers,
    nodes: usize,
    loss: f64,
    /// The counter's `Config::chunks_per_round` (default 4).
    chunks_per_round: u32,
}

fn scale(writers: Writers, chunks_per_round: u32, sizes: &[(usize, u64)]) {
    let mut failures = Vec::new();
    for &(nodes, seeds) in sizes {
        for loss in [0.0, 0.1] {
            let scenario = Scenario {
                writers,
                nodes,
                loss,
                chunks_per_round,
            };
            failures.extend(report(&scenario, seeds));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_node_learns_every_nodes_increment_at_ten_hundred_and_a_thousand_nodes() {
    scale(Writers::All, 4, &[(10, 20), (100, 10), (1000, 3)]);
}

#[test]
fn a_few_increments_reach_every_node_at_ten_hundred_and_a_thousand_nodes() {
    scale(Writers::Few(5), 4, &[(10, 20), (100, 10), (1000, 3)]);
}

/// Three times the entries per round: how much of the convergence time at N = 1000 is the cap
/// on what one round may carry.
#[test]
fn more_chunks_per_round_shorten_convergence_at_a_thousand_nodes() {
    scale(Writers::All, 12, &[(1000, 1)]);
}
