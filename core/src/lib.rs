//! bedrock: the building blocks of distributed systems, as sans-IO state machines.
//!
//! This crate is `no_std`, allocates nothing and performs no IO: storage is reached through the
//! [`storage::Storage`] trait, time and randomness are passed in by the caller. Adapters
//! (`bedrock-std`, `bedrock-embedded`, `bedrock-sim`) connect it to files, flash and a simulator.
//!
//! Layers, bottom up:
//!
//! - [`storage`] — the NOR-flash-shaped storage contract and its power-loss rules;
//! - [`checksum`] — CRC-32C, and [`varint`] — canonical LEB128 integers;
//! - [`frame`] — the CRC-checked frame format (see SPEC.md);
//! - [`log`] — a segmented append-only log with crash recovery and space reclamation;
//! - [`counter`] — the durable counter built on the log;
//! - [`crdt`] — state-based CRDTs: version vector, counters, dotted version vector, multi-value register;
//! - [`rlog`] — the leaderless replicated log: entries with version vectors, anti-entropy,
//!   siblings;
//! - [`time`], [`rng`], [`net`] — time, randomness and the datagram contract, all inputs;
//! - [`service`] — the sans-IO shape of networked services;
//! - [`wire`] — the wire envelope: ChaCha20-Poly1305 under a cluster keyring, replay window (see SPEC.md);
//! - [`driver`] — one loop step of a node: open, dispatch, commit, seal, send;
//! - [`dcounter`] — the distributed counter (G-Counter gossip, durable increments);
//! - [`jobs`] — the job scheduler: jobs and their transitions in a log, leases with fencing
//!   tokens, retries with backoff, a dead-letter state;
//! - [`lock`] — the distributed lock: named leases with fencing tokens, renewal and expiry on
//!   monotonic time, a drift bound and a lock-delay after restarts, and quorum locks over a
//!   majority of lock servers;
//! - [`membership`] — SWIM failure detection with Lifeguard, dissemination, and push-pull
//!   gossip of per-node versioned application state within the MTU;
//! - [`queue`] — reliable message delivery: named queues, idempotent producers, delivery
//!   leases, durable acks, and an idempotent-consumer helper.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// Tests may use the heap for their harnesses; the library itself never does.
#[cfg(test)]
extern crate std;

pub mod checksum;
pub mod counter;
pub mod crdt;
pub mod db;
pub mod dcounter;
pub mod driver;
pub mod frame;
pub mod jobs;
pub mod lock;
pub mod log;
pub mod membership;
pub mod net;
pub mod queue;
pub mod rlog;
pub mod rng;
pub mod service;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod time;
pub mod varint;
pub mod wire;
