//! Helpers shared by the CRDT tests.

extern crate std;

use serde::Serialize;
use std::vec::Vec;

/// The postcard bytes of a value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buffer = [0u8; 4096];
    postcard::to_slice(value, &mut buffer).unwrap().to_vec()
}

/// Every order of four indices.
pub fn permutations_of_four() -> Vec<[usize; 4]> {
    let mut orders = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let order = [a, b, c, d];
                    let distinct = (0..4).all(|i| (i + 1..4).all(|j| order[i] != order[j]));
                    if distinct {
                        orders.push(order);
                    }
                }
            }
        }
    }
    orders
}
