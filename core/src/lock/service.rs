//! The lock server as a [`Service`]: client messages in, answers out, grants and releases
//! answered only after the group commit.

use super::message::{self, Message, Refusal};
use super::{Answer, CommitError, Grant, LockServer};
use crate::rng::Rng;
use crate::service::{self, Peer, Reply, Service, Transmit};
use crate::storage::Storage;
use crate::time::Instant;
use core::time::Duration;

impl<S: Storage, B: AsMut<[u8]>, const LOCKS: usize, const PENDING: usize>
    LockServer<S, B, LOCKS, PENDING>
{
    /// Queues an answer that needs no sync.
    fn answer_now(&mut self, from: Peer, request: u64, answer: Answer) {
        self.replies.now(from.addr, request, answer);
    }

    /// Queues an answer that may depend on staged writes (a grant still unsynced, renewed or
    /// reported): it goes out after the next successful commit, at once when nothing is staged.
    fn answer_after_commit(&mut self, from: Peer, request: u64, answer: Answer) {
        self.replies
            .after_commit(from.addr, request, answer, self.staged);
    }

    /// Runs a request; its answer waits for the commit. Refusals go out at once.
    fn request(
        &mut self,
        now: Instant,
        from: Peer,
        request: u64,
        run: impl FnOnce(&mut Self) -> Result<Answer, Refusal>,
    ) {
        if self.replies.is_full() {
            let answer = Answer::Refused {
                reason: Refusal::Busy,
                retry: now,
            };
            self.answer_now(from, request, answer);
            return;
        }
        match run(self) {
            Ok(answer) => self.answer_after_commit(from, request, answer),
            Err(reason) => self.answer_now(from, request, Answer::Refused { reason, retry: now }),
        }
    }

    fn handle(&mut self, now: Instant, from: Peer, message: Message<'_>) {
        match message {
            Message::Acquire {
                request,
                name,
                ttl_ms,
            } => self.handle_acquire(now, from, (request, name, ttl_ms, 0)),
            Message::AcquireAtLeast {
                request,
                name,
                ttl_ms,
                floor,
            } => self.handle_acquire(now, from, (request, name, ttl_ms, floor)),
            Message::Renew {
                request,
                name,
                token,
                ttl_ms,
            } => self.request(now, from, request, |this| {
                this.renew(now, name, token, Duration::from_millis(ttl_ms))
                    .map(|expires| Answer::Renewed { expires })
            }),
            Message::Release {
                request,
                name,
                token,
            } => self.request(now, from, request, |this| {
                this.release(now, name, token).map(|()| Answer::Released)
            }),
            Message::Status { request, name } => self.request(now, from, request, |this| {
                Ok(Answer::State(this.status(now, name)))
            }),
            // Answers are for clients; a server ignores them.
            Message::Granted { .. }
            | Message::Renewed { .. }
            | Message::Released { .. }
            | Message::State { .. }
            | Message::Refused { .. } => {}
        }
    }

    /// An acquire: a refusal because the lock is held says when to retry.
    fn handle_acquire(
        &mut self,
        now: Instant,
        from: Peer,
        (request, name, ttl_ms, floor): (u64, &[u8], u64, u64),
    ) {
        if self.replies.is_full() {
            let answer = Answer::Refused {
                reason: Refusal::Busy,
                retry: now,
            };
            self.answer_now(from, request, answer);
            return;
        }
        let ttl = Duration::from_millis(ttl_ms);
        match self.acquire_at_least(now, name, from.node, ttl, floor) {
            Ok(grant) => self.answer_after_commit(from, request, Answer::Granted(grant)),
            Err(reason) => {
                let retry = match reason {
                    Refusal::Held => self.status(now, name).free_at,
                    _ => now,
                };
                self.answer_now(from, request, Answer::Refused { reason, retry });
            }
        }
    }

    /// Encodes `reply` into `buffer`.
    fn encode_reply(now: Instant, reply: Reply<Answer>, buffer: &mut [u8]) -> Option<usize> {
        let request = reply.request;
        // Waits are rounded up (a client never waits less than the server will), leases down
        // (a holder never believes in more lease than the server granted).
        let millis = |at: Instant| {
            let micros = at.saturating_duration_since(now).as_micros();
            u64::try_from(micros.div_ceil(1000)).unwrap_or(u64::MAX)
        };
        let lease = |at: Instant| {
            let micros = at.saturating_duration_since(now).as_micros();
            u64::try_from(micros / 1000).unwrap_or(u64::MAX)
        };
        let message = match reply.answer {
            Answer::Granted(Grant { token, expires }) => Message::Granted {
                request,
                token,
                lease_ms: lease(expires),
            },
            Answer::Renewed { expires } => Message::Renewed {
                request,
                lease_ms: lease(expires),
            },
            Answer::Released => Message::Released { request },
            Answer::State(status) => Message::State {
                request,
                holder: status.holder.map(|holder| holder.0),
                token: status.token,
                lease_ms: lease(status.expires),
                free_ms: millis(status.free_at),
            },
            Answer::Refused { reason, retry } => Message::Refused {
                request,
                reason,
                retry_ms: millis(retry),
            },
        };
        message::encode(&message, buffer)
    }
}

impl<S: Storage, B: AsMut<[u8]>, const LOCKS: usize, const PENDING: usize> Service
    for LockServer<S, B, LOCKS, PENDING>
{
    const KIND: u8 = service::kind::LOCK;
    type Error = CommitError<S::Error>;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        match message::decode(payload) {
            Ok(message) => self.handle(now, from, message),
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, _rng: &mut R) {
        // Leases end lazily: every decision compares with the lease's end, so no timer is
        // needed and none is armed.
        self.last_now = self.last_now.max(now);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        // Bounded: every turn removes one answer.
        loop {
            let reply = self.replies.pop()?;
            if let Some(len) = Self::encode_reply(now, reply, buffer) {
                return Some(Transmit { to: reply.to, len });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        if !self.staged {
            return Ok(());
        }
        self.staged = false;
        let synced = self.sync();
        self.replies
            .settle(synced.is_err().then_some(Answer::Refused {
                reason: Refusal::Unavailable,
                retry: Instant::ZERO,
            }));
        if synced.is_err() {
            // The storage is poisoned: refuse every write from now on (a restart recovers).
            self.poisoned = true;
        }
        synced
    }
}
