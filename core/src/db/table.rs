//! SSTables: sorted, immutable runs of entries in a byte range of a [`Storage`], written once
//! in one pass and read by point lookups and scans.
//!
//! ```text
//! table:   data block… | filter | index block | footer
//! filter:  bloom filter bytes (see [`bloom`]) | crc32c u32 LE
//! index:   a block (see [`block`]) with one entry per data block: key and sequence number of
//!          its last entry, value varint offset | varint len (the data block's, table-relative)
//! footer:  magic "BRST" | version u32 LE = 1 | index offset u64 LE | index len u32 LE
//!          | filter offset u64 LE | filter len u32 LE | entries u64 LE
//!          | smallest sequence u64 LE | largest sequence u64 LE | crc32c u32 LE   (60 bytes)
//! ```
//!
//! Every part starts at a multiple of the storage's write size (padding between parts is
//! never read); the footer ends the table: it starts [`footer_offset`] bytes in, for a table of
//! the length [`TableWriter::finish`] returned. Every part carries its own CRC, so a damaged
//! byte anywhere is reported as [`TableError::Corrupt`] with its position, never returned as
//! data.

use heapless::Vec;

use super::block::{AddError, Block, BlockBuilder, Entry, Kind, Position, KEY_LEN_MAX};
use super::bloom;
use crate::checksum::crc32c;
use crate::storage::Storage;
use crate::varint;

/// The footer's first four bytes.
pub const MAGIC: [u8; 4] = *b"BRST";
/// The table format's version.
pub const VERSION: u32 = 1;
/// The footer's length before padding.
pub const FOOTER_LEN: usize = 60;

/// Where a table's footer starts, for a table of `len` bytes on a storage of `write_size`.
pub fn footer_offset(len: u64, write_size: u32) -> Option<u64> {
    len.checked_sub(round_up(FOOTER_LEN as u64, write_size))
}

fn round_up(bytes: u64, write_size: u32) -> u64 {
    let unit = u64::from(write_size.max(1));
    bytes.div_ceil(unit) * unit
}

/// Why a table could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TableError<E> {
    /// The storage failed.
    Storage(E),
    /// The bytes at `offset` (storage-absolute) are not what a writer writes: a damaged part
    /// of the table (`what` names it). Nothing of it was returned as data.
    Corrupt {
        /// Where the damaged part starts.
        offset: u64,
        /// Which part: "footer", "index", "filter" or "data block".
        what: &'static str,
    },
    /// The table does not fit the space it was given, or a lent buffer is too small.
    NoSpace,
    /// An entry was out of order or invalid, or (`Full`) does not fit even an empty data
    /// block: the block buffer must hold the largest entry. Nothing was added.
    Entry(AddError),
}

/// The lent buffers a writer builds in: `block` holds one data block (its length is the data
/// block size; it must hold the largest entry), `index` the index block, `hashes` one hash per
/// distinct key (its length is the most keys a table holds), `filter` the filter
/// ([`filter_buffer_len`] of those).
#[derive(Debug)]
pub struct WriterBuffers<'a> {
    /// One data block.
    pub block: &'a mut [u8],
    /// The index block.
    pub index: &'a mut [u8],
    /// One key hash per distinct key.
    pub hashes: &'a mut [u64],
    /// The filter and its CRC.
    pub filter: &'a mut [u8],
}

/// The filter buffer a writer of tables of at most `keys` keys at `bits_per_key` needs.
pub fn filter_buffer_len(keys: usize, bits_per_key: usize) -> usize {
    bloom::filter_len(keys, bits_per_key) + 4
}

/// What a finished table holds: the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's length in bytes (the footer ends it).
    pub len: u64,
    /// Entries (versions of keys) in it.
    pub entries: u64,
    /// The first key and the last.
    pub smallest: Vec<u8, KEY_LEN_MAX>,
    /// The last key.
    pub largest: Vec<u8, KEY_LEN_MAX>,
    /// The lowest and highest sequence numbers in it.
    pub sequences: (u64, u64),
}

/// Writes one table at `start` (storage-absolute, erased) of at most `capacity` bytes. The
/// storage is passed to each call, so that the entries may come from tables on the same
/// storage (a compaction).
#[derive(Debug)]
pub struct TableWriter<'a> {
    start: u64,
    capacity: u64,
    write_size: u32,
    /// Table-relative offset of the next part.
    at: u64,
    block: BlockBuilder<'a>,
    index: BlockBuilder<'a>,
    hashes: &'a mut [u64],
    filter: &'a mut [u8],
    keys: usize,
    bits_per_key: usize,
    entries: u64,
    smallest: Vec<u8, KEY_LEN_MAX>,
    sequences: (u64, u64),
}

impl<'a> TableWriter<'a> {
    /// A writer of a table at `start` (a multiple of `write_size`, the storage's, erased) of at
    /// most `capacity` bytes, with filters of `bits_per_key` bits per key (0: no filter).
    pub fn new(
        (start, capacity): (u64, u64),
        write_size: u32,
        buffers: WriterBuffers<'a>,
        bits_per_key: usize,
    ) -> Self {
        Self {
            start,
            capacity,
            write_size,
            at: 0,
            block: BlockBuilder::new(buffers.block),
            index: BlockBuilder::new(buffers.index),
            hashes: buffers.hashes,
            filter: buffers.filter,
            keys: 0,
            bits_per_key,
            entries: 0,
            smallest: Vec::new(),
            sequences: (u64::MAX, 0),
        }
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes the table takes so far (blocks written), a lower bound of its final size.
    pub fn written(&self) -> u64 {
        self.at
    }

    /// Whether another key fits the hash buffer: when not, finish this table.
    pub fn keys_full(&self) -> bool {
        self.keys >= self.hashes.len()
    }

    /// Adds `entry`, which must follow the previous one in [`order`](super::block::order). On `Err` nothing
    /// was added (a storage error leaves the table unfinishable: start it again elsewhere).
    pub fn add<S: Storage>(
        &mut self,
        storage: &mut S,
        entry: &Entry<'_>,
    ) -> Result<(), TableError<S::Error>> {
        let new_key = self.entries == 0 || entry.key != self.block_last_key();
        if new_key && self.keys_full() {
            return Err(TableError::NoSpace);
        }
        match self.block.add(entry) {
            Ok(()) => {}
            Err(AddError::Full) if self.block.entries() > 0 => {
                self.flush_block(storage)?;
                self.block.add(entry).map_err(TableError::Entry)?;
            }
            Err(error) => return Err(TableError::Entry(error)),
        }
        if self.entries == 0 {
            // Fits: keys are at most KEY_LEN_MAX long (checked by the block).
            let _ = self.smallest.extend_from_slice(entry.key);
        }
        if new_key {
            self.hashes[self.keys] = bloom::hash(entry.key);
            self.keys += 1;
        }
        self.entries += 1;
        self.sequences = (
            self.sequences.0.min(entry.sequence),
            self.sequences.1.max(entry.sequence),
        );
        Ok(())
    }

    fn block_last_key(&self) -> &[u8] {
        self.block.last_key()
    }

    /// Finishes the current data block, writes it and records it in the index.
    fn flush_block<S: Storage>(&mut self, storage: &mut S) -> Result<(), TableError<S::Error>> {
        let (last_key, last_sequence) = (
            Vec::<u8, KEY_LEN_MAX>::from_slice(self.block.last_key()).unwrap_or_default(),
            self.block.last_sequence(),
        );
        let bytes = self.block.finish();
        let len = bytes.len();
        let offset = write_padded(storage, self.start, self.at, self.capacity, bytes)?;
        self.at = offset + round_up(len as u64, self.write_size);
        self.block.reset();
        let mut handle = [0u8; 2 * varint::LEN_MAX];
        let used = encode_handle(offset, len as u64, &mut handle);
        let entry = Entry {
            key: &last_key,
            sequence: last_sequence,
            kind: Kind::Put,
            value: &handle[..used],
        };
        self.index.add(&entry).map_err(|error| match error {
            AddError::Full => TableError::NoSpace,
            other => TableError::Entry(other),
        })
    }

    /// Writes the last data block, the filter, the index and the footer. The table is durable
    /// after the storage's next sync; until the manifest names it, it is garbage to recovery.
    pub fn finish<S: Storage>(
        mut self,
        storage: &mut S,
    ) -> Result<TableInfo, TableError<S::Error>> {
        if self.block.entries() > 0 {
            self.flush_block(storage)?;
        }
        let largest = Vec::from_slice(self.index.last_key()).unwrap_or_default();
        let filter_buffer = &mut *self.filter;
        let filter_len = if self.bits_per_key == 0 {
            0
        } else {
            bloom::build(&self.hashes[..self.keys], self.bits_per_key, filter_buffer)
                .ok_or(TableError::NoSpace)?
        };
        let crc = crc32c(&filter_buffer[..filter_len]);
        let total = filter_len + 4;
        filter_buffer
            .get_mut(filter_len..total)
            .ok_or(TableError::NoSpace)?
            .copy_from_slice(&crc.to_le_bytes());
        let filter_offset = write_padded(
            storage,
            self.start,
            self.at,
            self.capacity,
            &filter_buffer[..total],
        )?;
        self.at = filter_offset + round_up(total as u64, self.write_size);
        let index = self.index.finish();
        let index_len = index.len();
        let index_offset = write_padded(storage, self.start, self.at, self.capacity, index)?;
        self.at = index_offset + round_up(index_len as u64, self.write_size);
        let sequences = if self.entries == 0 {
            (0, 0)
        } else {
            self.sequences
        };
        let footer = Footer {
            index: (index_offset, index_len as u32),
            filter: (filter_offset, total as u32),
            entries: self.entries,
            sequences,
        };
        let bytes = footer.emit();
        let footer_at = write_padded(storage, self.start, self.at, self.capacity, &bytes)?;
        let len = footer_at + round_up(FOOTER_LEN as u64, self.write_size);
        Ok(TableInfo {
            len,
            entries: self.entries,
            smallest: self.smallest,
            largest,
            sequences,
        })
    }
}

/// Writes `bytes` at table-relative `at` (a multiple of the write size), the last word padded
/// with zeros; returns `at`.
fn write_padded<S: Storage>(
    storage: &mut S,
    start: u64,
    at: u64,
    capacity: u64,
    bytes: &[u8],
) -> Result<u64, TableError<S::Error>> {
    let write_size = storage.geometry().write_size as usize;
    let padded = round_up(bytes.len() as u64, write_size as u32);
    if at.checked_add(padded).is_none_or(|end| end > capacity) || write_size > WRITE_SIZE_MAX {
        return Err(TableError::NoSpace);
    }
    let whole = bytes.len() - bytes.len() % write_size;
    if whole > 0 {
        storage
            .write(start + at, &bytes[..whole])
            .map_err(TableError::Storage)?;
    }
    let rest = &bytes[whole..];
    if !rest.is_empty() {
        let mut word = [0u8; WRITE_SIZE_MAX];
        word[..rest.len()].copy_from_slice(rest);
        storage
            .write(start + at + whole as u64, &word[..write_size])
            .map_err(TableError::Storage)?;
    }
    Ok(at)
}

/// The largest write size a table can be written with.
pub const WRITE_SIZE_MAX: usize = 256;

fn encode_handle(offset: u64, len: u64, out: &mut [u8]) -> usize {
    let first = varint::encode(offset, out).unwrap_or(0);
    first + varint::encode(len, &mut out[first..]).unwrap_or(0)
}

fn decode_handle(bytes: &[u8]) -> Option<(u64, u64)> {
    let (offset, first) = varint::decode(bytes)?;
    let (len, second) = varint::decode(&bytes[first..])?;
    (first + second == bytes.len()).then_some((offset, len))
}

/// The footer's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    index: (u64, u32),
    filter: (u64, u32),
    entries: u64,
    sequences: (u64, u64),
}

impl Footer {
    fn emit(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0u8; FOOTER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.index.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.index.1.to_le_bytes());
        out[20..28].copy_from_slice(&self.filter.0.to_le_bytes());
        out[28..32].copy_from_slice(&self.filter.1.to_le_bytes());
        out[32..40].copy_from_slice(&self.entries.to_le_bytes());
        out[40..48].copy_from_slice(&self.sequences.0.to_le_bytes());
        out[48..56].copy_from_slice(&self.sequences.1.to_le_bytes());
        let crc = crc32c(&out[..56]);
        out[56..60].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn parse(bytes: &[u8; FOOTER_LEN]) -> Option<Self> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let valid =
            bytes[0..4] == MAGIC && u32_at(4) == VERSION && crc32c(&bytes[..56]) == u32_at(56);
        valid.then(|| Self {
            index: (u64_at(8), u32_at(16)),
            filter: (u64_at(20), u32_at(28)),
            entries: u64_at(32),
            sequences: (u64_at(40), u64_at(48)),
        })
    }
}

/// The lent buffers a reader reads into: `index` holds the index block, `data` one data block
/// or the filter. Each must hold the part padded to the storage's read size.
#[derive(Debug)]
pub struct ReaderBuffers<'a> {
    /// The index block.
    pub index: &'a mut [u8],
    /// A data block, or the filter.
    pub data: &'a mut [u8],
}

/// A table opened for reading: its footer checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    start: u64,
    len: u64,
    footer: Footer,
}

/// The newest version of a key visible at a sequence number, as a table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Put or delete (a tombstone hides older versions in older tables).
    pub kind: Kind,
    /// The version's sequence number.
    pub sequence: u64,
    /// The value's length; the value is at the start of the reader's data buffer.
    pub value_len: usize,
    /// Where the value starts in the data buffer.
    pub value_at: usize,
}

impl Table {
    /// Opens the table of `len` bytes at `start` (storage-absolute), reading its footer.
    pub fn open<S: Storage>(
        storage: &mut S,
        start: u64,
        len: u64,
    ) -> Result<Self, TableError<S::Error>> {
        let write_size = storage.geometry().write_size;
        let corrupt = |offset| TableError::Corrupt {
            offset,
            what: "footer",
        };
        let at = footer_offset(len, write_size).ok_or(corrupt(start))?;
        let mut bytes = [0u8; FOOTER_LEN];
        read_part(storage, start + at, FOOTER_LEN, bytes_buffer(&mut bytes))?;
        let footer = Footer::parse(&bytes).ok_or(corrupt(start + at))?;
        let inside = |(offset, part_len): (u64, u32)| {
            offset
                .checked_add(u64::from(part_len))
                .is_some_and(|end| end <= at)
        };
        if !inside(footer.index) || !inside(footer.filter) {
            return Err(corrupt(start + at));
        }
        Ok(Self { start, len, footer })
    }

    /// The table's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Entries in the table.
    pub fn entries(&self) -> u64 {
        self.footer.entries
    }

    /// The lowest and highest sequence numbers in the table.
    pub fn sequences(&self) -> (u64, u64) {
        self.footer.sequences
    }

    /// The newest version of `key` with a sequence number at most `sequence`, if the table
    /// holds one; its value is left in `buffers.data`.
    pub fn get<S: Storage>(
        &self,
        storage: &mut S,
        key: &[u8],
        sequence: u64,
        buffers: &mut ReaderBuffers<'_>,
    ) -> Result<Option<Found>, TableError<S::Error>> {
        if !self.filter_may_contain(storage, key, buffers.data)? {
            return Ok(None);
        }
        let (index_offset, index_len) = self.footer.index;
        let index_at = self.start + index_offset;
        let index_bytes = read_part(storage, index_at, index_len as usize, buffers.index)?;
        let corrupt_index = || TableError::Corrupt {
            offset: index_at,
            what: "index",
        };
        let index = Block::new_checked(index_bytes).map_err(|_| corrupt_index())?;
        let mut cursor = index.seek(key, sequence).map_err(|_| corrupt_index())?;
        let Some(entry) = cursor.next().map_err(|_| corrupt_index())? else {
            return Ok(None);
        };
        let (offset, data_len) = decode_handle(entry.value).ok_or_else(corrupt_index)?;
        let within = offset
            .checked_add(data_len)
            .is_some_and(|end| end <= index_offset);
        if !within {
            return Err(corrupt_index());
        }
        let data_at = self.start + offset;
        let corrupt_data = || TableError::Corrupt {
            offset: data_at,
            what: "data block",
        };
        let data = read_part(storage, data_at, data_len as usize, buffers.data)?;
        let block = Block::new_checked(data).map_err(|_| corrupt_data())?;
        let mut cursor = block.seek(key, sequence).map_err(|_| corrupt_data())?;
        let Some(entry) = cursor.next().map_err(|_| corrupt_data())? else {
            return Ok(None);
        };
        if entry.key != key {
            return Ok(None);
        }
        let value_at = entry.value.as_ptr() as usize - data.as_ptr() as usize;
        Ok(Some(Found {
            kind: entry.kind,
            sequence: entry.sequence,
            value_len: entry.value.len(),
            value_at,
        }))
    }

    fn filter_may_contain<S: Storage>(
        &self,
        storage: &mut S,
        key: &[u8],
        buffer: &mut [u8],
    ) -> Result<bool, TableError<S::Error>> {
        let (offset, len) = self.footer.filter;
        let at = self.start + offset;
        let bytes = read_part(storage, at, len as usize, buffer)?;
        let corrupt = || TableError::Corrupt {
            offset: at,
            what: "filter",
        };
        let (filter, crc) = bytes.split_at(bytes.len().checked_sub(4).ok_or_else(corrupt)?);
        if crc32c(filter).to_le_bytes() != crc {
            return Err(corrupt());
        }
        Ok(filter.is_empty() || bloom::may_contain(filter, bloom::hash(key)))
    }
}

/// A table's entries in order, from a start; see [`Table::scan`].
#[derive(Debug)]
pub struct TableScan<'b> {
    table: Table,
    index: &'b mut [u8],
    index_len: usize,
    index_position: Position,
    data: &'b mut [u8],
    /// The loaded data block's length (0: none loaded) and storage offset.
    data_len: usize,
    data_at: u64,
    data_position: Position,
    /// Where the scan starts within the first data block it loads.
    from: Option<(Vec<u8, KEY_LEN_MAX>, u64)>,
    done: bool,
    /// The entry returned last: sequence number, kind, value range in `data`.
    current: Option<(u64, Kind, usize, usize)>,
}

impl Table {
    /// A scan of the table's entries in order, from the first not before `from` (a key and a
    /// sequence number; `None`: from the first entry). The buffers stay with the scan.
    pub fn scan<'b, S: Storage>(
        &self,
        storage: &mut S,
        buffers: ReaderBuffers<'b>,
        from: Option<(&[u8], u64)>,
    ) -> Result<TableScan<'b>, TableError<S::Error>> {
        let (index_offset, index_len) = self.footer.index;
        let index_at = self.start + index_offset;
        let corrupt = || TableError::Corrupt {
            offset: index_at,
            what: "index",
        };
        let bytes = read_part(storage, index_at, index_len as usize, buffers.index)?;
        let index = Block::new_checked(bytes).map_err(|_| corrupt())?;
        let cursor = match from {
            Some((key, sequence)) => index.seek(key, sequence).map_err(|_| corrupt())?,
            None => index.cursor(),
        };
        let index_position = cursor.position();
        let data_position = index.cursor().position();
        let from = match from {
            Some((key, sequence)) => Some((Vec::from_slice(key).map_err(|_| corrupt())?, sequence)),
            None => None,
        };
        Ok(TableScan {
            table: *self,
            index: buffers.index,
            index_len: index_len as usize,
            index_position,
            data: buffers.data,
            data_len: 0,
            data_at: 0,
            data_position,
            from,
            done: false,
            current: None,
        })
    }
}

impl<'b> TableScan<'b> {
    /// The next entry, `None` after the last. A damaged part ends the scan with its error.
    #[allow(clippy::should_implement_trait)]
    pub fn next<S: Storage>(
        &mut self,
        storage: &mut S,
    ) -> Result<Option<Entry<'_>>, TableError<S::Error>> {
        // Bounded: every turn loads the next data block or returns.
        while !self.done {
            if self.data_len > 0 {
                let corrupt = |offset| TableError::Corrupt {
                    offset,
                    what: "data block",
                };
                let block = Block::new_trusted(&self.data[..self.data_len])
                    .map_err(|_| corrupt(self.data_at))?;
                let mut cursor = block.resume(self.data_position.clone());
                let found = cursor.next().map_err(|_| corrupt(self.data_at))?;
                let Some(entry) = found else {
                    self.data_len = 0;
                    continue;
                };
                let (sequence, kind) = (entry.sequence, entry.kind);
                let value_at = entry.value.as_ptr() as usize - self.data.as_ptr() as usize;
                let value_end = value_at + entry.value.len();
                self.data_position = cursor.position();
                self.current = Some((sequence, kind, value_at, value_end));
                return Ok(self.current());
            }
            self.load_next_block(storage)?;
        }
        self.current = None;
        Ok(None)
    }

    /// Ends the scan and gives its buffers back (to scan the next table with them).
    pub fn into_buffers(self) -> ReaderBuffers<'b> {
        ReaderBuffers {
            index: self.index,
            data: self.data,
        }
    }

    /// The entry [`TableScan::next`] returned last, while the scan has not ended.
    pub fn current(&self) -> Option<Entry<'_>> {
        let (sequence, kind, value_at, value_end) = self.current?;
        Some(Entry {
            key: self.data_position.key(),
            sequence,
            kind,
            value: &self.data[value_at..value_end],
        })
    }

    /// Loads the data block the index names next (at the scan's start, seeking `from`).
    fn load_next_block<S: Storage>(&mut self, storage: &mut S) -> Result<(), TableError<S::Error>> {
        let index_at = self.table.start + self.table.footer.index.0;
        let corrupt_index = || TableError::Corrupt {
            offset: index_at,
            what: "index",
        };
        let index =
            Block::new_trusted(&self.index[..self.index_len]).map_err(|_| corrupt_index())?;
        let mut cursor = index.resume(self.index_position.clone());
        let handle = match cursor.next().map_err(|_| corrupt_index())? {
            Some(entry) => decode_handle(entry.value).ok_or_else(corrupt_index)?,
            None => {
                self.done = true;
                return Ok(());
            }
        };
        self.index_position = cursor.position();
        let (offset, len) = handle;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.table.footer.index.0)
        {
            return Err(corrupt_index());
        }
        let data_at = self.table.start + offset;
        let corrupt = || TableError::Corrupt {
            offset: data_at,
            what: "data block",
        };
        let bytes = read_part(storage, data_at, len as usize, self.data)?;
        let block = Block::new_checked(bytes).map_err(|_| corrupt())?;
        let cursor = match self.from.take() {
            Some((key, sequence)) => block.seek(&key, sequence).map_err(|_| corrupt())?,
            None => block.cursor(),
        };
        self.data_position = cursor.position();
        self.data_len = len as usize;
        self.data_at = data_at;
        Ok(())
    }
}

fn bytes_buffer(bytes: &mut [u8; FOOTER_LEN]) -> &mut [u8] {
    bytes
}

/// Reads the part of `len` bytes at `at` into `buffer` (padded to the read size); its bytes.
fn read_part<'b, S: Storage>(
    storage: &mut S,
    at: u64,
    len: usize,
    buffer: &'b mut [u8],
) -> Result<&'b [u8], TableError<S::Error>> {
    let read_size = storage.geometry().read_size;
    let padded = round_up(len as u64, read_size) as usize;
    let window = buffer.get_mut(..padded).ok_or(TableError::NoSpace)?;
    storage.read(at, window).map_err(TableError::Storage)?;
    Ok(&buffer[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::block::order;
    use crate::storage::RamStorage;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec as HeapVec;

    type Ram = RamStorage<{ 1 << 20 }>;
    /// Versions by key: (sequence, value or `None` for a delete), newest first.
    type Model = BTreeMap<HeapVec<u8>, HeapVec<Version>>;
    /// A sequence number and a value, `None` for a delete.
    type Version = (u64, Option<HeapVec<u8>>);

    fn model(keys: usize, seed: u64) -> Model {
        let mut rng = crate::rng::SplitMix64::new(seed);
        use crate::rng::Rng;
        let mut model = Model::new();
        let mut sequence = 1;
        for _ in 0..keys {
            let key = std::format!("key{:06}", rng.next_u64() % 100_000).into_bytes();
            let versions = model.entry(key).or_default();
            for _ in 0..1 + rng.next_u64() % 3 {
                sequence += 1 + rng.next_u64() % 5;
                let value = if rng.next_u64().is_multiple_of(5) {
                    None
                } else {
                    let len = (rng.next_u64() % 120) as usize;
                    Some(std::vec![(sequence % 251) as u8; len])
                };
                versions.insert(0, (sequence, value));
            }
        }
        model
    }

    fn write(storage: &mut Ram, model: &Model, block_size: usize) -> TableInfo {
        let mut block = std::vec![0u8; block_size];
        let mut index = std::vec![0u8; 1 << 16];
        let mut hashes = std::vec![0u64; model.len()];
        let mut filter = std::vec![0u8; filter_buffer_len(model.len(), 10)];
        let buffers = WriterBuffers {
            block: &mut block,
            index: &mut index,
            hashes: &mut hashes,
            filter: &mut filter,
        };
        let capacity = storage.geometry().capacity;
        let write_size = storage.geometry().write_size;
        let mut writer = TableWriter::new((0, capacity), write_size, buffers, 10);
        for (key, versions) in model {
            for (sequence, value) in versions {
                let entry = Entry {
                    key,
                    sequence: *sequence,
                    kind: if value.is_some() {
                        Kind::Put
                    } else {
                        Kind::Delete
                    },
                    value: value.as_deref().unwrap_or(&[]),
                };
                writer.add(storage, &entry).unwrap();
            }
        }
        writer.finish(storage).unwrap()
    }

    /// What the model says a get of `key` at `sequence` finds.
    fn expected(model: &Model, key: &[u8], sequence: u64) -> Option<Version> {
        model
            .get(key)?
            .iter()
            .find(|(version, _)| *version <= sequence)
            .cloned()
    }

    fn get(
        storage: &mut Ram,
        table: &Table,
        key: &[u8],
        sequence: u64,
    ) -> Result<Option<Version>, TableError<crate::storage::ContractError>> {
        get_in(storage, table, key, sequence)
    }

    fn get_in<S: Storage>(
        storage: &mut S,
        table: &Table,
        key: &[u8],
        sequence: u64,
    ) -> Result<Option<Version>, TableError<S::Error>> {
        let mut index = std::vec![0u8; 1 << 16];
        let mut data = std::vec![0u8; 1 << 16];
        let mut buffers = ReaderBuffers {
            index: &mut index,
            data: &mut data,
        };
        let found = table.get(storage, key, sequence, &mut buffers)?;
        Ok(found.map(|found| {
            let value = buffers.data[found.value_at..found.value_at + found.value_len].to_vec();
            (found.sequence, (found.kind == Kind::Put).then_some(value))
        }))
    }

    #[test]
    fn a_table_returns_every_version_visible_at_a_sequence_number() {
        let model = model(3_000, 7);
        let mut storage = Ram::new(8, 4096, 0xFF).unwrap();
        let info = write(&mut storage, &model, 4096);
        let versions: usize = model.values().map(HeapVec::len).sum();
        assert_eq!(info.entries, versions as u64);
        assert_eq!(&info.smallest[..], &model.keys().next().unwrap()[..]);
        assert_eq!(&info.largest[..], &model.keys().last().unwrap()[..]);
        let table = Table::open(&mut storage, 0, info.len).unwrap();
        assert_eq!(table.entries(), info.entries);
        for (key, versions) in &model {
            for &(sequence, _) in versions {
                for probe in [sequence, sequence + 1, sequence.saturating_sub(1)] {
                    assert_eq!(
                        get(&mut storage, &table, key, probe).unwrap(),
                        expected(&model, key, probe),
                        "{key:?} at {probe}"
                    );
                }
            }
        }
        // Keys the table does not hold, including ones between its keys.
        for n in 0..500u32 {
            let key = std::format!("key{n:06}x").into_bytes();
            assert_eq!(
                get(&mut storage, &table, &key, u64::MAX >> 2).unwrap(),
                None
            );
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_reported_never_returned_as_data() {
        type Small = RamStorage<{ 64 << 10 }>;
        let model = model(150, 3);
        let mut clean = Ram::new(8, 4096, 0xFF).unwrap();
        let info = write(&mut clean, &model, 512);
        let mut image = std::vec![0u8; info.len as usize];
        clean.read(0, &mut image).unwrap();
        assert!(image.len() <= 64 << 10);
        let keys: HeapVec<&HeapVec<u8>> = model.keys().collect();
        let (mut reported, mut flips) = (0, 0);
        for byte in (0..image.len()).step_by(11) {
            let mut flipped = image.clone();
            flipped[byte] ^= 0x10;
            let mut storage = Small::new(8, 4096, 0xFF).unwrap();
            storage.write(0, &flipped).unwrap();
            flips += 1;
            let Ok(table) = Table::open(&mut storage, 0, info.len) else {
                reported += 1;
                continue;
            };
            for key in keys.iter().step_by(7) {
                let found = get_in(&mut storage, &table, key, u64::MAX >> 2);
                match found {
                    Ok(found) => assert_eq!(found, expected(&model, key, u64::MAX >> 2)),
                    Err(TableError::Corrupt { .. }) => reported += 1,
                    Err(error) => panic!("{error:?}"),
                }
            }
        }
        assert!(
            flips > 100 && reported > 0,
            "{reported} reported in {flips} flips"
        );
    }

    /// Every version in the model in table order, from the first not before `from`.
    fn flattened(model: &Model, from: Option<(&[u8], u64)>) -> HeapVec<(HeapVec<u8>, Version)> {
        model
            .iter()
            .flat_map(|(key, versions)| {
                versions
                    .iter()
                    .map(move |version| (key.clone(), version.clone()))
            })
            .filter(|(key, (sequence, _))| {
                from.is_none_or(|(from, at)| {
                    order(key, *sequence, from, at) != core::cmp::Ordering::Less
                })
            })
            .collect()
    }

    fn scanned(
        storage: &mut Ram,
        table: &Table,
        from: Option<(&[u8], u64)>,
    ) -> HeapVec<(HeapVec<u8>, Version)> {
        let mut index = std::vec![0u8; 1 << 16];
        let mut data = std::vec![0u8; 1 << 16];
        let buffers = ReaderBuffers {
            index: &mut index,
            data: &mut data,
        };
        let mut scan = table.scan(storage, buffers, from).unwrap();
        let mut out = HeapVec::new();
        while let Some(entry) = scan.next(storage).unwrap() {
            let value = (entry.kind == Kind::Put).then(|| entry.value.to_vec());
            out.push((entry.key.to_vec(), (entry.sequence, value)));
        }
        out
    }

    proptest! {
        #[test]
        fn small_tables_round_trip(keys in 1usize..200, seed: u64, block in 200usize..1024) {
            let model = model(keys, seed);
            let mut storage = Ram::new(8, 4096, 0xFF).unwrap();
            let info = write(&mut storage, &model, block);
            let table = Table::open(&mut storage, 0, info.len).unwrap();
            prop_assert_eq!(scanned(&mut storage, &table, None), flattened(&model, None));
            let keys: HeapVec<&HeapVec<u8>> = model.keys().collect();
            let from_key = keys[seed as usize % keys.len()].clone();
            let from = Some((&from_key[..], seed % 400));
            prop_assert_eq!(scanned(&mut storage, &table, from), flattened(&model, from));
            for (key, versions) in &model {
                let newest = versions[0].0;
                prop_assert_eq!(
                    get(&mut storage, &table, key, newest).unwrap(),
                    expected(&model, key, newest)
                );
            }
        }
    }
}
