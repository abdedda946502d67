//! Version-vector arithmetic on contexts as stored (checked pair bytes, SPEC.md section 9), for
//! the sibling groups of reads: the join of the contexts before a page, the meet of those after
//! it, and the comparisons between them.
//!
//! A bound that would need more than `N` nodes is [`Bound::Unknown`]; every comparison with an
//! unknown bound answers "not ordered", so an overflow can only make entries look concurrent,
//! never hide a concurrency.

use super::wire;
use crate::crdt::{Causality, NodeId, VersionVector};

/// A version vector computed over a set of contexts.
#[derive(Debug, Clone)]
pub(super) enum Bound<const N: usize> {
    /// Above every vector: the meet of no context.
    Top,
    /// The vector.
    Known(VersionVector<N>),
    /// It needed more than `N` nodes.
    Unknown,
}

impl<const N: usize> Bound<N> {
    /// The zero vector: the join of no context.
    pub fn bottom() -> Self {
        Self::Known(VersionVector::new())
    }

    /// The vector of one context.
    pub fn of(context: &[u8]) -> Self {
        let mut bound = Self::bottom();
        bound.join(context);
        bound
    }

    /// Raises every node to at least its count in `context`.
    pub fn join(&mut self, context: &[u8]) {
        let Self::Known(vector) = self else {
            return;
        };
        for (node, count) in wire::pairs(context) {
            let have = vector.get(node);
            if count > have && vector.add(node, count - have).is_err() {
                *self = Self::Unknown;
                return;
            }
        }
    }

    /// Lowers every node to at most its count in `context`.
    pub fn meet(&mut self, context: &[u8]) {
        let vector = match self {
            Self::Top => {
                *self = Self::of(context);
                return;
            }
            Self::Unknown => return,
            Self::Known(vector) => vector,
        };
        let mut lowered = VersionVector::<N>::new();
        let mut theirs = wire::pairs(context).peekable();
        for (node, value) in vector.iter() {
            let count = count_of(&mut theirs, node);
            // At most as many nodes as `vector` has: there is room for each.
            let _ = lowered.add(node, value.min(count));
        }
        *vector = lowered;
    }

    /// True when this bound is at or below `context` at every node.
    pub fn below_context(&self, context: &[u8]) -> bool {
        let Self::Known(vector) = self else {
            return false;
        };
        let mut theirs = wire::pairs(context).peekable();
        vector
            .iter()
            .all(|(node, value)| value <= count_of(&mut theirs, node))
    }

    /// True when `context` is at or below this bound at every node.
    pub fn above_context(&self, context: &[u8]) -> bool {
        match self {
            Self::Top => true,
            Self::Unknown => false,
            Self::Known(vector) => {
                wire::pairs(context).all(|(node, count)| count <= vector.get(node))
            }
        }
    }

    /// True when this bound is at or below `other` at every node.
    pub fn below(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Unknown, _) | (_, Self::Unknown) => false,
            (_, Self::Top) => true,
            (Self::Top, Self::Known(_)) => false,
            (Self::Known(mine), Self::Known(theirs)) => {
                matches!(mine.compare(theirs), Causality::Equal | Causality::Before)
            }
        }
    }
}

/// The count of `node` in pairs sorted by node, consuming the pairs before it.
fn count_of(
    pairs: &mut core::iter::Peekable<impl Iterator<Item = (NodeId, u64)>>,
    node: NodeId,
) -> u64 {
    while pairs.next_if(|&(other, _)| other < node).is_some() {}
    pairs
        .next_if(|&(other, _)| other == node)
        .map_or(0, |(_, count)| count)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as StdVec;

    fn pairs_of(vector: &VersionVector<8>) -> StdVec<u8> {
        let mut bytes = StdVec::new();
        for pair in vector.iter() {
            let mut area = [0u8; 16];
            let used = postcard::to_slice(&pair, &mut area).unwrap();
            bytes.extend_from_slice(used);
        }
        bytes
    }

    fn vector(values: &[u64]) -> VersionVector<8> {
        let mut vector = VersionVector::new();
        for (node, &value) in values.iter().enumerate() {
            vector.add(NodeId(node as u32), value).unwrap();
        }
        vector
    }

    proptest! {
        #[test]
        fn bounds_agree_with_the_pointwise_definitions(
            a in proptest::collection::vec(0u64..4, 0..5),
            b in proptest::collection::vec(0u64..4, 0..5),
        ) {
            let (va, vb) = (vector(&a), vector(&b));
            let (pa, pb) = (pairs_of(&va), pairs_of(&vb));
            let le = |x: &VersionVector<8>, y: &VersionVector<8>| {
                x.iter().all(|(node, value)| value <= y.get(node))
            };
            let bound_a = Bound::<8>::of(&pa);
            prop_assert_eq!(bound_a.below_context(&pb), le(&va, &vb));
            prop_assert_eq!(bound_a.above_context(&pb), le(&vb, &va));
            prop_assert_eq!(bound_a.below(&Bound::of(&pb)), le(&va, &vb));
            let mut joined = bound_a.clone();
            joined.join(&pb);
            let mut meet = Bound::<8>::Top;
            meet.meet(&pa);
            meet.meet(&pb);
            for node in 0..5u32 {
                let node = NodeId(node);
                let (x, y) = (va.get(node), vb.get(node));
                let Bound::Known(joined) = &joined else { panic!("known") };
                let Bound::Known(meet) = &meet else { panic!("known") };
                prop_assert_eq!(joined.get(node), x.max(y));
                prop_assert_eq!(meet.get(node), x.min(y));
            }
        }
    }

    #[test]
    fn a_bound_past_its_capacity_orders_nothing() {
        let wide = pairs_of(&vector(&[1, 1, 1, 1]));
        let mut small = Bound::<2>::bottom();
        small.join(&wide);
        assert!(matches!(small, Bound::Unknown));
        assert!(!small.below_context(&wide));
        assert!(!small.above_context(&wide));
        assert!(!small.below(&Bound::Top));
        assert!(Bound::<2>::bottom().below(&Bound::Top));
    }
}
