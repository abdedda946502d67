// A tiny in-memory cluster: replicas over RAM storage, datagrams shuffled by a seeded rng.
extern crate std;

use super::*;
use crate::rng::{Rng, SplitMix64};
use crate::storage::RamStorage;
use core::net::{IpAddr, Ipv4Addr};
use proptest::prelude::*;
use std::vec::Vec as StdVec;

type Ram = RamStorage<16384>;
type Replica = Rlog<Ram, [u8; 1024], 8, 4, 32>;

const MTU: usize = 508;

fn addr(index: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index)), 7000)
}

fn config(node: u32) -> RlogConfig {
    RlogConfig {
        data_max: 64,
        log: log::Config {
            payload_max: 256,
            ..log::Config::default()
        },
        ..RlogConfig::new(NodeId(node))
    }
}

fn ram() -> Ram {
    RamStorage::new(8, 512, 0xFF).unwrap()
}

/// Replica `i` has node id `i + 1` and address `addr(i + 1)`; every other replica is a peer.
fn open_replica(storage: Ram, index: usize, size: usize) -> Replica {
    let peers: StdVec<SocketAddr> = (0..size)
        .filter(|&other| other != index)
        .map(|other| addr(other as u8 + 1))
        .collect();
    Replica::open(storage, [0u8; 1024], config(index as u32 + 1), &peers)
        .unwrap()
        .0
}

fn cluster(size: usize) -> StdVec<Replica> {
    (0..size)
        .map(|index| open_replica(ram(), index, size))
        .collect()
}

fn peer(index: u8, node: u32) -> Peer {
    Peer {
        addr: addr(index),
        node: NodeId(node),
        incarnation: 0,
    }
}

struct Faults {
    drop_percent: u64,
    duplicate_percent: u64,
}

const CALM: Faults = Faults {
    drop_percent: 0,
    duplicate_percent: 0,
};

/// Runs `rounds` loop iterations: timeouts, transmits, a shuffled (lossy, duplicating)
/// delivery, then one commit per replica. Returns datagrams addressed to anyone else (clients).
fn run(
    replicas: &mut [Replica],
    rng: &mut SplitMix64,
    faults: &Faults,
    rounds: u64,
    clock: &mut u64,
) -> StdVec<(SocketAddr, StdVec<u8>)> {
    let mut outside = StdVec::new();
    for _ in 0..rounds {
        *clock += 50_000;
        let now = Instant::from_micros(*clock);
        let mut flight: StdVec<(usize, SocketAddr, StdVec<u8>)> = StdVec::new();
        for (index, replica) in replicas.iter_mut().enumerate() {
            replica.handle_timeout(now, rng);
            let mut buffer = [0u8; MTU];
            for _ in 0..10_000 {
                let Some(transmit) = replica.poll_transmit(now, &mut buffer) else {
                    break;
                };
                assert!(transmit.len <= MTU);
                flight.push((index, transmit.to, buffer[..transmit.len].to_vec()));
            }
        }
        // Reorder (Fisher-Yates), drop and duplicate.
        for i in (1..flight.len()).rev() {
            flight.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut delivered = StdVec::new();
        for datagram in flight {
            if rng.below(100) < faults.drop_percent {
                continue;
            }
            if rng.below(100) < faults.duplicate_percent {
                delivered.push(datagram.clone());
            }
            delivered.push(datagram);
        }
        for (from, to, bytes) in delivered {
            let target = (0..replicas.len()).find(|&i| addr(i as u8 + 1) == to);
            match target {
                Some(target) => {
                    let sender = peer(from as u8 + 1, from as u32 + 1);
                    replicas[target].handle_message(now, sender, &bytes);
                }
                None => outside.push((to, bytes)),
            }
        }
        for replica in replicas.iter_mut() {
            replica.commit().unwrap();
        }
    }
    outside
}

/// Every entry a replica returns, in read order: (dot, depth, siblings, data).
fn read_all(replica: &mut Replica) -> StdVec<(Dot, u64, u32, StdVec<u8>)> {
    let mut all = StdVec::new();
    let mut from = ReadKey::START;
    for _ in 0..1000 {
        let page = replica
            .read(from, 5, |entry| {
                all.push((entry.dot, entry.depth, entry.siblings, entry.data.to_vec()));
                true
            })
            .unwrap();
        from = page.next;
        if page.done {
            return all;
        }
    }
    panic!("read did not finish");
}

fn assert_converged(
    replicas: &mut [Replica],
    expected: usize,
) -> StdVec<(Dot, u64, u32, StdVec<u8>)> {
    let first = read_all(&mut replicas[0]);
    assert_eq!(first.len(), expected);
    for replica in replicas.iter_mut() {
        assert_eq!(read_all(replica), first);
        assert_eq!(replica.have(), replicas_have(&first));
    }
    first
}

fn replicas_have(entries: &[(Dot, u64, u32, StdVec<u8>)]) -> &'static VersionVector<8> {
    let mut have = VersionVector::<8>::new();
    for (dot, ..) in entries {
        have.merge(&{
            let mut one = VersionVector::<8>::new();
            one.add(dot.origin, dot.counter).unwrap();
            one
        })
        .unwrap();
    }
    std::boxed::Box::leak(std::boxed::Box::new(have))
}

#[test]
fn replicas_converge_to_the_same_entries_in_the_same_order_despite_loss_duplicates_and_reordering()
{
    for seed in 0..8u64 {
        let mut rng = SplitMix64::new(seed);
        let mut replicas = cluster(4);
        let mut clock = 0;
        let lossy = Faults {
            drop_percent: 30,
            duplicate_percent: 20,
        };
        let mut written = 0;
        for step in 0..12u8 {
            let writer = rng.below(4) as usize;
            replicas[writer].append(Instant::ZERO, &[step; 10]).unwrap();
            written += 1;
            let rounds = 1 + rng.below(3);
            run(&mut replicas, &mut rng, &lossy, rounds, &mut clock);
        }
        run(&mut replicas, &mut rng, &CALM, 40, &mut clock);
        let entries = assert_converged(&mut replicas, written);
        // The order is consistent with causality: depths never decrease.
        assert!(entries.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        let stats = replicas[0].stats();
        assert_eq!(stats.malformed, 0);
    }
}

#[test]
fn concurrent_appends_on_different_replicas_are_siblings_on_every_replica() {
    let mut rng = SplitMix64::new(7);
    let mut replicas = cluster(3);
    let mut clock = 0;
    for (index, replica) in replicas.iter_mut().enumerate() {
        replica.append(Instant::ZERO, &[index as u8]).unwrap();
        replica.commit().unwrap();
    }
    run(&mut replicas, &mut rng, &CALM, 30, &mut clock);
    // Written after seeing all three: causally after them, no sibling.
    replicas[1].append(Instant::ZERO, b"merge").unwrap();
    run(&mut replicas, &mut rng, &CALM, 30, &mut clock);
    let entries = assert_converged(&mut replicas, 4);
    // One group of three: the first continues after, the middle both ways, the last before.
    let flags: StdVec<(u64, u32)> = entries.iter().map(|entry| (entry.1, entry.2)).collect();
    assert_eq!(flags, [(1, 2), (1, 3), (1, 1), (4, 0)]);
    // The application's rule picks the same winner everywhere: here, the largest data.
    let group: StdVec<ReadEntry<'_>> = entries[..3]
        .iter()
        .map(|(dot, depth, siblings, data)| ReadEntry {
            dot: *dot,
            depth: *depth,
            siblings: *siblings,
            data,
        })
        .collect();
    let winner = resolve(&group, |a, b| a.data.cmp(b.data)).unwrap();
    assert_eq!(winner.data, &[2]);
}

#[test]
fn a_client_append_is_acknowledged_only_after_the_commit_sync() {
    let mut replica = open_replica(ram(), 0, 1);
    let client = peer(200, 900);
    let mut buffer = [0u8; MTU];
    let len = Message::Append {
        request_id: 5,
        data: b"hello",
    }
    .encode(&mut buffer)
    .unwrap();
    replica.handle_message(Instant::ZERO, client, &buffer[..len]);
    let durable_before = replica.log().durable_sequence();
    assert_eq!(replica.poll_transmit(Instant::ZERO, &mut buffer), None);
    assert_eq!(
        replica.log().durable_sequence(),
        durable_before,
        "not synced yet"
    );
    replica.commit().unwrap();
    assert!(replica.log().durable_sequence() > durable_before);
    let transmit = replica.poll_transmit(Instant::ZERO, &mut buffer).unwrap();
    assert_eq!(transmit.to, client.addr);
    let dot = Dot {
        origin: NodeId(1),
        counter: 1,
    };
    assert_eq!(
        Message::decode(&buffer[..transmit.len]),
        Some(Message::Appended { request_id: 5, dot })
    );
    assert!(replica.is_durable(dot));
}

#[test]
fn a_retried_client_request_id_is_applied_once_even_after_a_restart() {
    let mut replica = open_replica(ram(), 0, 1);
    let client = peer(200, 900);
    let mut buffer = [0u8; MTU];
    let request = Message::Append {
        request_id: 9,
        data: b"once",
    };
    let len = request.encode(&mut buffer).unwrap();
    let bytes = buffer[..len].to_vec();
    replica.handle_message(Instant::ZERO, client, &bytes);
    replica.handle_message(Instant::ZERO, client, &bytes); // retried before the commit
    replica.commit().unwrap();
    replica.handle_message(Instant::ZERO, client, &bytes); // retried after it
    let mut replies = 0;
    while let Some(transmit) = replica.poll_transmit(Instant::ZERO, &mut buffer) {
        assert!(matches!(
            Message::decode(&buffer[..transmit.len]),
            Some(Message::Appended { request_id: 9, dot }) if dot.counter == 1
        ));
        replies += 1;
    }
    assert_eq!(replies, 2);
    let (storage, _) = replica.into_parts();
    let mut replica = open_replica(storage, 0, 1);
    replica.handle_message(Instant::ZERO, client, &bytes);
    assert!(replica.poll_transmit(Instant::ZERO, &mut buffer).is_some());
    assert_eq!(read_all(&mut replica).len(), 1);
    assert_eq!(replica.have().get(NodeId(1)), 1);
}

#[test]
fn a_reopened_replica_recovers_its_entries_and_have() {
    let mut rng = SplitMix64::new(3);
    let mut replicas = cluster(3);
    let mut clock = 0;
    for step in 0..9u8 {
        replicas[step as usize % 3]
            .append(Instant::ZERO, &[step])
            .unwrap();
        run(&mut replicas, &mut rng, &CALM, 2, &mut clock);
    }
    run(&mut replicas, &mut rng, &CALM, 30, &mut clock);
    let before = assert_converged(&mut replicas, 9);
    let have = replicas[2].have().clone();
    let replica = replicas.pop().unwrap();
    let (storage, _) = replica.into_parts();
    let mut reopened = open_replica(storage, 2, 3);
    assert_eq!(reopened.have(), &have);
    assert_eq!(read_all(&mut reopened), before);
    // Its next append takes the next counter: no dot is reused.
    let dot = reopened.append(Instant::ZERO, b"after").unwrap();
    assert_eq!(dot.counter, have.get(NodeId(3)) + 1);
}

/// The record of `origin`'s entry `counter`, written with an empty context but its own.
fn record(origin: u32, counter: u64, data: &[u8]) -> StdVec<u8> {
    let mut have = VersionVector::<8>::new();
    if counter > 1 {
        have.add(NodeId(origin), counter - 1).unwrap();
    }
    let mut area = [0u8; 256];
    let dot = Dot {
        origin: NodeId(origin),
        counter,
    };
    let len = wire::encode_local(&mut area, &have, dot, None, data).unwrap();
    let mut buffer = [0u8; 300];
    let len = Message::Entry {
        record: &area[..len],
    }
    .encode(&mut buffer)
    .unwrap();
    buffer[..len].to_vec()
}

#[test]
fn duplicated_replayed_or_early_entries_are_not_stored() {
    let mut replica = open_replica(ram(), 0, 1);
    let from = peer(2, 2);
    replica.handle_message(Instant::ZERO, from, &record(2, 1, b"a"));
    replica.handle_message(Instant::ZERO, from, &record(2, 1, b"a"));
    replica.handle_message(Instant::ZERO, from, &record(2, 3, b"c"));
    replica.commit().unwrap();
    replica.handle_message(Instant::ZERO, from, &record(2, 1, b"a"));
    let stats = replica.stats();
    assert_eq!((stats.accepted, stats.duplicates, stats.gaps), (1, 2, 1));
    // The entry and the floor frame written with the first entry of a segment.
    assert_eq!(replica.log().next_sequence(), 2);
    assert_eq!(read_all(&mut replica).len(), 1);
}

#[test]
fn capacities_and_limits_are_refused_cleanly() {
    // Two origins fit a vector of two; the third origin's entry is refused.
    let mut small: Rlog<Ram, [u8; 1024], 2, 1, 32> =
        Rlog::open(ram(), [0u8; 1024], config(1), &[]).unwrap().0;
    small.append(Instant::ZERO, b"mine").unwrap();
    small.handle_message(Instant::ZERO, peer(2, 2), &record(2, 1, b"x"));
    small.handle_message(Instant::ZERO, peer(3, 3), &record(3, 1, b"y"));
    assert_eq!(small.stats().refused, 1);
    assert_eq!(
        small.append(Instant::ZERO, &[0; 65]),
        Err(RlogError::TooLarge)
    );
    // Too many peers, too few segment summaries, a payload limit below one entry.
    let peers = [addr(1), addr(2)];
    let too_many = Rlog::<Ram, [u8; 1024], 2, 1, 32>::open(ram(), [0u8; 1024], config(1), &peers);
    assert!(matches!(too_many, Err(RlogOpenError::Capacity)));
    let few = Rlog::<Ram, [u8; 1024], 2, 1, 4>::open(ram(), [0u8; 1024], config(1), &[]);
    assert!(matches!(few, Err(RlogOpenError::Capacity)));
    let mut tight = config(1);
    tight.log.payload_max = 64;
    let tight = Rlog::<Ram, [u8; 1024], 2, 1, 32>::open(ram(), [0u8; 1024], tight, &[]);
    assert!(matches!(tight, Err(RlogOpenError::Capacity)));
    // A full storage refuses appends and keeps every entry already stored.
    let mut replica = open_replica(ram(), 0, 1);
    let mut stored = 0;
    let refusal = loop {
        match replica.append(Instant::ZERO, &[1; 64]) {
            Ok(_) => stored += 1,
            Err(error) => break error,
        }
        replica.commit().unwrap();
    };
    assert_eq!(refusal, RlogError::Full);
    replica.commit().unwrap();
    assert_eq!(read_all(&mut replica).len(), stored);
}

#[test]
fn a_thousand_node_digest_goes_out_in_chunks_that_fit_the_smallest_mtu() {
    type Big = Rlog<RamStorage<131072>, [u8; 1024], 1000, 1, 256>;
    let (mut big, _) = Big::open(
        RamStorage::new(8, 512, 0xFF).unwrap(),
        [0u8; 1024],
        config(5000),
        &[addr(9)],
    )
    .unwrap();
    for origin in 1..=1000u32 {
        big.handle_message(Instant::ZERO, peer(2, origin), &record(origin, 1, b""));
    }
    big.commit().unwrap();
    assert_eq!(big.have().len(), 1000);
    big.handle_timeout(Instant::ZERO, &mut SplitMix64::new(1));
    let mut buffer = [0u8; MTU];
    let (mut covered, mut chunks, mut next_low) = (0, 0, 0u32);
    while let Some(transmit) = big.poll_transmit(Instant::ZERO, &mut buffer) {
        let Some(Message::Digest {
            low, high, pairs, ..
        }) = Message::decode(&buffer[..transmit.len])
        else {
            panic!("a digest");
        };
        assert_eq!(low.0, next_low, "chunks are contiguous");
        covered += wire::check_pairs(pairs, low, high).unwrap().0;
        chunks += 1;
        next_low = high.0.wrapping_add(1);
    }
    assert_eq!(covered, 1000);
    assert_eq!(next_low, 0, "the last chunk reaches the highest node id");
    assert!((2..=20).contains(&chunks), "{chunks} chunks");
}

proptest! {
    #[test]
    fn malformed_payloads_are_counted_and_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
        variant in 0u8..8,
    ) {
        let mut replica = open_replica(ram(), 0, 2);
        replica.append(Instant::ZERO, b"x").unwrap();
        replica.commit().unwrap();
        let mut message = bytes.clone();
        if let Some(first) = message.first_mut() {
            *first = variant;
        }
        let mut valid = record(2, 1, b"data");
        for (at, value) in flips {
            if let Some(byte) = valid.get_mut(at) {
                *byte ^= value;
            }
        }
        for payload in [&bytes[..], &message[..], &valid[..]] {
            replica.handle_message(Instant::ZERO, peer(2, 2), payload);
        }
        replica.handle_timeout(Instant::ZERO, &mut SplitMix64::new(1));
        let mut buffer = [0u8; MTU];
        for _ in 0..100 {
            if replica.poll_transmit(Instant::ZERO, &mut buffer).is_none() {
                break;
            }
        }
        replica.commit().unwrap();
        let stats = replica.stats();
        prop_assert!(stats.malformed + stats.accepted + stats.gaps + stats.unexpected
            + stats.duplicates >= 1 || replica.log().next_sequence() >= 1);
    }
}

#[test]
fn the_record_and_entry_message_match_the_spec_example() {
    let mut area = [0u8; 32];
    let dot = Dot {
        origin: NodeId(1),
        counter: 1,
    };
    let len = wire::encode_local(&mut area, &VersionVector::<8>::new(), dot, None, b"hi").unwrap();
    assert_eq!(
        &area[..len],
        &[0x01, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x68, 0x69]
    );
    let mut buffer = [0u8; 32];
    let message = Message::Entry {
        record: &area[..len],
    };
    let len = message.encode(&mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        &[0x01, 0x09, 0x01, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x68, 0x69]
    );
    assert_eq!(Message::decode(&buffer[..len]), Some(message));
}

#[test]
fn concurrent_entries_of_different_depths_are_siblings_on_every_replica() {
    let mut rng = SplitMix64::new(11);
    let mut replicas = cluster(3);
    let mut clock = 0;
    // Replica 1 writes three times while replica 2 writes once, neither hearing of the other.
    for step in 0..3u8 {
        replicas[0].append(Instant::ZERO, &[b'a', step]).unwrap();
        replicas[0].commit().unwrap();
    }
    replicas[1].append(Instant::ZERO, b"b").unwrap();
    replicas[1].commit().unwrap();
    run(&mut replicas, &mut rng, &CALM, 30, &mut clock);
    // Written after seeing everything: alone in its group.
    replicas[2].append(Instant::ZERO, b"c").unwrap();
    run(&mut replicas, &mut rng, &CALM, 30, &mut clock);
    let entries = assert_converged(&mut replicas, 5);
    let listed: StdVec<(u32, u64, u64, u32)> = entries
        .iter()
        .map(|(dot, depth, siblings, _)| (dot.origin.0, dot.counter, *depth, *siblings))
        .collect();
    // 1:3 (depth 3) is concurrent with 2:1 (depth 1): all four form one group.
    assert_eq!(
        listed,
        [
            (1, 1, 1, 2),
            (2, 1, 1, 3),
            (1, 2, 2, 3),
            (1, 3, 3, 1),
            (3, 1, 5, 0)
        ]
    );
    let group: StdVec<ReadEntry<'_>> = entries[..4]
        .iter()
        .map(|(dot, depth, siblings, data)| ReadEntry {
            dot: *dot,
            depth: *depth,
            siblings: *siblings,
            data,
        })
        .collect();
    assert!(group[0].starts_group() && group[3].ends_group());
    assert!(group.iter().all(|entry| entry.has_siblings()));
    let winner = resolve(&group, |a, b| a.data.cmp(b.data)).unwrap();
    assert_eq!(winner.data, b"b");
}

/// Contexts of a random history of four writers: each step, a writer writes (its view, with
/// its own count raised), adopts another's whole view, or adopts one origin's count only (the
/// replicas deliver per origin, not causally).
fn history(steps: &[(u8, u8, u8)]) -> StdVec<(Dot, VersionVector<8>)> {
    let mut views: StdVec<VersionVector<8>> = (0..4).map(|_| VersionVector::new()).collect();
    let mut entries = StdVec::new();
    for &(action, writer, other) in steps {
        let (writer, other) = (usize::from(writer % 4), usize::from(other % 4));
        match action % 3 {
            0 => {
                let origin = NodeId(writer as u32 + 1);
                let counter = views[writer].add(origin, 1).unwrap();
                entries.push((Dot { origin, counter }, views[writer].clone()));
            }
            1 => {
                let theirs = views[other].clone();
                views[writer].merge(&theirs).unwrap();
            }
            _ => {
                let origin = NodeId(other as u32 + 1);
                let mut one = VersionVector::<8>::new();
                one.add(origin, views[other].get(origin)).unwrap();
                views[writer].merge(&one).unwrap();
            }
        }
    }
    entries
}

fn at_or_before(a: &VersionVector<8>, b: &VersionVector<8>) -> bool {
    matches!(
        a.compare(b),
        crate::crdt::Causality::Equal | crate::crdt::Causality::Before
    )
}

proptest! {
    #[test]
    fn sibling_flags_match_the_pairwise_definition(
        steps in proptest::collection::vec((0u8..3, 0u8..4, 0u8..4), 1..60),
        page in 1usize..6,
    ) {
        let entries = history(&steps);
        let mut replica = open_replica(ram(), 0, 1);
        for (dot, context) in &entries {
            let mut area = [0u8; 256];
            let len = wire::encode_local(&mut area, context, *dot, None, b"").unwrap();
            let mut buffer = [0u8; 300];
            let len = Message::Entry { record: &area[..len] }.encode(&mut buffer).unwrap();
            replica.handle_message(Instant::ZERO, peer(2, 2), &buffer[..len]);
        }
        replica.commit().unwrap();
        // Expected: read order by (depth, dot); a cut before i when every entry before it is
        // at or before every entry from it on.
        let mut ordered: StdVec<(u64, Dot, &VersionVector<8>)> = entries
            .iter()
            .map(|(dot, context)| (context.iter().map(|(_, count)| count).sum(), *dot, context))
            .collect();
        ordered.sort_by_key(|&(depth, dot, _)| (depth, dot));
        let cut = |at: usize| {
            ordered[..at].iter().all(|before| {
                ordered[at..].iter().all(|after| at_or_before(before.2, after.2))
            })
        };
        let mut read = StdVec::new();
        let mut from = ReadKey::START;
        loop {
            let next = replica
                .read(from, page, |entry| {
                    read.push((entry.dot, entry.siblings));
                    true
                })
                .unwrap();
            from = next.next;
            if next.done {
                break;
            }
        }
        prop_assert_eq!(read.len(), ordered.len());
        for (index, &(dot, siblings)) in read.iter().enumerate() {
            prop_assert_eq!(dot, ordered[index].1);
            let expected = u32::from(!cut(index)) | (u32::from(!cut(index + 1)) << 1);
            prop_assert_eq!(siblings, expected, "entry {}", index);
            let concurrent = ordered.iter().any(|other| {
                !at_or_before(other.2, ordered[index].2) && !at_or_before(ordered[index].2, other.2)
            });
            prop_assert_eq!(siblings != 0, concurrent, "entry {}", index);
        }
    }
}

#[test]
fn with_caught_up_peers_a_long_run_of_appends_never_runs_out_of_space() {
    let mut rng = SplitMix64::new(5);
    let mut replicas = cluster(3);
    let mut clock = 0;
    let mut written = StdVec::new();
    // Each append stores about 90 bytes: 600 of them are several times the 16 KiB storage.
    for step in 0..600u32 {
        let writer = (step % 3) as usize;
        let data = [step as u8; 64];
        let dot = replicas[writer]
            .append(Instant::ZERO, &data)
            .unwrap_or_else(|error| panic!("step {step}: {error:?}"));
        written.push(dot);
        run(&mut replicas, &mut rng, &CALM, 2, &mut clock);
    }
    run(&mut replicas, &mut rng, &CALM, 40, &mut clock);
    for replica in replicas.iter_mut() {
        assert!(replica.stats().reclaimed > 0, "segments were released");
        assert_eq!(replica.stats().refused, 0);
        for dot in &written {
            assert!(replica.is_durable(*dot), "{dot:?} reached every replica");
        }
    }
    // A reopened replica keeps its counts although its first entries were released, and its
    // next entry takes a fresh dot.
    let have = replicas[0].have().clone();
    let (storage, _) = replicas.remove(0).into_parts();
    let mut reopened = open_replica(storage, 0, 3);
    assert_eq!(reopened.have(), &have);
    let dot = reopened.append(Instant::ZERO, b"next").unwrap();
    assert_eq!(dot.counter, have.get(NodeId(1)) + 1);
    // What is still stored reads back in order.
    let entries = read_all(&mut reopened);
    assert!(!entries.is_empty() && entries.len() < written.len());
    assert!(entries.windows(2).all(|pair| pair[0].1 <= pair[1].1));
}

#[test]
fn a_silent_peer_blocks_reclamation_appends_fail_full_and_nothing_is_lost() {
    // Replica 1's peer (replica 2) never answers: no digest, so no release.
    let mut replica = open_replica(ram(), 0, 2);
    let mut stored = StdVec::new();
    let refusal = loop {
        match replica.append(Instant::ZERO, &[7; 64]) {
            Ok(dot) => stored.push(dot),
            Err(error) => break error,
        }
        replica.commit().unwrap();
        replica.handle_timeout(
            Instant::from_micros(stored.len() as u64 * 200_000),
            &mut SplitMix64::new(1),
        );
        let mut buffer = [0u8; MTU];
        while replica.poll_transmit(Instant::ZERO, &mut buffer).is_some() {}
    };
    assert_eq!(refusal, RlogError::Full);
    assert_eq!(replica.stats().reclaimed, 0);
    assert!(stored.len() > 50, "{} entries stored", stored.len());
    replica.commit().unwrap();
    let entries = read_all(&mut replica);
    let dots: StdVec<Dot> = entries.iter().map(|entry| entry.0).collect();
    assert_eq!(dots, stored);
    // A received entry is refused too, and the replica still reopens with everything.
    replica.handle_message(Instant::ZERO, peer(2, 2), &record(2, 1, &[9; 64]));
    assert_eq!(replica.stats().refused, 1);
    let (storage, _) = replica.into_parts();
    let mut reopened = open_replica(storage, 0, 2);
    assert_eq!(read_all(&mut reopened).len(), stored.len());
}

#[test]
fn a_closed_replica_reopens_cleanly_and_appends_in_place() {
    type Borrowed<'a> = Rlog<&'a mut Ram, [u8; 1024], 8, 4, 32>;
    let mut storage = ram();
    let (mut replica, _) = Borrowed::open(&mut storage, [0u8; 1024], config(1), &[]).unwrap();
    for byte in 0..5u8 {
        replica.append(Instant::ZERO, &[byte]).unwrap();
    }
    replica.commit().unwrap();
    let staged = replica.append(Instant::ZERO, b"staged").unwrap();
    replica.close().unwrap();
    let (mut replica, recovery) =
        Borrowed::open(&mut storage, [0u8; 1024], config(1), &[]).unwrap();
    assert!(recovery.is_clean());
    assert!(recovery.appends_in_place, "a clean close: no fresh segment");
    assert_eq!(
        replica.have().get(NodeId(1)),
        staged.counter,
        "close made the staged entry durable"
    );
    let next = replica.append(Instant::ZERO, b"next").unwrap();
    assert_eq!(next.counter, staged.counter + 1);
}

#[test]
fn a_record_with_an_overlong_varint_is_refused() {
    let message = record(1, 1, b"hi");
    let Some(Message::Entry { record: canonical }) = Message::decode(&message) else {
        panic!("an entry message");
    };
    assert!(super::wire::check_record(canonical, 64).is_some());
    // The origin 1 written in two bytes (0x81 0x00) instead of one: same value, other bytes.
    let mut overlong = StdVec::from([0x81, 0x00]);
    overlong.extend_from_slice(&canonical[1..]);
    assert!(super::wire::check_record(&overlong, 64).is_none());
}
