//! Space for tables: runs of erase blocks of the table storage, handed out first fit.
//!
//! The manifest says which runs live tables use; everything else is free. The allocator is
//! rebuilt from the manifest at every open, so it has no format of its own, and a run handed
//! out for a table that a crash cut short is free again after the restart (the manifest never
//! named it).

use heapless::Vec;

/// A run of erase blocks: `count` blocks from block `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Run {
    /// The first block.
    pub first: u32,
    /// How many blocks.
    pub count: u32,
}

impl Run {
    /// One past the last block.
    pub fn end(&self) -> u32 {
        self.first.saturating_add(self.count)
    }
}

/// Why space could not be handed out or taken. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SpaceError {
    /// No free run is long enough.
    NoSpace,
    /// The table of runs is full (`RUNS` in use).
    TooManyRuns,
    /// The run overlaps one in use, or reaches past the storage (a damaged manifest).
    Overlap,
}

/// The runs in use out of `blocks` blocks; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Space<const RUNS: usize> {
    blocks: u32,
    /// In use, sorted by first block, never overlapping.
    used: Vec<Run, RUNS>,
}

impl<const RUNS: usize> Space<RUNS> {
    /// All of `blocks` blocks free.
    pub fn new(blocks: u32) -> Self {
        Self {
            blocks,
            used: Vec::new(),
        }
    }

    /// Blocks in all.
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// Blocks free.
    pub fn free(&self) -> u32 {
        self.blocks - self.used.iter().map(|run| run.count).sum::<u32>()
    }

    /// The runs in use, in block order.
    pub fn used(&self) -> &[Run] {
        &self.used
    }

    /// Marks `run` in use (a table the manifest names).
    pub fn take(&mut self, run: Run) -> Result<(), SpaceError> {
        if run.count == 0
            || run
                .first
                .checked_add(run.count)
                .is_none_or(|end| end > self.blocks)
        {
            return Err(SpaceError::Overlap);
        }
        let at = self.used.partition_point(|used| used.first < run.first);
        let clear_before = at == 0 || self.used[at - 1].end() <= run.first;
        let clear_after = self.used.get(at).is_none_or(|next| run.end() <= next.first);
        if !clear_before || !clear_after {
            return Err(SpaceError::Overlap);
        }
        self.used
            .insert(at, run)
            .map_err(|_| SpaceError::TooManyRuns)
    }

    /// Hands out the first free run of `count` blocks and marks it in use.
    pub fn allocate(&mut self, count: u32) -> Result<Run, SpaceError> {
        if count == 0 {
            return Err(SpaceError::NoSpace);
        }
        let mut start = 0u32;
        for used in self.used.iter().chain(core::iter::once(&Run {
            first: self.blocks,
            count: 0,
        })) {
            if used.first - start >= count {
                let run = Run {
                    first: start,
                    count,
                };
                self.take(run)?;
                return Ok(run);
            }
            start = used.end();
        }
        Err(SpaceError::NoSpace)
    }

    /// Shortens `run` to its first `keep` blocks (at least one), giving back the rest: a table
    /// that needed less than it was given.
    pub fn shrink(&mut self, run: Run, keep: u32) -> Result<Run, SpaceError> {
        let slot = self.slot(run)?;
        let kept = Run {
            first: run.first,
            count: keep.clamp(1, run.count),
        };
        self.used[slot] = kept;
        Ok(kept)
    }

    /// Frees `run` (a table no longer in the manifest).
    pub fn release(&mut self, run: Run) -> Result<(), SpaceError> {
        let slot = self.slot(run)?;
        self.used.remove(slot);
        Ok(())
    }

    fn slot(&self, run: Run) -> Result<usize, SpaceError> {
        self.used
            .binary_search(&run)
            .map_err(|_| SpaceError::Overlap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as HeapVec;

    #[test]
    fn first_fit_reuses_freed_runs() {
        let mut space = Space::<8>::new(10);
        let a = space.allocate(3).unwrap();
        let b = space.allocate(3).unwrap();
        assert_eq!((a.first, b.first), (0, 3));
        space.release(a).unwrap();
        assert_eq!(space.allocate(4).unwrap().first, 6);
        assert_eq!(space.allocate(2).unwrap().first, 0);
        assert_eq!(space.free(), 1);
        assert_eq!(space.allocate(2), Err(SpaceError::NoSpace));
        assert_eq!(
            space.take(Run { first: 4, count: 1 }),
            Err(SpaceError::Overlap)
        );
        assert_eq!(
            space.take(Run { first: 9, count: 2 }),
            Err(SpaceError::Overlap)
        );
        space.take(Run { first: 2, count: 1 }).unwrap();
        assert_eq!(space.free(), 0);
        let shrunk = space.shrink(Run { first: 6, count: 4 }, 1).unwrap();
        assert_eq!(shrunk, Run { first: 6, count: 1 });
        assert_eq!(space.free(), 3);
    }

    proptest! {
        #[test]
        fn runs_in_use_never_overlap_and_free_space_adds_up(
            steps in proptest::collection::vec((any::<bool>(), 1u32..6, any::<prop::sample::Index>()), 0..200),
        ) {
            let mut space = Space::<16>::new(40);
            let mut held: HeapVec<Run> = HeapVec::new();
            for (allocate, count, pick) in steps {
                if allocate || held.is_empty() {
                    match space.allocate(count) {
                        Ok(run) => held.push(run),
                        Err(SpaceError::NoSpace | SpaceError::TooManyRuns) => {}
                        Err(error) => prop_assert!(false, "{error:?}"),
                    }
                } else {
                    let run = held.swap_remove(pick.index(held.len()));
                    space.release(run).unwrap();
                }
                let mut sorted = held.clone();
                sorted.sort();
                prop_assert_eq!(space.used(), &sorted[..]);
                prop_assert!(sorted.windows(2).all(|pair| pair[0].end() <= pair[1].first));
                prop_assert!(sorted.iter().all(|run| run.end() <= 40));
                let used: u32 = sorted.iter().map(|run| run.count).sum();
                prop_assert_eq!(space.free(), 40 - used);
            }
        }
    }
}
