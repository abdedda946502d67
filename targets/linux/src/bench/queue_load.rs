//! (g) Durable sends and acknowledgements per second through one queue node, from 1, 16 and 64
//! concurrent clients, beside the raw `pwrite` + `fdatasync` rate (a) measured in turns with
//! them; see [`super::service_load`] for the node, the clients and the rounds.
//!
//! The service is `bedrock::queue::Queue` on its own `FileStorage` (as `bedrock node` keeps the
//! queue in `DATA/queue`), with capacities that mirror the node's (kept in step by hand): an 8 MiB
//! store of 64 KiB segments, [`MESSAGES`] live messages, [`QUEUES`] queue names, [`PRODUCERS`]
//! producers and [`REPLIES`] waiting replies. Messages carry [`PAYLOAD`] bytes, all in one queue.
//!
//! - Sends: each client is a producer with its own id keeping one `Send` outstanding (the next
//!   sequence number as soon as `Sent` arrives; a retry repeats the request id and the
//!   sequence). Every round starts with an empty queue, and its window ends when the queue
//!   holds `MESSAGES - 2 C` messages, before a send could be refused as full.
//! - Acks: each client is a consumer: `Receive` (a lease of 30 s), then `Ack` of what it got,
//!   then `Receive` again. Every round starts with a queue of `MESSAGES` messages (sent in
//!   process, then committed), and its window ends when fewer than `2 C` are left.
//!
//! A `Send` and an `Ack` are answered after the sync that made them durable; a `Receive`
//! writes nothing and is answered after the iteration's commit (no sync when nothing else is
//! staged).

use std::path::Path;
use std::time::Duration;

use bedrock::net::MTU_DEFAULT;
use bedrock::queue::{self, Message};
use bedrock::service::Service;
use bedrock::time::Instant;
use bedrock_std::{FileOptions, FileStorage};

use super::service_load::{
    self, clients, micros, rounds, row, Actor, Answered, Bench, Level, Snapshot,
};
use super::{RawSync, Row};
use crate::error::Error;
use crate::node;

/// Concurrent clients of each level.
pub const LEVELS: [usize; 3] = [1, 16, 64];
/// Bytes per message.
pub const PAYLOAD: usize = 100;
/// The queue every message goes to.
const QUEUE: &str = "bench";
/// Lease a consumer asks for: long enough that no lease expires in a window.
const LEASE_MS: u32 = 30_000;

/// The node's capacities: the benchmark runs `bedrock node`'s own queue.
pub const MESSAGES: usize = node::QUEUE_MESSAGES;
pub const QUEUES: usize = node::QUEUE_NAMES;
pub const PRODUCERS: usize = node::QUEUE_PRODUCERS;
pub const REPLIES: usize = node::QUEUE_REPLIES;
pub const STORE_CAPACITY: u64 = node::QUEUE_CAPACITY;
/// Messages sent per commit when a store is filled in process.
const FILL_BATCH: usize = 256;

const _: () = assert!(LEVELS[LEVELS.len() - 1] <= REPLIES);
const _: () = assert!(LEVELS[LEVELS.len() - 1] <= PRODUCERS);
const _: () = assert!(4 * LEVELS[LEVELS.len() - 1] < MESSAGES);

pub use node::NodeQueue;

/// The options of the queue's store.
pub fn options() -> FileOptions {
    node::store_options(STORE_CAPACITY)
}

/// The payload of message `sequence` of `producer`.
pub fn payload(producer: u64, sequence: u64) -> [u8; PAYLOAD] {
    let mut bytes = [0x5Au8; PAYLOAD];
    bytes[..8].copy_from_slice(&producer.to_le_bytes());
    bytes[8..16].copy_from_slice(&sequence.to_le_bytes());
    bytes
}

/// Which half of (g).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Send,
    Ack,
}

#[derive(Debug, Clone, Copy)]
struct QueueBench {
    side: Side,
}

impl Bench for QueueBench {
    type Service = NodeQueue;
    type Actor = Client;

    fn open(&self, dir: &Path, incarnation: u32) -> Result<NodeQueue, String> {
        let storage = FileStorage::open(dir, options())
            .map_err(|error| format!("cannot open {}: {error}", dir.display()))?;
        let config = node::queue_config(incarnation, MTU_DEFAULT);
        let (mut queue, _) = node::open_node_queue(storage, config)
            .map_err(|error| format!("cannot open the benchmark queue: {error}"))?;
        if self.side == Side::Ack {
            // Producer 0 is no client's: the clients of the send side are 1 to C.
            for sequence in 1..=MESSAGES as u64 {
                queue
                    .send(Instant::ZERO, QUEUE, 0, sequence, &payload(0, sequence))
                    .map_err(|error| format!("cannot fill the benchmark queue: {error}"))?;
                if sequence % FILL_BATCH as u64 == 0 {
                    queue
                        .commit()
                        .map_err(|error| format!("cannot fill the benchmark queue: {error}"))?;
                }
            }
            queue
                .commit()
                .map_err(|error| format!("cannot fill the benchmark queue: {error}"))?;
        }
        Ok(queue)
    }

    fn snapshot(queue: &NodeQueue) -> Snapshot {
        let stats = queue.stats();
        Snapshot {
            syncs: stats.syncs,
            // One side sends, the other acks: what the figure counts is the sum's growth.
            writes: stats.sent + stats.acked,
            live: u64::from(stats.live),
        }
    }

    fn close(queue: NodeQueue) -> Result<(), String> {
        queue.close().map_err(|error| error.to_string())
    }

    fn actor(&self, index: usize, _count: usize) -> Client {
        Client {
            side: self.side,
            producer: index as u64 + 1,
            sequence: 0,
            request: 0,
            current: Request::Receive,
            next_ack: None,
        }
    }

    fn exhausted(&self, snapshot: &Snapshot, clients: usize) -> bool {
        match self.side {
            Side::Send => snapshot.live + 2 * clients as u64 >= MESSAGES as u64,
            Side::Ack => snapshot.live < 2 * clients as u64,
        }
    }
}

/// A request a client has outstanding.
#[derive(Debug, Clone, Copy)]
enum Request {
    Send,
    Receive,
    Ack { id: u64, token: u64 },
}

/// A producer (send side) or a consumer (ack side).
#[derive(Debug)]
pub struct Client {
    side: Side,
    producer: u64,
    sequence: u64,
    request: u64,
    current: Request,
    /// The delivery to acknowledge with the next request.
    next_ack: Option<(u64, u64)>,
}

impl Actor for Client {
    fn restart(&mut self) {
        // A delivery of the previous node means nothing to the next one.
        self.next_ack = None;
    }

    fn begin(&mut self, request: u64) {
        self.request = request;
        self.current = match self.side {
            Side::Send => {
                self.sequence += 1;
                Request::Send
            }
            Side::Ack => match self.next_ack.take() {
                Some((id, token)) => Request::Ack { id, token },
                None => Request::Receive,
            },
        };
    }

    fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let request = self.request;
        let bytes;
        let message = match self.current {
            Request::Send => {
                bytes = payload(self.producer, self.sequence);
                Message::Send {
                    request,
                    queue: QUEUE,
                    producer: self.producer,
                    sequence: self.sequence,
                    payload: &bytes,
                }
            }
            Request::Receive => Message::Receive {
                request,
                queue: QUEUE,
                lease_ms: LEASE_MS,
            },
            Request::Ack { id, token } => Message::Ack { request, id, token },
        };
        queue::encode(&message, out)
    }

    fn answer(&mut self, payload: &[u8]) -> Option<Answered> {
        let message = queue::decode(payload).ok()?;
        let (request, answered) = match message {
            Message::Sent { request, .. } => (request, Answered::Sent),
            Message::Delivery {
                request, id, token, ..
            } => {
                if request == self.request {
                    self.next_ack = Some((id, token));
                }
                (request, Answered::Leased)
            }
            Message::Empty { request } => (request, Answered::Nothing),
            Message::Acked { request, .. } => (request, Answered::Done),
            Message::Refused { request, .. } => (request, Answered::Refused),
            _ => return None,
        };
        (request == self.request).then_some(answered)
    }
}

/// Both halves of (g): sends, then acks, for every level of [`LEVELS`], `budget` each.
#[derive(Debug)]
pub struct Figures {
    pub sends: Vec<Level>,
    pub acks: Vec<Level>,
}

pub fn figures(scratch: &Path, budget: Duration, raw: &mut RawSync) -> Result<Figures, Error> {
    let mut sends = Vec::new();
    let mut acks = Vec::new();
    for clients in LEVELS {
        let bench = QueueBench { side: Side::Send };
        let name = format!("queue-send-{clients}");
        sends.push(service_load::level(
            &bench,
            &name,
            scratch,
            clients,
            Answered::Sent,
            budget,
            raw,
        )?);
    }
    for clients in LEVELS {
        let bench = QueueBench { side: Side::Ack };
        let name = format!("queue-ack-{clients}");
        acks.push(service_load::level(
            &bench,
            &name,
            scratch,
            clients,
            Answered::Done,
            budget,
            raw,
        )?);
    }
    Ok(Figures { sends, acks })
}

impl Figures {
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for level in &self.sends {
            rows.push(row(
                format!("g. queue send, {}", clients(level.clients)),
                format!("{:.0} msg/s", level.per_second(Answered::Sent)),
                level,
            ));
        }
        for level in &self.acks {
            rows.push(row(
                format!("g. queue receive+ack, {}", clients(level.clients)),
                format!("{:.0} ack/s", level.per_second(Answered::Done)),
                level,
            ));
        }
        rows
    }

    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![
            format!(
                "g: one node on 127.0.0.1 (event loop thread, encrypted envelopes, \
                 bedrock::queue::Queue as `bedrock node` runs it: an {} MiB FileStorage of {} \
                 KiB segments; {MESSAGES} messages, {PRODUCERS} producers, {REPLIES} replies); \
                 messages of {PAYLOAD} bytes in one queue; one client thread, each client a \
                 socket keeping one request outstanding, a write answered after its fdatasync",
                STORE_CAPACITY >> 20,
                node::ERASE_SIZE >> 10
            ),
            format!(
                "g: every round starts a fresh node: sends into an empty queue until it holds \
                 {MESSAGES} - 2C messages; receive+ack from a queue of {MESSAGES} (filled in \
                 process, {FILL_BATCH} per commit) until fewer than 2C are left, or the time \
                 is up; (a) after each window for a third of it; at least {} rounds, until \
                 the windows add up to 3/4 of --seconds; ratios are medians of per-round ratios",
                service_load::ROUNDS_MIN
            ),
        ];
        for level in &self.sends {
            notes.push(format!(
                "g: send, {:>2} clients: {:.0} msg/s in {:.0} syncs/s, {:.1} messages per sync; \
                 latency p50 {:.0} us, p99 {:.0} us; {} refused, {} sent again; {}; (a) in \
                 its turns {:.0} ops/s; per-round ratios {}",
                level.clients,
                level.per_second(Answered::Sent),
                level.syncs_per_second(),
                level.writes_per_sync(),
                micros(level.latency(50)),
                micros(level.latency(99)),
                level.count(Answered::Refused),
                level.retries,
                rounds(level),
                level.raw.per_second(),
                level.ratio_list()
            ));
        }
        for level in &self.acks {
            notes.push(format!(
                "g: receive+ack, {:>2} clients: {:.0} receives/s and {:.0} acks/s in {:.0} \
                 syncs/s, {:.1} acks per sync; {} empty, {} refused, {} sent again; latency \
                 (receive or ack) p50 {:.0} us, p99 {:.0} us; {}; (a) in its turns {:.0} \
                 ops/s; per-round ratios (acks) {}",
                level.clients,
                level.per_second(Answered::Leased),
                level.per_second(Answered::Done),
                level.syncs_per_second(),
                level.writes_per_sync(),
                level.count(Answered::Nothing),
                level.count(Answered::Refused),
                level.retries,
                micros(level.latency(50)),
                micros(level.latency(99)),
                rounds(level),
                level.raw.per_second(),
                level.ratio_list()
            ));
        }
        notes
    }
}
