//! bedrock-std: runs the bedrock core on a Linux server.
//!
//! - [`file`](mod@file): [`FileStorage`], the [`bedrock::storage::Storage`] contract over one preallocated
//!   file in a locked data directory, with `fdatasync` and poisoning after any failed write or
//!   sync.
//! - [`udp`]: [`UdpDatagram`], the [`bedrock::net::Datagram`] contract over a non-blocking UDP
//!   socket, with truncation reported and a `poll(2)`-based [`UdpDatagram::wait`].
//! - [`clock`]: [`MonotonicClock`], core's [`bedrock::time::Instant`] from the monotonic clock.
//!
//! - [`node`]: [`node::EventLoop`], core's driver over the socket and the clock, with group commit.
//! - [`client`]: a request/response client of a node (random id, retries, timeouts).
//! - [`incarnation`]: the number a node bumps durably at every start.
// Three audited `unsafe` calls are allowed where they stand: a read-ahead hint (`posix_fadvise`),
// punching a hole to erase part of a sparse store (`fallocate`) and the wait for a readable
// socket (`poll`).
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(unix)]
pub mod client;
pub mod clock;
#[cfg(unix)]
pub mod file;
pub mod incarnation;
#[cfg(unix)]
pub mod node;
#[cfg(unix)]
pub mod udp;

pub use clock::MonotonicClock;
#[cfg(unix)]
pub use file::{
    FileError, FileMode, FileOptions, FileStorage, DATA_FILE_NAME, LOCK_FILE_NAME,
    SPARSE_DATA_FILE_NAME,
};
#[cfg(unix)]
pub use udp::UdpDatagram;
