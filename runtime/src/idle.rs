//! The idle protocol of a budget's worker threads: who is idle, who wakes
//! whom, and why a wake-up is never lost.
//!
//! All of [`Idle`] lives under the budget's lock. An idle worker is in
//! exactly one of `spinner` (at most one spins at a time: the cores are
//! shared with the submitters) or `sleepers`, until a waker removes it and
//! stores the reason in its [`Slot`]: [`Wake::Run`] (a submitter handed it
//! a job, already started in its name: a job that finds an idle worker
//! starts at once and never enters a queue), [`Wake::Queue`] (counted in
//! `claimed`: it will look at the queues) or [`Wake::Help`] (it helps with
//! a running job's rayon work first, not counted). A worker consumes that
//! reason when it wakes and uncounts itself in its next critical section.
//!
//! Invariants:
//! * `claimed <= eligible` is restored after every change: a waker claims
//!   one more idle worker only while the budget has more jobs that a free
//!   thread may start (`Sched::eligible`) than claimed workers, so a waker
//!   wakes at most one worker per job, and a worker that ends a job or
//!   takes one re-checks, so no eligible job waits while a worker sleeps;
//! * a wake can never be lost: the reason is stored (under the budget
//!   lock) before the slot is notified (after the lock is released), and
//!   the worker re-checks its slot under the slot lock before sleeping.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::lock::{Condvar, Mutex};

use crate::scheduler::Taken;

/// Why a worker was woken (stored in its slot; `None` = not woken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Wake {
    None = 0,
    /// Look at the queues (a job arrived, a cap freed, or the budget closed).
    Queue = 1,
    /// Help with the rayon work of a running job, then look at the queues.
    Help = 2,
    /// Run the job handed over in the slot.
    Run = 3,
}

/// Per-worker parking spot.
pub(crate) struct Slot {
    wake: AtomicU8,
    /// The job handed over with [`Wake::Run`]: written by the waker under
    /// the budget lock while the worker is idle, taken by the worker once
    /// it consumed `Wake::Run`, so never contended.
    handoff: Mutex<Option<Taken>>,
    lock: Mutex<()>,
    signal: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Slot {
            wake: AtomicU8::new(Wake::None as u8),
            handoff: Mutex::new(None),
            lock: Mutex::new(()),
            signal: Condvar::new(),
        }
    }

    /// Records why the worker must wake. Called by the waker that removed the
    /// worker from the idle lists, under the budget lock.
    fn set(&self, why: Wake) {
        self.wake.store(why as u8, Ordering::Release);
    }

    /// Wakes the worker if it sleeps. Called after [`set`](Self::set), with
    /// no budget lock held.
    pub(crate) fn notify(&self) {
        let _guard = self.lock.lock();
        self.signal.notify_one();
    }

    fn hand_over(&self, job: Taken) {
        *self.handoff.lock() = Some(job);
    }

    /// The job handed over with [`Wake::Run`] (once).
    pub(crate) fn take_handoff(&self) -> Taken {
        self.handoff
            .lock()
            .take()
            .expect("a worker woken to run was handed a job")
    }

    /// Consumes the wake reason, if any.
    pub(crate) fn take(&self) -> Wake {
        match self.wake.swap(Wake::None as u8, Ordering::Acquire) {
            1 => Wake::Queue,
            2 => Wake::Help,
            3 => Wake::Run,
            _ => Wake::None,
        }
    }

    /// Sleeps until woken; returns why.
    pub(crate) fn park(&self) -> Wake {
        let mut guard = self.lock.lock();
        loop {
            match self.take() {
                Wake::None => self.signal.wait(&mut guard),
                why => return why,
            }
        }
    }
}

/// The idle workers of a budget (under the budget lock).
pub(crate) struct Idle {
    /// The idle worker spinning now, unless claimed.
    spinner: Option<usize>,
    /// Parked idle workers, unclaimed (last parked on top).
    sleepers: Vec<usize>,
    /// Woken idle workers that have not looked at the queues yet.
    claimed: usize,
}

impl Idle {
    /// All `threads` workers start parked; the lowest index is woken first.
    pub(crate) fn new(threads: usize) -> Self {
        Idle {
            spinner: None,
            sleepers: (0..threads).rev().collect(),
            claimed: 0,
        }
    }

    /// Hands `job` (started in the worker's name by the caller) to an
    /// unclaimed idle worker: the spinner if any (it sees its slot without
    /// a wake-up), else a sleeper, returned so the caller notifies it after
    /// unlocking. The job is never queued, so it is not counted in
    /// `claimed`. `index` comes from [`free_worker`](Self::free_worker).
    pub(crate) fn hand_off(&mut self, index: usize, job: Taken, slots: &[Slot]) -> Option<usize> {
        slots[index].hand_over(job);
        slots[index].set(Wake::Run);
        if self.spinner == Some(index) {
            self.spinner = None;
            None
        } else {
            let popped = self.sleepers.pop();
            debug_assert_eq!(popped, Some(index));
            Some(index)
        }
    }

    /// An idle, unclaimed worker, the one [`hand_off`](Self::hand_off) gives
    /// a job to: a job submitted now starts at once on it.
    pub(crate) fn free_worker(&self) -> Option<usize> {
        self.spinner.or_else(|| self.sleepers.last().copied())
    }

    /// Claims one unclaimed idle worker if `eligible` jobs exceed the
    /// claimed workers: the spinner if any (it sees its slot without a
    /// wake-up), else a sleeper, returned so the caller notifies it after
    /// unlocking.
    pub(crate) fn claim(&mut self, eligible: usize, slots: &[Slot]) -> Option<usize> {
        if eligible <= self.claimed {
            return None;
        }
        if let Some(index) = self.spinner.take() {
            self.claimed += 1;
            slots[index].set(Wake::Queue);
            return None;
        }
        let index = self.sleepers.pop()?;
        self.claimed += 1;
        slots[index].set(Wake::Queue);
        Some(index)
    }

    /// Claims every idle worker to look at the queues (close, exit); returns
    /// the ones to notify.
    pub(crate) fn claim_all(&mut self, slots: &[Slot]) -> Vec<usize> {
        let mut woken = std::mem::take(&mut self.sleepers);
        woken.extend(self.spinner.take());
        self.claimed += woken.len();
        for &index in &woken {
            slots[index].set(Wake::Queue);
        }
        woken
    }

    /// Wakes up to `limit` sleepers to help with rayon work (not counted in
    /// `claimed`); returns the ones to notify.
    pub(crate) fn wake_helpers(&mut self, limit: usize, slots: &[Slot]) -> Vec<usize> {
        let keep = self.sleepers.len().saturating_sub(limit);
        let woken = self.sleepers.split_off(keep);
        for &index in &woken {
            slots[index].set(Wake::Help);
        }
        woken
    }

    /// A woken worker takes itself out of the counts it was woken into.
    pub(crate) fn uncount_wake(&mut self, why: Wake) {
        if why == Wake::Queue {
            self.claimed -= 1;
        }
    }

    /// Registers worker `index` as idle: as the spinner if `may_spin` and
    /// none spins, else as a sleeper. Returns whether it spins.
    pub(crate) fn register(&mut self, index: usize, may_spin: bool) -> bool {
        if may_spin && self.spinner.is_none() {
            self.spinner = Some(index);
            true
        } else {
            self.sleepers.push(index);
            false
        }
    }

    /// The spinner's spin ended: it becomes a sleeper, unless a waker
    /// claimed it meanwhile (then its slot is set and it wakes at once).
    pub(crate) fn stop_spinning(&mut self, index: usize) {
        if self.spinner == Some(index) {
            self.spinner = None;
            self.sleepers.push(index);
        }
    }
}
