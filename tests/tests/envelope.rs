//! The wire envelope between several nodes over a network that duplicates and reorders: every
//! envelope is delivered to the application exactly once, whatever the order of arrival, as long
//! as reordering stays within the replay window.

use bedrock::crdt::NodeId;
use bedrock::wire::{Keyring, Rejection, Wire, HEADER_LEN, OVERHEAD, REPLAY_WINDOW};
use proptest::prelude::*;

const CLUSTER: u32 = 42;
const KEY_FILE: &str = "\
# test cluster key
bedrock-key-v1 3 5b8a0e0c4f7d2a9e1c3b6d8f0a2c4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f
";

fn node(id: u32, incarnation: u32) -> Wire<2, 8> {
    let keys = Keyring::parse(KEY_FILE).expect("the test key file parses");
    Wire::encrypted(CLUSTER, NodeId(id), incarnation, keys)
}

/// Seals `count` envelopes from each of three senders, payload = (sender, index).
fn traffic(count: u8) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for id in 1..=3u8 {
        let mut sender = node(u32::from(id), 1);
        for index in 0..count {
            let mut out = vec![0u8; OVERHEAD + 2];
            out[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&[id, index]);
            let len = sender.seal(7, &mut out, 2).expect("fits");
            out.truncate(len);
            sent.push(out);
        }
    }
    sent
}

proptest! {
    #[test]
    fn duplicated_and_reordered_envelopes_are_delivered_exactly_once(
        order in Just((0..3 * 40usize).collect::<Vec<_>>()).prop_shuffle(),
        duplicates in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
    ) {
        let sent = traffic(40);
        let mut receiver = node(100, 1);
        let mut delivered = [[0u32; 40]; 3];
        let arrivals = order.iter().copied().chain(duplicates.iter().map(|at| at.index(sent.len())));
        let mut arrived = 0u64;
        for at in arrivals {
            arrived += 1;
            let mut datagram = sent[at].clone();
            if let Ok(opened) = receiver.open(&mut datagram) {
                prop_assert_eq!(opened.sender, NodeId(u32::from(opened.payload[0])));
                delivered[usize::from(opened.payload[0]) - 1][usize::from(opened.payload[1])] += 1;
            }
        }
        // 40 envelopes per sender fit in the window: each is delivered exactly once.
        prop_assert!(40 <= REPLAY_WINDOW);
        prop_assert!(delivered.iter().flatten().all(|&count| count == 1));
        let rejections = receiver.rejections();
        prop_assert_eq!(rejections.replayed, arrived - 120);
        prop_assert_eq!(rejections.total(), rejections.replayed);
    }
}

#[test]
fn a_node_restarted_with_a_new_incarnation_is_heard_and_its_old_envelopes_are_not() {
    let mut receiver = node(100, 1);
    let mut before = node(1, 1);
    let mut old = vec![0u8; OVERHEAD + 1];
    let len = before.seal(7, &mut old, 1).unwrap();
    old.truncate(len);
    let mut restarted = node(1, 2);
    let mut new = vec![0u8; OVERHEAD + 1];
    let len = restarted.seal(7, &mut new, 1).unwrap();
    new.truncate(len);
    assert!(receiver.open(&mut new.clone()).is_ok());
    assert_eq!(receiver.open(&mut old), Err(Rejection::Replayed));
}
