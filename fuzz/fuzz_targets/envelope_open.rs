//! Opening arbitrary datagrams as wire envelopes, in both modes.
//!
//! The first input byte chooses the receiver's mode (bit 0: plaintext) and whether to make the
//! header plausible (bit 1: version, cluster and reserved flags set right), so that the fuzzer
//! reaches the tag, checksum and replay paths; the rest is the datagram.
//!
//! Properties: `Wire::open` never panics; every rejection bumps exactly its own counter; an
//! envelope that opens has the header `Header::parse` reads, a payload of its length minus the
//! overhead, and opens a second time only as `Replayed`. Then the input, as a payload, seals and
//! opens back to itself, and the sealed envelope with one bit flipped (where the input says) is
//! refused.
#![no_main]

use bedrock::crdt::NodeId;
use bedrock::wire::{Header, Key, Keyring, Rejection, Wire, HEADER_LEN, OVERHEAD, VERSION};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u32 = 0x1122_3344;
const RECEIVER: NodeId = NodeId(1);
const SENDER: NodeId = NodeId(2);

type FuzzWire = Wire<2, 4>;

fn wire(plaintext: bool, node: NodeId) -> FuzzWire {
    if plaintext {
        return Wire::plaintext(CLUSTER, node, 7);
    }
    let mut keys = Keyring::new(Key::new(1, [0x42; 32]));
    keys.add(Key::new(2, [0x43; 32]))
        .expect("room for two keys");
    Wire::encrypted(CLUSTER, node, 7, keys)
}

fn open_arbitrary(receiver: &mut FuzzWire, datagram: &[u8]) {
    let mut bytes = datagram.to_vec();
    let before = *receiver.rejections();
    match receiver.open(&mut bytes) {
        Ok(opened) => {
            let header = Header::parse(datagram).expect("an opened envelope has a header");
            assert_eq!(opened.kind, header.kind);
            assert_eq!(opened.sender, header.sender);
            assert_ne!(opened.sender, RECEIVER);
            assert_eq!(
                (opened.incarnation, opened.counter),
                (header.incarnation, header.counter)
            );
            assert_eq!(header.plaintext, receiver.is_plaintext());
            assert_eq!(opened.payload.len() + receiver.overhead(), datagram.len());
            assert_eq!(*receiver.rejections(), before);
            let mut again = datagram.to_vec();
            assert_eq!(receiver.open(&mut again).unwrap_err(), Rejection::Replayed);
        }
        Err(reason) => {
            let after = *receiver.rejections();
            assert_eq!(after.get(reason), before.get(reason) + 1);
            assert_eq!(after.total(), before.total() + 1);
        }
    }
}

fn seal_and_open(plaintext: bool, payload: &[u8], flip: usize) {
    let mut sender = wire(plaintext, SENDER);
    let mut receiver = wire(plaintext, RECEIVER);
    let mut out = vec![0u8; OVERHEAD + payload.len()];
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let len = sender
        .seal(0x10, &mut out, payload.len())
        .expect("the buffer fits");
    out.truncate(len);
    let mut damaged = out.clone();
    damaged[flip % len] ^= 1 << (flip / len % 8);
    assert!(
        receiver.open(&mut damaged).is_err(),
        "a flipped bit is refused"
    );
    let opened = receiver.open(&mut out).expect("a sealed envelope opens");
    assert_eq!(opened.payload, payload);
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let plaintext = setup & 1 != 0;
    let mut datagram = rest.to_vec();
    if setup & 2 != 0 && datagram.len() >= HEADER_LEN {
        datagram[0] = VERSION;
        datagram[1] &= 1;
        datagram[4..8].copy_from_slice(&CLUSTER.to_le_bytes());
    }
    let mut receiver = wire(plaintext, RECEIVER);
    open_arbitrary(&mut receiver, &datagram);
    seal_and_open(plaintext, rest, usize::from(setup >> 2) * 31 + rest.len());
});
