//! API tokens: made by an admin (`mailroom token create`), shown once, stored only as a keyed
//! hash of their SHA-256.
//!
//! # Records
//!
//! - `api_tokens`: key token id (u64 big endian, from a counter in `meta`, so ids are small
//!   numbers people can type). Value: `frame(TokenMeta, [])`: name, role, created, expires,
//!   revoked, and the lookup key below. A token name is a label chosen by an admin (`ci`,
//!   `alice-laptop`), not personal data per se, so it is not sealed; it is never logged.
//! - `api_token_idx`: key `HMAC-SHA256(index key, "api-token", SHA-256(secret))`, value the token
//!   id. The secret itself is never stored, nor its plain SHA-256, so a copy of the database
//!   does not let anyone test guesses without `keys/index.key` (and a guess would have to find
//!   32 random bytes anyway).
//!
//! A secret is `mr_` followed by 32 random bytes in unpadded base64url (46 characters).
//! Verification reads two keys; revocation removes the index entry and marks the record, in one
//! transaction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use crate::crypto;
use crate::keys::now_secs;
use crate::records::{be, frame, from_be, unframe};
use crate::spool::{abort, tx_error};
use crate::{Result, Store, StoreError};

/// Tree of token records.
const TOKENS: &str = "api_tokens";
/// Tree of lookup keys.
const TOKEN_IDX: &str = "api_token_idx";
/// Key in `meta`: the next token id (u64 big endian); absent means 1.
const NEXT_TOKEN: &[u8] = b"next_api_token";
/// Prefix of every secret.
pub const TOKEN_PREFIX: &str = "mr_";
/// Length of a secret: the prefix and 43 base64url characters.
pub const TOKEN_LEN: usize = 3 + 43;
/// Longest token name, in characters.
pub const MAX_TOKEN_NAME: usize = 64;

/// What a token may do. An admin may do everything an agent may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Tickets, messages, attachments, feedback, quarantine, filter stats.
    Agent,
    /// Everything an agent may, and configuration and metrics.
    Admin,
}

impl Role {
    /// `agent` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may use a route that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role must be agent or admin (got {other:?})")),
        }
    }
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (for `token revoke`).
    pub id: u64,
    /// The agent it belongs to (its name, or `agent-N` once the agent was deleted).
    pub name: String,
    /// The agent's id.
    pub agent: u64,
    /// What it may do.
    pub role: Role,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which it no longer works, if it expires.
    pub expires_at: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl TokenInfo {
    /// Whether the token lets its holder in at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: u64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|at| now < at)
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The name is empty, too long or has control characters.
    #[error("invalid token name: {0}")]
    InvalidName(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Check a token name: 1 to [`MAX_TOKEN_NAME`] characters, no control characters, not only
/// spaces.
pub fn validate_token_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.trim().is_empty() {
        return Err("the name is empty");
    }
    if name.chars().count() > MAX_TOKEN_NAME {
        return Err("the name is longer than 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("the name has control characters");
    }
    Ok(())
}

/// `api_tokens` record.
#[derive(Debug, Serialize, Deserialize)]
struct TokenMeta {
    /// The agent (see `audit`): the name is kept there, sealed, not here.
    agent: u64,
    role: Role,
    created_at: u64,
    expires_at: Option<u64>,
    revoked: bool,
    /// Key of its `api_token_idx` entry.
    lookup: [u8; 32],
}

impl TokenMeta {
    fn info(self, id: u64, name: String) -> TokenInfo {
        TokenInfo {
            id,
            name,
            agent: self.agent,
            role: self.role,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked: self.revoked,
        }
    }
}

/// Unpadded base64url (RFC 4648 section 5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Whether `secret` has the shape of one of our secrets (checked before touching the store).
fn well_formed(secret: &str) -> bool {
    secret.len() == TOKEN_LEN
        && secret.starts_with(TOKEN_PREFIX)
        && secret[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    fn token_trees(&self) -> Result<(sled::Tree, sled::Tree)> {
        Ok((
            self.inner.db.open_tree(TOKENS)?,
            self.inner.db.open_tree(TOKEN_IDX)?,
        ))
    }

    fn token_lookup_key(&self, secret: &str) -> [u8; 32] {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        crypto::index_hash(self.inner.keys.index(), "api-token", &[&digest])
    }

    /// Make a token. Returns its record and the secret, which is shown once and never stored
    /// (only a keyed hash of its SHA-256 is). `expires_at` is in Unix seconds.
    pub fn token_create(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<u64>,
    ) -> std::result::Result<(TokenInfo, String), TokenError> {
        validate_token_name(name).map_err(TokenError::InvalidName)?;
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let secret = format!("{TOKEN_PREFIX}{}", base64url(&random));
        debug_assert!(well_formed(&secret));
        let lookup = self.token_lookup_key(&secret);
        let _gate = self.writing();
        let agent = self.agent_id(name)?;
        let meta = TokenMeta {
            agent,
            role,
            created_at: now_secs(),
            expires_at,
            revoked: false,
            lookup,
        };
        let value = frame(&meta, &[])?;
        let (tokens, idx) = self.token_trees()?;
        let id = (&self.inner.t.meta, &tokens, &idx)
            .transaction(|(meta_tree, tokens, idx)| {
                if idx.get(lookup)?.is_some() {
                    return Err(abort(StoreError::Corrupt(
                        "token lookup key collision".into(),
                    )));
                }
                let id = match meta_tree.get(NEXT_TOKEN)? {
                    Some(v) => from_be(&v).map_err(abort)?,
                    None => 1,
                };
                meta_tree.insert(NEXT_TOKEN, &be(id + 1))?;
                tokens.insert(&be(id), value.as_slice())?;
                idx.insert(&lookup, &be(id))?;
                Ok(id)
            })
            .map_err(tx_error)?;
        self.inner.flusher.durable_blocking(false)?;
        Ok((meta.info(id, name.to_string()), secret))
    }

    /// Every token, oldest first (revoked and expired ones too).
    pub fn token_list(&self) -> Result<Vec<TokenInfo>> {
        let (tokens, _) = self.token_trees()?;
        let mut out = Vec::new();
        for item in tokens.iter() {
            let (key, value) = item?;
            let (meta, _): (TokenMeta, _) = unframe(&value)?;
            let name = self.agent_name(meta.agent)?;
            out.push(meta.info(from_be(&key)?, name));
        }
        Ok(out)
    }

    /// Revoke token `id`: it stops working at once. `false` if there is no such token;
    /// revoking a revoked token again is `true` and changes nothing.
    pub fn token_revoke(&self, id: u64) -> Result<bool> {
        let _gate = self.writing();
        let found = self.token_mark_revoked(id)? || self.token_trees()?.0.contains_key(be(id))?;
        if found {
            // So that a restore of an older backup cannot bring the token back.
            self.inner.keys.ledger_append(&format!("token {id}"))?;
        }
        Ok(found)
    }

    /// Mark token `id` revoked (durably); whether it changed anything.
    pub(crate) fn token_mark_revoked(&self, id: u64) -> Result<bool> {
        let (tokens, idx) = self.token_trees()?;
        let changed = (&tokens, &idx)
            .transaction(|(tokens, idx)| {
                let Some(value) = tokens.get(be(id))? else {
                    return Ok(false);
                };
                let (mut meta, _): (TokenMeta, _) = unframe(&value).map_err(abort)?;
                if meta.revoked {
                    return Ok(false);
                }
                idx.remove(&meta.lookup)?;
                meta.revoked = true;
                tokens.insert(&be(id), frame(&meta, &[]).map_err(abort)?)?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if changed {
            self.inner.flusher.durable_blocking(false)?;
        }
        Ok(changed)
    }

    /// The token whose secret is `secret`, if it exists and is neither revoked nor expired at
    /// `now` (Unix seconds). Reads only; a malformed secret is refused without reading.
    pub fn token_verify(&self, secret: &str, now: u64) -> Result<Option<TokenInfo>> {
        if !well_formed(secret) {
            return Ok(None);
        }
        let lookup = self.token_lookup_key(secret);
        let (tokens, idx) = self.token_trees()?;
        let Some(id) = idx.get(lookup)? else {
            return Ok(None);
        };
        let id = from_be(&id)?;
        let Some(value) = tokens.get(be(id))? else {
            return Ok(None);
        };
        let (meta, _): (TokenMeta, _) = unframe(&value)?;
        if meta.lookup != lookup {
            return Err(StoreError::Corrupt(format!(
                "token {id} is indexed under another key"
            )));
        }
        if meta.revoked || meta.expires_at.is_some_and(|at| now >= at) {
            return Ok(None);
        }
        let name = self.agent_name(meta.agent)?;
        Ok(Some(meta.info(id, name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        // RFC 4648 section 10 vectors, unpadded.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 32]).len(), 43);
    }

    #[test]
    fn names_and_shapes() {
        assert!(validate_token_name("ci").is_ok());
        assert!(validate_token_name(" ").is_err());
        assert!(validate_token_name("a\nb").is_err());
        assert!(validate_token_name(&"x".repeat(65)).is_err());
        assert!(!well_formed("mr_short"));
        assert!(!well_formed(&format!("xx_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("mr_{}", "a/".repeat(21) + "a")));
        assert!(well_formed(&format!("mr_{}", "a".repeat(43))));
        assert!(Role::Admin.allows(Role::Agent));
        assert!(!Role::Agent.allows(Role::Admin));
        assert_eq!("Admin".parse::<Role>(), Ok(Role::Admin));
    }
}
