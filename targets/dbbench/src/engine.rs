//! The interface every engine under test implements, and the list of engines.
//!
//! Adding an engine is one file in `engines/` with an [`Engine`] implementation and a
//! [`Kind`] constant, plus one line in [`crate::engines::ALL`].

use std::path::Path;

/// Any error from an engine or the file system, as text for the report.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// One key-value pair of a batch.
pub type Entry = (
    [u8; crate::workload::KEY_LEN],
    [u8; crate::workload::VALUE_LEN],
);

/// How one engine is named, opened and configured.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Short name used on the command line (`--engines`) and in the table.
    pub name: &'static str,
    /// Crate and version, for the notes.
    pub version: &'static str,
    /// What a synced write means for this engine, and which defaults were changed (none,
    /// ideally), for the notes.
    pub durability: &'static str,
    /// The file-name suffix of the engine's write-ahead log files, if it keeps one, so that
    /// the recovery workload can say how much log the reopen had to read.
    pub log_suffix: Option<&'static str>,
    /// Opens (creating if needed) a database in the directory `dir`, which exists.
    pub open: fn(dir: &Path) -> Result<Box<dyn Engine>>,
}

/// An open database. Every method may be called from several threads at once.
///
/// "Synced" means durable when the call returns: the engine has called `fdatasync` (or
/// `fsync`) on whatever its recovery needs. Every engine syncs at the same points of a
/// workload, which is what "equal durability" means here.
pub trait Engine: Send + Sync {
    /// Writes `entries` atomically as one batch (transaction); synced when `sync`.
    fn put_batch(&self, entries: &[Entry], sync: bool) -> Result<()>;

    /// Looks up every key of `keys`; returns how many were found. One call may use one read
    /// snapshot (transaction) for all of its keys.
    fn get_many(&self, keys: &[[u8; crate::workload::KEY_LEN]]) -> Result<u64>;

    /// Visits the entries in key order from the first, until `visit` returns `false` or the
    /// entries end; returns how many were visited.
    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64>;

    /// Waits (at most `limit`) for background work (flushes, compactions) to finish, so that
    /// it does not run into the next measurement. Engines without background work return at
    /// once.
    fn settle(&self, limit: std::time::Duration) -> Result<()>;

    /// Closes the database cleanly (flushing whatever the engine flushes on close).
    fn close(self: Box<Self>) -> Result<()>;
}
