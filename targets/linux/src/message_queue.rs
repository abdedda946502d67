//! `bedrock queue send|recv|ack|extend|stats --node ADDR`: the client side of a node's message
//! queue (`bedrock::queue`, SPEC.md section 10).
//!
//! # Output
//!
//! - `send` prints the message id once the message is durable on the node.
//! - `recv` prints `RECEIPT MESSAGE` and a newline, where `RECEIPT` is `ID:TOKEN`: the message
//!   id and the delivery token of this lease, both decimal. The message follows a single space,
//!   byte for byte as it was sent (so a message holding a newline spans several lines). An
//!   empty queue prints nothing (exit status 0).
//! - `ack` and `extend` print nothing on success.
//! - `stats` prints `live N leased N sent N acked N expired N`.
//!
//! # Receipts
//!
//! Acknowledging needs the delivery, not just the message: a receipt names one lease of one
//! message (like an SQS receipt handle). When a lease ends before its ack, the message is
//! delivered again under a new token, and the node refuses the old receipt as stale, so a slow
//! consumer cannot acknowledge a message another consumer is now processing. Tokens carry the
//! node's incarnation: receipts from before a node restart are stale too (every unacknowledged
//! message is pending again after a restart).
//!
//! # Producers
//!
//! A send carries a producer id and a sequence number; the node stores a retried (producer,
//! sequence) once and answers it with the first id. `send` takes a random producer id and
//! sequence 1 unless `--producer ID --sequence N` are given: a script that retries a send after
//! a timeout or a crash passes the same pair again, and counts sequences up for new messages.
//!
//! # Retries and what is not guaranteed
//!
//! Every request is retried with the same request id until answered (3 s at most). A retried
//! `recv` whose first answer was lost gets the same lease again (the node remembers its last 32
//! leases by client and request). An `ack` whose first answer was lost is refused
//! on its retry as "not in the queue": the message is acknowledged either way.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use bedrock::queue::{self, Message, Refusal, NAME_MAX};
use bedrock::service::kind;
use bedrock_std::client::{self, Client, ClientError};

use crate::cluster::{client_error, client_for, Access};
use crate::error::{fail, Error};
use crate::node::{MESSAGE_MAX, QUEUE_LEASE_MAX};
use crate::output::{self, stdout_error};

/// One delivery of a message: what `recv` prints and `ack` and `extend` take, `ID:TOKEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub id: u64,
    /// The delivery token.
    pub token: u64,
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id, self.token)
    }
}

impl FromStr for Receipt {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || "expected a receipt ID:TOKEN as printed by `bedrock queue recv`".to_string();
        let (id, token) = text.split_once(':').ok_or_else(usage)?;
        let number = |field: &str| {
            let digits = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| field.parse::<u64>().ok()).flatten()
        };
        Ok(Self {
            id: number(id).ok_or_else(usage)?,
            token: number(token).ok_or_else(usage)?,
        })
    }
}

/// Parses a receipt for clap.
pub fn parse_receipt(text: &str) -> Result<Receipt, String> {
    text.parse()
}

/// Checks a queue name for clap: 1 to 32 bytes.
pub fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > NAME_MAX {
        return Err(format!("a queue name is 1 to {NAME_MAX} bytes"));
    }
    Ok(text.to_string())
}

/// Parses a lease for clap: a duration (see `parse_duration`), 1 ms to 10 minutes.
pub fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = crate::parse_duration(text)?;
    if lease < Duration::from_millis(1) || lease > QUEUE_LEASE_MAX {
        return Err("a lease is from 1ms to 10m".to_string());
    }
    Ok(lease)
}

/// A reply, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Sent(u64),
    Delivery {
        id: u64,
        token: u64,
        payload: Vec<u8>,
    },
    Empty,
    Acked,
    Extended,
    Refused(Refusal),
    Stats {
        live: u32,
        leased: u32,
        sent: u64,
        acked: u64,
        expired: u64,
    },
}

/// The request id a client message carries.
fn request_of(message: &Message<'_>) -> u64 {
    match *message {
        Message::Send { request, .. }
        | Message::Sent { request, .. }
        | Message::Receive { request, .. }
        | Message::Delivery { request, .. }
        | Message::Empty { request }
        | Message::Ack { request, .. }
        | Message::Acked { request, .. }
        | Message::Extend { request, .. }
        | Message::Extended { request, .. }
        | Message::Refused { request, .. }
        | Message::Stats { request }
        | Message::StatsReply { request, .. } => request,
    }
}

/// The reply to request `id` in `payload`, if it is one.
fn decode_reply(payload: &[u8], id: u64) -> Option<Reply> {
    let message = queue::decode(payload).ok()?;
    if request_of(&message) != id {
        return None;
    }
    Some(match message {
        Message::Sent { id, .. } => Reply::Sent(id),
        Message::Delivery {
            id, token, payload, ..
        } => Reply::Delivery {
            id,
            token,
            payload: payload.to_vec(),
        },
        Message::Empty { .. } => Reply::Empty,
        Message::Acked { .. } => Reply::Acked,
        Message::Extended { .. } => Reply::Extended,
        Message::Refused { reason, .. } => Reply::Refused(reason),
        Message::StatsReply {
            live,
            leased,
            sent,
            acked,
            expired,
            ..
        } => Reply::Stats {
            live,
            leased,
            sent,
            acked,
            expired,
        },
        _ => return None,
    })
}

/// A fresh request id.
fn request_id() -> Result<u64, Error> {
    client::random_u64().map_err(|error| fail(format!("no randomness: {error}")))
}

/// Sends `message` (whose request id is fresh) and waits for its reply.
fn request(client: &mut Client, message: &Message<'_>) -> Result<Reply, Error> {
    let id = request_of(message);
    client
        .request(
            kind::QUEUE,
            |area| queue::encode(message, area),
            |payload| decode_reply(payload, id),
        )
        .map_err(|error| match error {
            ClientError::TooLarge => fail(format!(
                "the request does not fit one datagram (messages are at most {MESSAGE_MAX} bytes)"
            )),
            error => client_error(error),
        })
}

/// What a refusal means, in words.
fn refusal_sentence(reason: Refusal, what: &str) -> String {
    match reason {
        Refusal::TooLarge => format!(
            "the node refused the message as too large (at most {MESSAGE_MAX} bytes at the \
             default MTU); nothing was stored"
        ),
        Refusal::BadName => {
            format!("the node refused the queue name (1 to {NAME_MAX} bytes); nothing was stored")
        }
        Refusal::Full => "the node's queue is full (too many live messages or queues, or its \
                          storage is nearly full: consumers must acknowledge messages); nothing \
                          was stored"
            .to_string(),
        Refusal::Unavailable => format!(
            "the node's queue storage failed; the outcome of this {what} is unknown; the node \
             must be restarted"
        ),
        Refusal::Busy => {
            format!("the node is busy (too many replies waiting); {what} not done; try again")
        }
        Refusal::SequenceBehind => "the producer already stored a higher sequence number: this \
                                    send is a retry of an older one (stored already) or out of \
                                    order; nothing was stored"
            .to_string(),
        Refusal::StaleDelivery => "the receipt is stale: its lease ended or the message was \
                                   delivered again since (it is, or will be, processed under the \
                                   newer receipt); nothing changed"
            .to_string(),
        Refusal::NotLive => "the message is not in the queue: acknowledged already (perhaps by \
                             an earlier attempt of this request whose answer was lost), or never \
                             sent; nothing changed"
            .to_string(),
        _ => format!("the node refused the {what}"),
    }
}

fn unexpected(reply: &Reply) -> Error {
    fail(format!("the node gave an unexpected answer: {reply:?}"))
}

/// `bedrock queue send`: prints the message id once it is durable.
pub fn send(
    node: SocketAddr,
    access: &Access,
    queue: &str,
    message: &OsStr,
    identity: Option<(u64, u64)>,
) -> Result<ExitCode, Error> {
    let payload = message.as_bytes();
    if payload.len() > MESSAGE_MAX as usize {
        return Err(fail(format!(
            "the message of {} bytes is too large (at most {MESSAGE_MAX}); nothing was sent",
            payload.len()
        )));
    }
    let (producer, sequence) = match identity {
        Some(identity) => identity,
        None => (
            client::random_u64().map_err(|error| fail(format!("no randomness: {error}")))?,
            1,
        ),
    };
    let mut client = client_for(node, access)?;
    let request_message = Message::Send {
        request: request_id()?,
        queue,
        producer,
        sequence,
        payload,
    };
    match request(&mut client, &request_message)? {
        Reply::Sent(id) => {
            output::line(id)?;
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused(reason) => Err(fail(refusal_sentence(reason, "send"))),
        reply => Err(unexpected(&reply)),
    }
}

/// Milliseconds of a lease, as the message carries them.
fn lease_ms(lease: Duration) -> u32 {
    u32::try_from(lease.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// `bedrock queue recv`: leases the oldest pending message and prints `RECEIPT MESSAGE`, or
/// nothing when the queue is empty.
pub fn recv(
    node: SocketAddr,
    access: &Access,
    queue: &str,
    lease: Duration,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request_message = Message::Receive {
        request: request_id()?,
        queue,
        lease_ms: lease_ms(lease),
    };
    match request(&mut client, &request_message)? {
        Reply::Delivery { id, token, payload } => {
            let receipt = Receipt { id, token };
            let mut stdout = io::stdout().lock();
            write!(stdout, "{receipt} ")
                .and_then(|()| stdout.write_all(&payload))
                .and_then(|()| stdout.write_all(b"\n"))
                .and_then(|()| stdout.flush())
                .map_err(stdout_error)?;
            Ok(ExitCode::SUCCESS)
        }
        Reply::Empty => Ok(ExitCode::SUCCESS),
        Reply::Refused(reason) => Err(fail(refusal_sentence(reason, "receive"))),
        reply => Err(unexpected(&reply)),
    }
}

/// `bedrock queue ack`: acknowledges one delivery.
pub fn ack(node: SocketAddr, access: &Access, receipt: Receipt) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request_message = Message::Ack {
        request: request_id()?,
        id: receipt.id,
        token: receipt.token,
    };
    match request(&mut client, &request_message)? {
        Reply::Acked => Ok(ExitCode::SUCCESS),
        Reply::Refused(reason) => Err(fail(format!(
            "ack of {receipt} refused: {}",
            refusal_sentence(reason, "ack")
        ))),
        reply => Err(unexpected(&reply)),
    }
}

/// `bedrock queue extend`: lengthens one delivery's lease.
pub fn extend(
    node: SocketAddr,
    access: &Access,
    receipt: Receipt,
    lease: Duration,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request_message = Message::Extend {
        request: request_id()?,
        id: receipt.id,
        token: receipt.token,
        lease_ms: lease_ms(lease),
    };
    match request(&mut client, &request_message)? {
        Reply::Extended => Ok(ExitCode::SUCCESS),
        Reply::Refused(reason) => Err(fail(format!(
            "extend of {receipt} refused: {}",
            refusal_sentence(reason, "extend")
        ))),
        reply => Err(unexpected(&reply)),
    }
}

/// `bedrock queue stats`: the node's queue counts.
pub fn stats(node: SocketAddr, access: &Access) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request_message = Message::Stats {
        request: request_id()?,
    };
    match request(&mut client, &request_message)? {
        Reply::Stats {
            live,
            leased,
            sent,
            acked,
            expired,
        } => {
            output::line(format_args!(
                "live {live} leased {leased} sent {sent} acked {acked} expired {expired}"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused(reason) => Err(fail(refusal_sentence(reason, "stats request"))),
        reply => Err(unexpected(&reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_is_two_decimal_numbers_joined_by_a_colon() {
        let receipt: Receipt = "17:4294967299".parse().unwrap();
        assert_eq!(
            receipt,
            Receipt {
                id: 17,
                token: 4_294_967_299
            }
        );
        assert_eq!(receipt.to_string(), "17:4294967299");
        let max = format!("{}:{}", u64::MAX, u64::MAX);
        assert_eq!(max.parse::<Receipt>().unwrap().to_string(), max);
        for bad in [
            "",
            "17",
            "17:",
            ":5",
            "17:5:1",
            "a:5",
            "17:b",
            "+1:5",
            "1:-5",
            " 1:5",
            "1:5 ",
            "18446744073709551616:1",
        ] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_leases_are_checked() {
        assert!(parse_name("").is_err());
        assert_eq!(parse_name("jobs").unwrap(), "jobs");
        assert!(parse_name(&"x".repeat(32)).is_ok());
        assert!(parse_name(&"x".repeat(33)).is_err());
        assert_eq!(parse_lease("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_lease("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_lease("11m").is_err());
        assert!(parse_lease("0s").is_err());
    }

    #[test]
    fn replies_to_other_requests_are_ignored() {
        let mut buffer = [0u8; 64];
        let len = queue::encode(&Message::Sent { request: 5, id: 9 }, &mut buffer).unwrap();
        assert_eq!(decode_reply(&buffer[..len], 5), Some(Reply::Sent(9)));
        assert_eq!(decode_reply(&buffer[..len], 6), None);
        assert_eq!(decode_reply(&[0xff, 0xff], 5), None);
    }
}
