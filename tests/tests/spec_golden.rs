//! SPEC.md's golden vectors, checked against the code in both directions.
//!
//! The vectors are parsed out of SPEC.md at test time, so the document cannot drift from the code:
//! a wrong byte in SPEC.md, or a change to the format in code, fails here.

use bedrock::checksum::crc32c;
use bedrock::counter::{Counter, CounterConfig};
use bedrock::crdt::NodeId;
use bedrock::frame::{self, Frame, Header};
use bedrock::storage::RamStorage;
use bedrock::wire::{self, Keyring, Wire};

/// CRC-32C of "123456789", the catalogue's check value.
const CRC32C_CHECK: u32 = 0xE306_9283;

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../SPEC.md");
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path}: {error}"))
}

/// One fenced block of SPEC.md: its fields (`key value` lines) and its dumped bytes.
#[derive(Debug)]
struct Block {
    fields: Vec<(String, String)>,
    bytes: Vec<u8>,
}

impl Block {
    fn get(&self, key: &str) -> &str {
        let name = self.fields.first().map_or("?", |(_, value)| value.as_str());
        self.fields
            .iter()
            .find(|(found, _)| found == key)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("block {name}: no `{key}` field"))
    }

    fn number(&self, key: &str) -> u64 {
        parse_number(self.get(key))
    }
}

fn parse_number(text: &str) -> u64 {
    let text = text.replace('_', "");
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|error| panic!("bad number {text:?}: {error}"))
}

fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if digits == "-" {
        return Vec::new();
    }
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            assert_eq!(pair.len(), 2, "odd number of hex digits in {text:?}");
            u8::from_str_radix(pair, 16).unwrap_or_else(|error| panic!("bad hex {text:?}: {error}"))
        })
        .collect()
}

/// Parses one line of a block into `block`: `offset: hex bytes` or `key value`.
fn parse_line(block: &mut Block, line: &str) {
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    if let Some((offset, hex)) = line.split_once(':') {
        let offset = usize::from_str_radix(offset.trim(), 16)
            .unwrap_or_else(|error| panic!("bad offset in {line:?}: {error}"));
        assert_eq!(
            offset,
            block.bytes.len(),
            "offsets must be contiguous: {line:?}"
        );
        block.bytes.extend(parse_hex(hex));
        return;
    }
    let (key, value) = line
        .split_once(char::is_whitespace)
        .unwrap_or_else(|| panic!("expected `key value`: {line:?}"));
    block
        .fields
        .push((key.to_string(), value.trim().to_string()));
}

/// Every fenced block of `spec` whose info string is exactly `tag`.
fn blocks(spec: &str, tag: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut current: Option<Block> = None;
    for line in spec.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, current.take()) {
            (Some(info), None) if info.trim() == tag => {
                current = Some(Block {
                    fields: Vec::new(),
                    bytes: Vec::new(),
                });
            }
            (Some(_), Some(block)) => found.push(block),
            (None, Some(mut block)) => {
                parse_line(&mut block, line);
                current = Some(block);
            }
            (_, None) => {}
        }
    }
    assert!(current.is_none(), "unterminated ```{tag} block");
    found
}

/// Bytes in SPEC.md's dump format, to paste into it once a format change is intended.
fn dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        out += &format!("{:04x}:", line * 16);
        for (index, byte) in chunk.iter().enumerate() {
            out += if index == 8 { "  " } else { " " };
            out += &format!("{byte:02x}");
        }
        out.push('\n');
    }
    out
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Fails the enclosing check with a message, rather than panicking, so that a test can also
/// assert that a damaged vector is refused.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+));
        }
    };
}

/// Checks one golden frame in both directions: bytes to fields, and fields to bytes.
fn check_frame_vector(vector: &Block) -> Result<(), String> {
    let name = vector.get("name");
    let header = Header {
        kind: vector.number("kind").try_into().expect("kind is a byte"),
        sequence: vector.number("sequence"),
        epoch: vector.number("epoch").try_into().expect("epoch is a u32"),
        unsynced: vector
            .number("unsynced")
            .try_into()
            .expect("unsynced is a u32"),
    };
    let write_size = vector.number("write_size") as usize;
    let erased: u8 = vector
        .number("erased")
        .try_into()
        .expect("erased is a byte");
    let payload = parse_hex(vector.get("payload"));
    let bytes = &vector.bytes;

    if let Some((_, list)) = vector.fields.iter().find(|(key, _)| key == "varints") {
        let mut encoded = Vec::new();
        for value in list.split(',') {
            varint(parse_number(value.trim()), &mut encoded);
        }
        ensure!(
            payload == encoded,
            "{name}: payload is not the varints {list}"
        );
    }

    let frame = Frame::new_checked(bytes, payload.len())
        .map_err(|error| format!("{name}: does not decode: {error:?}"))?;
    ensure!(
        frame.header() == header,
        "{name}: header {:?}",
        frame.header()
    );
    ensure!(
        frame.payload() == &payload[..],
        "{name}: payload {:02x?}",
        frame.payload()
    );
    ensure!(
        frame.len() == frame::OVERHEAD + payload.len(),
        "{name}: frame length"
    );
    let covered = frame::HEADER_LEN + payload.len();
    ensure!(frame.crc() == crc32c(&bytes[..covered]), "{name}: crc");
    ensure!(
        bytes.len() == frame::padded_len(payload.len(), write_size),
        "{name}: {} bytes, not padded to the write size {write_size}",
        bytes.len()
    );
    let padding = &bytes[frame.len()..];
    ensure!(
        padding.iter().all(|&byte| byte == erased),
        "{name}: padding {padding:02x?}"
    );

    let mut buffer = vec![!erased; bytes.len() + 64];
    let emitted = frame::emit(&mut buffer, header, write_size, erased, |area| {
        area[..payload.len()].copy_from_slice(&payload);
        Ok(payload.len())
    })
    .map_err(|error| format!("{name}: does not emit: {error:?}"))?;
    ensure!(
        buffer[..emitted] == bytes[..],
        "{name}: frame::emit gives\n{}",
        dump(&buffer[..emitted])
    );
    Ok(())
}

#[test]
fn the_crc_is_crc32c_with_the_check_value_spec_md_states() {
    assert_eq!(crc32c(b"123456789"), CRC32C_CHECK);
    assert!(
        spec().contains("**`0xE3069283`**"),
        "SPEC.md states the check value"
    );
}

#[test]
fn every_golden_frame_in_spec_md_decodes_and_emits_exactly() {
    let vectors = blocks(&spec(), "golden");
    assert!(
        vectors.len() >= 4,
        "SPEC.md has {} golden frames",
        vectors.len()
    );
    let mut names: Vec<&str> = vectors.iter().map(|vector| vector.get("name")).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), vectors.len(), "golden vector names are unique");
    for vector in &vectors {
        if let Err(failure) = check_frame_vector(vector) {
            panic!("SPEC.md disagrees with the code: {failure}");
        }
    }
}

#[test]
fn a_golden_frame_with_any_wrong_byte_fails_the_check() {
    for vector in blocks(&spec(), "golden") {
        for at in 0..vector.bytes.len() {
            let mut damaged = Block {
                fields: vector.fields.clone(),
                bytes: vector.bytes.clone(),
            };
            damaged.bytes[at] ^= 0x01;
            let name = vector.get("name");
            assert!(
                check_frame_vector(&damaged).is_err(),
                "{name}: byte {at} flipped passed"
            );
        }
    }
}

#[test]
fn the_golden_counter_image_is_what_a_fresh_counter_writes() {
    let images = blocks(&spec(), "golden-image");
    assert_eq!(images.len(), 1, "SPEC.md has one golden image");
    let image = &images[0];
    assert_eq!(image.get("name"), "counter-incr-1");
    // The storage size is a const generic: SPEC.md must describe this storage.
    const CAPACITY: usize = 4096;
    assert_eq!(image.number("capacity"), CAPACITY as u64);
    let erased: u8 = image.number("erased").try_into().unwrap();
    let mut storage = RamStorage::<CAPACITY>::new(
        image.number("write_size").try_into().unwrap(),
        image.number("erase_size").try_into().unwrap(),
        erased,
    )
    .unwrap();
    {
        let (mut counter, recovery) =
            Counter::open(&mut storage, [0u8; 128], CounterConfig::default()).unwrap();
        assert!(recovery.is_clean());
        assert_eq!(counter.incr(1).unwrap(), 1);
    }
    let offset = image.number("offset") as usize;
    let end = offset + image.bytes.len();
    let written = storage.bytes_mut();
    assert!(
        written[offset..end] == image.bytes[..],
        "the image differs from SPEC.md; the code writes:\n{}",
        dump(&written[offset..end])
    );
    assert!(
        written[..offset].iter().all(|&byte| byte == erased),
        "erased before"
    );
    assert!(
        written[end..].iter().all(|&byte| byte == erased),
        "erased after"
    );
}

/// Builds the wire a golden envelope block describes: encrypted under its `key` lines (a key
/// file, `|` separating lines) or, for `key -`, plaintext.
fn envelope_wire(vector: &Block, node: NodeId, incarnation: u32) -> Result<Wire<4, 4>, String> {
    let name = vector.get("name");
    let cluster: u32 = vector
        .number("cluster")
        .try_into()
        .expect("cluster is a u32");
    match vector.get("mode") {
        "plaintext" => Ok(Wire::plaintext(cluster, node, incarnation)),
        "encrypted" => {
            let text = vector.get("keys").replace('|', "\n");
            let keys = Keyring::parse(&text).map_err(|error| format!("{name}: {error}"))?;
            Ok(Wire::encrypted(cluster, node, incarnation, keys))
        }
        other => Err(format!("{name}: mode {other:?}")),
    }
}

/// Checks one golden envelope in both directions: its bytes open to its fields, and sealing its
/// fields gives its bytes.
fn check_envelope_vector(vector: &Block) -> Result<(), String> {
    let name = vector.get("name");
    let kind: u8 = vector.number("kind").try_into().expect("kind is a byte");
    let sender = NodeId(vector.number("sender").try_into().expect("sender is a u32"));
    let incarnation: u32 = vector.number("incarnation").try_into().expect("a u32");
    let counter: u32 = vector.number("counter").try_into().expect("a u32");
    let key_id: u8 = vector.number("key_id").try_into().expect("a byte");
    let payload = parse_hex(vector.get("payload"));
    let bytes = &vector.bytes;

    let header = wire::Header::parse(bytes).map_err(|error| format!("{name}: {error}"))?;
    let plaintext = vector.get("mode") == "plaintext";
    ensure!(header.plaintext == plaintext, "{name}: flags");
    ensure!(header.key_id == key_id, "{name}: key id {}", header.key_id);
    let receiver = NodeId(sender.0.wrapping_add(1));
    let mut wire = envelope_wire(vector, receiver, 0)?;
    ensure!(
        bytes.len() == wire.overhead() + payload.len(),
        "{name}: {} bytes",
        bytes.len()
    );
    if plaintext {
        let end = wire::HEADER_LEN + payload.len();
        ensure!(
            bytes[end..] == crc32c(&bytes[..end]).to_le_bytes(),
            "{name}: the trailer is not the CRC-32C of header and payload"
        );
    }
    let mut copy = bytes.clone();
    let opened = wire
        .open(&mut copy)
        .map_err(|error| format!("{name}: does not open: {error}"))?;
    ensure!(
        (
            opened.kind,
            opened.sender,
            opened.incarnation,
            opened.counter
        ) == (kind, sender, incarnation, counter),
        "{name}: opens to {opened:?}"
    );
    ensure!(opened.payload == &payload[..], "{name}: payload");

    let mut wire = envelope_wire(vector, sender, incarnation)?;
    let mut out = vec![0u8; bytes.len()];
    for _ in 0..counter {
        wire.seal(kind, &mut out, 0)
            .map_err(|error| format!("{name}: {error}"))?;
    }
    out[wire::HEADER_LEN..wire::HEADER_LEN + payload.len()].copy_from_slice(&payload);
    let len = wire
        .seal(kind, &mut out, payload.len())
        .map_err(|error| format!("{name}: does not seal: {error}"))?;
    ensure!(
        out[..len] == bytes[..],
        "{name}: Wire::seal gives\n{}",
        dump(&out[..len])
    );
    Ok(())
}

#[test]
fn every_golden_envelope_in_spec_md_opens_and_seals_exactly() {
    let vectors = blocks(&spec(), "golden-envelope");
    assert!(
        vectors.len() >= 2,
        "SPEC.md has {} golden envelopes",
        vectors.len()
    );
    for mode in ["encrypted", "plaintext"] {
        assert!(
            vectors.iter().any(|vector| vector.get("mode") == mode),
            "SPEC.md has a {mode} golden envelope"
        );
    }
    for vector in &vectors {
        if let Err(failure) = check_envelope_vector(vector) {
            panic!("SPEC.md disagrees with the code: {failure}");
        }
    }
}

#[test]
fn a_golden_envelope_with_any_wrong_bit_fails_the_check() {
    for vector in blocks(&spec(), "golden-envelope") {
        for at in 0..vector.bytes.len() {
            for bit in 0..8 {
                let mut damaged = Block {
                    fields: vector.fields.clone(),
                    bytes: vector.bytes.clone(),
                };
                damaged.bytes[at] ^= 1 << bit;
                let name = vector.get("name");
                assert!(
                    check_envelope_vector(&damaged).is_err(),
                    "{name}: bit {bit} of byte {at} flipped passed"
                );
            }
        }
    }
}

#[test]
fn spec_md_states_the_envelope_overhead() {
    let spec = spec();
    assert_eq!(wire::OVERHEAD, 36);
    assert_eq!(wire::PLAINTEXT_OVERHEAD, 24);
    assert!(spec.contains("**36 bytes**") && spec.contains("**24 bytes**"));
}

/// The entries of the golden block in SPEC.md §14.1.
fn golden_block_entries() -> Vec<(Vec<u8>, u64, bedrock::db::block::Kind, Vec<u8>)> {
    use bedrock::db::block::Kind;
    vec![
        (b"apple".to_vec(), 3, Kind::Put, b"red".to_vec()),
        (b"apple".to_vec(), 1, Kind::Delete, Vec::new()),
        (b"apricot".to_vec(), 2, Kind::Put, Vec::new()),
    ]
}

#[test]
fn the_golden_block_is_what_a_builder_writes_and_reads_back() {
    use bedrock::db::block::{Block as DbBlock, BlockBuilder, Entry};
    let vectors = blocks(&spec(), "golden-block");
    assert_eq!(vectors.len(), 1, "SPEC.md has one golden block");
    let vector = &vectors[0];
    let entries = golden_block_entries();
    assert_eq!(vector.number("entries"), entries.len() as u64);
    let mut buffer = [0u8; 256];
    let mut builder = BlockBuilder::new(&mut buffer);
    for (key, sequence, kind, value) in &entries {
        let entry = Entry {
            key,
            sequence: *sequence,
            kind: *kind,
            value,
        };
        builder.add(&entry).unwrap();
    }
    let built = builder.finish().to_vec();
    assert_eq!(
        built,
        vector.bytes,
        "SPEC.md's block; the code writes:\n{}",
        dump(&built)
    );
    let block = DbBlock::new_checked(&vector.bytes).unwrap();
    let mut cursor = block.cursor();
    let mut read = Vec::new();
    while let Some(entry) = cursor.next().unwrap() {
        read.push((
            entry.key.to_vec(),
            entry.sequence,
            entry.kind,
            entry.value.to_vec(),
        ));
    }
    assert_eq!(read, entries);
    for at in 0..vector.bytes.len() {
        let mut damaged = vector.bytes.clone();
        damaged[at] ^= 0x01;
        assert!(
            DbBlock::new_checked(&damaged).is_err(),
            "byte {at} flipped passed"
        );
    }
}

#[test]
fn the_golden_batch_record_is_what_a_batch_encodes_and_decodes_back() {
    use bedrock::db::batch::{decode_record, encode_record, Batch};
    use bedrock::db::block::Kind;
    let vectors = blocks(&spec(), "golden-batch");
    assert_eq!(vectors.len(), 1, "SPEC.md has one golden batch record");
    let vector = &vectors[0];
    let first = vector.number("first_sequence");
    let mut batch = Batch::new([0u8; 64]);
    batch.put(b"k", b"v").unwrap();
    batch.delete(b"gone").unwrap();
    let mut out = [0u8; 64];
    let len = encode_record(first, batch.count(), batch.operations(), &mut out).unwrap();
    assert_eq!(
        out[..len],
        vector.bytes[..],
        "the code writes:\n{}",
        dump(&out[..len])
    );
    let record = decode_record(&vector.bytes).unwrap();
    let operations: Vec<_> = record
        .operations()
        .map(|op| (op.sequence, op.kind, op.key.to_vec(), op.value.to_vec()))
        .collect();
    assert_eq!(
        operations,
        [
            (first, Kind::Put, b"k".to_vec(), b"v".to_vec()),
            (first + 1, Kind::Delete, b"gone".to_vec(), Vec::new()),
        ]
    );
}

#[test]
fn spec_md_states_the_key_hash_of_bloom_filters() {
    let spec = spec();
    let stated = format!("{:#018x}", bedrock::db::bloom::hash(b"bedrock"));
    assert!(
        spec.contains(&format!("`hash(\"bedrock\")` = `{stated}`")),
        "SPEC.md must state hash(\"bedrock\") = {stated}"
    );
}
