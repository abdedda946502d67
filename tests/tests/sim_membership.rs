//! Seeded simulation of the membership service (SWIM + Lifeguard + push-pull, SPEC.md §12) at
//! N = 3 to 1000 nodes, with 0% and 10% loss, 1–5 ms latency, crashes, restarts and stalls.
//!
//! Payloads are routed directly between the state machines (no envelope, as in
//! `sim_gossip_scale`): each node is given a payload buffer of the MTU minus the encrypted
//! envelope's overhead ([`wire::OVERHEAD`]), and every datagram is checked to decode and to fit
//! the MTU with its envelope (MTU 508 and 1400 alternate by seed). The harness is event driven:
//! a node's timers run exactly at its `poll_timeout` deadline, a datagram arrives exactly when
//! its latency says; nothing is timed on the wall clock.
//!
//! Each seed runs one scenario, chosen by `seed % 4`, on N drawn from 3..=50 (one seed in ten:
//! N = 100), with 0% or 10% loss:
//!
//! - **Dissemination**: an application-state `set` on one node; rounds (gossip intervals) until
//!   every node holds the new version.
//! - **Detection**: a node crashes; time until every live node holds it dead. Asserted bound
//!   (see [`detection_bound`]): `(K + 1) · P · (h + 1) + S_max + D`, where `P` is the probe
//!   interval, `h` the highest health score a live node reached during the run (Lifeguard
//!   stretches periods `h + 1` times), `K` = [`FIRST_PROBE_PERIODS`] periods within which some
//!   live node probes the crashed one (each live node's probe order is a random permutation, so
//!   none has probed it after `k` periods with probability about `e^-k`, below 1e-6 for K = 14),
//!   `S_max = suspicion_max_mult · suspicion_mult · max(1, log10 N) · P` the suspicion timeout
//!   without confirmations, and `D` = [`dissemination_allowance`] for the suspicion and the
//!   verdict to reach every node.
//! - **False positives**: 10% loss for 60 s while 10% of the nodes (at least one) each stall
//!   once for 2–5 s: a stalled node neither receives nor runs timers; datagrams sent to it wait
//!   in a socket buffer of [`BACKLOG`] datagrams (the rest are dropped), and on waking it either
//!   reads that backlog late or finds it dropped (a coin per stall), its timers firing before or
//!   after (another coin). Asserted: a false dead verdict about a running node is refuted
//!   within [`refutation_bound`] of the later of the verdict and the moments observer and
//!   subject last resumed; after the loss stops, every node sees every other alive. Counted:
//!   false dead verdicts per node-hour, against a plain fixed-timeout detector fed by the same
//!   datagrams (a node is declared dead after `T` without hearing from it directly or through
//!   the last-heard times gossiped by the nodes it hears from).
//! - **Mass restart**: half the nodes (random) stop and restart 0–2 s later with a higher start
//!   incarnation and fresh state. Asserted: every node's member count (itself plus the live
//!   members it holds) settles at exactly N and no record is left over.
//!
//! On every run: no table holds more than its capacity, and no member is refused for capacity
//! (the tables are sized for the cluster); no datagram is malformed, unencodable or too large.
//!
//! `SIM_MEMBERS_SEEDS=n` runs seeds 0..n instead of 0..1000; `SEED=n` replays one seed. The scale
//! tests at N = 1000 run a few seeds of their own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::membership::{retransmits, suspicion_timeout, walk, Config, Event, Membership, State};
use bedrock::service::{Peer, Service};
use bedrock::time::Instant;
use bedrock::wire;
use bedrock_sim::{sum_in_parallel, SimRng};

const SEEDS: u64 = 1000;
const KEYS: usize = 1;
const VALUE_MAX: usize = 8;
/// Datagrams a stalled node's socket holds; more are dropped.
const BACKLOG: usize = 64;
/// Periods within which some live node has probed a crashed one (probability of not: ~e^-14).
const FIRST_PROBE_PERIODS: u32 = 14;
const LATENCY_MIN_MICROS: u64 = 1_000;
const LATENCY_MAX_MICROS: u64 = 5_000;
/// The fixed timeout of the plain detector compared with SWIM.
const FIXED_TIMEOUT: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config::default()
}

fn addr(index: usize) -> SocketAddr {
    let [high, low] = (index as u16).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, high, low)), 7000)
}

fn index_of(addr: SocketAddr) -> usize {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [_, _, high, low] = ip.octets();
            usize::from(u16::from_be_bytes([high, low]))
        }
        IpAddr::V6(_) => unreachable!("the simulation uses IPv4"),
    }
}

fn id(index: usize) -> NodeId {
    NodeId(index as u32 + 1)
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// The suspicion timeout without confirmations for `n` members.
fn suspicion_max(config: &Config, n: usize) -> Duration {
    suspicion_timeout(
        config.suspicion_mult,
        config.suspicion_max_mult,
        n,
        config.probe_interval,
        0,
        usize::from(config.indirect_probes),
    )
}

/// Time allowed for a record to reach every node: every node that learns it piggybacks it on
/// its next `retransmits(n)` datagrams (at least one probe per stretched period), and push-pull
/// carries it too; twice that many stretched periods.
fn dissemination_allowance(config: &Config, n: usize, health: u8) -> Duration {
    let periods = 2 * u32::from(retransmits(config.retransmit_mult, n));
    config.probe_interval * periods * (u32::from(health) + 1)
}

/// Crash to dead at every live node, at most (module docs).
fn detection_bound(config: &Config, n: usize, health: u8) -> Duration {
    let scale = u32::from(health) + 1;
    config.probe_interval * (FIRST_PROBE_PERIODS + 1) * scale
        + suspicion_max(config, n)
        + dissemination_allowance(config, n, health)
}

/// A false dead verdict about a running node must be gone within this: the verdict reaches the
/// subject, which refutes, and the refutation reaches the observer (two disseminations at
/// unstretched periods: `4 · retransmits(n) · P`; the refutation travels in answers and
/// push-pull, whose intervals health does not stretch).
fn refutation_bound(config: &Config, n: usize) -> Duration {
    dissemination_allowance(config, n, 0) * 2
}

struct Flight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Node<const CAP: usize> {
    machine: Option<Box<Membership<CAP, KEYS, VALUE_MAX>>>,
    /// The start incarnation of the current life.
    start: u32,
    /// Stalled until then (micros).
    stall_until: Option<u64>,
    drop_backlog: bool,
    timers_first: bool,
    backlog: Vec<(usize, Vec<u8>, Option<Vec<u64>>)>,
    /// Micros of the last resume or (re)start.
    resumed: u64,
    deadline: Option<u64>,
    rng: SimRng,
}

impl<const CAP: usize> Node<CAP> {
    fn running(&self) -> bool {
        self.machine.is_some() && self.stall_until.is_none()
    }
}

/// An open false dead verdict: `observer` holds `subject` dead while it is up.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    observer: usize,
    subject: usize,
    since: u64,
}

/// The plain fixed-timeout detector, fed by the same datagrams: `heard[i][j]` is when `i`
/// last heard from `j` directly, or through the last-heard times of a node it heard from.
struct FixedDetector {
    timeout: u64,
    heard: Vec<Vec<u64>>,
    dead: Vec<Vec<bool>>,
    false_dead: u64,
}

impl FixedDetector {
    fn new(n: usize, now: u64, timeout: Duration) -> Self {
        Self {
            timeout: micros(timeout),
            heard: vec![vec![now; n]; n],
            dead: vec![vec![false; n]; n],
            false_dead: 0,
        }
    }

    fn receive(&mut self, to: usize, from: usize, now: u64, view: Option<&[u64]>) {
        let (row, source) = if to < from {
            let (low, high) = self.heard.split_at_mut(from);
            (&mut low[to], &high[0])
        } else {
            let (low, high) = self.heard.split_at_mut(to);
            (&mut high[0], &low[from])
        };
        let source: &[u64] = view.unwrap_or(source);
        for (mine, theirs) in row.iter_mut().zip(source) {
            *mine = (*mine).max(*theirs);
        }
        row[to] = now;
        row[from] = now;
    }

    /// `observer` runs its check at `now`; `up` says which nodes are up (process exists).
    fn check(&mut self, observer: usize, now: u64, up: &[bool]) {
        for (subject, &subject_up) in up.iter().enumerate() {
            if subject == observer {
                continue;
            }
            let silent = now.saturating_sub(self.heard[observer][subject]) > self.timeout;
            if silent && !self.dead[observer][subject] && subject_up {
                self.false_dead += 1;
            }
            self.dead[observer][subject] = silent;
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    datagrams: u64,
    bytes: u64,
    false_dead: u64,
    /// Of those, about nodes that never stalled (heartbeating all along).
    false_dead_heartbeating: u64,
    /// Longest time a false dead verdict stayed after both ends ran (micros).
    longest_false_dead: u64,
    max_health: u8,
}

struct Sim<const CAP: usize> {
    config: Config,
    nodes: Vec<Node<CAP>>,
    now: u64,
    flights: BinaryHeap<Reverse<Flight>>,
    /// Timer deadlines and stall ends, `(at, node)`; stale entries are skipped when popped.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Which nodes are up (a process exists, stalled or not).
    up: Vec<bool>,
    /// Nodes that stalled at least once.
    ever_stalled: Vec<bool>,
    sequence: u64,
    rng: SimRng,
    loss: f64,
    mtu: usize,
    buffer: Vec<u8>,
    verdicts: Vec<Verdict>,
    /// When each observer first held each subject dead (detection scenario).
    dead_at: Vec<Option<u64>>,
    watched: Option<usize>,
    /// A node stalled for longer than a suspicion: its dead verdicts are expected, not false
    /// positives, but must be refuted once it runs again.
    long_stalled: Option<usize>,
    fixed: Option<FixedDetector>,
    counts: Counts,
    failures: Vec<String>,
    label: String,
}

impl<const CAP: usize> Sim<CAP> {
    fn new(n: usize, mtu: usize, seed: u64, label: String) -> Self {
        let mut rng = SimRng::new(seed ^ 0x3E3B_E125);
        let config = config();
        let nodes: Vec<Node<CAP>> = (0..n)
            .map(|index| {
                let mut node = Node {
                    machine: None,
                    start: 1,
                    stall_until: None,
                    drop_backlog: false,
                    timers_first: false,
                    backlog: Vec::new(),
                    resumed: 0,
                    deadline: None,
                    rng: rng.fork(),
                };
                let start = rng.below(1_000_000);
                node.machine = Some(Self::make(config, index, n, 1));
                node.deadline = Some(start);
                node
            })
            .collect();
        let timers = nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| Some(Reverse((node.deadline?, index))))
            .collect();
        Self {
            config,
            nodes,
            now: 0,
            flights: BinaryHeap::new(),
            timers,
            up: vec![true; n],
            ever_stalled: vec![false; n],
            sequence: 0,
            rng,
            loss: 0.0,
            mtu,
            buffer: vec![0; mtu - wire::OVERHEAD],
            verdicts: Vec::new(),
            dead_at: vec![None; n],
            watched: None,
            long_stalled: None,
            fixed: None,
            counts: Counts::default(),
            failures: Vec::new(),
            label,
        }
    }

    /// A node joins through the first three nodes (the others than itself).
    fn make(
        config: Config,
        index: usize,
        n: usize,
        start: u32,
    ) -> Box<Membership<CAP, KEYS, VALUE_MAX>> {
        let seeds: Vec<SocketAddr> = (0..n.min(3))
            .filter(|&seed| seed != index)
            .map(addr)
            .collect();
        Box::new(Membership::new(
            config,
            id(index),
            addr(index),
            start,
            &seeds,
        ))
    }

    fn n(&self) -> usize {
        self.nodes.len()
    }

    fn machine(&self, index: usize) -> Option<&Membership<CAP, KEYS, VALUE_MAX>> {
        self.nodes[index].machine.as_deref()
    }

    fn fail(&mut self, message: String) {
        if self.failures.len() < 5 {
            self.failures.push(format!("{}: {message}", self.label));
        }
    }

    fn crash(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.machine = None;
        node.stall_until = None;
        node.backlog.clear();
        node.deadline = None;
        self.up[index] = false;
    }

    fn restart(&mut self, index: usize, start: u32) {
        let n = self.n();
        let now = self.now;
        let node = &mut self.nodes[index];
        node.start = start;
        node.machine = Some(Self::make(self.config, index, n, start));
        node.deadline = Some(now);
        node.resumed = now;
        self.up[index] = true;
        self.timers.push(Reverse((now, index)));
    }

    fn stall(&mut self, index: usize, until: u64) {
        let drop = self.rng.chance(0.5);
        let first = self.rng.chance(0.5);
        let node = &mut self.nodes[index];
        if node.machine.is_some() {
            node.stall_until = Some(until);
            node.drop_backlog = drop;
            node.timers_first = first;
            self.ever_stalled[index] = true;
            self.timers.push(Reverse((until, index)));
        }
    }

    /// Runs until `end` (micros), calling `check` every `every` micros; stops early when it
    /// returns true. Returns whether it did.
    fn run_until(&mut self, end: u64, every: u64, mut check: impl FnMut(&Self) -> bool) -> bool {
        let mut next_check = self.now;
        loop {
            if self.now >= next_check {
                self.check_verdicts();
                if check(self) {
                    return true;
                }
                next_check = self.now + every;
            }
            let next = self.next_event().min(next_check).min(end);
            if next >= end && self.now >= end {
                return false;
            }
            self.now = next.max(self.now);
            self.step();
            if self.now >= end {
                self.check_verdicts();
                return check(self);
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + micros(duration);
        self.run_until(end, micros(Duration::from_millis(100)), |_| false);
    }

    /// Whether a timer entry still stands: a stall that ends then, or the node's deadline.
    fn timer_stands(&self, at: u64, index: usize) -> bool {
        let node = &self.nodes[index];
        node.machine.is_some()
            && match node.stall_until {
                Some(until) => until == at,
                None => node.deadline == Some(at),
            }
    }

    fn next_event(&mut self) -> u64 {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if self.timer_stands(at, index) {
                break;
            }
            self.timers.pop();
        }
        let flight = self.flights.peek().map_or(u64::MAX, |f| f.0.at);
        let timer = self.timers.peek().map_or(u64::MAX, |t| t.0 .0);
        flight.min(timer)
    }

    fn step(&mut self) {
        let now = self.now;
        let mut touched = Vec::new();
        let mut due = Vec::new();
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timer_stands(at, index) {
                due.push(index);
            }
        }
        due.sort_unstable();
        due.dedup();
        // Stalls that end: the backlog, then (or before) the overdue timers.
        let mut woken = Vec::new();
        for &index in &due {
            if self.nodes[index]
                .stall_until
                .is_some_and(|until| until <= now)
            {
                let node = &mut self.nodes[index];
                node.stall_until = None;
                node.resumed = now;
                let backlog = std::mem::take(&mut node.backlog);
                let (drop, timers_first) = (node.drop_backlog, node.timers_first);
                if timers_first {
                    self.fire(index);
                }
                if !drop {
                    for (from, bytes, view) in backlog {
                        self.handle(from, index, &bytes, view.as_deref());
                    }
                }
                if !timers_first {
                    self.fire(index);
                }
                touched.push(index);
                woken.push(index);
            }
        }
        while self.flights.peek().is_some_and(|f| f.0.at <= now) {
            let Reverse(flight) = self.flights.pop().expect("peeked");
            let to = flight.to;
            let node = &mut self.nodes[to];
            if node.machine.is_none() {
                continue;
            }
            if node.stall_until.is_some() {
                if node.backlog.len() < BACKLOG {
                    let view = self
                        .fixed
                        .as_ref()
                        .map(|fixed| fixed.heard[flight.from].clone());
                    node.backlog.push((flight.from, flight.bytes, view));
                }
                continue;
            }
            self.handle(flight.from, to, &flight.bytes, None);
            touched.push(to);
        }
        for &index in &due {
            let node = &self.nodes[index];
            if node.running()
                && !woken.contains(&index)
                && node.deadline.is_some_and(|at| at <= now)
            {
                self.fire(index);
                touched.push(index);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for index in touched {
            self.flush(index);
        }
    }

    fn handle(&mut self, from: usize, to: usize, bytes: &[u8], view: Option<&[u64]>) {
        let peer = Peer {
            addr: addr(from),
            node: id(from),
            incarnation: self.nodes[from].start,
        };
        let now = self.now;
        if let Some(fixed) = self.fixed.as_mut() {
            fixed.receive(to, from, now, view);
        }
        let machine = self.nodes[to].machine.as_mut().expect("up");
        machine.handle_message(Instant::from_micros(now), peer, bytes);
    }

    fn fire(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        let machine = node.machine.as_mut().expect("up");
        machine.handle_timeout(Instant::from_micros(now), &mut node.rng);
        if let Some(fixed) = self.fixed.as_mut() {
            fixed.check(index, now, &self.up);
        }
    }

    /// Sends what `index` has to send, takes its events, and sets its next deadline.
    fn flush(&mut self, index: usize) {
        let now = self.now;
        let mtu = self.mtu;
        let mut sent = Vec::new();
        let machine = self.nodes[index].machine.as_mut().expect("up");
        while let Some(transmit) =
            machine.poll_transmit(Instant::from_micros(now), &mut self.buffer)
        {
            sent.push((index_of(transmit.to), self.buffer[..transmit.len].to_vec()));
        }
        let mut events = Vec::new();
        while let Some(event) = machine.poll_event() {
            events.push(event);
        }
        let deadline = machine.poll_timeout().map(|at| at.as_micros().max(now + 1));
        let health = machine.health();
        if self.nodes[index].deadline != deadline {
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, index)));
            }
        }
        self.nodes[index].deadline = deadline;
        if self.nodes[index].machine.is_some() {
            self.counts.max_health = self.counts.max_health.max(health);
        }
        for (to, bytes) in sent {
            self.counts.datagrams += 1;
            self.counts.bytes += bytes.len() as u64;
            if bytes.len() + wire::OVERHEAD > mtu {
                self.fail(format!(
                    "a datagram of {} bytes exceeds the MTU",
                    bytes.len()
                ));
            }
            if walk(&bytes, VALUE_MAX, &mut |_| {}).is_err() {
                self.fail("a datagram does not decode".to_string());
            }
            if self.loss > 0.0 && self.rng.chance(self.loss) {
                continue;
            }
            let latency = self.rng.between(LATENCY_MIN_MICROS, LATENCY_MAX_MICROS);
            self.sequence += 1;
            self.flights.push(Reverse(Flight {
                at: now + latency,
                seq: self.sequence,
                from: index,
                to,
                bytes,
            }));
        }
        for event in events {
            self.on_event(index, event);
        }
    }

    fn on_event(&mut self, observer: usize, event: Event) {
        let now = self.now;
        match event {
            Event::Dead { node } => {
                let subject = node.0 as usize - 1;
                if self.watched == Some(subject) && self.dead_at[observer].is_none() {
                    self.dead_at[observer] = Some(now);
                }
                // False when the subject is up in the life the verdict is about.
                let incarnation = self
                    .machine(observer)
                    .and_then(|machine| machine.member(node))
                    .map_or(0, |member| member.incarnation());
                let false_verdict = self.nodes[subject].machine.is_some()
                    && incarnation >= self.nodes[subject].start;
                if false_verdict {
                    if self.long_stalled != Some(subject) {
                        self.counts.false_dead += 1;
                        if !self.ever_stalled[subject] {
                            self.counts.false_dead_heartbeating += 1;
                        }
                    }
                    self.verdicts.push(Verdict {
                        observer,
                        subject,
                        since: now,
                    });
                }
            }
            Event::Joined { node, .. } | Event::Alive { node, .. } => {
                let subject = node.0 as usize - 1;
                self.close_verdict(observer, subject);
            }
            _ => {}
        }
    }

    fn close_verdict(&mut self, observer: usize, subject: usize) {
        let now = self.now;
        let mut index = 0;
        while index < self.verdicts.len() {
            let verdict = self.verdicts[index];
            if verdict.observer == observer && verdict.subject == subject {
                let from = self.verdict_start(verdict);
                let held = now.saturating_sub(from);
                self.counts.longest_false_dead = self.counts.longest_false_dead.max(held);
                self.verdicts.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// When a false verdict starts to count: once both ends run.
    fn verdict_start(&self, verdict: Verdict) -> u64 {
        verdict
            .since
            .max(self.nodes[verdict.observer].resumed)
            .max(self.nodes[verdict.subject].resumed)
    }

    fn check_verdicts(&mut self) {
        let n = self.n();
        let bound = micros(refutation_bound(&self.config, n));
        let mut overdue = Vec::new();
        self.verdicts.retain(|verdict| {
            // A crashed observer's verdict is gone; a crashed subject's is no longer false.
            let observer = &self.nodes[verdict.observer];
            let subject = &self.nodes[verdict.subject];
            observer.machine.is_some() && subject.machine.is_some()
        });
        for verdict in &self.verdicts {
            let both_run =
                self.nodes[verdict.observer].running() && self.nodes[verdict.subject].running();
            let held = self.now.saturating_sub(self.verdict_start(*verdict));
            if both_run && held > bound {
                overdue.push((*verdict, held));
            }
        }
        for (verdict, held) in overdue {
            self.fail(format!(
                "node {} held running node {} dead for {} ms (bound {} ms)",
                verdict.observer,
                verdict.subject,
                held / 1000,
                bound / 1000
            ));
            self.close_verdict(verdict.observer, verdict.subject);
        }
    }

    /// Every up node holds every other up node alive, and nothing else (no leftover record).
    fn settled(&self) -> bool {
        let up: Vec<usize> = (0..self.n())
            .filter(|&i| self.nodes[i].machine.is_some())
            .collect();
        up.iter().all(|&observer| {
            let machine = self.machine(observer).expect("up");
            let alive = machine.members().iter().filter(|member| {
                member.state() == State::Alive && self.up[member.node().0 as usize - 1]
            });
            machine.live_count() + 1 == up.len() && alive.count() + 1 == up.len()
        })
    }

    /// Every node's member count (itself and the live, or suspect, members it holds) is exactly
    /// N, and its table holds nothing else (no tombstone of an earlier life).
    fn exactly_n(&self) -> bool {
        let n = self.n();
        self.nodes.iter().all(|node| {
            node.machine.as_deref().is_some_and(|machine| {
                machine.live_count() + 1 == n && machine.members().len() == n - 1
            })
        })
    }

    /// Checks capacity and encoding counters of every up node.
    fn check_tables(&mut self) {
        let mut problems = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(machine) = node.machine.as_deref() else {
                continue;
            };
            let stats = machine.stats();
            if machine.members().len() > CAP {
                problems.push(format!(
                    "node {index} holds {} > {CAP}",
                    machine.members().len()
                ));
            }
            if self.n() <= CAP && stats.capacity_refusals > 0 {
                problems.push(format!(
                    "node {index} refused {} members for capacity",
                    stats.capacity_refusals
                ));
            }
            if stats.malformed > 0 || stats.unencodable > 0 {
                problems.push(format!(
                    "node {index}: {} malformed, {} unencodable",
                    stats.malformed, stats.unencodable
                ));
            }
        }
        for problem in problems {
            self.fail(problem);
        }
    }

    /// Runs until every node holds every other alive (the join).
    fn join(&mut self) -> bool {
        self.join_within(Duration::from_secs(120))
    }

    fn join_within(&mut self, limit: Duration) -> bool {
        let seconds = limit.as_secs();
        let limit = self.now + micros(limit);
        let every = micros(Duration::from_millis(250));
        let joined = self.run_until(limit, every, Self::settled);
        if !joined {
            self.fail(format!("the cluster did not join within {seconds} s"));
        }
        joined
    }

    /// The fraction of up nodes other than `origin` holding `origin`'s entries up to `version`.
    fn holding(&self, origin: usize, version: u64) -> f64 {
        let mut others = 0;
        let mut holding = 0;
        for (index, node) in self.nodes.iter().enumerate() {
            if index == origin {
                continue;
            }
            if let Some(machine) = node.machine.as_deref() {
                others += 1;
                let held = machine.member(id(origin)).map_or(0, |m| m.version());
                holding += usize::from(held >= version);
            }
        }
        holding as f64 / f64::from(others.max(1) as u32)
    }

    fn gossip_micros(&self) -> u64 {
        micros(self.config.gossip_interval)
    }
}

/// What one seed measured.
#[derive(Debug, Default, Clone)]
struct Outcome {
    n: usize,
    loss: bool,
    /// Rounds to 100% dissemination.
    rounds: Option<f64>,
    /// Crash to dead everywhere (micros).
    detection: Option<u64>,
    /// False dead verdicts and node-hours simulated with stalls and loss.
    false_dead: u64,
    false_dead_heartbeating: u64,
    fixed_false_dead: u64,
    node_hours: f64,
    longest_false_dead: u64,
    /// Member count on every node after a mass restart.
    restart_count: Option<usize>,
    failures: Vec<String>,
}

fn dissemination<const CAP: usize>(sim: &mut Sim<CAP>, outcome: &mut Outcome, full_at: &mut f64) {
    sim.run_for(Duration::from_secs(5));
    let origin = sim.rng.below(sim.n() as u64) as usize;
    let version = sim.nodes[origin]
        .machine
        .as_mut()
        .expect("up")
        .set(0, b"bumped")
        .expect("room for one key");
    let start = sim.now;
    let round = sim.gossip_micros();
    let limit = start + round * 300;
    let mut high = None;
    let reached = sim.run_until(limit, round / 20, |sim| {
        let fraction = sim.holding(origin, version);
        if high.is_none() && fraction >= 0.9999 {
            high = Some(sim.now);
        }
        fraction >= 1.0
    });
    if !reached {
        let fraction = sim.holding(origin, version);
        sim.fail(format!(
            "the version reached {:.1}% of nodes in 300 rounds",
            fraction * 100.0
        ));
        return;
    }
    let rounds = |at: u64| (at - start) as f64 / round as f64;
    outcome.rounds = Some(rounds(sim.now));
    *full_at = high.map_or(rounds(sim.now), rounds);
}

fn detection<const CAP: usize>(sim: &mut Sim<CAP>, outcome: &mut Outcome) {
    sim.run_for(Duration::from_secs(3));
    let n = sim.n();
    let victim = sim.rng.below(n as u64) as usize;
    sim.watched = Some(victim);
    sim.crash(victim);
    let crashed = sim.now;
    sim.counts.max_health = 0;
    let config = sim.config;
    let limit = crashed + micros(detection_bound(&config, n, config.health_max)) * 2;
    let every = micros(Duration::from_millis(50));
    let all = sim.run_until(limit, every, |sim| {
        (0..sim.n()).all(|i| sim.nodes[i].machine.is_none() || sim.dead_at[i].is_some())
    });
    let last = sim.dead_at.iter().flatten().max().copied();
    let bound = micros(detection_bound(&config, n, sim.counts.max_health));
    match (all, last) {
        (true, Some(last)) => {
            let took = last - crashed;
            outcome.detection = Some(took);
            if took > bound {
                sim.fail(format!(
                    "crashed node {victim} declared dead everywhere after {} ms, bound {} ms \
                     (highest health {})",
                    took / 1000,
                    bound / 1000,
                    sim.counts.max_health
                ));
            }
        }
        _ => {
            let missing = (0..n)
                .filter(|&i| sim.nodes[i].machine.is_some() && sim.dead_at[i].is_none())
                .count();
            sim.fail(format!(
                "crashed node {victim} not declared dead by {missing} live nodes in {} ms",
                (sim.now - crashed) / 1000
            ));
        }
    }
}

/// 10% loss for `window` while 10% of the nodes each stall once for 2–5 s.
///
/// With `long_stall`, one more node stalls for 5 s longer than the longest suspicion: it is
/// declared dead (not counted as a false positive: it was not heartbeating), and must refute
/// within the refutation bound once it runs again.
fn false_positives<const CAP: usize>(
    sim: &mut Sim<CAP>,
    outcome: &mut Outcome,
    window: Duration,
    long_stall: bool,
) {
    let n = sim.n();
    sim.run_for(Duration::from_secs(2));
    sim.fixed = Some(FixedDetector::new(n, sim.now, FIXED_TIMEOUT));
    sim.loss = 0.1;
    sim.counts.false_dead = 0;
    sim.counts.false_dead_heartbeating = 0;
    sim.counts.longest_false_dead = 0;
    let start = sim.now;
    let end = start + micros(window);
    let stalled = (n / 10).max(1);
    let mut plan = Vec::new();
    let mut chosen = Vec::new();
    while chosen.len() < stalled {
        let index = sim.rng.below(n as u64) as usize;
        if !chosen.contains(&index) {
            chosen.push(index);
            let at = start
                + sim
                    .rng
                    .below(micros(window) - micros(Duration::from_secs(5)));
            let length = sim.rng.between(2_000_000, 5_000_000);
            plan.push((at, index, length));
        }
    }
    if long_stall && n > stalled + 2 {
        let index = loop {
            let index = sim.rng.below(n as u64) as usize;
            if !chosen.contains(&index) {
                break index;
            }
        };
        sim.long_stalled = Some(index);
        let length = suspicion_max(&sim.config, n) + Duration::from_secs(5);
        plan.push((start + 1_000_000, index, micros(length)));
    }
    plan.sort_unstable();
    for (at, index, length) in plan {
        sim.run_until(at, micros(Duration::from_millis(100)), |_| false);
        sim.stall(index, at + length);
    }
    sim.run_until(end, micros(Duration::from_millis(100)), |_| false);
    sim.loss = 0.0;
    outcome.false_dead = sim.counts.false_dead;
    outcome.false_dead_heartbeating = sim.counts.false_dead_heartbeating;
    outcome.fixed_false_dead = sim.fixed.as_ref().map_or(0, |fixed| fixed.false_dead);
    sim.fixed = None;
    outcome.node_hours = n as f64 * window.as_secs_f64() / 3600.0;
    let limit = sim.now + micros(Duration::from_secs(120));
    if !sim.run_until(limit, micros(Duration::from_millis(250)), Sim::settled) {
        sim.fail("not every node sees every other alive 120 s after the loss stopped".into());
    }
    outcome.longest_false_dead = sim.counts.longest_false_dead;
}

fn mass_restart<const CAP: usize>(sim: &mut Sim<CAP>, outcome: &mut Outcome) {
    let n = sim.n();
    sim.run_for(Duration::from_secs(2));
    let mut order: Vec<usize> = (0..n).collect();
    for slot in 0..n {
        let pick = slot + sim.rng.below((n - slot) as u64) as usize;
        order.swap(slot, pick);
    }
    let half = &order[..n / 2];
    let mut restarts = Vec::new();
    for &index in half {
        sim.crash(index);
        restarts.push((sim.now + sim.rng.below(2_000_000), index));
    }
    restarts.sort_unstable();
    for (at, index) in restarts {
        sim.run_until(at, micros(Duration::from_millis(100)), |_| false);
        let start = sim.nodes[index].start + 1;
        sim.restart(index, start);
    }
    let limit = sim.now + micros(Duration::from_secs(180));
    let settled = sim.run_until(limit, micros(Duration::from_millis(250)), Sim::exactly_n);
    sim.run_for(Duration::from_secs(10));
    let counts: Vec<usize> = (0..n)
        .map(|i| sim.machine(i).map_or(0, |m| m.live_count() + 1))
        .collect();
    let lowest = counts.iter().min().copied().unwrap_or(0);
    let highest = counts.iter().max().copied().unwrap_or(0);
    outcome.restart_count = Some(if lowest == highest { lowest } else { 0 });
    if !settled || !sim.exactly_n() {
        sim.fail(format!(
            "after the restart of {} nodes the member count is {lowest}..={highest}, not {n} \
             everywhere (settled once: {settled})",
            n / 2
        ));
    }
}

fn run_seed(seed: u64) -> Outcome {
    let mut rng = SimRng::new(seed);
    let n = if rng.below(10) == 0 {
        100
    } else {
        rng.between(3, 50) as usize
    };
    let scenario = seed % 4;
    let loss = (seed / 4) % 2 == 1;
    let mtu = if (seed / 8).is_multiple_of(2) {
        508
    } else {
        1400
    };
    let label = format!("seed {seed} (N={n}, scenario {scenario}, loss {loss}, MTU {mtu})");
    let mut sim = Sim::<128>::new(n, mtu, seed, label);
    let mut outcome = Outcome {
        n,
        loss,
        ..Outcome::default()
    };
    if sim.join() {
        if loss && scenario != 2 {
            sim.loss = 0.1;
        }
        match scenario {
            0 => dissemination(&mut sim, &mut outcome, &mut 0.0),
            1 => detection(&mut sim, &mut outcome),
            2 => {
                let window = Duration::from_secs(60);
                false_positives(&mut sim, &mut outcome, window, seed % 8 == 2);
            }
            _ => mass_restart(&mut sim, &mut outcome),
        }
    }
    sim.check_tables();
    outcome.failures = sim.failures;
    outcome
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is a number"))
    })
}

fn percentile(values: &mut [f64], percent: usize) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[(values.len() * percent / 100).min(values.len() - 1)]
}

#[test]
fn membership_over_many_seeds_disseminates_detects_refutes_and_settles_after_restarts() {
    let seeds: Vec<u64> = match env_number("SEED") {
        Some(seed) => vec![seed],
        None => (0..env_number("SIM_MEMBERS_SEEDS").unwrap_or(SEEDS)).collect(),
    };
    let results = std::sync::Mutex::new(Vec::new());
    let jobs: Vec<_> = (0..2)
        .map(|job| {
            let seeds = &seeds;
            let results = &results;
            move || {
                let mine: Vec<Outcome> = seeds
                    .iter()
                    .skip(job)
                    .step_by(2)
                    .map(|&seed| run_seed(seed))
                    .collect();
                let count = mine.len() as u64;
                results.lock().expect("no panic").extend(mine);
                count
            }
        })
        .collect();
    let ran = sum_in_parallel(jobs);
    let outcomes = results.into_inner().expect("no panic");
    assert_eq!(ran as usize, seeds.len());
    report(&outcomes);
    let failures: Vec<&String> = outcomes.iter().flat_map(|o| &o.failures).collect();
    assert!(
        failures.is_empty(),
        "{} failures (replay one with SEED=n):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn report(outcomes: &[Outcome]) {
    let bands: [(&str, std::ops::RangeInclusive<usize>); 4] = [
        ("3-10", 3..=10),
        ("11-25", 11..=25),
        ("26-50", 26..=50),
        ("100", 100..=100),
    ];
    println!("sim_membership: {} seeds", outcomes.len());
    for (name, band) in &bands {
        for loss in [false, true] {
            let chosen = || {
                outcomes
                    .iter()
                    .filter(move |o| band.contains(&o.n) && o.loss == loss)
            };
            let mut rounds: Vec<f64> = chosen().filter_map(|o| o.rounds).collect();
            let mut detections: Vec<f64> = chosen()
                .filter_map(|o| o.detection)
                .map(|micros| micros as f64 / 1000.0)
                .collect();
            let restarts: Vec<usize> = chosen().filter_map(|o| o.restart_count).collect();
            let loss = if loss { 10 } else { 0 };
            println!(
                "  N {name:>5}, loss {loss:>2}%: rounds to 100% dissemination median {:5.1} \
                 p99 {:5.1} ({} runs); detection median {:6.0} ms p99 {:6.0} ms ({} runs, \
                 {:.1}/{:.1} periods); member count after mass restart = N in {}/{} runs",
                percentile(&mut rounds.clone(), 50),
                percentile(&mut rounds, 99),
                rounds.len(),
                percentile(&mut detections.clone(), 50),
                percentile(&mut detections.clone(), 99),
                detections.len(),
                percentile(&mut detections.clone(), 50) / 1000.0,
                percentile(&mut detections, 99) / 1000.0,
                restarts
                    .iter()
                    .zip(chosen().filter(|o| o.restart_count.is_some()))
                    .filter(|(count, o)| **count == o.n)
                    .count(),
                restarts.len(),
            );
        }
    }
    let stalls: Vec<&Outcome> = outcomes.iter().filter(|o| o.node_hours > 0.0).collect();
    let hours: f64 = stalls.iter().map(|o| o.node_hours).sum();
    let false_dead: u64 = stalls.iter().map(|o| o.false_dead).sum();
    let heartbeating: u64 = stalls.iter().map(|o| o.false_dead_heartbeating).sum();
    let fixed: u64 = stalls.iter().map(|o| o.fixed_false_dead).sum();
    let longest = outcomes
        .iter()
        .map(|o| o.longest_false_dead)
        .max()
        .unwrap_or(0);
    println!(
        "  stalls + 10% loss: {} runs, {hours:.1} node-hours: SWIM+Lifeguard {false_dead} false \
         dead verdicts ({:.2} per node-hour, {heartbeating} about nodes that never stalled, \
         longest held {} ms), fixed {} s timeout {fixed} \
         ({:.2} per node-hour)",
        stalls.len(),
        false_dead as f64 / hours.max(1e-9),
        longest / 1000,
        FIXED_TIMEOUT.as_secs(),
        fixed as f64 / hours.max(1e-9),
    );
}

/// Figures of one run at N = 1000.
#[derive(Debug, Default)]
struct Scale {
    join_seconds: f64,
    bytes_per_node_second: f64,
    datagrams_per_node_second: f64,
    /// (loss, rounds to 99.99%, rounds to 100%).
    dissemination: Vec<(bool, f64, f64)>,
    detection: Option<u64>,
    false_dead: u64,
    false_dead_heartbeating: u64,
    longest_false_dead: u64,
    fixed_false_dead: u64,
    node_hours: f64,
    failures: Vec<String>,
}

const SCALE_N: usize = 1000;

fn scale_run(seed: u64) -> Scale {
    let mtu = if seed.is_multiple_of(2) { 1400 } else { 508 };
    let label = format!("scale seed {seed} (N={SCALE_N}, MTU {mtu})");
    let mut sim = Sim::<1024>::new(SCALE_N, mtu, seed, label);
    let mut scale = Scale::default();
    if !sim.join_within(Duration::from_secs(600)) {
        sim.check_tables();
        scale.failures = sim.failures;
        return scale;
    }
    scale.join_seconds = sim.now as f64 / 1e6;
    // Steady state: the join's piggybacked records have been sent their share of times.
    sim.run_for(Duration::from_secs(20));
    let (bytes, datagrams) = (sim.counts.bytes, sim.counts.datagrams);
    let window = Duration::from_secs(10);
    sim.run_for(window);
    let per_node_second = |amount: u64| amount as f64 / SCALE_N as f64 / window.as_secs_f64();
    scale.bytes_per_node_second = per_node_second(sim.counts.bytes - bytes);
    scale.datagrams_per_node_second = per_node_second(sim.counts.datagrams - datagrams);
    for loss in [false, true] {
        sim.loss = if loss { 0.1 } else { 0.0 };
        {
            let mut outcome = Outcome::default();
            let mut high = 0.0;
            dissemination(&mut sim, &mut outcome, &mut high);
            if let Some(full) = outcome.rounds {
                scale.dissemination.push((loss, high, full));
            }
        }
    }
    let mut outcome = Outcome::default();
    detection(&mut sim, &mut outcome);
    scale.detection = outcome.detection;
    sim.loss = 0.0;
    false_positives(&mut sim, &mut outcome, Duration::from_secs(40), false);
    scale.false_dead = outcome.false_dead;
    scale.false_dead_heartbeating = outcome.false_dead_heartbeating;
    scale.longest_false_dead = outcome.longest_false_dead;
    scale.fixed_false_dead = outcome.fixed_false_dead;
    scale.node_hours = outcome.node_hours;
    sim.check_tables();
    scale.failures = sim.failures;
    scale
}

#[test]
fn a_thousand_nodes_disseminate_detect_and_cost_what_is_printed() {
    let seeds: Vec<u64> = (0..env_number("SIM_MEMBERS_SCALE_SEEDS").unwrap_or(2)).collect();
    let results = std::sync::Mutex::new(Vec::new());
    let jobs: Vec<_> = seeds
        .iter()
        .map(|&seed| {
            let results = &results;
            move || {
                let scale = scale_run(seed);
                results.lock().expect("no panic").push((seed, scale));
                1
            }
        })
        .collect();
    sum_in_parallel(jobs);
    let mut results = results.into_inner().expect("no panic");
    results.sort_by_key(|(seed, _)| *seed);
    let mut failures = Vec::new();
    for (seed, scale) in &results {
        let rounds = |loss: bool| {
            scale
                .dissemination
                .iter()
                .filter(|entry| entry.0 == loss)
                .map(|entry| format!("{:.1}/{:.1}", entry.1, entry.2))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "sim_membership N={SCALE_N} seed {seed}: joined in {:.0} s; steady state {:.0} \
             bytes/node/s in {:.1} datagrams/node/s; rounds to 99.99%/100% dissemination: 0% \
             loss [{}], 10% loss [{}]; crash detected everywhere in {} ms (10% loss); stalls + \
             10% loss over {:.1} node-hours: SWIM+Lifeguard {} false dead verdicts ({:.2}/node-h; \
             {} about nodes that never stalled; longest held {} ms), fixed {} s timeout {} ({:.2}/node-h)",
            scale.join_seconds,
            scale.bytes_per_node_second,
            scale.datagrams_per_node_second,
            rounds(false),
            rounds(true),
            scale.detection.map_or("-".to_string(), |micros| (micros / 1000).to_string()),
            scale.node_hours,
            scale.false_dead,
            scale.false_dead as f64 / scale.node_hours.max(1e-9),
            scale.false_dead_heartbeating,
            scale.longest_false_dead / 1000,
            FIXED_TIMEOUT.as_secs(),
            scale.fixed_false_dead,
            scale.fixed_false_dead as f64 / scale.node_hours.max(1e-9),
        );
        failures.extend(scale.failures.iter().cloned());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
