//! Crash-point enumeration for the job scheduler's log.
//!
//! A fixed workload runs on the simulated storage: keyed submits (and duplicates), claims,
//! a heartbeat, completions, a failure retried after its backoff, a job that uses its last
//! attempt and goes dead, its re-queue, commits in between and a clean close. The geometry and
//! checkpoint interval are small, so the workload writes several checkpoints and the log wraps
//! (segments are released and reused). Power is cut at every write, erase and sync it performs,
//! with the operation in flight torn at several prefixes (every byte of a write).
//!
//! After each cut the scheduler is reopened and checked against a model of what was
//! acknowledged (a commit returned `Ok`) and what was staged since (including the call in
//! flight, whose record may land whole):
//! - the recovered jobs are exactly the acknowledged state plus a prefix of the staged
//!   operations: so no acknowledged submit is lost, an acknowledged completion is never undone,
//!   and no job appears that was never submitted;
//! - the recovered `next_token` is above every token of an acknowledged claim; a stale or future
//!   token is refused after recovery, the current one accepted;
//! - every acknowledged key still deduplicates to its job; no two jobs share a key;
//! - a crash is never reported as mid-log corruption;
//! - a second power cut during recovery (and the first writes after it), then a clean reopen,
//!   gives the same state; a close after that reopens clean.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::jobs::{Config, Failed, Lease, NewJob, Scheduler, State};
use bedrock::log;
use bedrock::service::Service;
use bedrock::storage::Geometry;
use bedrock::time::Instant;
use bedrock_sim::{sum_in_parallel, CrashMode, OpKind, SimRng, SimStorage, TornSpec};

const JOBS: usize = 12;
/// At least the workload's job count: every finished job stays remembered.
const DONE: usize = 16;
const BUFFER: usize = 4096;
const SEGMENTS: u64 = 5;
/// (write size, erase size) pairs.
const GEOMETRIES: [(u32, u32); 2] = [(8, 2048), (1, 2048)];
/// The key of the job submitted after the second cut: filtered out when comparing states.
const EXTRA_KEY: u64 = 9999;

type Sched<'a> = Scheduler<&'a mut SimStorage, Vec<u8>, JOBS, DONE, 8>;

fn geometry(write_size: u32, erase_size: u32) -> Geometry {
    Geometry {
        read_size: 1,
        write_size,
        erase_size,
        capacity: SEGMENTS * u64::from(erase_size),
        erased_value: 0xFF,
    }
}

fn config() -> Config {
    Config {
        lease: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(8),
        checkpoint_every: 3,
        log: log::Config {
            segment_size: 0,
            policy: log::Policy::StopAtCorruption,
            ..log::Config::default()
        },
        ..Config::default()
    }
}

fn open(storage: &mut SimStorage, now: Instant) -> Result<(Sched<'_>, log::Recovery), String> {
    Sched::open(storage, vec![0u8; BUFFER], config(), now).map_err(|error| format!("{error:?}"))
}

/// Where a job stands, finished included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Dead,
    Finished,
}

/// One job as the model (or the recovered scheduler) sees it. Finished jobs keep only their
/// key and completion token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelJob {
    key: Option<u64>,
    phase: Phase,
    attempts: u32,
    max_attempts: u32,
    token: u64,
}

type Model = BTreeMap<u64, ModelJob>;

/// A state change the workload asked for.
#[derive(Debug, Clone, Copy)]
enum Op {
    Submit {
        id: u64,
        key: u64,
        max_attempts: u32,
    },
    Claim {
        job: u64,
        token: u64,
    },
    Complete {
        job: u64,
        token: u64,
    },
    Fail {
        job: u64,
    },
    Requeue {
        job: u64,
    },
}

fn apply(model: &mut Model, op: Op) {
    match op {
        Op::Submit {
            id,
            key,
            max_attempts,
        } => {
            model.insert(
                id,
                ModelJob {
                    key: Some(key),
                    phase: Phase::Pending,
                    attempts: 0,
                    max_attempts,
                    token: 0,
                },
            );
        }
        Op::Claim { job, token } => {
            let job = model.get_mut(&job).expect("claimed job is known");
            job.phase = Phase::Running;
            job.token = token;
        }
        Op::Complete { job, token } => {
            let job = model.get_mut(&job).expect("completed job is known");
            job.phase = Phase::Finished;
            job.attempts = 0;
            job.max_attempts = 0;
            job.token = token;
        }
        Op::Fail { job } => {
            let job = model.get_mut(&job).expect("failed job is known");
            job.attempts += 1;
            job.phase = if job.attempts >= job.max_attempts {
                Phase::Dead
            } else {
                Phase::Pending
            };
        }
        Op::Requeue { job } => {
            let job = model.get_mut(&job).expect("re-queued job is known");
            job.phase = Phase::Pending;
            job.attempts = 0;
        }
    }
}

/// What one run of the workload did.
#[derive(Debug, Default)]
struct Run {
    /// The job each claim got in the uncut run (`None`: nothing runnable), to know which job a
    /// claim cut in flight was taking.
    claims_dry: Vec<Option<u64>>,
    /// The same for this run.
    claims: Vec<Option<u64>>,
    /// The state acknowledged by the last successful commit.
    acked: Model,
    /// Operations since, the one in flight at the cut included.
    staged: Vec<Op>,
    /// Leases whose claim was acknowledged.
    acked_leases: Vec<(u64, u64)>,
    next_id: u64,
    next_token: u64,
    completed: bool,
    checkpoints: u64,
}

impl Run {
    fn new(claims_dry: Vec<Option<u64>>) -> Self {
        Self {
            claims_dry,
            next_id: 1,
            next_token: 1,
            ..Self::default()
        }
    }

    fn max_acked_token(&self) -> u64 {
        self.acked_leases
            .iter()
            .map(|&(_, token)| token)
            .max()
            .unwrap_or(0)
    }
}

fn payload(key: u64) -> Vec<u8> {
    (0..100 + key * 25).map(|i| (i ^ key) as u8).collect()
}

fn submit(
    s: &mut Sched<'_>,
    r: &mut Run,
    now: Instant,
    key: u64,
    priority: u8,
    max_attempts: u32,
    duplicate: bool,
) -> Option<u64> {
    if !duplicate {
        r.staged.push(Op::Submit {
            id: r.next_id,
            key,
            max_attempts,
        });
    }
    let bytes = payload(key);
    let job = NewJob {
        key: Some(key),
        priority,
        delay: Duration::ZERO,
        max_attempts,
        payload: &bytes,
    };
    let submitted = s.submit(now, &job).ok()?;
    assert_eq!(submitted.duplicate, duplicate, "key {key}");
    if !duplicate {
        assert_eq!(submitted.job, r.next_id);
        r.next_id += 1;
    }
    Some(submitted.job)
}

fn claim(s: &mut Sched<'_>, r: &mut Run, now: Instant, worker: u32) -> Option<Option<Lease>> {
    let token = r.next_token;
    let predicted = r.claims_dry.get(r.claims.len()).copied();
    if let Some(Some(job)) = predicted {
        r.staged.push(Op::Claim { job, token });
    }
    let lease = s.claim(now, NodeId(worker)).ok()?;
    let job = lease.map(|lease| lease.job);
    match predicted {
        Some(expected) => assert_eq!(job, expected, "the workload is deterministic"),
        None => {
            if let Some(job) = job {
                r.staged.push(Op::Claim { job, token });
            }
        }
    }
    if let Some(lease) = lease {
        assert_eq!(lease.token, token);
        r.next_token += 1;
    }
    r.claims.push(job);
    Some(lease)
}

fn complete(s: &mut Sched<'_>, r: &mut Run, now: Instant, lease: Lease) -> Option<()> {
    r.staged.push(Op::Complete {
        job: lease.job,
        token: lease.token,
    });
    s.complete(now, lease.job, lease.token).ok()
}

fn fail(
    s: &mut Sched<'_>,
    r: &mut Run,
    now: Instant,
    lease: Lease,
    rng: &mut SimRng,
) -> Option<Failed> {
    r.staged.push(Op::Fail { job: lease.job });
    s.fail(now, lease.job, lease.token, rng).ok()
}

fn requeue(s: &mut Sched<'_>, r: &mut Run, now: Instant, job: u64) -> Option<()> {
    r.staged.push(Op::Requeue { job });
    s.requeue(now, job).ok()
}

fn commit(s: &mut Sched<'_>, r: &mut Run) -> Option<()> {
    s.commit().ok()?;
    for op in r.staged.drain(..) {
        apply(&mut r.acked, op);
        if let Op::Claim { job, token } = op {
            r.acked_leases.push((job, token));
        }
    }
    Some(())
}

/// The fixed workload; `None` at the first error (the power cut).
fn steps(s: &mut Sched<'_>, r: &mut Run) -> Option<()> {
    let t = Instant::from_millis;
    let mut rng = SimRng::new(7);
    // Job 1 is urgent and has two attempts; jobs 2 to 4 are ordinary.
    let urgent = submit(s, r, t(1), 1, 9, 2, false)?;
    for key in 2..=4 {
        submit(s, r, t(1), key, 1, 3, false)?;
    }
    commit(s, r)?;
    let again = submit(s, r, t(2), 2, 1, 3, true)?;
    assert_eq!(again, 2);
    submit(s, r, t(2), 5, 0, 3, false)?;
    submit(s, r, t(2), 6, 0, 3, false)?;
    commit(s, r)?;
    let first = claim(s, r, t(3), 1)?.expect("job 1 is runnable");
    assert_eq!(first.job, urgent);
    let second = claim(s, r, t(3), 2)?.expect("job 2 is runnable");
    commit(s, r)?;
    s.heartbeat(t(4), second.job, second.token).ok()?;
    complete(s, r, t(5), second)?;
    let retry = fail(s, r, t(5), first, &mut rng)?;
    assert!(
        matches!(retry, Failed::Retry { attempts: 1, .. }),
        "{retry:?}"
    );
    commit(s, r)?;
    let a = claim(s, r, t(6), 3)?.expect("job 3 is runnable");
    let b = claim(s, r, t(6), 4)?.expect("job 4 is runnable");
    commit(s, r)?;
    complete(s, r, t(7), a)?;
    complete(s, r, t(7), b)?;
    commit(s, r)?;
    // After its backoff (at most a second) job 1 runs again and uses its last attempt.
    let last = claim(s, r, t(20_000), 1)?.expect("job 1 is runnable again");
    assert_eq!(last.job, urgent);
    commit(s, r)?;
    let dead = fail(s, r, t(20_001), last, &mut rng)?;
    assert_eq!(dead, Failed::Dead);
    commit(s, r)?;
    requeue(s, r, t(20_002), urgent)?;
    commit(s, r)?;
    for key in 7..=10 {
        submit(s, r, t(20_003), key, (key % 3) as u8, 3, false)?;
    }
    commit(s, r)?;
    let mut leases = Vec::new();
    while let Some(lease) = claim(s, r, t(20_004), 5)? {
        leases.push(lease);
        if leases.len() % 3 == 0 {
            commit(s, r)?;
        }
    }
    commit(s, r)?;
    assert_eq!(leases.len(), 7, "every unfinished job was claimed");
    for lease in leases {
        complete(s, r, t(20_005), lease)?;
    }
    commit(s, r)?;
    submit(s, r, t(20_006), 11, 0, 3, false)?;
    submit(s, r, t(20_006), 12, 0, 3, false)?;
    let finished = submit(s, r, t(20_006), 3, 0, 3, true)?;
    assert_eq!(finished, 3, "a finished job's key still deduplicates");
    commit(s, r)?;
    let c = claim(s, r, t(20_007), 6)?.expect("job 11 is runnable");
    commit(s, r)?;
    complete(s, r, t(20_008), c)?;
    submit(s, r, t(20_008), 13, 2, 4, false)?;
    commit(s, r)?;
    // Job 13 fails three times, then succeeds; job 12 stays pending.
    for round in 0..4u64 {
        let now = 40_000 + round * 20_000;
        let lease = claim(s, r, t(now), 7)?.expect("job 13 is runnable");
        commit(s, r)?;
        if round < 3 {
            let retry = fail(s, r, t(now + 1), lease, &mut rng)?;
            assert!(matches!(retry, Failed::Retry { .. }), "{retry:?}");
        } else {
            complete(s, r, t(now + 1), lease)?;
        }
        commit(s, r)?;
    }
    Some(())
}

/// Opens and runs the workload; stops at the first error.
fn workload(storage: &mut SimStorage, r: &mut Run) {
    let Ok((mut s, _)) = open(storage, Instant::ZERO) else {
        return;
    };
    if steps(&mut s, r).is_none() {
        return;
    }
    r.checkpoints = s.stats().checkpoints;
    r.completed = s.close().is_ok();
}

/// The recovered state in the model's terms.
fn recovered(s: &Sched<'_>) -> Model {
    let mut model = Model::new();
    for job in s.jobs() {
        let phase = match job.state {
            State::Pending => Phase::Pending,
            State::Running => Phase::Running,
            State::Dead => Phase::Dead,
        };
        let previous = model.insert(
            job.id,
            ModelJob {
                key: job.key,
                phase,
                attempts: job.attempts,
                max_attempts: job.max_attempts,
                token: job.token,
            },
        );
        assert!(previous.is_none(), "job {} is listed twice", job.id);
    }
    for done in s.finished() {
        let previous = model.insert(
            done.job,
            ModelJob {
                key: done.key,
                phase: Phase::Finished,
                attempts: 0,
                max_attempts: 0,
                token: done.token,
            },
        );
        assert!(
            previous.is_none(),
            "job {} is both unfinished and finished",
            done.job
        );
    }
    model
}

const REOPEN: Instant = Instant::from_millis(1_000_000);

/// Reopens a copy of `storage` after a cut and checks it against the run; returns the
/// recovered state and `next_token`.
fn check_recovery(storage: &SimStorage, r: &Run, context: &str) -> (Model, u64) {
    let mut copy = storage.clone();
    let (mut s, recovery) = open(&mut copy, REOPEN)
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
    assert!(
        recovery.corruption.is_none(),
        "{context}: a crash was reported as corruption: {recovery:?}"
    );
    let got = recovered(&s);
    for id in r.acked.keys() {
        assert!(
            got.contains_key(id),
            "{context}: acknowledged job {id} lost"
        );
    }
    for (id, job) in &r.acked {
        if job.phase == Phase::Finished {
            assert_eq!(
                got[id].phase,
                Phase::Finished,
                "{context}: acknowledged completion of job {id} undone"
            );
        }
    }
    let submitted: BTreeSet<u64> = r
        .acked
        .keys()
        .copied()
        .chain(r.staged.iter().filter_map(|op| match op {
            Op::Submit { id, .. } => Some(*id),
            _ => None,
        }))
        .collect();
    for id in got.keys() {
        assert!(
            submitted.contains(id),
            "{context}: job {id} was never submitted"
        );
    }
    // Exactly the acknowledged state plus a prefix of what was staged after it.
    let mut model = r.acked.clone();
    let mut matched = got == model;
    for &op in &r.staged {
        apply(&mut model, op);
        matched |= got == model;
    }
    assert!(
        matched,
        "{context}: recovered {got:?}\nacknowledged {:?}\nstaged {:?}",
        r.acked, r.staged
    );
    // Fencing tokens.
    let next_token = s.next_token();
    assert!(
        next_token > r.max_acked_token(),
        "{context}: next token {next_token}, acknowledged {}",
        r.max_acked_token()
    );
    for &(job, token) in &r.acked_leases {
        let current =
            matches!(got.get(&job), Some(j) if j.phase == Phase::Running && j.token == token);
        let answer = s.heartbeat(REOPEN, job, token);
        assert_eq!(
            answer.is_ok(),
            current,
            "{context}: heartbeat of job {job} with token {token}: {answer:?}"
        );
    }
    for (&id, job) in &got {
        if job.phase == Phase::Running {
            assert!(job.token < next_token, "{context}: job {id}");
            assert!(
                s.complete(REOPEN, id, next_token).is_err(),
                "{context}: a future token completed job {id}"
            );
        }
    }
    // Keys: unique, and every acknowledged one still deduplicates.
    let keys: BTreeSet<u64> = got.values().filter_map(|job| job.key).collect();
    assert_eq!(keys.len(), got.len(), "{context}: a key is shared: {got:?}");
    for (&id, job) in &r.acked {
        let key = job.key.unwrap();
        let bytes = payload(key);
        let again = NewJob {
            key: Some(key),
            priority: 0,
            delay: Duration::ZERO,
            max_attempts: 1,
            payload: &bytes,
        };
        let answer = s.submit(REOPEN, &again);
        assert!(
            matches!(answer, Ok(sub) if sub.duplicate && sub.job == id),
            "{context}: key {key} of job {id}: {answer:?}"
        );
    }
    (got, next_token)
}

fn without_extra(model: &Model) -> Model {
    model
        .iter()
        .filter(|(_, job)| job.key.is_none_or(|key| key < EXTRA_KEY))
        .map(|(&id, &job)| (id, job))
        .collect()
}

/// A second cut during recovery and the first writes after it, then a clean reopen: the same
/// state (plus the extra job if its commit succeeded), and a close reopens clean.
fn check_second_cut(
    storage: &mut SimStorage,
    base: &Model,
    base_token: u64,
    rng: &mut SimRng,
    context: &str,
) {
    let second = storage.ops_done() + rng.below(10);
    storage.set_power_cut_at(second, TornSpec::Random);
    let mut extra_acked = false;
    if let Ok((mut s, _)) = open(storage, REOPEN) {
        let bytes = payload(1);
        let job = NewJob {
            key: Some(EXTRA_KEY),
            priority: 0,
            delay: Duration::ZERO,
            max_attempts: 1,
            payload: &bytes,
        };
        extra_acked = s.submit(REOPEN, &job).is_ok() && s.commit().is_ok();
    }
    storage.clear_power_cut();
    storage.reboot_with(CrashMode::Random);
    let context = format!("{context}, second cut at op {second}");
    let (s, recovery) =
        open(storage, REOPEN).unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
    assert!(
        recovery.corruption.is_none(),
        "{context}: a crash was reported as corruption: {recovery:?}"
    );
    let got = recovered(&s);
    assert_eq!(&without_extra(&got), base, "{context}");
    assert_eq!(s.next_token(), base_token, "{context}");
    if extra_acked {
        assert!(
            got.values().any(|job| job.key == Some(EXTRA_KEY)),
            "{context}: the acknowledged extra job was lost"
        );
    }
    // The scheduler keeps working: one more job, a close, and the next open is clean.
    let mut s = s;
    let bytes = payload(2);
    let job = NewJob {
        key: Some(EXTRA_KEY + 1),
        priority: 0,
        delay: Duration::ZERO,
        max_attempts: 1,
        payload: &bytes,
    };
    let id = s
        .submit(REOPEN, &job)
        .unwrap_or_else(|error| {
            panic!(
                "{context}: submit after recovery: {error:?}, {} free segments, {recovery:?}",
                s.log().free_segments()
            )
        })
        .job;
    s.commit()
        .unwrap_or_else(|error| panic!("{context}: commit after recovery: {error:?}"));
    s.close()
        .unwrap_or_else(|error| panic!("{context}: close: {error:?}"));
    let (s, recovery) = open(storage, REOPEN).unwrap();
    assert!(recovery.is_clean(), "{context}: {recovery:?}");
    let last = recovered(&s);
    assert_eq!(last.get(&id).map(|job| job.key), Some(job.key), "{context}");
    assert_eq!(without_extra(&last), *base, "{context}");
}

fn enumerate(write_size: u32, erase_size: u32) -> u64 {
    let geometry = geometry(write_size, erase_size);
    let mut dry = SimStorage::new(geometry, 1).unwrap();
    dry.record_ops(true);
    let mut full = Run::new(Vec::new());
    workload(&mut dry, &mut full);
    assert!(full.completed, "the workload completes without cuts");
    assert!(full.staged.is_empty());
    let ops = dry.recorded_ops().to_vec();
    let erases = ops.iter().filter(|op| op.kind == OpKind::Erase).count() as u64;
    assert!(
        full.checkpoints >= 3,
        "only {} checkpoints",
        full.checkpoints
    );
    assert!(
        erases > SEGMENTS,
        "the log did not wrap: {erases} erases of {SEGMENTS} segments"
    );
    let claims_dry = full.claims.clone();
    let mut rng = SimRng::new(u64::from(write_size) << 32 | u64::from(erase_size));
    let mut checked = 0u64;
    for op in &ops {
        for prefix in op.crash_points(u64::from(write_size)) {
            let context =
                format!("geometry {write_size}/{erase_size}, op {op:?}, torn at {prefix}");
            let mut storage = SimStorage::new(geometry, 1).unwrap();
            storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
            let mut run = Run::new(claims_dry.clone());
            workload(&mut storage, &mut run);
            storage.reboot();
            let (base, base_token) = check_recovery(&storage, &run, &context);
            check_second_cut(&mut storage, &base, base_token, &mut rng, &context);
            checked += 1;
        }
    }
    println!(
        "job crash points: geometry write {write_size:>2} / erase {erase_size:>5}: {checked:>6} points over {} operations ({erases} erases, {} checkpoints)",
        ops.len(),
        full.checkpoints
    );
    checked
}

#[test]
fn every_crash_point_of_the_scheduler_recovers_what_was_acknowledged() {
    let total = sum_in_parallel(
        GEOMETRIES
            .iter()
            .map(|&(write, erase)| move || enumerate(write, erase))
            .collect(),
    );
    println!("job crash points checked in all: {total}");
    assert!(total >= 1_000, "only {total} crash points");
}
