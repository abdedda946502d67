//! Seeded simulation of the durable counter under storage faults: power cuts at random
//! operations (unsynced writes kept, dropped or torn at random), write, erase and sync errors.
//! Each seed replays one run exactly; a failing seed is printed and becomes a regression test.
//!
//! Invariants after every recovery: the value is at least the last acknowledged value and at
//! most the last attempted one; a crash or IO error is never reported as mid-log corruption; a
//! poisoned counter acknowledges nothing.

use bedrock::counter::{Counter, CounterConfig, CounterError};
use bedrock::storage::Geometry;
use bedrock_sim::{CrashMode, SimFaults, SimRng, SimStorage, TornSpec};

const SEEDS: u64 = 1000;
const GEOMETRIES: [(u32, u32); 5] = [(1, 1024), (4, 1024), (8, 2048), (32, 4096), (256, 4096)];

struct Run {
    rng: SimRng,
    storage: SimStorage,
    acknowledged: u64,
    attempted: u64,
    recoveries: u32,
    torn_tails: u32,
}

fn config(rng: &mut SimRng) -> CounterConfig {
    CounterConfig {
        checkpoint_every: 1 + rng.below(20) as u32,
        log: CounterConfig::default().log,
    }
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let (write_size, erase_size) = GEOMETRIES[rng.below(GEOMETRIES.len() as u64) as usize];
        let geometry = Geometry {
            read_size: 1,
            write_size,
            erase_size,
            capacity: (3 + rng.below(4)) * erase_size as u64,
            erased_value: if rng.chance(0.5) { 0xFF } else { 0x00 },
        };
        let faults = SimFaults {
            write_error_rate: 0.002,
            erase_error_rate: 0.01,
            sync_error_rate: 0.01,
            bit_flip_rate: 0.0,
        };
        let storage = SimStorage::new(geometry, seed).unwrap().with_faults(faults);
        Self {
            rng,
            storage,
            acknowledged: 0,
            attempted: 0,
            recoveries: 0,
            torn_tails: 0,
        }
    }

    /// Opens the counter, checks the invariants, then increments until an error or the end of
    /// this life. Returns false when the counter could not even be opened (a fault during open).
    fn life(&mut self, seed: u64) -> bool {
        let config = config(&mut self.rng);
        let cut = self.storage.ops_done() + 1 + self.rng.below(400);
        self.storage.set_power_cut_at(cut, TornSpec::Random);
        let opened = Counter::open(&mut self.storage, vec![0u8; 600], config);
        let Ok((mut counter, recovery)) = opened else {
            return false;
        };
        self.recoveries += 1;
        self.torn_tails += u32::from(recovery.torn_tail.is_some());
        let value = counter.value();
        assert!(recovery.corruption.is_none(), "seed {seed}: {recovery:?}");
        assert!(
            value >= self.acknowledged && value <= self.attempted,
            "seed {seed}: recovered {value}, acknowledged {}, attempted {}",
            self.acknowledged,
            self.attempted
        );
        self.acknowledged = value;
        self.attempted = value;
        let mut staged = value;
        for _ in 0..self.rng.below(300) {
            let batch = 1 + self.rng.below(6);
            for _ in 0..batch {
                let by = 1 + self.rng.below(1000);
                staged += by;
                self.attempted = staged;
                if counter.stage(by).is_err() {
                    return true;
                }
            }
            match counter.commit() {
                Ok(value) => self.acknowledged = value,
                Err(CounterError::Sync(_)) => {
                    assert!(
                        counter.commit().is_err(),
                        "seed {seed}: poisoned counter acknowledged"
                    );
                    return true;
                }
                Err(_) => return true,
            }
        }
        true
    }

    fn crash(&mut self) {
        self.storage.clear_power_cut();
        self.storage.crash_with(CrashMode::Random);
    }
}

#[test]
fn the_counter_survives_seeded_power_cuts_and_io_errors() {
    let (mut recoveries, mut torn_tails, mut failed_opens) = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut run = Run::new(seed);
        for _ in 0..8 {
            if !run.life(seed) {
                failed_opens += 1;
            }
            run.crash();
        }
        // A last life without faults must open and see everything acknowledged.
        run.storage.set_faults(SimFaults::default());
        run.storage.clear_power_cut();
        let (mut counter, recovery) =
            Counter::open(&mut run.storage, vec![0u8; 600], CounterConfig::default()).unwrap();
        assert!(recovery.corruption.is_none(), "seed {seed}");
        assert!(
            counter.value() >= run.acknowledged && counter.value() <= run.attempted,
            "seed {seed}"
        );
        let value = counter.value();
        let next = counter.incr(1);
        assert_eq!(
            next,
            Ok(value + 1),
            "seed {seed}: {recovery:?}, free {}",
            counter.log().free_segments()
        );
        recoveries += run.recoveries;
        torn_tails += run.torn_tails;
    }
    println!(
        "sim faults: {SEEDS} seeds, {recoveries} recoveries checked, {torn_tails} torn tails truncated, {failed_opens} opens failed by injected faults"
    );
    assert!(torn_tails > 0 && recoveries > SEEDS as u32);
}

#[test]
fn silent_bit_flips_never_raise_the_value_and_losses_are_reported() {
    let mut reported = 0;
    for seed in 0..200u64 {
        let mut rng = SimRng::new(seed);
        let geometry = Geometry {
            read_size: 1,
            write_size: 8,
            erase_size: 1024,
            capacity: 4096,
            erased_value: 0xFF,
        };
        let faults = SimFaults {
            bit_flip_rate: 0.01,
            ..SimFaults::default()
        };
        let mut storage = SimStorage::new(geometry, seed).unwrap().with_faults(faults);
        let (mut counter, _) =
            Counter::open(&mut storage, vec![0u8; 600], config(&mut rng)).unwrap();
        let mut acknowledged = 0;
        for _ in 0..100 {
            match counter.incr(1 + rng.below(10)) {
                Ok(value) => acknowledged = value,
                Err(_) => break,
            }
        }
        drop(counter);
        storage.set_faults(SimFaults::default());
        let (counter, recovery) =
            Counter::open(&mut storage, vec![0u8; 600], CounterConfig::default()).unwrap();
        assert!(counter.value() <= acknowledged, "seed {seed}");
        if counter.value() < acknowledged {
            assert!(
                !recovery.is_clean(),
                "seed {seed}: silent loss {recovery:?}"
            );
            reported += 1;
        }
    }
    println!(
        "sim bit flips: 200 seeds, {reported} runs lost acknowledged increments and reported it"
    );
}
