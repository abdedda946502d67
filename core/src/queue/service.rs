//! The queue as a networked [`Service`]: client requests in, replies out after the commit.
//!
//! Every reply waits for the next [`Service::commit`]: a write's reply then says it is durable
//! (or, when the sync failed, [`Refusal::Unavailable`]); a delivery's payload is read from the
//! log only when the reply is encoded, so the reply table holds no payloads.

use core::time::Duration;

use super::message::{self, Message, Refusal};
use super::record::{self, SendRecord};
use super::{AckError, MessageId, Queue, SendError, State};
use crate::crdt::NodeId;
use crate::log::{AppendError, Position, SyncError};
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::service::{self, Peer, Service, Transmit};
use crate::storage::Storage;
use crate::time::Instant;

/// Why a commit failed: the storage failed and the queue is poisoned; nothing staged since the
/// previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Appending a checkpoint failed.
    Append(AppendError<E>),
    /// The release or the sync failed.
    Sync(SyncError<E>),
}

impl<E: core::fmt::Display> core::fmt::Display for CommitError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Append(error) => write!(f, "appending a checkpoint failed: {error}"),
            Self::Sync(error) => write!(f, "sync failed: {error}"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for CommitError<E> {}

/// What a reply says, encoded when it is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Sent {
        id: u64,
    },
    Delivery {
        id: u64,
        token: u64,
        attempt: u32,
        at: Position,
    },
    Empty,
    Acked {
        id: u64,
    },
    Extended {
        id: u64,
    },
    Refused {
        reason: Refusal,
    },
    Stats,
}

/// A reply waiting for the next commit (`ready` false) or to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    to: SocketAddr,
    request: u64,
    answer: Answer,
    /// Whether the answer depends on a staged write (refused if the sync fails).
    write: bool,
    ready: bool,
}

/// A delivery made for a client's `Receive`, remembered so that a retry of that request (its
/// `Delivery` lost) gets the same lease back instead of leasing a second message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecentDelivery {
    node: NodeId,
    incarnation: u32,
    request: u64,
    id: u64,
    token: u64,
}

fn send_refusal<E>(error: SendError<E>) -> Refusal {
    match error {
        SendError::TooLarge => Refusal::TooLarge,
        SendError::BadName => Refusal::BadName,
        SendError::Full | SendError::StorageFull => Refusal::Full,
        SendError::SequenceBehind { .. } => Refusal::SequenceBehind,
        SendError::Append(AppendError::Full) => Refusal::Full,
        SendError::Append(AppendError::Encode(_)) => Refusal::TooLarge,
        _ => Refusal::Unavailable,
    }
}

fn ack_refusal<E>(error: AckError<E>) -> Refusal {
    match error {
        AckError::NotLive => Refusal::NotLive,
        AckError::StaleDelivery => Refusal::StaleDelivery,
        AckError::Append(AppendError::Full) => Refusal::Full,
        _ => Refusal::Unavailable,
    }
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const MESSAGES: usize,
        const QUEUES: usize,
        const PRODUCERS: usize,
        const REPLIES: usize,
    > Queue<S, B, MESSAGES, QUEUES, PRODUCERS, REPLIES>
{
    fn reply(&mut self, from: Peer, request: u64, answer: Answer, write: bool) {
        let reply = Reply {
            to: from.addr,
            request,
            answer,
            write,
            ready: false,
        };
        if self.replies.push_back(reply).is_err() {
            self.stats.replies_dropped += 1;
        }
    }

    fn handle_request(&mut self, now: Instant, from: Peer, message: Message<'_>) {
        match message {
            Message::Send {
                request,
                queue,
                producer,
                sequence,
                payload,
            } => {
                let answer = match self.send(now, queue, producer, sequence, payload) {
                    Ok(id) => Answer::Sent { id: id.0 },
                    Err(error) => Answer::Refused {
                        reason: send_refusal(error),
                    },
                };
                self.reply(from, request, answer, true);
            }
            Message::Receive {
                request,
                queue,
                lease_ms,
            } => {
                let lease = Duration::from_millis(u64::from(lease_ms));
                let answer = match self.repeat_delivery(now, from, request) {
                    Some(answer) => answer,
                    None => self.lease_next(now, from, request, (queue, lease)),
                };
                // A delivery depends on the commit too: its message may have been sent in this
                // step, and if the sync fails its id may be reused after the restart (an
                // idempotent consumer would then skip the new message as done).
                self.reply(from, request, answer, true);
            }
            Message::Ack { request, id, token } => {
                let answer = match self.ack(now, MessageId(id), token) {
                    Ok(()) => Answer::Acked { id },
                    Err(error) => Answer::Refused {
                        reason: ack_refusal(error),
                    },
                };
                self.reply(from, request, answer, true);
            }
            Message::Extend {
                request,
                id,
                token,
                lease_ms,
            } => {
                let lease = Duration::from_millis(u64::from(lease_ms));
                let answer = match self.extend(now, MessageId(id), token, lease) {
                    Ok(()) => Answer::Extended { id },
                    Err(error) => Answer::Refused {
                        reason: ack_refusal(error),
                    },
                };
                self.reply(from, request, answer, false);
            }
            Message::Stats { request } => self.reply(from, request, Answer::Stats, false),
            // Replies are for clients; a node ignores them.
            Message::Sent { .. }
            | Message::Delivery { .. }
            | Message::Empty { .. }
            | Message::Acked { .. }
            | Message::Extended { .. }
            | Message::Refused { .. }
            | Message::StatsReply { .. } => {}
        }
    }

    /// The delivery already made for this very request (a retry whose `Delivery` was lost),
    /// if its lease still holds.
    fn repeat_delivery(&mut self, now: Instant, from: Peer, request: u64) -> Option<Answer> {
        let recent = *self.recent.iter().find(|recent| {
            recent.node == from.node
                && recent.incarnation == from.incarnation
                && recent.request == request
        })?;
        self.expire(now);
        let live = self.live.get(MessageId(recent.id))?;
        match live.state {
            State::Leased { token, .. } if token == recent.token => Some(Answer::Delivery {
                id: live.id.0,
                token,
                attempt: live.attempts,
                at: live.at.position,
            }),
            _ => None,
        }
    }

    /// Leases the next pending message for a client; its payload is read when the reply is sent.
    fn lease_next(
        &mut self,
        now: Instant,
        from: Peer,
        request: u64,
        (queue, lease): (&str, Duration),
    ) -> Answer {
        if self.poisoned {
            // A poisoned queue may index sends whose sync failed: hand out nothing.
            return Answer::Refused {
                reason: Refusal::Unavailable,
            };
        }
        if self.replies.is_full() {
            // The reply would be dropped: do not lease a message nobody will hear about.
            return Answer::Refused {
                reason: Refusal::Busy,
            };
        }
        self.expire(now);
        let Some((index, live)) = self.next_pending(queue) else {
            return Answer::Empty;
        };
        let (at, id) = (live.at.position, live.id.0);
        match self.lease(index, now, lease) {
            Some((token, attempt)) => {
                if self.recent.is_full() {
                    self.recent.pop_front();
                }
                let _ = self.recent.push_back(RecentDelivery {
                    node: from.node,
                    incarnation: from.incarnation,
                    request,
                    id,
                    token,
                });
                Answer::Delivery {
                    id,
                    token,
                    attempt,
                    at,
                }
            }
            None => Answer::Refused {
                reason: Refusal::Unavailable,
            },
        }
    }

    /// Encodes one reply into `buffer`; `None` when it cannot be (its record is unreadable, or
    /// the payload does not fit the datagram).
    fn encode_reply(&mut self, reply: Reply, buffer: &mut [u8]) -> Option<usize> {
        let request = reply.request;
        let message = match reply.answer {
            Answer::Delivery {
                id,
                token,
                attempt,
                at,
            } => return self.encode_delivery(request, (id, token, attempt), at, buffer),
            Answer::Sent { id } => Message::Sent { request, id },
            Answer::Empty => Message::Empty { request },
            Answer::Acked { id } => Message::Acked { request, id },
            Answer::Extended { id } => Message::Extended { request, id },
            Answer::Refused { reason } => Message::Refused { request, reason },
            Answer::Stats => {
                let stats = self.stats();
                Message::StatsReply {
                    request,
                    live: stats.live,
                    leased: stats.leased,
                    sent: stats.sent,
                    acked: stats.acked,
                    expired: stats.expired,
                }
            }
        };
        message::encode(&message, buffer)
    }

    fn encode_delivery(
        &mut self,
        request: u64,
        (id, token, attempt): (u64, u64, u32),
        at: Position,
        buffer: &mut [u8],
    ) -> Option<usize> {
        let (_, payload) = self.log.read_ref(at).ok()?;
        let record: SendRecord<'_> = record::decode_exact(payload)?;
        if record.id != id {
            return None;
        }
        let message = Message::Delivery {
            request,
            id,
            token,
            attempt,
            payload: record.payload,
        };
        message::encode(&message, buffer)
    }
}

impl<
        S: Storage,
        B: AsMut<[u8]>,
        const MESSAGES: usize,
        const QUEUES: usize,
        const PRODUCERS: usize,
        const REPLIES: usize,
    > Service for Queue<S, B, MESSAGES, QUEUES, PRODUCERS, REPLIES>
{
    const KIND: u8 = service::kind::QUEUE;
    type Error = CommitError<S::Error>;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        match message::decode(payload) {
            Ok(message) => self.handle_request(now, from, message),
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, _rng: &mut R) {
        self.expire(now);
    }

    fn poll_transmit(&mut self, _now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        // Bounded by the table: each turn removes one reply.
        for _ in 0..REPLIES {
            if !self.replies.front().is_some_and(|reply| reply.ready) {
                return None;
            }
            let reply = self.replies.pop_front()?;
            if let Some(len) = self.encode_reply(reply, buffer) {
                return Some(Transmit { to: reply.to, len });
            }
            self.stats.replies_dropped += 1;
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_expiry()
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        if !self.poisoned && self.needs_relocation() {
            if let Some(mut scratch) = self.scratch.take() {
                // A failure leaves the records where they were (a storage error poisons the
                // queue, and the sync below reports it); the next commit tries again.
                if let Ok(moved) = self.relocate(scratch.as_mut()) {
                    self.stats.relocated += u64::from(moved);
                }
                self.scratch = Some(scratch);
            }
        }
        let synced = self.sync_staged();
        for reply in self.replies.iter_mut().filter(|reply| !reply.ready) {
            reply.ready = true;
            if synced.is_err() && reply.write {
                reply.answer = Answer::Refused {
                    reason: Refusal::Unavailable,
                };
            }
        }
        synced
    }
}
