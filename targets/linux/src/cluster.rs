//! What the networked commands share: how to reach a cluster (label and key file),
//! `bedrock keygen`, and the client side of `bedrock counter incr|get --node ADDR`.
//!
//! A client command sends one request to one node with [`Client`] (a random client id, retries
//! with the same request id, a 3 s timeout) and prints the answer; errors are one sentence.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bedrock::checksum::crc32c;
use bedrock::dcounter::{self, Message, Refusal};
use bedrock::service::kind;
use bedrock::wire::{Key, Keyring};
use bedrock_std::client::{self, Client, ClientError, CLIENT_KEYS};

use crate::error::{fail, Error};
use crate::output;

/// How to reach a cluster: its label and key.
#[derive(Debug, Clone)]
pub struct Access {
    /// The cluster label; its CRC-32C is the envelope's cluster id.
    pub cluster: String,
    /// The key file; `None` only with `plaintext`.
    pub key_file: Option<PathBuf>,
    /// Plaintext envelopes (checksummed, not authenticated), when asked for explicitly.
    pub plaintext: bool,
}

impl Access {
    /// The envelope's cluster id: the label's CRC-32C.
    pub fn cluster_id(&self) -> u32 {
        crc32c(self.cluster.as_bytes())
    }

    /// The keyring to seal with, or `None` in plaintext mode.
    pub fn keys<const K: usize>(&self) -> Result<Option<Keyring<K>>, Error> {
        match (&self.key_file, self.plaintext) {
            (Some(_), true) => Err(fail("--key-file and --plaintext exclude each other")),
            (None, false) => Err(fail(
                "a key file is needed (--key-file FILE, made by `bedrock keygen`), or \
                 --plaintext to send unauthenticated datagrams on purpose",
            )),
            (None, true) => Ok(None),
            (Some(path), false) => load_keys(path).map(Some),
        }
    }
}

fn load_keys<const K: usize>(path: &Path) -> Result<Keyring<K>, Error> {
    let text = fs::read_to_string(path)
        .map_err(|error| fail(format!("cannot read key file {}: {error}", path.display())))?;
    Keyring::parse(&text).map_err(|error| fail(format!("key file {}: {error}", path.display())))
}

/// `bedrock keygen --out FILE`: a new random key, written to a new file readable by its owner
/// only.
pub fn keygen(out: &Path) -> Result<ExitCode, Error> {
    let random = client::random_bytes::<33>()
        .map_err(|error| fail(format!("no randomness from the operating system: {error}")))?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&random[1..]);
    let keys = Keyring::<1>::new(Key::new(random[0], secret));
    let mut text = String::new();
    keys.write_text(&mut text)
        .map_err(|_| fail("could not format the key"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|error| fail(format!("cannot create {}: {error}", out.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| fail(format!("cannot write {}: {error}", out.display())))?;
    output::line(format_args!("wrote key {} to {}", random[0], out.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A client of the node at `node`.
pub fn client_for(node: SocketAddr, access: &Access) -> Result<Client, Error> {
    let keys = access.keys::<{ CLIENT_KEYS }>()?;
    Client::new(node, access.cluster_id(), keys).map_err(|error| fail(error.to_string()))
}

/// A client's failure, as the user reads it.
pub fn client_error(error: ClientError) -> Error {
    fail(error.to_string())
}

/// Sends one counter request and waits for its answer.
fn counter_request(client: &mut Client, request: Message) -> Result<u64, Error> {
    let id = match request {
        Message::Incr { request, .. } | Message::Get { request } => request,
        _ => return Err(fail("not a client request")),
    };
    let answer = client
        .request(
            kind::COUNTER,
            |area| dcounter::encode(&request, area),
            |payload| match dcounter::decode(payload) {
                Ok((Message::Value { request, value }, _)) if request == id => Some(Ok(value)),
                Ok((Message::Refused { request, reason }, _)) if request == id => Some(Err(reason)),
                _ => None,
            },
        )
        .map_err(client_error)?;
    answer.map_err(|reason| {
        fail(match reason {
            Refusal::Overflow => "the node's count would pass 2^64 - 1; nothing was added",
            Refusal::Unavailable => "the node cannot take writes (its storage failed or is full)",
            Refusal::Busy => "the node is busy; try again",
            _ => "the node refused the request",
        })
    })
}

/// `bedrock counter incr --node ADDR`: adds `by` through a node and prints the node's view of
/// the total once the increment is durable there.
pub fn remote_incr(node: SocketAddr, access: &Access, by: u64) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let value = counter_request(&mut client, Message::Incr { request, by })?;
    output::line(value)?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock counter get --node ADDR`: prints the node's view of the total.
pub fn remote_get(node: SocketAddr, access: &Access) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let request = client::random_u64().map_err(|error| fail(error.to_string()))?;
    let value = counter_request(&mut client, Message::Get { request })?;
    output::line(value)?;
    Ok(ExitCode::SUCCESS)
}
