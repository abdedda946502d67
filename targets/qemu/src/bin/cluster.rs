//! The network half of bedrock on a Cortex-M3: a three-node cluster of distributed counters in
//! one image.
//!
//! Each node has its own RAM NOR flash (behind `NorFlashStorage`), its own
//! `DistributedCounter`, its own `Driver` and encrypted `Wire` (ChaCha20-Poly1305 under a fixed
//! test key), and its own `NalDatagram` socket on an in-firmware loopback UDP stack
//! ([`Switch`]) that drops 20% of datagrams (seeded). Time is virtual: the loop steps every node
//! that has a datagram waiting or a deadline due, and when none has, jumps to the earliest
//! deadline, as the simulator does.
//!
//! One run, for each of [`SEEDS`] seeds (fresh flash, a new loss pattern and gossip jitter):
//!
//! 1. every node takes local increments (`incr`, made durable and acknowledged by the commit of
//!    its next driver step) over [`ROUNDS`] rounds while the cluster gossips; then every node's
//!    counts must equal exactly what each node acknowledged, within [`CONVERGE_MAX`] of virtual
//!    time;
//! 2. power is cut on one node while its flash programs the batch of two staged increments, the
//!    program landing one of [`TORN_PREFIXES`] (in rotation); the step's commit fails and the
//!    step sends nothing; the node reboots from its flash with a new incarnation and must
//!    recover its acknowledged count plus exactly the staged increments whose frames landed
//!    whole (none when fewer bytes than a frame header landed, both when all did), with a torn
//!    tail reported when some but not all bytes landed and no corruption;
//! 3. three more rounds of increments, and the cluster must converge again to the exact total.
//!
//! Exit status 0 when every check passed, 1 on any failed check or panic.
#![no_std]
#![no_main]

use core::fmt::Debug;
use core::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::{Driver, DriverStats};
use bedrock::log::Recovery;
use bedrock::net::{SocketAddr, MTU_MIN};
use bedrock::rng::SplitMix64;
use bedrock::service::CommitFailed;
use bedrock::time::Instant;
use bedrock::wire::{Key, Keyring, Wire};
use bedrock_embedded::embedded_storage::nor_flash::NorFlash;
use bedrock_embedded::{bitmap_bytes, NalDatagram, NorFlashStorage, RamNorFlash};
use bedrock_qemu::switch::{Switch, SwitchStats};
use bedrock_qemu::{
    exit, paint_stack, stack_capacity, stack_lowest_used, stack_top, stack_used_by,
};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

/// Nodes in the image.
const NODES: usize = 3;
/// Nodes a counter can hold (one spare).
const NODES_MAX: usize = 4;
/// Peers each node gossips with.
const PEERS: usize = 2;
/// Requests remembered for retries (only local increments here).
const DONE: usize = 4;
/// Client replies waiting for a sync (no clients here).
const PENDING: usize = 2;
/// Senders in each node's replay table.
const SENDERS: usize = 4;
/// The smallest MTU bedrock supports keeps the datagram buffer small.
const MTU: usize = MTU_MIN;

const FLASH_SIZE: usize = 4 * 1024;
const WRITE_SIZE: usize = 8;
/// One erase block per log segment: 8 segments per node.
const ERASE_SIZE: usize = 512;
/// The lent log buffer: one largest frame (a checkpoint of 4 nodes and 4 requests, 200 bytes
/// padded), one control frame (64) and 248 bytes for the batch of a group commit.
const LOG_BUFFER_LEN: usize = 512;

const CLUSTER: u32 = 0xB0C1;
const KEY: [u8; 32] = *b"bedrock qemu cluster test key 01";
/// Runs, each with its own seed.
const SEEDS: u64 = 16;
const SEED_BASE: u64 = 0x5EED_0000;
/// Datagrams the switch drops, in percent.
const DROP_PERCENT: u64 = 20;
const PORT_BASE: u16 = 7001;

/// Local increment rounds before the first convergence check.
const ROUNDS: u32 = 12;
/// Virtual time between increment rounds.
const ROUND_GAP: Duration = Duration::from_millis(150);
/// The most virtual time the cluster may take to converge.
const CONVERGE_MAX: Duration = Duration::from_secs(20);
/// Loop passes at one instant before time moves on regardless (a service that keeps a past
/// deadline must not stall the loop).
const PASSES_MAX: u32 = 64;
/// Bytes of the power-cut program that land: none, part of the first frame header (24 bytes),
/// the first frame whole (a padded increment frame is 40 bytes) and part of the second, all.
const TORN_PREFIXES: [usize; 4] = [0, 12, 44, usize::MAX];
/// The node whose power is cut.
const VICTIM: usize = 2;

type NodeFlash =
    RamNorFlash<FLASH_SIZE, WRITE_SIZE, ERASE_SIZE, { bitmap_bytes(FLASH_SIZE, WRITE_SIZE) }>;
type LogBuffer = [u8; LOG_BUFFER_LEN];
type NodeStorage = NorFlashStorage<&'static mut NodeFlash>;
type NodeCounter =
    DistributedCounter<NodeStorage, &'static mut LogBuffer, NODES_MAX, PEERS, DONE, PENDING>;
/// Four sockets, 16 queued datagrams, 2 KiB of queued bytes.
type Net = Switch<4, 16, 2048>;
type NodeDatagram = NalDatagram<&'static Net>;
type NodeDriver = Driver<1, SENDERS>;

fn address(index: usize) -> SocketAddr {
    Net::address(PORT_BASE + index as u16)
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u32 + 1)
}

/// The `round`th increment of node `index`: 1..=97, different per node and seed.
fn amount(seed: u64, index: usize, round: u32) -> u64 {
    (u64::from(round) * 37 + index as u64 * 11 + seed * 5) % 97 + 1
}

/// Counts checks and prints the first failures.
#[derive(Default)]
struct Checker {
    seed: u64,
    failures: u32,
}

impl Checker {
    fn check(&mut self, ok: bool, what: &str, detail: impl Debug) -> bool {
        if !ok {
            if self.failures < 10 {
                hprintln!("FAIL seed {:#x}: {} ({:?})", self.seed, what, detail);
            }
            self.failures += 1;
        }
        ok
    }
}

/// A node that is up.
struct Running {
    counter: NodeCounter,
    driver: NodeDriver,
    network: NodeDatagram,
}

/// Driver counts summed over a node's incarnations.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    steps: u64,
    received: u64,
    sent: u64,
    send_failures: u64,
    /// Refused envelopes, cut datagrams and receive errors: none expected (the switch never
    /// corrupts, duplicates or cuts).
    refused: u64,
}

impl Totals {
    const ZERO: Self = Self {
        steps: 0,
        received: 0,
        sent: 0,
        send_failures: 0,
        refused: 0,
    };

    fn add(&mut self, stats: DriverStats) {
        self.steps += stats.steps;
        self.received += stats.received;
        self.sent += stats.sent;
        self.send_failures += stats.send_failures;
        self.refused += stats.rejected + stats.truncated + stats.receive_errors;
    }
}

/// One node: its parts while up, its flash and buffer while down, and what it acknowledged.
struct Node {
    index: usize,
    incarnation: u32,
    running: Option<Running>,
    parked: Option<(&'static mut NodeFlash, &'static mut LogBuffer)>,
    deadline: Option<Instant>,
    rng: SplitMix64,
    /// Its own count, as far as commits acknowledged it (or recovery found it durable).
    acknowledged: u64,
    /// Increments staged since the last commit.
    staged: u64,
    /// Driver counts of earlier incarnations.
    totals: Totals,
}

impl Node {
    /// A node with no flash yet, in a `static`.
    const fn new(index: usize) -> Self {
        Self {
            index,
            incarnation: 0,
            running: None,
            parked: None,
            deadline: None,
            rng: SplitMix64::new(0),
            acknowledged: 0,
            staged: 0,
            totals: Totals::ZERO,
        }
    }

    fn port(&self) -> u16 {
        PORT_BASE + self.index as u16
    }

    /// Powers the node off, erases its flash and forgets everything: ready for run `seed`.
    fn reset(&mut self, seed: u64, switch: &Net) {
        self.power_off(switch);
        if let Some((flash, _)) = self.parked.as_mut() {
            // A whole-flash erase of a valid geometry cannot fail with power on.
            let _ = flash.erase(0, FLASH_SIZE as u32);
            flash.reset_counters();
        }
        *self = Self {
            parked: self.parked.take(),
            rng: SplitMix64::new(seed ^ (self.index as u64 + 1).wrapping_mul(0x9E37_79B9)),
            ..Self::new(self.index)
        };
    }

    /// Boots the node from its flash with the next incarnation.
    #[inline(never)]
    fn start(&mut self, switch: &'static Net) -> Result<Recovery, &'static str> {
        let (flash, buffer) = self.parked.take().ok_or("no flash to boot from")?;
        self.incarnation += 1;
        let id = node_id(self.index);
        let mut config = dcounter::Config::new(id, self.incarnation);
        config.checkpoint_every = 4;
        config.checkpoint_interval = Duration::from_secs(1);
        // Raised by `open` to the largest checkpoint, 170 bytes.
        config.log.payload_max = 0;
        let mut peers = [address(0); PEERS];
        let others = (0..NODES).filter(|&other| other != self.index);
        for (peer, other) in peers.iter_mut().zip(others) {
            *peer = address(other);
        }
        let storage = NorFlashStorage::new(flash).map_err(|_| "flash geometry refused")?;
        let (counter, recovery) = NodeCounter::open(storage, buffer, config, &peers)
            .map_err(|_| "DistributedCounter::open failed")?;
        let key = Keyring::new(Key::new(1, KEY));
        let wire = Wire::encrypted(CLUSTER, id, self.incarnation, key);
        let network =
            NalDatagram::bind(switch, self.port(), MTU).map_err(|_| "socket bind refused")?;
        self.running = Some(Running {
            counter,
            driver: Driver::new(wire),
            network,
        });
        self.deadline = Some(Instant::ZERO);
        Ok(recovery)
    }

    /// Power is gone: staged writes and queued datagrams are lost; the flash keeps what it
    /// programmed.
    #[inline(never)]
    fn power_off(&mut self, switch: &Net) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.totals.add(running.driver.stats());
        let (storage, buffer) = running.counter.into_parts();
        let flash = storage.into_inner();
        flash.restore_power();
        // Closing a switch socket cannot fail.
        let _ = running.network.close();
        switch.clear_port(self.port());
        self.parked = Some((flash, buffer));
        self.staged = 0;
        self.deadline = None;
    }

    /// A local increment, staged now and acknowledged by the next step's commit.
    fn incr(&mut self, now: Instant, by: u64, checker: &mut Checker) {
        let Some(running) = self.running.as_mut() else {
            checker.check(false, "increment on a node that is down", self.index);
            return;
        };
        let result = running.counter.incr(by);
        if checker.check(result.is_ok(), "incr refused", result) {
            self.staged += by;
        }
        // A local call wakes the loop: the next step commits it.
        self.deadline = Some(now);
    }

    /// One driver step; a failed commit leaves the staged increments unacknowledged.
    fn step(&mut self, now: Instant, buffer: &mut [u8]) -> Result<(), CommitFailed> {
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        let result = running.driver.step(
            now,
            &mut running.network,
            &mut running.counter,
            &mut self.rng,
            buffer,
        );
        self.deadline = *result.as_ref().unwrap_or(&None);
        result?;
        self.acknowledged += self.staged;
        self.staged = 0;
        Ok(())
    }

    fn is_due(&self, now: Instant, switch: &Net) -> bool {
        self.running.is_some()
            && (self.deadline.is_some_and(|at| at <= now) || switch.waiting(self.port()) > 0)
    }

    fn counter(&self) -> Option<&NodeCounter> {
        self.running.as_ref().map(|running| &running.counter)
    }

    fn flash_mut(&mut self) -> Option<&mut NodeFlash> {
        let running = self.running.as_mut()?;
        Some(&mut **running.counter.storage_mut().flash_mut())
    }

    fn totals(&self) -> Totals {
        let mut totals = self.totals;
        if let Some(running) = &self.running {
            totals.add(running.driver.stats());
        }
        totals
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    total: u64,
    /// Virtual time from the last increment round to convergence, before and after the cut.
    converge: [Duration; 2],
    /// Virtual time at the end of the run.
    end: Duration,
    /// How much of the two staged increments the rebooted node recovered.
    recovered_staged: u64,
    lost_staged: u64,
    switch: SwitchStats,
    steps: u64,
}

struct Cluster {
    switch: &'static Net,
    nodes: &'static mut [Node; NODES],
    now: Instant,
    /// The datagram buffer every driver step borrows (steps run one at a time).
    buffer: [u8; MTU + 4],
    checker: Checker,
    seed: u64,
}

impl Cluster {
    /// Steps every node with a datagram waiting or a deadline due, until none has.
    fn settle(&mut self) {
        for _ in 0..PASSES_MAX {
            let mut stepped = false;
            for node in self.nodes.iter_mut() {
                if !node.is_due(self.now, self.switch) {
                    continue;
                }
                stepped = true;
                let result = node.step(self.now, &mut self.buffer);
                let detail = (node.index, result);
                self.checker
                    .check(result.is_ok(), "a commit failed with power on", detail);
            }
            if !stepped {
                return;
            }
        }
    }

    /// Runs the loop until `done` holds (returning the instant it first held after a settled
    /// step) or virtual time would pass `limit`.
    fn run_until(&mut self, limit: Instant, done: impl Fn(&Self) -> bool) -> Option<Instant> {
        loop {
            self.settle();
            if done(self) {
                return Some(self.now);
            }
            let next = self.nodes.iter().filter_map(|node| node.deadline).min()?;
            if next > limit {
                self.now = limit;
                return None;
            }
            // Past deadlines that a settle did not clear must not stall time.
            self.now = next.max(self.now + Duration::from_micros(1));
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let limit = self.now + duration;
        self.run_until(limit, |_| false);
    }

    /// Whether every running node holds exactly every node's acknowledged count.
    fn converged(&self) -> bool {
        self.nodes.iter().all(|node| {
            node.counter().is_some_and(|counter| {
                self.nodes
                    .iter()
                    .all(|other| counter.counts().get(node_id(other.index)) == other.acknowledged)
            })
        })
    }

    fn total(&self) -> u64 {
        self.nodes.iter().map(|node| node.acknowledged).sum()
    }

    /// Runs until converged, checks it happened within [`CONVERGE_MAX`] and that every value is
    /// the total, and returns how long it took.
    fn converge(&mut self, what: &str) -> Duration {
        let start = self.now;
        let reached = self.run_until(start + CONVERGE_MAX, Self::converged);
        let took = self.now.saturating_duration_since(start);
        if !self.checker.check(reached.is_some(), what, took) {
            for node in self.nodes.iter() {
                if let Some(counter) = node.counter() {
                    hprintln!(
                        "  node {}: acknowledged {}, value {}, counts {:?}",
                        node.index,
                        node.acknowledged,
                        counter.value(),
                        counter.counts()
                    );
                }
            }
        }
        let total = self.total();
        for node in self.nodes.iter() {
            let value = node.counter().map(NodeCounter::value);
            let detail = (node.index, value, total);
            self.checker
                .check(value == Some(total), "a node's value", detail);
        }
        took
    }

    /// Increment rounds: every node increments, sometimes twice in one commit, while the
    /// cluster gossips.
    fn increment_rounds(&mut self, rounds: core::ops::Range<u32>) {
        for round in rounds {
            for node in self.nodes.iter_mut() {
                let by = amount(self.seed, node.index, round);
                node.incr(self.now, by, &mut self.checker);
                if (round + node.index as u32) % 4 == 3 {
                    let by = amount(self.seed, node.index, round + 100);
                    node.incr(self.now, by, &mut self.checker);
                }
            }
            self.run_for(ROUND_GAP);
        }
    }

    /// Cuts the victim's power during the commit of two staged increments, `torn` bytes of the
    /// batch landing, reboots it, and checks what it recovered. Returns the amounts of the
    /// staged increments that were recovered and lost.
    fn power_cut(&mut self, torn: usize) -> (u64, u64) {
        let now = self.now;
        let switch = self.switch;
        let staged = [
            amount(self.seed, VICTIM, 200),
            amount(self.seed, VICTIM, 201),
        ];
        let node = &mut self.nodes[VICTIM];
        let acknowledged = node.acknowledged;
        for by in staged {
            node.incr(now, by, &mut self.checker);
        }
        if let Some(flash) = node.flash_mut() {
            flash.cut_power_after(0, torn);
        }
        let sent = node.totals().sent;
        let result = node.step(now, &mut self.buffer);
        self.checker.check(
            result.is_err(),
            "the commit under a power cut succeeded",
            result,
        );
        // Nothing was queued to send, so nothing may leave the node after its failed commit:
        // a push now would carry increments the node is about to lose.
        let sent_after = node.totals().sent - sent;
        self.checker
            .check(sent_after == 0, "sent after the failed commit", sent_after);
        node.power_off(switch);
        let recovery = match node.start(switch) {
            Ok(recovery) => recovery,
            Err(why) => {
                self.checker.check(false, why, ());
                return (0, 0);
            }
        };
        let own = node
            .counter()
            .map_or(0, |counter| counter.counts().get(node_id(VICTIM)));
        // A frame lands whole or not at all: fewer bytes than a frame header keep neither
        // increment, the whole batch keeps both, and in between the first frame lands whole.
        let expected = match torn {
            0..bedrock::frame::HEADER_LEN => acknowledged,
            usize::MAX => acknowledged + staged[0] + staged[1],
            _ => acknowledged + staged[0],
        };
        let detail = (torn, own, acknowledged, staged);
        self.checker
            .check(own == expected, "recovered own count", detail);
        self.checker.check(
            recovery.corruption.is_none(),
            "corruption after the cut",
            recovery,
        );
        // A program that landed no byte leaves erased words: nothing to see, no torn tail.
        let torn_tail = recovery.torn_tail.is_some() == (torn != 0 && torn != usize::MAX);
        self.checker
            .check(torn_tail, "torn tail after the cut", recovery);
        // What recovery found is durable: it counts, acknowledged or not.
        let node = &mut self.nodes[VICTIM];
        node.acknowledged = own;
        let recovered = own - acknowledged;
        (recovered, staged[0] + staged[1] - recovered)
    }

    fn print_nodes(&self) {
        for node in self.nodes.iter() {
            let Some(running) = &node.running else {
                continue;
            };
            let totals = node.totals();
            let counter = running.counter.stats();
            let flash = running.counter.log().storage().flash().counters();
            hprintln!(
                "  node {} (incarnation {}): own {}, value {}; driver: {} steps, {} received, {} sent, {} send failures; counter: {} rounds, {} pushes sent, {} merged, {} checkpoints, {} syncs; flash: {} programs, {} erases",
                node.index,
                node.incarnation,
                node.acknowledged,
                running.counter.value(),
                totals.steps,
                totals.received,
                totals.sent,
                totals.send_failures,
                counter.rounds,
                counter.pushes_sent,
                counter.pushes_merged,
                counter.checkpoints,
                counter.syncs,
                flash.writes,
                flash.erases
            );
        }
    }

    /// Checks that no envelope was refused or cut: the switch drops but never corrupts.
    fn check_wire(&mut self) {
        for index in 0..NODES {
            let refused = self.nodes[index].totals().refused;
            self.checker
                .check(refused == 0, "refused or cut datagrams", (index, refused));
        }
    }

    /// One whole run with `seed`; see the module docs.
    fn run(&mut self, seed: u64, torn: usize, verbose: bool) -> Summary {
        self.seed = seed;
        self.checker.seed = seed;
        self.now = Instant::ZERO;
        self.switch.reset(seed);
        for node in self.nodes.iter_mut() {
            node.reset(seed, self.switch);
            if let Err(why) = node.start(self.switch) {
                self.checker.check(false, why, node.index);
            }
        }
        let mut summary = Summary::default();
        self.increment_rounds(0..ROUNDS);
        summary.converge[0] = self.converge("no convergence after the increments");
        if verbose {
            hprintln!(
                "seed {:#x}: {} increment rounds {} ms apart; own counts {} / {} / {}, total {}, converged {} ms after the last round",
                seed,
                ROUNDS,
                ROUND_GAP.as_millis(),
                self.nodes[0].acknowledged,
                self.nodes[1].acknowledged,
                self.nodes[2].acknowledged,
                self.total(),
                summary.converge[0].as_millis()
            );
            self.print_nodes();
        }
        (summary.recovered_staged, summary.lost_staged) = self.power_cut(torn);
        self.increment_rounds(ROUNDS..ROUNDS + 3);
        summary.converge[1] = self.converge("no convergence after the power cut");
        self.check_wire();
        summary.total = self.total();
        summary.end = self.now.saturating_duration_since(Instant::ZERO);
        summary.switch = self.switch.stats();
        summary.steps = self.nodes.iter().map(|node| node.totals().steps).sum();
        if verbose {
            hprintln!(
                "  power cut on node {} during the commit of 2 staged increments, torn at {:?} B: {} recovered, {} lost; rebooted, 3 more rounds, total {}, converged {} ms after the last round",
                VICTIM,
                Torn(torn),
                summary.recovered_staged,
                summary.lost_staged,
                summary.total,
                summary.converge[1].as_millis()
            );
            self.print_nodes();
        }
        summary
    }
}

/// A torn prefix as printed: `all` for `usize::MAX`.
struct Torn(usize);

impl Debug for Torn {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            usize::MAX => formatter.write_str("all"),
            bytes => write!(formatter, "{bytes}"),
        }
    }
}

/// Every seed; prints one line per run and the worst figures.
fn run_all(cluster: &mut Cluster) {
    let mut converge_max = Duration::ZERO;
    let (mut sent, mut dropped, mut steps, mut arena_peak) = (0, 0, 0, 0);
    for run in 0..SEEDS {
        let seed = SEED_BASE + run;
        let torn = TORN_PREFIXES[run as usize % TORN_PREFIXES.len()];
        let summary = cluster.run(seed, torn, run == 0);
        let switch = summary.switch;
        hprintln!(
            "run {:2} seed {:#x}: total {}, converged in {} / {} ms, cut torn at {:?} B kept {} lost {}; {} datagrams, {} dropped; {} steps, {} ms virtual",
            run,
            seed,
            summary.total,
            summary.converge[0].as_millis(),
            summary.converge[1].as_millis(),
            Torn(torn),
            summary.recovered_staged,
            summary.lost_staged,
            switch.sent,
            switch.dropped,
            summary.steps,
            summary.end.as_millis()
        );
        converge_max = converge_max
            .max(summary.converge[0])
            .max(summary.converge[1]);
        sent += switch.sent;
        dropped += switch.dropped;
        steps += summary.steps;
        arena_peak = arena_peak.max(switch.arena_peak);
    }
    hprintln!(
        "{} runs: {} driver steps, {} datagrams, {} dropped ({}%); slowest convergence {} ms of virtual time (bound {} s); switch queue peak {} B",
        SEEDS,
        steps,
        sent,
        dropped,
        dropped * 100 / sent.max(1),
        converge_max.as_millis(),
        CONVERGE_MAX.as_secs(),
        arena_peak
    );
}

/// The deepest stack that booting a node and that the loop's driver steps use (one more run
/// of the first seed, measured in parts).
fn measure_stacks(cluster: &mut Cluster) -> (usize, usize) {
    cluster.switch.reset(SEED_BASE);
    let mut boot = 0;
    for index in 0..NODES {
        let switch = cluster.switch;
        let node = &mut cluster.nodes[index];
        node.reset(SEED_BASE, switch);
        let (result, used) = stack_used_by(|| node.start(switch));
        cluster
            .checker
            .check(result.is_ok(), "boot for the stack figure", index);
        boot = boot.max(used);
    }
    cluster.now = Instant::ZERO;
    cluster.seed = SEED_BASE;
    let ((), step) = stack_used_by(|| cluster.increment_rounds(0..ROUNDS));
    (boot, step)
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` references, usable once.
    static mut FLASHES: [NodeFlash; NODES] = [NodeFlash::new(), NodeFlash::new(), NodeFlash::new()];
    static mut BUFFERS: [LogBuffer; NODES] = [[0; LOG_BUFFER_LEN]; NODES];
    static mut SWITCH: Net = Net::new(SEED_BASE, DROP_PERCENT);
    static mut NODE_STATES: [Node; NODES] = [Node::new(0), Node::new(1), Node::new(2)];
    let switch: &'static Net = SWITCH;
    let nodes: &'static mut [Node; NODES] = NODE_STATES;
    for ((node, flash), buffer) in nodes
        .iter_mut()
        .zip(FLASHES.iter_mut())
        .zip(BUFFERS.iter_mut())
    {
        node.parked = Some((flash, buffer));
    }
    paint_stack();
    hprintln!(
        "bedrock cluster: {} distributed counters (N={}, P={}, DONE={}, PENDING={}), each on a {} KiB RAM NOR flash (erase {} B) with a {} B log buffer, an encrypted wire and a NalDatagram socket (MTU {}) on a loopback switch dropping {}% of datagrams",
        NODES,
        NODES_MAX,
        PEERS,
        DONE,
        PENDING,
        FLASH_SIZE / 1024,
        ERASE_SIZE,
        LOG_BUFFER_LEN,
        MTU,
        DROP_PERCENT
    );
    let mut cluster = Cluster {
        switch,
        nodes,
        now: Instant::ZERO,
        buffer: [0; MTU + 4],
        checker: Checker::default(),
        seed: 0,
    };
    let ((), run_stack) = stack_used_by(|| run_all(&mut cluster));
    // Before `measure_stacks` paints the stack again.
    let peak_stack = stack_top() - stack_lowest_used();
    let (boot_stack, step_stack) = measure_stacks(&mut cluster);
    hprintln!(
        "memory: a node {} B (counter {} B, driver {} B with wire, socket {} B), switch {} B, flash mock {} B, log buffer {} B: {} B of statics in all",
        core::mem::size_of::<Node>(),
        core::mem::size_of::<NodeCounter>(),
        core::mem::size_of::<NodeDriver>(),
        core::mem::size_of::<NodeDatagram>(),
        core::mem::size_of::<Net>(),
        core::mem::size_of::<NodeFlash>(),
        LOG_BUFFER_LEN,
        NODES
            * (core::mem::size_of::<Node>()
                + core::mem::size_of::<NodeFlash>()
                + LOG_BUFFER_LEN)
            + core::mem::size_of::<Net>()
    );
    hprintln!(
        "stack: booting a node (open, recovery, wire, bind) {} B, driver steps (receive, open, merge, commit, seal, send) {} B, the runs {} B; whole firmware peak {} B (main's frame holds the {} B datagram buffer) of {} B",
        boot_stack,
        step_stack,
        run_stack,
        peak_stack,
        MTU + 4,
        stack_capacity()
    );
    let passed = cluster.checker.failures == 0;
    hprintln!(
        "{}: {} failed checks",
        if passed { "PASS" } else { "FAIL" },
        cluster.checker.failures
    );
    exit(passed)
}
