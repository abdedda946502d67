//! The per-node max map, which is also the version vector.

use super::{decode_exact, Causality, CrdtError, NodeId};
use core::cmp::Ordering;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// A map from node to `u64` whose merge keeps the larger value per node: the state shared by
/// the version vector and the grow-only counter. Entries are sorted by node id; a missing node
/// counts as 0 and a 0 is never stored, so equal maps have equal bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxMap<const N: usize> {
    entries: Vec<(NodeId, u64), N>,
}

/// A version vector: per node, how many events of that node have been seen.
pub type VersionVector<const N: usize> = MaxMap<N>;

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
            Ok(index) => self.entries.get(index).map_or(0, |&(_, value)| value),
            Err(_) => 0,
        }
    }

    /// Adds `by` to `node`'s value and returns the new value.
    ///
    /// Errors, with nothing changed: [`CrdtError::Overflow`] past `u64::MAX`,
    /// [`CrdtError::Capacity`] when `node` is new and `N` nodes are already present.
    pub fn add(&mut self, node: NodeId, by: u64) -> Result<u64, CrdtError> {
        match self.entries.binary_search_by_key(&node, |&(id, _)| id) {
            Ok(index) => {
                // In range: the search just found it.
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
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the union of the two maps'
    /// nodes is more than `N`.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut merged: Vec<(NodeId, u64), N> = Vec::new();
        let (mine, theirs) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        // Each turn consumes at least one entry, so this ends after at most 2·N turns.
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
            merged.push(next).map_err(|_| CrdtError::Capacity)?;
        }
        self.entries = merged;
        Ok(())
    }

    /// How the two maps relate: equal, every value ≤ (before), every value ≥ (after), or neither.
    pub fn compare(&self, other: &Self) -> Causality {
        Causality::from_coverage(self.within(other), other.within(self))
    }

    /// True when every value of `self` is at most the same node's value in `other`.
    pub(super) fn within(&self, other: &Self) -> bool {
        self.entries
            .iter()
            .all(|&(node, value)| value <= other.get(node))
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

    /// Decodes a postcard state from untrusted bytes, accepting only the canonical encoding of
    /// a canonical map (node ids strictly increasing, no zero value).
    ///
    /// Errors: [`CrdtError::Malformed`]; nothing is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let map: Self = decode_exact(bytes)?;
        if !map.is_canonical() {
            return Err(CrdtError::Malformed);
        }
        Ok(map)
    }

    /// Node ids strictly increasing and no zero value: the only form `add` and `merge` build.
    pub(super) fn is_canonical(&self) -> bool {
        let sorted = self
            .entries
            .iter()
            .zip(self.entries.iter().skip(1))
            .all(|(before, after)| before.0 < after.0);
        sorted && self.entries.iter().all(|&(_, value)| value != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::test_support::{encode, permutations_of_four};
    use proptest::prelude::*;

    const CAPACITY: usize = 8;

    fn map(entries: &[(u32, u16)]) -> MaxMap<CAPACITY> {
        let mut map = MaxMap::new();
        for &(node, by) in entries {
            map.add(NodeId(node % 6), u64::from(by)).unwrap();
        }
        map
    }

    fn merged(a: &MaxMap<CAPACITY>, b: &MaxMap<CAPACITY>) -> MaxMap<CAPACITY> {
        let mut result = a.clone();
        result.merge(b).unwrap();
        result
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in any::<[(u32, u16); 6]>(), b in any::<[(u32, u16); 6]>(), c in any::<[(u32, u16); 6]>(),
        ) {
            let (a, b, c) = (map(&a), map(&b), map(&c));
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&merged(&a, &b), &b), merged(&a, &b));
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn any_merge_order_of_four_replicas_gives_the_same_bytes(
            replicas in any::<[[(u32, u16); 4]; 4]>(),
        ) {
            let replicas = replicas.map(|entries| map(&entries));
            let mut first = None;
            for order in permutations_of_four() {
                let mut result = MaxMap::<CAPACITY>::new();
                for index in order {
                    result.merge(&replicas[index]).unwrap();
                }
                let bytes = encode(&result);
                prop_assert_eq!(first.get_or_insert(bytes.clone()), &bytes);
            }
        }

        #[test]
        fn compare_agrees_with_merge(a in any::<[(u32, u16); 4]>(), b in any::<[(u32, u16); 4]>()) {
            let (a, b) = (map(&a), map(&b));
            let expected = Causality::from_coverage(merged(&a, &b) == b, merged(&a, &b) == a);
            prop_assert_eq!(a.compare(&b), expected);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_what_decodes_re_encodes_identically(
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(map) = MaxMap::<CAPACITY>::decode(&raw) {
                prop_assert!(map.is_canonical());
                prop_assert_eq!(&encode(&map)[..], &raw[..]);
            }
        }

        #[test]
        fn a_state_round_trips_through_its_bytes(a in any::<[(u32, u16); 6]>()) {
            let a = map(&a);
            prop_assert_eq!(MaxMap::<CAPACITY>::decode(&encode(&a)), Ok(a));
        }
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
    fn a_non_canonical_state_is_refused() {
        let mut buffer = [0u8; 64];
        // Two entries, node 2 then node 1: out of order.
        let entries: heapless::Vec<(NodeId, u64), 4> =
            heapless::Vec::from_slice(&[(NodeId(2), 1), (NodeId(1), 1)]).unwrap();
        let bytes = postcard::to_slice(&entries, &mut buffer).unwrap();
        assert_eq!(MaxMap::<4>::decode(bytes), Err(CrdtError::Malformed));
    }

    #[test]
    fn trailing_bytes_and_overlong_varints_are_refused() {
        // One entry: node 1 at 5.
        assert!(MaxMap::<4>::decode(&[1, 1, 5]).is_ok());
        assert_eq!(
            MaxMap::<4>::decode(&[1, 1, 5, 0]),
            Err(CrdtError::Malformed)
        );
        assert_eq!(
            MaxMap::<4>::decode(&[1, 1, 0x85, 0]),
            Err(CrdtError::Malformed)
        );
        assert_eq!(
            MaxMap::<4>::decode(&[1, 1, 0]),
            Err(CrdtError::Malformed),
            "a zero entry"
        );
    }

    #[test]
    fn more_entries_than_the_capacity_are_refused_when_decoding() {
        assert_eq!(
            MaxMap::<1>::decode(&[2, 1, 5, 2, 5]),
            Err(CrdtError::Malformed)
        );
    }
}
