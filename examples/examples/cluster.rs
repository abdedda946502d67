//! Three nodes, each running the distributed counter and the replicated log, over the seeded
//! simulated network with 20% loss: the same sans-IO services and driver step that
//! `bedrock node` runs over UDP and files, here on RAM storage and a virtual clock, so the run
//! is deterministic and instant.
//!
//! Each node increments its own count and appends one entry; the nodes gossip until every node
//! counts the same total and holds the same log, then the example prints both.
//!
//! ```sh
//! cargo run -p bedrock-examples --example cluster
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::Driver;
use bedrock::rlog::{ReadKey, Rlog, RlogConfig};
use bedrock::storage::RamStorage;
use bedrock::time::Instant;
use bedrock::wire::{Key, Keyring, Wire};
use bedrock_sim::{NetFaults, SimNetwork, SimRng};

/// 64 KiB of RAM storage per service, 512-byte erase blocks.
type Ram = RamStorage<65536>;
/// Up to 8 nodes, 4 peers, 16 remembered requests, 16 replies waiting for a sync.
type Counter = DistributedCounter<Ram, Vec<u8>, 8, 4, 16, 16>;
/// Up to 8 origins, 4 peers, 16 segment summaries (64 KiB in segments of 4 KiB).
type Log = Rlog<Ram, Vec<u8>, 8, 4, 16>;

const NODES: usize = 3;

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7000))
}

struct Node {
    addr: SocketAddr,
    services: (Counter, Log),
    driver: Driver<1, 8>,
    rng: SimRng,
}

fn node(index: usize) -> Result<Node, String> {
    let id = NodeId(index as u32 + 1);
    let peers: Vec<SocketAddr> = (0..NODES).filter(|&i| i != index).map(addr).collect();
    let storage = || Ram::new(8, 512, 0xFF).map_err(|error| error.to_string());
    let mut counter_config = dcounter::Config::new(id, 1);
    counter_config.log.segment_size = 4096;
    let (counter, _) = Counter::open(storage()?, vec![0; 8192], counter_config, &peers)
        .map_err(|error| format!("counter: {error}"))?;
    let mut log_config = RlogConfig::new(id);
    log_config.log.segment_size = 4096;
    let (log, _) = Log::open(storage()?, vec![0; 8192], log_config, &peers)
        .map_err(|error| format!("log: {error:?}"))?;
    // Every node of a cluster shares the key; each has its own id and incarnation.
    let keys = Keyring::new(Key::new(1, [0x5a; 32]));
    Ok(Node {
        addr: addr(index),
        services: (counter, log),
        driver: Driver::new(Wire::encrypted(0xC1, id, 1, keys)),
        rng: SimRng::new(index as u64),
    })
}

fn main() -> Result<(), String> {
    let faults = NetFaults {
        drop: 0.2,
        latency_min_micros: 500,
        latency_max_micros: 5_000,
        ..NetFaults::NONE
    };
    let mut network = SimNetwork::new(7).with_faults(faults);
    let mut nodes = (0..NODES).map(node).collect::<Result<Vec<_>, _>>()?;
    for (index, node) in nodes.iter_mut().enumerate() {
        network.add_endpoint(node.addr);
        let (counter, log) = &mut node.services;
        counter
            .incr(10 * (index as u64 + 1))
            .map_err(|r| format!("{r:?}"))?;
        let text = format!("hello from node {}", index + 1);
        log.append(Instant::ZERO, text.as_bytes())
            .map_err(|error| format!("{error:?}"))?;
    }
    let mut buffer = vec![0u8; network.mtu()];
    // One step per node per 10 ms of virtual time (the driver commits staged writes first).
    for tick in 0..1000u64 {
        let now = Instant::ZERO + Duration::from_millis(tick * 10);
        network.advance_to(now);
        for node in &mut nodes {
            let mut endpoint = network.endpoint(node.addr);
            node.driver
                .step(
                    now,
                    &mut endpoint,
                    &mut node.services,
                    &mut node.rng,
                    &mut buffer,
                )
                .map_err(|error| error.to_string())?;
        }
        let values: Vec<u64> = nodes.iter().map(|node| node.services.0.value()).collect();
        let haves: Vec<_> = nodes
            .iter()
            .map(|node| node.services.1.have().clone())
            .collect();
        if values.iter().all(|&value| value == 60) && haves.iter().all(|have| have == &haves[0]) {
            println!("converged after {} ms of virtual time", tick * 10);
            break;
        }
    }
    for (index, node) in nodes.iter_mut().enumerate() {
        println!("node {}: counter {}", index + 1, node.services.0.value());
        node.services
            .1
            .read(ReadKey::START, 16, |entry| {
                let text = String::from_utf8_lossy(entry.data);
                // Written concurrently on different nodes: siblings, for the application to
                // resolve (see `rlog::resolve`).
                let sibling = if entry.has_siblings() {
                    " (sibling)"
                } else {
                    ""
                };
                println!(
                    "  {}:{} {text}{sibling}",
                    entry.dot.origin.0, entry.dot.counter
                );
                true
            })
            .map_err(|error| format!("{error:?}"))?;
    }
    println!("network: {:?}", network.counters());
    Ok(())
}
