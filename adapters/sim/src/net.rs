//! [`SimNetwork`]: a deterministic network of datagram endpoints with a virtual clock and faults
//! drawn from a seed.
//!
//! A harness owns one network and N nodes. Each node reaches the network through a short-lived
//! [`SimEndpoint`] (`network.endpoint(addr)`), which implements [`Datagram`]; the harness moves
//! the virtual clock with [`SimNetwork::advance_to`], jumping to the earliest of
//! [`SimNetwork::next_delivery`] and the nodes' own deadlines:
//!
//! ```
//! use bedrock::net::Datagram;
//! use bedrock_sim::{NetFaults, SimNetwork};
//!
//! let (a, b) = ("10.0.0.1:7000".parse().unwrap(), "10.0.0.2:7000".parse().unwrap());
//! let faults = NetFaults { latency_min_micros: 100, latency_max_micros: 300, ..NetFaults::NONE };
//! let mut network = SimNetwork::new(42).with_faults(faults);
//! network.add_endpoint(a);
//! network.add_endpoint(b);
//! network.endpoint(a).send(b, b"ping").unwrap();
//! let mut buffer = [0; 1400];
//! assert_eq!(network.endpoint(b).recv(&mut buffer).unwrap(), None, "still in flight");
//! let due = network.next_delivery().unwrap();
//! network.advance_to(due);
//! let received = network.endpoint(b).recv(&mut buffer).unwrap().unwrap();
//! assert_eq!((received.from, &buffer[..received.len]), (a, &b"ping"[..]));
//! ```
//!
//! # What is guaranteed
//!
//! - Determinism: the same seed, faults and sequence of calls give the same deliveries, bytes,
//!   times and counters. Datagrams are delivered in order of delivery time, then of a sequence
//!   number given when they were sent; every collection iterates in a fixed order.
//! - Faults, each drawn independently per datagram with [`NetFaults`]' probabilities: loss,
//!   duplication (the copy has its own latency and may overtake the original), corruption (exactly
//!   one bit flipped in one copy), and a latency uniform in `latency_min_micros..=latency_max_micros`
//!   (any spread reorders datagrams).
//! - The [`Datagram`] contract, as a real socket keeps it: a datagram over the MTU is refused with
//!   [`SendError::TooLarge`]; one longer than the receiver's buffer is consumed and reported as
//!   [`RecvError::Truncated`]; `recv` on an empty inbox returns `Ok(None)`.
//! - A datagram reaches an inbox only when [`SimNetwork::advance_to`] reaches its delivery time,
//!   never during a `send`, even with zero latency.
//! - Nothing is lost from the books ([`NetCounters`]): `sent + duplicated` always equals
//!   `delivered + in_flight()` plus the drops of every cause.
//!
//! # What is not modelled
//!
//! Bandwidth and queueing delay (latency does not depend on load), send buffers (`send` never
//! returns [`SendError::WouldBlock`]), IP fragmentation, and network stack errors (the error type is
//! [`Infallible`]). Partitions and cut links are checked when a datagram is sent: one already in
//! flight when a partition starts is still delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;

use bedrock::net::{Datagram, Received, RecvError, SendError, MTU_DEFAULT, MTU_MAX, MTU_MIN};
use bedrock::time::Instant;

use crate::rng::SimRng;

/// Datagrams an endpoint's inbox holds by default before it drops new arrivals.
pub const INBOX_CAPACITY_DEFAULT: usize = 1024;

/// The network's faults. Probabilities are clamped to `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetFaults {
    /// Probability that a datagram is lost.
    pub drop: f64,
    /// Probability that a datagram (not lost) is delivered twice.
    pub duplicate: f64,
    /// Probability that one delivered copy has one random bit flipped.
    pub corrupt: f64,
    /// The shortest time from send to delivery, in microseconds.
    pub latency_min_micros: u64,
    /// The longest time from send to delivery, in microseconds. Above the minimum, datagrams
    /// reorder.
    pub latency_max_micros: u64,
}

impl NetFaults {
    /// A perfect network: nothing lost, duplicated or corrupted, zero latency.
    pub const NONE: Self = Self {
        drop: 0.0,
        duplicate: 0.0,
        corrupt: 0.0,
        latency_min_micros: 0,
        latency_max_micros: 0,
    };
}

impl Default for NetFaults {
    fn default() -> Self {
        Self::NONE
    }
}

/// Network-wide counts of what happened to the datagrams sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Datagrams accepted by `send` (refusals such as [`SendError::TooLarge`] are not counted).
    pub sent: u64,
    /// Copies placed into an inbox.
    pub delivered: u64,
    /// Datagrams lost to [`NetFaults::drop`].
    pub dropped_loss: u64,
    /// Datagrams discarded because a partition or a cut link separated the endpoints at send
    /// time.
    pub dropped_partition: u64,
    /// Copies dropped because the receiver's inbox was full.
    pub dropped_inbox_full: u64,
    /// Datagrams sent by or copies arriving at an endpoint that was down.
    pub dropped_down: u64,
    /// Datagrams sent to an address with no endpoint.
    pub dropped_unknown: u64,
    /// Extra copies made by [`NetFaults::duplicate`].
    pub duplicated: u64,
    /// Copies with a bit flipped by [`NetFaults::corrupt`].
    pub corrupted: u64,
}

/// Counts for one endpoint: the "bytes per node per round" figures come from these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Datagrams this endpoint sent (accepted by `send`).
    pub datagrams_sent: u64,
    /// Payload bytes of those datagrams.
    pub bytes_sent: u64,
    /// Copies placed into this endpoint's inbox.
    pub datagrams_delivered: u64,
    /// Payload bytes of those copies.
    pub bytes_delivered: u64,
}

/// One datagram on its way or waiting in an inbox.
#[derive(Debug, Clone)]
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Endpoint {
    inbox: VecDeque<Packet>,
    down: bool,
    /// The partition group; endpoints in one group reach each other. 0: the default group.
    group: u64,
    counters: EndpointCounters,
}

/// A simulated network. See the [module docs](self).
#[derive(Debug)]
pub struct SimNetwork {
    now: Instant,
    rng: SimRng,
    faults: NetFaults,
    mtu: usize,
    inbox_capacity: usize,
    endpoints: BTreeMap<SocketAddr, Endpoint>,
    /// Keyed by (delivery time, sequence number): the delivery order.
    in_flight: BTreeMap<(Instant, u64), Packet>,
    sequence: u64,
    groups_made: u64,
    cut_links: BTreeSet<(SocketAddr, SocketAddr)>,
    counters: NetCounters,
}

impl SimNetwork {
    /// A network without endpoints or faults, at [`Instant::ZERO`], with an MTU of
    /// [`MTU_DEFAULT`] and inboxes of [`INBOX_CAPACITY_DEFAULT`] datagrams.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Instant::ZERO,
            rng: SimRng::new(seed),
            faults: NetFaults::NONE,
            mtu: MTU_DEFAULT,
            inbox_capacity: INBOX_CAPACITY_DEFAULT,
            endpoints: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            sequence: 0,
            groups_made: 0,
            cut_links: BTreeSet::new(),
            counters: NetCounters::default(),
        }
    }

    /// Sets the faults (also later, with [`SimNetwork::set_faults`]).
    pub fn with_faults(mut self, faults: NetFaults) -> Self {
        self.faults = faults;
        self
    }

    /// Sets every endpoint's MTU.
    ///
    /// # Panics
    ///
    /// When `mtu` is outside [`MTU_MIN`]`..=`[`MTU_MAX`]: a mistake in the harness.
    pub fn with_mtu(mut self, mtu: usize) -> Self {
        assert!(
            (MTU_MIN..=MTU_MAX).contains(&mtu),
            "MTU of {mtu} bytes is outside {MTU_MIN}..={MTU_MAX}"
        );
        self.mtu = mtu;
        self
    }

    /// Sets how many datagrams each inbox holds before new arrivals are dropped (at least 1).
    pub fn with_inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity.max(1);
        self
    }

    /// Replaces the faults for datagrams sent from now on.
    pub fn set_faults(&mut self, faults: NetFaults) {
        self.faults = faults;
    }

    /// The current faults.
    pub fn faults(&self) -> NetFaults {
        self.faults
    }

    /// The MTU of every endpoint.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Adds an endpoint at `addr`, up and in the default partition group. Adding one that exists
    /// changes nothing.
    pub fn add_endpoint(&mut self, addr: SocketAddr) {
        self.endpoints.entry(addr).or_default();
    }

    /// The endpoints' addresses, in order.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints.keys().copied()
    }

    /// A [`Datagram`] handle for the endpoint at `addr`, borrowing the network for as long as it
    /// is used.
    ///
    /// # Panics
    ///
    /// When no endpoint was added at `addr`: a mistake in the harness.
    pub fn endpoint(&mut self, addr: SocketAddr) -> SimEndpoint<'_> {
        assert!(
            self.endpoints.contains_key(&addr),
            "no endpoint at {addr}; add it with add_endpoint first"
        );
        SimEndpoint {
            network: self,
            addr,
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the next datagram in flight is due, if any.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|&(due, _)| due)
    }

    /// Datagrams in flight (sent, not yet delivered or dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Moves the clock to `time` (never backwards: an earlier `time` keeps the clock where it is)
    /// and delivers, in order, every datagram due by then.
    pub fn advance_to(&mut self, time: Instant) {
        self.now = self.now.max(time);
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let packet = entry.remove();
            self.deliver(packet);
        }
    }

    /// Moves the clock forward by `duration`; see [`SimNetwork::advance_to`].
    pub fn advance_by(&mut self, duration: core::time::Duration) {
        self.advance_to(self.now + duration);
    }

    /// Sends `bytes` from the endpoint at `from` to `to`, as [`Datagram::send`] does.
    ///
    /// # Panics
    ///
    /// When no endpoint was added at `from`.
    pub fn send(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), SendError<Infallible>> {
        if bytes.len() > self.mtu {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                mtu: self.mtu,
            });
        }
        let sender = self.endpoint_state(from);
        sender.counters.datagrams_sent += 1;
        sender.counters.bytes_sent += bytes.len() as u64;
        let (sender_down, sender_group) = (sender.down, sender.group);
        self.counters.sent += 1;
        // Draw every fault decision whatever the outcome, so one datagram's fate does not shift
        // the random sequence of those after it.
        let lost = self.rng.chance(self.faults.drop);
        let duplicated = self.rng.chance(self.faults.duplicate);
        let Some(receiver) = self.endpoints.get(&to) else {
            self.counters.dropped_unknown += 1;
            return Ok(());
        };
        if sender_down {
            self.counters.dropped_down += 1;
        } else if receiver.group != sender_group || self.cut_links.contains(&(from, to)) {
            self.counters.dropped_partition += 1;
        } else if lost {
            self.counters.dropped_loss += 1;
        } else {
            let packet = Packet {
                from,
                to,
                bytes: bytes.to_vec(),
            };
            if duplicated {
                self.counters.duplicated += 1;
                self.enqueue(packet.clone());
            }
            self.enqueue(packet);
        }
        Ok(())
    }

    /// Takes the next datagram from the inbox of the endpoint at `at`, as [`Datagram::recv`]
    /// does.
    ///
    /// # Panics
    ///
    /// When no endpoint was added at `at`.
    pub fn recv(
        &mut self,
        at: SocketAddr,
        buffer: &mut [u8],
    ) -> Result<Option<Received>, RecvError<Infallible>> {
        let Some(packet) = self.endpoint_state(at).inbox.pop_front() else {
            return Ok(None);
        };
        let len = packet.bytes.len();
        if len > buffer.len() || len > self.mtu {
            return Err(RecvError::Truncated { from: packet.from });
        }
        buffer[..len].copy_from_slice(&packet.bytes);
        Ok(Some(Received {
            from: packet.from,
            len,
        }))
    }

    /// Datagrams waiting in the inbox of the endpoint at `addr` (0 for an unknown address).
    pub fn inbox_len(&self, addr: SocketAddr) -> usize {
        self.endpoints
            .get(&addr)
            .map_or(0, |endpoint| endpoint.inbox.len())
    }

    /// Empties the inbox of the endpoint at `addr`: a crashed node loses what the kernel had
    /// queued for it. Datagrams still in flight are not touched. Returns how many were lost.
    pub fn clear_inbox(&mut self, addr: SocketAddr) -> usize {
        let inbox = &mut self.endpoint_state(addr).inbox;
        let cleared = inbox.len();
        inbox.clear();
        cleared
    }

    /// Takes the endpoint at `addr` down or brings it back up. While it is down, what it sends and
    /// what arrives for it is dropped ([`NetCounters::dropped_down`]); its inbox is kept (call
    /// [`SimNetwork::clear_inbox`] for a crash).
    pub fn set_down(&mut self, addr: SocketAddr, down: bool) {
        self.endpoint_state(addr).down = down;
    }

    /// Whether the endpoint at `addr` is down.
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        self.endpoints
            .get(&addr)
            .is_some_and(|endpoint| endpoint.down)
    }

    /// Splits the network: the endpoints of each group reach each other only; the endpoints in
    /// no group form one more group together. Replaces any earlier partition (cut links stay).
    pub fn partition(&mut self, groups: &[&[SocketAddr]]) {
        for endpoint in self.endpoints.values_mut() {
            endpoint.group = 0;
        }
        for group in groups {
            self.groups_made += 1;
            for addr in *group {
                if let Some(endpoint) = self.endpoints.get_mut(addr) {
                    endpoint.group = self.groups_made;
                }
            }
        }
    }

    /// Cuts the endpoint at `addr` off from every other, on top of any partition in place.
    pub fn isolate(&mut self, addr: SocketAddr) {
        self.groups_made += 1;
        self.endpoint_state(addr).group = self.groups_made;
    }

    /// Cuts the link from `from` to `to`, one direction only.
    pub fn cut_link(&mut self, from: SocketAddr, to: SocketAddr) {
        self.cut_links.insert((from, to));
    }

    /// Restores the link from `from` to `to`.
    pub fn restore_link(&mut self, from: SocketAddr, to: SocketAddr) {
        self.cut_links.remove(&(from, to));
    }

    /// Ends every partition and restores every cut link.
    pub fn heal(&mut self) {
        self.partition(&[]);
        self.cut_links.clear();
    }

    /// Whether a datagram sent now from `from` would get through partitions and cut links.
    pub fn can_reach(&self, from: SocketAddr, to: SocketAddr) -> bool {
        match (self.endpoints.get(&from), self.endpoints.get(&to)) {
            (Some(sender), Some(receiver)) => {
                sender.group == receiver.group && !self.cut_links.contains(&(from, to))
            }
            _ => false,
        }
    }

    /// The network-wide counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The counters of the endpoint at `addr` (zero for an unknown address).
    pub fn endpoint_counters(&self, addr: SocketAddr) -> EndpointCounters {
        self.endpoints
            .get(&addr)
            .map(|endpoint| endpoint.counters)
            .unwrap_or_default()
    }

    fn endpoint_state(&mut self, addr: SocketAddr) -> &mut Endpoint {
        match self.endpoints.get_mut(&addr) {
            Some(endpoint) => endpoint,
            None => panic!("no endpoint at {addr}; add it with add_endpoint first"),
        }
    }

    /// Puts one copy in flight with its own latency and, maybe, one flipped bit.
    fn enqueue(&mut self, mut packet: Packet) {
        let latency = self.rng.between(
            self.faults.latency_min_micros,
            self.faults.latency_max_micros,
        );
        let corrupt = self.rng.chance(self.faults.corrupt);
        let bit = self.rng.below(packet.bytes.len() as u64 * 8);
        if corrupt && !packet.bytes.is_empty() {
            packet.bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.counters.corrupted += 1;
        }
        let due = Instant::from_micros(self.now.as_micros().saturating_add(latency));
        self.sequence += 1;
        self.in_flight.insert((due, self.sequence), packet);
    }

    fn deliver(&mut self, packet: Packet) {
        let capacity = self.inbox_capacity;
        let Some(receiver) = self.endpoints.get_mut(&packet.to) else {
            self.counters.dropped_unknown += 1;
            return;
        };
        if receiver.down {
            self.counters.dropped_down += 1;
        } else if receiver.inbox.len() >= capacity {
            self.counters.dropped_inbox_full += 1;
        } else {
            receiver.counters.datagrams_delivered += 1;
            receiver.counters.bytes_delivered += packet.bytes.len() as u64;
            receiver.inbox.push_back(packet);
            self.counters.delivered += 1;
        }
    }
}

/// One endpoint of a [`SimNetwork`], borrowed for a sequence of calls: the [`Datagram`] a
/// simulated node is given.
#[derive(Debug)]
pub struct SimEndpoint<'a> {
    network: &'a mut SimNetwork,
    addr: SocketAddr,
}

impl SimEndpoint<'_> {
    /// This endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The network's virtual clock.
    pub fn now(&self) -> Instant {
        self.network.now
    }
}

impl Datagram for SimEndpoint<'_> {
    type Error = Infallible;

    fn mtu(&self) -> usize {
        self.network.mtu
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<Infallible>> {
        self.network.send(self.addr, to, bytes)
    }

    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<Infallible>> {
        self.network.recv(self.addr, buffer)
    }
}

#[cfg(test)]
mod tests;
