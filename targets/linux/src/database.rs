//! `bedrock db`: the embedded database (core's LSM engine, [`Db`]) in a data directory.
//!
//! # Layout of a database directory
//!
//! - `wal/` — the log storage (write-ahead log and manifest): a **sparse** [`FileStorage`]
//!   (`wal/sparse.bedrock`: creating it writes nothing), [`WAL_CAPACITY`] = 128 MiB by default,
//!   segments (erase blocks) of [`WAL_SEGMENT`] = 4 MiB, write size 8;
//! - `tables/` — the table storage: a **sparse** [`FileStorage`] (`tables/sparse.bedrock`,
//!   erased value 0x00, erase = punching a hole), [`TABLE_CAPACITY`] = 16 GiB by default (a
//!   hole costs nothing until written), erase blocks of [`TABLE_ERASE`] = 256 KiB, write size 8;
//! - `STATS` — totals of what the engine wrote, summed over the commands that finished
//!   (the engine counts since its open; a killed command's share is lost): the write
//!   amplification `db stats` prints.
//!
//! Each store has its own `LOCK`: a second process on the same database is refused.
//! Capacities are chosen when the database is created (`--wal-capacity`, `--table-capacity`)
//! and adopted afterwards.
//!
//! # Engine configuration
//!
//! Keys of 1 to [`KEY_MAX`] = 256 bytes, values of at most [`VALUE_MAX`] = 4096 bytes; tables of
//! 8 MiB (at most [`TABLES`] = 1024 live: 8 GiB of tables), data blocks of 16 KiB, 10 bloom bits
//! per key, level 0 compacted into level 1 at 4 tables, level 1 of 64 MiB, each level ten times
//! the one above.
//!
//! # Memory
//!
//! About 50 MiB: the memtable's arena ([`MEMTABLE_BYTES`] = 32 MiB; flushed when full), the
//! work buffer for table writers and readers (about 10 MiB: one writer and nine readers of
//! indexes and filters), the key hashes of one table (2 MiB) and the log's frame buffer
//! (5 MiB). The engine's table metadata (about 1.2 MiB) lives on the stack of a thread with a
//! 64 MiB stack.
//!
//! # Output formats
//!
//! Keys and values are bytes. Printed, they are escaped so that each record is one line:
//! printable ASCII stays as it is except `\`, which becomes `\\`; tab, newline and carriage
//! return become `\t`, `\n`, `\r`; every other byte becomes `\xHH`. `db get` prints the
//! escaped value and a newline (`--raw`: the bytes alone); `db scan` prints `KEY<TAB>VALUE`
//! per key, both escaped, in key order.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bedrock::db::batch::Batch;
use bedrock::db::block::SEQUENCE_MAX;
use bedrock::db::engine::{
    Buffers, CommitError, FlushError, OpenError, ReadError, Replay, Stats, TableMeta, WriteError,
    LEVELS,
};
use bedrock::db::table::{ReaderBuffers, Table, TableError};
use bedrock::db::{Config, Db};
use bedrock::log::{self, Policy, Recovery};
use bedrock::storage::Storage;
use bedrock_std::{FileError, FileMode, FileOptions, FileStorage, DATA_FILE_NAME};

use crate::error::{fail, Error};
use crate::output::stdout_error;
use crate::store;

/// Most live tables.
pub const TABLES: usize = 1024;
/// The longest key.
pub const KEY_MAX: usize = 256;
/// The longest value.
pub const VALUE_MAX: usize = 4096;
/// The memtable's arena.
pub const MEMTABLE_BYTES: usize = 32 << 20;
/// Default capacity of the log storage.
pub const WAL_CAPACITY: u64 = 128 << 20;
/// The log's segment (and erase block) size.
pub const WAL_SEGMENT: u32 = 4 << 20;
/// Default capacity of the (sparse) table storage.
pub const TABLE_CAPACITY: u64 = 16 << 30;
/// The table storage's erase block: tables take runs of these.
pub const TABLE_ERASE: u32 = 256 << 10;
/// Write size of both storages.
const WRITE_SIZE: u32 = 8;
/// Most keys per table (the hashes buffer); a table of small entries ends there.
const KEYS_PER_TABLE: usize = 256 << 10;
/// Largest log record (a batch of `db load`, a checkpoint of every table).
const LOG_PAYLOAD: u32 = 1 << 20;
/// The log's buffer beyond one frame: recovery reads this much at a time.
const LOG_READ: usize = 4 << 20;
/// Stack of the thread the database runs on (the engine keeps its table metadata inline).
const STACK_BYTES: usize = 64 << 20;
/// Where the totals of what the engine wrote are kept.
const STATS_FILE: &str = "STATS";

/// The database's type.
type FileDb = Db<FileStorage, FileStorage, Vec<u8>, Vec<u64>, TABLES>;

/// The engine's configuration (see the module docs).
pub fn config() -> Config {
    Config {
        log: log::Config {
            segment_size: WAL_SEGMENT,
            payload_max: LOG_PAYLOAD,
            policy: Policy::StopAtCorruption,
        },
        key_len_max: KEY_MAX,
        value_len_max: VALUE_MAX,
        flush_margin: 0,
        table_size: 8 << 20,
        block_size: 16 << 10,
        bits_per_key: 10,
        l0_trigger: 4,
        level_base: 64 << 20,
        level_ratio: 10,
        seed: 0x5eed,
    }
}

/// Capacities asked for on the command line (used when the database is created).
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacities {
    /// Bytes of `wal/`.
    pub wal: Option<u64>,
    /// Bytes of `tables/`.
    pub tables: Option<u64>,
}

/// Whether `dir` holds a database (its two stores).
pub fn is_database(dir: &Path) -> bool {
    dir.join("wal")
        .join(FileMode::Sparse.data_file_name())
        .is_file()
        && dir
            .join("tables")
            .join(FileMode::Sparse.data_file_name())
            .is_file()
}

/// The directory of an existing database: never creates one.
fn existing(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        return Err(fail(format!(
            "no database in {}: the directory does not exist (`bedrock db put` creates it)",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    if !is_database(dir) {
        return Err(fail(format!(
            "no database in {}: it has no wal/{} and tables/{}",
            dir.display(),
            FileMode::Sparse.data_file_name(),
            FileMode::Sparse.data_file_name()
        )));
    }
    Ok(())
}

fn store_options(
    dir: &Path,
    file: &str,
    requested: Option<u64>,
    default: u64,
    erase: u32,
) -> FileOptions {
    let capacity = match (requested, dir.join(file).exists()) {
        (Some(capacity), _) => Some(capacity),
        (None, true) => None,
        (None, false) => Some(default),
    };
    FileOptions {
        capacity,
        read_size: 1,
        write_size: WRITE_SIZE,
        erase_size: erase,
    }
}

fn file_error(error: FileError) -> Error {
    fail(error.to_string())
}

/// Opens (creating if needed) the database in `dir`, warning on stderr about what recovery
/// found; a spinner on stderr while a long recovery runs.
fn open(dir: &Path, capacities: Capacities) -> Result<FileDb, Error> {
    if dir.exists() && !dir.is_dir() {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    if dir.join(DATA_FILE_NAME).exists() {
        return Err(fail(format!(
            "{} holds a counter or log store ({DATA_FILE_NAME}), not a database",
            dir.display()
        )));
    }
    let wal_dir = dir.join("wal");
    let tables_dir = dir.join("tables");
    let wal_options = store_options(
        &wal_dir,
        FileMode::Sparse.data_file_name(),
        capacities.wal,
        WAL_CAPACITY,
        WAL_SEGMENT,
    );
    let table_options = store_options(
        &tables_dir,
        FileMode::Sparse.data_file_name(),
        capacities.tables,
        TABLE_CAPACITY,
        TABLE_ERASE,
    );
    let wal =
        FileStorage::open_mode(&wal_dir, wal_options, FileMode::Sparse).map_err(file_error)?;
    let tables =
        FileStorage::open_mode(&tables_dir, table_options, FileMode::Sparse).map_err(file_error)?;
    let config = config();
    let buffers = Buffers {
        log: vec![0u8; LOG_READ + config.log_payload_max(TABLES) as usize + 4096],
        memtable: vec![0u8; MEMTABLE_BYTES],
        work: vec![0u8; config.work_len(KEYS_PER_TABLE)],
        hashes: vec![0u64; KEYS_PER_TABLE],
    };
    let spinner = Spinner::start("recovering the database: replaying the write-ahead log");
    let opened = Db::open(wal, tables, buffers, config);
    spinner.stop();
    let (db, recovery) = opened.map_err(|error| open_error(dir, error))?;
    for warning in warnings(&recovery) {
        eprintln!("{warning}");
    }
    Ok(db)
}

fn warnings(recovery: &Recovery) -> Vec<String> {
    store::warnings(recovery)
        .into_iter()
        .map(|line| {
            line.replace(
                "the counter was rolled back",
                "the database was rolled back",
            )
        })
        .collect()
}

fn open_error(dir: &Path, error: OpenError<FileError, FileError>) -> Error {
    let dir = dir.display();
    match error {
        OpenError::Config(error) => fail(format!(
            "could not open the database in {dir}: its configuration does not fit ({error:?})"
        )),
        OpenError::Log(log::OpenError::Visitor(Replay::MemtableFull { sequence })) => {
            fail(format!(
            "could not open the database in {dir}: the write-ahead log's tail (record {sequence}) \
             does not fit the {} MiB memtable",
            MEMTABLE_BYTES >> 20
        ))
        }
        OpenError::Log(log::OpenError::Visitor(Replay::Record(error))) => fail(format!(
            "could not open the database in {dir}: its write-ahead log holds a record the \
             engine refuses: {error}"
        )),
        OpenError::Log(log::OpenError::Storage(error)) => fail(format!(
            "could not open the database in {dir}: its write-ahead log: {error}"
        )),
        OpenError::Log(log::OpenError::Config(error)) => fail(format!(
            "could not open the database in {dir}: its write-ahead log: {error}"
        )),
        OpenError::Log(log::OpenError::LayoutMismatch {
            segment_size,
            write_size,
            payload_max,
        }) => fail(format!(
            "could not open the database in {dir}: its write-ahead log was written with \
             segment size {segment_size}, write size {write_size} and payload limit \
             {payload_max}, not this tool's layout"
        )),
        OpenError::Log(error) => fail(format!(
            "could not open the database in {dir}: its write-ahead log: {error:?}"
        )),
        OpenError::Manifest { first_block } => fail(format!(
            "could not open the database in {dir}: the manifest is damaged (the run of the \
             table at block {first_block} overlaps another or reaches past the table storage)"
        )),
        OpenError::Table { first_block, error } => fail(format!(
            "could not open the database in {dir}: the table at block {first_block} {}",
            table_error_text(&error)
        )),
        error => fail(format!("could not open the database in {dir}: {error:?}")),
    }
}

/// "is corrupt: data block at offset O (byte B of the table)" or the storage error.
fn table_error_text(error: &TableError<FileError>) -> String {
    match error {
        TableError::Corrupt { offset, what } => {
            format!("is corrupt: {what} at offset {offset} of the table storage")
        }
        TableError::Storage(error) => format!("could not be read: {error}"),
        TableError::NoSpace => "does not fit the buffers".to_string(),
        error => format!("could not be read: {error:?}"),
    }
}

/// Names the table holding storage offset `offset`, if one does.
fn table_at(db: &FileDb, offset: u64) -> Option<&TableMeta> {
    let erase = u64::from(TABLE_ERASE);
    db.tables().find(|meta| {
        let start = u64::from(meta.first_block) * erase;
        let end = start + u64::from(meta.blocks) * erase;
        (start..end).contains(&offset)
    })
}

fn read_error(db: &FileDb, dir: &Path, error: ReadError<FileError>) -> Error {
    match error {
        ReadError::Table(TableError::Corrupt { offset, what }) => {
            let table = match table_at(db, offset) {
                Some(meta) => format!(
                    "table {} (level {}, {} bytes at offset {})",
                    meta.first_block,
                    meta.level,
                    meta.len,
                    u64::from(meta.first_block) * u64::from(TABLE_ERASE)
                ),
                None => "a table".to_string(),
            };
            let start = table_at(db, offset)
                .map(|meta| offset - u64::from(meta.first_block) * u64::from(TABLE_ERASE))
                .unwrap_or(offset);
            fail(format!(
                "corrupt {table} in {}: damaged {what} at offset {offset} of the table storage \
                 (byte {start} of the table); no value was returned",
                dir.display()
            ))
        }
        ReadError::Table(error) => fail(format!(
            "could not read the database in {}: a table {}",
            dir.display(),
            table_error_text(&error)
        )),
        ReadError::BufferTooSmall { needed } => fail(format!(
            "a value of {needed} bytes is longer than the {VALUE_MAX} this tool reads"
        )),
        error => fail(format!("could not read the database: {error:?}")),
    }
}

fn write_error(dir: &Path, error: WriteError<FileError, FileError>) -> Error {
    let dir = dir.display();
    match error {
        WriteError::TooLarge => fail(format!(
            "the write is too large for the database in {dir} (keys at most {KEY_MAX} bytes, \
             values at most {VALUE_MAX})"
        )),
        WriteError::Flush(error) => flush_error_in(&dir.to_string(), error),
        WriteError::Log(error) => fail(format!(
            "could not write to the database in {dir}: its write-ahead log: {error}"
        )),
        error => fail(format!(
            "could not write to the database in {dir}: {error:?}"
        )),
    }
}

fn commit_error(dir: &Path, error: CommitError<FileError>) -> Error {
    match error {
        CommitError::Sync(error) => fail(format!(
            "could not commit to the database in {}: {error}",
            dir.display()
        )),
        error => fail(format!(
            "could not commit to the database in {}: {error:?}",
            dir.display()
        )),
    }
}

fn flush_error(dir: &Path, error: FlushError<FileError, FileError>) -> Error {
    flush_error_in(&dir.display().to_string(), error)
}

fn flush_error_in(dir: &str, error: FlushError<FileError, FileError>) -> Error {
    match error {
        FlushError::NoSpace => fail(format!(
            "the database in {dir} is full: the table storage has no free run for a new table, \
             or {TABLES} tables are live (recreate it with a larger --table-capacity)"
        )),
        FlushError::Table(error) => fail(format!(
            "could not flush or compact the database in {dir}: a table {}",
            table_error_text(&error)
        )),
        FlushError::TableSync(error) => fail(format!(
            "could not sync the table storage of the database in {dir}: {error}"
        )),
        FlushError::Commit(CommitError::Sync(error)) => fail(format!(
            "could not sync the write-ahead log of the database in {dir}: {error}"
        )),
        FlushError::Log(error) => fail(format!(
            "could not write the manifest of the database in {dir}: {error}"
        )),
        error => fail(format!(
            "could not flush or compact the database in {dir}: {error:?}"
        )),
    }
}

fn bytes(arg: &OsString) -> &[u8] {
    arg.as_bytes()
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(fail("the key is empty; keys are 1 to 256 bytes"));
    }
    if key.len() > KEY_MAX {
        return Err(fail(format!(
            "the key is {} bytes long; keys are at most {KEY_MAX} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > VALUE_MAX {
        return Err(fail(format!(
            "the value is {} bytes long; values are at most {VALUE_MAX} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Runs `work` on a thread with a large stack (the engine keeps its table metadata inline).
fn on_big_stack<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let handle = thread::Builder::new()
        .name("db".to_string())
        .stack_size(STACK_BYTES)
        .spawn(work)
        .map_err(|error| fail(format!("could not start the database thread: {error}")))?;
    handle
        .join()
        .unwrap_or_else(|_| Err(fail("the database thread panicked")))
}

/// Escapes `bytes` for one line of output (see the module docs).
pub fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\\' => text.push_str("\\\\"),
            b'\t' => text.push_str("\\t"),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            0x20..=0x7e => text.push(char::from(byte)),
            _ => {
                let _ = write!(text, "\\x{byte:02x}");
            }
        }
    }
    text
}

/// Closes the database cleanly and adds what it wrote to `STATS`.
fn finish(db: FileDb, dir: &Path) -> Result<Stats, Error> {
    let stats = db.stats();
    db.close().map_err(|error| commit_error(dir, error))?;
    let _ = Totals::load(dir).add(&stats).save(dir);
    Ok(stats)
}

/// `bedrock db put KEY VALUE`: durable when it returns.
pub fn put(
    dir: PathBuf,
    capacities: Capacities,
    key: OsString,
    value: OsString,
) -> Result<ExitCode, Error> {
    check_key(bytes(&key))?;
    check_value(bytes(&value))?;
    on_big_stack(move || {
        let mut db = open(&dir, capacities)?;
        write_one(&mut db, &dir, bytes(&key), Some(bytes(&value)))?;
        db.commit().map_err(|error| commit_error(&dir, error))?;
        finish(db, &dir)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `bedrock db del KEY`: durable when it returns (deleting an absent key is not an error).
pub fn del(dir: PathBuf, key: OsString) -> Result<ExitCode, Error> {
    check_key(bytes(&key))?;
    existing(&dir)?;
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        write_one(&mut db, &dir, bytes(&key), None)?;
        db.commit().map_err(|error| commit_error(&dir, error))?;
        finish(db, &dir)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A put (`Some` value) or a delete, in a batch of its own (values up to [`VALUE_MAX`]).
fn write_one(db: &mut FileDb, dir: &Path, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
    let mut buffer = vec![0u8; KEY_MAX + VALUE_MAX + 64];
    let mut batch = Batch::new(&mut buffer[..]);
    let added = match value {
        Some(value) => batch.put(key, value),
        None => batch.delete(key),
    };
    added.map_err(|_| write_error(dir, WriteError::TooLarge))?;
    db.write(&batch).map_err(|error| write_error(dir, error))?;
    Ok(())
}

/// `bedrock db get KEY`: exit status 1 when absent.
pub fn get(dir: PathBuf, key: OsString, raw: bool) -> Result<ExitCode, Error> {
    check_key(bytes(&key))?;
    existing(&dir)?;
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        let mut out = vec![0u8; VALUE_MAX];
        let found = match db.get(bytes(&key), &mut out) {
            Ok(found) => found,
            Err(error) => return Err(read_error(&db, &dir, error)),
        };
        drop(db);
        let Some(len) = found else {
            return Err(fail(format!("key {} not found", escape(bytes(&key)))));
        };
        let mut stdout = io::stdout().lock();
        let written = if raw {
            stdout.write_all(&out[..len])
        } else {
            writeln!(stdout, "{}", escape(&out[..len]))
        };
        written
            .and_then(|()| stdout.flush())
            .map_err(stdout_error)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `bedrock db scan [FROM] [TO]`: `KEY<TAB>VALUE` per key from FROM (inclusive) to TO
/// (exclusive), at most `limit` keys.
pub fn scan(
    dir: PathBuf,
    from: Option<OsString>,
    to: Option<OsString>,
    limit: Option<u64>,
) -> Result<ExitCode, Error> {
    existing(&dir)?;
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        let from = from.as_ref().map(bytes).unwrap_or(b"");
        let to = to.as_ref().map(bytes);
        let mut out = BufWriter::new(io::stdout().lock());
        let mut failed = None;
        let mut left = limit.unwrap_or(u64::MAX);
        let scanned = db.scan(from, to, SEQUENCE_MAX, |key, value| {
            if left == 0 {
                return false;
            }
            left -= 1;
            let line = writeln!(out, "{}\t{}", escape(key), escape(value));
            match line {
                Ok(()) => true,
                Err(error) => {
                    failed = Some(error);
                    false
                }
            }
        });
        if let Some(error) = failed {
            return Err(stdout_error(error));
        }
        if let Err(error) = scanned {
            let _ = out.flush();
            return Err(read_error(&db, &dir, error));
        }
        out.flush().map_err(stdout_error)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `bedrock db compact`: flushes the memtable, then compacts until nothing is due, with a
/// progress line on a terminal.
pub fn compact(dir: PathBuf) -> Result<ExitCode, Error> {
    existing(&dir)?;
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        let started = Instant::now();
        let mut progress = Progress::new();
        progress.status("flushing the memtable");
        db.flush_memtable()
            .map_err(|error| flush_error(&dir, error))?;
        let mut steps = 0u64;
        loop {
            let stats = db.stats();
            progress.status(&format!(
                "compacting: {steps} steps, {} written, {}",
                size(stats.table_bytes),
                levels_line(&stats)
            ));
            match db.compact_once() {
                Ok(true) => steps += 1,
                Ok(false) => break,
                Err(error) => {
                    progress.clear();
                    return Err(flush_error(&dir, error));
                }
            }
        }
        progress.clear();
        let stats = finish(db, &dir)?;
        crate::output::line(format!(
            "compacted in {steps} steps ({:.1} s): {} of tables written, {} live in {} tables; {}",
            started.elapsed().as_secs_f64(),
            size(stats.table_bytes),
            size(stats.live_bytes),
            stats.levels.iter().map(|level| level.tables).sum::<usize>(),
            levels_line(&stats)
        ))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `bedrock db load N`: writes keys `key000000000000` … (from `start`) with generated values of
/// `value_len` bytes, committing every `batch` entries; with `print_acks`, prints `acked C`
/// after each commit (C: keys committed so far, all durable).
pub fn load(
    dir: PathBuf,
    capacities: Capacities,
    count: u64,
    start: u64,
    batch: u32,
    value_len: usize,
    print_acks: bool,
) -> Result<ExitCode, Error> {
    if value_len > VALUE_MAX {
        return Err(fail(format!(
            "--value-len {value_len} is longer than the {VALUE_MAX} bytes a value may have"
        )));
    }
    let batch = u64::from(batch.max(1));
    on_big_stack(move || {
        let mut db = open(&dir, capacities)?;
        let started = Instant::now();
        let mut progress = Progress::new();
        let mut stdout = io::stdout().lock();
        let mut buffer = vec![0u8; LOG_PAYLOAD as usize - 64];
        let mut done = 0u64;
        while done < count {
            let mut records = Batch::new(&mut buffer[..]);
            let mut in_batch = 0;
            while in_batch < batch && done + in_batch < count {
                let index = start + done + in_batch;
                let (key, value) = (key_of(index), value_of(index, value_len));
                if records.put(&key, &value).is_err() {
                    break;
                }
                in_batch += 1;
            }
            if in_batch == 0 {
                return Err(fail("a generated entry does not fit a batch"));
            }
            db.write(&records)
                .map_err(|error| write_error(&dir, error))?;
            db.commit().map_err(|error| commit_error(&dir, error))?;
            done += in_batch;
            if print_acks {
                writeln!(stdout, "acked {done}")
                    .and_then(|()| stdout.flush())
                    .map_err(stdout_error)?;
            }
            progress.bar(done, count, started, "entries");
        }
        progress.clear();
        let stats = finish(db, &dir)?;
        let seconds = started.elapsed().as_secs_f64();
        writeln!(
            stdout,
            "loaded {count} entries in {seconds:.1} s ({:.0}/s); write amplification {:.2}, \
             {} flushes, {} compactions",
            count as f64 / seconds.max(1e-9),
            stats.write_amplification(),
            stats.flushes,
            stats.compactions
        )
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The key `db load` writes at `index`.
pub fn key_of(index: u64) -> Vec<u8> {
    format!("key{index:012}").into_bytes()
}

/// The value `db load` writes at `index`: `v<index>-` repeated to `len` bytes.
pub fn value_of(index: u64, len: usize) -> Vec<u8> {
    let unit = format!("v{index}-");
    unit.bytes().cycle().take(len).collect()
}

/// `bedrock db stats`.
pub fn stats(dir: PathBuf) -> Result<ExitCode, Error> {
    existing(&dir)?;
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        let stats = db.stats();
        let capacity = db.table_storage_mut().geometry().capacity;
        drop(db);
        let totals = Totals::load(&dir);
        let mut text = String::new();
        let _ = writeln!(text, "level  tables      entries        bytes");
        for (level, counts) in stats.levels.iter().enumerate() {
            let _ = writeln!(
                text,
                "{level:>5} {:>7} {:>12} {:>12}",
                counts.tables, counts.entries, counts.bytes
            );
        }
        let tables: usize = stats.levels.iter().map(|level| level.tables).sum();
        let entries: u64 = stats.levels.iter().map(|level| level.entries).sum();
        let _ = writeln!(
            text,
            "total {tables:>7} {entries:>12} {:>12}",
            stats.live_bytes
        );
        let _ = writeln!(
            text,
            "memtable: {} entries, {} bytes of keys and values (replayed from the log)",
            stats.memtable_entries, stats.memtable_bytes
        );
        let _ = writeln!(
            text,
            "table storage: {} in use of {} ({} live)",
            size(stats.used_bytes),
            size(capacity),
            size(stats.live_bytes)
        );
        let _ = writeln!(
            text,
            "space amplification: {:.2} (table storage in use per live table byte)",
            stats.space_amplification()
        );
        let _ = writeln!(
            text,
            "write amplification: {:.2} ({} written to the log and tables for {} of keys and \
             values; {} flushes, {} compactions)",
            totals.write_amplification(),
            size(totals.log_bytes + totals.table_bytes),
            size(totals.user_bytes),
            totals.flushes,
            totals.compactions
        );
        crate::output::line(text.trim_end())?;
        Ok(ExitCode::SUCCESS)
    })
}

fn levels_line(stats: &Stats) -> String {
    let mut line = String::new();
    for (level, counts) in stats.levels.iter().enumerate().take(LEVELS) {
        if counts.tables > 0 {
            let _ = write!(line, "L{level} {} ({}) ", counts.tables, size(counts.bytes));
        }
    }
    line.trim_end().to_string()
}

/// Bytes in binary units.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// What the engine wrote, summed over the commands that finished (the `STATS` file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    user_bytes: u64,
    log_bytes: u64,
    table_bytes: u64,
    flushes: u64,
    compactions: u64,
}

impl Totals {
    fn load(dir: &Path) -> Self {
        let mut totals = Self::default();
        let Ok(text) = std::fs::read_to_string(dir.join(STATS_FILE)) else {
            return totals;
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(Ok(value))) = (words.next(), words.next().map(str::parse)) else {
                continue;
            };
            match name {
                "user_bytes" => totals.user_bytes = value,
                "log_bytes" => totals.log_bytes = value,
                "table_bytes" => totals.table_bytes = value,
                "flushes" => totals.flushes = value,
                "compactions" => totals.compactions = value,
                _ => {}
            }
        }
        totals
    }

    fn add(mut self, stats: &Stats) -> Self {
        self.user_bytes += stats.user_bytes;
        self.log_bytes += stats.log_bytes;
        self.table_bytes += stats.table_bytes;
        self.flushes += stats.flushes;
        self.compactions += stats.compactions;
        self
    }

    /// Written to a temporary file and renamed into place (not synced: the figures are
    /// statistics, not data).
    fn save(&self, dir: &Path) -> io::Result<()> {
        let text = format!(
            "user_bytes {}\nlog_bytes {}\ntable_bytes {}\nflushes {}\ncompactions {}\n",
            self.user_bytes, self.log_bytes, self.table_bytes, self.flushes, self.compactions
        );
        let temporary = dir.join(format!("{STATS_FILE}.new"));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, dir.join(STATS_FILE))
    }

    fn write_amplification(&self) -> f64 {
        (self.log_bytes + self.table_bytes) as f64 / self.user_bytes.max(1) as f64
    }
}

/// `bedrock inspect --data DIR` on a database: every live table, each checked block by block.
/// Exit status 1 when a table is damaged.
pub fn inspect(dir: PathBuf) -> Result<ExitCode, Error> {
    on_big_stack(move || {
        let mut db = open(&dir, Capacities::default())?;
        let mut metas: Vec<TableMeta> = db.tables().cloned().collect();
        metas.sort_by(|a, b| (a.level, &a.smallest).cmp(&(b.level, &b.smallest)));
        let mut out = BufWriter::new(io::stdout().lock());
        let mut damaged = 0usize;
        let erase = u64::from(TABLE_ERASE);
        let mut index = vec![0u8; (16 << 20) + 4096];
        let mut data = vec![0u8; (1 << 20) + 4096];
        writeln!(
            out,
            "database {}: {} live tables, next sequence {}",
            dir.display(),
            metas.len(),
            db.next_sequence()
        )
        .map_err(stdout_error)?;
        for meta in &metas {
            let start = u64::from(meta.first_block) * erase;
            let checked = check_table(
                db.table_storage_mut(),
                start,
                meta.len,
                &mut index,
                &mut data,
            );
            let verdict = match checked {
                Ok(entries) if entries == meta.entries => format!("ok ({entries} entries read)"),
                Ok(entries) => {
                    damaged += 1;
                    format!(
                        "DAMAGED: {entries} entries read, the manifest says {}",
                        meta.entries
                    )
                }
                Err(TableError::Corrupt { offset, what }) => {
                    damaged += 1;
                    format!(
                        "CORRUPT {what} at offset {offset} of the table storage (byte {} of \
                         the table)",
                        offset.saturating_sub(start)
                    )
                }
                Err(error) => {
                    damaged += 1;
                    format!("UNREADABLE: {}", table_error_text(&error))
                }
            };
            writeln!(
                out,
                "table {:>6} level {} run {}+{} offset {} len {} entries {} keys {} .. {} \
                 sequences {}..{}: {verdict}",
                meta.first_block,
                meta.level,
                meta.first_block,
                meta.blocks,
                start,
                meta.len,
                meta.entries,
                escape(&meta.smallest),
                escape(&meta.largest),
                meta.sequences.0,
                meta.sequences.1
            )
            .map_err(stdout_error)?;
        }
        let stats = db.stats();
        writeln!(
            out,
            "summary: {} tables, {} damaged; {} live, {} in use; memtable {} entries replayed",
            metas.len(),
            damaged,
            size(stats.live_bytes),
            size(stats.used_bytes),
            stats.memtable_entries
        )
        .map_err(stdout_error)?;
        out.flush().map_err(stdout_error)?;
        drop(db);
        Ok(match damaged {
            0 => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        })
    })
}

/// Reads every block of the table at `start` (its footer, index and each data block, each
/// checked by its CRC): the entries read.
fn check_table<S: Storage>(
    storage: &mut S,
    start: u64,
    len: u64,
    index: &mut [u8],
    data: &mut [u8],
) -> Result<u64, TableError<S::Error>> {
    let table = Table::open(storage, start, len)?;
    let buffers = ReaderBuffers { index, data };
    let mut scan = table.scan(storage, buffers, None)?;
    let mut entries = 0;
    while scan.next(storage)?.is_some() {
        entries += 1;
    }
    Ok(entries)
}

/// A progress line on stderr, drawn only when stderr is a terminal (never escape codes
/// otherwise), at most ten times a second.
struct Progress {
    enabled: bool,
    drawn: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            enabled: io::stderr().is_terminal(),
            drawn: None,
        }
    }

    fn due(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        let now = Instant::now();
        if self
            .drawn
            .is_some_and(|drawn| now.duration_since(drawn) < Duration::from_millis(100))
        {
            return false;
        }
        self.drawn = Some(now);
        true
    }

    fn draw(&self, text: &str) {
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{text}");
        let _ = stderr.flush();
    }

    /// A bar: `[#####     ]  45% 450000/1000000 entries, 123456/s`.
    fn bar(&mut self, done: u64, total: u64, started: Instant, what: &str) {
        if !self.due() {
            return;
        }
        const WIDTH: u64 = 30;
        let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let bar = format!(
            "[{}{}] {:>3}% {done}/{total} {what}, {rate:.0}/s",
            "#".repeat(filled),
            " ".repeat(WIDTH as usize - filled),
            (done * 100).checked_div(total).unwrap_or(100)
        );
        self.draw(&bar);
    }

    fn status(&mut self, text: &str) {
        if self.due() {
            self.draw(text);
        }
    }

    fn clear(&mut self) {
        if self.enabled && self.drawn.is_some() {
            self.draw("");
        }
    }
}

/// A line on stderr (a terminal only) while a long open runs: shown after 300 ms, with the
/// time elapsed.
struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(what: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = io::stderr().is_terminal().then(|| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let started = Instant::now();
                let mut shown = false;
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                let mut frame = 0;
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                    let elapsed = started.elapsed();
                    if elapsed >= Duration::from_millis(300) && !stop.load(Ordering::Relaxed) {
                        shown = true;
                        frame = (frame + 1) % FRAMES.len();
                        eprint!(
                            "\r\x1b[2K{} {what}… {:.1} s",
                            FRAMES[frame],
                            elapsed.as_secs_f64()
                        );
                    }
                }
                if shown {
                    eprint!("\r\x1b[2K");
                }
            })
        });
        Self { stop, thread }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_each_record_on_one_line() {
        assert_eq!(escape(b"plain key-1"), "plain key-1");
        assert_eq!(escape(b"a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(escape(&[0, 0x7f, 0xff, b'z']), "\\x00\\x7f\\xffz");
    }

    #[test]
    fn the_configuration_fits_its_buffers() {
        let config = config();
        let work = config.work_len(KEYS_PER_TABLE);
        let log = config.log_payload_max(TABLES) as usize;
        println!("work {work} bytes, log payload {log} bytes");
        assert!(work < 12 << 20, "the module docs say about 10 MiB: {work}");
        assert!(config.log_payload_max(TABLES) <= LOG_PAYLOAD);
        assert_eq!(value_of(7, 9), b"v7-v7-v7-");
        assert_eq!(key_of(42), b"key000000000042");
    }

    #[test]
    fn totals_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Stats {
            user_bytes: 10,
            log_bytes: 20,
            table_bytes: 5,
            flushes: 1,
            compactions: 2,
            ..Stats::default()
        };
        Totals::default().add(&stats).save(dir.path()).unwrap();
        let totals = Totals::load(dir.path()).add(&stats);
        assert_eq!(totals.user_bytes, 20);
        assert_eq!(totals.compactions, 4);
        assert!((totals.write_amplification() - 2.5).abs() < 1e-9);
    }
}
