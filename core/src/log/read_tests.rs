// Dropping a log in these tests marks where a process would stop; the borrow ends there.
#![allow(clippy::drop_non_drop)]

use super::*;
use crate::storage::RamStorage;
use proptest::prelude::*;

const SIZE: usize = 4096;
type Ram = RamStorage<SIZE>;
type TestLog<'a> = Log<&'a mut Ram, [u8; 256]>;

fn ram() -> Ram {
    RamStorage::new(8, 512, 0xFF).unwrap()
}

/// Opens the log and records the (sequence, position, first payload byte) of every frame.
fn open(storage: &mut Ram) -> (TestLog<'_>, [(u64, Position, u8); 64], usize) {
    let mut seen = [(
        0,
        Position {
            epoch: 0,
            offset: 0,
        },
        0,
    ); 64];
    let mut count = 0;
    let config = Config {
        payload_max: 32,
        ..Config::default()
    };
    let (log, _) = Log::open(storage, [0u8; 256], config, |entry| {
        seen[count] = (entry.sequence, entry.position, entry.payload[0]);
        count += 1;
        Ok::<(), ()>(())
    })
    .unwrap();
    (log, seen, count)
}

fn append(log: &mut TestLog<'_>, byte: u8) -> Appended {
    log.append(KIND_USER_MIN, |area| {
        area[..20].fill(byte);
        Ok(20)
    })
    .unwrap()
}

/// Every frame a cursor yields from the live start: (sequence, position, first byte).
fn walk_all(log: &mut TestLog<'_>) -> ([(u64, Position, u8); 64], usize) {
    let mut cursor = log.cursor();
    let mut seen = [(
        0,
        Position {
            epoch: 0,
            offset: 0,
        },
        0,
    ); 64];
    let mut count = 0;
    while let Some((frame, payload)) = log.read_next(&mut cursor).unwrap() {
        assert!(frame.kind >= KIND_USER_MIN);
        seen[count] = (frame.sequence, frame.position, payload[0]);
        count += 1;
    }
    (seen, count)
}

#[test]
fn every_appended_frame_reads_back_before_and_after_sync() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let mut receipts = [None; 10];
    for byte in 0..10u8 {
        receipts[byte as usize] = Some(append(&mut log, byte));
        // Still in the unsynced batch: readable all the same.
        let mut out = [0u8; 32];
        let receipt = receipts[byte as usize].unwrap();
        let frame = log.read(receipt.position, &mut out).unwrap();
        assert_eq!(
            (frame.sequence, frame.payload_len, out[0]),
            (receipt.sequence, 20, byte)
        );
    }
    log.sync().unwrap();
    for (byte, receipt) in receipts.iter().enumerate() {
        let receipt = receipt.unwrap();
        let (frame, payload) = log.read_ref(receipt.position).unwrap();
        assert_eq!(frame.sequence, receipt.sequence);
        assert_eq!(frame.kind, KIND_USER_MIN);
        assert!(payload.iter().all(|&b| b == byte as u8));
    }
    let (seen, count) = walk_all(&mut log);
    assert_eq!(count, 10);
    assert!((0..10).all(|i| seen[i].0 == i as u64 && seen[i].2 == i as u8));
}

#[test]
fn a_cursor_yields_after_reopen_exactly_what_recovery_yielded() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    for byte in 0..40u8 {
        append(&mut log, byte);
    }
    log.sync().unwrap();
    drop(log);
    let (mut log, recovered, count) = open(&mut storage);
    assert_eq!(count, 40);
    let (seen, walked) = walk_all(&mut log);
    assert_eq!(walked, 40);
    assert_eq!(&seen[..40], &recovered[..40]);
}

#[test]
fn reads_cross_segment_boundaries_and_next_points_at_the_following_frame() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let mut receipts = [None; 30];
    for byte in 0..30u8 {
        receipts[byte as usize] = Some(append(&mut log, byte));
    }
    let first_epoch = receipts[0].unwrap().position.epoch;
    let last_epoch = receipts[29].unwrap().position.epoch;
    assert!(last_epoch >= first_epoch + 2, "spans three segments");
    for pair in receipts.windows(2) {
        let (a, b) = (pair[0].unwrap(), pair[1].unwrap());
        let (frame, _) = log.read_ref(a.position).unwrap();
        if a.position.epoch == b.position.epoch {
            assert_eq!(frame.next, b.position);
        } else {
            assert_eq!(frame.next.epoch, b.position.epoch);
        }
    }
    let (seen, count) = walk_all(&mut log);
    assert_eq!(count, 30);
    assert!((0..30).all(|i| seen[i].1 == receipts[i].unwrap().position));
}

#[test]
fn a_released_position_fails_cleanly_even_once_overwritten() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let old = append(&mut log, 1);
    let mut last = old;
    while last.position.epoch < old.position.epoch + 2 {
        last = append(&mut log, 2);
    }
    log.sync().unwrap();
    log.release_before(last).unwrap();
    let mut out = [0u8; 32];
    assert_eq!(log.read(old.position, &mut out), Err(ReadError::Released));
    // Fill the ring until the old slot is reused: still refused, never other data.
    let mut byte = 3u8;
    while log.newest_epoch() < old.position.epoch + log.segments() {
        let appended = append(&mut log, byte);
        log.sync().unwrap();
        log.release_before(appended).unwrap();
        byte = byte.wrapping_add(1);
    }
    assert_eq!(log.read(old.position, &mut out), Err(ReadError::Released));
    let mut stale = log.segment_cursor(old.position.epoch).unwrap();
    assert_eq!(log.read_next(&mut stale), Err(ReadError::Released));
}

#[test]
fn a_segment_cursor_starts_at_the_live_start_when_a_release_cut_its_segment() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let mut frames = [append(&mut log, 0); 2];
    while frames[1].position.epoch == frames[0].position.epoch {
        frames = [frames[1], append(&mut log, 1)];
    }
    let kept = append(&mut log, 2);
    append(&mut log, 3);
    log.sync().unwrap();
    log.release_before(kept).unwrap();
    // The segment's header and first frame are released; the cursor starts at `kept`.
    let mut cursor = log.segment_cursor(kept.position.epoch).unwrap();
    let (frame, payload) = log.read_next(&mut cursor).unwrap().unwrap();
    assert_eq!(
        (frame.sequence, frame.position, payload[0]),
        (kept.sequence, kept.position, 2)
    );
    let (frame, _) = log.read_next(&mut cursor).unwrap().unwrap();
    assert_eq!(frame.sequence, kept.sequence + 1);
}

#[test]
fn the_end_of_the_log_is_reported_and_a_cursor_there_sees_later_appends() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let mut cursor = log.cursor();
    assert_eq!(log.read_next(&mut cursor).unwrap(), None);
    let first = append(&mut log, 7);
    let (frame, payload) = log.read_next(&mut cursor).unwrap().unwrap();
    assert_eq!((frame.position, payload[0]), (first.position, 7));
    assert_eq!(log.read_next(&mut cursor).unwrap(), None);
    let mut out = [0u8; 32];
    assert_eq!(log.read(frame.next, &mut out), Err(ReadError::End));
    assert_eq!(
        log.read(first.position, &mut out[..4]),
        Err(ReadError::BufferTooSmall { needed: 20 })
    );
}

#[test]
fn a_cursor_follows_recovery_past_a_torn_tail_into_the_fresh_segment() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    append(&mut log, 1);
    let torn = append(&mut log, 2);
    append(&mut log, 3);
    log.sync().unwrap();
    drop(log);
    storage.bytes_mut()[torn.position.offset as usize + 30] ^= 0x10;
    let (mut log, _, count) = open(&mut storage);
    assert_eq!(count, 1);
    append(&mut log, 4);
    log.sync().unwrap();
    drop(log);
    let (mut log, recovered, count) = open(&mut storage);
    let (seen, walked) = walk_all(&mut log);
    assert_eq!((walked, count), (2, 2));
    assert_eq!(&seen[..2], &recovered[..2]);
    assert_eq!((seen[0].2, seen[1].2), (1, 4));
}

#[test]
fn a_cursor_follows_appends_resumed_in_place_when_every_segment_was_live() {
    let mut storage = ram();
    let (mut log, _, _) = open(&mut storage);
    let mut count = 0u8;
    while log.free_segments() > 0 || count == 0 {
        count += 1;
        append(&mut log, count);
    }
    log.sync().unwrap();
    drop(log);
    let (mut log, _, _) = open(&mut storage);
    append(&mut log, 99);
    log.sync().unwrap();
    drop(log);
    let (mut log, recovered, recovered_count) = open(&mut storage);
    let (seen, walked) = walk_all(&mut log);
    assert_eq!(walked, recovered_count);
    assert_eq!(&seen[..walked], &recovered[..walked]);
    assert_eq!(seen[walked - 1].2, 99);
}

proptest! {
    #[test]
    fn arbitrary_positions_and_cursors_never_panic(
        epoch in any::<u32>(),
        offset in any::<u64>(),
        expected in any::<Option<u64>>(),
        small in 0u64..SIZE as u64,
        damage in proptest::collection::vec((0usize..SIZE, any::<u8>()), 0..8),
    ) {
        let mut storage = ram();
        let (mut log, _, _) = open(&mut storage);
        for byte in 0..25u8 {
            append(&mut log, byte);
        }
        log.sync().unwrap();
        drop(log);
        for (at, value) in damage {
            storage.bytes_mut()[at] ^= value;
        }
        let config = Config { payload_max: 32, ..Config::default() };
        let Ok((mut log, _)) = Log::open(&mut storage, [0u8; 256], config, |_| Ok::<(), ()>(()))
        else {
            return Ok(());
        };
        let mut out = [0u8; 32];
        for position in [Position { epoch, offset }, Position { epoch: epoch % 10, offset: small }] {
            let _ = log.read(position, &mut out);
            let mut cursor = Cursor::new(position, expected);
            for _ in 0..40 {
                match log.read_next(&mut cursor) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
}

#[test]
fn a_segment_cursor_skips_frames_behind_a_cut_in_a_segment_whose_header_is_stale() {
    let mut storage = ram();
    let config = Config {
        payload_max: 32,
        ..Config::default()
    };
    let (mut log, _) = Log::open(&mut storage, [0u8; 256], config, |_| Ok::<(), ()>(())).unwrap();
    let last = log.segments();
    // Fill every segment but the last, synced; then frames without a sync until one opens the
    // last segment: `a` is the last frame of the segment before, `b` the first of the last.
    while log.newest_epoch() < last - 1 {
        append(&mut log, 1);
        log.sync().unwrap();
    }
    let mut a = append(&mut log, 2);
    let mut b = append(&mut log, 3);
    while b.position.epoch != last {
        a = b;
        b = append(&mut log, 3);
    }
    append(&mut log, 4);
    log.sync().unwrap();
    drop(log);
    // `a` is torn: recovery cuts the log there and, every segment being live, resumes inside
    // the last segment, behind `b` (whose segment header carries `a`'s sequence + 1).
    storage.bytes_mut()[a.position.offset as usize + 30] ^= 0xFF;
    let (mut log, recovery) =
        Log::open(&mut storage, [0u8; 256], config, |_| Ok::<(), ()>(())).unwrap();
    assert!(recovery.torn_tail.is_some() && recovery.corruption.is_none());
    assert!(recovery.appends_in_place);
    let d = append(&mut log, 5);
    log.sync().unwrap();
    assert_eq!((d.sequence, d.position.epoch), (a.sequence, last));
    let mut cursor = log.segment_cursor(last).unwrap();
    let (frame, payload) = log.read_next(&mut cursor).unwrap().unwrap();
    assert_eq!(
        (frame.sequence, payload[0]),
        (d.sequence, 5),
        "the first live frame of the last segment is the one after the cut, not the stale b"
    );
}
