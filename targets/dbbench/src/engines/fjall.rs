//! fjall: an LSM tree with a journal (write-ahead log); one keyspace, defaults throughout.
//!
//! A synced batch is a `WriteBatch` committed with `PersistMode::SyncData` (journal written,
//! then `fdatasync`); an unsynced one uses `PersistMode::Buffer` (written to the OS), which is
//! what fjall does by default.

use std::path::Path;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::engine::{Engine, Entry, Kind, Result};
use crate::workload::KEY_LEN;

pub const KIND: Kind = Kind {
    name: "fjall",
    version: concat!("fjall ", env!("DBBENCH_FJALL_VERSION")),
    durability: "journal fdatasync (PersistMode::SyncData) per synced batch; otherwise \
                 PersistMode::Buffer; all other settings default (lz4, 4 worker threads max)",
    log_suffix: Some(".jnl"),
    open,
};

struct Fjall {
    db: Database,
    keyspace: Keyspace,
}

fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let db = Database::builder(dir).open()?;
    let keyspace = db.keyspace("bench", KeyspaceCreateOptions::default)?;
    Ok(Box::new(Fjall { db, keyspace }))
}

impl Engine for Fjall {
    fn put_batch(&self, entries: &[Entry], sync: bool) -> Result<()> {
        let mode = if sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        let mut batch = self.db.batch().durability(Some(mode));
        for (key, value) in entries {
            batch.insert(&self.keyspace, key.as_slice(), value.as_slice());
        }
        batch.commit()?;
        Ok(())
    }

    fn get_many(&self, keys: &[[u8; KEY_LEN]]) -> Result<u64> {
        let mut found = 0;
        for key in keys {
            if self.keyspace.get(key)?.is_some() {
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64> {
        let mut visited = 0;
        for guard in self.keyspace.iter() {
            let (key, value) = guard.into_inner()?;
            visited += 1;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(visited)
    }

    fn settle(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while (self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0)
            && start.elapsed() < limit
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
