//! bedrock-sim: the deterministic simulator's building blocks.
//!
//! Everything here is driven by a seed: the same seed and the same sequence of calls give the same
//! run, byte for byte, so every failing run can be replayed and kept as a regression test.
//!
//! - [`rng`]: [`SimRng`], the seeded generator every simulated component draws from;
//! - [`storage`]: [`SimStorage`], a [`bedrock::storage::Storage`] with power cuts (unsynced writes
//!   dropped or torn at any byte), crash-point enumeration, and injected faults.
//!
//! Not provided (yet): the simulated network, virtual clock and cluster harness.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod rng;
pub mod storage;

pub use rng::SimRng;
pub use storage::{
    CrashMode, OpKind, OpRecord, SimCounters, SimError, SimFaults, SimStorage, TornSpec,
};
