//! bedrock-std: runs the bedrock core on a Linux server.
//!
//! - [`file`](mod@file): [`FileStorage`], the [`bedrock::storage::Storage`] contract over one preallocated
//!   file in a locked data directory, with `fdatasync` and poisoning after any failed write or
//!   sync.
//!
//! Not provided (yet): UDP sockets, the monotonic clock and the event-loop driver.
// One audited `unsafe` call (a read-ahead hint, `posix_fadvise`) is allowed where it stands.
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(unix)]
pub mod file;
pub mod incarnation;

#[cfg(unix)]
pub use file::{FileError, FileOptions, FileStorage, DATA_FILE_NAME, LOCK_FILE_NAME};
