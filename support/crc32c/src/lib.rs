//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every bedrock frame.
//!
//! A crate of its own so that `bedrock` (the core) can forbid unsafe code: calling the SSE4.2
//! instruction needs one `unsafe` block, which lives here, justified where it is written.
//!
//! Three implementations of the same function:
//!
//! - x86-64 with SSE4.2: the `crc32` instruction over three interleaved streams, combined with
//!   precomputed shift operators. This runs near the instruction's throughput limit rather than
//!   its latency limit. Chosen at compile time when built with `-C target-feature=+sse4.2` (the
//!   workspace sets it), or at run time with feature `std` when the CPU has it (a program that
//!   depends on bedrock is built without the workspace's flags).
//! - feature `table-16`: slice-by-16 tables from the `crc` crate (16 KiB of tables).
//! - otherwise: the `crc` crate's table-less bitwise form, the smallest code for firmware.
//!
//! All three give identical results; a test pins them against each other and against the
//! standard check value.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

// Compiled where it can be called: chosen at compile time, detected at run time, or tested.
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "sse4.2", feature = "std", test)
))]
mod hardware {
    use core::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};

    const POLYNOMIAL: u32 = 0x82F6_3B78;
    const LONG: usize = 8192;
    const SHORT: usize = 256;

    /// Feeds one zero byte into a raw (not inverted) CRC register.
    const fn zero_byte(mut register: u32) -> u32 {
        let mut bit = 0;
        while bit < 8 {
            register = if register & 1 == 1 {
                (register >> 1) ^ POLYNOMIAL
            } else {
                register >> 1
            };
            bit += 1;
        }
        register
    }

    /// Applies a linear operator, given as the images of the 32 basis bits, to `register`.
    const fn apply(operator: &[u32; 32], register: u32) -> u32 {
        let mut result = 0;
        let mut index = 0;
        while index < 32 {
            if register & (1 << index) != 0 {
                result ^= operator[index];
            }
            index += 1;
        }
        result
    }

    /// The linear operator "append `len` zero bytes" (`len` a power of two), built by squaring
    /// the one-byte operator, so that compile-time evaluation stays cheap.
    const fn shift_operator(len: usize) -> [u32; 32] {
        let mut operator = [0u32; 32];
        let mut index = 0;
        while index < 32 {
            operator[index] = zero_byte(1 << index);
            index += 1;
        }
        let mut covered = 1;
        while covered < len {
            let mut squared = [0u32; 32];
            let mut index = 0;
            while index < 32 {
                squared[index] = apply(&operator, operator[index]);
                index += 1;
            }
            operator = squared;
            covered *= 2;
        }
        operator
    }

    const _: () = assert!(LONG.is_power_of_two() && SHORT.is_power_of_two());

    /// The operator as four byte-indexed tables: one lookup per byte of the register instead of
    /// one conditional XOR per bit.
    const fn shift_tables(len: usize) -> [[u32; 256]; 4] {
        let operator = shift_operator(len);
        let mut tables = [[0u32; 256]; 4];
        let mut byte = 0;
        while byte < 4 {
            let mut value = 0;
            while value < 256 {
                tables[byte][value] = apply(&operator, (value as u32) << (8 * byte));
                value += 1;
            }
            byte += 1;
        }
        tables
    }

    static SHIFT_LONG: [[u32; 256]; 4] = shift_tables(LONG);
    static SHIFT_SHORT: [[u32; 256]; 4] = shift_tables(SHORT);

    fn shift(tables: &[[u32; 256]; 4], register: u32) -> u32 {
        let [a, b, c, d] = register.to_le_bytes();
        tables[0][a as usize]
            ^ tables[1][b as usize]
            ^ tables[2][c as usize]
            ^ tables[3][d as usize]
    }

    fn word(chunk: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        u64::from_le_bytes(word)
    }

    /// Three independent streams over `[0, len)`, `[len, 2len)`, `[2len, 3len)`, then combined.
    #[target_feature(enable = "sse4.2")]
    fn three_streams(register: u32, block: &[u8], len: usize, tables: &[[u32; 256]; 4]) -> u32 {
        let (first_block, rest) = block[..3 * len].split_at(len);
        let (second_block, third_block) = rest.split_at(len);
        let (mut first, mut second, mut third) = (u64::from(register), 0u64, 0u64);
        let streams = first_block
            .chunks_exact(8)
            .zip(second_block.chunks_exact(8))
            .zip(third_block.chunks_exact(8));
        for ((a, b), c) in streams {
            first = _mm_crc32_u64(first, word(a));
            second = _mm_crc32_u64(second, word(b));
            third = _mm_crc32_u64(third, word(c));
        }
        let combined = shift(tables, first as u32) ^ second as u32;
        shift(tables, combined) ^ third as u32
    }

    /// The CRC with the `crc32` instruction; it touches memory only through safe slice
    /// indexing.
    ///
    /// # Safety
    ///
    /// The CPU must have SSE4.2: known at compile time, or checked at run time by the caller.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn crc32c_sse42(bytes: &[u8]) -> u32 {
        let mut register = !0u32;
        let mut rest = bytes;
        for (block_len, operator) in [(LONG, &SHIFT_LONG), (SHORT, &SHIFT_SHORT)] {
            while rest.len() >= 3 * block_len {
                register = three_streams(register, rest, block_len, operator);
                rest = &rest[3 * block_len..];
            }
        }
        let mut words = rest.chunks_exact(8);
        let mut wide = u64::from(register);
        for chunk in &mut words {
            wide = _mm_crc32_u64(wide, word(chunk));
        }
        register = wide as u32;
        for &byte in words.remainder() {
            register = _mm_crc32_u8(register, byte);
        }
        !register
    }
}

#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse4.2"),
    allow(dead_code)
)]
mod software {
    #[cfg(feature = "table-16")]
    type Implementation = crc::Table<16>;
    #[cfg(not(feature = "table-16"))]
    type Implementation = crc::NoTable;

    static CRC: crc::Crc<u32, Implementation> =
        crc::Crc::<u32, Implementation>::new(&crc::CRC_32_ISCSI);

    pub(super) fn crc32c(bytes: &[u8]) -> u32 {
        CRC.checksum(bytes)
    }
}

/// CRC-32C of `bytes` (init and final XOR 0xFFFFFFFF, reflected), as in iSCSI, ext4 and SSE4.2.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse4.2"))]
    {
        // SAFETY: the binary is compiled for CPUs with SSE4.2.
        unsafe { hardware::crc32c_sse42(bytes) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(target_feature = "sse4.2"),
        feature = "std"
    ))]
    {
        if detected::sse42() {
            // SAFETY: the CPU reported SSE4.2 at run time.
            return unsafe { hardware::crc32c_sse42(bytes) };
        }
        software::crc32c(bytes)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        any(target_feature = "sse4.2", feature = "std")
    )))]
    {
        software::crc32c(bytes)
    }
}

/// Run-time detection of SSE4.2, asked once and remembered.
#[cfg(all(
    target_arch = "x86_64",
    not(target_feature = "sse4.2"),
    feature = "std"
))]
mod detected {
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 0: not asked yet; 1: present; 2: absent.
    static SSE42: AtomicU8 = AtomicU8::new(0);

    pub(super) fn sse42() -> bool {
        match SSE42.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let present = std::is_x86_feature_detected!("sse4.2");
                SSE42.store(if present { 1 } else { 2 }, Ordering::Relaxed);
                present
            }
        }
    }
}

/// Which implementation the build chose (see [`implementation`] for what runs).
pub const IMPLEMENTATION: &str = if cfg!(all(target_arch = "x86_64", target_feature = "sse4.2")) {
    HARDWARE
} else if cfg!(all(target_arch = "x86_64", feature = "std")) {
    "x86-64 sse4.2 crc32 instruction if the CPU has it (detected at run time), else software"
} else {
    SOFTWARE
};

const HARDWARE: &str = "x86-64 sse4.2 crc32 instruction, 3 interleaved streams";
const SOFTWARE: &str = if cfg!(feature = "table-16") {
    "software slice-by-16"
} else {
    "software bitwise (no table)"
};

/// The implementation this process uses, after any run-time detection.
pub fn implementation() -> &'static str {
    #[cfg(all(
        target_arch = "x86_64",
        not(target_feature = "sse4.2"),
        feature = "std"
    ))]
    if detected::sse42() {
        return HARDWARE;
    }
    if cfg!(all(target_arch = "x86_64", target_feature = "sse4.2")) {
        HARDWARE
    } else {
        SOFTWARE
    }
}

#[cfg(test)]
extern crate std as test_std;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_std as std;

    const REFERENCE: crc::Crc<u32, crc::NoTable> =
        crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISCSI);

    #[test]
    fn check_value_matches_the_catalogue() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn long_inputs_that_use_every_stream_size_match_the_reference() {
        let bytes: [u8; 3 * 8192 + 3 * 256 + 13] = core::array::from_fn(|i| (i * 31 + 7) as u8);
        for len in [0, 1, 7, 8, 767, 768, 769, 24_575, 24_576, bytes.len()] {
            assert_eq!(
                crc32c(&bytes[..len]),
                REFERENCE.checksum(&bytes[..len]),
                "len {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn the_hardware_and_software_forms_agree(bytes in proptest::collection::vec(any::<u8>(), 0..30_000)) {
            let software = software::crc32c(&bytes);
            prop_assert_eq!(software, REFERENCE.checksum(&bytes));
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("sse4.2") {
                // SAFETY: the CPU reported SSE4.2.
                prop_assert_eq!(unsafe { hardware::crc32c_sse42(&bytes) }, software);
            }
        }

        #[test]
        fn every_input_matches_the_reference(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert_eq!(crc32c(&bytes), REFERENCE.checksum(&bytes));
        }
    }
}
