//! A RAM NOR-flash mock that proves write-once usage and can lose power mid-program.
//!
//! [`RamNorFlash`] implements `embedded_storage::nor_flash::{ReadNorFlash, NorFlash}` over an
//! in-memory array, without alloc, so it runs in host tests and in firmware alike.
//!
//! Guarantees:
//!
//! - **Alignment and bounds.** Misaligned requests fail with [`RamNorFlashError::NotAligned`],
//!   requests past the end with [`RamNorFlashError::OutOfBounds`]; nothing changes.
//! - **Write-once words (ECC flash).** A `WRITE`-sized word may be programmed once between erases.
//!   A second program fails with [`RamNorFlashError::WordProgrammedTwice`] even if it would only
//!   clear bits, because flash with ECC forbids it. The mock tracks this in a bitmap rather than
//!   by looking at the data, so programming `0xFF` still uses the word up.
//! - **Counters.** Every accepted read, program and erase is counted (see [`FlashCounters`]).
//! - **Power cuts.** [`RamNorFlash::cut_power_after`] lets a chosen program operation write only a
//!   prefix of its bytes, after which every operation fails until [`RamNorFlash::restore_power`].
//!
//! Not modelled: power loss during an erase (the simulator covers undefined erased content),
//! program disturb, wear-out, timing. Reads are byte-granular (`READ_SIZE` is 1), like
//! memory-mapped NOR flash.
//!
//! # RAM cost
//!
//! `SIZE` bytes of contents, plus `BITMAP_BYTES = ceil(SIZE / WRITE / 8)` bytes of word state
//! (one bit per word; [`bitmap_bytes`] computes it), plus about 64 bytes of counters and power
//! state. A 64 KiB flash with 4-byte words costs 64 KiB + 2 KiB. The value is large: keep it in a
//! `static` on a microcontroller rather than on the stack.

use core::fmt;

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashError, NorFlashErrorKind,
    ReadNorFlash,
};

/// Bytes of word-state bitmap a `RamNorFlash` of `size` bytes with `write_size`-byte words needs:
/// the value of its `BITMAP_BYTES` parameter.
pub const fn bitmap_bytes(size: usize, write_size: usize) -> usize {
    (size / write_size).div_ceil(8)
}

/// Errors of [`RamNorFlash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RamNorFlashError {
    /// Offset or length is not a multiple of the operation's unit; nothing changed.
    NotAligned,
    /// The range reaches past the end of the flash (or ends before it starts); nothing changed.
    OutOfBounds,
    /// A word in the range was already programmed since its last erase; nothing changed.
    WordProgrammedTwice,
    /// Power was cut during this program operation: a prefix of its bytes was programmed and
    /// every word of the range now counts as programmed. Power stays off.
    PowerCut,
    /// Power is off since an earlier cut; nothing changed.
    PoweredOff,
}

impl NorFlashError for RamNorFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::NotAligned => NorFlashErrorKind::NotAligned,
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::WordProgrammedTwice | Self::PowerCut | Self::PoweredOff => {
                NorFlashErrorKind::Other
            }
        }
    }
}

impl fmt::Display for RamNorFlashError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::NotAligned => "request not aligned to the flash unit",
            Self::OutOfBounds => "request outside the flash",
            Self::WordProgrammedTwice => "word programmed twice without an erase",
            Self::PowerCut => "power cut during this program",
            Self::PoweredOff => "flash powered off",
        })
    }
}

impl core::error::Error for RamNorFlashError {}

impl From<NorFlashErrorKind> for RamNorFlashError {
    fn from(kind: NorFlashErrorKind) -> Self {
        match kind {
            NorFlashErrorKind::NotAligned => Self::NotAligned,
            _ => Self::OutOfBounds,
        }
    }
}

/// How many operations a [`RamNorFlash`] accepted since it was made or its counters were reset.
/// Refused operations are not counted; the program torn by a power cut is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FlashCounters {
    /// Read operations.
    pub reads: u64,
    /// Program (write) operations.
    pub writes: u64,
    /// Erase operations.
    pub erases: u64,
    /// Bytes actually programmed (a torn program counts only its prefix).
    pub bytes_programmed: u64,
    /// Erase blocks erased.
    pub blocks_erased: u64,
}

/// A pending power cut: how many programs still complete, then how much of the next one lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PowerCut {
    programs_before_cut: u32,
    torn_prefix_bytes: usize,
}

/// A NOR flash of `SIZE` bytes in RAM with `WRITE`-byte words and `ERASE`-byte blocks.
///
/// `BITMAP_BYTES` must equal [`bitmap_bytes`]`(SIZE, WRITE)`; stable Rust cannot compute it from
/// the other parameters, so write it as `{ bitmap_bytes(SIZE, WRITE) }`. Wrong parameters
/// (sizes not powers of two, `WRITE` not dividing `ERASE`, `SIZE` not a whole number of blocks
/// or above `u32::MAX`, a wrong bitmap size) fail to compile when [`RamNorFlash::new`] is used.
///
/// ```
/// use bedrock_embedded::{bitmap_bytes, RamNorFlash};
/// type Flash = RamNorFlash<4096, 4, 1024, { bitmap_bytes(4096, 4) }>;
/// let flash = Flash::new();
/// assert_eq!(flash.bytes()[0], 0xFF);
/// ```
///
/// A wrong bitmap size is a compile error:
///
/// ```compile_fail
/// let flash = bedrock_embedded::RamNorFlash::<4096, 4, 1024, 7>::new();
/// ```
#[derive(Clone)]
pub struct RamNorFlash<
    const SIZE: usize,
    const WRITE: usize,
    const ERASE: usize,
    const BITMAP_BYTES: usize,
> {
    bytes: [u8; SIZE],
    programmed: [u8; BITMAP_BYTES],
    counters: FlashCounters,
    power_cut: Option<PowerCut>,
    powered: bool,
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize>
    RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    const PARAMETERS_ARE_VALID: () = {
        assert!(WRITE.is_power_of_two() && ERASE.is_power_of_two());
        assert!(WRITE <= ERASE, "a word must fit in an erase block");
        assert!(
            SIZE > 0 && SIZE.is_multiple_of(ERASE),
            "SIZE must be whole erase blocks"
        );
        assert!(
            SIZE as u64 <= u32::MAX as u64,
            "embedded-storage offsets are u32"
        );
        assert!(
            BITMAP_BYTES == bitmap_bytes(SIZE, WRITE),
            "BITMAP_BYTES is wrong"
        );
    };

    /// An erased flash (every byte 0xFF), powered, with zeroed counters.
    pub const fn new() -> Self {
        let () = Self::PARAMETERS_ARE_VALID;
        Self {
            bytes: [0xFF; SIZE],
            programmed: [0; BITMAP_BYTES],
            counters: FlashCounters {
                reads: 0,
                writes: 0,
                erases: 0,
                bytes_programmed: 0,
                blocks_erased: 0,
            },
            power_cut: None,
            powered: true,
        }
    }

    /// The raw contents, for tests that inspect images.
    pub fn bytes(&self) -> &[u8; SIZE] {
        &self.bytes
    }

    /// Every counter at once.
    pub fn counters(&self) -> FlashCounters {
        self.counters
    }

    /// Read operations accepted.
    pub fn reads(&self) -> u64 {
        self.counters.reads
    }

    /// Program operations accepted (including one torn by a power cut).
    pub fn writes(&self) -> u64 {
        self.counters.writes
    }

    /// Erase operations accepted.
    pub fn erases(&self) -> u64 {
        self.counters.erases
    }

    /// Bytes programmed.
    pub fn bytes_programmed(&self) -> u64 {
        self.counters.bytes_programmed
    }

    /// Erase blocks erased.
    pub fn blocks_erased(&self) -> u64 {
        self.counters.blocks_erased
    }

    /// Sets every counter back to zero.
    pub fn reset_counters(&mut self) {
        self.counters = FlashCounters::default();
    }

    /// Whether the word holding byte `offset` was programmed since its last erase.
    /// `false` past the end.
    pub fn is_programmed(&self, offset: usize) -> bool {
        offset < SIZE && self.word_is_programmed(offset / WRITE)
    }

    /// Arms a power cut: the next `programs_before_cut` program operations complete, the one after
    /// programs only its first `torn_prefix_bytes` bytes (all of them if it is shorter) and fails
    /// with [`RamNorFlashError::PowerCut`], and every later operation fails with
    /// [`RamNorFlashError::PoweredOff`] until [`RamNorFlash::restore_power`]. Replaces any cut
    /// already armed. Refused programs (misaligned, out of bounds, reprogrammed) do not count.
    pub fn cut_power_after(&mut self, programs_before_cut: u32, torn_prefix_bytes: usize) {
        self.power_cut = Some(PowerCut {
            programs_before_cut,
            torn_prefix_bytes,
        });
    }

    /// Turns power back on and disarms any pending cut. Contents and word state are kept, as
    /// after a reboot: words touched by a torn program stay programmed until erased.
    pub fn restore_power(&mut self) {
        self.powered = true;
        self.power_cut = None;
    }

    /// Whether the flash is powered (no cut has happened since the last restore).
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset`, as a corruption would.
    /// Works with power off and is not counted.
    pub fn flip_bit(&mut self, offset: usize, bit: u8) -> Result<(), RamNorFlashError> {
        let byte = self
            .bytes
            .get_mut(offset)
            .ok_or(RamNorFlashError::OutOfBounds)?;
        let mask = 1u8.checked_shl(u32::from(bit));
        *byte ^= mask.ok_or(RamNorFlashError::OutOfBounds)?;
        Ok(())
    }

    fn word_is_programmed(&self, word: usize) -> bool {
        self.programmed[word / 8] & (1 << (word % 8)) != 0
    }

    fn set_words(&mut self, range: core::ops::Range<usize>, programmed: bool) {
        for word in range.start / WRITE..range.end.div_ceil(WRITE) {
            let mask = 1u8 << (word % 8);
            if programmed {
                self.programmed[word / 8] |= mask;
            } else {
                self.programmed[word / 8] &= !mask;
            }
        }
    }

    fn require_power(&self) -> Result<(), RamNorFlashError> {
        match self.powered {
            true => Ok(()),
            false => Err(RamNorFlashError::PoweredOff),
        }
    }

    /// How many bytes of a `len`-byte program land: `None` if all, `Some(prefix)` if power is cut.
    fn count_down_power_cut(&mut self, len: usize) -> Option<usize> {
        let cut = self.power_cut.as_mut()?;
        if cut.programs_before_cut > 0 {
            cut.programs_before_cut -= 1;
            return None;
        }
        let prefix = cut.torn_prefix_bytes.min(len);
        self.power_cut = None;
        self.powered = false;
        Some(prefix)
    }

    fn program(&mut self, start: usize, data: &[u8]) {
        // NOR programming only clears bits; on an erased word this is a plain copy.
        let target = &mut self.bytes[start..start + data.len()];
        for (byte, &value) in target.iter_mut().zip(data) {
            *byte &= value;
        }
        self.counters.bytes_programmed = self
            .counters
            .bytes_programmed
            .saturating_add(data.len() as u64);
    }
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize> Default
    for RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize>
    fmt::Debug for RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    // The contents would drown everything else; tests that need them call `bytes()`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RamNorFlash")
            .field("size", &SIZE)
            .field("write_size", &WRITE)
            .field("erase_size", &ERASE)
            .field("counters", &self.counters)
            .field("power_cut", &self.power_cut)
            .field("powered", &self.powered)
            .finish_non_exhaustive()
    }
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize> ErrorType
    for RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    type Error = RamNorFlashError;
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize>
    ReadNorFlash for RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.require_power()?;
        check_read(self, offset, bytes.len())?;
        let start = offset as usize;
        bytes.copy_from_slice(&self.bytes[start..start + bytes.len()]);
        self.counters.reads = self.counters.reads.saturating_add(1);
        Ok(())
    }

    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize, const WRITE: usize, const ERASE: usize, const BITMAP_BYTES: usize> NorFlash
    for RamNorFlash<SIZE, WRITE, ERASE, BITMAP_BYTES>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.require_power()?;
        check_erase(self, from, to)?;
        let range = from as usize..to as usize;
        self.bytes[range.clone()].fill(0xFF);
        self.set_words(range.clone(), false);
        self.counters.erases = self.counters.erases.saturating_add(1);
        let blocks = (range.len() / ERASE) as u64;
        self.counters.blocks_erased = self.counters.blocks_erased.saturating_add(blocks);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.require_power()?;
        check_write(self, offset, bytes.len())?;
        let range = offset as usize..offset as usize + bytes.len();
        let first_word = range.start / WRITE;
        if (first_word..range.end / WRITE).any(|word| self.word_is_programmed(word)) {
            return Err(RamNorFlashError::WordProgrammedTwice);
        }
        self.counters.writes = self.counters.writes.saturating_add(1);
        // A torn program leaves every word of the range in an unknown state: all count as used.
        self.set_words(range.clone(), true);
        match self.count_down_power_cut(bytes.len()) {
            None => self.program(range.start, bytes),
            Some(prefix) => {
                self.program(range.start, &bytes[..prefix]);
                return Err(RamNorFlashError::PowerCut);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = RamNorFlash<256, 4, 64, { bitmap_bytes(256, 4) }>;

    #[test]
    fn misaligned_requests_are_refused_and_change_nothing() {
        let mut flash = Flash::new();
        assert_eq!(flash.write(2, &[0; 4]), Err(RamNorFlashError::NotAligned));
        assert_eq!(flash.write(0, &[0; 3]), Err(RamNorFlashError::NotAligned));
        assert_eq!(flash.erase(4, 68), Err(RamNorFlashError::NotAligned));
        assert_eq!(
            flash.write(2, &[0; 4]).unwrap_err().kind(),
            NorFlashErrorKind::NotAligned
        );
        assert!(flash.bytes().iter().all(|&byte| byte == 0xFF));
        assert!(!flash.is_programmed(0));
        assert_eq!(flash.counters(), FlashCounters::default());
    }

    #[test]
    fn out_of_bounds_requests_are_refused() {
        let mut flash = Flash::new();
        let mut buffer = [0; 8];
        assert_eq!(
            flash.read(252, &mut buffer),
            Err(RamNorFlashError::OutOfBounds)
        );
        assert_eq!(
            flash.write(256, &[0; 4]),
            Err(RamNorFlashError::OutOfBounds)
        );
        assert_eq!(
            flash.write(u32::MAX - 3, &[0; 4]),
            Err(RamNorFlashError::OutOfBounds)
        );
        assert_eq!(flash.erase(192, 320), Err(RamNorFlashError::OutOfBounds));
        assert_eq!(flash.erase(64, 0), Err(RamNorFlashError::OutOfBounds));
        let kind = flash.erase(64, 0).unwrap_err().kind();
        assert_eq!(kind, NorFlashErrorKind::OutOfBounds);
    }

    #[test]
    fn a_second_program_of_a_word_is_refused_even_if_it_only_clears_bits() {
        let mut flash = Flash::new();
        flash.write(8, &[0xFF; 4]).unwrap();
        assert_eq!(
            flash.write(8, &[0x00; 4]),
            Err(RamNorFlashError::WordProgrammedTwice)
        );
        // Overlapping a programmed word from a wider write is refused too, without side effects.
        let error = flash.write(4, &[0x00; 8]).unwrap_err();
        assert_eq!(error, RamNorFlashError::WordProgrammedTwice);
        assert_eq!(error.kind(), NorFlashErrorKind::Other);
        assert!(!flash.is_programmed(4));
        assert!(flash.bytes()[4..12].iter().all(|&byte| byte == 0xFF));
    }

    #[test]
    fn an_erase_makes_words_programmable_again() {
        let mut flash = Flash::new();
        flash.write(64, &[1, 2, 3, 4]).unwrap();
        flash.write(124, &[5, 6, 7, 8]).unwrap();
        flash.erase(64, 128).unwrap();
        assert!(!flash.is_programmed(64) && !flash.is_programmed(124));
        assert!(flash.bytes()[64..128].iter().all(|&byte| byte == 0xFF));
        flash.write(64, &[9; 4]).unwrap();
        let mut back = [0; 4];
        flash.read(64, &mut back).unwrap();
        assert_eq!(back, [9; 4]);
    }

    #[test]
    fn an_erase_leaves_other_blocks_alone() {
        let mut flash = Flash::new();
        flash.write(0, &[1; 4]).unwrap();
        flash.write(64, &[2; 4]).unwrap();
        flash.erase(64, 128).unwrap();
        assert!(flash.is_programmed(0));
        assert_eq!(flash.bytes()[..4], [1; 4]);
    }

    #[test]
    fn counters_count_accepted_operations_only() {
        let mut flash = Flash::new();
        let mut buffer = [0; 16];
        flash.write(0, &[0; 8]).unwrap();
        flash.write(8, &[0; 4]).unwrap();
        flash.write(3, &[0; 4]).unwrap_err();
        flash.read(0, &mut buffer).unwrap();
        flash.erase(0, 128).unwrap();
        let expected = FlashCounters {
            reads: 1,
            writes: 2,
            erases: 1,
            bytes_programmed: 12,
            blocks_erased: 2,
        };
        assert_eq!(flash.counters(), expected);
        assert_eq!((flash.reads(), flash.writes(), flash.erases()), (1, 2, 1));
        assert_eq!((flash.bytes_programmed(), flash.blocks_erased()), (12, 2));
        flash.reset_counters();
        assert_eq!(flash.counters(), FlashCounters::default());
    }

    #[test]
    fn a_power_cut_programs_a_prefix_then_fails_everything_until_restored() {
        let mut flash = Flash::new();
        flash.cut_power_after(1, 5);
        flash.write(0, &[0x11; 4]).unwrap();
        assert_eq!(flash.write(4, &[0x22; 12]), Err(RamNorFlashError::PowerCut));
        assert_eq!(flash.bytes()[4..9], [0x22; 5]);
        assert!(flash.bytes()[9..16].iter().all(|&byte| byte == 0xFF));
        assert_eq!(flash.bytes_programmed(), 4 + 5);
        assert!(!flash.is_powered());

        let mut buffer = [0; 4];
        assert_eq!(
            flash.read(0, &mut buffer),
            Err(RamNorFlashError::PoweredOff)
        );
        assert_eq!(flash.write(64, &[0; 4]), Err(RamNorFlashError::PoweredOff));
        assert_eq!(flash.erase(64, 128), Err(RamNorFlashError::PoweredOff));
        assert_eq!(flash.writes(), 2);

        flash.restore_power();
        flash.read(0, &mut buffer).unwrap();
        assert_eq!(buffer, [0x11; 4]);
        flash.write(64, &[0; 4]).unwrap();
    }

    #[test]
    fn every_word_of_a_torn_program_stays_programmed_until_erased() {
        let mut flash = Flash::new();
        flash.cut_power_after(0, 0);
        assert_eq!(flash.write(0, &[0; 8]), Err(RamNorFlashError::PowerCut));
        assert!(flash.bytes()[..8].iter().all(|&byte| byte == 0xFF));
        flash.restore_power();
        assert_eq!(
            flash.write(4, &[0; 4]),
            Err(RamNorFlashError::WordProgrammedTwice)
        );
        flash.erase(0, 64).unwrap();
        flash.write(4, &[0; 4]).unwrap();
    }

    #[test]
    fn a_prefix_longer_than_the_program_lands_whole_and_still_cuts_power() {
        let mut flash = Flash::new();
        flash.cut_power_after(0, 100);
        assert_eq!(flash.write(0, &[7; 4]), Err(RamNorFlashError::PowerCut));
        assert_eq!(flash.bytes()[..4], [7; 4]);
        assert!(!flash.is_powered());
    }

    #[test]
    fn refused_programs_do_not_count_toward_a_power_cut() {
        let mut flash = Flash::new();
        flash.cut_power_after(1, 0);
        flash.write(1, &[0; 4]).unwrap_err();
        flash.write(0, &[0; 4]).unwrap();
        flash.write(0, &[0; 4]).unwrap_err();
        assert_eq!(flash.write(4, &[0; 4]), Err(RamNorFlashError::PowerCut));
    }

    #[test]
    fn restoring_power_disarms_a_pending_cut() {
        let mut flash = Flash::new();
        flash.cut_power_after(0, 0);
        flash.restore_power();
        flash.write(0, &[0; 4]).unwrap();
        assert!(flash.is_powered());
    }

    #[test]
    fn flip_bit_flips_one_bit_and_rejects_bad_positions() {
        let mut flash = Flash::new();
        flash.flip_bit(10, 3).unwrap();
        assert_eq!(flash.bytes()[10], 0xFF ^ 0x08);
        flash.flip_bit(10, 3).unwrap();
        assert_eq!(flash.bytes()[10], 0xFF);
        assert_eq!(flash.flip_bit(256, 0), Err(RamNorFlashError::OutOfBounds));
        assert_eq!(flash.flip_bit(0, 8), Err(RamNorFlashError::OutOfBounds));
        assert_eq!(flash.counters(), FlashCounters::default());
    }

    #[test]
    fn programming_only_clears_bits_like_real_nor() {
        let mut flash = Flash::new();
        flash.flip_bit(0, 0).unwrap();
        flash.write(0, &[0x0F; 4]).unwrap();
        assert_eq!(flash.bytes()[..4], [0x0E, 0x0F, 0x0F, 0x0F]);
    }

    #[test]
    fn bitmap_size_is_one_bit_per_word_rounded_up() {
        assert_eq!(bitmap_bytes(256, 4), 8);
        assert_eq!(bitmap_bytes(65536, 4), 2048);
        assert_eq!(bitmap_bytes(64, 16), 1);
        assert_eq!(core::mem::size_of::<[u8; bitmap_bytes(65536, 4)]>(), 2048);
    }
}
