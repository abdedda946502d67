//! State-based CRDTs with fixed capacity: a per-node max map, and on it the version vector, the
//! grow-only counter and the positive-negative counter.
//!
//! # Guarantees
//!
//! - `merge` is commutative, associative and idempotent, and the state is canonical: entries are
//!   kept sorted by node id, so two replicas that merged the same states in any order hold the
//!   same bytes, serialized or not.
//! - No allocation: capacity `N` (nodes) is a const generic. An operation that would need more
//!   entries than `N` fails with [`CrdtError::Capacity`] and changes nothing; an increment that
//!   would overflow fails with [`CrdtError::Overflow`] and changes nothing.
//! - Decoding untrusted bytes ([`MaxMap::decode`]) refuses a state that is not canonical (node ids
//!   out of order or repeated) instead of trusting it.
//!
//! # Not provided here
//!
//! Dotted version vectors and the multi-value register are not written yet.

use core::cmp::Ordering;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Identifies a node (a replica) of a cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NodeId(pub u32);

/// Why a CRDT operation was refused. Nothing changed in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CrdtError {
    /// The result would hold more nodes than the capacity.
    Capacity,
    /// A count would pass `u64::MAX`.
    Overflow,
    /// Bytes that are not a canonical state (bad encoding, node ids out of order or repeated).
    Malformed,
}

impl core::fmt::Display for CrdtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Capacity => "more nodes than the CRDT's capacity",
            Self::Overflow => "a count would overflow u64",
            Self::Malformed => "bytes that are not a canonical CRDT state",
        })
    }
}

impl core::error::Error for CrdtError {}

/// A map from node to `u64` whose merge keeps the larger value per node: the state shared by
/// the version vector and the grow-only counter. Entries are sorted by node id; a missing node
/// counts as 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxMap<const N: usize> {
    entries: Vec<(NodeId, u64), N>,
}

impl<const N: usize> Default for MaxMap<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MaxMap<N> {
    /// The empty map: every node at 0.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The value of `node` (0 when absent).
    pub fn get(&self, node: NodeId) -> u64 {
        match self.entries.binary_search_by_key(&node, |&(id, _)| id) {
            Ok(index) => self.entries[index].1,
            Err(_) => 0,
        }
    }

    /// Adds `by` to `node`'s value and returns the new value.
    pub fn add(&mut self, node: NodeId, by: u64) -> Result<u64, CrdtError> {
        match self.entries.binary_search_by_key(&node, |&(id, _)| id) {
            Ok(index) => {
                let value = &mut self.entries[index].1;
                *value = value.checked_add(by).ok_or(CrdtError::Overflow)?;
                Ok(*value)
            }
            Err(_) if by == 0 => Ok(0),
            Err(index) => {
                self.entries
                    .insert(index, (node, by))
                    .map_err(|_| CrdtError::Capacity)?;
                Ok(by)
            }
        }
    }

    /// Keeps, for every node, the larger of the two values.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        if self.union_len(other) > N {
            return Err(CrdtError::Capacity);
        }
        let mut merged: Vec<(NodeId, u64), N> = Vec::new();
        let (mine, theirs) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        loop {
            let next = match (mine.get(i), theirs.get(j)) {
                (None, None) => break,
                (Some(&entry), None) => {
                    i += 1;
                    entry
                }
                (None, Some(&entry)) => {
                    j += 1;
                    entry
                }
                (Some(&(a, x)), Some(&(b, y))) => match a.cmp(&b) {
                    Ordering::Less => {
                        i += 1;
                        (a, x)
                    }
                    Ordering::Greater => {
                        j += 1;
                        (b, y)
                    }
                    Ordering::Equal => {
                        i += 1;
                        j += 1;
                        (a, x.max(y))
                    }
                },
            };
            // The union was counted above, so this push always finds room.
            merged.push(next).map_err(|_| CrdtError::Capacity)?;
        }
        self.entries = merged;
        Ok(())
    }

    /// How the two maps relate: equal, every value ≤ (before), every value ≥ (after), or neither.
    pub fn compare(&self, other: &Self) -> Causality {
        let (mut less, mut greater) = (false, false);
        for &(node, value) in self.entries.iter() {
            match value.cmp(&other.get(node)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        for &(node, value) in other.entries.iter() {
            if self.get(node) < value {
                less = true;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The entries, sorted by node id.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Number of nodes with a nonzero value.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when every node is at 0.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decodes a postcard state from untrusted bytes, refusing anything not canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let map: Self = postcard::from_bytes(bytes).map_err(|_| CrdtError::Malformed)?;
        let sorted = map.entries.windows(2).all(|pair| pair[0].0 < pair[1].0);
        let no_zero = map.entries.iter().all(|&(_, value)| value != 0);
        if !sorted || !no_zero {
            return Err(CrdtError::Malformed);
        }
        Ok(map)
    }

    fn union_len(&self, other: &Self) -> usize {
        let shared = other
            .entries
            .iter()
            .filter(|&&(node, _)| self.get(node) != 0)
            .count();
        self.entries.len() + other.entries.len() - shared
    }
}

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Causality {
    /// The same version.
    Equal,
    /// Strictly older: the other has seen everything this one has, and more.
    Before,
    /// Strictly newer.
    After,
    /// Each has seen something the other has not.
    Concurrent,
}

/// A version vector: per node, how many events of that node have been seen.
pub type VersionVector<const N: usize> = MaxMap<N>;

/// A grow-only counter: each node increments only its own entry; the value is the sum.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GCounter<const N: usize> {
    counts: MaxMap<N>,
}

impl<const N: usize> GCounter<N> {
    /// A counter at 0.
    pub const fn new() -> Self {
        Self {
            counts: MaxMap::new(),
        }
    }

    /// Adds `by` to `node`'s own count (only `node` may call this for itself).
    pub fn incr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.counts.add(node, by).map(|_| ())
    }

    /// Merges another replica's state.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        self.counts.merge(&other.counts)
    }

    /// The sum of all nodes' counts, or `None` if it does not fit in a u64.
    pub fn value(&self) -> Option<u64> {
        self.counts
            .iter()
            .try_fold(0u64, |sum, (_, count)| sum.checked_add(count))
    }

    /// The per-node counts.
    pub fn counts(&self) -> &MaxMap<N> {
        &self.counts
    }

    /// The delta of `node`'s own increments: its entry alone, which merges
    /// into any replica as the operation would.
    pub fn delta(&self, node: NodeId) -> Self {
        let mut delta = Self::new();
        // One entry always fits (N >= 1 for any usable counter); a zero count is no entry.
        let _ = delta.counts.add(node, self.counts.get(node));
        delta
    }
}

/// A positive-negative counter: two grow-only counters; the value is their difference.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PnCounter<const N: usize> {
    increments: GCounter<N>,
    decrements: GCounter<N>,
}

impl<const N: usize> PnCounter<N> {
    /// A counter at 0.
    pub const fn new() -> Self {
        Self {
            increments: GCounter::new(),
            decrements: GCounter::new(),
        }
    }

    /// Adds `by` on behalf of `node`.
    pub fn incr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.increments.incr(node, by)
    }

    /// Subtracts `by` on behalf of `node`.
    pub fn decr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.decrements.incr(node, by)
    }

    /// Merges another replica's state; nothing changes if either half would not fit.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut increments = self.increments.clone();
        increments.merge(&other.increments)?;
        let mut decrements = self.decrements.clone();
        decrements.merge(&other.decrements)?;
        self.increments = increments;
        self.decrements = decrements;
        Ok(())
    }

    /// Increments minus decrements, or `None` when a sum does not fit in a u64.
    pub fn value(&self) -> Option<i128> {
        let up = self.increments.value()?;
        let down = self.decrements.value()?;
        Some(i128::from(up) - i128::from(down))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAPACITY: usize = 8;

    /// Operations on a G-Counter replica: (node, amount).
    fn ops() -> impl Strategy<Value = [(u32, u16); 12]> {
        any::<[(u32, u16); 12]>().prop_map(|ops| ops.map(|(node, by)| (node % 6, by)))
    }

    fn counter(ops: &[(u32, u16)]) -> GCounter<CAPACITY> {
        let mut counter = GCounter::new();
        for &(node, by) in ops {
            counter.incr(NodeId(node), u64::from(by)).unwrap();
        }
        counter
    }

    fn merged(a: &GCounter<CAPACITY>, b: &GCounter<CAPACITY>) -> GCounter<CAPACITY> {
        let mut result = a.clone();
        result.merge(b).unwrap();
        result
    }

    fn bytes(counter: &GCounter<CAPACITY>) -> ([u8; 256], usize) {
        let mut buffer = [0u8; 256];
        let len = postcard::to_slice(counter, &mut buffer).unwrap().len();
        (buffer, len)
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_byte_identical(a in ops(), b in ops()) {
            let (a, b) = (counter(&a), counter(&b));
            let (ab, ba) = (merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(&ab, &ba);
            prop_assert_eq!(bytes(&ab), bytes(&ba));
        }

        #[test]
        fn merge_is_associative(a in ops(), b in ops(), c in ops()) {
            let (a, b, c) = (counter(&a), counter(&b), counter(&c));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in ops(), b in ops()) {
            let (a, b) = (counter(&a), counter(&b));
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&once, &once), once);
        }

        #[test]
        fn each_node_counting_its_own_converges_to_the_sum(per_node in any::<[[u16; 4]; 4]>()) {
            // Node i's replica applies its own increments; replicas then exchange deltas in
            // a rotating order. Everyone ends at the sum of all increments.
            let mut replicas: [GCounter<CAPACITY>; 4] = Default::default();
            let mut total = 0u64;
            for (node, amounts) in per_node.iter().enumerate() {
                for &by in amounts {
                    replicas[node].incr(NodeId(node as u32), u64::from(by)).unwrap();
                    total += u64::from(by);
                }
            }
            for round in 0..4 {
                for target in 0..4 {
                    let source = (target + round + 1) % 4;
                    let delta = replicas[source].delta(NodeId(source as u32));
                    replicas[target].merge(&delta).unwrap();
                }
            }
            for replica in &replicas {
                prop_assert_eq!(replica.value(), Some(total));
                prop_assert_eq!(replica, &replicas[0]);
            }
        }

        #[test]
        fn the_delta_merges_like_the_whole_state(a in ops(), b in ops(), node in 0u32..6) {
            let (a, b) = (counter(&a), counter(&b));
            let delta = b.delta(NodeId(node));
            let with_delta = merged(&a, &delta);
            prop_assert_eq!(with_delta.counts().get(NodeId(node)),
                merged(&a, &b).counts().get(NodeId(node)));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_yields_only_canonical_maps(
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(map) = MaxMap::<CAPACITY>::decode(&raw) {
                let ids: heapless::Vec<NodeId, CAPACITY> = map.iter().map(|(id, _)| id).collect();
                prop_assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
            }
        }
    }

    #[test]
    fn a_merge_past_capacity_is_refused_and_changes_nothing() {
        let mut a = GCounter::<2>::new();
        a.incr(NodeId(1), 1).unwrap();
        a.incr(NodeId(2), 1).unwrap();
        let mut b = GCounter::<2>::new();
        b.incr(NodeId(3), 5).unwrap();
        let before = a.clone();
        assert_eq!(a.merge(&b), Err(CrdtError::Capacity));
        assert_eq!(a, before);
        assert_eq!(a.incr(NodeId(4), 1), Err(CrdtError::Capacity));
    }

    #[test]
    fn an_overflowing_increment_is_refused() {
        let mut a = GCounter::<2>::new();
        a.incr(NodeId(1), u64::MAX).unwrap();
        assert_eq!(a.incr(NodeId(1), 1), Err(CrdtError::Overflow));
        a.incr(NodeId(2), 1).unwrap();
        assert_eq!(a.value(), None, "the sum does not fit and says so");
    }

    #[test]
    fn version_vectors_tell_before_after_and_concurrent() {
        let mut a = VersionVector::<4>::new();
        let mut b = VersionVector::<4>::new();
        assert_eq!(a.compare(&b), Causality::Equal);
        a.add(NodeId(1), 1).unwrap();
        assert_eq!(a.compare(&b), Causality::After);
        assert_eq!(b.compare(&a), Causality::Before);
        b.add(NodeId(2), 1).unwrap();
        assert_eq!(a.compare(&b), Causality::Concurrent);
        a.merge(&b).unwrap();
        assert_eq!(a.compare(&b), Causality::After);
    }

    #[test]
    fn a_pn_counter_goes_below_zero_and_merges_both_halves() {
        let mut a = PnCounter::<4>::new();
        let mut b = PnCounter::<4>::new();
        a.incr(NodeId(1), 5).unwrap();
        b.decr(NodeId(2), 8).unwrap();
        a.merge(&b).unwrap();
        b.merge(&a).unwrap();
        assert_eq!(a.value(), Some(-3));
        assert_eq!(a, b);
    }

    #[test]
    fn a_non_canonical_state_is_refused() {
        let mut buffer = [0u8; 64];
        // Two entries, node 2 then node 1: out of order.
        let entries: heapless::Vec<(NodeId, u64), 4> =
            heapless::Vec::from_slice(&[(NodeId(2), 1), (NodeId(1), 1)]).unwrap();
        let bytes = postcard::to_slice(&entries, &mut buffer).unwrap();
        assert_eq!(MaxMap::<4>::decode(bytes), Err(CrdtError::Malformed));
    }
}
