//! Arbitrary payloads decoded as message queue messages and handed to a queue node.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a valid variant index). Each message is decoded, then delivered to one queue from one
//! of two clients, which then runs its timers, commits and sends. Properties: nothing panics; a
//! decoded message re-encodes and decodes to itself; a payload that does not decode is counted
//! as malformed; every reply decodes and answers a request; the live count never exceeds the
//! capacity; after a crash and reopen, exactly the messages live before it (committed) are live.
#![no_main]

mod common;

use core::net::SocketAddr;

use bedrock::crdt::NodeId;
use bedrock::queue::{decode, encode, Config, Message, MessageId, Queue};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

type Q = Queue<RamStorage<16384>, [u8; 2048], 16, 4, 4, 16>;

fn config(incarnation: u32) -> Config {
    let mut config = Config::new(incarnation);
    config.message_max = 64;
    config.checkpoint_every = 4;
    config.log.segment_size = 1024;
    config
}

fn check_decode(payload: &[u8]) -> bool {
    let Ok(message) = decode(payload) else {
        return false;
    };
    let mut buffer = [0u8; 512];
    let len = encode(&message, &mut buffer).expect("a decoded message fits its own size");
    assert!(len <= payload.len());
    assert_eq!(decode(&buffer[..len]), Ok(message));
    true
}

fuzz_target!(|input: &[u8]| {
    let storage = RamStorage::new(16, 1024, 0xFF).expect("a valid geometry");
    let (mut queue, _) = Q::open(storage, [0; 2048], config(1)).expect("a fresh queue opens");
    queue.set_relocation_scratch([0; 2048]);
    let clients = [1u8, 2].map(|n| Peer {
        addr: SocketAddr::from(([10, 0, 0, n], 7000)),
        node: NodeId(0x8000_0000 | u32::from(n)),
        incarnation: 1,
    });
    let mut rng = SplitMix64::new(7);
    let mut buffer = [0u8; 508];
    let mut now = Instant::from_millis(0);
    for (step, payload) in (0u64..).zip(common::messages(input, 12, 64)) {
        let payload = payload.as_slice();
        let malformed_before = queue.stats().malformed;
        let decodes = check_decode(payload);
        now = now.saturating_add(core::time::Duration::from_millis(step * 37 % 1500));
        queue.handle_message(now, clients[(step % 2) as usize], payload);
        if !decodes {
            assert_eq!(queue.stats().malformed, malformed_before + 1);
        }
        queue.handle_timeout(now, &mut rng);
        let _ = queue.commit();
        for _ in 0..64 {
            let Some(transmit) = queue.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(clients.iter().any(|client| client.addr == transmit.to));
            let reply = decode(&buffer[..transmit.len]).expect("a reply decodes");
            assert!(matches!(
                reply,
                Message::Sent { .. }
                    | Message::Delivery { .. }
                    | Message::Empty { .. }
                    | Message::Acked { .. }
                    | Message::Extended { .. }
                    | Message::Refused { .. }
                    | Message::StatsReply { .. }
            ));
        }
        assert!(queue.stats().live <= 16);
    }
    // Everything was committed (or the queue is poisoned, which RAM storage never is): a crash
    // now loses nothing and brings nothing back.
    let live: Vec<u64> = (1..256)
        .filter(|&id| queue.is_live(MessageId(id)))
        .collect();
    let (storage, buffer) = queue.into_parts();
    let (queue, _) = Q::open(storage, buffer, config(2)).expect("the queue reopens");
    let after: Vec<u64> = (1..256)
        .filter(|&id| queue.is_live(MessageId(id)))
        .collect();
    assert_eq!(live, after);
});
