//! The memtable: the newest writes, sorted in memory, in a buffer the caller lends (a skiplist
//! in an arena, as LevelDB's, with `u32` offsets instead of pointers).
//!
//! ```text
//! node:  height u8 | kind u8 | key_len u16 LE | value_len u32 LE | sequence u64 LE
//!        | next u32 LE [height] | key | value          (padded to 4 bytes)
//! ```
//!
//! Node 0 is the head, of [`HEIGHT_MAX`] levels and no key. Entries are kept in
//! [`order`]: key ascending, sequence number descending. Insertion is
//! O(log n) expected; memory is the lent buffer and nothing else, and a full buffer refuses the
//! insert ([`Full`]) with nothing changed: the caller flushes the memtable to a table and
//! [`Memtable::clear`]s it.

use core::cmp::Ordering;

use super::block::{order, Entry, Kind, KEY_LEN_MAX};

/// The most levels a node has.
pub const HEIGHT_MAX: usize = 12;
/// Bytes before a node's `next` array.
const HEAD_LEN: usize = 16;

/// The memtable's buffer is full (or the key is too long, or the buffer above 4 GiB): nothing
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Full;

/// A sorted set of versions in a lent buffer. See the [module docs](self).
#[derive(Debug)]
pub struct Memtable<B> {
    buffer: B,
    /// Bytes used, the head included.
    used: usize,
    entries: usize,
    /// State of the level generator (xorshift64).
    random: u64,
    /// Bytes of keys and values held.
    payload: usize,
}

/// The most bytes one version of `key_len` and `value_len` bytes takes in the buffer (a node of
/// the greatest height): a bound that holds whatever heights the generator draws.
pub fn node_len_max(key_len: usize, value_len: usize) -> usize {
    node_len(HEIGHT_MAX, key_len, value_len)
}

fn node_len(height: usize, key_len: usize, value_len: usize) -> usize {
    (HEAD_LEN + 4 * height + key_len + value_len).div_ceil(4) * 4
}

impl<B: AsMut<[u8]> + AsRef<[u8]>> Memtable<B> {
    /// An empty memtable in `buffer`; `None` when the buffer cannot hold the head node or is
    /// larger than 4 GiB.
    pub fn new(buffer: B, seed: u64) -> Option<Self> {
        let mut table = Self {
            buffer,
            used: 0,
            entries: 0,
            random: seed | 1,
            payload: 0,
        };
        let len = table.buffer.as_ref().len();
        if len < node_len(HEIGHT_MAX, 0, 0) || u32::try_from(len).is_err() {
            return None;
        }
        table.clear();
        Some(table)
    }

    /// Forgets every entry (after a flush).
    pub fn clear(&mut self) {
        let head = node_len(HEIGHT_MAX, 0, 0);
        let bytes = self.buffer.as_mut();
        bytes[..head].fill(0);
        bytes[0] = HEIGHT_MAX as u8;
        self.used = head;
        self.entries = 0;
        self.payload = 0;
    }

    /// Gives the buffer back.
    pub fn into_buffer(self) -> B {
        self.buffer
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes of the buffer in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The buffer's size.
    pub fn capacity(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Bytes of keys and values held.
    pub fn payload(&self) -> usize {
        self.payload
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn read_u32(&self, at: usize) -> u32 {
        let bytes = &self.bytes()[at..at + 4];
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    fn next(&self, node: usize, level: usize) -> usize {
        self.read_u32(node + HEAD_LEN + 4 * level) as usize
    }

    fn set_next(&mut self, node: usize, level: usize, to: usize) {
        let at = node + HEAD_LEN + 4 * level;
        // Offsets fit u32: the buffer is at most 4 GiB (checked in `new`).
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&(to as u32).to_le_bytes());
    }

    /// The entry of `node` (not the head).
    fn entry(&self, node: usize) -> Entry<'_> {
        let bytes = self.bytes();
        let height = bytes[node] as usize;
        let kind = if bytes[node + 1] == 1 {
            Kind::Delete
        } else {
            Kind::Put
        };
        let key_len = u16::from_le_bytes([bytes[node + 2], bytes[node + 3]]) as usize;
        let value_len = self.read_u32(node + 4) as usize;
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&bytes[node + 8..node + 16]);
        let key_at = node + HEAD_LEN + 4 * height;
        Entry {
            key: &bytes[key_at..key_at + key_len],
            sequence: u64::from_le_bytes(sequence),
            kind,
            value: &bytes[key_at + key_len..key_at + key_len + value_len],
        }
    }

    /// Whether `node`'s entry comes before `(key, sequence)`.
    fn before(&self, node: usize, key: &[u8], sequence: u64) -> bool {
        let entry = self.entry(node);
        order(entry.key, entry.sequence, key, sequence) == Ordering::Less
    }

    /// The last node before `(key, sequence)` at every level.
    fn predecessors(&self, key: &[u8], sequence: u64) -> [usize; HEIGHT_MAX] {
        let mut path = [0usize; HEIGHT_MAX];
        let mut node = 0;
        for level in (0..HEIGHT_MAX).rev() {
            loop {
                let next = self.next(node, level);
                if next != 0 && self.before(next, key, sequence) {
                    node = next;
                } else {
                    break;
                }
            }
            path[level] = node;
        }
        path
    }

    fn random_height(&mut self) -> usize {
        let mut height = 1;
        while height < HEIGHT_MAX {
            self.random ^= self.random << 13;
            self.random ^= self.random >> 7;
            self.random ^= self.random << 17;
            if self.random & 3 != 0 {
                break;
            }
            height += 1;
        }
        height
    }

    /// Inserts a version. The same key and sequence number again replaces nothing: the first
    /// stays (sequence numbers are unique per write). On `Err` nothing changed.
    pub fn insert(&mut self, entry: &Entry<'_>) -> Result<(), Full> {
        if entry.key.is_empty() || entry.key.len() > KEY_LEN_MAX {
            return Err(Full);
        }
        let path = self.predecessors(entry.key, entry.sequence);
        let next = self.next(path[0], 0);
        if next != 0 {
            let found = self.entry(next);
            if found.key == entry.key && found.sequence == entry.sequence {
                return Ok(());
            }
        }
        let height = self.random_height();
        let value_len = u32::try_from(entry.value.len()).map_err(|_| Full)?;
        let len = node_len(height, entry.key.len(), entry.value.len());
        let node = self.used;
        if node + len > self.capacity() {
            return Err(Full);
        }
        let bytes = self.buffer.as_mut();
        bytes[node] = height as u8;
        bytes[node + 1] = u8::from(entry.kind == Kind::Delete);
        bytes[node + 2..node + 4].copy_from_slice(&(entry.key.len() as u16).to_le_bytes());
        bytes[node + 4..node + 8].copy_from_slice(&value_len.to_le_bytes());
        bytes[node + 8..node + 16].copy_from_slice(&entry.sequence.to_le_bytes());
        let key_at = node + HEAD_LEN + 4 * height;
        bytes[key_at..key_at + entry.key.len()].copy_from_slice(entry.key);
        let value_at = key_at + entry.key.len();
        bytes[value_at..value_at + entry.value.len()].copy_from_slice(entry.value);
        for (level, &before) in path.iter().enumerate().take(height) {
            let after = self.next(before, level);
            self.set_next(node, level, after);
            self.set_next(before, level, node);
        }
        self.used += len;
        self.entries += 1;
        self.payload += entry.key.len() + entry.value.len();
        Ok(())
    }

    /// The newest version of `key` with a sequence number at most `sequence`.
    pub fn get(&self, key: &[u8], sequence: u64) -> Option<Entry<'_>> {
        let path = self.predecessors(key, sequence);
        let next = self.next(path[0], 0);
        (next != 0)
            .then(|| self.entry(next))
            .filter(|entry| entry.key == key)
    }

    /// A cursor at the first entry not before `(key, sequence)`.
    pub fn seek(&self, key: &[u8], sequence: u64) -> Cursor<'_, B> {
        let path = self.predecessors(key, sequence);
        Cursor {
            table: self,
            node: self.next(path[0], 0),
        }
    }

    /// A cursor at the first entry.
    pub fn cursor(&self) -> Cursor<'_, B> {
        Cursor {
            table: self,
            node: self.next(0, 0),
        }
    }
}

/// Entries in order from a position; see [`Memtable::seek`].
#[derive(Debug)]
pub struct Cursor<'t, B> {
    table: &'t Memtable<B>,
    node: usize,
}

impl<'t, B: AsMut<[u8]> + AsRef<[u8]>> Iterator for Cursor<'t, B> {
    type Item = Entry<'t>;

    fn next(&mut self) -> Option<Entry<'t>> {
        if self.node == 0 {
            return None;
        }
        let entry = self.table.entry(self.node);
        self.node = self.table.next(self.node, 0);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec as HeapVec;

    type Key = (HeapVec<u8>, core::cmp::Reverse<u64>);

    proptest! {
        #[test]
        fn it_keeps_what_a_sorted_map_keeps(
            writes in proptest::collection::vec(
                (proptest::collection::vec(0u8..6, 1..6), 0u64..50, any::<bool>(),
                 proptest::collection::vec(any::<u8>(), 0..20)),
                0..400,
            ),
            size in 512usize..16384,
            probes in proptest::collection::vec((proptest::collection::vec(0u8..6, 1..6), 0u64..60), 20),
        ) {
            let mut table = Memtable::new(std::vec![0u8; size], 9).unwrap();
            let mut model: BTreeMap<Key, (Kind, HeapVec<u8>)> = BTreeMap::new();
            let mut full = false;
            for (key, sequence, delete, value) in &writes {
                let kind = if *delete { Kind::Delete } else { Kind::Put };
                let value: &[u8] = if *delete { &[] } else { value };
                let entry = Entry { key, sequence: *sequence, kind, value };
                let used = table.used();
                match table.insert(&entry) {
                    Ok(()) => {
                        model
                            .entry((key.clone(), core::cmp::Reverse(*sequence)))
                            .or_insert((kind, value.to_vec()));
                    }
                    Err(Full) => {
                        full = true;
                        prop_assert_eq!(table.used(), used, "a refused insert changes nothing");
                    }
                }
            }
            prop_assert_eq!(table.len(), model.len());
            let listed: HeapVec<_> = table
                .cursor()
                .map(|entry| ((entry.key.to_vec(), core::cmp::Reverse(entry.sequence)), (entry.kind, entry.value.to_vec())))
                .collect();
            let expected: HeapVec<_> = model.clone().into_iter().collect();
            prop_assert_eq!(listed, expected);
            for (key, sequence) in &probes {
                let found = table.get(key, *sequence).map(|entry| (entry.sequence, entry.value.to_vec()));
                let wanted = model
                    .range((key.clone(), core::cmp::Reverse(*sequence))..)
                    .next()
                    .filter(|((found, _), _)| found == key)
                    .map(|((_, sequence), (_, value))| (sequence.0, value.clone()));
                prop_assert_eq!(found, wanted);
                let first = table.seek(key, *sequence).next().map(|entry| (entry.key.to_vec(), entry.sequence));
                let wanted = model
                    .range((key.clone(), core::cmp::Reverse(*sequence))..)
                    .next()
                    .map(|((key, sequence), _)| (key.clone(), sequence.0));
                prop_assert_eq!(first, wanted);
            }
            if full {
                table.clear();
                prop_assert!(table.is_empty() && table.cursor().next().is_none());
            }
        }
    }
}
