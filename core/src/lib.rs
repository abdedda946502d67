//! bedrock: the building blocks of distributed systems, as sans-IO state machines.
//!
//! This crate is `no_std`, allocates nothing and performs no IO: storage is reached through the
//! [`storage::Storage`] trait, time and randomness are passed in by the caller. Adapters
//! (`bedrock-std`, `bedrock-embedded`, `bedrock-sim`) connect it to files, flash and a simulator.
//!
//! Layers, bottom up:
//!
//! - [`storage`] — the NOR-flash-shaped storage contract and its power-loss rules;
//! - [`checksum`] — CRC-32C,
//! - [`frame`] — the CRC-checked frame format (see SPEC.md);
//! - [`log`] — a segmented append-only log with crash recovery and space reclamation;
//! - [`counter`] — the durable counter built on the log;
//! - [`crdt`] — state-based CRDTs: version vector, grow-only and positive-negative counters;
//! - [`rlog`] — the leaderless replicated log: entries with version vectors, anti-entropy,
//!   siblings;
//! - [`time`], [`rng`], [`net`] — time, randomness and the datagram contract, all inputs;
//! - [`service`] — the sans-IO shape of networked services.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checksum;
pub mod counter;
pub mod crdt;
pub mod frame;
pub mod log;
pub mod net;
pub mod rlog;
pub mod rng;
pub mod service;
pub mod storage;
pub mod time;
