//! The memory that message content may take across all SMTP sessions at once.
//!
//! Each session buffers a message whole before the spool stores it. `max_message_size` bounds
//! one message, `max_connections` the sessions, but their product (25 MiB x 256) is far more
//! than a help desk's server has. So the sessions share one [`MessageMemory`]: a [`MemoryHold`]
//! grows with the buffer of the message being received and is released once the spool has the
//! message (or the message was refused). When the pool is spent, the content is read and
//! dropped and the client gets `452 4.3.1`; it retries later, as for a full spool.
//!
//! A hold alone may go over the cap: the pool refuses only while other holds take bytes too.
//! So a message up to `max_message_size` always gets through when it is the only one. That
//! keeps the rule deadlock-free and lets the cap be set below `max_message_size`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The byte budget shared by every session of a server (see the module documentation).
#[derive(Debug)]
pub struct MessageMemory {
    cap: AtomicUsize,
    used: AtomicUsize,
}

impl MessageMemory {
    /// A pool of `cap` bytes.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(MessageMemory {
            cap: AtomicUsize::new(cap),
            used: AtomicUsize::new(0),
        })
    }

    /// Change the cap (on reload). Holds over the new cap keep their bytes; new growth waits
    /// until enough is released.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Bytes held now, by all sessions.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

/// The bytes one message buffer holds from a [`MessageMemory`]; released on drop.
#[derive(Debug)]
pub struct MemoryHold {
    pool: Arc<MessageMemory>,
    bytes: usize,
}

impl MemoryHold {
    /// An empty hold on `pool`.
    pub fn new(pool: &Arc<MessageMemory>) -> Self {
        MemoryHold {
            pool: pool.clone(),
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grow the hold to `total` bytes (never shrinks it). False, and the hold unchanged, when
    /// that would take the pool over its cap while other holds take bytes too.
    pub fn grow_to(&mut self, total: usize) -> bool {
        let Some(more) = total.checked_sub(self.bytes).filter(|&more| more > 0) else {
            return true;
        };
        let cap = self.pool.cap();
        let mine = self.bytes;
        let taken = self
            .pool
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let after = used.checked_add(more)?;
                (after <= cap || used == mine).then_some(after)
            });
        if taken.is_ok() {
            self.bytes = total;
            metrics::gauge!(crate::metric_names::MESSAGE_MEMORY).increment(more as f64);
        }
        taken.is_ok()
    }

    /// Give every byte back (the buffer was dropped).
    pub fn release(&mut self) {
        if self.bytes > 0 {
            self.pool.used.fetch_sub(self.bytes, Ordering::SeqCst);
            metrics::gauge!(crate::metric_names::MESSAGE_MEMORY).decrement(self.bytes as f64);
            self.bytes = 0;
        }
    }
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_share_the_cap_and_give_it_back() {
        let pool = MessageMemory::new(100);
        let mut a = MemoryHold::new(&pool);
        let mut b = MemoryHold::new(&pool);
        assert!(a.grow_to(60));
        assert!(b.grow_to(40));
        assert_eq!(pool.in_use(), 100);
        // Full: neither may grow while the other holds bytes.
        assert!(!b.grow_to(41));
        assert!(!a.grow_to(61));
        assert_eq!((a.bytes(), b.bytes(), pool.in_use()), (60, 40, 100));
        drop(a);
        assert_eq!(pool.in_use(), 40);
        assert!(b.grow_to(100));
        b.release();
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_hold_alone_may_pass_the_cap() {
        let pool = MessageMemory::new(10);
        let mut a = MemoryHold::new(&pool);
        assert!(a.grow_to(5));
        assert!(a.grow_to(1000), "the only hold grows past the cap");
        let mut b = MemoryHold::new(&pool);
        assert!(!b.grow_to(1), "nothing left while the big one is held");
        drop(a);
        assert!(b.grow_to(10));
        assert!(b.grow_to(5));
        assert_eq!(b.bytes(), 10, "never shrinks");
        assert_eq!(pool.in_use(), 10);
    }

    #[test]
    fn a_smaller_cap_on_reload_stops_growth_until_released() {
        let pool = MessageMemory::new(100);
        let mut a = MemoryHold::new(&pool);
        let mut b = MemoryHold::new(&pool);
        assert!(a.grow_to(50));
        pool.set_cap(40);
        assert!(!b.grow_to(1));
        drop(a);
        assert!(b.grow_to(40));
        assert_eq!(pool.cap(), 40);
    }
}
