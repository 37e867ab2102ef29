//! Large sealed values kept out of the record trees' pages.
//!
//! sled 0.34 splits a leaf by item count (16), not by size, keeps a page bigger than ~128 KiB
//! in a blob file that its cache accounts as a ~20-byte pointer (so it is never evicted), and
//! rewrites a leaf whole when it consolidates it. Message bodies and attachments stored inline
//! made memory grow with the mail written (30 messages of 20 MB: 2.2 GiB RSS) and made every
//! insert of a large message rewrite a leaf of up to 17 of them (docs/memory.md).
//!
//! So a sealed value over [`INLINE_MAX`] bytes is stored as chunks of at most [`CHUNK`] bytes in
//! the `bulk` tree, and its record holds a stub instead: leaves of chunks stay well under the
//! blob threshold, inline in the log and accounted by the cache, so `store.cache_mb` bounds
//! memory again.
//!
//! A stub is `STUB_VERSION (1) || key kind (1) || key id (8) || generation (8) || length (8) ||
//! chunk count (4)`: the key reference sits where a sealed value has it, so
//! [`crate::crypto::key_ref`] reads either. Chunks are keyed by the binding the value was sealed
//! for (tree name, record key), the generation (the first 8 bytes of the value's random nonce)
//! and the chunk number. Every stow writes a new generation, so a value being replaced (erasure
//! re-seals spool entries) is never overwritten in place: the new chunks are written first, the
//! record is switched, and only then are the old chunks dropped. The concatenated chunks are the
//! sealed value itself, so its AEAD tag still authenticates every byte.
//!
//! Chunks are written with plain inserts before the transaction that inserts the record; sled's
//! log is ordered, so a durable record implies durable chunks. Where a record goes, its chunks
//! are dropped after the transaction (a crash in between leaves sealed chunks that nothing
//! points to: unreadable without their record's binding, and under a destroyed key once a
//! person is erased).

use std::borrow::Cow;

use serde::de::DeserializeOwned;

use crate::crypto;
use crate::records::unframe;
use crate::{Result, Store, StoreError};

/// Sealed values up to this many bytes stay in their record.
pub(crate) const INLINE_MAX: usize = 4 * 1024;
/// The most bytes in one chunk. A sled leaf splits past 16 items, but a merge of an underfull
/// leaf into its sibling can make one of ~20 until the next access splits it: 4 KiB chunks keep
/// even 30 of them with their keys under sled's blob threshold of 128 KiB.
pub(crate) const CHUNK: usize = 4 * 1024;
/// The first byte of a stub (a sealed value starts with its envelope version, 1).
pub(crate) const STUB_VERSION: u8 = 0xB1;
/// Length of a stub.
pub(crate) const STUB_LEN: usize = 1 + 1 + 8 + 8 + 8 + 4;

/// A decoded stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stub {
    generation: u64,
    len: u64,
    chunks: u32,
}

/// Whether `value` (a sealed value or a stub) is a stub.
pub(crate) fn is_stub(value: &[u8]) -> bool {
    value.len() == STUB_LEN && value[0] == STUB_VERSION
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn decode(stub: &[u8]) -> Stub {
    let mut c = [0u8; 4];
    c.copy_from_slice(&stub[26..30]);
    Stub {
        generation: u64_at(stub, 10),
        len: u64_at(stub, 18),
        chunks: u32::from_be_bytes(c),
    }
}

/// `tree || 0 || len(record_key) || record_key || generation`: the prefix of a value's chunks.
fn prefix(tree: &str, record_key: &[u8], generation: u64) -> Result<Vec<u8>> {
    let len = u8::try_from(record_key.len())
        .map_err(|_| StoreError::Corrupt("record key too long for a chunked value".into()))?;
    let mut p = Vec::with_capacity(tree.len() + 2 + record_key.len() + 8 + 4);
    p.extend_from_slice(tree.as_bytes());
    p.push(0);
    p.push(len);
    p.extend_from_slice(record_key);
    p.extend_from_slice(&generation.to_be_bytes());
    Ok(p)
}

fn chunk_key(prefix: &[u8], i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 4);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

impl Store {
    /// Store `sealed` (sealed for `tree`/`record_key`) for a record: returned as is when it is
    /// small, else written as chunks (not yet durable) and replaced by a stub.
    pub(crate) fn stow(&self, tree: &str, record_key: &[u8], sealed: Vec<u8>) -> Result<Vec<u8>> {
        if sealed.len() <= INLINE_MAX {
            return Ok(sealed);
        }
        if sealed.len() < crypto::HEADER_LEN || sealed[0] == STUB_VERSION {
            return Err(StoreError::Corrupt("not a sealed value".into()));
        }
        // The nonce (random, after the 10 bound bytes) names this generation.
        let generation = u64_at(&sealed, 10);
        let p = prefix(tree, record_key, generation)?;
        let chunks = u32::try_from(sealed.len().div_ceil(CHUNK))
            .map_err(|_| StoreError::Corrupt("value too large".into()))?;
        for (i, chunk) in sealed.chunks(CHUNK).enumerate() {
            self.inner.t.bulk.insert(chunk_key(&p, i as u32), chunk)?;
        }
        let mut stub = Vec::with_capacity(STUB_LEN);
        stub.push(STUB_VERSION);
        stub.extend_from_slice(&sealed[1..10]);
        stub.extend_from_slice(&generation.to_be_bytes());
        stub.extend_from_slice(&(sealed.len() as u64).to_be_bytes());
        stub.extend_from_slice(&chunks.to_be_bytes());
        Ok(stub)
    }

    /// The sealed value behind `value` (itself, unless it is a stub).
    pub(crate) fn unstow<'a>(
        &self,
        value: &'a [u8],
        tree: &str,
        record_key: &[u8],
    ) -> Result<Cow<'a, [u8]>> {
        if !is_stub(value) {
            return Ok(Cow::Borrowed(value));
        }
        let stub = decode(value);
        let p = prefix(tree, record_key, stub.generation)?;
        let len = usize::try_from(stub.len)
            .map_err(|_| StoreError::Corrupt("chunked value too large".into()))?;
        let mut out = Vec::with_capacity(len);
        for i in 0..stub.chunks {
            let chunk = self.inner.t.bulk.get(chunk_key(&p, i))?.ok_or_else(|| {
                StoreError::Corrupt(format!("{tree} record: chunk {i} of its value is missing"))
            })?;
            out.extend_from_slice(&chunk);
        }
        if out.len() != len {
            return Err(StoreError::Corrupt(format!(
                "{tree} record: its chunks hold {} bytes, not {len}",
                out.len()
            )));
        }
        Ok(Cow::Owned(out))
    }

    /// Drop the chunks behind `value` (nothing when it is not a stub). Call it once the record
    /// that held `value` is gone or holds another value.
    pub(crate) fn drop_stowed(&self, value: &[u8], tree: &str, record_key: &[u8]) -> Result<()> {
        if !is_stub(value) {
            return Ok(());
        }
        let stub = decode(value);
        let p = prefix(tree, record_key, stub.generation)?;
        // One remove per chunk, not a `sled::Batch`: sled writes a batch as a transaction, which
        // seals and writes the current log buffer twice (`roll_iobuf`, then the batch manifest)
        // - two more pwrite + sync_file_range per message on the accept path. Nothing needs the
        // removes to be atomic: an interrupted drop leaves unreachable chunks, as a failed one
        // does.
        for i in 0..stub.chunks {
            self.inner.t.bulk.remove(chunk_key(&p, i))?;
        }
        Ok(())
    }

    /// [`Store::drop_stowed`] where a failure only leaves unreachable chunks: logged.
    pub(crate) fn drop_stowed_logged(&self, value: &[u8], tree: &str, record_key: &[u8]) {
        if let Err(e) = self.drop_stowed(value, tree, record_key) {
            tracing::warn!(tree, error = %e, "cannot drop the chunks of a removed value");
        }
    }

    /// [`Store::drop_stowed`] for a record `frame(meta: M, sealed)` (a record that does not
    /// unframe has no chunks this can find).
    pub(crate) fn drop_framed<M: DeserializeOwned>(
        &self,
        record: &[u8],
        tree: &str,
        record_key: &[u8],
    ) -> Result<()> {
        match unframe::<M>(record) {
            Ok((_, sealed)) => self.drop_stowed(sealed, tree, record_key),
            Err(_) => Ok(()),
        }
    }

    /// [`Store::drop_framed`], logged like [`Store::drop_stowed_logged`].
    pub(crate) fn drop_framed_logged<M: DeserializeOwned>(
        &self,
        record: &[u8],
        tree: &str,
        record_key: &[u8],
    ) {
        if let Err(e) = self.drop_framed::<M>(record, tree, record_key) {
            tracing::warn!(tree, error = %e, "cannot drop the chunks of a removed value");
        }
    }
}
