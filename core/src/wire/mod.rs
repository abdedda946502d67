//! The wire envelope: every datagram bedrock sends, authenticated and encrypted under a cluster
//! key (or, only when explicitly asked for, in clear with a checksum).
//!
//! ```text
//!  offset  size  field
//!  0       1     version      1
//!  1       1     flags        bit 0: plaintext; bits 1..=7 are 0
//!  2       1     kind         0 is invalid; what the payload is (the receiving service)
//!  3       1     key id       the key that sealed it; 0 in plaintext mode
//!  4       4     cluster      u32 little-endian; envelopes of another cluster are refused
//!  8       4     sender       node id, u32 little-endian
//!  12      4     incarnation  u32 little-endian, bumped at every start of the sender
//!  16      4     counter      u32 little-endian, +1 per envelope of this incarnation
//!  20      L     payload      encrypted: ChaCha20 ciphertext; plaintext: in clear
//!  20+L    16    tag          encrypted: Poly1305 tag (header as associated data)
//!  20+L    4     crc          plaintext: CRC-32C over bytes [0, 20+L), little-endian
//! ```
//!
//! The nonce is header bytes [8, 20): sender ‖ incarnation ‖ counter. The header travels in clear
//! and is authenticated as associated data. Overhead: [`OVERHEAD`] (36) bytes encrypted,
//! [`PLAINTEXT_OVERHEAD`] (24) in plaintext mode.
//!
//! # Guarantees
//!
//! - Encrypted mode: a datagram opens only if it was sealed under a listed key of the keyring by
//!   a holder of that key, for this cluster, and its bytes are exactly as sealed; the payload is
//!   confidential. Plaintext mode detects corruption only: anyone can forge a plaintext envelope.
//! - A node built with [`Wire::encrypted`] never accepts a plaintext envelope, and a node built
//!   with [`Wire::plaintext`] never accepts an encrypted one ([`Rejection::PlaintextRefused`]).
//! - Replays are refused by a per-sender window (see the `replay` module for its exact limits:
//!   a sender evicted from the table, or a receiver restarted, can be replayed to once more).
//! - Opening arbitrary bytes never panics and never allocates; every rejection is counted.
//!
//! # The nonce rule
//!
//! A ChaCha20-Poly1305 nonce must never repeat under a key, so a sender never reuses
//! (incarnation, counter): nodes persist their incarnation and bump it at every start; clients
//! use a random node id and a random incarnation (two clients colliding on both, 64 random bits,
//! is the residual risk); [`Wire::seal`] returns [`SealError::CounterExhausted`] after 2^32
//! envelopes, and the caller restarts with a new incarnation. The cluster id is not in the nonce:
//! a key must never be shared by two clusters.
//!
//! # Not provided here
//!
//! Forward secrecy, per-node keys or sender authentication beyond "holds the cluster key": any
//! key holder can claim any sender id. Key exchange: keys are distributed as key files.

mod keyring;
mod replay;
#[cfg(test)]
mod tests;

pub use keyring::{
    Key, KeyFileError, KeyFileProblem, Keyring, KeyringError, KEY_LINE_LEN_MAX, KEY_LINE_PREFIX,
    SECRET_LEN,
};
pub use replay::REPLAY_WINDOW;

use crate::checksum::crc32c;
use crate::crdt::NodeId;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use replay::ReplayTable;

/// The envelope format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of the header: sent in clear, authenticated as associated data.
pub const HEADER_LEN: usize = 20;
/// Bytes of the Poly1305 tag that ends an encrypted envelope.
pub const TAG_LEN: usize = 16;
/// Bytes of the CRC-32C that ends a plaintext envelope.
pub const CHECKSUM_LEN: usize = 4;
/// Bytes an encrypted envelope adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes a plaintext envelope adds to its payload.
pub const PLAINTEXT_OVERHEAD: usize = HEADER_LEN + CHECKSUM_LEN;
/// Bytes of the nonce: header bytes [8, 20).
pub const NONCE_LEN: usize = 12;
/// The flags bit of a plaintext envelope.
pub const FLAG_PLAINTEXT: u8 = 0x01;

mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 1;
    pub const KIND: usize = 2;
    pub const KEY_ID: usize = 3;
    pub const CLUSTER: Range<usize> = 4..8;
    pub const SENDER: Range<usize> = 8..12;
    pub const INCARNATION: Range<usize> = 12..16;
    pub const COUNTER: Range<usize> = 16..20;
    pub const NONCE: Range<usize> = SENDER.start..COUNTER.end;
}

const _: () = assert!(field::COUNTER.end == HEADER_LEN);
const _: () = assert!(field::NONCE.end - field::NONCE.start == NONCE_LEN);
const _: () = assert!(OVERHEAD == 36 && PLAINTEXT_OVERHEAD == 24);
// Every envelope, with its overhead, fits the smallest MTU with room to spare for a payload.
const _: () = assert!(OVERHEAD < crate::net::MTU_MIN);

/// The header fields of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// True for a plaintext envelope (CRC-32C trailer), false for an encrypted one (tag trailer).
    pub plaintext: bool,
    /// What the payload is; never 0.
    pub kind: u8,
    /// The key that sealed it; 0 in plaintext mode.
    pub key_id: u8,
    /// The cluster it belongs to.
    pub cluster: u32,
    /// Who sent it (authenticated in encrypted mode only).
    pub sender: NodeId,
    /// The sender's incarnation.
    pub incarnation: u32,
    /// The sender's envelope counter within the incarnation.
    pub counter: u32,
}

fn read_u32(bytes: &[u8], range: core::ops::Range<usize>) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[range]);
    u32::from_le_bytes(word)
}

impl Header {
    /// Reads and checks the header at the start of `bytes`: [`Rejection::Truncated`] if fewer
    /// than [`HEADER_LEN`] bytes, [`Rejection::Version`], or [`Rejection::Malformed`] (reserved
    /// flags set or kind 0). A plaintext header with a nonzero key id parses here; opening it
    /// fails with [`Rejection::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Rejection> {
        if bytes.len() < HEADER_LEN {
            return Err(Rejection::Truncated);
        }
        if bytes[field::VERSION] != VERSION {
            return Err(Rejection::Version);
        }
        let flags = bytes[field::FLAGS];
        let plaintext = flags & FLAG_PLAINTEXT != 0;
        let key_id = bytes[field::KEY_ID];
        let kind = bytes[field::KIND];
        if flags & !FLAG_PLAINTEXT != 0 || kind == 0 {
            return Err(Rejection::Malformed);
        }
        Ok(Self {
            plaintext,
            kind,
            key_id,
            cluster: read_u32(bytes, field::CLUSTER),
            sender: NodeId(read_u32(bytes, field::SENDER)),
            incarnation: read_u32(bytes, field::INCARNATION),
            counter: read_u32(bytes, field::COUNTER),
        })
    }

    /// Writes the header.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::VERSION] = VERSION;
        out[field::FLAGS] = if self.plaintext { FLAG_PLAINTEXT } else { 0 };
        out[field::KIND] = self.kind;
        out[field::KEY_ID] = self.key_id;
        out[field::CLUSTER].copy_from_slice(&self.cluster.to_le_bytes());
        out[field::SENDER].copy_from_slice(&self.sender.0.to_le_bytes());
        out[field::INCARNATION].copy_from_slice(&self.incarnation.to_le_bytes());
        out[field::COUNTER].copy_from_slice(&self.counter.to_le_bytes());
    }

    /// The nonce of an encrypted envelope: sender ‖ incarnation ‖ counter, little-endian.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        self.emit(&mut bytes);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[field::NONCE]);
        nonce
    }

    /// Bytes of the trailer this header announces.
    pub const fn trailer_len(&self) -> usize {
        if self.plaintext {
            CHECKSUM_LEN
        } else {
            TAG_LEN
        }
    }
}

/// An envelope that opened: its header fields and its payload, decrypted in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// What the payload is; never 0.
    pub kind: u8,
    /// Who sent it.
    pub sender: NodeId,
    /// The sender's incarnation.
    pub incarnation: u32,
    /// The sender's envelope counter within the incarnation.
    pub counter: u32,
    /// The payload, in clear.
    pub payload: &'a [u8],
}

/// Why a datagram was dropped. Nothing but the rejection counters changed, except where stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Rejection {
    /// Shorter than a header, or than its header and trailer.
    Truncated,
    /// A bad header field: reserved flag bits set, kind 0, or a key id in plaintext mode.
    Malformed,
    /// A format version this code does not read.
    Version,
    /// Sealed for another cluster.
    OtherCluster,
    /// Sealed with a key id the keyring does not list.
    UnknownKey,
    /// The tag (encrypted) or checksum (plaintext) does not match: forged, corrupted, or sealed
    /// with another key of the same id.
    Forged,
    /// Authentic but already accepted, or of an older incarnation, or too old for the window.
    /// The datagram's payload bytes were decrypted in place (the buffer is the caller's).
    Replayed,
    /// A plaintext envelope to an encrypted node, or an encrypted one to a plaintext node.
    PlaintextRefused,
    /// The sender field names this node itself: a datagram reflected back to its sender.
    Reflected,
}

/// How many datagrams were dropped, per reason. Counters wrap at `u64::MAX` (never reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Rejections {
    /// [`Rejection::Truncated`].
    pub truncated: u64,
    /// [`Rejection::Malformed`].
    pub malformed: u64,
    /// [`Rejection::Version`].
    pub version: u64,
    /// [`Rejection::OtherCluster`].
    pub other_cluster: u64,
    /// [`Rejection::UnknownKey`].
    pub unknown_key: u64,
    /// [`Rejection::Forged`].
    pub forged: u64,
    /// [`Rejection::Replayed`].
    pub replayed: u64,
    /// [`Rejection::PlaintextRefused`].
    pub plaintext_refused: u64,
    /// [`Rejection::Reflected`].
    pub reflected: u64,
}

impl Rejections {
    /// The counter of one reason.
    pub fn get(&self, reason: Rejection) -> u64 {
        match reason {
            Rejection::Truncated => self.truncated,
            Rejection::Malformed => self.malformed,
            Rejection::Version => self.version,
            Rejection::OtherCluster => self.other_cluster,
            Rejection::UnknownKey => self.unknown_key,
            Rejection::Forged => self.forged,
            Rejection::Replayed => self.replayed,
            Rejection::PlaintextRefused => self.plaintext_refused,
            Rejection::Reflected => self.reflected,
        }
    }

    /// Every rejection, whatever the reason.
    pub fn total(&self) -> u64 {
        [
            self.truncated,
            self.malformed,
            self.version,
            self.other_cluster,
            self.unknown_key,
            self.forged,
            self.replayed,
            self.plaintext_refused,
            self.reflected,
        ]
        .iter()
        .fold(0u64, |sum, count| sum.wrapping_add(*count))
    }

    fn count(&mut self, reason: Rejection) {
        let counter = match reason {
            Rejection::Truncated => &mut self.truncated,
            Rejection::Malformed => &mut self.malformed,
            Rejection::Version => &mut self.version,
            Rejection::OtherCluster => &mut self.other_cluster,
            Rejection::UnknownKey => &mut self.unknown_key,
            Rejection::Forged => &mut self.forged,
            Rejection::Replayed => &mut self.replayed,
            Rejection::PlaintextRefused => &mut self.plaintext_refused,
            Rejection::Reflected => &mut self.reflected,
        };
        *counter = counter.wrapping_add(1);
    }
}

/// Why an envelope was not sealed. Nothing changed and no counter was used, in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SealError {
    /// The buffer cannot hold header, payload and trailer.
    BufferTooSmall,
    /// This incarnation sealed 2^32 envelopes: restart with a new incarnation.
    CounterExhausted,
    /// Kind 0, which no receiver accepts.
    InvalidKind,
}

/// One node's envelope state: its identity, its keys (or plaintext mode), its send counter, the
/// replay table of up to `SENDERS` senders and the rejection counters.
///
/// Deliberately not `Clone`: two copies would seal with the same counters, reusing nonces.
#[derive(Debug)]
pub struct Wire<const K: usize, const SENDERS: usize> {
    cluster: u32,
    sender: NodeId,
    incarnation: u32,
    /// `None` in plaintext mode.
    keys: Option<Keyring<K>>,
    /// The counter of the next envelope; past `u32::MAX`, the incarnation is exhausted.
    counter_next: u64,
    replay: ReplayTable<SENDERS>,
    rejections: Rejections,
}

impl<const K: usize, const SENDERS: usize> Wire<K, SENDERS> {
    /// A node that seals with the keyring's primary key and opens with any listed key.
    /// `incarnation` must differ from every earlier start of `sender` (see the nonce rule).
    pub fn encrypted(cluster: u32, sender: NodeId, incarnation: u32, keys: Keyring<K>) -> Self {
        Self::new(cluster, sender, incarnation, Some(keys))
    }

    /// A node that sends and accepts plaintext envelopes only: no confidentiality, no
    /// authenticity, corruption detection only. Use it only when explicitly asked for.
    pub fn plaintext(cluster: u32, sender: NodeId, incarnation: u32) -> Self {
        Self::new(cluster, sender, incarnation, None)
    }

    fn new(cluster: u32, sender: NodeId, incarnation: u32, keys: Option<Keyring<K>>) -> Self {
        Self {
            cluster,
            sender,
            incarnation,
            keys,
            counter_next: 0,
            replay: ReplayTable::new(),
            rejections: Rejections::default(),
        }
    }

    /// Bytes each envelope adds to its payload: [`OVERHEAD`] or [`PLAINTEXT_OVERHEAD`].
    pub fn overhead(&self) -> usize {
        HEADER_LEN + self.trailer_len()
    }

    fn trailer_len(&self) -> usize {
        if self.keys.is_some() {
            TAG_LEN
        } else {
            CHECKSUM_LEN
        }
    }

    /// True in plaintext mode.
    pub fn is_plaintext(&self) -> bool {
        self.keys.is_none()
    }

    /// The cluster id.
    pub fn cluster(&self) -> u32 {
        self.cluster
    }

    /// This node's id.
    pub fn sender(&self) -> NodeId {
        self.sender
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// Seals the payload already in `out[HEADER_LEN..HEADER_LEN + payload_len]` (a service
    /// writes it there, so nothing is copied): writes the header, encrypts in place (or not, in
    /// plaintext mode) and appends the trailer. Returns the envelope's length.
    pub fn seal(
        &mut self,
        kind: u8,
        out: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, SealError> {
        if kind == 0 {
            return Err(SealError::InvalidKind);
        }
        let end = HEADER_LEN
            .checked_add(payload_len)
            .ok_or(SealError::BufferTooSmall)?;
        let total = end
            .checked_add(self.trailer_len())
            .filter(|&total| total <= out.len())
            .ok_or(SealError::BufferTooSmall)?;
        let counter = u32::try_from(self.counter_next).map_err(|_| SealError::CounterExhausted)?;
        // The counter is spent before anything is written: a nonce is never used twice.
        self.counter_next += 1;
        let header = Header {
            plaintext: self.keys.is_none(),
            kind,
            key_id: self.keys.as_ref().map_or(0, |keys| keys.primary().id()),
            cluster: self.cluster,
            sender: self.sender,
            incarnation: self.incarnation,
            counter,
        };
        let (head, rest) = out[..total].split_at_mut(HEADER_LEN);
        let head: &mut [u8; HEADER_LEN] = head.try_into().expect("split at HEADER_LEN");
        header.emit(head);
        let (payload, trailer) = rest.split_at_mut(payload_len);
        match &self.keys {
            Some(keys) => {
                let tag = cipher(keys.primary())
                    .encrypt_in_place_detached(&header.nonce().into(), &head[..], payload)
                    // Only a payload beyond 256 GiB fails, far beyond any buffer.
                    .map_err(|_| SealError::BufferTooSmall)?;
                trailer.copy_from_slice(&tag);
            }
            None => {
                let crc = crc32c(&out[..end]);
                out[end..total].copy_from_slice(&crc.to_le_bytes());
            }
        }
        Ok(total)
    }

    /// Checks an envelope (header, cluster, key, tag or checksum, then the replay window) and
    /// decrypts its payload in place. Every rejection is counted in [`Wire::rejections`]; the
    /// replay window changes only for an envelope that opens.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Opened<'a>, Rejection> {
        let result = self.open_unchecked_count(datagram);
        if let Err(reason) = result {
            self.rejections.count(reason);
        }
        result
    }

    fn open_unchecked_count<'a>(
        &mut self,
        datagram: &'a mut [u8],
    ) -> Result<Opened<'a>, Rejection> {
        let header = Header::parse(datagram)?;
        if header.plaintext != self.keys.is_none() {
            return Err(Rejection::PlaintextRefused);
        }
        if header.plaintext && header.key_id != 0 {
            return Err(Rejection::Malformed);
        }
        let payload_len = datagram
            .len()
            .checked_sub(HEADER_LEN + header.trailer_len())
            .ok_or(Rejection::Truncated)?;
        if header.cluster != self.cluster {
            return Err(Rejection::OtherCluster);
        }
        if header.sender == self.sender {
            return Err(Rejection::Reflected);
        }
        self.authenticate(&header, datagram, payload_len)?;
        if !self
            .replay
            .accept(header.sender, header.incarnation, header.counter)
        {
            return Err(Rejection::Replayed);
        }
        let datagram: &'a [u8] = datagram;
        Ok(Opened {
            kind: header.kind,
            sender: header.sender,
            incarnation: header.incarnation,
            counter: header.counter,
            payload: &datagram[HEADER_LEN..HEADER_LEN + payload_len],
        })
    }

    /// Verifies the tag and decrypts in place, or verifies the checksum.
    fn authenticate(
        &self,
        header: &Header,
        datagram: &mut [u8],
        payload_len: usize,
    ) -> Result<(), Rejection> {
        let end = HEADER_LEN + payload_len;
        let Some(keys) = &self.keys else {
            let stored = read_u32(datagram, end..end + CHECKSUM_LEN);
            return if crc32c(&datagram[..end]) == stored {
                Ok(())
            } else {
                Err(Rejection::Forged)
            };
        };
        let key = keys.get(header.key_id).ok_or(Rejection::UnknownKey)?;
        let (head, rest) = datagram.split_at_mut(HEADER_LEN);
        let (payload, trailer) = rest.split_at_mut(payload_len);
        let tag: [u8; TAG_LEN] = trailer.try_into().map_err(|_| Rejection::Truncated)?;
        cipher(key)
            .decrypt_in_place_detached(&header.nonce().into(), head, payload, &tag.into())
            .map_err(|_| Rejection::Forged)
    }

    /// The rejection counters.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// How many senders were evicted from the replay table to make room for another; each
    /// eviction reopens that sender to replays (see the module doc).
    pub fn replay_evictions(&self) -> u64 {
        self.replay.evictions()
    }

    /// The keyring, for rotation at run time; `None` in plaintext mode.
    pub fn keyring_mut(&mut self) -> Option<&mut Keyring<K>> {
        self.keys.as_mut()
    }

    /// The keyring; `None` in plaintext mode.
    pub fn keyring(&self) -> Option<&Keyring<K>> {
        self.keys.as_ref()
    }
}

fn cipher(key: &Key) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&(*key.secret()).into())
}

impl core::fmt::Display for Rejection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "a datagram shorter than an envelope header and trailer",
            Self::Malformed => "an envelope header with reserved bits set, kind 0 or a bad key id",
            Self::Version => "an envelope of an unknown format version",
            Self::OtherCluster => "an envelope of another cluster",
            Self::UnknownKey => "an envelope sealed with a key id not in the keyring",
            Self::Forged => {
                "an envelope whose tag or checksum does not match (forged or corrupted)"
            }
            Self::Replayed => "an envelope already accepted or too old (replayed)",
            Self::PlaintextRefused => "a plaintext envelope to an encrypted node or the reverse",
            Self::Reflected => "an envelope claiming to come from this node itself",
        })
    }
}

impl core::error::Error for Rejection {}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "the buffer cannot hold the envelope",
            Self::CounterExhausted => {
                "this incarnation sealed 2^32 envelopes; restart with a new incarnation"
            }
            Self::InvalidKind => "envelope kind 0 is invalid",
        })
    }
}

impl core::error::Error for SealError {}
