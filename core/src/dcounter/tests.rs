use super::*;
use crate::rng::SplitMix64;
use crate::storage::RamStorage;
use core::net::{IpAddr, Ipv4Addr};
use std::vec::Vec as HeapVec;

type Ram = RamStorage<16384>;
type Flaky = crate::testing::Flaky<16384>;
type Node = DistributedCounter<Ram, [u8; 2048], 8, 8, 16, 8>;

fn addr(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1)), 7000)
}

fn config(index: usize, incarnation: u32) -> Config {
    let mut config = Config::new(NodeId(index as u32 + 1), incarnation);
    config.checkpoint_every = 5;
    config.log.segment_size = 2048;
    config
}

fn open(storage: Ram, index: usize, incarnation: u32, nodes: usize) -> Node {
    let peers: heapless::Vec<SocketAddr, 8> =
        (0..nodes).filter(|&i| i != index).map(addr).collect();
    Node::open(storage, [0; 2048], config(index, incarnation), &peers)
        .expect("open")
        .0
}

fn fresh(index: usize, nodes: usize) -> Node {
    open(RamStorage::new(8, 512, 0xFF).unwrap(), index, 1, nodes)
}

fn peer(index: usize, incarnation: u32) -> Peer {
    Peer {
        addr: addr(index),
        node: NodeId(index as u32 + 1),
        incarnation,
    }
}

const CLIENT: usize = 50;

/// A message in flight between test nodes.
struct Flight {
    from: usize,
    to: usize,
    bytes: HeapVec<u8>,
}

/// Moves every queued message, dropping, duplicating and reordering them with `rng`.
fn exchange(nodes: &mut [Node], now: Instant, rng: &mut SplitMix64, loss_percent: u64) -> usize {
    let mut flights: HeapVec<Flight> = HeapVec::new();
    for (from, node) in nodes.iter_mut().enumerate() {
        let mut buffer = [0u8; 1400];
        while let Some(transmit) = node.poll_transmit(now, &mut buffer) {
            let to = (0..CLIENT + 1).find(|&i| addr(i) == transmit.to).unwrap();
            let bytes = buffer[..transmit.len].to_vec();
            let copies = if rng.below(100) < 10 { 2 } else { 1 };
            for _ in 0..copies {
                if rng.below(100) >= loss_percent {
                    flights.push(Flight {
                        from,
                        to,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
    }
    // Reorder: a seeded shuffle.
    for i in (1..flights.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        flights.swap(i, j);
    }
    let moved = flights.len();
    for flight in flights {
        if flight.to < nodes.len() {
            nodes[flight.to].handle_message(now, peer(flight.from, 1), &flight.bytes);
        }
    }
    for node in nodes.iter_mut() {
        node.commit().unwrap();
    }
    moved
}

fn run_rounds(nodes: &mut [Node], rng: &mut SplitMix64, rounds: u64, loss: u64) {
    for round in 0..rounds {
        let now = Instant::from_millis(round * 250);
        for node in nodes.iter_mut() {
            node.handle_timeout(now, rng);
        }
        exchange(nodes, now, rng, loss);
    }
}

fn incr_from_client(node: &mut Node, request: u64, by: u64) {
    let client = Peer {
        addr: addr(CLIENT),
        node: NodeId(0x8000_0000),
        incarnation: 7,
    };
    let mut payload = [0u8; 64];
    let len = message::encode(&Message::Incr { request, by }, &mut payload).unwrap();
    node.handle_message(Instant::ZERO, client, &payload[..len]);
}

fn take_reply(node: &mut Node) -> Option<Message> {
    let mut buffer = [0u8; 1400];
    while let Some(transmit) = node.poll_transmit(Instant::ZERO, &mut buffer) {
        if transmit.to == addr(CLIENT) {
            return Some(message::decode(&buffer[..transmit.len]).unwrap().0);
        }
    }
    None
}

#[test]
fn an_increment_is_answered_only_after_the_commit_syncs_it() {
    let mut node = fresh(0, 1);
    incr_from_client(&mut node, 1, 5);
    assert_eq!(take_reply(&mut node), None, "no reply before the sync");
    let syncs = node.stats().syncs;
    node.commit().unwrap();
    assert_eq!(node.stats().syncs, syncs + 1);
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Value {
            request: 1,
            value: 5
        })
    );
    node.commit().unwrap();
    assert_eq!(node.stats().syncs, syncs + 1, "nothing staged: no sync");
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut node = fresh(0, 1);
    incr_from_client(&mut node, 9, 3);
    incr_from_client(&mut node, 9, 3); // retry before the sync: waits for the same reply
    node.commit().unwrap();
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Value {
            request: 9,
            value: 3
        })
    );
    incr_from_client(&mut node, 9, 3); // retry after: answered from memory
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Value {
            request: 9,
            value: 3
        })
    );
    assert_eq!(node.value(), 3);
    // And across a restart, from the log.
    let (storage, _) = node.log.into_parts();
    let mut node = open(storage, 0, 2, 1);
    incr_from_client(&mut node, 9, 3);
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Value {
            request: 9,
            value: 3
        })
    );
    assert_eq!(node.value(), 3);
}

#[test]
fn acknowledged_increments_survive_a_restart_through_checkpoints() {
    let mut node = fresh(0, 1);
    for request in 0..23 {
        incr_from_client(&mut node, request, request + 1);
        node.commit().unwrap();
        assert!(take_reply(&mut node).is_some());
    }
    let expected: u64 = (1..=23).sum();
    assert_eq!(node.value(), expected);
    assert!(
        node.stats().checkpoints >= 4,
        "a checkpoint every 5 increments"
    );
    let (storage, _) = node.log.into_parts();
    let node = open(storage, 0, 2, 1);
    assert_eq!(node.value(), expected);
}

#[test]
fn an_overflowing_increment_is_refused_and_changes_nothing() {
    let mut node = fresh(0, 1);
    incr_from_client(&mut node, 1, u64::MAX);
    node.commit().unwrap();
    assert!(matches!(take_reply(&mut node), Some(Message::Value { .. })));
    incr_from_client(&mut node, 2, 1);
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Refused {
            request: 2,
            reason: Refusal::Overflow
        })
    );
    assert_eq!(node.value(), u64::MAX);
}

#[test]
fn malformed_payloads_are_counted_and_dropped() {
    let mut node = fresh(0, 2);
    for bytes in [&[][..], &[0xFF; 3][..], &[0, 1, 5, 1, 3, 0][..]] {
        node.handle_message(Instant::ZERO, peer(1, 1), bytes);
    }
    assert_eq!(node.stats().malformed, 3);
    assert_eq!(node.value(), 0);
}

#[test]
fn nodes_converge_to_the_exact_sum_under_loss_duplication_and_reordering() {
    for seed in 0..40 {
        let mut rng = SplitMix64::new(seed);
        let mut nodes: HeapVec<Node> = (0..4).map(|index| fresh(index, 4)).collect();
        let mut expected = 0;
        for step in 0..30u64 {
            let index = rng.below(4) as usize;
            let by = rng.below(100) + 1;
            incr_from_client(&mut nodes[index], step, by);
            expected += by;
            if step % 3 == 0 {
                run_rounds(&mut nodes, &mut rng, 1, 30);
            }
        }
        run_rounds(&mut nodes, &mut rng, 60, 30);
        for node in &nodes {
            assert_eq!(node.value(), expected, "seed {seed}");
        }
    }
}

#[test]
fn a_restarted_node_gets_the_whole_state_again() {
    let mut rng = SplitMix64::new(3);
    let mut nodes: HeapVec<Node> = (0..3).map(|index| fresh(index, 3)).collect();
    incr_from_client(&mut nodes[1], 1, 10);
    incr_from_client(&mut nodes[2], 1, 20);
    run_rounds(&mut nodes, &mut rng, 20, 0);
    assert!(nodes.iter().all(|node| node.value() == 30));
    // Node 0 restarts with a blank disk: the others must notice its new incarnation.
    let mut restarted = open(RamStorage::new(8, 512, 0xFF).unwrap(), 0, 2, 3);
    core::mem::swap(&mut nodes[0], &mut restarted);
    for round in 0..20 {
        let now = Instant::from_millis(10_000 + round * 250);
        for node in nodes.iter_mut() {
            node.handle_timeout(now, &mut rng);
        }
        let mut moved = HeapVec::new();
        for (from, node) in nodes.iter_mut().enumerate() {
            let mut buffer = [0u8; 1400];
            while let Some(transmit) = node.poll_transmit(now, &mut buffer) {
                let to = (0..3).find(|&i| addr(i) == transmit.to).unwrap();
                moved.push((from, to, buffer[..transmit.len].to_vec()));
            }
        }
        for (from, to, bytes) in moved {
            let incarnation = if from == 0 { 2 } else { 1 };
            nodes[to].handle_message(now, peer(from, incarnation), &bytes);
        }
    }
    assert_eq!(nodes[0].value(), 30);
}

#[test]
fn a_state_larger_than_one_datagram_goes_in_chunks() {
    type Wide = DistributedCounter<RamStorage<65536>, [u8; 4096], 64, 2, 4, 4>;
    let open_wide = |index: usize| {
        let mut config = config(index, 1);
        config.chunks_per_round = 2;
        config.log.segment_size = 4096;
        Wide::open(
            RamStorage::new(8, 512, 0xFF).unwrap(),
            [0; 4096],
            config,
            &[addr(1 - index)],
        )
        .unwrap()
        .0
    };
    let (mut source, mut sink) = (
        std::boxed::Box::new(open_wide(0)),
        std::boxed::Box::new(open_wide(1)),
    );
    for node in 1..=60u32 {
        source.raise(NodeId(node * 1000), u64::from(node) << 40);
    }
    let mut rng = SplitMix64::new(1);
    let mut datagrams = 0;
    for round in 0..40 {
        let now = Instant::from_millis(round * 250);
        source.handle_timeout(now, &mut rng);
        let mut buffer = [0u8; 508];
        while let Some(transmit) = source.poll_transmit(now, &mut buffer) {
            assert!(transmit.len <= 508);
            datagrams += 1;
            sink.handle_message(now, peer(0, 1), &buffer[..transmit.len]);
        }
        while let Some(transmit) = sink.poll_transmit(now, &mut buffer) {
            source.handle_message(now, peer(1, 1), &buffer[..transmit.len]);
        }
    }
    assert_eq!(sink.counts(), source.counts());
    assert!(
        datagrams > 2,
        "60 wide entries do not fit one 508-byte datagram"
    );
}

#[test]
fn the_state_digest_matches_spec_md() {
    assert_eq!(message::digest(core::iter::empty()), 0xf52a_15e9_a9b5_e89b);
    let state = [(NodeId(1), 5), (NodeId(2), 7)];
    assert_eq!(message::digest(state.into_iter()), 0xfaf9_8fdd_2548_cc31);
    assert_eq!(message::entry_len(NodeId(1), 5), 2);
    assert_eq!(message::entry_len(NodeId(300), u64::MAX), 2 + 10);
}

#[test]
fn converged_peers_stop_sending_entries() {
    let mut rng = SplitMix64::new(9);
    let mut nodes: HeapVec<Node> = (0..3).map(|index| fresh(index, 3)).collect();
    for (index, node) in nodes.iter_mut().enumerate() {
        incr_from_client(node, 1, index as u64 + 1);
    }
    run_rounds(&mut nodes, &mut rng, 20, 0);
    assert!(nodes.iter().all(|node| node.value() == 6));
    let raised: HeapVec<u64> = nodes
        .iter()
        .map(|node| node.stats().entries_raised)
        .collect();
    let mut buffer = [0u8; 1400];
    for round in 20..30 {
        let now = Instant::from_millis(round * 250);
        for node in nodes.iter_mut() {
            node.handle_timeout(now, &mut rng);
            while let Some(transmit) = node.poll_transmit(now, &mut buffer) {
                let (head, _) = message::decode(&buffer[..transmit.len]).unwrap();
                if let Message::Push { count, .. } = head {
                    assert_eq!(count, 0, "a converged node pushes no entries");
                }
            }
        }
    }
    let after: HeapVec<u64> = nodes
        .iter()
        .map(|node| node.stats().entries_raised)
        .collect();
    assert_eq!(raised, after);
}

#[test]
fn an_increment_whose_commit_failed_never_reaches_a_peer() {
    type FlakyNode = DistributedCounter<Flaky, [u8; 2048], 8, 8, 16, 8>;
    let open_flaky = |storage: Ram, incarnation: u32| {
        let flaky = Flaky {
            inner: storage,
            fail_writes: false,
        };
        FlakyNode::open(flaky, [0; 2048], config(0, incarnation), &[addr(1)])
            .unwrap()
            .0
    };
    let mut a = std::boxed::Box::new(open_flaky(RamStorage::new(8, 512, 0xFF).unwrap(), 1));
    let mut b = std::boxed::Box::new(fresh(1, 2));
    let mut rng = SplitMix64::new(5);
    let client = Peer {
        addr: addr(CLIENT),
        node: NodeId(0x8000_0000),
        incarnation: 7,
    };
    let incr = |request: u64, by: u64| {
        let mut payload = [0u8; 64];
        let len = message::encode(&Message::Incr { request, by }, &mut payload).unwrap();
        (payload, len)
    };
    let mut buffer = [0u8; 1400];
    let mut gossip = |a: &mut FlakyNode, b: &mut Node, now: Instant, rng: &mut SplitMix64| {
        a.handle_timeout(now, rng);
        b.handle_timeout(now, rng);
        while let Some(t) = a.poll_transmit(now, &mut buffer) {
            if t.to == addr(1) {
                b.handle_message(now, peer(0, a.config.incarnation), &buffer[..t.len]);
            }
        }
        while let Some(t) = b.poll_transmit(now, &mut buffer) {
            if t.to == addr(0) {
                a.handle_message(now, peer(1, 1), &buffer[..t.len]);
            }
        }
    };
    let (payload, len) = incr(1, 5);
    a.handle_message(Instant::ZERO, client, &payload[..len]);
    a.commit().unwrap();
    gossip(&mut a, &mut b, Instant::ZERO, &mut rng);
    assert_eq!(b.value(), 5);
    // An increment of 100 whose commit fails; the step then sends what it has (a push).
    let (payload, len) = incr(2, 100);
    a.handle_message(Instant::from_millis(500), client, &payload[..len]);
    a.log.storage_mut().fail_writes = true;
    assert!(a.commit().is_err());
    gossip(&mut a, &mut b, Instant::from_millis(1000), &mut rng);
    // The node restarts from its medium: the 100 never landed. It acknowledges 1 more.
    let (flaky, _) = a.into_parts();
    let mut a = std::boxed::Box::new(open_flaky(flaky.inner, 2));
    assert_eq!(a.value(), 5);
    let (payload, len) = incr(3, 1);
    a.handle_message(Instant::from_millis(2000), client, &payload[..len]);
    a.commit().unwrap();
    for round in 0..20 {
        gossip(
            &mut a,
            &mut b,
            Instant::from_millis(3000 + round * 250),
            &mut rng,
        );
    }
    assert_eq!(b.value(), 6, "5 and 1 acknowledged; the 100 never was");
    assert_eq!(a.value(), 6);
}

/// Moves every queued message between nodes whose link `allowed` permits.
fn exchange_links(nodes: &mut [Node], now: Instant, allowed: impl Fn(usize, usize) -> bool) {
    let mut flights: HeapVec<Flight> = HeapVec::new();
    let count = nodes.len();
    for (from, node) in nodes.iter_mut().enumerate() {
        let mut buffer = [0u8; 1400];
        while let Some(transmit) = node.poll_transmit(now, &mut buffer) {
            let to = (0..CLIENT + 1).find(|&i| addr(i) == transmit.to).unwrap();
            if to < count && allowed(from, to) {
                flights.push(Flight {
                    from,
                    to,
                    bytes: buffer[..transmit.len].to_vec(),
                });
            }
        }
    }
    for flight in flights {
        nodes[flight.to].handle_message(now, peer(flight.from, 1), &flight.bytes);
    }
    for node in nodes.iter_mut() {
        node.commit().unwrap();
    }
}

#[test]
fn a_zero_increment_leaves_gossip_relaying_every_entry() {
    let mut rng = SplitMix64::new(11);
    let mut nodes: HeapVec<Node> = (0..3).map(|index| fresh(index, 3)).collect();
    // B (1) and C (2) cannot talk; A (0) relays.
    let links = |from: usize, to: usize| !matches!((from, to), (1, 2) | (2, 1));
    incr_from_client(&mut nodes[0], 1, 0); // a zero increment on A
    nodes[0].commit().unwrap();
    let _ = take_reply(&mut nodes[0]);
    incr_from_client(&mut nodes[1], 1, 5);
    nodes[1].commit().unwrap();
    let mut t = 0;
    for _ in 0..20 {
        t += 250;
        for node in nodes.iter_mut() {
            node.handle_timeout(Instant::from_millis(t), &mut rng);
        }
        exchange_links(&mut nodes, Instant::from_millis(t), links);
    }
    assert_eq!(nodes[2].value(), 5, "C learned B's 5 through A");
    incr_from_client(&mut nodes[1], 2, 4);
    nodes[1].commit().unwrap();
    for _ in 0..60 {
        t += 250;
        for node in nodes.iter_mut() {
            node.handle_timeout(Instant::from_millis(t), &mut rng);
        }
        exchange_links(&mut nodes, Instant::from_millis(t), links);
    }
    assert_eq!(nodes[0].value(), 9, "A has B's 9");
    assert_eq!(nodes[2].value(), 9, "C should learn B's 9 through A");
}

#[test]
fn a_retry_after_a_failed_commit_is_not_answered_as_done() {
    type FlakyNode = DistributedCounter<Flaky, [u8; 2048], 8, 8, 16, 8>;
    let flaky = Flaky {
        inner: RamStorage::new(8, 512, 0xFF).unwrap(),
        fail_writes: false,
    };
    let mut a = std::boxed::Box::new(
        FlakyNode::open(flaky, [0; 2048], config(0, 1), &[addr(1)])
            .unwrap()
            .0,
    );
    let client = Peer {
        addr: addr(CLIENT),
        node: NodeId(0x8000_0000),
        incarnation: 7,
    };
    let mut payload = [0u8; 64];
    let len = message::encode(
        &Message::Incr {
            request: 42,
            by: 100,
        },
        &mut payload,
    )
    .unwrap();
    a.handle_message(Instant::ZERO, client, &payload[..len]);
    a.log.storage_mut().fail_writes = true;
    assert!(a.commit().is_err());
    let mut buffer = [0u8; 1400];
    let t = a.poll_transmit(Instant::ZERO, &mut buffer).unwrap();
    let first = message::decode(&buffer[..t.len]).unwrap().0;
    assert!(matches!(first, Message::Refused { .. }), "{first:?}");
    // The client retries (the driver keeps running a poisoned service).
    a.handle_message(Instant::ZERO, client, &payload[..len]);
    let _ = a.commit();
    let t = a.poll_transmit(Instant::ZERO, &mut buffer).unwrap();
    let retry = message::decode(&buffer[..t.len]).unwrap().0;
    let (flaky, _) = a.into_parts();
    let reopened = FlakyNode::open(flaky, [0; 2048], config(0, 2), &[])
        .unwrap()
        .0;
    assert_eq!(
        reopened.value(),
        0,
        "the increment never reached the medium"
    );
    assert!(
        !matches!(retry, Message::Value { .. }),
        "an increment that never became durable was acknowledged"
    );
}

#[test]
fn a_retry_after_a_restart_is_recognised_when_a_checkpoint_shared_its_sync() {
    let mut node = fresh(0, 1);
    // The fifth increment is followed by a checkpoint in the same sync (checkpoint_every = 5).
    for request in 1..=5 {
        incr_from_client(&mut node, request, 10);
        node.commit().unwrap();
        assert!(take_reply(&mut node).is_some());
    }
    assert!(node.stats().checkpoints >= 1);
    let (storage, _) = node.log.into_parts();
    let mut node = open(storage, 0, 2, 1);
    assert_eq!(node.value(), 50);
    // The reply to request 5 was lost; the client retries after the restart.
    incr_from_client(&mut node, 5, 10);
    assert_eq!(
        take_reply(&mut node),
        Some(Message::Value {
            request: 5,
            value: 50
        })
    );
    node.commit().unwrap();
    assert_eq!(node.value(), 50, "applied once");
}
