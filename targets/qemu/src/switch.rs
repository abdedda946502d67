//! [`Switch`]: an in-firmware loopback UDP network, as an `embedded-nal` [`UdpFullStack`], so
//! that several nodes in one image talk through bedrock's `NalDatagram` adapter exactly as they
//! would through a real stack.
//!
//! Every socket lives on one address, [`SWITCH_IP`]; a socket is bound to a port, and a datagram
//! sent to `SWITCH_IP:port` is queued for the socket bound to that port. Queued datagrams wait in
//! one fixed arena of `ARENA` bytes (at most `SLOTS` datagrams), in send order; no allocation.
//!
//! What it models: loss. A seeded generator drops `drop_percent` percent of the datagrams sent,
//! so one seed gives one run. A datagram to a port nobody bound is lost, as UDP's is. A full
//! arena refuses the send with `WouldBlock`. What it does not model: delay, reordering,
//! duplication or corruption (delivery happens at the next receive, in send order).
//!
//! The stack is implemented for `&Switch` (state in a `RefCell`), so that each node's
//! `NalDatagram` holds its own handle to the one shared switch.

use core::cell::RefCell;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use bedrock::rng::{Rng, SplitMix64};
use bedrock_embedded::embedded_nal::{nb, UdpClientStack, UdpFullStack};

/// The one address every socket of the switch has.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// Why the switch refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// Every socket slot is open.
    NoSocket,
    /// Another socket is bound to the port.
    PortInUse,
    /// The socket is not bound (send before bind).
    NotBound,
}

/// A socket of the switch: its slot index.
#[derive(Debug)]
pub struct SwitchSocket {
    slot: usize,
}

/// What the switch did with the datagrams it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Datagrams handed to `send_to`.
    pub sent: u64,
    /// Dropped by the seeded loss.
    pub dropped: u64,
    /// Lost: nobody bound the destination (a rebooting node's port), or it was not ours.
    pub unroutable: u64,
    /// Refused with `WouldBlock`: the arena was full.
    pub full: u64,
    /// Queued datagrams thrown away by [`Switch::clear_port`] (a node rebooted).
    pub cleared: u64,
    /// Datagrams received.
    pub delivered: u64,
    /// Most bytes waiting in the arena at once.
    pub arena_peak: usize,
}

/// One queued datagram: its ports and its length; its bytes are in the arena, in queue order.
#[derive(Debug, Clone, Copy, Default)]
struct Queued {
    from_port: u16,
    to_port: u16,
    len: usize,
}

#[derive(Debug)]
struct State<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> {
    /// Per socket slot: `None` when closed, `Some(None)` when open and unbound.
    ports: [Option<Option<u16>>; SOCKETS],
    queue: [Queued; SLOTS],
    queued: usize,
    arena: [u8; ARENA],
    arena_used: usize,
    rng: SplitMix64,
    drop_percent: u64,
    stats: SwitchStats,
}

/// A loopback UDP network of `SOCKETS` sockets. See the [module docs](self).
#[derive(Debug)]
pub struct Switch<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> {
    state: RefCell<State<SOCKETS, SLOTS, ARENA>>,
}

impl<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> Switch<SOCKETS, SLOTS, ARENA> {
    /// A switch that drops `drop_percent` percent of datagrams, chosen by a generator seeded
    /// with `seed`.
    pub const fn new(seed: u64, drop_percent: u64) -> Self {
        Self {
            state: RefCell::new(State {
                ports: [None; SOCKETS],
                queue: [Queued {
                    from_port: 0,
                    to_port: 0,
                    len: 0,
                }; SLOTS],
                queued: 0,
                arena: [0; ARENA],
                arena_used: 0,
                rng: SplitMix64::new(seed),
                drop_percent,
                stats: SwitchStats {
                    sent: 0,
                    dropped: 0,
                    unroutable: 0,
                    full: 0,
                    cleared: 0,
                    delivered: 0,
                    arena_peak: 0,
                },
            }),
        }
    }

    /// Empties the queues, zeroes the counters and reseeds the loss (a new run). Sockets stay
    /// as they are.
    pub fn reset(&self, seed: u64) {
        let mut state = self.state.borrow_mut();
        state.queued = 0;
        state.arena_used = 0;
        state.rng = SplitMix64::new(seed);
        state.stats = SwitchStats::default();
    }

    /// The address of the socket bound to `port`.
    pub const fn address(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SWITCH_IP), port)
    }

    /// How many datagrams wait for the socket bound to `port`.
    pub fn waiting(&self, port: u16) -> usize {
        let state = self.state.borrow();
        state.queue[..state.queued]
            .iter()
            .filter(|queued| queued.to_port == port)
            .count()
    }

    /// Datagrams waiting for any socket.
    pub fn queued(&self) -> usize {
        self.state.borrow().queued
    }

    /// Throws away every datagram waiting for `port` (its node lost power: its receive buffers
    /// are gone).
    pub fn clear_port(&self, port: u16) {
        let mut state = self.state.borrow_mut();
        // Bounded: each pass removes one datagram.
        while let Some(index) = state.find(port) {
            state.remove(index);
            state.stats.cleared += 1;
        }
    }

    /// What the switch did so far.
    pub fn stats(&self) -> SwitchStats {
        self.state.borrow().stats
    }
}

impl<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> State<SOCKETS, SLOTS, ARENA> {
    fn bound_port(&self, socket: &SwitchSocket) -> Option<u16> {
        self.ports.get(socket.slot).copied().flatten().flatten()
    }

    fn is_bound(&self, port: u16) -> bool {
        self.ports.iter().any(|slot| *slot == Some(Some(port)))
    }

    /// The index of the first datagram queued for `port`.
    fn find(&self, port: u16) -> Option<usize> {
        self.queue[..self.queued]
            .iter()
            .position(|queued| queued.to_port == port)
    }

    /// Where the bytes of datagram `index` start in the arena.
    fn offset(&self, index: usize) -> usize {
        self.queue[..index].iter().map(|queued| queued.len).sum()
    }

    fn push(&mut self, from_port: u16, to_port: u16, bytes: &[u8]) -> bool {
        let end = self.arena_used + bytes.len();
        if self.queued == SLOTS || end > ARENA {
            return false;
        }
        self.arena[self.arena_used..end].copy_from_slice(bytes);
        self.arena_used = end;
        self.queue[self.queued] = Queued {
            from_port,
            to_port,
            len: bytes.len(),
        };
        self.queued += 1;
        self.stats.arena_peak = self.stats.arena_peak.max(self.arena_used);
        true
    }

    /// Removes datagram `index`, closing the gap its bytes leave in the arena.
    fn remove(&mut self, index: usize) {
        let start = self.offset(index);
        let len = self.queue[index].len;
        self.arena.copy_within(start + len..self.arena_used, start);
        self.arena_used -= len;
        self.queue.copy_within(index + 1..self.queued, index);
        self.queued -= 1;
    }
}

impl<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> UdpClientStack
    for &Switch<SOCKETS, SLOTS, ARENA>
{
    type UdpSocket = SwitchSocket;
    type Error = SwitchError;

    fn socket(&mut self) -> Result<SwitchSocket, SwitchError> {
        let mut state = self.state.borrow_mut();
        let slot = state
            .ports
            .iter()
            .position(Option::is_none)
            .ok_or(SwitchError::NoSocket)?;
        state.ports[slot] = Some(None);
        Ok(SwitchSocket { slot })
    }

    /// Not supported: the nodes bind to a port and reply with `send_to`.
    fn connect(&mut self, _: &mut SwitchSocket, _: SocketAddr) -> Result<(), SwitchError> {
        Err(SwitchError::NotBound)
    }

    /// Not supported, as `connect` is not.
    fn send(&mut self, _: &mut SwitchSocket, _: &[u8]) -> nb::Result<(), SwitchError> {
        Err(nb::Error::Other(SwitchError::NotBound))
    }

    /// Takes the oldest datagram for the socket's port. Like many stacks, copies what fits the
    /// buffer and returns the datagram's whole length (`NalDatagram` reports it as truncated).
    fn receive(
        &mut self,
        socket: &mut SwitchSocket,
        buffer: &mut [u8],
    ) -> nb::Result<(usize, SocketAddr), SwitchError> {
        let mut state = self.state.borrow_mut();
        let port = state
            .bound_port(socket)
            .ok_or(nb::Error::Other(SwitchError::NotBound))?;
        let index = state.find(port).ok_or(nb::Error::WouldBlock)?;
        let queued = state.queue[index];
        let start = state.offset(index);
        let copied = queued.len.min(buffer.len());
        buffer[..copied].copy_from_slice(&state.arena[start..start + copied]);
        state.remove(index);
        state.stats.delivered += 1;
        Ok((
            queued.len,
            Switch::<SOCKETS, SLOTS, ARENA>::address(queued.from_port),
        ))
    }

    fn close(&mut self, socket: SwitchSocket) -> Result<(), SwitchError> {
        let mut state = self.state.borrow_mut();
        if let Some(slot) = state.ports.get_mut(socket.slot) {
            *slot = None;
        }
        Ok(())
    }
}

impl<const SOCKETS: usize, const SLOTS: usize, const ARENA: usize> UdpFullStack
    for &Switch<SOCKETS, SLOTS, ARENA>
{
    fn bind(&mut self, socket: &mut SwitchSocket, local_port: u16) -> Result<(), SwitchError> {
        let mut state = self.state.borrow_mut();
        if state.is_bound(local_port) {
            return Err(SwitchError::PortInUse);
        }
        let slot = state
            .ports
            .get_mut(socket.slot)
            .filter(|slot| slot.is_some())
            .ok_or(SwitchError::NotBound)?;
        *slot = Some(Some(local_port));
        Ok(())
    }

    fn send_to(
        &mut self,
        socket: &mut SwitchSocket,
        remote: SocketAddr,
        buffer: &[u8],
    ) -> nb::Result<(), SwitchError> {
        let mut state = self.state.borrow_mut();
        let from_port = state
            .bound_port(socket)
            .ok_or(nb::Error::Other(SwitchError::NotBound))?;
        state.stats.sent += 1;
        let drop_percent = state.drop_percent;
        if state.rng.below(100) < drop_percent {
            state.stats.dropped += 1;
            return Ok(());
        }
        if remote.ip() != IpAddr::V4(SWITCH_IP) || !state.is_bound(remote.port()) {
            state.stats.unroutable += 1;
            return Ok(());
        }
        if !state.push(from_port, remote.port(), buffer) {
            state.stats.full += 1;
            return Err(nb::Error::WouldBlock);
        }
        Ok(())
    }
}
