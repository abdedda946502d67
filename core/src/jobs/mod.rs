//! The job scheduler (Q6): jobs and every state transition in a storage log; workers claim
//! pending jobs under a lease and a fencing token; expired leases re-offer the job; failures
//! are retried with jittered exponential backoff until a dead-letter state.
//!
//! A job is submitted with a payload, an optional deduplication key, a priority, a run-after
//! delay and a number of attempts. A worker's claim takes the best runnable job (highest
//! priority, then earliest run-after, then submission order, among jobs whose run-after has
//! passed), marks it running under the worker's id with a lease and a fresh fencing token, and
//! is answered only once the CLAIM record is synced ([`Service::commit`](crate::service::Service::commit)). Heartbeats extend the
//! lease; completion and failure must carry the token. A lease that runs out (no heartbeat)
//! counts as a failed attempt and offers the job again at once; a failure offers it again after
//! a backoff; after `max_attempts` failures the job is dead until re-queued.
//!
//! # Guarantees
//!
//! - A submitted job acknowledged (or returned by a local call followed by a successful commit)
//!   is never lost: it survives any crash, and stays in the log until it is completed.
//! - Fencing tokens grow strictly, across every job and every restart: a token is handed out
//!   only after its CLAIM record is durable, and replay resumes above the largest token in the
//!   log (CLAIM records and checkpoints). A heartbeat, completion or failure with any token but
//!   the current claim's is refused ([`Refusal::StaleToken`]), before or after a restart.
//! - A job is held by at most one lease at a time, as seen by the scheduler's clock.
//! - Memory is fixed by the const generics: `JOBS` jobs (pending, running or dead), `DONE`
//!   finished jobs remembered for deduplication, `PENDING` answers waiting for a sync. A full
//!   table refuses ([`Refusal::Full`], [`Refusal::Busy`]); nothing is dropped silently.
//! - Payloads stay in the log (read back on claim); the log is reclaimed up to the oldest
//!   segment holding an unfinished job's SUBMIT, after a checkpoint of the index, released in
//!   the sync that makes the checkpoint durable.
//!
//! # Time across restarts
//!
//! Times are the caller's monotonic `Instant`, which restarts with the process, so records hold
//! durations relative to their own writing. At open, a run-after delay counts from the open
//! time (a job never runs earlier than asked; the downtime is not credited), and every running
//! job's lease is granted again in full from the open time: its worker may still be working,
//! and nobody can know how much of its lease passed during the downtime. Returning the job to
//! pending at once would be the unsafe choice (a second worker could start while the first
//! still runs). Heartbeats are kept in memory only, for the same reason: a restart re-grants a
//! full lease, at least as long as any extension a heartbeat gave, so logging them would cost a
//! sync per heartbeat and buy nothing.
//!
//! # Not guaranteed
//!
//! - Exactly-once execution: a worker whose lease ran out (a pause, a partition) may still be
//!   running while another holds the job; fencing tokens let the job's effects refuse the
//!   stale worker, but only if they check the token.
//! - A retried `Submit` without a key stores a second job. Keys deduplicate while the job is
//!   known or among the last `DONE` finished ones. A retried `Claim` (same client, incarnation
//!   and request id: its answer was lost) gets the same claim again while it runs and is among
//!   the last 32 claims granted; past that, or after a restart of the scheduler, it claims
//!   another job and the first one's lease runs out.
//! - More unfinished jobs than the log can hold fill it: writes are then refused
//!   ([`Refusal::Unavailable`]). An old unfinished job does not pin the log: when free segments
//!   run short, a checkpoint first copies the SUBMIT records of the oldest segment forward.
//! - Lowering the configured lease across a restart shortens re-granted leases accordingly.
//! - Sizing: a checkpoint holds the whole index ([`checkpoint_len_max`]), and the log's segments
//!   should hold at least four of them. After a run of crashes that leaves every segment live,
//!   recovery resumes in the newest segment behind a margin of one largest frame (SPEC.md 4.6);
//!   with smaller segments there is no room for the checkpoint that would free space, and every
//!   write is refused until an operator intervenes.

mod message;
mod record;
mod service;
#[cfg(test)]
mod tests;

pub use message::{decode, encode, Malformed, Message, Refusal, LIST_MAX, PAYLOAD_LEN_MAX};
pub use record::{
    checkpoint_len_max, ClaimRecord, FailRecord, FenceRecord, Finished, Job, Record, State,
    SubmitRecord, KIND_CHECKPOINT, KIND_CLAIM, KIND_COMPLETE, KIND_DEAD, KIND_FAIL, KIND_REQUEUE,
    KIND_SUBMIT,
};

use core::time::Duration;

use heapless::{Deque, Vec};

use crate::crdt::NodeId;
use crate::frame::EmitError;
use crate::log::{self, AppendError, Appended, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::rng::{Rng, SplitMix64};
use crate::service::Replies;
use crate::storage::Storage;
use crate::time::Instant;
use record::{CheckpointView, Index};

/// Most SUBMIT records copied forward per checkpoint.
const RELOCATE_MAX: usize = 4;
/// Immediate answers (no write behind them) waiting to be sent; more are dropped and counted.
const OUTBOX: usize = 16;
/// Claims remembered for retried `Claim` requests.
const RECENT_CLAIMS: usize = 32;
/// How long after a lease expiry could not be written (the log is full) it is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// A claim granted to a client's `Claim`, remembered so that a retry of that request (its
/// `Claimed` answer lost) gets the same claim back instead of a second job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecentClaim {
    worker: NodeId,
    incarnation: u32,
    request: u64,
    job: u64,
    token: u64,
}

/// How a scheduler behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The lease a claim or a heartbeat grants.
    pub lease: Duration,
    /// The first retry's backoff.
    pub backoff_base: Duration,
    /// The largest backoff.
    pub backoff_cap: Duration,
    /// A checkpoint follows every this-many records (at least 1); also when the log runs short
    /// of free segments.
    pub checkpoint_every: u32,
    /// The largest payload a submit may carry, at most [`PAYLOAD_LEN_MAX`]: lower it when the
    /// `Claimed` answer must fit a datagram smaller than the default MTU.
    pub payload_max: usize,
    /// The log underneath; its `payload_max` is raised to what a checkpoint needs.
    pub log: log::Config,
}

impl Default for Config {
    /// A 30 s lease, backoff from 1 s up to 5 min, a checkpoint every 256 records.
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            checkpoint_every: 256,
            payload_max: PAYLOAD_LEN_MAX,
            log: log::Config::default(),
        }
    }
}

/// A job to submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewJob<'a> {
    /// Deduplication key: a second submit with the same key gets the first job's id.
    pub key: Option<u64>,
    /// Higher runs first.
    pub priority: u8,
    /// Not offered before this much time has passed.
    pub delay: Duration,
    /// Attempts before the job goes dead, at least 1.
    pub max_attempts: u32,
    /// The job's bytes, at most [`PAYLOAD_LEN_MAX`].
    pub payload: &'a [u8],
}

/// The answer to a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The job's id.
    pub job: u64,
    /// True when the key was known: nothing new was stored.
    pub duplicate: bool,
}

/// A claim granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: u64,
    /// Its fencing token.
    pub token: u64,
    /// When the lease runs out unless extended.
    pub expires: Instant,
    /// Earlier failed attempts.
    pub attempts: u32,
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The job runs again after `at`.
    Retry {
        /// The new run-after.
        at: Instant,
        /// Failed attempts so far.
        attempts: u32,
    },
    /// The job used its last attempt and is dead.
    Dead,
}

/// Counts of what the scheduler did and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs stored.
    pub submitted: u64,
    /// Submits answered with an existing job (same key).
    pub duplicates: u64,
    /// Claims granted.
    pub claims: u64,
    /// Heartbeats accepted.
    pub heartbeats: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Attempts failed by the worker.
    pub failed: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Jobs that went dead.
    pub dead: u64,
    /// Dead jobs re-queued.
    pub requeued: u64,
    /// Heartbeats, completions and failures refused for a stale token.
    pub stale: u64,
    /// Payloads that did not decode: dropped.
    pub malformed: u64,
    /// Answers dropped because their queue was full (the client retries).
    pub outbox_full: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Syncs done by [`Service::commit`](crate::service::Service::commit).
    pub syncs: u64,
}

/// Why a commit failed: the storage failed and the scheduler is poisoned; nothing staged since
/// the previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Recording a release failed.
    Release(SyncError<E>),
    /// The sync failed.
    Sync(SyncError<E>),
}

/// Errors of [`Scheduler::open`].
pub type SchedulerOpenError<E> = OpenError<E, ReplayError>;

/// An answer to a client, encoded when it is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Submitted(Submitted),
    Claimed(Lease),
    NoJob,
    Done { job: u64, lease: Option<Instant> },
    Listed { after: u64 },
    Refused(Refusal),
}

/// A job scheduler over a storage log. See the [module docs](self).
#[derive(Debug)]
pub struct Scheduler<S, B, const JOBS: usize, const DONE: usize, const PENDING: usize> {
    log: Log<S, B>,
    config: Config,
    index: Index<JOBS, DONE>,
    /// Answers owed to clients, some waiting for the next sync.
    replies: Replies<Answer, PENDING, OUTBOX>,
    /// Whether the log holds appended frames not yet synced.
    staged: bool,
    since_checkpoint: u32,
    pending_release: Option<Appended>,
    /// The latest time seen by `handle_timeout`: run-after times before it need no wake-up.
    last_now: Instant,
    poisoned: bool,
    /// Jitter for failures reported by messages (which bring no [`Rng`]); reseeded from the
    /// caller's generator at every timeout.
    jitter: SplitMix64,
    /// The latest claims granted to clients' requests.
    recent_claims: Deque<RecentClaim, RECENT_CLAIMS>,
    /// When an expiry that could not be written is tried again (no wake-ups before it).
    expiry_retry: Option<Instant>,
    stats: Stats,
}

/// The backoff after the `attempts`-th failure: `base · 2^(attempts-1)`, capped, then drawn
/// uniformly from its upper half ("equal jitter"), so retries of jobs that failed together
/// spread out but never come sooner than half the nominal backoff.
pub fn backoff<R: Rng>(config: &Config, attempts: u32, rng: &mut R) -> Duration {
    let base = u64::try_from(config.backoff_base.as_micros()).unwrap_or(u64::MAX);
    let cap = u64::try_from(config.backoff_cap.as_micros()).unwrap_or(u64::MAX);
    let shift = attempts.saturating_sub(1).min(63);
    let nominal = base.saturating_mul(1u64 << shift).min(cap);
    let half = nominal / 2;
    let jitter = rng.below((nominal - half).saturating_add(1));
    Duration::from_micros(half.saturating_add(jitter))
}

impl<S: Storage, B: AsMut<[u8]>, const JOBS: usize, const DONE: usize, const PENDING: usize>
    Scheduler<S, B, JOBS, DONE, PENDING>
{
    /// Opens the scheduler stored in `storage` at time `now`, replaying its log: every
    /// unfinished job comes back, run-after delays count from `now` and running jobs get a full
    /// lease from `now` (see the [module docs](self)).
    pub fn open(
        storage: S,
        buffer: B,
        config: Config,
        now: Instant,
    ) -> Result<(Self, Recovery), SchedulerOpenError<S::Error>> {
        let mut index = Index::<JOBS, DONE>::new();
        let submit_max = PAYLOAD_LEN_MAX + 64;
        let payload_max = checkpoint_len_max(JOBS, DONE).max(submit_max);
        let log_config = log::Config {
            payload_max: config
                .log
                .payload_max
                .max(u32::try_from(payload_max).unwrap_or(u32::MAX)),
            ..config.log
        };
        let mut since_checkpoint = 0u32;
        let (log, recovery) = Log::open(storage, buffer, log_config, |entry| {
            replay(&mut index, &mut since_checkpoint, entry)
        })?;
        index.rebase(now, config.lease);
        let scheduler = Self {
            log,
            config: Config {
                checkpoint_every: config.checkpoint_every.max(1),
                ..config
            },
            index,
            replies: Replies::new(),
            staged: false,
            since_checkpoint,
            pending_release: None,
            last_now: now,
            poisoned: false,
            jitter: SplitMix64::new(now.as_micros()),
            recent_claims: Deque::new(),
            expiry_retry: None,
            stats: Stats::default(),
        };
        Ok((scheduler, recovery))
    }

    /// Every unfinished job (pending, running, dead), in no particular order.
    pub fn jobs(&self) -> &[Job] {
        &self.index.jobs
    }

    /// The job `id`, if unfinished.
    pub fn job(&self, id: u64) -> Option<Job> {
        self.index.find(id).map(|slot| self.index.jobs[slot])
    }

    /// The finished jobs still remembered, oldest first.
    pub fn finished(&self) -> impl Iterator<Item = &Finished> + '_ {
        self.index.finished.iter()
    }

    /// The token the next claim will get: above every token ever handed out.
    pub fn next_token(&self) -> u64 {
        self.index.next_token
    }

    /// Up to [`LIST_MAX`] dead job ids above `after`, increasing, and whether more follow.
    pub fn dead(&self, after: u64) -> (Vec<u64, LIST_MAX>, bool) {
        let mut listed = Vec::new();
        let mut floor = after;
        // Bounded: LIST_MAX + 1 scans of the table.
        for _ in 0..=LIST_MAX {
            let next = self
                .index
                .jobs
                .iter()
                .filter(|job| job.state == State::Dead && job.id > floor)
                .map(|job| job.id)
                .min();
            let Some(id) = next else {
                return (listed, false);
            };
            if listed.push(id).is_err() {
                return (listed, true);
            }
            floor = id;
        }
        (listed, false)
    }

    /// What the scheduler did and refused.
    pub fn stats(&self) -> Stats {
        Stats {
            outbox_full: self.replies.dropped(),
            ..self.stats
        }
    }

    /// The log underneath.
    pub fn log(&self) -> &Log<S, B> {
        &self.log
    }

    /// The storage, mutable: see [`Log::storage_mut`].
    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Gives the storage and buffer back, dropping what was not committed (as a crash would).
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// Commits what is staged and marks a clean shutdown (see [`Log::close`]). Answers still
    /// queued are not sent.
    pub fn close(mut self) -> Result<(), CommitError<S::Error>> {
        if self.pending_release.is_some() {
            // The checkpoint first, then its release (see `release_after_sync`).
            self.log.sync().map_err(CommitError::Sync)?;
            self.release_after_sync()?;
        }
        self.log.close().map_err(CommitError::Sync)
    }

    /// Stores a new job (staged: durable when the next commit succeeds), or finds the job of
    /// the same key. On `Err` nothing changed.
    pub fn submit(&mut self, now: Instant, job: &NewJob<'_>) -> Result<Submitted, Refusal> {
        if let Some(existing) = job.key.and_then(|key| self.find_key(key)) {
            self.stats.duplicates += 1;
            return Ok(Submitted {
                job: existing,
                duplicate: true,
            });
        }
        if job.payload.len() > self.config.payload_max.min(PAYLOAD_LEN_MAX) {
            return Err(Refusal::TooLarge);
        }
        if job.max_attempts == 0 {
            return Err(Refusal::Invalid);
        }
        if self.index.jobs.is_full() {
            return Err(Refusal::Full);
        }
        let id = self.index.next_id;
        let record = Record::Submit(SubmitRecord {
            job: id,
            key: job.key,
            priority: job.priority,
            delay_us: u64::try_from(job.delay.as_micros()).unwrap_or(u64::MAX),
            max_attempts: job.max_attempts,
            payload: job.payload,
        });
        self.stage(now, &record)?;
        self.stats.submitted += 1;
        Ok(Submitted {
            job: id,
            duplicate: false,
        })
    }

    fn find_key(&self, key: u64) -> Option<u64> {
        let live = self.index.jobs.iter().find(|job| job.key == Some(key));
        let done = || self.index.finished.iter().find(|job| job.key == Some(key));
        live.map(|job| job.id).or_else(|| done().map(|job| job.job))
    }

    /// Claims the best runnable job for `worker` (staged: tell the worker only after the next
    /// commit succeeds). `Ok(None)`: nothing is runnable. On `Err` nothing changed.
    pub fn claim(&mut self, now: Instant, worker: NodeId) -> Result<Option<Lease>, Refusal> {
        let Some(slot) = self.best(now) else {
            return Ok(None);
        };
        let job = self.index.jobs[slot];
        let token = self.index.next_token;
        let record = Record::Claim(ClaimRecord {
            job: job.id,
            worker,
            token,
            lease_us: u64::try_from(self.config.lease.as_micros()).unwrap_or(u64::MAX),
        });
        self.stage(now, &record)?;
        self.stats.claims += 1;
        Ok(Some(Lease {
            job: job.id,
            token,
            expires: now.saturating_add(self.config.lease),
            attempts: job.attempts,
        }))
    }

    /// The slot of the runnable job to claim next: highest priority, then earliest run-after,
    /// then submission order (ids grow with it).
    fn best(&self, now: Instant) -> Option<usize> {
        self.index
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, job)| job.state == State::Pending && job.run_after <= now)
            .min_by_key(|(_, job)| (core::cmp::Reverse(job.priority), job.run_after, job.id))
            .map(|(slot, _)| slot)
    }

    /// The slot of running job `id` if `token` is its current one.
    fn fenced(&mut self, now: Instant, id: u64, token: u64) -> Result<usize, Refusal> {
        let slot = self.index.find(id).ok_or(Refusal::UnknownJob)?;
        let job = &self.index.jobs[slot];
        // A lease that ran out is stale even before the timer that expires it has run.
        if job.state != State::Running || job.token != token || job.lease <= now {
            self.stats.stale += 1;
            return Err(Refusal::StaleToken);
        }
        Ok(slot)
    }

    /// Extends the lease of job `id` held under `token` to a full lease from `now` (memory
    /// only: see the [module docs](self)). Returns the new expiry. On `Err` nothing changed.
    pub fn heartbeat(&mut self, now: Instant, id: u64, token: u64) -> Result<Instant, Refusal> {
        let slot = self.fenced(now, id, token)?;
        let expires = now.saturating_add(self.config.lease);
        self.index.jobs[slot].lease = expires;
        self.stats.heartbeats += 1;
        Ok(expires)
    }

    /// Marks job `id` completed (staged). A repeated completion with the same token of a job
    /// still remembered as finished succeeds again without a write. On `Err` nothing changed.
    pub fn complete(&mut self, now: Instant, id: u64, token: u64) -> Result<(), Refusal> {
        let again = self
            .index
            .finished
            .iter()
            .any(|done| done.job == id && done.token == token);
        if again && self.index.find(id).is_none() {
            return Ok(());
        }
        self.fenced(now, id, token)?;
        self.stage(now, &Record::Complete(FenceRecord { job: id, token }))?;
        self.stats.completed += 1;
        Ok(())
    }

    /// Records a failed attempt of job `id` (staged): it runs again after a jittered backoff,
    /// or goes dead after its last attempt. On `Err` nothing changed.
    pub fn fail<R: Rng>(
        &mut self,
        now: Instant,
        id: u64,
        token: u64,
        rng: &mut R,
    ) -> Result<Failed, Refusal> {
        let slot = self.fenced(now, id, token)?;
        let delay = backoff(
            &self.config,
            self.index.jobs[slot].attempts.saturating_add(1),
            rng,
        );
        let failed = self.fail_slot(now, slot, delay)?;
        self.stats.failed += 1;
        Ok(failed)
    }

    /// Stages the FAIL or DEAD record of the running job in `slot`.
    fn fail_slot(&mut self, now: Instant, slot: usize, delay: Duration) -> Result<Failed, Refusal> {
        let job = self.index.jobs[slot];
        let attempts = job.attempts.saturating_add(1);
        let mut record = FailRecord {
            job: job.id,
            token: job.token,
            attempts,
            delay_us: u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
        };
        if attempts >= job.max_attempts {
            record.delay_us = 0;
            self.stage(now, &Record::Dead(record))?;
            self.stats.dead += 1;
            return Ok(Failed::Dead);
        }
        self.stage(now, &Record::Fail(record))?;
        Ok(Failed::Retry {
            at: now.saturating_add(delay),
            attempts,
        })
    }

    /// Re-queues dead job `id` (staged): pending now, its attempts start again. On `Err`
    /// nothing changed.
    pub fn requeue(&mut self, now: Instant, id: u64) -> Result<(), Refusal> {
        let slot = self.index.find(id).ok_or(Refusal::UnknownJob)?;
        if self.index.jobs[slot].state != State::Dead {
            return Err(Refusal::NotDead);
        }
        self.stage(now, &Record::Requeue(id))?;
        self.stats.requeued += 1;
        Ok(())
    }

    /// Runs `f` on the payload of unfinished job `id`, read back from the log.
    pub fn with_payload<T>(&mut self, id: u64, f: impl FnOnce(&[u8]) -> T) -> Result<T, Refusal> {
        let slot = self.index.find(id).ok_or(Refusal::UnknownJob)?;
        let at = self.index.jobs[slot].submit;
        let (frame, payload) = self
            .log
            .read_ref(at.position)
            .map_err(|_| Refusal::Unavailable)?;
        let record = (frame.sequence == at.sequence)
            .then(|| Record::decode(frame.kind, payload))
            .flatten();
        match record {
            Some(Record::Submit(submit)) if submit.job == id => Ok(f(submit.payload)),
            // Checked when written and when replayed: a mismatch is damage found by a read.
            _ => Err(Refusal::Unavailable),
        }
    }

    /// Expires every lease that ran out by `now`: the job counts a failed attempt and is
    /// offered again at once, or goes dead. Returns how many expired.
    pub fn expire(&mut self, now: Instant) -> u32 {
        let mut expired = 0;
        // Bounded by JOBS; expiry never removes a job, so slots stay put.
        for slot in 0..self.index.jobs.len() {
            let job = self.index.jobs[slot];
            if job.state != State::Running || job.lease > now {
                continue;
            }
            if self.fail_slot(now, slot, Duration::ZERO).is_err() {
                // The storage refuses (full): try again a while later, not at every step.
                self.expiry_retry = Some(now.saturating_add(EXPIRY_RETRY));
                break;
            }
            self.stats.expired += 1;
            expired += 1;
        }
        expired
    }

    /// Appends `record`, applies it, and checkpoints when it is time. On `Err` nothing changed
    /// (the caller checked capacity before).
    fn stage(&mut self, now: Instant, record: &Record<'_>) -> Result<(), Refusal> {
        if self.poisoned {
            return Err(Refusal::Unavailable);
        }
        if self.log.free_segments() <= 1 && self.since_checkpoint > 0 {
            // Reclaim before the log fills: a failed checkpoint leaves things as they were.
            let _ = self.stage_checkpoint(now);
        }
        let appended = self
            .log
            .append(record.kind(), |area| {
                record.emit(area).ok_or(EmitError::BufferTooSmall)
            })
            .map_err(|_| Refusal::Unavailable)?;
        self.staged = true;
        self.index
            .apply(record, appended, now)
            .map_err(|_| Refusal::Full)?;
        self.since_checkpoint = self.since_checkpoint.saturating_add(1);
        if self.since_checkpoint >= self.config.checkpoint_every || self.log.free_segments() <= 2 {
            // A failed checkpoint leaves the record staged; a later one tries again.
            let _ = self.stage_checkpoint(now);
        }
        Ok(())
    }

    /// Appends the whole index; with the next sync, the segments before the oldest unfinished
    /// job's SUBMIT (or before the checkpoint) are released.
    fn stage_checkpoint(&mut self, now: Instant) -> Result<(), AppendError<S::Error>> {
        if self.log.free_segments() <= 2 {
            self.relocate(now);
        }
        let view = CheckpointView {
            index: &self.index,
            now,
        };
        let appended = self.log.append(KIND_CHECKPOINT, |area| {
            postcard::to_slice(&view, area)
                .map(|used| used.len())
                .map_err(|_| EmitError::BufferTooSmall)
        })?;
        self.staged = true;
        self.since_checkpoint = 0;
        self.stats.checkpoints += 1;
        let oldest = self
            .index
            .jobs
            .iter()
            .map(|job| job.submit)
            .min_by_key(|submit| submit.sequence)
            .filter(|submit| submit.sequence < appended.sequence);
        self.pending_release = Some(oldest.unwrap_or(appended));
        Ok(())
    }

    /// Copies the SUBMIT records of up to [`RELOCATE_MAX`] unfinished jobs out of the oldest live
    /// segment to the head of the log, so that an old pending or dead job does not keep every
    /// later segment live. A failed copy leaves the job where it was.
    fn relocate(&mut self, now: Instant) {
        let oldest = self.log.first_live_epoch();
        if oldest >= self.log.newest_epoch() {
            return; // One live segment: a copy would land in the same one.
        }
        for _ in 0..RELOCATE_MAX {
            let Some(job) = self
                .index
                .jobs
                .iter()
                .find(|job| job.submit.position.epoch <= oldest)
                .copied()
            else {
                return;
            };
            let mut scratch = [0u8; PAYLOAD_LEN_MAX];
            let Ok(Some(len)) = self.with_payload(job.id, |payload| {
                let target = scratch.get_mut(..payload.len())?;
                target.copy_from_slice(payload);
                Some(payload.len())
            }) else {
                return;
            };
            let delay = job.run_after.saturating_duration_since(now);
            let record = Record::Submit(SubmitRecord {
                job: job.id,
                key: job.key,
                priority: job.priority,
                delay_us: u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
                max_attempts: job.max_attempts,
                payload: &scratch[..len],
            });
            let appended = self.log.append(record.kind(), |area| {
                record.emit(area).ok_or(EmitError::BufferTooSmall)
            });
            let Ok(appended) = appended else {
                return;
            };
            self.staged = true;
            // A known id: only the payload's position changes.
            let _ = self.index.apply(&record, appended, now);
        }
    }

    fn sync(&mut self) -> Result<(), CommitError<S::Error>> {
        self.log.sync().map_err(CommitError::Sync)?;
        self.stats.syncs += 1;
        self.release_after_sync()
    }

    /// Releases what the last checkpoint allows (the oldest unfinished SUBMIT), once that
    /// checkpoint and the SUBMITs it copied forward are durable (see
    /// [`Log::release_checkpointed`]).
    fn release_after_sync(&mut self) -> Result<(), CommitError<S::Error>> {
        if let Some(frame) = self.pending_release.take() {
            self.log
                .release_checkpointed(frame)
                .map_err(CommitError::Release)?;
        }
        Ok(())
    }
}

/// Replays one frame into `index`.
fn replay<const JOBS: usize, const DONE: usize>(
    index: &mut Index<JOBS, DONE>,
    since_checkpoint: &mut u32,
    entry: log::Entry<'_>,
) -> Result<(), ReplayError> {
    let sequence = entry.sequence;
    if entry.kind == KIND_CHECKPOINT {
        index
            .apply_checkpoint(entry.payload)
            .ok_or(ReplayError::BadPayload { sequence })?;
        *since_checkpoint = 0;
        return Ok(());
    }
    if !(KIND_SUBMIT..KIND_CHECKPOINT).contains(&entry.kind) {
        return Err(ReplayError::UnknownKind {
            sequence,
            kind: entry.kind,
        });
    }
    let record =
        Record::decode(entry.kind, entry.payload).ok_or(ReplayError::BadPayload { sequence })?;
    let at = Appended {
        sequence,
        position: entry.position,
    };
    index
        .apply(&record, at, Instant::ZERO)
        .map_err(|_| ReplayError::Capacity { sequence })?;
    *since_checkpoint = since_checkpoint.saturating_add(1);
    Ok(())
}

impl<E: core::fmt::Display> core::fmt::Display for CommitError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Release(error) => write!(f, "recording a release failed: {error}"),
            Self::Sync(error) => write!(f, "sync failed: {error}"),
        }
    }
}

impl<E: core::fmt::Debug + core::fmt::Display> core::error::Error for CommitError<E> {}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            Self::Full => "the job table is full",
            Self::TooLarge => "the payload is too large",
            Self::Invalid => "max_attempts must be at least 1",
            Self::UnknownJob => "no such job",
            Self::StaleToken => "the fencing token is stale",
            Self::NotDead => "only a dead job can be re-queued",
            Self::Busy => "too many answers wait for a sync",
            Self::Unavailable => "the storage failed or is full",
        };
        f.write_str(text)
    }
}

impl core::error::Error for Refusal {}
