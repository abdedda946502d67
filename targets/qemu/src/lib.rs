//! What the firmware binaries share: the flash geometry, the counter configuration, stack
//! painting for high-water marks, and exiting qemu through semihosting.
//!
//! The binaries:
//!
//! - `firmware`: the durable counter on a RAM NOR-flash mock, with power cut at every program of
//!   a fixed workload (and a second cut right after each recovery), checked after each cut;
//! - `db`: the embedded database (`bedrock::db::Db`) on two RAM NOR-flash mocks (log and
//!   tables): a put/get workload that flushes and compacts, a reopen, and power cuts on either
//!   flash, each checked against a fixed-capacity model;
//! - `baseline`: prints through semihosting and exits — the bare cortex-m-rt image the code
//!   size of bedrock is measured against;
//! - `counter_size`: `baseline` plus opening a counter and incrementing it once;
//! - `cluster`: three distributed counters in one image, each with its own flash, driver and
//!   encrypted wire, gossiping through `NalDatagram` over a lossy loopback [`switch`].
#![no_std]

pub mod switch;

use bedrock::counter::CounterConfig;
use bedrock::log::{Config, Policy};
use bedrock_embedded::{bitmap_bytes, RamNorFlash};
use cortex_m_semihosting::debug;

/// Bytes of the mock flash.
pub const FLASH_SIZE: usize = 16 * 1024;
/// Program unit of the mock flash.
pub const WRITE_SIZE: usize = 8;
/// Erase block of the mock flash; a log segment is one block, so the flash holds 16 segments.
pub const ERASE_SIZE: usize = 1024;
/// The buffer lent to the counter: one padded counter frame (40 bytes) plus one control frame
/// (64 bytes), rounded up.
pub const BUFFER_LEN: usize = 128;

/// The RAM NOR-flash mock the firmware runs on (16 KiB + 256 bytes of word state).
pub type Flash =
    RamNorFlash<FLASH_SIZE, WRITE_SIZE, ERASE_SIZE, { bitmap_bytes(FLASH_SIZE, WRITE_SIZE) }>;

/// Checkpoint every 8 records, so that a short workload crosses many checkpoints and releases.
pub const fn config() -> CounterConfig {
    CounterConfig {
        checkpoint_every: 8,
        log: Config {
            segment_size: 0,
            payload_max: bedrock::counter::PAYLOAD_MAX,
            policy: Policy::StopAtCorruption,
        },
    }
}

/// The word painted over unused stack.
const PAINT: u32 = 0xCCCC_CCCC;

extern "C" {
    /// Lowest address the stack may grow to (end of `.bss`/`.uninit`), from cortex-m-rt's link.x.
    static _stack_end: u32;
    /// Highest stack address (initial SP), from cortex-m-rt's link.x.
    static _stack_start: u32;
}

fn stack_floor() -> usize {
    // Only the symbol's address is taken; it is never read.
    let floor = core::ptr::addr_of!(_stack_end) as usize;
    (floor + 3) & !3
}

/// The initial stack pointer: the top of RAM.
pub fn stack_top() -> usize {
    // Only the symbol's address is taken; it is never read.
    core::ptr::addr_of!(_stack_start) as usize
}

/// The current stack pointer.
#[inline(always)]
pub fn stack_pointer() -> usize {
    cortex_m::register::msp::read() as usize
}

/// Paints every free stack word below the caller's frame, so that [`stack_lowest_used`] can
/// later find how deep the stack went. No interrupt is enabled in these binaries, so nothing
/// else uses the stack below the current frame.
#[inline(never)]
pub fn paint_stack() {
    // Leave a margin for this function's own frame.
    let top = (stack_pointer() - 32) & !3;
    let mut address = stack_floor();
    while address < top {
        // SAFETY: [floor, sp - 32) is RAM reserved for the stack and unused right now.
        unsafe { core::ptr::write_volatile(address as *mut u32, PAINT) };
        address += 4;
    }
}

/// The lowest stack address written since [`paint_stack`]: the first word from the floor up
/// that lost its paint.
#[inline(never)]
pub fn stack_lowest_used() -> usize {
    let top = stack_pointer() & !3;
    let mut address = stack_floor();
    // SAFETY: reads of stack RAM between the floor and the current stack pointer.
    while address < top && unsafe { core::ptr::read_volatile(address as *const u32) } == PAINT {
        address += 4;
    }
    address
}

/// Runs `f` and returns its result with the bytes of stack it used at its deepest, measured from
/// this call's own frame (the closure's frame and everything it calls).
#[inline(never)]
pub fn stack_used_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let entry = stack_pointer();
    paint_stack();
    let result = f();
    (result, entry - stack_lowest_used())
}

/// Bytes of stack available between the statics and the top of RAM.
pub fn stack_capacity() -> usize {
    stack_top() - stack_floor()
}

/// Ends the qemu run with exit status 0 (`ok`) or 1.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    // Only reached when no debugger or emulator handles semihosting.
    loop {
        cortex_m::asm::wfi();
    }
}
