//! `bedrock lock acquire|renew|release|status|run --node ADDR`: the client side of a node's lock
//! server (`bedrock::lock`, SPEC.md section 13): named locks granted as leases with fencing
//! tokens; `run` and `status` also take several `--node`s (a quorum lock: see "Quorum").
//!
//! # Output
//!
//! - `acquire` prints the fencing token (a decimal number, one line) once the grant is durable
//!   on the node. A held lock without `--wait` is exit status 1 with one error line naming the
//!   holder (a client id), its token and when the lock can be granted again.
//! - `renew` prints the lease left, in milliseconds, as the node counts it from its answer.
//! - `release` prints nothing.
//! - `status` prints one line: `held holder ID token T lease_ms L free_ms F` while a lease
//!   lasts, else `free token T free_ms F`. `ID` is the holder's client id (every `bedrock`
//!   invocation has its own random one), `T` the latest grant's token (0 when the node remembers
//!   no grant of this lock), `L` the lease left and `F` how long until the node may grant the
//!   lock to another client (the lease's end stretched by the node's drift bound, or the
//!   lock-delay after a node restart), both in milliseconds. A `free` lock with `free_ms` above
//!   0 has a lease that ended and is not yet grantable.
//! - `run` prints nothing itself (the command's output is its own); see below.
//! - `status` with several `--node`s asks them all at once and prints one such line per node,
//!   in the order given, prefixed by the node's address (`127.0.0.1:7001 free token 3 free_ms
//!   0`); a node that does not answer is an `error: ADDR: …` line on stderr instead, and exit
//!   status 1 (after the other lines).
//!
//! Exit status: 0 on success, 1 for a refusal or an error (one `error: …` line on stderr), 2
//! for a command line that could not be parsed. `run` exits with its command's status (128 + N
//! when it was killed by signal N), [`LEASE_LOST`] = 75 when it lost the lease and killed the
//! command, 128 + N when it was stopped by SIGINT or SIGTERM (N), and 1 when the lock was not
//! acquired. `acquire`, `renew` or `release` with more than one `--node` is exit status 2 (a
//! usage error: a quorum grant has one token per node, so only `run` holds quorum locks), as
//! is `run` or `status` with more than 7 nodes or one given twice.
//!
//! # `run`
//!
//! `bedrock lock run NAME --ttl T [--wait] -- CMD ARGS…` acquires the lock (waiting if asked),
//! runs `CMD ARGS…` directly (no shell) in its own process group, with `BEDROCK_LOCK_NAME` and
//! `BEDROCK_LOCK_TOKEN` in its environment, and renews the lease every third of it. It tracks
//! the lease with [`holder_deadline`]: `lease · (1 − ε)` after the first send of the request
//! that the last grant or renewal answered, ε being `--drift-ppm` (1 % by default, the node's
//! default too). Every tick (20 ms) it compares the monotonic clock with that deadline before
//! anything else, so a runner resumed after a pause (SIGSTOP, swap, a suspended VM) acts on the
//! lost lease first. A renewal waits for its answer at most until the deadline.
//!
//! - Lease lost (a renewal refused as stale, or the deadline passed without a successful
//!   renewal: a pause, a partition, the node down): the command's whole process group gets
//!   SIGKILL at once (no grace: the lease is gone, and every further effect of the command is
//!   unprotected), and `run` exits 75 with one line `error: lease on NAME lost: …`. The lock is
//!   not released (the node frees it when the lease ends).
//! - The command exits: the lock is released and `run` exits with the command's status (a
//!   release that fails only warns, on stderr: the lease ends by itself).
//! - SIGINT or SIGTERM: the command's group gets SIGTERM, then SIGKILL after a grace of 1 s
//!   (never past the lease's deadline); the lock is released and `run` exits 128 + the signal.
//!   A signal while waiting for the lock ends the wait.
//! - The runner itself killed (SIGKILL): the command gets SIGKILL too (`PR_SET_PDEATHSIG`; only
//!   the command's own process, not processes it started), and the lease ends by itself.
//!
//! # Waiting
//!
//! `--wait` retries a held lock after the wait the node gives (`retry_ms`: until the lock can be
//! granted) plus up to 10 % (at most 100 ms) of random jitter, and a busy or full node after
//! 50 ms, until granted; `--wait-max D` gives up after `D` (exit status 1). Without `--wait`
//! a held lock is an error at once. A node that does not answer within 3 s ends the wait
//! (exit status 1).
//!
//! # Releases and retries
//!
//! Every request is retried with the same request id until answered (3 s at most). The node
//! checks renewals and releases by token only, so a token printed by `acquire` may be renewed
//! or released by another process. A retried `acquire` whose first answer was lost gets the
//! same grant back (same client). A release whose answer was lost gets `Released` again on its
//! retry while the node remembers it (its last 16 releases, in memory); past that (a node
//! restart in between) the retry is refused as stale (the lock is gone already): when a stale
//! refusal answers a release that was sent more than once, `release` says `released, or the
//! lease had already ended` on stderr and exits 0; a stale refusal of a release sent once is
//! exit status 1.
//!
//! # Guarantees
//!
//! - A token printed by `acquire` (or given to a `run` command) is above every token the node
//!   granted before, across node restarts.
//! - While `run` has not seen its deadline pass, no other client has been granted the lock,
//!   provided the clocks of this machine and of the node drift apart by less than ε.
//!
//! # Not guaranteed
//!
//! - Mutual exclusion of the command's effects: a command that keeps acting after its lease
//!   ended (its runner paused, killed, or its effects delayed in flight) may overlap with the
//!   next holder. Only a resource that checks fencing tokens is protected: see `bedrock fenced`
//!   ([`crate::fenced`]).
//! - A prompt kill: the command runs alongside the runner, which kills it at its first tick
//!   after the deadline (within about 20 ms on an idle machine, later under load or when the
//!   runner itself is paused); whatever the command does in between happens without the lease.
//!   With clocks that run at the same rate, the node grants the lock to another client no
//!   sooner than `2 · ε · lease` (plus the round trip) after the deadline: a kill within that
//!   margin comes before any successor's grant (200 ms for a 10 s lease at ε = 1 %).
//! - Processes the command started outside its process group, or that outlive a SIGKILLed
//!   runner, are not stopped.
//! - A terminal: the command runs in its own process group, not the terminal's foreground one,
//!   so it does not get the terminal's Ctrl-C (the runner does, and stops it), and reading the
//!   terminal stops it (SIGTTIN). Give it its input another way.
//! - One node: the locks live on the node given with `--node`; nothing is replicated (see
//!   "Quorum" below for a lock on several nodes).
//!
//! # Quorum
//!
//! `bedrock lock run NAME --node A --node B --node C … -- CMD` (2 to 7 different nodes) holds
//! the lock on a majority of the nodes given ([`bedrock::lock::quorum::QuorumLock`], SPEC.md
//! section 13.5): each node is an independent `bedrock node` with its own data directory and
//! its own `--id` (they need not form a membership cluster), all with the key and cluster
//! label the client uses. Give each node a different `--id`: the client keeps one replay
//! window per node id, so two nodes sharing an id reject each other's answers. With one
//! `--node`, `run` is the single-node run above.
//!
//! The runner sends `Acquire` to every node; once a majority granted, `T` is the highest of
//! their tokens, and `AcquireAtLeast T` goes to every node; once a majority granted that, the
//! command runs with `BEDROCK_LOCK_TOKEN` = `T`. Every third of the ttl each node that granted
//! gets a renewal (and each that did not an `AcquireAtLeast T`, so a node back from a crash
//! joins again). Each node's lease ends for the runner at `lease · (1 − ε)` after the first
//! send of the request it answered; the lock is held while a majority of those have not
//! ended, and the 20 ms loop checks that first at every tick, as in the single-node run. The
//! loop itself is the same for both modes; only the lease behind it differs.
//!
//! - Lost (fewer than a majority of leases left: renewals refused as stale, or unanswered by
//!   enough nodes until their leases ended, or a pause): SIGKILL to the command's group, exit
//!   75 with `error: lease on NAME lost: …`, and the grants left are not waited for.
//! - Not acquired: an attempt ends when a majority cannot be reached any more (refusals) or
//!   after 2 s without a majority of answers; what it got is released. Without `--wait` that
//!   is exit status 1 with one line: `error: lock NAME not acquired on a majority (M of N
//!   nodes needed): G granted, R refused (held by another client, or busy), S had not answered;
//!   the lock may be free in D ms (--wait waits for it)` (or `try again when more nodes
//!   answer` when no node said when). A node that refused the name or the ttl (a ttl above
//!   its `--lock-ttl-max`) ends `run` at once, even with `--wait`: `error: acquiring lock NAME
//!   refused by K of N nodes: …`. With `--wait` it is tried again after that wait (at
//!   least 50 ms) plus a random 20 to 100 ms, so that contenders who split the nodes between
//!   them do not collide again, until granted or `--wait-max`.
//! - The command exits: the grants are released (the answers awaited at most 1 s; when a node
//!   that granted does not answer, a node down since, that is one `warning: releasing lock
//!   NAME: …` line on stderr, and its grant ends with its lease) and `run` exits with the
//!   command's status.
//!   SIGINT and SIGTERM as in the single-node run.
//!
//! Guaranteed, beyond the single-node guarantees: the lock and its tokens survive a minority
//! of the nodes crashing, being partitioned away or losing power (SIGKILL, restart: each node
//! keeps its token counter and its grants across restarts). While `run` believes in the lock,
//! no other client holds a majority (any two majorities share a node, and that node's lease
//! ends for the holder, by the drift bound, before the node could grant it again), and a token
//! `T` is above every token a previous holder of the lock got (the next holder's first-step
//! majority shares a node whose grant to it is above `T`).
//!
//! Not guaranteed:
//!
//! - Progress without a majority of nodes reachable, or while contenders keep splitting the
//!   nodes between them (each attempt then fails and releases; `--wait` retries after a random
//!   delay, which breaks the tie in practice but with no bound).
//! - Safety if a node loses its data (a new disk, a deleted data directory): it forgets its
//!   grants and its tokens, so a majority counting it may overlap another holder's. Bring such
//!   a node back only after the longest ttl (its `--lock-ttl-max`) has passed with it down,
//!   and never start a fresh node under an address of the list while the lock may be held.
//! - Anything across node lists or modes: exclusion and the token order hold between runs
//!   that give the same nodes. A single-node `run` or `acquire` on one of them holds that node
//!   only (a quorum of the others may still be granted) and gets that node's own token, not
//!   `T`. Use one node list per lock name.
//! - Everything the single-node run does not guarantee (above): the command's effects after
//!   its leases ended are only stopped by a resource that checks tokens (`bedrock fenced`).

use std::cell::Cell;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bedrock::lock::{self, holder_deadline, Message, Refusal, NAME_LEN_MAX};
use bedrock::service::kind;
use bedrock_std::client::{self, Client, ClientError};

use crate::cluster::{client_error, client_for, Access};
use crate::error::{fail, Error};
use crate::output;

/// `run`'s exit status when it lost the lease and killed its command (EX_TEMPFAIL).
pub const LEASE_LOST: u8 = 75;
/// How often `run` compares the clock with its deadline and looks at its command.
pub(crate) const TICK: Duration = Duration::from_millis(20);
/// The wait before retrying a busy or full node.
pub(crate) const RETRY_SOON: Duration = Duration::from_millis(50);
/// How long an interrupted command may take to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(1);
/// The longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks a lock name for clap: 1 to 32 bytes.
pub fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > NAME_LEN_MAX {
        return Err(format!("a lock name is 1 to {NAME_LEN_MAX} bytes"));
    }
    Ok(text.to_string())
}

/// Parses a lease for clap: a duration (see `parse_duration`) of at least 1 ms, in whole
/// milliseconds (rounded down).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::parse_duration(text)?;
    if ttl < Duration::from_millis(1) {
        return Err("a ttl is at least 1ms".to_string());
    }
    Ok(Duration::from_millis(millis(ttl)))
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An answer, owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Granted {
        token: u64,
        lease_ms: u64,
    },
    Renewed {
        lease_ms: u64,
    },
    Released,
    State {
        holder: Option<u32>,
        token: u64,
        lease_ms: u64,
        free_ms: u64,
    },
    Refused {
        reason: Refusal,
        retry_ms: u64,
    },
}

/// An answer with what the request's sending looked like.
#[derive(Debug, Clone, Copy)]
struct Answered {
    reply: Reply,
    /// Just before the request was first sent.
    first_sent: Instant,
    /// How many times it was sent.
    sends: u32,
}

fn request_of(message: &Message<'_>) -> u64 {
    match *message {
        Message::Acquire { request, .. }
        | Message::AcquireAtLeast { request, .. }
        | Message::Granted { request, .. }
        | Message::Renew { request, .. }
        | Message::Renewed { request, .. }
        | Message::Release { request, .. }
        | Message::Released { request }
        | Message::Status { request, .. }
        | Message::State { request, .. }
        | Message::Refused { request, .. } => request,
    }
}

/// The answer to request `id` in `payload`, if it is one.
fn decode_reply(payload: &[u8], id: u64) -> Option<Reply> {
    let message = lock::decode(payload).ok()?;
    if request_of(&message) != id {
        return None;
    }
    Some(match message {
        Message::Granted {
            token, lease_ms, ..
        } => Reply::Granted { token, lease_ms },
        Message::Renewed { lease_ms, .. } => Reply::Renewed { lease_ms },
        Message::Released { .. } => Reply::Released,
        Message::State {
            holder,
            token,
            lease_ms,
            free_ms,
            ..
        } => Reply::State {
            holder,
            token,
            lease_ms,
            free_ms,
        },
        Message::Refused {
            reason, retry_ms, ..
        } => Reply::Refused { reason, retry_ms },
        _ => return None,
    })
}

fn request_id() -> Result<u64, Error> {
    client::random_u64().map_err(|error| fail(format!("no randomness: {error}")))
}

/// Sends `message` until answered, noting when it was first sent and how often.
fn send(client: &mut Client, message: &Message<'_>) -> Result<Answered, ClientError> {
    let id = request_of(message);
    let first_sent = Cell::new(None);
    let sends = Cell::new(0u32);
    let reply = client.request(
        kind::LOCK,
        |area| {
            // Called once per send, just before it: the first call is the first send.
            if first_sent.get().is_none() {
                first_sent.set(Some(Instant::now()));
            }
            sends.set(sends.get().saturating_add(1));
            lock::encode(message, area)
        },
        |payload| decode_reply(payload, id),
    )?;
    Ok(Answered {
        reply,
        first_sent: first_sent.get().unwrap_or_else(Instant::now),
        sends: sends.get(),
    })
}

/// [`send`] with the error as the user reads it.
fn request(client: &mut Client, message: &Message<'_>) -> Result<Answered, Error> {
    send(client, message).map_err(client_error)
}

/// What a refusal means, in words.
pub(crate) fn refusal_sentence(reason: Refusal) -> &'static str {
    match reason {
        Refusal::Held => "the lock is held",
        Refusal::Invalid => {
            "the node refused the name or the ttl (the ttl must be at most the node's \
             --lock-ttl-max)"
        }
        Refusal::StaleToken => "the token is stale",
        Refusal::Full => "the node's lock table is full (1024 locks); try again later",
        Refusal::Busy => "the node is busy (too many answers waiting); try again",
        Refusal::Unavailable => {
            "the node's lock storage failed or is full; the outcome is unknown; the node must \
             be restarted"
        }
        _ => "the node refused the request",
    }
}

fn unexpected(reply: &Reply) -> Error {
    fail(format!("the node gave an unexpected answer: {reply:?}"))
}

/// Sleeps `duration` in ticks, unless a signal arrives meanwhile.
pub(crate) fn sleep_unless(signal: &AtomicUsize, duration: Duration) {
    let until = Instant::now() + duration;
    while signal.load(Ordering::Relaxed) == 0 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(TICK));
    }
}

/// Up to 10 % of `wait`, at most 100 ms, at random.
fn jitter(wait: Duration) -> Duration {
    let range = millis(wait / 10).clamp(1, 100);
    let random = client::random_u64().unwrap_or(0);
    Duration::from_millis(random % (range + 1))
}

/// How to wait for a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Wait at all.
    pub wait: bool,
    /// Give up after this long.
    pub max: Option<Duration>,
}

/// A lease held.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    /// When the lease must be taken as lost, by this machine's monotonic clock.
    deadline: Instant,
}

/// How acquiring ended.
enum Acquired {
    Held(Held),
    /// A signal (its number) arrived while waiting.
    Interrupted(usize),
}

/// The deadline of a lease of `lease_ms` answering a request first sent at `first_sent`.
fn deadline(first_sent: Instant, lease_ms: u64, drift_ppm: u32) -> Instant {
    // bedrock's instants count from an origin of our choosing: the first send itself.
    let origin = bedrock::time::Instant::ZERO;
    let end = holder_deadline(origin, Duration::from_millis(lease_ms), drift_ppm);
    first_sent + Duration::from_micros(end.as_micros())
}

/// Why a held lock was not granted, in words: who holds it and until when.
fn held_sentence(client: &mut Client, name: &str, retry_ms: u64) -> String {
    let status = request_id().and_then(|id| {
        let message = Message::Status {
            request: id,
            name: name.as_bytes(),
        };
        request(client, &message)
    });
    match status.map(|answered| answered.reply) {
        Ok(Reply::State {
            holder: Some(holder),
            token,
            lease_ms,
            free_ms,
        }) => format!(
            "lock {name} is held by client {holder} under token {token}: its lease ends in \
             {lease_ms} ms unless renewed, and the lock can be granted again in {free_ms} ms"
        ),
        Ok(Reply::State { token, free_ms, .. }) => format!(
            "lock {name} is not free yet: the lease of token {token} ended, and the lock can \
             be granted again in {free_ms} ms"
        ),
        _ => format!("lock {name} is held; it can be granted again in {retry_ms} ms"),
    }
}

/// Acquires lock `name` for `ttl`, waiting as `wait` says while a signal does not arrive.
fn acquire_lock(
    client: &mut Client,
    name: &str,
    ttl: Duration,
    wait: Wait,
    drift_ppm: u32,
    signal: &AtomicUsize,
) -> Result<Acquired, Error> {
    let start = Instant::now();
    loop {
        let message = Message::Acquire {
            request: request_id()?,
            name: name.as_bytes(),
            ttl_ms: millis(ttl),
        };
        let answered = request(client, &message)?;
        let (pause, refusal, retry_ms) = match answered.reply {
            Reply::Granted { token, lease_ms } => {
                return Ok(Acquired::Held(Held {
                    token,
                    deadline: deadline(answered.first_sent, lease_ms, drift_ppm),
                }))
            }
            Reply::Refused {
                reason: Refusal::Held,
                retry_ms,
            } => {
                let retry = Duration::from_millis(retry_ms);
                (retry + jitter(retry), Refusal::Held, retry_ms)
            }
            Reply::Refused {
                reason: reason @ (Refusal::Busy | Refusal::Full),
                ..
            } => (RETRY_SOON + jitter(RETRY_SOON), reason, 0),
            Reply::Refused { reason, .. } => {
                return Err(fail(format!(
                    "acquiring lock {name} refused: {}",
                    refusal_sentence(reason)
                )))
            }
            reply => return Err(unexpected(&reply)),
        };
        let waited = start.elapsed();
        let given_up = wait.max.is_some_and(|max| waited >= max);
        if !wait.wait || given_up {
            let sentence = if refusal == Refusal::Held {
                held_sentence(client, name, retry_ms)
            } else {
                format!(
                    "acquiring lock {name} refused: {}",
                    refusal_sentence(refusal)
                )
            };
            return Err(fail(if given_up {
                format!("gave up after waiting {} ms: {sentence}", millis(waited))
            } else if refusal == Refusal::Held {
                format!("{sentence} (--wait waits for it)")
            } else {
                sentence
            }));
        }
        let pause = match wait.max {
            Some(max) => pause.min(max.saturating_sub(waited)),
            None => pause,
        };
        sleep_unless(signal, pause);
        let caught = signal.load(Ordering::Relaxed);
        if caught != 0 {
            return Ok(Acquired::Interrupted(caught));
        }
    }
}

/// `bedrock lock acquire`: prints the fencing token once granted.
pub fn acquire(
    node: SocketAddr,
    access: &Access,
    name: &str,
    ttl: Duration,
    wait: Wait,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    // No signal handler: SIGINT while waiting ends the process as usual (nothing is held).
    let never = AtomicUsize::new(0);
    match acquire_lock(&mut client, name, ttl, wait, 0, &never)? {
        Acquired::Held(held) => output::line(held.token)?,
        Acquired::Interrupted(_) => return Err(fail("interrupted")),
    }
    Ok(ExitCode::SUCCESS)
}

/// One renewal: the reply, with when it was first sent.
fn renew_request(
    client: &mut Client,
    name: &str,
    token: u64,
    ttl: Duration,
) -> Result<Result<Answered, ClientError>, Error> {
    let message = Message::Renew {
        request: request_id()?,
        name: name.as_bytes(),
        token,
        ttl_ms: millis(ttl),
    };
    Ok(send(client, &message))
}

fn stale_sentence(name: &str, token: u64) -> String {
    format!(
        "lock {name} is not held under token {token}: it was released, or its lease ended (and \
         it was granted again, or, for a renewal, not renewed in time)"
    )
}

/// `bedrock lock renew`: prints the lease left in milliseconds.
pub fn renew(
    node: SocketAddr,
    access: &Access,
    name: &str,
    token: u64,
    ttl: Duration,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let answered = renew_request(&mut client, name, token, ttl)?.map_err(client_error)?;
    match answered.reply {
        Reply::Renewed { lease_ms } => output::line(lease_ms)?,
        Reply::Refused {
            reason: Refusal::StaleToken,
            ..
        } => {
            return Err(fail(format!(
                "renewal refused: {}",
                stale_sentence(name, token)
            )))
        }
        Reply::Refused { reason, .. } => {
            return Err(fail(format!(
                "renewal refused: {}",
                refusal_sentence(reason)
            )))
        }
        reply => return Err(unexpected(&reply)),
    }
    Ok(ExitCode::SUCCESS)
}

/// How a release went.
enum Release {
    Released,
    /// Refused as stale after more than one send: the first may have released it.
    Gone,
    Refused(Refusal),
}

fn release_request(
    client: &mut Client,
    name: &str,
    token: u64,
) -> Result<Result<Release, ClientError>, Error> {
    let message = Message::Release {
        request: request_id()?,
        name: name.as_bytes(),
        token,
    };
    Ok(send(client, &message).map(|answered| match answered.reply {
        Reply::Released => Release::Released,
        Reply::Refused {
            reason: Refusal::StaleToken,
            ..
        } if answered.sends > 1 => Release::Gone,
        Reply::Refused { reason, .. } => Release::Refused(reason),
        // Not a release's answer: treat it as a refusal without a reason.
        _ => Release::Refused(Refusal::Invalid),
    }))
}

fn gone_note(name: &str) -> String {
    format!(
        "lock {name}: released, or the lease had already ended (the release was sent again \
         and refused as stale: its first answer was probably lost)"
    )
}

/// `bedrock lock release`: prints nothing.
pub fn release(
    node: SocketAddr,
    access: &Access,
    name: &str,
    token: u64,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    match release_request(&mut client, name, token)?.map_err(client_error)? {
        Release::Released => Ok(ExitCode::SUCCESS),
        Release::Gone => {
            eprintln!("{}", gone_note(name));
            Ok(ExitCode::SUCCESS)
        }
        Release::Refused(Refusal::StaleToken) => Err(fail(format!(
            "release refused: {}",
            stale_sentence(name, token)
        ))),
        Release::Refused(reason) => Err(fail(format!(
            "release refused: {}",
            refusal_sentence(reason)
        ))),
    }
}

/// Lock `name`'s state on `node`, as `status` prints it.
fn status_line(node: SocketAddr, access: &Access, name: &str) -> Result<String, Error> {
    let mut client = client_for(node, access)?;
    let message = Message::Status {
        request: request_id()?,
        name: name.as_bytes(),
    };
    match request(&mut client, &message)?.reply {
        Reply::State {
            holder: Some(holder),
            token,
            lease_ms,
            free_ms,
        } => Ok(format!(
            "held holder {holder} token {token} lease_ms {lease_ms} free_ms {free_ms}"
        )),
        Reply::State {
            holder: None,
            token,
            free_ms,
            ..
        } => Ok(format!("free token {token} free_ms {free_ms}")),
        Reply::Refused { reason, .. } => Err(fail(format!(
            "status refused: {}",
            refusal_sentence(reason)
        ))),
        reply => Err(unexpected(&reply)),
    }
}

/// `bedrock lock status`: one line, see the [module docs](self); with several nodes, one line
/// per node (asked at once), prefixed by its address, and an `error: ADDR: …` line on stderr
/// for each node that did not answer (exit status 1 then, after the other lines).
pub fn status(nodes: &[SocketAddr], access: &Access, name: &str) -> Result<ExitCode, Error> {
    if let [node] = nodes {
        output::line(status_line(*node, access, name)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<Result<String, Error>> = thread::scope(|scope| {
        let asks: Vec<_> = nodes
            .iter()
            .map(|&node| scope.spawn(move || status_line(node, access, name)))
            .collect();
        asks.into_iter()
            .map(|ask| {
                ask.join()
                    .unwrap_or_else(|_| Err(fail("the status request panicked")))
            })
            .collect()
    });
    let mut failed = false;
    for (node, line) in nodes.iter().zip(lines) {
        match line {
            Ok(line) => output::line(format_args!("{node} {line}"))?,
            Err(error) => {
                failed = true;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `bedrock lock run` does.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// The lock's name.
    pub name: &'a str,
    /// The lease asked for, and renewed.
    pub ttl: Duration,
    /// How to wait for a held lock.
    pub wait: Wait,
    /// The drift bound ε assumed between this machine's clock and the node's.
    pub drift_ppm: u32,
    /// The command and its arguments.
    pub command: &'a [OsString],
}

/// Sends `signal` to the command's whole process group (it runs in its own).
#[allow(unsafe_code)]
fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers and touches no memory of this process; the
        // group is the child's own (it was spawned with process_group(0)) and is not reaped yet.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// Kills the command's whole process group at once, then reaps the command.
fn kill_group(child: &mut Child) {
    signal_group(child, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM to the command's group, SIGKILL after the grace (or at `deadline`, if sooner).
fn stop_group(child: &mut Child, deadline: Instant) {
    signal_group(child, libc::SIGTERM);
    let until = (Instant::now() + GRACE).min(deadline);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(TICK);
    }
    kill_group(child);
}

/// Spawns the command in its own process group, killed with the runner.
#[allow(unsafe_code)]
fn spawn(options: &RunOptions<'_>, token: u64) -> Result<Child, Error> {
    let (program, args) = options
        .command
        .split_first()
        .ok_or_else(|| fail("no command to run"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("BEDROCK_LOCK_NAME", options.name)
        .env("BEDROCK_LOCK_TOKEN", token.to_string())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe and touches no memory of the process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|error| fail(format!("cannot run {}: {error}", program.to_string_lossy())))
}

/// The exit status that reports `status`: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

pub(crate) fn signal_code(signal: usize) -> ExitCode {
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
}

/// Releases the lock at the end of `run`; failures only warn (the lease ends by itself).
fn release_quietly(client: &mut Client, name: &str, token: u64) {
    client.timeout = REQUEST_TIMEOUT;
    match release_request(client, name, token) {
        Ok(Ok(Release::Released)) => {}
        Ok(Ok(Release::Gone)) => eprintln!("{}", gone_note(name)),
        Ok(Ok(Release::Refused(reason))) => eprintln!(
            "warning: releasing lock {name} was refused: {}",
            if reason == Refusal::StaleToken {
                stale_sentence(name, token)
            } else {
                refusal_sentence(reason).to_string()
            }
        ),
        Ok(Err(error)) => eprintln!(
            "warning: releasing lock {name} got no answer ({error}); the lock is free when its \
             lease ends"
        ),
        Err(error) => eprintln!("warning: releasing lock {name}: {error}"),
    }
}

/// The lease was lost: the command is killed; one error line.
fn lost(child: &mut Child, name: &str, why: &str) -> ExitCode {
    kill_group(child);
    eprintln!("error: lease on {name} lost: {why}; killed the command");
    ExitCode::from(LEASE_LOST)
}

/// A lease `run` holds: on one node ([`SingleLease`]) or on a majority of several
/// ([`crate::lock_quorum::QuorumLease`]). `run`'s loop calls [`Lease::lost`] first at every
/// tick, then looks at the command and the signals, then [`Lease::work`].
pub(crate) trait Lease {
    /// The fencing token the command gets.
    fn token(&self) -> u64;
    /// Why the lease is lost, if it is by the clock now (or by an answer seen).
    fn lost(&mut self) -> Option<String>;
    /// When the lease must be taken as lost, by this machine's monotonic clock.
    fn deadline(&self) -> Instant;
    /// Does what is due (renewals, answers), waiting at most `max` for work. An error is not a
    /// lost lease but a failure of the runner itself (the command is killed).
    fn work(&mut self, max: Duration) -> Result<(), Error>;
    /// Releases the lock at the end; failures only warn (the lease ends by itself).
    fn release(&mut self);
}

/// A lease on one node.
struct SingleLease<'a> {
    client: Client,
    name: &'a str,
    ttl: Duration,
    drift_ppm: u32,
    held: Held,
    interval: Duration,
    next_renewal: Instant,
    /// Why the node said the lease is lost.
    refused: Option<String>,
}

impl Lease for SingleLease<'_> {
    fn token(&self) -> u64 {
        self.held.token
    }

    fn lost(&mut self) -> Option<String> {
        if let Some(why) = &self.refused {
            return Some(why.clone());
        }
        (Instant::now() >= self.held.deadline).then(|| {
            "its deadline passed without a successful renewal (a pause, a partition, or the \
             node did not answer)"
                .to_string()
        })
    }

    fn deadline(&self) -> Instant {
        self.held.deadline
    }

    fn work(&mut self, max: Duration) -> Result<(), Error> {
        let now = Instant::now();
        if now < self.next_renewal {
            let left = self
                .next_renewal
                .min(self.held.deadline)
                .saturating_duration_since(now);
            thread::sleep(left.min(max));
            return Ok(());
        }
        // Wait for the answer no longer than the lease is known to last.
        let left = self.held.deadline.saturating_duration_since(now);
        self.client.timeout = left;
        self.client.retry_interval = (left / 4).clamp(TICK, Duration::from_millis(300));
        let (name, token) = (self.name, self.held.token);
        match renew_request(&mut self.client, name, token, self.ttl)? {
            Ok(Answered {
                reply: Reply::Renewed { lease_ms },
                first_sent,
                ..
            }) => {
                let renewed = deadline(first_sent, lease_ms, self.drift_ppm);
                self.held.deadline = self.held.deadline.max(renewed);
                self.next_renewal = Instant::now() + self.interval;
            }
            Ok(Answered {
                reply:
                    Reply::Refused {
                        reason: Refusal::Busy | Refusal::Full | Refusal::Unavailable,
                        ..
                    },
                ..
            }) => self.next_renewal = Instant::now() + RETRY_SOON,
            Ok(Answered {
                reply: Reply::Refused { reason, .. },
                ..
            }) => {
                let sentence = if reason == Refusal::StaleToken {
                    stale_sentence(name, token)
                } else {
                    refusal_sentence(reason).to_string()
                };
                self.refused = Some(format!("the node refused the renewal: {sentence}"));
            }
            Ok(Answered { reply, .. }) => return Err(unexpected(&reply)),
            // No answer until the deadline (the loop sees it next), or a socket error: try
            // again soon while the lease lasts.
            Err(_) => self.next_renewal = Instant::now() + RETRY_SOON,
        }
        Ok(())
    }

    fn release(&mut self) {
        release_quietly(&mut self.client, self.name, self.held.token);
    }
}

/// The flag SIGINT and SIGTERM set (to their number) while `run` runs.
pub(crate) fn signal_flag() -> Result<Arc<AtomicUsize>, Error> {
    let signal = Arc::new(AtomicUsize::new(0));
    for number in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let value = usize::try_from(number).unwrap_or(1);
        signal_hook::flag::register_usize(number, Arc::clone(&signal), value)
            .map_err(|error| fail(format!("cannot handle signals: {error}")))?;
    }
    Ok(signal)
}

/// `bedrock lock run` with one node: see the [module docs](self).
pub fn run(node: SocketAddr, access: &Access, options: &RunOptions<'_>) -> Result<ExitCode, Error> {
    let name = options.name;
    let mut client = client_for(node, access)?;
    let signal = signal_flag()?;
    let held = match acquire_lock(
        &mut client,
        name,
        options.ttl,
        options.wait,
        options.drift_ppm,
        &signal,
    )? {
        Acquired::Held(held) => held,
        Acquired::Interrupted(caught) => return Ok(signal_code(caught)),
    };
    let interval = (options.ttl / 3).max(TICK);
    let lease = SingleLease {
        client,
        name,
        ttl: options.ttl,
        drift_ppm: options.drift_ppm,
        held,
        interval,
        next_renewal: Instant::now() + interval,
        refused: None,
    };
    hold(lease, options, &signal)
}

/// Runs the command while `lease` lasts: the loop both modes of `run` share.
pub(crate) fn hold(
    mut lease: impl Lease,
    options: &RunOptions<'_>,
    signal: &AtomicUsize,
) -> Result<ExitCode, Error> {
    let name = options.name;
    let mut child = match spawn(options, lease.token()) {
        Ok(child) => child,
        Err(error) => {
            lease.release();
            return Err(error);
        }
    };
    loop {
        // First, always: a runner resumed after a pause must see its lease lost before it
        // does anything else.
        if let Some(why) = lease.lost() {
            return Ok(lost(&mut child, name, &why));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                lease.release();
                return Ok(exit_code(status));
            }
            Ok(None) => {}
            Err(error) => {
                kill_group(&mut child);
                return Err(fail(format!("cannot wait for the command: {error}")));
            }
        }
        let caught = signal.load(Ordering::Relaxed);
        if caught != 0 {
            stop_group(&mut child, lease.deadline());
            lease.release();
            eprintln!(
                "lock {name}: interrupted by signal {caught}: stopped the command and released \
                 the lock"
            );
            return Ok(signal_code(caught));
        }
        if let Err(error) = lease.work(TICK) {
            kill_group(&mut child);
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_other_requests_are_ignored() {
        let mut buffer = [0u8; 64];
        let message = Message::Granted {
            request: 5,
            token: 9,
            lease_ms: 1000,
        };
        let len = lock::encode(&message, &mut buffer).unwrap();
        let expected = Reply::Granted {
            token: 9,
            lease_ms: 1000,
        };
        assert_eq!(decode_reply(&buffer[..len], 5), Some(expected));
        assert_eq!(decode_reply(&buffer[..len], 6), None);
        assert_eq!(decode_reply(&[0xff], 5), None);
    }

    #[test]
    fn the_deadline_takes_the_drift_off_the_lease_from_the_first_send() {
        let sent = Instant::now();
        assert_eq!(
            deadline(sent, 1000, 10_000),
            sent + Duration::from_millis(990)
        );
        assert_eq!(deadline(sent, 1000, 0), sent + Duration::from_millis(1000));
        assert_eq!(deadline(sent, 0, 10_000), sent);
    }

    #[test]
    fn names_and_ttls_are_checked() {
        assert!(parse_name("").is_err());
        assert!(parse_name(&"n".repeat(NAME_LEN_MAX + 1)).is_err());
        assert_eq!(parse_name("db-migrate"), Ok("db-migrate".to_string()));
        assert_eq!(parse_ttl("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_ttl("1.5ms"), Ok(Duration::from_millis(1)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("0.5ms").is_err());
    }
}
