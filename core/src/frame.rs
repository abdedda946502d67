//! Storage frames: the unit every bedrock log writes, checked by CRC-32C.
//!
//! ```text
//!  offset  size  field
//!  0       1     magic      0xB7 (never 0x00 or 0xFF, so erased flash is never a frame)
//!  1       1     version    1
//!  2       1     kind       0 is invalid; 1..=15 belong to the log; 16..=255 to its users
//!  3       1     reserved   0
//!  4       4     length     payload bytes, u32 little-endian
//!  8       8     sequence   u64 little-endian, +1 per frame of the log
//!  16      4     epoch      u32 little-endian, the epoch of the segment the frame was written in
//!  20      4     unsynced   u32 little-endian, frames just before this one not yet synced when it
//!                           was written (lets recovery tell a crash from corruption)
//!  24      L     payload    postcard
//!  24+L    4     crc        CRC-32C over bytes [0, 24+L), little-endian
//!  28+L    P     padding    erased value, up to a multiple of the write size
//! ```
//!
//! Guarantees: a frame decodes only if every byte of its header and payload is exactly as written
//! (up to CRC-32C's collision probability, 2^-32 for arbitrary damage, certain for bursts of up to
//! 32 bits); the erased pattern of either polarity never decodes; a frame written in one piece
//! occupies whole write-size words, so it never shares a word with another frame.
//!
//! Not guaranteed here: that a frame is the one the reader expected (sequence and epoch checks
//! belong to the log), or that the padding is intact (it carries nothing).

use crate::checksum::crc32c;

/// The first byte of every frame.
pub const MAGIC: u8 = 0xB7;
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// Bytes of the trailing checksum.
pub const CRC_LEN: usize = 4;
/// Header and checksum: a frame's size without payload or padding.
pub const OVERHEAD: usize = HEADER_LEN + CRC_LEN;

mod field {
    use core::ops::Range;
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 1;
    pub const KIND: usize = 2;
    pub const RESERVED: usize = 3;
    pub const LENGTH: Range<usize> = 4..8;
    pub const SEQUENCE: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..20;
    pub const UNSYNCED: Range<usize> = 20..24;
}

const _: () = assert!(field::UNSYNCED.end == HEADER_LEN);
const _: () = assert!(MAGIC != 0x00 && MAGIC != 0xFF);

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header; or, with `needed`, the header is plausible but the frame needs
    /// `needed` bytes in all. A reader with more bytes should retry with at least that many.
    Incomplete {
        /// Total bytes (header, payload, checksum) the frame claims, when the header was readable.
        needed: Option<usize>,
    },
    /// The first byte is not [`MAGIC`] (erased space, garbage or a torn header).
    BadMagic,
    /// A version this code does not read.
    BadVersion,
    /// Kind 0, or a nonzero reserved byte.
    BadHeader,
    /// The length field is larger than the caller's bound.
    TooLong,
    /// The checksum does not match: torn or corrupted.
    BadChecksum,
}

/// The header fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// What the payload is.
    pub kind: u8,
    /// Position of the frame in its log.
    pub sequence: u64,
    /// Epoch of the segment holding the frame.
    pub epoch: u32,
    /// How many frames directly before this one were not yet durable when it was written.
    pub unsynced: u32,
}

/// A checked view of one frame at the start of a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

fn read_u32(bytes: &[u8], range: core::ops::Range<usize>) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[range]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], range: core::ops::Range<usize>) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[range]);
    u64::from_le_bytes(word)
}

impl<'a> Frame<'a> {
    /// Checks the frame at the start of `bytes`, whose payload may be at most `payload_max`
    /// bytes. Trailing bytes after the checksum are ignored.
    pub fn new_checked(bytes: &'a [u8], payload_max: usize) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Incomplete { needed: None });
        }
        if bytes[field::MAGIC] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if bytes[field::VERSION] != VERSION {
            return Err(FrameError::BadVersion);
        }
        if bytes[field::KIND] == 0 || bytes[field::RESERVED] != 0 {
            return Err(FrameError::BadHeader);
        }
        let length = read_u32(bytes, field::LENGTH) as usize;
        if length > payload_max {
            return Err(FrameError::TooLong);
        }
        let total = HEADER_LEN + length + CRC_LEN;
        if bytes.len() < total {
            return Err(FrameError::Incomplete {
                needed: Some(total),
            });
        }
        let stored = read_u32(bytes, HEADER_LEN + length..total);
        if crc32c(&bytes[..HEADER_LEN + length]) != stored {
            return Err(FrameError::BadChecksum);
        }
        Ok(Self {
            bytes: &bytes[..total],
        })
    }

    /// The header fields.
    pub fn header(&self) -> Header {
        Header {
            kind: self.bytes[field::KIND],
            sequence: read_u64(self.bytes, field::SEQUENCE),
            epoch: read_u32(self.bytes, field::EPOCH),
            unsynced: read_u32(self.bytes, field::UNSYNCED),
        }
    }

    /// The payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - CRC_LEN]
    }

    /// The stored checksum.
    pub fn crc(&self) -> u32 {
        read_u32(self.bytes, self.bytes.len() - CRC_LEN..self.bytes.len())
    }

    /// Header, payload and checksum length, without padding.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a frame has at least a header and a checksum. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Bytes a frame with `payload_len` bytes of payload occupies, padded to `write_size`.
pub const fn padded_len(payload_len: usize, write_size: usize) -> usize {
    (OVERHEAD + payload_len).div_ceil(write_size) * write_size
}

/// Why a frame could not be emitted. Nothing was written to storage in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EmitError {
    /// The buffer cannot hold the frame with its padding.
    BufferTooSmall,
    /// The payload could not be serialized.
    Serialize,
}

/// Emits a frame into the start of `buf`: `payload` fills the payload area and returns its
/// length; the header, checksum and padding (with `erased_value`) are written around it.
/// Returns the padded length, a multiple of `write_size`.
pub fn emit(
    buf: &mut [u8],
    header: Header,
    write_size: usize,
    erased_value: u8,
    payload: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>,
) -> Result<usize, EmitError> {
    debug_assert!(header.kind != 0, "kind 0 never decodes");
    if buf.len() < OVERHEAD {
        return Err(EmitError::BufferTooSmall);
    }
    let payload_area_end = buf.len() - CRC_LEN;
    let length = payload(&mut buf[HEADER_LEN..payload_area_end])?;
    let padded = padded_len(length, write_size);
    if length > payload_area_end - HEADER_LEN || padded > buf.len() {
        return Err(EmitError::BufferTooSmall);
    }
    buf[field::MAGIC] = MAGIC;
    buf[field::VERSION] = VERSION;
    buf[field::KIND] = header.kind;
    buf[field::RESERVED] = 0;
    buf[field::LENGTH].copy_from_slice(&(length as u32).to_le_bytes());
    buf[field::SEQUENCE].copy_from_slice(&header.sequence.to_le_bytes());
    buf[field::EPOCH].copy_from_slice(&header.epoch.to_le_bytes());
    buf[field::UNSYNCED].copy_from_slice(&header.unsynced.to_le_bytes());
    let end = HEADER_LEN + length;
    let crc = crc32c(&buf[..end]);
    buf[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    buf[end + CRC_LEN..padded].fill(erased_value);
    debug_assert!(Frame::new_checked(&buf[..padded], length).is_ok());
    Ok(padded)
}

/// Rewrites the epoch and unsynced fields of a frame emitted into `frame` (its padded bytes) and
/// recomputes its checksum. Used when a frame encoded for one segment must go to the next.
pub fn restamp(frame: &mut [u8], epoch: u32, unsynced: u32) {
    let length = read_u32(frame, field::LENGTH) as usize;
    let end = HEADER_LEN + length;
    debug_assert!(end + CRC_LEN <= frame.len());
    frame[field::EPOCH].copy_from_slice(&epoch.to_le_bytes());
    frame[field::UNSYNCED].copy_from_slice(&unsynced.to_le_bytes());
    let crc = crc32c(&frame[..end]);
    frame[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Emits a frame whose payload is `value` serialized with postcard.
pub fn emit_postcard<T: serde::Serialize>(
    buf: &mut [u8],
    header: Header,
    write_size: usize,
    erased_value: u8,
    value: &T,
) -> Result<usize, EmitError> {
    emit(buf, header, write_size, erased_value, |area| {
        postcard::to_slice(value, area)
            .map(|used| used.len())
            .map_err(|error| match error {
                postcard::Error::SerializeBufferFull => EmitError::BufferTooSmall,
                _ => EmitError::Serialize,
            })
    })
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Incomplete { needed: None } => f.write_str("fewer bytes than a frame header"),
            Self::Incomplete {
                needed: Some(needed),
            } => write!(f, "the frame needs {needed} bytes, fewer are there"),
            Self::BadMagic => f.write_str("not a frame (wrong magic byte)"),
            Self::BadVersion => f.write_str("a frame of an unknown format version"),
            Self::BadHeader => f.write_str("a frame header with kind 0 or reserved bits set"),
            Self::TooLong => f.write_str("a frame longer than allowed"),
            Self::BadChecksum => {
                f.write_str("a frame whose CRC-32C does not match (torn or corrupted)")
            }
        }
    }
}

impl core::error::Error for FrameError {}

impl core::fmt::Display for EmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "the payload does not fit in a frame",
            Self::Serialize => "the payload could not be serialized",
        })
    }
}

impl core::error::Error for EmitError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: u8, sequence: u64) -> Header {
        Header {
            kind,
            sequence,
            epoch: 3,
            unsynced: 1,
        }
    }

    #[test]
    fn a_frame_is_padded_to_the_write_size_with_the_erased_value() {
        let mut buf = [0u8; 64];
        let len = emit(&mut buf, header(16, 9), 32, 0xFF, |area| {
            area[..3].copy_from_slice(b"abc");
            Ok(3)
        })
        .unwrap();
        assert_eq!(len, 32);
        assert!(buf[OVERHEAD + 3..32].iter().all(|&b| b == 0xFF));
        let frame = Frame::new_checked(&buf, 100).unwrap();
        assert_eq!(frame.payload(), b"abc");
        assert_eq!(frame.header(), header(16, 9));
    }

    #[test]
    fn erased_space_of_either_polarity_is_never_a_frame() {
        assert_eq!(
            Frame::new_checked(&[0xFF; 64], 64).unwrap_err(),
            FrameError::BadMagic
        );
        assert_eq!(
            Frame::new_checked(&[0x00; 64], 64).unwrap_err(),
            FrameError::BadMagic
        );
    }

    #[test]
    fn a_length_beyond_the_bound_is_refused_before_reading_the_payload() {
        let mut buf = [0u8; 64];
        emit(&mut buf, header(16, 1), 8, 0xFF, |area| {
            area[..10].fill(1);
            Ok(10)
        })
        .unwrap();
        assert_eq!(
            Frame::new_checked(&buf, 9).unwrap_err(),
            FrameError::TooLong
        );
        assert_eq!(
            Frame::new_checked(&buf[..30], 64).unwrap_err(),
            FrameError::Incomplete { needed: Some(38) }
        );
    }

    #[test]
    fn a_buffer_too_small_for_the_padding_is_refused() {
        let mut buf = [0u8; 40];
        let result = emit(&mut buf, header(16, 1), 64, 0xFF, |_| Ok(1));
        assert_eq!(result, Err(EmitError::BufferTooSmall));
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            kind in 1u8..=255,
            sequence: u64,
            epoch: u32,
            unsynced: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            write_shift in 0u32..9,
        ) {
            let write_size = 1usize << write_shift;
            let header = Header { kind, sequence, epoch, unsynced };
            let mut buf = [0u8; 1024];
            let len = emit(&mut buf, header, write_size, 0xFF, |area| {
                area[..payload.len()].copy_from_slice(&payload);
                Ok(payload.len())
            }).unwrap();
            prop_assert_eq!(len % write_size, 0);
            prop_assert_eq!(len, padded_len(payload.len(), write_size));
            let frame = Frame::new_checked(&buf[..len], 1024).unwrap();
            prop_assert_eq!(frame.header(), header);
            prop_assert_eq!(frame.payload(), &payload[..]);
        }

        #[test]
        fn any_single_damaged_byte_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            at: prop::sample::Index,
            xor in 1u8..=255,
        ) {
            let mut buf = [0u8; 256];
            let len = emit(&mut buf, header(20, 5), 1, 0xFF, |area| {
                area[..payload.len()].copy_from_slice(&payload);
                Ok(payload.len())
            }).unwrap();
            let at = at.index(len);
            buf[at] ^= xor;
            prop_assert!(Frame::new_checked(&buf[..len], 256).is_err());
        }

        #[test]
        fn a_torn_frame_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 1..100),
            cut: prop::sample::Index,
            erased in prop::sample::select(&[0x00u8, 0xFF][..]),
        ) {
            let mut written = [0u8; 256];
            let len = emit(&mut written, header(20, 5), 1, erased, |area| {
                area[..payload.len()].copy_from_slice(&payload);
                Ok(payload.len())
            }).unwrap();
            // A torn write: the first `cut` bytes landed, the rest still read as erased.
            let cut = cut.index(len - CRC_LEN);
            let mut torn = [erased; 256];
            torn[..cut].copy_from_slice(&written[..cut]);
            let unchanged = torn[..len] == written[..len];
            prop_assume!(!unchanged);
            prop_assert!(Frame::new_checked(&torn[..len], 256).is_err());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_nor_accepts_a_bad_checksum(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(frame) = Frame::new_checked(&bytes, 200) {
                let covered = HEADER_LEN + frame.payload().len();
                prop_assert_eq!(crc32c(&bytes[..covered]), frame.crc());
            }
        }
    }
}
