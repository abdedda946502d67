//! The queue's client messages: one postcard enum inside a wire envelope of kind
//! [`crate::service::kind::QUEUE`]. SPEC.md section 10.1 gives the byte layout.

use serde::{Deserialize, Serialize};

/// Why a request was refused. A refused request changed nothing, except as
/// [`Refusal::Unavailable`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// The payload is larger than the configured `message_max`.
    TooLarge,
    /// The queue name is empty or longer than [`super::NAME_MAX`] bytes.
    BadName,
    /// The live-message index, the queue table or the storage is full: ack messages, retry.
    Full,
    /// The storage failed (the queue is poisoned). When this answers a write whose sync failed,
    /// the outcome is unknown: the record may have reached the medium and count after a restart.
    Unavailable,
    /// Too many replies wait to be sent; retry.
    Busy,
    /// The producer already stored a higher sequence number: this one is a retry of an older
    /// send (stored once already) or out of order.
    SequenceBehind,
    /// The delivery token is not the message's current one: it was redelivered since, or
    /// the lease expired.
    StaleDelivery,
    /// The message is not live: it was acknowledged already, or never sent.
    NotLive,
}

/// One message between a client and a queue node. Every request carries the client's
/// `request` id, echoed in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Client → node: store `payload` in `queue`. A retry (same producer and sequence) is
    /// stored once and answered with the same id.
    Send {
        /// The client's request id.
        request: u64,
        /// The queue's name.
        queue: &'a str,
        /// The producer id.
        producer: u64,
        /// The producer's sequence number, increasing.
        sequence: u64,
        /// The message.
        payload: &'a [u8],
    },
    /// Node → client: the message is durable under `id`.
    Sent {
        /// The request answered.
        request: u64,
        /// The message id.
        id: u64,
    },
    /// Client → node: lease the oldest pending message of `queue` for `lease_ms`.
    Receive {
        /// The client's request id.
        request: u64,
        /// The queue's name.
        queue: &'a str,
        /// The lease (visibility timeout) in milliseconds.
        lease_ms: u32,
    },
    /// Node → client: a leased message.
    Delivery {
        /// The request answered.
        request: u64,
        /// The message id.
        id: u64,
        /// The delivery token that acks and extends must carry.
        token: u64,
        /// How many times the message was delivered since the node started, this one included.
        attempt: u32,
        /// The message.
        payload: &'a [u8],
    },
    /// Node → client: the queue holds no pending message.
    Empty {
        /// The request answered.
        request: u64,
    },
    /// Client → node: the delivery `token` of message `id` was processed; mark it delivered.
    Ack {
        /// The client's request id.
        request: u64,
        /// The message id.
        id: u64,
        /// The delivery token.
        token: u64,
    },
    /// Node → client: the message is durably delivered.
    Acked {
        /// The request answered.
        request: u64,
        /// The message id.
        id: u64,
    },
    /// Client → node: extend the lease of delivery `token` of message `id` to `lease_ms` from now.
    Extend {
        /// The client's request id.
        request: u64,
        /// The message id.
        id: u64,
        /// The delivery token.
        token: u64,
        /// The new lease, from now, in milliseconds.
        lease_ms: u32,
    },
    /// Node → client: the lease was extended.
    Extended {
        /// The request answered.
        request: u64,
        /// The message id.
        id: u64,
    },
    /// Node → client: the request was refused.
    Refused {
        /// The request answered.
        request: u64,
        /// Why.
        reason: Refusal,
    },
    /// Client → node: report the counts.
    Stats {
        /// The client's request id.
        request: u64,
    },
    /// Node → client: the counts.
    StatsReply {
        /// The request answered.
        request: u64,
        /// Live (undelivered) messages.
        live: u32,
        /// Of those, leased.
        leased: u32,
        /// Messages stored since the node started.
        sent: u64,
        /// Messages acknowledged since the node started.
        acked: u64,
        /// Lease expiries since the node started.
        expired: u64,
    },
}

/// Bytes that are not a valid message: dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Encodes `message` into `out`, returning its length, or `None` if it does not fit.
pub fn encode(message: &Message<'_>, out: &mut [u8]) -> Option<usize> {
    postcard::to_slice(message, out).ok().map(|used| used.len())
}

/// Decodes a message; trailing bytes make it malformed.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, Malformed> {
    super::record::decode_exact(bytes).ok_or(Malformed)
}
