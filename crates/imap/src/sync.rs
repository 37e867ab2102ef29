//! One sync: every message above the last processed UID, in bounded batches, each spooled
//! durably before it is marked, moved or deleted on the server.

use futures_util::TryStreamExt;
use mailroom_spool::{Envelope, Source, SpoolError};
use tokio::sync::watch;

use crate::connect::{timed, Session};
use crate::error::{describe, ImapError};
use crate::status::{now_secs, AccountState, StatusCell, SyncProgress};
use crate::{AccountConfig, After, Appended, ImapStore, SyncState, TlsMode};

/// What the server can do, from `CAPABILITY` after login.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caps {
    pub(crate) idle: bool,
    pub(crate) moves: bool,
    pub(crate) uidplus: bool,
}

/// Ask the server what it can do.
pub(crate) async fn capabilities(
    session: &mut Session,
    config: &AccountConfig,
) -> Result<Caps, ImapError> {
    timed(config.limits.io_timeout, "CAPABILITY", async {
        let caps = session
            .capabilities()
            .await
            .map_err(|e| ImapError::protocol("CAPABILITY", e))?;
        Ok(Caps {
            idle: caps.has_str("IDLE"),
            moves: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        })
    })
    .await
}

/// `SELECT` the mailbox and work out where to start: the stored state when the mailbox's
/// UIDVALIDITY is the one stored, else the first message (what was spooled before is then
/// recognised by its content).
pub(crate) async fn select<S: ImapStore>(
    session: &mut Session,
    config: &AccountConfig,
    store: &S,
) -> Result<SyncState, ImapError> {
    let mailbox = timed(config.limits.io_timeout, "SELECT", async {
        session
            .select(&config.mailbox)
            .await
            .map_err(|e| ImapError::Mailbox {
                mailbox: config.mailbox.clone(),
                message: describe(e),
            })
    })
    .await?;
    let Some(uid_validity) = mailbox.uid_validity else {
        return Err(ImapError::Mailbox {
            mailbox: config.mailbox.clone(),
            message: "the server sent no UIDVALIDITY".to_owned(),
        });
    };
    if let After::Move(folder) = &config.after {
        // Make sure the target exists; "already exists" (or any refusal) is fine here: a move
        // that then fails says why.
        let _ = timed(config.limits.io_timeout, "CREATE", async {
            session
                .create(folder)
                .await
                .map_err(|e| ImapError::protocol("CREATE", e))
        })
        .await;
    }
    let identity = config.identity();
    let stored = store.load_state(&config.name, &identity).await?;
    Ok(match stored {
        Some(s) if s.uid_validity == uid_validity => s,
        Some(s) => {
            tracing::warn!(
                account = %config.name,
                old = s.uid_validity,
                new = uid_validity,
                "UIDVALIDITY changed: reading the whole mailbox again (messages spooled before are recognised by content, not spooled twice)"
            );
            SyncState {
                uid_validity,
                last_uid: 0,
            }
        }
        None => SyncState {
            uid_validity,
            last_uid: 0,
        },
    })
}

/// A UID set in IMAP syntax for sorted `uids`: runs become ranges (`1:5,7,9:12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// How the messages of one chunk are fetched: batches of at most `batch_bytes` (a bigger
/// message alone), and the messages too large to fetch at all.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) batches: Vec<Vec<u32>>,
    pub(crate) too_large: Vec<(u32, u64)>,
}

/// Split `(uid, size)` pairs (sorted by UID) into batches.
pub(crate) fn plan(sizes: &[(u32, u64)], batch_bytes: u64, max_size: u64) -> Plan {
    let mut plan = Plan::default();
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    for &(uid, size) in sizes {
        if size > max_size {
            plan.too_large.push((uid, size));
            continue;
        }
        if !batch.is_empty() && bytes.saturating_add(size) > batch_bytes {
            plan.batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        batch.push(uid);
        bytes = bytes.saturating_add(size);
    }
    if !batch.is_empty() {
        plan.batches.push(batch);
    }
    plan
}

/// The highest UID in the mailbox (`UID SEARCH UID *`), or `None` when it is empty.
async fn max_uid(session: &mut Session, config: &AccountConfig) -> Result<Option<u32>, ImapError> {
    timed(config.limits.io_timeout, "UID SEARCH", async {
        let found = session
            .uid_search("UID *")
            .await
            .map_err(|e| ImapError::protocol("UID SEARCH", e))?;
        Ok(found.into_iter().max())
    })
    .await
}

/// UIDs in `lo..=hi` present in the mailbox, sorted. At most `hi - lo + 1` of them.
async fn uids_in(
    session: &mut Session,
    config: &AccountConfig,
    lo: u32,
    hi: u32,
) -> Result<Vec<u32>, ImapError> {
    timed(config.limits.io_timeout, "UID SEARCH", async {
        let found = session
            .uid_search(format!("UID {lo}:{hi}"))
            .await
            .map_err(|e| ImapError::protocol("UID SEARCH", e))?;
        let mut uids: Vec<u32> = found
            .into_iter()
            .filter(|u| (lo..=hi).contains(u))
            .collect();
        uids.sort_unstable();
        Ok(uids)
    })
    .await
}

/// Sizes of the messages `uids` (sorted), as the server reports them.
async fn sizes(
    session: &mut Session,
    config: &AccountConfig,
    uids: &[u32],
) -> Result<Vec<(u32, u64)>, ImapError> {
    timed(config.limits.io_timeout, "UID FETCH RFC822.SIZE", async {
        let mut out = Vec::with_capacity(uids.len());
        let mut stream = session
            .uid_fetch(uid_set(uids), "(UID RFC822.SIZE)")
            .await
            .map_err(|e| ImapError::protocol("UID FETCH", e))?;
        while let Some(fetch) = stream
            .try_next()
            .await
            .map_err(|e| ImapError::protocol("UID FETCH", e))?
        {
            if let (Some(uid), Some(size)) = (fetch.uid, fetch.size) {
                if uids.binary_search(&uid).is_ok() {
                    out.push((uid, u64::from(size)));
                }
            }
        }
        out.sort_unstable();
        out.dedup_by_key(|(uid, _)| *uid);
        Ok(out)
    })
    .await
}

/// The raw bytes of the messages `uids` (sorted), without setting `\Seen` (`BODY.PEEK[]`).
async fn bodies(
    session: &mut Session,
    config: &AccountConfig,
    uids: &[u32],
) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
    let max = config.limits.max_message_size;
    timed(config.limits.io_timeout, "UID FETCH BODY.PEEK[]", async {
        let mut out: Vec<(u32, Vec<u8>)> = Vec::with_capacity(uids.len());
        let mut stream = session
            .uid_fetch(uid_set(uids), "(UID BODY.PEEK[])")
            .await
            .map_err(|e| ImapError::protocol("UID FETCH", e))?;
        while let Some(fetch) = stream
            .try_next()
            .await
            .map_err(|e| ImapError::protocol("UID FETCH", e))?
        {
            let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) else {
                continue;
            };
            if uids.binary_search(&uid).is_err() || out.iter().any(|(u, _)| *u == uid) {
                continue;
            }
            if body.len() as u64 > max {
                tracing::warn!(account = %config.name, uid, size = body.len(), "message larger than announced and than the limit: left on the server");
                continue;
            }
            out.push((uid, body.to_vec()));
        }
        out.sort_unstable_by_key(|(uid, _)| *uid);
        Ok(out)
    })
    .await
}

/// Drain the FETCH answers of a STORE.
async fn store_flags(
    session: &mut Session,
    set: &str,
    flags: &str,
    action: &'static str,
) -> Result<(), ImapError> {
    let after = |e| ImapError::After {
        action,
        message: describe(e),
    };
    let mut stream = session
        .uid_store(set, format!("+FLAGS.SILENT ({flags})"))
        .await
        .map_err(after)?;
    while stream.try_next().await.map_err(after)?.is_some() {}
    Ok(())
}

/// Expunge the `\Deleted` messages `set` (only those with UIDPLUS; else every `\Deleted`
/// message of the mailbox, as `EXPUNGE` does).
async fn expunge(
    session: &mut Session,
    caps: Caps,
    set: &str,
    action: &'static str,
) -> Result<(), ImapError> {
    let after = |e| ImapError::After {
        action,
        message: describe(e),
    };
    if caps.uidplus {
        let stream = session.uid_expunge(set).await.map_err(after)?;
        futures_util::pin_mut!(stream);
        while stream.try_next().await.map_err(after)?.is_some() {}
    } else {
        let stream = session.expunge().await.map_err(after)?;
        futures_util::pin_mut!(stream);
        while stream.try_next().await.map_err(after)?.is_some() {}
    }
    Ok(())
}

/// Tell the server what became of the spooled messages `uids`.
async fn mark(
    session: &mut Session,
    config: &AccountConfig,
    caps: Caps,
    uids: &[u32],
) -> Result<(), ImapError> {
    if uids.is_empty() {
        return Ok(());
    }
    let set = uid_set(uids);
    timed(
        config.limits.io_timeout,
        "marking spooled messages",
        async {
            match &config.after {
                After::Seen => store_flags(session, &set, "\\Seen", "\\Seen").await,
                After::Delete => {
                    store_flags(session, &set, "\\Deleted", "delete").await?;
                    expunge(session, caps, &set, "delete").await
                }
                After::Move(folder) if caps.moves => {
                    session
                        .uid_mv(&set, folder)
                        .await
                        .map_err(|e| ImapError::After {
                            action: "move",
                            message: describe(e),
                        })
                }
                After::Move(folder) => {
                    session
                        .uid_copy(&set, folder)
                        .await
                        .map_err(|e| ImapError::After {
                            action: "move",
                            message: describe(e),
                        })?;
                    store_flags(session, &set, "\\Deleted", "move").await?;
                    expunge(session, caps, &set, "move").await
                }
            }
        },
    )
    .await
}

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) spooled: u64,
    pub(crate) duplicates: u64,
    pub(crate) skipped: u64,
}

/// The envelope of a message fetched by `config`'s account.
fn envelope(config: &AccountConfig) -> Envelope {
    Envelope {
        source: Source::Imap,
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        peer: config.name.clone(),
        helo: String::new(),
        received_at: now_secs(),
        tls: config.tls != TlsMode::None,
    }
}

/// Fetch and spool the messages `uids`, then mark on the server those that were spooled.
/// Returns the UIDs the spool had no room for (backpressure: to be tried again later).
async fn batch<S: ImapStore>(
    session: &mut Session,
    config: &AccountConfig,
    store: &S,
    status: &StatusCell,
    caps: Caps,
    uids: &[u32],
    counts: &mut Counts,
) -> Result<Vec<u32>, ImapError> {
    let fetched = bodies(session, config, uids).await?;
    let got = fetched.len() as u64;
    // Concurrent appends share the spool's flushes (group commit).
    let results = futures_util::future::join_all(fetched.into_iter().map(|(uid, raw)| {
        let envelope = envelope(config);
        async move { (uid, store.append(&config.name, envelope, raw).await) }
    }))
    .await;
    let mut done = Vec::with_capacity(results.len());
    let mut full = Vec::new();
    let mut failure = None;
    let (mut spooled, mut duplicates) = (0u64, 0u64);
    for (uid, result) in results {
        match result {
            Ok(Appended::New(_)) => {
                spooled += 1;
                done.push(uid);
            }
            Ok(Appended::Duplicate) => {
                duplicates += 1;
                done.push(uid);
            }
            Err(SpoolError::Full) => full.push(uid),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    counts.spooled += spooled;
    counts.duplicates += duplicates;
    status.update(|s| {
        s.spooled += spooled;
        s.duplicates += duplicates;
    });
    // Only what is durably spooled is marked; a failure stops here, before the last UID moves
    // (the rest is fetched again and recognised).
    mark(session, config, caps, &done).await?;
    if let Some(e) = failure {
        return Err(ImapError::Spool(e));
    }
    status.update(|s| {
        if let Some(p) = s.progress.as_mut() {
            p.done += (uids.len() - full.len()) as u64;
        }
    });
    tracing::debug!(account = %config.name, messages = got, spooled, duplicates, spool_full = full.len(), "batch done");
    Ok(full)
}

/// How long to wait when the spool is full before trying again.
const SPOOL_FULL_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Fetch everything above `state.last_uid`, in windows of UIDs, chunks of messages and
/// batches of bytes; returns when the mailbox holds nothing newer, or when `stop` is set
/// (between batches).
pub(crate) async fn sync<S: ImapStore>(
    session: &mut Session,
    config: &AccountConfig,
    store: &S,
    status: &StatusCell,
    caps: Caps,
    state: &mut SyncState,
    stop: &watch::Receiver<bool>,
) -> Result<Counts, ImapError> {
    let limits = &config.limits;
    let window = limits.search_window.max(1);
    let chunk = limits.batch_messages.max(1);
    let mut counts = Counts::default();
    status.update(|s| {
        s.uid_validity = Some(state.uid_validity);
        s.last_uid = Some(state.last_uid);
    });
    loop {
        let Some(max) = max_uid(session, config).await? else {
            break;
        };
        if max <= state.last_uid {
            break;
        }
        // Count first (one window's UIDs in memory at a time), for progress.
        let mut total = 0u64;
        let mut lo = state.last_uid + 1;
        loop {
            let hi = lo.saturating_add(window - 1).min(max);
            total += uids_in(session, config, lo, hi).await?.len() as u64;
            if hi >= max {
                break;
            }
            lo = hi + 1;
        }
        status.update(|s| {
            s.state = AccountState::Syncing;
            s.progress = Some(SyncProgress { done: 0, total });
        });
        tracing::info!(account = %config.name, messages = total, from_uid = state.last_uid + 1, "fetching new messages");
        let mut lo = state.last_uid + 1;
        loop {
            let hi = lo.saturating_add(window - 1).min(max);
            let uids = uids_in(session, config, lo, hi).await?;
            for part in uids.chunks(chunk) {
                let plan = plan(
                    &sizes(session, config, part).await?,
                    limits.batch_bytes,
                    limits.max_message_size,
                );
                for (uid, size) in &plan.too_large {
                    tracing::warn!(account = %config.name, uid, size, limit = limits.max_message_size, "message larger than the size limit: left on the server, not fetched");
                }
                let skipped = plan.too_large.len() as u64;
                counts.skipped += skipped;
                status.update(|s| {
                    s.skipped += skipped;
                    if let Some(p) = s.progress.as_mut() {
                        p.done += skipped;
                    }
                });
                for b in &plan.batches {
                    let mut todo = b.clone();
                    loop {
                        if *stop.borrow() {
                            return Err(ImapError::Stopped);
                        }
                        todo =
                            batch(session, config, store, status, caps, &todo, &mut counts).await?;
                        if todo.is_empty() {
                            break;
                        }
                        // Backpressure, not a failure: wait for the pipeline to make room,
                        // then fetch what did not fit again.
                        tracing::debug!(account = %config.name, waiting = todo.len(), "spool full; waiting for room");
                        tokio::time::sleep(SPOOL_FULL_PAUSE).await;
                    }
                    // Every message of the batch is spooled and marked.
                    if let Some(&last) = b.last() {
                        state.last_uid = state.last_uid.max(last);
                        store
                            .save_state(&config.name, &config.identity(), *state)
                            .await?;
                        status.update(|s| s.last_uid = Some(state.last_uid));
                    }
                }
            }
            // Nothing else below `hi` (the rest was too large or is gone).
            if hi > state.last_uid {
                state.last_uid = hi;
                store
                    .save_state(&config.name, &config.identity(), *state)
                    .await?;
                status.update(|s| s.last_uid = Some(hi));
            }
            if hi >= max {
                break;
            }
            lo = hi + 1;
        }
    }
    status.update(|s| {
        s.progress = None;
        s.syncs += 1;
        s.last_sync_at = Some(now_secs());
        s.last_uid = Some(state.last_uid);
    });
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[1, 2, 3, 4, 5, 7, 9, 10, 11, 12]), "1:5,7,9:12");
        assert_eq!(uid_set(&[u32::MAX - 1, u32::MAX]), "4294967294:4294967295");
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_big_messages_are_skipped() {
        let sizes = [(1, 400), (2, 400), (3, 400), (4, 5000), (5, 2000), (6, 10)];
        let p = plan(&sizes, 1000, 3000);
        assert_eq!(p.batches, vec![vec![1, 2], vec![3], vec![5], vec![6]]);
        assert_eq!(p.too_large, vec![(4, 5000)]);
        // A message bigger than a batch (but within the limit) is a batch of its own.
        let p = plan(&[(1, 10), (2, 2500), (3, 10)], 1000, 3000);
        assert_eq!(p.batches, vec![vec![1], vec![2], vec![3]]);
        assert_eq!(plan(&[], 1000, 3000), Plan::default());
    }
}
