//! The engines under test, one file each.
//!
//! The bedrock engine (`bedrock::db::Db`, being written) is added here as
//! `engines/bedrock.rs` with a `KIND` and an `Engine` implementation, and one line in
//! [`ALL`]; nothing else changes.

mod fjall;
mod redb;

use crate::engine::Kind;

/// Every engine, in the order of the table's columns.
pub const ALL: &[Kind] = &[fjall::KIND, redb::KIND];
