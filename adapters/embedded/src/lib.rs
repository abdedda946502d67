//! bedrock on microcontrollers: `no_std` adapters from embedded HAL traits to bedrock's IO
//! contracts. No alloc, no unsafe code.
//!
//! - [`nor_flash`]: [`NorFlashStorage`] turns any `embedded_storage::nor_flash::NorFlash` into a
//!   [`bedrock::storage::Storage`], with the same refusals as every other adapter and poisoning
//!   after a device error.
//! - [`ram_flash`]: [`RamNorFlash`], a RAM NOR-flash mock for tests and firmware that enforces
//!   alignment, bounds and write-once words, counts operations, and can cut power mid-program.
//! - [`nal`]: [`NalDatagram`] turns a socket of any `embedded_nal::UdpFullStack` into a
//!   [`bedrock::net::Datagram`], with truncation reported through one byte of spare room.
//!
//! The `defmt` feature derives `defmt::Format` on the public types here and in `bedrock`.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod nal;
pub mod nor_flash;
pub mod ram_flash;

pub use embedded_nal;
pub use embedded_storage;
pub use nal::{NalBindError, NalDatagram};
pub use nor_flash::{NorFlashStorage, NorFlashStorageError};
pub use ram_flash::{bitmap_bytes, FlashCounters, RamNorFlash, RamNorFlashError};
