//! A request/response client for talking to a node over the authenticated datagram path: what
//! `bedrock counter incr --node ADDR` and `bedrock log append --node ADDR` use.
//!
//! The client takes a random node id (top bit set, so it never collides with a node's id below
//! 2^31) and a random incarnation from the operating system's generator, so its nonces never
//! repeat those of another client under the same key. A request is sent, and sent again with the
//! same request id every `retry_interval` until a matching reply arrives or `timeout` passes:
//! the node applies a retried request once.
//!
//! Not guaranteed: an answer. After [`ClientError::Timeout`] the request may or may not have
//! been applied; retrying it with the same request id through the same [`Client`] is safe (the
//! node remembers requests by client id and request id, and each `Client` has its own random
//! id).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bedrock::crdt::NodeId;
use bedrock::net::{Datagram, RecvError, MTU_DEFAULT, MTU_MAX};
use bedrock::wire::{self, Keyring, Wire};

use crate::udp::UdpDatagram;

/// Keys a client accepts (the node's file may list several during a rotation).
pub const CLIENT_KEYS: usize = 8;
/// Senders a client tracks replay windows for: the node it talks to, and a few strays.
const CLIENT_SENDERS: usize = 4;

/// Why a request got no answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// No reply within the timeout: the node is down, unreachable, or uses another key or
    /// cluster label (its replies would be dropped here, or our requests there).
    Timeout {
        /// The node asked.
        node: SocketAddr,
        /// How long the client waited.
        waited: Duration,
        /// Datagrams that arrived but were refused by the envelope (wrong key or cluster).
        rejected: u64,
    },
    /// The request does not fit one datagram.
    TooLarge,
    /// The operating system refused a socket operation.
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout {
                node,
                waited,
                rejected,
            } => {
                write!(
                    f,
                    "no reply from {node} within {:.1} s: is a node running there, with the \
                     same key file and cluster label?",
                    waited.as_secs_f64()
                )?;
                if *rejected > 0 {
                    write!(
                        f,
                        " ({rejected} datagrams arrived but failed authentication: \
                         a different key or cluster label)"
                    )?;
                }
                Ok(())
            }
            Self::TooLarge => f.write_str("the request does not fit in one datagram"),
            Self::Io(error) => write!(f, "network error: {error}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const LEN: usize>() -> io::Result<[u8; LEN]> {
    let mut bytes = [0u8; LEN];
    getrandom::fill(&mut bytes).map_err(|error| io::Error::other(error.to_string()))?;
    Ok(bytes)
}

/// A random 64-bit value from the operating system.
pub fn random_u64() -> io::Result<u64> {
    random_bytes::<8>().map(u64::from_le_bytes)
}

/// A client of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    socket: UdpDatagram,
    wire: Wire<CLIENT_KEYS, CLIENT_SENDERS>,
    node: SocketAddr,
    /// Give up after this long.
    pub timeout: Duration,
    /// Send the request again after this long without a reply.
    pub retry_interval: Duration,
    buffer: Vec<u8>,
}

impl Client {
    /// A client of the node at `node`, in cluster `cluster`, sealing with `keys` (or in
    /// plaintext when `keys` is `None`: only for nodes started in plaintext mode).
    pub fn new(
        node: SocketAddr,
        cluster: u32,
        keys: Option<Keyring<CLIENT_KEYS>>,
    ) -> Result<Self, ClientError> {
        let local: SocketAddr = if node.is_ipv4() {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        } else {
            "[::]:0".parse().map_err(io::Error::other)?
        };
        // Replies of any size are accepted (a node may run with a larger MTU); requests are
        // kept within the default MTU, which every node accepts.
        let socket = UdpDatagram::bind(local, MTU_MAX)?;
        let sender = NodeId((random_u64()? as u32) | 0x8000_0000);
        let incarnation = random_u64()? as u32;
        let wire = match keys {
            Some(keys) => Wire::encrypted(cluster, sender, incarnation, keys),
            None => Wire::plaintext(cluster, sender, incarnation),
        };
        Ok(Self {
            socket,
            wire,
            node,
            timeout: Duration::from_secs(3),
            retry_interval: Duration::from_millis(300),
            buffer: vec![0; MTU_MAX],
        })
    }

    /// Sends a request of envelope `kind` whose payload `encode` writes (returning its length),
    /// until `decode` accepts a reply payload of the same kind from the node.
    pub fn request<T>(
        &mut self,
        kind: u8,
        encode: impl Fn(&mut [u8]) -> Option<usize>,
        mut decode: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, ClientError> {
        let start = Instant::now();
        let mut next_send = start;
        loop {
            let now = Instant::now();
            let waited = now.duration_since(start);
            if waited >= self.timeout {
                return Err(ClientError::Timeout {
                    node: self.node,
                    waited,
                    rejected: self.rejected(),
                });
            }
            if now >= next_send {
                self.send(kind, &encode)?;
                next_send = now + self.retry_interval;
            }
            let until = next_send.min(start + self.timeout);
            self.socket
                .wait(Some(until.saturating_duration_since(Instant::now())))?;
            if let Some(reply) = self.receive(kind, &mut decode)? {
                return Ok(reply);
            }
        }
    }

    fn send(
        &mut self,
        kind: u8,
        encode: &impl Fn(&mut [u8]) -> Option<usize>,
    ) -> Result<(), ClientError> {
        let trailer = self.wire.overhead() - wire::HEADER_LEN;
        let end = MTU_DEFAULT - trailer;
        let len = encode(&mut self.buffer[wire::HEADER_LEN..end]).ok_or(ClientError::TooLarge)?;
        let sealed = self
            .wire
            .seal(kind, &mut self.buffer, len)
            .map_err(|_| ClientError::TooLarge)?;
        // A full send buffer drops the datagram; the retry covers it.
        let _ = self.socket.send(self.node, &self.buffer[..sealed]);
        Ok(())
    }

    /// Takes every waiting datagram; returns the first accepted reply.
    fn receive<T>(
        &mut self,
        kind: u8,
        decode: &mut impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, ClientError> {
        loop {
            let received = match self.socket.recv(&mut self.buffer) {
                Ok(Some(received)) => received,
                Ok(None) => return Ok(None),
                Err(RecvError::Truncated { .. }) => continue,
                Err(RecvError::Io(error)) => return Err(ClientError::Io(error)),
                Err(_) => return Ok(None),
            };
            if received.from != self.node {
                continue;
            }
            let Ok(opened) = self.wire.open(&mut self.buffer[..received.len]) else {
                continue;
            };
            if opened.kind != kind {
                continue;
            }
            if let Some(reply) = decode(opened.payload) {
                return Ok(Some(reply));
            }
        }
    }

    fn rejected(&self) -> u64 {
        self.wire.rejections().total()
    }
}
