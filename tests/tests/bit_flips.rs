//! Bit flips anywhere in a counter's storage never yield a wrong value silently: either the
//! recovered value is the true one, or recovery reports the damage (and never exceeds the truth).

use bedrock::counter::{Counter, CounterConfig};
use bedrock::log::{self, OpenError};
use bedrock::storage::Geometry;
use bedrock_sim::{SimRng, SimStorage};

fn config(policy: log::Policy) -> CounterConfig {
    CounterConfig {
        checkpoint_every: 16,
        log: log::Config {
            policy,
            ..CounterConfig::default().log
        },
    }
}

/// A storage holding a counter after `increments` synced increments, and its value.
fn written(write_size: u32, erase_size: u32, increments: u64) -> (SimStorage, u64) {
    let geometry = Geometry {
        read_size: 1,
        write_size,
        erase_size,
        capacity: 4 * erase_size as u64,
        erased_value: 0xFF,
    };
    let mut storage = SimStorage::new(geometry, 7).unwrap();
    let (mut counter, _) =
        Counter::open(&mut storage, vec![0u8; 512], config(log::Policy::Strict)).unwrap();
    for by in 1..=increments {
        counter.incr(by).unwrap();
    }
    let value = counter.value();
    drop(counter);
    (storage, value)
}

fn flips(write_size: u32, erase_size: u32, increments: u64, trials: u32) -> (u32, u32) {
    let (pristine, truth) = written(write_size, erase_size, increments);
    let capacity = pristine.durable_image().len() as u64;
    let mut rng = SimRng::new(u64::from(write_size) * 1_000_003 + u64::from(erase_size));
    let (mut reported, mut harmless) = (0, 0);
    for trial in 0..trials {
        let mut storage = pristine.clone();
        let offset = rng.below(capacity);
        let bit = rng.below(8) as u32;
        storage.flip_bit(offset, bit).unwrap();
        let context = format!(
            "geometry {write_size}/{erase_size}, trial {trial}, flip at {offset} bit {bit}"
        );

        let mut copy = storage.clone();
        let opened = Counter::open(
            &mut copy,
            vec![0u8; 512],
            config(log::Policy::StopAtCorruption),
        );
        let (counter, recovery) = opened.unwrap_or_else(|error| panic!("{context}: {error:?}"));
        let value = counter.value();
        assert!(
            value <= truth,
            "{context}: {value} exceeds the truth {truth}"
        );
        if value == truth && recovery.is_clean() {
            harmless += 1;
        } else {
            assert!(
                !recovery.is_clean(),
                "{context}: wrong value {value} (truth {truth}) reported clean"
            );
            reported += 1;
        }

        // The strict policy either opens with a value that is never above the truth, or refuses.
        match Counter::open(&mut storage, vec![0u8; 512], config(log::Policy::Strict)) {
            Ok((counter, recovery)) => {
                assert!(recovery.corruption.is_none(), "{context}");
                assert!(counter.value() <= truth, "{context}");
                assert!(
                    counter.value() == truth || recovery.torn_tail.is_some(),
                    "{context}"
                );
            }
            Err(OpenError::Corrupted(_)) => {}
            Err(error) => panic!("{context}: unexpected error {error:?}"),
        }
    }
    println!(
        "bit flips: geometry {write_size:>3}/{erase_size:>5}: {trials} flips, {reported} detected and reported, {harmless} harmless (padding, erased or stale space)"
    );
    (reported, harmless)
}

#[test]
fn a_flipped_bit_is_detected_or_harmless_never_a_silent_wrong_value() {
    let mut reported = 0;
    for (write, erase, increments) in [(8, 2048, 150), (1, 4096, 120), (256, 4096, 50)] {
        reported += flips(write, erase, increments, 1500).0;
    }
    assert!(reported > 0, "some flips must land in live frames");
}

#[test]
fn bit_flips_in_every_byte_of_a_small_log_are_detected_or_harmless() {
    let (pristine, truth) = written(8, 1024, 40);
    let capacity = pristine.durable_image().len() as u64;
    for offset in 0..capacity {
        let mut storage = pristine.clone();
        storage.flip_bit(offset, (offset % 8) as u32).unwrap();
        let (counter, recovery) = Counter::open(
            &mut storage,
            vec![0u8; 512],
            config(log::Policy::StopAtCorruption),
        )
        .unwrap();
        let value = counter.value();
        assert!(
            (value == truth && recovery.is_clean()) || (value <= truth && !recovery.is_clean()),
            "flip at {offset}: value {value}, truth {truth}, {recovery:?}"
        );
    }
}
