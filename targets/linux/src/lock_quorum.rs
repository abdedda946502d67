//! `bedrock lock run` with several `--node`s: the lock held on a majority of independent nodes
//! with [`QuorumLock`] (SPEC.md section 13.5), driven by a [`Driver`] over one UDP socket.
//! What it guarantees and what it does not: see the [`lease_lock`](crate::lease_lock) module
//! docs, section "Quorum".

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bedrock::crdt::NodeId;
use bedrock::driver::Driver;
use bedrock::lock::quorum::{Event, QuorumConfig, QuorumLock, Tally};
use bedrock::lock::Refusal;
use bedrock::net::MTU_MAX;
use bedrock::rng::SplitMix64;
use bedrock::wire::Wire;
use bedrock_std::client::{self, CLIENT_KEYS};
use bedrock_std::udp::UdpDatagram;

use crate::cluster::Access;
use crate::error::{fail, Error};
use crate::lease_lock::{
    hold, millis, refusal_sentence, signal_code, signal_flag, sleep_unless, Lease, RunOptions,
    RETRY_SOON, TICK,
};

/// The most nodes a quorum lock spans.
pub const NODES_MAX: usize = 7;
/// How long an attempt (both steps) waits for a majority of answers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait for the release's answers at the end of `run`.
const RELEASE_WAIT: Duration = Duration::from_secs(1);
/// Senders whose replay windows the client keeps: the nodes, and one stray.
const SENDERS: usize = NODES_MAX + 1;

/// The quorum lock with its transport and clock.
struct Quorum {
    lock: QuorumLock<NODES_MAX>,
    driver: Driver<CLIENT_KEYS, SENDERS>,
    socket: UdpDatagram,
    rng: SplitMix64,
    buffer: Vec<u8>,
    /// The origin of the lock's clock (core instants are microseconds since it).
    origin: Instant,
    nodes: usize,
}

impl Quorum {
    fn new(nodes: &[SocketAddr], access: &Access, options: &RunOptions<'_>) -> Result<Self, Error> {
        let random = |what: &str| {
            client::random_u64().map_err(|error| fail(format!("no randomness for {what}: {error}")))
        };
        let config = QuorumConfig {
            ttl: options.ttl,
            drift_ppm: options.drift_ppm,
            // Several tries within each third of the lease.
            retry_interval: (options.ttl / 12).clamp(TICK, Duration::from_millis(200)),
            attempt_timeout: ATTEMPT_TIMEOUT,
        };
        let lock = QuorumLock::new(options.name.as_bytes(), nodes, config, random("ids")?)
            .ok_or_else(|| fail("invalid lock name, ttl or node list"))?;
        let sender = NodeId((random("the client id")? as u32) | 0x8000_0000);
        let incarnation = random("the incarnation")? as u32;
        let keys = access.keys::<{ CLIENT_KEYS }>()?;
        let cluster = access.cluster_id();
        let wire = match keys {
            Some(keys) => Wire::encrypted(cluster, sender, incarnation, keys),
            None => Wire::plaintext(cluster, sender, incarnation),
        };
        let local: SocketAddr = if nodes.iter().all(SocketAddr::is_ipv4) {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else if nodes.iter().all(SocketAddr::is_ipv6) {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            return Err(fail(
                "the --node addresses mix IPv4 and IPv6: give them all in one family",
            ));
        };
        let socket = UdpDatagram::bind(local, MTU_MAX)
            .map_err(|error| fail(format!("cannot open a UDP socket: {error}")))?;
        let buffer = vec![0; MTU_MAX + 1];
        Ok(Self {
            lock,
            driver: Driver::new(wire),
            socket,
            rng: SplitMix64::new(random("the seed")?),
            buffer,
            origin: Instant::now(),
            nodes: nodes.len(),
        })
    }

    fn now(&self) -> bedrock::time::Instant {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        bedrock::time::Instant::from_micros(micros)
    }

    fn std_instant(&self, at: bedrock::time::Instant) -> Instant {
        self.origin + Duration::from_micros(at.as_micros())
    }

    /// One driver step (answers in, timers, requests out), then a wait for an answer or the
    /// lock's next timer, at most `max`.
    fn pump(&mut self, max: Duration) -> Result<(), Error> {
        let now = self.now();
        let next = self
            .driver
            .step(
                now,
                &mut self.socket,
                &mut self.lock,
                &mut self.rng,
                &mut self.buffer,
            )
            .map_err(|error| fail(error.to_string()))?;
        let wait = next.map_or(max, |at| at.saturating_duration_since(self.now()).min(max));
        if !wait.is_zero() {
            self.socket
                .wait(Some(wait))
                .map_err(|error| fail(format!("waiting on the socket failed: {error}")))?;
        }
        Ok(())
    }
}

/// Why an attempt failed, in words.
fn failed_sentence(
    name: &str,
    nodes: usize,
    majority: usize,
    tally: Tally,
    retry: Duration,
) -> String {
    let when = if retry.is_zero() {
        "try again when more nodes answer".to_string()
    } else {
        format!("the lock may be free in {} ms", millis(retry))
    };
    format!(
        "lock {name} not acquired on a majority ({majority} of {nodes} nodes needed): {} \
         granted, {} refused (held by another client, or busy), {} had not answered; {when}",
        tally.granted, tally.refused, tally.silent
    )
}

/// A random wait before retrying a failed attempt: up to 10 % of `wait`, within 20 to 100 ms,
/// so that contenders who split the nodes between them do not collide again.
fn quorum_jitter(wait: Duration) -> Duration {
    let range = millis(wait / 10).clamp(20, 100);
    let random = client::random_u64().unwrap_or(0);
    Duration::from_millis(random % (range + 1))
}

/// How acquiring ended.
enum Outcome {
    Held(u64),
    Interrupted(usize),
}

/// Acquires the lock on a majority, waiting as `options.wait` says while no signal arrives.
fn acquire(
    quorum: &mut Quorum,
    options: &RunOptions<'_>,
    signal: &AtomicUsize,
) -> Result<Outcome, Error> {
    let start = Instant::now();
    let wait = options.wait;
    loop {
        let now = quorum.now();
        quorum.lock.acquire(now);
        let retry_at = loop {
            quorum.pump(TICK)?;
            match quorum.lock.poll_event() {
                Some(Event::Acquired { token }) => return Ok(Outcome::Held(token)),
                Some(Event::Failed { retry_at }) => break retry_at,
                Some(Event::Lost | Event::Released) | None => {}
            }
            let caught = signal.load(Ordering::Relaxed);
            if caught != 0 {
                // Give back what the attempt got, briefly.
                release_quorum(quorum);
                return Ok(Outcome::Interrupted(caught));
            }
        };
        let retry = retry_at.saturating_duration_since(quorum.now());
        let tally = quorum.lock.last_failure();
        if tally.invalid > 0 {
            // Waiting does not help: the name or the ttl is refused.
            return Err(fail(format!(
                "acquiring lock {} refused by {} of {} nodes: {}",
                options.name,
                tally.invalid,
                quorum.nodes,
                refusal_sentence(Refusal::Invalid)
            )));
        }
        let waited = start.elapsed();
        let given_up = wait.max.is_some_and(|max| waited >= max);
        if !wait.wait || given_up {
            let sentence = failed_sentence(
                options.name,
                quorum.nodes,
                quorum.lock.majority(),
                tally,
                retry,
            );
            return Err(fail(if given_up {
                format!("gave up after waiting {} ms: {sentence}", millis(waited))
            } else {
                format!("{sentence} (--wait waits for it)")
            }));
        }
        let base = retry.max(RETRY_SOON);
        let pause = base + quorum_jitter(base);
        let pause = match wait.max {
            Some(max) => pause.min(max.saturating_sub(waited)),
            None => pause,
        };
        sleep_unless(signal, pause);
        let caught = signal.load(Ordering::Relaxed);
        if caught != 0 {
            return Ok(Outcome::Interrupted(caught));
        }
    }
}

/// Releases every grant, waiting for the answers at most [`RELEASE_WAIT`]; warns if they did
/// not all come (the leases end by themselves).
fn release_quorum(quorum: &mut Quorum) -> bool {
    let until = Instant::now() + RELEASE_WAIT;
    quorum.lock.release(quorum.now());
    while Instant::now() < until {
        if quorum.pump(TICK).is_err() {
            break;
        }
        while let Some(event) = quorum.lock.poll_event() {
            if event == Event::Released {
                return true;
            }
        }
    }
    false
}

/// A lease on a majority of nodes.
struct QuorumLease<'a> {
    quorum: Quorum,
    name: &'a str,
    token: u64,
    /// An `Event::Lost` seen.
    lost: bool,
}

impl Lease for QuorumLease<'_> {
    fn token(&self) -> u64 {
        self.token
    }

    fn lost(&mut self) -> Option<String> {
        while let Some(event) = self.quorum.lock.poll_event() {
            if event == Event::Lost {
                self.lost = true;
            }
        }
        if self.lost {
            return Some(
                "fewer than a majority of the nodes' leases are left (renewals refused as \
                 stale, or not answered in time)"
                    .to_string(),
            );
        }
        let now = self.quorum.now();
        self.quorum.lock.held_until(now).is_none().then(|| {
            "its deadline passed without renewals from a majority of the nodes (a pause, a \
             partition, or nodes down)"
                .to_string()
        })
    }

    fn deadline(&self) -> Instant {
        let now = self.quorum.now();
        match self.quorum.lock.held_until(now) {
            Some(at) => self.quorum.std_instant(at),
            None => Instant::now(),
        }
    }

    fn work(&mut self, max: Duration) -> Result<(), Error> {
        self.quorum.pump(max)
    }

    fn release(&mut self) {
        if !release_quorum(&mut self.quorum) {
            eprintln!(
                "warning: releasing lock {}: not every node that granted it answered within {} \
                 ms (down or unreachable); their grants end with their leases",
                self.name,
                millis(RELEASE_WAIT)
            );
        }
    }
}

/// `bedrock lock run` with 2 to [`NODES_MAX`] nodes: see the [`lease_lock`](crate::lease_lock)
/// module docs.
pub fn run(
    nodes: &[SocketAddr],
    access: &Access,
    options: &RunOptions<'_>,
) -> Result<ExitCode, Error> {
    let mut quorum = Quorum::new(nodes, access, options)?;
    let signal = signal_flag()?;
    let token = match acquire(&mut quorum, options, &signal)? {
        Outcome::Held(token) => token,
        Outcome::Interrupted(caught) => return Ok(signal_code(caught)),
    };
    let lease = QuorumLease {
        quorum,
        name: options.name,
        token,
        lost: false,
    };
    hold(lease, options, &signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_who_granted_refused_and_was_silent() {
        let tally = Tally::default();
        let sentence = failed_sentence("db", 3, 2, tally, Duration::ZERO);
        assert!(sentence.contains("0 granted, 0 refused"), "{sentence}");
        assert!(
            sentence.contains("try again when more nodes answer"),
            "{sentence}"
        );
        let sentence = failed_sentence("db", 3, 2, tally, Duration::from_millis(1500));
        assert!(sentence.contains("may be free in 1500 ms"), "{sentence}");
    }
}
