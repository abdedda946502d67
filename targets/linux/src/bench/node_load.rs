//! (f) Durable increments per second through one node from [`LEVELS`] concurrent UDP
//! clients, beside the raw `pwrite` + `fdatasync` rate (a) measured in turns with them; see
//! [`super::service_load`] for the node, the clients and the rounds.
//!
//! The service is the distributed counter as `bedrock node` runs it (type, store geometry and
//! lent buffer from `node.rs`), on its own `FileStorage`, with no peers. Each client keeps one
//! `Incr` outstanding and sends the next as soon as the `Value` of the previous one arrives.
//! The node answers an increment only after the `fdatasync` that made it durable, and one sync
//! covers every request that arrived in one loop iteration (group commit), so the increments
//! per sync grow with the clients.

use std::path::Path;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, Message};
use bedrock_std::FileStorage;

use super::service_load::{
    self, clients, micros, rounds, row, Actor, Answered, Bench, Level, Snapshot,
};
use super::{RawSync, Row};
use crate::error::Error;
use crate::node::{self, NodeCounter};

/// Concurrent clients of each level.
pub const LEVELS: [usize; 3] = [1, 16, 64];

const _: () = assert!(LEVELS[LEVELS.len() - 1] <= node::PENDING_MAX);

#[derive(Debug, Clone, Copy)]
struct CounterBench;

impl Bench for CounterBench {
    type Service = NodeCounter;
    type Actor = Incrementer;

    fn open(&self, dir: &Path, incarnation: u32) -> Result<NodeCounter, String> {
        let storage = FileStorage::open(dir, node::store_options(node::COUNTER_CAPACITY))
            .map_err(|error| format!("cannot open {}: {error}", dir.display()))?;
        let config = dcounter::Config::new(NodeId(1), incarnation);
        node::open_node_counter(storage, config, &[])
            .map(|(counter, _)| counter)
            .map_err(|error| format!("cannot open the benchmark counter: {error}"))
    }

    fn snapshot(counter: &NodeCounter) -> Snapshot {
        let stats = counter.stats();
        Snapshot {
            syncs: stats.syncs,
            writes: stats.increments,
            live: 0,
        }
    }

    fn close(counter: NodeCounter) -> Result<(), String> {
        counter.close().map_err(|error| error.to_string())
    }

    fn actor(&self, _index: usize, _count: usize) -> Incrementer {
        Incrementer { request: 0 }
    }

    fn exhausted(&self, _snapshot: &Snapshot, _clients: usize) -> bool {
        false
    }
}

/// A client that increments by one, over and over.
#[derive(Debug)]
pub struct Incrementer {
    request: u64,
}

impl Actor for Incrementer {
    fn restart(&mut self) {}

    fn begin(&mut self, request: u64) {
        self.request = request;
    }

    fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let message = Message::Incr {
            request: self.request,
            by: 1,
        };
        dcounter::encode(&message, out)
    }

    fn answer(&mut self, payload: &[u8]) -> Option<Answered> {
        let (request, answered) = match dcounter::decode(payload).ok()?.0 {
            Message::Value { request, .. } => (request, Answered::Done),
            Message::Refused { request, .. } => (request, Answered::Refused),
            _ => return None,
        };
        (request == self.request).then_some(answered)
    }
}

/// (f): one level per entry of [`LEVELS`], each for `budget`.
pub fn figures(scratch: &Path, budget: Duration) -> Result<Vec<Level>, Error> {
    let mut raw = RawSync::new(scratch)?;
    LEVELS
        .into_iter()
        .map(|count| {
            service_load::level(
                &CounterBench,
                "counter",
                scratch,
                count,
                Answered::Done,
                budget,
                &mut raw,
            )
        })
        .collect()
}

pub fn rows(levels: &[Level]) -> Vec<Row> {
    levels
        .iter()
        .map(|level| {
            let plural = if level.clients == 1 { "" } else { "s" };
            row(
                format!("f. node, {} UDP client{plural}", level.clients),
                format!("{:.0} incr/s", level.per_second(Answered::Done)),
                level,
            )
        })
        .collect()
}

pub fn notes(levels: &[Level]) -> Vec<String> {
    let mut notes = vec![format!(
        "f: one node on 127.0.0.1 (event loop thread, encrypted envelopes, the distributed \
         counter as `bedrock node` runs it on an {} MiB FileStorage of 64 KiB segments); each \
         client keeps one Incr outstanding, answered after its fdatasync; every round starts a \
         fresh node; (a) after each window for a third of it",
        node::COUNTER_CAPACITY >> 20
    )];
    for level in levels {
        notes.push(format!(
            "f: {}: {:.0} incr/s in {:.0} syncs/s, {:.1} increments per sync; latency p50 {:.0} \
             us, p99 {:.0} us; {} refused, {} sent again; {}; (a) in its turns {:.0} ops/s; \
             per-round ratios {}",
            clients(level.clients),
            level.per_second(Answered::Done),
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
    notes
}
