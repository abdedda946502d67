//! Cluster keys: a [`Keyring`] of up to `K` keys, one of them primary, and the key file format.
//!
//! A datagram is sealed with the primary key and opened with whichever listed key its header
//! names, so a key is rotated without downtime in three steps, each applied to every node before
//! the next begins: add the new key, make it primary, remove the old key.
//!
//! Key file format (UTF-8 text, one key per line; the first key is the primary):
//!
//! ```text
//! # comments run from '#' to the end of the line; blank lines are ignored
//! bedrock-key-v1 2 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//! bedrock-key-v1 1 <64 lowercase hex digits>
//! ```
//!
//! Fields are separated by spaces or tabs. The id is decimal, 0 to 255, without sign or leading
//! zeros. Parsing and formatting allocate nothing.
//!
//! Not provided here: keeping secrets out of memory after use (keys are plain bytes and are not
//! zeroed on drop) or protecting key files (the caller sets their permissions).

use core::fmt;
use heapless::Vec;

/// Bytes of a key's secret.
pub const SECRET_LEN: usize = 32;
/// The first word of every key line.
pub const KEY_LINE_PREFIX: &str = "bedrock-key-v1";
/// The longest key line, newline included: `bedrock-key-v1 255 <64 hex>\n`.
pub const KEY_LINE_LEN_MAX: usize = KEY_LINE_PREFIX.len() + 1 + 3 + 1 + 2 * SECRET_LEN + 1;

/// A cluster key: a one-byte id carried in every envelope header, and a 256-bit secret.
///
/// `Debug` shows the id only, never the secret.
#[derive(Clone)]
pub struct Key {
    id: u8,
    secret: [u8; SECRET_LEN],
}

impl Key {
    /// A key with this id and secret. The secret must come from a cryptographic random source.
    pub const fn new(id: u8, secret: [u8; SECRET_LEN]) -> Self {
        Self { id, secret }
    }

    /// The id envelopes sealed with this key carry.
    pub const fn id(&self) -> u8 {
        self.id
    }

    pub(crate) const fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// Writes this key as one key-file line, newline included.
    pub fn write_line(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "{KEY_LINE_PREFIX} {} ", self.id)?;
        for byte in self.secret {
            write!(out, "{byte:02x}")?;
        }
        out.write_char('\n')
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a keyring change was refused. The keyring is unchanged in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum KeyringError {
    /// The keyring already holds `K` keys.
    Full,
    /// A key with this id is already listed.
    DuplicateId,
    /// No key with this id is listed.
    UnknownKey,
    /// The primary key cannot be removed; make another key primary first.
    PrimaryKey,
}

/// Up to `K` keys accepted when opening, one of which (the primary) seals.
#[derive(Debug, Clone)]
pub struct Keyring<const K: usize> {
    keys: Vec<Key, K>,
    primary: u8,
}

impl<const K: usize> Keyring<K> {
    /// A keyring holding `primary` only.
    pub fn new(primary: Key) -> Self {
        const { assert!(K >= 1, "a keyring holds at least one key") };
        let id = primary.id;
        let mut keys = Vec::new();
        if keys.push(primary).is_err() {
            unreachable!("K >= 1");
        }
        Self { keys, primary: id }
    }

    /// The key that seals.
    pub fn primary(&self) -> &Key {
        match self.get(self.primary) {
            Some(key) => key,
            None => unreachable!("the primary key is always listed"),
        }
    }

    /// The listed key with this id.
    pub fn get(&self, id: u8) -> Option<&Key> {
        self.keys.iter().find(|key| key.id == id)
    }

    /// Every listed key, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    /// How many keys are listed (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: the primary key is always listed. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Lists `key` as accepted; the primary key is unchanged.
    pub fn add(&mut self, key: Key) -> Result<(), KeyringError> {
        if self.get(key.id).is_some() {
            return Err(KeyringError::DuplicateId);
        }
        self.keys.push(key).map_err(|_| KeyringError::Full)
    }

    /// Makes the listed key `id` the one that seals.
    pub fn set_primary(&mut self, id: u8) -> Result<(), KeyringError> {
        if self.get(id).is_none() {
            return Err(KeyringError::UnknownKey);
        }
        self.primary = id;
        Ok(())
    }

    /// Stops accepting key `id` and returns it. The primary key cannot be removed.
    pub fn remove(&mut self, id: u8) -> Result<Key, KeyringError> {
        if id == self.primary {
            return Err(KeyringError::PrimaryKey);
        }
        let index = self
            .keys
            .iter()
            .position(|key| key.id == id)
            .ok_or(KeyringError::UnknownKey)?;
        Ok(self.keys.remove(index))
    }

    /// Parses a key file: the first key is the primary, the others are accepted.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut ring: Option<Self> = None;
        let mut line_count = 0;
        for (index, line) in text.lines().enumerate() {
            line_count = index + 1;
            let at = |problem| KeyFileError {
                line: index + 1,
                problem,
            };
            let Some(key) = parse_line(line).map_err(at)? else {
                continue;
            };
            match ring.as_mut() {
                None => ring = Some(Self::new(key)),
                Some(ring) => ring.add(key).map_err(|error| {
                    at(match error {
                        KeyringError::DuplicateId => KeyFileProblem::DuplicateId,
                        _ => KeyFileProblem::TooManyKeys,
                    })
                })?,
            }
        }
        ring.ok_or(KeyFileError {
            line: line_count,
            problem: KeyFileProblem::NoKeys,
        })
    }

    /// Writes the keyring as a key file that [`Keyring::parse`] reads back: the primary key first,
    /// then the others in the order added.
    pub fn write_text(&self, out: &mut impl fmt::Write) -> fmt::Result {
        self.primary().write_line(out)?;
        for key in self.keys.iter().filter(|key| key.id != self.primary) {
            key.write_line(out)?;
        }
        Ok(())
    }

    /// Writes the key file into `buffer` (at most `K * KEY_LINE_LEN_MAX` bytes) and returns it.
    pub fn format<'b>(&self, buffer: &'b mut [u8]) -> Result<&'b str, fmt::Error> {
        let mut writer = SliceWriter { buffer, len: 0 };
        self.write_text(&mut writer)?;
        let SliceWriter { buffer, len } = writer;
        core::str::from_utf8(&buffer[..len]).map_err(|_| fmt::Error)
    }
}

struct SliceWriter<'b> {
    buffer: &'b mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len.checked_add(text.len()).ok_or(fmt::Error)?;
        let area = self.buffer.get_mut(self.len..end).ok_or(fmt::Error)?;
        area.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// What is wrong with a key file line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The line does not start with `bedrock-key-v1`.
    UnknownFormat,
    /// The line has no key id.
    MissingId,
    /// The id is not a decimal number from 0 to 255 without sign or leading zeros.
    BadId,
    /// The line has no secret.
    MissingSecret,
    /// The secret is not exactly 64 hex digits.
    SecretLength,
    /// The secret holds a character other than `0-9` and `a-f`.
    SecretNotLowercaseHex,
    /// Something follows the secret.
    TrailingText,
    /// An earlier line has a key with the same id.
    DuplicateId,
    /// More keys than the keyring holds.
    TooManyKeys,
    /// The file holds no key.
    NoKeys,
}

/// Why a key file was refused: where, and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyFileError {
    /// The line, counted from 1 (for [`KeyFileProblem::NoKeys`], the number of lines).
    pub line: usize,
    /// What is wrong with it.
    pub problem: KeyFileProblem,
}

/// A key from one line, or `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<Key>, KeyFileProblem> {
    let content = line.split('#').next().unwrap_or("");
    let mut words = content.split_ascii_whitespace();
    let Some(prefix) = words.next() else {
        return Ok(None);
    };
    if prefix != KEY_LINE_PREFIX {
        return Err(KeyFileProblem::UnknownFormat);
    }
    let id = parse_id(words.next().ok_or(KeyFileProblem::MissingId)?)?;
    let secret = parse_secret(words.next().ok_or(KeyFileProblem::MissingSecret)?)?;
    if words.next().is_some() {
        return Err(KeyFileProblem::TrailingText);
    }
    Ok(Some(Key::new(id, secret)))
}

fn parse_id(word: &str) -> Result<u8, KeyFileProblem> {
    let digits = word.as_bytes();
    let canonical = matches!(digits.len(), 1..=3)
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1);
    if !canonical {
        return Err(KeyFileProblem::BadId);
    }
    let value = digits
        .iter()
        .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
    u8::try_from(value).map_err(|_| KeyFileProblem::BadId)
}

fn parse_secret(word: &str) -> Result<[u8; SECRET_LEN], KeyFileProblem> {
    fn nibble(digit: u8) -> Result<u8, KeyFileProblem> {
        match digit {
            b'0'..=b'9' => Ok(digit - b'0'),
            b'a'..=b'f' => Ok(digit - b'a' + 10),
            _ => Err(KeyFileProblem::SecretNotLowercaseHex),
        }
    }
    let digits = word.as_bytes();
    if digits.len() != 2 * SECRET_LEN {
        return Err(KeyFileProblem::SecretLength);
    }
    let mut secret = [0u8; SECRET_LEN];
    for (byte, pair) in secret.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(secret)
}

impl fmt::Display for KeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "the keyring is full",
            Self::DuplicateId => "a key with this id is already listed",
            Self::UnknownKey => "no key with this id is listed",
            Self::PrimaryKey => "the primary key cannot be removed",
        })
    }
}

impl core::error::Error for KeyringError {}

impl fmt::Display for KeyFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownFormat => "the line does not start with `bedrock-key-v1`",
            Self::MissingId => "no key id after `bedrock-key-v1`",
            Self::BadId => "the key id is not a decimal number from 0 to 255",
            Self::MissingSecret => "no secret after the key id",
            Self::SecretLength => "the secret is not 64 hex digits",
            Self::SecretNotLowercaseHex => "the secret holds a character other than 0-9 and a-f",
            Self::TrailingText => "text after the secret",
            Self::DuplicateId => "a key with this id is already listed on an earlier line",
            Self::TooManyKeys => "more keys than the keyring holds",
            Self::NoKeys => "the key file holds no key",
        })
    }
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file line {}: {}", self.line, self.problem)
    }
}

impl core::error::Error for KeyFileError {}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;

    const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn secret() -> [u8; SECRET_LEN] {
        core::array::from_fn(|index| index as u8)
    }

    fn problem(text: &str) -> KeyFileError {
        Keyring::<4>::parse(text).unwrap_err()
    }

    #[test]
    fn a_key_file_parses_with_the_first_key_primary_and_comments_ignored() {
        let text = "# cluster keys\n\n  bedrock-key-v1 7 ";
        let mut full = heapless::String::<512>::new();
        fmt::Write::write_str(&mut full, text).unwrap();
        fmt::Write::write_str(&mut full, SECRET_HEX).unwrap();
        fmt::Write::write_str(&mut full, " # new\r\nbedrock-key-v1\t255\t").unwrap();
        fmt::Write::write_str(&mut full, &SECRET_HEX.replace('0', "f")).unwrap();
        let ring = Keyring::<4>::parse(&full).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.primary().id(), 7);
        assert_eq!(ring.primary().secret(), &secret());
        assert_eq!(ring.get(255).unwrap().secret()[0], 0xff);
    }

    #[test]
    fn key_file_errors_name_the_line_and_the_problem() {
        let line = |rest: &str| {
            let mut text = heapless::String::<256>::new();
            fmt::Write::write_fmt(&mut text, format_args!("\n#x\nbedrock-key-v1 {rest}\n"))
                .unwrap();
            problem(&text)
        };
        let at3 = |problem| KeyFileError { line: 3, problem };
        assert_eq!(line(""), at3(KeyFileProblem::MissingId));
        assert_eq!(line("256 00"), at3(KeyFileProblem::BadId));
        assert_eq!(line("07 00"), at3(KeyFileProblem::BadId));
        assert_eq!(line("+7 00"), at3(KeyFileProblem::BadId));
        assert_eq!(line("7"), at3(KeyFileProblem::MissingSecret));
        assert_eq!(line("7 0011"), at3(KeyFileProblem::SecretLength));
        let upper = SECRET_HEX.replace('a', "A");
        let mut text = heapless::String::<128>::new();
        fmt::Write::write_fmt(&mut text, format_args!("7 {upper}")).unwrap();
        assert_eq!(line(&text), at3(KeyFileProblem::SecretNotLowercaseHex));
        text.clear();
        fmt::Write::write_fmt(&mut text, format_args!("7 {SECRET_HEX} extra")).unwrap();
        assert_eq!(line(&text), at3(KeyFileProblem::TrailingText));
        assert_eq!(
            problem("bedrock-key-v2 1 00"),
            KeyFileError {
                line: 1,
                problem: KeyFileProblem::UnknownFormat
            }
        );
        assert_eq!(
            problem("# nothing\n\n"),
            KeyFileError {
                line: 2,
                problem: KeyFileProblem::NoKeys
            }
        );
    }

    #[test]
    fn a_duplicate_id_or_one_key_too_many_is_refused_at_its_line() {
        let mut ring = Keyring::<2>::new(Key::new(1, secret()));
        ring.add(Key::new(2, secret())).unwrap();
        let mut buffer = [0u8; 2 * KEY_LINE_LEN_MAX];
        let two = ring.format(&mut buffer).unwrap();
        let mut text = heapless::String::<512>::new();
        fmt::Write::write_fmt(&mut text, format_args!("{two}{two}")).unwrap();
        assert_eq!(
            Keyring::<4>::parse(&text).unwrap_err(),
            KeyFileError {
                line: 3,
                problem: KeyFileProblem::DuplicateId
            }
        );
        text.clear();
        fmt::Write::write_fmt(&mut text, format_args!("{two}")).unwrap();
        assert_eq!(
            Keyring::<1>::parse(&text).unwrap_err(),
            KeyFileError {
                line: 2,
                problem: KeyFileProblem::TooManyKeys
            }
        );
    }

    #[test]
    fn the_primary_key_cannot_be_removed_and_rotation_takes_three_steps() {
        let mut ring = Keyring::<2>::new(Key::new(1, secret()));
        assert_eq!(ring.remove(1).unwrap_err(), KeyringError::PrimaryKey);
        assert_eq!(ring.set_primary(2), Err(KeyringError::UnknownKey));
        ring.add(Key::new(2, [9; 32])).unwrap();
        assert_eq!(ring.add(Key::new(3, [9; 32])), Err(KeyringError::Full));
        assert_eq!(
            ring.add(Key::new(2, [9; 32])),
            Err(KeyringError::DuplicateId)
        );
        ring.set_primary(2).unwrap();
        assert_eq!(ring.remove(1).unwrap().id(), 1);
        assert_eq!(ring.primary().id(), 2);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.remove(7).unwrap_err(), KeyringError::UnknownKey);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut text = heapless::String::<256>::new();
        let ring = Keyring::<1>::new(Key::new(5, [0xab; 32]));
        fmt::Write::write_fmt(&mut text, format_args!("{ring:?}")).unwrap();
        assert!(text.contains("id: 5"), "{text}");
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
    }

    #[test]
    fn formatting_into_a_buffer_too_small_fails() {
        let ring = Keyring::<1>::new(Key::new(5, secret()));
        let mut buffer = [0u8; KEY_LINE_LEN_MAX];
        let text = ring.format(&mut buffer).unwrap();
        assert_eq!(text.len(), KEY_LINE_PREFIX.len() + 3 + 64 + 1);
        let mut small = [0u8; 40];
        assert!(ring.format(&mut small).is_err());
    }

    proptest! {
        #[test]
        fn a_formatted_keyring_parses_back(
            ids in proptest::collection::btree_set(any::<u8>(), 1..=4),
            seed: u8,
            primary: prop::sample::Index,
        ) {
            let ids: std::vec::Vec<u8> = ids.into_iter().collect();
            let key = |id: u8| Key::new(id, [id ^ seed; 32]);
            let mut ring = Keyring::<4>::new(key(ids[0]));
            for &id in &ids[1..] {
                ring.add(key(id)).unwrap();
            }
            ring.set_primary(ids[primary.index(ids.len())]).unwrap();
            let mut buffer = [0u8; 4 * KEY_LINE_LEN_MAX];
            let text = ring.format(&mut buffer).unwrap();
            let parsed = Keyring::<4>::parse(text).unwrap();
            prop_assert_eq!(parsed.primary().id(), ring.primary().id());
            prop_assert_eq!(parsed.len(), ring.len());
            for key in ring.iter() {
                prop_assert_eq!(parsed.get(key.id()).unwrap().secret(), key.secret());
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = Keyring::<3>::parse(&text);
        }
    }
}
