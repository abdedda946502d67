//! CRC-32C, the checksum of every frame; see the `bedrock-crc32c` crate for the implementations.

pub use bedrock_crc32c::{crc32c, implementation, IMPLEMENTATION};
