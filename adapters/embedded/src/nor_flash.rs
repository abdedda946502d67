//! Any `embedded_storage::nor_flash::NorFlash` as a bedrock [`Storage`].
//!
//! Guarantees:
//!
//! - **Same refusals as every adapter.** Alignment and bounds are checked with
//!   [`check_range`] before the flash is called, so a misaligned or out-of-range request fails
//!   with [`NorFlashStorageError::Contract`] and never reaches the device.
//! - **No truncation.** bedrock offsets are `u64`, embedded-storage's are `u32`. Every value
//!   handed to the flash is converted with a checked conversion; one that does not fit fails
//!   with [`NorFlashStorageError::OffsetTooLarge`]. (Only a flash reporting more than 4 GiB of
//!   capacity, on a 64-bit host, can get there.)
//! - **Poisoning.** `NorFlash` programs synchronously and has no sync: a write or erase error is
//!   reported by that very call, which is where a file would report a failed `fsync`. So a flash
//!   error from a write or an erase poisons the store, as a failed sync does in the
//!   [`Storage`] contract: every later write, erase and sync fails with
//!   [`NorFlashStorageError::Poisoned`], and nothing can be acknowledged. Reads stay allowed, so
//!   recovery can run; to resume writing, rebuild the store from [`NorFlashStorage::into_inner`]
//!   and recover the log from what is on flash. Contract errors and read errors do not poison:
//!   nothing changed.
//! - **Sync** is a no-op on a healthy store, because every successful write is already
//!   programmed.
//!
//! Not guaranteed: that the device honours the write-once rule by itself (use
//! [`crate::RamNorFlash`] in tests to prove the caller does), or anything about power loss beyond
//! what the device does.

use core::fmt;

use bedrock::storage::{check_range, ContractError, Geometry, GeometryError, Storage};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

/// Errors of [`NorFlashStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum NorFlashStorageError<E> {
    /// The flash failed. After a failed write or erase the words of the range are in an unknown
    /// state and the store is poisoned; after a failed read nothing changed.
    Flash(E),
    /// The request broke the storage contract (misaligned or out of range); the flash was not
    /// called and nothing changed.
    Contract(ContractError),
    /// An offset does not fit in the flash's `u32` addresses; the flash was not called and
    /// nothing changed.
    OffsetTooLarge,
    /// An earlier write or erase failed, so writes, erases and syncs are refused; nothing changed.
    Poisoned,
}

impl<E: NorFlashError> NorFlashStorageError<E> {
    /// The generic NOR-flash error kind, as embedded-storage classifies errors.
    pub fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::Flash(error) => error.kind(),
            Self::Contract(ContractError::Misaligned) => NorFlashErrorKind::NotAligned,
            Self::Contract(ContractError::OutOfRange) | Self::OffsetTooLarge => {
                NorFlashErrorKind::OutOfBounds
            }
            Self::Contract(_) | Self::Poisoned => NorFlashErrorKind::Other,
        }
    }
}

impl<E: NorFlashError> NorFlashError for NorFlashStorageError<E> {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashStorageError::kind(self)
    }
}

impl<E: fmt::Debug> fmt::Display for NorFlashStorageError<E> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flash(error) => write!(formatter, "flash error: {error:?}"),
            Self::Contract(error) => write!(formatter, "storage contract violated: {error:?}"),
            Self::OffsetTooLarge => formatter.write_str("offset does not fit in 32 bits"),
            Self::Poisoned => formatter.write_str("storage poisoned by an earlier flash error"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for NorFlashStorageError<E> {}

/// A NOR flash seen as bedrock [`Storage`]. See the [module docs](self) for what it guarantees.
///
/// Takes the flash by value; pass `&mut flash` to keep access to it (embedded-storage implements
/// `NorFlash` for `&mut F`).
#[derive(Debug)]
pub struct NorFlashStorage<F> {
    flash: F,
    geometry: Geometry,
    poisoned: bool,
}

impl<F: NorFlash> NorFlashStorage<F> {
    // Geometry holds u32 units; a flash whose units do not fit is refused at compile time.
    const UNITS_FIT_IN_U32: () = assert!(
        F::READ_SIZE as u64 <= u32::MAX as u64
            && F::WRITE_SIZE as u64 <= u32::MAX as u64
            && F::ERASE_SIZE as u64 <= u32::MAX as u64,
        "NorFlash unit sizes must fit in u32"
    );

    /// Wraps `flash`, whose erased bytes read as 0xFF.
    pub fn new(flash: F) -> Result<Self, GeometryError> {
        Self::with_erased_value(flash, 0xFF)
    }

    /// Wraps `flash`, whose erased bytes read as `erased_value`. Fails if the flash's sizes are
    /// not powers of two that nest, or its capacity is not a whole number of erase blocks.
    pub fn with_erased_value(flash: F, erased_value: u8) -> Result<Self, GeometryError> {
        let () = Self::UNITS_FIT_IN_U32;
        let geometry = Geometry {
            read_size: F::READ_SIZE as u32,
            write_size: F::WRITE_SIZE as u32,
            erase_size: F::ERASE_SIZE as u32,
            capacity: flash.capacity() as u64,
            erased_value,
        };
        geometry.validate()?;
        Ok(Self {
            flash,
            geometry,
            poisoned: false,
        })
    }

    /// The wrapped flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The wrapped flash, for tests and diagnostics; writing through it bypasses every check.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives the flash back, dropping the poisoned state with the store.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Whether a failed write or erase poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn refuse_if_poisoned(&self) -> Result<(), NorFlashStorageError<F::Error>> {
        match self.poisoned {
            true => Err(NorFlashStorageError::Poisoned),
            false => Ok(()),
        }
    }

    /// Checks `[offset, offset + len)` against `unit` and the capacity, then converts `offset`.
    fn flash_offset(
        &self,
        offset: u64,
        len: u64,
        unit: u32,
    ) -> Result<u32, NorFlashStorageError<F::Error>> {
        check_range(offset, len, unit, self.geometry.capacity)
            .map_err(NorFlashStorageError::Contract)?;
        to_flash_address(offset)
    }

    fn poison_on_error(
        &mut self,
        result: Result<(), F::Error>,
    ) -> Result<(), NorFlashStorageError<F::Error>> {
        self.poisoned |= result.is_err();
        result.map_err(NorFlashStorageError::Flash)
    }
}

fn to_flash_address<E>(offset: u64) -> Result<u32, NorFlashStorageError<E>> {
    u32::try_from(offset).map_err(|_| NorFlashStorageError::OffsetTooLarge)
}

impl<F: NorFlash> Storage for NorFlashStorage<F> {
    type Error = NorFlashStorageError<F::Error>;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let start = self.flash_offset(offset, buf.len() as u64, self.geometry.read_size)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.flash
            .read(start, buf)
            .map_err(NorFlashStorageError::Flash)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        self.refuse_if_poisoned()?;
        let start = self.flash_offset(offset, data.len() as u64, self.geometry.write_size)?;
        if data.is_empty() {
            return Ok(());
        }
        let result = self.flash.write(start, data);
        self.poison_on_error(result)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        self.refuse_if_poisoned()?;
        let from = self.flash_offset(offset, len, self.geometry.erase_size)?;
        // check_range proved `offset + len` does not overflow and stays within capacity.
        let to = to_flash_address(offset + len)?;
        if len == 0 {
            return Ok(());
        }
        let result = self.flash.erase(from, to);
        self.poison_on_error(result)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.refuse_if_poisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_flash::{bitmap_bytes, RamNorFlash, RamNorFlashError};
    use embedded_storage::nor_flash::{ErrorType, ReadNorFlash};

    type Flash = RamNorFlash<1024, 4, 256, { bitmap_bytes(1024, 4) }>;
    type Error = NorFlashStorageError<RamNorFlashError>;

    /// Writes, syncs, reads back, erases and reads again, through the trait only.
    fn round_trip<S: Storage>(storage: &mut S) -> Result<[u8; 8], S::Error> {
        storage.erase(256, 256)?;
        storage.write(256, b"bedrock!")?;
        storage.sync()?;
        let mut back = [0; 8];
        storage.read(256, &mut back)?;
        storage.erase(256, 256)?;
        let mut erased = [0; 8];
        storage.read(256, &mut erased)?;
        assert_eq!(erased, [storage.geometry().erased_value; 8]);
        Ok(back)
    }

    #[test]
    fn geometry_comes_from_the_flash() {
        let storage = NorFlashStorage::new(Flash::new()).unwrap();
        let expected = Geometry {
            read_size: 1,
            write_size: 4,
            erase_size: 256,
            capacity: 1024,
            erased_value: 0xFF,
        };
        assert_eq!(storage.geometry(), expected);
        let storage = NorFlashStorage::with_erased_value(Flash::new(), 0x00).unwrap();
        assert_eq!(storage.geometry().erased_value, 0x00);
    }

    #[test]
    fn data_round_trips_through_the_storage_trait() {
        let mut flash = Flash::new();
        let mut storage = NorFlashStorage::new(&mut flash).unwrap();
        assert_eq!(round_trip(&mut storage), Ok(*b"bedrock!"));
        assert_eq!((flash.writes(), flash.erases(), flash.reads()), (1, 2, 2));
    }

    #[test]
    fn contract_violations_never_reach_the_flash() {
        let mut flash = Flash::new();
        let mut storage = NorFlashStorage::new(&mut flash).unwrap();
        let misaligned = Error::Contract(ContractError::Misaligned);
        let out_of_range = Error::Contract(ContractError::OutOfRange);
        assert_eq!(storage.write(2, &[0; 4]), Err(misaligned));
        assert_eq!(storage.erase(0, 100), Err(misaligned));
        assert_eq!(storage.write(1024, &[0; 4]), Err(out_of_range));
        assert_eq!(storage.read(1020, &mut [0; 8]), Err(out_of_range));
        assert_eq!(misaligned.kind(), NorFlashErrorKind::NotAligned);
        assert_eq!(out_of_range.kind(), NorFlashErrorKind::OutOfBounds);
        assert!(!storage.is_poisoned());
        assert_eq!(flash.counters(), Default::default());
    }

    #[test]
    fn offsets_beyond_u32_are_refused_not_truncated() {
        let mut storage = NorFlashStorage::new(Flash::new()).unwrap();
        let wrapped = u64::from(u32::MAX) + 1;
        let out_of_range = Err(Error::Contract(ContractError::OutOfRange));
        assert_eq!(storage.write(wrapped, &[0; 4]), out_of_range);
        assert_eq!(storage.read(wrapped, &mut [0; 4]), out_of_range);
        assert_eq!(storage.erase(wrapped, 256), out_of_range);
        assert_eq!(storage.flash().counters(), Default::default());
    }

    #[test]
    fn a_zero_length_request_is_checked_but_not_sent() {
        let mut storage = NorFlashStorage::new(Flash::new()).unwrap();
        storage.write(4, &[]).unwrap();
        storage.erase(256, 0).unwrap();
        storage.read(3, &mut []).unwrap();
        let misaligned = Err(Error::Contract(ContractError::Misaligned));
        assert_eq!(storage.write(2, &[]), misaligned);
        assert_eq!(storage.flash().counters(), Default::default());
    }

    #[test]
    fn a_second_write_to_a_word_is_a_flash_error_and_poisons() {
        let mut storage = NorFlashStorage::new(Flash::new()).unwrap();
        storage.write(0, &[1; 4]).unwrap();
        let error = storage.write(0, &[1; 4]).unwrap_err();
        assert_eq!(error, Error::Flash(RamNorFlashError::WordProgrammedTwice));
        assert_eq!(error.kind(), NorFlashErrorKind::Other);
        assert!(storage.is_poisoned());
    }

    #[test]
    fn a_failed_write_poisons_writes_erases_and_syncs_but_not_reads() {
        let mut storage = NorFlashStorage::new(Flash::new()).unwrap();
        storage.write(0, &[1; 4]).unwrap();
        storage.flash_mut().cut_power_after(0, 2);
        let torn = storage.write(4, &[2; 4]);
        assert_eq!(torn, Err(Error::Flash(RamNorFlashError::PowerCut)));
        assert_eq!(storage.sync(), Err(Error::Poisoned));
        assert_eq!(storage.write(8, &[3; 4]), Err(Error::Poisoned));
        assert_eq!(storage.erase(256, 256), Err(Error::Poisoned));

        storage.flash_mut().restore_power();
        let mut back = [0; 8];
        storage.read(0, &mut back).unwrap();
        assert_eq!(back, [1, 1, 1, 1, 2, 2, 0xFF, 0xFF]);
        assert_eq!(storage.sync(), Err(Error::Poisoned));

        let mut reopened = NorFlashStorage::new(storage.into_inner()).unwrap();
        reopened.write(8, &[3; 4]).unwrap();
        reopened.sync().unwrap();
    }

    #[test]
    fn a_failed_erase_poisons_and_a_failed_read_does_not() {
        let mut storage = NorFlashStorage::new(Flash::new()).unwrap();
        storage.flash_mut().cut_power_after(0, 0);
        storage.write(0, &[0; 4]).unwrap_err();
        let mut storage = NorFlashStorage::new(storage.into_inner()).unwrap();
        let read = storage.read(0, &mut [0; 4]);
        assert_eq!(read, Err(Error::Flash(RamNorFlashError::PoweredOff)));
        assert!(!storage.is_poisoned());
        let erase = storage.erase(0, 256);
        assert_eq!(erase, Err(Error::Flash(RamNorFlashError::PoweredOff)));
        assert!(storage.is_poisoned());
    }

    /// A flash with no memory that claims half the address space and records the last address it was given.
    #[derive(Debug, Default)]
    struct HugeFlash {
        last_address: Option<(u32, u32)>,
    }

    impl ErrorType for HugeFlash {
        type Error = NorFlashErrorKind;
    }

    impl ReadNorFlash for HugeFlash {
        const READ_SIZE: usize = 4;

        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            self.last_address = Some((offset, bytes.len() as u32));
            Ok(())
        }

        fn capacity(&self) -> usize {
            1 << (usize::BITS - 1)
        }
    }

    impl NorFlash for HugeFlash {
        const WRITE_SIZE: usize = 8;
        const ERASE_SIZE: usize = 4096;

        fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            self.last_address = Some((from, to));
            Ok(())
        }

        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            self.last_address = Some((offset, bytes.len() as u32));
            Ok(())
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn addresses_past_u32_on_a_huge_flash_are_refused_not_truncated() {
        let mut storage = NorFlashStorage::new(HugeFlash::default()).unwrap();
        assert_eq!(storage.geometry().capacity, 1 << 63);
        assert_eq!(storage.geometry().read_size, 4);
        let beyond = u64::from(u32::MAX) + 1;
        let error = NorFlashStorageError::OffsetTooLarge;
        assert_eq!(error.kind(), NorFlashErrorKind::OutOfBounds);
        let too_large = Err(error);
        assert_eq!(storage.write(beyond, &[0; 8]), too_large);
        assert_eq!(storage.read(beyond + 4096, &mut [0; 4]), too_large);
        // The last block below 4 GiB ends at 2^32, which a u32 `to` cannot express.
        assert_eq!(storage.erase(beyond - 4096, 4096), too_large);
        assert_eq!(storage.flash().last_address, None);

        storage.write(beyond - 8, &[0; 8]).unwrap();
        assert_eq!(storage.flash().last_address, Some((u32::MAX - 7, 8)));
        assert!(!storage.is_poisoned());
    }

    #[test]
    fn read_alignment_follows_the_flash_read_size() {
        let mut storage = NorFlashStorage::new(HugeFlash::default()).unwrap();
        let misaligned = Err(NorFlashStorageError::Contract(ContractError::Misaligned));
        assert_eq!(storage.read(2, &mut [0; 4]), misaligned);
        assert_eq!(storage.read(4, &mut [0; 6]), misaligned);
        storage.read(4, &mut [0; 8]).unwrap();
        assert_eq!(storage.flash().last_address, Some((4, 8)));
    }

    #[test]
    fn errors_say_what_went_wrong() {
        extern crate std;
        use std::string::ToString;
        let error: Error = NorFlashStorageError::OffsetTooLarge;
        assert_eq!(error.to_string(), "offset does not fit in 32 bits");
        let error: Error = NorFlashStorageError::Flash(RamNorFlashError::PowerCut);
        assert_eq!(error.to_string(), "flash error: PowerCut");
    }
}
