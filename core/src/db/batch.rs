//! Write batches: puts and deletes applied all or nothing, as one record of the write-ahead
//! log.
//!
//! ```text
//! record:  varint first_sequence | varint count | op [count]
//! op:      kind u8 (0 put, 1 delete) | varint key_len | key | (put only) varint value_len | value
//! ```
//!
//! The `i`-th operation gets sequence number `first_sequence + i`. A record is one frame of the
//! storage log, so a torn or corrupt record is dropped whole by the log's recovery: a batch is
//! never half applied.

use super::block::{Kind, KEY_LEN_MAX, SEQUENCE_MAX};
use crate::varint;

/// Why an operation was not added to a batch. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BatchError {
    /// The batch's buffer has no room for it.
    Full,
    /// The key is empty or longer than [`KEY_LEN_MAX`].
    BadKey,
}

/// Bytes that are not a valid batch record: the record is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Malformed;

/// A batch being built in a lent buffer.
#[derive(Debug)]
pub struct Batch<B> {
    buffer: B,
    len: usize,
    count: u64,
}

impl<B: AsMut<[u8]> + AsRef<[u8]>> Batch<B> {
    /// An empty batch in `buffer` (its length bounds the batch's encoded operations).
    pub fn new(buffer: B) -> Self {
        Self {
            buffer,
            len: 0,
            count: 0,
        }
    }

    /// Operations in the batch.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded operations.
    pub fn operations(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.len]
    }

    /// The operations, in order: kind, key and value (empty for a delete).
    pub fn iter(&self) -> impl Iterator<Item = (Kind, &[u8], &[u8])> + '_ {
        let mut rest = self.operations();
        core::iter::from_fn(move || {
            // Encoded by `push`, so every operation decodes.
            let (raw, used) = operation(rest)?;
            rest = &rest[used..];
            Some(raw)
        })
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.len = 0;
        self.count = 0;
    }

    /// Adds a put of `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BatchError> {
        self.push(Kind::Put, key, value)
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), BatchError> {
        self.push(Kind::Delete, key, &[])
    }

    fn push(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> Result<(), BatchError> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(BatchError::BadKey);
        }
        let mut needed = 1 + varint::len(key.len() as u64) + key.len();
        if kind == Kind::Put {
            needed += varint::len(value.len() as u64) + value.len();
        }
        let out = self.buffer.as_mut();
        let end = self.len.checked_add(needed).ok_or(BatchError::Full)?;
        if end > out.len() {
            return Err(BatchError::Full);
        }
        let mut at = self.len;
        out[at] = u8::from(kind == Kind::Delete);
        at += 1;
        at += varint::encode(key.len() as u64, &mut out[at..]).ok_or(BatchError::Full)?;
        out[at..at + key.len()].copy_from_slice(key);
        at += key.len();
        if kind == Kind::Put {
            at += varint::encode(value.len() as u64, &mut out[at..]).ok_or(BatchError::Full)?;
            out[at..at + value.len()].copy_from_slice(value);
            at += value.len();
        }
        self.len = at;
        self.count += 1;
        Ok(())
    }
}

/// The record length of `operations` (a batch's) of `count` operations from `first_sequence`.
pub fn record_len(first_sequence: u64, count: u64, operations: &[u8]) -> usize {
    varint::len(first_sequence) + varint::len(count) + operations.len()
}

/// Writes the record of a batch (`count` operations encoded in `operations`) numbered from
/// `first_sequence` into `out`; its length, or `None` when `out` is too short.
pub fn encode_record(
    first_sequence: u64,
    count: u64,
    operations: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let mut at = varint::encode(first_sequence, out)?;
    at += varint::encode(count, out.get_mut(at..)?)?;
    out.get_mut(at..at + operations.len())?
        .copy_from_slice(operations);
    Some(at + operations.len())
}

/// One operation of a decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation<'a> {
    /// Its sequence number.
    pub sequence: u64,
    /// Put or delete.
    pub kind: Kind,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

/// A checked record: its operations, in order.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The first operation's sequence number.
    pub first_sequence: u64,
    /// How many operations.
    pub count: u64,
    operations: &'a [u8],
}

/// Checks a whole record: every operation decodes, the count matches, nothing trails, and the
/// sequence numbers stay within [`SEQUENCE_MAX`].
pub fn decode_record(payload: &[u8]) -> Result<Record<'_>, Malformed> {
    let (first_sequence, first) = varint::decode(payload).ok_or(Malformed)?;
    let (count, second) = varint::decode(&payload[first..]).ok_or(Malformed)?;
    let last = first_sequence
        .checked_add(count.saturating_sub(1))
        .ok_or(Malformed)?;
    if count == 0 || last > SEQUENCE_MAX {
        return Err(Malformed);
    }
    let record = Record {
        first_sequence,
        count,
        operations: &payload[first + second..],
    };
    let mut seen = 0u64;
    let mut rest = record.operations;
    while !rest.is_empty() {
        let (_, used) = operation(rest).ok_or(Malformed)?;
        rest = &rest[used..];
        seen += 1;
    }
    if seen != count {
        return Err(Malformed);
    }
    Ok(record)
}

/// An operation without its sequence number: kind, key, value.
type Raw<'a> = (Kind, &'a [u8], &'a [u8]);

/// One operation at the start of `bytes`, and its length.
fn operation(bytes: &[u8]) -> Option<(Raw<'_>, usize)> {
    let kind = match bytes.first()? {
        0 => Kind::Put,
        1 => Kind::Delete,
        _ => return None,
    };
    let mut at = 1;
    let (key_len, used) = varint::decode(&bytes[at..])?;
    at += used;
    let key_len = usize::try_from(key_len).ok()?;
    if key_len == 0 || key_len > KEY_LEN_MAX {
        return None;
    }
    let key = bytes.get(at..at.checked_add(key_len)?)?;
    at += key_len;
    let mut value: &[u8] = &[];
    if kind == Kind::Put {
        let (value_len, used) = varint::decode(&bytes[at..])?;
        at += used;
        let value_len = usize::try_from(value_len).ok()?;
        value = bytes.get(at..at.checked_add(value_len)?)?;
        at += value_len;
    }
    Some(((kind, key, value), at))
}

impl<'a> Record<'a> {
    /// The operations, in order, with their sequence numbers.
    pub fn operations(&self) -> impl Iterator<Item = Operation<'a>> + 'a {
        let mut rest = self.operations;
        let mut sequence = self.first_sequence;
        core::iter::from_fn(move || {
            // Checked whole by `decode_record`.
            let ((kind, key, value), used) = operation(rest)?;
            rest = &rest[used..];
            let this = sequence;
            sequence += 1;
            Some(Operation {
                sequence: this,
                kind,
                key,
                value,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as HeapVec;

    proptest! {
        #[test]
        fn records_round_trip(
            ops in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..30)),
                1..50,
            ),
            first in 1u64..(1 << 40),
        ) {
            let mut batch = Batch::new(std::vec![0u8; 4096]);
            for (delete, key, value) in &ops {
                if *delete {
                    batch.delete(key).unwrap();
                } else {
                    batch.put(key, value).unwrap();
                }
            }
            let mut out = std::vec![0u8; 4200];
            let len = encode_record(first, batch.count(), batch.operations(), &mut out).unwrap();
            prop_assert_eq!(len, record_len(first, batch.count(), batch.operations()));
            let record = decode_record(&out[..len]).unwrap();
            let decoded: HeapVec<_> = record
                .operations()
                .map(|op| (op.sequence, op.kind == Kind::Delete, op.key.to_vec(), op.value.to_vec()))
                .collect();
            let expected: HeapVec<_> = ops
                .iter()
                .enumerate()
                .map(|(index, (delete, key, value))| {
                    let value = if *delete { HeapVec::new() } else { value.clone() };
                    (first + index as u64, *delete, key.clone(), value)
                })
                .collect();
            prop_assert_eq!(decoded, expected);
            // Cut anywhere, a record is refused whole.
            for cut in 0..len {
                prop_assert!(decode_record(&out[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(record) = decode_record(&bytes) {
                prop_assert_eq!(record.operations().count() as u64, record.count);
            }
        }
    }

    #[test]
    fn a_full_batch_refuses_and_keeps_what_it_had() {
        let mut batch = Batch::new([0u8; 16]);
        batch.put(b"key", b"value").unwrap();
        assert_eq!(batch.put(b"key2", b"a longer value"), Err(BatchError::Full));
        assert_eq!(batch.delete(b""), Err(BatchError::BadKey));
        assert_eq!(batch.count(), 1);
        let mut out = [0u8; 32];
        let len = encode_record(7, batch.count(), batch.operations(), &mut out).unwrap();
        let record = decode_record(&out[..len]).unwrap();
        assert_eq!(record.operations().count(), 1);
        assert_eq!(
            decode_record(&[7, 0]).err(),
            Some(Malformed),
            "an empty batch"
        );
    }
}
