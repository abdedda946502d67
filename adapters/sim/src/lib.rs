//! bedrock-sim: the deterministic simulator's building blocks.
//!
//! Everything here is driven by a seed: the same seed and the same sequence of calls give the same
//! run, byte for byte, so every failing run can be replayed and kept as a regression test.
//!
//! - [`rng`]: [`SimRng`], the seeded generator every simulated component draws from;
//! - [`storage`]: [`SimStorage`], a [`bedrock::storage::Storage`] with power cuts (unsynced writes
//!   dropped or torn at any byte), crash-point enumeration, and injected faults;
//! - [`net`]: [`SimNetwork`], a network of [`bedrock::net::Datagram`] endpoints ([`SimEndpoint`])
//!   with a virtual clock, seeded loss, duplication, reordering, delay and corruption, partitions,
//!   down endpoints, and counters per cause and per endpoint.
//!
//! Not provided (yet): the cluster harness.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod net;
pub mod rng;
pub mod storage;

pub use net::{
    EndpointCounters, NetCounters, NetFaults, SimEndpoint, SimNetwork, INBOX_CAPACITY_DEFAULT,
};
pub use rng::SimRng;
pub use storage::{
    CrashMode, OpKind, OpRecord, SimCounters, SimError, SimFaults, SimStorage, TornSpec,
};
