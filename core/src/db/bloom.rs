//! Bloom filters over the keys of a table: a lookup of a key the table does not hold reads no
//! data block, except for a false positive (about 1 % at 10 bits per key).
//!
//! ```text
//! filter:  bits [m / 8 bytes] | probes u8
//! ```
//!
//! A key's [`hash`] `h` (64 bits) gives `probes` bit positions by double hashing: `h1 = h`,
//! `h2 = h >> 33 | h << 31` (rotated), position `i` = `(h1 + i · h2) mod m`, `m` the filter's
//! bit count (a multiple of 8). A filter of no bits matches everything.

/// The hash of a key: 64 bits, stable across platforms (the filter's bits depend on it).
///
/// Eight bytes at a time, little-endian, each word mixed in by multiply-rotate, then the
/// splitmix64 finalizer over the state and the length.
pub fn hash(key: &[u8]) -> u64 {
    const MULTIPLY: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut state = 0x6A09_E667_F3BC_C908u64;
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        state = (state ^ u64::from_le_bytes(bytes))
            .wrapping_mul(MULTIPLY)
            .rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut bytes = [0u8; 8];
        bytes[..rest.len()].copy_from_slice(rest);
        state = (state ^ u64::from_le_bytes(bytes))
            .wrapping_mul(MULTIPLY)
            .rotate_left(29);
    }
    let mut z = state ^ (key.len() as u64).wrapping_mul(MULTIPLY);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Probes for `bits_per_key`: `bits_per_key · ln 2`, from 1 to 30.
pub fn probes(bits_per_key: usize) -> u8 {
    // 0.69 ≈ ln 2, in integers.
    (bits_per_key * 69 / 100).clamp(1, 30) as u8
}

/// The bytes a filter of `keys` keys at `bits_per_key` takes (bits rounded up to whole bytes,
/// at least 8 bytes, plus the probe count).
pub fn filter_len(keys: usize, bits_per_key: usize) -> usize {
    let bits = keys.saturating_mul(bits_per_key).max(64);
    bits.div_ceil(8) + 1
}

fn positions(hash: u64, probes: u8, bits: u64) -> impl Iterator<Item = u64> {
    let step = hash.rotate_right(33);
    (0..u64::from(probes)).map(move |index| hash.wrapping_add(index.wrapping_mul(step)) % bits)
}

/// Writes the filter of `hashes` (key hashes) into `out`, whose length must be
/// [`filter_len`]`(hashes.len(), bits_per_key)`; its length, or `None` when `out` is too short.
pub fn build(hashes: &[u64], bits_per_key: usize, out: &mut [u8]) -> Option<usize> {
    let len = filter_len(hashes.len(), bits_per_key);
    let out = out.get_mut(..len)?;
    let (bits, tail) = out.split_at_mut(len - 1);
    bits.fill(0);
    let probes = probes(bits_per_key);
    tail[0] = probes;
    let count = bits.len() as u64 * 8;
    for &hash in hashes {
        for position in positions(hash, probes, count) {
            bits[(position / 8) as usize] |= 1 << (position % 8);
        }
    }
    Some(len)
}

/// Whether the filter in `filter` may hold a key of hash `hash`: `false` is certain, `true`
/// may be a false positive. A filter too short to have bits, or with 0 or more than 30 probes
/// (damaged), matches everything.
pub fn may_contain(filter: &[u8], hash: u64) -> bool {
    let Some((&probes, bits)) = filter.split_last() else {
        return true;
    };
    if bits.is_empty() || probes == 0 || probes > 30 {
        return true;
    }
    let count = bits.len() as u64 * 8;
    positions(hash, probes, count)
        .all(|position| bits[(position / 8) as usize] & (1 << (position % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec as HeapVec;

    #[test]
    fn the_hash_is_stable() {
        // Golden values, pinned when the format was made: a filter written by one build must
        // read the same on every other, so the hash may never change.
        assert_eq!(hash(b""), hash(b""));
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_ne!(hash(b"key"), hash(b"key\0"), "the length is mixed in");
        let golden = [hash(b""), hash(b"bedrock"), hash(b"0123456789abcdef")];
        assert_eq!(golden, [GOLDEN_EMPTY, GOLDEN_BEDROCK, GOLDEN_SIXTEEN,]);
    }

    const GOLDEN_EMPTY: u64 = 0x492B_8D60_66C0_9227;
    const GOLDEN_BEDROCK: u64 = 0x111D_B1B7_12CA_7F80;
    const GOLDEN_SIXTEEN: u64 = 0x462B_9BB0_8937_3324;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: HeapVec<HeapVec<u8>> = (0..10_000u32)
            .map(|n| std::format!("user{n:08}").into_bytes())
            .collect();
        let hashes: HeapVec<u64> = keys.iter().map(|key| hash(key)).collect();
        let mut filter = std::vec![0u8; filter_len(keys.len(), 10)];
        assert_eq!(build(&hashes, 10, &mut filter), Some(filter.len()));
        assert!(hashes.iter().all(|&h| may_contain(&filter, h)));
        let false_positives = (0..10_000u32)
            .filter(|n| may_contain(&filter, hash(std::format!("other{n:08}").as_bytes())))
            .count();
        // Expected about 0.8 % at 10 bits per key and 6 probes.
        assert!(
            false_positives < 200,
            "{false_positives} false positives in 10 000"
        );
        assert!(may_contain(&[], 7), "no filter matches everything");
        assert!(
            may_contain(&[0, 0, 0], 7),
            "a damaged probe count matches everything"
        );
    }
}
