//! The embedded database (`bedrock::db`) on two files: a log store (the write-ahead log and the
//! manifest) and a table store. Writes a few thousand keys with group commit, reads some back,
//! scans a range, closes, reopens (recovering from the log's tail) and reads again.
//!
//! ```sh
//! cargo run -p bedrock-examples --example db -- ./db-data
//! ```

use std::path::PathBuf;

use bedrock::db::engine::Buffers;
use bedrock::db::{Config, Db};
use bedrock::log;
use bedrock_std::{FileOptions, FileStorage};

/// Live tables the engine keeps metadata for.
const TABLES: usize = 64;
/// Key hashes per table: the most keys one table holds.
const KEYS_PER_TABLE: usize = 8192;

type FileDb = Db<FileStorage, FileStorage, Vec<u8>, Vec<u64>, TABLES>;

fn config() -> Config {
    Config {
        log: log::Config {
            segment_size: 64 << 10,
            ..log::Config::default()
        },
        table_size: 256 << 10,
        ..Config::default()
    }
}

fn open(dir: &std::path::Path) -> Result<FileDb, Box<dyn std::error::Error>> {
    let store = |name: &str, capacity: u64| {
        let options = FileOptions {
            capacity: Some(capacity),
            ..FileOptions::default()
        };
        FileStorage::open(&dir.join(name), options)
    };
    let log_store = store("wal", 4 << 20)?;
    let table_store = store("tables", 32 << 20)?;
    let config = config();
    let buffers = Buffers {
        log: vec![0u8; config.log_payload_max(TABLES) as usize + 4096],
        memtable: vec![0u8; 1 << 20],
        work: vec![0u8; config.work_len(KEYS_PER_TABLE)],
        hashes: vec![0u64; KEYS_PER_TABLE],
    };
    let (db, recovery) = FileDb::open(log_store, table_store, buffers, config)
        .map_err(|error| format!("cannot open the database: {error:?}"))?;
    println!("opened: {recovery:?}");
    Ok(db)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("db-data"));
    let mut db = open(&dir)?;
    // Writes are staged in the log and the memtable; one commit (one sync) makes them durable.
    for n in 0..5_000u32 {
        let key = format!("user:{n:06}");
        let value = format!("{{\"visits\": {}}}", n % 97);
        db.put(key.as_bytes(), value.as_bytes())
            .map_err(|error| format!("put: {error:?}"))?;
        if n % 500 == 499 {
            db.commit().map_err(|error| format!("commit: {error:?}"))?;
        }
    }
    db.delete(b"user:000042")
        .map_err(|error| format!("delete: {error:?}"))?;
    db.commit().map_err(|error| format!("commit: {error:?}"))?;

    let mut value = [0u8; 1024];
    let found = db
        .get(b"user:004321", &mut value)
        .map_err(|error| format!("get: {error:?}"))?;
    println!(
        "user:004321 = {:?}",
        found.map(|len| String::from_utf8_lossy(&value[..len]).into_owned())
    );
    let gone = db
        .get(b"user:000042", &mut value)
        .map_err(|error| format!("get: {error:?}"))?;
    println!("user:000042 after its delete: {gone:?}");

    let snapshot = db.snapshot();
    let mut first = Vec::new();
    db.scan(b"user:000040", Some(b"user:000045"), snapshot, |key, _| {
        first.push(String::from_utf8_lossy(key).into_owned());
        true
    })
    .map_err(|error| format!("scan: {error:?}"))?;
    println!("keys from user:000040 to user:000045: {first:?}");

    // A flush writes the memtable as level-0 tables (it also happens by itself when the
    // memtable fills); the log's flushed segments are released.
    db.flush().map_err(|error| format!("flush: {error:?}"))?;
    let stats = db.stats();
    println!(
        "{} tables; write amplification {:.2}, space amplification {:.2}",
        db.tables().count(),
        stats.write_amplification(),
        stats.space_amplification()
    );
    db.close().map_err(|error| format!("close: {error:?}"))?;

    // Reopen: the manifest names the tables, the log's tail refills the memtable.
    let mut db = open(&dir)?;
    let found = db
        .get(b"user:004999", &mut value)
        .map_err(|error| format!("get: {error:?}"))?;
    println!(
        "after reopening, user:004999 = {:?}",
        found.map(|len| String::from_utf8_lossy(&value[..len]).into_owned())
    );
    Ok(())
}
