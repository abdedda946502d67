//! [`NalDatagram`]: the [`Datagram`] contract over any `embedded-nal` [`UdpFullStack`] (smoltcp
//! adapters, AT-command modems, Wi-Fi co-processors).
//!
//! # What is guaranteed
//!
//! - Neither call blocks, as long as the stack keeps embedded-nal's `nb` contract: its
//!   `nb::Error::WouldBlock` becomes `Ok(None)` from `recv` and [`SendError::WouldBlock`] from
//!   `send`.
//! - A datagram larger than the MTU is never handed to the stack: [`SendError::TooLarge`].
//! - Truncation is reported, never silent, without a buffer of its own (no alloc, no copy): the
//!   stack is given one byte more than the smaller of the MTU and the caller's buffer, when the
//!   caller's buffer has it. A datagram that reaches that extra byte, or that the stack says is
//!   longer than the room it was given, is reported as [`RecvError::Truncated`].
//!
//! # What is not guaranteed
//!
//! - **Lend `recv` at least [`NalDatagram::recv_buffer_len`] bytes (`mtu + 1`).** With a smaller
//!   buffer there is no extra byte: a datagram that fills the buffer exactly cannot be told from a
//!   longer one the stack cut, so it is reported as `Truncated` too (a whole datagram lost, never
//!   a cut one accepted).
//! - What happens before the datagram reaches this adapter is the stack's business. Many stacks
//!   cut a datagram longer than their own receive buffer silently and return the cut length
//!   (embedded-nal does not say otherwise); a stack whose socket buffer is smaller than `mtu + 1`
//!   can therefore hand over a cut datagram that looks whole. Size the stack's UDP receive buffers
//!   above the MTU. Others drop such datagrams, which this adapter cannot see either.
//! - The stack may deliver datagrams for other ports or from unexpected peers if it does; the
//!   sender address is whatever the stack reports.

use core::fmt;

use bedrock::net::{Datagram, Received, RecvError, SendError, SocketAddr, MTU_MAX, MTU_MIN};
use embedded_nal::{UdpClientStack, UdpFullStack};

/// Why [`NalDatagram::bind`] failed. The socket was closed (if it was opened) in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum NalBindError<E> {
    /// The MTU is outside [`MTU_MIN`]`..=`[`MTU_MAX`]; the stack was not called.
    BadMtu {
        /// The MTU asked for.
        mtu: usize,
    },
    /// The stack could not open or bind the socket.
    Stack(E),
}

impl<E: fmt::Debug> fmt::Display for NalBindError<E> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMtu { mtu } => write!(
                formatter,
                "MTU of {mtu} bytes is outside {MTU_MIN}..={MTU_MAX}"
            ),
            Self::Stack(error) => write!(formatter, "could not bind a UDP socket: {error:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for NalBindError<E> {}

/// One bound UDP socket of an embedded-nal stack, as a bedrock [`Datagram`]. See the
/// [module docs](self).
///
/// Takes the stack by value; pass `&mut stack` to keep access to it (embedded-nal implements
/// [`UdpFullStack`] for `&mut T`), or reach it through [`NalDatagram::stack_mut`].
pub struct NalDatagram<S: UdpFullStack> {
    stack: S,
    socket: S::UdpSocket,
    mtu: usize,
}

impl<S: UdpFullStack> fmt::Debug for NalDatagram<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("NalDatagram")
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl<S: UdpFullStack> NalDatagram<S> {
    /// Opens a socket on `stack` and binds it to `local_port`. [`bedrock::net::MTU_DEFAULT`] suits most
    /// networks; [`MTU_MIN`] suits small RAM.
    pub fn bind(mut stack: S, local_port: u16, mtu: usize) -> Result<Self, NalBindError<S::Error>> {
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(NalBindError::BadMtu { mtu });
        }
        let mut socket = stack.socket().map_err(NalBindError::Stack)?;
        if let Err(error) = stack.bind(&mut socket, local_port) {
            // The bind error is the one worth reporting; a failed close leaks one socket slot.
            let _ = stack.close(socket);
            return Err(NalBindError::Stack(error));
        }
        Ok(Self { stack, socket, mtu })
    }

    /// The smallest `recv` buffer with which every datagram up to the MTU arrives whole:
    /// `mtu + 1`.
    pub fn recv_buffer_len(&self) -> usize {
        self.mtu + 1
    }

    /// The stack, for calls this type does not make (polling an interface, other sockets).
    pub fn stack_mut(&mut self) -> &mut S {
        &mut self.stack
    }

    /// Closes the socket and gives the stack back, with the result of the close.
    pub fn close(mut self) -> (S, Result<(), S::Error>) {
        let result = self.stack.close(self.socket);
        (self.stack, result)
    }
}

impl<S: UdpFullStack> Datagram for NalDatagram<S> {
    type Error = <S as UdpClientStack>::Error;

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<Self::Error>> {
        if bytes.len() > self.mtu {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                mtu: self.mtu,
            });
        }
        match self.stack.send_to(&mut self.socket, to, bytes) {
            Ok(()) => Ok(()),
            Err(nb::Error::WouldBlock) => Err(SendError::WouldBlock),
            Err(nb::Error::Other(error)) => Err(SendError::Io(error)),
        }
    }

    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<Self::Error>> {
        let limit = self.mtu.min(buffer.len());
        // One byte past the limit when the caller lends it; else the limit itself, where a full
        // buffer is ambiguous and counts as truncated.
        let room = buffer.len().min(limit + 1);
        match self.stack.receive(&mut self.socket, &mut buffer[..room]) {
            Ok((len, from)) if len >= room => Err(RecvError::Truncated { from }),
            Ok((len, from)) => Ok(Some(Received { from, len })),
            Err(nb::Error::WouldBlock) => Ok(None),
            Err(nb::Error::Other(error)) => Err(RecvError::Io(error)),
        }
    }
}

#[cfg(test)]
mod tests;
