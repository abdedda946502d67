//! The replay table: for each of up to `SENDERS` senders, its incarnation, the highest counter
//! accepted and a bitmap of the [`REPLAY_WINDOW`] counters at and below it.
//!
//! Guarantees, for a sender whose record stays in the table: an envelope (incarnation, counter)
//! is accepted at most once; an envelope of an incarnation older than the newest accepted, or a
//! counter [`REPLAY_WINDOW`] or more below the highest accepted, is refused; within the window,
//! envelopes are accepted in any order.
//!
//! Not guaranteed: once a record is evicted (the table is full and a new sender arrives: the
//! least recently accepted record goes) or the receiver restarts with an empty table, the sender
//! is unknown again, and envelopes it sent before can be replayed and accepted once more (in
//! ascending counter order, every envelope of its newest incarnation). Services must therefore be
//! idempotent; the table narrows replays, it does not make them impossible.

use crate::crdt::NodeId;

/// Counters accepted out of order: up to this many below the highest accepted.
pub const REPLAY_WINDOW: u32 = 64;

const _: () = assert!(REPLAY_WINDOW == u64::BITS);

#[derive(Debug, Clone, Copy)]
struct Record {
    node: NodeId,
    incarnation: u32,
    highest: u32,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u64,
    /// The table's acceptance count when this record last accepted an envelope.
    accepted_at: u64,
}

impl Record {
    fn new(node: NodeId, incarnation: u32, counter: u32) -> Self {
        Self {
            node,
            incarnation,
            highest: counter,
            seen: 1,
            accepted_at: 0,
        }
    }

    /// Accepts `(incarnation, counter)` unless it is a replay; returns whether it accepted.
    fn accept(&mut self, incarnation: u32, counter: u32) -> bool {
        if incarnation < self.incarnation {
            return false;
        }
        if incarnation > self.incarnation {
            *self = Self::new(self.node, incarnation, counter);
            return true;
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return true;
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// The replay state of up to `SENDERS` senders.
#[derive(Debug, Clone)]
pub(crate) struct ReplayTable<const SENDERS: usize> {
    records: heapless::Vec<Record, SENDERS>,
    accepted: u64,
    evictions: u64,
}

impl<const SENDERS: usize> ReplayTable<SENDERS> {
    pub(crate) const fn new() -> Self {
        const { assert!(SENDERS >= 1, "the replay table holds at least one sender") };
        Self {
            records: heapless::Vec::new(),
            accepted: 0,
            evictions: 0,
        }
    }

    /// Records `(incarnation, counter)` from `node` and returns true, or returns false for a
    /// replay (nothing changes then). Call only for an envelope whose tag verified.
    pub(crate) fn accept(&mut self, node: NodeId, incarnation: u32, counter: u32) -> bool {
        self.accepted += 1;
        let accepted = self.accepted;
        let index = match self.records.iter().position(|record| record.node == node) {
            Some(index) => {
                if !self.records[index].accept(incarnation, counter) {
                    return false;
                }
                index
            }
            None => self.insert(Record::new(node, incarnation, counter)),
        };
        self.records[index].accepted_at = accepted;
        true
    }

    /// Inserts a record, evicting the least recently accepted one if the table is full.
    fn insert(&mut self, record: Record) -> usize {
        if let Err(record) = self.records.push(record) {
            let oldest = (0..self.records.len())
                .min_by_key(|&index| self.records[index].accepted_at)
                .unwrap_or(0);
            self.records[oldest] = record;
            self.evictions += 1;
            return oldest;
        }
        self.records.len() - 1
    }

    /// How many records were evicted to make room for a new sender.
    pub(crate) const fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE: NodeId = NodeId(7);

    #[test]
    fn a_counter_is_accepted_once_and_out_of_order_within_the_window() {
        let mut table = ReplayTable::<2>::new();
        assert!(table.accept(NODE, 1, 100));
        assert!(!table.accept(NODE, 1, 100));
        assert!(table.accept(NODE, 1, 102));
        assert!(table.accept(NODE, 1, 101));
        assert!(!table.accept(NODE, 1, 101));
        assert!(table.accept(NODE, 1, 102 - (REPLAY_WINDOW - 1)));
        assert!(!table.accept(NODE, 1, 102 - REPLAY_WINDOW));
        assert!(table.accept(NODE, 1, 102 + REPLAY_WINDOW + 5));
        assert!(!table.accept(NODE, 1, 102), "slid out of the window");
    }

    #[test]
    fn an_older_incarnation_is_refused_and_a_newer_one_resets_the_window() {
        let mut table = ReplayTable::<2>::new();
        assert!(table.accept(NODE, 5, 1000));
        assert!(!table.accept(NODE, 4, 2000));
        assert!(table.accept(NODE, 6, 0));
        assert!(!table.accept(NODE, 5, 1001));
        assert!(!table.accept(NODE, 6, 0));
        assert!(table.accept(NODE, 6, 1));
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_accepted_sender() {
        let mut table = ReplayTable::<2>::new();
        assert!(table.accept(NodeId(1), 1, 0));
        assert!(table.accept(NodeId(2), 1, 0));
        assert!(table.accept(NodeId(1), 1, 1));
        assert!(table.accept(NodeId(3), 1, 0));
        assert_eq!(table.evictions(), 1);
        assert!(!table.accept(NodeId(1), 1, 1), "node 1 was kept");
        // Node 2 was forgotten: its envelope is accepted again. This is the documented limit.
        assert!(table.accept(NodeId(2), 1, 0));
    }

    proptest! {
        #[test]
        fn the_window_accepts_exactly_the_unseen_recent_counters(
            counters in proptest::collection::vec(0u32..300, 1..200),
        ) {
            let mut table = ReplayTable::<1>::new();
            let mut seen = [false; 300];
            let mut highest: Option<u32> = None;
            for counter in counters {
                let fresh = !seen[counter as usize]
                    && highest.is_none_or(|highest| counter + REPLAY_WINDOW > highest);
                prop_assert_eq!(table.accept(NODE, 1, counter), fresh, "counter {}", counter);
                if fresh {
                    seen[counter as usize] = true;
                    highest = Some(highest.map_or(counter, |highest| highest.max(counter)));
                }
            }
        }
    }
}
