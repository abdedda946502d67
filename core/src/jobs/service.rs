//! The scheduler as a [`Service`]: client messages in, answers out, writes answered only after
//! the group commit, lease expiry on timeouts.

use super::message::{self, Message, Refusal};
use super::{Answer, CommitError, Lease, NewJob, RecentClaim, Scheduler, State};
use crate::rng::{Rng, SplitMix64};
use crate::service::{self, Peer, Reply, Service, Transmit};
use crate::storage::Storage;
use crate::time::Instant;
use core::time::Duration;

impl<S: Storage, B: AsMut<[u8]>, const JOBS: usize, const DONE: usize, const PENDING: usize>
    Scheduler<S, B, JOBS, DONE, PENDING>
{
    /// Queues an answer that needs no sync.
    fn answer_now(&mut self, from: Peer, request: u64, answer: Answer) {
        self.replies.now(from.addr, request, answer);
    }

    /// Queues an answer that may depend on staged writes: it goes out after the next successful
    /// commit (at once when nothing is staged).
    fn answer_after_commit(&mut self, from: Peer, request: u64, answer: Answer) {
        self.replies
            .after_commit(from.addr, request, answer, self.staged);
    }

    /// Runs a request that may write; its answer waits for the commit.
    fn write_request(
        &mut self,
        from: Peer,
        request: u64,
        run: impl FnOnce(&mut Self) -> Result<Answer, Refusal>,
    ) {
        if self.replies.is_full() {
            self.answer_now(from, request, Answer::Refused(Refusal::Busy));
            return;
        }
        match run(self) {
            Ok(answer) => self.answer_after_commit(from, request, answer),
            Err(reason) => self.answer_now(from, request, Answer::Refused(reason)),
        }
    }

    fn handle(&mut self, now: Instant, from: Peer, message: Message<'_>) {
        match message {
            Message::Submit {
                request,
                key,
                priority,
                delay_ms,
                max_attempts,
                payload,
            } => {
                let job = NewJob {
                    key,
                    priority,
                    delay: Duration::from_millis(delay_ms),
                    max_attempts,
                    payload,
                };
                self.write_request(from, request, |this| {
                    this.submit(now, &job).map(Answer::Submitted)
                });
            }
            Message::Claim { request } => self.handle_claim(now, from, request),
            Message::Heartbeat {
                request,
                job,
                token,
            } => {
                let answer = match self.heartbeat(now, job, token) {
                    Ok(lease) => Answer::Done {
                        job,
                        lease: Some(lease),
                    },
                    Err(reason) => Answer::Refused(reason),
                };
                self.answer_now(from, request, answer);
            }
            Message::Complete {
                request,
                job,
                token,
            } => self.write_request(from, request, |this| {
                this.complete(now, job, token)
                    .map(|()| Answer::Done { job, lease: None })
            }),
            Message::Fail {
                request,
                job,
                token,
            } => self.handle_fail(now, from, (request, job, token)),
            Message::List { request, after } => {
                self.answer_now(from, request, Answer::Listed { after })
            }
            Message::Retry { request, job } => self.write_request(from, request, |this| {
                this.requeue(now, job)
                    .map(|()| Answer::Done { job, lease: None })
            }),
            // Answers are for clients; a scheduler ignores them.
            Message::Submitted { .. }
            | Message::Claimed { .. }
            | Message::NoJob { .. }
            | Message::Done { .. }
            | Message::Listed { .. }
            | Message::Refused { .. } => {}
        }
    }

    /// A claim, or the repeat of one whose answer was lost.
    fn handle_claim(&mut self, now: Instant, from: Peer, request: u64) {
        if let Some(lease) = self.repeat_claim(from, request) {
            if self.replies.is_full() {
                self.answer_now(from, request, Answer::Refused(Refusal::Busy));
            } else {
                self.answer_after_commit(from, request, Answer::Claimed(lease));
            }
            return;
        }
        self.write_request(from, request, |this| {
            let claimed = this.claim(now, from.node)?;
            if let Some(lease) = claimed {
                if this.recent_claims.is_full() {
                    this.recent_claims.pop_front();
                }
                let _ = this.recent_claims.push_back(RecentClaim {
                    worker: from.node,
                    incarnation: from.incarnation,
                    request,
                    job: lease.job,
                    token: lease.token,
                });
            }
            Ok(claimed.map_or(Answer::NoJob, Answer::Claimed))
        });
    }

    /// The claim granted to this very request, if the job still runs under it.
    fn repeat_claim(&self, from: Peer, request: u64) -> Option<Lease> {
        let recent = self.recent_claims.iter().find(|recent| {
            recent.worker == from.node
                && recent.incarnation == from.incarnation
                && recent.request == request
        })?;
        let job = self.index.jobs[self.index.find(recent.job)?];
        (job.state == State::Running && job.token == recent.token).then_some(Lease {
            job: job.id,
            token: job.token,
            expires: job.lease,
            attempts: job.attempts,
        })
    }

    /// A failure needs randomness for its backoff, and messages carry no [`Rng`]: the jitter
    /// generator is reseeded from the caller's at every [`Service::handle_timeout`].
    fn handle_fail(&mut self, now: Instant, from: Peer, (request, job, token): (u64, u64, u64)) {
        let mut rng = self.jitter.clone();
        self.write_request(from, request, |this| {
            this.fail(now, job, token, &mut rng)
                .map(|_| Answer::Done { job, lease: None })
        });
        self.jitter = rng;
    }

    /// Encodes `reply` into `buffer`.
    fn encode_reply(
        &mut self,
        now: Instant,
        reply: Reply<Answer>,
        buffer: &mut [u8],
    ) -> Option<usize> {
        let request = reply.request;
        let millis = |at: Instant| {
            u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        };
        let message = match reply.answer {
            Answer::Submitted(submitted) => Message::Submitted {
                request,
                job: submitted.job,
                duplicate: submitted.duplicate,
            },
            Answer::Claimed(lease) => {
                let claimed = |payload: &[u8]| {
                    let message = Message::Claimed {
                        request,
                        job: lease.job,
                        token: lease.token,
                        lease_ms: millis(lease.expires),
                        attempts: lease.attempts,
                        payload,
                    };
                    message::encode(&message, buffer)
                };
                // A payload that cannot be read leaves the claim to expire; nothing is sent.
                return self.with_payload(lease.job, claimed).ok().flatten();
            }
            Answer::NoJob => Message::NoJob { request },
            Answer::Done { job, lease } => Message::Done {
                request,
                job,
                lease_ms: lease.map_or(0, millis),
            },
            Answer::Listed { after } => {
                let (jobs, more) = self.dead(after);
                Message::Listed {
                    request,
                    jobs,
                    more,
                }
            }
            Answer::Refused(reason) => Message::Refused { request, reason },
        };
        message::encode(&message, buffer)
    }
}

impl<S: Storage, B: AsMut<[u8]>, const JOBS: usize, const DONE: usize, const PENDING: usize> Service
    for Scheduler<S, B, JOBS, DONE, PENDING>
{
    const KIND: u8 = service::kind::JOBS;
    type Error = CommitError<S::Error>;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        match message::decode(payload) {
            Ok(message) => self.handle(now, from, message),
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.jitter = SplitMix64::new(rng.next_u64());
        self.last_now = self.last_now.max(now);
        self.expire(now);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        // Bounded: every turn removes one answer.
        loop {
            let reply = self.replies.pop()?;
            if let Some(len) = self.encode_reply(now, reply, buffer) {
                return Some(Transmit { to: reply.to, len });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.poisoned {
            // Expiry would need a write: no timer, rather than a deadline that never clears.
            return None;
        }
        let last = self.last_now;
        // After an expiry the log refused, lease ends wait for the retry time.
        let retry = self.expiry_retry.filter(|&at| at > last);
        self.index
            .jobs
            .iter()
            .filter_map(|job| match job.state {
                State::Running => Some(retry.map_or(job.lease, |at| job.lease.max(at))),
                State::Pending if job.run_after > last => Some(job.run_after),
                _ => None,
            })
            .min()
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        if !self.staged {
            return Ok(());
        }
        self.staged = false;
        let synced = self.sync();
        self.replies.settle(
            synced
                .is_err()
                .then_some(Answer::Refused(Refusal::Unavailable)),
        );
        if synced.is_err() {
            // The storage is poisoned: refuse every write from now on (a restart recovers).
            self.poisoned = true;
        }
        synced
    }
}
