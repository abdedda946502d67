//! Arbitrary answers handed to a quorum lock client (`bedrock::lock::quorum::QuorumLock`) from
//! its three servers and from a stranger, between acquires, releases and timers.
//!
//! The input is cut into messages (`common::messages`: a length byte, up to 127 bytes, the
//! first byte steered to a valid variant index). Before each, the message's last byte picks an
//! action (acquire, release, or nothing) and how far time moves. Properties: nothing panics;
//! a payload that does not decode, or comes from a stranger, is counted as malformed; every
//! request the client sends goes to one of its servers and decodes; the client believes in the
//! lock (`held_until`) only while it holds a token, and never past `ttl` from now; an
//! `Acquired` event's token is the client's token.
#![no_main]

mod common;

use core::net::SocketAddr;
use core::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::lock::decode;
use bedrock::lock::quorum::{Event, QuorumConfig, QuorumLock};
use bedrock::rng::SplitMix64;
use bedrock::service::{Peer, Service};
use bedrock::time::Instant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let servers = [1u8, 2, 3].map(|n| SocketAddr::from(([10, 0, 0, n], 7000)));
    let config = QuorumConfig {
        ttl: Duration::from_secs(2),
        ..QuorumConfig::default()
    };
    let mut client = QuorumLock::<3>::new(b"db", &servers, config, 0).expect("a valid client");
    let stranger = SocketAddr::from(([10, 0, 0, 9], 7000));
    let mut rng = SplitMix64::new(3);
    let mut buffer = [0u8; 1400];
    let mut now = Instant::ZERO;
    for (step, payload) in (0usize..).zip(common::messages(input, 10, 64)) {
        let control = payload.last().copied().unwrap_or(0);
        match control % 8 {
            0 => client.acquire(now),
            1 => client.release(now),
            _ => {}
        }
        now = now.saturating_add(Duration::from_millis(u64::from(control >> 3) * 37));
        let from = if step % 5 == 4 {
            stranger
        } else {
            servers[step % 3]
        };
        let peer = Peer {
            addr: from,
            node: NodeId(1 + (step % 3) as u32),
            incarnation: 1,
        };
        let malformed = client.stats().malformed;
        client.handle_message(now, peer, &payload);
        if from == stranger || decode(&payload).is_err() {
            assert_eq!(client.stats().malformed, malformed + 1);
        }
        if client.poll_timeout().is_some_and(|due| due <= now) {
            client.handle_timeout(now, &mut rng);
        }
        for _ in 0..16 {
            let Some(transmit) = client.poll_transmit(now, &mut buffer) else {
                break;
            };
            assert!(servers.contains(&transmit.to));
            assert!(decode(&buffer[..transmit.len]).is_ok(), "a request decodes");
        }
        while let Some(event) = client.poll_event() {
            if let Event::Acquired { token } = event {
                assert_eq!(client.token(), Some(token));
            }
        }
        if let Some(until) = client.held_until(now) {
            assert!(client.token().is_some());
            assert!(until > now && until <= now.saturating_add(config.ttl));
        }
    }
});
