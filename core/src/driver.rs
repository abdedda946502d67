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

    /// Runs one step at `now` (see the [module docs](self)) with `buffer` (at least the MTU)
    /// for datagrams, and returns the earliest service deadline. An error means a service
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
        let limit = buffer.len().min(network.mtu());
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
