//! The durable counter on a Cortex-M3, with power cut at every program of a fixed workload.
//!
//! A reference run counts the programs `W` of the workload. Then, for every cut index in
//! `0..W` and every torn prefix in [`TORN_PREFIXES`], on a freshly erased flash: power is cut
//! during that program (which lands only that prefix), the counter is recovered and checked
//! (acknowledged <= recovered <= attempted, the recovered value one the counter held, no
//! corruption reported), power is cut again during the first append after recovery (the torn
//! prefixes in rotation), the counter is recovered and checked again, then one increment must
//! succeed and survive a reopen that finds a clean log.
//!
//! Exit status 0 when every check passed, 1 on any failed check or panic.
#![no_std]
#![no_main]

use core::fmt::Debug;

use bedrock::counter::{Counter, CounterError};
use bedrock::log::{AppendError, Recovery, SyncError};
use bedrock_embedded::embedded_storage::nor_flash::NorFlash;
use bedrock_embedded::{NorFlashStorage, NorFlashStorageError, RamNorFlashError};
use bedrock_qemu::{
    config, exit, paint_stack, stack_capacity, stack_lowest_used, stack_top, stack_used_by, Flash,
    BUFFER_LEN, ERASE_SIZE, FLASH_SIZE, WRITE_SIZE,
};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

/// Operations of the workload: single increments, and every fifth a group commit.
const OPERATIONS: u32 = 400;
/// Bytes of the cut program that land: none, part of the frame header, the header and part of
/// the payload or checksum, and all of it (power fails just after the program).
const TORN_PREFIXES: [usize; 4] = [0, 12, 28, usize::MAX];
/// Failures printed in full; later ones are only counted.
const FAILURES_PRINTED: u32 = 10;

/// A torn prefix as printed: `all` for `usize::MAX`.
struct Prefix(usize);

impl Debug for Prefix {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            usize::MAX => formatter.write_str("all"),
            bytes => write!(formatter, "{bytes}"),
        }
    }
}

/// [`TORN_PREFIXES`] as printed.
struct Prefixes;

impl Debug for Prefixes {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_list()
            .entries(TORN_PREFIXES.iter().map(|&bytes| Prefix(bytes)))
            .finish()
    }
}

type Error = NorFlashStorageError<RamNorFlashError>;
type TestCounter<'a> = Counter<NorFlashStorage<&'a mut Flash>, &'a mut [u8]>;

/// The amount of the `k`th increment of operation `op`: mostly 1..=12, sometimes 2^40 (a 6-byte
/// varint), so that records come in two sizes.
fn amount(op: u32, k: u32) -> u64 {
    match (op * 7 + k * 3) % 13 {
        0 => 1 << 40,
        n => u64::from(n),
    }
}

/// How many increments operation `op` stages before its one sync: every fifth operation is a
/// group commit of 2 to 4.
fn batch(op: u32) -> u32 {
    if op % 5 == 4 {
        2 + op / 5 % 3
    } else {
        1
    }
}

/// What the workload got through before it stopped.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The last value `incr` or `commit` returned.
    acknowledged: u64,
    /// The value including every increment passed to `incr` or `stage`, failed ones too.
    attempted: u64,
    increments: u32,
    group_commits: u32,
}

fn run_workload(
    counter: &mut TestCounter<'_>,
    progress: &mut Progress,
) -> Result<(), CounterError<Error>> {
    for op in 0..OPERATIONS {
        let count = batch(op);
        if count == 1 {
            let by = amount(op, 0);
            progress.attempted += by;
            progress.acknowledged = counter.incr(by)?;
        } else {
            for k in 0..count {
                let by = amount(op, k);
                progress.attempted += by;
                counter.stage(by)?;
            }
            progress.acknowledged = counter.commit()?;
            progress.group_commits += 1;
        }
        progress.increments += count;
    }
    Ok(())
}

/// Whether the workload's running total passes through `value`: a recovered value must be one the
/// counter held, not merely one within bounds.
fn workload_reaches(value: u64) -> bool {
    let mut total = 0;
    for op in 0..OPERATIONS {
        for k in 0..batch(op) {
            if total == value {
                return true;
            }
            total += amount(op, k);
        }
    }
    total == value
}

fn is_power_cut(error: &CounterError<Error>) -> bool {
    const CUT: Error = NorFlashStorageError::Flash(RamNorFlashError::PowerCut);
    matches!(
        error,
        CounterError::Append(AppendError::Storage(CUT))
            | CounterError::Sync(SyncError::Storage(CUT))
    )
}

/// Erases the whole flash with power on and no cut armed, and zeroes its counters.
fn reset(flash: &mut Flash) {
    flash.restore_power();
    // Whole-flash erase of a valid geometry: cannot fail with power on.
    flash.erase(0, FLASH_SIZE as u32).ok();
    flash.reset_counters();
}

fn open<'a>(
    flash: &'a mut Flash,
    buffer: &'a mut [u8],
) -> Result<(TestCounter<'a>, Recovery), &'static str> {
    let storage = NorFlashStorage::new(flash).map_err(|_| "flash geometry refused")?;
    Counter::open(storage, buffer, config()).map_err(|_| "Counter::open failed")
}

/// Counts checks and reports failures with the crash point they happened at.
#[derive(Debug, Default)]
struct Checker {
    cut: u32,
    torn: usize,
    second_torn: usize,
    failures: u32,
    /// Crash points with a failed check, by index of the first and of the second torn prefix.
    failed_points: [[u32; TORN_PREFIXES.len()]; TORN_PREFIXES.len()],
}

impl Checker {
    fn check(&mut self, ok: bool, what: &str, detail: impl Debug) -> bool {
        if ok {
            return true;
        }
        if self.failures < FAILURES_PRINTED {
            hprintln!(
                "FAIL at cut {} torn {:?} second torn {:?}: {} ({:?})",
                self.cut,
                Prefix(self.torn),
                Prefix(self.second_torn),
                what,
                detail
            );
        }
        self.failures += 1;
        false
    }

    fn failed(&self) -> u32 {
        self.failures
    }
}

/// What the crash points found, beyond pass or fail.
#[derive(Debug, Default)]
struct Stats {
    points: u32,
    recoveries: u32,
    torn_tails: u32,
    /// Recoveries that found increments which were written but not yet acknowledged.
    unacknowledged_survived: u32,
    appends_in_place: u32,
    frames_replayed_max: u64,
    segments_walked_max: u32,
    earlier_cuts_max: u32,
}

impl Stats {
    fn record(&mut self, recovery: &Recovery) {
        self.recoveries += 1;
        self.torn_tails += u32::from(recovery.torn_tail.is_some());
        self.appends_in_place += u32::from(recovery.appends_in_place);
        self.frames_replayed_max = self.frames_replayed_max.max(recovery.frames);
        self.segments_walked_max = self.segments_walked_max.max(recovery.segments);
        self.earlier_cuts_max = self.earlier_cuts_max.max(recovery.earlier_cuts);
    }
}

/// Recovers after a cut and checks `low <= value <= high` and that no corruption is reported.
/// Returns the recovered value.
fn recover(
    flash: &mut Flash,
    buffer: &mut [u8],
    (low, high): (u64, u64),
    checker: &mut Checker,
    stats: &mut Stats,
) -> Option<u64> {
    flash.restore_power();
    let (counter, recovery) = match open(flash, buffer) {
        Ok(opened) => opened,
        Err(why) => {
            checker.check(false, why, ());
            return None;
        }
    };
    let value = counter.value();
    stats.record(&recovery);
    checker.check(
        recovery.corruption.is_none(),
        "corruption reported",
        recovery,
    );
    checker.check(
        low <= value,
        "an acknowledged increment was lost",
        (low, value),
    );
    checker.check(value <= high, "more than was attempted", (value, high));
    Some(value)
}

/// Runs the workload on an erased flash with power cut during program `cut`, `torn` bytes of it
/// landing. Returns what the workload got through, or `None` if it finished before that program.
fn crash(
    flash: &mut Flash,
    buffer: &mut [u8],
    (cut, torn): (u32, usize),
    checker: &mut Checker,
) -> Option<Progress> {
    reset(flash);
    flash.cut_power_after(cut, torn);
    let mut progress = Progress::default();
    match open(flash, buffer) {
        Ok((mut counter, _)) => match run_workload(&mut counter, &mut progress) {
            Ok(()) => return None,
            Err(error) => {
                checker.check(is_power_cut(&error), "workload failed otherwise", error);
            }
        },
        Err(why) => {
            checker.check(false, why, ());
        }
    }
    Some(progress)
}

/// One crash point: cut during program `cut` of the workload, recover, cut during the first
/// append after recovery, recover, increment, reopen. Returns false when the workload finished
/// before program `cut` (nothing to check).
fn crash_point(
    flash: &mut Flash,
    buffer: &mut [u8],
    checker: &mut Checker,
    stats: &mut Stats,
) -> bool {
    let Some(progress) = crash(flash, buffer, (checker.cut, checker.torn), checker) else {
        return false;
    };
    stats.points += 1;
    let bounds = (progress.acknowledged, progress.attempted);
    let Some(first) = recover(flash, buffer, bounds, checker, stats) else {
        return true;
    };
    checker.check(
        workload_reaches(first),
        "not a value the counter held",
        first,
    );
    stats.unacknowledged_survived += u32::from(first > progress.acknowledged);

    // A second cut, during the first append after recovery.
    flash.cut_power_after(0, checker.second_torn);
    if let Ok((mut counter, _)) = open(flash, buffer) {
        let result = counter.incr(1);
        let cut = result.as_ref().err().is_some_and(is_power_cut);
        checker.check(cut, "the increment after recovery was not cut", result);
    }
    let Some(second) = recover(flash, buffer, (first, first + 1), checker, stats) else {
        return true;
    };

    // Power stays on: one increment, then a reopen that finds it and a clean log.
    if let Ok((mut counter, _)) = open(flash, buffer) {
        let result = counter.incr(1);
        checker.check(result == Ok(second + 1), "increment after recovery", result);
    }
    if let Ok((counter, recovery)) = open(flash, buffer) {
        let value = counter.value();
        checker.check(value == second + 1, "reopen lost the increment", value);
        checker.check(recovery.is_clean(), "reopen of a clean log", recovery);
    }
    true
}

/// The workload without power cuts: its final value, and how many programs it makes. Also
/// returns the stack the workload used.
fn reference_run(flash: &mut Flash, buffer: &mut [u8], checker: &mut Checker) -> (Progress, usize) {
    reset(flash);
    let mut progress = Progress::default();
    let mut stack_bytes = 0;
    match open(flash, buffer) {
        Ok((mut counter, _)) => {
            let (result, used) = stack_used_by(|| run_workload(&mut counter, &mut progress));
            stack_bytes = used;
            checker.check(result.is_ok(), "reference workload", result);
        }
        Err(why) => {
            checker.check(false, why, ());
        }
    }
    let expected = progress.attempted;
    checker.check(progress.acknowledged == expected, "acknowledged", progress);
    let writes = flash.writes();
    match open(flash, buffer) {
        Ok((counter, recovery)) => {
            checker.check(counter.value() == expected, "reopen", counter.value());
            checker.check(recovery.is_clean(), "clean reopen", recovery);
        }
        Err(why) => {
            checker.check(false, why, ());
        }
    }
    checker.check(
        writes == flash.writes(),
        "recovery programmed",
        flash.writes(),
    );
    (progress, stack_bytes)
}

/// The deepest stack that recovering from a torn log and then incrementing (one `incr`, one
/// group commit) uses, over a few cut points and torn prefixes.
fn recovery_stack(flash: &mut Flash, buffer: &mut [u8], programs: u32) -> usize {
    let mut deepest = 0;
    let mut checker = Checker::default();
    for cut in [programs / 3, programs / 2, programs * 2 / 3] {
        for torn in [12, 28, usize::MAX] {
            if crash(flash, buffer, (cut, torn), &mut checker).is_none() {
                continue;
            }
            flash.restore_power();
            let (_, used) = stack_used_by(|| {
                let (mut counter, _) = open(flash, buffer).ok()?;
                counter.incr(1).ok()?;
                counter.stage(2).ok()?;
                counter.stage(3).ok()?;
                counter.commit().ok()
            });
            deepest = deepest.max(used);
        }
    }
    deepest
}

fn enumerate(flash: &mut Flash, buffer: &mut [u8], programs: u32, checker: &mut Checker) -> Stats {
    let mut stats = Stats::default();
    for cut in 0..=programs {
        for (index, &torn) in TORN_PREFIXES.iter().enumerate() {
            checker.cut = cut;
            checker.torn = torn;
            let second_index = (cut as usize + index) % TORN_PREFIXES.len();
            checker.second_torn = TORN_PREFIXES[second_index];
            let failed_before = checker.failed();
            let cut_happened = crash_point(flash, buffer, checker, &mut stats);
            // Cutting after the last program must find a finished workload, and only there.
            checker.check(cut_happened == (cut < programs), "cut count", cut);
            if checker.failed() != failed_before {
                checker.failed_points[index][second_index] += 1;
            }
        }
    }
    stats
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` references, usable once.
    static mut FLASH: Flash = Flash::new();
    static mut BUFFER: [u8; BUFFER_LEN] = [0; BUFFER_LEN];
    let flash: &mut Flash = FLASH;
    let buffer: &mut [u8] = BUFFER;
    paint_stack();
    let mut checker = Checker::default();
    let segments = FLASH_SIZE / ERASE_SIZE;
    hprintln!(
        "bedrock firmware: durable counter on a {} KiB RAM NOR flash (write {} B, erase {} B, {} segments), lent buffer {} B, checkpoint every {} records",
        FLASH_SIZE / 1024,
        WRITE_SIZE,
        ERASE_SIZE,
        segments,
        BUFFER_LEN,
        config().checkpoint_every
    );

    let (reference, workload_stack) = reference_run(flash, buffer, &mut checker);
    let counters = flash.counters();
    hprintln!(
        "reference run: {} operations, {} increments ({} group commits), value {}",
        OPERATIONS,
        reference.increments,
        reference.group_commits,
        reference.attempted
    );
    hprintln!(
        "  flash: {} programs, {} erases (the ring of {} segments turned {} times), {} bytes programmed, {} reads",
        counters.writes,
        counters.erases,
        segments,
        counters.erases / segments as u64,
        counters.bytes_programmed,
        counters.reads
    );
    checker.check(
        counters.erases > segments as u64,
        "the ring never wrapped",
        counters,
    );

    let programs = counters.writes as u32;
    let stats = enumerate(flash, buffer, programs, &mut checker);
    let recovery_stack = recovery_stack(flash, buffer, programs);
    let peak_stack = stack_top() - stack_lowest_used();

    hprintln!(
        "crash points: {} ({} programs x {} torn prefixes {:?}), each with a second cut after recovery",
        stats.points,
        programs,
        TORN_PREFIXES.len(),
        Prefixes
    );
    hprintln!(
        "  {} recoveries: {} torn tails, {} kept unacknowledged increments, {} appended in place, up to {} frames / {} segments replayed, up to {} earlier cuts",
        stats.recoveries,
        stats.torn_tails,
        stats.unacknowledged_survived,
        stats.appends_in_place,
        stats.frames_replayed_max,
        stats.segments_walked_max,
        stats.earlier_cuts_max
    );
    hprintln!(
        "stack: counter workload {} B, recovery + incr + group commit {} B (a Counter is {} B, a Recovery {} B); whole firmware peak {} B of {} B",
        workload_stack,
        recovery_stack,
        core::mem::size_of::<TestCounter<'static>>(),
        core::mem::size_of::<Recovery>(),
        peak_stack,
        stack_capacity()
    );
    if checker.failed() > 0 {
        for (index, row) in checker.failed_points.iter().enumerate() {
            hprintln!(
                "  crash points with a failed check, first torn prefix {:?}: {:?} by second torn prefix {:?}",
                Prefix(TORN_PREFIXES[index]),
                row,
                Prefixes
            );
        }
    }
    let passed = checker.failures == 0;
    hprintln!(
        "{}: {} failed checks",
        if passed { "PASS" } else { "FAIL" },
        checker.failures
    );
    exit(passed)
}
