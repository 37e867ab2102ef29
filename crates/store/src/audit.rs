//! The audit log, agents, and ticket status.
//!
//! - `audit`: key record id (u64 big endian, increasing). Value: postcard of [`AuditRecord`]:
//!   when, what kind of action, who (the CLI, the system's sweeper, or an API token and its
//!   agent, by id) and counts. Ids and numbers only: no address, subject or name.
//! - `agents`: key agent id (u64 big endian). Value: `frame(AgentMeta, sealed(name))` under the
//!   agent's own key (`keys/agent/<id>.key`). An agent is the name its API tokens carry; tickets
//!   and audit records name agents by id only, so deleting an agent (its record and its key)
//!   leaves `agent-<id>` everywhere it acted, and no copy of the name can be read again.
//! - `agent_idx`: key `HMAC(index key, "agent", name)`, value the agent id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::crypto::{self, KeyRef};
use crate::keys::now_secs;
use crate::model::{TicketId, TicketStatus, TicketSummary};
use crate::records::{be, decode, encode, frame, from_be, meta_key, tree, unframe, TicketMeta};
use crate::spool::{abort, tx_error};
use crate::{Result, Store, StoreError};

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// An operator on the command line (with access to the data directory or control socket).
    Cli,
    /// The server itself (the retention sweeper).
    System,
    /// An HTTP API token.
    Token {
        /// The token's id.
        token: u64,
        /// The agent the token belongs to.
        agent: u64,
    },
}

/// What kind of action an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A person was erased.
    Erase,
    /// A person's data was exported.
    Export,
    /// Retention rules were applied.
    Retention,
    /// A backup was written.
    Backup,
    /// A backup was restored.
    Restore,
    /// An agent was deleted.
    AgentDelete,
}

/// An audit record as stored (postcard).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuditRecord {
    at: u64,
    action: AuditAction,
    actor: StoredActor,
    counts: Vec<(String, u64)>,
}

/// [`Actor`] as stored: postcard cannot read back internally tagged enums.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum StoredActor {
    Cli,
    System,
    Token(u64, u64),
}

impl From<Actor> for StoredActor {
    fn from(a: Actor) -> Self {
        match a {
            Actor::Cli => StoredActor::Cli,
            Actor::System => StoredActor::System,
            Actor::Token { token, agent } => StoredActor::Token(token, agent),
        }
    }
}

/// An audit record as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id (increasing).
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    /// What kind of action.
    pub action: AuditAction,
    /// `cli`, `system` or `token`.
    pub actor: String,
    /// The API token, when a token did it.
    pub token: Option<u64>,
    /// The agent's name, or `agent-N` once that agent was deleted.
    pub agent: Option<String>,
    /// How many of each kind of record the action touched.
    pub counts: BTreeMap<String, u64>,
}

/// What [`Store::agent_delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDeletion {
    /// The agent's id (what tickets and the audit log now show, as `agent-N`).
    pub agent: u64,
    /// Tokens revoked (those not revoked already).
    pub tokens_revoked: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct AgentMeta {
    created_at: u64,
}

/// The tree name bound into a sealed agent name.
const AGENT_NAME_TREE: &str = tree::AGENTS;

impl Store {
    fn agent_hash(&self, name: &str) -> [u8; 32] {
        crypto::index_hash(self.inner.keys.index(), "agent", &[name.as_bytes()])
    }

    /// The id of agent `name`, made (with its key) when there is none yet.
    pub(crate) fn agent_id(&self, name: &str) -> Result<u64> {
        let t = &self.inner.t;
        let hash = self.agent_hash(name);
        if let Some(id) = t.agent_idx.get(hash)? {
            return from_be(&id);
        }
        let next = t.meta.update_and_fetch(meta_key::NEXT_AGENT, |old| {
            let n = old.and_then(|v| from_be(v).ok()).unwrap_or(1);
            Some(be(n + 1).to_vec())
        })?;
        let id = match next {
            Some(v) => from_be(&v)? - 1,
            None => return Err(StoreError::Corrupt("agent counter".into())),
        };
        let key = self.inner.keys.create_agent_key(id)?;
        let sealed = crypto::seal(
            &key,
            KeyRef::Agent(id),
            AGENT_NAME_TREE,
            &be(id),
            name.as_bytes(),
        )?;
        let value = frame(
            &AgentMeta {
                created_at: now_secs(),
            },
            &sealed,
        )?;
        let chosen = (&t.agents, &t.agent_idx)
            .transaction(|(agents, idx)| {
                if let Some(existing) = idx.get(hash)? {
                    return from_be(&existing).map_err(abort);
                }
                agents.insert(&be(id), value.as_slice())?;
                idx.insert(&hash, &be(id))?;
                Ok(id)
            })
            .map_err(tx_error)?;
        if chosen != id {
            // Another caller made the same agent first.
            self.inner.keys.destroy_agent_key(id)?;
        }
        Ok(chosen)
    }

    /// The name of agent `id`, or `agent-<id>` when it was deleted.
    pub(crate) fn agent_name(&self, id: u64) -> Result<String> {
        let gone = || format!("agent-{id}");
        let Some(value) = self.inner.t.agents.get(be(id))? else {
            return Ok(gone());
        };
        let (_meta, sealed): (AgentMeta, _) = unframe(&value)?;
        let key = match self.inner.keys.key(KeyRef::Agent(id)) {
            Ok(key) => key,
            Err(StoreError::KeyMissing(_)) => return Ok(gone()),
            Err(e) => return Err(e),
        };
        let name = crypto::open(&key, sealed, AGENT_NAME_TREE, &be(id))?;
        String::from_utf8(name).map_err(|_| StoreError::Corrupt(format!("agent {id} name")))
    }

    /// Append an audit record (durable with the next flush the caller waits for).
    pub(crate) fn audit(
        &self,
        action: AuditAction,
        actor: Actor,
        counts: &[(&str, u64)],
    ) -> Result<u64> {
        let record = AuditRecord {
            at: now_secs(),
            action,
            actor: actor.into(),
            counts: counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        };
        let value = encode(&record)?;
        let t = &self.inner.t;
        (&t.meta, &t.audit)
            .transaction(|(meta, audit)| {
                let id = match meta.get(meta_key::NEXT_AUDIT)? {
                    Some(v) => from_be(&v).map_err(abort)?,
                    None => 1,
                };
                meta.insert(meta_key::NEXT_AUDIT, &be(id + 1))?;
                audit.insert(&be(id), value.as_slice())?;
                Ok(id)
            })
            .map_err(tx_error)
    }

    /// Audit records, newest first, at most `limit`, older than id `before` when given.
    pub fn audit_list(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let t = &self.inner.t;
        let upper = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for item in t.audit.range(..be(upper)).rev() {
            if out.len() >= limit.max(1) {
                break;
            }
            let (k, v) = item?;
            let r: AuditRecord = decode(&v)?;
            let (actor, token, agent) = match r.actor {
                StoredActor::Cli => ("cli", None, None),
                StoredActor::System => ("system", None, None),
                StoredActor::Token(token, agent) => {
                    ("token", Some(token), Some(self.agent_name(agent)?))
                }
            };
            out.push(AuditEntry {
                id: from_be(&k)?,
                at: r.at,
                action: r.action,
                actor: actor.to_owned(),
                token,
                agent,
                counts: r.counts.into_iter().collect(),
            });
        }
        Ok(out)
    }

    /// Delete audit records older than `cutoff` (Unix seconds); with `dry_run`, only count.
    pub(crate) fn audit_expire(&self, cutoff: u64, dry_run: bool) -> Result<u64> {
        let t = &self.inner.t;
        let mut doomed = Vec::new();
        for item in t.audit.iter() {
            let (k, v) = item?;
            let r: AuditRecord = decode(&v)?;
            if r.at < cutoff {
                doomed.push(k);
            }
        }
        if !dry_run {
            let mut batch = sled::Batch::default();
            for k in &doomed {
                batch.remove(k.clone());
            }
            t.audit.apply_batch(batch)?;
        }
        Ok(doomed.len() as u64)
    }

    /// Delete agent `name`: revoke every token of theirs, remove their record and destroy
    /// their key, so tickets they closed and audit records of what they did show `agent-N`
    /// from now on (and in any restore of an older backup: the deletion is in the key
    /// directory's ledger). `None` if there is no such agent.
    pub fn agent_delete(&self, name: &str, actor: Actor) -> Result<Option<AgentDeletion>> {
        let _gate = self.writing();
        let t = &self.inner.t;
        let hash = self.agent_hash(name);
        let Some(id) = t.agent_idx.get(hash)? else {
            return Ok(None);
        };
        let agent = from_be(&id)?;
        let mut revoked = 0;
        for token in self.token_list()? {
            if token.agent == agent && !token.revoked {
                self.token_revoke(token.id)?;
                revoked += 1;
            }
        }
        (&t.agents, &t.agent_idx)
            .transaction(|(agents, idx)| {
                agents.remove(&be(agent))?;
                idx.remove(&hash)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.inner.flusher.durable_blocking(false)?;
        self.inner.keys.destroy_agent_key(agent)?;
        self.inner.keys.ledger_append(&format!("agent {agent}"))?;
        self.audit(
            AuditAction::AgentDelete,
            actor,
            &[("agents", 1), ("tokens_revoked", revoked)],
        )?;
        self.inner.flusher.durable_blocking(false)?;
        Ok(Some(AgentDeletion {
            agent,
            tokens_revoked: revoked,
        }))
    }

    /// Open or close ticket `id`. Closing records when and, for an API token, which agent.
    /// `None` if there is no such ticket.
    pub fn ticket_set_status(
        &self,
        id: TicketId,
        status: TicketStatus,
        actor: Actor,
    ) -> Result<Option<TicketSummary>> {
        let _gate = self.writing();
        let t = &self.inner.t;
        let now = now_secs();
        let found = t
            .tickets
            .transaction(|tickets| {
                let Some(value) = tickets.get(be(id.0))? else {
                    return Ok(false);
                };
                let (mut meta, sealed): (TicketMeta, _) = unframe(&value).map_err(abort)?;
                if meta.status != status {
                    meta.status = status;
                    match status {
                        TicketStatus::Closed => {
                            meta.closed_at = Some(now);
                            meta.closed_by = match actor {
                                Actor::Token { agent, .. } => Some(agent),
                                Actor::Cli | Actor::System => None,
                            };
                        }
                        TicketStatus::Open => {
                            meta.closed_at = None;
                            meta.closed_by = None;
                        }
                    }
                    tickets.insert(&be(id.0), frame(&meta, sealed).map_err(abort)?)?;
                }
                Ok(true)
            })
            .map_err(tx_error)?;
        if !found {
            return Ok(None);
        }
        self.inner.flusher.durable_blocking(false)?;
        Ok(self.ticket(id)?.map(|d| d.summary))
    }
}
