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
}

/// The sender of a message, as the wire envelope authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
