//! The lock server's records (SPEC.md section 13.2) and the in-memory index they rebuild.
//!
//! Live calls and replay share one [`Index::apply`]. The index holds exactly the locks the log
//! says are held: a GRANT adds or replaces its lock, a RELEASE of the current token removes it.
//! Times are not recorded: replay cannot know how much of a lease passed during the downtime,
//! so [`Index::rebase`] treats every recovered lock as held for a full maximum lease from the
//! open time.

use core::time::Duration;

use heapless::Vec;
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde::Deserialize;

use crate::crdt::NodeId;
use crate::time::Instant;

/// Kind of a GRANT record ([`GrantRecord`]).
pub const KIND_GRANT: u8 = 64;
/// Kind of a RELEASE record ([`ReleaseRecord`]).
pub const KIND_RELEASE: u8 = 65;
/// Kind of a CHECKPOINT record: the next token and every held lock.
pub const KIND_CHECKPOINT: u8 = 66;

/// The longest lock name, in bytes.
pub const NAME_LEN_MAX: usize = 32;

/// The encoded size of one checkpointed lock at most: name (length and bytes), holder, token.
pub const HELD_LEN_MAX: usize = 1 + NAME_LEN_MAX + 5 + 10;

/// The largest checkpoint payload for `locks` held locks.
pub const fn checkpoint_len_max(locks: usize) -> usize {
    10 + 5 + locks * HELD_LEN_MAX
}

/// A lock name: 1 to [`NAME_LEN_MAX`] bytes.
pub type Name = Vec<u8, NAME_LEN_MAX>;

/// Copies `bytes` into a [`Name`]; `None` when empty or too long.
pub fn name(bytes: &[u8]) -> Option<Name> {
    if bytes.is_empty() {
        return None;
    }
    Vec::from_slice(bytes).ok()
}

/// One held lock as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The lock's name.
    pub name: Name,
    /// The client the latest grant went to.
    pub holder: NodeId,
    /// The fencing token of the latest grant.
    pub token: u64,
    /// When the lease ends unless renewed (by the server's clock).
    pub expires: Instant,
    /// No other grant before this instant: the lease's end stretched by the drift bound.
    pub free_at: Instant,
}

/// GRANT: `holder` holds `name` under `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct GrantRecord<'a> {
    /// The lock's name (1 to [`NAME_LEN_MAX`] bytes).
    pub name: &'a [u8],
    /// The holder's client id.
    pub holder: u32,
    /// The fencing token.
    pub token: u64,
}

/// RELEASE: the grant of `name` under `token` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ReleaseRecord<'a> {
    /// The lock's name.
    pub name: &'a [u8],
    /// The token of the grant that ended.
    pub token: u64,
}

/// A record of the lock server, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// GRANT.
    Grant(GrantRecord<'a>),
    /// RELEASE.
    Release(ReleaseRecord<'a>),
}

impl<'a> Record<'a> {
    /// The log kind.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Grant(_) => KIND_GRANT,
            Self::Release(_) => KIND_RELEASE,
        }
    }

    /// Writes the payload into `area`.
    pub fn emit(&self, area: &mut [u8]) -> Option<usize> {
        let used = match self {
            Self::Grant(record) => postcard::to_slice(record, area),
            Self::Release(record) => postcard::to_slice(record, area),
        };
        used.ok().map(|used| used.len())
    }

    /// Decodes a record of `kind`; `None` when the payload is not exactly one valid record.
    /// CHECKPOINT is decoded by `Index::apply_checkpoint`.
    pub fn decode(kind: u8, payload: &'a [u8]) -> Option<Self> {
        match kind {
            KIND_GRANT => exact(payload)
                .filter(|record: &GrantRecord<'_>| valid_name(record.name))
                .map(Self::Grant),
            KIND_RELEASE => exact(payload)
                .filter(|record: &ReleaseRecord<'_>| valid_name(record.name))
                .map(Self::Release),
            _ => None,
        }
    }
}

fn valid_name(name: &[u8]) -> bool {
    (1..=NAME_LEN_MAX).contains(&name.len())
}

/// Decodes a postcard value that must use every byte.
fn exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// The index has no room for another lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity;

/// What the lock server keeps in memory: the next token and at most `LOCKS` held locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index<const LOCKS: usize> {
    /// The token of the next grant: above every token in the log.
    pub next_token: u64,
    /// The held locks (some of whose leases may have ended), in no particular order.
    pub locks: Vec<Lock, LOCKS>,
}

impl<const LOCKS: usize> Index<LOCKS> {
    /// An empty index; tokens start at 1.
    pub const fn new() -> Self {
        Self {
            next_token: 1,
            locks: Vec::new(),
        }
    }

    /// The slot of lock `name`.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.locks.iter().position(|lock| lock.name == name)
    }

    /// Applies `record` at `now`: a grant's lease ends at `now + lease` and nobody else gets the
    /// lock before `now + guard`. On `Err` nothing changed.
    pub fn apply(
        &mut self,
        record: &Record<'_>,
        now: Instant,
        lease: Duration,
        guard: Duration,
    ) -> Result<(), Capacity> {
        match record {
            Record::Grant(grant) => {
                let name = name(grant.name).ok_or(Capacity)?;
                let lock = Lock {
                    name,
                    holder: NodeId(grant.holder),
                    token: grant.token,
                    expires: now.saturating_add(lease),
                    free_at: now.saturating_add(guard),
                };
                match self.find(grant.name) {
                    Some(slot) => self.locks[slot] = lock,
                    None => self.locks.push(lock).map_err(|_| Capacity)?,
                }
                self.next_token = self.next_token.max(grant.token.saturating_add(1));
            }
            Record::Release(release) => {
                let slot = self.find(release.name);
                if let Some(slot) = slot.filter(|&slot| self.locks[slot].token == release.token) {
                    self.locks.swap_remove(slot);
                }
            }
        }
        Ok(())
    }

    /// Replaces the index with a checkpoint's (the next token never decreases); `None` when
    /// the payload is not a valid checkpoint for `LOCKS` locks.
    pub fn apply_checkpoint(&mut self, payload: &[u8]) -> Option<()> {
        let (next_token, held): (u64, Vec<GrantRecord<'_>, LOCKS>) = exact(payload)?;
        let mut locks = Vec::new();
        for grant in &held {
            if !valid_name(grant.name) || grant.token >= next_token {
                return None;
            }
            let lock = Lock {
                name: name(grant.name)?,
                holder: NodeId(grant.holder),
                token: grant.token,
                expires: Instant::ZERO,
                free_at: Instant::ZERO,
            };
            locks.push(lock).ok()?;
        }
        self.next_token = self.next_token.max(next_token);
        self.locks = locks;
        Some(())
    }

    /// Moves replayed locks to the open time: each is held for `lease` (the maximum) from `now`
    /// and nobody else gets it before `now + guard` (see the [module docs](super)).
    pub fn rebase(&mut self, now: Instant, lease: Duration, guard: Duration) {
        for lock in &mut self.locks {
            lock.expires = now.saturating_add(lease);
            lock.free_at = now.saturating_add(guard);
        }
    }
}

impl<const LOCKS: usize> Default for Index<LOCKS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Serializes an index as a CHECKPOINT payload: `(next_token, [(name, holder, token)])`.
pub struct CheckpointView<'a, const LOCKS: usize>(pub &'a Index<LOCKS>);

struct HeldLocks<'a>(&'a [Lock]);

impl Serialize for HeldLocks<'_> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_seq(self.0.iter().map(|lock| GrantRecord {
            name: &lock.name,
            holder: lock.holder.0,
            token: lock.token,
        }))
    }
}

impl<const LOCKS: usize> Serialize for CheckpointView<'_, LOCKS> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.0.next_token)?;
        tuple.serialize_element(&HeldLocks(&self.0.locks))?;
        tuple.end()
    }
}
