//! Quorum locks against real lock servers, over a hand-driven network with partitions.

use super::quorum::{Event, QuorumConfig, QuorumLock};
use super::*;
use crate::rng::SplitMix64;
use crate::service::{Peer, Service};
use crate::storage::RamStorage;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::vec::Vec as HeapVec;

type Ram = RamStorage<32768>;
type Server = LockServer<Ram, [u8; 2048], 8, 16>;
type Client = QuorumLock<5>;

const TTL: Duration = Duration::from_secs(3);
const TICK: u64 = 10;

fn server_addr(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8)), 7000)
}

fn client_addr(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, index as u8)), 7000)
}

fn server_config() -> Config {
    let mut config = Config {
        ttl_max: Duration::from_secs(10),
        drift_ppm: 10_000,
        checkpoint_every: 8,
        ..Config::default()
    };
    config.log.segment_size = 4096;
    config
}

fn client_config() -> QuorumConfig {
    QuorumConfig {
        ttl: TTL,
        drift_ppm: 10_000,
        retry_interval: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(1),
    }
}

/// Servers and clients, the clock, and which links are cut.
struct World {
    now: u64,
    servers: HeapVec<Server>,
    clients: HeapVec<Client>,
    /// `cut[c][s]`: client `c` and server `s` cannot reach each other.
    cut: HeapVec<HeapVec<bool>>,
    /// Every event, with its client and time.
    events: HeapVec<(usize, u64, Event)>,
    rng: SplitMix64,
}

impl World {
    fn new(servers: usize, clients: usize) -> Self {
        let addrs: HeapVec<SocketAddr> = (0..servers).map(server_addr).collect();
        Self {
            now: 1_000,
            servers: (0..servers)
                .map(|_| {
                    let storage = RamStorage::new(8, 512, 0xFF).unwrap();
                    Server::open(storage, [0; 2048], server_config(), at(0))
                        .unwrap()
                        .0
                })
                .collect(),
            clients: (0..clients)
                .map(|index| {
                    Client::new(b"db", &addrs, client_config(), 1000 * index as u64).unwrap()
                })
                .collect(),
            cut: std::vec![std::vec![false; servers]; clients],
            events: HeapVec::new(),
            rng: SplitMix64::new(7),
        }
    }

    fn client_peer(index: usize) -> Peer {
        Peer {
            addr: client_addr(index),
            node: NodeId(0x8000_0000 | index as u32),
            incarnation: 1,
        }
    }

    /// Runs for `millis` in ticks: every datagram sent is delivered within its tick unless its
    /// link is cut.
    fn run(&mut self, millis: u64) {
        let end = self.now + millis;
        while self.now < end {
            self.now += TICK;
            let now = at(self.now);
            let mut buffer = [0u8; 1400];
            for (c, client) in self.clients.iter_mut().enumerate() {
                if client.poll_timeout().is_some_and(|due| due <= now) {
                    client.handle_timeout(now, &mut self.rng);
                }
                while let Some(transmit) = client.poll_transmit(now, &mut buffer) {
                    let s = (0..self.servers.len())
                        .find(|&s| server_addr(s) == transmit.to)
                        .unwrap();
                    if !self.cut[c][s] {
                        self.servers[s].handle_message(
                            now,
                            Self::client_peer(c),
                            &buffer[..transmit.len],
                        );
                    }
                }
            }
            for (s, server) in self.servers.iter_mut().enumerate() {
                server.commit().unwrap();
                while let Some(transmit) = server.poll_transmit(now, &mut buffer) {
                    let c = (0..self.clients.len())
                        .find(|&c| client_addr(c) == transmit.to)
                        .unwrap();
                    if !self.cut[c][s] {
                        let from = Peer {
                            addr: server_addr(s),
                            node: NodeId(s as u32 + 1),
                            incarnation: 1,
                        };
                        self.clients[c].handle_message(now, from, &buffer[..transmit.len]);
                    }
                }
            }
            for (c, client) in self.clients.iter_mut().enumerate() {
                while let Some(event) = client.poll_event() {
                    self.events.push((c, self.now, event));
                }
            }
        }
    }

    fn acquired(&self, client: usize) -> HeapVec<u64> {
        self.events
            .iter()
            .filter_map(|&(c, _, event)| match event {
                Event::Acquired { token } if c == client => Some(token),
                _ => None,
            })
            .collect()
    }

    fn last_event(&self, client: usize) -> Option<Event> {
        self.events
            .iter()
            .rev()
            .find(|(c, _, _)| *c == client)
            .map(|&(_, _, event)| event)
    }
}

fn at(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

#[test]
fn a_majority_is_enough_and_a_minority_is_not() {
    let mut world = World::new(3, 1);
    world.cut[0][2] = true;
    world.clients[0].acquire(at(world.now));
    world.run(500);
    let tokens = world.acquired(0);
    assert_eq!(tokens.len(), 1, "{:?}", world.events);
    let now = at(world.now);
    let until = world.clients[0].held_until(now).unwrap();
    assert!(until > now && until <= now.saturating_add(TTL));
    // It stays held across renewals while a majority answers.
    world.run(3 * TTL.as_millis() as u64);
    assert!(world.clients[0].held_until(at(world.now)).is_some());
    assert_eq!(world.acquired(0).len(), 1);

    // Two of three away: the attempt fails and says when to retry.
    let mut alone = World::new(3, 1);
    alone.cut[0][1] = true;
    alone.cut[0][2] = true;
    alone.clients[0].acquire(at(alone.now));
    alone.run(2_000);
    assert!(alone.acquired(0).is_empty());
    assert!(matches!(alone.last_event(0), Some(Event::Failed { .. })));
    assert!(alone.clients[0].held_until(at(alone.now)).is_none());
    // What it got was released: another client may take the lock on that server at once.
    assert!(alone.servers[0].locks().is_empty());
}

#[test]
fn tokens_grow_even_when_the_server_with_the_highest_counter_is_away() {
    let mut world = World::new(3, 2);
    // Server 0's counter runs far ahead of the others'.
    for round in 0..40u8 {
        let name = [b'a' + round % 26, round];
        let server = &mut world.servers[0];
        let grant = server
            .acquire(at(0), &name, NodeId(99), Duration::from_secs(1))
            .unwrap();
        server.release(at(0), &name, grant.token).unwrap();
        server.commit().unwrap();
    }
    // Client 0 holds the lock on servers 0 and 1.
    world.cut[0][2] = true;
    world.clients[0].acquire(at(world.now));
    world.run(500);
    let first = world.acquired(0);
    assert_eq!(first.len(), 1);
    assert!(first[0] > 40, "the token is the highest of the majority");
    // Client 0 dies (cut from everything); client 1 cannot reach server 0, the one whose
    // counter is far ahead: its majority is servers 1 and 2.
    world.cut[0] = std::vec![true; 3];
    world.cut[1][0] = true;
    world.clients[1].acquire(at(world.now));
    let mut waited = 0;
    while world.acquired(1).is_empty() && waited < 20_000 {
        world.run(200);
        waited += 200;
        if let Some(Event::Failed { .. }) = world.last_event(1) {
            world.events.retain(|(c, _, _)| *c != 1);
            world.clients[1].acquire(at(world.now));
        }
    }
    let second = world.acquired(1);
    assert_eq!(second.len(), 1, "the dead holder's lock is taken over");
    assert!(
        second[0] > first[0],
        "token {} after token {}: a later holder must get a higher token",
        second[0],
        first[0]
    );
}

#[test]
fn two_clients_never_hold_at_once_and_the_loser_gets_it_after_a_release() {
    let mut world = World::new(5, 2);
    world.clients[0].acquire(at(world.now));
    world.clients[1].acquire(at(world.now));
    let mut held_at_once = 0;
    let mut released = false;
    for _ in 0..400 {
        world.run(TICK);
        let now = at(world.now);
        let holders = world
            .clients
            .iter()
            .filter(|client| client.held_until(now).is_some())
            .count();
        if holders > 1 {
            held_at_once += 1;
        }
        for c in 0..2 {
            if let Some(Event::Failed { .. }) = world.last_event(c) {
                world.events.retain(|(client, _, _)| *client != c);
                world.clients[c].acquire(now);
            }
        }
        // The first holder releases after a while.
        if !released && world.now > 2_500 {
            if let Some(holder) = (0..2).find(|&c| world.clients[c].token().is_some()) {
                world.clients[holder].release(now);
                released = true;
            }
        }
    }
    assert_eq!(held_at_once, 0);
    let mut tokens: HeapVec<(u64, u64)> = world
        .events
        .iter()
        .filter_map(|&(_, time, event)| match event {
            Event::Acquired { token } => Some((time, token)),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 2, "both held it in turn: {:?}", world.events);
    tokens.sort_unstable();
    assert!(tokens[1].1 > tokens[0].1);
}

#[test]
fn a_holder_cut_from_the_majority_loses_the_lock_before_anyone_else_gets_it() {
    let mut world = World::new(3, 2);
    world.clients[0].acquire(at(world.now));
    world.run(300);
    assert_eq!(world.acquired(0).len(), 1);
    // Client 0 keeps only server 0.
    world.cut[0][1] = true;
    world.cut[0][2] = true;
    let cut_at = world.now;
    world.clients[1].acquire(at(world.now));
    let mut lost_at = None;
    let mut granted_at = None;
    for _ in 0..1_500 {
        world.run(TICK);
        if lost_at.is_none() && world.last_event(0) == Some(Event::Lost) {
            lost_at = Some(world.now);
        }
        if granted_at.is_none() && !world.acquired(1).is_empty() {
            granted_at = Some(world.now);
        }
        if let Some(Event::Failed { .. }) = world.last_event(1) {
            world.events.retain(|(c, _, _)| *c != 1);
            world.clients[1].acquire(at(world.now));
        }
    }
    let (lost_at, granted_at) = (lost_at.unwrap(), granted_at.unwrap());
    assert!(
        lost_at < granted_at,
        "lost at {lost_at} ms, re-granted at {granted_at} ms"
    );
    assert!(lost_at - cut_at <= TTL.as_millis() as u64 + TICK);
}

#[test]
fn bad_answers_are_dropped_and_counted() {
    let mut world = World::new(3, 1);
    let stranger = Peer {
        addr: client_addr(9),
        node: NodeId(5),
        incarnation: 1,
    };
    world.clients[0].handle_message(at(1), stranger, &[1, 2, 3]);
    let from = Peer {
        addr: server_addr(0),
        ..stranger
    };
    world.clients[0].handle_message(at(1), from, &[0xFF; 9]);
    assert_eq!(world.clients[0].stats().malformed, 2);
    // An answer to nothing outstanding changes nothing.
    let mut buffer = [0u8; 64];
    let stray = Message::Granted {
        request: 3,
        token: 9,
        lease_ms: 1_000,
    };
    let len = encode(&stray, &mut buffer).unwrap();
    world.clients[0].handle_message(at(1), from, &buffer[..len]);
    assert_eq!(world.clients[0].poll_event(), None);
    assert!(world.clients[0].held_until(at(1)).is_none());
}

#[test]
fn acquire_right_after_lost_starts_once_the_quiet_release_is_done() {
    // `Lost` comes while the grants left are being released; an `acquire` then used to be
    // ignored (the client was not idle) with no event ever telling the caller to try again.
    let mut world = World::new(3, 1);
    world.clients[0].acquire(at(world.now));
    world.run(300);
    assert_eq!(world.acquired(0).len(), 1);
    // Cut from two servers: the lock is lost; server 0 still answers the release, slowly
    // enough that the caller asks again while it is under way.
    world.cut[0][1] = true;
    world.cut[0][2] = true;
    while world.last_event(0) != Some(Event::Lost) {
        world.run(TICK);
        assert!(world.now < 10_000, "never lost: {:?}", world.events);
    }
    world.cut[0][0] = true;
    world.clients[0].acquire(at(world.now));
    world.run(50);
    world.cut[0] = std::vec![false; 3];
    world.run(3 * TTL.as_millis() as u64);
    let tokens = world.acquired(0);
    assert_eq!(tokens.len(), 2, "acquired again: {:?}", world.events);
    assert!(tokens[1] > tokens[0]);
}
