//! The scheduler's records (SPEC.md section 11.2) and the in-memory index they rebuild.
//!
//! Live calls and replay share one [`Index::apply`]: a live call builds a record, appends it and
//! applies it; replay decodes each record and applies it. Times in records are durations
//! relative to the moment the record was written (the monotonic clock restarts with the
//! process); `apply` adds them to a base instant: `now` live, zero during replay, and
//! [`Index::rebase`] moves the replayed state to the open time.

use core::time::Duration;

use heapless::{Deque, Vec};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde::Deserialize;

use crate::crdt::NodeId;
use crate::log::{Appended, Position};
use crate::time::Instant;

/// Kind of a SUBMIT record ([`SubmitRecord`]).
pub const KIND_SUBMIT: u8 = 48;
/// Kind of a CLAIM record ([`ClaimRecord`]).
pub const KIND_CLAIM: u8 = 49;
/// Kind of a COMPLETE record ([`FenceRecord`]).
pub const KIND_COMPLETE: u8 = 50;
/// Kind of a FAIL record ([`FailRecord`]).
pub const KIND_FAIL: u8 = 51;
/// Kind of a DEAD record ([`FailRecord`], `delay_us` 0).
pub const KIND_DEAD: u8 = 52;
/// Kind of a REQUEUE record (the job id, a u64).
pub const KIND_REQUEUE: u8 = 53;
/// Kind of a CHECKPOINT record: the whole index.
pub const KIND_CHECKPOINT: u8 = 54;

/// The encoded size of one checkpointed job at most.
pub const JOB_RECORD_LEN_MAX: usize = 10 + 11 + 1 + 1 + 10 + 5 + 5 + 10 + 5 + 10 + 10 + 5 + 10;
/// The encoded size of one remembered finished job at most.
pub const FINISHED_LEN_MAX: usize = 10 + 11 + 10;

/// The largest checkpoint payload for `jobs` jobs and `done` remembered finished jobs.
pub const fn checkpoint_len_max(jobs: usize, done: usize) -> usize {
    10 + 10 + 5 + jobs * JOB_RECORD_LEN_MAX + 5 + done * FINISHED_LEN_MAX
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Waiting to be claimed once its run-after time has passed.
    Pending,
    /// Claimed: a worker holds a lease on it.
    Running,
    /// Failed its last allowed attempt: kept until re-queued.
    Dead,
}

/// One job as the index holds it; its payload stays in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The job's id, assigned in submission order from 1.
    pub id: u64,
    /// The submitter's deduplication key.
    pub key: Option<u64>,
    /// Where the job stands.
    pub state: State,
    /// Higher runs first.
    pub priority: u8,
    /// Not offered before this instant.
    pub run_after: Instant,
    /// Failed (or expired) attempts so far.
    pub attempts: u32,
    /// Attempts allowed before the job goes dead.
    pub max_attempts: u32,
    /// The fencing token of the latest claim (0 before any).
    pub token: u64,
    /// The worker of the latest claim.
    pub worker: NodeId,
    /// When the current lease runs out (running jobs).
    pub lease: Instant,
    /// The SUBMIT record holding the payload.
    pub submit: Appended,
}

/// A finished job, remembered so that a retried submit or completion is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Finished {
    /// The job's id.
    pub job: u64,
    /// Its deduplication key.
    pub key: Option<u64>,
    /// The token it was completed with.
    pub token: u64,
}

/// A new job, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SubmitRecord<'a> {
    /// The job's id. A second SUBMIT of a known id moves the payload's position only.
    pub job: u64,
    /// Deduplication key.
    pub key: Option<u64>,
    /// Priority.
    pub priority: u8,
    /// Run-after, relative to the record.
    pub delay_us: u64,
    /// Attempts allowed, at least 1.
    pub max_attempts: u32,
    /// The job's bytes.
    pub payload: &'a [u8],
}

/// A claim, as stored (synced before the worker hears of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The job.
    pub job: u64,
    /// The worker.
    pub worker: NodeId,
    /// The fencing token, above every token given before.
    pub token: u64,
    /// The lease granted, in microseconds.
    pub lease_us: u64,
}

/// A completion: the job and the token it was completed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct FenceRecord {
    /// The job.
    pub job: u64,
    /// The claim's token.
    pub token: u64,
}

/// A failed or expired attempt (FAIL), or the last one (DEAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct FailRecord {
    /// The job.
    pub job: u64,
    /// The claim's token.
    pub token: u64,
    /// Failed attempts, this one included.
    pub attempts: u32,
    /// The next run-after, relative to the record (0 for DEAD).
    pub delay_us: u64,
}

/// One job in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
struct JobRecord {
    job: u64,
    key: Option<u64>,
    state: State,
    priority: u8,
    delay_us: u64,
    attempts: u32,
    max_attempts: u32,
    token: u64,
    worker: NodeId,
    lease_us: u64,
    submit_sequence: u64,
    submit_epoch: u32,
    submit_offset: u64,
}

/// A record of the scheduler, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// SUBMIT.
    Submit(SubmitRecord<'a>),
    /// CLAIM.
    Claim(ClaimRecord),
    /// COMPLETE.
    Complete(FenceRecord),
    /// FAIL.
    Fail(FailRecord),
    /// DEAD.
    Dead(FailRecord),
    /// REQUEUE.
    Requeue(u64),
}

impl<'a> Record<'a> {
    /// The log kind.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Submit(_) => KIND_SUBMIT,
            Self::Claim(_) => KIND_CLAIM,
            Self::Complete(_) => KIND_COMPLETE,
            Self::Fail(_) => KIND_FAIL,
            Self::Dead(_) => KIND_DEAD,
            Self::Requeue(_) => KIND_REQUEUE,
        }
    }

    /// Writes the payload into `area`.
    pub fn emit(&self, area: &mut [u8]) -> Option<usize> {
        let used = match self {
            Self::Submit(record) => postcard::to_slice(record, area),
            Self::Claim(record) => postcard::to_slice(record, area),
            Self::Complete(record) => postcard::to_slice(record, area),
            Self::Fail(record) | Self::Dead(record) => postcard::to_slice(record, area),
            Self::Requeue(job) => postcard::to_slice(job, area),
        };
        used.ok().map(|used| used.len())
    }

    /// Decodes a record of `kind`; `None` when the payload is not one (or not exactly one).
    /// CHECKPOINT is decoded by `Index::apply_checkpoint`.
    pub fn decode(kind: u8, payload: &'a [u8]) -> Option<Self> {
        match kind {
            KIND_SUBMIT => exact(payload)
                .filter(|record: &SubmitRecord<'_>| record.max_attempts >= 1 && record.job != 0)
                .map(Self::Submit),
            KIND_CLAIM => exact(payload).map(Self::Claim),
            KIND_COMPLETE => exact(payload).map(Self::Complete),
            KIND_FAIL => exact(payload).map(Self::Fail),
            KIND_DEAD => exact(payload).map(Self::Dead),
            KIND_REQUEUE => exact(payload).map(Self::Requeue),
            _ => None,
        }
    }
}

/// Decodes a postcard value that must use every byte.
pub fn exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// The index has no room for another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity;

/// What the scheduler keeps in memory: bounded by `JOBS` jobs and `DONE` finished ones.
#[derive(Debug, Clone)]
pub struct Index<const JOBS: usize, const DONE: usize> {
    /// Every pending, running and dead job.
    pub jobs: Vec<Job, JOBS>,
    /// The latest finished jobs, oldest first.
    pub finished: Deque<Finished, DONE>,
    /// The id the next job gets.
    pub next_id: u64,
    /// The token the next claim gets: above every token ever written.
    pub next_token: u64,
}

fn after(base: Instant, micros: u64) -> Instant {
    base.saturating_add(Duration::from_micros(micros))
}

impl<const JOBS: usize, const DONE: usize> Index<JOBS, DONE> {
    /// An empty index.
    pub const fn new() -> Self {
        Self {
            jobs: Vec::new(),
            finished: Deque::new(),
            next_id: 1,
            next_token: 1,
        }
    }

    /// The slot of job `id`.
    pub fn find(&self, id: u64) -> Option<usize> {
        self.jobs.iter().position(|job| job.id == id)
    }

    /// Applies `record`, stored at `at`, with its times relative to `base`. Records about a job
    /// the index does not hold (finished before a checkpoint) change nothing.
    pub fn apply(
        &mut self,
        record: &Record<'_>,
        at: Appended,
        base: Instant,
    ) -> Result<(), Capacity> {
        match *record {
            Record::Submit(submit) => return self.apply_submit(&submit, at, base),
            Record::Claim(claim) => {
                self.next_token = self.next_token.max(claim.token.saturating_add(1));
                if let Some(job) = self.job_mut(claim.job) {
                    job.state = State::Running;
                    job.token = claim.token;
                    job.worker = claim.worker;
                    job.lease = after(base, claim.lease_us);
                }
            }
            Record::Complete(fence) => self.finish(fence),
            Record::Fail(fail) => {
                if let Some(job) = self.job_mut(fail.job) {
                    job.state = State::Pending;
                    job.attempts = fail.attempts;
                    job.run_after = after(base, fail.delay_us);
                }
            }
            Record::Dead(fail) => {
                if let Some(job) = self.job_mut(fail.job) {
                    job.state = State::Dead;
                    job.attempts = fail.attempts;
                }
            }
            Record::Requeue(id) => {
                if let Some(job) = self.job_mut(id) {
                    job.state = State::Pending;
                    job.attempts = 0;
                    job.run_after = base;
                }
            }
        }
        Ok(())
    }

    fn job_mut(&mut self, id: u64) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|job| job.id == id)
    }

    fn apply_submit(
        &mut self,
        submit: &SubmitRecord<'_>,
        at: Appended,
        base: Instant,
    ) -> Result<(), Capacity> {
        self.next_id = self.next_id.max(submit.job.saturating_add(1));
        if let Some(job) = self.job_mut(submit.job) {
            job.submit = at; // A copy moved forward: the payload lives here now.
            return Ok(());
        }
        let job = Job {
            id: submit.job,
            key: submit.key,
            state: State::Pending,
            priority: submit.priority,
            run_after: after(base, submit.delay_us),
            attempts: 0,
            max_attempts: submit.max_attempts,
            token: 0,
            worker: NodeId(0),
            lease: Instant::ZERO,
            submit: at,
        };
        self.jobs.push(job).map_err(|_| Capacity)
    }

    /// Forgets a completed job, remembering its id, key and token.
    fn finish(&mut self, fence: FenceRecord) {
        let Some(slot) = self.find(fence.job) else {
            return;
        };
        let job = self.jobs.swap_remove(slot);
        if self.finished.is_full() {
            self.finished.pop_front();
        }
        // Room was just made.
        let _ = self.finished.push_back(Finished {
            job: job.id,
            key: job.key,
            token: fence.token,
        });
    }

    /// Replaces the whole index with a checkpoint's; `None` when the payload is not one.
    pub fn apply_checkpoint(&mut self, payload: &[u8]) -> Option<()> {
        let (next_id, next_token, jobs, finished): (
            u64,
            u64,
            Vec<JobRecord, JOBS>,
            Vec<Finished, DONE>,
        ) = exact(payload)?;
        let mut index = Self::new();
        index.next_id = next_id.max(self.next_id).max(1);
        index.next_token = next_token.max(self.next_token).max(1);
        for record in jobs {
            if record.job == 0 || record.job >= index.next_id || record.max_attempts == 0 {
                return None;
            }
            // Capacity: the checkpoint held at most JOBS jobs.
            let _ = index.jobs.push(job_from_record(&record));
        }
        for job in finished {
            let _ = index.finished.push_back(job);
        }
        *self = index;
        Some(())
    }

    /// Moves replayed times (relative to zero) to `now`: run-after times count from the open,
    /// and every running job gets at least a full `lease` from the open, since the time its
    /// worker already had is unknown (the monotonic clock restarted).
    pub fn rebase(&mut self, now: Instant, lease: Duration) {
        for job in self.jobs.iter_mut() {
            job.run_after = now.saturating_add(Duration::from_micros(job.run_after.as_micros()));
            let held = Duration::from_micros(job.lease.as_micros()).max(lease);
            job.lease = now.saturating_add(held);
        }
    }
}

impl<const JOBS: usize, const DONE: usize> Default for Index<JOBS, DONE> {
    fn default() -> Self {
        Self::new()
    }
}

fn job_from_record(record: &JobRecord) -> Job {
    Job {
        id: record.job,
        key: record.key,
        state: record.state,
        priority: record.priority,
        run_after: Instant::from_micros(record.delay_us),
        attempts: record.attempts,
        max_attempts: record.max_attempts,
        token: record.token,
        worker: record.worker,
        lease: Instant::from_micros(record.lease_us),
        submit: Appended {
            sequence: record.submit_sequence,
            position: Position {
                epoch: record.submit_epoch,
                offset: record.submit_offset,
            },
        },
    }
}

fn record_from_job(job: &Job, now: Instant) -> JobRecord {
    let micros = |at: Instant| at.as_micros().saturating_sub(now.as_micros());
    JobRecord {
        job: job.id,
        key: job.key,
        state: job.state,
        priority: job.priority,
        delay_us: micros(job.run_after),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        token: job.token,
        worker: job.worker,
        lease_us: micros(job.lease),
        submit_sequence: job.submit.sequence,
        submit_epoch: job.submit.position.epoch,
        submit_offset: job.submit.position.offset,
    }
}

/// A checkpoint of `index` taken at `now`, serialized without copying the index.
pub struct CheckpointView<'a, const JOBS: usize, const DONE: usize> {
    /// The index.
    pub index: &'a Index<JOBS, DONE>,
    /// The time times are made relative to.
    pub now: Instant,
}

struct JobsView<'a>(&'a [Job], Instant);

impl Serialize for JobsView<'_> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let now = self.1;
        serializer.collect_seq(self.0.iter().map(|job| record_from_job(job, now)))
    }
}

struct FinishedView<'a, const DONE: usize>(&'a Deque<Finished, DONE>);

impl<const DONE: usize> Serialize for FinishedView<'_, DONE> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<const JOBS: usize, const DONE: usize> Serialize for CheckpointView<'_, JOBS, DONE> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let mut tuple = serializer.serialize_tuple(4)?;
        tuple.serialize_element(&self.index.next_id)?;
        tuple.serialize_element(&self.index.next_token)?;
        tuple.serialize_element(&JobsView(&self.index.jobs, self.now))?;
        tuple.serialize_element(&FinishedView(&self.index.finished))?;
        tuple.end()
    }
}
