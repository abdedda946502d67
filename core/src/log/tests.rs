// Dropping a log or counter in these tests marks where a process would stop; the borrow ends there.
#![allow(clippy::drop_non_drop)]

use super::*;
use crate::storage::RamStorage;

const SIZE: usize = 4096;
type Ram = RamStorage<SIZE>;

fn ram(write_size: u32) -> Ram {
    RamStorage::new(write_size, 512, 0xFF).unwrap()
}

fn config() -> Config {
    Config {
        segment_size: 0,
        payload_max: 32,
        policy: Policy::StopAtCorruption,
    }
}

/// Opens the log and collects the payloads it yields (first byte of each).
fn open(
    storage: &mut Ram,
    policy: Policy,
) -> (Log<&mut Ram, [u8; 256]>, Recovery, [u8; 64], usize) {
    let mut seen = [0u8; 64];
    let mut count = 0;
    let config = Config { policy, ..config() };
    let (log, recovery) = Log::open(storage, [0u8; 256], config, |entry| {
        seen[count] = entry.payload[0];
        count += 1;
        Ok::<(), ()>(())
    })
    .unwrap();
    (log, recovery, seen, count)
}

fn append<B: AsMut<[u8]>>(log: &mut Log<&mut Ram, B>, byte: u8) -> Appended {
    log.append(KIND_USER_MIN, |area| {
        area[..20].fill(byte);
        Ok(20)
    })
    .unwrap()
}

#[test]
fn frames_come_back_in_order_after_reopen() {
    let mut storage = ram(8);
    let (mut log, recovery, _, count) = open(&mut storage, Policy::Strict);
    assert_eq!(count, 0);
    assert!(recovery.is_clean());
    for byte in 1..=30 {
        append(&mut log, byte);
    }
    log.close().unwrap();
    let (log, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!(count, 30);
    assert!(seen[..30].iter().copied().eq(1..=30));
    assert!(recovery.is_clean());
    assert!(recovery.appends_in_place);
    assert_eq!(log.next_sequence(), 30);
}

#[test]
fn appends_continue_in_place_after_a_close_and_in_a_fresh_segment_after_a_crash() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let first = append(&mut log, 1);
    log.close().unwrap();
    let (mut log, recovery, ..) = open(&mut storage, Policy::Strict);
    assert!(recovery.appends_in_place);
    let second = append(&mut log, 2);
    assert_eq!(second.position.epoch, first.position.epoch);
    log.sync().unwrap();
    drop(log); // no close: as after a crash
    let (mut log, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!((count, &seen[..2]), (2, &[1, 2][..]));
    assert_eq!(recovery.segments, 1);
    assert!(recovery.is_clean());
    assert!(!recovery.appends_in_place);
    let third = append(&mut log, 3);
    assert_eq!(third.position.epoch, first.position.epoch + 1);
    log.sync().unwrap();
    drop(log);
    let (_, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!((count, &seen[..3]), (3, &[1, 2, 3][..]));
    assert!(recovery.is_clean());
}

#[test]
fn with_every_segment_live_a_crash_still_leaves_room_to_append() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let mut count = 0u8;
    while log.free_segments() > 0 || count == 0 {
        count += 1;
        append(&mut log, count);
    }
    log.sync().unwrap();
    drop(log); // a crash with all eight segments live and none released
    let (mut log, recovery, _, recovered) = open(&mut storage, Policy::Strict);
    assert_eq!(recovered, count as usize);
    assert!(
        recovery.appends_in_place,
        "no free segment: continue in place"
    );
    append(&mut log, 99);
    log.sync().unwrap();
    drop(log);
    let (_, recovery, seen, recovered) = open(&mut storage, Policy::Strict);
    assert_eq!(recovered, count as usize + 1);
    assert_eq!(seen[recovered - 1], 99);
    assert!(recovery.is_clean());
}

#[test]
fn a_damaged_last_frame_is_a_torn_tail_and_appends_go_to_a_fresh_segment() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    append(&mut log, 1);
    let last = append(&mut log, 2);
    log.sync().unwrap();
    drop(log);
    storage.bytes_mut()[last.position.offset as usize + 30] ^= 0x10;
    let (mut log, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!((count, seen[0]), (1, 1));
    let torn = recovery.torn_tail.expect("torn tail reported");
    assert_eq!(torn.expected_sequence, Some(1));
    assert_eq!(torn.position, last.position);
    let appended = append(&mut log, 3);
    // Fresh space: a freshly erased segment, never over the damaged frame.
    assert_eq!(appended.position.epoch, last.position.epoch + 1);
    log.sync().unwrap();
    drop(log);
    let (_, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!((count, &seen[..2]), (2, &[1, 3][..]));
    assert!(recovery.is_clean());
    assert_eq!(recovery.earlier_cuts, 1);
}

#[test]
fn damage_before_a_synced_frame_is_mid_log_corruption() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let first = append(&mut log, 1);
    log.sync().unwrap();
    append(&mut log, 2);
    append(&mut log, 3);
    log.sync().unwrap();
    drop(log);
    storage.bytes_mut()[first.position.offset as usize + 26] ^= 0x01;
    let mut copy = ram(8);
    copy.bytes_mut().copy_from_slice(storage.bytes_mut());

    let refused = Log::open(
        &mut copy,
        [0u8; 256],
        Config {
            policy: Policy::Strict,
            ..config()
        },
        |_| Ok::<(), ()>(()),
    );
    let Err(OpenError::Corrupted(damage)) = refused else {
        panic!("strict policy must refuse to open");
    };
    assert_eq!(damage.frames_skipped, 2);

    let (mut log, recovery, _, count) = open(&mut storage, Policy::StopAtCorruption);
    assert_eq!(count, 0, "nothing before the damage");
    let corruption = recovery.corruption.expect("corruption reported");
    assert_eq!(corruption.position, first.position);
    assert_eq!(corruption.frames_skipped, 2);
    append(&mut log, 4);
    log.sync().unwrap();
    drop(log);
    let (_, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!(
        (count, seen[0]),
        (1, 4),
        "the new frame is there, nothing behind the cut"
    );
    assert!(recovery.is_clean());
    assert_eq!(recovery.earlier_cuts, 1);
}

#[test]
fn an_unsynced_frame_after_damage_does_not_prove_it_durable() {
    let mut storage = ram(8);
    // A buffer with no room to batch, so that appended frames reach the storage unsynced.
    let (mut log, _) = Log::open(&mut storage, [0u8; 128], config(), |_| Ok::<(), ()>(())).unwrap();
    append(&mut log, 1);
    log.sync().unwrap();
    let lost = append(&mut log, 2);
    append(&mut log, 3);
    drop(log); // never synced: a crash may lose the first and keep the second
    storage.bytes_mut()[lost.position.offset as usize] = 0x00;
    let (_, recovery, _, count) = open(&mut storage, Policy::Strict);
    assert_eq!(count, 1);
    let torn = recovery.torn_tail.expect("a torn tail, not corruption");
    assert_eq!(torn.frames_skipped, 1);
}

#[test]
fn released_segments_are_reused_and_the_log_never_fills() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    assert_eq!(log.segments(), 8);
    let mut byte = 0u8;
    for _ in 0..400 {
        byte = byte.wrapping_add(1);
        let appended = append(&mut log, byte);
        log.sync().unwrap();
        // Every frame is a "checkpoint": everything before it may go.
        log.release_before(appended).unwrap();
    }
    drop(log);
    let (_, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert!(recovery.is_clean());
    assert!(count < 400 && count > 0);
    assert_eq!(seen[count - 1], byte);
}

#[test]
fn without_releases_the_log_fills_and_says_so() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let mut result = Ok(());
    for byte in 0..=255u8 {
        result = log
            .append(KIND_USER_MIN, |area| {
                area[..20].fill(byte);
                Ok(20)
            })
            .map(|_| ());
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(AppendError::Full));
}

#[test]
fn a_release_of_a_position_that_is_not_a_frame_is_refused() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let appended = append(&mut log, 1);
    let future = Appended {
        sequence: appended.sequence + 1,
        ..appended
    };
    assert_eq!(log.release_before(future), Err(SyncError::NotDurable));
    let header = Appended {
        position: Position {
            offset: log.layout.slot_start(appended.position.epoch),
            ..appended.position
        },
        ..appended
    };
    assert_eq!(log.release_before(header), Err(SyncError::NotDurable));
    assert_eq!(log.release_before(appended), Ok(()));
}

#[test]
fn a_log_written_with_another_layout_is_refused() {
    let mut storage = ram(8);
    let wide = Config {
        segment_size: 1024,
        ..config()
    };
    let (mut log, _) = Log::open(&mut storage, [0u8; 256], wide, |_| Ok::<(), ()>(())).unwrap();
    append(&mut log, 1);
    log.sync().unwrap();
    drop(log);
    let result = Log::open(&mut storage, [0u8; 256], config(), |_| Ok::<(), ()>(()));
    assert!(matches!(
        result,
        Err(OpenError::LayoutMismatch {
            segment_size: 1024,
            write_size: 8,
            ..
        })
    ));
}

#[test]
fn a_log_written_with_larger_frames_than_configured_is_refused() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    append(&mut log, 1);
    log.sync().unwrap();
    drop(log);
    let small = Config {
        payload_max: 16,
        ..config()
    };
    let result = Log::open(&mut storage, [0u8; 256], small, |_| Ok::<(), ()>(()));
    assert!(matches!(
        result,
        Err(OpenError::LayoutMismatch {
            payload_max: 32,
            ..
        })
    ));
}

#[test]
fn frames_with_sequence_numbers_no_writer_produces_are_refused() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let appended = append(&mut log, 1);
    log.sync().unwrap();
    drop(log);
    // Rewrite the frame with sequence 2^64 - 1 and a valid checksum.
    let offset = appended.position.offset as usize;
    let mut frame = [0u8; 64];
    let header = frame::Header {
        kind: KIND_USER_MIN,
        sequence: u64::MAX,
        epoch: appended.position.epoch,
        unsynced: 0,
    };
    let len = frame::emit(&mut frame, header, 8, 0xFF, |area| {
        area[..20].fill(1);
        Ok(20)
    })
    .unwrap();
    storage.bytes_mut()[offset..offset + len].copy_from_slice(&frame[..len]);
    let (mut log, recovery, _, count) = open(&mut storage, Policy::StopAtCorruption);
    assert_eq!(count, 0);
    assert!(!recovery.is_clean());
    append(&mut log, 2);
    log.sync().unwrap();
}

#[test]
fn a_buffer_too_small_for_one_frame_is_refused() {
    let mut storage = ram(8);
    let result = Log::open(&mut storage, [0u8; 16], config(), |_| Ok::<(), ()>(()));
    assert!(matches!(
        result,
        Err(OpenError::Config(ConfigError::BufferTooSmall))
    ));
}

#[test]
fn garbage_everywhere_opens_as_an_empty_log() {
    let mut storage = ram(8);
    for (index, byte) in storage.bytes_mut().iter_mut().enumerate() {
        *byte = (index * 7 + 3) as u8;
    }
    let (mut log, recovery, _, count) = open(&mut storage, Policy::Strict);
    assert_eq!(count, 0);
    assert!(recovery.is_clean());
    append(&mut log, 9);
    log.sync().unwrap();
    drop(log);
    let (_, recovery, seen, count) = open(&mut storage, Policy::Strict);
    assert_eq!((count, seen[0]), (1, 9));
    assert!(recovery.is_clean());
}

#[test]
fn a_damaged_header_of_the_newest_segment_is_reported_not_ignored() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let mut last = append(&mut log, 0);
    for byte in 1..40 {
        last = append(&mut log, byte);
        log.sync().unwrap();
    }
    drop(log);
    assert!(last.position.epoch >= 3);
    let header = (last.position.epoch % 8) as usize * 512;
    storage.bytes_mut()[header + 9] ^= 0x02;
    let (_, recovery, _, count) = open(&mut storage, Policy::StopAtCorruption);
    let corruption = recovery
        .corruption
        .expect("lost synced frames are reported");
    assert_eq!(corruption.cause, DamageCause::MissingSegment);
    assert_eq!(corruption.position.epoch, last.position.epoch);
    assert!(count < 40);
}

#[test]
fn a_crash_with_every_segment_live_and_the_newest_nearly_full_still_lets_a_release_through() {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    // Fill every segment, the newest up to the point where the next frame needs a new one.
    let mut last = append(&mut log, 1);
    let mut count = 1u8;
    loop {
        match log.append(KIND_USER_MIN, |area| {
            area[..20].fill(count + 1);
            Ok(20)
        }) {
            Ok(appended) => {
                last = appended;
                count += 1;
            }
            Err(AppendError::Full) => break,
            Err(error) => panic!("{error:?}"),
        }
    }
    log.sync().unwrap();
    drop(log); // a crash: every segment live, the newest without room for a frame
    let (mut log, recovery, _, recovered) = open(&mut storage, Policy::Strict);
    assert_eq!(recovered, count as usize);
    assert!(recovery.appends_in_place);
    // The application releases everything before its last frame: the next append must record
    // the release in the newest segment, erase the oldest and go on there.
    log.release_before(last).unwrap();
    append(&mut log, 200);
    log.sync().unwrap();
    assert!(!log.is_poisoned());
    drop(log);
    let (_, recovery, seen, recovered) = open(&mut storage, Policy::Strict);
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(seen[recovered - 1], 200);
    assert_eq!(
        seen[recovered - 2],
        count,
        "the released log starts at the last frame"
    );
}

/// A storage that counts the bytes and calls of reads.
struct CountingReads<'a, S> {
    inner: &'a mut S,
    bytes: u64,
    reads: u64,
}

impl<S: Storage> Storage for CountingReads<'_, S> {
    type Error = S::Error;

    fn geometry(&self) -> crate::storage::Geometry {
        self.inner.geometry()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.bytes += buf.len() as u64;
        self.reads += 1;
        self.inner.read(offset, buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        self.inner.write(offset, data)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        self.inner.erase(offset, len)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.inner.sync()
    }
}

#[test]
fn recovery_reads_a_stale_slot_outside_the_live_range_by_its_header_only() {
    // 64 slots of 1 KiB, frames of up to 512 bytes: probing a slot with the whole span where a
    // segment's first frames would be (one control frame and one largest frame) costs far more
    // than reading its header.
    const BIG: usize = 64 * 1024;
    const BUFFER: usize = 1024;
    let mut storage = RamStorage::<BIG>::new(8, 1024, 0xFF).unwrap();
    let config = Config {
        segment_size: 0,
        payload_max: 512,
        policy: Policy::Strict,
    };
    let nothing = |_: Entry<'_>| Ok::<(), ()>(());
    let (mut log, _) = Log::open(&mut storage, [0u8; BUFFER], config, nothing).unwrap();
    // Wrap the ring a few times, releasing as we go: every slot but the live ones ends up
    // holding a stale segment that opens with a valid header.
    let mut last = None;
    for byte in 0..3000u32 {
        let appended = log
            .append(KIND_USER_MIN, |area| {
                area[..20].fill(byte as u8);
                Ok(20)
            })
            .unwrap();
        log.sync().unwrap();
        log.release_before(appended).unwrap();
        last = Some(appended);
    }
    assert!(last.unwrap().position.epoch > 2 * log.segments());
    log.close().unwrap();

    let mut counting = CountingReads {
        inner: &mut storage,
        bytes: 0,
        reads: 0,
    };
    let mut yielded = None;
    let (log, recovery) = Log::open(&mut counting, [0u8; BUFFER], config, |entry| {
        yielded = Some(entry.payload[0]);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert!(recovery.is_clean(), "{recovery:?}");
    assert!(recovery.appends_in_place);
    assert_eq!(yielded, Some(2999u32 as u8));
    let layout = log.layout;
    let live = log.newest_epoch - log.start.epoch + 1;
    let outside = u64::from(layout.segments - live);
    drop(log);
    let segments = u64::from(layout.segments);
    assert!(
        outside >= segments - 2,
        "{outside} slots outside the live range"
    );
    let header_pass = segments * layout.control_len as u64;
    let probe = (layout.control_len + layout.frame_max) as u64;
    // Probing every outside slot (but one, which the walk's last read may already hold) with
    // the whole probe on top of the header pass: what recovery read before it sized its reads.
    let whole_probes = header_pass + (outside - 1) * probe;
    assert!(
        counting.bytes < whole_probes,
        "recovery read {} bytes in {} reads; whole probes alone read {whole_probes}",
        counting.bytes,
        counting.reads
    );
    // What it needs: the header pass, one header per outside slot, and the live segments, each
    // read whole plus at most one buffer-sized read reaching past its end.
    let walk = u64::from(live) * (layout.segment_size + BUFFER as u64);
    let needed = header_pass + outside * layout.control_len as u64 + walk;
    assert!(
        counting.bytes <= needed,
        "read {} > {needed}",
        counting.bytes
    );
}

/// Writes frames, synced one by one, until the newest segment holds four, then erases its slot
/// from the start up to `erased_to`, writes a zero byte at `marker_at` (both relative to the
/// slot's start) and reopens. Returns what recovery found, the probe's length (one control
/// frame and one largest frame) and where the erased segment's first frame was.
fn reopen_with_newest_start_erased(
    erased_to: impl Fn(u64, u64) -> u64,
    marker_at: impl Fn(u64) -> Option<u64>,
) -> (Recovery, u64, u32) {
    let mut storage = ram(8);
    let (mut log, ..) = open(&mut storage, Policy::Strict);
    let layout = log.layout;
    let probe = (layout.control_len + layout.frame_max) as u64;
    let mut first = append(&mut log, 0);
    let mut in_segment = 1;
    for byte in 1.. {
        let appended = append(&mut log, byte);
        log.sync().unwrap();
        if appended.position.epoch != first.position.epoch {
            (first, in_segment) = (appended, 0);
        }
        in_segment += 1;
        if appended.position.epoch >= 3 && in_segment == 4 {
            break;
        }
    }
    drop(log);
    let epoch = first.position.epoch;
    let slot = layout.slot_start(epoch);
    let first_frame = first.position.offset - slot;
    assert!(first_frame <= layout.control_len as u64);
    let bytes = storage.bytes_mut();
    let erased_to = erased_to(first_frame, probe);
    bytes[slot as usize..(slot + erased_to) as usize].fill(0xFF);
    if let Some(at) = marker_at(probe) {
        bytes[(slot + at) as usize] = 0;
    }
    let (_, recovery, ..) = open(&mut storage, Policy::StopAtCorruption);
    (recovery, probe, epoch)
}

#[test]
fn a_newest_header_that_reads_erased_is_found_by_the_bytes_where_its_first_frames_are() {
    // The header frame erased: its first frame still shows, and its synced frames prove the
    // loss.
    let (recovery, _, epoch) = reopen_with_newest_start_erased(|first, _| first, |_| None);
    let corruption = recovery
        .corruption
        .expect("lost synced frames are reported");
    assert_eq!(corruption.cause, DamageCause::MissingSegment);
    assert_eq!(corruption.position.epoch, epoch);
    // Erased over the whole probe: the slot is passed over (SPEC 4.6, step 4), even though
    // frames follow further on.
    let (recovery, probe, _) = reopen_with_newest_start_erased(|_, probe| probe, |_| None);
    assert!(probe < 512 - 48, "frames remain after the probe");
    assert!(recovery.is_clean(), "{recovery:?}");
    // One written byte at the probe's last byte, past the first read: searched, and found.
    let (recovery, ..) = reopen_with_newest_start_erased(|_, probe| probe, |probe| Some(probe - 1));
    let corruption = recovery
        .corruption
        .expect("lost synced frames are reported");
    assert_eq!(corruption.position.epoch, epoch);
    // The same byte just after the probe: passed over.
    let (recovery, ..) = reopen_with_newest_start_erased(|_, probe| probe, Some);
    assert!(recovery.is_clean(), "{recovery:?}");
}
