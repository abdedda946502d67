//! Arbitrary bytes read as an SSTable (`bedrock::db::table`), and arbitrary bytes read as a
//! block (`bedrock::db::block`).
//!
//! The input is the table image (up to 16 KiB, written at offset 0 of a RAM storage); its first
//! byte picks how many trailing bytes are re-sealed with a valid footer CRC, so that the
//! fuzzer gets past the footer check. Properties: nothing panics; a table that opens reports
//! an entry count and answers lookups of keys taken from the input with a value inside the
//! reader's buffer, `None`, or an error (corrupt, or no space in the lent buffers); a block
//! that passes its check yields entries in strictly increasing order until it ends or is found
//! corrupt.
#![no_main]

use bedrock::checksum::crc32c;
use bedrock::db::block::{order, Block};
use bedrock::db::table::{ReaderBuffers, Table, FOOTER_LEN};
use bedrock::storage::{RamStorage, Storage};
use libfuzzer_sys::fuzz_target;

const CAPACITY: usize = 16 << 10;

fn read_block(bytes: &[u8]) {
    let Ok(block) = Block::new_checked(bytes) else {
        return;
    };
    let mut cursor = block.cursor();
    let mut previous: Option<(Vec<u8>, u64)> = None;
    for _ in 0..bytes.len() {
        match cursor.next() {
            Ok(Some(entry)) => {
                if let Some((key, sequence)) = &previous {
                    assert!(order(key, *sequence, entry.key, entry.sequence).is_lt());
                }
                previous = Some((entry.key.to_vec(), entry.sequence));
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, image)) = input.split_first() else {
        return;
    };
    // A block: the image as it is, and again with a valid CRC appended.
    read_block(image);
    let mut sealed = image.to_vec();
    sealed.extend_from_slice(&crc32c(image).to_le_bytes());
    read_block(&sealed);

    let mut image = image[..image.len().min(CAPACITY)].to_vec();
    let len = image.len().div_ceil(8) * 8;
    image.resize(len, 0);
    if control & 1 == 1 && len >= 64 {
        // Re-seal the footer's CRC so that the fields behind it get fuzzed.
        let footer = len - 64;
        let crc = crc32c(&image[footer..footer + 56]);
        image[footer + 56..footer + FOOTER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    let mut storage = RamStorage::<CAPACITY>::new(8, 4096, 0xFF).expect("a valid geometry");
    if len > 0 {
        storage.write(0, &image).expect("an aligned write of erased space");
    }
    let Ok(table) = Table::open(&mut storage, 0, len as u64) else {
        return;
    };
    let _ = table.entries();
    let mut index = vec![0u8; 4096];
    let mut data = vec![0u8; 4096];
    let mut buffers = ReaderBuffers {
        index: &mut index,
        data: &mut data,
    };
    for key in image.chunks(7).take(32).filter(|key| !key.is_empty()) {
        if let Ok(Some(found)) = table.get(&mut storage, key, u64::from(control) << 8, &mut buffers) {
            assert!(found.value_at + found.value_len <= buffers.data.len());
        }
    }
});
