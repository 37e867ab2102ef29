//! The encryption envelope for records at rest and the keyed hashes used by lookup indexes.
//!
//! A sealed value is `header || ciphertext || tag` where the header is
//! `version (1) || key kind (1) || key id (8, big endian) || nonce (24)`. The cipher is
//! XChaCha20-Poly1305 with a random nonce. The associated data binds the first ten header bytes
//! (version, kind, key id) and the tree name and record key the value is stored under, so a
//! sealed value moved to another record (or with its key id edited) fails to open.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::{Result, StoreError};

/// Length of every key (data keys and the index key).
pub(crate) const KEY_LEN: usize = 32;

/// Raw key bytes.
pub(crate) type KeyBytes = [u8; KEY_LEN];

const VERSION: u8 = 1;
const KIND_PERSON: u8 = 1;
const KIND_SPOOL: u8 = 2;
const KIND_AGENT: u8 = 3;
const BOUND_LEN: usize = 1 + 1 + 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Length of the header in front of every sealed value.
pub(crate) const HEADER_LEN: usize = BOUND_LEN + NONCE_LEN;

/// Which key a sealed value is encrypted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyRef {
    /// A person's data key (`keys/person/<contact id>.key`).
    Person(u64),
    /// A spool key (`keys/spool/<epoch ms>.key`).
    Spool(u64),
    /// An agent's key (`keys/agent/<agent id>.key`), for the agent's name.
    Agent(u64),
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Person(id) => write!(f, "person/{id}"),
            KeyRef::Spool(id) => write!(f, "spool/{id}"),
            KeyRef::Agent(id) => write!(f, "agent/{id}"),
        }
    }
}

fn associated_data(bound: &[u8], tree: &str, record_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(bound.len() + tree.len() + 1 + record_key.len());
    aad.extend_from_slice(bound);
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(record_key);
    aad
}

/// Append a sealed value holding the concatenation of `parts` to `out`, encrypted under `key`
/// (named `key_ref`) and bound to `tree`/`record_key`.
pub(crate) fn seal_into(
    out: &mut Vec<u8>,
    key: &KeyBytes,
    key_ref: KeyRef,
    tree: &str,
    record_key: &[u8],
    parts: &[&[u8]],
) -> Result<()> {
    let (kind, id) = match key_ref {
        KeyRef::Person(id) => (KIND_PERSON, id),
        KeyRef::Spool(id) => (KIND_SPOOL, id),
        KeyRef::Agent(id) => (KIND_AGENT, id),
    };
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let start = out.len();
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len + TAG_LEN);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nonce);
    for part in parts {
        out.extend_from_slice(part);
    }
    let aad = associated_data(&out[start..start + BOUND_LEN], tree, record_key);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let tag = cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &aad,
            &mut out[start + HEADER_LEN..],
        )
        .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// A sealed value holding `plaintext`.
pub(crate) fn seal(
    key: &KeyBytes,
    key_ref: KeyRef,
    tree: &str,
    record_key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    seal_into(&mut out, key, key_ref, tree, record_key, &[plaintext])?;
    Ok(out)
}

/// The key a sealed value says it is encrypted under (read from its header, not verified).
/// A stub of a chunked value ([`crate::bulk`]) names its key in the same place.
pub(crate) fn key_ref(sealed: &[u8]) -> Result<KeyRef> {
    let stub = crate::bulk::is_stub(sealed);
    if !stub && sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(StoreError::Corrupt("sealed value too short".into()));
    }
    if !stub && sealed[0] != VERSION {
        return Err(StoreError::Corrupt(format!(
            "unknown envelope version {}",
            sealed[0]
        )));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&sealed[2..BOUND_LEN]);
    let id = u64::from_be_bytes(id);
    match sealed[1] {
        KIND_PERSON => Ok(KeyRef::Person(id)),
        KIND_SPOOL => Ok(KeyRef::Spool(id)),
        KIND_AGENT => Ok(KeyRef::Agent(id)),
        other => Err(StoreError::Corrupt(format!("unknown key kind {other}"))),
    }
}

/// Decrypt a sealed value stored under `tree`/`record_key` with `key`.
pub(crate) fn open(
    key: &KeyBytes,
    sealed: &[u8],
    tree: &str,
    record_key: &[u8],
) -> Result<Vec<u8>> {
    let key_ref = key_ref(sealed)?;
    let aad = associated_data(&sealed[..BOUND_LEN], tree, record_key);
    let nonce = XNonce::from_slice(&sealed[BOUND_LEN..HEADER_LEN]);
    let body_end = sealed.len() - TAG_LEN;
    let mut buf = sealed[HEADER_LEN..body_end].to_vec();
    let tag = Tag::from_slice(&sealed[body_end..]);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(nonce, &aad, &mut buf, tag)
        .map_err(|_| {
            StoreError::Corrupt(format!(
                "record {tree}/{} does not decrypt under key {key_ref}",
                hex::encode(record_key)
            ))
        })?;
    Ok(buf)
}

/// HMAC-SHA256 under the index key of a domain label and length-prefixed parts.
pub(crate) fn index_hash(index_key: &KeyBytes, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    // `new_from_slice` accepts any key length for HMAC; the fallback can never be taken.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(index_key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    mac.update(domain.as_bytes());
    mac.update(&[0]);
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Fresh key bytes from the operating system's random source.
pub(crate) fn random_key() -> Result<KeyBytes> {
    use rand::TryRngCore;
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| StoreError::Io(format!("no randomness for a key: {e}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let key = [7u8; KEY_LEN];
        let sealed = seal(&key, KeyRef::Person(42), "messages", b"k1", b"hello").unwrap();
        assert_eq!(key_ref(&sealed).unwrap(), KeyRef::Person(42));
        assert_eq!(open(&key, &sealed, "messages", b"k1").unwrap(), b"hello");
        // Bound to tree and record key.
        assert!(open(&key, &sealed, "messages", b"k2").is_err());
        assert!(open(&key, &sealed, "tickets", b"k1").is_err());
        // Wrong key.
        assert!(open(&[8u8; KEY_LEN], &sealed, "messages", b"k1").is_err());
        // Header tampering (key id) fails.
        let mut bad = sealed.clone();
        bad[9] ^= 1;
        assert!(open(&key, &bad, "messages", b"k1").is_err());
        // Ciphertext tampering fails.
        let mut bad = sealed.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(open(&key, &bad, "messages", b"k1").is_err());
        // The plaintext is not in the output.
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        // Random nonces: sealing twice differs.
        let again = seal(&key, KeyRef::Person(42), "messages", b"k1", b"hello").unwrap();
        assert_ne!(sealed, again);
    }

    #[test]
    fn short_or_unknown_is_corrupt() {
        assert!(matches!(key_ref(b"x"), Err(StoreError::Corrupt(_))));
        let key = [1u8; KEY_LEN];
        let mut sealed = seal(&key, KeyRef::Spool(1), "spool", b"", b"").unwrap();
        sealed[0] = 9;
        assert!(matches!(key_ref(&sealed), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn index_hash_is_keyed_and_unambiguous() {
        let a = index_hash(&[1u8; 32], "contact", &[b"a@b"]);
        assert_ne!(a, index_hash(&[2u8; 32], "contact", &[b"a@b"]));
        assert_ne!(a, index_hash(&[1u8; 32], "msgid", &[b"a@b"]));
        assert_ne!(
            index_hash(&[1u8; 32], "x", &[b"ab", b"c"]),
            index_hash(&[1u8; 32], "x", &[b"a", b"bc"])
        );
    }
}
