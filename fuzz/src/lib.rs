//! Shared pieces of bedrock's fuzz targets: reading choices out of the fuzzer's bytes, picking a
//! storage geometry, and turning the rest of the input into a storage image.
//!
//! Two ways to build an image, chosen by the input:
//!
//! - **raw**: the remaining input bytes are the image (from offset 0; the rest stays erased);
//! - **formatted**: a real log (or counter) is written first, then the remaining input is read
//!   as damage operations (flip, erase, overwrite or copy byte ranges). Starting from valid frames
//!   lets the fuzzer reach the deep recovery paths that random bytes almost never get to, since
//!   every frame is CRC-checked.

use bedrock::log::{Config, Policy};
use bedrock::storage::RamStorage;

/// Bytes of every fuzzed storage.
pub const CAPACITY: usize = 16384;

/// The fuzzed storage.
pub type Ram = RamStorage<CAPACITY>;

/// The fuzzer's bytes, read front to back; zeros once exhausted, so every input is usable.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer's input.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    /// The next two bytes as a little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.bytes)
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A storage geometry, a log configuration and a buffer size, all chosen by the input.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Program unit.
    pub write_size: u32,
    /// Erase block.
    pub erase_size: u32,
    /// The erased byte.
    pub erased_value: u8,
    /// The log's configuration.
    pub config: Config,
    /// Bytes of the buffer lent to the log.
    pub buffer_len: usize,
    /// Write a real log first and damage it, rather than use the input as the image.
    pub formatted: bool,
}

impl Setup {
    /// Reads a setup from the first eight bytes of the input.
    pub fn read(input: &mut Input<'_>) -> Self {
        const WRITE_SIZES: [u32; 5] = [1, 4, 8, 32, 256];
        let write_size = WRITE_SIZES[input.byte() as usize % WRITE_SIZES.len()];
        let erase_size = 256u32 << (input.byte() % 5);
        let segment_blocks = 1 + u32::from(input.byte() % 4);
        let flags = input.byte();
        let custom_erased = input.byte();
        let erased_value = match (flags >> 1) & 3 {
            0 | 1 => 0xFF,
            2 => 0x00,
            _ => custom_erased,
        };
        let policy = if flags & 1 == 0 {
            Policy::StopAtCorruption
        } else {
            Policy::Strict
        };
        let payload_max = 1 + u32::from(input.byte()) % 200;
        let buffer_len = 32 + usize::from(input.u16() % 4096);
        Self {
            write_size,
            erase_size,
            erased_value,
            config: Config {
                // Sometimes 0, the default of one erase block.
                segment_size: if flags & 8 == 0 {
                    segment_blocks * erase_size
                } else {
                    0
                },
                payload_max,
                policy,
            },
            buffer_len,
            formatted: flags & 16 != 0,
        }
    }

    /// An erased storage of this geometry.
    pub fn storage(&self) -> Ram {
        Ram::new(self.write_size, self.erase_size, self.erased_value)
            .expect("the geometries chosen here are valid")
    }

    /// A fresh buffer to lend.
    pub fn buffer(&self) -> Vec<u8> {
        vec![0; self.buffer_len]
    }
}

/// Copies the rest of the input into the storage image, from offset 0.
pub fn fill_raw(storage: &mut Ram, input: &mut Input<'_>) {
    let image = storage.bytes_mut();
    let bytes = input.rest();
    let len = bytes.len().min(image.len());
    image[..len].copy_from_slice(&bytes[..len]);
}

/// Applies the rest of the input to the image as damage operations of five bytes each.
pub fn damage(storage: &mut Ram, erased_value: u8, input: &mut Input<'_>) -> usize {
    let mut operations = 0;
    while !input.is_empty() {
        let operation = input.byte();
        let offset = usize::from(input.u16()) % CAPACITY;
        let argument = input.byte();
        let len =
            (1 + usize::from(argument) * (1 + usize::from(operation >> 4))).min(CAPACITY - offset);
        let image = storage.bytes_mut();
        match operation % 4 {
            // A flipped bit pattern in one byte.
            0 => image[offset] ^= argument.max(1),
            // Lost writes: back to erased.
            1 => image[offset..offset + len].fill(erased_value),
            // Garbage.
            2 => image[offset..offset + len].fill(argument),
            // Stale copies: another place's bytes, possibly valid frames.
            _ => {
                let from = usize::from(input.u16()) % CAPACITY;
                let len = len.min(CAPACITY - from);
                image.copy_within(from..from + len, offset);
            }
        }
        operations += 1;
    }
    operations
}

/// The payload of the frame with `sequence` in formatted images: its length and content are a
/// function of the sequence number, so a yielded frame can be checked on its own.
pub fn payload_of(sequence: u64, salt: u8, payload_max: usize, area: &mut [u8]) -> usize {
    let len = (sequence as usize)
        .wrapping_mul(7)
        .wrapping_add(usize::from(salt))
        % (payload_max + 1);
    for (index, byte) in area[..len].iter_mut().enumerate() {
        *byte = (sequence as u8)
            .wrapping_add(index as u8)
            .wrapping_add(salt);
    }
    len
}
