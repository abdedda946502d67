use super::*;
use crate::crdt::test_support::{encode, permutations_of_four};
use crate::crdt::Causality;
use proptest::prelude::*;

extern crate std;
use std::vec::Vec as StdVec;

type Register = MvRegister<u16, 4, 16, 16>;
type Context = DottedVersionVector<4, 16>;

#[derive(Debug, Clone)]
enum Action {
    /// Replica `at` writes `value` after reading replica `read_from` (a blind write if `None`).
    Write {
        at: usize,
        read_from: Option<usize>,
        value: u16,
    },
    /// Replica `to` merges the state of replica `from`.
    Merge { from: usize, to: usize },
}

fn actions() -> impl Strategy<Value = StdVec<Action>> {
    let write =
        (0usize..4, proptest::option::of(0usize..4), 0u16..8).prop_map(|(at, read_from, value)| {
            Action::Write {
                at,
                read_from,
                value,
            }
        });
    let merge = (0usize..4, 0usize..4).prop_map(|(from, to)| Action::Merge { from, to });
    proptest::collection::vec(prop_oneof![write, merge], 0..14)
}

/// Four replicas (replica i writes as node i) after the actions, and every write's delta.
/// Checks on the way that each write's delta merged into the state before it gives the state
/// after it: the op and state forms agree.
fn run(actions: &[Action]) -> ([Register; 4], StdVec<Register>) {
    let mut replicas: [Register; 4] = Default::default();
    let mut deltas = StdVec::new();
    for action in actions {
        match *action {
            Action::Write {
                at,
                read_from,
                value,
            } => {
                let seen = read_from.map_or_else(Context::new, |r| replicas[r].context().clone());
                let before = replicas[at].clone();
                let delta = replicas[at].write(NodeId(at as u32), value, &seen).unwrap();
                assert_eq!(merged(&before, &delta), replicas[at]);
                deltas.push(delta);
            }
            Action::Merge { from, to } => {
                let source = replicas[from].clone();
                replicas[to].merge(&source).unwrap();
            }
        }
    }
    (replicas, deltas)
}

fn merged(a: &Register, b: &Register) -> Register {
    let mut result = a.clone();
    result.merge(b).unwrap();
    result
}

fn values(register: &Register) -> StdVec<u16> {
    register.read().0.copied().collect()
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent(script in actions()) {
        let ([a, b, c, _], _) = run(&script);
        prop_assert_eq!(encode(&merged(&a, &b)), encode(&merged(&b, &a)));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&merged(&a, &b), &b), merged(&a, &b));
        prop_assert_eq!(merged(&a, &a), a);
    }

    #[test]
    fn merge_laws_hold_even_between_histories_that_reuse_dots(
        one in actions(), two in actions(), three in actions(),
    ) {
        // Independent runs give different values to the same dots, as a node that lost its
        // state would: replicas must still converge.
        let (a, b, c) = (run(&one).0[0].clone(), run(&two).0[1].clone(), run(&three).0[2].clone());
        prop_assert_eq!(encode(&merged(&a, &b)), encode(&merged(&b, &a)));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&merged(&a, &b), &b), merged(&a, &b));
    }

    #[test]
    fn any_merge_order_of_four_replicas_gives_the_same_bytes(script in actions()) {
        let (replicas, _) = run(&script);
        let mut first = None;
        for order in permutations_of_four() {
            let mut result = Register::new();
            for index in order {
                result.merge(&replicas[index]).unwrap();
            }
            let bytes = encode(&result);
            prop_assert_eq!(first.get_or_insert(bytes.clone()), &bytes);
        }
    }

    #[test]
    fn deltas_delivered_reordered_and_duplicated_equal_the_merged_states(
        script in actions(), seed in any::<u64>(),
    ) {
        let (replicas, deltas) = run(&script);
        let mut by_state = Register::new();
        for replica in &replicas {
            by_state.merge(replica).unwrap();
        }
        // Deliver each delta twice, in an order scrambled by the seed.
        let count = deltas.len() * 2;
        let mut by_delta = Register::new();
        for turn in 0..count {
            let index = (turn as u64).wrapping_mul(seed | 1).wrapping_add(seed >> 7) as usize % count;
            by_delta.merge(&deltas[index % deltas.len()]).unwrap();
        }
        for delta in &deltas {
            by_delta.merge(delta).unwrap();
        }
        prop_assert_eq!(encode(&by_delta), encode(&by_state));
    }

    #[test]
    fn every_sibling_is_a_write_no_seen_context_covered(script in actions()) {
        // After full exchange, the siblings are exactly the writes that no later write read.
        let (replicas, deltas) = run(&script);
        let mut all = Register::new();
        for replica in &replicas {
            all.merge(replica).unwrap();
        }
        for delta in &deltas {
            let (dot, _) = delta.siblings().next().unwrap();
            let superseded = deltas.iter().any(|other| {
                let (other_dot, _) = other.siblings().next().unwrap();
                other_dot != dot && other.context().contains(dot)
            });
            prop_assert_eq!(all.siblings().any(|(kept, _)| kept == dot), !superseded);
        }
    }

    #[test]
    fn a_state_round_trips_through_its_bytes(script in actions()) {
        let (replicas, deltas) = run(&script);
        for register in replicas.iter().chain(deltas.iter()) {
            prop_assert_eq!(Register::decode(&encode(register)), Ok(register.clone()));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_what_decodes_re_encodes_identically(
        raw in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Ok(register) = Register::decode(&raw) {
            prop_assert!(register.is_canonical());
            prop_assert_eq!(&encode(&register)[..], &raw[..]);
        }
    }

    #[test]
    fn decoding_a_damaged_state_never_panics_and_accepts_only_canonical_ones(
        script in actions(), position in any::<usize>(), byte in any::<u8>(), cut in any::<bool>(),
    ) {
        let (replicas, _) = run(&script);
        let mut bytes = encode(&replicas[0]);
        let index = position % bytes.len();
        if cut {
            bytes.truncate(index);
        } else {
            bytes[index] = byte;
        }
        if let Ok(register) = Register::decode(&bytes) {
            prop_assert!(register.is_canonical());
            prop_assert_eq!(encode(&register), bytes);
        }
    }

    #[test]
    fn a_refused_write_or_merge_changes_nothing(script in actions()) {
        // Two nodes, two cloud dots, two siblings: many operations do not fit.
        let mut replicas: [MvRegister<u16, 2, 2, 2>; 4] = Default::default();
        for action in &script {
            match *action {
                Action::Write { at, read_from, value } => {
                    let seen = read_from
                        .map_or_else(DottedVersionVector::new, |r| replicas[r].context().clone());
                    let before = replicas[at].clone();
                    if let Err(error) = replicas[at].write(NodeId(at as u32), value, &seen) {
                        prop_assert_eq!(error, CrdtError::Capacity);
                        prop_assert_eq!(&replicas[at], &before);
                    }
                }
                Action::Merge { from, to } => {
                    let source = replicas[from].clone();
                    let before = replicas[to].clone();
                    if let Err(error) = replicas[to].merge(&source) {
                        prop_assert_eq!(error, CrdtError::Capacity);
                        prop_assert_eq!(&replicas[to], &before);
                    }
                }
            }
        }
        for replica in &replicas {
            prop_assert!(replica.is_canonical());
        }
    }
}

#[test]
fn two_concurrent_writes_become_two_siblings() {
    let (mut a, mut b) = (Register::new(), Register::new());
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    b.write(NodeId(2), 20, &Context::new()).unwrap();
    a.merge(&b).unwrap();
    b.merge(&a).unwrap();
    assert_eq!(values(&a), [10, 20]);
    assert_eq!(a, b);
}

#[test]
fn a_write_that_read_both_siblings_replaces_them() {
    let (mut a, mut b) = (Register::new(), Register::new());
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    b.write(NodeId(2), 20, &Context::new()).unwrap();
    a.merge(&b).unwrap();
    let seen = a.read().1.clone();
    a.write(NodeId(1), 30, &seen).unwrap();
    assert_eq!(values(&a), [30]);
    b.merge(&a).unwrap();
    assert_eq!(
        values(&b),
        [30],
        "the replica that wrote 20 accepts its replacement"
    );
}

#[test]
fn a_write_replaces_only_what_its_writer_had_read() {
    let (mut a, mut b) = (Register::new(), Register::new());
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    let seen_10 = a.context().clone();
    b.write(NodeId(2), 20, &Context::new()).unwrap();
    a.merge(&b).unwrap();
    a.write(NodeId(1), 11, &seen_10).unwrap();
    assert_eq!(
        values(&a),
        [11, 20],
        "20 was not read, so it stays beside 11"
    );
}

#[test]
fn a_stale_state_does_not_resurrect_a_superseded_value() {
    let mut a = Register::new();
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    let stale = a.clone();
    let seen = a.context().clone();
    a.write(NodeId(1), 11, &seen).unwrap();
    a.merge(&stale).unwrap();
    assert_eq!(values(&a), [11]);
    let mut late = stale.clone();
    late.merge(&a).unwrap();
    assert_eq!(
        values(&late),
        [11],
        "the old replica learns that 10 was replaced"
    );
}

#[test]
fn a_stale_write_stays_beside_the_newer_value_without_resurrecting_the_old_one() {
    // Two clients read 10; one replaces it with 11, the other, unaware, with 12.
    let mut a = Register::new();
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    let mut b = a.clone();
    let seen_10 = a.context().clone();
    a.write(NodeId(1), 11, &seen_10).unwrap();
    b.write(NodeId(2), 12, &seen_10).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(values(&a), [11, 12]);
}

#[test]
fn a_write_at_another_replica_with_a_context_read_elsewhere_replaces_what_was_read() {
    // A client reads at replica a and writes through replica b, which never saw the value.
    let (mut a, mut b) = (Register::new(), Register::new());
    a.write(NodeId(1), 10, &Context::new()).unwrap();
    let seen = a.read().1.clone();
    b.write(NodeId(2), 20, &seen).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(values(&a), [20]);
    let dots: StdVec<Dot> = a.siblings().map(|(dot, _)| dot).collect();
    assert_eq!(
        dots,
        [Dot {
            node: NodeId(2),
            counter: 1
        }]
    );
}

#[test]
fn duplicate_and_reordered_delivery_of_states_is_harmless() {
    let (mut a, mut b, mut c) = (Register::new(), Register::new(), Register::new());
    a.write(NodeId(1), 1, &Context::new()).unwrap();
    let first = a.clone();
    let seen = a.context().clone();
    a.write(NodeId(1), 2, &seen).unwrap();
    b.write(NodeId(2), 3, &Context::new()).unwrap();
    for state in [&a, &first, &b, &a, &first] {
        c.merge(state).unwrap();
    }
    let mut in_order = Register::new();
    in_order.merge(&first).unwrap();
    in_order.merge(&a).unwrap();
    in_order.merge(&b).unwrap();
    assert_eq!(encode(&c), encode(&in_order));
    assert_eq!(values(&c), [2, 3]);
}

#[test]
fn reading_one_value_takes_the_applications_rule() {
    let (mut a, mut b) = (Register::new(), Register::new());
    a.write(NodeId(1), 30, &Context::new()).unwrap();
    b.write(NodeId(2), 20, &Context::new()).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(a.resolve(|x, y| x.cmp(y)), Some(&30));
    assert_eq!(a.resolve(|x, y| y.cmp(x)), Some(&20));
    assert_eq!(Register::new().resolve(|x, y| x.cmp(y)), None);
    // Equal under the rule: the last in dot order, a choice every replica makes alike.
    assert_eq!(a.resolve(|_, _| Ordering::Equal), Some(&20));
}

#[test]
fn a_write_past_the_sibling_capacity_is_refused_and_changes_nothing() {
    let mut a = MvRegister::<u16, 4, 4, 2>::new();
    let mut b = MvRegister::<u16, 4, 4, 2>::new();
    a.write(NodeId(1), 1, &DottedVersionVector::new()).unwrap();
    a.write(NodeId(2), 2, &DottedVersionVector::new()).unwrap();
    let before = a.clone();
    assert_eq!(
        a.write(NodeId(3), 3, &DottedVersionVector::new()),
        Err(CrdtError::Capacity)
    );
    assert_eq!(a, before);
    b.write(NodeId(3), 3, &DottedVersionVector::new()).unwrap();
    assert_eq!(a.merge(&b), Err(CrdtError::Capacity));
    assert_eq!(a, before);
    // A write that read both siblings needs only one slot.
    let seen = a.context().clone();
    a.write(NodeId(3), 4, &seen).unwrap();
    assert_eq!(a.read().0.copied().collect::<StdVec<_>>(), [4]);
}

#[test]
fn bounded_byte_strings_serve_as_values() {
    type Bytes = heapless::Vec<u8, 8>;
    let mut a = MvRegister::<Bytes, 2, 2, 2>::new();
    let mut b = a.clone();
    a.write(
        NodeId(1),
        Bytes::from_slice(b"left").unwrap(),
        &DottedVersionVector::new(),
    )
    .unwrap();
    b.write(
        NodeId(2),
        Bytes::from_slice(b"right").unwrap(),
        &DottedVersionVector::new(),
    )
    .unwrap();
    a.merge(&b).unwrap();
    let bytes = encode(&a);
    assert_eq!(MvRegister::<Bytes, 2, 2, 2>::decode(&bytes), Ok(a.clone()));
    assert_eq!(
        a.resolve(|x, y| x.len().cmp(&y.len())).map(|v| &v[..]),
        Some(&b"right"[..])
    );
}

#[test]
fn a_sibling_whose_dot_is_outside_the_context_is_refused_when_decoding() {
    // One sibling (node 1, counter 1, value 7) and an empty context.
    assert_eq!(
        Register::decode(&[1, 1, 1, 7, 0, 0]),
        Err(CrdtError::Malformed)
    );
    // The same with the context {1: 1}: canonical.
    assert!(Register::decode(&[1, 1, 1, 7, 1, 1, 1, 0]).is_ok());
}

#[test]
fn the_context_read_is_after_every_write_seen() {
    let mut a = Register::new();
    a.write(NodeId(1), 1, &Context::new()).unwrap();
    let before = a.context().clone();
    a.write(NodeId(1), 2, &Context::new()).unwrap();
    assert_eq!(a.context().compare(&before), Causality::After);
    assert_eq!(values(&a), [1, 2], "a blind write replaces nothing");
}
