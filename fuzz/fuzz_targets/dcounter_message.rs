//! Arbitrary payloads handed to a distributed counter node as authenticated messages.
//!
//! The input is cut into messages (each a length byte, then that many bytes), all delivered to
//! one node from one peer; after each, the node commits and every message it wants to send is
//! encoded. Properties: nothing panics; every reply decodes; the node's value never decreases
//! and equals the sum of its counts; a payload that does not decode is counted as malformed.
#![no_main]

use core::net::SocketAddr;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, Config, DistributedCounter};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

type Node = DistributedCounter<RamStorage<16384>, [u8; 2048], 8, 4, 8, 4>;

fuzz_target!(|input: &[u8]| {
    let storage = RamStorage::new(8, 512, 0xFF).expect("a valid geometry");
    let mut config = Config::new(NodeId(1), 1);
    config.log.segment_size = 2048;
    let peer_addr: SocketAddr = "10.0.0.2:7000".parse().expect("an address");
    let (mut node, _) =
        Node::open(storage, [0; 2048], config, &[peer_addr]).expect("a fresh node opens");
    let peer = Peer {
        addr: peer_addr,
        node: NodeId(2),
        incarnation: 1,
    };
    let mut rng = SplitMix64::new(7);
    let mut rest = input;
    let mut last_value = 0;
    let mut buffer = [0u8; 1400];
    for step in 0u64..64 {
        let Some((&len, tail)) = rest.split_first() else {
            break;
        };
        let len = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let malformed_before = node.stats().malformed;
        let decodes = dcounter::decode(payload).is_ok();
        let now = Instant::from_millis(step * 100);
        node.handle_message(now, peer, payload);
        if !decodes {
            assert_eq!(node.stats().malformed, malformed_before + 1);
        }
        node.handle_timeout(now, &mut rng);
        let _ = node.commit();
        while let Some(transmit) = node.poll_transmit(now, &mut buffer) {
            assert!(transmit.len <= buffer.len());
            assert!(dcounter::decode(&buffer[..transmit.len]).is_ok());
        }
        let value = node.value();
        assert!(value >= last_value, "a G-Counter never decreases");
        let sum = node
            .counts()
            .iter()
            .fold(0u64, |sum, (_, count)| sum.saturating_add(count));
        assert_eq!(value, sum);
        last_value = value;
    }
});
