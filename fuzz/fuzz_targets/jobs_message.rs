//! Arbitrary payloads decoded as job scheduler messages and handed to a scheduler.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a valid variant index). Each message is decoded, then delivered to one scheduler from
//! one of two clients, which then runs its timers, commits and sends. Properties: nothing panics;
//! a decoded message re-encodes and decodes to itself; a payload that does not decode is counted
//! as malformed; every answer decodes and goes to a client; a job's fencing token never goes
//! down; after a crash and reopen the same jobs are known and tokens keep growing.
#![no_main]

mod common;

use core::net::SocketAddr;
use std::collections::BTreeMap;

use bedrock::crdt::NodeId;
use bedrock::jobs::{decode, encode, Config, Scheduler};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

type Sched = Scheduler<RamStorage<32768>, [u8; 4096], 8, 8, 8>;

fn config() -> Config {
    let mut config = Config::default();
    config.checkpoint_every = 5;
    config.log.segment_size = 4096;
    config
}

fn check_decode(payload: &[u8]) -> bool {
    let Ok(message) = decode(payload) else {
        return false;
    };
    let mut buffer = [0u8; 1400];
    let len = encode(&message, &mut buffer).expect("a decoded message fits its own size");
    assert!(len <= payload.len());
    assert_eq!(decode(&buffer[..len]), Ok(message));
    true
}

fn tokens(scheduler: &Sched) -> BTreeMap<u64, u64> {
    scheduler
        .jobs()
        .iter()
        .map(|job| (job.id, job.token))
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let storage = RamStorage::new(8, 4096, 0xFF).expect("a valid geometry");
    let start = Instant::from_millis(0);
    let (mut scheduler, _) =
        Sched::open(storage, [0; 4096], config(), start).expect("a fresh scheduler opens");
    let clients = [1u8, 2].map(|n| Peer {
        addr: SocketAddr::from(([10, 0, 0, n], 7000)),
        node: NodeId(0x8000_0000 | u32::from(n)),
        incarnation: 1,
    });
    let mut rng = SplitMix64::new(7);
    let mut buffer = [0u8; 1400];
    let mut now = start;
    for (step, payload) in (0u64..).zip(common::messages(input, 13, 64)) {
        let payload = payload.as_slice();
        let before = tokens(&scheduler);
        let malformed_before = scheduler.stats().malformed;
        let decodes = check_decode(payload);
        now = now.saturating_add(core::time::Duration::from_millis(step * 997 % 20_000));
        scheduler.handle_message(now, clients[(step % 2) as usize], payload);
        if !decodes {
            assert_eq!(scheduler.stats().malformed, malformed_before + 1);
        }
        scheduler.handle_timeout(now, &mut rng);
        let _ = scheduler.commit();
        for _ in 0..64 {
            let Some(transmit) = scheduler.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(clients.iter().any(|client| client.addr == transmit.to));
            assert!(decode(&buffer[..transmit.len]).is_ok(), "an answer decodes");
        }
        for (job, token) in tokens(&scheduler) {
            if let Some(&old) = before.get(&job) {
                assert!(token >= old, "job {job}: token {old} went down to {token}");
            }
        }
    }
    let known = tokens(&scheduler);
    let next = scheduler.next_token();
    let (storage, buffer) = scheduler.into_parts();
    let (scheduler, _) =
        Sched::open(storage, buffer, config(), now).expect("the scheduler reopens");
    assert_eq!(
        known.keys().collect::<Vec<_>>(),
        tokens(&scheduler).keys().collect::<Vec<_>>()
    );
    assert!(scheduler.next_token() >= next);
});
