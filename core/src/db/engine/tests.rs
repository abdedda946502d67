use super::*;
use crate::storage::{Partition, RamStorage};
use crate::testing::{Flaky, Unordered};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec as HeapVec;

type LogRam = RamStorage<{ 32 << 10 }>;
type TableRam = RamStorage<{ 128 << 10 }>;
type Model = BTreeMap<HeapVec<u8>, HeapVec<u8>>;
const TABLES_MAX: usize = 16;
const KEYS: u8 = 24;

fn config(segment_size: u32) -> Config {
    Config {
        log: log::Config {
            segment_size,
            ..log::Config::default()
        },
        key_len_max: 8,
        value_len_max: 24,
        flush_margin: 0,
        table_size: 512,
        block_size: 256,
        bits_per_key: 10,
        l0_trigger: 3,
        level_base: 256,
        level_ratio: 2,
        seed: 7,
    }
}

fn buffers(config: &Config) -> Buffers<HeapVec<u8>, HeapVec<u64>> {
    Buffers {
        log: std::vec![0; 4096],
        memtable: std::vec![0; 2048],
        work: std::vec![0; config.work_len(64)],
        hashes: std::vec![0; 64],
    }
}

fn key(index: u8) -> HeapVec<u8> {
    std::format!("k{index:02}").into_bytes()
}

/// Every key of the key space read back equals the model.
fn check<L: Storage, T: Storage>(
    db: &mut Db<L, T, HeapVec<u8>, HeapVec<u64>, TABLES_MAX>,
    model: &Model,
) -> Result<(), TestCaseError>
where
    T::Error: core::fmt::Debug,
{
    let mut out = [0u8; 64];
    for index in 0..KEYS + 2 {
        let key = key(index);
        let found = db
            .get(&key, &mut out)
            .map_err(|error| TestCaseError::fail(std::format!("get {key:?}: {error:?}")))?;
        let found = found.map(|len| out[..len].to_vec());
        prop_assert_eq!(found.as_ref(), model.get(&key), "key {:?}", key);
    }
    Ok(())
}

fn state<L: Storage, T: Storage>(db: &mut Db<L, T, HeapVec<u8>, HeapVec<u64>, TABLES_MAX>) -> Model
where
    T::Error: core::fmt::Debug,
{
    let mut model = Model::new();
    let mut out = [0u8; 64];
    for index in 0..KEYS + 2 {
        let key = key(index);
        if let Some(len) = db.get(&key, &mut out).unwrap() {
            model.insert(key, out[..len].to_vec());
        }
    }
    model
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, usize),
    Delete(u8),
    Batch(u8, u8, u8),
    Get(u8),
    Scan(u8, u8, bool),
    Commit,
    Flush,
    Compact,
    /// Pin the current snapshot.
    Pin,
    /// Unpin the pin at this index (modulo the pins).
    Unpin(usize),
    /// Commit, then reopen: every write survives.
    Reopen,
    /// Reopen without a commit: what was not committed may be lost, batch by batch.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS, any::<u8>(), 0usize..24).prop_map(|(k, v, n)| Op::Put(k, v, n)),
        3 => (0..KEYS).prop_map(Op::Delete),
        2 => (0..KEYS, 0..KEYS, any::<u8>()).prop_map(|(a, b, v)| Op::Batch(a, b, v)),
        2 => (0..KEYS + 2).prop_map(Op::Get),
        1 => (0..KEYS + 2, 0..KEYS + 2, any::<bool>()).prop_map(|(a, b, open)| Op::Scan(a, b, open)),
        2 => Just(Op::Commit),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Pin),
        1 => any::<usize>().prop_map(Op::Unpin),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("DB_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(48)))]

    #[test]
    fn the_database_matches_a_sorted_map_through_flushes_compactions_and_reopens(
        ops in proptest::collection::vec(op(), 1..300),
        segment_size in prop_oneof![Just(2048u32), Just(8192)],
    ) {
        // 16 log segments, or 4 (flushes then come from a full log as often as from a full
        // memtable).
        let config = config(segment_size);
        let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
        let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
        let mut parts = Some((&mut *log_storage, &mut *table_storage, buffers(&config)));
        let mut model = Model::new();
        // The model after each write since the last commit, the committed one first.
        let mut since_commit: HeapVec<Model> = std::vec![Model::new()];
        let mut last_sequence = 0u64;
        // The model after each write, by its last sequence number; the pinned snapshots and
        // what they see.
        let mut history: HeapVec<(u64, Model)> = std::vec![(0, Model::new())];
        let mut pins: HeapVec<(u64, Model)> = HeapVec::new();
        let mut out = [0u8; 64];
        let (l, t, b) = parts.take().unwrap();
        let mut db = Db::<_, _, _, _, TABLES_MAX>::open(l, t, b, config).unwrap().0;
        for op in ops {
            let op_kind = match op {
                Op::Put(..) | Op::Delete(_) | Op::Batch(..) => 0,
                _ => 1,
            };
            match op {
                Op::Put(k, v, n) => {
                    let value = std::vec![v; n];
                    let first = db.put(&key(k), &value).unwrap();
                    prop_assert!(first > last_sequence);
                    last_sequence = first;
                    model.insert(key(k), value);
                    since_commit.push(model.clone());
                }
                Op::Delete(k) => {
                    let first = db.delete(&key(k)).unwrap();
                    prop_assert!(first > last_sequence);
                    last_sequence = first;
                    model.remove(&key(k));
                    since_commit.push(model.clone());
                }
                Op::Batch(a, b, v) => {
                    let mut batch = Batch::new(std::vec![0u8; 256]);
                    batch.put(&key(a), &[v; 5]).unwrap();
                    batch.delete(&key(b)).unwrap();
                    let first = db.write(&batch).unwrap();
                    prop_assert!(first > last_sequence);
                    last_sequence = first + 1;
                    model.insert(key(a), std::vec![v; 5]);
                    model.remove(&key(b));
                    since_commit.push(model.clone());
                }
                Op::Get(k) => {
                    let found = db.get(&key(k), &mut out).unwrap().map(|len| out[..len].to_vec());
                    prop_assert_eq!(found.as_ref(), model.get(&key(k)));
                }
                Op::Scan(a, b, open) => {
                    let (from, to) = (key(a), key(b));
                    let to = (!open).then_some(to.as_slice());
                    let mut listed: HeapVec<(HeapVec<u8>, HeapVec<u8>)> = HeapVec::new();
                    let visited = db
                        .scan(&from, to, SEQUENCE_MAX, |key, value| {
                            listed.push((key.to_vec(), value.to_vec()));
                            true
                        })
                        .unwrap();
                    let wanted: HeapVec<_> = model
                        .iter()
                        .filter(|(key, _)| **key >= from && to.is_none_or(|to| key.as_slice() < to))
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect();
                    prop_assert_eq!(visited, wanted.len());
                    prop_assert_eq!(listed, wanted);
                }
                Op::Commit => {
                    db.commit().unwrap();
                    prop_assert_eq!(db.snapshot(), last_sequence);
                    since_commit = std::vec![model.clone()];
                }
                Op::Flush => {
                    db.flush().unwrap();
                    since_commit = std::vec![model.clone()];
                }
                Op::Compact => db.compact().unwrap(),
                Op::Pin => {
                    if let Some(snapshot) = db.pin() {
                        let seen = history.iter().rev().find(|(sequence, _)| *sequence <= snapshot).unwrap();
                        pins.push((snapshot, seen.1.clone()));
                    }
                }
                Op::Unpin(index) => {
                    if !pins.is_empty() {
                        let (snapshot, _) = pins.remove(index % pins.len());
                        prop_assert!(db.unpin(snapshot));
                    }
                }
                Op::Reopen | Op::Crash => {
                    if matches!(op, Op::Reopen) {
                        db.commit().unwrap();
                        since_commit = std::vec![model.clone()];
                    }
                    let (l, t, b) = db.into_parts();
                    db = Db::open(l, t, b, config).unwrap().0;
                    let recovered = state(&mut db);
                    let at = since_commit.iter().position(|state| *state == recovered);
                    prop_assert!(at.is_some(), "recovered {:?}, not a prefix of {:?}", recovered, since_commit);
                    model = recovered;
                    since_commit = std::vec![model.clone()];
                    pins.clear();
                    history = std::vec![(db.next_sequence() - 1, model.clone())];
                    prop_assert!(db.next_sequence() > db.snapshot());
                    last_sequence = last_sequence.min(db.next_sequence() - 1);
                }
            }
            if matches!(op_kind, 0) {
                history.push((last_sequence, model.clone()));
            }
            check(&mut db, &model)?;
            for (snapshot, seen) in &pins {
                for index in 0..KEYS {
                    let found = db.get_at(&key(index), *snapshot, &mut out).unwrap().map(|len| out[..len].to_vec());
                    prop_assert_eq!(found.as_ref(), seen.get(&key(index)), "key {} at {}", index, snapshot);
                }
            }
        }
        let stats = db.stats();
        if std::env::var("DB_STATS").is_ok() {
            std::eprintln!("{:?} flushes {} compactions {}", stats.levels.map(|level| level.tables), stats.flushes, stats.compactions);
        }
        prop_assert!(stats.levels.iter().map(|level| level.tables).sum::<usize>() <= TABLES_MAX);
    }
}

#[test]
fn a_long_run_compacts_into_deeper_levels_and_keeps_the_log_and_tables_bounded() {
    long_run(2048);
}

#[test]
fn a_long_run_on_a_log_of_four_segments_never_fills_it() {
    long_run(8192);
}

fn long_run(segment_size: u32) {
    let config = Config {
        level_base: 256,
        ..config(segment_size)
    };
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    let mut model = Model::new();
    for round in 0..3000u32 {
        let k = (round * 7 % KEYS as u32) as u8;
        if round % 5 == 4 {
            db.delete(&key(k)).unwrap();
            model.remove(&key(k));
        } else {
            let value = round.to_le_bytes().repeat(4);
            db.put(&key(k), &value).unwrap();
            model.insert(key(k), value);
        }
        if round % 16 == 0 {
            db.commit().unwrap();
        }
    }
    db.commit().unwrap();
    check(&mut db, &model).unwrap();
    let stats = db.stats();
    assert!(stats.flushes > 20, "{stats:?}");
    assert!(stats.compactions > 5, "{stats:?}");
    assert!(
        stats.levels[2..].iter().any(|level| level.tables > 0),
        "{stats:?}"
    );
    assert!(stats.write_amplification() > 1.0);
    assert!(stats.space_amplification() >= 1.0);
    let (l, t, b) = db.into_parts();
    let mut db = Db::<_, _, _, _, TABLES_MAX>::open(l, t, b, config)
        .unwrap()
        .0;
    check(&mut db, &model).unwrap();
}

#[test]
fn a_flipped_bit_in_a_table_is_reported_with_its_position_never_returned() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    for index in 0..6 {
        db.put(&key(index), b"value").unwrap();
    }
    db.flush().unwrap();
    let meta = db.tables().next().unwrap().clone();
    let start = meta.first_block as usize * 512;
    db.table_storage_mut().bytes_mut()[start + 3] ^= 0x10;
    let mut out = [0u8; 64];
    let mut corrupt = 0;
    for index in 0..6 {
        match db.get(&key(index), &mut out) {
            Ok(found) => assert_eq!(found.map(|len| &out[..len]), Some(&b"value"[..])),
            Err(ReadError::Table(TableError::Corrupt { offset, what })) => {
                assert_eq!((offset, what), (start as u64, "data block"));
                corrupt += 1;
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    assert!(corrupt > 0);
    // A damaged footer is reported by the open, with the table.
    let footer = start + meta.len as usize - 64;
    db.table_storage_mut().bytes_mut()[footer + 1] ^= 0x01;
    let (l, t, b) = db.into_parts();
    match Db::<_, _, _, _, TABLES_MAX>::open(l, t, b, config) {
        Err(OpenError::Table {
            first_block,
            error: TableError::Corrupt { what: "footer", .. },
        }) => assert_eq!(first_block, meta.first_block),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_failed_sync_poisons_writes_but_not_reads() {
    let config = config(2048);
    let log_storage = Flaky::<{ 32 << 10 }> {
        inner: LogRam::new(8, 1024, 0xFF).unwrap(),
        fail_writes: false,
    };
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    db.put(b"a", b"1").unwrap();
    db.commit().unwrap();
    db.put(b"b", b"2").unwrap();
    db.log_storage_mut().fail_writes = true;
    assert!(matches!(db.commit(), Err(CommitError::Sync(_))));
    assert!(db.is_poisoned());
    assert_eq!(db.put(b"c", b"3"), Err(WriteError::Poisoned));
    assert!(matches!(db.flush(), Err(FlushError::Poisoned)));
    let mut out = [0u8; 8];
    assert_eq!(db.get(b"a", &mut out), Ok(Some(1)));
    assert_eq!(db.get(b"b", &mut out), Ok(Some(1)));
    assert_eq!(
        db.get(b"a", &mut [0u8; 0]),
        Err(ReadError::BufferTooSmall { needed: 1 })
    );
}

#[test]
fn oversized_and_empty_writes_are_refused_and_change_nothing() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    assert_eq!(db.put(b"a-long-key", b"v"), Err(WriteError::TooLarge));
    assert_eq!(db.put(b"a", &[0; 25]), Err(WriteError::TooLarge));
    assert_eq!(db.put(b"", b"v"), Err(WriteError::TooLarge));
    let batch = Batch::new(std::vec![0u8; 16]);
    assert_eq!(db.write(&batch), Err(WriteError::Empty));
    assert_eq!(db.next_sequence(), 1);
    assert_eq!(db.put(b"a", b"v"), Ok(1));
}

/// One image for both storages (the log in the first `LOG_BLOCKS` erase blocks), so that a
/// power cut lands at one moment for both.
const LOG_BLOCKS: u64 = 8;
const TABLE_BLOCKS: u64 = 40;
type Cut = Db<Partition<Unordered>, Partition<Unordered>, HeapVec<u8>, HeapVec<u64>, TABLES_MAX>;

fn open_cut(storage: &Unordered, config: Config) -> Cut {
    let erase = u64::from(Unordered::ERASE);
    let log = Partition::new(storage.clone(), 0, LOG_BLOCKS * erase).unwrap();
    let tables = Partition::new(storage.clone(), LOG_BLOCKS * erase, TABLE_BLOCKS * erase).unwrap();
    Db::open(log, tables, buffers(&config), config).unwrap().0
}

#[test]
fn a_power_cut_at_any_sync_recovers_a_prefix_holding_every_committed_write() {
    let config = Config {
        table_size: 1024,
        ..config(Unordered::ERASE)
    };
    let storage = Unordered::new((LOG_BLOCKS + TABLE_BLOCKS) as usize);
    let mut db = open_cut(&storage, config);
    let mut model = Model::new();
    // The model after each write since the last commit, the committed one first.
    let mut since_commit: HeapVec<Model> = std::vec![Model::new()];
    let mut random = 0x1234_5678_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut checked = 0;
    for round in 0..100u32 {
        storage.0.borrow_mut().syncs.clear();
        let committed_before = db.snapshot();
        let writes = 1 + next() % 6;
        let mut candidates = since_commit.clone();
        for _ in 0..writes {
            let k = (next() % u64::from(KEYS)) as u8;
            if next() % 4 == 0 {
                db.delete(&key(k)).unwrap();
                model.remove(&key(k));
            } else {
                let value = std::vec![round as u8; (next() % 24) as usize];
                db.put(&key(k), &value).unwrap();
                model.insert(key(k), value);
            }
            candidates.push(model.clone());
        }
        match next() % 8 {
            0 => db.flush().unwrap(),
            1 => {
                db.commit().unwrap();
                db.compact().unwrap();
            }
            _ => db.commit().unwrap(),
        }
        since_commit = std::vec![model.clone()];
        let syncs = core::mem::take(&mut storage.0.borrow_mut().syncs);
        for image in &syncs {
            let pending = image.pending.len();
            // A sample of the cuts: nothing landed, each one alone or all but one (spread),
            // everything landed.
            let step = (pending / 16).max(1);
            let mut cuts: HeapVec<(usize, bool)> = (0..pending)
                .step_by(step)
                .flat_map(|cut| [(cut, true), (cut, false)])
                .collect();
            cuts.push((usize::MAX, true));
            cuts.push((usize::MAX, false));
            for (cut, only) in cuts {
                let crashed = Unordered(std::rc::Rc::new(core::cell::RefCell::new(
                    image.crash(|index| (index == cut) == only),
                )));
                let mut recovered = open_cut(&crashed, config);
                let found = state(&mut recovered);
                assert!(
                    candidates.contains(&found),
                    "round {round}, cut {cut} of {pending} (only: {only}): {found:?}"
                );
                // Recovery can run again on what the first recovery left.
                drop(recovered);
                let mut again = open_cut(&crashed, config);
                assert_eq!(state(&mut again), found);
                // Sequence numbers only go up: a new write numbers above every committed one.
                assert!(again.put(b"new", b"x").unwrap() > committed_before);
                checked += 1;
            }
        }
        // The database as it stands matches the model.
        check(&mut db, &model).unwrap();
    }
    let stats = db.stats();
    assert!(stats.flushes > 3 && stats.compactions > 0, "{stats:?}");
    assert!(checked > 100, "{checked}");
    std::println!("power cuts checked: {checked}, {stats:?}");
}

#[test]
fn a_read_at_a_pinned_snapshot_sees_the_writes_before_it_through_flushes_and_compactions() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    db.put(b"a", b"old").unwrap();
    db.put(b"b", b"kept").unwrap();
    db.commit().unwrap();
    let snapshot = db.pin().unwrap();
    db.put(b"a", b"new").unwrap();
    db.delete(b"b").unwrap();
    let mut out = [0u8; 8];
    for round in 0..4 {
        if round > 0 {
            db.put(b"c", &[round; 20]).unwrap();
            db.flush().unwrap();
            db.compact().unwrap();
        }
        assert_eq!(db.get_at(b"a", snapshot, &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"old");
        assert_eq!(db.get_at(b"b", snapshot, &mut out), Ok(Some(4)));
        assert_eq!(db.get(b"b", &mut out), Ok(None));
        let mut seen = HeapVec::new();
        db.scan(b"a", None, snapshot, |key, value| {
            seen.push((key.to_vec(), value.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), b"old".to_vec()),
                (b"b".to_vec(), b"kept".to_vec())
            ]
        );
    }
}

#[test]
fn a_memtable_too_small_for_the_log_tail_is_a_clear_error() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        &mut *table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    for index in 0..12 {
        db.put(&key(index), &[index; 20]).unwrap();
    }
    db.commit().unwrap();
    assert_eq!(db.stats().flushes, 0);
    let (l, t, mut b) = db.into_parts();
    b.memtable = std::vec![0; 512];
    match Db::<_, _, _, _, TABLES_MAX>::open(l, t, b, config) {
        Err(OpenError::Log(log::OpenError::Visitor(Replay::MemtableFull { .. }))) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_manifest_naming_overlapping_runs_or_unknown_records_is_refused() {
    let config = config(2048);
    let meta = |first_block: u32, blocks: u32| TableMeta {
        first_block,
        blocks,
        len: 512,
        level: 1,
        entries: 1,
        sequences: (1, 1),
        smallest: heapless::Vec::from_slice(b"a").unwrap(),
        largest: heapless::Vec::from_slice(b"b").unwrap(),
    };
    for (kind, expect_overlap) in [(KIND_CHECKPOINT, true), (120u8, false)] {
        let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
        let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
        let log_config = log::Config {
            payload_max: config.log_payload_max(TABLES_MAX),
            ..config.log
        };
        let (mut log, _) = Log::open(&mut *log_storage, std::vec![0u8; 4096], log_config, |_| {
            Ok::<(), ()>(())
        })
        .unwrap();
        log.append(kind, |area| {
            let mut at = postcard_into(&(5u64, 4u64, 2u32), area, 0)?;
            at = postcard_into(&meta(3, 4), area, at)?;
            postcard_into(&meta(6, 2), area, at)
        })
        .unwrap();
        log.sync().unwrap();
        drop(log);
        let opened = Db::<_, _, _, _, TABLES_MAX>::open(
            &mut *log_storage,
            &mut *table_storage,
            buffers(&config),
            config,
        );
        match opened {
            Err(OpenError::Manifest { first_block: 6 }) if expect_overlap => {}
            Err(OpenError::Log(log::OpenError::Visitor(Replay::Record(
                ReplayError::UnknownKind { kind: 120, .. },
            )))) if !expect_overlap => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn a_hot_key_flushes_as_one_version_per_reader() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let mut table_storage = std::boxed::Box::new(TableRam::new(8, 512, 0xFF).unwrap());
    let buffers = Buffers {
        memtable: std::vec![0; 32 << 10],
        ..buffers(&config)
    };
    let (mut db, _) =
        Db::<_, _, _, _, TABLES_MAX>::open(&mut *log_storage, &mut *table_storage, buffers, config)
            .unwrap();
    for round in 0..300u32 {
        db.put(b"hot", &round.to_le_bytes().repeat(6)).unwrap();
    }
    db.flush().unwrap();
    let entries: u64 = db.tables().map(|meta| meta.entries).sum();
    assert_eq!(entries, 1);
    let mut out = [0u8; 32];
    assert_eq!(db.get(b"hot", &mut out), Ok(Some(24)));
    assert_eq!(&out[..4], &299u32.to_le_bytes());
}

#[test]
fn a_flush_whose_table_writes_fail_changes_nothing_and_a_later_one_succeeds() {
    let config = config(2048);
    let mut log_storage = std::boxed::Box::new(LogRam::new(8, 1024, 0xFF).unwrap());
    let table_storage = Flaky::<{ 128 << 10 }> {
        inner: TableRam::new(8, 512, 0xFF).unwrap(),
        fail_writes: false,
    };
    let (mut db, _) = Db::<_, _, _, _, TABLES_MAX>::open(
        &mut *log_storage,
        table_storage,
        buffers(&config),
        config,
    )
    .unwrap();
    let mut model = Model::new();
    for index in 0..10 {
        db.put(&key(index), &[index; 10]).unwrap();
        model.insert(key(index), std::vec![index; 10]);
    }
    db.table_storage_mut().fail_writes = true;
    assert!(matches!(
        db.flush(),
        Err(FlushError::Table(TableError::Storage(_)))
    ));
    assert!(!db.is_poisoned());
    assert_eq!(db.tables().count(), 0);
    check(&mut db, &model).unwrap();
    db.table_storage_mut().fail_writes = false;
    db.flush().unwrap();
    assert_eq!(db.stats().memtable_entries, 0);
    check(&mut db, &model).unwrap();
    let (l, t, b) = db.into_parts();
    let mut db = Db::<_, _, _, _, TABLES_MAX>::open(l, t, b, config)
        .unwrap()
        .0;
    check(&mut db, &model).unwrap();
}

#[test]
fn records_match_the_bytes_in_the_spec() {
    let mut batch = Batch::new(std::vec![0u8; 16]);
    batch.put(b"a", b"1").unwrap();
    let mut out = [0u8; 16];
    let len = batch::encode_record(1, 1, batch.operations(), &mut out).unwrap();
    assert_eq!(&out[..len], [0x01, 0x01, 0x00, 0x01, 0x61, 0x01, 0x31]);
    let len = encode_checkpoint(&mut out, 1, 0, &[]).unwrap();
    assert_eq!(&out[..len], [0x01, 0x00, 0x00]);
    let len = encode_edit(&mut out, &[3], &[]).unwrap();
    assert_eq!(&out[..len], [0x00, 0x01, 0x00, 0x03]);
}
