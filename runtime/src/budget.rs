//! Budgets: a fixed set of native worker threads that serve one or more
//! pools, with weighted fair sharing between them (`scheduler.rs`) and one
//! idle protocol (`idle.rs`).
//!
//! A pool built without a budget runs on a private budget of its own
//! threads, so there is one scheduler, one worker loop and one wake
//! protocol whatever the number of pools.
//!
//! Lock order: the budget lock (`BudgetShared::sched`, which also guards
//! every member pool's state) may be held while taking the deadline
//! timer's lock or a pool's drain lock, never the reverse. Nothing
//! user-supplied runs under it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lock::{Condvar, Mutex, MutexGuard};

use crate::error::BuildError;
use crate::fork;
use crate::idle::Slot;
use crate::scheduler::Sched;
use crate::stats;
use crate::timer::{self, Timer};
use crate::worker;

/// Default stack of a worker thread: Python callables run on workers.
const DEFAULT_STACK_SIZE: usize = 4 << 20;
/// Default time an idle worker spins before parking.
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// A hook run on a worker thread with its index.
pub type ThreadHook = Arc<dyn Fn(usize) + Send + Sync>;

/// How to build a [`Budget`].
#[derive(Clone)]
pub struct BudgetConfig {
    pub name: String,
    /// Worker threads, >= 1.
    pub threads: usize,
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

impl BudgetConfig {
    pub fn new(name: impl Into<String>, threads: usize) -> Self {
        BudgetConfig {
            name: name.into(),
            threads,
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
        } else if self.stack_size == Some(0) {
            Err(BuildError::ZeroStackSize)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for BudgetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetConfig")
            .field("name", &self.name)
            .field("threads", &self.threads)
            .field("spin", &self.spin)
            .field("stack_size", &self.stack_size)
            .field("on_thread_start", &self.on_thread_start.is_some())
            .field("on_thread_stop", &self.on_thread_stop.is_some())
            .finish()
    }
}

/// A snapshot of a budget (taken under its lock).
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetStats {
    pub name: String,
    pub threads: usize,
    /// Jobs running now, all pools.
    pub running: u64,
    /// Busy thread time / (threads x elapsed) over the last ~10 s.
    pub utilization: f64,
    /// `(pool name, fraction of the budget's busy time over the last
    /// ~10 s)`, one entry per pool name, in name order; all zero while
    /// nothing ran.
    pub shares: Vec<(String, f64)>,
}

/// A set of native worker threads shared by pools. Cheap to clone; the
/// budget closes when the last clone and the last pool on it go.
#[derive(Clone)]
pub struct Budget {
    handle: Arc<Handle>,
}

/// Closes the budget when the last [`Budget`] clone goes away.
struct Handle {
    shared: Arc<BudgetShared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(false);
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("name", &self.shared().name)
            .field("threads", &self.shared().threads)
            .field("closed", &self.is_closed())
            .finish()
    }
}

thread_local! {
    /// The budget whose worker this thread is (address of its
    /// `BudgetShared`; 0 on other threads): the one answer to "am I a
    /// worker, and of which budget" (`join` refuses to wait for its own
    /// thread; the bindings keep a worker's Python thread state).
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is a worker of some budget.
pub fn on_worker_thread() -> bool {
    WORKER_OF.with(|w| w.get() != 0)
}

impl Budget {
    /// Starts `config.threads` workers (they park until work arrives).
    pub fn new(config: BudgetConfig) -> Result<Budget, BuildError> {
        config.validate()?;
        fork::watch();
        let timer = timer::global().map_err(|e| BuildError::Spawn(e.to_string()))?;
        let exits = Arc::new(ExitCount::default());
        let origin = Instant::now();
        let shared = Arc::new(BudgetShared {
            name: config.name.clone(),
            threads: config.threads,
            spin: config.spin,
            sched: Mutex::new(Sched::new(config.threads, origin)),
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
            let shared: &BudgetShared = &worker_shared;
            WORKER_OF.with(|w| w.set(shared as *const BudgetShared as usize));
            worker::run(shared, ctx.index());
            WORKER_OF.with(|w| w.set(0));
        });
        *shared.rayon.lock() = Some(rayon);
        Ok(Budget {
            handle: Arc::new(Handle { shared }),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<BudgetShared> {
        &self.handle.shared
    }

    pub fn name(&self) -> &str {
        &self.shared().name
    }

    pub fn threads(&self) -> usize {
        self.shared().threads
    }

    pub fn is_closed(&self) -> bool {
        let shared = self.shared();
        shared.inherited() || shared.sched.lock().closed
    }

    /// Closes every pool on the budget (as [`Pool::close`](crate::Pool::close)
    /// does), then lets its threads exit once no job is queued. Idempotent;
    /// never waits for running jobs.
    pub fn close(&self, cancel_pending: bool) {
        self.shared().close(cancel_pending);
    }

    /// Waits until every worker thread exited (which needs
    /// [`close`](Self::close)). True if so within `timeout` (`None`: no
    /// limit); false at once on one of the budget's own workers.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        let shared = self.shared();
        if shared.inherited() {
            return true; // its threads do not exist in this process
        }
        if shared.is_current_worker() {
            return false;
        }
        shared.exits.wait_for(shared.threads, timeout)
    }

    /// A consistent snapshot of the budget's use.
    pub fn stats(&self) -> BudgetStats {
        self.shared().stats()
    }

    /// Whether the calling thread is one of this budget's workers.
    pub fn is_current_worker(&self) -> bool {
        self.shared().is_current_worker()
    }
}

fn build_rayon(
    config: &BudgetConfig,
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

/// State shared by a budget's handles, its pools and its workers.
pub(crate) struct BudgetShared {
    name: String,
    threads: usize,
    spin: Duration,
    sched: Mutex<Sched>,
    slots: Box<[Slot]>,
    /// The budget's rayon threads; dropped by `close` (rayon then lets the
    /// threads exit once their worker loop returns).
    rayon: Mutex<Option<rayon::ThreadPool>>,
    exits: Arc<ExitCount>,
    timer: &'static Timer,
    /// The fork epoch this budget was made in: in a later one (a forked
    /// child) its threads and lock holders are gone, see `fork.rs`.
    epoch: u64,
    /// Running jobs that called `wake_helpers`: while non-zero, idle workers
    /// look for rayon work instead of parking.
    help_wanted: AtomicUsize,
}

impl BudgetShared {
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

    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub(crate) fn timer(&self) -> &'static Timer {
        self.timer
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock()
    }

    /// A lock that may have been held at a fork is held for ever in the
    /// child: there, only try it.
    pub(crate) fn try_lock_inherited(&self) -> Option<MutexGuard<'_, Sched>> {
        if self.inherited() {
            self.sched.try_lock()
        } else {
            Some(self.sched.lock())
        }
    }

    /// Whether this budget came from the parent of a forked child.
    pub(crate) fn inherited(&self) -> bool {
        self.epoch != fork::epoch()
    }

    pub(crate) fn is_current_worker(&self) -> bool {
        WORKER_OF.with(|w| w.get() == self as *const BudgetShared as usize)
    }

    /// Whether a running job wants idle workers to look for rayon work.
    pub(crate) fn help_wanted(&self) -> bool {
        self.help_wanted.load(Ordering::Acquire) > 0
    }

    pub(crate) fn withdraw_help(&self) {
        self.help_wanted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wakes parked idle workers to help with the rayon work of a job of
    /// pool `member`: at most as many as the pool's cap leaves free.
    /// `first` when the calling job had not asked before.
    pub(crate) fn wake_helpers(&self, member: usize, first: bool) {
        if first {
            self.help_wanted.fetch_add(1, Ordering::AcqRel);
        }
        let woken = {
            let mut sched = self.sched.lock();
            let pool = sched.pool(member);
            let limit = pool.cap.saturating_sub(pool.running);
            sched.idle.wake_helpers(limit, &self.slots)
        };
        for index in woken {
            self.slot(index).notify();
        }
    }

    fn stats(&self) -> BudgetStats {
        let now = Instant::now();
        let Some(sched) = self.try_lock_inherited() else {
            return BudgetStats {
                name: self.name.clone(),
                threads: self.threads,
                running: 0,
                utilization: 0.0,
                shares: Vec::new(),
            };
        };
        let mut busy_by_name: BTreeMap<String, f64> = BTreeMap::new();
        let mut total = 0.0;
        let mut elapsed = 0.0;
        let mut running = 0;
        for (member, pool) in sched.pools() {
            let (busy, window) = pool.stats.busy(now, sched.running_since(member));
            *busy_by_name.entry(pool.name.to_string()).or_default() += busy;
            total += busy;
            elapsed = window;
            running += pool.running;
        }
        drop(sched);
        let shares = busy_by_name
            .into_iter()
            .map(|(name, busy)| {
                let share = if total > 0.0 { busy / total } else { 0.0 };
                (name, share)
            })
            .collect();
        BudgetStats {
            name: self.name.clone(),
            threads: self.threads,
            running: running as u64,
            utilization: stats::utilization(total, self.threads, elapsed),
            shares,
        }
    }

    pub(crate) fn close(&self, cancel_pending: bool) {
        if self.inherited() {
            return; // closed by the fork; its lock may be held for ever
        }
        let mut cancelled = Vec::new();
        let mut released = Vec::new();
        let (woken, rayon) = {
            let mut sched = self.sched.lock();
            for (member, pool) in sched.live_pools() {
                let (tasks, release) = pool.close_locked(&mut sched, member, cancel_pending);
                cancelled.push((Arc::clone(&pool), tasks));
                released.extend(release);
                released.push(pool);
            }
            sched.closed = true;
            // Every idle worker looks at the queues once more, then exits.
            let woken = sched.idle.claim_all(&self.slots);
            (woken, self.rayon.lock().take())
        };
        for index in woken {
            self.slot(index).notify();
        }
        for (pool, tasks) in &cancelled {
            for task in tasks {
                pool.finish_claimed(task);
            }
        }
        // Pool references are dropped with no lock held (a pool's drop
        // takes the budget lock).
        drop(cancelled);
        drop(released);
        // Lets the rayon threads exit once their worker loop returns; does
        // not block.
        drop(rayon);
    }
}
