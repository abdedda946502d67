//! The shape every networked service has: a sans-IO state machine (the quinn-proto / smoltcp
//! shape) that never performs IO and never reads a clock.
//!
//! Inputs are authenticated messages ([`Service::handle_message`]), timeouts
//! ([`Service::handle_timeout`]) and the service's own API calls; outputs are messages to send
//! ([`Service::poll_transmit`]) and the next deadline ([`Service::poll_timeout`]).
//!
//! Group commit: a service may stage writes to its storage log without syncing and hold back the
//! acknowledgements that depend on them. The driver calls [`Service::commit`] once per loop
//! iteration, after feeding every waiting input: one sync then covers every acknowledgement of
//! the iteration, and only after it succeeds do those acknowledgements become transmittable.
//!
//! Messages reach a service already authenticated and decrypted by the wire envelope; the
//! envelope's `kind` byte says which service a message is for ([`kind`]).

use crate::crdt::NodeId;
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::time::Instant;

/// Envelope kinds: which service a datagram is for. 0 is never a valid kind.
pub mod kind {
    /// The distributed counter (gossip between nodes and client requests).
    pub const COUNTER: u8 = 1;
    /// The leaderless replicated log (anti-entropy between nodes and client requests).
    pub const REPLICATED_LOG: u8 = 2;
    /// The message queue (client requests: send, receive, ack, extend).
    pub const QUEUE: u8 = 3;
    /// The job scheduler (client and worker requests).
    pub const JOBS: u8 = 4;
    /// Membership: SWIM probes, dissemination and push-pull of application state.
    pub const MEMBERSHIP: u8 = 5;
    /// The distributed lock (client requests: acquire, renew, release, status).
    pub const LOCK: u8 = 6;
}

/// The sender of a message, as the wire envelope authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The network address replies go to.
    pub addr: SocketAddr,
    /// The sender's node id (a client's id when the sender is a client).
    pub node: NodeId,
    /// The sender's incarnation: it grows every time the sender restarts.
    pub incarnation: u32,
}

/// A message a service wants sent: its payload is the first `len` bytes of the buffer given to
/// [`Service::poll_transmit`], and it goes to `to` inside an envelope of the service's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub to: SocketAddr,
    /// The payload's length.
    pub len: usize,
}

/// A sans-IO networked service.
pub trait Service {
    /// The envelope kind this service's messages carry (see [`kind`]).
    const KIND: u8;
    /// Why a commit failed (a storage error: the service is poisoned after it).
    type Error;

    /// Takes one authenticated message. A payload that does not decode is dropped and counted by
    /// the service, never a panic.
    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]);

    /// Runs the timers that are due at `now`. A spurious or early call does nothing harmful.
    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R);

    /// The next message to send, its payload written into `buffer` (whose length is the most the
    /// envelope can carry); `None` when nothing waits.
    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit>;

    /// When [`Service::handle_timeout`] must next be called; `None` when no timer is armed.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Makes staged writes durable with one sync and releases the acknowledgements that waited
    /// for it. Cheap when nothing is staged.
    fn commit(&mut self) -> Result<(), Self::Error>;
}

/// A commit failed: the service of envelope kind `kind` could not sync and is poisoned. Nothing
/// it staged since its previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommitFailed {
    /// The failed service's envelope kind.
    pub kind: u8,
}

impl core::fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the service of kind {} failed to sync its storage and stopped taking writes",
            self.kind
        )
    }
}

impl core::error::Error for CommitFailed {}

/// Several services run by one node, dispatched by envelope kind. Implemented for a single
/// [`Service`] and for tuples of two to five, so a driver runs any combination.
pub trait Services {
    /// Hands an authenticated message to the service of `kind`; false when no service has it.
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool;
    /// Runs every service's due timers.
    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R);
    /// The next message of any service, with the envelope kind it goes out under.
    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)>;
    /// The earliest deadline of any service.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Commits every service (one sync each at most). Every service is committed even when an
    /// earlier one fails; the first failure is returned.
    fn commit(&mut self) -> Result<(), CommitFailed>;
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl<A: Service> Services for A {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        if kind != A::KIND {
            return false;
        }
        Service::handle_message(self, now, from, payload);
        true
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        Service::handle_timeout(self, now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        Service::poll_transmit(self, now, buffer).map(|transmit| (A::KIND, transmit))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Service::poll_timeout(self)
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        Service::commit(self).map_err(|_| CommitFailed { kind: A::KIND })
    }
}

impl<A: Services, B: Services> Services for (A, B) {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        self.0.handle_message(now, kind, from, payload)
            || self.1.handle_message(now, kind, from, payload)
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.0.handle_timeout(now, rng);
        self.1.handle_timeout(now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        self.0
            .poll_transmit(now, buffer)
            .or_else(|| self.1.poll_transmit(now, buffer))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.0.poll_timeout(), self.1.poll_timeout())
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        let first = self.0.commit();
        let second = self.1.commit();
        first.and(second)
    }
}

impl<A: Services, B: Services, C: Services> Services for (A, B, C) {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        self.0.handle_message(now, kind, from, payload)
            || self.1.handle_message(now, kind, from, payload)
            || self.2.handle_message(now, kind, from, payload)
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.0.handle_timeout(now, rng);
        self.1.handle_timeout(now, rng);
        self.2.handle_timeout(now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        self.0
            .poll_transmit(now, buffer)
            .or_else(|| self.1.poll_transmit(now, buffer))
            .or_else(|| self.2.poll_transmit(now, buffer))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let first = earliest(self.0.poll_timeout(), self.1.poll_timeout());
        earliest(first, self.2.poll_timeout())
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        let first = self.0.commit();
        let second = self.1.commit();
        let third = self.2.commit();
        first.and(second).and(third)
    }
}

impl<A: Services, B: Services, C: Services, D: Services> Services for (A, B, C, D) {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        self.0.handle_message(now, kind, from, payload)
            || self.1.handle_message(now, kind, from, payload)
            || self.2.handle_message(now, kind, from, payload)
            || self.3.handle_message(now, kind, from, payload)
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.0.handle_timeout(now, rng);
        self.1.handle_timeout(now, rng);
        self.2.handle_timeout(now, rng);
        self.3.handle_timeout(now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        self.0
            .poll_transmit(now, buffer)
            .or_else(|| self.1.poll_transmit(now, buffer))
            .or_else(|| self.2.poll_transmit(now, buffer))
            .or_else(|| self.3.poll_transmit(now, buffer))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let first = earliest(self.0.poll_timeout(), self.1.poll_timeout());
        let second = earliest(self.2.poll_timeout(), self.3.poll_timeout());
        earliest(first, second)
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        let first = self.0.commit();
        let second = self.1.commit();
        let third = self.2.commit();
        let fourth = self.3.commit();
        first.and(second).and(third).and(fourth)
    }
}

impl<A: Services, B: Services, C: Services, D: Services, E: Services> Services for (A, B, C, D, E) {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        self.0.handle_message(now, kind, from, payload)
            || self.1.handle_message(now, kind, from, payload)
            || self.2.handle_message(now, kind, from, payload)
            || self.3.handle_message(now, kind, from, payload)
            || self.4.handle_message(now, kind, from, payload)
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.0.handle_timeout(now, rng);
        self.1.handle_timeout(now, rng);
        self.2.handle_timeout(now, rng);
        self.3.handle_timeout(now, rng);
        self.4.handle_timeout(now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        self.0
            .poll_transmit(now, buffer)
            .or_else(|| self.1.poll_transmit(now, buffer))
            .or_else(|| self.2.poll_transmit(now, buffer))
            .or_else(|| self.3.poll_transmit(now, buffer))
            .or_else(|| self.4.poll_transmit(now, buffer))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let first = earliest(self.0.poll_timeout(), self.1.poll_timeout());
        let second = earliest(self.2.poll_timeout(), self.3.poll_timeout());
        earliest(earliest(first, second), self.4.poll_timeout())
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        let first = self.0.commit();
        let second = self.1.commit();
        let third = self.2.commit();
        let fourth = self.3.commit();
        let fifth = self.4.commit();
        first.and(second).and(third).and(fourth).and(fifth)
    }
}
