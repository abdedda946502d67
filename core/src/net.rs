//! The datagram contract: what bedrock needs from a network, and nothing more.
//!
//! A [`Datagram`] endpoint sends and receives whole datagrams to and from [`SocketAddr`]s
//! (`core::net`, so the same type serves Linux sockets, `embedded-nal` stacks and the
//! simulator). The network it stands for is unreliable: a datagram may be lost, duplicated,
//! reordered, delayed or corrupted, and the protocols above must survive all of it (the wire
//! envelope authenticates every datagram; the services retry and deduplicate).
//!
//! What an implementation guarantees:
//!
//! - both calls are non-blocking: `recv` returns `Ok(None)` when nothing is waiting, `send`
//!   returns [`SendError::WouldBlock`] instead of waiting for buffer space;
//! - a datagram larger than [`Datagram::mtu`] is never sent cut: `send` refuses it with
//!   [`SendError::TooLarge`];
//! - a received datagram that did not fit the caller's buffer (or was larger than the MTU) is
//!   never handed over cut short as if it were whole: `recv` reports [`RecvError::Truncated`].
//!
//! What it does not guarantee: delivery, order, uniqueness, or integrity of the bytes.

pub use core::net::SocketAddr;

/// The default MTU on Linux: the payload bytes of one datagram that fits an Ethernet frame with
/// room for IPv6 and tunnel headers.
pub const MTU_DEFAULT: usize = 1400;
/// The smallest MTU bedrock supports: 576 (the IPv4 minimum reassembly size) minus the largest
/// IPv4 and UDP headers. Every protocol message must fit in it.
pub const MTU_MIN: usize = 508;
/// The largest payload of a UDP datagram over IPv4.
pub const MTU_MAX: usize = 65_507;

/// One datagram taken from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Who sent it (as the network says: not authenticated).
    pub from: SocketAddr,
    /// Its length; the bytes are the first `len` of the caller's buffer.
    pub len: usize,
}

/// Why a datagram was not sent. Nothing was sent in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<E> {
    /// The datagram is larger than the endpoint's MTU.
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The endpoint's MTU.
        mtu: usize,
    },
    /// No buffer space right now; the caller may drop the datagram or try later.
    WouldBlock,
    /// The network stack refused it.
    Io(E),
}

/// Why `recv` returned no datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError<E> {
    /// A datagram arrived that was larger than the caller's buffer or the MTU. It was consumed
    /// and must be dropped: its bytes are incomplete.
    Truncated {
        /// Who sent it.
        from: SocketAddr,
    },
    /// The network stack failed.
    Io(E),
}

/// A non-blocking, unreliable datagram endpoint with a bounded MTU.
pub trait Datagram {
    /// The network stack's error.
    type Error: core::fmt::Debug;

    /// The largest datagram this endpoint sends or accepts, between [`MTU_MIN`] and [`MTU_MAX`].
    fn mtu(&self) -> usize;

    /// Sends `bytes` as one datagram to `to`. See [`SendError`] for refusals.
    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<Self::Error>>;

    /// Takes the next waiting datagram into `buffer`, or returns `Ok(None)` when none waits.
    /// A datagram that does not fit `buffer` is reported as [`RecvError::Truncated`].
    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<Self::Error>>;
}

impl<D: Datagram + ?Sized> Datagram for &mut D {
    type Error = D::Error;

    fn mtu(&self) -> usize {
        (**self).mtu()
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<Self::Error>> {
        (**self).send(to, bytes)
    }

    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<Self::Error>> {
        (**self).recv(buffer)
    }
}

impl<E: core::fmt::Display> core::fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { len, mtu } => {
                write!(f, "datagram of {len} bytes is larger than the MTU of {mtu}")
            }
            Self::WouldBlock => f.write_str("no send buffer space; datagram not sent"),
            Self::Io(error) => write!(f, "send failed: {error}"),
        }
    }
}

impl<E: core::fmt::Display> core::fmt::Display for RecvError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { from } => {
                write!(f, "datagram from {from} larger than the buffer; dropped")
            }
            Self::Io(error) => write!(f, "receive failed: {error}"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for SendError<E> {}
impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for RecvError<E> {}
