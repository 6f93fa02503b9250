//! When a closed pool has drained: the count of a pool's accepted jobs not
//! yet published, and the wake-up protocol of `Pool::join` on it.
//!
//! One atomic word holds both facts: the count of jobs in flight and a
//! `CLOSED` bit. Publishing a job is one `fetch_sub`; only the last job of a
//! *closed* pool takes the lock to notify. Why no wake-up is lost: every
//! change is a read-modify-write of that one word, so they are totally
//! ordered. A waiter sleeps only after reading, under the lock, `CLOSED`
//! with a count > 0; the `fetch_sub` that takes the count to 0 comes later
//! in that order, so it sees `CLOSED | 1` and notifies under the lock (after
//! the waiter sleeps). A waiter that read no `CLOSED` is woken by `close`,
//! which notifies under the lock after setting it. Loom model:
//! `tests/loom.rs`.

use std::time::Instant;

use crate::sync::{lock, wait_until, AtomicUsize, Condvar, Mutex, Ordering};

/// The `closed` bit of `Drain::state`; the bits below count jobs in flight.
const CLOSED: usize = 1 << (usize::BITS - 1);

#[derive(Default)]
pub(crate) struct Drain {
    /// `CLOSED` | jobs accepted and not yet published (ended and callbacks
    /// run).
    state: AtomicUsize,
    lock: Mutex<()>,
    drained: Condvar,
}

impl Drain {
    /// One more accepted job (under the budget lock, before any close).
    pub(crate) fn accept(&self) {
        self.state.fetch_add(1, Ordering::AcqRel);
    }

    /// One accepted job was published; wakes waiters when it was the last
    /// of a closed pool.
    pub(crate) fn published(&self) {
        if self.state.fetch_sub(1, Ordering::AcqRel) == CLOSED | 1 {
            let _guard = lock(&self.lock);
            self.drained.notify_all();
        }
    }

    /// Marks the pool closed (no `accept` follows) and wakes waiters.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let _guard = lock(&self.lock);
        self.drained.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    fn is_drained(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Waits until closed with nothing in flight; true if so by `deadline`.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        wait_until(&self.drained, lock(&self.lock), deadline, || {
            self.is_drained()
        })
    }
}
