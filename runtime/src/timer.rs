//! Deadlines: one process-wide thread ("raptors-timer") expires queued jobs
//! at their deadline, so waiters learn promptly even while every worker is
//! busy. A forked child gets a timer (and thread) of its own on first use,
//! see `fork.rs`.
//!
//! Invariants: an entry exists only while its job may still be queued
//! (workers and cancellers remove it when the job leaves the queue), so
//! memory is bounded by the queued jobs with a deadline. The thread sleeps
//! until the earliest deadline, or indefinitely when there is none. Lock
//! order: a budget's lock may be held while taking the timer lock, never
//! the reverse (the timer fires with its own lock released).

use std::collections::BTreeMap;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Weak;
use std::time::Instant;

use crate::lock::{Condvar, Mutex, MutexGuard};

use crate::fork;
use crate::pool::Shared;
use crate::queue::QueueKey;

pub(crate) struct Timer {
    entries: Mutex<Entries>,
    changed: Condvar,
}

struct Entries {
    due: BTreeMap<(Instant, u64), Entry>,
    /// What the timer thread is doing, so `schedule` signals it only when a
    /// new deadline is earlier than its planned wake-up (removals never do:
    /// the thread at most wakes once for nothing).
    thread: ThreadState,
}

#[derive(Clone, Copy)]
enum ThreadState {
    Awake,
    SleepingUntil(Instant),
    SleepingForever,
}

struct Entry {
    pool: Weak<Shared>,
    key: QueueKey,
}

/// The timer of the current fork epoch, with its epoch (null: none yet).
/// A forked child has no timer thread and may find the parent's timer lock
/// held, so it makes a timer of its own (the parent's is leaked: its memory
/// may be locked by a thread that does not exist here).
static CURRENT: AtomicPtr<EpochTimer> = AtomicPtr::new(ptr::null_mut());

struct EpochTimer {
    epoch: u64,
    timer: Timer,
}

/// The process-wide timer of this fork epoch, its thread started on first use.
pub(crate) fn global() -> io::Result<&'static Timer> {
    let epoch = fork::epoch();
    loop {
        let current = CURRENT.load(Ordering::Acquire);
        // SAFETY: a published EpochTimer is leaked, never freed.
        if let Some(current) = unsafe { current.as_ref() } {
            if current.epoch == epoch {
                return Ok(&current.timer);
            }
        }
        let fresh: &'static EpochTimer = Box::leak(Box::new(EpochTimer {
            epoch,
            timer: Timer {
                entries: Mutex::new(Entries {
                    due: BTreeMap::new(),
                    thread: ThreadState::Awake,
                }),
                changed: Condvar::new(),
            },
        }));
        let fresh_ptr = fresh as *const EpochTimer as *mut EpochTimer;
        match CURRENT.compare_exchange(current, fresh_ptr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let spawned = std::thread::Builder::new()
                    .name("raptors-timer".to_owned())
                    .spawn(move || fresh.timer.run());
                if let Err(err) = spawned {
                    // Unpublish, so the next pool tries again; no pool holds it.
                    let _ = CURRENT.compare_exchange(
                        fresh_ptr,
                        current,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    return Err(err);
                }
                return Ok(&fresh.timer);
            }
            Err(_) => {
                // Another thread published first.
                // SAFETY: `fresh` was never shared: no thread runs it, no pool holds it.
                drop(unsafe { Box::from_raw(fresh_ptr) });
            }
        }
    }
}

impl Timer {
    /// Expires the job `key` of `pool` at `deadline` unless it left the
    /// queue first.
    pub(crate) fn schedule(&self, deadline: Instant, key: QueueKey, id: u64, pool: Weak<Shared>) {
        let mut entries = self.entries.lock();
        entries.due.insert((deadline, id), Entry { pool, key });
        let signal = match entries.thread {
            ThreadState::Awake => false,
            ThreadState::SleepingUntil(wake) => deadline < wake,
            ThreadState::SleepingForever => true,
        };
        if signal {
            entries.thread = ThreadState::Awake;
            self.changed.notify_one();
        }
    }

    /// Forgets the entry of a job that left the queue.
    pub(crate) fn remove(&self, deadline: Instant, id: u64) {
        self.entries.lock().due.remove(&(deadline, id));
    }

    fn run(&self) {
        let mut entries = self.entries.lock();
        loop {
            let now = Instant::now();
            let due = take_due(&mut entries.due, now);
            if !due.is_empty() {
                MutexGuard::unlocked(&mut entries, || {
                    for entry in due {
                        if let Some(pool) = entry.pool.upgrade() {
                            pool.expire(&entry.key);
                        }
                    }
                });
                continue;
            }
            match entries.due.first_key_value() {
                Some((&(deadline, _), _)) => {
                    entries.thread = ThreadState::SleepingUntil(deadline);
                    self.changed.wait_until(&mut entries, deadline);
                }
                None => {
                    entries.thread = ThreadState::SleepingForever;
                    self.changed.wait(&mut entries);
                }
            }
            entries.thread = ThreadState::Awake;
        }
    }
}

fn take_due(entries: &mut BTreeMap<(Instant, u64), Entry>, now: Instant) -> Vec<Entry> {
    let mut due = Vec::new();
    while let Some(first) = entries.first_entry() {
        if first.key().0 > now {
            break;
        }
        due.push(first.remove());
    }
    due
}
