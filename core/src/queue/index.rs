//! The RAM index of live messages: ordered by id in a ring of `MESSAGES` slots, so that
//! receive, ack and replay cost O(log n) or amortized O(1) in the backlog.
//!
//! - Sends append at the back (ids grow). Replay may insert a relocated copy whose original
//!   was released below later ids: the ring shifts the shorter side to make room.
//! - An acknowledged message becomes a tombstone. Tombstones at either end are dropped at once
//!   (acks in id order, the common case, move the front); others are compacted away when they
//!   exceed a quarter of the slots in use, or when a message must be added to a full ring.
//!   Each tombstone is moved past at most once by a compaction: amortized O(1) per ack.
//!   Tombstones never count against the capacity: `MESSAGES` messages can be live.
//! - Lookups by id are binary searches (tombstones keep their ids, so the order holds).
//! - Per queue, the index counts live and PENDING messages and keeps a lower bound on the
//!   lowest PENDING id; a receive scans from there, and moves the bound to what it found, so
//!   leased messages are not scanned again and again.
//! - It counts leased messages, and finds the oldest SEND by log position without a walk of
//!   the table (see [`Index::oldest_at`]).

use core::fmt;

use super::{Live, MessageId, State};
use crate::log::{Appended, Position};
use crate::time::Instant;

/// One slot of the ring.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    at: Appended,
    state: State,
    attempts: u32,
    queue: u32,
    /// Acknowledged: kept in place (for the order) until dropped from an end or compacted.
    dead: bool,
    /// Its position may be out of id order: it was relocated (or replay met a later copy), or
    /// it was inserted below a higher id. Positions of the other live slots grow with ids.
    moved: bool,
}

impl Slot {
    const EMPTY: Self = Self {
        id: 0,
        at: Appended {
            sequence: 0,
            position: Position {
                epoch: 0,
                offset: 0,
            },
        },
        state: State::Pending,
        attempts: 0,
        queue: 0,
        dead: true,
        moved: false,
    };

    fn live(&self) -> Live {
        Live {
            id: MessageId(self.id),
            queue: self.queue as usize,
            at: self.at,
            state: self.state,
            attempts: self.attempts,
        }
    }
}

/// Counts of one queue's live messages.
#[derive(Debug, Clone, Copy)]
struct PerQueue {
    live: usize,
    pending: usize,
    /// No live PENDING message of the queue has a lower id.
    pending_from: u64,
}

impl PerQueue {
    const EMPTY: Self = Self {
        live: 0,
        pending: 0,
        pending_from: u64::MAX,
    };
}

/// A message cannot be indexed: `MESSAGES` messages are live (or its queue is out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The live messages, ordered by id. Entries are addressed by an index (from [`Index::find`]
/// or [`Index::next_pending`]) that stays valid until the next insert or remove.
pub(crate) struct Index<const MESSAGES: usize, const QUEUES: usize> {
    slots: [Slot; MESSAGES],
    /// Where index 0 is in `slots`.
    head: usize,
    /// Slots in use, tombstones included; the first and last are live (when any).
    len: usize,
    /// Tombstones among them.
    dead: usize,
    /// Live messages LEASED.
    leased: usize,
    /// Live slots marked `moved`.
    moved: usize,
    queues: [PerQueue; QUEUES],
}

impl<const MESSAGES: usize, const QUEUES: usize> fmt::Debug for Index<MESSAGES, QUEUES> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("live", &self.count())
            .field("leased", &self.leased)
            .field("tombstones", &self.dead)
            .finish_non_exhaustive()
    }
}

impl<const MESSAGES: usize, const QUEUES: usize> Index<MESSAGES, QUEUES> {
    pub fn new() -> Self {
        Self {
            slots: [Slot::EMPTY; MESSAGES],
            head: 0,
            len: 0,
            dead: 0,
            leased: 0,
            moved: 0,
            queues: [PerQueue::EMPTY; QUEUES],
        }
    }

    /// Live messages.
    pub fn count(&self) -> usize {
        self.len - self.dead
    }

    /// Whether `MESSAGES` messages are live.
    pub fn is_full(&self) -> bool {
        self.count() >= MESSAGES
    }

    /// Live messages LEASED.
    pub fn leased(&self) -> usize {
        self.leased
    }

    /// Whether queue-table slot `queue` holds live messages.
    pub fn queue_in_use(&self, queue: usize) -> bool {
        self.queues.get(queue).is_some_and(|q| q.live > 0)
    }

    /// The slot of index `index` (`index < MESSAGES`).
    fn physical(&self, index: usize) -> usize {
        let at = self.head + index;
        if at >= MESSAGES {
            at - MESSAGES
        } else {
            at
        }
    }

    fn slot(&self, index: usize) -> &Slot {
        &self.slots[self.physical(index)]
    }

    fn slot_mut(&mut self, index: usize) -> &mut Slot {
        let at = self.physical(index);
        &mut self.slots[at]
    }

    /// The first index whose id is not below `id` (tombstones included), `len` when none.
    fn lower_bound(&self, id: u64) -> usize {
        if self.len == 0 || self.slot(self.len - 1).id < id {
            return self.len;
        }
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.slot(mid).id < id {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// The index of live message `id`.
    pub fn find(&self, id: MessageId) -> Option<usize> {
        let index = self.lower_bound(id.0);
        (index < self.len && self.slot(index).id == id.0 && !self.slot(index).dead).then_some(index)
    }

    /// Live message `id`.
    pub fn get(&self, id: MessageId) -> Option<Live> {
        self.find(id).map(|index| self.slot(index).live())
    }

    /// The live message at `index`; `None` for a tombstone or past the end.
    pub fn entry(&self, index: usize) -> Option<Live> {
        if index >= self.len {
            return None;
        }
        let slot = self.slot(index);
        (!slot.dead).then(|| slot.live())
    }

    /// Indexes slots `0..end()` ([`Index::entry`] skips tombstones).
    pub fn end(&self) -> usize {
        self.len
    }

    /// The live messages in id order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = Live> + '_ {
        (0..self.len).filter_map(|index| self.entry(index))
    }

    /// The live message with the lowest id.
    pub fn first(&self) -> Option<Live> {
        // The first slot in use is live.
        self.entry(0)
    }

    /// Indexes `live`, which must not be live already: appended when its id is the highest
    /// (every send), else inserted in order (replay of a relocated copy). `Err` when full.
    pub fn insert(&mut self, live: Live) -> Result<(), Full> {
        if self.is_full() {
            return Err(Full);
        }
        let queue = u32::try_from(live.queue).map_err(|_| Full)?;
        if live.queue >= QUEUES {
            return Err(Full);
        }
        let id = live.id.0;
        let mut index = self.lower_bound(id);
        let slot = Slot {
            id,
            at: live.at,
            state: live.state,
            attempts: live.attempts,
            queue,
            dead: false,
            // Below a higher id, its position (the latest in the log) is out of id order.
            moved: index < self.len,
        };
        if index < self.len && self.slot(index).id == id {
            if !self.slot(index).dead {
                // Not expected (callers move a live message instead): replace it.
                self.remove(index);
                return self.insert(live);
            }
            // The tombstone of the same id takes it back.
            *self.slot_mut(index) = slot;
            self.dead -= 1;
        } else {
            if self.len == MESSAGES {
                // Fewer than MESSAGES are live: the tombstones make room.
                self.compact();
                index = self.lower_bound(id);
            }
            self.open_gap(index);
            *self.slot_mut(index) = slot;
        }
        if slot.moved {
            self.moved += 1;
        }
        let per = &mut self.queues[live.queue];
        per.live += 1;
        match live.state {
            State::Pending => {
                per.pending += 1;
                per.pending_from = per.pending_from.min(id);
            }
            State::Leased { .. } => self.leased += 1,
        }
        Ok(())
    }

    /// Makes room at `index` (`len < MESSAGES`), shifting the shorter side of the ring.
    fn open_gap(&mut self, index: usize) {
        if index < self.len - index {
            self.head = if self.head == 0 {
                MESSAGES - 1
            } else {
                self.head - 1
            };
            for at in 0..index {
                *self.slot_mut(at) = *self.slot(at + 1);
            }
        } else {
            for at in (index..self.len).rev() {
                *self.slot_mut(at + 1) = *self.slot(at);
            }
        }
        self.len += 1;
    }

    /// Removes the live message at `index` (acknowledged, or delivered in replay).
    pub fn remove(&mut self, index: usize) {
        if index >= self.len || self.slot(index).dead {
            return;
        }
        let slot = self.slot_mut(index);
        slot.dead = true;
        let slot = *slot;
        self.dead += 1;
        if slot.moved {
            self.moved -= 1;
        }
        let per = &mut self.queues[slot.queue as usize];
        per.live -= 1;
        match slot.state {
            State::Pending => per.pending -= 1,
            State::Leased { .. } => self.leased -= 1,
        }
        self.trim();
        if self.dead * 4 > self.len {
            self.compact();
        }
    }

    /// Drops the tombstones at both ends.
    fn trim(&mut self) {
        while self.len > 0 && self.slot(0).dead {
            self.head = if self.head + 1 >= MESSAGES {
                0
            } else {
                self.head + 1
            };
            self.len -= 1;
            self.dead -= 1;
        }
        while self.len > 0 && self.slot(self.len - 1).dead {
            self.len -= 1;
            self.dead -= 1;
        }
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Drops every tombstone, keeping the order.
    fn compact(&mut self) {
        let mut kept = 0;
        for index in 0..self.len {
            let slot = *self.slot(index);
            if !slot.dead {
                if kept != index {
                    *self.slot_mut(kept) = slot;
                }
                kept += 1;
            }
        }
        self.len = kept;
        self.dead = 0;
    }

    /// The index of the PENDING message of queue-table slot `queue` with the lowest id.
    pub fn next_pending(&mut self, queue: usize) -> Option<usize> {
        let per = *self.queues.get(queue)?;
        if per.pending == 0 {
            return None;
        }
        let mut index = self.lower_bound(per.pending_from);
        while index < self.len {
            let slot = self.slot(index);
            if !slot.dead && slot.queue as usize == queue && slot.state == State::Pending {
                self.queues[queue].pending_from = slot.id;
                return Some(index);
            }
            index += 1;
        }
        // Not reached while the counts and the bound hold.
        self.queues[queue].pending_from = u64::MAX;
        None
    }

    /// Leases the PENDING message at `index` until `until` under `token`; returns its
    /// attempts, this one included.
    pub fn deliver(&mut self, index: usize, until: Instant, token: u64) -> Option<u32> {
        if index >= self.len {
            return None;
        }
        let slot = self.slot_mut(index);
        if slot.dead || slot.state != State::Pending {
            return None;
        }
        slot.state = State::Leased { until, token };
        slot.attempts = slot.attempts.saturating_add(1);
        let (attempts, queue) = (slot.attempts, slot.queue as usize);
        self.leased += 1;
        self.queues[queue].pending -= 1;
        Some(attempts)
    }

    /// Sets the lease end of the LEASED message at `index`.
    pub fn extend(&mut self, index: usize, until: Instant, token: u64) {
        if index >= self.len {
            return;
        }
        let slot = self.slot_mut(index);
        if !slot.dead && matches!(slot.state, State::Leased { .. }) {
            slot.state = State::Leased { until, token };
        }
    }

    /// Records that the SEND of the live message at `index` is now at `at` (a relocated copy).
    pub fn set_at(&mut self, index: usize, at: Appended) {
        if index >= self.len {
            return;
        }
        let slot = self.slot_mut(index);
        if slot.dead {
            return;
        }
        slot.at = at;
        if !slot.moved {
            slot.moved = true;
            self.moved += 1;
        }
    }

    /// Makes every lease that ended by `now` PENDING again (a walk of the table); returns how
    /// many, and the earliest lease end left.
    pub fn expire(&mut self, now: Instant) -> (u64, Option<Instant>) {
        let mut expired = 0u64;
        let mut earliest: Option<Instant> = None;
        if self.leased == 0 {
            return (0, None);
        }
        for index in 0..self.len {
            let at = self.physical(index);
            let slot = &mut self.slots[at];
            if slot.dead {
                continue;
            }
            if let State::Leased { until, .. } = slot.state {
                if until <= now {
                    slot.state = State::Pending;
                    expired += 1;
                    let (id, queue) = (slot.id, slot.queue as usize);
                    self.leased -= 1;
                    let per = &mut self.queues[queue];
                    per.pending += 1;
                    per.pending_from = per.pending_from.min(id);
                } else {
                    earliest = Some(earliest.map_or(until, |at| at.min(until)));
                }
            }
        }
        (expired, earliest)
    }

    /// Where the oldest live SEND is (lowest log sequence). Slots not `moved` have positions
    /// growing with their ids, so the walk stops at the first of them once it has seen every
    /// `moved` one: O(1) unless messages were relocated, then O(those before the rest).
    pub fn oldest_at(&self) -> Option<Appended> {
        let mut oldest: Option<Appended> = None;
        let mut moved_left = self.moved;
        let mut plain_seen = false;
        for index in 0..self.len {
            if plain_seen && moved_left == 0 {
                break;
            }
            let slot = self.slot(index);
            if slot.dead {
                continue;
            }
            if slot.moved {
                moved_left -= 1;
            } else if plain_seen {
                continue;
            } else {
                plain_seen = true;
            }
            if oldest.is_none_or(|at| slot.at.sequence < at.sequence) {
                oldest = Some(slot.at);
            }
        }
        oldest
    }

    /// Checks every count and order invariant (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let mut previous: Option<u64> = None;
        let (mut dead, mut leased, mut moved) = (0, 0, 0);
        let mut live = [0usize; QUEUES];
        let mut pending = [0usize; QUEUES];
        let mut plain_sequence: Option<u64> = None;
        for index in 0..self.len {
            let slot = self.slot(index);
            assert!(previous.is_none_or(|id| id < slot.id), "ids out of order");
            previous = Some(slot.id);
            if slot.dead {
                dead += 1;
                continue;
            }
            live[slot.queue as usize] += 1;
            match slot.state {
                State::Pending => {
                    pending[slot.queue as usize] += 1;
                    assert!(self.queues[slot.queue as usize].pending_from <= slot.id);
                }
                State::Leased { .. } => leased += 1,
            }
            if slot.moved {
                moved += 1;
            } else {
                assert!(plain_sequence.is_none_or(|s| s < slot.at.sequence));
                plain_sequence = Some(slot.at.sequence);
            }
        }
        assert!(self.len <= MESSAGES);
        if self.len > 0 {
            assert!(!self.slot(0).dead && !self.slot(self.len - 1).dead);
        }
        assert_eq!((dead, leased, moved), (self.dead, self.leased, self.moved));
        assert!(self.dead * 4 <= self.len);
        for queue in 0..QUEUES {
            assert_eq!(live[queue], self.queues[queue].live);
            assert_eq!(pending[queue], self.queues[queue].pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Small = Index<8, 3>;

    fn live(id: u64, queue: usize, sequence: u64) -> Live {
        Live {
            id: MessageId(id),
            queue,
            at: Appended {
                sequence,
                position: Position {
                    epoch: 0,
                    offset: sequence,
                },
            },
            state: State::Pending,
            attempts: 0,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A send: the next id.
        Append(usize),
        /// A replayed copy of an id below the highest, `(id, queue)`.
        Insert(u64, usize),
        /// Remove the n-th live message.
        Remove(usize),
        /// Lease the next pending message of a queue.
        Deliver(usize),
        /// Relocate the n-th live message.
        Move(usize),
        /// Expire leases that end by this time.
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..3).prop_map(Op::Append),
            1 => (0u64..40, 0usize..3).prop_map(|(id, queue)| Op::Insert(id, queue)),
            3 => (0usize..8).prop_map(Op::Remove),
            3 => (0usize..3).prop_map(Op::Deliver),
            1 => (0usize..8).prop_map(Op::Move),
            1 => (0u64..40).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// The ring (tombstones, compaction, per-queue bounds, counts) against a sorted map.
        #[test]
        fn the_index_matches_a_sorted_map(ops in proptest::collection::vec(op(), 1..200)) {
            let mut index = Small::new();
            let mut model: BTreeMap<u64, Live> = BTreeMap::new();
            let (mut next_id, mut sequence, mut now) = (1u64, 0u64, 0u64);
            for op in ops {
                sequence += 1;
                now += 1;
                match op {
                    Op::Append(queue) => {
                        let result = index.insert(live(next_id, queue, sequence));
                        prop_assert_eq!(result.is_ok(), model.len() < 8);
                        if result.is_ok() {
                            model.insert(next_id, live(next_id, queue, sequence));
                        }
                        next_id += 1;
                    }
                    Op::Insert(id, queue) => {
                        if id >= next_id || model.contains_key(&id) {
                            continue;
                        }
                        let result = index.insert(live(id, queue, sequence));
                        prop_assert_eq!(result.is_ok(), model.len() < 8);
                        if result.is_ok() {
                            model.insert(id, live(id, queue, sequence));
                        }
                    }
                    Op::Remove(n) => {
                        let Some(&id) = model.keys().nth(n % model.len().max(1)) else {
                            continue;
                        };
                        let at = index.find(MessageId(id)).unwrap();
                        index.remove(at);
                        model.remove(&id);
                    }
                    Op::Deliver(queue) => {
                        let expected = model
                            .values()
                            .find(|l| l.queue == queue && l.state == State::Pending)
                            .map(|l| l.id);
                        let found = index.next_pending(queue);
                        prop_assert_eq!(found.and_then(|at| index.entry(at)).map(|l| l.id), expected);
                        if let (Some(at), Some(id)) = (found, expected) {
                            let until = Instant::from_millis(now + (id.0 % 7));
                            let attempts = index.deliver(at, until, id.0).unwrap();
                            let entry = model.get_mut(&id.0).unwrap();
                            entry.state = State::Leased { until, token: id.0 };
                            entry.attempts += 1;
                            prop_assert_eq!(attempts, entry.attempts);
                        }
                    }
                    Op::Move(n) => {
                        let Some(&id) = model.keys().nth(n % model.len().max(1)) else {
                            continue;
                        };
                        let mut moved = live(id, 0, sequence).at;
                        moved.position.epoch = 1;
                        index.set_at(index.find(MessageId(id)).unwrap(), moved);
                        model.get_mut(&id).unwrap().at = moved;
                    }
                    Op::Expire(time) => {
                        let time = Instant::from_millis(time);
                        let mut expected = 0;
                        for l in model.values_mut() {
                            if let State::Leased { until, .. } = l.state {
                                if until <= time {
                                    l.state = State::Pending;
                                    expected += 1;
                                }
                            }
                        }
                        let earliest = model.values().filter_map(|l| match l.state {
                            State::Leased { until, .. } => Some(until),
                            State::Pending => None,
                        }).min();
                        prop_assert_eq!(index.expire(time), (expected, earliest));
                    }
                }
                index.check();
                prop_assert_eq!(index.count(), model.len());
                prop_assert_eq!(index.is_full(), model.len() == 8);
                let leased = model.values().filter(|l| l.state != State::Pending).count();
                prop_assert_eq!(index.leased(), leased);
                prop_assert!(index.iter().eq(model.values().copied()));
                prop_assert_eq!(index.first(), model.values().next().copied());
                let oldest = model.values().map(|l| l.at).min_by_key(|at| at.sequence);
                prop_assert_eq!(index.oldest_at(), oldest);
                for queue in 0..3 {
                    prop_assert_eq!(index.queue_in_use(queue), model.values().any(|l| l.queue == queue));
                }
                for id in 0..next_id + 1 {
                    prop_assert_eq!(index.get(MessageId(id)), model.get(&id).copied());
                }
            }
        }
    }
}
