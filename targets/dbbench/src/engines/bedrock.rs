//! bedrock: this project's LSM engine (`bedrock::db::Db`) on two files, with the engine
//! configuration `bedrock db` uses (a 32 MiB memtable, 8 MiB tables, 16 KiB blocks, 10 bloom
//! bits per key, level 0 compacted at 4 tables, level 1 of 64 MiB, ratio 10), and its sparse
//! stores (creating them writes nothing): a 128 MiB log store of 4 MiB segments and a 1 GiB
//! table store of 256 KiB erase blocks (`bedrock db` takes 16 GiB; 1 GiB is enough for the
//! benchmark's few hundred MiB).
//!
//! A batch is one `Db::write` (one BATCH record in the write-ahead log); a synced batch is
//! followed by `Db::commit` (one `fdatasync` of the log). Flushes and compactions run inside
//! the write that needs them (the engine has no background thread), so their cost lands in the
//! write figures. The engine is single-threaded: a mutex serializes calls.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bedrock::db::batch::Batch;
use bedrock::db::block::SEQUENCE_MAX;
use bedrock::db::engine::{Buffers, Config};
use bedrock::db::Db;
use bedrock::log::{self, Policy};
use bedrock_std::{FileMode, FileOptions, FileStorage};

use crate::engine::{Engine, Entry, Kind, Result};
use crate::workload::{KEY_LEN, VALUE_LEN};

pub const KIND: Kind = Kind {
    name: "bedrock",
    version: concat!("bedrock ", env!("CARGO_PKG_VERSION")),
    durability: "one Db::write per batch (one write-ahead-log record), then Db::commit (one \
                 fdatasync of the log) when synced; flushes and compactions inline, no \
                 background thread; the engine configuration of `bedrock db`, both stores \
                 sparse (128 MiB log, 1 GiB tables)",
    log_suffix: None,
    open,
};

const TABLES: usize = 1024;
const MEMTABLE_BYTES: usize = 32 << 20;
const KEYS_PER_TABLE: usize = 256 << 10;
const WAL_CAPACITY: u64 = 128 << 20;
const WAL_SEGMENT: u32 = 4 << 20;
const TABLE_CAPACITY: u64 = 1 << 30;
const TABLE_ERASE: u32 = 256 << 10;
const LOG_PAYLOAD: u32 = 1 << 20;
const LOG_READ: usize = 4 << 20;
/// Bytes of one batch's operations: 1000 entries and their varints, with room.
const BATCH_BYTES: usize = 1000 * (KEY_LEN + VALUE_LEN + 8) + 4096;

type FileDb = Db<FileStorage, FileStorage, Vec<u8>, Vec<u64>, TABLES>;

struct Bedrock {
    db: Mutex<Option<Box<FileDb>>>,
}

fn config() -> Config {
    Config {
        log: log::Config {
            segment_size: WAL_SEGMENT,
            payload_max: LOG_PAYLOAD,
            policy: Policy::StopAtCorruption,
        },
        key_len_max: 256,
        value_len_max: 4096,
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

fn options(capacity: u64, erase_size: u32) -> FileOptions {
    FileOptions {
        capacity: Some(capacity),
        read_size: 1,
        write_size: 8,
        erase_size,
    }
}

fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let wal = FileStorage::open_mode(
        &dir.join("wal"),
        options(WAL_CAPACITY, WAL_SEGMENT),
        FileMode::Sparse,
    )?;
    let tables = FileStorage::open_mode(
        &dir.join("tables"),
        options(TABLE_CAPACITY, TABLE_ERASE),
        FileMode::Sparse,
    )?;
    let config = config();
    let buffers = Buffers {
        log: vec![0u8; LOG_READ + config.log_payload_max(TABLES) as usize + 4096],
        memtable: vec![0u8; MEMTABLE_BYTES],
        work: vec![0u8; config.work_len(KEYS_PER_TABLE)],
        hashes: vec![0u64; KEYS_PER_TABLE],
    };
    let (db, _) = FileDb::open(wal, tables, buffers, config)
        .map_err(|error| format!("cannot open the bedrock database: {error:?}"))?;
    Ok(Box::new(Bedrock {
        db: Mutex::new(Some(Box::new(db))),
    }))
}

fn failed(what: &str, error: impl std::fmt::Debug) -> crate::engine::Error {
    format!("bedrock {what}: {error:?}").into()
}

impl Bedrock {
    fn with<T>(&self, run: impl FnOnce(&mut FileDb) -> Result<T>) -> Result<T> {
        let mut guard = self
            .db
            .lock()
            .map_err(|_| "the bedrock mutex is poisoned")?;
        let db = guard.as_mut().ok_or("the bedrock database is closed")?;
        run(db)
    }
}

impl Engine for Bedrock {
    fn put_batch(&self, entries: &[Entry], sync: bool) -> Result<()> {
        let mut batch = Batch::new(vec![
            0u8;
            BATCH_BYTES
                .max(entries.len() * (KEY_LEN + VALUE_LEN + 8))
        ]);
        for (key, value) in entries {
            batch
                .put(key, value)
                .map_err(|error| failed("batch", error))?;
        }
        self.with(|db| {
            db.write(&batch).map_err(|error| failed("write", error))?;
            if sync {
                db.commit().map_err(|error| failed("commit", error))?;
            }
            Ok(())
        })
    }

    fn get_many(&self, keys: &[[u8; KEY_LEN]]) -> Result<u64> {
        self.with(|db| {
            let mut value = [0u8; 4096];
            let mut found = 0;
            for key in keys {
                if db
                    .get(key, &mut value)
                    .map_err(|error| failed("get", error))?
                    .is_some()
                {
                    found += 1;
                }
            }
            Ok(found)
        })
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64> {
        self.with(|db| {
            // Every write so far, committed or not, as the other engines' scans see them.
            let visited = db
                .scan(&[], None, SEQUENCE_MAX, |key, value| visit(key, value))
                .map_err(|error| failed("scan", error))?;
            Ok(visited as u64)
        })
    }

    fn settle(&self, _limit: Duration) -> Result<()> {
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        let db = self
            .db
            .into_inner()
            .map_err(|_| "the bedrock mutex is poisoned")?
            .ok_or("the bedrock database is closed")?;
        db.close().map_err(|error| failed("close", error))?;
        Ok(())
    }
}
