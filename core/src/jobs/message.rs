//! The job scheduler's messages: postcard, inside a wire envelope of kind
//! [`crate::service::kind::JOBS`]. SPEC.md section 11.1 gives the byte layout.
//!
//! Workers and submitters are clients: every request carries the client's `request` id, echoed
//! in the answer. Times are durations (milliseconds), never instants: the scheduler's monotonic
//! clock means nothing to a remote worker.

use heapless::Vec;
use serde::{Deserialize, Serialize};

/// The largest payload a job may carry: a `Claimed` answer holding it fits a datagram of the
/// default MTU ([`crate::net::MTU_DEFAULT`]) inside an encrypted envelope.
pub const PAYLOAD_LEN_MAX: usize = 1024;
/// Most job ids one `Listed` answer carries.
pub const LIST_MAX: usize = 32;

/// Why a request was refused. Nothing changed, except as [`Refusal::Unavailable`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// The job table holds `JOBS` jobs already; retry later.
    Full,
    /// The payload is longer than [`PAYLOAD_LEN_MAX`] or the scheduler's configured
    /// `payload_max`.
    TooLarge,
    /// `max_attempts` is 0.
    Invalid,
    /// No such job (never submitted, or finished and forgotten).
    UnknownJob,
    /// The fencing token is not the job's current one, or the job is not in progress: the
    /// caller's lease is gone and another worker may hold the job.
    StaleToken,
    /// Only a dead job can be re-queued.
    NotDead,
    /// Too many answers wait for the next sync; retry.
    Busy,
    /// The storage failed (the scheduler is poisoned) or is full. When this answers a request
    /// whose sync failed, the outcome is unknown: the record may have reached the medium.
    Unavailable,
}

/// One message between a client (submitter or worker) and the scheduler.
// `Listed` holds its ids inline (no allocation); a message lives on the stack one at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Client → scheduler: store a new job. With `key`, a second submit of the same key (while
    /// the job is known or remembered as finished) is answered with the first job's id.
    Submit {
        /// The client's request id.
        request: u64,
        /// Deduplication key.
        key: Option<u64>,
        /// Higher runs first.
        priority: u8,
        /// The job is not offered before this many milliseconds have passed.
        delay_ms: u64,
        /// Attempts before the job goes dead (at least 1).
        max_attempts: u32,
        /// The job's bytes, at most [`PAYLOAD_LEN_MAX`].
        payload: &'a [u8],
    },
    /// Scheduler → client: the job is durable.
    Submitted {
        /// The request answered.
        request: u64,
        /// The job's id.
        job: u64,
        /// True when the key was known: no new job was stored.
        duplicate: bool,
    },
    /// Worker → scheduler: give me the best runnable job.
    Claim {
        /// The client's request id.
        request: u64,
    },
    /// Scheduler → worker: the claim is durable; work on `job` under `token` until the lease
    /// runs out, unless heartbeats extend it.
    Claimed {
        /// The request answered.
        request: u64,
        /// The job.
        job: u64,
        /// The fencing token: heartbeats, completion and failure must carry it.
        token: u64,
        /// The lease, in milliseconds from the scheduler's sending of this answer.
        lease_ms: u64,
        /// Earlier failed attempts.
        attempts: u32,
        /// The job's bytes.
        payload: &'a [u8],
    },
    /// Scheduler → worker: no job is runnable now.
    NoJob {
        /// The request answered.
        request: u64,
    },
    /// Worker → scheduler: still working; extend the lease.
    Heartbeat {
        /// The client's request id.
        request: u64,
        /// The job.
        job: u64,
        /// The claim's fencing token.
        token: u64,
    },
    /// Worker → scheduler: the job is done.
    Complete {
        /// The client's request id.
        request: u64,
        /// The job.
        job: u64,
        /// The claim's fencing token.
        token: u64,
    },
    /// Worker → scheduler: this attempt failed; retry later (or go dead).
    Fail {
        /// The client's request id.
        request: u64,
        /// The job.
        job: u64,
        /// The claim's fencing token.
        token: u64,
    },
    /// Scheduler → client: the heartbeat, completion, failure or re-queue is done (durable,
    /// for those that write). `lease_ms` is the lease left after a heartbeat, else 0.
    Done {
        /// The request answered.
        request: u64,
        /// The job.
        job: u64,
        /// The lease left, in milliseconds (heartbeats only).
        lease_ms: u64,
    },
    /// Client → scheduler: list dead jobs with ids above `after`.
    List {
        /// The client's request id.
        request: u64,
        /// Ids above this one are listed.
        after: u64,
    },
    /// Scheduler → client: dead job ids in increasing order.
    Listed {
        /// The request answered.
        request: u64,
        /// At most [`LIST_MAX`] ids.
        jobs: Vec<u64, LIST_MAX>,
        /// True when more dead jobs follow the last one listed.
        more: bool,
    },
    /// Client → scheduler: re-queue a dead job (its attempts start again).
    Retry {
        /// The client's request id.
        request: u64,
        /// The job.
        job: u64,
    },
    /// Scheduler → client: the request was refused.
    Refused {
        /// The request answered.
        request: u64,
        /// Why.
        reason: Refusal,
    },
}

/// Bytes that are not a valid message: dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Encodes `message` into `out`, returning its length, or `None` if it does not fit.
pub fn encode(message: &Message<'_>, out: &mut [u8]) -> Option<usize> {
    postcard::to_slice(message, out).ok().map(|used| used.len())
}

/// Decodes a whole message: trailing bytes, a payload over [`PAYLOAD_LEN_MAX`] or an unsorted
/// list are malformed.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, Malformed> {
    let (message, rest) = postcard::take_from_bytes::<Message<'_>>(bytes).map_err(|_| Malformed)?;
    let valid = rest.is_empty()
        && match &message {
            Message::Submit { payload, .. } | Message::Claimed { payload, .. } => {
                payload.len() <= PAYLOAD_LEN_MAX
            }
            Message::Listed { jobs, .. } => jobs.windows(2).all(|pair| pair[0] < pair[1]),
            _ => true,
        };
    if valid {
        Ok(message)
    } else {
        Err(Malformed)
    }
}
