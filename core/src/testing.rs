//! Test support shared by the services' unit tests.

use std::vec::Vec as HeapVec;

/// A storage that keeps every write and erase since the last sync apart, so a crash can land
/// any subset of them: the storage contract lets a later unsynced write survive an earlier one.
#[derive(Clone)]
pub(crate) struct Unordered(pub(crate) std::rc::Rc<core::cell::RefCell<UnorderedImage>>);

#[derive(Clone)]
pub(crate) struct UnorderedImage {
    pub(crate) durable: HeapVec<u8>,
    /// Unsynced operations in order: offset and the bytes written (an erase writes 0xFF).
    pub(crate) pending: HeapVec<(usize, HeapVec<u8>)>,
    /// The image as each sync found it, for the test to cut power there.
    pub(crate) syncs: HeapVec<UnorderedImage>,
}

impl UnorderedImage {
    pub(crate) fn current(&self) -> HeapVec<u8> {
        let mut image = self.durable.clone();
        for (offset, bytes) in &self.pending {
            image[*offset..*offset + bytes.len()].copy_from_slice(bytes);
        }
        image
    }

    /// The durable image after a power cut that landed only the pending operations `keep`
    /// chooses (by index).
    pub(crate) fn crash(&self, keep: impl Fn(usize) -> bool) -> Self {
        let mut durable = self.durable.clone();
        for (index, (offset, bytes)) in self.pending.iter().enumerate() {
            if keep(index) {
                durable[*offset..*offset + bytes.len()].copy_from_slice(bytes);
            }
        }
        Self {
            durable,
            pending: HeapVec::new(),
            syncs: HeapVec::new(),
        }
    }
}

impl Unordered {
    pub(crate) const ERASE: u32 = 2048;

    pub(crate) fn new(segments: usize) -> Self {
        let image = UnorderedImage {
            durable: std::vec![0xFF; segments * Self::ERASE as usize],
            pending: HeapVec::new(),
            syncs: HeapVec::new(),
        };
        Self(std::rc::Rc::new(core::cell::RefCell::new(image)))
    }
}

impl crate::storage::Storage for Unordered {
    type Error = ();

    fn geometry(&self) -> crate::storage::Geometry {
        crate::storage::Geometry {
            read_size: 1,
            write_size: 8,
            erase_size: Self::ERASE,
            capacity: self.0.borrow().durable.len() as u64,
            erased_value: 0xFF,
        }
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        let image = self.0.borrow().current();
        let offset = offset as usize;
        buf.copy_from_slice(image.get(offset..offset + buf.len()).ok_or(())?);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ()> {
        self.0
            .borrow_mut()
            .pending
            .push((offset as usize, data.to_vec()));
        Ok(())
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), ()> {
        self.0
            .borrow_mut()
            .pending
            .push((offset as usize, std::vec![0xFF; len as usize]));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), ()> {
        let mut image = self.0.borrow_mut();
        let found = UnorderedImage {
            durable: image.durable.clone(),
            pending: image.pending.clone(),
            syncs: HeapVec::new(),
        };
        image.syncs.push(found);
        image.durable = image.current();
        image.pending.clear();
        Ok(())
    }
}

/// RAM storage whose writes fail on demand (`fail_writes`): a commit that fails never reaches
/// the medium.
#[derive(Debug)]
pub(crate) struct Flaky<const CAPACITY: usize> {
    pub(crate) inner: crate::storage::RamStorage<CAPACITY>,
    pub(crate) fail_writes: bool,
}

impl<const CAPACITY: usize> crate::storage::Storage for Flaky<CAPACITY> {
    type Error = crate::storage::ContractError;

    fn geometry(&self) -> crate::storage::Geometry {
        self.inner.geometry()
    }

    fn read(&mut self, offset: u64, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(offset, bytes)
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.fail_writes {
            return Err(crate::storage::ContractError::OutOfRange);
        }
        self.inner.write(offset, bytes)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        self.inner.erase(offset, len)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.inner.sync()
    }
}
