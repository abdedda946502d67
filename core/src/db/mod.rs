//! The embedded database (Q10, issue 7): a log-structured merge tree over [`Storage`]. Work in
//! progress: so far only the sorted block that SSTables are made of ([`block`]).
//!
//! [`Storage`]: crate::storage::Storage

pub mod block;
pub mod bloom;
