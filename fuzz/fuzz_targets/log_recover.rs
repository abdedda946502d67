//! Recovery of the segmented log over an arbitrary (or a real, then damaged) storage image.
//!
//! Properties: `Log::open` never panics; the frames it yields have user kinds, payloads within
//! `payload_max` and sequence numbers that increase by exactly one; if it opens, frames appended
//! and synced afterwards come back, last, from the next open. An undamaged real log recovers
//! cleanly with every frame since its last release.
#![no_main]

use bedrock::log::{AppendError, Appended, Log, OpenError, Recovery, KIND_USER_MIN};
use bedrock::storage::ContractError;
use bedrock_fuzz::{damage, fill_raw, payload_of, Input, Ram, Setup};
use libfuzzer_sys::fuzz_target;

/// A yielded frame.
struct Seen {
    sequence: u64,
    kind: u8,
    payload: Vec<u8>,
}

type Opened<'a> = (Log<&'a mut Ram, Vec<u8>>, Recovery, Vec<Seen>);

fn open<'a>(
    storage: &'a mut Ram,
    setup: &Setup,
) -> Result<Opened<'a>, OpenError<ContractError, ()>> {
    let payload_max = setup.config.payload_max as usize;
    let mut seen: Vec<Seen> = Vec::new();
    let (log, recovery) = Log::open(storage, setup.buffer(), setup.config, |entry| {
        assert!(entry.kind >= KIND_USER_MIN, "kind {} yielded", entry.kind);
        assert!(
            entry.payload.len() <= payload_max,
            "payload over payload_max"
        );
        if let Some(previous) = seen.last() {
            assert_eq!(
                Some(entry.sequence),
                previous.sequence.checked_add(1),
                "sequence numbers increase by one"
            );
        }
        seen.push(Seen {
            sequence: entry.sequence,
            kind: entry.kind,
            payload: entry.payload.to_vec(),
        });
        Ok(())
    })?;
    assert_eq!(recovery.frames, seen.len() as u64, "frames counted");
    assert_eq!(recovery.next_sequence, log.next_sequence());
    if let Some(last) = seen.last() {
        assert_eq!(Some(recovery.next_sequence), last.sequence.checked_add(1));
    }
    Ok((log, recovery, seen))
}

/// A real log written into `storage`: what must come back from it when it is not damaged.
struct Written {
    salt: u8,
    /// Frames from this sequence number on were never released.
    kept_from: u64,
    next_sequence: u64,
}

fn append(log: &mut Log<&mut Ram, Vec<u8>>, salt: u8, payload_max: usize) -> Option<Appended> {
    let sequence = log.next_sequence();
    let kind = KIND_USER_MIN + (sequence % 3) as u8;
    match log.append(kind, |area| {
        Ok(payload_of(sequence, salt, payload_max, area))
    }) {
        Ok(appended) => {
            assert_eq!(appended.sequence, sequence);
            Some(appended)
        }
        Err(AppendError::Full | AppendError::EpochsExhausted) => None,
        Err(error) => panic!("append failed: {error:?}"),
    }
}

fn write_log(storage: &mut Ram, setup: &Setup, input: &mut Input<'_>) -> Option<Written> {
    let (mut log, ..) = open(storage, setup).ok()?;
    let salt = input.byte();
    let frames = input.byte();
    let sync_every = 1 + input.byte() % 8;
    let release_every = input.byte() % 32;
    let payload_max = setup.config.payload_max as usize;
    let mut kept_from = 0;
    for count in 1..=frames {
        let Some(appended) = append(&mut log, salt, payload_max) else {
            break;
        };
        if count % sync_every == 0 {
            log.sync().expect("RAM syncs");
        }
        if release_every != 0 && count % release_every == 0 {
            log.sync().expect("RAM syncs");
            log.release_before(appended).expect("a synced frame");
            kept_from = appended.sequence;
        }
    }
    log.sync().expect("RAM syncs");
    Some(Written {
        salt,
        kept_from,
        next_sequence: log.next_sequence(),
    })
}

fn check_undamaged(written: &Written, recovery: &Recovery, seen: &[Seen], payload_max: usize) {
    assert!(
        recovery.is_clean(),
        "an undamaged log recovers cleanly: {recovery:?}"
    );
    assert_eq!(recovery.next_sequence, written.next_sequence);
    if written.next_sequence > written.kept_from {
        let first = seen.first().expect("unreleased frames come back");
        assert!(
            first.sequence <= written.kept_from,
            "every unreleased frame comes back"
        );
    }
    let mut area = vec![0; payload_max];
    for frame in seen {
        let len = payload_of(frame.sequence, written.salt, payload_max, &mut area);
        assert_eq!(frame.payload, area[..len], "payload of {}", frame.sequence);
        assert_eq!(frame.kind, KIND_USER_MIN + (frame.sequence % 3) as u8);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = Setup::read(&mut input);
    let payload_max = setup.config.payload_max as usize;
    let mut storage = setup.storage();
    let mut written = None;
    if setup.formatted {
        written = write_log(&mut storage, &setup, &mut input);
        if written.is_none() {
            return; // the configuration does not fit the storage
        }
        if damage(&mut storage, setup.erased_value, &mut input) > 0 {
            written = None;
        }
    } else {
        fill_raw(&mut storage, &mut input);
    }

    let Ok((mut log, recovery, seen)) = open(&mut storage, &setup) else {
        return;
    };
    if let Some(written) = &written {
        check_undamaged(written, &recovery, &seen, payload_max);
    }

    // Appends after recovery go to fresh space and come back.
    const SALT: u8 = 0xA5;
    let mut appended = Vec::new();
    for _ in 0..3 {
        match append(&mut log, SALT, payload_max) {
            Some(frame) => appended.push(frame.sequence),
            None => break,
        }
    }
    log.sync().expect("RAM syncs");
    drop(log);
    let (_, _, seen) = open(&mut storage, &setup)
        .unwrap_or_else(|error| panic!("reopen after {recovery:?} failed: {error:?}"));
    if appended.is_empty() {
        return;
    }
    assert!(seen.len() >= appended.len(), "appended frames come back");
    let tail = &seen[seen.len() - appended.len()..];
    let mut area = vec![0; payload_max];
    for (frame, &sequence) in tail.iter().zip(&appended) {
        assert_eq!(frame.sequence, sequence, "appended frames come back last");
        let len = payload_of(sequence, SALT, payload_max, &mut area);
        assert_eq!(frame.payload, area[..len], "payload of appended {sequence}");
    }
});
