//! The lock server's messages: postcard, inside a wire envelope of kind
//! [`crate::service::kind::LOCK`]. SPEC.md section 13.1 gives the byte layout.
//!
//! Every request carries the client's `request` id, echoed in the answer. Times are durations
//! (milliseconds), never instants: the server's monotonic clock means nothing to a client.

use serde::{Deserialize, Serialize};

use super::record::NAME_LEN_MAX;

/// Why a request was refused. Nothing changed, except as [`Refusal::Unavailable`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// Another client holds the lock, or its last lease has not ended by the server's clock
    /// stretched by the drift bound (or the lock-delay after a restart); retry later.
    Held,
    /// The name is empty, or the ttl is 0 or above the server's maximum.
    Invalid,
    /// The token is not the lock's current one, or (renewals) the lease has ended.
    StaleToken,
    /// The server holds `LOCKS` locks already; retry later.
    Full,
    /// Too many answers wait for the next sync; retry.
    Busy,
    /// The storage failed (the server is poisoned) or is full. When this answers a request
    /// whose sync failed, the outcome is unknown: the record may have reached the medium.
    Unavailable,
}

/// One message between a client and the lock server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Client → server: grant me lock `name` for `ttl_ms`.
    Acquire {
        /// The client's request id.
        request: u64,
        /// The lock's name, 1 to [`NAME_LEN_MAX`] bytes.
        name: &'a [u8],
        /// The lease asked for, at most the server's maximum.
        ttl_ms: u64,
    },
    /// Server → client: the grant is durable; the lock is yours under `token`.
    Granted {
        /// The request answered.
        request: u64,
        /// The fencing token: every use of the protected resource must carry it.
        token: u64,
        /// The lease, in milliseconds from the server's sending of this answer.
        lease_ms: u64,
    },
    /// Client → server: extend my lease.
    Renew {
        /// The client's request id.
        request: u64,
        /// The lock's name.
        name: &'a [u8],
        /// The grant's token.
        token: u64,
        /// The lease asked for from now, at most the server's maximum.
        ttl_ms: u64,
    },
    /// Server → client: the lease was extended.
    Renewed {
        /// The request answered.
        request: u64,
        /// The lease left, in milliseconds.
        lease_ms: u64,
    },
    /// Client → server: I am done with the lock.
    Release {
        /// The client's request id.
        request: u64,
        /// The lock's name.
        name: &'a [u8],
        /// The grant's token.
        token: u64,
    },
    /// Server → client: the release is durable.
    Released {
        /// The request answered.
        request: u64,
    },
    /// Client → server: who holds lock `name`?
    Status {
        /// The client's request id.
        request: u64,
        /// The lock's name.
        name: &'a [u8],
    },
    /// Server → client: the lock's state.
    State {
        /// The request answered.
        request: u64,
        /// The holder, while its lease lasts.
        holder: Option<u32>,
        /// The latest grant's token (0 when the server holds none).
        token: u64,
        /// The lease left, in milliseconds (0 when not held).
        lease_ms: u64,
        /// How long until another client may be granted the lock, in milliseconds.
        free_ms: u64,
    },
    /// Server → client: the request was refused.
    Refused {
        /// The request answered.
        request: u64,
        /// Why.
        reason: Refusal,
        /// When the reason is [`Refusal::Held`]: how long until the lock may be granted, in
        /// milliseconds; else 0.
        retry_ms: u64,
    },
    /// Client → server: as `Acquire`, under a fencing token of at least `floor`; from the
    /// current holder with a lower token, a grant again under such a token (quorum locks).
    AcquireAtLeast {
        /// The client's request id.
        request: u64,
        /// The lock's name, 1 to [`NAME_LEN_MAX`] bytes.
        name: &'a [u8],
        /// The lease asked for, at most the server's maximum.
        ttl_ms: u64,
        /// The lowest token the grant may carry, at most [`super::FLOOR_MAX`].
        floor: u64,
    },
}

/// Bytes that are not a valid message: dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Encodes `message` into `out`, returning its length, or `None` if it does not fit.
pub fn encode(message: &Message<'_>, out: &mut [u8]) -> Option<usize> {
    postcard::to_slice(message, out).ok().map(|used| used.len())
}

/// Decodes a whole message: trailing bytes or a name over [`NAME_LEN_MAX`] bytes are
/// malformed.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, Malformed> {
    let (message, rest) = postcard::take_from_bytes::<Message<'_>>(bytes).map_err(|_| Malformed)?;
    let name_fits = match message {
        Message::Acquire { name, .. }
        | Message::AcquireAtLeast { name, .. }
        | Message::Renew { name, .. }
        | Message::Release { name, .. }
        | Message::Status { name, .. } => name.len() <= NAME_LEN_MAX,
        _ => true,
    };
    if rest.is_empty() && name_fits {
        Ok(message)
    } else {
        Err(Malformed)
    }
}
