//! The distributed lock (Q2): named locks granted as leases with fencing tokens, renewed and
//! expired on the server's monotonic clock, every grant and release in a storage log.
//!
//! A client acquires a lock by name for a lease (a ttl up to the configured maximum). The grant
//! carries a fencing token and is answered only once its GRANT record is synced
//! ([`Service::commit`](crate::service::Service::commit)). Renewals with the current token
//! extend the lease while it lasts; a release with the current token frees the lock (RELEASE
//! record, answered after its sync).
//!
//! # Guarantees
//!
//! - Fencing tokens grow strictly with every grant (of any lock, hence of each lock), across
//!   every restart: a token is handed out only after its GRANT record is durable, replay resumes
//!   above the largest token in the log (GRANT records and checkpoints). An unanswered grant
//!   cut by a crash either reached the log (its token is skipped, or its holder asking again
//!   gets it back) or did not (the next grant reuses the token nobody was told).
//! - A lock is granted to another client only after `ttl · (1 + ε)` has passed since the last
//!   grant or renewal (by the server's clock), `ε` being the configured drift bound: a holder
//!   whose clock runs up to `ε` slower than the server's, counting its lease from when it sent
//!   the request, sees the lease end before the server hands the lock on.
//! - After a restart, every lock the log shows held stays held by its holder (with its token) for
//!   a full maximum lease from the open, and is granted to nobody else before `ttl_max · (1 + ε)`
//!   from the open (Chubby's lock-delay): the server cannot prove the lease ended during the
//!   downtime. Renewals live in memory only for that reason: a restart holds every lock at least
//!   as long as any renewal promised.
//! - A renewal or release with any token but the lock's current one is refused
//!   ([`Refusal::StaleToken`]), and so is a renewal after the lease ended.
//! - Memory is fixed by the const generics: `LOCKS` held locks, `PENDING` answers waiting for a
//!   sync. A full table refuses ([`Refusal::Full`], [`Refusal::Busy`]); bad input is dropped
//!   and counted ([`Stats::malformed`]); nothing panics.
//! - The log is reclaimed: a checkpoint (the next token and every held lock) follows every
//!   `checkpoint_every` records, and the segments before it are released in the sync that makes
//!   it durable.
//!
//! # The holder and the resource
//!
//! - A holder treats its lease as lost at [`holder_deadline`]: `lease · (1 − ε)` after it first
//!   sent the request the grant or renewal answered, by its own monotonic clock (the round
//!   trip and the drift bound taken off), which comes before the server's `ttl · (1 + ε)`.
//! - A resource protected by the lock checks every request's token with a [`Fence`] and
//!   refuses tokens below the highest it has seen.
//! - [`quorum::QuorumLock`] holds one lock on a majority of independent servers, with tokens
//!   that still only grow (SPEC.md section 13.5).
//!
//! # Not guaranteed
//!
//! - Mutual exclusion of the *effects*: a holder paused past its lease (GC, swap, a partition)
//!   may act after another client was granted the lock. Only a resource that checks fencing
//!   tokens (refusing any token below the highest it has seen) is protected.
//! - Clocks whose rates differ by more than `ε`, or a non-monotonic clock, break the lease.
//! - A retried `Release` whose answer was lost gets `Released` again while the server
//!   remembers it (its last 16 releases, in memory): after a restart, or 16 releases later, it
//!   is refused as stale (the lock is gone either way).
//!   A retried `Acquire` from the current holder returns its grant again (same token, lease
//!   extended).
//! - Lowering `ttl_max` across a restart shortens the lock-delay accordingly.
//! - One server: a lock on one node goes away with that node's data; [`quorum`] spreads it
//!   over a majority of nodes.

mod holder;
mod message;
pub mod quorum;
mod record;
mod service;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_quorum;

pub use holder::{holder_deadline, Fence, StaleToken};
pub use message::{decode, encode, Malformed, Message, Refusal};
pub use record::{
    checkpoint_len_max, GrantRecord, Lock, Name, Record, ReleaseRecord, KIND_CHECKPOINT,
    KIND_GRANT, KIND_RELEASE, NAME_LEN_MAX,
};

use core::time::Duration;

use heapless::Deque;

use crate::crdt::NodeId;
use crate::frame::EmitError;
use crate::log::{self, AppendError, Appended, Log, OpenError, Recovery, ReplayError, SyncError};
use crate::service::Replies;
use crate::storage::Storage;
use crate::time::Instant;
use record::{CheckpointView, Index};

/// Immediate answers waiting to be sent; more are dropped and counted.
const OUTBOX: usize = 16;

/// Releases remembered for retries.
const RELEASED: usize = 16;

/// The highest `floor` an acquire may ask for (2⁶²): tokens stay far from overflowing.
pub const FLOOR_MAX: u64 = 1 << 62;

/// How a lock server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The longest lease a grant or renewal may ask for; also the lock-delay after a restart.
    pub ttl_max: Duration,
    /// The drift bound ε, in parts per million: another grant waits `ttl · (1 + ε)`.
    pub drift_ppm: u32,
    /// A checkpoint follows every this-many records (at least 1); also when the log runs short
    /// of free segments.
    pub checkpoint_every: u32,
    /// The log underneath; its `payload_max` is raised to what a checkpoint needs.
    pub log: log::Config,
}

impl Default for Config {
    /// Leases of at most 60 s, a 1 % drift bound, a checkpoint every 256 records.
    fn default() -> Self {
        Self {
            ttl_max: Duration::from_secs(60),
            drift_ppm: 10_000,
            checkpoint_every: 256,
            log: log::Config::default(),
        }
    }
}

/// `ttl` stretched by the drift bound: `ttl · (1 + ppm / 10⁶)`, rounded up.
pub fn guarded(ttl: Duration, drift_ppm: u32) -> Duration {
    let micros = ttl.as_micros();
    let extra = micros
        .saturating_mul(u128::from(drift_ppm))
        .div_ceil(1_000_000);
    Duration::from_micros(u64::try_from(micros.saturating_add(extra)).unwrap_or(u64::MAX))
}

/// A lock granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The fencing token.
    pub token: u64,
    /// When the lease ends unless renewed (by the server's clock).
    pub expires: Instant,
}

/// A lock's state as [`LockServer::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The holder, while its lease lasts.
    pub holder: Option<NodeId>,
    /// The latest grant's token (0 when the server holds none).
    pub token: u64,
    /// When the lease ends (`now` when not held).
    pub expires: Instant,
    /// When another client may be granted the lock (`now` when free).
    pub free_at: Instant,
}

/// Counts of what the lock server did and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Grants made (new tokens).
    pub grants: u64,
    /// Renewals accepted (including a repeated acquire by the holder).
    pub renewals: u64,
    /// Releases recorded.
    pub releases: u64,
    /// Retried releases answered again (their first answer was lost).
    pub releases_repeated: u64,
    /// Acquires refused because the lock is held or within its guard.
    pub held: u64,
    /// Renewals and releases refused for a stale token or an ended lease.
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

/// Why a commit failed: the storage failed and the server is poisoned; nothing staged since
/// the previous commit was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Recording a release of log segments failed.
    Release(SyncError<E>),
    /// The sync failed.
    Sync(SyncError<E>),
}

/// Errors of [`LockServer::open`].
pub type LockOpenError<E> = OpenError<E, ReplayError>;

/// An answer to a client, encoded when it is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Granted(Grant),
    Renewed { expires: Instant },
    Released,
    State(Status),
    Refused { reason: Refusal, retry: Instant },
}

/// A lock server over a storage log. See the [module docs](self).
#[derive(Debug)]
pub struct LockServer<S, B, const LOCKS: usize, const PENDING: usize> {
    log: Log<S, B>,
    config: Config,
    index: Index<LOCKS>,
    /// Answers owed to clients, some waiting for the next sync.
    replies: Replies<Answer, PENDING, OUTBOX>,
    /// Whether the log holds appended frames not yet synced.
    staged: bool,
    since_checkpoint: u32,
    pending_release: Option<Appended>,
    /// The latest releases, so that a retried one gets its answer again.
    released: Deque<(Name, u64), RELEASED>,
    /// The latest time seen: a clock read that goes back is taken as this.
    last_now: Instant,
    poisoned: bool,
    stats: Stats,
}

impl<S: Storage, B: AsMut<[u8]>, const LOCKS: usize, const PENDING: usize>
    LockServer<S, B, LOCKS, PENDING>
{
    /// Opens the lock server stored in `storage` at time `now`, replaying its log: every lock
    /// held in the log comes back held by its holder for `ttl_max` from `now`, and is granted to
    /// nobody else before `ttl_max · (1 + ε)` from `now`.
    pub fn open(
        storage: S,
        buffer: B,
        config: Config,
        now: Instant,
    ) -> Result<(Self, Recovery), LockOpenError<S::Error>> {
        let mut index = Index::<LOCKS>::new();
        let payload_max = checkpoint_len_max(LOCKS).max(record::HELD_LEN_MAX + 8);
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
        index.rebase(
            now,
            config.ttl_max,
            guarded(config.ttl_max, config.drift_ppm),
        );
        let server = Self {
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
            released: Deque::new(),
            last_now: now,
            poisoned: false,
            stats: Stats::default(),
        };
        Ok((server, recovery))
    }

    /// The held locks (some of whose leases may have ended), in no particular order.
    pub fn locks(&self) -> &[Lock] {
        &self.index.locks
    }

    /// The token the next grant will get: above every token ever handed out.
    pub fn next_token(&self) -> u64 {
        self.index.next_token
    }

    /// What the server did and refused.
    pub fn stats(&self) -> Stats {
        Stats {
            outbox_full: self.replies.dropped(),
            ..self.stats
        }
    }

    /// Syncs what is staged (releasing reclaimed segments) and closes the log: answers still
    /// waiting for a commit are dropped unsent (their clients retry).
    pub fn close(mut self) -> Result<(), CommitError<S::Error>> {
        if self.pending_release.is_some() {
            // The checkpoint first, then its release (see `release_after_sync`).
            self.log.sync().map_err(CommitError::Sync)?;
            self.release_after_sync()?;
        }
        self.log.close().map_err(CommitError::Sync)
    }

    /// The storage and buffer, for a restart (unsynced writes may be lost, as in a crash).
    pub fn into_parts(self) -> (S, B) {
        self.log.into_parts()
    }

    /// `now`, never before a time seen earlier.
    fn observe(&mut self, now: Instant) -> Instant {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    /// The lease a request asks for, if allowed.
    fn lease(&self, ttl: Duration) -> Result<Duration, Refusal> {
        if ttl.is_zero() || ttl > self.config.ttl_max {
            return Err(Refusal::Invalid);
        }
        Ok(ttl)
    }

    /// Grants lock `name` to `holder` for `ttl` (staged: tell the holder only after the next
    /// commit succeeds). The current holder asking again, while its lease lasts, gets its grant
    /// back, renewed. On `Err` nothing changed.
    pub fn acquire(
        &mut self,
        now: Instant,
        name: &[u8],
        holder: NodeId,
        ttl: Duration,
    ) -> Result<Grant, Refusal> {
        self.acquire_at_least(now, name, holder, ttl, 0)
    }

    /// As [`LockServer::acquire`], with a fencing token of at least `floor`: a new grant takes
    /// `max(next token, floor)`, and the current holder asking again with `floor` above its
    /// token is granted the lock again under such a token (a GRANT record; its lease never
    /// shortened). Quorum locks use it to carry one token to every server of a majority (see
    /// [`quorum`]). `floor` is at most [`FLOOR_MAX`], else the request is invalid.
    pub fn acquire_at_least(
        &mut self,
        now: Instant,
        name: &[u8],
        holder: NodeId,
        ttl: Duration,
        floor: u64,
    ) -> Result<Grant, Refusal> {
        let now = self.observe(now);
        let ttl = self.lease(ttl)?;
        let Some(name) = record::name(name) else {
            return Err(Refusal::Invalid);
        };
        if floor > FLOOR_MAX {
            return Err(Refusal::Invalid);
        }
        let mut kept = None;
        if let Some(slot) = self.index.find(&name) {
            let lock = &self.index.locks[slot];
            if lock.holder == holder && now < lock.expires {
                if lock.token >= floor {
                    let token = lock.token;
                    let expires = self.extend(now, slot, ttl);
                    return Ok(Grant { token, expires });
                }
                // Granted again under a higher token: what was promised still stands.
                kept = Some((lock.expires, lock.free_at));
            } else if now < lock.free_at {
                self.stats.held += 1;
                return Err(Refusal::Held);
            }
        } else if self.index.locks.is_full() {
            self.evict_ended(now)?;
        }
        let token = self.index.next_token.max(floor);
        let record = Record::Grant(GrantRecord {
            name: &name,
            holder: holder.0,
            token,
        });
        self.stage(now, &record, ttl)?;
        self.stats.grants += 1;
        let mut expires = now.saturating_add(ttl);
        if let (Some((old_expires, old_free_at)), Some(slot)) = (kept, self.index.find(&name)) {
            let lock = &mut self.index.locks[slot];
            lock.expires = lock.expires.max(old_expires);
            lock.free_at = lock.free_at.max(old_free_at);
            expires = lock.expires;
        }
        Ok(Grant { token, expires })
    }

    /// Makes room for a new lock by recording the release of one whose guard has passed.
    fn evict_ended(&mut self, now: Instant) -> Result<(), Refusal> {
        let Some(slot) = self.index.locks.iter().position(|lock| lock.free_at <= now) else {
            return Err(Refusal::Full);
        };
        let lock = self.index.locks[slot].clone();
        let record = Record::Release(ReleaseRecord {
            name: &lock.name,
            token: lock.token,
        });
        self.stage(now, &record, Duration::ZERO)
    }

    /// Extends the lease in `slot` to `ttl` from `now` (memory only: see the
    /// [module docs](self)); never shortens what was promised. Returns the lease's end.
    fn extend(&mut self, now: Instant, slot: usize, ttl: Duration) -> Instant {
        let guard = guarded(ttl, self.config.drift_ppm);
        let lock = &mut self.index.locks[slot];
        lock.expires = lock.expires.max(now.saturating_add(ttl));
        lock.free_at = lock.free_at.max(now.saturating_add(guard));
        self.stats.renewals += 1;
        lock.expires
    }

    /// The slot of lock `name` if `token` is its current grant's.
    fn fenced(&mut self, name: &[u8], token: u64) -> Result<usize, Refusal> {
        match self.index.find(name) {
            Some(slot) if self.index.locks[slot].token == token => Ok(slot),
            _ => {
                self.stats.stale += 1;
                Err(Refusal::StaleToken)
            }
        }
    }

    /// Extends the lease of lock `name` held under `token` to `ttl` from `now`, if it has not
    /// ended. Returns the lease's end. On `Err` nothing changed.
    pub fn renew(
        &mut self,
        now: Instant,
        name: &[u8],
        token: u64,
        ttl: Duration,
    ) -> Result<Instant, Refusal> {
        let now = self.observe(now);
        let ttl = self.lease(ttl)?;
        let slot = self.fenced(name, token)?;
        if self.index.locks[slot].expires <= now {
            self.stats.stale += 1;
            return Err(Refusal::StaleToken);
        }
        Ok(self.extend(now, slot, ttl))
    }

    /// Releases lock `name` held under `token` (staged): another client may be granted it at
    /// once. On `Err` nothing changed.
    pub fn release(&mut self, now: Instant, name: &[u8], token: u64) -> Result<(), Refusal> {
        let now = self.observe(now);
        let repeated = self
            .released
            .iter()
            .any(|(released, at)| *at == token && released.as_slice() == name);
        if repeated {
            // A retry of a release this server recorded (its answer was lost): the same answer.
            self.stats.releases_repeated += 1;
            return Ok(());
        }
        self.fenced(name, token)?;
        let record = Record::Release(ReleaseRecord { name, token });
        self.stage(now, &record, Duration::ZERO)?;
        self.stats.releases += 1;
        if self.released.is_full() {
            self.released.pop_front();
        }
        if let Some(name) = record::name(name) {
            let _ = self.released.push_back((name, token));
        }
        Ok(())
    }

    /// The state of lock `name` at `now`.
    pub fn status(&self, now: Instant, name: &[u8]) -> Status {
        let now = now.max(self.last_now);
        let Some(slot) = self.index.find(name) else {
            return Status {
                holder: None,
                token: 0,
                expires: now,
                free_at: now,
            };
        };
        let lock = &self.index.locks[slot];
        let held = now < lock.expires;
        Status {
            holder: held.then_some(lock.holder),
            token: lock.token,
            expires: lock.expires.max(now),
            free_at: lock.free_at.max(now),
        }
    }

    /// Appends `record`, applies it with a lease of `ttl` from `now`, and checkpoints when it
    /// is time. On `Err` nothing changed.
    fn stage(&mut self, now: Instant, record: &Record<'_>, ttl: Duration) -> Result<(), Refusal> {
        if self.poisoned {
            return Err(Refusal::Unavailable);
        }
        if self.log.free_segments() <= 1 && self.since_checkpoint > 0 {
            // Reclaim before the log fills: a failed checkpoint leaves things as they were.
            let _ = self.stage_checkpoint();
        }
        let guard = guarded(ttl, self.config.drift_ppm);
        // Checked before the append, so that a record in the log always applies.
        if let Record::Grant(grant) = record {
            if self.index.find(grant.name).is_none() && self.index.locks.is_full() {
                return Err(Refusal::Full);
            }
        }
        self.log
            .append(record.kind(), |area| {
                record.emit(area).ok_or(EmitError::BufferTooSmall)
            })
            .map_err(|_| Refusal::Unavailable)?;
        self.staged = true;
        let applied = self.index.apply(record, now, ttl, guard);
        debug_assert!(applied.is_ok(), "capacity was checked before the append");
        self.since_checkpoint = self.since_checkpoint.saturating_add(1);
        if self.since_checkpoint >= self.config.checkpoint_every || self.log.free_segments() <= 2 {
            // A failed checkpoint leaves the record staged; a later one tries again.
            let _ = self.stage_checkpoint();
        }
        Ok(())
    }

    /// Appends the whole index; with the next sync, the segments before it are released.
    fn stage_checkpoint(&mut self) -> Result<(), AppendError<S::Error>> {
        let view = CheckpointView(&self.index);
        let appended = self.log.append(KIND_CHECKPOINT, |area| {
            postcard::to_slice(&view, area)
                .map(|used| used.len())
                .map_err(|_| EmitError::BufferTooSmall)
        })?;
        self.staged = true;
        self.since_checkpoint = 0;
        self.stats.checkpoints += 1;
        self.pending_release = Some(appended);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), CommitError<S::Error>> {
        self.log.sync().map_err(CommitError::Sync)?;
        self.stats.syncs += 1;
        self.release_after_sync()
    }

    /// Releases the segments before the last checkpoint once it is durable (see
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
fn replay<const LOCKS: usize>(
    index: &mut Index<LOCKS>,
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
    if entry.kind != KIND_GRANT && entry.kind != KIND_RELEASE {
        return Err(ReplayError::UnknownKind {
            sequence,
            kind: entry.kind,
        });
    }
    let record =
        Record::decode(entry.kind, entry.payload).ok_or(ReplayError::BadPayload { sequence })?;
    index
        .apply(&record, Instant::ZERO, Duration::ZERO, Duration::ZERO)
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
            Self::Held => "the lock is held",
            Self::Invalid => "the name or ttl is invalid",
            Self::StaleToken => "the fencing token is stale",
            Self::Full => "the lock table is full",
            Self::Busy => "too many answers wait for a sync",
            Self::Unavailable => "the storage failed or is full",
        };
        f.write_str(text)
    }
}

impl core::error::Error for Refusal {}
