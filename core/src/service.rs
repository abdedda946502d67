//! The shape every networked service has: a sans-IO state machine (the quinn-proto / smoltcp
//! shape) that never performs IO and never reads a clock.
//!
//! Inputs are authenticated messages ([`Service::handle_message`]), timeouts
//! ([`Service::handle_timeout`]) and the service's own API calls; outputs are messages to send
//! ([`Service::poll_transmit`]) and the next deadline ([`Service::poll_timeout`]).
//!
//! Group commit: a service may stage writes to its storage log without syncing and hold back the
//! acknowledgements that depend on them. The driver calls [`Service::commit`] once per loop
//! iteration, after feeding every waiting input: one sync then covers every acknowledgement of
//! the iteration, and only after it succeeds do those acknowledgements become transmittable.
//!
//! Messages reach a service already authenticated and decrypted by the wire envelope; the
//! envelope's `kind` byte says which service a message is for ([`kind`]).

use crate::crdt::NodeId;
use crate::net::SocketAddr;
use crate::rng::Rng;
use crate::time::Instant;

/// Envelope kinds: which service a datagram is for. 0 is never a valid kind.
pub mod kind {
    /// The distributed counter (gossip between nodes and client requests).
    pub const COUNTER: u8 = 1;
    /// The leaderless replicated log (anti-entropy between nodes and client requests).
    pub const REPLICATED_LOG: u8 = 2;
    /// The message queue (client requests: send, receive, ack, extend).
    pub const QUEUE: u8 = 3;
    /// The job scheduler (client and worker requests).
    pub const JOBS: u8 = 4;
    /// Membership: SWIM probes, dissemination and push-pull of application state.
    pub const MEMBERSHIP: u8 = 5;
    /// The distributed lock (client requests: acquire, renew, release, status).
    pub const LOCK: u8 = 6;
}

/// The sender of a message, as the wire envelope authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The network address replies go to.
    pub addr: SocketAddr,
    /// The sender's node id (a client's id when the sender is a client).
    pub node: NodeId,
    /// The sender's incarnation: it grows every time the sender restarts.
    pub incarnation: u32,
}

/// A message a service wants sent: its payload is the first `len` bytes of the buffer given to
/// [`Service::poll_transmit`], and it goes to `to` inside an envelope of the service's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub to: SocketAddr,
    /// The payload's length.
    pub len: usize,
}

/// An answer to a client's request: where it goes, the request it answers, and what a service
/// will encode when it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<A> {
    /// The client's address.
    pub to: SocketAddr,
    /// The request answered.
    pub request: u64,
    /// The answer, encoded when it is polled.
    pub answer: A,
}

/// The answers a request/response service owes its clients: some go out at once, the others
/// only after the commit whose sync makes what they report durable (see the
/// [module docs](self)). Memory is fixed: `PENDING` answers waiting for a commit (a service
/// refuses new writes while they are all taken, [`Replies::is_full`]), `OUTBOX` immediate ones
/// (more are dropped and counted; the client retries).
#[derive(Debug)]
pub struct Replies<A, const PENDING: usize, const OUTBOX: usize> {
    /// Answers that wait for the next commit; `true` once it is done.
    pending: heapless::Vec<(Reply<A>, bool), PENDING>,
    outbox: heapless::Deque<Reply<A>, OUTBOX>,
    dropped: u64,
}

impl<A: Copy, const PENDING: usize, const OUTBOX: usize> Default for Replies<A, PENDING, OUTBOX> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Copy, const PENDING: usize, const OUTBOX: usize> Replies<A, PENDING, OUTBOX> {
    /// No answers owed.
    pub const fn new() -> Self {
        Self {
            pending: heapless::Vec::new(),
            outbox: heapless::Deque::new(),
            dropped: 0,
        }
    }

    /// Whether every slot for an answer waiting for a commit is taken: a write must be refused
    /// (busy) rather than answered before its sync.
    pub fn is_full(&self) -> bool {
        self.pending.is_full()
    }

    /// Queues an answer that needs no sync (a refusal, a read of durable state); dropped and
    /// counted when the outbox is full.
    pub fn now(&mut self, to: SocketAddr, request: u64, answer: A) {
        let reply = Reply {
            to,
            request,
            answer,
        };
        if self.outbox.push_back(reply).is_err() {
            self.dropped += 1;
        }
    }

    /// Queues an answer that reports staged writes when `staged` is true: it goes out after
    /// the next [`Replies::settle`]. With nothing staged it goes out at once. Callers check
    /// [`Replies::is_full`] before they stage the write; should it be full anyway, the answer
    /// is dropped and counted (never sent before its sync).
    pub fn after_commit(&mut self, to: SocketAddr, request: u64, answer: A, staged: bool) {
        if !staged {
            self.now(to, request, answer);
            return;
        }
        let reply = Reply {
            to,
            request,
            answer,
        };
        if self.pending.push((reply, false)).is_err() {
            self.dropped += 1;
        }
    }

    /// The commit that answers waited for is done: they may go out. When it failed, each
    /// becomes `failed` instead (the outcome is unknown to the client).
    pub fn settle(&mut self, failed: Option<A>) {
        for (reply, ready) in self.pending.iter_mut().filter(|(_, ready)| !*ready) {
            *ready = true;
            if let Some(answer) = failed {
                reply.answer = answer;
            }
        }
    }

    /// The next answer to send: settled ones first, in the order they were queued, then
    /// immediate ones.
    pub fn pop(&mut self) -> Option<Reply<A>> {
        if let Some(slot) = self.pending.iter().position(|(_, ready)| *ready) {
            return Some(self.pending.remove(slot).0);
        }
        self.outbox.pop_front()
    }

    /// Answers dropped because their queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A sans-IO networked service.
pub trait Service {
    /// The envelope kind this service's messages carry (see [`kind`]).
    const KIND: u8;
    /// Why a commit failed (a storage error: the service is poisoned after it).
    type Error;

    /// Takes one authenticated message. A payload that does not decode is dropped and counted by
    /// the service, never a panic.
    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]);

    /// Runs the timers that are due at `now`. A spurious or early call does nothing harmful.
    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R);

    /// The next message to send, its payload written into `buffer` (whose length is the most the
    /// envelope can carry); `None` when nothing waits.
    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit>;

    /// When [`Service::handle_timeout`] must next be called; `None` when no timer is armed.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Makes staged writes durable with one sync and releases the acknowledgements that waited
    /// for it. Cheap when nothing is staged.
    fn commit(&mut self) -> Result<(), Self::Error>;
}

/// A commit failed: the service of envelope kind `kind` could not sync and is poisoned. Nothing
/// it staged since its previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommitFailed {
    /// The failed service's envelope kind.
    pub kind: u8,
}

impl core::fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the service of kind {} failed to sync its storage and stopped taking writes",
            self.kind
        )
    }
}

impl core::error::Error for CommitFailed {}

/// Several services run by one node, dispatched by envelope kind. Implemented for a single
/// [`Service`] and for tuples of two to six, so a driver runs any combination.
pub trait Services {
    /// Hands an authenticated message to the service of `kind`; false when no service has it.
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool;
    /// Runs every service's due timers.
    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R);
    /// The next message of any service, with the envelope kind it goes out under.
    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)>;
    /// The earliest deadline of any service.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Commits every service (one sync each at most). Every service is committed even when an
    /// earlier one fails; the first failure is returned.
    fn commit(&mut self) -> Result<(), CommitFailed>;
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl<A: Service> Services for A {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        if kind != A::KIND {
            return false;
        }
        Service::handle_message(self, now, from, payload);
        true
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        Service::handle_timeout(self, now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        Service::poll_transmit(self, now, buffer).map(|transmit| (A::KIND, transmit))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Service::poll_timeout(self)
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        Service::commit(self).map_err(|_| CommitFailed { kind: A::KIND })
    }
}

/// `Services` for a tuple: messages go to the first member that takes the kind, timers and
/// commits run on every member (each commit even when an earlier one failed; the first failure
/// is returned), transmits are polled in order, and the deadline is the earliest.
macro_rules! tuple_services {
    ($($name:ident $index:tt),+) => {
        impl<$($name: Services),+> Services for ($($name,)+) {
            fn handle_message(
                &mut self,
                now: Instant,
                kind: u8,
                from: Peer,
                payload: &[u8],
            ) -> bool {
                $(self.$index.handle_message(now, kind, from, payload))||+
            }

            fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
                $(self.$index.handle_timeout(now, rng);)+
            }

            fn poll_transmit(
                &mut self,
                now: Instant,
                buffer: &mut [u8],
            ) -> Option<(u8, Transmit)> {
                $(if let Some(transmit) = self.$index.poll_transmit(now, buffer) {
                    return Some(transmit);
                })+
                None
            }

            fn poll_timeout(&self) -> Option<Instant> {
                let mut deadline = None;
                $(deadline = earliest(deadline, self.$index.poll_timeout());)+
                deadline
            }

            fn commit(&mut self) -> Result<(), CommitFailed> {
                let mut result = Ok(());
                $(result = result.and(self.$index.commit());)+
                result
            }
        }
    };
}

tuple_services!(A 0, B 1);
tuple_services!(A 0, B 1, C 2);
tuple_services!(A 0, B 1, C 2, D 3);
tuple_services!(A 0, B 1, C 2, D 3, E 4);
tuple_services!(A 0, B 1, C 2, D 3, E 4, F 5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use core::net::{IpAddr, Ipv4Addr};

    /// A service of kind `K` that counts what it was given and fails its commit on demand.
    #[derive(Default)]
    struct Probe<const K: u8> {
        messages: u32,
        timeouts: u32,
        commits: u32,
        fail_commit: bool,
        deadline: Option<Instant>,
        to_send: u32,
    }

    impl<const K: u8> Service for Probe<K> {
        const KIND: u8 = K;
        type Error = ();

        fn handle_message(&mut self, _: Instant, _: Peer, _: &[u8]) {
            self.messages += 1;
        }

        fn handle_timeout<R: Rng>(&mut self, _: Instant, _: &mut R) {
            self.timeouts += 1;
        }

        fn poll_transmit(&mut self, _: Instant, buffer: &mut [u8]) -> Option<Transmit> {
            self.to_send = self.to_send.checked_sub(1)?;
            buffer[0] = K;
            Some(Transmit {
                to: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
                len: 1,
            })
        }

        fn poll_timeout(&self) -> Option<Instant> {
            self.deadline
        }

        fn commit(&mut self) -> Result<(), ()> {
            self.commits += 1;
            if self.fail_commit {
                Err(())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn a_tuple_dispatches_by_kind_polls_in_order_and_commits_every_member() {
        let mut services = (
            Probe::<1>::default(),
            Probe::<2> {
                fail_commit: true,
                deadline: Some(Instant::from_millis(30)),
                to_send: 1,
                ..Probe::default()
            },
            Probe::<3> {
                fail_commit: true,
                deadline: Some(Instant::from_millis(20)),
                to_send: 1,
                ..Probe::default()
            },
        );
        let peer = Peer {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2),
            node: NodeId(9),
            incarnation: 1,
        };
        assert!(services.handle_message(Instant::ZERO, 3, peer, b"x"));
        assert!(!services.handle_message(Instant::ZERO, 7, peer, b"x"));
        assert_eq!(
            (
                services.0.messages,
                services.1.messages,
                services.2.messages
            ),
            (0, 0, 1)
        );
        services.handle_timeout(Instant::ZERO, &mut SplitMix64::new(1));
        assert_eq!(
            services.0.timeouts + services.1.timeouts + services.2.timeouts,
            3
        );
        assert_eq!(services.poll_timeout(), Some(Instant::from_millis(20)));
        let mut buffer = [0u8; 4];
        let kinds: [Option<u8>; 3] = core::array::from_fn(|_| {
            services
                .poll_transmit(Instant::ZERO, &mut buffer)
                .map(|(kind, _)| kind)
        });
        assert_eq!(kinds, [Some(2), Some(3), None]);
        assert_eq!(services.commit(), Err(CommitFailed { kind: 2 }));
        assert_eq!(
            (services.0.commits, services.1.commits, services.2.commits),
            (1, 1, 1),
            "a failed commit does not skip the others"
        );
    }
    #[test]
    fn replies_wait_for_their_commit_and_fail_with_it() {
        use core::net::{IpAddr, Ipv4Addr};
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
        let mut replies = Replies::<u8, 2, 1>::new();
        replies.after_commit(to, 1, 10, true);
        replies.now(to, 2, 20);
        replies.now(to, 3, 30);
        assert_eq!(replies.dropped(), 1, "the outbox holds one");
        // Before the commit only the immediate answer goes out.
        assert_eq!(replies.pop().map(|reply| reply.request), Some(2));
        assert_eq!(replies.pop(), None);
        replies.after_commit(to, 4, 40, true);
        assert!(replies.is_full());
        replies.settle(None);
        let settled = [replies.pop().unwrap(), replies.pop().unwrap()];
        assert_eq!(settled.map(|reply| reply.answer), [10, 40], "in order");
        // A failed commit replaces what its answers said.
        replies.after_commit(to, 5, 50, true);
        replies.settle(Some(0));
        assert_eq!(replies.pop().map(|reply| reply.answer), Some(0));
        // Nothing staged: no wait.
        replies.after_commit(to, 6, 60, false);
        assert_eq!(replies.pop().map(|reply| reply.answer), Some(60));
    }
}
