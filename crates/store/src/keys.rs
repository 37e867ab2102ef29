//! Key files under `DIR/keys/`: the index key, per-person data keys and rotating spool keys.
//!
//! Key files are written durably (temporary file, fsync, rename, fsync of the directory) with
//! mode 0600 in directories with mode 0700. They live outside the sled files so that deleting
//! one really destroys it (crypto-shredding).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::{random_key, KeyBytes, KeyRef, KEY_LEN};
use crate::{Result, StoreError};

/// Create `path` (and parents) if missing, and make it private (0700 on Unix).
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io_err(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(path, e))
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(path).map_err(|e| io_err(path, e))
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", path.display()))
}

/// fsync a directory so that a rename or unlink in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Open a new file for writing with mode 0600.
pub(crate) fn create_private_file(path: &Path, truncate_existing: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    if truncate_existing {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Write `bytes` to `dir/name` durably: temporary file, fsync, rename, fsync of `dir`.
/// Fails if `dir/name` already exists.
fn write_key_file(dir: &Path, name: &str, bytes: &KeyBytes) -> Result<()> {
    let path = dir.join(name);
    if path.exists() {
        return Err(StoreError::Io(format!(
            "{}: key file exists already",
            path.display()
        )));
    }
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = create_private_file(&tmp, true).map_err(|e| io_err(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    fsync_dir(dir)
}

/// Read a key file; `Ok(None)` if it does not exist.
fn read_key_file(path: &Path) -> Result<Option<KeyBytes>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut buf = Vec::with_capacity(KEY_LEN);
    file.read_to_end(&mut buf).map_err(|e| io_err(path, e))?;
    let key: KeyBytes = buf.as_slice().try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "{}: key file has {} bytes, not {KEY_LEN}",
            path.display(),
            buf.len()
        ))
    })?;
    Ok(Some(key))
}

/// Remove leftover `*.tmp` files of interrupted key writes.
fn remove_tmp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}

struct SpoolKeys {
    /// Loaded spool keys by id.
    loaded: HashMap<u64, Arc<KeyBytes>>,
    /// Ids of the spool key files on disk.
    on_disk: BTreeSet<u64>,
}

/// All keys of one store.
pub(crate) struct Keyring {
    keys_dir: PathBuf,
    person_dir: PathBuf,
    agent_dir: PathBuf,
    spool_dir: PathBuf,
    index: KeyBytes,
    person: Mutex<HashMap<u64, Arc<KeyBytes>>>,
    spool: Mutex<SpoolKeys>,
    spool_lifetime_ms: u64,
    /// Held shared by everything that writes sealed values into the spool or failed trees, and
    /// exclusively by the spool key sweep, so that the sweep never misses a key in use.
    gate: RwLock<()>,
}

/// Whether the index key must exist already (the store holds data hashed under it).
pub(crate) enum IndexKey {
    /// Create it if missing.
    CreateIfMissing,
    /// It must exist.
    MustExist,
}

impl Keyring {
    /// Open the key directory `keys_dir` (created if missing).
    pub(crate) fn open(keys_dir: &Path, index: IndexKey, spool_lifetime_secs: u64) -> Result<Self> {
        let person_dir = keys_dir.join("person");
        let spool_dir = keys_dir.join("spool");
        let agent_dir = keys_dir.join("agent");
        for dir in [keys_dir, &person_dir, &spool_dir, &agent_dir] {
            create_private_dir(dir)?;
            remove_tmp_files(dir)?;
        }
        let index_path = keys_dir.join("index.key");
        let index = match (read_key_file(&index_path)?, index) {
            (Some(key), _) => key,
            (None, IndexKey::CreateIfMissing) => {
                let key = random_key()?;
                write_key_file(keys_dir, "index.key", &key)?;
                key
            }
            (None, IndexKey::MustExist) => {
                return Err(StoreError::KeyMissing(index_path.display().to_string()))
            }
        };
        let mut on_disk = BTreeSet::new();
        for entry in fs::read_dir(&spool_dir).map_err(|e| io_err(&spool_dir, e))? {
            let entry = entry.map_err(|e| io_err(&spool_dir, e))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                on_disk.insert(id);
            }
        }
        Ok(Keyring {
            keys_dir: keys_dir.to_path_buf(),
            person_dir,
            agent_dir,
            spool_dir,
            index,
            person: Mutex::new(HashMap::new()),
            spool: Mutex::new(SpoolKeys {
                loaded: HashMap::new(),
                on_disk,
            }),
            spool_lifetime_ms: spool_lifetime_secs.saturating_mul(1000),
            gate: RwLock::new(()),
        })
    }

    /// The index key.
    pub(crate) fn index(&self) -> &KeyBytes {
        &self.index
    }

    pub(crate) fn gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn gate_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    fn person_path(&self, id: u64) -> PathBuf {
        self.person_dir.join(format!("{id}.key"))
    }

    /// Make a new data key for person (contact) `id`, durably.
    pub(crate) fn create_person_key(&self, id: u64) -> Result<Arc<KeyBytes>> {
        let key = random_key()?;
        write_key_file(&self.person_dir, &format!("{id}.key"), &key)?;
        let key = Arc::new(key);
        self.person
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, key.clone());
        Ok(key)
    }

    /// Delete the key file of person `id` (an unused key made for a contact that another
    /// transaction created first, or an erased person). Best effort for the unused case.
    pub(crate) fn destroy_person_key(&self, id: u64) -> Result<()> {
        self.person
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let path = self.person_path(id);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.person_dir),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// The key named by `key_ref`, or `KeyMissing`.
    pub(crate) fn key(&self, key_ref: KeyRef) -> Result<Arc<KeyBytes>> {
        match key_ref {
            KeyRef::Person(id) => {
                if let Some(key) = self
                    .person
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                {
                    return Ok(key.clone());
                }
                let key = read_key_file(&self.person_path(id))?
                    .ok_or_else(|| StoreError::KeyMissing(key_ref.to_string()))?;
                let key = Arc::new(key);
                self.person
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, key.clone());
                Ok(key)
            }
            KeyRef::Spool(id) => {
                let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
                self.spool_key_locked(&mut spool, id)
            }
            KeyRef::Agent(id) => Ok(Arc::new(
                read_key_file(&self.agent_dir.join(format!("{id}.key")))?
                    .ok_or_else(|| StoreError::KeyMissing(key_ref.to_string()))?,
            )),
        }
    }

    /// Make a new key for agent `id`, durably.
    pub(crate) fn create_agent_key(&self, id: u64) -> Result<Arc<KeyBytes>> {
        let key = random_key()?;
        write_key_file(&self.agent_dir, &format!("{id}.key"), &key)?;
        Ok(Arc::new(key))
    }

    /// Delete the key file of agent `id` (a deleted agent); nothing if it is gone already.
    pub(crate) fn destroy_agent_key(&self, id: u64) -> Result<()> {
        let path = self.agent_dir.join(format!("{id}.key"));
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.agent_dir),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Whether the key file of person `id` exists.
    pub(crate) fn person_key_exists(&self, id: u64) -> bool {
        self.person_path(id).exists()
    }

    /// Ids of the spool key files on disk, oldest first.
    pub(crate) fn spool_key_ids(&self) -> Vec<u64> {
        let spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        spool.on_disk.iter().copied().collect()
    }

    /// Make a new spool key now (whatever the age of the newest) and return it; the older
    /// ones stay until [`Keyring::destroy_spool_keys`].
    pub(crate) fn rotate_spool_key(&self) -> Result<(KeyRef, Arc<KeyBytes>)> {
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        self.new_spool_key_locked(&mut spool, now_ms())
    }

    /// Make a spool key (durably) newer than every other one.
    fn new_spool_key_locked(
        &self,
        spool: &mut SpoolKeys,
        now: u64,
    ) -> Result<(KeyRef, Arc<KeyBytes>)> {
        // Ids are creation times in milliseconds, kept strictly increasing.
        let id = match spool.on_disk.iter().next_back() {
            Some(&last) => now.max(last + 1),
            None => now,
        };
        let key = random_key()?;
        write_key_file(&self.spool_dir, &format!("{id}.key"), &key)?;
        let key = Arc::new(key);
        spool.on_disk.insert(id);
        spool.loaded.insert(id, key.clone());
        Ok((KeyRef::Spool(id), key))
    }

    /// Delete the spool key files `ids` (the caller made sure nothing durable uses them).
    pub(crate) fn destroy_spool_keys(&self, ids: &[u64]) -> Result<()> {
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        self.destroy_spool_keys_locked(&mut spool, ids)
    }

    fn destroy_spool_keys_locked(&self, spool: &mut SpoolKeys, ids: &[u64]) -> Result<()> {
        for &id in ids {
            let path = self.spool_dir.join(format!("{id}.key"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            spool.on_disk.remove(&id);
            spool.loaded.remove(&id);
        }
        fsync_dir(&self.spool_dir)
    }

    /// Append `line` to the destruction ledger `keys/ledger` (ids only, no personal data),
    /// durably. The ledger lives beside the keys, outside the database and its backups, so that
    /// a restore of an older backup re-applies every erasure, agent deletion and token
    /// revocation made since.
    pub(crate) fn ledger_append(&self, line: &str) -> Result<()> {
        let path = self.keys_dir.join("ledger");
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(|e| io_err(&path, e))?;
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err(&path, e))?;
        fsync_dir(&self.keys_dir)
    }

    /// The lines of the destruction ledger (empty if there is none).
    pub(crate) fn ledger(&self) -> Result<Vec<String>> {
        let path = self.keys_dir.join("ledger");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn spool_key_locked(&self, spool: &mut SpoolKeys, id: u64) -> Result<Arc<KeyBytes>> {
        if let Some(key) = spool.loaded.get(&id) {
            return Ok(key.clone());
        }
        let key = read_key_file(&self.spool_dir.join(format!("{id}.key")))?
            .ok_or_else(|| StoreError::KeyMissing(KeyRef::Spool(id).to_string()))?;
        let key = Arc::new(key);
        spool.loaded.insert(id, key.clone());
        Ok(key)
    }

    /// The spool key to seal new entries with: the newest one while it is within its lifetime,
    /// else a new one (made durably). The flag says whether a new key was made.
    pub(crate) fn current_spool_key(&self) -> Result<(KeyRef, Arc<KeyBytes>, bool)> {
        let now = now_ms();
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        let newest = spool.on_disk.iter().next_back().copied();
        if let Some(id) = newest {
            if now < id.saturating_add(self.spool_lifetime_ms) {
                let key = self.spool_key_locked(&mut spool, id)?;
                return Ok((KeyRef::Spool(id), key, false));
            }
        }
        let (key_ref, key) = self.new_spool_key_locked(&mut spool, now)?;
        Ok((key_ref, key, true))
    }

    /// Delete every spool key file that is past its lifetime and not in the set of keys in use
    /// that `scan` returns. `scan` runs while the exclusive gate is held (no new sealed values
    /// appear meanwhile); `persist` runs before any file is deleted and must make the state
    /// `scan` saw durable, so that a crash cannot bring back an entry whose key is gone.
    pub(crate) fn sweep_spool_keys(
        &self,
        scan: impl FnOnce() -> Result<HashSet<KeyRef>>,
        persist: impl FnOnce() -> Result<()>,
    ) -> Result<usize> {
        let _gate = self.gate_exclusive();
        let used = scan()?;
        let now = now_ms();
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        let doomed: Vec<u64> = spool
            .on_disk
            .iter()
            .copied()
            .filter(|&id| {
                id.saturating_add(self.spool_lifetime_ms) <= now
                    && !used.contains(&KeyRef::Spool(id))
            })
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        persist()?;
        self.destroy_spool_keys_locked(&mut spool, &doomed)?;
        Ok(doomed.len())
    }
}
