//! Hands the versions of the engines under test (from the workspace's Cargo.lock) to the
//! program, so that its notes name exactly what ran.

use std::fs;

fn main() {
    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    println!("cargo:rerun-if-changed={lock_path}");
    let lock = fs::read_to_string(lock_path).unwrap_or_default();
    for (package, variable) in [
        ("fjall", "DBBENCH_FJALL_VERSION"),
        ("redb", "DBBENCH_REDB_VERSION"),
        ("rocksdb", "DBBENCH_ROCKSDB_VERSION"),
        ("librocksdb-sys", "DBBENCH_LIBROCKSDB_VERSION"),
    ] {
        let version = version_of(&lock, package).unwrap_or_else(|| "unknown".to_string());
        println!("cargo:rustc-env={variable}={version}");
    }
}

/// The version of the first `[[package]]` named `name` in a Cargo.lock.
fn version_of(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let next = lines.next()?;
            let version = next
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(version.to_string());
        }
    }
    None
}
