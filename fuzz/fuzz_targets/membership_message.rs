//! Arbitrary payloads handed to a membership node as messages from three peers.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a small value, which is where a message's head begins). Each goes to
//! one node from one of three peers, which then runs its timers (time moves on by a step the
//! input chooses) and sends. Properties: nothing panics; a payload `walk` refuses is counted as
//! malformed; every datagram the node sends fits its buffer (the smallest MTU) and passes
//! `walk`; the table never holds more than its capacity, never the node itself, and never two
//! records of one node; the node's own incarnation never goes down.
#![no_main]

mod common;

use core::net::SocketAddr;
use core::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::membership::{walk, Config, Membership};
use bedrock::net::MTU_MIN;
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

const N: usize = 8;
const VALUE_MAX: usize = 16;
type Node = Membership<N, 4, VALUE_MAX>;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7000))
}

fuzz_target!(|input: &[u8]| {
    let seeds = [addr(2)];
    let mut node = Node::new(Config::default(), NodeId(1), addr(1), 3, &seeds);
    let peers = [2u8, 3, 4].map(|n| Peer {
        addr: addr(n),
        node: NodeId(u32::from(n)),
        incarnation: 1,
    });
    let mut rng = SplitMix64::new(11);
    let mut buffer = [0u8; MTU_MIN];
    let mut now = Instant::ZERO;
    let mut incarnation = node.incarnation();
    for (step, payload) in (0u64..).zip(common::messages(input, 12, 64)) {
        let malformed = node.stats().malformed;
        let valid = walk(&payload, VALUE_MAX, &mut |_| ()).is_ok();
        node.handle_message(now, peers[(step % 3) as usize], &payload);
        if !valid {
            assert_eq!(node.stats().malformed, malformed + 1, "refused and counted");
        }
        let advance = payload.first().map_or(0, |&b| u64::from(b) * 37);
        now = now.saturating_add(Duration::from_millis(advance));
        node.handle_timeout(now, &mut rng);
        for _ in 0..64 {
            let Some(transmit) = node.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(transmit.len <= buffer.len());
            assert!(walk(&buffer[..transmit.len], VALUE_MAX, &mut |_| ()).is_ok());
        }
        while node.poll_event().is_some() {}
        let members = node.members();
        assert!(members.len() <= N);
        assert!(members.iter().all(|member| member.node() != node.node()));
        for (index, member) in members.iter().enumerate() {
            assert!(members[index + 1..]
                .iter()
                .all(|other| other.node() != member.node()));
        }
        assert!(
            node.incarnation() >= incarnation,
            "own incarnation went down"
        );
        incarnation = node.incarnation();
    }
});
