//! [`SimStorage`]: a deterministic in-memory [`Storage`] whose power cuts and faults come from a
//! seed.
//!
//! The device keeps two images: the **durable** image (what survives a power cut) and the
//! **current** image (what reads see: the durable image with every unsynced write and erase
//! applied in order). A successful [`Storage::sync`] folds the unsynced operations into the
//! durable image.
//!
//! # What is guaranteed
//!
//! - The contract of [`bedrock::storage`] is enforced on every call, like `RamStorage`: reads,
//!   writes and erases must be aligned to the read, write and erase size and lie inside the
//!   capacity; a write must only touch erased words ([`SimError::WordWrittenTwice`] otherwise).
//!   A rejected call changes nothing and is not counted as an operation.
//! - Synced data survives every crash exactly, unless a test damages it on purpose
//!   ([`SimStorage::flip_bit`], [`SimStorage::corrupt`], [`SimFaults::bit_flip_rate`]).
//! - Determinism: the same geometry, seed, faults and sequence of calls give the same images,
//!   results and counters, byte for byte.
//!
//! # What a crash does
//!
//! [`SimStorage::crash_with`] cuts power and brings it back. Each unsynced operation, in order, is
//! resolved according to a [`CrashMode`]: all kept, all dropped, or each one independently kept,
//! dropped or torn (a write lands a random prefix or a random subset of its bytes; an erase leaves
//! a partly erased block or random garbage). Afterwards the current image equals the durable one.
//!
//! # Crash-point enumeration
//!
//! Every write, erase and sync call that passes the contract checks gets an operation index,
//! counted from 0 over the storage's whole life ([`SimStorage::ops_done`], reboots included).
//! [`SimStorage::set_power_cut_at`] arms a power cut at one index: that operation is in flight when
//! power dies, so it returns [`SimError::PowerCut`], and so does every later call (reads too) until
//! [`SimStorage::reboot`]. The in-flight write or erase then lands as its [`TornSpec`] says
//! (`Prefix(k)`: its first `k` bytes land, the rest keep their old value); a cut sync makes
//! nothing durable by itself. Earlier unsynced operations are all kept by `reboot`, or resolved by
//! another mode with [`SimStorage::reboot_with`]. A test enumerates every cut point like this:
//!
//! ```
//! use bedrock::storage::{Geometry, Storage};
//! use bedrock_sim::{SimStorage, TornSpec};
//!
//! let geometry = Geometry {
//!     read_size: 1, write_size: 4, erase_size: 64, capacity: 256, erased_value: 0xFF,
//! };
//! fn workload(storage: &mut SimStorage) -> Result<(), bedrock_sim::SimError> {
//!     storage.write(0, &[1, 2, 3, 4])?;
//!     storage.sync()?;
//!     storage.write(4, &[5, 6, 7, 8])?;
//!     storage.sync()
//! }
//! // A dry run records the operations and their lengths.
//! let mut dry = SimStorage::new(geometry, 0).unwrap();
//! dry.record_ops(true);
//! workload(&mut dry).unwrap();
//! for op in dry.recorded_ops() {
//!     for prefix in op.cut_points() {
//!         let mut storage = SimStorage::new(geometry, 0).unwrap();
//!         storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
//!         assert!(workload(&mut storage).is_err());
//!         storage.reboot();
//!         // Recover from `storage` here and check the invariants.
//!         let mut first = [0; 4];
//!         storage.read(0, &mut first).unwrap();
//!         if op.index > 1 {
//!             assert_eq!(first, [1, 2, 3, 4], "synced data survives");
//!         }
//!     }
//! }
//! ```
//!
//! # What is not modelled
//!
//! Wear, read disturb, timing, and flash's AND-programming of unerased cells (writes over unerased
//! words are refused instead). After a sync error the store is poisoned: writes, erases and syncs
//! fail until a crash or reboot, but reads still see the current image, as a process still sees its
//! page cache after a failed `fsync`.

use std::fmt;
use std::ops::{Range, RangeInclusive};

use bedrock::storage::{check_range, ContractError, Geometry, GeometryError, Storage};

use crate::rng::SimRng;

/// Probabilities, each in `0.0..=1.0`, of faults injected per operation. All zero by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimFaults {
    /// A write fails with [`SimError::WriteFailed`]; its range is left undefined (some of its
    /// bytes landed, others did not). The store is not poisoned.
    pub write_error_rate: f64,
    /// An erase fails with [`SimError::EraseFailed`]; its block is left undefined. The store is
    /// not poisoned.
    pub erase_error_rate: f64,
    /// A sync fails with [`SimError::SyncFailed`]: an unknown subset of the unsynced operations
    /// reached the durable image, and the store is poisoned until a crash or reboot.
    pub sync_error_rate: f64,
    /// A successful write silently lands with one random bit flipped.
    pub bit_flip_rate: f64,
}

/// How the operation in flight at a power cut lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornSpec {
    /// The first `n` bytes of the write (or erase) land; the rest keep their old value. `n` may
    /// exceed the length (everything lands).
    Prefix(u64),
    /// A random prefix or a random subset of the bytes lands, drawn from the storage's generator.
    Random,
}

/// What happens, at a crash, to the operations that were not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced operation lands completely (the default for enumeration).
    KeepAll,
    /// No unsynced operation lands.
    DropAll,
    /// Each unsynced operation, independently, lands completely, not at all, or torn.
    Random,
}

/// The kind of a counted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// [`Storage::write`].
    Write,
    /// [`Storage::erase`].
    Erase,
    /// [`Storage::sync`].
    Sync,
}

/// One counted operation, as recorded by [`SimStorage::record_ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRecord {
    /// Its index, the value to give [`SimStorage::set_power_cut_at`].
    pub index: u64,
    /// What it was.
    pub kind: OpKind,
    /// Its offset (0 for a sync).
    pub offset: u64,
    /// Its length in bytes (0 for a sync).
    pub len: u64,
}

impl OpRecord {
    /// Every [`TornSpec::Prefix`] length worth trying for this operation: `0..=len`.
    pub fn cut_points(&self) -> RangeInclusive<u64> {
        0..=self.len
    }

    /// The [`TornSpec::Prefix`] lengths a crash-point enumeration tries: every byte of a
    /// write, the one point of a sync, and a sample of an erase's bytes (none, one word, half,
    /// all but one word, all) on a storage whose write size is `write_size`.
    pub fn crash_points(&self, write_size: u64) -> Vec<u64> {
        match self.kind {
            OpKind::Write => self.cut_points().collect(),
            OpKind::Sync => vec![0],
            _ => {
                let len = self.len;
                let mut points = vec![
                    0,
                    write_size.min(len),
                    len / 2,
                    len.saturating_sub(write_size),
                    len,
                ];
                points.sort_unstable();
                points.dedup();
                points
            }
        }
    }
}

/// Operations completed successfully since the storage was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimCounters {
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Successful erases.
    pub erases: u64,
    /// Successful syncs.
    pub syncs: u64,
    /// Bytes written by successful writes.
    pub bytes_written: u64,
}

/// Why a [`SimStorage`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// Offset or length not aligned to the operation's unit; nothing changed.
    Misaligned,
    /// The request reaches past the capacity; nothing changed.
    OutOfRange,
    /// A write touched a word that is not erased; nothing changed.
    WordWrittenTwice,
    /// Power is cut (this call was in flight, or came after); call [`SimStorage::reboot`].
    PowerCut,
    /// An earlier sync failed; nothing changed. Cleared by a crash or reboot.
    Poisoned,
    /// Injected write fault; the written range is now undefined.
    WriteFailed,
    /// Injected erase fault; the erased range is now undefined.
    EraseFailed,
    /// Injected sync fault; an unknown part of the unsynced data is durable, and the store is
    /// poisoned.
    SyncFailed,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Misaligned => "the offset or length is not aligned to the operation's unit",
            Self::OutOfRange => "the request reaches past the end of the simulated storage",
            Self::WordWrittenTwice => "the write touches a word that is not erased",
            Self::PowerCut => "power is cut: the simulated storage must be rebooted",
            Self::Poisoned => "store is poisoned: an earlier sync failed",
            Self::WriteFailed => "injected write fault: the written range is undefined",
            Self::EraseFailed => "injected erase fault: the erased range is undefined",
            Self::SyncFailed => "injected sync fault: the store is now poisoned",
        })
    }
}

impl std::error::Error for SimError {}

fn check(offset: u64, len: u64, unit: u32, capacity: u64) -> Result<Range<usize>, SimError> {
    match check_range(offset, len, unit, capacity) {
        // The constructor checked that the capacity fits in usize, so these casts are exact.
        Ok(()) => Ok(offset as usize..(offset + len) as usize),
        Err(ContractError::Misaligned) => Err(SimError::Misaligned),
        Err(_) => Err(SimError::OutOfRange),
    }
}

/// An unsynced operation, as it will reach the durable image.
#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset: usize, bytes: Vec<u8> },
    Erase { range: Range<usize> },
}

impl PendingOp {
    fn range(&self) -> Range<usize> {
        match self {
            Self::Write { offset, bytes } => *offset..*offset + bytes.len(),
            Self::Erase { range } => range.clone(),
        }
    }

    fn new_byte(&self, index: usize, erased_value: u8) -> u8 {
        match self {
            Self::Write { bytes, .. } => bytes[index],
            Self::Erase { .. } => erased_value,
        }
    }
}

/// Which bytes of an operation reach an image.
#[derive(Debug, Clone, Copy)]
enum Landing {
    All,
    Nothing,
    Prefix(usize),
    /// Each byte lands with probability one half.
    Scattered,
    /// Every byte becomes random (only meaningful for an erase).
    Garbage,
}

/// Applies the bytes of `op` that `landing` selects to `image`.
fn land(image: &mut [u8], op: &PendingOp, landing: Landing, erased_value: u8, rng: &mut SimRng) {
    let Some(target) = image.get_mut(op.range()) else {
        return;
    };
    for (index, byte) in target.iter_mut().enumerate() {
        let lands = match landing {
            Landing::All => true,
            Landing::Nothing => return,
            Landing::Prefix(count) => index < count,
            Landing::Scattered => rng.below(2) == 1,
            Landing::Garbage => {
                *byte = rng.next_u64() as u8;
                continue;
            }
        };
        if lands {
            *byte = op.new_byte(index, erased_value);
        }
    }
}

/// A torn landing: a random prefix, or a random subset (or garbage, for an erase).
fn torn_landing(op: &PendingOp, rng: &mut SimRng) -> Landing {
    let len = op.range().len() as u64;
    match (rng.below(3), op) {
        (0, _) => Landing::Prefix(rng.below(len + 1) as usize),
        (1, PendingOp::Erase { .. }) => Landing::Garbage,
        _ => Landing::Scattered,
    }
}

fn crash_landing(mode: CrashMode, op: &PendingOp, rng: &mut SimRng) -> Landing {
    match mode {
        CrashMode::KeepAll => Landing::All,
        CrashMode::DropAll => Landing::Nothing,
        CrashMode::Random => match rng.below(3) {
            0 => Landing::All,
            1 => Landing::Nothing,
            _ => torn_landing(op, rng),
        },
    }
}

fn torn_spec_landing(spec: TornSpec, op: &PendingOp, rng: &mut SimRng) -> Landing {
    match spec {
        TornSpec::Prefix(count) => Landing::Prefix(usize::try_from(count).unwrap_or(usize::MAX)),
        TornSpec::Random => torn_landing(op, rng),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    Poisoned,
    Cut,
}

/// A deterministic, fault-injecting, in-memory NOR-flash-like storage. See the
/// [module docs](self).
#[derive(Clone)]
pub struct SimStorage {
    geometry: Geometry,
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
    in_flight: Option<(PendingOp, TornSpec)>,
    rng: SimRng,
    faults: SimFaults,
    power: Power,
    power_cut_at: Option<(u64, TornSpec)>,
    ops_done: u64,
    counters: SimCounters,
    recorded: Option<Vec<OpRecord>>,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStorage")
            .field("geometry", &self.geometry)
            .field("power", &self.power)
            .field("pending_ops", &self.pending.len())
            .field("ops_done", &self.ops_done)
            .field("power_cut_at", &self.power_cut_at)
            .field("faults", &self.faults)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SimStorage {
    /// An erased storage of the given geometry whose random choices all come from `seed`.
    /// Fails if the geometry is invalid or its capacity does not fit in memory addresses.
    pub fn new(geometry: Geometry, seed: u64) -> Result<Self, GeometryError> {
        geometry.validate()?;
        let capacity =
            usize::try_from(geometry.capacity).map_err(|_| GeometryError::BadCapacity)?;
        let image = vec![geometry.erased_value; capacity];
        Ok(Self {
            geometry,
            durable: image.clone(),
            current: image,
            pending: Vec::new(),
            in_flight: None,
            rng: SimRng::new(seed),
            faults: SimFaults::default(),
            power: Power::On,
            power_cut_at: None,
            ops_done: 0,
            counters: SimCounters::default(),
            recorded: None,
        })
    }

    /// The same storage with these fault probabilities.
    pub fn with_faults(mut self, faults: SimFaults) -> Self {
        self.faults = faults;
        self
    }

    /// Changes the fault probabilities from now on.
    pub fn set_faults(&mut self, faults: SimFaults) {
        self.faults = faults;
    }

    /// The fault probabilities in force.
    pub fn faults(&self) -> SimFaults {
        self.faults
    }

    /// Successful operations so far.
    pub fn counters(&self) -> SimCounters {
        self.counters
    }

    /// Write, erase and sync calls counted so far (see the [module docs](self)); the index the
    /// next one will get.
    pub fn ops_done(&self) -> u64 {
        self.ops_done
    }

    /// Unsynced operations that a crash would resolve now.
    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Whether a sync failed since the last crash or reboot.
    pub fn is_poisoned(&self) -> bool {
        self.power == Power::Poisoned
    }

    /// Whether an armed power cut has fired and the storage awaits [`SimStorage::reboot`].
    pub fn is_power_cut(&self) -> bool {
        self.power == Power::Cut
    }

    /// What survives a crash if no unsynced operation lands.
    pub fn durable_image(&self) -> &[u8] {
        &self.durable
    }

    /// What reads see now.
    pub fn current_image(&self) -> &[u8] {
        &self.current
    }

    /// Starts (`true`) or stops recording every counted operation, for enumeration dry runs.
    /// Stopping discards the record.
    pub fn record_ops(&mut self, on: bool) {
        self.recorded = on.then(Vec::new);
    }

    /// The operations recorded since [`SimStorage::record_ops`] was turned on.
    pub fn recorded_ops(&self) -> &[OpRecord] {
        self.recorded.as_deref().unwrap_or(&[])
    }

    /// Arms a power cut during the operation with index `op_index` (see [`SimStorage::ops_done`]).
    /// Replaces any cut armed before; an index already passed never fires.
    pub fn set_power_cut_at(&mut self, op_index: u64, torn: TornSpec) {
        self.power_cut_at = Some((op_index, torn));
    }

    /// Disarms a power cut that has not fired yet.
    pub fn clear_power_cut(&mut self) {
        self.power_cut_at = None;
    }

    /// Brings power back after a cut, keeping every earlier unsynced operation and landing the
    /// in-flight one as its [`TornSpec`] says. Equal to `reboot_with(CrashMode::KeepAll)`.
    pub fn reboot(&mut self) {
        self.crash_with(CrashMode::KeepAll);
    }

    /// Like [`SimStorage::reboot`], with unsynced operations resolved by `mode`.
    pub fn reboot_with(&mut self, mode: CrashMode) {
        self.crash_with(mode);
    }

    /// Cuts power now and brings it back, each unsynced operation independently kept, dropped or
    /// torn by the storage's generator. Equal to `crash_with(CrashMode::Random)`.
    pub fn crash(&mut self) {
        self.crash_with(CrashMode::Random);
    }

    /// Cuts power now (if a cut has not already) and brings it back: unsynced operations are
    /// resolved by `mode` into the durable image, then the operation in flight at an armed cut
    /// lands per its [`TornSpec`], and the current image becomes the durable one. Clears the
    /// poisoned state. Does not disarm a cut that has not fired.
    pub fn crash_with(&mut self, mode: CrashMode) {
        self.resolve_pending(mode);
        if let Some((op, spec)) = self.in_flight.take() {
            let landing = torn_spec_landing(spec, &op, &mut self.rng);
            land(
                &mut self.durable,
                &op,
                landing,
                self.geometry.erased_value,
                &mut self.rng,
            );
        }
        self.current.copy_from_slice(&self.durable);
        self.power = Power::On;
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` on the medium: the damage is visible now
    /// and survives syncs and crashes.
    pub fn flip_bit(&mut self, offset: u64, bit: u32) -> Result<(), SimError> {
        if bit >= 8 {
            return Err(SimError::OutOfRange);
        }
        let range = check(offset, 1, 1, self.geometry.capacity)?;
        let mask = 1u8 << bit;
        self.durable[range.start] ^= mask;
        self.current[range.start] ^= mask;
        self.keep_damage(range);
        Ok(())
    }

    /// Overwrites `len` bytes at `offset` on the medium with random bytes: the damage is visible
    /// now and survives syncs and crashes.
    pub fn corrupt(&mut self, offset: u64, len: u64) -> Result<(), SimError> {
        let range = check(offset, len, 1, self.geometry.capacity)?;
        let mut garbage = vec![0; range.len()];
        self.rng.fill_bytes(&mut garbage);
        self.durable[range.clone()].copy_from_slice(&garbage);
        self.current[range.clone()].copy_from_slice(&garbage);
        self.keep_damage(range);
        Ok(())
    }

    /// Queues the damaged bytes after the unsynced operations, so replaying those at the next sync
    /// or crash does not undo the damage.
    fn keep_damage(&mut self, range: Range<usize>) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = self.current[range.clone()].to_vec();
        self.pending.push(PendingOp::Write {
            offset: range.start,
            bytes,
        });
    }

    fn resolve_pending(&mut self, mode: CrashMode) {
        for op in std::mem::take(&mut self.pending) {
            let landing = crash_landing(mode, &op, &mut self.rng);
            land(
                &mut self.durable,
                &op,
                landing,
                self.geometry.erased_value,
                &mut self.rng,
            );
        }
    }

    fn check_power(&self) -> Result<(), SimError> {
        match self.power {
            Power::On => Ok(()),
            Power::Poisoned => Err(SimError::Poisoned),
            Power::Cut => Err(SimError::PowerCut),
        }
    }

    /// Gives the operation its index and reports the torn spec if power dies during it.
    fn start(&mut self, kind: OpKind, range: &Range<usize>) -> Option<TornSpec> {
        let index = self.ops_done;
        self.ops_done += 1;
        if let Some(record) = &mut self.recorded {
            record.push(OpRecord {
                index,
                kind,
                offset: range.start as u64,
                len: range.len() as u64,
            });
        }
        match self.power_cut_at {
            Some((at, spec)) if at == index => {
                self.power_cut_at = None;
                self.power = Power::Cut;
                Some(spec)
            }
            _ => None,
        }
    }

    /// Runs a checked write or erase through the power-cut and fault machinery.
    fn submit(&mut self, kind: OpKind, op: PendingOp, error_rate: f64) -> Result<(), SimError> {
        let range = op.range();
        if let Some(spec) = self.start(kind, &range) {
            self.in_flight = Some((op, spec));
            return Err(SimError::PowerCut);
        }
        let erased_value = self.geometry.erased_value;
        if self.rng.chance(error_rate) {
            // A failed program or erase leaves its range undefined; queue whatever took.
            let landing = torn_landing(&op, &mut self.rng);
            land(&mut self.current, &op, landing, erased_value, &mut self.rng);
            let bytes = self.current[range.clone()].to_vec();
            let offset = range.start;
            self.pending.push(PendingOp::Write { offset, bytes });
            return Err(match kind {
                OpKind::Erase => SimError::EraseFailed,
                _ => SimError::WriteFailed,
            });
        }
        land(
            &mut self.current,
            &op,
            Landing::All,
            erased_value,
            &mut self.rng,
        );
        self.pending.push(op);
        Ok(())
    }

    /// Silently flips one random bit of the last queued write, in both the queue and the
    /// current image.
    fn maybe_flip_last_write(&mut self) {
        if !self.rng.chance(self.faults.bit_flip_rate) {
            return;
        }
        let Some(PendingOp::Write { offset, bytes }) = self.pending.last_mut() else {
            return;
        };
        let position = self.rng.below(bytes.len() as u64) as usize;
        let mask = 1u8 << self.rng.below(8);
        if let Some(byte) = bytes.get_mut(position) {
            *byte ^= mask;
            self.current[*offset + position] ^= mask;
        }
    }
}

impl Storage for SimStorage {
    type Error = SimError;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SimError> {
        if self.power == Power::Cut {
            return Err(SimError::PowerCut);
        }
        let geometry = self.geometry;
        let range = check(
            offset,
            buf.len() as u64,
            geometry.read_size,
            geometry.capacity,
        )?;
        buf.copy_from_slice(&self.current[range]);
        self.counters.reads += 1;
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), SimError> {
        self.check_power()?;
        let geometry = self.geometry;
        let range = check(
            offset,
            data.len() as u64,
            geometry.write_size,
            geometry.capacity,
        )?;
        if self.current[range.clone()]
            .iter()
            .any(|&byte| byte != geometry.erased_value)
        {
            return Err(SimError::WordWrittenTwice);
        }
        let op = PendingOp::Write {
            offset: range.start,
            bytes: data.to_vec(),
        };
        self.submit(OpKind::Write, op, self.faults.write_error_rate)?;
        self.maybe_flip_last_write();
        self.counters.writes += 1;
        self.counters.bytes_written += data.len() as u64;
        Ok(())
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), SimError> {
        self.check_power()?;
        let geometry = self.geometry;
        let range = check(offset, len, geometry.erase_size, geometry.capacity)?;
        let op = PendingOp::Erase { range };
        self.submit(OpKind::Erase, op, self.faults.erase_error_rate)?;
        self.counters.erases += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SimError> {
        self.check_power()?;
        if self.start(OpKind::Sync, &(0..0)).is_some() {
            // A sync cut short makes nothing durable by itself; reboot resolves the queue.
            return Err(SimError::PowerCut);
        }
        if self.rng.chance(self.faults.sync_error_rate) {
            // fsyncgate: some unsynced data reached the medium, some did not, and nobody says
            // which. Reads keep seeing the current image until the next crash or reboot.
            self.resolve_pending(CrashMode::Random);
            self.power = Power::Poisoned;
            return Err(SimError::SyncFailed);
        }
        self.resolve_pending(CrashMode::KeepAll);
        self.counters.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry {
        read_size: 1,
        write_size: 4,
        erase_size: 64,
        capacity: 256,
        erased_value: 0xFF,
    };

    fn storage(seed: u64) -> SimStorage {
        SimStorage::new(GEOMETRY, seed).unwrap()
    }

    fn read(storage: &mut SimStorage, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        storage.read(offset, &mut bytes).unwrap();
        bytes
    }

    /// Writes, erases, syncs and crashes with every fault enabled, ignoring errors.
    fn faulty_run(seed: u64) -> SimStorage {
        let faults = SimFaults {
            write_error_rate: 0.1,
            erase_error_rate: 0.1,
            sync_error_rate: 0.1,
            bit_flip_rate: 0.1,
        };
        let mut storage = storage(seed).with_faults(faults);
        for round in 0..200u64 {
            let offset = (round * 4) % GEOMETRY.capacity;
            let _ = storage.write(offset, &round.to_le_bytes()[..4]);
            if round % 7 == 0 {
                let _ = storage.sync();
            }
            if round % 16 == 15 {
                let _ = storage.erase((round % 4) * 64, 64);
            }
            if round % 50 == 49 {
                storage.crash();
            }
        }
        storage
    }

    #[test]
    fn the_same_seed_replays_the_same_run_byte_for_byte() {
        let first = faulty_run(11);
        let second = faulty_run(11);
        assert_eq!(first.durable_image(), second.durable_image());
        assert_eq!(first.current_image(), second.current_image());
        assert_eq!(first.counters(), second.counters());
        assert_eq!(first.ops_done(), second.ops_done());
        let other = faulty_run(12);
        assert_ne!(first.durable_image(), other.durable_image());
    }

    #[test]
    fn a_word_is_written_at_most_once_between_erases() {
        let mut storage = storage(0);
        storage.write(4, &[1, 2, 3, 4]).unwrap();
        assert_eq!(storage.write(4, &[1; 4]), Err(SimError::WordWrittenTwice));
        assert_eq!(storage.write(0, &[1; 8]), Err(SimError::WordWrittenTwice));
        storage.erase(0, 64).unwrap();
        storage.write(4, &[9; 4]).unwrap();
        assert_eq!(read(&mut storage, 4, 4), [9; 4]);
    }

    #[test]
    fn misaligned_and_out_of_range_requests_change_nothing_and_are_not_counted() {
        let mut storage = storage(0);
        assert_eq!(storage.write(2, &[0; 4]), Err(SimError::Misaligned));
        assert_eq!(storage.write(0, &[0; 3]), Err(SimError::Misaligned));
        assert_eq!(storage.write(256, &[0; 4]), Err(SimError::OutOfRange));
        assert_eq!(
            storage.write(u64::MAX - 3, &[0; 4]),
            Err(SimError::OutOfRange)
        );
        assert_eq!(storage.erase(32, 64), Err(SimError::Misaligned));
        assert_eq!(storage.erase(0, 320), Err(SimError::OutOfRange));
        assert_eq!(storage.read(255, &mut [0; 2]), Err(SimError::OutOfRange));
        assert_eq!(storage.ops_done(), 0);
        assert_eq!(storage.pending_ops(), 0);
        assert!(storage.current_image().iter().all(|&byte| byte == 0xFF));
    }

    #[test]
    fn a_crash_loses_only_unsynced_data() {
        for seed in 0..200 {
            let mut storage = storage(seed);
            storage.write(0, &[1; 8]).unwrap();
            storage.sync().unwrap();
            storage.write(8, &[2; 8]).unwrap();
            storage.erase(64, 64).unwrap();
            storage.crash();
            assert_eq!(read(&mut storage, 0, 8), [1; 8], "seed {seed}");
            assert_eq!(storage.pending_ops(), 0);
            assert_eq!(storage.current_image(), storage.durable_image());
        }
        let mut storage = storage(0);
        storage.write(0, &[1; 8]).unwrap();
        storage.sync().unwrap();
        storage.write(8, &[2; 8]).unwrap();
        storage.crash_with(CrashMode::DropAll);
        assert_eq!(read(&mut storage, 0, 16), [[1; 8], [0xFF; 8]].concat());
    }

    #[test]
    fn random_crashes_keep_drop_and_tear_unsynced_writes() {
        let (mut kept, mut dropped, mut torn) = (0, 0, 0);
        for seed in 0..300 {
            let mut storage = storage(seed);
            storage.write(0, &[0; 16]).unwrap();
            storage.crash();
            match read(&mut storage, 0, 16)
                .iter()
                .filter(|&&b| b == 0)
                .count()
            {
                16 => kept += 1,
                0 => dropped += 1,
                _ => torn += 1,
            }
        }
        assert!(
            kept > 50 && dropped > 50 && torn > 50,
            "{kept} {dropped} {torn}"
        );
    }

    #[test]
    fn a_power_cut_tears_the_in_flight_write_at_the_given_byte() {
        for prefix in 0..=8u64 {
            let mut storage = storage(0);
            storage.write(0, &[1; 4]).unwrap();
            storage.set_power_cut_at(1, TornSpec::Prefix(prefix));
            assert_eq!(storage.write(4, &[2; 8]), Err(SimError::PowerCut));
            assert!(storage.is_power_cut());
            assert_eq!(storage.sync(), Err(SimError::PowerCut));
            assert_eq!(storage.read(0, &mut [0; 4]), Err(SimError::PowerCut));
            assert_eq!(storage.ops_done(), 2);
            storage.reboot();
            let landed = prefix as usize;
            let mut expected = vec![1; 4];
            expected.extend(std::iter::repeat_n(2, landed));
            expected.extend(std::iter::repeat_n(0xFF, 8 - landed));
            assert_eq!(read(&mut storage, 0, 12), expected);
            storage.write(12, &[3; 4]).unwrap();
        }
    }

    #[test]
    fn a_power_cut_during_an_erase_leaves_a_partly_erased_block() {
        let mut storage = storage(0);
        storage.write(0, &[0; 64]).unwrap();
        storage.sync().unwrap();
        storage.set_power_cut_at(2, TornSpec::Prefix(10));
        assert_eq!(storage.erase(0, 64), Err(SimError::PowerCut));
        storage.reboot();
        assert_eq!(
            read(&mut storage, 0, 11),
            [[0xFF; 10].as_slice(), &[0]].concat()
        );
    }

    #[test]
    fn a_cut_sync_leaves_earlier_writes_to_the_crash_mode() {
        let mut storage = storage(0);
        storage.write(0, &[1; 4]).unwrap();
        storage.set_power_cut_at(1, TornSpec::Prefix(0));
        assert_eq!(storage.sync(), Err(SimError::PowerCut));
        storage.reboot_with(CrashMode::DropAll);
        assert_eq!(read(&mut storage, 0, 4), [0xFF; 4]);
    }

    #[test]
    fn recorded_operations_enumerate_every_cut_point() {
        let workload = |storage: &mut SimStorage| -> Result<(), SimError> {
            storage.erase(0, 64)?;
            storage.write(0, &[1; 8])?;
            storage.sync()?;
            storage.write(8, &[2; 4])?;
            storage.sync()
        };
        let mut dry = storage(0);
        dry.record_ops(true);
        workload(&mut dry).unwrap();
        let kinds: Vec<_> = dry.recorded_ops().iter().map(|op| op.kind).collect();
        use OpKind::{Erase, Sync, Write};
        assert_eq!(kinds, [Erase, Write, Sync, Write, Sync]);
        let mut runs = 0;
        for op in dry.recorded_ops() {
            for prefix in op.cut_points() {
                let mut storage = storage(0);
                storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
                assert_eq!(workload(&mut storage), Err(SimError::PowerCut));
                storage.reboot_with(CrashMode::DropAll);
                if op.index > 2 {
                    assert_eq!(read(&mut storage, 0, 8), [1; 8]);
                }
                runs += 1;
            }
        }
        assert_eq!(runs, 65 + 9 + 1 + 5 + 1);
    }

    #[test]
    fn a_sync_error_poisons_until_reboot() {
        let mut storage = storage(0);
        storage.write(0, &[1; 4]).unwrap();
        storage.sync().unwrap();
        storage.write(4, &[2; 4]).unwrap();
        storage.set_faults(SimFaults {
            sync_error_rate: 1.0,
            ..SimFaults::default()
        });
        assert_eq!(storage.sync(), Err(SimError::SyncFailed));
        assert!(storage.is_poisoned());
        storage.set_faults(SimFaults::default());
        assert_eq!(storage.write(8, &[3; 4]), Err(SimError::Poisoned));
        assert_eq!(storage.erase(64, 64), Err(SimError::Poisoned));
        assert_eq!(storage.sync(), Err(SimError::Poisoned));
        assert_eq!(read(&mut storage, 8, 4), [0xFF; 4], "nothing written");
        storage.reboot();
        assert!(!storage.is_poisoned());
        assert_eq!(read(&mut storage, 0, 4), [1; 4]);
        storage.write(8, &[3; 4]).unwrap();
        storage.sync().unwrap();
    }

    #[test]
    fn an_injected_write_error_is_reported_and_does_not_poison() {
        let faults = SimFaults {
            write_error_rate: 1.0,
            ..SimFaults::default()
        };
        let mut storage = storage(0).with_faults(faults);
        assert_eq!(storage.write(0, &[0; 64]), Err(SimError::WriteFailed));
        assert!(!storage.is_poisoned());
        assert_eq!(storage.counters().writes, 0);
        storage.sync().unwrap();
    }

    #[test]
    fn an_injected_bit_flip_changes_exactly_one_bit() {
        let faults = SimFaults {
            bit_flip_rate: 1.0,
            ..SimFaults::default()
        };
        let mut storage = storage(5).with_faults(faults);
        storage.write(0, &[0; 16]).unwrap();
        storage.sync().unwrap();
        storage.crash();
        let ones: u32 = read(&mut storage, 0, 16)
            .iter()
            .map(|b| b.count_ones())
            .sum();
        assert_eq!(ones, 1);
    }

    #[test]
    fn explicit_damage_survives_syncs_and_crashes() {
        let mut storage = storage(0);
        storage.write(0, &[0; 8]).unwrap();
        storage.flip_bit(0, 3).unwrap();
        storage.corrupt(64, 4).unwrap();
        let garbage = read(&mut storage, 64, 4);
        storage.crash_with(CrashMode::KeepAll);
        assert_eq!(read(&mut storage, 0, 1), [0b1000]);
        assert_eq!(read(&mut storage, 64, 4), garbage);
        assert_eq!(storage.flip_bit(0, 8), Err(SimError::OutOfRange));
        assert_eq!(storage.flip_bit(256, 0), Err(SimError::OutOfRange));
        assert_eq!(storage.corrupt(250, 7), Err(SimError::OutOfRange));
    }

    #[test]
    fn counters_count_successful_operations() {
        let mut storage = storage(0);
        storage.erase(0, 64).unwrap();
        storage.write(0, &[1; 8]).unwrap();
        let _ = storage.write(0, &[1; 8]);
        storage.sync().unwrap();
        read(&mut storage, 0, 8);
        let expected = SimCounters {
            reads: 1,
            writes: 1,
            erases: 1,
            syncs: 1,
            bytes_written: 8,
        };
        assert_eq!(storage.counters(), expected);
    }
}
