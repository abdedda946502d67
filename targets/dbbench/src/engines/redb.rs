//! redb: a copy-on-write B-tree in one file, no write-ahead log; defaults throughout.
//!
//! A synced batch is one write transaction committed with `Durability::Immediate` (redb's
//! default: pages written, then the commit slot, with `fsync`s); an unsynced one is committed
//! with `Durability::None`, which a later `Immediate` commit makes durable.

use std::path::Path;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::engine::{Engine, Entry, Kind, Result};
use crate::workload::KEY_LEN;

pub const KIND: Kind = Kind {
    name: "redb",
    version: concat!("redb ", env!("DBBENCH_REDB_VERSION")),
    durability: "one write transaction per batch, Durability::Immediate when synced (the \
                 default), Durability::None otherwise; all other settings default",
    log_suffix: None,
    open,
};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

struct Redb {
    db: Database,
}

fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let db = Database::create(dir.join("bench.redb"))?;
    // The table exists before the first read.
    let txn = db.begin_write()?;
    txn.open_table(TABLE)?;
    txn.commit()?;
    Ok(Box::new(Redb { db }))
}

impl Engine for Redb {
    fn put_batch(&self, entries: &[Entry], sync: bool) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        let durability = if sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)?;
        {
            let mut table = txn.open_table(TABLE)?;
            for (key, value) in entries {
                table.insert(key.as_slice(), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn get_many(&self, keys: &[[u8; KEY_LEN]]) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut found = 0;
        for key in keys {
            if table.get(key.as_slice())?.is_some() {
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut visited = 0;
        for item in table.iter()? {
            let (key, value) = item?;
            visited += 1;
            if !visit(key.value(), value.value()) {
                break;
            }
        }
        Ok(visited)
    }

    fn settle(&self, _limit: Duration) -> Result<()> {
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        // An empty Immediate commit makes any Durability::None commits durable.
        let txn = self.db.begin_write()?;
        txn.commit()?;
        self.db.close()?;
        Ok(())
    }
}
