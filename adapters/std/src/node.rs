//! The std event loop: runs core's [`Driver`] over a UDP socket and the monotonic clock.
//!
//! Each iteration runs one driver step (take the waiting datagrams, run due timers, commit every
//! service with one sync each, send the replies), then waits on the socket until a datagram
//! arrives or the earliest service deadline passes. Every acknowledgement produced in one
//! iteration shares its service's one `fdatasync` (group commit): under load, the batch grows
//! with the number of requests that arrived during the previous sync.
//!
//! Guaranteed: the loop never busy-waits (it sleeps in `poll(2)` until there is work) and stops
//! within [`STOP_CHECK`] of the stop flag being set. Not guaranteed: fairness between clients
//! beyond the driver's receive batch.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bedrock::driver::{Driver, DriverStats};
use bedrock::net::Datagram;
use bedrock::rng::SplitMix64;
use bedrock::service::{CommitFailed, Services};

use crate::clock::MonotonicClock;
use crate::udp::UdpDatagram;

/// The longest the loop sleeps before looking at the stop flag again.
pub const STOP_CHECK: Duration = Duration::from_millis(200);

/// Why the loop stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoopError {
    /// A service could not sync its storage and is poisoned.
    Commit(CommitFailed),
    /// Waiting on the socket failed.
    Io(io::Error),
}

impl std::fmt::Display for LoopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Commit(error) => error.fmt(f),
            Self::Io(error) => write!(f, "waiting on the socket failed: {error}"),
        }
    }
}

impl std::error::Error for LoopError {}

/// A node's event loop. See the [module docs](self).
#[derive(Debug)]
pub struct EventLoop<const K: usize, const SENDERS: usize> {
    driver: Driver<K, SENDERS>,
    socket: UdpDatagram,
    clock: MonotonicClock,
    rng: SplitMix64,
    buffer: Vec<u8>,
}

impl<const K: usize, const SENDERS: usize> EventLoop<K, SENDERS> {
    /// A loop over `socket` with `driver`; `seed` feeds the gossip's random peer choices.
    pub fn new(driver: Driver<K, SENDERS>, socket: UdpDatagram, seed: u64) -> Self {
        // One byte past the MTU: see `Driver::step`.
        let buffer = vec![0; socket.mtu() + 1];
        Self {
            driver,
            socket,
            clock: MonotonicClock::new(),
            rng: SplitMix64::new(seed),
            buffer,
        }
    }

    /// What the driver counted.
    pub fn stats(&self) -> DriverStats {
        self.driver.stats()
    }

    /// The socket.
    pub fn socket(&self) -> &UdpDatagram {
        &self.socket
    }

    /// Runs until `stop` is set (returns `Ok`) or a service fails to sync (returns the error,
    /// after sending what the other services had to send).
    pub fn run<S: Services>(
        &mut self,
        services: &mut S,
        stop: &AtomicBool,
    ) -> Result<(), LoopError> {
        while !stop.load(Ordering::Relaxed) {
            self.iterate(services)?;
        }
        Ok(())
    }

    /// One iteration: a driver step, then a wait for work.
    pub fn iterate<S: Services>(&mut self, services: &mut S) -> Result<(), LoopError> {
        let now = self.clock.now();
        let deadline = self
            .driver
            .step(
                now,
                &mut self.socket,
                services,
                &mut self.rng,
                &mut self.buffer,
            )
            .map_err(LoopError::Commit)?;
        let wait = deadline
            .map_or(STOP_CHECK, |at| {
                at.saturating_duration_since(self.clock.now())
            })
            .min(STOP_CHECK);
        if !wait.is_zero() {
            self.socket.wait(Some(wait)).map_err(LoopError::Io)?;
        }
        Ok(())
    }
}
