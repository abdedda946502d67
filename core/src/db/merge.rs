//! Merging sorted sources (the memtable, table scans) into one sorted stream: what flushes,
//! compactions and range scans read.
//!
//! Each [`Source`] holds a current entry; [`Merge::next`] says which source's current entry
//! comes first in [`order`] (the caller reads it with [`Source::current`]) and then moves that
//! source on. Sequence numbers are unique, so no two sources hold the same (key, sequence).
//! A merge of `K` sources costs `K` comparisons per entry: merges here are of a handful of
//! sources (a memtable and the tables of two levels' overlap), and this keeps memory at zero.

use core::cmp::Ordering;

use super::block::{order, Entry};
use super::memtable::{self, Memtable};
use super::table::{TableError, TableScan};
use crate::storage::Storage;

/// A sorted source of entries over storage `S`.
pub trait Source<S: Storage> {
    /// Moves to the next entry (the first, on the first call); `false` at the end.
    fn advance(&mut self, storage: &mut S) -> Result<bool, TableError<S::Error>>;
    /// The entry the source stands on, until the end.
    fn current(&self) -> Option<Entry<'_>>;
}

impl<S: Storage> Source<S> for TableScan<'_> {
    fn advance(&mut self, storage: &mut S) -> Result<bool, TableError<S::Error>> {
        Ok(self.next(storage)?.is_some())
    }

    fn current(&self) -> Option<Entry<'_>> {
        TableScan::current(self)
    }
}

/// A memtable read as a source, from its first entry (or from a seek).
#[derive(Debug)]
pub struct MemtableSource<'t, B> {
    cursor: memtable::Cursor<'t, B>,
    current: Option<Entry<'t>>,
}

impl<'t, B: AsMut<[u8]> + AsRef<[u8]>> MemtableSource<'t, B> {
    /// Every entry of `table`.
    pub fn new(table: &'t Memtable<B>) -> Self {
        Self {
            cursor: table.cursor(),
            current: None,
        }
    }

    /// The entries of `table` from the first not before `(key, sequence)`.
    pub fn from(table: &'t Memtable<B>, key: &[u8], sequence: u64) -> Self {
        Self {
            cursor: table.seek(key, sequence),
            current: None,
        }
    }
}

impl<S: Storage, B: AsMut<[u8]> + AsRef<[u8]>> Source<S> for MemtableSource<'_, B> {
    fn advance(&mut self, _storage: &mut S) -> Result<bool, TableError<S::Error>> {
        self.current = self.cursor.next();
        Ok(self.current.is_some())
    }

    fn current(&self) -> Option<Entry<'_>> {
        self.current
    }
}

/// A merge of sorted sources; see the [module docs](self).
pub struct Merge<'m, 's, S: Storage> {
    sources: &'m mut [&'s mut dyn Source<S>],
    /// Whether each source was started (advanced once).
    started: bool,
    /// The source whose entry was handed out last: moved on at the next call.
    taken: Option<usize>,
}

impl<S: Storage> core::fmt::Debug for Merge<'_, '_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Merge")
            .field("sources", &self.sources.len())
            .field("taken", &self.taken)
            .finish()
    }
}

impl<'m, 's, S: Storage> Merge<'m, 's, S> {
    /// A merge of `sources`, none of them advanced yet.
    pub fn new(sources: &'m mut [&'s mut dyn Source<S>]) -> Self {
        Self {
            sources,
            started: false,
            taken: None,
        }
    }

    /// The index of the source whose current entry is next in order, `None` at the end; read
    /// the entry with [`Merge::entry`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self, storage: &mut S) -> Result<Option<usize>, TableError<S::Error>> {
        if !self.started {
            for source in self.sources.iter_mut() {
                source.advance(storage)?;
            }
            self.started = true;
        } else if let Some(taken) = self.taken.take() {
            self.sources[taken].advance(storage)?;
        }
        let mut first: Option<usize> = None;
        for (index, source) in self.sources.iter().enumerate() {
            let Some(entry) = source.current() else {
                continue;
            };
            let better = match first.and_then(|best| self.sources[best].current()) {
                None => true,
                Some(best) => {
                    order(entry.key, entry.sequence, best.key, best.sequence) == Ordering::Less
                }
            };
            if better {
                first = Some(index);
            }
        }
        self.taken = first;
        Ok(first)
    }

    /// The entry of source `index` (as [`Merge::next`] returned it).
    pub fn entry(&self, index: usize) -> Option<Entry<'_>> {
        self.sources.get(index)?.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::block::Kind;
    use crate::db::table::{filter_buffer_len, ReaderBuffers, Table, TableWriter, WriterBuffers};
    use crate::storage::RamStorage;
    use proptest::prelude::*;
    use std::vec::Vec as HeapVec;

    type Ram = RamStorage<{ 256 << 10 }>;
    type Owned = (HeapVec<u8>, u64, HeapVec<u8>);

    /// Writes `entries` (sorted) as a table at `start`; its length.
    fn write_table(storage: &mut Ram, start: u64, entries: &[Owned]) -> u64 {
        let (mut block, mut index) = (std::vec![0u8; 512], std::vec![0u8; 8192]);
        let mut hashes = std::vec![0u64; entries.len().max(1)];
        let mut filter = std::vec![0u8; filter_buffer_len(hashes.len(), 10)];
        let buffers = WriterBuffers {
            block: &mut block,
            index: &mut index,
            hashes: &mut hashes,
            filter: &mut filter,
        };
        let mut writer = TableWriter::new((start, 64 << 10), 8, buffers, 10);
        for (key, sequence, value) in entries {
            let entry = Entry {
                key,
                sequence: *sequence,
                kind: Kind::Put,
                value,
            };
            writer.add(storage, &entry).unwrap();
        }
        writer.finish(storage).unwrap().len
    }

    proptest! {
        #[test]
        fn a_merge_yields_every_entry_of_every_source_in_order(
            raw in proptest::collection::vec(
                (proptest::collection::vec(0u8..5, 1..5), proptest::collection::vec(any::<u8>(), 0..10), 0usize..4),
                0..300,
            ),
        ) {
            // Every write gets a unique sequence number and goes to one of three tables or the
            // memtable.
            let mut parts: [HeapVec<Owned>; 4] = Default::default();
            for (sequence, (key, value, part)) in raw.iter().enumerate() {
                parts[*part].push((key.clone(), sequence as u64 + 1, value.clone()));
            }
            let mut all: HeapVec<Owned> = parts.iter().flatten().cloned().collect();
            all.sort_by(|a, b| order(&a.0, a.1, &b.0, b.1));
            for part in &mut parts {
                part.sort_by(|a, b| order(&a.0, a.1, &b.0, b.1));
            }
            let mut storage = Ram::new(8, 4096, 0xFF).unwrap();
            let mut tables = HeapVec::new();
            for (index, part) in parts[..3].iter().enumerate() {
                let start = index as u64 * (64 << 10);
                let len = write_table(&mut storage, start, part);
                tables.push(Table::open(&mut storage, start, len).unwrap());
            }
            let mut memtable = Memtable::new(std::vec![0u8; 64 << 10], 1).unwrap();
            for (key, sequence, value) in &parts[3] {
                memtable.insert(&Entry { key, sequence: *sequence, kind: Kind::Put, value }).unwrap();
            }
            let mut buffers: HeapVec<(HeapVec<u8>, HeapVec<u8>)> =
                (0..3).map(|_| (std::vec![0u8; 8192], std::vec![0u8; 4096])).collect();
            let mut scans: HeapVec<TableScan<'_>> = HeapVec::new();
            for (table, (index, data)) in tables.iter().zip(buffers.iter_mut()) {
                let buffers = ReaderBuffers { index, data };
                scans.push(table.scan(&mut storage, buffers, None).unwrap());
            }
            let mut memory = MemtableSource::new(&memtable);
            let [a, b, c] = &mut scans[..] else { unreachable!() };
            let mut sources: [&mut dyn Source<Ram>; 4] = [a, b, c, &mut memory];
            let mut merge = Merge::new(&mut sources);
            let mut merged = HeapVec::new();
            while let Some(index) = merge.next(&mut storage).unwrap() {
                let entry = merge.entry(index).unwrap();
                merged.push((entry.key.to_vec(), entry.sequence, entry.value.to_vec()));
            }
            prop_assert_eq!(merged, all);
        }
    }
}
