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
    fn new(index: usize, nodes: usize, rng: &mut SimRng) -> Self {
        let peers = random_peers(index, nodes, rng);
        let id = NodeId(index as u32 + 1);
        let mut config = dcounter::Config::new(id, 1);
        config.gossip_interval = GOSSIP_INTERVAL;
        config.checkpoint_interval = Duration::from_secs(3600);
        config.log.segment_size = SEGMENT_BYTES;
        let storage = RamStorage::new(8, ERASE_BYTES, 0xFF).expect("a valid geometry");
        let buffer = vec![0; SEGMENT_BYTES as usize + 1024];
        let (mut counter, _) =
            Counter::open(storage, buffer, config, &peers).expect("an empty store opens");
        counter.incr(1).expect("the first increment is staged");
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
}

impl Cluster {
    fn new(nodes: usize, loss: f64, seed: u64) -> Self {
        let faults = NetFaults {
            drop: loss,
            latency_min_micros: 1_000,
            latency_max_micros: 2_000,
            ..NetFaults::NONE
        };
        let mut network = SimNetwork::new(seed).with_faults(faults);
        let mut rng = SimRng::new(seed ^ 0x6055_1B);
        let nodes: Vec<Node> = (0..nodes)
            .map(|index| {
                network.add_endpoint(node_addr(index));
                Node::new(index, nodes, &mut rng)
            })
            .collect();
        Self {
            network,
            total: nodes.len() as u64,
            nodes,
            converged: 0,
            buffer: vec![0; 1400],
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
            let mut endpoint = self.network.endpoint(node.addr);
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
    outbox_full: u64,
}

fn run(nodes: usize, loss: f64, seed: u64) -> Result<Outcome, String> {
    let mut cluster = Cluster::new(nodes, loss, seed);
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

fn report(nodes: usize, loss: f64, seeds: u64) -> Vec<String> {
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        match run(nodes, loss, seed) {
            Ok(outcome) => outcomes.push(outcome),
            Err(failure) => failures.push(failure),
        }
    }
    if !outcomes.is_empty() {
        let mut rounds: Vec<f64> = outcomes.iter().map(|outcome| outcome.rounds).collect();
        rounds.sort_by(f64::total_cmp);
        println!(
            "sim_gossip_scale: N={nodes:>4} loss={:>2.0}% seeds={seeds:>2}: rounds to converge \
             median {:5.1} p99 {:5.1} max {:5.1}; until then per node per round {:6.0} bytes \
             in {:4.1} datagrams; idle afterwards {:4.0} bytes/node/round; outbox drops {}",
            loss * 100.0,
            percentile(&rounds, 50),
            percentile(&rounds, 99),
            rounds[rounds.len() - 1],
            mean(outcomes.iter().map(|outcome| outcome.bytes_per_node_round)),
            mean(
                outcomes
                    .iter()
                    .map(|outcome| outcome.datagrams_per_node_round)
            ),
            mean(
                outcomes
                    .iter()
                    .map(|outcome| outcome.idle_bytes_per_node_round)
            ),
            outcomes
                .iter()
                .map(|outcome| outcome.outbox_full)
                .sum::<u64>(),
        );
    }
    failures
}

#[test]
fn every_node_learns_every_increment_at_ten_hundred_and_a_thousand_nodes() {
    let mut failures = Vec::new();
    for (nodes, seeds) in [(10, 20), (100, 10), (1000, 3)] {
        for loss in [0.0, 0.1] {
            failures.extend(report(nodes, loss, seeds));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
