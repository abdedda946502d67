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

/// Runs `jobs` (one enumeration or batch of seeds each) on threads of their own and returns
/// the sum of what they return: how crash-point enumerations and seed sweeps use both cores
/// and stay deterministic (each job owns its seeds). A job's panic is re-raised here.
pub fn sum_in_parallel<F: FnOnce() -> u64 + Send>(jobs: Vec<F>) -> u64 {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(count) => count,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .sum()
    })
}
