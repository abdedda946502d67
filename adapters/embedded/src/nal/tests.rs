extern crate std;

use std::collections::VecDeque;
use std::vec::Vec;

use super::*;
use bedrock::net::MTU_DEFAULT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MockError {
    NoSockets,
    PortInUse,
    LinkDown,
}

/// A UDP stack with one socket: a queue of datagrams to receive and a record of those sent.
#[derive(Debug, Default)]
struct MockStack {
    incoming: VecDeque<(SocketAddr, Vec<u8>)>,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    bound_port: Option<u16>,
    sockets_open: usize,
    /// Like stacks that return the datagram's real length rather than the bytes copied.
    reports_full_length: bool,
    send_would_block: bool,
    failing: Option<MockError>,
}

#[derive(Debug)]
struct MockSocket;

impl MockStack {
    fn fail(&mut self) -> Result<(), MockError> {
        self.failing.take().map_or(Ok(()), Err)
    }
}

impl UdpClientStack for MockStack {
    type UdpSocket = MockSocket;
    type Error = MockError;

    fn socket(&mut self) -> Result<MockSocket, MockError> {
        if self.failing == Some(MockError::NoSockets) {
            return Err(MockError::NoSockets);
        }
        self.sockets_open += 1;
        Ok(MockSocket)
    }

    fn connect(&mut self, _: &mut MockSocket, _: SocketAddr) -> Result<(), MockError> {
        unreachable!("the adapter never connects")
    }

    fn send(&mut self, _: &mut MockSocket, _: &[u8]) -> nb::Result<(), MockError> {
        unreachable!("the adapter sends with send_to")
    }

    fn receive(
        &mut self,
        _: &mut MockSocket,
        buffer: &mut [u8],
    ) -> nb::Result<(usize, SocketAddr), MockError> {
        self.fail()?;
        let (from, bytes) = self.incoming.pop_front().ok_or(nb::Error::WouldBlock)?;
        // Cut silently to the buffer, as many stacks do.
        let copied = bytes.len().min(buffer.len());
        buffer[..copied].copy_from_slice(&bytes[..copied]);
        let len = if self.reports_full_length {
            bytes.len()
        } else {
            copied
        };
        Ok((len, from))
    }

    fn close(&mut self, _: MockSocket) -> Result<(), MockError> {
        self.sockets_open -= 1;
        Ok(())
    }
}

impl UdpFullStack for MockStack {
    fn bind(&mut self, _: &mut MockSocket, local_port: u16) -> Result<(), MockError> {
        self.fail()?;
        self.bound_port = Some(local_port);
        Ok(())
    }

    fn send_to(
        &mut self,
        _: &mut MockSocket,
        remote: SocketAddr,
        buffer: &[u8],
    ) -> nb::Result<(), MockError> {
        self.fail()?;
        if self.send_would_block {
            return Err(nb::Error::WouldBlock);
        }
        self.sent.push((remote, buffer.to_vec()));
        Ok(())
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 168, 1, 20], 7000))
}

fn bound(stack: &mut MockStack) -> NalDatagram<&mut MockStack> {
    NalDatagram::bind(stack, 7000, MTU_MIN).unwrap()
}

#[test]
fn binding_opens_one_socket_on_the_port_and_close_returns_the_stack() {
    let mut stack = MockStack::default();
    let endpoint = bound(&mut stack);
    assert_eq!(endpoint.mtu(), MTU_MIN);
    assert_eq!(endpoint.recv_buffer_len(), MTU_MIN + 1);
    let (stack, result) = endpoint.close();
    assert_eq!(result, Ok(()));
    assert_eq!((stack.bound_port, stack.sockets_open), (Some(7000), 0));
}

#[test]
fn a_refused_bind_closes_the_socket_and_a_bad_mtu_calls_nothing() {
    let mut stack = MockStack {
        failing: Some(MockError::PortInUse),
        ..MockStack::default()
    };
    let error = NalDatagram::bind(&mut stack, 7000, MTU_DEFAULT).unwrap_err();
    assert_eq!(error, NalBindError::Stack(MockError::PortInUse));
    assert_eq!(stack.sockets_open, 0);

    stack.failing = Some(MockError::NoSockets);
    let error = NalDatagram::bind(&mut stack, 7000, MTU_DEFAULT).unwrap_err();
    assert_eq!(error, NalBindError::Stack(MockError::NoSockets));

    let error = NalDatagram::bind(&mut stack, 7000, MTU_MIN - 1).unwrap_err();
    assert_eq!(error, NalBindError::BadMtu { mtu: MTU_MIN - 1 });
    assert_eq!(
        std::format!("{error}"),
        "MTU of 507 bytes is outside 508..=65507"
    );
}

#[test]
fn a_waiting_datagram_is_received_and_an_empty_socket_would_block() {
    let mut stack = MockStack::default();
    stack.incoming.push_back((peer(), b"hello".to_vec()));
    stack.incoming.push_back((peer(), [9; MTU_MIN].to_vec()));
    let mut endpoint = bound(&mut stack);
    let mut buffer = [0; MTU_MIN + 1];
    let received = endpoint.recv(&mut buffer).unwrap().unwrap();
    assert_eq!(
        (received.from, &buffer[..received.len]),
        (peer(), &b"hello"[..])
    );
    let received = endpoint.recv(&mut buffer).unwrap().unwrap();
    assert_eq!(received.len, MTU_MIN, "a datagram of the MTU arrives whole");
    assert_eq!(endpoint.recv(&mut buffer), Ok(None));
}

#[test]
fn a_datagram_longer_than_the_mtu_or_the_buffer_is_reported_truncated() {
    for reports_full_length in [false, true] {
        let mut stack = MockStack {
            reports_full_length,
            ..MockStack::default()
        };
        for len in [MTU_MIN + 1, 2000, 40, 100] {
            stack.incoming.push_back((peer(), std::vec![1; len]));
        }
        let mut endpoint = bound(&mut stack);
        let mut large = [0; 4096];
        let truncated = Err(RecvError::Truncated { from: peer() });
        assert_eq!(endpoint.recv(&mut large), truncated, "over the MTU by one");
        assert_eq!(endpoint.recv(&mut large), truncated, "far over the MTU");
        // A buffer without the extra byte: a datagram filling it exactly is ambiguous.
        assert_eq!(endpoint.recv(&mut [0; 40]), truncated);
        assert_eq!(
            endpoint.recv(&mut [0; 99]),
            truncated,
            "longer than the buffer"
        );
        assert_eq!(endpoint.recv(&mut large), Ok(None));
    }
}

#[test]
fn sending_refuses_oversize_datagrams_and_reports_a_full_stack() {
    let mut stack = MockStack::default();
    let mut endpoint = bound(&mut stack);
    endpoint.send(peer(), b"ping").unwrap();
    endpoint.send(peer(), &[3; MTU_MIN]).unwrap();
    let error = endpoint.send(peer(), &[3; MTU_MIN + 1]).unwrap_err();
    assert_eq!(
        error,
        SendError::TooLarge {
            len: MTU_MIN + 1,
            mtu: MTU_MIN
        }
    );
    endpoint.stack_mut().send_would_block = true;
    assert_eq!(endpoint.send(peer(), b"later"), Err(SendError::WouldBlock));
    endpoint.stack_mut().send_would_block = false;
    endpoint.stack_mut().failing = Some(MockError::LinkDown);
    assert_eq!(
        endpoint.send(peer(), b"down"),
        Err(SendError::Io(MockError::LinkDown))
    );
    endpoint.stack_mut().failing = Some(MockError::LinkDown);
    assert_eq!(
        endpoint.recv(&mut [0; 600]),
        Err(RecvError::Io(MockError::LinkDown))
    );
    assert_eq!(stack.sent.len(), 2);
    assert_eq!(stack.sent[0], (peer(), b"ping".to_vec()));
}
