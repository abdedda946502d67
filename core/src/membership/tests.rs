use super::*;
use crate::net::{MTU_DEFAULT, MTU_MIN};
use crate::rng::{Rng, SplitMix64};
use crate::service::{Peer, Service};
use core::net::{IpAddr, Ipv4Addr};
use proptest::prelude::*;
use std::vec;
use std::vec::Vec as HeapVec;

type Node = Membership<64, 4, 16>;

const TICK: Duration = Duration::from_millis(10);

fn addr(index: usize) -> SocketAddr {
    let [high, low] = (index as u16).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, high, low)), 7000)
}

fn index_of(addr: SocketAddr) -> usize {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [_, _, high, low] = ip.octets();
            usize::from(u16::from_be_bytes([high, low]))
        }
        IpAddr::V6(_) => unreachable!("tests use IPv4"),
    }
}

fn config() -> Config {
    Config {
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(80),
        gossip_interval: Duration::from_millis(200),
        tombstone: Duration::from_secs(10),
        ..Config::default()
    }
}

/// A virtual network of membership nodes with a virtual clock. Every datagram is checked to
/// fit the buffer and to decode.
struct Net {
    nodes: HeapVec<Option<Node>>,
    starts: HeapVec<u32>,
    now: Instant,
    rng: SplitMix64,
    mtu: usize,
    /// Percent of datagrams lost at random.
    loss_percent: u64,
    /// Directed links that drop everything.
    cut: HeapVec<(usize, usize)>,
    /// Nodes whose process is paused: no timers, datagrams wait in `inbox`.
    stalled: HeapVec<bool>,
    inbox: HeapVec<HeapVec<(usize, HeapVec<u8>)>>,
    events: HeapVec<HeapVec<Event>>,
    digest_items_max: usize,
    datagrams: u64,
}

impl Net {
    fn new(count: usize, mtu: usize, config: Config) -> Self {
        let mut net = Self {
            nodes: HeapVec::new(),
            starts: vec![1; count],
            now: Instant::ZERO,
            rng: SplitMix64::new(count as u64 * 7919 + mtu as u64),
            mtu,
            loss_percent: 0,
            cut: HeapVec::new(),
            stalled: vec![false; count],
            inbox: vec![HeapVec::new(); count],
            events: vec![HeapVec::new(); count],
            digest_items_max: 0,
            datagrams: 0,
        };
        for index in 0..count {
            net.nodes.push(Some(Self::make(config, index, 1)));
        }
        net
    }

    /// Node `index` joins through node 0.
    fn make(config: Config, index: usize, incarnation: u32) -> Node {
        let seeds: &[SocketAddr] = if index == 0 { &[] } else { &[addr(0)] };
        Node::new(
            config,
            NodeId(index as u32 + 1),
            addr(index),
            incarnation,
            seeds,
        )
    }

    fn restart(&mut self, index: usize, incarnation: u32) {
        self.starts[index] = incarnation;
        self.nodes[index] = Some(Self::make(config(), index, incarnation));
    }

    fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().expect("node is up")
    }

    fn running(&self, index: usize) -> bool {
        self.nodes[index].is_some() && !self.stalled[index]
    }

    fn step(&mut self) {
        self.now = self.now + TICK;
        let now = self.now;
        for index in 0..self.nodes.len() {
            if !self.running(index) {
                continue;
            }
            let node = self.nodes[index].as_mut().unwrap();
            if node.poll_timeout().is_some_and(|deadline| deadline <= now) {
                node.handle_timeout(now, &mut self.rng);
            }
        }
        for _ in 0..16 {
            if self.exchange() == 0 {
                break;
            }
        }
        for index in 0..self.nodes.len() {
            if let Some(node) = self.nodes[index].as_mut() {
                while let Some(event) = node.poll_event() {
                    self.events[index].push(event);
                }
            }
        }
    }

    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `done` holds (checked every step) or `limit` passes; returns whether it held.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn exchange(&mut self) -> usize {
        let mut flights = HeapVec::new();
        for from in 0..self.nodes.len() {
            if !self.running(from) {
                continue;
            }
            let node = self.nodes[from].as_mut().unwrap();
            let mut buffer = vec![0u8; self.mtu];
            while let Some(transmit) = node.poll_transmit(self.now, &mut buffer) {
                assert!(
                    transmit.len <= self.mtu,
                    "datagram of {} bytes",
                    transmit.len
                );
                flights.push((from, index_of(transmit.to), buffer[..transmit.len].to_vec()));
            }
        }
        let count = flights.len();
        for (from, to, bytes) in flights {
            self.check(&bytes);
            self.deliver(from, to, bytes);
        }
        for to in 0..self.nodes.len() {
            if self.running(to) {
                for (from, bytes) in core::mem::take(&mut self.inbox[to]) {
                    self.deliver(from, to, bytes);
                }
            }
        }
        count
    }

    fn check(&mut self, bytes: &[u8]) {
        self.datagrams += 1;
        let head = walk(bytes, 16, &mut |_| {}).expect("every datagram decodes");
        if let Message::Digest { items, .. } = head.message {
            self.digest_items_max = self.digest_items_max.max(usize::from(items));
        }
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: HeapVec<u8>) {
        let lost = self.loss_percent > 0 && self.rng.below(100) < self.loss_percent;
        if lost || self.cut.contains(&(from, to)) || self.nodes[to].is_none() {
            return;
        }
        if self.stalled[to] {
            self.inbox[to].push((from, bytes));
            return;
        }
        let peer = Peer {
            addr: addr(from),
            node: NodeId(from as u32 + 1),
            incarnation: self.starts[from],
        };
        let now = self.now;
        self.nodes[to]
            .as_mut()
            .unwrap()
            .handle_message(now, peer, &bytes);
    }

    fn cut_both(&mut self, a: usize, b: usize) {
        self.cut.push((a, b));
        self.cut.push((b, a));
    }

    /// Cuts `node` off from everyone.
    fn isolate(&mut self, node: usize) {
        for other in 0..self.nodes.len() {
            if other != node {
                self.cut_both(node, other);
            }
        }
    }

    /// The state `observer` holds for `node`.
    fn state(&self, observer: usize, node: usize) -> Option<State> {
        let observer = self.nodes[observer].as_ref()?;
        observer.member(NodeId(node as u32 + 1)).map(Member::state)
    }

    /// Whether every running node other than `except` holds `node` in `state`.
    fn all_see(&self, node: usize, state: State) -> bool {
        (0..self.nodes.len())
            .filter(|&observer| observer != node && self.nodes[observer].is_some())
            .all(|observer| self.state(observer, node) == Some(state))
    }

    fn all_alive(&self) -> bool {
        let up: HeapVec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_some())
            .collect();
        up.iter().all(|&node| self.all_see(node, State::Alive))
    }
}

fn id(index: usize) -> NodeId {
    NodeId(index as u32 + 1)
}

#[test]
fn three_nodes_join_through_one_seed_and_all_see_three_alive() {
    let mut net = Net::new(3, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    for index in 0..3 {
        let node = net.node(index);
        assert_eq!(node.members().len(), 2);
        assert_eq!(node.live_count(), 2);
        let joined = net.events[index]
            .iter()
            .filter(|event| matches!(event, Event::Joined { .. }))
            .count();
        assert_eq!(joined, 2, "node {index} saw each other node join once");
    }
}

#[test]
fn a_node_that_stops_answering_is_suspected_then_declared_dead_by_everyone_within_the_bound() {
    let mut net = Net::new(5, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.nodes[4] = None;
    let stopped = net.now;
    // Bound: a probe cycle of the 4 others (each period stretched at most health_max + 1
    // times would be far more; healthy nodes stay at 0), plus the longest suspicion timeout
    // (6 · 4 · log10 5 → 4 periods min, 24 periods max), plus dissemination.
    let period = config().probe_interval;
    let bound = period * (4 + 24 + 6);
    assert!(net.run_until(bound, |net| net.all_see(4, State::Dead)));
    assert!(net.now.saturating_duration_since(stopped) <= bound);
    for observer in 0..4 {
        let events = &net.events[observer];
        let suspected = events.iter().position(|e| {
            *e == Event::Suspected {
                node: id(4),
                incarnation: 1,
            }
        });
        let dead = events
            .iter()
            .position(|e| *e == Event::Dead { node: id(4) });
        assert!(
            suspected.is_some() && dead.is_some(),
            "node {observer}: {events:?}"
        );
        assert!(suspected < dead, "suspected before dead");
    }
    let confirmed: u64 = (0..4).map(|i| net.node(i).stats().confirmed_dead).sum();
    assert!(confirmed >= 1);
    for node in 0..4 {
        assert!(
            net.all_see(node, State::Alive),
            "no healthy node was accused"
        );
    }
}

#[test]
fn in_a_cluster_too_small_to_confirm_a_suspicion_the_minimum_timeout_applies() {
    // Three nodes: only one other member can confirm, never the three `indirect_probes` asks
    // for, so waiting for confirmations would always run to the maximum (24 periods here).
    let mut net = Net::new(3, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.nodes[2] = None;
    let stopped = net.now;
    // A probe cycle of the 2 others, the minimum suspicion (4 · max(1, log10 3) = 4 periods),
    // and a few periods of dissemination; far below the 24-period maximum.
    let period = config().probe_interval;
    let bound = period * (2 + 4 + 4);
    assert!(net.run_until(bound * 3, |net| net.all_see(2, State::Dead)));
    let took = net.now.saturating_duration_since(stopped);
    assert!(
        took <= bound,
        "declared dead after {took:?}, bound {bound:?}"
    );
}

#[test]
fn a_suspected_node_that_is_alive_refutes_with_a_higher_incarnation_and_is_alive_again_everywhere()
{
    // Long suspicions, so the isolated node is suspected but not declared dead.
    let slow = Config {
        suspicion_mult: 50,
        ..config()
    };
    let mut net = Net::new(4, MTU_DEFAULT, slow);
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.isolate(3);
    assert!(net.run_until(Duration::from_secs(5), |net| {
        (0..3).any(|observer| net.state(observer, 3) == Some(State::Suspect))
    }));
    net.cut.clear();
    assert!(net.run_until(Duration::from_secs(5), Net::all_alive));
    let refuted = net.node(3).incarnation();
    assert!(refuted > 1, "the suspect raised its incarnation");
    assert!(net.events[3].contains(&Event::IncarnationBumped {
        incarnation: refuted
    }));
    assert!(net.node(3).stats().refutations >= 1);
    for observer in 0..3 {
        let member = net.node(observer).member(id(3)).unwrap();
        assert_eq!(member.incarnation(), refuted);
        assert_eq!(member.state(), State::Alive);
    }
    let prevented: u64 = (0..3).map(|i| net.node(i).stats().suspicions_refuted).sum();
    assert!(prevented >= 1);
    assert!(net
        .events
        .iter()
        .flatten()
        .all(|e| !matches!(e, Event::Dead { .. })));
}

#[test]
fn indirect_probes_save_a_node_whose_direct_link_is_cut() {
    let mut net = Net::new(4, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.cut_both(0, 3);
    let before = net.node(0).stats().indirect_probes;
    net.run(Duration::from_secs(10));
    assert!(net.node(0).stats().indirect_probes > before);
    assert!(net.node(0).stats().acks > 0);
    assert!(net.all_alive());
    let suspected = net
        .events
        .iter()
        .flatten()
        .any(|e| matches!(e, Event::Suspected { .. }));
    assert!(!suspected, "no node was ever suspected");
}

#[test]
fn ten_percent_loss_declares_no_live_node_dead() {
    let mut net = Net::new(8, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.loss_percent = 10;
    net.run(Duration::from_secs(30));
    net.loss_percent = 0;
    assert!(net.run_until(Duration::from_secs(5), Net::all_alive));
    let dead = net
        .events
        .iter()
        .flatten()
        .filter(|e| matches!(e, Event::Dead { .. }))
        .count();
    let suspected: u64 = (0..8).map(|i| net.node(i).stats().suspicions).sum();
    let refuted: u64 = (0..8).map(|i| net.node(i).stats().refutations).sum();
    std::eprintln!("loss: {suspected} suspicions, {refuted} refutations, {dead} deaths");
    assert_eq!(dead, 0, "every suspicion was refuted in time");
}

#[test]
fn a_restarted_node_replaces_its_dead_record_and_the_table_size_stays_n() {
    let mut net = Net::new(5, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.nodes[4] = None;
    assert!(net.run_until(Duration::from_secs(10), |net| net.all_see(4, State::Dead)));
    net.restart(4, 2);
    // Within a few probe periods.
    assert!(net.run_until(config().probe_interval * 10, Net::all_alive));
    for observer in 0..4 {
        assert_eq!(net.node(observer).members().len(), 4);
        assert!(net.node(observer).member(id(4)).unwrap().incarnation() >= 2);
    }
    // Mass restart: every node at once, with a higher incarnation.
    for index in 0..5 {
        net.restart(index, 3);
    }
    assert!(net.run_until(Duration::from_secs(5), Net::all_alive));
    net.run(Duration::from_secs(2));
    for observer in 0..5 {
        assert_eq!(
            net.node(observer).members().len(),
            4,
            "no growth from identity churn"
        );
    }
}

#[test]
fn leave_is_seen_by_all_and_the_tombstone_is_collected() {
    let mut net = Net::new(5, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    net.nodes[2].as_mut().unwrap().leave();
    assert!(net.run_until(Duration::from_secs(3), |net| net.all_see(2, State::Left)));
    assert!(net.node(2).has_left());
    assert!(net.events[2].contains(&Event::IncarnationBumped { incarnation: 2 }));
    let dead = net
        .events
        .iter()
        .flatten()
        .any(|e| matches!(e, Event::Dead { .. }));
    assert!(!dead, "a node that left is not declared dead");
    net.nodes[2] = None;
    net.run(config().tombstone + Duration::from_secs(1));
    for observer in [0, 1, 3, 4] {
        assert!(
            net.node(observer).member(id(2)).is_none(),
            "tombstone removed"
        );
        assert!(net.events[observer].contains(&Event::Removed { node: id(2) }));
        assert_eq!(net.node(observer).members().len(), 3);
    }
}

fn full_cluster_fits(mtu: usize) {
    let mut net = Net::new(64, mtu, config());
    for index in 0..64 {
        let node = net.nodes[index].as_mut().unwrap();
        for key in 0..4u8 {
            node.set(key, &[index as u8; 16]).unwrap();
        }
    }
    assert!(net.run_until(Duration::from_secs(30), |net| {
        (0..64).all(|i| net.node(i).live_count() == 63)
    }));
    let converged = net.run_until(Duration::from_secs(60), |net| {
        (0..64).all(|observer| {
            (0..64).filter(|&node| node != observer).all(|node| {
                let member = net.node(observer).member(id(node)).unwrap();
                member.entries().len() == 4 && member.get(3) == Some(&[node as u8; 16][..])
            })
        })
    });
    let queue_full: u64 = (0..64).map(|i| net.node(i).stats().queue_full).sum();
    std::eprintln!(
        "mtu {mtu}: converged at {:?}, {} datagrams, digest items max {}, queue full {queue_full}",
        net.now,
        net.datagrams,
        net.digest_items_max
    );
    assert!(
        converged,
        "application state reached every node at MTU {mtu}"
    );
    net.run(Duration::from_secs(5));
    let total: u64 = (0..64).map(|i| net.node(i).stats().queue_full).sum();
    std::eprintln!(
        "mtu {mtu}: queue full in 5 s of steady state: {}",
        total - queue_full
    );
    assert!(
        net.digest_items_max <= DIGEST_ITEMS_MAX,
        "digests are chunked"
    );
    for index in 0..64 {
        assert_eq!(net.node(index).stats().unencodable, 0);
        assert_eq!(net.node(index).stats().malformed, 0);
    }
}

#[test]
fn every_datagram_fits_the_smallest_mtu_with_a_full_table() {
    full_cluster_fits(MTU_MIN);
}

#[test]
fn every_datagram_fits_the_default_mtu_with_a_full_table() {
    full_cluster_fits(MTU_DEFAULT);
}

#[test]
fn app_state_set_on_one_node_reaches_all_and_versions_only_increase() {
    let mut net = Net::new(5, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    let node = net.nodes[0].as_mut().unwrap();
    let first = node.set(1, b"a").unwrap();
    let second = node.set(1, b"b").unwrap();
    node.set(2, b"x").unwrap();
    assert!(second > first);
    let mut seen = [0u64; 5];
    let reached =
        |net: &Net| (1..5).all(|o| net.node(o).member(id(0)).unwrap().get(1) == Some(&b"b"[..]));
    let end = net.now + Duration::from_secs(5);
    while net.now < end && !reached(&net) {
        net.step();
        for (observer, seen) in seen.iter_mut().enumerate().skip(1) {
            let version = net.node(observer).member(id(0)).unwrap().version();
            assert!(version >= *seen, "versions only increase");
            *seen = version;
        }
    }
    assert!(reached(&net));
    // A restart: the new life's entries replace the old life's, versions still increase.
    net.restart(0, 2);
    net.nodes[0].as_mut().unwrap().set(3, b"new").unwrap();
    let renewed = net.run_until(Duration::from_secs(10), |net| {
        (1..5).all(|o| {
            let member = net.node(o).member(id(0)).unwrap();
            member.get(3) == Some(&b"new"[..]) && member.get(1).is_none()
        })
    });
    assert!(renewed);
    for (observer, seen) in seen.iter().enumerate().skip(1) {
        assert!(net.node(observer).member(id(0)).unwrap().version() > *seen);
    }
}

/// Probe periods (= gossip rounds in `config`) until a version set on one node of 64 is held
/// by all 63 others, with `loss_percent` loss from the set on; `None` when it took over 60 s.
fn periods_to_spread(config: Config, loss_percent: u64) -> Option<u64> {
    const COUNT: usize = 64;
    let mut net = Net::new(COUNT, MTU_MIN, config);
    let joined = net.run_until(Duration::from_secs(60), |net| {
        (0..COUNT).all(|i| net.node(i).live_count() == COUNT - 1)
    });
    assert!(joined, "the cluster formed");
    // Steady state: the join's records have been piggybacked their share of times.
    net.run(Duration::from_secs(10));
    net.loss_percent = loss_percent;
    let origin = 5;
    let version = net.nodes[origin]
        .as_mut()
        .unwrap()
        .set(0, b"bumped")
        .unwrap();
    let start = net.now;
    let spread = net.run_until(Duration::from_secs(60), |net| {
        (0..COUNT)
            .filter(|&observer| observer != origin)
            .all(|observer| net.node(observer).member(id(origin)).unwrap().version() >= version)
    });
    let elapsed = net.now.saturating_duration_since(start);
    let periods = elapsed
        .as_micros()
        .div_ceil(config.probe_interval.as_micros()) as u64;
    std::eprintln!("spread to {COUNT} at {loss_percent}% loss in {periods} periods");
    for index in 0..COUNT {
        assert_eq!(net.node(index).stats().unencodable, 0);
        assert_eq!(net.node(index).stats().malformed, 0);
    }
    spread.then_some(periods)
}

/// An epidemic spreads to N nodes in about log2 N + ln N rounds; allow three times
/// ceil(log2 64) = 6 plus a few rounds for loss and pull round trips. Digests carry a member's
/// version only while its record is in the sender's window (16 records, rotating), so without
/// the versions on piggybacked updates a bump does not spread at all when push-pull is off,
/// and takes O(N / 16) rounds when it is on (41 to 72 at N = 1000 in `sim_membership`).
const SPREAD_BOUND: u64 = 3 * 6 + 4;

#[test]
fn a_version_bump_spreads_epidemically_by_piggybacked_updates_alone() {
    // Push-pull off after the join: only pings, acks and pulls carry the new version.
    let config = Config {
        gossip_interval: Duration::from_secs(3600),
        ..config()
    };
    for loss in [0, 10] {
        let periods = periods_to_spread(config, loss).expect("the version reached every node");
        assert!(
            periods <= SPREAD_BOUND,
            "{periods} periods at {loss}% loss, bound {SPREAD_BOUND}"
        );
    }
}

#[test]
fn a_version_bump_spreads_within_the_epidemic_bound_with_push_pull() {
    for loss in [0, 10] {
        let periods = periods_to_spread(config(), loss).expect("the version reached every node");
        assert!(
            periods <= SPREAD_BOUND,
            "{periods} periods at {loss}% loss, bound {SPREAD_BOUND}"
        );
    }
}

#[test]
fn a_stalled_node_does_not_accuse_healthy_ones_when_it_wakes() {
    let mut net = Net::new(4, MTU_DEFAULT, config());
    assert!(net.run_until(Duration::from_secs(3), Net::all_alive));
    // Let a probe be in flight, then pause the process.
    net.run(Duration::from_millis(30));
    let suspicions = net.node(2).stats().suspicions;
    net.stalled[2] = true;
    net.run(Duration::from_secs(2));
    net.stalled[2] = false;
    net.run(Duration::from_millis(500));
    let node = net.node(2);
    assert_eq!(node.stats().stalls, 1);
    assert_eq!(
        node.stats().suspicions,
        suspicions,
        "it suspected nobody on waking"
    );
    assert_eq!(node.stats().confirmed_dead, 0);
}

#[test]
fn malformed_payloads_are_counted_and_change_nothing() {
    let mut node = Node::new(config(), id(0), addr(0), 1, &[]);
    let peer = Peer {
        addr: addr(1),
        node: id(1),
        incarnation: 1,
    };
    let mut buffer = [0u8; 64];
    let head = Head {
        incarnation: 1,
        message: Message::Ping { seq: 1 },
        updates: 0,
    };
    let len = postcard::to_slice(&head, &mut buffer).unwrap().len();
    let mut trailing = buffer[..len].to_vec();
    trailing.push(0);
    node.handle_message(Instant::ZERO, peer, &trailing);
    // An overlong varint for the incarnation (1 as 0x81 0x00).
    let mut overlong = std::vec![0x81, 0x00];
    overlong.extend_from_slice(&buffer[1..len]);
    node.handle_message(Instant::ZERO, peer, &overlong);
    assert_eq!(node.stats().malformed, 2);
    assert!(node.members().is_empty());
    node.handle_message(Instant::ZERO, peer, &buffer[..len]);
    assert_eq!(
        node.members().len(),
        1,
        "the well-formed ping is direct evidence"
    );
}

#[test]
fn golden_messages_match_spec_section_12() {
    // SPEC.md 12.5, first example: a ping from incarnation 3, seq 7, carrying one update:
    // node 2 suspect at incarnation 5, at 10.0.0.2:7000, its entries held up to 2^32 + 1.
    let mut buffer = [0u8; 64];
    let update = Update {
        node: NodeId(2),
        incarnation: 5,
        state: State::Suspect,
        address: Address::V4([10, 0, 0, 2], 7000),
        version: (1 << 32) + 1,
    };
    let end = put(&update, &mut buffer, HEAD_LEN_MAX, 64).unwrap();
    let head = Head {
        incarnation: 3,
        message: Message::Ping { seq: 7 },
        updates: 1,
    };
    let len = finish(&head, &mut buffer, end).unwrap();
    assert_eq!(
        buffer[..len],
        [
            0x03, 0x00, 0x07, 0x01, // head: incarnation 3, Ping, seq 7, 1 update
            0x02, 0x05, 0x01, // update: node 2, incarnation 5, suspect
            0x00, 0x0a, 0x00, 0x00, 0x02, 0xd8, 0x36, // 10.0.0.2:7000
            0x81, 0x80, 0x80, 0x80, 0x10, // version 2^32 + 1
        ]
    );
    // Second example: a delta with one group: node 1's entries in (0, 2^32 + 1], one entry
    // key 4 = "hi" at version 2^32 + 1.
    let mut buffer = [0u8; 64];
    let group = Group {
        node: NodeId(1),
        base: 0,
        version: (1 << 32) + 1,
        entries: 1,
    };
    let end = put(&group, &mut buffer, HEAD_LEN_MAX, 64).unwrap();
    let end = put_entry(4, (1 << 32) + 1, b"hi", &mut buffer, end, 64).unwrap();
    let head = Head {
        incarnation: 1,
        message: Message::Delta { groups: 1 },
        updates: 0,
    };
    let len = finish(&head, &mut buffer, end).unwrap();
    let expected = [
        0x01, 0x05, 0x01, 0x00, // head: incarnation 1, Delta, 1 group, 0 updates
        0x01, 0x00, 0x81, 0x80, 0x80, 0x80, 0x10,
        0x01, // group: node 1, base 0, version, 1 entry
        0x04, 0x81, 0x80, 0x80, 0x80, 0x10, 0x02, 0x68, 0x69, // entry
    ];
    assert_eq!(buffer[..len], expected);
    let mut items = HeapVec::new();
    walk(&buffer[..len], 16, &mut |item| {
        items.push(format_item(item))
    })
    .unwrap();
    assert_eq!(items, ["group 1", "entry 4"]);
}

fn format_item(item: Item<'_>) -> std::string::String {
    match item {
        Item::Digest(item) => std::format!("digest {}", item.node.0),
        Item::Update(update) => std::format!("update {}", update.node.0),
        Item::Group(group) => std::format!("group {}", group.node.0),
        Item::Entry { key, .. } => std::format!("entry {key}"),
        Item::Record(record) => std::format!("record {}", record.node.0),
    }
}

#[test]
fn the_suspicion_timeout_shrinks_from_max_to_min_with_confirmations() {
    let period = Duration::from_secs(1);
    let timeouts: HeapVec<Duration> = (0..=4)
        .map(|c| suspicion_timeout(4, 6, 100, period, c, 3))
        .collect();
    // min = 4 · log10(100) ≈ 8 periods (the log is approximate), max = 6 · min.
    let min = timeouts[3];
    assert!(
        min >= Duration::from_millis(7500) && min <= Duration::from_millis(8500),
        "{min:?}"
    );
    assert_eq!(timeouts[0], min * 6);
    assert!(timeouts.windows(2).all(|pair| pair[0] >= pair[1]));
    assert_eq!(timeouts[4], min);
    assert_eq!(retransmits(4, 3), 4);
    assert_eq!(retransmits(4, 100), 12);
}

#[test]
fn phi_grows_with_silence() {
    let mut arrivals = Arrivals::new();
    for beat in 0..10u64 {
        arrivals.record(beat * 1000, 100);
    }
    let soon = arrivals.phi(9_500).unwrap();
    let late = arrivals.phi(19_000).unwrap();
    assert!(soon < 1.0 && late > 4.0, "{soon} {late}");
}

fn arbitrary_state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Alive),
        Just(State::Suspect),
        Just(State::Dead),
        Just(State::Left)
    ]
}

proptest! {
    #[test]
    fn messages_round_trip(
        incarnation: u32,
        seq: u32,
        updates in proptest::collection::vec((any::<u32>(), any::<u32>(), arbitrary_state(), any::<[u8; 4]>(), any::<u16>(), any::<u64>()), 0..20),
    ) {
        let mut buffer = [0u8; MTU_DEFAULT];
        let mut at = HEAD_LEN_MAX;
        let mut sent = HeapVec::new();
        for (node, incarnation, state, ip, port, version) in updates {
            let update = Update { node: NodeId(node), incarnation, state, address: Address::V4(ip, port), version };
            at = put(&update, &mut buffer, at, MTU_DEFAULT).unwrap();
            sent.push(update);
        }
        let head = Head { incarnation, message: Message::Ack { seq }, updates: sent.len() as u8 };
        let len = finish(&head, &mut buffer, at).unwrap();
        let mut received = HeapVec::new();
        let decoded = walk(&buffer[..len], 16, &mut |item| {
            if let Item::Update(update) = item { received.push(update) }
        }).unwrap();
        prop_assert_eq!(decoded, head);
        prop_assert_eq!(received, sent);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), seed: u64) {
        let mut node = Node::new(config(), id(0), addr(0), 1, &[addr(1)]);
        let peer = Peer { addr: addr(1), node: id(1), incarnation: 1 };
        let mut rng = SplitMix64::new(seed);
        node.handle_message(Instant::ZERO, peer, &bytes);
        // A message of arbitrary items after a valid digest head, too.
        let mut digest = std::vec![0x01, 0x04, 0x01, (seed % 17) as u8, 0x00];
        digest.extend_from_slice(&bytes);
        node.handle_message(Instant::ZERO, peer, &digest);
        node.handle_timeout(Instant::from_millis(rng.below(5000)), &mut rng);
        let mut buffer = [0u8; MTU_MIN];
        while let Some(transmit) = node.poll_transmit(Instant::ZERO, &mut buffer) {
            prop_assert!(transmit.len <= MTU_MIN);
            let decoded = walk(&buffer[..transmit.len], 16, &mut |_| ());
            prop_assert!(decoded.is_ok());
        }
    }
}

#[test]
#[cfg(target_pointer_width = "64")]
fn memory_per_member_is_what_the_module_docs_say() {
    use core::mem::size_of;
    let per_key = |value_max: usize| (value_max + 24).div_ceil(8) * 8;
    assert_eq!(size_of::<Member<0, 0>>(), 184);
    assert_eq!(size_of::<Member<4, 16>>(), 184 + 4 * per_key(16));
    assert_eq!(size_of::<Member<8, 32>>(), 184 + 8 * per_key(32));
    assert!(size_of::<Membership<0, 0, 0>>() <= 8 * 1024);
}
