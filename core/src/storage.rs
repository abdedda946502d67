//! The block-storage contract every bedrock log runs on.
//!
//! [`Storage`] is modelled on NOR flash so that files and flash share one code path:
//!
//! - **Geometry.** Reads are aligned to [`Geometry::read_size`], writes to
//!   [`Geometry::write_size`] (the program unit), erases to [`Geometry::erase_size`]. All three are
//!   powers of two and each divides the next; the capacity is a whole number of erase blocks.
//! - **Write-once words.** Between two erases a write-size word is written at most once. Callers
//!   never rely on overwriting, so flash with ECC (which forbids a second program) works, and so
//!   does a file.
//! - **Erased value.** An erased byte reads as [`Geometry::erased_value`] (0xFF on NOR flash).
//!
//! # Power-loss contract
//!
//! What an implementation may do when power is cut, and what callers must therefore survive:
//!
//! - [`Storage::sync`] makes every earlier write and erase durable. Once it returns `Ok`, those
//!   bytes read back exactly after any later crash.
//! - A write that was not followed by a successful `sync` may, after a crash, be fully present,
//!   absent, or **torn**: any subset of its bytes may hold the new value while the rest keep the old
//!   one. Unsynced writes are independent: a later one may survive while an earlier one is lost.
//! - An erase that was not synced may, after a crash, leave the block with **undefined content**.
//! - Any error from `sync` **poisons** the store: the implementation must fail every later
//!   `write`, `erase` and `sync`, and callers must acknowledge nothing after it. A failed sync is
//!   never retried, because the operating system may already have dropped the dirty data
//!   (PostgreSQL's "fsyncgate").
//!
//! Storage is not expected to detect corruption; the framing layer does that with CRC-32C.

use core::fmt::Debug;

/// The shape of a storage device: alignment units, capacity and the erased byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Geometry {
    /// Reads start at and span multiples of this many bytes.
    pub read_size: u32,
    /// Writes start at and span multiples of this many bytes (the program unit, a "word").
    pub write_size: u32,
    /// Erases start at and span multiples of this many bytes.
    pub erase_size: u32,
    /// Total addressable bytes; a multiple of `erase_size`.
    pub capacity: u64,
    /// The value every byte holds after an erase.
    pub erased_value: u8,
}

/// Why a [`Geometry`] cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GeometryError {
    /// A size is zero or not a power of two.
    NotPowerOfTwo,
    /// `read_size` does not divide `write_size`, or `write_size` does not divide `erase_size`.
    Misnested,
    /// The capacity is zero or not a whole number of erase blocks.
    BadCapacity,
}

impl Geometry {
    /// Checks the nesting rules the log relies on.
    pub const fn validate(&self) -> Result<(), GeometryError> {
        if !self.read_size.is_power_of_two()
            || !self.write_size.is_power_of_two()
            || !self.erase_size.is_power_of_two()
        {
            return Err(GeometryError::NotPowerOfTwo);
        }
        if self.read_size > self.write_size || self.write_size > self.erase_size {
            return Err(GeometryError::Misnested);
        }
        if self.capacity == 0 || !self.capacity.is_multiple_of(self.erase_size as u64) {
            return Err(GeometryError::BadCapacity);
        }
        Ok(())
    }

    /// Rounds `bytes` up to a whole number of write-size words.
    pub const fn round_up_to_write(&self, bytes: u64) -> u64 {
        let unit = self.write_size as u64;
        bytes.div_ceil(unit) * unit
    }
}

/// Block storage with NOR-flash semantics. See the [module docs](self) for the contract.
///
/// Offsets are absolute byte addresses in `0..capacity`. Implementations must reject misaligned
/// or out-of-range requests with an error rather than panic.
pub trait Storage {
    /// The backend's error type.
    type Error: Debug;

    /// The device's geometry. Must not change while the storage is in use.
    fn geometry(&self) -> Geometry;

    /// Reads `buf.len()` bytes at `offset`. Both are multiples of `read_size`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes `data` at `offset`. Both are multiples of `write_size`; every word written must be
    /// erased. The write is not durable until [`Storage::sync`] returns `Ok`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Erases `len` bytes at `offset`, both multiples of `erase_size`. Not durable until
    /// [`Storage::sync`] returns `Ok`.
    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error>;

    /// Makes every earlier write and erase durable. An error poisons the store for good.
    fn sync(&mut self) -> Result<(), Self::Error>;
}

impl<T: Storage + ?Sized> Storage for &mut T {
    type Error = T::Error;

    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(offset, buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        (**self).write(offset, data)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        (**self).erase(offset, len)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        (**self).sync()
    }
}

/// Errors of a [`Partition`]: the backend's own, or a request outside the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PartitionError<E> {
    /// The request does not fit in the partition; nothing was done.
    OutOfRange,
    /// The backend failed.
    Backend(E),
}

/// A window `[start, start + len)` of another storage, seen as a storage of its own.
///
/// Lets several services share one device, each with its own log.
#[derive(Debug)]
pub struct Partition<S> {
    inner: S,
    start: u64,
    len: u64,
}

impl<S: Storage> Partition<S> {
    /// Cuts a partition out of `inner`. `start` and `len` must be whole erase blocks inside it.
    pub fn new(inner: S, start: u64, len: u64) -> Result<Self, GeometryError> {
        let geometry = inner.geometry();
        let erase = geometry.erase_size as u64;
        let fits = start
            .checked_add(len)
            .is_some_and(|end| end <= geometry.capacity);
        if len == 0 || !start.is_multiple_of(erase) || !len.is_multiple_of(erase) || !fits {
            return Err(GeometryError::BadCapacity);
        }
        Ok(Self { inner, start, len })
    }

    /// Gives the underlying storage back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn translate(&self, offset: u64, len: u64) -> Result<u64, PartitionError<S::Error>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.start + offset),
            _ => Err(PartitionError::OutOfRange),
        }
    }
}

impl<S: Storage> Storage for Partition<S> {
    type Error = PartitionError<S::Error>;

    fn geometry(&self) -> Geometry {
        Geometry {
            capacity: self.len,
            ..self.inner.geometry()
        }
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.translate(offset, buf.len() as u64)?;
        self.inner.read(at, buf).map_err(PartitionError::Backend)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        let at = self.translate(offset, data.len() as u64)?;
        self.inner.write(at, data).map_err(PartitionError::Backend)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        let at = self.translate(offset, len)?;
        self.inner.erase(at, len).map_err(PartitionError::Backend)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.inner.sync().map_err(PartitionError::Backend)
    }
}

/// A RAM-backed storage that checks the contract on every call: alignment, bounds, write-once
/// words, and refusal after a failed sync. It has no crash model (see the simulator for that);
/// it is the reference implementation tests and examples use.
#[derive(Debug)]
pub struct RamStorage<const N: usize> {
    bytes: [u8; N],
    geometry: Geometry,
}

/// Contract violations reported by [`RamStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ContractError {
    /// Offset or length not aligned to the unit the operation requires; nothing changed.
    Misaligned,
    /// The request reaches past the capacity; nothing changed.
    OutOfRange,
    /// A write touched a word that was already written since its last erase; nothing changed.
    WordWrittenTwice,
}

impl<const N: usize> RamStorage<N> {
    /// An erased RAM storage of `N` bytes with the given write and erase sizes (read size 1).
    pub fn new(write_size: u32, erase_size: u32, erased_value: u8) -> Result<Self, GeometryError> {
        let geometry = Geometry {
            read_size: 1,
            write_size,
            erase_size,
            capacity: N as u64,
            erased_value,
        };
        geometry.validate()?;
        Ok(Self {
            bytes: [erased_value; N],
            geometry,
        })
    }

    /// The raw bytes, for tests that inspect or damage them.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

/// Checks that `[offset, offset + len)` is aligned to `unit` and inside `capacity`.
/// Shared by every adapter so that all of them reject the same requests.
pub fn check_range(offset: u64, len: u64, unit: u32, capacity: u64) -> Result<(), ContractError> {
    let unit = unit as u64;
    if !offset.is_multiple_of(unit) || !len.is_multiple_of(unit) {
        return Err(ContractError::Misaligned);
    }
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(ContractError::OutOfRange),
    }
}

impl<const N: usize> Storage for RamStorage<N> {
    type Error = ContractError;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        check_range(offset, buf.len() as u64, 1, N as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        let geometry = self.geometry;
        check_range(offset, data.len() as u64, geometry.write_size, N as u64)?;
        let start = offset as usize;
        let target = &mut self.bytes[start..start + data.len()];
        if target.iter().any(|&byte| byte != geometry.erased_value) {
            return Err(ContractError::WordWrittenTwice);
        }
        target.copy_from_slice(data);
        Ok(())
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        check_range(offset, len, self.geometry.erase_size, N as u64)?;
        let start = offset as usize;
        self.bytes[start..start + len as usize].fill(self.geometry.erased_value);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotPowerOfTwo => "read, write and erase sizes must be powers of two",
            Self::Misnested => {
                "the read size must divide the write size, which must divide the erase size"
            }
            Self::BadCapacity => "the capacity must be a nonzero whole number of erase blocks",
        })
    }
}

impl core::error::Error for GeometryError {}

impl core::fmt::Display for ContractError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Misaligned => "a storage request is not aligned to the device's unit",
            Self::OutOfRange => "a storage request reaches past the capacity",
            Self::WordWrittenTwice => "a word was written twice without an erase",
        })
    }
}

impl core::error::Error for ContractError {}

impl<E: core::fmt::Display> core::fmt::Display for PartitionError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfRange => f.write_str("a storage request reaches past the partition"),
            Self::Backend(error) => error.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rejects_sizes_that_do_not_nest() {
        let mut geometry = Geometry {
            read_size: 1,
            write_size: 8,
            erase_size: 4096,
            capacity: 8192,
            erased_value: 0xFF,
        };
        assert_eq!(geometry.validate(), Ok(()));
        geometry.write_size = 6;
        assert_eq!(geometry.validate(), Err(GeometryError::NotPowerOfTwo));
        geometry.write_size = 8192;
        assert_eq!(geometry.validate(), Err(GeometryError::Misnested));
        geometry.write_size = 8;
        geometry.capacity = 4097;
        assert_eq!(geometry.validate(), Err(GeometryError::BadCapacity));
    }

    #[test]
    fn ram_storage_refuses_a_second_write_to_a_word() {
        let mut storage = RamStorage::<64>::new(4, 16, 0xFF).unwrap();
        storage.write(4, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            storage.write(4, &[1, 2, 3, 4]),
            Err(ContractError::WordWrittenTwice)
        );
        assert_eq!(storage.write(2, &[0; 4]), Err(ContractError::Misaligned));
        assert_eq!(storage.write(64, &[0; 4]), Err(ContractError::OutOfRange));
        storage.erase(0, 16).unwrap();
        storage.write(4, &[9; 4]).unwrap();
        let mut back = [0; 4];
        storage.read(4, &mut back).unwrap();
        assert_eq!(back, [9; 4]);
    }

    #[test]
    fn partition_translates_and_bounds_requests() {
        let mut storage = RamStorage::<64>::new(4, 16, 0xFF).unwrap();
        let mut partition = Partition::new(&mut storage, 16, 32).unwrap();
        assert_eq!(partition.geometry().capacity, 32);
        partition.write(0, &[7; 4]).unwrap();
        assert_eq!(
            partition.write(32, &[7; 4]),
            Err(PartitionError::OutOfRange)
        );
        let mut back = [0; 4];
        storage.read(16, &mut back).unwrap();
        assert_eq!(back, [7; 4]);
    }
}
