//! Arbitrary payloads handed to a lock server as messages from two clients.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a valid variant index). Each goes to one server from one of two
//! clients, which then runs its timers (time moves on by a step the input chooses), commits and
//! sends. Properties: nothing panics; a decoded message re-encodes (never longer) and decodes to
//! itself; a payload that does not decode is counted as malformed; every answer decodes and
//! goes to a client; the token counter never goes down, and no two held locks share a token;
//! after a crash and reopen every held lock comes back with its holder and token, and the token
//! counter is no lower.
#![no_main]

mod common;

use core::net::SocketAddr;
use core::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::lock::{decode, encode, Config, LockServer};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

type Server = LockServer<RamStorage<32768>, [u8; 4096], 4, 8>;

fn config() -> Config {
    let mut config = Config::default();
    config.ttl_max = Duration::from_secs(5);
    config.checkpoint_every = 5;
    config.log.segment_size = 4096;
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

fn held(server: &Server) -> Vec<(Vec<u8>, u32, u64)> {
    let mut held: Vec<_> = server
        .locks()
        .iter()
        .map(|lock| (lock.name.to_vec(), lock.holder.0, lock.token))
        .collect();
    held.sort();
    held
}

fuzz_target!(|input: &[u8]| {
    let storage = RamStorage::new(8, 4096, 0xFF).expect("a valid geometry");
    let (mut server, _) =
        Server::open(storage, [0; 4096], config(), Instant::ZERO).expect("a fresh server opens");
    let clients = [1u8, 2].map(|n| Peer {
        addr: SocketAddr::from(([10, 0, 0, n], 7000)),
        node: NodeId(0x8000_0000 | u32::from(n)),
        incarnation: 1,
    });
    let mut rng = SplitMix64::new(5);
    let mut buffer = [0u8; 1400];
    let mut now = Instant::ZERO;
    for (step, payload) in (0u64..).zip(common::messages(input, 10, 64)) {
        let tokens = server.next_token();
        let malformed = server.stats().malformed;
        let decodes = check_decode(&payload);
        server.handle_message(now, clients[(step % 2) as usize], &payload);
        if !decodes {
            assert_eq!(server.stats().malformed, malformed + 1);
        }
        let advance = payload.last().map_or(0, |&b| u64::from(b) * 53);
        now = now.saturating_add(Duration::from_millis(advance));
        server.handle_timeout(now, &mut rng);
        let _ = server.commit();
        for _ in 0..64 {
            let Some(transmit) = server.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(clients.iter().any(|client| client.addr == transmit.to));
            assert!(decode(&buffer[..transmit.len]).is_ok(), "an answer decodes");
        }
        assert!(server.next_token() >= tokens, "the token counter went down");
        let mut seen: Vec<u64> = server.locks().iter().map(|lock| lock.token).collect();
        seen.sort_unstable();
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "two locks share a token"
        );
    }
    let before = held(&server);
    let next = server.next_token();
    let (storage, buffer) = server.into_parts();
    let (server, _) = Server::open(storage, buffer, config(), now).expect("the server reopens");
    assert_eq!(held(&server), before);
    assert!(server.next_token() >= next);
});
