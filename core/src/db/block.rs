//! Sorted blocks: the unit an SSTable is made of, written once, read and checked whole.
//!
//! ```text
//! entry:   varint shared | varint unshared | varint value_len | varint trailer
//!          | key bytes [unshared] | value bytes [value_len]
//! block:   entry… | restart u32 LE… | restart_count u32 LE | crc32c u32 LE
//! ```
//!
//! Entries are in [`order`]: key ascending (bytewise), then sequence number descending, so the
//! newest version of a key comes first. `shared` counts the bytes an entry's key has in common
//! with the previous entry's (0 at a restart point, every [`RESTART_INTERVAL`] entries: the
//! points a seek searches by bisection). `trailer` is `sequence << 1 | kind` ([`Kind`]); a
//! delete (a tombstone) has no value. The CRC-32C covers every byte before it. A block that
//! fails its CRC, or whose restarts or entries point outside it or out of order, is
//! [`Corrupt`]: it is never read as data.

use core::cmp::Ordering;

use heapless::Vec;

use crate::checksum::crc32c;
use crate::varint;

/// The longest key, in bytes: 512, or 64 with the `db-small` feature.
///
/// Keys are held inline (heapless) in the engine's table metadata, cursors and positions, so
/// this bound sets much of the engine's RAM: with `TABLES` live tables the engine holds
/// `2 · TABLES` keys of this size, recovery that again, and a compaction or scan one per
/// source. `db-small` is for small targets (firmware with tens of KiB of RAM); it lowers the
/// bound, so a configuration with a longer `key_len_max` is refused at open
/// ([`ConfigError::KeyLen`](super::engine::ConfigError::KeyLen)), never truncated.
#[cfg(not(feature = "db-small"))]
pub const KEY_LEN_MAX: usize = 512;
/// The longest key, in bytes: 512, or 64 with the `db-small` feature (this build).
#[cfg(feature = "db-small")]
pub const KEY_LEN_MAX: usize = 64;
/// Entries between two restart points.
pub const RESTART_INTERVAL: usize = 16;
/// The most restart points in one block (a builder refuses entries beyond, and the block is
/// finished): 512, or 64 with the `db-small` feature. A block builder holds this many offsets
/// inline (2 KiB at 512), and a table writer two builders; 64 restart points are 1,024
/// entries, more than a block of a small target holds. Only writers use it: blocks written
/// with either bound read the same.
#[cfg(not(feature = "db-small"))]
pub const RESTARTS_MAX: usize = 512;
/// The most restart points in one block: 512, or 64 with the `db-small` feature (this build).
#[cfg(feature = "db-small")]
pub const RESTARTS_MAX: usize = 64;
/// Bytes after the entries besides the restart array: its count and the CRC.
const TAIL_LEN: usize = 8;
/// The most a sequence number may be: it shares its varint with the kind bit.
pub const SEQUENCE_MAX: u64 = (1 << 62) - 1;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Kind {
    /// The key has this value from this sequence number on.
    Put,
    /// The key is deleted from this sequence number on (a tombstone).
    Delete,
}

/// One entry: a version of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The write's sequence number.
    pub sequence: u64,
    /// Put or delete.
    pub kind: Kind,
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

/// The order of entries: key ascending, then sequence number descending.
pub fn order(key: &[u8], sequence: u64, other_key: &[u8], other_sequence: u64) -> Ordering {
    key.cmp(other_key)
        .then_with(|| other_sequence.cmp(&sequence))
}

/// A block that is not what a builder writes: damaged, or not a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Corrupt;

/// Why an entry was not added. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AddError {
    /// The block has no room for it: finish this block and start another.
    Full,
    /// It does not come after the previous entry in [`order`].
    OutOfOrder,
    /// The key is empty or longer than [`KEY_LEN_MAX`], the sequence number above
    /// [`SEQUENCE_MAX`], or a delete carries a value.
    Invalid,
}

/// Builds one block in a lent buffer (its length is the block's size limit).
#[derive(Debug)]
pub struct BlockBuilder<'a> {
    buffer: &'a mut [u8],
    len: usize,
    entries: usize,
    restarts: Vec<u32, RESTARTS_MAX>,
    last_key: Vec<u8, KEY_LEN_MAX>,
    last_sequence: u64,
}

impl<'a> BlockBuilder<'a> {
    /// An empty block to be built in `buffer`.
    pub fn new(buffer: &'a mut [u8]) -> Self {
        Self {
            buffer,
            len: 0,
            entries: 0,
            restarts: Vec::new(),
            last_key: Vec::new(),
            last_sequence: 0,
        }
    }

    /// Entries added so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The bytes the block would take if finished now.
    pub fn size(&self) -> usize {
        self.len + 4 * self.restarts.len() + TAIL_LEN
    }

    /// The last key added (empty before the first entry).
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// The last sequence number added (0 before the first entry).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Adds `entry`, which must follow the previous one in [`order`].
    pub fn add(&mut self, entry: &Entry<'_>) -> Result<(), AddError> {
        let valid = !entry.key.is_empty()
            && entry.key.len() <= KEY_LEN_MAX
            && entry.sequence <= SEQUENCE_MAX
            && (entry.kind == Kind::Put || entry.value.is_empty());
        if !valid {
            return Err(AddError::Invalid);
        }
        if self.entries > 0
            && order(
                entry.key,
                entry.sequence,
                &self.last_key,
                self.last_sequence,
            ) != Ordering::Greater
        {
            return Err(AddError::OutOfOrder);
        }
        let restart = self.entries.is_multiple_of(RESTART_INTERVAL);
        let shared = if restart {
            0
        } else {
            common_prefix(&self.last_key, entry.key)
        };
        let unshared = entry.key.len() - shared;
        let trailer = entry.sequence << 1 | u64::from(entry.kind == Kind::Delete);
        let head = [
            shared as u64,
            unshared as u64,
            entry.value.len() as u64,
            trailer,
        ];
        let entry_len: usize = head.iter().map(|&field| varint::len(field)).sum::<usize>()
            + unshared
            + entry.value.len();
        let restarts_after = self.restarts.len() + usize::from(restart);
        let size_after = self.len + entry_len + 4 * restarts_after + TAIL_LEN;
        if size_after > self.buffer.len() || restarts_after > RESTARTS_MAX {
            return Err(AddError::Full);
        }
        if restart {
            // Fits: checked against RESTARTS_MAX above; offsets fit u32 as blocks are small.
            let _ = self.restarts.push(self.len as u32);
        }
        let mut at = self.len;
        for field in head {
            at += varint::encode(field, &mut self.buffer[at..]).ok_or(AddError::Full)?;
        }
        self.buffer[at..at + unshared].copy_from_slice(&entry.key[shared..]);
        at += unshared;
        self.buffer[at..at + entry.value.len()].copy_from_slice(entry.value);
        at += entry.value.len();
        self.len = at;
        self.entries += 1;
        self.last_key.truncate(shared);
        // Fits: the key's length was checked against KEY_LEN_MAX.
        let _ = self.last_key.extend_from_slice(&entry.key[shared..]);
        self.last_sequence = entry.sequence;
        Ok(())
    }

    /// Starts an empty block in the same buffer.
    pub fn reset(&mut self) {
        self.len = 0;
        self.entries = 0;
        self.restarts.clear();
        self.last_key.clear();
        self.last_sequence = 0;
    }

    /// Writes the restart array, the count and the CRC: the finished block, at the start of
    /// the buffer. Adding after it needs a [`BlockBuilder::reset`] first.
    pub fn finish(&mut self) -> &[u8] {
        let mut at = self.len;
        for restart in &self.restarts {
            self.buffer[at..at + 4].copy_from_slice(&restart.to_le_bytes());
            at += 4;
        }
        let count = self.restarts.len() as u32;
        self.buffer[at..at + 4].copy_from_slice(&count.to_le_bytes());
        at += 4;
        let crc = crc32c(&self.buffer[..at]);
        self.buffer[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at += 4;
        &self.buffer[..at]
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// A block whose CRC and restart array were checked.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    /// The entries' bytes.
    entries: &'a [u8],
    /// The restart array's bytes.
    restarts: &'a [u8],
}

impl<'a> Block<'a> {
    /// Checks `bytes` (a whole block as [`BlockBuilder::finish`] returned it).
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Corrupt> {
        let body_len = bytes.len().checked_sub(4).ok_or(Corrupt)?;
        let stored = read_u32(bytes, body_len).ok_or(Corrupt)?;
        if crc32c(&bytes[..body_len]) != stored {
            return Err(Corrupt);
        }
        Self::new_trusted(bytes)
    }

    /// As [`Block::new_checked`] without the CRC: for bytes checked when they were read, and
    /// looked at again. Entries are still checked as they are decoded.
    pub fn new_trusted(bytes: &'a [u8]) -> Result<Self, Corrupt> {
        let body_len = bytes.len().checked_sub(4).ok_or(Corrupt)?;
        let count_at = body_len.checked_sub(4).ok_or(Corrupt)?;
        let count = read_u32(bytes, count_at).ok_or(Corrupt)? as usize;
        let restarts_len = count.checked_mul(4).ok_or(Corrupt)?;
        let entries_len = count_at.checked_sub(restarts_len).ok_or(Corrupt)?;
        let block = Self {
            entries: &bytes[..entries_len],
            restarts: &bytes[entries_len..count_at],
        };
        // Restarts must start at 0 (when there are entries) and increase within the entries.
        let mut previous = None;
        for index in 0..count {
            let offset = block.restart(index).ok_or(Corrupt)?;
            let first_ok = index > 0 || offset == 0;
            if !first_ok || offset >= entries_len || previous.is_some_and(|p| offset <= p) {
                return Err(Corrupt);
            }
            previous = Some(offset);
        }
        if (count == 0) != (entries_len == 0) {
            return Err(Corrupt);
        }
        Ok(block)
    }

    fn restart_count(&self) -> usize {
        self.restarts.len() / 4
    }

    fn restart(&self, index: usize) -> Option<usize> {
        read_u32(self.restarts, index.checked_mul(4)?).map(|offset| offset as usize)
    }

    /// A cursor before the first entry.
    pub fn cursor(&self) -> Cursor<'a> {
        Cursor {
            block: *self,
            at: 0,
            key: Vec::new(),
            sequence: None,
        }
    }

    /// A cursor at the first entry not before `(key, sequence)` in [`order`]: for the newest
    /// version of `key` visible at `sequence`, seek `(key, sequence)`.
    pub fn seek(&self, key: &[u8], sequence: u64) -> Result<Cursor<'a>, Corrupt> {
        // The last restart whose first key is before the target: bisection over restarts.
        let (mut low, mut high) = (0usize, self.restart_count());
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            let mut probe = Cursor {
                block: *self,
                at: self.restart(middle).ok_or(Corrupt)?,
                key: Vec::new(),
                sequence: None,
            };
            let entry = probe.next()?.ok_or(Corrupt)?;
            if order(entry.key, entry.sequence, key, sequence) == Ordering::Less {
                low = middle;
            } else {
                high = middle;
            }
        }
        let mut cursor = Cursor {
            block: *self,
            at: self.restart(low).unwrap_or(0),
            key: Vec::new(),
            sequence: None,
        };
        // Then linearly, at most one restart interval.
        loop {
            let before = cursor.clone();
            match cursor.next()? {
                Some(entry)
                    if order(entry.key, entry.sequence, key, sequence) == Ordering::Less => {}
                _ => return Ok(before),
            }
        }
    }
}

/// Where a cursor stands, apart from the block's bytes: to keep a scan's place while the
/// buffer is borrowed elsewhere ([`Cursor::position`], [`Block::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    at: usize,
    key: Vec<u8, KEY_LEN_MAX>,
    sequence: Option<u64>,
}

impl Position {
    /// The key of the entry the cursor read last (empty before the first).
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl<'a> Block<'a> {
    /// A cursor where `position` (taken from a cursor over the same bytes) stood.
    pub fn resume(&self, position: Position) -> Cursor<'a> {
        Cursor {
            block: *self,
            at: position.at,
            key: position.key,
            sequence: position.sequence,
        }
    }
}

/// A position in a block; [`Cursor::next`] decodes entries in order.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    block: Block<'a>,
    at: usize,
    /// The previous entry's key (prefix compression is against it).
    key: Vec<u8, KEY_LEN_MAX>,
    /// The previous entry's sequence number; `None` before the first entry read.
    sequence: Option<u64>,
}

impl<'a> Cursor<'a> {
    /// Where this cursor stands (see [`Block::resume`]).
    pub fn position(&self) -> Position {
        Position {
            at: self.at,
            key: self.key.clone(),
            sequence: self.sequence,
        }
    }

    /// The next entry, `None` after the last; a damaged entry is [`Corrupt`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry<'_>>, Corrupt> {
        let bytes = self.block.entries;
        if self.at >= bytes.len() {
            return Ok(None);
        }
        let mut at = self.at;
        let mut field = || -> Result<u64, Corrupt> {
            let (value, used) = varint::decode(&bytes[at..]).ok_or(Corrupt)?;
            at += used;
            Ok(value)
        };
        let shared = field()? as usize;
        let unshared = field()? as usize;
        let value_len = field()? as usize;
        let trailer = field()?;
        let key_end = at.checked_add(unshared).ok_or(Corrupt)?;
        let value_end = key_end.checked_add(value_len).ok_or(Corrupt)?;
        if shared > self.key.len() || value_end > bytes.len() {
            return Err(Corrupt);
        }
        let kind = if trailer & 1 == 1 {
            Kind::Delete
        } else {
            Kind::Put
        };
        let sequence = trailer >> 1;
        let tail = &bytes[at..key_end];
        if let Some(previous) = self.sequence {
            // The keys share `shared` bytes, so the tails decide their order.
            let after = match tail.cmp(&self.key[shared..]) {
                Ordering::Equal => sequence < previous,
                ordering => ordering == Ordering::Greater,
            };
            if !after {
                return Err(Corrupt);
            }
        }
        self.key.truncate(shared);
        self.key.extend_from_slice(tail).map_err(|_| Corrupt)?;
        if self.key.is_empty() || (kind == Kind::Delete && value_len > 0) {
            return Err(Corrupt);
        }
        self.at = value_end;
        self.sequence = Some(sequence);
        Ok(Some(Entry {
            key: &self.key,
            sequence,
            kind,
            value: &bytes[key_end..value_end],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as HeapVec;

    type Owned = (HeapVec<u8>, u64, Kind, HeapVec<u8>);

    fn entries() -> impl Strategy<Value = HeapVec<Owned>> {
        let key = proptest::collection::vec(0u8..4, 1..12);
        let value = proptest::collection::vec(any::<u8>(), 0..40);
        proptest::collection::vec((key, 0u64..1000, any::<bool>(), value), 0..300).prop_map(
            |mut raw| {
                raw.sort_by(|a, b| order(&a.0, a.1, &b.0, b.1));
                raw.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
                raw.into_iter()
                    .map(|(key, sequence, delete, value)| {
                        if delete {
                            (key, sequence, Kind::Delete, HeapVec::new())
                        } else {
                            (key, sequence, Kind::Put, value)
                        }
                    })
                    .collect()
            },
        )
    }

    fn entry(owned: &Owned) -> Entry<'_> {
        Entry {
            key: &owned.0,
            sequence: owned.1,
            kind: owned.2,
            value: &owned.3,
        }
    }

    /// Builds blocks of at most `size` bytes from `entries`, in order.
    fn build(entries: &[Owned], size: usize) -> HeapVec<HeapVec<u8>> {
        let mut blocks = HeapVec::new();
        let mut buffer = std::vec![0u8; size];
        let mut builder = BlockBuilder::new(&mut buffer);
        for owned in entries {
            match builder.add(&entry(owned)) {
                Ok(()) => {}
                Err(AddError::Full) => {
                    assert!(builder.entries() > 0, "one entry always fits a fresh block");
                    blocks.push(builder.finish().to_vec());
                    builder.reset();
                    builder.add(&entry(owned)).unwrap();
                }
                Err(error) => panic!("{error:?}"),
            }
        }
        blocks.push(builder.finish().to_vec());
        blocks
    }

    fn read_all(bytes: &[u8]) -> HeapVec<Owned> {
        let block = Block::new_checked(bytes).unwrap();
        let mut cursor = block.cursor();
        let mut out = HeapVec::new();
        while let Some(entry) = cursor.next().unwrap() {
            out.push((
                entry.key.to_vec(),
                entry.sequence,
                entry.kind,
                entry.value.to_vec(),
            ));
        }
        out
    }

    #[test]
    fn a_builder_refuses_disorder_and_invalid_entries() {
        let mut buffer = [0u8; 256];
        let mut builder = BlockBuilder::new(&mut buffer);
        let put = |key: &'static [u8], sequence: u64| Entry {
            key,
            sequence,
            kind: Kind::Put,
            value: b"v",
        };
        builder.add(&put(b"b", 5)).unwrap();
        builder.add(&put(b"b", 4)).unwrap();
        assert_eq!(builder.add(&put(b"b", 4)), Err(AddError::OutOfOrder));
        assert_eq!(builder.add(&put(b"b", 9)), Err(AddError::OutOfOrder));
        assert_eq!(builder.add(&put(b"a", 1)), Err(AddError::OutOfOrder));
        assert_eq!(builder.add(&put(b"", 1)), Err(AddError::Invalid));
        assert_eq!(
            builder.add(&put(b"c", SEQUENCE_MAX + 1)),
            Err(AddError::Invalid)
        );
        let tombstone = Entry {
            key: b"c",
            sequence: 1,
            kind: Kind::Delete,
            value: b"x",
        };
        assert_eq!(builder.add(&tombstone), Err(AddError::Invalid));
        // A valid entry too large for the block (the key as long as this build allows).
        static LONG: [u8; 300] = [b'k'; 300];
        let large = Entry {
            key: &LONG[..KEY_LEN_MAX.min(LONG.len())],
            sequence: 1,
            kind: Kind::Put,
            value: &LONG,
        };
        assert_eq!(builder.add(&large), Err(AddError::Full));
        assert_eq!(builder.entries(), 2);
        let bytes = builder.finish().to_vec();
        assert_eq!(read_all(&bytes).len(), 2);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let owned: HeapVec<Owned> = (0..40u64)
            .map(|n| {
                (
                    std::format!("key{n:03}").into_bytes(),
                    100 - n,
                    Kind::Put,
                    std::vec![n as u8; 5],
                )
            })
            .collect();
        let blocks = build(&owned, 4096);
        assert_eq!(blocks.len(), 1);
        let block = &blocks[0];
        for bit in 0..block.len() * 8 {
            let mut flipped = block.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                Block::new_checked(&flipped).err(),
                Some(Corrupt),
                "bit {bit}"
            );
        }
    }

    proptest! {
        #[test]
        fn blocks_return_what_was_added(entries in entries(), size in 80usize..2048) {
            let blocks = build(&entries, size);
            let mut read = HeapVec::new();
            for block in &blocks {
                prop_assert!(block.len() <= size);
                read.extend(read_all(block));
            }
            prop_assert_eq!(read, entries);
        }

        #[test]
        fn seek_finds_the_first_entry_not_before_the_target(
            entries in entries(),
            key in proptest::collection::vec(0u8..4, 1..12),
            sequence in 0u64..1000,
        ) {
            let blocks = build(&entries, 1 << 16);
            let block = Block::new_checked(&blocks[0]).unwrap();
            let mut cursor = block.seek(&key, sequence).unwrap();
            let found = cursor.next().unwrap().map(|entry| (entry.key.to_vec(), entry.sequence));
            let expected = entries
                .iter()
                .find(|owned| order(&owned.0, owned.1, &key, sequence) != Ordering::Less)
                .map(|owned| (owned.0.clone(), owned.1));
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn arbitrary_bytes_with_a_valid_crc_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
            key in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let crc = crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            if let Ok(block) = Block::new_checked(&bytes) {
                let mut cursor = block.cursor();
                for _ in 0..bytes.len() {
                    match cursor.next() {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = block.seek(&key, 0);
            }
        }
    }
}
