//! Crash-point enumeration for the durable counter.
//!
//! A fixed workload of grouped increments runs on the simulated storage; power is cut at every
//! write, erase and sync it performs, with the write in flight torn at each of its bytes. After
//! each cut the counter is recovered and must hold at least the last acknowledged value and at
//! most the last attempted one; a crash must never be reported as mid-log corruption; and the
//! recovered counter must keep working, across a second power cut during recovery and the first
//! increments after it.
//!
//! The geometry matrix covers byte-, word- and page-programmed flash and the file adapter's
//! geometry. Every geometry's workload is sized to fill several segments, so segment rollover is
//! cut too; with small erase blocks the ring wraps and reclaimed segments are erased and reused.

use bedrock::counter::{Counter, CounterConfig};
use bedrock::log;
use bedrock::storage::Geometry;
use bedrock_sim::{sum_in_parallel, CrashMode, SimRng, SimStorage, TornSpec};

/// (write size, erase size) pairs; the last is `bedrock-std`'s default file geometry.
const GEOMETRIES: [(u32, u32); 6] = [
    (1, 4096),
    (4, 4096),
    (8, 2048),
    (32, 131_072),
    (256, 4096),
    (8, 65_536),
];
const SEGMENTS: u64 = 4;
const INCREMENTS_MAX: usize = 330;

fn geometry(write_size: u32, erase_size: u32) -> Geometry {
    Geometry {
        read_size: 1,
        write_size,
        erase_size,
        capacity: SEGMENTS * erase_size as u64,
        erased_value: 0xFF,
    }
}

fn config() -> CounterConfig {
    CounterConfig {
        checkpoint_every: 8,
        log: log::Config {
            policy: log::Policy::StopAtCorruption,
            ..CounterConfig::default().log
        },
    }
}

/// Batches of increments: enough to fill five segments (the ring of four wraps), capped.
fn plan(geometry: Geometry) -> Vec<Vec<u64>> {
    let frame = bedrock::frame::padded_len(1, geometry.write_size as usize);
    let per_segment = geometry.erase_size as usize / frame;
    let increments = (per_segment * 5 + 5).min(INCREMENTS_MAX);
    let sizes = [1usize, 3, 1, 2, 5, 1, 4];
    let mut batches = Vec::new();
    let mut next = 1u64;
    let mut index = 0;
    while (next as usize) <= increments {
        let size = sizes[index % sizes.len()];
        batches.push((next..next + size as u64).collect());
        next += size as u64;
        index += 1;
    }
    batches
}

/// What the workload got acknowledged and what it tried.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    acknowledged: u64,
    attempted: u64,
}

/// Opens the counter and runs the batches; stops at the first error (a power cut).
fn workload(storage: &mut SimStorage, batches: &[Vec<u64>], progress: &mut Progress) {
    let Ok((mut counter, _)) = Counter::open(&mut *storage, vec![0u8; 1024], config()) else {
        return;
    };
    progress.acknowledged = counter.value();
    progress.attempted = progress.attempted.max(counter.value());
    let mut staged = counter.value();
    for batch in batches {
        for &by in batch {
            // The increment in flight counts as attempted: its record may land whole even
            // though the call reports the power cut.
            staged += by;
            progress.attempted = staged;
            if counter.stage(by).is_err() {
                return;
            }
        }
        match counter.commit() {
            Ok(value) => progress.acknowledged = value,
            Err(_) => return,
        }
    }
}

/// Recovers after a cut and checks the bounds; returns the recovered value.
fn check_recovery(storage: &mut SimStorage, progress: Progress, context: &str) -> u64 {
    let (counter, recovery) = Counter::open(&mut *storage, vec![0u8; 1024], config())
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error:?}"));
    let value = counter.value();
    assert!(
        recovery.corruption.is_none(),
        "{context}: a crash was reported as corruption: {recovery:?}"
    );
    assert!(
        value >= progress.acknowledged && value <= progress.attempted,
        "{context}: recovered {value}, acknowledged {}, attempted {}",
        progress.acknowledged,
        progress.attempted
    );
    value
}

/// Runs one geometry's enumeration; returns the number of crash points checked.
fn enumerate(write_size: u32, erase_size: u32) -> u64 {
    let geometry = geometry(write_size, erase_size);
    let batches = plan(geometry);
    let mut dry = SimStorage::new(geometry, 1).unwrap();
    dry.record_ops(true);
    let mut full = Progress::default();
    workload(&mut dry, &batches, &mut full);
    let total: u64 = batches.iter().flatten().sum();
    assert_eq!(
        full.acknowledged, total,
        "the workload completes without cuts"
    );
    let ops = dry.recorded_ops().to_vec();
    let mut rng = SimRng::new(u64::from(write_size) << 32 | u64::from(erase_size));
    let mut checked = 0;
    for op in &ops {
        for prefix in op.crash_points(write_size as u64) {
            let context =
                format!("geometry {write_size}/{erase_size}, op {op:?}, torn at {prefix}");
            let mut storage = SimStorage::new(geometry, 1).unwrap();
            storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
            let mut progress = Progress::default();
            workload(&mut storage, &batches, &mut progress);
            storage.reboot();
            let value = check_recovery(&mut storage, progress, &context);
            // Recovery and the first appends after it can be cut too; pick one point.
            let second_cut = storage.ops_done() + rng.below(12);
            storage.set_power_cut_at(second_cut, TornSpec::Random);
            let mut again = Progress {
                acknowledged: value,
                attempted: value,
            };
            workload(&mut storage, &[vec![1000], vec![2000, 3000]], &mut again);
            storage.clear_power_cut();
            storage.reboot_with(CrashMode::Random);
            let context = format!("{context}, second cut at op {second_cut}");
            let value = check_recovery(&mut storage, again, &context);
            // Whatever happened, the counter keeps working and the next reopen is clean.
            let (mut counter, _) = Counter::open(&mut storage, vec![0u8; 1024], config()).unwrap();
            assert_eq!(counter.incr(7).unwrap(), value + 7, "{context}");
            drop(counter);
            let (counter, recovery) =
                Counter::open(&mut storage, vec![0u8; 1024], config()).unwrap();
            assert_eq!(counter.value(), value + 7, "{context}");
            assert!(recovery.is_clean(), "{context}: {recovery:?}");
            checked += 1;
        }
    }
    println!(
        "crash points: geometry write {write_size:>3} / erase {erase_size:>6}: {checked:>6} points over {} operations, {} increments",
        ops.len(),
        batches.iter().flatten().count()
    );
    checked
}

#[test]
fn every_crash_point_recovers_between_acknowledged_and_attempted() {
    let total = sum_in_parallel(
        GEOMETRIES
            .iter()
            .map(|&(write, erase)| move || enumerate(write, erase))
            .collect(),
    );
    println!("crash points checked in all: {total}");
    assert!(total >= 10_000, "only {total} crash points");
}
