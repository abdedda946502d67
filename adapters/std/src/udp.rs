//! [`UdpDatagram`]: the [`Datagram`] contract over one non-blocking `std::net::UdpSocket`.
//!
//! # What is guaranteed
//!
//! - Neither call blocks: `recv` returns `Ok(None)` when nothing waits, `send` returns
//!   [`SendError::WouldBlock`] when the kernel has no buffer space. Blocking is only ever done by
//!   [`UdpDatagram::wait`], which a driver calls when it has nothing else to do.
//! - Truncation is reported, never silent. The kernel cuts a datagram that does not fit the buffer
//!   it is given, so every datagram is received into room for one byte more than the smaller of
//!   the MTU and the caller's buffer (the caller's buffer itself when it is larger than the MTU,
//!   else a scratch buffer owned by the endpoint). A datagram that fills that extra byte is
//!   reported as [`RecvError::Truncated`] and dropped; the next one is received normally.
//! - A datagram larger than the MTU is never sent: [`SendError::TooLarge`].
//! - `EINTR` is retried. `ECONNREFUSED` (an ICMP port-unreachable for an earlier datagram, which
//!   some kernels report on the next call of an unconnected socket) is not an error of this call:
//!   `recv` skips it and looks for the next datagram, `send` retries once it is cleared.
//!
//! # What is not guaranteed
//!
//! Delivery, order, uniqueness and integrity, as for any [`Datagram`]. The MTU is bedrock's
//! limit, not the path's: a datagram under it may still be fragmented by IP, and lost whole if a
//! fragment is.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant as StdInstant};

use bedrock::net::{Datagram, Received, RecvError, SendError};
pub use bedrock::net::{MTU_DEFAULT, MTU_MAX, MTU_MIN};

/// How many pending `ECONNREFUSED` or `EINTR` results one call skips before giving up for now:
/// every loop over input has a bound.
const RETRIES_MAX: usize = 64;

/// A non-blocking UDP endpoint with a bounded MTU. See the [module docs](self).
#[derive(Debug)]
pub struct UdpDatagram {
    socket: UdpSocket,
    mtu: usize,
    /// `mtu + 1` bytes: room to see that a datagram is longer than allowed.
    scratch: Vec<u8>,
}

impl UdpDatagram {
    /// Binds a non-blocking socket to `addr` (port 0: the kernel picks one).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when `mtu` is outside
    /// [`MTU_MIN`]`..=`[`MTU_MAX`], and with the operating system's error when binding fails.
    pub fn bind(addr: SocketAddr, mtu: usize) -> io::Result<Self> {
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU of {mtu} bytes is outside {MTU_MIN}..={MTU_MAX}"),
            ));
        }
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            mtu,
            scratch: vec![0; mtu + 1],
        })
    }

    /// The address the socket is bound to (with the port the kernel picked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, for options this type does not set (buffer sizes, TTL).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Blocks until a datagram (or a pending socket error) waits, or `timeout` passes; `None`
    /// waits without limit. Returns whether the socket is readable. Interrupted waits resume
    /// with the time that is left.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|timeout| StdInstant::now() + timeout);
        loop {
            let remaining =
                deadline.map(|deadline| deadline.saturating_duration_since(StdInstant::now()));
            match poll_readable(&self.socket, remaining) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// One `recv_from` into `buffer`, with `EINTR` and `ECONNREFUSED` skipped (a bounded number
    /// of times). `Ok(None)` when nothing waits.
    fn recv_raw(socket: &UdpSocket, buffer: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        for _ in 0..RETRIES_MAX {
            match socket.recv_from(buffer) {
                Ok(received) => return Ok(Some(received)),
                Err(error) => match error.kind() {
                    io::ErrorKind::WouldBlock => return Ok(None),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => continue,
                    _ => return Err(error),
                },
            }
        }
        Ok(None)
    }
}

impl Datagram for UdpDatagram {
    type Error = io::Error;

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError<io::Error>> {
        if bytes.len() > self.mtu {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                mtu: self.mtu,
            });
        }
        for _ in 0..RETRIES_MAX {
            match self.socket.send_to(bytes, to) {
                Ok(_) => return Ok(()),
                Err(error) => match error.kind() {
                    io::ErrorKind::WouldBlock => return Err(SendError::WouldBlock),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => continue,
                    _ => return Err(SendError::Io(error)),
                },
            }
        }
        Err(SendError::WouldBlock)
    }

    fn recv(&mut self, buffer: &mut [u8]) -> Result<Option<Received>, RecvError<io::Error>> {
        let limit = self.mtu.min(buffer.len());
        let direct = buffer.len() > limit;
        let room = if direct {
            &mut buffer[..limit + 1]
        } else {
            &mut self.scratch[..limit + 1]
        };
        let Some((len, from)) = Self::recv_raw(&self.socket, room).map_err(RecvError::Io)? else {
            return Ok(None);
        };
        if len > limit {
            return Err(RecvError::Truncated { from });
        }
        if !direct {
            buffer[..len].copy_from_slice(&self.scratch[..len]);
        }
        Ok(Some(Received { from, len }))
    }
}

/// `poll(2)` for readability of one socket. `None` waits without limit; a timeout is rounded up
/// to whole milliseconds so a short wait never becomes a busy loop.
#[allow(unsafe_code)]
fn poll_readable(socket: &UdpSocket, timeout: Option<Duration>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let timeout_ms = match timeout {
        None => -1,
        Some(timeout) => {
            let micros = timeout.as_micros();
            let millis = micros.div_ceil(1000);
            libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX)
        }
    };
    let mut descriptor = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `descriptor` is one valid, initialised pollfd that lives across the call, and the
    // count passed is 1; the descriptor belongs to `socket`, which is open for the call.
    let ready = unsafe { libc::poll(&mut descriptor, 1, timeout_ms) };
    match ready {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(descriptor.revents != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

    fn pair() -> (UdpDatagram, UdpDatagram) {
        let first = UdpDatagram::bind(LOOPBACK, MTU_DEFAULT).unwrap();
        let second = UdpDatagram::bind(LOOPBACK, MTU_DEFAULT).unwrap();
        (first, second)
    }

    /// Receives after waiting for the datagram: loopback delivery is not instantaneous.
    fn recv_waiting(
        endpoint: &mut UdpDatagram,
        buffer: &mut [u8],
    ) -> Result<Option<Received>, RecvError<io::Error>> {
        assert!(endpoint.wait(Some(Duration::from_secs(5))).unwrap());
        endpoint.recv(buffer)
    }

    #[test]
    fn a_datagram_round_trips_over_loopback() {
        let (mut sender, mut receiver) = pair();
        let to = receiver.local_addr().unwrap();
        sender.send(to, b"hello, bedrock").unwrap();
        let mut buffer = [0; MTU_DEFAULT];
        let received = recv_waiting(&mut receiver, &mut buffer).unwrap().unwrap();
        assert_eq!(received.from, sender.local_addr().unwrap());
        assert_eq!(&buffer[..received.len], b"hello, bedrock");

        // A datagram of exactly the MTU, into a buffer of exactly the MTU, arrives whole.
        let full = vec![7; MTU_DEFAULT];
        sender.send(to, &full).unwrap();
        let received = recv_waiting(&mut receiver, &mut buffer).unwrap().unwrap();
        assert_eq!(received.len, MTU_DEFAULT);
        assert_eq!(buffer[..], full[..]);
    }

    #[test]
    fn a_datagram_larger_than_the_mtu_is_refused_and_not_sent() {
        let (mut sender, mut receiver) = pair();
        let to = receiver.local_addr().unwrap();
        let error = sender.send(to, &[0; MTU_DEFAULT + 1]).unwrap_err();
        assert!(
            matches!(
                error,
                SendError::TooLarge {
                    len: 1401,
                    mtu: 1400
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "datagram of 1401 bytes is larger than the MTU of 1400"
        );
        assert!(!receiver.wait(Some(Duration::from_millis(20))).unwrap());
        assert!(receiver.recv(&mut [0; MTU_DEFAULT]).unwrap().is_none());
    }

    #[test]
    fn an_oversize_datagram_is_reported_truncated_and_the_next_arrives_whole() {
        let mut receiver = UdpDatagram::bind(LOOPBACK, MTU_MIN).unwrap();
        let to = receiver.local_addr().unwrap();
        let raw = UdpSocket::bind(LOOPBACK).unwrap();
        let from = raw.local_addr().unwrap();
        raw.send_to(&[1; MTU_MIN + 1], to).unwrap();
        raw.send_to(&[2; MTU_MIN], to).unwrap();
        raw.send_to(&[3; 100], to).unwrap();

        let mut buffer = [0; 4096];
        let error = recv_waiting(&mut receiver, &mut buffer).unwrap_err();
        assert!(
            matches!(error, RecvError::Truncated { from: sender } if sender == from),
            "{error:?}"
        );
        let received = recv_waiting(&mut receiver, &mut buffer).unwrap().unwrap();
        assert_eq!((received.from, received.len), (from, MTU_MIN));
        assert_eq!(buffer[..MTU_MIN], [2; MTU_MIN]);

        // Longer than the caller's buffer, though under the MTU: truncated too.
        let error = recv_waiting(&mut receiver, &mut [0; 99]).unwrap_err();
        assert!(matches!(error, RecvError::Truncated { .. }), "{error:?}");
    }

    #[test]
    fn recv_on_an_empty_socket_returns_none_without_blocking() {
        let (_, mut receiver) = pair();
        let started = StdInstant::now();
        assert!(receiver.recv(&mut [0; MTU_DEFAULT]).unwrap().is_none());
        // Generous: only a blocking call would take this long.
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn wait_returns_false_after_its_timeout_and_true_when_a_datagram_waits() {
        let (mut sender, receiver) = pair();
        assert!(!receiver.wait(Some(Duration::from_millis(10))).unwrap());
        assert!(!receiver.wait(Some(Duration::ZERO)).unwrap());
        sender
            .send(receiver.local_addr().unwrap(), b"ping")
            .unwrap();
        assert!(receiver.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(receiver.wait(None).unwrap(), "still readable: not consumed");
    }

    /// Makes Linux report ICMP errors on this unconnected socket, as it does on connected ones.
    #[allow(unsafe_code)]
    fn report_icmp_errors(socket: &UdpSocket) {
        use std::os::fd::AsRawFd;
        let enable: libc::c_int = 1;
        // SAFETY: the option value is a live c_int and its exact size is passed.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&enable as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn a_refused_earlier_datagram_does_not_fail_recv() {
        let (mut sender, mut receiver) = pair();
        report_icmp_errors(sender.socket());
        let closed = {
            let socket = UdpSocket::bind(LOOPBACK).unwrap();
            socket.local_addr().unwrap()
        };
        sender.send(closed, b"nobody listens").unwrap();
        // The port-unreachable comes back as a pending socket error, which wakes `wait`.
        assert!(sender.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(sender.recv(&mut [0; MTU_DEFAULT]).unwrap().is_none());

        sender.send(closed, b"again").unwrap();
        assert!(sender.wait(Some(Duration::from_secs(5))).unwrap());
        sender
            .send(receiver.local_addr().unwrap(), b"still works")
            .unwrap();
        receiver
            .send(sender.local_addr().unwrap(), b"reply")
            .unwrap();
        let mut buffer = [0; MTU_DEFAULT];
        assert!(sender.wait(Some(Duration::from_secs(5))).unwrap());
        let received = sender.recv(&mut buffer).unwrap().unwrap();
        assert_eq!(&buffer[..received.len], b"reply");
        let received = recv_waiting(&mut receiver, &mut buffer).unwrap().unwrap();
        assert_eq!(&buffer[..received.len], b"still works");
    }

    #[test]
    fn an_mtu_outside_the_supported_range_is_refused() {
        for mtu in [0, MTU_MIN - 1, MTU_MAX + 1] {
            let error = UdpDatagram::bind(LOOPBACK, mtu).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
        let endpoint = UdpDatagram::bind(LOOPBACK, MTU_MAX).unwrap();
        assert_eq!(endpoint.mtu(), MTU_MAX);
    }
}
