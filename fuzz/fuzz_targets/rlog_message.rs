//! Arbitrary payloads decoded as replicated log messages and handed to a replica.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a valid variant index). Each message is decoded (`Message::decode`, and `read_entries` on a read
//! reply), then delivered to one replica from one peer, which then runs its timers, commits and
//! sends. Properties: nothing panics; a decoded message re-encodes and decodes to itself; every
//! datagram the replica sends decodes; a payload that does not decode is counted as malformed;
//! `have` never goes down; a read of everything held succeeds.
#![no_main]

mod common;

use core::net::SocketAddr;

use bedrock::crdt::NodeId;
use bedrock::rlog::wire::read_entries;
use bedrock::rlog::{Message, ReadKey, Rlog, RlogConfig};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

type Replica = Rlog<RamStorage<16384>, [u8; 2048], 8, 2, 32>;

fn check_decode(payload: &[u8]) -> bool {
    let Some(message) = Message::decode(payload) else {
        return false;
    };
    let mut buffer = [0u8; 512];
    let len = message
        .encode(&mut buffer)
        .expect("a decoded message fits its own size");
    // Overlong varints decode too (postcard): the re-encoding may be shorter, never different.
    assert!(len <= payload.len());
    assert_eq!(Message::decode(&buffer[..len]), Some(message));
    if let Message::ReadReply { entries, .. } = message {
        for entry in read_entries(entries) {
            let _ = (
                entry.has_siblings(),
                entry.starts_group(),
                entry.ends_group(),
            );
        }
    }
    true
}

fuzz_target!(|input: &[u8]| {
    let storage = RamStorage::new(8, 512, 0xFF).expect("a valid geometry");
    let mut config = RlogConfig::new(NodeId(1));
    config.data_max = 64;
    config.log.payload_max = 256;
    let peer_addr: SocketAddr = "10.0.0.2:7000".parse().expect("an address");
    let (mut replica, _) =
        Replica::open(storage, [0; 2048], config, &[peer_addr]).expect("a fresh replica opens");
    let peer = Peer {
        addr: peer_addr,
        node: NodeId(2),
        incarnation: 1,
    };
    let mut rng = SplitMix64::new(7);
    let mut buffer = [0u8; 508];
    for (step, payload) in (0u64..).zip(common::messages(input, 7, 64)) {
        let payload = payload.as_slice();
        let have_before = replica.have().clone();
        let malformed_before = replica.stats().malformed;
        let decodes = check_decode(payload);
        let now = Instant::from_millis(step * 100);
        replica.handle_message(now, peer, payload);
        if !decodes {
            assert_eq!(replica.stats().malformed, malformed_before + 1);
        }
        replica.handle_timeout(now, &mut rng);
        let _ = replica.commit();
        for _ in 0..256 {
            let Some(transmit) = replica.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(Message::decode(&buffer[..transmit.len]).is_some());
        }
        for (node, count) in have_before.iter() {
            assert!(replica.have().get(node) >= count, "have never goes down");
        }
    }
    let page = replica.read(ReadKey::START, 16, |_| true);
    assert!(page.is_ok(), "{page:?}");
});
