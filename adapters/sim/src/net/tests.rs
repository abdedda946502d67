use super::*;

fn addr(node: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, node], 7000))
}

fn new_network(seed: u64, faults: NetFaults, nodes: u8) -> SimNetwork {
    let mut network = SimNetwork::new(seed).with_faults(faults);
    for node in 1..=nodes {
        network.add_endpoint(addr(node));
    }
    network
}

/// Everything waiting at `at`, as (from, bytes).
fn drain(network: &mut SimNetwork, at: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buffer = [0; MTU_MAX];
    let mut received = Vec::new();
    while let Some(datagram) = network.recv(at, &mut buffer).unwrap() {
        received.push((datagram.from, buffer[..datagram.len].to_vec()));
    }
    received
}

fn assert_books_balance(network: &SimNetwork) {
    let counters = network.counters();
    let dropped = counters.dropped_loss
        + counters.dropped_partition
        + counters.dropped_inbox_full
        + counters.dropped_down
        + counters.dropped_unknown;
    assert_eq!(
        counters.sent + counters.duplicated,
        counters.delivered + dropped + network.in_flight() as u64,
        "{counters:?}"
    );
}

const LATENCY_1MS: NetFaults = NetFaults {
    latency_min_micros: 1000,
    latency_max_micros: 1000,
    ..NetFaults::NONE
};

#[test]
fn a_datagram_arrives_only_when_the_clock_reaches_its_delivery_time() {
    let mut network = new_network(1, LATENCY_1MS, 2);
    network.advance_to(Instant::from_micros(500));
    network.endpoint(addr(1)).send(addr(2), b"ping").unwrap();
    assert_eq!(network.next_delivery(), Some(Instant::from_micros(1500)));
    network.advance_to(Instant::from_micros(1499));
    assert_eq!(network.inbox_len(addr(2)), 0);
    network.advance_to(Instant::from_micros(1500));
    assert_eq!(network.next_delivery(), None);
    assert_eq!(drain(&mut network, addr(2)), [(addr(1), b"ping".to_vec())]);

    // The clock never goes backwards, and zero latency still waits for advance_to.
    network.advance_to(Instant::ZERO);
    assert_eq!(network.now(), Instant::from_micros(1500));
    network.set_faults(NetFaults::NONE);
    network.endpoint(addr(2)).send(addr(1), b"pong").unwrap();
    assert_eq!(network.inbox_len(addr(1)), 0);
    network.advance_to(network.now());
    assert_eq!(drain(&mut network, addr(1)), [(addr(2), b"pong".to_vec())]);
    assert_books_balance(&network);
}

/// Sends `count` numbered datagrams of 64 bytes from node 1 to node 2 and returns what arrived.
fn send_many(network: &mut SimNetwork, count: u32) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut received = Vec::new();
    for index in 0..count {
        let mut bytes = [0u8; 64];
        bytes[..4].copy_from_slice(&index.to_le_bytes());
        network.send(addr(1), addr(2), &bytes).unwrap();
        while let Some(due) = network.next_delivery() {
            network.advance_to(due);
        }
        received.extend(drain(network, addr(2)));
    }
    received
}

#[test]
fn each_fault_happens_at_roughly_its_probability() {
    let count = 10_000;
    let lossy = NetFaults {
        drop: 0.3,
        ..NetFaults::NONE
    };
    let mut network = new_network(11, lossy, 2);
    let received = send_many(&mut network, count);
    let lost = network.counters().dropped_loss;
    assert!((2_500..=3_500).contains(&lost), "{lost} lost");
    assert_eq!(received.len() as u64, u64::from(count) - lost);
    assert_books_balance(&network);

    let duplicating = NetFaults {
        duplicate: 0.1,
        ..NetFaults::NONE
    };
    let mut network = new_network(12, duplicating, 2);
    let received = send_many(&mut network, count);
    let duplicated = network.counters().duplicated;
    assert!(
        (700..=1_300).contains(&duplicated),
        "{duplicated} duplicated"
    );
    assert_eq!(received.len() as u64, u64::from(count) + duplicated);
    assert_books_balance(&network);

    let corrupting = NetFaults {
        corrupt: 0.05,
        ..NetFaults::NONE
    };
    let mut network = new_network(13, corrupting, 2);
    let received = send_many(&mut network, count);
    let corrupted = network.counters().corrupted;
    assert!((350..=650).contains(&corrupted), "{corrupted} corrupted");
    let damaged = received
        .iter()
        .enumerate()
        .filter(|(index, (_, bytes))| {
            let mut expected = [0u8; 64];
            expected[..4].copy_from_slice(&(*index as u32).to_le_bytes());
            bytes[..] != expected
        })
        .count();
    assert_eq!(damaged as u64, corrupted);
}

#[test]
fn corruption_flips_exactly_one_bit() {
    let always = NetFaults {
        corrupt: 1.0,
        ..NetFaults::NONE
    };
    let mut network = new_network(5, always, 2);
    let original: Vec<u8> = (0..=255).collect();
    for _ in 0..200 {
        network.send(addr(1), addr(2), &original).unwrap();
    }
    network.advance_to(network.now());
    let received = drain(&mut network, addr(2));
    assert_eq!(received.len(), 200);
    for (_, bytes) in &received {
        let flipped: u32 = bytes
            .iter()
            .zip(&original)
            .map(|(got, sent)| (got ^ sent).count_ones())
            .sum();
        assert_eq!(flipped, 1);
    }
    // An empty datagram has no bit to flip: it arrives empty and uncounted.
    network.send(addr(1), addr(2), &[]).unwrap();
    network.advance_to(network.now());
    assert_eq!(drain(&mut network, addr(2)), [(addr(1), Vec::new())]);
    assert_eq!(network.counters().corrupted, 200);
}

/// Sends 1000 numbered datagrams back to back and returns the numbers in arrival order.
fn arrival_order(faults: NetFaults) -> Vec<u32> {
    let mut network = new_network(8, faults, 2);
    for index in 0u32..1000 {
        network
            .send(addr(1), addr(2), &index.to_le_bytes())
            .unwrap();
        network.advance_by(core::time::Duration::from_micros(10));
    }
    network.advance_to(Instant::MAX);
    drain(&mut network, addr(2))
        .iter()
        .map(|(_, bytes)| u32::from_le_bytes(bytes[..4].try_into().unwrap()))
        .collect()
}

#[test]
fn jitter_reorders_datagrams_and_a_fixed_latency_keeps_their_order() {
    let in_order: Vec<u32> = (0..1000).collect();
    assert_eq!(arrival_order(LATENCY_1MS), in_order);

    let jittery = NetFaults {
        latency_min_micros: 100,
        latency_max_micros: 5_000,
        ..NetFaults::NONE
    };
    let arrived = arrival_order(jittery);
    let mut sorted = arrived.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, in_order, "reordered, none lost or duplicated");
    let inversions = arrived.windows(2).filter(|pair| pair[0] > pair[1]).count();
    assert!(inversions > 100, "{inversions} inversions");
}

#[test]
fn a_partition_drops_datagrams_and_healing_delivers_again() {
    let mut network = new_network(3, NetFaults::NONE, 4);
    let (a, b, c, d) = (addr(1), addr(2), addr(3), addr(4));
    network.partition(&[&[a, b], &[c]]);
    for (from, to, reaches) in [(a, b, true), (a, c, false), (c, d, false), (b, d, false)] {
        assert_eq!(network.can_reach(from, to), reaches, "{from} -> {to}");
        network.send(from, to, b"x").unwrap();
    }
    network.advance_to(network.now());
    assert_eq!(network.inbox_len(b), 1);
    assert_eq!(network.inbox_len(c) + network.inbox_len(d), 0);
    assert_eq!(network.counters().dropped_partition, 3);

    // In flight when the partition starts: still delivered (partitions act at send time).
    network.heal();
    network.set_faults(LATENCY_1MS);
    network.send(a, c, b"before").unwrap();
    network.isolate(c);
    network.send(a, c, b"after").unwrap();
    network.advance_to(Instant::MAX);
    assert_eq!(drain(&mut network, c), [(a, b"before".to_vec())]);

    network.heal();
    network.cut_link(a, b);
    assert!(!network.can_reach(a, b));
    assert!(network.can_reach(b, a), "a cut link is one direction");
    network.restore_link(a, b);
    network.cut_link(c, d);
    network.heal();
    for (from, to) in [(a, b), (b, a), (a, c), (c, d)] {
        assert!(network.can_reach(from, to));
        network.send(from, to, b"healed").unwrap();
    }
    network.advance_to(Instant::MAX);
    assert_eq!(network.counters().dropped_partition, 4);
    assert_eq!(network.counters().delivered, 6);
    assert_books_balance(&network);
}

#[test]
fn the_mtu_and_the_buffer_size_are_enforced_as_a_socket_does() {
    let mut network = SimNetwork::new(0).with_mtu(MTU_MIN);
    network.add_endpoint(addr(1));
    network.add_endpoint(addr(2));
    let mut endpoint = network.endpoint(addr(1));
    assert_eq!(endpoint.mtu(), MTU_MIN);
    let error = endpoint.send(addr(2), &[0; MTU_MIN + 1]).unwrap_err();
    assert_eq!(
        error,
        SendError::TooLarge {
            len: MTU_MIN + 1,
            mtu: MTU_MIN
        }
    );
    endpoint.send(addr(2), &[1; MTU_MIN]).unwrap();
    endpoint.send(addr(2), &[2; 100]).unwrap();
    assert_eq!(
        network.counters().sent,
        2,
        "a refused datagram is not counted"
    );
    network.advance_to(network.now());

    let mut receiver = network.endpoint(addr(2));
    let mut small = [0; 99];
    assert_eq!(
        receiver.recv(&mut small),
        Err(RecvError::Truncated { from: addr(1) })
    );
    assert_eq!(
        receiver.recv(&mut small),
        Err(RecvError::Truncated { from: addr(1) }),
        "one byte short is truncated too"
    );
    assert_eq!(receiver.recv(&mut small), Ok(None), "both were consumed");
}

#[test]
#[should_panic(expected = "outside 508..=65507")]
fn an_mtu_below_the_minimum_is_a_harness_mistake() {
    let _ = SimNetwork::new(0).with_mtu(MTU_MIN - 1);
}

#[test]
fn a_full_inbox_drops_new_arrivals_and_counts_them() {
    let mut network = new_network(4, NetFaults::NONE, 2).with_inbox_capacity(3);
    for index in 0u8..5 {
        network.send(addr(1), addr(2), &[index]).unwrap();
    }
    network.advance_to(network.now());
    assert_eq!(network.counters().dropped_inbox_full, 2);
    let kept: Vec<Vec<u8>> = drain(&mut network, addr(2))
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(kept, [[0], [1], [2]], "the oldest are kept");
    assert_books_balance(&network);
}

#[test]
fn a_down_endpoint_loses_its_traffic_and_a_crash_clears_its_inbox() {
    let mut network = new_network(6, NetFaults::NONE, 2);
    let (a, b) = (addr(1), addr(2));
    network.send(a, b, b"queued").unwrap();
    network.advance_to(network.now());
    assert_eq!(network.clear_inbox(b), 1);
    network.set_down(b, true);
    assert!(network.is_down(b));
    network.send(a, b, b"to the dead").unwrap();
    network.send(b, a, b"from the dead").unwrap();
    network.advance_to(network.now());
    assert_eq!(network.counters().dropped_down, 2);
    assert_eq!(network.inbox_len(a) + network.inbox_len(b), 0);

    network.set_down(b, false);
    network.send(a, b, b"welcome back").unwrap();
    network.send(a, addr(9), b"nobody").unwrap();
    network.advance_to(network.now());
    assert_eq!(drain(&mut network, b), [(a, b"welcome back".to_vec())]);
    assert_eq!(network.counters().dropped_unknown, 1);
    assert_books_balance(&network);
}

#[test]
fn bytes_are_counted_per_endpoint() {
    let mut network = new_network(7, NetFaults::NONE, 3);
    network.send(addr(1), addr(2), &[0; 100]).unwrap();
    network.send(addr(1), addr(3), &[0; 50]).unwrap();
    network.send(addr(2), addr(3), &[0; 7]).unwrap();
    network.advance_to(network.now());
    let first = network.endpoint_counters(addr(1));
    assert_eq!((first.datagrams_sent, first.bytes_sent), (2, 150));
    let third = network.endpoint_counters(addr(3));
    assert_eq!((third.datagrams_delivered, third.bytes_delivered), (2, 57));
    assert_eq!(
        network.endpoint_counters(addr(9)),
        EndpointCounters::default()
    );
}

/// (time in µs, receiver, sender, bytes).
type Delivery = (u64, SocketAddr, SocketAddr, Vec<u8>);

/// A small all-faults run: five nodes send to each other in rounds; returns every delivery as
/// (time, receiver, sender, bytes), plus the final counters.
fn run(seed: u64) -> (Vec<Delivery>, NetCounters) {
    let faults = NetFaults {
        drop: 0.1,
        duplicate: 0.1,
        corrupt: 0.1,
        latency_min_micros: 50,
        latency_max_micros: 2_000,
    };
    let mut network = new_network(seed, faults, 5).with_inbox_capacity(2);
    let mut traffic = SimRng::new(99);
    let mut deliveries = Vec::new();
    for round in 0u32..200 {
        for node in 1..=5 {
            let to = addr(traffic.between(1, 5) as u8);
            let mut bytes = vec![0; traffic.between(0, 40) as usize];
            traffic.fill_bytes(&mut bytes);
            bytes.extend_from_slice(&round.to_le_bytes());
            network.endpoint(addr(node)).send(to, &bytes).unwrap();
        }
        if round == 50 {
            network.partition(&[&[addr(1), addr(2)]]);
        }
        if round == 120 {
            network.heal();
        }
        // The clock jumps from delivery to delivery up to the nodes' deadline, 500 µs on; node
        // 1 takes what waits for it at every step, the others once per round (so their small
        // inboxes overflow now and then).
        let deadline = network.now() + core::time::Duration::from_micros(500);
        loop {
            let next = network
                .next_delivery()
                .map_or(deadline, |due| due.min(deadline));
            network.advance_to(next);
            let polled = if next == deadline { 1..=5 } else { 1..=1 };
            for node in polled {
                for (from, bytes) in drain(&mut network, addr(node)) {
                    deliveries.push((network.now().as_micros(), addr(node), from, bytes));
                }
            }
            if next == deadline {
                break;
            }
        }
    }
    assert_books_balance(&network);
    (deliveries, network.counters())
}

#[test]
fn the_same_seed_replays_the_same_run_and_another_seed_differs() {
    let (first, counters) = run(2024);
    assert_eq!(run(2024), (first.clone(), counters));
    assert!(first.len() > 500, "{} deliveries", first.len());
    for fault in [
        counters.dropped_loss,
        counters.dropped_partition,
        counters.dropped_inbox_full,
        counters.duplicated,
        counters.corrupted,
    ] {
        assert!(fault > 0, "every fault occurs: {counters:?}");
    }
    assert_ne!(run(2025).0, first);
}
