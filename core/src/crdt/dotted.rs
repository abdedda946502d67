//! Dots and the dotted version vector: a causal context that can hold events out of order.
//!
//! The structure is the causal context of delta-state CRDTs (Almeida, Shoker and Baquero,
//! "Delta state replicated data types", J. Parallel Distrib. Comput. 2018) in the compact form
//! of Baquero's reference implementation (`dotcontext` in delta-enabled-crdts): a version vector
//! for the events seen contiguously from each node's first, plus a "dot cloud" for events seen
//! out of order; a dot that becomes contiguous with the vector is folded into it. The dotted
//! version vector of Preguiça, Baquero, Almeida, Fonte and Gonçalves ("Dotted version vectors:
//! logical clocks for optimistic replication", 2010) is the special case of a vector plus one
//! dot; here the cloud holds up to `D` dots, as the clocks of Almeida, Baquero, Gonçalves,
//! Preguiça and Fonte ("Scalable and accurate causality tracking for eventually consistent
//! stores", DAIS 2014) need once deltas arrive out of order.

use super::{decode_exact, Causality, CrdtError, NodeId, VersionVector};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// One event: the `counter`-th event of `node`. Real events count from 1; a dot with counter
/// 0 names no event, every context contains it and adding it changes nothing.
///
/// Dots order by node, then counter; that order is the canonical order of dot clouds and of
/// register siblings.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Dot {
    /// The node whose event this is.
    pub node: NodeId,
    /// Which of the node's events, from 1.
    pub counter: u64,
}

/// A set of events (a causal context), stored as a version vector of up to `N` nodes plus a
/// cloud of up to `D` dots that are not contiguous with it.
///
/// Canonical form, kept by every operation and checked by [`Self::decode`]: the vector is a
/// canonical [`VersionVector`]; the cloud is strictly increasing and every dot in it is at least
/// two past its node's vector entry (a dot one past would be folded into the vector, a dot at
/// or below is already in it). Two equal sets of events therefore have equal bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DottedVersionVector<const N: usize, const D: usize> {
    vector: VersionVector<N>,
    cloud: Vec<Dot, D>,
}

impl<const N: usize, const D: usize> Default for DottedVersionVector<N, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const D: usize> DottedVersionVector<N, D> {
    /// The empty context: no event seen.
    pub const fn new() -> Self {
        Self {
            vector: VersionVector::new(),
            cloud: Vec::new(),
        }
    }

    /// True when the context has seen `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.vector.get(dot.node) || self.cloud.binary_search(&dot).is_ok()
    }

    /// Records the event `dot`; folds it, and any cloud dots it makes contiguous, into the
    /// vector. Adding a dot already seen changes nothing.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the dot's node is new to a
    /// full vector, or the dot must wait in a full cloud.
    pub fn add(&mut self, dot: Dot) -> Result<(), CrdtError> {
        if self.contains(dot) {
            return Ok(());
        }
        // Not contained, so the vector entry is below the counter and the sum cannot overflow.
        if dot.counter == self.vector.get(dot.node) + 1 {
            self.vector.add(dot.node, 1)?;
            self.absorb_contiguous(dot.node);
            debug_assert!(self.is_canonical());
            return Ok(());
        }
        match self.cloud.binary_search(&dot) {
            Ok(_) => Ok(()),
            Err(index) => self
                .cloud
                .insert(index, dot)
                .map_err(|_| CrdtError::Capacity),
        }
    }

    /// The next event of `node`: one past every event of `node` this context has seen, so that
    /// it is new to this context.
    ///
    /// Errors: [`CrdtError::Overflow`] when the node's counter is at `u64::MAX`. Nothing
    /// changes in any case: the dot is recorded only by [`Self::add`].
    pub fn next_dot(&self, node: NodeId) -> Result<Dot, CrdtError> {
        let in_cloud = self
            .cloud
            .iter()
            .filter(|dot| dot.node == node)
            .map(|dot| dot.counter)
            .max()
            .unwrap_or(0);
        let highest = self.vector.get(node).max(in_cloud);
        let counter = highest.checked_add(1).ok_or(CrdtError::Overflow)?;
        Ok(Dot { node, counter })
    }

    /// Takes the union of the two sets of events, in canonical form.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the union needs more than
    /// `N` nodes in its vector or more than `D` dots in its cloud.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut vector = self.vector.clone();
        vector.merge(&other.vector)?;
        let mut cloud: Vec<Dot, D> = Vec::new();
        let (mut i, mut j) = (0, 0);
        // Each turn consumes at least one dot: at most 2·D turns. The dots come in increasing
        // order, so once a dot must wait in the cloud, no later dot can fill the gap before it:
        // one pass yields the canonical form.
        loop {
            let dot = match (self.cloud.get(i), other.cloud.get(j)) {
                (None, None) => break,
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), Some(&b)) => {
                    i += usize::from(a <= b);
                    j += usize::from(b <= a);
                    a.min(b)
                }
            };
            let seen = vector.get(dot.node);
            if dot.counter <= seen {
                continue;
            }
            if dot.counter == seen + 1 {
                vector.add(dot.node, 1)?;
            } else {
                cloud.push(dot).map_err(|_| CrdtError::Capacity)?;
            }
        }
        self.vector = vector;
        self.cloud = cloud;
        debug_assert!(self.is_canonical());
        Ok(())
    }

    /// How the two sets of events relate: equal, a strict subset (before), a strict superset
    /// (after), or neither (concurrent).
    pub fn compare(&self, other: &Self) -> Causality {
        Causality::from_coverage(self.within(other), other.within(self))
    }

    /// The contiguous part: per node, the events `1..=n` seen.
    pub fn vector(&self) -> &VersionVector<N> {
        &self.vector
    }

    /// The events seen out of order, in increasing order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// True when no event has been seen.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.cloud.is_empty()
    }

    /// Decodes untrusted bytes, accepting only the canonical encoding of a canonical context.
    ///
    /// Errors: [`CrdtError::Malformed`]; nothing is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let context: Self = decode_exact(bytes)?;
        if !context.is_canonical() {
            return Err(CrdtError::Malformed);
        }
        Ok(context)
    }

    /// The form every operation keeps (see the type's doc).
    pub(super) fn is_canonical(&self) -> bool {
        let sorted = self
            .cloud
            .iter()
            .zip(self.cloud.iter().skip(1))
            .all(|(before, after)| before < after);
        let detached = self
            .cloud
            .iter()
            .all(|dot| dot.counter > self.vector.get(dot.node).saturating_add(1));
        self.vector.is_canonical() && sorted && detached
    }

    /// True when every event of `self` is in `other`. Because `other` is canonical, the event
    /// just past each of its vector entries is missing from it, so the vectors alone decide the
    /// contiguous parts.
    fn within(&self, other: &Self) -> bool {
        self.vector.within(&other.vector) && self.cloud.iter().all(|&dot| other.contains(dot))
    }

    /// Moves the cloud dots of `node` that are now contiguous with the vector into it.
    fn absorb_contiguous(&mut self, node: NodeId) {
        // Each turn removes one cloud dot: at most D turns.
        loop {
            let Some(counter) = self.vector.get(node).checked_add(1) else {
                return;
            };
            let Ok(index) = self.cloud.binary_search(&Dot { node, counter }) else {
                return;
            };
            self.cloud.remove(index);
            // The node has an entry now, so this needs no room and cannot overflow.
            let _ = self.vector.add(node, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::test_support::{encode, permutations_of_four};
    use proptest::prelude::*;

    type Context = DottedVersionVector<4, 16>;

    fn dot(node: u32, counter: u64) -> Dot {
        Dot {
            node: NodeId(node),
            counter,
        }
    }

    /// A context from up to 8 dots of 3 nodes, counters 1 to 6, added in the given order.
    fn dots() -> impl Strategy<Value = std::vec::Vec<Dot>> {
        proptest::collection::vec((0u32..3, 1u64..7).prop_map(|(n, c)| dot(n, c)), 0..8)
    }

    fn context(dots: &[Dot]) -> Context {
        let mut context = Context::new();
        for &dot in dots {
            context.add(dot).unwrap();
        }
        context
    }

    fn merged(a: &Context, b: &Context) -> Context {
        let mut result = a.clone();
        result.merge(b).unwrap();
        result
    }

    extern crate std;

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(a in dots(), b in dots(), c in dots()) {
            let (a, b, c) = (context(&a), context(&b), context(&c));
            prop_assert_eq!(encode(&merged(&a, &b)), encode(&merged(&b, &a)));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&merged(&a, &b), &b), merged(&a, &b));
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn the_context_is_the_set_of_dots_added_whatever_the_order(
            mut added in dots(), probe_node in 0u32..3, probe_counter in 1u64..8,
        ) {
            let forward = context(&added);
            prop_assert!(forward.is_canonical());
            let probe = dot(probe_node, probe_counter);
            prop_assert_eq!(forward.contains(probe), added.contains(&probe));
            added.reverse();
            prop_assert_eq!(encode(&context(&added)), encode(&forward));
        }

        #[test]
        fn adding_dots_one_by_one_equals_merging_them_as_contexts(a in dots(), b in dots()) {
            let mut by_add = context(&a);
            for &dot in &b {
                by_add.add(dot).unwrap();
            }
            let mut singletons = context(&a);
            for &dot in &b {
                singletons.merge(&context(&[dot])).unwrap();
            }
            prop_assert_eq!(&by_add, &singletons);
            prop_assert_eq!(by_add, merged(&context(&a), &context(&b)));
        }

        #[test]
        fn any_merge_order_of_four_contexts_gives_the_same_bytes(
            a in dots(), b in dots(), c in dots(), d in dots(),
        ) {
            let replicas = [context(&a), context(&b), context(&c), context(&d)];
            let mut first = None;
            for order in permutations_of_four() {
                let mut result = Context::new();
                for index in order {
                    result.merge(&replicas[index]).unwrap();
                }
                let bytes = encode(&result);
                prop_assert_eq!(first.get_or_insert(bytes.clone()), &bytes);
            }
        }

        #[test]
        fn compare_agrees_with_the_sets_of_dots(a in dots(), b in dots()) {
            let (a, b) = (context(&a), context(&b));
            let union = merged(&a, &b);
            prop_assert_eq!(a.compare(&b), Causality::from_coverage(union == b, union == a));
        }

        #[test]
        fn the_next_dot_is_new_and_adding_it_keeps_the_rest(a in dots(), node in 0u32..4) {
            let mut a = context(&a);
            let next = a.next_dot(NodeId(node)).unwrap();
            prop_assert!(!a.contains(next));
            let before = a.clone();
            a.add(next).unwrap();
            prop_assert_eq!(a.compare(&before), Causality::After);
            prop_assert!(a.contains(next));
        }

        #[test]
        fn a_refused_add_or_merge_changes_nothing(a in dots(), b in dots()) {
            // Two nodes and two cloud dots: many of these do not fit.
            let mut small = DottedVersionVector::<2, 2>::new();
            for &dot in &a {
                let before = small.clone();
                if small.add(dot).is_err() {
                    prop_assert_eq!(&small, &before);
                }
            }
            let mut other = DottedVersionVector::<2, 2>::new();
            for &dot in &b {
                let _ = other.add(dot);
            }
            let before = small.clone();
            match small.merge(&other) {
                Ok(()) => prop_assert!(small.is_canonical()),
                Err(error) => {
                    prop_assert_eq!(error, CrdtError::Capacity);
                    prop_assert_eq!(small, before);
                }
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_what_decodes_re_encodes_identically(
            raw in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            if let Ok(context) = Context::decode(&raw) {
                prop_assert!(context.is_canonical());
                prop_assert_eq!(&encode(&context)[..], &raw[..]);
            }
        }

        #[test]
        fn decoding_a_damaged_state_never_panics_and_accepts_only_canonical_ones(
            a in dots(), position in any::<usize>(), byte in any::<u8>(),
        ) {
            let mut bytes = encode(&context(&a));
            prop_assert_eq!(Context::decode(&bytes), Ok(context(&a)));
            let index = position % bytes.len();
            bytes[index] = byte;
            if let Ok(context) = Context::decode(&bytes) {
                prop_assert!(context.is_canonical());
                prop_assert_eq!(encode(&context), bytes);
            }
        }
    }

    #[test]
    fn a_dot_contiguous_with_the_vector_is_folded_into_it() {
        let mut context = Context::new();
        context.add(dot(1, 3)).unwrap();
        context.add(dot(1, 2)).unwrap();
        assert_eq!(context.cloud().count(), 2, "1:2 and 1:3 wait for 1:1");
        assert_eq!(context.vector().get(NodeId(1)), 0);
        context.add(dot(1, 1)).unwrap();
        assert_eq!(context.cloud().count(), 0);
        assert_eq!(context.vector().get(NodeId(1)), 3);
    }

    #[test]
    fn the_next_dot_passes_every_event_of_the_node_seen_even_out_of_order() {
        let mut context = Context::new();
        context.add(dot(1, 1)).unwrap();
        context.add(dot(1, 5)).unwrap();
        assert_eq!(context.next_dot(NodeId(1)), Ok(dot(1, 6)));
        assert_eq!(context.next_dot(NodeId(2)), Ok(dot(2, 1)));
    }

    #[test]
    fn a_node_at_the_last_counter_has_no_next_dot() {
        let mut context = DottedVersionVector::<2, 2>::new();
        context.add(dot(1, u64::MAX)).unwrap();
        assert_eq!(context.next_dot(NodeId(1)), Err(CrdtError::Overflow));
    }

    #[test]
    fn contexts_with_out_of_order_dots_compare_as_sets() {
        let a = context(&[dot(1, 1), dot(1, 3)]);
        let b = context(&[dot(1, 1), dot(1, 2)]);
        assert_eq!(a.compare(&b), Causality::Concurrent);
        let c = context(&[dot(1, 1), dot(1, 2), dot(1, 3)]);
        assert_eq!(a.compare(&c), Causality::Before);
        assert_eq!(c.compare(&b), Causality::After);
        assert_eq!(c.compare(&merged(&a, &b)), Causality::Equal);
    }

    #[test]
    fn a_cloud_dot_next_to_the_vector_is_refused_when_decoding() {
        // Vector {1: 1}, cloud [1:2]: the canonical form would hold {1: 2} and no cloud.
        let bytes = [1, 1, 1, 1, 1, 2];
        assert_eq!(Context::decode(&bytes), Err(CrdtError::Malformed));
        let canonical = context(&[dot(1, 1), dot(1, 2)]);
        assert_eq!(encode(&canonical), [1, 1, 2, 0]);
    }
}
