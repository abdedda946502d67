//! Frame decoding over arbitrary bytes.
//!
//! Properties: `Frame::new_checked` never panics; a frame it accepts covers exactly its header,
//! payload and CRC, and `frame::emit` of its fields reproduces those bytes (header, payload and
//! CRC) at every write size, padded with the erased value; a tighter payload bound or a shorter
//! slice is refused as the error says; `frame::restamp` yields a frame with the new fields.
#![no_main]

use bedrock::checksum::crc32c;
use bedrock::frame::{self, Frame, FrameError, Header, CRC_LEN, HEADER_LEN, OVERHEAD};
use libfuzzer_sys::fuzz_target;

const PAYLOAD_MAX: usize = 4096;

fn emit_copy(
    buffer: &mut [u8],
    header: Header,
    write_size: usize,
    erased: u8,
    payload: &[u8],
) -> usize {
    frame::emit(buffer, header, write_size, erased, |area| {
        area[..payload.len()].copy_from_slice(payload);
        Ok(payload.len())
    })
    .expect("the buffer holds the frame")
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::new_checked(data, PAYLOAD_MAX) else {
        return;
    };
    let header = frame.header();
    let payload = frame.payload();
    let len = frame.len();
    assert_eq!(len, OVERHEAD + payload.len());
    assert!(len <= data.len());
    assert_ne!(header.kind, 0);
    assert_eq!(frame.crc(), crc32c(&data[..HEADER_LEN + payload.len()]));

    for write_size in [1, 4, 8, 32, 256] {
        let erased = data[0] ^ write_size as u8;
        let mut buffer = vec![!erased; frame::padded_len(payload.len(), write_size)];
        let padded = emit_copy(&mut buffer, header, write_size, erased, payload);
        assert_eq!(padded, buffer.len());
        assert_eq!(buffer[..len], data[..len], "emit reproduces the frame");
        assert!(buffer[len..].iter().all(|&byte| byte == erased), "padding");
    }

    // A tighter bound and a cut are refused the way the errors document.
    if !payload.is_empty() {
        assert_eq!(
            Frame::new_checked(data, payload.len() - 1).unwrap_err(),
            FrameError::TooLong
        );
    }
    let needed = if len - 1 < HEADER_LEN {
        None
    } else {
        Some(len)
    };
    assert_eq!(
        Frame::new_checked(&data[..len - 1], PAYLOAD_MAX).unwrap_err(),
        FrameError::Incomplete { needed }
    );

    // Restamping changes exactly the epoch and unsynced fields.
    let mut copy = data[..len].to_vec();
    let epoch = header.epoch.rotate_left(7) ^ 1;
    let unsynced = !header.unsynced;
    frame::restamp(&mut copy, epoch, unsynced);
    let restamped = Frame::new_checked(&copy, PAYLOAD_MAX).expect("a restamped frame decodes");
    assert_eq!(
        restamped.header(),
        Header {
            epoch,
            unsynced,
            ..header
        }
    );
    assert_eq!(restamped.payload(), payload);
    assert_eq!(copy[len - CRC_LEN..], restamped.crc().to_le_bytes());
});
