//! Pools: configuration, submission, close/join, and the state shared by a
//! pool's handles and workers.
//!
//! Invariants, all kept under the one state lock (`Shared::state`):
//! * every job in `queue` is `queued`; a job leaves `queued` only after it
//!   was removed from `queue` in the same critical section;
//! * each counter changes in the critical section of the transition it
//!   counts, so `submitted == queued + running + completed + failed +
//!   cancelled + expired` in every snapshot;
//! * idle accounting as described in `worker.rs`.
//!
//! Nothing user-supplied (job closures, their drops, completion callbacks)
//! runs while the state lock is held.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::context::JobContext;
use crate::error::{BuildError, SubmitError};
use crate::fork;
use crate::job::{JobHandle, JobStatus, JobStop};
use crate::queue::{Queue, QueueKey};
use crate::stats::{Gauges, PoolStats, Stats};
use crate::task::{Header, JobCell, Task};
use crate::timer::{self, Timer};
use crate::token::CancelToken;
use crate::worker::{self, Slot, Wake};

/// Default stack of a worker thread: Python callables run on workers.
const DEFAULT_STACK_SIZE: usize = 4 << 20;
/// Default time an idle worker spins before parking.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// A hook run on a worker thread with its index.
pub type ThreadHook = Arc<dyn Fn(usize) + Send + Sync>;

/// How to build a [`Pool`].
#[derive(Clone)]
pub struct PoolConfig {
    pub name: String,
    /// Worker threads, >= 1.
    pub threads: usize,
    /// Jobs that may wait, >= 1 (running jobs do not count).
    pub queue_capacity: usize,
    /// How long an idle worker spins before parking.
    pub spin: Duration,
    /// Worker stack size; `None` means 4 MiB.
    pub stack_size: Option<usize>,
    /// Called on each worker when it starts, with its index. Must not
    /// unwind (a panicking hook aborts the process, as rayon does).
    pub on_thread_start: Option<ThreadHook>,
    /// Called on each worker right before it exits. Must not unwind.
    pub on_thread_stop: Option<ThreadHook>,
}

impl PoolConfig {
    pub fn new(name: impl Into<String>, threads: usize, queue_capacity: usize) -> Self {
        PoolConfig {
            name: name.into(),
            threads,
            queue_capacity,
            spin: DEFAULT_SPIN,
            stack_size: None,
            on_thread_start: None,
            on_thread_stop: None,
        }
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
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("name", &self.name)
            .field("threads", &self.threads)
            .field("queue_capacity", &self.queue_capacity)
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

/// A named pool of native worker threads with a bounded priority queue.
///
/// Cheap to clone. When the last handle drops, the pool is closed without
/// cancelling: queued jobs still run, then the workers exit.
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
        let shared = &self.handle.shared;
        f.debug_struct("Pool")
            .field("name", &shared.name)
            .field("threads", &shared.threads)
            .field("queue_capacity", &shared.capacity)
            .field("closed", &self.is_closed())
            .finish()
    }
}

static NEXT_JOB_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The pool whose worker this thread is (address of its `Shared`), so
    /// `join` can refuse to wait for the thread it runs on.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

impl Pool {
    /// Starts `config.threads` workers (they park until work arrives).
    pub fn new(config: PoolConfig) -> Result<Pool, BuildError> {
        config.validate()?;
        fork::watch();
        let timer = timer::global().map_err(|e| BuildError::Spawn(e.to_string()))?;
        let exits = Arc::new(ExitCount::default());
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            threads: config.threads,
            capacity: config.queue_capacity,
            spin: config.spin,
            state: Mutex::new(State::new(&config, Instant::now())),
            slots: (0..config.threads).map(|_| Slot::new()).collect(),
            rayon: Mutex::new(None),
            exits: Arc::clone(&exits),
            timer,
            epoch: fork::epoch(),
            help_wanted: AtomicUsize::new(0),
        });
        let rayon = build_rayon(&config, exits)?;
        let worker_shared = Arc::clone(&shared);
        rayon.spawn_broadcast(move |ctx| {
            let shared: &Shared = &worker_shared;
            WORKER_OF.with(|w| w.set(shared as *const Shared as usize));
            worker::run(shared, ctx.index());
        });
        *shared.rayon.lock() = Some(rayon);
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

    pub fn threads(&self) -> usize {
        self.shared().threads
    }

    pub fn queue_capacity(&self) -> usize {
        self.shared().capacity
    }

    pub fn is_closed(&self) -> bool {
        let shared = self.shared();
        shared.inherited() || shared.state.lock().closed
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
        let shared = self.shared();
        if shared.inherited() {
            return Err(SubmitError::Closed {
                pool: shared.name.clone(),
            });
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
        ));
        let task: Arc<dyn Task> = cell.clone();
        let header = task.header();
        let registered = header
            .token
            .as_ref()
            .is_none_or(|t| t.register(id, Arc::downgrade(&task)));

        let mut state = shared.state.lock();
        if state.closed {
            drop(state);
            shared.release_registrations(header);
            return Err(SubmitError::Closed {
                pool: shared.name.clone(),
            });
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
            state.stats.submitted += 1;
            state.stats.count_end(status);
            drop(state);
            shared.finish_claimed(&task);
            return Ok(JobHandle::new(cell));
        }
        let takers = state.takers();
        if !state.queue.has_room(takers) {
            state.stats.rejected += 1;
            drop(state);
            shared.release_registrations(header);
            return Err(SubmitError::QueueFull {
                pool: shared.name.clone(),
                capacity: shared.capacity,
            });
        }
        if let Some(deadline) = deadline {
            shared
                .timer
                .schedule(deadline, header.key(), id, Arc::downgrade(shared));
        }
        state.queue.push(task);
        state.stats.submitted += 1;
        let depth = state.queue.len();
        state.stats.observe_queue_depth(depth);
        let woken = state.claim_idle(shared);
        drop(state);
        if let Some(index) = woken {
            shared.slot(index).notify();
        }
        Ok(JobHandle::new(cell))
    }

    /// Whether a submit made now would be accepted: the pool is open and
    /// has room in its queue. Only a hint when others submit too; used to
    /// wait for room without counting refused submits.
    pub fn has_room(&self) -> bool {
        if self.shared().inherited() {
            return false;
        }
        let state = self.shared().state.lock();
        !state.closed && state.queue.has_room(state.takers())
    }

    /// A consistent snapshot (taken under the state lock).
    pub fn stats(&self) -> PoolStats {
        self.shared().stats()
    }

    /// Stops accepting jobs; with `cancel_pending`, every queued job ends
    /// `Cancelled` before this returns. Otherwise queued jobs still run.
    /// Workers exit once the pool is closed and its queue is empty.
    /// Idempotent (a later call may still cancel what is queued); never
    /// waits for running jobs.
    pub fn close(&self, cancel_pending: bool) {
        self.shared().close(cancel_pending);
    }

    /// Waits until every accepted job ended and every worker thread exited
    /// (which needs [`close`](Self::close)). True if so within `timeout`
    /// (`None`: no limit). Called on one of the pool's own workers it
    /// returns false at once, as that can never happen.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        let shared = self.shared();
        if shared.inherited() {
            return true; // its threads do not exist in this process
        }
        let on_own_worker = WORKER_OF.with(|w| w.get() == Arc::as_ptr(shared) as usize);
        if on_own_worker {
            return false;
        }
        shared.exits.wait_for(shared.threads, timeout)
    }
}

fn build_rayon(
    config: &PoolConfig,
    exits: Arc<ExitCount>,
) -> Result<rayon::ThreadPool, BuildError> {
    let name = config.name.clone();
    let on_start = config.on_thread_start.clone();
    let on_stop = config.on_thread_stop.clone();
    rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .stack_size(config.stack_size.unwrap_or(DEFAULT_STACK_SIZE))
        .start_handler(move |i| {
            if let Some(hook) = &on_start {
                hook(i);
            }
        })
        .exit_handler(move |i| {
            if let Some(hook) = &on_stop {
                hook(i);
            }
            exits.add_one();
        })
        .build()
        .map_err(|e| BuildError::Spawn(e.to_string()))
}

/// Worker threads that exited, for `join`.
#[derive(Default)]
struct ExitCount {
    exited: Mutex<usize>,
    changed: Condvar,
}

impl ExitCount {
    fn add_one(&self) {
        *self.exited.lock() += 1;
        self.changed.notify_all();
    }

    fn wait_for(&self, threads: usize, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut exited = self.exited.lock();
        while *exited < threads {
            match deadline {
                None => self.changed.wait(&mut exited),
                Some(deadline) => {
                    if self.changed.wait_until(&mut exited, deadline).timed_out() {
                        return *exited >= threads;
                    }
                }
            }
        }
        true
    }
}

/// State shared by a pool's handles, workers, jobs (weakly) and the timer.
pub(crate) struct Shared {
    name: String,
    threads: usize,
    capacity: usize,
    spin: Duration,
    state: Mutex<State>,
    slots: Box<[Slot]>,
    /// The pool's rayon threads; dropped by `close` (rayon then lets the
    /// threads exit once their worker loop returns).
    rayon: Mutex<Option<rayon::ThreadPool>>,
    exits: Arc<ExitCount>,
    timer: &'static Timer,
    /// The fork epoch this pool was made in: in a later one (a forked
    /// child) its threads and lock holders are gone, see `fork.rs`.
    epoch: u64,
    /// Running jobs that called `wake_helpers`: while non-zero, idle workers
    /// look for rayon work instead of parking.
    help_wanted: AtomicUsize,
}

/// Everything the state lock protects.
pub(crate) struct State {
    pub(crate) queue: Queue,
    pub(crate) closed: bool,
    /// The idle worker spinning now, unless claimed.
    pub(crate) spinner: Option<usize>,
    /// Parked idle workers, unclaimed (last parked on top).
    pub(crate) sleepers: Vec<usize>,
    /// Woken idle workers that have not looked at the queue yet.
    claimed: usize,
    /// Start of the job each worker runs, if any.
    running_since: Vec<Option<Instant>>,
    running: usize,
    pub(crate) stats: Stats,
}

impl State {
    fn new(config: &PoolConfig, origin: Instant) -> Self {
        State {
            queue: Queue::new(config.queue_capacity),
            closed: false,
            spinner: None,
            // Workers start parked; the lowest index is woken first.
            sleepers: (0..config.threads).rev().collect(),
            claimed: 0,
            running_since: vec![None; config.threads],
            running: 0,
            stats: Stats::new(origin),
        }
    }

    /// Idle workers that will look at the queue before sleeping.
    fn takers(&self) -> usize {
        self.claimed + self.sleepers.len() + usize::from(self.spinner.is_some())
    }

    /// Claims one unclaimed idle worker if the queue holds more jobs than
    /// claimed workers will take: the spinner if any (no wake-up needed),
    /// else a sleeper, returned so the caller notifies it after unlocking.
    fn claim_idle(&mut self, shared: &Shared) -> Option<usize> {
        if self.queue.len() <= self.claimed {
            return None;
        }
        if let Some(index) = self.spinner.take() {
            self.claimed += 1;
            shared.slot(index).set(Wake::Queue);
            return None;
        }
        let index = self.sleepers.pop()?;
        self.claimed += 1;
        shared.slot(index).set(Wake::Queue);
        Some(index)
    }

    /// A woken worker takes itself out of the counts it was woken into.
    pub(crate) fn uncount_wake(&mut self, why: Wake) {
        if why == Wake::Queue {
            self.claimed -= 1;
        }
    }

    pub(crate) fn begin_job(&mut self, index: usize, submitted_at: Instant, now: Instant) {
        self.running += 1;
        self.running_since[index] = Some(now);
        self.stats.record_start(submitted_at, now);
    }

    pub(crate) fn end_job(
        &mut self,
        index: usize,
        status: JobStatus,
        started: Instant,
        now: Instant,
    ) {
        self.running -= 1;
        self.running_since[index] = None;
        self.stats.count_end(status);
        self.stats.record_run(started, now);
    }
}

impl Shared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn spin(&self) -> Duration {
        self.spin
    }

    pub(crate) fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Whether this pool came from the parent of a forked child (`fork.rs`).
    pub(crate) fn inherited(&self) -> bool {
        self.epoch != fork::epoch()
    }

    fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let state = if self.inherited() {
            // A lock held at the fork is held for ever here.
            match self.state.try_lock() {
                Some(state) => state,
                None => return self.zero_stats(now),
            }
        } else {
            self.state.lock()
        };
        let capture = state.stats.capture(
            now,
            self.threads,
            state.running_since.iter().flatten().copied(),
        );
        let gauges = Gauges {
            name: &self.name,
            threads: self.threads,
            queue_capacity: self.capacity,
            queued: state.queue.len(),
            running: state.running,
        };
        drop(state);
        capture.finish(gauges)
    }

    fn zero_stats(&self, now: Instant) -> PoolStats {
        let capture = Stats::new(now).capture(now, self.threads, std::iter::empty());
        capture.finish(Gauges {
            name: &self.name,
            threads: self.threads,
            queue_capacity: self.capacity,
            queued: 0,
            running: 0,
        })
    }

    /// Removes the queued job `key` and claims it for `status` (counted).
    /// `None` if it is not queued (started, ended, or never enqueued).
    pub(crate) fn remove_queued(&self, key: &QueueKey, status: JobStatus) -> Option<Arc<dyn Task>> {
        if self.inherited() {
            return None; // in a forked child nothing inherited leaves a queue
        }
        let mut state = self.state.lock();
        let task = state.queue.remove(key)?;
        let claimed = task.try_claim(status);
        debug_assert!(
            claimed,
            "queued jobs are claimed only after leaving the queue"
        );
        state.stats.count_end(status);
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
    }

    /// Forgets the timer entry and token registration of a job that left
    /// the queue (or never entered it).
    pub(crate) fn release_registrations(&self, header: &Header) {
        if let Some(deadline) = header.deadline {
            self.timer.remove(deadline, header.id);
        }
        if let Some(token) = &header.token {
            token.unregister(header.id);
        }
    }

    pub(crate) fn count_callback_panics(&self, panics: usize) {
        if panics > 0 {
            self.state.lock().stats.callback_panics += panics as u64;
        }
    }

    /// Whether a running job wants idle workers to look for rayon work.
    pub(crate) fn help_wanted(&self) -> bool {
        self.help_wanted.load(Ordering::Acquire) > 0
    }

    pub(crate) fn withdraw_help(&self) {
        self.help_wanted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wakes every parked unclaimed worker to help with rayon work; `first`
    /// when the calling job had not asked before.
    pub(crate) fn wake_helpers(&self, first: bool) {
        if first {
            self.help_wanted.fetch_add(1, Ordering::AcqRel);
        }
        let woken = {
            let mut state = self.state.lock();
            let woken = std::mem::take(&mut state.sleepers);
            for &index in &woken {
                self.slot(index).set(Wake::Help);
            }
            woken
        };
        for index in woken {
            self.slot(index).notify();
        }
    }

    fn close(&self, cancel_pending: bool) {
        if self.inherited() {
            return; // closed by the fork; its lock may be held for ever
        }
        let (cancelled, woken, rayon) = {
            let mut state = self.state.lock();
            let cancelled = if cancel_pending {
                let drained = state.queue.drain();
                for task in &drained {
                    let claimed = task.try_claim(JobStatus::Cancelled);
                    debug_assert!(
                        claimed,
                        "queued jobs are claimed only after leaving the queue"
                    );
                    state.stats.count_end(JobStatus::Cancelled);
                }
                drained
            } else {
                Vec::new()
            };
            state.closed = true;
            // Every idle worker looks at the queue once more, then exits.
            let mut woken = std::mem::take(&mut state.sleepers);
            woken.extend(state.spinner.take());
            state.claimed += woken.len();
            for &index in &woken {
                self.slot(index).set(Wake::Queue);
            }
            (cancelled, woken, self.rayon.lock().take())
        };
        for index in woken {
            self.slot(index).notify();
        }
        for task in &cancelled {
            self.finish_claimed(task);
        }
        // Lets the rayon threads exit once their worker loop returns; does
        // not block.
        drop(rayon);
    }
}
