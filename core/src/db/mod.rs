//! The embedded database (Q10, issue 7): a log-structured merge tree over [`Storage`].
//!
//! The engine is [`Db`] (in [`engine`]): writes as batches appended to a write-ahead log
//! (group commit: one sync per [`Db::commit`]), a memtable flushed into level-0 tables,
//! leveled compaction, recovery by replaying the log's tail, point reads, snapshot reads and
//! scans. The log storage holds one [`Log`](crate::log::Log): the WAL and the manifest (its
//! EDIT and CHECKPOINT records); the table storage holds the tables, in runs of erase blocks.
//! [`engine`]'s docs give the record formats and what is guaranteed after a crash.
//!
//! The pieces, each with its format in its module docs and tests:
//!
//! - [`batch`] — write batches, all or nothing, as one record of the write-ahead log;
//! - [`block`] — sorted blocks of entries (key, sequence number, put or delete, value) with
//!   prefix-compressed keys, restart points for bisection and a CRC;
//! - [`bloom`] — bloom filters over a table's keys, from a stable 64-bit key hash;
//! - [`memtable`] — the newest writes, sorted, in a skiplist in a lent buffer;
//! - [`merge`] — merging the memtable and table scans into one sorted stream;
//! - [`space`] — runs of erase blocks for tables, first fit, rebuilt from the manifest;
//! - [`table`] — SSTables: data blocks, a filter, an index block and a footer, written once in
//!   one pass into a byte range of a storage; point lookups at a sequence number; every part
//!   checked by its own CRC, damage reported with its position; scans from a position.
//!
//! Every format is in SPEC.md §14, with golden vectors. The Linux binary's `bedrock db`
//! commands run this engine on files. On microcontrollers, build with the `db-small` feature
//! (64-byte keys, 64 restart points per block: see [`block::KEY_LEN_MAX`]); `targets/qemu`'s
//! `db` firmware runs the engine that way on two RAM NOR flashes in 64 KiB of RAM. Still to
//! come: the benchmark against other engines.
//!
//! [`Storage`]: crate::storage::Storage

pub mod batch;
pub mod block;
pub mod bloom;
pub mod engine;
pub mod memtable;
pub mod merge;
pub mod space;
pub mod table;

pub use engine::{Config, Db};
