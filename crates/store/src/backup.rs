//! Backups and restores.
//!
//! A backup is a directory with `data.mrbk` (every tree of the database: a stream of
//! `tree`/`entry` records, then the SHA-256 of the stream) and `manifest.json` (format, time,
//! entry counts per tree, the checksum, and a check value of the index key). It is taken under
//! the maintenance gate, so it is one consistent state even while the server runs.
//!
//! A backup holds **no keys**. Personal data in it is sealed under per-person keys that stay in
//! the data directory's `keys/`, so erasing a person (destroying their key) reaches every old
//! backup too. The price: a backup can only be restored next to the `keys/` directory it was
//! taken with (keep `keys/` on storage that is replicated, not snapshotted, so that a deleted
//! key stays deleted). `keys/ledger` lists, by id only, every person erased, agent deleted and
//! token revoked; a restore re-applies it, so an older backup cannot bring any of them back.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{Actor, AuditAction};
use crate::crypto;
use crate::keys::{create_private_dir, create_private_file, fsync_dir, io_err, now_secs};
use crate::records::{be, from_be, tree, unframe, ContactMeta, SpoolMeta};
use crate::{Result, Store, StoreError, StoreOptions};

const MAGIC: &[u8; 8] = b"MRBK\x00\x00\x00\x01";
const TAG_TREE: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_END: u8 = 0;
/// Largest key or value a backup may hold (sled values are far smaller in practice).
const MAX_ITEM: u32 = 1 << 30;

/// `manifest.json` of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// `mailroom-backup-1`.
    pub format: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Entries per tree.
    pub trees: BTreeMap<String, u64>,
    /// Size of `data.mrbk` in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of `data.mrbk` without its last 32 bytes (which hold it).
    pub sha256: String,
    /// A keyed hash that tells whether a `keys/` directory is the one this backup needs.
    pub index_key_check: String,
}

/// What [`Store::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Entries written.
    pub entries: u64,
    /// Where the database that was there before went (delete it once satisfied).
    pub previous_db: Option<PathBuf>,
    /// People erased since the backup (or whose key is gone), erased again.
    pub contacts_erased: u64,
    /// Agents deleted since the backup, deleted again.
    pub agents_deleted: u64,
    /// Tokens revoked since the backup, revoked again.
    pub tokens_revoked: u64,
    /// Unprocessed spool entries whose spool key is gone (unreadable, removed).
    pub spool_unreadable: u64,
}

fn write_item(out: &mut impl Write, hash: &mut Sha256, bytes: &[u8]) -> std::io::Result<()> {
    let len = (bytes.len() as u32).to_be_bytes();
    hash.update(len);
    hash.update(bytes);
    out.write_all(&len)?;
    out.write_all(bytes)
}

fn index_key_check(store_index: &crypto::KeyBytes) -> String {
    hex::encode(crypto::index_hash(store_index, "backup-check", &[]))
}

impl Store {
    /// Write a consistent backup of the database into directory `out` (created; must not hold
    /// a backup already). Writes wait while it runs.
    pub fn backup(&self, out: &Path, actor: Actor) -> Result<BackupReport> {
        create_private_dir(out)?;
        let data_path = out.join("data.mrbk");
        if data_path.exists() {
            return Err(StoreError::Io(format!(
                "{} already holds a backup",
                out.display()
            )));
        }
        let tmp = out.join("data.mrbk.tmp");
        let file = create_private_file(&tmp, true).map_err(|e| io_err(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut hash = Sha256::new();
        let mut trees = BTreeMap::new();
        let io = |e: std::io::Error| io_err(&tmp, e);
        {
            let _gate = self.maintenance();
            w.write_all(MAGIC).map_err(io)?;
            hash.update(MAGIC);
            let mut names = self.inner.db.tree_names();
            names.sort();
            for name in names {
                let t = self.inner.db.open_tree(&name)?;
                w.write_all(&[TAG_TREE]).map_err(io)?;
                hash.update([TAG_TREE]);
                write_item(&mut w, &mut hash, &name).map_err(io)?;
                let mut n = 0u64;
                for item in t.iter() {
                    let (k, v) = item?;
                    w.write_all(&[TAG_ENTRY]).map_err(io)?;
                    hash.update([TAG_ENTRY]);
                    write_item(&mut w, &mut hash, &k).map_err(io)?;
                    write_item(&mut w, &mut hash, &v).map_err(io)?;
                    n += 1;
                }
                trees.insert(String::from_utf8_lossy(&name).into_owned(), n);
            }
            w.write_all(&[TAG_END]).map_err(io)?;
            hash.update([TAG_END]);
        }
        let digest: [u8; 32] = hash.finalize().into();
        w.write_all(&digest).map_err(io)?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        drop(file);
        fs::rename(&tmp, &data_path).map_err(|e| io_err(&data_path, e))?;
        let report = BackupReport {
            format: "mailroom-backup-1".into(),
            created_at: now_secs(),
            trees,
            bytes,
            sha256: hex::encode(digest),
            index_key_check: index_key_check(self.inner.keys.index()),
        };
        let manifest_path = out.join("manifest.json");
        let mut f =
            create_private_file(&manifest_path, true).map_err(|e| io_err(&manifest_path, e))?;
        let json =
            serde_json::to_vec_pretty(&report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&manifest_path, e))?;
        fsync_dir(out)?;
        let entries: u64 = report.trees.values().sum();
        self.audit(AuditAction::Backup, actor, &[("entries", entries)])?;
        self.inner.flusher.durable_blocking(false)?;
        Ok(report)
    }

    /// Restore the backup in `backup` into data directory `dir`, which must hold the `keys/`
    /// the backup was taken with and must not be in use. The database there (if any) is moved
    /// aside, not deleted. Then every erasure, agent deletion and token revocation in the key
    /// ledger is applied again, and records whose key is gone are removed.
    pub fn restore(backup: &Path, dir: &Path, options: StoreOptions) -> Result<RestoreReport> {
        let manifest_path = backup.join("manifest.json");
        let manifest: BackupReport = serde_json::from_slice(
            &fs::read(&manifest_path).map_err(|e| io_err(&manifest_path, e))?,
        )
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", manifest_path.display())))?;
        if manifest.format != "mailroom-backup-1" {
            return Err(StoreError::Corrupt(format!(
                "{}: unknown backup format {:?}",
                manifest_path.display(),
                manifest.format
            )));
        }
        let data_path = backup.join("data.mrbk");
        verify(&data_path, &manifest)?;
        let index_path = dir.join("keys").join("index.key");
        if !index_path.exists() {
            return Err(StoreError::KeyMissing(format!(
                "{} (a restore needs the keys/ directory the backup was taken with; backups hold no keys)",
                index_path.display()
            )));
        }
        // Open (and lock) the store as it is, to check the keys and hold the lock while the
        // database is replaced.
        let previous = {
            let store = Store::open(dir, options.clone())?;
            if index_key_check(store.inner.keys.index()) != manifest.index_key_check {
                return Err(StoreError::KeyMissing(format!(
                    "{}: these keys are not the ones the backup was taken with",
                    index_path.display()
                )));
            }
            drop(store);
            let db = dir.join("db");
            let aside = dir.join(format!("db.before-restore-{}", now_secs()));
            fs::rename(&db, &aside).map_err(|e| io_err(&db, e))?;
            fsync_dir(dir)?;
            aside
        };
        let mut report = RestoreReport {
            previous_db: Some(previous),
            ..RestoreReport::default()
        };
        {
            let db_dir = dir.join("db");
            create_private_dir(&db_dir)?;
            let db = sled::Config::new()
                .path(&db_dir)
                .cache_capacity(options.cache_capacity_bytes)
                .open()?;
            let file = File::open(&data_path).map_err(|e| io_err(&data_path, e))?;
            let len = file.metadata().map_err(|e| io_err(&data_path, e))?.len();
            let mut r = BufReader::with_capacity(1 << 20, file.take(len.saturating_sub(32)));
            let io = |e: std::io::Error| io_err(&data_path, e);
            let mut magic = [0u8; 8];
            r.read_exact(&mut magic).map_err(io)?;
            let mut current: Option<sled::Tree> = None;
            let mut batch = sled::Batch::default();
            let mut pending = 0usize;
            loop {
                let mut tag = [0u8; 1];
                r.read_exact(&mut tag).map_err(io)?;
                match tag[0] {
                    TAG_TREE => {
                        if let Some(t) = &current {
                            t.apply_batch(std::mem::take(&mut batch))?;
                            pending = 0;
                        }
                        let name = read_item(&mut r).map_err(io)?;
                        current = Some(db.open_tree(name)?);
                    }
                    TAG_ENTRY => {
                        let k = read_item(&mut r).map_err(io)?;
                        let v = read_item(&mut r).map_err(io)?;
                        batch.insert(k, v);
                        report.entries += 1;
                        pending += 1;
                        if pending >= 10_000 {
                            if let Some(t) = &current {
                                t.apply_batch(std::mem::take(&mut batch))?;
                            }
                            pending = 0;
                        }
                    }
                    TAG_END => break,
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "{}: unknown record tag {other}",
                            data_path.display()
                        )))
                    }
                }
            }
            if let Some(t) = &current {
                t.apply_batch(batch)?;
            }
            db.flush()?;
        }
        let store = Store::open(dir, options)?;
        store.reconcile(&mut report)?;
        store.audit(
            AuditAction::Restore,
            Actor::Cli,
            &[
                ("entries", report.entries),
                ("contacts_erased", report.contacts_erased),
                ("agents_deleted", report.agents_deleted),
                ("tokens_revoked", report.tokens_revoked),
                ("spool_unreadable", report.spool_unreadable),
            ],
        )?;
        store.inner.flusher.durable_blocking(false)?;
        Ok(report)
    }

    /// Apply the key ledger and drop what no key can open (after a restore).
    fn reconcile(&self, report: &mut RestoreReport) -> Result<()> {
        let _gate = self.maintenance();
        let t = &self.inner.t;
        let mut contacts = std::collections::BTreeSet::new();
        for line in self.inner.keys.ledger()? {
            let mut parts = line.split_whitespace();
            let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            match kind {
                "contact" => {
                    contacts.insert(id);
                }
                "agent" => {
                    if t.agents.remove(be(id))?.is_some() {
                        report.agents_deleted += 1;
                    }
                    for item in t.agent_idx.iter() {
                        let (k, v) = item?;
                        if from_be(&v)? == id {
                            t.agent_idx.remove(k)?;
                        }
                    }
                }
                "token" => {
                    report.tokens_revoked += u64::from(self.token_mark_revoked(id)?);
                }
                _ => {}
            }
        }
        // Any contact whose key is gone is erased too (its records cannot be read anyway).
        for item in t.contacts.iter() {
            let (k, v) = item?;
            let id = from_be(&k)?;
            let (_m, _): (ContactMeta, _) = unframe(&v)?;
            if !self.inner.keys.person_key_exists(id) {
                contacts.insert(id);
            }
        }
        for c in contacts {
            let r = self.erase_locked(Some(c), None, false)?;
            if r.contacts + r.messages.len() as u64 + r.tickets.len() as u64 > 0 {
                report.contacts_erased += 1;
            }
        }
        // Spool entries sealed under a key that is gone can never be processed.
        for item in t.spool.iter() {
            let (k, v) = item?;
            let (_m, sealed): (SpoolMeta, _) = unframe(&v)?;
            if let Err(e) = self.open_sealed(sealed, tree::SPOOL, &k) {
                let StoreError::KeyMissing(_) = e else {
                    return Err(e);
                };
                t.spool.remove(&k)?;
                self.drop_stowed_logged(sealed, tree::SPOOL, &k);
                self.inner
                    .spool_count
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                report.spool_unreadable += 1;
            }
        }
        self.inner.flusher.durable_blocking(false)?;
        Ok(())
    }
}

fn read_item(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_ITEM {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "item too large",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Check `data.mrbk` against its trailing checksum and the manifest before touching anything.
fn verify(path: &Path, manifest: &BackupReport) -> Result<()> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len < 8 + 1 + 32 || len != manifest.bytes {
        return Err(StoreError::Corrupt(format!(
            "{}: {len} bytes, the manifest says {}",
            path.display(),
            manifest.bytes
        )));
    }
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want])
            .map_err(|e| io_err(path, e))?;
        hash.update(&buf[..want]);
        left -= want as u64;
    }
    let mut stored = [0u8; 32];
    r.read_exact(&mut stored).map_err(|e| io_err(path, e))?;
    let digest: [u8; 32] = hash.finalize().into();
    if digest != stored || hex::encode(digest) != manifest.sha256 {
        return Err(StoreError::Corrupt(format!(
            "{}: checksum mismatch (the backup is damaged)",
            path.display()
        )));
    }
    Ok(())
}
