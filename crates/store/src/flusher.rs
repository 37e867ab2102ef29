//! Group commit: one thread makes writes durable for every waiter at once.
//!
//! A writer inserts first and then enqueues a waiter, so the flush that completes it starts
//! after its insert. The thread takes every pending waiter, makes everything written so far
//! durable once (one [`flush_round`]), and completes them all: concurrent SMTP sessions share
//! one fsync.
//!
//! A round is: list sled's blob files ([`BlobSync::list`]), `Db::flush`, fdatasync of sled's
//! log file `db/db`, fsync of every blob file listed that was not synced before and then of the
//! `db/blobs` directory ([`BlobSync::sync`]). The first round also fsyncs the `db` directory and
//! the data directory, so that `db/db`, `db/blobs` and `db` themselves are durable. A waiter is
//! completed only after the whole round; any failure fails the round, and its waiters get the
//! error (SMTP answers 4xx).
//!
//! Why blob files: sled 0.34 writes a page whose serialized size exceeds a quarter of a segment
//! (~128 KiB) to its own file `db/blobs/<lsn>` (`write_blob` in `pagecache/blob_io.rs`) and
//! puts only the LSN in the log. It writes that file while it makes the log reservation (before
//! the log entry that points to it) and never syncs the file or the directory, so a message
//! over ~128 KiB would otherwise be acknowledged while it lives in page cache only.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, Notify};

use crate::{Result, StoreError};

type FlushResult = std::result::Result<(), String>;

enum Reply {
    Async(oneshot::Sender<FlushResult>),
    Blocking(mpsc::SyncSender<FlushResult>),
}

struct Waiter {
    reply: Reply,
    /// Whether this waiter appended to the spool (the pipeline is woken after the flush).
    spool_append: bool,
}

/// The group-commit flusher of one store. Dropping it stops and joins the thread.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

/// A pending durable-write confirmation for async callers.
pub(crate) struct AsyncWait(oneshot::Receiver<FlushResult>);

impl AsyncWait {
    /// Resolves once the flush that covers this write is done.
    pub(crate) async fn wait(self) -> Result<()> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Io("the store is closing".into())),
        }
    }
}

impl Flusher {
    /// Start the flusher thread for `db`, the sled database in directory `db_dir`; `notify` is
    /// woken after each flush that made a spool append durable.
    /// `log` is sled's log file (`db/db`), synced after every flush; the blob files in
    /// `db_dir/blobs` are synced after every flush too (see the module documentation).
    pub(crate) fn start(
        db: sled::Db,
        db_dir: &Path,
        log: Option<File>,
        notify: Arc<Notify>,
    ) -> Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let durable = Durable::new(db, db_dir, log);
        let thread = std::thread::Builder::new()
            .name("mailroom-store-flush".into())
            .spawn(move || run(durable, rx, counter, notify))
            .map_err(|e| StoreError::Io(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
        })
    }

    fn send(&self, waiter: Waiter) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(waiter).ok())
            .ok_or_else(|| StoreError::Io("the store is closing".into()))
    }

    /// Wait (blocking the thread) until a flush that starts after this call is done.
    pub(crate) fn durable_blocking(&self, spool_append: bool) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Waiter {
            reply: Reply::Blocking(tx),
            spool_append,
        })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Io("the store is closing".into())),
        }
    }

    /// Ask for a flush that starts after this call; await the result.
    pub(crate) fn durable_async(&self, spool_append: bool) -> Result<AsyncWait> {
        let (tx, rx) = oneshot::channel();
        self.send(Waiter {
            reply: Reply::Async(tx),
            spool_append,
        })?;
        Ok(AsyncWait(rx))
    }

    /// How many flushes the thread has done.
    pub(crate) fn count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has served everything queued.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store flusher thread panicked");
            }
        }
    }
}

fn run(
    mut durable: Durable,
    rx: mpsc::Receiver<Waiter>,
    flushes: Arc<AtomicU64>,
    notify: Arc<Notify>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = flush_round(&mut durable);
        flushes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "store flush failed");
        }
        let wake = result.is_ok() && batch.iter().any(|w| w.spool_append);
        for waiter in batch {
            match waiter.reply {
                Reply::Async(tx) => {
                    let _ = tx.send(result.clone());
                }
                Reply::Blocking(tx) => {
                    let _ = tx.send(result.clone());
                }
            }
        }
        if wake {
            // Wake every worker waiting now, and leave a permit for one that is about to wait.
            notify.notify_waiters();
            notify.notify_one();
        }
    }
}

/// What one flush round makes durable: the database, its log file, its blob files and the
/// directories that hold them.
struct Durable {
    db: sled::Db,
    /// sled's log file `db/db` (`None` only where no file is at hand).
    log: Option<File>,
    /// `db` and the data directory above it, fsynced once (by the first round that succeeds).
    dirs: Vec<PathBuf>,
    dirs_synced: bool,
    blobs: BlobSync,
}

impl Durable {
    fn new(db: sled::Db, db_dir: &Path, log: Option<File>) -> Durable {
        let mut dirs = vec![db_dir.to_path_buf()];
        if let Some(parent) = db_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(parent.to_path_buf());
        }
        Durable {
            db,
            log,
            dirs,
            dirs_synced: false,
            blobs: BlobSync::new(db_dir.join("blobs")),
        }
    }
}

/// One group-commit round: everything written before it started is durable when it returns
/// `Ok`.
fn flush_round(d: &mut Durable) -> FlushResult {
    if !d.dirs_synced {
        // The entries `db/db`, `db/blobs`, `db/conf` and `data/db`: created by sled and
        // `Store::open`, never fsynced by them.
        for dir in &d.dirs {
            fsync_dir(dir).map_err(|e| format!("fsync of {}: {e}", dir.display()))?;
        }
        d.dirs_synced = true;
    }
    // Listed before the flush, synced after it (see `BlobSync`).
    let listed = d
        .blobs
        .list()
        .map_err(|e| format!("listing {}: {e}", d.blobs.dir.display()))?;
    d.db.flush().map_err(|e| e.to_string())?;
    // sled 0.34 makes its log durable with sync_file_range(2) on Linux, which neither
    // flushes the disk's write cache nor the file's size: an fdatasync of the log file
    // after the flush does (fdatasync acts on the file, whatever the descriptor).
    if let Some(f) = &d.log {
        f.sync_data()
            .map_err(|e| format!("fdatasync of the log: {e}"))?;
    }
    d.blobs.sync(listed)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How old the `db/blobs` directory's mtime must have been, at the listing that saw it, for a
/// later round to trust an unchanged mtime and skip the listing (see [`BlobSync::list`]).
const BLOB_DIR_SETTLE: Duration = Duration::from_secs(2);

/// Makes sled's blob files (`db/blobs/<lsn>`) durable: each once, after the flush that covers
/// it, with an fsync of the directory after new ones.
///
/// Why list before the flush and sync after it: a blob file is created and written during its
/// log reservation, after sled has raised its `max_reserved_lsn` to cover it and while the
/// reservation holds a writer count on the log buffer (`reserve_inner` in
/// `pagecache/logger.rs`). `Db::flush` waits until the log is stable up to the
/// `max_reserved_lsn` it reads at its start, which needs every writer of those buffers to be
/// done. So every file listed before the flush is complete once the flush returns, whereas a
/// file seen after it may still be being written by a concurrent insert: syncing it then and
/// calling it synced would leave its tail unsynced for good. A waiter's own blob was complete
/// before the waiter was enqueued, hence before the listing of the round that serves it.
pub(crate) struct BlobSync {
    dir: PathBuf,
    /// Blob files fsynced by a round (their names: LSNs). Names that are gone (sled deletes
    /// blobs once unused) are pruned at each listing.
    synced: HashSet<u64>,
    /// The directory's mtime at a listing whose files are all in `synced` and at which that
    /// mtime was already older than [`BLOB_DIR_SETTLE`].
    settled: Option<SystemTime>,
    /// A new file was synced but the directory's fsync has not succeeded since.
    dir_unsynced: bool,
    settle: Duration,
    /// Directory listings done (for tests).
    listings: u64,
}

/// What [`BlobSync::list`] found, for [`BlobSync::sync`].
#[derive(Default)]
pub(crate) struct Listed {
    new: Vec<u64>,
    /// The directory's mtime, if it may be trusted by later rounds once `new` are synced.
    settled: Option<SystemTime>,
}

impl BlobSync {
    pub(crate) fn new(dir: PathBuf) -> BlobSync {
        BlobSync {
            dir,
            synced: HashSet::new(),
            settled: None,
            dir_unsynced: false,
            settle: BLOB_DIR_SETTLE,
            listings: 0,
        }
    }

    /// The blob files not synced yet; call it before `Db::flush`.
    ///
    /// A listing of thousands of old blobs at every flush would cost too much at hundreds of
    /// flushes a second, so it is skipped when the directory's mtime (nanoseconds) equals the
    /// one seen at the previous listing and that mtime was already older than
    /// [`BLOB_DIR_SETTLE`] at the time `now`, read just before that listing's `stat`.
    ///
    /// Why that is safe: creating (or removing) a file sets the directory's mtime, under the
    /// directory's lock, to the kernel's coarse clock at that moment, which lags the
    /// `SystemTime` clock by at most one tick (a few ms); a file system with one-second
    /// timestamps truncates it by less than one more second. A file the previous listing did not
    /// see was added after that listing took the directory's lock (which it does after `now`
    /// and after its `stat`), so it set the mtime to at least `now` - tick - 1 s: later than an
    /// mtime that was older than `now` - 2 s. The mtime has then changed and this round lists
    /// again. Removals change it too, which only costs a listing. What this trusts is that the
    /// wall clock is not stepped back by more than that margin between two rounds (and even
    /// then a skip needs the new mtime to equal the old one to the nanosecond). An mtime in
    /// the future is never trusted.
    pub(crate) fn list(&mut self) -> io::Result<Listed> {
        let now = SystemTime::now();
        let mtime = match std::fs::metadata(&self.dir) {
            Ok(meta) => meta.modified()?,
            // sled creates `blobs/` when it opens the database; without it there is no blob.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.synced.clear();
                self.settled = None;
                return Ok(Listed::default());
            }
            Err(e) => return Err(e),
        };
        if self.settled == Some(mtime) {
            return Ok(Listed {
                new: Vec::new(),
                settled: Some(mtime),
            });
        }
        self.settled = None;
        self.listings += 1;
        let mut present = HashSet::with_capacity(self.synced.len() + 4);
        let mut new = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            // sled names blobs by LSN and reads no other name (its recovery skips them too).
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            present.insert(lsn);
            if !self.synced.contains(&lsn) {
                new.push(lsn);
            }
        }
        self.synced.retain(|lsn| present.contains(lsn));
        let old_enough = mtime
            .checked_add(self.settle)
            .is_some_and(|settled_at| settled_at < now);
        Ok(Listed {
            new,
            settled: old_enough.then_some(mtime),
        })
    }

    /// fsync the files `listed` (call it after `Db::flush`), then the directory if any file was
    /// new. A file gone meanwhile (sled removed it) is skipped. On an error nothing is recorded
    /// as synced that was not, so the next round tries again.
    pub(crate) fn sync(&mut self, listed: Listed) -> FlushResult {
        for lsn in listed.new {
            let path = self.dir.join(lsn.to_string());
            match File::open(&path) {
                // The file is new: sync_all, so that its size is durable too.
                Ok(file) => file
                    .sync_all()
                    .map_err(|e| format!("fsync of {}: {e}", path.display()))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            self.synced.insert(lsn);
            self.dir_unsynced = true;
        }
        if self.dir_unsynced {
            fsync_dir(&self.dir).map_err(|e| format!("fsync of {}: {e}", self.dir.display()))?;
            self.dir_unsynced = false;
        }
        self.settled = listed.settled;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_files(dir: &Path) -> HashSet<u64> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn blob_files_are_synced_by_the_round_after_their_write() {
        let tmp = tempfile::tempdir().unwrap();
        let db_dir = tmp.path().join("db");
        let db = sled::Config::new().path(&db_dir).open().unwrap();
        let log = File::open(db_dir.join("db")).unwrap();
        let blobs = db_dir.join("blobs");
        let mut d = Durable::new(db.clone(), &db_dir, Some(log));
        // Short enough for a test, long enough to cover the coarse clock's tick.
        d.blobs.settle = Duration::from_millis(100);
        let tree = db.open_tree("t").unwrap();

        flush_round(&mut d).unwrap();
        assert!(d.dirs_synced);
        assert!(blob_files(&blobs).is_empty());

        tree.insert("big", vec![7u8; 300_000]).unwrap();
        flush_round(&mut d).unwrap();
        let on_disk = blob_files(&blobs);
        assert!(!on_disk.is_empty(), "a 300 KB value makes a blob file");
        assert_eq!(d.blobs.synced, on_disk);
        assert!(!d.blobs.dir_unsynced);

        // While the directory's mtime is recent every round lists it; once it is old enough
        // and unchanged, rounds skip the listing.
        std::thread::sleep(Duration::from_millis(250));
        flush_round(&mut d).unwrap();
        assert!(d.blobs.settled.is_some());
        let listings = d.blobs.listings;
        flush_round(&mut d).unwrap();
        flush_round(&mut d).unwrap();
        assert_eq!(
            d.blobs.listings, listings,
            "an unchanged, settled directory is not listed"
        );

        // A new blob right after a skipped listing is still found: its creation moves the
        // directory's mtime.
        tree.insert("bigger", vec![8u8; 400_000]).unwrap();
        flush_round(&mut d).unwrap();
        assert_eq!(d.blobs.listings, listings + 1);
        let on_disk = blob_files(&blobs);
        assert!(on_disk.len() >= 2, "{on_disk:?}");
        assert_eq!(d.blobs.synced, on_disk);

        // Names that are gone are pruned.
        let fake = blobs.join("999999999999");
        std::fs::write(&fake, b"x").unwrap();
        flush_round(&mut d).unwrap();
        assert!(d.blobs.synced.contains(&999_999_999_999));
        std::fs::remove_file(&fake).unwrap();
        flush_round(&mut d).unwrap();
        assert!(!d.blobs.synced.contains(&999_999_999_999));
        assert_eq!(d.blobs.synced, blob_files(&blobs));
    }

    #[test]
    fn a_missing_blob_directory_is_no_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = BlobSync::new(tmp.path().join("blobs"));
        let listed = b.list().unwrap();
        assert!(listed.new.is_empty());
        b.sync(listed).unwrap();
    }
}
