//! Arbitrary bytes read as an SSTable (`bedrock::db::table`), and arbitrary bytes read as a
//! block (`bedrock::db::block`).
//!
//! The first byte picks a mode. **Raw**: the rest is the table image (up to 16 KiB, written at
//! offset 0 of a RAM storage), its footer CRC re-sealed half the time so that the fuzzer gets
//! past the footer check. **Formatted**: a real table is written from entries the input
//! describes, then damaged at positions the input picks (random bytes rarely make valid CRCs;
//! this mode starts from them). Properties: nothing panics; a table that opens answers lookups
//! with a value inside the reader's buffer, `None`, or an error; a formatted table answers
//! every written key with exactly its written value, or (damaged) reports an error: a damaged
//! byte is never returned as data; a block that passes its check yields entries in strictly
//! increasing order until it ends or is found corrupt.
#![no_main]

use bedrock::checksum::crc32c;
use std::collections::BTreeMap;

use bedrock::db::block::{order, Block, Entry, Kind};
use bedrock::db::table::{
    filter_buffer_len, ReaderBuffers, Table, TableWriter, WriterBuffers, FOOTER_LEN,
};
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

type Ram = RamStorage<CAPACITY>;

/// Writes a table of the entries `input` describes (keys of 1 to 8 bytes, values of up to 31,
/// one version each), then flips the bytes at the positions the rest of the input names.
fn formatted(input: &[u8]) {
    let mut model = BTreeMap::new();
    let mut rest = input;
    while let [len, tail @ ..] = rest {
        let key_len = usize::from(len & 7) + 1;
        let value_len = usize::from(len >> 3);
        if tail.len() < key_len + value_len || model.len() >= 200 {
            break;
        }
        let (key, tail) = tail.split_at(key_len);
        let (value, tail) = tail.split_at(value_len);
        model.insert(key.to_vec(), value.to_vec());
        rest = tail;
    }
    let mut storage = Ram::new(8, 4096, 0xFF).expect("a valid geometry");
    let (mut block, mut index) = (vec![0u8; 256], vec![0u8; 8192]);
    let mut hashes = vec![0u64; model.len().max(1)];
    let mut filter = vec![0u8; filter_buffer_len(hashes.len(), 10)];
    let buffers = WriterBuffers {
        block: &mut block,
        index: &mut index,
        hashes: &mut hashes,
        filter: &mut filter,
    };
    let mut writer = TableWriter::new((0, CAPACITY as u64), 8, buffers, 10);
    for (sequence, (key, value)) in (1u64..).zip(&model) {
        let entry = Entry {
            key,
            sequence,
            kind: Kind::Put,
            value,
        };
        writer.add(&mut storage, &entry).expect("an entry fits");
    }
    let info = writer.finish(&mut storage).expect("the table fits");
    let len = info.len as usize;
    let mut image = vec![0u8; len];
    storage.read(0, &mut image).expect("a read within the storage");
    let mut damaged = false;
    for pair in rest.chunks_exact(3).take(8) {
        let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % len.max(1);
        if pair[2] != 0 {
            image[at] ^= pair[2];
            damaged = true;
        }
    }
    let mut storage = Ram::new(8, 4096, 0xFF).expect("a valid geometry");
    storage.write(0, &image).expect("an aligned write of erased space");
    let table = match Table::open(&mut storage, 0, len as u64) {
        Ok(table) => table,
        Err(_) => {
            assert!(damaged, "an undamaged table opens");
            return;
        }
    };
    let (mut index, mut data) = (vec![0u8; 8192], vec![0u8; 4096]);
    let mut buffers = ReaderBuffers {
        index: &mut index,
        data: &mut data,
    };
    for (key, value) in &model {
        match table.get(&mut storage, key, u64::MAX >> 2, &mut buffers) {
            Ok(Some(found)) => {
                let got = &buffers.data[found.value_at..found.value_at + found.value_len];
                assert_eq!(got, &value[..], "a value came back changed");
            }
            Ok(None) => assert!(damaged, "an undamaged table lost a key"),
            Err(_) => assert!(damaged, "an undamaged table reported an error"),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, image)) = input.split_first() else {
        return;
    };
    if control & 2 == 2 {
        formatted(image);
        return;
    }
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
    let mut storage = Ram::new(8, 4096, 0xFF).expect("a valid geometry");
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
