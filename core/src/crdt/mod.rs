//! State-based CRDTs with fixed capacity: a per-node max map (the version vector), the grow-only
//! and positive-negative counters, the dotted version vector (a causal context) and the
//! multi-value register built on it.
//!
//! # Guarantees
//!
//! - `merge` is commutative, associative and idempotent for every type here, and every state is
//!   canonical: entries, dots and siblings are kept sorted, so two replicas that merged the same
//!   states in any order hold the same value and the same postcard bytes.
//! - Deltas: [`GCounter::delta`], [`PnCounter::delta`] and the delta returned by
//!   [`MvRegister::write`] are small states with the effect of the operations they stand for:
//!   the replica's state before the operation merged with the delta equals its state after.
//!   Deltas may be lost, repeated or reordered; a later full state repairs a lost one.
//! - No allocation: every capacity is a const generic. An operation whose result would need more
//!   room fails with [`CrdtError::Capacity`] and changes nothing; a count that would overflow
//!   fails with [`CrdtError::Overflow`] and changes nothing.
//! - Decoding untrusted bytes (`decode` on each type) never panics and accepts only the canonical
//!   bytes of a valid state (sorted, no duplicates, no redundant entry, minimal varints, no
//!   trailing bytes): a decoded state re-encodes to the very bytes it came from.
//! - No loop without a bound, no recursion; every sum is checked or bounded by a comparison.
//!
//! # Bytes
//!
//! The states are postcard values (SPEC.md §1): varints in their shortest form, a
//! `heapless::Vec` as a varint length then its elements, a struct as its fields in order.
//!
//! ```text
//! MaxMap, VersionVector  count, then count × (node: varint u32, value: varint u64);
//!                        nodes strictly increasing, no value 0
//! GCounter               MaxMap
//! PnCounter              increments: MaxMap, decrements: MaxMap
//! Dot                    node: varint u32, counter: varint u64
//! DottedVersionVector    vector: MaxMap, then count, then count × Dot;
//!                        dots strictly increasing, each counter ≥ vector[node] + 2
//! MvRegister             count, then count × (Dot, V) with dots strictly increasing and each
//!                        in the context; then context: DottedVersionVector
//! ```
//!
//! Golden vector (`a_register_has_the_documented_bytes`): a `MvRegister<u16, ..>` holding 300
//! written as 1:1 and 7 written as 2:3, with the context {1: 1} plus the dot 2:3, is
//! `02 01 01 ac 02 02 03 07 01 01 01 01 02 03`.
//!
//! # Not provided here
//!
//! - Garbage collection of departed nodes: a node id, once seen, keeps its entry forever, so the
//!   capacity `N` bounds the number of nodes over the cluster's life.
//! - Protection against a node that reuses its dots (for example after losing its state): the
//!   types stay convergent, but a reused dot can hide a write (see [`MvRegister::merge`]).
//! - Conflict resolution: [`MvRegister`] keeps concurrent writes as siblings; which one wins is
//!   the application's rule ([`MvRegister::resolve`]), never a hidden last-writer-wins.
//! - Authentication, framing and storage: these are plain values; the caller persists or sends
//!   their postcard bytes.

mod counter;
mod dotted;
mod max_map;
mod register;
#[cfg(test)]
mod test_support;

pub use counter::{GCounter, PnCounter};
pub use dotted::{Dot, DottedVersionVector};
pub use max_map::{MaxMap, VersionVector};
pub use register::MvRegister;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Identifies a node (a replica) of a cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NodeId(pub u32);

/// Why a CRDT operation was refused. Nothing changed, whichever the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CrdtError {
    /// The result would hold more entries (nodes, dots or siblings) than the capacity.
    /// Nothing changed.
    Capacity,
    /// A count would pass `u64::MAX`. Nothing changed.
    Overflow,
    /// Bytes that are not the canonical encoding of a valid state. Nothing was decoded.
    Malformed,
}

impl core::fmt::Display for CrdtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Capacity => "more entries than the CRDT's capacity",
            Self::Overflow => "a count would overflow u64",
            Self::Malformed => "bytes that are not a canonical CRDT state",
        })
    }
}

impl core::error::Error for CrdtError {}

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

impl Causality {
    /// The relation of two versions from whether each has seen only what the other has.
    fn from_coverage(self_within_other: bool, other_within_self: bool) -> Self {
        match (self_within_other, other_within_self) {
            (true, true) => Self::Equal,
            (true, false) => Self::Before,
            (false, true) => Self::After,
            (false, false) => Self::Concurrent,
        }
    }
}

/// Decodes a postcard value and accepts it only if its encoding is exactly `bytes`: no trailing
/// bytes and no overlong varint, so that a decoded state re-encodes to the same bytes. The
/// caller then checks the value's own invariants.
fn decode_exact<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, CrdtError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| CrdtError::Malformed)?;
    if !rest.is_empty() {
        return Err(CrdtError::Malformed);
    }
    let compare = SameBytes {
        expected: bytes,
        position: 0,
    };
    match postcard::serialize_with_flavor(&value, compare) {
        Ok(true) => Ok(value),
        _ => Err(CrdtError::Malformed),
    }
}

/// A postcard output that writes nothing and compares each byte with the expected encoding.
struct SameBytes<'a> {
    expected: &'a [u8],
    position: usize,
}

impl postcard::ser_flavors::Flavor for SameBytes<'_> {
    type Output = bool;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.expected.get(self.position) != Some(&data) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.position += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.position == self.expected.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::encode;

    #[test]
    fn a_register_has_the_documented_bytes() {
        type Register = MvRegister<u16, 4, 4, 4>;
        let empty = DottedVersionVector::new();
        let mut a = Register::new();
        a.write(NodeId(1), 300, &empty).unwrap();
        let mut b = Register::new();
        b.write(NodeId(2), 5, &empty).unwrap();
        b.write(NodeId(2), 6, &empty).unwrap();
        let delta = b.write(NodeId(2), 7, &empty).unwrap();
        a.merge(&delta).unwrap();
        let golden = [
            0x02, 0x01, 0x01, 0xac, 0x02, 0x02, 0x03, 0x07, 0x01, 0x01, 0x01, 0x01, 0x02, 0x03,
        ];
        assert_eq!(encode(&a), golden);
        assert_eq!(Register::decode(&golden), Ok(a));
    }
}
