//! The engine: a log-structured merge tree over two storages, a **log storage** (the
//! write-ahead log and the manifest, one [`Log`]) and a **table storage** (tables in runs of
//! erase blocks handed out by [`Space`]).
//!
//! # Records of the log
//!
//! ```text
//! BATCH      kind 96   the batch record (see [`batch`]): varint first_sequence | varint count | op…
//! EDIT       kind 97   postcard: flushed_through Option<u64> | removed u32 | added u32
//!                      | removed × u32 (first block of a table's run) | added × TableMeta
//! CHECKPOINT kind 98   postcard: next_sequence u64 | flushed_through u64 | tables u32
//!                      | tables × TableMeta
//! TableMeta            postcard: first_block u32 | blocks u32 | len u64 | level u8 | entries u64
//!                      | smallest_sequence u64 | largest_sequence u64
//!                      | smallest key (varint len | bytes) | largest key (varint len | bytes)
//! ```
//!
//! (postcard integers are varints; `Option` is a byte 0/1 then the value.) A table is named by
//! the first block of its run: live tables never share a block.
//!
//! # What it guarantees
//!
//! - [`Db::write`] appends one BATCH record and inserts its operations into the memtable: a
//!   batch is all or nothing, its operations get consecutive sequence numbers, and sequence
//!   numbers strictly increase over the life of the database (across restarts too).
//! - [`Db::commit`] syncs the log: every batch written before it is durable once it returns
//!   `Ok` (group commit). Acknowledge writes only then. A failed sync poisons the engine: every
//!   later write, commit, flush and compaction is refused; reads still work.
//! - A flush syncs the log, writes the memtable as level-0 tables (each run erased first),
//!   syncs the table storage, appends a CHECKPOINT (every live table, and "flushed through"),
//!   syncs the log, then releases the log segments before the checkpoint
//!   ([`Log::release_checkpointed`]). A compaction writes its new tables, syncs the table
//!   storage, appends one EDIT (added and removed), syncs the log, and only then frees the old
//!   tables' runs. A crash anywhere leaves a state that recovers every committed write: tables
//!   the manifest does not name are garbage and their blocks free; batches above "flushed
//!   through" are replayed into the memtable.
//! - [`Db::open`] replays the log (the last checkpoint, the edits after it, the batches after
//!   the flushed sequence), rebuilds the free space from the live tables' runs and checks each
//!   live table's footer: its work is bounded by the log's tail and the number of tables,
//!   never by the tables' data.
//! - Reads look in the memtable, then every table that may hold the key (all of level 0, the
//!   one table of each deeper level whose key range covers it) and take the newest version;
//!   a tombstone hides older versions. Damage in a table is reported as
//!   [`TableError::Corrupt`] with its position, never returned as a value.
//! - Leveled compaction: when level 0 has `l0_trigger` tables, the oldest of them (at most
//!   [`MERGE_WAYS_MAX`]` - 1`) are merged with the level-1 tables they overlap into new level-1
//!   tables; when level `i ≥ 1` holds more than `level_base · ratio^(i-1)` bytes, its oldest
//!   table is merged with the level-`i+1` tables it overlaps (or moved down when none). A
//!   compaction keeps of each key the newest version the present and each pinned snapshot
//!   see, and drops a tombstone older than every pinned snapshot when no deeper level holds
//!   the key range. Tables never split a key's versions, so the tables of a level
//!   `≥ 1` have disjoint key ranges.
//! - [`Db::scan`] merges the memtable and the tables in a key range into the newest visible
//!   version of each key, tombstones skipped, at a snapshot.
//!
//! # What it does not guarantee (yet)
//!
//! - Snapshots: reads at a [`Db::snapshot`] are exact while it is pinned ([`Db::pin`], up to
//!   [`SNAPSHOTS_MAX`]); an unpinned one only until the next flush or compaction (both keep,
//!   of each key, only the versions the present and the pinned snapshots see). Pins do not
//!   survive a restart.
//! - Statistics count since the last open.
//! - Memory: the engine holds the metadata of `TABLES` tables (two keys of up to
//!   [`KEY_LEN_MAX`] bytes each); recovery holds that twice for a moment, and a compaction
//!   holds one [`Table`] handle per level table it merges, a scan one per table in its range.
//! - Sizing is the caller's: the log must have room for the tail between flushes (a write
//!   flushes first when at most one log segment is free), the table storage for the live
//!   tables plus one compaction's output, and `TABLES` for the live tables plus one
//!   compaction's output; when not, flushes and compactions fail with
//!   [`FlushError::NoSpace`] and change nothing.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::batch::{self, Batch};
use super::block::{Entry, Kind, KEY_LEN_MAX, SEQUENCE_MAX};
use super::memtable::{self, Memtable};
use super::merge::{MemtableSource, Merge, Source};
use super::space::{Run, Space, SpaceError};
use super::table::{
    filter_buffer_len, ReaderBuffers, Table, TableError, TableScan, TableWriter, WriterBuffers,
    FOOTER_LEN, WRITE_SIZE_MAX,
};
use crate::frame::EmitError;
use crate::log::{self, AppendError, Appended, Log, ReplayError, SyncError};
use crate::storage::Storage;

/// Kind of a BATCH record.
pub const KIND_BATCH: u8 = 96;
/// Kind of an EDIT record.
pub const KIND_EDIT: u8 = 97;
/// Kind of a CHECKPOINT record.
pub const KIND_CHECKPOINT: u8 = 98;
/// Levels: 0 (flushed tables, overlapping) to `LEVELS - 1` (the last).
pub const LEVELS: usize = 7;
/// The most snapshots pinned at once.
pub const SNAPSHOTS_MAX: usize = 8;
/// The most sources one compaction merges (level-0 tables plus the next level).
pub const MERGE_WAYS_MAX: usize = 8;

/// The buffer [`Db::put`] and [`Db::delete`] build their one-operation batch in.
pub const ONE_LEN_MAX: usize = KEY_LEN_MAX + 1024 + 16;
/// Bytes of block-format overhead one entry may take besides its key and value (varints, a
/// share of the restart array).
const ENTRY_OVERHEAD: usize = 48;
/// Parts are read padded to the read size, which is at most the write size, at most this.
const READ_PAD: usize = WRITE_SIZE_MAX;

/// How the engine sizes its tables, memtable and compactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The log's layout; its `payload_max` is raised to what the records need
    /// ([`Config::log_payload_max`]).
    pub log: log::Config,
    /// The longest key accepted (at most [`KEY_LEN_MAX`]): bounds checkpoints and blocks.
    pub key_len_max: usize,
    /// The longest value accepted.
    pub value_len_max: usize,
    /// The memtable is flushed when a batch would take it past its buffer's size minus this.
    pub flush_margin: usize,
    /// A table is finished once its data reach this many bytes (at the next key).
    pub table_size: u64,
    /// The data block size: at least `2 · (key_len_max + value_len_max + 48)`.
    pub block_size: usize,
    /// Bloom filter bits per key (0: no filter).
    pub bits_per_key: usize,
    /// Level-0 tables that trigger a compaction into level 1 (2 to `MERGE_WAYS_MAX - 1`).
    pub l0_trigger: usize,
    /// Bytes level 1 may hold before it is compacted.
    pub level_base: u64,
    /// Each level may hold this many times the bytes of the one above (at least 2).
    pub level_ratio: u64,
    /// Seed of the memtable's level generator.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: log::Config::default(),
            key_len_max: 64,
            value_len_max: 1024,
            flush_margin: 0,
            table_size: 64 << 10,
            block_size: 4096,
            bits_per_key: 10,
            l0_trigger: 4,
            level_base: 256 << 10,
            level_ratio: 10,
            seed: 0x5eed,
        }
    }
}

/// Why a configuration or the lent buffers do not fit. Nothing was read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// `key_len_max` is 0 or above [`KEY_LEN_MAX`].
    KeyLen,
    /// The block size cannot hold two of the largest entries.
    BlockSize,
    /// `l0_trigger` or `level_ratio` out of range, or `table_size` 0.
    Levels,
    /// The memtable buffer cannot hold one largest entry within the margin.
    Memtable,
    /// The work buffer is shorter than [`Config::work_len`] (or `hashes` is empty).
    Work,
    /// The table storage's write size is above what tables support, or its erase size 0.
    TableGeometry,
}

impl Config {
    /// The largest payload of a CHECKPOINT of `tables` tables.
    pub fn checkpoint_len_max(&self, tables: usize) -> usize {
        let meta = 5 + 5 + 10 + 1 + 10 + 10 + 10 + 2 * (3 + self.key_len_max);
        10 + 10 + 5 + tables * meta
    }

    /// The log's payload limit the engine uses: the largest of a CHECKPOINT or EDIT of
    /// `tables` tables and of `log.payload_max` (which bounds a BATCH record).
    pub fn log_payload_max(&self, tables: usize) -> u32 {
        let edit = self.checkpoint_len_max(tables) + 5 * tables + 16;
        let needed = u32::try_from(edit).unwrap_or(u32::MAX);
        self.log.payload_max.max(needed)
    }

    /// The most data bytes of one table: the target, then the rest of the last key's
    /// versions (at most one per pinned snapshot and the present: flushes and compactions
    /// drop the others), each block padded.
    fn table_data_max(&self) -> u64 {
        let entry = (self.key_len_max + self.value_len_max + ENTRY_OVERHEAD) as u64;
        self.table_size + 2 * (SNAPSHOTS_MAX as u64 + 1) * entry
    }

    fn index_len(&self) -> usize {
        let block = self.block_size.max(1) as u64;
        let blocks = (4 * self.table_data_max() / block + 4) as usize;
        blocks * (self.key_len_max + 2 * 10 + ENTRY_OVERHEAD) + 16
    }

    fn data_len(&self, keys: usize) -> usize {
        round_up(
            self.block_size
                .max(filter_buffer_len(keys, self.bits_per_key)),
            READ_PAD,
        )
    }

    /// Reader buffer pairs: one per source of a compaction or of a scan (the memtable
    /// aside: the level-0 tables below the trigger and one per deeper level).
    fn readers(&self) -> usize {
        self.ways().max(self.l0_trigger + LEVELS - 2)
    }

    fn ways(&self) -> usize {
        (self.l0_trigger + 1).min(MERGE_WAYS_MAX)
    }

    /// The work buffer a database with `keys` key hashes per table (the `hashes` buffer's
    /// length) needs: one table writer and one reader per merged source.
    pub fn work_len(&self, keys: usize) -> usize {
        let writer =
            self.block_size + self.index_len() + filter_buffer_len(keys, self.bits_per_key);
        writer + self.readers() * (round_up(self.index_len(), READ_PAD) + self.data_len(keys))
    }

    fn check(&self, memtable: usize, work: usize, keys: usize) -> Result<(), ConfigError> {
        if self.key_len_max == 0 || self.key_len_max > KEY_LEN_MAX {
            return Err(ConfigError::KeyLen);
        }
        let entry = self.key_len_max + self.value_len_max + ENTRY_OVERHEAD;
        if self.block_size < 2 * entry {
            return Err(ConfigError::BlockSize);
        }
        if self.l0_trigger < 2
            || self.l0_trigger >= MERGE_WAYS_MAX
            || self.level_ratio < 2
            || self.table_size == 0
        {
            return Err(ConfigError::Levels);
        }
        let node = memtable::node_len_max(self.key_len_max, self.value_len_max);
        if memtable < HEAD_BOUND + node + self.flush_margin {
            return Err(ConfigError::Memtable);
        }
        if keys == 0 || work < self.work_len(keys) {
            return Err(ConfigError::Work);
        }
        Ok(())
    }

    /// Bytes level `level` (at least 1) may hold.
    fn level_limit(&self, level: usize) -> u64 {
        let mut limit = self.level_base;
        for _ in 1..level {
            limit = limit.saturating_mul(self.level_ratio);
        }
        limit
    }
}

/// The memtable's head node, as [`memtable::node_len_max`] counts it.
const HEAD_BOUND: usize = 16 + 4 * memtable::HEIGHT_MAX;

fn round_up(bytes: usize, unit: usize) -> usize {
    bytes.div_ceil(unit) * unit
}

/// The buffers the engine works in, lent by the caller: `log` for the log's frames (one frame
/// of [`Config::log_payload_max`] and a control frame), `memtable` for the memtable, `work`
/// for table writers and readers ([`Config::work_len`]), `hashes` one key hash per key of a
/// table (its length bounds the keys per table).
#[derive(Debug)]
pub struct Buffers<B, H> {
    /// The log's frame buffer.
    pub log: B,
    /// The memtable's arena.
    pub memtable: B,
    /// Table writer and reader buffers.
    pub work: B,
    /// Key hashes of the table being written.
    pub hashes: H,
}

/// What the manifest records of a live table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// The first erase block of its run (the table starts there), and its name.
    pub first_block: u32,
    /// Blocks in its run.
    pub blocks: u32,
    /// Its length in bytes (the footer ends it).
    pub len: u64,
    /// Its level.
    pub level: u8,
    /// Versions it holds.
    pub entries: u64,
    /// Its lowest and highest sequence numbers.
    pub sequences: (u64, u64),
    /// Its first key.
    pub smallest: Vec<u8, KEY_LEN_MAX>,
    /// Its last key.
    pub largest: Vec<u8, KEY_LEN_MAX>,
}

impl TableMeta {
    fn run(&self) -> Run {
        Run {
            first: self.first_block,
            count: self.blocks,
        }
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.smallest.as_slice() <= key && key <= self.largest.as_slice()
    }

    fn overlaps(&self, (low, high): (&[u8], &[u8])) -> bool {
        self.smallest.as_slice() <= high && low <= self.largest.as_slice()
    }
}

/// A live table: what the manifest says and its opened footer.
#[derive(Debug, Clone)]
struct Live {
    meta: TableMeta,
    table: Table,
}

/// Why [`Db::open`] failed. Nothing was written, except what the log's own open writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OpenError<LE, TE> {
    /// The configuration or buffers do not fit.
    Config(ConfigError),
    /// The log could not be opened or replayed (its storage failed, mid-log corruption under
    /// the strict policy, or a record the engine refused: see [`Replay`]).
    Log(log::OpenError<LE, Replay>),
    /// The manifest names runs that overlap or reach past the table storage (a damaged
    /// manifest), or more than the space table holds.
    Manifest {
        /// The first block of the table whose run could not be taken.
        first_block: u32,
    },
    /// A live table's footer is damaged or unreadable.
    Table {
        /// The table's first block.
        first_block: u32,
        /// What reading its footer found (`Corrupt` with the position).
        error: TableError<TE>,
    },
}

/// A log record the engine cannot replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Replay {
    /// The record does not decode, has an unknown kind, or names more tables than `TABLES`.
    Record(ReplayError),
    /// The batches after the last flush do not fit the memtable buffer: open with a memtable
    /// buffer at least as large as the one they were written with.
    MemtableFull {
        /// The log sequence number of the record that did not fit.
        sequence: u64,
    },
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WriteError<LE, TE> {
    /// An earlier storage failure poisoned the engine. Nothing changed.
    Poisoned,
    /// The batch is empty. Nothing changed.
    Empty,
    /// A key or value is longer than configured, the batch's record exceeds the log's
    /// payload limit, or the batch does not fit an empty memtable. Nothing changed.
    TooLarge,
    /// Sequence numbers are exhausted. Nothing changed.
    SequencesExhausted,
    /// The flush the write needed first failed (see [`FlushError`]); the batch was not
    /// written.
    Flush(FlushError<LE, TE>),
    /// The log refused the record (full, or its storage failed: then the engine is
    /// poisoned). The batch was not written.
    Log(AppendError<LE>),
}

/// Why a commit failed: the sync failed and the engine is poisoned; nothing written since
/// the previous successful commit may be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommitError<LE> {
    /// The engine was already poisoned.
    Poisoned,
    /// The log's sync failed (now poisoned).
    Sync(SyncError<LE>),
}

/// Why a flush or a compaction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FlushError<LE, TE> {
    /// An earlier storage failure poisoned the engine. Nothing changed.
    Poisoned,
    /// Syncing the log failed: the engine is poisoned.
    Commit(CommitError<LE>),
    /// Writing or reading a table failed (`Storage`: the table storage failed; `Corrupt`: an
    /// input table is damaged; `NoSpace`: a buffer was too small). The manifest did not
    /// change; the blocks written are free again.
    Table(TableError<TE>),
    /// The table storage has no free run long enough, or `TABLES` tables are live. Nothing
    /// changed.
    NoSpace,
    /// The table storage's sync failed: the engine is poisoned, the manifest did not change.
    TableSync(TE),
    /// Appending the manifest record failed (storage failure: poisoned); the manifest did
    /// not change.
    Log(AppendError<LE>),
}

/// Why a read failed. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReadError<TE> {
    /// The value is `needed` bytes long, more than the output buffer.
    BufferTooSmall {
        /// The value's length.
        needed: usize,
    },
    /// A table could not be read (`Corrupt`: a damaged part, with its position).
    Table(TableError<TE>),
}

/// Bytes and entries of one level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Tables in the level.
    pub tables: usize,
    /// Versions in them.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What the engine holds and what it wrote since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per level.
    pub levels: [LevelStats; LEVELS],
    /// Versions in the memtable.
    pub memtable_entries: usize,
    /// Key and value bytes in the memtable.
    pub memtable_bytes: usize,
    /// Key and value bytes the caller wrote.
    pub user_bytes: u64,
    /// Payload bytes appended to the log (batches, edits, checkpoints).
    pub log_bytes: u64,
    /// Bytes written to tables (flushes and compactions).
    pub table_bytes: u64,
    /// Flushes done.
    pub flushes: u64,
    /// Compactions done (moves included).
    pub compactions: u64,
    /// Bytes of live tables.
    pub live_bytes: u64,
    /// Bytes of the table storage's runs in use.
    pub used_bytes: u64,
}

impl Stats {
    /// Bytes written to storage per byte the caller wrote.
    pub fn write_amplification(&self) -> f32 {
        (self.log_bytes + self.table_bytes) as f32 / self.user_bytes.max(1) as f32
    }

    /// Bytes of table storage in use per byte of live table.
    pub fn space_amplification(&self) -> f32 {
        self.used_bytes as f32 / self.live_bytes.max(1) as f32
    }
}

/// The database engine. See the [module docs](self).
#[derive(Debug)]
pub struct Db<L: Storage, T: Storage, B, H, const TABLES: usize> {
    log: Log<L, B>,
    storage: T,
    memtable: Memtable<B>,
    /// Bytes the memtable may need, counting every node at the greatest height: a bound that
    /// a replay with other heights also meets.
    memtable_bound: usize,
    work: B,
    hashes: H,
    config: Config,
    tables: Vec<Live, TABLES>,
    space: Space<TABLES>,
    erase_size: u64,
    next_sequence: u64,
    flushed_through: u64,
    committed: u64,
    /// Pinned snapshots, ascending (duplicates allowed).
    snapshots: Vec<u64, SNAPSHOTS_MAX>,
    /// Whether batches were appended since the last sync.
    staged: bool,
    poisoned: bool,
    stats: Stats,
}

/// The state a replay builds.
struct Replayed<'m, B, const TABLES: usize> {
    tables: Vec<TableMeta, TABLES>,
    memtable: &'m mut Memtable<B>,
    memtable_bound: usize,
    next_sequence: u64,
    flushed_through: u64,
}

impl<L, T, B, H, const TABLES: usize> Db<L, T, B, H, TABLES>
where
    L: Storage,
    T: Storage,
    B: AsMut<[u8]> + AsRef<[u8]>,
    H: AsMut<[u64]> + AsRef<[u64]>,
{
    /// Opens the database: replays the log in `log_storage` and checks the footers of the
    /// live tables in `table_storage`. See the [module docs](self).
    #[allow(clippy::type_complexity)]
    pub fn open(
        log_storage: L,
        mut table_storage: T,
        buffers: Buffers<B, H>,
        config: Config,
    ) -> Result<(Self, log::Recovery), OpenError<L::Error, T::Error>> {
        let Buffers {
            log: log_buffer,
            memtable: memtable_buffer,
            work,
            hashes,
        } = buffers;
        let keys = hashes.as_ref().len();
        config
            .check(memtable_buffer.as_ref().len(), work.as_ref().len(), keys)
            .map_err(OpenError::Config)?;
        let geometry = table_storage.geometry();
        if geometry.write_size as usize > WRITE_SIZE_MAX || geometry.erase_size == 0 {
            return Err(OpenError::Config(ConfigError::TableGeometry));
        }
        let mut memtable = Memtable::new(memtable_buffer, config.seed)
            .ok_or(OpenError::Config(ConfigError::Memtable))?;
        let log_config = log::Config {
            payload_max: config.log_payload_max(TABLES),
            ..config.log
        };
        let mut replayed = Replayed::<B, TABLES> {
            tables: Vec::new(),
            memtable: &mut memtable,
            memtable_bound: HEAD_BOUND,
            next_sequence: 1,
            flushed_through: 0,
        };
        let (log, recovery) = Log::open(log_storage, log_buffer, log_config, |entry| {
            replayed.apply(entry)
        })
        .map_err(OpenError::Log)?;
        let Replayed {
            tables: metas,
            memtable_bound,
            next_sequence,
            flushed_through,
            ..
        } = replayed;
        let (space, tables) = open_tables(&mut table_storage, metas)?;
        let next_sequence = tables
            .iter()
            .map(|live| live.meta.sequences.1.saturating_add(1))
            .fold(next_sequence, u64::max);
        let db = Self {
            log,
            storage: table_storage,
            memtable,
            memtable_bound,
            work,
            hashes,
            config,
            tables,
            space,
            erase_size: u64::from(geometry.erase_size),
            next_sequence,
            flushed_through,
            committed: next_sequence - 1,
            snapshots: Vec::new(),
            staged: false,
            poisoned: false,
            stats: Stats::default(),
        };
        Ok((db, recovery))
    }

    /// Gives the storages and buffers back, dropping what was not committed (as a crash
    /// would).
    pub fn into_parts(self) -> (L, T, Buffers<B, H>) {
        let (log_storage, log_buffer) = self.log.into_parts();
        let buffers = Buffers {
            log: log_buffer,
            memtable: self.memtable.into_buffer(),
            work: self.work,
            hashes: self.hashes,
        };
        (log_storage, self.storage, buffers)
    }

    /// Commits and marks a clean shutdown of the log (see [`Log::close`], which drops the log
    /// storage: lend it as `&mut`); gives the table storage back.
    pub fn close(mut self) -> Result<T, CommitError<L::Error>> {
        self.commit()?;
        self.log.close().map_err(CommitError::Sync)?;
        Ok(self.storage)
    }

    /// The log underneath.
    pub fn log(&self) -> &Log<L, B> {
        &self.log
    }

    /// The log storage, mutable: for tests arming faults. Writing through it voids the
    /// guarantees.
    pub fn log_storage_mut(&mut self) -> &mut L {
        self.log.storage_mut()
    }

    /// The table storage, mutable: for tests arming faults or damaging bytes.
    pub fn table_storage_mut(&mut self) -> &mut T {
        &mut self.storage
    }

    /// Whether a storage failure poisoned the engine.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The highest sequence number committed (0: none): reads at it see every committed
    /// write. Stable until the next flush or compaction unless pinned ([`Db::pin`]).
    pub fn snapshot(&self) -> u64 {
        self.committed
    }

    /// Pins the current [`Db::snapshot`]: compactions keep every version reads at it see,
    /// until [`Db::unpin`]. Pins live in memory and end with the engine (a restart drops
    /// them). `None` when [`SNAPSHOTS_MAX`] are pinned (nothing changed).
    pub fn pin(&mut self) -> Option<u64> {
        let snapshot = self.committed;
        let at = self.snapshots.partition_point(|&pinned| pinned <= snapshot);
        self.snapshots.insert(at, snapshot).ok()?;
        Some(snapshot)
    }

    /// Unpins one pin of `snapshot`; whether it was pinned.
    pub fn unpin(&mut self, snapshot: u64) -> bool {
        match self.snapshots.iter().position(|&pinned| pinned == snapshot) {
            Some(at) => {
                self.snapshots.remove(at);
                true
            }
            None => false,
        }
    }

    /// The sequence number the next write's first operation gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The live tables' metadata, in no particular order.
    pub fn tables(&self) -> impl Iterator<Item = &TableMeta> + '_ {
        self.tables.iter().map(|live| &live.meta)
    }

    /// What the engine holds and wrote.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        for live in &self.tables {
            let level = &mut stats.levels[usize::from(live.meta.level)];
            level.tables += 1;
            level.entries += live.meta.entries;
            level.bytes += live.meta.len;
            stats.live_bytes += live.meta.len;
        }
        stats.used_bytes = self
            .space
            .used()
            .iter()
            .map(|run| u64::from(run.count) * self.erase_size)
            .sum();
        stats.memtable_entries = self.memtable.len();
        stats.memtable_bytes = self.memtable.payload();
        stats
    }
}

impl<B: AsMut<[u8]> + AsRef<[u8]>, const TABLES: usize> Replayed<'_, B, TABLES> {
    fn apply(&mut self, entry: log::Entry<'_>) -> Result<(), Replay> {
        let sequence = entry.sequence;
        let bad = Replay::Record(ReplayError::BadPayload { sequence });
        match entry.kind {
            KIND_BATCH => {
                let record = batch::decode_record(entry.payload).map_err(|_| bad)?;
                self.apply_batch(&record, sequence)
            }
            KIND_CHECKPOINT => {
                let ((next, flushed, count), mut rest) =
                    postcard::take_from_bytes::<(u64, u64, u32)>(entry.payload).map_err(|_| bad)?;
                self.tables.clear();
                for _ in 0..count {
                    let (meta, after) = take_meta(rest).ok_or(bad)?;
                    rest = after;
                    self.tables
                        .push(meta)
                        .map_err(|_| Replay::Record(ReplayError::Capacity { sequence }))?;
                }
                if !rest.is_empty() || flushed >= next {
                    return Err(bad);
                }
                self.memtable.clear();
                self.memtable_bound = HEAD_BOUND;
                self.flushed_through = flushed;
                self.next_sequence = self.next_sequence.max(next);
                Ok(())
            }
            KIND_EDIT => {
                let ((flushed, removed, added), mut rest) =
                    postcard::take_from_bytes::<(Option<u64>, u32, u32)>(entry.payload)
                        .map_err(|_| bad)?;
                for _ in 0..removed {
                    let (first_block, after) =
                        postcard::take_from_bytes::<u32>(rest).map_err(|_| bad)?;
                    rest = after;
                    self.tables.retain(|meta| meta.first_block != first_block);
                }
                for _ in 0..added {
                    let (meta, after) = take_meta(rest).ok_or(bad)?;
                    rest = after;
                    self.tables
                        .push(meta)
                        .map_err(|_| Replay::Record(ReplayError::Capacity { sequence }))?;
                }
                if !rest.is_empty() {
                    return Err(bad);
                }
                if let Some(flushed) = flushed {
                    self.flushed_through = self.flushed_through.max(flushed);
                }
                Ok(())
            }
            kind => Err(Replay::Record(ReplayError::UnknownKind { sequence, kind })),
        }
    }

    fn apply_batch(&mut self, record: &batch::Record<'_>, sequence: u64) -> Result<(), Replay> {
        let last = record.first_sequence + record.count - 1;
        self.next_sequence = self.next_sequence.max(last + 1);
        for operation in record.operations() {
            if operation.sequence <= self.flushed_through {
                continue;
            }
            let entry = Entry {
                key: operation.key,
                sequence: operation.sequence,
                kind: operation.kind,
                value: operation.value,
            };
            let bound = memtable::node_len_max(entry.key.len(), entry.value.len());
            self.memtable
                .insert(&entry)
                .map_err(|_| Replay::MemtableFull { sequence })?;
            self.memtable_bound += bound;
        }
        Ok(())
    }
}

/// The live tables of a replayed manifest: their runs taken (all of them before any footer
/// is read, so that damage to the manifest is reported first), their footers opened.
#[allow(clippy::type_complexity)]
fn open_tables<LE, T: Storage, const TABLES: usize>(
    storage: &mut T,
    metas: Vec<TableMeta, TABLES>,
) -> Result<(Space<TABLES>, Vec<Live, TABLES>), OpenError<LE, T::Error>> {
    let geometry = storage.geometry();
    let erase_size = u64::from(geometry.erase_size);
    let blocks = u32::try_from(geometry.capacity / erase_size).unwrap_or(u32::MAX);
    let mut space = Space::new(blocks);
    for meta in &metas {
        let first_block = meta.first_block;
        space
            .take(meta.run())
            .map_err(|_| OpenError::Manifest { first_block })?;
    }
    let mut tables = Vec::new();
    for meta in metas {
        let first_block = meta.first_block;
        let start = u64::from(first_block) * erase_size;
        let table = if meta.len <= u64::from(meta.blocks) * erase_size {
            Table::open(storage, start, meta.len)
        } else {
            Err(TableError::Corrupt {
                offset: start,
                what: "footer",
            })
        }
        .map_err(|error| OpenError::Table { first_block, error })?;
        // Fits: as many as the manifest held.
        let _ = tables.push(Live { meta, table });
    }
    Ok((space, tables))
}

/// One [`TableMeta`] off the front of `bytes`, checked.
fn take_meta(bytes: &[u8]) -> Option<(TableMeta, &[u8])> {
    let (meta, rest) = postcard::take_from_bytes::<TableMeta>(bytes).ok()?;
    let valid = usize::from(meta.level) < LEVELS
        && meta.blocks > 0
        && meta.smallest <= meta.largest
        && meta.sequences.0 <= meta.sequences.1;
    valid.then_some((meta, rest))
}

/// The bytes of a CHECKPOINT.
fn encode_checkpoint(
    area: &mut [u8],
    next_sequence: u64,
    flushed_through: u64,
    tables: &[Live],
) -> Result<usize, EmitError> {
    let head = (next_sequence, flushed_through, tables.len() as u32);
    let mut at = postcard_into(&head, area, 0)?;
    for live in tables {
        at = postcard_into(&live.meta, area, at)?;
    }
    Ok(at)
}

/// The bytes of an EDIT.
fn encode_edit(area: &mut [u8], removed: &[u32], added: &[Live]) -> Result<usize, EmitError> {
    let head = (None::<u64>, removed.len() as u32, added.len() as u32);
    let mut at = postcard_into(&head, area, 0)?;
    for first_block in removed {
        at = postcard_into(first_block, area, at)?;
    }
    for live in added {
        at = postcard_into(&live.meta, area, at)?;
    }
    Ok(at)
}

fn postcard_into<V: Serialize>(value: &V, area: &mut [u8], at: usize) -> Result<usize, EmitError> {
    let rest = area.get_mut(at..).ok_or(EmitError::BufferTooSmall)?;
    let used = postcard::to_slice(value, rest)
        .map_err(|_| EmitError::BufferTooSmall)?
        .len();
    Ok(at + used)
}

/// The work buffer cut into a table writer's buffers and the readers' area.
struct Work<'w> {
    block: &'w mut [u8],
    index: &'w mut [u8],
    filter: &'w mut [u8],
    readers: &'w mut [u8],
}

/// Cuts `work` (at least [`Config::work_len`] long, checked at open).
fn carve<'w>(work: &'w mut [u8], config: &Config, keys: usize) -> Work<'w> {
    let (block, rest) = work.split_at_mut(config.block_size);
    let (index, rest) = rest.split_at_mut(config.index_len());
    let (filter, readers) = rest.split_at_mut(filter_buffer_len(keys, config.bits_per_key));
    Work {
        block,
        index,
        filter,
        readers,
    }
}

/// The readers' area as reader buffers, one per merged source.
fn reader_buffers<'w>(
    readers: &'w mut [u8],
    config: &Config,
    keys: usize,
) -> impl Iterator<Item = ReaderBuffers<'w>> {
    let index_len = round_up(config.index_len(), READ_PAD);
    let pair = index_len + config.data_len(keys);
    readers.chunks_exact_mut(pair).map(move |chunk| {
        let (index, data) = chunk.split_at_mut(index_len);
        ReaderBuffers { index, data }
    })
}

/// Tables scanned one after the other with one pair of buffers: the tables of a level
/// (disjoint, in key order), or one table.
struct LevelSource<'b, const N: usize> {
    tables: Vec<Table, N>,
    /// Where each table's scan starts (`None`: at its first entry).
    from: Option<&'b [u8]>,
    next: usize,
    scan: Option<TableScan<'b>>,
    spare: Option<ReaderBuffers<'b>>,
}

impl<'b, const N: usize> LevelSource<'b, N> {
    fn new(tables: Vec<Table, N>, buffers: ReaderBuffers<'b>) -> Self {
        Self {
            tables,
            from: None,
            next: 0,
            scan: None,
            spare: Some(buffers),
        }
    }
}

impl<T: Storage, const N: usize> Source<T> for LevelSource<'_, N> {
    fn advance(&mut self, storage: &mut T) -> Result<bool, TableError<T::Error>> {
        // Bounded: every turn past the first starts the next table.
        for _ in 0..=self.tables.len() {
            if let Some(scan) = self.scan.as_mut() {
                if scan.next(storage)?.is_some() {
                    return Ok(true);
                }
            }
            if let Some(scan) = self.scan.take() {
                self.spare = Some(scan.into_buffers());
            }
            let Some(table) = self.tables.get(self.next) else {
                return Ok(false);
            };
            self.next += 1;
            let buffers = self.spare.take().ok_or(TableError::NoSpace)?;
            let from = self.from.map(|key| (key, SEQUENCE_MAX));
            self.scan = Some(table.scan(storage, buffers, from)?);
        }
        Ok(false)
    }

    fn current(&self) -> Option<Entry<'_>> {
        self.scan.as_ref()?.current()
    }
}

/// A compaction's merged input: of each key, the newest version each pinned snapshot (and the
/// present) sees; tombstones older than every pinned snapshot dropped when no deeper level may
/// hold an older version.
struct Compacting<'m, 's, T: Storage> {
    merge: Merge<'m, 's, T>,
    current: Option<usize>,
    last: Vec<u8, KEY_LEN_MAX>,
    any: bool,
    /// The stripe of the version of `last` kept last.
    last_stripe: usize,
    /// Pinned snapshots, ascending.
    snapshots: Vec<u64, SNAPSHOTS_MAX>,
    drop_tombstones: bool,
}

/// Which readers see a version: the first pinned snapshot at or above its sequence number
/// (the index), or none but the present (the count). Of the versions of a key in one stripe,
/// readers see only the newest.
fn stripe(snapshots: &[u64], sequence: u64) -> usize {
    snapshots.partition_point(|&snapshot| snapshot < sequence)
}

impl<T: Storage> Source<T> for Compacting<'_, '_, T> {
    fn advance(&mut self, storage: &mut T) -> Result<bool, TableError<T::Error>> {
        // Bounded by the merged tables' entries: every turn consumes one.
        loop {
            let Some(index) = self.merge.next(storage)? else {
                self.current = None;
                return Ok(false);
            };
            let Some(entry) = self.merge.entry(index) else {
                continue;
            };
            let stripe = stripe(&self.snapshots, entry.sequence);
            let same_key = self.any && entry.key == self.last.as_slice();
            if same_key && stripe == self.last_stripe {
                continue; // hidden by a newer version from every reader
            }
            if !same_key {
                self.last.clear();
                // Fits: keys are at most KEY_LEN_MAX long.
                let _ = self.last.extend_from_slice(entry.key);
                self.any = true;
            }
            self.last_stripe = stripe;
            if entry.kind == Kind::Delete && self.drop_tombstones && stripe == 0 {
                continue; // older than every snapshot, and nothing older below it
            }
            self.current = Some(index);
            return Ok(true);
        }
    }

    fn current(&self) -> Option<Entry<'_>> {
        self.merge.entry(self.current?)
    }
}

/// Where new tables go: the table storage, its space and the live tables (new ones pushed at
/// the end), the writer's buffers.
struct Output<'o, T, const TABLES: usize> {
    storage: &'o mut T,
    space: &'o mut Space<TABLES>,
    tables: &'o mut Vec<Live, TABLES>,
    work: Work<'o>,
    hashes: &'o mut [u64],
    config: &'o Config,
    erase_size: u64,
}

impl<T: Storage, const TABLES: usize> Output<'_, T, TABLES> {
    /// Writes `input` (not yet advanced) as tables of `level`, each in a fresh run; their
    /// bytes. On `Err` the runs of the tables written so far stay in `tables` (the caller
    /// rolls back).
    fn write<LE>(
        &mut self,
        input: &mut dyn Source<T>,
        level: u8,
    ) -> Result<u64, FlushError<LE, T::Error>> {
        let mut more = input.advance(self.storage).map_err(FlushError::Table)?;
        let config = self.config;
        let block = config.block_size.max(1) as u64;
        let padding = (4 * config.table_data_max() / block + 4)
            * u64::from(self.storage.geometry().write_size);
        let run_bytes = config.table_data_max()
            + padding
            + (config.block_size + config.index_len() + self.work.filter.len()) as u64
            + (4 * WRITE_SIZE_MAX + FOOTER_LEN) as u64;
        let blocks = u32::try_from(run_bytes.div_ceil(self.erase_size)).unwrap_or(u32::MAX);
        let mut written = 0;
        // Bounded: every turn writes at least one entry of the input.
        while more {
            if self.tables.is_full() {
                return Err(FlushError::NoSpace);
            }
            let run = self.space.allocate(blocks).map_err(|error| match error {
                SpaceError::NoSpace | SpaceError::TooManyRuns | SpaceError::Overlap => {
                    FlushError::NoSpace
                }
            })?;
            match self.write_one(input, run, level) {
                Ok((live, next)) => {
                    more = next;
                    written += live.meta.len;
                    // Fits: checked not full above.
                    let _ = self.tables.push(live);
                }
                Err(error) => {
                    let _ = self.space.release(run);
                    return Err(FlushError::Table(error));
                }
            }
        }
        Ok(written)
    }

    /// Writes one table into `run` from the input's current entry, up to the table size (at
    /// a key boundary); the table and whether the input has more.
    fn write_one(
        &mut self,
        input: &mut dyn Source<T>,
        run: Run,
        level: u8,
    ) -> Result<(Live, bool), TableError<T::Error>> {
        let start = u64::from(run.first) * self.erase_size;
        let capacity = u64::from(run.count) * self.erase_size;
        self.storage
            .erase(start, capacity)
            .map_err(TableError::Storage)?;
        let write_size = self.storage.geometry().write_size;
        let buffers = WriterBuffers {
            block: &mut *self.work.block,
            index: &mut *self.work.index,
            hashes: &mut *self.hashes,
            filter: &mut *self.work.filter,
        };
        let mut writer = TableWriter::new(
            (start, capacity),
            write_size,
            buffers,
            self.config.bits_per_key,
        );
        let mut last: Vec<u8, KEY_LEN_MAX> = Vec::new();
        let mut more = true;
        // Bounded by the input's entries.
        while let Some(entry) = input.current() {
            let new_key = writer.entries() == 0 || entry.key != last.as_slice();
            let full = writer.written() >= self.config.table_size || writer.keys_full();
            if new_key && writer.entries() > 0 && full {
                break;
            }
            writer.add(self.storage, &entry)?;
            if new_key {
                last.clear();
                let _ = last.extend_from_slice(entry.key);
            }
            if !input.advance(self.storage)? {
                more = false;
                break;
            }
        }
        let info = writer.finish(self.storage)?;
        let keep = u32::try_from(info.len.div_ceil(self.erase_size)).unwrap_or(run.count);
        let run = self
            .space
            .shrink(run, keep)
            .map_err(|_| TableError::NoSpace)?;
        let table = Table::open(self.storage, start, info.len)?;
        let meta = TableMeta {
            first_block: run.first,
            blocks: run.count,
            len: info.len,
            level,
            entries: info.entries,
            sequences: info.sequences,
            smallest: info.smallest,
            largest: info.largest,
        };
        Ok((Live { meta, table }, more))
    }
}

/// What a compaction merges: level-0 tables (or one table of a level) and the tables of the
/// next level that overlap them.
struct Plan<const TABLES: usize> {
    upper: Vec<usize, MERGE_WAYS_MAX>,
    lower: Vec<usize, TABLES>,
    level: u8,
}

impl<L, T, B, H, const TABLES: usize> Db<L, T, B, H, TABLES>
where
    L: Storage,
    T: Storage,
    B: AsMut<[u8]> + AsRef<[u8]>,
    H: AsMut<[u64]> + AsRef<[u64]>,
{
    /// Writes `batch`: appends its record to the log (durable at the next [`Db::commit`]) and
    /// inserts it into the memtable, flushing first when the memtable or the log is full.
    /// Returns the first operation's sequence number. On `Err` the batch was not written.
    pub fn write<BB: AsMut<[u8]> + AsRef<[u8]>>(
        &mut self,
        batch: &Batch<BB>,
    ) -> Result<u64, WriteError<L::Error, T::Error>> {
        if self.poisoned {
            return Err(WriteError::Poisoned);
        }
        if batch.is_empty() {
            return Err(WriteError::Empty);
        }
        let (first, count) = (self.next_sequence, batch.count());
        let last = first
            .checked_add(count - 1)
            .filter(|&last| last <= SEQUENCE_MAX)
            .ok_or(WriteError::SequencesExhausted)?;
        let (mut needed, mut user_bytes) = (0usize, 0u64);
        for (_, key, value) in batch.iter() {
            if key.len() > self.config.key_len_max || value.len() > self.config.value_len_max {
                return Err(WriteError::TooLarge);
            }
            needed = needed.saturating_add(memtable::node_len_max(key.len(), value.len()));
            user_bytes += (key.len() + value.len()) as u64;
        }
        let record_len = batch::record_len(first, count, batch.operations());
        let limit = self.memtable.capacity() - self.config.flush_margin;
        if record_len > self.config.log_payload_max(TABLES) as usize
            || HEAD_BOUND.saturating_add(needed) > limit
        {
            return Err(WriteError::TooLarge);
        }
        if self.memtable_bound + needed > limit || self.log.free_segments() <= 1 {
            self.flush_tables().map_err(WriteError::Flush)?;
            // A compaction that fails leaves the tables as they were; the write goes on.
            let _ = self.compact();
            if self.poisoned {
                return Err(WriteError::Poisoned);
            }
        }
        let operations = batch.operations();
        let appended = self.log.append(KIND_BATCH, |area| {
            batch::encode_record(first, count, operations, area).ok_or(EmitError::BufferTooSmall)
        });
        if let Err(error) = appended {
            if self.log.is_poisoned() {
                self.poisoned = true;
            }
            return Err(WriteError::Log(error));
        }
        self.staged = true;
        for (sequence, (kind, key, value)) in (first..).zip(batch.iter()) {
            let entry = Entry {
                key,
                sequence,
                kind,
                value,
            };
            if self.memtable.insert(&entry).is_err() {
                // Unreachable: the bound was checked. The log holds the whole batch, the
                // memtable part of it: stop accepting writes rather than serve a partial one.
                self.poisoned = true;
                return Err(WriteError::Poisoned);
            }
        }
        self.memtable_bound += needed;
        self.next_sequence = last + 1;
        self.stats.user_bytes += user_bytes;
        self.stats.log_bytes += record_len as u64;
        Ok(first)
    }

    /// Writes `value` under `key` (a batch of one put). See [`Db::write`].
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, WriteError<L::Error, T::Error>> {
        self.write_one(Kind::Put, key, value)
    }

    /// Deletes `key` (a batch of one delete). See [`Db::write`].
    pub fn delete(&mut self, key: &[u8]) -> Result<u64, WriteError<L::Error, T::Error>> {
        self.write_one(Kind::Delete, key, &[])
    }

    /// A batch of one operation, built in a stack buffer of [`ONE_LEN_MAX`] bytes: larger
    /// puts go through [`Db::write`] with a batch of their own.
    fn write_one(
        &mut self,
        kind: Kind,
        key: &[u8],
        value: &[u8],
    ) -> Result<u64, WriteError<L::Error, T::Error>> {
        let mut buffer = [0u8; ONE_LEN_MAX];
        let mut batch = Batch::new(&mut buffer[..]);
        let added = match kind {
            Kind::Put => batch.put(key, value),
            Kind::Delete => batch.delete(key),
        };
        added.map_err(|_| WriteError::TooLarge)?;
        self.write(&batch)
    }

    /// Makes every write so far durable (one sync of the log for all of them). On `Err` the
    /// engine is poisoned and nothing since the previous commit may be acknowledged.
    pub fn commit(&mut self) -> Result<(), CommitError<L::Error>> {
        if self.poisoned {
            return Err(CommitError::Poisoned);
        }
        if self.staged {
            if let Err(error) = self.log.sync() {
                self.poisoned = true;
                return Err(CommitError::Sync(error));
            }
            self.staged = false;
        }
        self.committed = self.next_sequence - 1;
        Ok(())
    }

    /// Flushes the memtable to level-0 tables (committing first), then compacts while a
    /// compaction is due. An `Err` from the compaction comes after a flush that is done.
    pub fn flush(&mut self) -> Result<(), FlushError<L::Error, T::Error>> {
        self.flush_tables()?;
        self.compact()
    }

    /// Flushes the memtable to level-0 tables (committing first) without compacting: a
    /// caller that reports progress then calls [`Db::compact_once`] in a loop.
    pub fn flush_memtable(&mut self) -> Result<(), FlushError<L::Error, T::Error>> {
        self.flush_tables()
    }

    /// Writes the memtable as tables, records them in a CHECKPOINT and releases the log
    /// before it; see the [module docs](self).
    fn flush_tables(&mut self) -> Result<(), FlushError<L::Error, T::Error>> {
        if self.poisoned {
            return Err(FlushError::Poisoned);
        }
        self.commit().map_err(FlushError::Commit)?;
        let base = self.tables.len();
        if !self.memtable.is_empty() {
            let keys = self.hashes.as_ref().len();
            let mut output = Output {
                storage: &mut self.storage,
                space: &mut self.space,
                tables: &mut self.tables,
                work: carve(self.work.as_mut(), &self.config, keys),
                hashes: self.hashes.as_mut(),
                config: &self.config,
                erase_size: self.erase_size,
            };
            // Versions no reader can see (older ones of a key in the same snapshot stripe)
            // are dropped here already: a hot key's versions stay within one table.
            let mut memory = MemtableSource::new(&self.memtable);
            let mut sources: [&mut dyn Source<T>; 1] = [&mut memory];
            let mut source = Compacting {
                merge: Merge::new(&mut sources),
                current: None,
                last: Vec::new(),
                any: false,
                last_stripe: 0,
                snapshots: self.snapshots.clone(),
                drop_tombstones: false,
            };
            match output.write(&mut source, 0) {
                Ok(written) => self.stats.table_bytes += written,
                Err(error) => {
                    self.roll_back(base);
                    return Err(error);
                }
            }
            if let Err(error) = self.storage.sync() {
                self.poisoned = true;
                self.roll_back(base);
                return Err(FlushError::TableSync(error));
            }
        }
        let flushed = self.next_sequence - 1;
        let (next, tables) = (self.next_sequence, &self.tables);
        let mut len = 0;
        let appended = self.log.append(KIND_CHECKPOINT, |area| {
            len = encode_checkpoint(area, next, flushed, tables)?;
            Ok(len)
        });
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                self.poisoned |= self.log.is_poisoned();
                self.roll_back(base);
                return Err(FlushError::Log(error));
            }
        };
        self.stats.log_bytes += len as u64;
        self.sync_and_release(Some(appended))?;
        self.memtable.clear();
        self.memtable_bound = HEAD_BOUND;
        self.flushed_through = flushed;
        self.stats.flushes += 1;
        Ok(())
    }

    /// Syncs the log (a manifest record); then releases the log before `checkpoint`.
    fn sync_and_release(
        &mut self,
        checkpoint: Option<Appended>,
    ) -> Result<(), FlushError<L::Error, T::Error>> {
        let synced = self.log.sync().and_then(|()| match checkpoint {
            Some(frame) => self.log.release_checkpointed(frame).map(|_| ()),
            None => Ok(()),
        });
        synced.map_err(|error| {
            self.poisoned = true;
            FlushError::Commit(CommitError::Sync(error))
        })
    }

    /// Forgets the tables from `base` on (never recorded) and frees their runs.
    fn roll_back(&mut self, base: usize) {
        for live in &self.tables[base.min(self.tables.len())..] {
            let _ = self.space.release(live.meta.run());
        }
        self.tables.truncate(base);
    }
}

impl<L, T, B, H, const TABLES: usize> Db<L, T, B, H, TABLES>
where
    L: Storage,
    T: Storage,
    B: AsMut<[u8]> + AsRef<[u8]>,
    H: AsMut<[u64]> + AsRef<[u64]>,
{
    /// Compacts until no compaction is due (see the [module docs](self)). On `Err` the
    /// compaction under way changed nothing; earlier ones stay done.
    pub fn compact(&mut self) -> Result<(), FlushError<L::Error, T::Error>> {
        // Bounded: every step moves data down a level; a level-0 backlog drains by at most
        // `MERGE_WAYS_MAX - 1` tables a step.
        for _ in 0..TABLES * LEVELS + 1 {
            if !self.compact_once()? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Does one compaction step if one is due; whether one was done. [`Db::compact`] is this
    /// until it returns `false`: a caller that reports progress between steps calls it in a
    /// loop instead (and may read [`Db::stats`] in between). On `Err` the step changed nothing.
    pub fn compact_once(&mut self) -> Result<bool, FlushError<L::Error, T::Error>> {
        if self.poisoned {
            return Err(FlushError::Poisoned);
        }
        let Some(plan) = self.pick() else {
            return Ok(false);
        };
        if self.log.free_segments() <= 1 {
            // Room for the EDIT: a checkpoint releases the log behind it.
            self.flush_tables()?;
        }
        self.compact_step(&plan)?;
        Ok(true)
    }

    /// Whether a compaction is due, and of what.
    fn pick(&self) -> Option<Plan<TABLES>> {
        let mut level0: Vec<usize, TABLES> = Vec::new();
        for (index, live) in self.tables.iter().enumerate() {
            if live.meta.level == 0 {
                let _ = level0.push(index);
            }
        }
        if level0.len() >= self.config.l0_trigger {
            level0.sort_unstable_by_key(|&index| self.tables[index].meta.sequences.0);
            let mut upper = Vec::new();
            for &index in level0.iter().take(self.config.ways() - 1) {
                let _ = upper.push(index);
            }
            return Some(self.plan(upper, 1));
        }
        for level in 1..LEVELS - 1 {
            let bytes: u64 = self
                .tables
                .iter()
                .filter(|live| usize::from(live.meta.level) == level)
                .map(|live| live.meta.len)
                .sum();
            if bytes > self.config.level_limit(level) {
                let oldest = self
                    .tables
                    .iter()
                    .enumerate()
                    .filter(|(_, live)| usize::from(live.meta.level) == level)
                    .min_by_key(|(_, live)| live.meta.sequences.1)
                    .map(|(index, _)| index)?;
                let mut upper = Vec::new();
                let _ = upper.push(oldest);
                return Some(self.plan(upper, level as u8 + 1));
            }
        }
        None
    }

    /// The tables of `level` that overlap the `upper` tables, in key order.
    fn plan(&self, upper: Vec<usize, MERGE_WAYS_MAX>, level: u8) -> Plan<TABLES> {
        let (low, high) = self.range(&upper, &[]);
        let mut lower: Vec<usize, TABLES> = Vec::new();
        for (index, live) in self.tables.iter().enumerate() {
            if live.meta.level == level && live.meta.overlaps((low, high)) {
                let _ = lower.push(index);
            }
        }
        lower.sort_unstable_by(|&a, &b| {
            self.tables[a]
                .meta
                .smallest
                .cmp(&self.tables[b].meta.smallest)
        });
        Plan {
            upper,
            lower,
            level,
        }
    }

    /// The smallest and largest keys of the tables at `first` and `second`.
    fn range(&self, first: &[usize], second: &[usize]) -> (&[u8], &[u8]) {
        let mut metas = first
            .iter()
            .chain(second)
            .map(|&index| &self.tables[index].meta);
        let Some(head) = metas.next() else {
            return (&[], &[]);
        };
        metas.fold(
            (head.smallest.as_slice(), head.largest.as_slice()),
            |(low, high), meta| (low.min(&meta.smallest), high.max(&meta.largest)),
        )
    }

    /// Runs one compaction: new tables, the table storage synced, one EDIT synced, then the
    /// old runs freed.
    fn compact_step(&mut self, plan: &Plan<TABLES>) -> Result<(), FlushError<L::Error, T::Error>> {
        if plan.lower.is_empty() && plan.level > 1 {
            return self.move_down(plan.upper[0], plan.level);
        }
        let range = self.range(&plan.upper, &plan.lower);
        let drop_tombstones = !self
            .tables
            .iter()
            .any(|live| live.meta.level > plan.level && live.meta.overlaps(range));
        let mut removed: Vec<u32, TABLES> = Vec::new();
        for &index in plan.upper.iter().chain(&plan.lower) {
            let _ = removed.push(self.tables[index].meta.first_block);
        }
        let base = self.tables.len();
        let written = self.merge_into_tables(plan, drop_tombstones);
        match written {
            Ok(written) => self.stats.table_bytes += written,
            Err(error) => {
                self.roll_back(base);
                return Err(error);
            }
        }
        if let Err(error) = self.storage.sync() {
            self.poisoned = true;
            self.roll_back(base);
            return Err(FlushError::TableSync(error));
        }
        self.append_edit(&removed, base)?;
        self.sync_and_release(None)?;
        for first_block in &removed {
            if let Some(at) = self
                .tables
                .iter()
                .position(|live| live.meta.first_block == *first_block)
            {
                let live = self.tables.swap_remove(at);
                let _ = self.space.release(live.meta.run());
            }
        }
        self.stats.compactions += 1;
        Ok(())
    }

    /// Appends the EDIT that removes `removed` and adds the tables from `base` on; on `Err`
    /// rolls the new tables back.
    fn append_edit(
        &mut self,
        removed: &[u32],
        base: usize,
    ) -> Result<(), FlushError<L::Error, T::Error>> {
        let added = &self.tables[base..];
        let mut len = 0;
        let appended = self.log.append(KIND_EDIT, |area| {
            len = encode_edit(area, removed, added)?;
            Ok(len)
        });
        if let Err(error) = appended {
            self.poisoned |= self.log.is_poisoned();
            self.roll_back(base);
            return Err(FlushError::Log(error));
        }
        self.stats.log_bytes += len as u64;
        Ok(())
    }

    /// Merges the plan's tables into new tables of the plan's level (pushed at the end of
    /// the live tables); their bytes.
    fn merge_into_tables(
        &mut self,
        plan: &Plan<TABLES>,
        drop_tombstones: bool,
    ) -> Result<u64, FlushError<L::Error, T::Error>> {
        let keys = self.hashes.as_ref().len();
        let work = carve(self.work.as_mut(), &self.config, keys);
        let Work {
            block,
            index,
            filter,
            readers,
        } = work;
        let mut readers = reader_buffers(readers, &self.config, keys);
        let mut uppers: Vec<LevelSource<'_, 1>, MERGE_WAYS_MAX> = Vec::new();
        for &at in &plan.upper {
            let buffers = readers
                .next()
                .ok_or(FlushError::Table(TableError::NoSpace))?;
            let mut one = Vec::new();
            let _ = one.push(self.tables[at].table);
            let _ = uppers.push(LevelSource::new(one, buffers));
        }
        let mut lower_tables: Vec<Table, TABLES> = Vec::new();
        for &at in &plan.lower {
            let _ = lower_tables.push(self.tables[at].table);
        }
        let buffers = readers
            .next()
            .ok_or(FlushError::Table(TableError::NoSpace))?;
        let mut lower = LevelSource::new(lower_tables, buffers);
        let mut sources: Vec<&mut dyn Source<T>, MERGE_WAYS_MAX> = Vec::new();
        for upper in uppers.iter_mut() {
            let _ = sources.push(upper);
        }
        let _ = sources.push(&mut lower);
        let mut input = Compacting {
            merge: Merge::new(&mut sources),
            current: None,
            last: Vec::new(),
            any: false,
            last_stripe: 0,
            snapshots: self.snapshots.clone(),
            drop_tombstones,
        };
        let mut output = Output {
            storage: &mut self.storage,
            space: &mut self.space,
            tables: &mut self.tables,
            work: Work {
                block,
                index,
                filter,
                readers: &mut [],
            },
            hashes: self.hashes.as_mut(),
            config: &self.config,
            erase_size: self.erase_size,
        };
        output.write(&mut input, plan.level)
    }

    /// Moves the table at `index` down to `level` (nothing there overlaps it): one EDIT.
    fn move_down(&mut self, index: usize, level: u8) -> Result<(), FlushError<L::Error, T::Error>> {
        let mut moved: Vec<Live, 1> = Vec::new();
        let mut live = self.tables[index].clone();
        live.meta.level = level;
        let _ = moved.push(live);
        let removed = [self.tables[index].meta.first_block];
        let mut len = 0;
        let appended = self.log.append(KIND_EDIT, |area| {
            len = encode_edit(area, &removed, &moved)?;
            Ok(len)
        });
        if let Err(error) = appended {
            self.poisoned |= self.log.is_poisoned();
            return Err(FlushError::Log(error));
        }
        self.stats.log_bytes += len as u64;
        self.sync_and_release(None)?;
        self.tables[index].meta.level = level;
        self.stats.compactions += 1;
        Ok(())
    }

    /// The newest value of `key` into `out`: its length, or `None` when the key is absent or
    /// deleted. Sees every write, committed or not.
    pub fn get(
        &mut self,
        key: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>, ReadError<T::Error>> {
        self.get_at(key, SEQUENCE_MAX, out)
    }

    /// The value of `key` as of sequence number `snapshot` (see [`Db::snapshot`]) into `out`.
    pub fn get_at(
        &mut self,
        key: &[u8],
        snapshot: u64,
        out: &mut [u8],
    ) -> Result<Option<usize>, ReadError<T::Error>> {
        if let Some(entry) = self.memtable.get(key, snapshot) {
            return copy_value(entry.kind, entry.value, out);
        }
        let keys = self.hashes.as_ref().len();
        let work = carve(self.work.as_mut(), &self.config, keys);
        let Some(mut buffers) = reader_buffers(work.readers, &self.config, keys).next() else {
            return Err(ReadError::Table(TableError::NoSpace));
        };
        // The newest version any table holds: sequence number, kind, length.
        let mut best: Option<(u64, Kind, usize)> = None;
        for live in &self.tables {
            let meta = &live.meta;
            let beaten = best.is_some_and(|(sequence, _, _)| sequence >= meta.sequences.1);
            if !meta.covers(key) || meta.sequences.0 > snapshot || beaten {
                continue;
            }
            let found = live
                .table
                .get(&mut self.storage, key, snapshot, &mut buffers)
                .map_err(ReadError::Table)?;
            let Some(found) = found else {
                continue;
            };
            if best.is_some_and(|(sequence, _, _)| sequence >= found.sequence) {
                continue;
            }
            best = Some((found.sequence, found.kind, found.value_len));
            if found.kind == Kind::Put && found.value_len <= out.len() {
                let value = &buffers.data[found.value_at..found.value_at + found.value_len];
                out[..found.value_len].copy_from_slice(value);
            }
        }
        match best {
            None | Some((_, Kind::Delete, _)) => Ok(None),
            Some((_, Kind::Put, len)) if len > out.len() => {
                Err(ReadError::BufferTooSmall { needed: len })
            }
            Some((_, Kind::Put, len)) => Ok(Some(len)),
        }
    }
}

impl<L, T, B, H, const TABLES: usize> Db<L, T, B, H, TABLES>
where
    L: Storage,
    T: Storage,
    B: AsMut<[u8]> + AsRef<[u8]>,
    H: AsMut<[u64]> + AsRef<[u64]>,
{
    /// Visits the newest version visible at `snapshot` of every key from `from` (inclusive)
    /// to `to` (exclusive; `None`: to the end) in key order, tombstones skipped, until `visit`
    /// returns `false`; the number of keys visited. Memory: one reader per level-0 table and
    /// per deeper level in the range; more level-0 tables than [`Config::work_len`] counts
    /// readers for (a compaction backlog) is refused with `TableError::NoSpace`.
    pub fn scan(
        &mut self,
        from: &[u8],
        to: Option<&[u8]>,
        snapshot: u64,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<usize, ReadError<T::Error>> {
        let keys = self.hashes.as_ref().len();
        let work = carve(self.work.as_mut(), &self.config, keys);
        let mut readers = reader_buffers(work.readers, &self.config, keys);
        let no_space = || ReadError::Table(TableError::NoSpace);
        let start = &from[..from.len().min(KEY_LEN_MAX)];
        let in_range = |meta: &TableMeta| {
            meta.largest.as_slice() >= from && to.is_none_or(|to| meta.smallest.as_slice() < to)
        };
        let mut uppers: Vec<LevelSource<'_, 1>, SCAN_SOURCES_MAX> = Vec::new();
        let mut levels: Vec<LevelSource<'_, TABLES>, LEVELS> = Vec::new();
        for level in 0..LEVELS as u8 {
            let mut tables: Vec<(&[u8], Table), TABLES> = Vec::new();
            for live in self.tables.iter().filter(|live| live.meta.level == level) {
                if in_range(&live.meta) && live.meta.sequences.0 <= snapshot {
                    let _ = tables.push((&live.meta.smallest, live.table));
                }
            }
            if level == 0 {
                for (_, table) in tables {
                    let mut one = Vec::new();
                    let _ = one.push(table);
                    let mut source = LevelSource::new(one, readers.next().ok_or_else(no_space)?);
                    source.from = Some(start);
                    uppers.push(source).map_err(|_| no_space())?;
                }
            } else if !tables.is_empty() {
                tables.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let tables = tables.iter().map(|(_, table)| *table).collect();
                let mut source = LevelSource::new(tables, readers.next().ok_or_else(no_space)?);
                source.from = Some(start);
                let _ = levels.push(source);
            }
        }
        let mut memory = MemtableSource::from(&self.memtable, start, SEQUENCE_MAX);
        let mut sources: Vec<&mut dyn Source<T>, { SCAN_SOURCES_MAX + LEVELS + 1 }> = Vec::new();
        let _ = sources.push(&mut memory);
        for source in uppers.iter_mut() {
            let _ = sources.push(source);
        }
        for source in levels.iter_mut() {
            let _ = sources.push(source);
        }
        let mut merge = Merge::new(&mut sources);
        let mut last: Vec<u8, KEY_LEN_MAX> = Vec::new();
        let (mut any, mut visited) = (false, 0);
        // Bounded by the entries of the memtable and the tables.
        while let Some(index) = merge.next(&mut self.storage).map_err(ReadError::Table)? {
            let Some(entry) = merge.entry(index) else {
                continue;
            };
            if entry.key < from {
                continue; // behind a `from` longer than any key, cut to seek
            }
            if to.is_some_and(|to| entry.key >= to) {
                break;
            }
            if entry.sequence > snapshot || (any && entry.key == last.as_slice()) {
                continue;
            }
            last.clear();
            let _ = last.extend_from_slice(entry.key);
            any = true;
            if entry.kind == Kind::Delete {
                continue;
            }
            visited += 1;
            if !visit(entry.key, entry.value) {
                break;
            }
        }
        Ok(visited)
    }
}

/// The most level-0 tables a scan reads.
const SCAN_SOURCES_MAX: usize = 16;

/// A memtable version's value into `out`.
fn copy_value<E>(kind: Kind, value: &[u8], out: &mut [u8]) -> Result<Option<usize>, ReadError<E>> {
    match kind {
        Kind::Delete => Ok(None),
        Kind::Put => {
            let target = out
                .get_mut(..value.len())
                .ok_or(ReadError::BufferTooSmall {
                    needed: value.len(),
                })?;
            target.copy_from_slice(value);
            Ok(Some(value.len()))
        }
    }
}

#[cfg(test)]
mod tests;
