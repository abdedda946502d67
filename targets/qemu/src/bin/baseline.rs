//! The bare image bedrock's code size is measured against: cortex-m-rt, semihosting output and
//! exit, the panic handler, and the same stack measurement as `counter_size`.
#![no_std]
#![no_main]

use bedrock_qemu::{exit, stack_used_by};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    // Printed like counter_size's value, so that both carry the same formatting code.
    let (value, stack_bytes) = stack_used_by(|| core::hint::black_box(1u64));
    hprintln!("baseline: value {} stack {} bytes", value, stack_bytes);
    exit(value == 1)
}
