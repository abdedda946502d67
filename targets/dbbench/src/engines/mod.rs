//! The engines under test, one file each: this project's engine first.

mod bedrock;
mod fjall;
mod redb;
#[cfg(feature = "rocksdb")]
mod rocksdb;

use crate::engine::Kind;

/// Every engine, in the order of the table's columns.
#[cfg(not(feature = "rocksdb"))]
pub const ALL: &[Kind] = &[bedrock::KIND, fjall::KIND, redb::KIND];
/// Every engine, in the order of the table's columns.
#[cfg(feature = "rocksdb")]
pub const ALL: &[Kind] = &[bedrock::KIND, fjall::KIND, redb::KIND, rocksdb::KIND];

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::workload::{key, value, Rng};

    /// What every engine must do for the figures to mean anything: synced and unsynced
    /// batches are readable, a scan is in key order, and a clean close keeps everything.
    #[test]
    fn every_engine_reads_back_what_it_wrote_in_order_and_after_reopening() {
        for kind in ALL {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = Rng::new(9);
            let engine = (kind.open)(dir.path()).unwrap();
            let first: Vec<_> = (0..100).rev().map(|n| (key(n), value(&mut rng))).collect();
            let second: Vec<_> = (100..250).map(|n| (key(n), value(&mut rng))).collect();
            engine.put_batch(&first, true).unwrap();
            engine.put_batch(&second, false).unwrap();
            assert_eq!(
                engine.get_many(&[key(0), key(249), key(250)]).unwrap(),
                2,
                "{}",
                kind.name
            );
            let mut keys = Vec::new();
            let visited = engine
                .scan(&mut |k, v| {
                    assert_eq!(v.len(), 100);
                    keys.push(k.to_vec());
                    true
                })
                .unwrap();
            assert_eq!(visited, 250, "{}", kind.name);
            assert!(
                keys.windows(2).all(|pair| pair[0] < pair[1]),
                "{}",
                kind.name
            );
            let mut stopped = 0;
            engine
                .scan(&mut |_, _| {
                    stopped += 1;
                    stopped < 10
                })
                .unwrap();
            assert_eq!(stopped, 10, "{}", kind.name);
            engine.settle(std::time::Duration::from_secs(10)).unwrap();
            engine.close().unwrap();

            let engine = (kind.open)(dir.path()).unwrap();
            let all: Vec<_> = (0..250).map(key).collect();
            assert_eq!(
                engine.get_many(&all).unwrap(),
                250,
                "{} after reopening",
                kind.name
            );
            engine.close().unwrap();
        }
    }
}
