//! Pools: configuration, submission, close/join, and the state shared by a
//! pool's handles, its jobs (weakly) and the timer.
//!
//! A pool's queue and counters ([`PoolState`](crate::scheduler::PoolState))
//! live in its budget's state, under the budget's one lock: a pool with no
//! budget of its own gets a private one. Invariants, all kept under that
//! lock:
//! * every job in a queue is `queued`; a job leaves `queued` only after it
//!   was removed from its queue in the same critical section;
//! * each counter changes in the critical section of the transition it
//!   counts, so `submitted == queued + running + completed + failed +
//!   cancelled + expired` in every snapshot;
//! * fair sharing and the totals as in `scheduler.rs`, idle accounting as
//!   in `idle.rs`.
//!
//! Nothing user-supplied (job closures, their drops, completion callbacks)
//! runs while the lock is held.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{self, Admission};
use crate::budget::{Budget, BudgetConfig, ThreadHook, DEFAULT_SPIN};
use crate::context::JobContext;
use crate::drain::Drain;
use crate::error::{BuildError, SubmitError};
use crate::job::{Callback, JobHandle, JobStatus, JobStop};
use crate::queue::QueueKey;
use crate::scheduler::{PoolState, Sched, Taken};
use crate::stats::{Gauges, PoolStats, Stats};
use crate::task::{Header, JobCell, Task};
use crate::token::CancelToken;

/// How to build a [`Pool`].
#[derive(Clone)]
pub struct PoolConfig {
    pub name: String,
    /// Without a budget: the pool's own worker threads. With one: the most
    /// of the budget's threads its jobs occupy at once (at most the
    /// budget's `threads`). >= 1.
    pub threads: usize,
    /// Jobs that may wait, >= 1 (running jobs do not count).
    pub queue_capacity: usize,
    /// The budget whose threads run the pool's jobs; `None`: a private one
    /// built from this configuration.
    pub budget: Option<Budget>,
    /// The pool's share of its budget relative to the other pools on it
    /// (finite, > 0). No effect on a private budget.
    pub weight: f64,
    /// Whether a job with a deadline it would miss is refused at submit.
    pub admission: Admission,
    /// Private budget only: how long an idle worker spins before parking.
    pub spin: Duration,
    /// Private budget only: worker stack size; `None` means 4 MiB.
    pub stack_size: Option<usize>,
    /// Private budget only: called on each worker when it starts, with its
    /// index. Must not unwind (a panicking hook aborts the process).
    pub on_thread_start: Option<ThreadHook>,
    /// Private budget only: called on each worker right before it exits.
    pub on_thread_stop: Option<ThreadHook>,
}

impl PoolConfig {
    pub fn new(name: impl Into<String>, threads: usize, queue_capacity: usize) -> Self {
        PoolConfig {
            name: name.into(),
            threads,
            queue_capacity,
            budget: None,
            weight: 1.0,
            admission: Admission::Bounded,
            spin: DEFAULT_SPIN,
            stack_size: None,
            on_thread_start: None,
            on_thread_stop: None,
        }
    }

    /// Runs the pool on `budget`, occupying at most `threads` of its threads.
    pub fn on_budget(mut self, budget: &Budget, weight: f64) -> Self {
        self.budget = Some(budget.clone());
        self.weight = weight;
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        if self.name.is_empty() {
            Err(BuildError::EmptyName)
        } else if self.threads == 0 {
            Err(BuildError::ZeroThreads)
        } else if self.queue_capacity == 0 {
            Err(BuildError::ZeroCapacity)
        } else if self.stack_size == Some(0) {
            Err(BuildError::ZeroStackSize)
        } else if !(self.weight.is_finite() && self.weight > 0.0) {
            Err(BuildError::BadWeight(self.weight))
        } else {
            match &self.budget {
                Some(budget) if self.threads > budget.threads() => Err(BuildError::CapOverBudget {
                    cap: self.threads,
                    budget: budget.name().to_owned(),
                    threads: budget.threads(),
                }),
                _ => Ok(()),
            }
        }
    }

    fn private_budget(&self) -> BudgetConfig {
        BudgetConfig {
            name: self.name.clone(),
            threads: self.threads,
            spin: self.spin,
            stack_size: self.stack_size,
            on_thread_start: self.on_thread_start.clone(),
            on_thread_stop: self.on_thread_stop.clone(),
        }
    }
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("name", &self.name)
            .field("threads", &self.threads)
            .field("queue_capacity", &self.queue_capacity)
            .field("budget", &self.budget.as_ref().map(Budget::name))
            .field("weight", &self.weight)
            .field("admission", &self.admission)
            .field("spin", &self.spin)
            .field("stack_size", &self.stack_size)
            .field("on_thread_start", &self.on_thread_start.is_some())
            .field("on_thread_stop", &self.on_thread_stop.is_some())
            .finish()
    }
}

/// Per-submit options.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// Higher runs first; equal priorities run in submission order.
    pub priority: i64,
    /// A job not started by then never runs and ends `Expired`.
    pub deadline: Option<Instant>,
    pub token: Option<CancelToken>,
}

/// A named pool with a bounded priority queue, whose jobs run on its
/// budget's native threads.
///
/// Cheap to clone. When the last handle drops, the pool is closed without
/// cancelling: queued jobs still run (then a private budget's workers exit).
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
}

/// Closes the pool when the last [`Pool`] clone goes away.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(false);
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("Pool")
            .field("name", &shared.name)
            .field("threads", &shared.cap)
            .field("queue_capacity", &shared.capacity)
            .field("budget", &shared.budget.name())
            .field("closed", &self.is_closed())
            .finish()
    }
}

static NEXT_JOB_ID: AtomicU64 = AtomicU64::new(1);

impl Pool {
    /// Builds the pool on `config.budget`, or on a private budget of
    /// `config.threads` workers (they park until work arrives).
    pub fn new(config: PoolConfig) -> Result<Pool, BuildError> {
        config.validate()?;
        let (budget, private) = match &config.budget {
            Some(budget) => (budget.clone(), false),
            None => (Budget::new(config.private_budget())?, true),
        };
        let name: Arc<str> = config.name.as_str().into();
        let budget_shared = Arc::clone(budget.shared());
        let mut sched = budget_shared.lock();
        if sched.closed {
            return Err(BuildError::BudgetClosed(budget.name().to_owned()));
        }
        let state = PoolState::new(
            Arc::clone(&name),
            config.queue_capacity,
            config.threads,
            config.weight,
            sched.origin(),
        );
        let member = sched.next_member_index();
        let shared = Arc::new(Shared {
            name,
            cap: config.threads,
            capacity: config.queue_capacity,
            admission: config.admission,
            budget,
            private,
            member,
            drain: Drain::default(),
        });
        let joined = sched.join(state, Arc::clone(&shared));
        debug_assert_eq!(joined, member);
        drop(sched);
        Ok(Pool {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// Threads the pool's jobs may occupy at once: its own on a private
    /// budget, its cap on a shared one.
    pub fn threads(&self) -> usize {
        self.shared().cap
    }

    pub fn queue_capacity(&self) -> usize {
        self.shared().capacity
    }

    /// The budget the pool runs on (a private one unless it was given one).
    pub fn budget(&self) -> &Budget {
        &self.shared().budget
    }

    /// Whether the pool runs on a budget of its own.
    pub fn has_private_budget(&self) -> bool {
        self.shared().private
    }

    pub fn is_closed(&self) -> bool {
        let shared = self.shared();
        shared.inherited() || shared.drain.is_closed()
    }

    /// Queues `f`, or starts it at once on an idle worker. Never blocks on
    /// running work. A token that is already cancelled, or a deadline
    /// already past, gives a job that already ended (`Cancelled`,
    /// `Expired`), counted as submitted.
    pub fn submit<T, E, F>(&self, opts: SubmitOptions, f: F) -> Result<JobHandle<T, E>, SubmitError>
    where
        F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.submit_hooked(opts, None, f)
    }

    /// [`submit`](Self::submit), and `on_complete` runs exactly once when
    /// the job ends, on the thread that ends it (before callbacks added with
    /// [`JobHandle::on_complete`]). Costs no lock: what a bridge that is told
    /// of every job's end uses. A refused submit drops it unrun.
    pub fn submit_with_hook<T, E, F>(
        &self,
        opts: SubmitOptions,
        on_complete: impl FnOnce() + Send + 'static,
        f: F,
    ) -> Result<JobHandle<T, E>, SubmitError>
    where
        F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.submit_hooked(opts, Some(Box::new(on_complete)), f)
    }

    fn submit_hooked<T, E, F>(
        &self,
        opts: SubmitOptions,
        hook: Option<Callback>,
        f: F,
    ) -> Result<JobHandle<T, E>, SubmitError>
    where
        F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let shared = self.shared();
        if shared.inherited() {
            return Err(shared.closed_error());
        }
        let now = Instant::now();
        let id = NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed);
        let SubmitOptions {
            priority,
            deadline,
            token,
        } = opts;
        let cell = Arc::new(JobCell::new(
            Header {
                id,
                priority,
                deadline,
                submitted_at: now,
                token,
                pool: Arc::downgrade(shared),
            },
            f,
            hook,
        ));
        let task: Arc<dyn Task> = cell.clone();
        let header = task.header();
        let registered = header
            .token
            .as_ref()
            .is_none_or(|t| t.register(id, Arc::downgrade(&task)));

        let budget = shared.budget.shared();
        let member = shared.member;
        let mut sched = budget.lock();
        if sched.pool(member).closed {
            drop(sched);
            shared.release_registrations(header);
            return Err(shared.closed_error());
        }
        let ended_at_once =
            if !registered || header.token.as_ref().is_some_and(CancelToken::is_cancelled) {
                Some(JobStatus::Cancelled)
            } else if deadline.is_some_and(|d| d <= now) {
                Some(JobStatus::Expired)
            } else {
                None
            };
        if let Some(status) = ended_at_once {
            let claimed = task.try_claim(status);
            debug_assert!(claimed, "a fresh job is queued");
            let stats = sched.stats_mut(member);
            stats.submitted += 1;
            stats.count_arrival(now);
            stats.count_end(status, now);
            shared.drain.accept();
            drop(sched);
            shared.finish_claimed(&task);
            return Ok(JobHandle::new(cell));
        }
        if let Some(index) = sched.free_worker_for(member) {
            // Starts at once on an idle worker, in its name: never queued,
            // so no timer entry; the worker runs it when it wakes.
            let started = task.try_start();
            debug_assert!(started, "a fresh job is queued");
            sched.begin_job(index, member, now, now);
            let stats = sched.stats_mut(member);
            stats.submitted += 1;
            stats.count_arrival(now);
            shared.drain.accept();
            let pool = sched.keep_alive(member);
            let woken = sched
                .idle
                .hand_off(index, Taken { member, pool, task }, budget.slots());
            drop(sched);
            if let Some(index) = woken {
                budget.slot(index).notify();
            }
            return Ok(JobHandle::new(cell));
        }
        let refusal = if !sched.pool(member).queue.has_room() {
            Some(SubmitError::QueueFull {
                pool: shared.name.to_string(),
                capacity: shared.capacity,
            })
        } else {
            shared.would_miss(&sched, member, priority, deadline, now)
        };
        if let Some(refusal) = refusal {
            let stats = sched.stats_mut(member);
            stats.rejected += 1;
            stats.count_arrival(now);
            drop(sched);
            shared.release_registrations(header);
            return Err(refusal);
        }
        if let Some(deadline) = deadline {
            budget
                .timer()
                .schedule(deadline, header.key(), id, Arc::downgrade(shared));
        }
        sched.push(member, task, now);
        let stats = sched.stats_mut(member);
        stats.submitted += 1;
        stats.count_arrival(now);
        shared.drain.accept();
        Ok(JobHandle::new(cell))
    }

    /// Whether a submit made now would be accepted: the pool is open and
    /// has room in its queue. Only a hint when others submit too; used to
    /// wait for room without counting refused submits.
    pub fn has_room(&self) -> bool {
        let shared = self.shared();
        if shared.inherited() {
            return false;
        }
        let sched = shared.budget.shared().lock();
        let state = sched.pool(shared.member);
        !state.closed && (state.queue.has_room() || sched.free_worker_for(shared.member).is_some())
    }

    /// A consistent snapshot (taken under the budget lock).
    pub fn stats(&self) -> PoolStats {
        self.shared().stats()
    }

    /// Stops accepting jobs; with `cancel_pending`, every queued job ends
    /// `Cancelled` before this returns. Otherwise queued jobs still run.
    /// A private budget closes with its pool (its workers exit once the
    /// queue is empty). Idempotent (a later call may still cancel what is
    /// queued); never waits for running jobs.
    pub fn close(&self, cancel_pending: bool) {
        self.shared().close(cancel_pending);
    }

    /// Waits until the pool is closed and every job it accepted ended and
    /// was published, and, on a private budget, every worker thread
    /// exited. True if so within `timeout` (`None`: no limit). Called on a
    /// worker of the pool's budget it returns false at once, as the job
    /// running there may be one it waits for.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        let shared = self.shared();
        if shared.inherited() {
            return true; // its threads do not exist in this process
        }
        if self.is_current_worker() {
            return false;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if !shared.drain.wait(deadline) {
            return false;
        }
        if shared.private {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            return shared.budget.join(left);
        }
        true
    }

    /// Whether the calling thread is a worker of this pool's budget (a job
    /// of this pool, or of another pool on the same budget, runs here).
    pub fn is_current_worker(&self) -> bool {
        self.shared().budget.is_current_worker()
    }
}

/// State shared by a pool's handles, its jobs (weakly), the timer (weakly)
/// and its budget (while the pool is open or has work).
pub(crate) struct Shared {
    name: Arc<str>,
    /// Most jobs running at once (the private budget's threads, or the cap).
    cap: usize,
    capacity: usize,
    admission: Admission,
    budget: Budget,
    private: bool,
    /// Index of this pool's state in the budget's `Sched`.
    member: usize,
    /// Accepted jobs not yet published, and whether the pool closed
    /// (mirrors `PoolState::closed`, set under the budget lock), for `join`
    /// and lock-free reads.
    drain: Drain,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let budget = self.budget.shared();
        if !budget.inherited() {
            budget.lock().leave(self.member);
        }
    }
}

impl Shared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn member(&self) -> usize {
        self.member
    }

    /// Predictive admission's refusal of a job of `priority` with
    /// `deadline`, submitted at `now` into the queue, if it would start
    /// after its deadline (see `admission.rs`).
    fn would_miss(
        &self,
        sched: &Sched,
        member: usize,
        priority: i64,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Option<SubmitError> {
        let deadline = deadline.filter(|_| self.admission == Admission::Predictive)?;
        let timeout = deadline.saturating_duration_since(now);
        let (load, elapsed) = sched.load(member, priority, now);
        let predicted = admission::predicted_wait(load, elapsed);
        (predicted > admission::seconds(timeout)).then(|| SubmitError::WouldMissDeadline {
            pool: self.name.to_string(),
            capacity: self.capacity,
            predicted_wait: Duration::try_from_secs_f64(predicted).unwrap_or(Duration::MAX),
            timeout,
        })
    }

    fn closed_error(&self) -> SubmitError {
        SubmitError::Closed {
            pool: self.name.to_string(),
        }
    }

    /// Whether this pool came from the parent of a forked child (`fork.rs`).
    pub(crate) fn inherited(&self) -> bool {
        self.budget.shared().inherited()
    }

    fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let budget = self.budget.shared();
        let Some(sched) = budget.try_lock_inherited() else {
            return self.zero_stats(now);
        };
        let state = sched.pool(self.member);
        let capture = state
            .stats
            .capture(now, self.cap, sched.running_since(self.member));
        let (load, elapsed) = sched.load(self.member, 0, now);
        let gauges = Gauges {
            name: &self.name,
            threads: self.cap,
            queue_capacity: self.capacity,
            queued: state.queue.len(),
            running: state.running,
            predicted_wait: admission::predicted_wait(load, elapsed),
        };
        let stats = capture.finish(gauges);
        drop(sched);
        stats
    }

    fn zero_stats(&self, now: Instant) -> PoolStats {
        let capture = Stats::new(now).capture(now, self.cap, std::iter::empty());
        capture.finish(Gauges {
            name: &self.name,
            threads: self.cap,
            queue_capacity: self.capacity,
            queued: 0,
            running: 0,
            predicted_wait: 0.0,
        })
    }

    /// Removes the queued job `key` and claims it for `status` (counted).
    /// `None` if it is not queued (started, ended, or never enqueued).
    pub(crate) fn remove_queued(&self, key: &QueueKey, status: JobStatus) -> Option<Arc<dyn Task>> {
        if self.inherited() {
            return None; // in a forked child nothing inherited leaves a queue
        }
        let (task, release) = {
            let mut sched = self.budget.shared().lock();
            let task = sched.update(self.member, |s| s.queue.remove(key))?;
            let claimed = task.try_claim(status);
            debug_assert!(
                claimed,
                "queued jobs are claimed only after leaving the queue"
            );
            sched
                .stats_mut(self.member)
                .count_end(status, Instant::now());
            (task, sched.release_if_drained(self.member))
        };
        drop(release);
        Some(task)
    }

    /// The timer's entry point: expires the job if it is still queued.
    pub(crate) fn expire(&self, key: &QueueKey) {
        if let Some(task) = self.remove_queued(key, JobStatus::Expired) {
            self.finish_claimed(&task);
        }
    }

    /// Ends a job claimed out of the queue: drops its closure, publishes,
    /// runs callbacks. No lock held.
    pub(crate) fn finish_claimed(&self, task: &Arc<dyn Task>) {
        self.release_registrations(task.header());
        // SAFETY: every caller won `try_claim` for `task` and calls this once.
        let panics = unsafe { task.finish_claimed() };
        self.count_callback_panics(panics);
        self.drain.published();
    }

    /// Publishes a job a worker ran. No lock held.
    pub(crate) fn publish_run(&self, task: &Arc<dyn Task>, status: JobStatus) {
        // SAFETY: the worker's `run` returned `status` for this task; it
        // publishes it once.
        let panics = unsafe { task.publish_run(status) };
        self.count_callback_panics(panics);
        self.drain.published();
    }

    /// Forgets the timer entry and token registration of a job that left
    /// the queue (or never entered it).
    pub(crate) fn release_registrations(&self, header: &Header) {
        if let Some(deadline) = header.deadline {
            self.budget.shared().timer().remove(deadline, header.id);
        }
        if let Some(token) = &header.token {
            token.unregister(header.id);
        }
    }

    fn count_callback_panics(&self, panics: usize) {
        if panics > 0 {
            let mut sched = self.budget.shared().lock();
            sched.stats_mut(self.member).callback_panics += panics as u64;
        }
    }

    /// Under the budget lock: marks the pool closed and, with
    /// `cancel_pending`, claims every queued job as cancelled (the caller
    /// finishes them unlocked). Returns them, and the budget's hold on the
    /// pool if it has no work left (to drop unlocked).
    pub(crate) fn close_locked(
        &self,
        sched: &mut Sched,
        member: usize,
        cancel_pending: bool,
    ) -> (Vec<Arc<dyn Task>>, Option<Arc<Shared>>) {
        let now = Instant::now();
        let cancelled = sched.update(member, |s| {
            s.closed = true;
            if !cancel_pending {
                return Vec::new();
            }
            let drained = s.queue.drain();
            for task in &drained {
                let claimed = task.try_claim(JobStatus::Cancelled);
                debug_assert!(
                    claimed,
                    "queued jobs are claimed only after leaving the queue"
                );
                s.stats.count_end(JobStatus::Cancelled, now);
            }
            drained
        });
        self.drain.close();
        (cancelled, sched.release_if_drained(member))
    }

    fn close(&self, cancel_pending: bool) {
        if self.inherited() {
            return; // closed by the fork; its lock may be held for ever
        }
        if self.private {
            self.budget.close(cancel_pending);
            return;
        }
        let (cancelled, release) = {
            let mut sched = self.budget.shared().lock();
            self.close_locked(&mut sched, self.member, cancel_pending)
        };
        for task in &cancelled {
            self.finish_claimed(task);
        }
        drop(release);
    }
}
