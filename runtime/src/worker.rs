//! The loop each budget thread runs: take the next job the scheduler picks
//! (`scheduler.rs`), run it, and when no job may start spin briefly
//! (helping with rayon work) and then park (`idle.rs`).

use std::sync::Arc;
use std::time::Instant;

use rayon::Yield;

use crate::budget::BudgetShared;
use crate::context::JobContext;
use crate::idle::Wake;
use crate::job::JobStatus;
use crate::pool::Shared;
use crate::scheduler::{Sched, Taken};
use crate::task::Task;

/// A job that ran and is still to be counted (next critical section) and
/// published (right after it).
struct Finished {
    pool: Arc<Shared>,
    task: Arc<dyn Task>,
    status: JobStatus,
}

enum Next {
    Run(Taken),
    Spin,
    Park,
    Exit,
}

/// Jobs and pool references a critical section produced, handled after it
/// (no lock held): expired jobs are published, references dropped.
#[derive(Default)]
struct Unlocked {
    expired: Vec<(Arc<Shared>, Arc<dyn Task>)>,
    released: Vec<Arc<Shared>>,
}

/// Body of worker `index`. Starts registered as a sleeper (see
/// `Idle::new`); returns when the budget is closed and no job is queued.
pub(crate) fn run(budget: &BudgetShared, index: usize) {
    let slot = budget.slot(index);
    let mut why = slot.park();
    let mut finished: Option<Finished> = None;
    let mut after = Unlocked::default();
    loop {
        match why {
            Wake::Run => {
                // A submitter started this job in our name (`Idle::hand_off`).
                let Taken { pool, task, .. } = slot.take_handoff();
                finished = Some(run_job(budget, index, pool, task));
                why = Wake::None;
            }
            Wake::Help => help_rayon(),
            Wake::Queue | Wake::None => {}
        }
        let now = Instant::now();
        let (next, woken) = {
            let mut sched = budget.lock();
            sched.idle.uncount_wake(why);
            if let Some(done) = &finished {
                after
                    .released
                    .extend(sched.end_job(index, done.status, now));
            }
            let next = next_step(budget, &mut sched, index, now, &mut after);
            let woken = if matches!(next, Next::Exit) {
                // The last worker out wakes the idle ones to exit too.
                sched.idle.claim_all(budget.slots())
            } else {
                let eligible = sched.eligible();
                sched
                    .idle
                    .claim(eligible, budget.slots())
                    .into_iter()
                    .collect()
            };
            (next, woken)
        };
        for index in woken {
            budget.slot(index).notify();
        }
        if let Some(done) = finished.take() {
            done.pool.publish_run(&done.task, done.status);
        }
        for (pool, task) in after.expired.drain(..) {
            pool.finish_claimed(&task);
        }
        after.released.clear();
        why = Wake::None;
        match next {
            Next::Run(Taken { pool, task, .. }) => {
                finished = Some(run_job(budget, index, pool, task));
            }
            Next::Spin => why = idle_wait(budget, index, true),
            Next::Park => why = idle_wait(budget, index, false),
            Next::Exit => return,
        }
    }
}

/// Runs a job this worker began (`begin_job` counted it under the lock).
fn run_job(
    budget: &BudgetShared,
    index: usize,
    pool: Arc<Shared>,
    task: Arc<dyn Task>,
) -> Finished {
    pool.release_registrations(task.header());
    let ctx = JobContext::new(budget, &pool, index, task.header().token.as_ref());
    // SAFETY: the caller (`next_step` or the submitter that handed the job
    // over) won `try_start` for this task, and it runs once, here.
    let status = unsafe { task.run(&ctx) };
    ctx.end();
    Finished { pool, task, status }
}

/// Under the budget lock: takes the next job to run (expiring those whose
/// deadline passed), or registers the worker as idle.
fn next_step(
    budget: &BudgetShared,
    sched: &mut Sched,
    index: usize,
    now: Instant,
    after: &mut Unlocked,
) -> Next {
    while let Some(taken) = sched.pop_next(now) {
        let header = taken.task.header();
        if header.deadline.is_some_and(|d| d <= now) {
            let claimed = taken.task.try_claim(JobStatus::Expired);
            debug_assert!(
                claimed,
                "queued jobs are claimed only after leaving the queue"
            );
            sched
                .stats_mut(taken.member)
                .count_end(JobStatus::Expired, now);
            after
                .released
                .extend(sched.release_if_drained(taken.member));
            after.expired.push((taken.pool, taken.task));
            continue;
        }
        let started = taken.task.try_start();
        debug_assert!(started, "queued jobs start only after leaving the queue");
        sched.begin_job(index, taken.member, header.submitted_at, now);
        return Next::Run(taken);
    }
    if sched.closed && sched.queued() == 0 {
        Next::Exit
    } else if sched.idle.register(index, !budget.spin().is_zero()) {
        Next::Spin
    } else {
        Next::Park
    }
}

/// Runs rayon jobs of this budget (stolen from a running job's split) until
/// none is left.
fn help_rayon() {
    while let Some(Yield::Executed) = rayon::yield_now() {}
}

/// Waits for a wake-up as an idle worker registered as the spinner (if
/// `spinning`) or a sleeper. The spinner spins for the budget's spin time;
/// any idle worker keeps looking while a running job wants help. Both run
/// the rayon work they find (which extends the spin). Then the spinner
/// becomes a sleeper, and the worker parks.
fn idle_wait(budget: &BudgetShared, index: usize, spinning: bool) -> Wake {
    let slot = budget.slot(index);
    let mut until = Instant::now() + budget.spin();
    loop {
        let why = slot.take();
        if why != Wake::None {
            return why;
        }
        if let Some(Yield::Executed) = rayon::yield_now() {
            until = Instant::now() + budget.spin();
            continue;
        }
        if budget.help_wanted() {
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
        budget.lock().idle.stop_spinning(index);
    }
    slot.park()
}
