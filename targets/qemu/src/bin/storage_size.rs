//! `baseline` plus the storage alone: the RAM NOR-flash mock behind the `NorFlashStorage` adapter,
//! each `Storage` operation called once. `counter_size` minus this is what bedrock's log,
//! recovery and counter cost by themselves.
#![no_std]
#![no_main]

use core::hint::black_box;

use bedrock::storage::Storage;
use bedrock_embedded::NorFlashStorage;
use bedrock_qemu::{exit, stack_used_by, Flash};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    // cortex-m-rt turns this into a `&'static mut` reference, usable once.
    static mut FLASH: Flash = Flash::new();
    let flash: &mut Flash = FLASH;
    let (value, stack_bytes) = stack_used_by(|| use_every_operation(flash));
    hprintln!(
        "storage_size: value {} stack {} bytes",
        value.unwrap_or(0),
        stack_bytes
    );
    exit(value == Some(1))
}

#[inline(never)]
fn use_every_operation(flash: &mut Flash) -> Option<u64> {
    let mut storage = NorFlashStorage::new(flash).ok()?;
    let erase_size = u64::from(storage.geometry().erase_size);
    let mut word = [0u8; 8];
    // Opaque arguments, so that no check is folded away.
    storage.erase(black_box(0), black_box(erase_size)).ok()?;
    storage.write(black_box(8), black_box(&[1; 8])).ok()?;
    storage.read(black_box(8), black_box(&mut word)).ok()?;
    storage.sync().ok()?;
    Some(u64::from(word[0]))
}
