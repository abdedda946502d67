//! `storage_size` plus one networked node: a `DistributedCounter` opened over the RAM NOR flash
//! (recovery included), an encrypted `Wire` (ChaCha20-Poly1305) in a `Driver`, and a
//! `NalDatagram` socket on the loopback switch; one local increment, then driver steps until it
//! is committed and a gossip push has been sealed and sent. The difference in code size from
//! `counter_size` is what the network half costs over the durable counter (the distributed
//! counter replaces the durable one; both share the log and recovery).
#![no_std]
#![no_main]

use core::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::dcounter::{self, DistributedCounter};
use bedrock::driver::Driver;
use bedrock::net::MTU_MIN;
use bedrock::rng::SplitMix64;
use bedrock::time::Instant;
use bedrock::wire::{Key, Keyring, Wire};
use bedrock_embedded::{NalDatagram, NorFlashStorage};
use bedrock_qemu::switch::Switch;
use bedrock_qemu::{exit, stack_used_by, Flash};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use panic_semihosting as _;

type Net = Switch<2, 4, 1024>;
type Node<'a> = DistributedCounter<NorFlashStorage<&'a mut Flash>, &'a mut [u8], 4, 2, 4, 2>;

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` references, usable once.
    static mut FLASH: Flash = Flash::new();
    static mut BUFFER: [u8; 512] = [0; 512];
    static mut SWITCH: Net = Net::new(1, 0);
    let flash: &mut Flash = FLASH;
    let buffer: &mut [u8] = BUFFER;
    let switch: &'static Net = SWITCH;
    let (sent, stack_bytes) = stack_used_by(|| run_node(flash, buffer, switch));
    hprintln!(
        "node_size: sent {} stack {} bytes",
        sent.unwrap_or(0),
        stack_bytes
    );
    exit(sent.is_some_and(|sent| sent > 0))
}

#[inline(never)]
fn run_node(flash: &mut Flash, buffer: &mut [u8], switch: &'static Net) -> Option<u64> {
    let peer = Net::address(7002);
    let storage = NorFlashStorage::new(flash).ok()?;
    let mut config = dcounter::Config::new(NodeId(1), 1);
    config.log.payload_max = 0;
    let (mut node, _) = Node::open(storage, buffer, config, &[peer]).ok()?;
    let keys = Keyring::new(Key::new(1, [7; 32]));
    let mut driver: Driver<1, 4> = Driver::new(Wire::encrypted(1, NodeId(1), 1, keys));
    let mut network = NalDatagram::bind(switch, 7001, MTU_MIN).ok()?;
    let mut rng = SplitMix64::new(1);
    let mut datagram = [0u8; MTU_MIN + 4];
    node.incr(1).ok()?;
    let mut now = Instant::ZERO;
    for _ in 0..3 {
        let deadline = driver
            .step(now, &mut network, &mut node, &mut rng, &mut datagram)
            .ok()?;
        now = deadline.unwrap_or(now + Duration::from_millis(1));
    }
    Some(driver.stats().sent)
}
