//! The generic node driver: one loop step over a [`Datagram`] endpoint, the wire envelope and a
//! set of [`Services`]. The std event loop, the simulator's cluster harness and simple firmware
//! all run this same step; only how they wait for the next datagram or deadline differs.
//!
//! One step, in order:
//!
//! 1. take up to [`RECEIVE_BATCH`] waiting datagrams; open each envelope (dropping and counting
//!    what fails authentication, replay or decoding) and hand it to the service of its kind;
//! 2. run the timers that are due;
//! 3. commit every service: one sync per service covers every write of this step (group
//!    commit), and only then are the acknowledgements that depend on it released;
//! 4. seal and send everything the services have to send.
//!
//! The caller then waits until a datagram arrives or the returned deadline passes.
//!
//! Guaranteed: nothing acknowledged before its sync; no panic and no allocation on any input;
//! every dropped datagram counted in [`DriverStats`]. Not guaranteed: delivery (datagrams that
//! cannot be sent right now are dropped and counted: the protocols above retry).

use crate::net::{Datagram, RecvError, SocketAddr};
use crate::rng::Rng;
use crate::service::{CommitFailed, Peer, Services};
use crate::time::Instant;
use crate::wire::{self, Wire};

/// Most datagrams taken per step, so timers and commits are never starved by a flood.
pub const RECEIVE_BATCH: usize = 256;

/// Counts of what the driver dropped or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DriverStats {
    /// Datagrams received (whole, before authentication).
    pub received: u64,
    /// Datagrams larger than the buffer or MTU: dropped.
    pub truncated: u64,
    /// Datagrams whose envelope was refused (see the wire's rejection counters for why).
    pub rejected: u64,
    /// Authenticated datagrams of a kind no service runs: dropped.
    pub unknown_kind: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams not sent: no buffer space, too large, or a network error.
    pub send_failures: u64,
    /// Receive errors of the network stack.
    pub receive_errors: u64,
    /// Steps run.
    pub steps: u64,
}

/// Runs the loop steps of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Driver<const K: usize, const SENDERS: usize> {
    wire: Wire<K, SENDERS>,
    stats: DriverStats,
}

impl<const K: usize, const SENDERS: usize> Driver<K, SENDERS> {
    /// A driver sealing and opening datagrams with `wire`.
    pub fn new(wire: Wire<K, SENDERS>) -> Self {
        Self {
            wire,
            stats: DriverStats::default(),
        }
    }

    /// What the driver dropped or did.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// The envelope layer (its rejection counters, its keyring for rotation).
    pub fn wire(&self) -> &Wire<K, SENDERS> {
        &self.wire
    }

    /// The envelope layer, mutable (key rotation at run time).
    pub fn wire_mut(&mut self) -> &mut Wire<K, SENDERS> {
        &mut self.wire
    }

    /// Runs one step at `now` (see the [module docs](self)) with `buffer` (the MTU plus one
    /// byte, so transports can tell a whole datagram of exactly the MTU from a cut one) for
    /// datagrams, and returns the earliest service deadline. An error means a service
    /// failed to sync and is poisoned; the driver keeps working for the others.
    pub fn step<D: Datagram, S: Services, R: Rng>(
        &mut self,
        now: Instant,
        network: &mut D,
        services: &mut S,
        rng: &mut R,
        buffer: &mut [u8],
    ) -> Result<Option<Instant>, CommitFailed> {
        self.stats.steps += 1;
        self.receive(now, network, services, buffer);
        if services
            .poll_timeout()
            .is_some_and(|deadline| deadline <= now)
        {
            services.handle_timeout(now, rng);
        }
        let committed = services.commit();
        self.transmit(now, network, services, buffer);
        committed.map(|()| services.poll_timeout())
    }

    fn receive<D: Datagram, S: Services>(
        &mut self,
        now: Instant,
        network: &mut D,
        services: &mut S,
        buffer: &mut [u8],
    ) {
        // One byte past the MTU, when the buffer has it: a transport that detects truncation
        // by a datagram filling its buffer (embedded-nal stacks) then takes a datagram of
        // exactly the MTU whole.
        let limit = buffer.len().min(network.mtu().saturating_add(1));
        for _ in 0..RECEIVE_BATCH {
            let received = match network.recv(&mut buffer[..limit]) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(RecvError::Truncated { .. }) => {
                    self.stats.truncated += 1;
                    continue;
                }
                Err(_) => {
                    self.stats.receive_errors += 1;
                    return;
                }
            };
            self.stats.received += 1;
            let Some(datagram) = buffer.get_mut(..received.len) else {
                continue;
            };
            self.deliver(now, received.from, datagram, services);
        }
    }

    fn deliver<S: Services>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        services: &mut S,
    ) {
        let opened = match self.wire.open(datagram) {
            Ok(opened) => opened,
            Err(_) => {
                self.stats.rejected += 1;
                return;
            }
        };
        let peer = Peer {
            addr: from,
            node: opened.sender,
            incarnation: opened.incarnation,
        };
        if !services.handle_message(now, opened.kind, peer, opened.payload) {
            self.stats.unknown_kind += 1;
        }
    }

    fn transmit<D: Datagram, S: Services>(
        &mut self,
        now: Instant,
        network: &mut D,
        services: &mut S,
        buffer: &mut [u8],
    ) {
        let limit = buffer.len().min(network.mtu());
        let trailer = self.wire.overhead() - wire::HEADER_LEN;
        let Some(payload_end) = limit.checked_sub(trailer) else {
            return;
        };
        // Bounded: every service's queue is bounded, and each call takes one message from it.
        loop {
            let Some(area) = buffer.get_mut(wire::HEADER_LEN..payload_end) else {
                return;
            };
            let Some((kind, transmit)) = services.poll_transmit(now, area) else {
                return;
            };
            let Ok(len) = self.wire.seal(kind, &mut buffer[..limit], transmit.len) else {
                self.stats.send_failures += 1;
                continue;
            };
            // A datagram that cannot go now is dropped: the protocols above retry.
            match network.send(transmit.to, &buffer[..len]) {
                Ok(()) => self.stats.sent += 1,
                Err(_) => self.stats.send_failures += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::NodeId;
    use crate::dcounter::{self, DistributedCounter, Message};
    use crate::net::{Received, SendError};
    use crate::rng::SplitMix64;
    use crate::service::kind;
    use crate::storage::RamStorage;
    use crate::wire::{Key, Keyring, Rejection};
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// A network of one endpoint: datagrams pushed in are received, sent ones are kept.
    #[derive(Default)]
    struct Loopback {
        inbox: VecDeque<(SocketAddr, Vec<u8>)>,
        sent: Vec<(SocketAddr, Vec<u8>)>,
    }

    impl Datagram for Loopback {
        type Error = ();

        fn mtu(&self) -> usize {
            1400
        }

        fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<()>> {
            self.sent.push((to, bytes.to_vec()));
            Ok(())
        }

        fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<()>> {
            let Some((from, bytes)) = self.inbox.pop_front() else {
                return Ok(None);
            };
            if bytes.len() > buffer.len() {
                return Err(RecvError::Truncated { from });
            }
            buffer[..bytes.len()].copy_from_slice(&bytes);
            Ok(Some(Received {
                from,
                len: bytes.len(),
            }))
        }
    }

    type Node = DistributedCounter<RamStorage<16384>, [u8; 2048], 8, 4, 8, 4>;

    fn keys(secret: u8) -> Keyring<2> {
        Keyring::new(Key::new(1, [secret; 32]))
    }

    fn incr(wire: &mut Wire<2, 4>, request: u64) -> Vec<u8> {
        let mut buffer = [0u8; 1400];
        let len = dcounter::encode(
            &Message::Incr { request, by: 2 },
            &mut buffer[wire::HEADER_LEN..1400 - wire::TAG_LEN],
        )
        .unwrap();
        let sealed = wire.seal(kind::COUNTER, &mut buffer, len).unwrap();
        buffer[..sealed].to_vec()
    }

    #[test]
    fn bad_datagrams_are_dropped_and_counted_and_a_good_one_is_answered_after_the_sync() {
        let client_addr: SocketAddr = "10.0.0.9:9000".parse().unwrap();
        let storage = RamStorage::new(8, 512, 0xFF).unwrap();
        let mut config = dcounter::Config::new(NodeId(1), 1);
        config.log.segment_size = 2048;
        let (mut node, _) = Node::open(storage, [0; 2048], config, &[]).unwrap();
        let mut driver: Driver<2, 4> = Driver::new(Wire::encrypted(7, NodeId(1), 1, keys(1)));
        let mut client = Wire::encrypted(7, NodeId(0x8000_0001), 5, keys(1));
        let mut stranger = Wire::encrypted(7, NodeId(0x8000_0002), 5, keys(2));
        let mut other_cluster = Wire::encrypted(8, NodeId(0x8000_0003), 5, keys(1));
        let mut network = Loopback::default();
        let good = incr(&mut client, 1);
        network.inbox.push_back((client_addr, good.clone()));
        network.inbox.push_back((client_addr, good.clone())); // replayed
        network
            .inbox
            .push_back((client_addr, incr(&mut stranger, 2))); // wrong key
        network
            .inbox
            .push_back((client_addr, incr(&mut other_cluster, 3)));
        network.inbox.push_back((client_addr, good[..10].to_vec())); // truncated
        network.inbox.push_back((client_addr, std::vec![0u8; 2000])); // larger than the MTU
        let mut rng = SplitMix64::new(1);
        let mut buffer = [0u8; 1400];
        driver
            .step(
                Instant::ZERO,
                &mut network,
                &mut node,
                &mut rng,
                &mut buffer,
            )
            .unwrap();
        let stats = driver.stats();
        assert_eq!((stats.received, stats.rejected, stats.truncated), (5, 4, 1));
        let rejections = driver.wire().rejections();
        for reason in [
            Rejection::Replayed,
            Rejection::Forged,
            Rejection::OtherCluster,
            Rejection::Truncated,
        ] {
            assert_eq!(rejections.get(reason), 1, "{reason:?}");
        }
        assert_eq!(node.value(), 2, "the good increment was applied once");
        assert_eq!(node.stats().syncs, 1, "one sync for the step");
        let (to, reply) = network
            .sent
            .pop()
            .expect("the reply was sent after the sync");
        assert_eq!(to, client_addr);
        let mut reply = reply;
        let opened = client.open(&mut reply).unwrap();
        assert_eq!(
            dcounter::decode(opened.payload).unwrap().0,
            Message::Value {
                request: 1,
                value: 2
            }
        );
    }
}
