//! The loop each pool thread runs: take the next job, run it, and when the
//! queue is empty spin briefly (helping with rayon work) and then park.
//!
//! Idle accounting (all under the pool's state lock): an idle worker is in
//! exactly one of `State::spinner` (at most one spins at a time: two cores
//! are shared with the submitters) or `State::sleepers`, until a waker
//! removes it and stores the reason in its slot: `Queue` (counted in
//! `claimed`: it will look at the queue, so it is a taker for the capacity
//! rule) or `Help` (it helps with rayon work first, not counted). A worker
//! consumes that reason when it wakes and uncounts itself in its next
//! critical section. A waker therefore wakes at
//! most one worker per job, and a wake can never be lost: the reason is
//! stored before the worker's slot is notified, and the worker re-checks it
//! under the slot lock before sleeping.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rayon::Yield;

use crate::context::JobContext;
use crate::job::JobStatus;
use crate::pool::{Shared, State};
use crate::task::Task;

/// Why a worker was woken (stored in its slot; `NONE` = not woken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Wake {
    None = 0,
    /// Look at the queue (a job arrived, or the pool closed).
    Queue = 1,
    /// Help with the rayon work of a running job, then look at the queue.
    Help = 2,
}

/// Per-worker parking spot.
pub(crate) struct Slot {
    wake: AtomicU8,
    lock: Mutex<()>,
    signal: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Slot {
            wake: AtomicU8::new(Wake::None as u8),
            lock: Mutex::new(()),
            signal: Condvar::new(),
        }
    }

    /// Records why the worker must wake. Called by the waker that removed the
    /// worker from the idle lists, under the pool's state lock.
    pub(crate) fn set(&self, why: Wake) {
        self.wake.store(why as u8, Ordering::Release);
    }

    /// Wakes the worker if it sleeps. Called after [`set`](Self::set), with
    /// no pool lock held.
    pub(crate) fn notify(&self) {
        let _guard = self.lock.lock();
        self.signal.notify_one();
    }

    fn take(&self) -> Wake {
        match self.wake.swap(Wake::None as u8, Ordering::Acquire) {
            1 => Wake::Queue,
            2 => Wake::Help,
            _ => Wake::None,
        }
    }

    /// Sleeps until woken; returns why.
    fn park(&self) -> Wake {
        let mut guard = self.lock.lock();
        loop {
            match self.take() {
                Wake::None => self.signal.wait(&mut guard),
                why => return why,
            }
        }
    }
}

/// A job that ran and is still to be counted (next critical section) and
/// published (right after it).
struct Finished {
    task: Arc<dyn Task>,
    status: JobStatus,
    started: Instant,
}

enum Next {
    Run(Arc<dyn Task>),
    Spin,
    Park,
    Exit,
}

/// Body of worker `index`. Starts registered as a sleeper (see
/// `State::new`); returns when the pool is closed and its queue empty.
pub(crate) fn run(shared: &Shared, index: usize) {
    let slot = shared.slot(index);
    let mut why = slot.park();
    let mut finished: Option<Finished> = None;
    let mut expired: Vec<Arc<dyn Task>> = Vec::new();
    loop {
        if why == Wake::Help {
            help_rayon();
        }
        let now = Instant::now();
        let next = {
            let mut state = shared.lock_state();
            state.uncount_wake(why);
            if let Some(done) = &finished {
                state.end_job(index, done.status, done.started, now);
            }
            next_step(shared, &mut state, index, now, &mut expired)
        };
        if let Some(done) = finished.take() {
            // SAFETY: `run` returned `done.status` for this task; published once.
            let panics = unsafe { done.task.publish_run(done.status) };
            shared.count_callback_panics(panics);
        }
        for task in expired.drain(..) {
            shared.finish_claimed(&task);
        }
        why = Wake::None;
        match next {
            Next::Run(task) => {
                shared.release_registrations(task.header());
                let ctx = JobContext::new(shared, index, task.header().token.as_ref());
                // SAFETY: `next_step` won `try_start` for this task.
                let status = unsafe { task.run(&ctx) };
                ctx.end();
                finished = Some(Finished {
                    task,
                    status,
                    started: now,
                });
            }
            Next::Spin => why = idle_wait(shared, index, true),
            Next::Park => why = idle_wait(shared, index, false),
            Next::Exit => return,
        }
    }
}

/// Under the state lock: pops the next runnable job (expiring those whose
/// deadline passed), or registers the worker as idle.
fn next_step(
    shared: &Shared,
    state: &mut State,
    index: usize,
    now: Instant,
    expired: &mut Vec<Arc<dyn Task>>,
) -> Next {
    while let Some(task) = state.queue.pop() {
        if task.header().deadline.is_some_and(|d| d <= now) {
            let claimed = task.try_claim(JobStatus::Expired);
            debug_assert!(
                claimed,
                "queued jobs are claimed only after leaving the queue"
            );
            state.stats.count_end(JobStatus::Expired);
            expired.push(task);
            continue;
        }
        let started = task.try_start();
        debug_assert!(started, "queued jobs start only after leaving the queue");
        state.begin_job(index, task.header().submitted_at, now);
        return Next::Run(task);
    }
    if state.closed {
        Next::Exit
    } else if state.spinner.is_none() && !shared.spin().is_zero() {
        state.spinner = Some(index);
        Next::Spin
    } else {
        state.sleepers.push(index);
        Next::Park
    }
}

/// Runs rayon jobs of this pool (stolen from a running job's split) until
/// none is left.
fn help_rayon() {
    while let Some(Yield::Executed) = rayon::yield_now() {}
}

/// Waits for a wake-up as an idle worker registered in `spinner` (if
/// `spinning`) or `sleepers`. The spinner spins for the pool's spin time;
/// any idle worker keeps looking while a running job wants help. Both run
/// the rayon work they find (which extends the spin). Then the spinner moves
/// itself to `sleepers`, and the worker parks.
fn idle_wait(shared: &Shared, index: usize, spinning: bool) -> Wake {
    let slot = shared.slot(index);
    let mut until = Instant::now() + shared.spin();
    loop {
        let why = slot.take();
        if why != Wake::None {
            return why;
        }
        if let Some(Yield::Executed) = rayon::yield_now() {
            until = Instant::now() + shared.spin();
            continue;
        }
        if shared.help_wanted() {
            // Work may appear any moment; let other threads run meanwhile.
            std::thread::yield_now();
            continue;
        }
        if !spinning || Instant::now() >= until {
            break;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
    if spinning {
        let mut state = shared.lock_state();
        if state.spinner == Some(index) {
            state.spinner = None;
            state.sleepers.push(index);
        }
        // Otherwise a waker claimed us meanwhile and set our slot.
    }
    slot.park()
}
