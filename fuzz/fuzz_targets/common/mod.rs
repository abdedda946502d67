//! What several fuzz targets share: cutting the input into messages.

/// Cuts `input` into at most `max` messages, each a length byte and then up to 127 bytes. When
/// the length byte's high bit is set, the message's first byte is replaced by itself modulo
/// `variants`, a valid variant index, so that the fuzzer reaches every variant's fields.
pub fn messages(input: &[u8], variants: u8, max: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rest = input;
    core::iter::from_fn(move || {
        let (&head, tail) = rest.split_first()?;
        let len = usize::from(head & 0x7F).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let mut message = bytes.to_vec();
        if let (true, Some(first)) = (head & 0x80 != 0, message.first_mut()) {
            *first %= variants;
        }
        Some(message)
    })
    .take(max)
}
