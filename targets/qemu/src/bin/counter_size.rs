//! `baseline` plus one durable counter: open it over a RAM NOR flash (recovery included) and
//! increment it once. The difference in code size between the two is what bedrock's log,
//! recovery and counter cost, with the flash mock and its adapter; the stack figure is what
//! opening and incrementing use, beyond the lent buffer.
#![no_std]
#![no_main]

use bedrock::counter::Counter;
use bedrock_embedded::NorFlashStorage;
use bedrock_qemu::{config, exit, stack_used_by, Flash, BUFFER_LEN};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` references, usable once.
    static mut FLASH: Flash = Flash::new();
    static mut BUFFER: [u8; BUFFER_LEN] = [0; BUFFER_LEN];
    let flash: &mut Flash = FLASH;
    let buffer: &mut [u8] = BUFFER;
    let (value, stack_bytes) = stack_used_by(|| open_and_increment(flash, buffer));
    hprintln!(
        "counter_size: value {} stack {} bytes",
        value.unwrap_or(0),
        stack_bytes
    );
    exit(value == Some(1))
}

#[inline(never)]
fn open_and_increment(flash: &mut Flash, buffer: &mut [u8]) -> Option<u64> {
    let storage = NorFlashStorage::new(flash).ok()?;
    let (mut counter, _recovery) = Counter::open(storage, buffer, config()).ok()?;
    counter.incr(1).ok()
}
