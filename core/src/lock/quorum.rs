//! Quorum locks: one lock held on a majority of `N` independent lock servers, so that a
//! minority of them may crash, be partitioned or lose power without the lock going away or
//! being granted twice, with fencing tokens that still only grow.
//!
//! [`QuorumLock`] is the client side, a sans-IO state machine shaped as a
//! [`Service`] of kind [`kind::LOCK`]: run it in a [`Driver`](crate::driver::Driver) (or feed it
//! by hand) next to nothing else, with the servers' addresses in its configuration.
//!
//! # Protocol
//!
//! 1. **Acquire** is sent to every server. Once a majority granted, `T` is the highest token
//!    among those grants.
//! 2. **AcquireAtLeast `T`** is sent to every server: a server that granted the lock to this
//!    client under a lower token grants it again under a token of at least `T` (a GRANT record,
//!    synced before the answer); one that granted `T` or more renews; one that had not granted
//!    it grants it now if it is free, under a token of at least `T`. Once a majority answered
//!    `Granted`, the lock is held under the fencing token `T` ([`Event::Acquired`]).
//! 3. While held, every third of the ttl, each server that granted the lock gets a `Renew` with
//!    its own token, and each that did not gets an `AcquireAtLeast T` (a server back from a
//!    crash or a partition joins again). The lease of each server ends for the holder at
//!    [`holder_deadline`] from the first send of the request that
//!    server answered; the lock is held while a majority of those have not ended
//!    ([`QuorumLock::held_until`]). When fewer are left, [`Event::Lost`] comes at once, and
//!    the grants left are released.
//! 4. **Release** goes to every server that granted ([`Event::Released`] when all answered or
//!    the attempt's time ran out). An attempt that cannot reach a majority (refusals, or
//!    silence past [`QuorumConfig::attempt_timeout`]) releases what it got and ends with
//!    [`Event::Failed`], saying when the lock may be free.
//!
//! # Why it is safe
//!
//! - *Mutual exclusion*: a holder believes in the lock only while a majority of its
//!   per-server leases last by its own clock, and each of those ends (by the drift bound)
//!   before that server could grant the lock to anyone else. Two majorities share a server,
//!   so no other client can hold a majority meanwhile.
//! - *Tokens only grow*: when a holder's token is `T`, a majority of servers hold its grant
//!   under tokens of at least `T` (step 2), each granted before any later holder's grant on
//!   the same server. A later holder's first-step majority shares one of those servers, whose
//!   token for it is above `T`, so its own highest token, and therefore its token, is above
//!   `T`. Every server keeps its token counter across crashes (see the [module docs](super)).
//!
//! # Not guaranteed
//!
//! - Progress when no majority is reachable, or when contenders keep splitting the servers
//!   between them (each attempt then fails and releases; retrying after a random delay, as
//!   the caller should, breaks the tie).
//! - Safety if a server loses its data (a new disk): it forgets the grants it made, so a
//!   majority that counts it may overlap another. Replace a server's disk only after a
//!   maximum ttl with the server down.
//! - Everything the single-server lock does not guarantee (see the [module docs](super)):
//!   effects of a paused holder are only stopped by a resource that checks tokens.

use core::convert::Infallible;
use core::time::Duration;

use heapless::{Deque, Vec};

use super::message::{self, Message, Refusal};
use super::record::{self, Name};
use super::{holder_deadline, FLOOR_MAX};
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::service::{kind, Peer, Service, Transmit};
use crate::time::Instant;

/// How a quorum lock client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumConfig {
    /// The lease asked of every server.
    pub ttl: Duration,
    /// The drift bound ε, in parts per million, as the servers have it.
    pub drift_ppm: u32,
    /// A request without an answer is sent again after this long.
    pub retry_interval: Duration,
    /// An acquire (both steps) or a release gives up after this long.
    pub attempt_timeout: Duration,
}

impl Default for QuorumConfig {
    /// A 10 s lease, a 1 % drift bound, retries every 200 ms, attempts of 2 s.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            drift_ppm: 10_000,
            retry_interval: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// What happened to the lock; see [`QuorumLock::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// A majority granted the lock: use `token` with every request to the protected resource,
    /// and only while [`QuorumLock::held_until`] is in the future.
    Acquired {
        /// The fencing token.
        token: u64,
    },
    /// The attempt did not reach a majority; what it got was released. The lock may be free
    /// from `retry_at` (add a random delay before trying again).
    Failed {
        /// When to try again, at the earliest.
        retry_at: Instant,
    },
    /// Fewer than a majority of the leases are left: stop using the resource now. The grants
    /// left are released quietly (no event when done); an [`acquire`](QuorumLock::acquire)
    /// meanwhile starts once that release is done.
    Lost,
    /// The release is done (every server answered, or the attempt's time ran out).
    Released,
}

/// Counts of what the client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QuorumStats {
    /// Requests sent, first sends and retries.
    pub sent: u64,
    /// Requests sent again for want of an answer.
    pub retries: u64,
    /// Payloads that did not decode, or came from no configured server: dropped.
    pub malformed: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Times the lock was lost.
    pub lost: u64,
}

/// How the servers stood when an attempt failed; see [`QuorumLock::last_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Tally {
    /// Servers whose grant counted for the attempt's step (1 or 2) when it failed.
    pub granted: usize,
    /// Servers that refused (the lock held elsewhere, busy, full, invalid, unavailable).
    pub refused: usize,
    /// Of those, the servers that refused the name or the ttl ([`Refusal::Invalid`]: a ttl
    /// above the server's maximum): trying again does not help.
    pub invalid: usize,
    /// Servers that had not answered when the attempt failed (down, unreachable, slow).
    pub silent: usize,
    /// The step the attempt failed in: 1 (Acquire) or 2 (AcquireAtLeast).
    pub step: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Acquire,
    AtLeast { floor: u64 },
    Renew { token: u64 },
    Release { token: u64 },
}

/// One server, as this client knows it.
#[derive(Debug, Clone, Copy)]
struct Server {
    addr: SocketAddr,
    /// The request outstanding and its id, if any.
    outstanding: Option<(u64, Request)>,
    first_sent: Instant,
    /// When to send it (again).
    send_at: Instant,
    /// The server's current grant to this client (0: none).
    token: u64,
    /// When that grant ends for this client.
    deadline: Instant,
    /// The step this server's grant counts for (1 or 2); 0 when it has none.
    step: u8,
    /// A refusal to acquire, and when the server said the lock may be free.
    refused: Option<Instant>,
    /// The refusal was [`Refusal::Invalid`].
    invalid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Step 1 or 2 of an acquire, started at `started`; `floor` is `T` in step 2.
    Acquiring {
        step: u8,
        floor: u64,
        started: Instant,
    },
    Held {
        token: u64,
        renew_at: Instant,
    },
    /// Releasing every grant; then the event, if any.
    Releasing {
        started: Instant,
        then: Option<Event>,
    },
}

/// A lock held on a majority of `N` lock servers. See the [module docs](self).
#[derive(Debug)]
pub struct QuorumLock<const N: usize> {
    name: Name,
    config: QuorumConfig,
    servers: Vec<Server, N>,
    phase: Phase,
    next_request: u64,
    events: Deque<Event, 4>,
    stats: QuorumStats,
    /// `acquire` was called during a release: start once it is done.
    acquire_after_release: bool,
    last_failure: Tally,
}

impl<const N: usize> QuorumLock<N> {
    /// A client of lock `name` on the servers at `servers` (1 to `N` of them, the majority
    /// counted over however many are given). Request ids start above `request_base`: make it
    /// random, so that a restarted client does not match answers meant for its predecessor.
    /// `None` for an invalid name, no server, or a ttl of zero.
    pub fn new(
        name: &[u8],
        servers: &[SocketAddr],
        config: QuorumConfig,
        request_base: u64,
    ) -> Option<Self> {
        let name = record::name(name)?;
        if servers.is_empty() || config.ttl.is_zero() {
            return None;
        }
        let mut list = Vec::new();
        for &addr in servers {
            list.push(Server {
                addr,
                outstanding: None,
                first_sent: Instant::ZERO,
                send_at: Instant::ZERO,
                token: 0,
                deadline: Instant::ZERO,
                step: 0,
                refused: None,
                invalid: false,
            })
            .ok()?;
        }
        Some(Self {
            name,
            config,
            servers: list,
            phase: Phase::Idle,
            next_request: request_base,
            events: Deque::new(),
            stats: QuorumStats::default(),
            acquire_after_release: false,
            last_failure: Tally::default(),
        })
    }

    /// How many servers make a majority.
    pub fn majority(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    /// Starts acquiring the lock: at once when idle, after the release under way otherwise
    /// (the quiet one after [`Event::Lost`], or one asked for); ignored while acquiring or
    /// holding.
    pub fn acquire(&mut self, now: Instant) {
        match self.phase {
            Phase::Idle => self.start_acquire(now),
            Phase::Releasing { .. } => self.acquire_after_release = true,
            Phase::Acquiring { .. } | Phase::Held { .. } => {}
        }
    }

    /// Releases the lock (or abandons the attempt): the holder stops believing in it at once.
    pub fn release(&mut self, now: Instant) {
        self.acquire_after_release = false;
        match self.phase {
            Phase::Held { .. } | Phase::Acquiring { .. } => {
                self.release_all(now, Some(Event::Released));
            }
            Phase::Idle | Phase::Releasing { .. } => {}
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The fencing token while the lock is held.
    pub fn token(&self) -> Option<u64> {
        match self.phase {
            Phase::Held { token, .. } => Some(token),
            _ => None,
        }
    }

    /// While the lock is held: until when this client may act on it by its own clock (the
    /// latest instant at which a majority of its leases still last), if after `now`.
    pub fn held_until(&self, now: Instant) -> Option<Instant> {
        if !matches!(self.phase, Phase::Held { .. }) {
            return None;
        }
        self.majority_deadline(now)
    }

    /// What the client did.
    pub fn stats(&self) -> QuorumStats {
        self.stats
    }

    /// How the servers stood when the last attempt failed (all zero before any failure): to
    /// tell the user why an [`Event::Failed`] came.
    pub fn last_failure(&self) -> Tally {
        self.last_failure
    }

    /// The `majority`-th latest deadline among the leases, if after `now`.
    fn majority_deadline(&self, now: Instant) -> Option<Instant> {
        let mut deadlines: Vec<Instant, N> = self
            .servers
            .iter()
            .filter(|server| server.token != 0 && server.deadline > now)
            .map(|server| server.deadline)
            .collect();
        if deadlines.len() < self.majority() {
            return None;
        }
        deadlines.sort_unstable_by(|a, b| b.cmp(a));
        deadlines.get(self.majority() - 1).copied()
    }

    fn new_request(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    /// Sends `request` to server `index` at once (a new request id).
    fn ask(&mut self, index: usize, now: Instant, request: Request) {
        let id = self.new_request();
        let server = &mut self.servers[index];
        server.outstanding = Some((id, request));
        server.first_sent = now;
        server.send_at = now;
    }

    fn start_acquire(&mut self, now: Instant) {
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            server.refused = None;
            server.step = 0;
            self.ask(index, now, Request::Acquire);
        }
        self.phase = Phase::Acquiring {
            step: 1,
            floor: 0,
            started: now,
        };
    }

    /// Sends a release to every server holding a grant (and forgets the requests of the
    /// others); `then` is the event when done.
    fn release_all(&mut self, now: Instant, then: Option<Event>) {
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            server.step = 0;
            server.refused = None;
            if server.token != 0 {
                let token = server.token;
                self.ask(index, now, Request::Release { token });
            } else {
                server.outstanding = None;
            }
        }
        self.phase = Phase::Releasing { started: now, then };
        self.settle(now);
    }

    fn push_event(&mut self, event: Event) {
        if self.events.is_full() {
            // Nobody polls: keep the newest, which supersede older ones.
            self.events.pop_front();
        }
        let _ = self.events.push_back(event);
    }

    /// Moves the phase on from what the servers answered so far, and from the clock.
    fn settle(&mut self, now: Instant) {
        match self.phase {
            Phase::Idle => {}
            Phase::Acquiring {
                step,
                floor,
                started,
            } => {
                let majority = self.majority();
                let granted = self
                    .servers
                    .iter()
                    .filter(|server| server.step == step && server.deadline > now)
                    .count();
                if granted >= majority {
                    if step == 1 {
                        let floor = self
                            .servers
                            .iter()
                            .filter(|server| server.step == 1)
                            .map(|server| server.token)
                            .max()
                            .unwrap_or(0);
                        for index in 0..self.servers.len() {
                            self.servers[index].refused = None;
                            self.ask(index, now, Request::AtLeast { floor });
                        }
                        self.phase = Phase::Acquiring {
                            step: 2,
                            floor,
                            started,
                        };
                    } else {
                        self.phase = Phase::Held {
                            token: floor,
                            renew_at: now.saturating_add(self.config.ttl / 3),
                        };
                        self.push_event(Event::Acquired { token: floor });
                    }
                    return;
                }
                let refused = self
                    .servers
                    .iter()
                    .filter(|server| server.refused.is_some())
                    .count();
                let timed_out = now >= started.saturating_add(self.config.attempt_timeout);
                if timed_out || self.servers.len() - refused < majority {
                    let retry_at = self
                        .servers
                        .iter()
                        .filter_map(|server| server.refused)
                        .max()
                        .unwrap_or(now)
                        .max(now);
                    let silent = self
                        .servers
                        .iter()
                        .filter(|server| server.outstanding.is_some())
                        .count();
                    let invalid = self
                        .servers
                        .iter()
                        .filter(|server| server.refused.is_some() && server.invalid)
                        .count();
                    self.last_failure = Tally {
                        granted,
                        refused,
                        invalid,
                        silent,
                        step,
                    };
                    self.stats.failed += 1;
                    self.release_all(now, Some(Event::Failed { retry_at }));
                }
            }
            Phase::Held { .. } => {
                if self.majority_deadline(now).is_none() {
                    self.stats.lost += 1;
                    self.push_event(Event::Lost);
                    // The grants left go back quietly: `Lost` was the news.
                    self.release_all(now, None);
                }
            }
            Phase::Releasing { started, then } => {
                let waiting = self
                    .servers
                    .iter()
                    .any(|server| server.outstanding.is_some());
                if !waiting || now >= started.saturating_add(self.config.attempt_timeout) {
                    for server in &mut self.servers {
                        server.outstanding = None;
                        server.token = 0;
                    }
                    self.phase = Phase::Idle;
                    if let Some(event) = then {
                        self.push_event(event);
                    }
                    if core::mem::take(&mut self.acquire_after_release) {
                        self.start_acquire(now);
                    }
                }
            }
        }
    }

    /// Every third of the ttl while held: renew each grant, and ask again the servers without
    /// one.
    fn renew(&mut self, now: Instant, token: u64) {
        for index in 0..self.servers.len() {
            let server = &self.servers[index];
            let request = if server.token != 0 && server.deadline > now {
                Request::Renew {
                    token: server.token,
                }
            } else {
                Request::AtLeast { floor: token }
            };
            self.ask(index, now, request);
        }
        self.phase = Phase::Held {
            token,
            renew_at: now.saturating_add(self.config.ttl / 3),
        };
    }

    /// An answer from server `index` to its outstanding request `(id, request)`.
    fn answer(
        &mut self,
        now: Instant,
        index: usize,
        (id, request): (u64, Request),
        message: &Message<'_>,
    ) {
        let drift = self.config.drift_ppm;
        let step = match self.phase {
            Phase::Acquiring { step, .. } => step,
            _ => 0,
        };
        let server = &mut self.servers[index];
        server.outstanding = None;
        match (request, *message) {
            (
                Request::Acquire | Request::AtLeast { .. },
                Message::Granted {
                    token, lease_ms, ..
                },
            ) => {
                server.token = token;
                server.deadline =
                    holder_deadline(server.first_sent, Duration::from_millis(lease_ms), drift);
                server.step = step;
                if let Request::AtLeast { floor } = request {
                    if token < floor {
                        // A server may not grant below the floor: the grant does not count
                        // (it is still released).
                        server.step = 0;
                        server.deadline = Instant::ZERO;
                    }
                }
            }
            (Request::Renew { .. }, Message::Renewed { lease_ms, .. }) => {
                server.deadline = server.deadline.max(holder_deadline(
                    server.first_sent,
                    Duration::from_millis(lease_ms),
                    drift,
                ));
            }
            (
                Request::Renew { .. },
                Message::Refused {
                    reason: Refusal::StaleToken,
                    ..
                },
            ) => {
                // The lease on this server ended.
                server.token = 0;
                server.deadline = Instant::ZERO;
            }
            (
                Request::Release { .. },
                Message::Released { .. }
                | Message::Refused {
                    reason: Refusal::StaleToken,
                    ..
                },
            ) => {
                // A stale release: the grant was gone already.
                server.token = 0;
                server.deadline = Instant::ZERO;
            }
            (Request::Renew { .. }, Message::Refused { .. }) => {
                // Busy or unavailable: the lease stands as it was; the next round renews.
            }
            (Request::Release { .. }, Message::Refused { .. }) => {
                // Busy or unavailable: send it again after the retry interval.
                server.outstanding = Some((id, request));
            }
            (
                Request::Acquire | Request::AtLeast { .. },
                Message::Refused {
                    reason, retry_ms, ..
                },
            ) => {
                server.refused = Some(now.saturating_add(Duration::from_millis(retry_ms)));
                server.invalid = reason == Refusal::Invalid;
            }
            _ => {
                // Not an answer to this request: keep waiting for one.
                server.outstanding = Some((id, request));
            }
        }
    }
}

impl<const N: usize> Service for QuorumLock<N> {
    const KIND: u8 = kind::LOCK;
    type Error = Infallible;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        let Some(index) = self
            .servers
            .iter()
            .position(|server| server.addr == from.addr)
        else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(message) = message::decode(payload) else {
            self.stats.malformed += 1;
            return;
        };
        let answered = match message {
            Message::Granted { request, .. }
            | Message::Renewed { request, .. }
            | Message::Released { request }
            | Message::Refused { request, .. } => request,
            // Requests and status reports are not for a client.
            _ => return,
        };
        match self.servers[index].outstanding {
            Some((id, request)) if id == answered => {
                self.answer(now, index, (id, request), &message);
                self.settle(now);
            }
            // A late answer to an older request: its news came through another request.
            _ => {}
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, _rng: &mut R) {
        if let Phase::Held { token, renew_at } = self.phase {
            if now >= renew_at {
                self.renew(now, token);
            }
        }
        self.settle(now);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        let retry = self.config.retry_interval;
        let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let name = &self.name;
        for server in self.servers.iter_mut() {
            let Some((request, kind)) = server.outstanding else {
                continue;
            };
            if server.send_at > now {
                continue;
            }
            let message = match kind {
                Request::Acquire => Message::Acquire {
                    request,
                    name,
                    ttl_ms,
                },
                Request::AtLeast { floor } => Message::AcquireAtLeast {
                    request,
                    name,
                    ttl_ms,
                    floor: floor.min(FLOOR_MAX),
                },
                Request::Renew { token } => Message::Renew {
                    request,
                    name,
                    token,
                    ttl_ms,
                },
                Request::Release { token } => Message::Release {
                    request,
                    name,
                    token,
                },
            };
            if server.send_at > server.first_sent {
                self.stats.retries += 1;
            }
            self.stats.sent += 1;
            server.send_at = now.saturating_add(retry);
            if let Some(len) = message::encode(&message, buffer) {
                return Some(Transmit {
                    to: server.addr,
                    len,
                });
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let sends = self
            .servers
            .iter()
            .filter(|server| server.outstanding.is_some())
            .map(|server| server.send_at);
        let phase = match self.phase {
            Phase::Idle => None,
            Phase::Acquiring { started, .. } | Phase::Releasing { started, .. } => {
                Some(started.saturating_add(self.config.attempt_timeout))
            }
            Phase::Held { renew_at, .. } => {
                // Woken when a lease ends, to tell `Lost` the moment it is.
                let lost = self.majority_deadline(Instant::ZERO);
                Some(lost.map_or(renew_at, |at| at.min(renew_at)))
            }
        };
        sends.chain(phase).min()
    }

    fn commit(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
