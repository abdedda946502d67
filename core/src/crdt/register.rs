//! The multi-value register: concurrent writes are all kept, as siblings, until a write that has
//! read them replaces them.
//!
//! This is the optimized multi-value register of delta-state CRDTs (Almeida, Shoker and
//! Baquero, "Delta state replicated data types", 2018): a map from dots to values plus a causal
//! context ([`DottedVersionVector`]), which behaves as Riak's siblings under dotted version
//! vectors. A sibling survives a merge unless the other side's context has seen its dot and
//! the other side no longer holds it.

use super::{decode_exact, CrdtError, Dot, DottedVersionVector, NodeId};
use core::cmp::Ordering;
use heapless::Vec;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A multi-value register of values `V`, with a causal context of up to `N` nodes and `D`
/// out-of-order dots, holding up to `S` siblings.
///
/// `V` is any serde value with a total order, for example an integer or bounded bytes
/// (`heapless::Vec<u8, M>`); the order is used only to keep merges deterministic when two
/// states disagree on one dot (see [`Self::merge`]) and by the caller's own [`Self::resolve`].
///
/// Canonical form, kept by every operation and checked by [`Self::decode`]: siblings strictly
/// increasing by dot, every sibling's dot a real event (counter ≥ 1) in the context, and a
/// canonical context. Replicas that merged the same states in any order hold the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvRegister<V, const N: usize, const D: usize, const S: usize> {
    siblings: Vec<(Dot, V), S>,
    context: DottedVersionVector<N, D>,
}

impl<V, const N: usize, const D: usize, const S: usize> Default for MvRegister<V, N, D, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V, const N: usize, const D: usize, const S: usize> MvRegister<V, N, D, S> {
    /// The empty register: no value, nothing seen.
    pub const fn new() -> Self {
        Self {
            siblings: Vec::new(),
            context: DottedVersionVector::new(),
        }
    }

    /// The current siblings' values, in dot order, and the context to pass back to
    /// [`Self::write`] so that the write replaces exactly what was read.
    pub fn read(&self) -> (impl Iterator<Item = &V> + '_, &DottedVersionVector<N, D>) {
        (self.siblings.iter().map(|(_, value)| value), &self.context)
    }

    /// The siblings with the dots of the writes that made them, in dot order.
    pub fn siblings(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.siblings.iter().map(|(dot, value)| (*dot, value))
    }

    /// Every event this register has seen, including writes since replaced.
    pub fn context(&self) -> &DottedVersionVector<N, D> {
        &self.context
    }

    /// The application's choice among the siblings: the greatest under `compare`, and among
    /// siblings `compare` finds equal, the last in dot order. `None` when there is no value.
    ///
    /// The register itself never picks a winner; to make the choice stick, write the chosen
    /// value back with the context from [`Self::read`].
    pub fn resolve<F>(&self, mut compare: F) -> Option<&V>
    where
        F: FnMut(&V, &V) -> Ordering,
    {
        self.siblings
            .iter()
            .map(|(_, value)| value)
            .max_by(|a, b| compare(a, b))
    }
}

impl<V, const N: usize, const D: usize, const S: usize> MvRegister<V, N, D, S>
where
    V: Clone + Ord + Serialize + DeserializeOwned,
{
    /// `node` writes `value` after having read the context `seen` (from [`Self::read`] here or
    /// at another replica; an empty context for a blind write). The value replaces every
    /// sibling whose write `seen` covers; siblings written concurrently stay. The write is
    /// recorded as `node`'s next event.
    ///
    /// Returns the delta: a small state that, merged into any replica, has the effect of this
    /// write (this register before the write, merged with the delta, equals it after). Drop it
    /// when replicating whole states.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the siblings, the context or
    /// the delta's context would not fit; [`CrdtError::Overflow`] when `node`'s counter is at
    /// `u64::MAX`.
    pub fn write(
        &mut self,
        node: NodeId,
        value: V,
        seen: &DottedVersionVector<N, D>,
    ) -> Result<Self, CrdtError> {
        let mut context = self.context.clone();
        context.merge(seen)?;
        let dot = context.next_dot(node)?;
        context.add(dot)?;
        let mut delta = Self {
            siblings: Vec::new(),
            context: seen.clone(),
        };
        delta.context.add(dot)?;
        delta
            .siblings
            .push((dot, value.clone()))
            .map_err(|_| CrdtError::Capacity)?;
        let mut siblings: Vec<(Dot, V), S> = Vec::new();
        for (old, old_value) in self.siblings.iter() {
            if !seen.contains(*old) {
                push(&mut siblings, *old, old_value)?;
            }
        }
        // The dot is new to the context, which holds every sibling's dot: no sibling has it.
        let index = siblings
            .binary_search_by_key(&dot, |(old, _)| *old)
            .unwrap_or_else(|index| index);
        siblings
            .insert(index, (dot, value))
            .map_err(|_| CrdtError::Capacity)?;
        self.siblings = siblings;
        self.context = context;
        debug_assert!(self.is_canonical());
        Ok(delta)
    }

    /// Joins another replica's state (or a delta): a sibling stays unless the other side has
    /// seen its write and no longer holds it; the contexts are united.
    ///
    /// A dot names one write, so both sides normally hold the same value for a shared dot. If
    /// they do not (a node that lost its state and reused its counters), the greater value by
    /// `Ord` is kept so that replicas still converge; the other write is lost.
    ///
    /// Errors, with nothing changed: [`CrdtError::Capacity`] when the siblings or the united
    /// context would not fit.
    pub fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut context = self.context.clone();
        context.merge(&other.context)?;
        let mut siblings: Vec<(Dot, V), S> = Vec::new();
        let (mine, theirs) = (&self.siblings, &other.siblings);
        let (mut i, mut j) = (0, 0);
        // Each turn consumes at least one sibling: at most 2·S turns.
        loop {
            match (mine.get(i), theirs.get(j)) {
                (None, None) => break,
                (Some((a, x)), None) => {
                    i += 1;
                    push_unless_seen(&mut siblings, *a, x, &other.context)?;
                }
                (None, Some((b, y))) => {
                    j += 1;
                    push_unless_seen(&mut siblings, *b, y, &self.context)?;
                }
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    Ordering::Less => {
                        i += 1;
                        push_unless_seen(&mut siblings, *a, x, &other.context)?;
                    }
                    Ordering::Greater => {
                        j += 1;
                        push_unless_seen(&mut siblings, *b, y, &self.context)?;
                    }
                    Ordering::Equal => {
                        i += 1;
                        j += 1;
                        push(&mut siblings, *a, x.max(y))?;
                    }
                },
            }
        }
        self.siblings = siblings;
        self.context = context;
        debug_assert!(self.is_canonical());
        Ok(())
    }

    /// Decodes untrusted bytes, accepting only the canonical encoding of a canonical state
    /// (see the type's doc). `V`'s own decoding must not panic on any input.
    ///
    /// Errors: [`CrdtError::Malformed`]; nothing is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Self, CrdtError> {
        let register: Self = decode_exact(bytes)?;
        if !register.is_canonical() {
            return Err(CrdtError::Malformed);
        }
        Ok(register)
    }

    fn is_canonical(&self) -> bool {
        let sorted = self
            .siblings
            .iter()
            .zip(self.siblings.iter().skip(1))
            .all(|((before, _), (after, _))| before < after);
        let seen = self
            .siblings
            .iter()
            .all(|&(dot, _)| dot.counter != 0 && self.context.contains(dot));
        sorted && seen && self.context.is_canonical()
    }
}

/// Appends a sibling the other side's context has not seen (one it has seen and does not hold
/// was replaced there).
fn push_unless_seen<V: Clone, const N: usize, const D: usize, const S: usize>(
    siblings: &mut Vec<(Dot, V), S>,
    dot: Dot,
    value: &V,
    other_context: &DottedVersionVector<N, D>,
) -> Result<(), CrdtError> {
    if other_context.contains(dot) {
        return Ok(());
    }
    push(siblings, dot, value)
}

fn push<V: Clone, const S: usize>(
    siblings: &mut Vec<(Dot, V), S>,
    dot: Dot,
    value: &V,
) -> Result<(), CrdtError> {
    siblings
        .push((dot, value.clone()))
        .map_err(|_| CrdtError::Capacity)
}

#[cfg(test)]
mod tests;
