extern crate std;

use super::*;
use proptest::prelude::*;
use std::vec::Vec;

const CLUSTER: u32 = 0x00C0_FFEE;
const ALICE: NodeId = NodeId(0x0A0B_0C0D);
const BOB: NodeId = NodeId(0x11);
const KIND: u8 = 0x21;

type TestWire = Wire<2, 4>;

fn secret(fill: u8) -> [u8; SECRET_LEN] {
    [fill; SECRET_LEN]
}

fn encrypted(node: NodeId, incarnation: u32) -> TestWire {
    Wire::encrypted(
        CLUSTER,
        node,
        incarnation,
        Keyring::new(Key::new(1, secret(0x42))),
    )
}

fn plaintext(node: NodeId, incarnation: u32) -> TestWire {
    Wire::plaintext(CLUSTER, node, incarnation)
}

/// Seals `payload` as the next envelope of `wire`.
fn seal(wire: &mut TestWire, payload: &[u8]) -> Vec<u8> {
    let mut out = std::vec![0u8; HEADER_LEN + payload.len() + TAG_LEN];
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let len = wire.seal(KIND, &mut out, payload.len()).unwrap();
    assert_eq!(len, wire.overhead() + payload.len());
    out.truncate(len);
    out
}

/// Opens a copy of `datagram`, returning the payload or the rejection.
fn open(wire: &mut TestWire, datagram: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut copy = datagram.to_vec();
    wire.open(&mut copy).map(|opened| opened.payload.to_vec())
}

/// Asserts `reason` and that exactly its counter went up by one.
fn assert_rejected(wire: &mut TestWire, datagram: &[u8], reason: Rejection) {
    let before = *wire.rejections();
    assert_eq!(open(wire, datagram), Err(reason));
    let after = *wire.rejections();
    assert_eq!(after.get(reason), before.get(reason) + 1, "{reason:?}");
    assert_eq!(after.total(), before.total() + 1, "only {reason:?} counted");
}

#[test]
fn an_encrypted_envelope_opens_to_its_fields_and_hides_its_payload() {
    let (mut alice, mut bob) = (encrypted(ALICE, 3), encrypted(BOB, 1));
    let datagram = seal(&mut alice, b"hello bob");
    assert_eq!(datagram.len(), OVERHEAD + 9);
    assert!(!datagram.windows(5).any(|window| window == b"hello"));
    let mut copy = datagram.clone();
    let opened = bob.open(&mut copy).unwrap();
    assert_eq!(
        (
            opened.kind,
            opened.sender,
            opened.incarnation,
            opened.counter
        ),
        (KIND, ALICE, 3, 0)
    );
    assert_eq!(opened.payload, b"hello bob");
    assert_eq!(bob.rejections().total(), 0);
}

#[test]
fn a_plaintext_envelope_opens_and_carries_a_crc_over_header_and_payload() {
    let (mut alice, mut bob) = (plaintext(ALICE, 3), plaintext(BOB, 1));
    let datagram = seal(&mut alice, b"hello bob");
    assert_eq!(datagram.len(), PLAINTEXT_OVERHEAD + 9);
    assert_eq!(datagram[field::FLAGS], FLAG_PLAINTEXT);
    assert_eq!(&datagram[HEADER_LEN..HEADER_LEN + 9], b"hello bob");
    let crc = crc32c(&datagram[..HEADER_LEN + 9]).to_le_bytes();
    assert_eq!(datagram[HEADER_LEN + 9..], crc);
    assert_eq!(open(&mut bob, &datagram).unwrap(), b"hello bob");
}

#[test]
fn the_aead_matches_rfc_8439_section_2_8_2() {
    let key: [u8; 32] = core::array::from_fn(|index| 0x80 + index as u8);
    let nonce = [
        0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
    ];
    let aad = [
        0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    ];
    let mut text = *b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                      tip for the future, sunscreen would be it.";
    let expected = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
                    3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
                    92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
                    3ff4def08e4b7a9de576d26586cec64b6116";
    let tag = cipher(&Key::new(0, key))
        .encrypt_in_place_detached(&nonce.into(), &aad, &mut text)
        .unwrap();
    assert_eq!(hex(&text), expected);
    assert_eq!(hex(&tag), "1ae10b594f09e26a7e902ecbd0600691");
}

fn hex(bytes: &[u8]) -> std::string::String {
    bytes
        .iter()
        .map(|byte| std::format!("{byte:02x}"))
        .collect()
}

#[test]
fn an_envelope_is_the_aead_of_its_payload_under_the_header_nonce_and_header_data() {
    let mut alice = encrypted(ALICE, 0x0102_0304);
    alice.counter_next = 0x0506_0708;
    let datagram = seal(&mut alice, b"payload");
    let header = Header::parse(&datagram).unwrap();
    assert_eq!(header.counter, 0x0506_0708);
    let nonce = [
        0x0d, 0x0c, 0x0b, 0x0a, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05,
    ];
    assert_eq!(header.nonce(), nonce);
    let mut text = *b"payload";
    let tag = cipher(&Key::new(1, secret(0x42)))
        .encrypt_in_place_detached(&nonce.into(), &datagram[..HEADER_LEN], &mut text)
        .unwrap();
    assert_eq!(datagram[HEADER_LEN..HEADER_LEN + 7], text);
    assert_eq!(datagram[HEADER_LEN + 7..], tag[..]);
}

#[test]
fn a_wrong_key_with_the_same_id_is_forged_and_an_unknown_id_is_refused() {
    let mut alice = encrypted(ALICE, 1);
    let mut impostor =
        Wire::<2, 4>::encrypted(CLUSTER, ALICE, 1, Keyring::new(Key::new(1, secret(0x43))));
    let mut stranger =
        Wire::<2, 4>::encrypted(CLUSTER, ALICE, 1, Keyring::new(Key::new(9, secret(0x42))));
    let mut bob = encrypted(BOB, 1);
    assert_rejected(&mut bob, &seal(&mut impostor, b"x"), Rejection::Forged);
    assert_rejected(&mut bob, &seal(&mut stranger, b"x"), Rejection::UnknownKey);
    // Neither touched the replay window: Alice's counter 0 still opens.
    assert!(open(&mut bob, &seal(&mut alice, b"x")).is_ok());
}

#[test]
fn an_exact_duplicate_is_replayed() {
    let (mut alice, mut bob) = (encrypted(ALICE, 1), encrypted(BOB, 1));
    let datagram = seal(&mut alice, b"once");
    assert!(open(&mut bob, &datagram).is_ok());
    assert_rejected(&mut bob, &datagram, Rejection::Replayed);
}

#[test]
fn an_older_incarnation_is_replayed_and_a_newer_one_resets_the_window() {
    let mut bob = encrypted(BOB, 1);
    let mut before = encrypted(ALICE, 4);
    let old = seal(&mut before, b"old");
    let mut after = encrypted(ALICE, 5);
    after.counter_next = 1000;
    assert!(open(&mut bob, &seal(&mut after, b"new")).is_ok());
    assert_rejected(&mut bob, &old, Rejection::Replayed);
    let mut restarted = encrypted(ALICE, 6);
    assert!(open(&mut bob, &seal(&mut restarted, b"again")).is_ok());
}

#[test]
fn another_cluster_is_refused() {
    let mut bob = encrypted(BOB, 1);
    let mut foreign = Wire::<2, 4>::encrypted(
        CLUSTER + 1,
        ALICE,
        1,
        Keyring::new(Key::new(1, secret(0x42))),
    );
    assert_rejected(&mut bob, &seal(&mut foreign, b"x"), Rejection::OtherCluster);
}

#[test]
fn plaintext_is_refused_by_an_encrypted_node_and_the_reverse() {
    let (mut clear, mut secret_bob) = (plaintext(ALICE, 1), encrypted(BOB, 1));
    let mut secret_alice = encrypted(ALICE, 1);
    let mut clear_bob = plaintext(BOB, 1);
    assert_rejected(
        &mut secret_bob,
        &seal(&mut clear, b"x"),
        Rejection::PlaintextRefused,
    );
    assert_rejected(
        &mut clear_bob,
        &seal(&mut secret_alice, b"x"),
        Rejection::PlaintextRefused,
    );
}

#[test]
fn a_datagram_reflected_to_its_sender_is_refused() {
    let mut alice = encrypted(ALICE, 1);
    let datagram = seal(&mut alice, b"x");
    assert_rejected(&mut alice, &datagram, Rejection::Reflected);
}

#[test]
fn every_truncation_is_refused() {
    for mut alice in [encrypted(ALICE, 1), plaintext(ALICE, 1)] {
        let mut bob = if alice.is_plaintext() {
            plaintext(BOB, 1)
        } else {
            encrypted(BOB, 1)
        };
        let datagram = seal(&mut alice, b"twelve bytes");
        for len in 0..datagram.len() {
            // Past the overhead, a cut is a shorter payload whose trailer does not match.
            let reason = if len < bob.overhead() {
                Rejection::Truncated
            } else {
                Rejection::Forged
            };
            assert_rejected(&mut bob, &datagram[..len], reason);
        }
        assert!(open(&mut bob, &datagram).is_ok());
    }
}

/// The reason a single flipped bit at `offset` (mask `bit`) must be rejected for.
fn flipped_bit_reason(original: &[u8], offset: usize, bit: u8, plaintext: bool) -> Rejection {
    let flipped = original[offset] ^ bit;
    match offset {
        field::VERSION => Rejection::Version,
        field::FLAGS if bit == FLAG_PLAINTEXT => Rejection::PlaintextRefused,
        field::FLAGS => Rejection::Malformed,
        field::KIND if flipped == 0 => Rejection::Malformed,
        field::KEY_ID if plaintext => Rejection::Malformed,
        field::KEY_ID => Rejection::UnknownKey,
        4..8 => Rejection::OtherCluster,
        8..12 => {
            let mut sender = original[field::SENDER].to_vec();
            sender[offset - 8] = flipped;
            if sender == BOB.0.to_le_bytes() {
                Rejection::Reflected
            } else {
                Rejection::Forged
            }
        }
        _ => Rejection::Forged,
    }
}

#[test]
fn any_single_flipped_bit_is_refused_with_its_reason_and_counted() {
    for mut alice in [encrypted(ALICE, 1), plaintext(ALICE, 1)] {
        let plaintext_mode = alice.is_plaintext();
        let mut bob = if plaintext_mode {
            plaintext(BOB, 1)
        } else {
            encrypted(BOB, 1)
        };
        let datagram = seal(&mut alice, b"some payload");
        for offset in 0..datagram.len() {
            for shift in 0..8 {
                let bit = 1u8 << shift;
                let mut damaged = datagram.clone();
                damaged[offset] ^= bit;
                let reason = flipped_bit_reason(&datagram, offset, bit, plaintext_mode);
                assert_rejected(&mut bob, &damaged, reason);
            }
        }
        assert_eq!(open(&mut bob, &datagram).unwrap(), b"some payload");
    }
}

#[test]
fn a_retired_key_opens_while_listed_and_is_refused_after_removal() {
    let mut alice = encrypted(ALICE, 1);
    let mut bob = encrypted(BOB, 1);
    let old = seal(&mut alice, b"under key 1");
    // Step 1, everywhere: add key 2. Step 2: make it primary (Alice first).
    for wire in [&mut alice, &mut bob] {
        wire.keyring_mut()
            .unwrap()
            .add(Key::new(2, secret(0x77)))
            .unwrap();
    }
    alice.keyring_mut().unwrap().set_primary(2).unwrap();
    let new = seal(&mut alice, b"under key 2");
    assert_eq!(new[field::KEY_ID], 2);
    assert!(
        open(&mut bob, &new).is_ok(),
        "bob accepts key 2 before using it"
    );
    assert!(open(&mut bob, &old).is_ok(), "bob still accepts key 1");
    let late = {
        let mut laggard = encrypted(ALICE, 0);
        seal(&mut laggard, b"a node not yet rotated")
    };
    // Step 3, everywhere: remove key 1.
    bob.keyring_mut().unwrap().set_primary(2).unwrap();
    bob.keyring_mut().unwrap().remove(1).unwrap();
    assert_rejected(&mut bob, &late, Rejection::UnknownKey);
}

#[test]
fn envelopes_reordered_within_the_window_open_once_each() {
    let (mut alice, mut bob) = (encrypted(ALICE, 1), encrypted(BOB, 1));
    let sent: Vec<Vec<u8>> = (0..80u8).map(|index| seal(&mut alice, &[index])).collect();
    assert_eq!(open(&mut bob, &sent[70]).unwrap(), [70]);
    for index in [69, 10, 7, 40, 71, 8] {
        assert_eq!(open(&mut bob, &sent[index]).unwrap(), [index as u8]);
        assert_rejected(&mut bob, &sent[index], Rejection::Replayed);
    }
    // Counter 6 is 65 below the highest (71): out of the window.
    assert_rejected(&mut bob, &sent[6], Rejection::Replayed);
    assert!(open(&mut bob, &sent[79]).is_ok());
    assert_rejected(&mut bob, &sent[15], Rejection::Replayed);
    assert!(open(&mut bob, &sent[16]).is_ok());
}

#[test]
fn the_counter_is_exhausted_after_two_to_the_32_envelopes() {
    let mut alice = encrypted(ALICE, 1);
    alice.counter_next = u64::from(u32::MAX);
    let last = seal(&mut alice, b"last");
    assert_eq!(Header::parse(&last).unwrap().counter, u32::MAX);
    let mut out = [0u8; 64];
    assert_eq!(
        alice.seal(KIND, &mut out, 4),
        Err(SealError::CounterExhausted)
    );
    assert_eq!(
        alice.seal(KIND, &mut out, 4),
        Err(SealError::CounterExhausted)
    );
}

#[test]
fn a_refused_seal_spends_no_counter() {
    for mut alice in [encrypted(ALICE, 1), plaintext(ALICE, 1)] {
        let mut out = [0u8; 64];
        let room = out.len() - alice.overhead();
        assert_eq!(
            alice.seal(KIND, &mut out, room + 1),
            Err(SealError::BufferTooSmall)
        );
        assert_eq!(
            alice.seal(KIND, &mut out, usize::MAX),
            Err(SealError::BufferTooSmall)
        );
        assert_eq!(alice.seal(0, &mut out, 1), Err(SealError::InvalidKind));
        assert_eq!(alice.seal(KIND, &mut out, room), Ok(out.len()));
        assert_eq!(Header::parse(&out).unwrap().counter, 0);
    }
}

#[test]
fn debug_output_of_a_wire_shows_no_secret() {
    let wire = Wire::<1, 1>::encrypted(1, ALICE, 1, Keyring::new(Key::new(3, [0xab; 32])));
    let text = std::format!("{wire:?}");
    assert!(!text.contains("171") && !text.contains("ab,"), "{text}");
}

proptest! {
    #[test]
    fn sealed_envelopes_round_trip_in_both_modes(
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        kind in 1u8..=255,
        incarnation: u32,
        counter: u32,
        encrypt: bool,
    ) {
        let (mut alice, mut bob) = if encrypt {
            (encrypted(ALICE, incarnation), encrypted(BOB, 0))
        } else {
            (plaintext(ALICE, incarnation), plaintext(BOB, 0))
        };
        alice.counter_next = u64::from(counter);
        let mut out = std::vec![0u8; OVERHEAD + payload.len()];
        out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
        let len = alice.seal(kind, &mut out, payload.len()).unwrap();
        let opened = bob.open(&mut out[..len]).unwrap();
        prop_assert_eq!(opened.payload, &payload[..]);
        prop_assert_eq!(
            (opened.kind, opened.sender, opened.incarnation, opened.counter),
            (kind, ALICE, incarnation, counter)
        );
    }

    #[test]
    fn opening_arbitrary_bytes_never_panics_and_counts_every_rejection(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        header_like: bool,
        encrypt: bool,
    ) {
        let mut bob = if encrypt { encrypted(BOB, 0) } else { plaintext(BOB, 0) };
        let mut bytes = bytes;
        if header_like && bytes.len() >= HEADER_LEN {
            // Get past the cheap checks more often.
            bytes[field::VERSION] = VERSION;
            bytes[field::FLAGS] &= FLAG_PLAINTEXT;
            bytes[field::CLUSTER].copy_from_slice(&CLUSTER.to_le_bytes());
        }
        let result = bob.open(&mut bytes).map(|opened| opened.payload.len());
        match result {
            Ok(len) => prop_assert_eq!(len + bob.overhead(), bytes.len()),
            Err(reason) => prop_assert_eq!(bob.rejections().get(reason), 1),
        }
        prop_assert_eq!(bob.rejections().total(), u64::from(result.is_err()));
    }
}
