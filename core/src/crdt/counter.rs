//! The grow-only and the positive-negative counters.

use super::{decode_exact, CrdtError, MaxMap, NodeId};
use serde::{Deserialize, Serialize};

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
    ///
    /// Errors, with nothing changed: [`CrdtError::Overflow`] when `node`'s count would pass
    /// `u64::MAX`, [`CrdtError::Capacity`] when `node` is new and `N` nodes are present.
    pub fn incr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.counts.add(node, by).map(|_| ())
    }

    /// Merges another replica's state.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the union of nodes is more
    /// than `N`.
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

    /// Decodes untrusted bytes, accepting only the canonical encoding of a canonical state.
    ///
    /// Errors: [`CrdtError::Malformed`]; nothing is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let counter: Self = decode_exact(bytes)?;
        if !counter.counts.is_canonical() {
            return Err(CrdtError::Malformed);
        }
        Ok(counter)
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
    ///
    /// Errors, with nothing changed: [`CrdtError::Overflow`] when `node`'s increments would
    /// pass `u64::MAX`, [`CrdtError::Capacity`] when `node` is new and `N` nodes are present.
    pub fn incr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.increments.incr(node, by)
    }

    /// Subtracts `by` on behalf of `node`.
    ///
    /// Errors, with nothing changed: [`CrdtError::Overflow`] when `node`'s decrements would
    /// pass `u64::MAX`, [`CrdtError::Capacity`] when `node` is new and `N` nodes are present.
    pub fn decr(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.decrements.incr(node, by)
    }

    /// Merges another replica's state.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when either half would hold more
    /// than `N` nodes.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut increments = self.increments.clone();
        increments.merge(&other.increments)?;
        let mut decrements = self.decrements.clone();
        decrements.merge(&other.decrements)?;
        self.increments = increments;
        self.decrements = decrements;
        Ok(())
    }

    /// Increments minus decrements, or `None` when either sum does not fit in a u64 (the
    /// difference of two u64 always fits in an i128).
    pub fn value(&self) -> Option<i128> {
        let up = self.increments.value()?;
        let down = self.decrements.value()?;
        Some(i128::from(up) - i128::from(down))
    }

    /// The delta of `node`'s own increments and decrements, which merges into any replica as
    /// the operations would.
    pub fn delta(&self, node: NodeId) -> Self {
        Self {
            increments: self.increments.delta(node),
            decrements: self.decrements.delta(node),
        }
    }

    /// Decodes untrusted bytes, accepting only the canonical encoding of a canonical state.
    ///
    /// Errors: [`CrdtError::Malformed`]; nothing is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let counter: Self = decode_exact(bytes)?;
        let halves = [&counter.increments, &counter.decrements];
        if !halves.iter().all(|half| half.counts.is_canonical()) {
            return Err(CrdtError::Malformed);
        }
        Ok(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::test_support::{encode, permutations_of_four};
    use proptest::prelude::*;

    const CAPACITY: usize = 8;

    /// Operations on a replica: (node, amount, up or down).
    fn ops() -> impl Strategy<Value = [(u32, u16, bool); 12]> {
        any::<[(u32, u16, bool); 12]>().prop_map(|ops| ops.map(|(node, by, up)| (node % 6, by, up)))
    }

    fn counter(ops: &[(u32, u16, bool)]) -> GCounter<CAPACITY> {
        let mut counter = GCounter::new();
        for &(node, by, _) in ops {
            counter.incr(NodeId(node), u64::from(by)).unwrap();
        }
        counter
    }

    fn pn_counter(ops: &[(u32, u16, bool)]) -> PnCounter<CAPACITY> {
        let mut counter = PnCounter::new();
        for &(node, by, up) in ops {
            if up {
                counter.incr(NodeId(node), u64::from(by)).unwrap();
            } else {
                counter.decr(NodeId(node), u64::from(by)).unwrap();
            }
        }
        counter
    }

    fn merged(a: &GCounter<CAPACITY>, b: &GCounter<CAPACITY>) -> GCounter<CAPACITY> {
        let mut result = a.clone();
        result.merge(b).unwrap();
        result
    }

    fn pn_merged(a: &PnCounter<CAPACITY>, b: &PnCounter<CAPACITY>) -> PnCounter<CAPACITY> {
        let mut result = a.clone();
        result.merge(b).unwrap();
        result
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_byte_identical(a in ops(), b in ops()) {
            let (a, b) = (counter(&a), counter(&b));
            let (ab, ba) = (merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(&ab, &ba);
            prop_assert_eq!(encode(&ab), encode(&ba));
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
        fn pn_merge_is_commutative_associative_and_idempotent(a in ops(), b in ops(), c in ops()) {
            let (a, b, c) = (pn_counter(&a), pn_counter(&b), pn_counter(&c));
            prop_assert_eq!(encode(&pn_merged(&a, &b)), encode(&pn_merged(&b, &a)));
            prop_assert_eq!(pn_merged(&pn_merged(&a, &b), &c), pn_merged(&a, &pn_merged(&b, &c)));
            prop_assert_eq!(pn_merged(&pn_merged(&a, &b), &b), pn_merged(&a, &b));
            prop_assert_eq!(pn_merged(&a, &a), a);
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
        fn pn_ops_at_their_nodes_then_deltas_in_any_order_equal_merging_the_states(
            per_node in any::<[[(u16, bool); 3]; 4]>(),
        ) {
            // Op form: node i applies its own ops. State form: everyone merges every state.
            // Delta form: everyone merges each node's delta, in every order.
            let mut replicas: [PnCounter<CAPACITY>; 4] = Default::default();
            let mut expected = 0i128;
            for (node, ops) in per_node.iter().enumerate() {
                for &(by, up) in ops {
                    let id = NodeId(node as u32);
                    if up {
                        replicas[node].incr(id, u64::from(by)).unwrap();
                        expected += i128::from(by);
                    } else {
                        replicas[node].decr(id, u64::from(by)).unwrap();
                        expected -= i128::from(by);
                    }
                }
            }
            let mut by_state = PnCounter::<CAPACITY>::new();
            for replica in &replicas {
                by_state.merge(replica).unwrap();
            }
            prop_assert_eq!(by_state.value(), Some(expected));
            for order in permutations_of_four() {
                let mut by_delta = PnCounter::<CAPACITY>::new();
                for index in order {
                    by_delta.merge(&replicas[index].delta(NodeId(index as u32))).unwrap();
                }
                prop_assert_eq!(encode(&by_delta), encode(&by_state));
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
        fn decoding_arbitrary_bytes_never_panics_and_what_decodes_re_encodes_identically(
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(counter) = GCounter::<CAPACITY>::decode(&raw) {
                prop_assert_eq!(&encode(&counter)[..], &raw[..]);
            }
            if let Ok(counter) = PnCounter::<CAPACITY>::decode(&raw) {
                prop_assert_eq!(&encode(&counter)[..], &raw[..]);
            }
        }

        #[test]
        fn a_counter_round_trips_through_its_bytes(a in ops()) {
            let pn = pn_counter(&a);
            prop_assert_eq!(PnCounter::<CAPACITY>::decode(&encode(&pn)), Ok(pn));
            let g = counter(&a);
            prop_assert_eq!(GCounter::<CAPACITY>::decode(&encode(&g)), Ok(g));
        }

        #[test]
        fn a_refused_pn_merge_changes_nothing(a in ops(), b in ops()) {
            // Capacity 3 with up to 6 nodes: some merges do not fit.
            let mut small = PnCounter::<3>::new();
            let mut other = PnCounter::<3>::new();
            for (&(node, by, up), &(other_node, other_by, _)) in a.iter().zip(b.iter()) {
                let _ = if up { small.incr(NodeId(node), u64::from(by)) }
                    else { small.decr(NodeId(node), u64::from(by)) };
                let _ = other.decr(NodeId(other_node), u64::from(other_by));
            }
            let before = small.clone();
            if small.merge(&other).is_err() {
                prop_assert_eq!(small, before);
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
        assert_eq!(a, before);
    }

    #[test]
    fn an_overflowing_increment_is_refused() {
        let mut a = GCounter::<2>::new();
        a.incr(NodeId(1), u64::MAX).unwrap();
        let before = a.clone();
        assert_eq!(a.incr(NodeId(1), 1), Err(CrdtError::Overflow));
        assert_eq!(a, before);
        a.incr(NodeId(2), 1).unwrap();
        assert_eq!(a.value(), None, "the sum does not fit and says so");
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
    fn pn_counter_overflow_is_refused_and_changes_nothing() {
        let mut a = PnCounter::<4>::new();
        a.incr(NodeId(1), u64::MAX).unwrap();
        a.decr(NodeId(1), u64::MAX).unwrap();
        let before = a.clone();
        assert_eq!(a.incr(NodeId(1), 1), Err(CrdtError::Overflow));
        assert_eq!(a.decr(NodeId(1), 1), Err(CrdtError::Overflow));
        assert_eq!(a, before);
        assert_eq!(a.value(), Some(0));
    }

    #[test]
    fn pn_counter_value_reports_a_sum_that_does_not_fit() {
        let mut a = PnCounter::<4>::new();
        a.incr(NodeId(1), u64::MAX).unwrap();
        a.incr(NodeId(2), 1).unwrap();
        assert_eq!(a.value(), None);
        let mut b = PnCounter::<4>::new();
        b.decr(NodeId(1), u64::MAX).unwrap();
        assert_eq!(
            b.value(),
            Some(-i128::from(u64::MAX)),
            "the extremes still fit in i128"
        );
    }

    #[test]
    fn a_pn_merge_whose_second_half_does_not_fit_changes_neither_half() {
        let mut a = PnCounter::<1>::new();
        a.decr(NodeId(1), 1).unwrap();
        let mut b = PnCounter::<1>::new();
        b.incr(NodeId(1), 7).unwrap();
        b.decr(NodeId(2), 1).unwrap();
        let before = a.clone();
        assert_eq!(a.merge(&b), Err(CrdtError::Capacity));
        assert_eq!(a, before);
    }
}
