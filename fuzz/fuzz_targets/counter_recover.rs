//! Recovery of the durable counter over an arbitrary (or a real, then damaged) storage image.
//!
//! Properties: `Counter::open` never panics; if it opens, an acknowledged `incr(1)` returns the
//! recovered value plus one and survives a reopen; an undamaged counter recovers exactly the sum
//! of its acknowledged increments.
#![no_main]

use bedrock::counter::{Counter, CounterConfig, CounterError};
use bedrock::log::AppendError;
use bedrock_fuzz::{damage, fill_raw, Input, Ram, Setup};
use libfuzzer_sys::fuzz_target;

fn config(setup: &Setup, checkpoint_every: u32) -> CounterConfig {
    CounterConfig {
        checkpoint_every,
        log: setup.config,
    }
}

/// Writes a real counter: returns its acknowledged value, or `None` if the setup does not fit.
fn write_counter(
    storage: &mut Ram,
    setup: &Setup,
    input: &mut Input<'_>,
    checkpoint_every: u32,
) -> Option<u64> {
    let (mut counter, _) =
        Counter::open(storage, setup.buffer(), config(setup, checkpoint_every)).ok()?;
    let increments = input.byte();
    let stage_per_commit = 1 + input.byte() % 4;
    let scale = input.byte();
    for count in 1..=increments {
        let by = (u64::from(count) * u64::from(scale)) << (scale % 48);
        match counter.stage(by) {
            Ok(_) => {}
            Err(CounterError::Overflow | CounterError::Append(AppendError::Full)) => break,
            Err(error) => panic!("stage failed: {error:?}"),
        }
        if count % stage_per_commit == 0 {
            counter.commit().expect("RAM syncs");
        }
    }
    Some(counter.commit().expect("RAM syncs"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = Setup::read(&mut input);
    let checkpoint_every = 1 + u32::from(input.byte() % 64);
    let mut storage = setup.storage();
    let mut expected = None;
    if setup.formatted {
        expected = write_counter(&mut storage, &setup, &mut input, checkpoint_every);
        if expected.is_none() {
            return;
        }
        if damage(&mut storage, setup.erased_value, &mut input) > 0 {
            expected = None;
        }
    } else {
        fill_raw(&mut storage, &mut input);
    }

    let counter_config = config(&setup, checkpoint_every);
    let Ok((mut counter, recovery)) = Counter::open(&mut storage, setup.buffer(), counter_config)
    else {
        return;
    };
    let value = counter.value();
    if let Some(expected) = expected {
        assert!(
            recovery.is_clean(),
            "an undamaged counter recovers cleanly: {recovery:?}"
        );
        assert_eq!(value, expected, "an undamaged counter recovers its value");
    }
    let incremented = match counter.incr(1) {
        Ok(incremented) => incremented,
        Err(CounterError::Overflow) => {
            assert_eq!(value, u64::MAX);
            return;
        }
        Err(CounterError::Append(AppendError::Full | AppendError::EpochsExhausted)) => return,
        Err(error) => panic!("incr after {recovery:?} failed: {error:?}"),
    };
    assert_eq!(Some(incremented), value.checked_add(1));
    drop(counter);
    let (counter, again) = Counter::open(&mut storage, setup.buffer(), counter_config)
        .unwrap_or_else(|error| panic!("reopen after {recovery:?} failed: {error:?}"));
    assert_eq!(
        counter.value(),
        incremented,
        "after {recovery:?}, reopen found {again:?}"
    );
});
