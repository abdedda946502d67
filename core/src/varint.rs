//! Unsigned LEB128 varints, the integer encoding of postcard and of the database's blocks:
//! seven bits per byte, least significant first, the high bit set on every byte but the last.
//! Decoding accepts canonical encodings only (no trailing zero groups, at most 64 bits), so
//! one value has one encoding.

/// The most bytes a `u64` takes.
pub const LEN_MAX: usize = 10;

/// Bytes the varint of `value` takes.
pub const fn len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes the varint of `value` at the start of `out`; its length, or `None` if `out` is too
/// short.
pub fn encode(value: u64, out: &mut [u8]) -> Option<usize> {
    let needed = len(value);
    let out = out.get_mut(..needed)?;
    let mut rest = value;
    for byte in out.iter_mut() {
        // Truncation intended: the low seven bits.
        *byte = (rest & 0x7F) as u8 | 0x80;
        rest >>= 7;
    }
    out[needed - 1] &= 0x7F;
    Some(needed)
}

/// Reads a varint from the start of `bytes`: the value and its length, or `None` when the
/// bytes end first, the value overflows 64 bits, or the encoding is not canonical.
pub fn decode(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(LEN_MAX) {
        let group = u64::from(byte & 0x7F);
        let shift = 7 * index as u32;
        if index == LEN_MAX - 1 && group > 1 {
            return None;
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            // A last byte of zero (after the first) would be a second encoding of a shorter one.
            return (byte != 0 || index == 0).then_some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = [0u8; LEN_MAX];
        assert_eq!(encode(0, &mut out), Some(1));
        assert_eq!(out[0], 0);
        assert_eq!(encode(300, &mut out), Some(2));
        assert_eq!(&out[..2], [0xac, 0x02]);
        assert_eq!(encode(u64::MAX, &mut out), Some(10));
        assert_eq!(out[9], 0x01);
        assert_eq!(decode(&[0xac, 0x02, 0x55]), Some((300, 2)));
        assert_eq!(decode(&[0x80, 0x00]), None, "not canonical");
        assert_eq!(decode(&[0x80]), None, "cut short");
        let mut over = [0xFF; 10];
        over[9] = 0x02;
        assert_eq!(decode(&over), None, "above 64 bits");
        assert_eq!(encode(300, &mut out[..1]), None);
    }

    proptest! {
        #[test]
        fn every_value_round_trips_and_matches_postcard(value: u64) {
            let mut out = [0u8; LEN_MAX];
            let used = encode(value, &mut out).unwrap();
            prop_assert_eq!(used, len(value));
            prop_assert_eq!(decode(&out[..used]), Some((value, used)));
            let mut theirs = [0u8; LEN_MAX];
            let theirs = postcard::to_slice(&value, &mut theirs).unwrap();
            prop_assert_eq!(&out[..used], &theirs[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Some((value, used)) = decode(&bytes) {
                let mut out = [0u8; LEN_MAX];
                prop_assert_eq!(encode(value, &mut out), Some(used));
                prop_assert_eq!(&out[..used], &bytes[..used]);
            }
        }
    }
}
