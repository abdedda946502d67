//! RocksDB through the `rocksdb` crate (only with the cargo feature `rocksdb`: its C++ takes
//! about half an hour to compile here). Defaults throughout, except `create_if_missing`.
//!
//! A synced batch is a `WriteBatch` written with `WriteOptions::set_sync(true)` (the WAL
//! appended, then `fdatasync`); an unsynced one is written with the default options (the WAL
//! appended to the OS).

use std::path::Path;
use std::time::{Duration, Instant};

use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use crate::engine::{Engine, Entry, Kind, Result};
use crate::workload::KEY_LEN;

pub const KIND: Kind = Kind {
    name: "rocksdb",
    version: concat!(
        "rocksdb crate ",
        env!("DBBENCH_ROCKSDB_VERSION"),
        " (librocksdb-sys ",
        env!("DBBENCH_LIBROCKSDB_VERSION"),
        ")"
    ),
    durability: "WAL fdatasync (WriteOptions::set_sync(true)) per synced batch; otherwise \
                 the default WriteOptions (WAL written to the OS); all other settings default \
                 (snappy)",
    log_suffix: Some(".log"),
    open,
};

struct Rocks {
    db: DB,
}

fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = DB::open(&options, dir)?;
    Ok(Box::new(Rocks { db }))
}

impl Engine for Rocks {
    fn put_batch(&self, entries: &[Entry], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in entries {
            batch.put(key, value);
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    fn get_many(&self, keys: &[[u8; KEY_LEN]]) -> Result<u64> {
        let mut found = 0;
        for key in keys {
            if self.db.get_pinned(key)?.is_some() {
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64> {
        let mut iterator = self.db.raw_iterator();
        iterator.seek_to_first();
        let mut visited = 0;
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            visited += 1;
            if !visit(key, value) {
                break;
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(visited)
    }

    fn settle(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let busy = |db: &DB| -> Result<bool> {
            let flushes = db.property_int_value("rocksdb.num-running-flushes")?;
            let compactions = db.property_int_value("rocksdb.num-running-compactions")?;
            let pending = db.property_int_value("rocksdb.compaction-pending")?;
            Ok(flushes.unwrap_or(0) + compactions.unwrap_or(0) + pending.unwrap_or(0) > 0)
        };
        while busy(&self.db)? && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}
