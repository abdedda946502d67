//! The durable counter on a file: open (recovering whatever a crash left), increment with one
//! sync each, then group-commit a batch with one sync, and report what recovery found.
//!
//! ```sh
//! cargo run -p bedrock-examples --example counter -- ./counter-data
//! ```

use bedrock::counter::{Counter, CounterConfig};
use bedrock_std::{FileOptions, FileStorage};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("counter-data"));
    let options = FileOptions {
        capacity: Some(1 << 20),
        ..FileOptions::default()
    };
    let storage = FileStorage::open(&dir, options)?;
    let opened = Counter::open(storage, vec![0u8; 64 * 1024], CounterConfig::default());
    let (mut counter, recovery) = opened.map_err(|error| format!("cannot open: {error:?}"))?;
    println!("recovered value {} ({recovery:?})", counter.value());

    let one = counter.incr(1).map_err(|error| format!("{error:?}"))?;
    println!("after incr(1), durable: {one}");

    for by in 1..=10 {
        counter.stage(by).map_err(|error| format!("{error:?}"))?;
    }
    let batch = counter.commit().map_err(|error| format!("{error:?}"))?;
    println!("after ten staged increments and one sync: {batch}");
    Ok(())
}
