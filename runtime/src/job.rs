//! The per-job state machine, its outcome slot and completion callbacks, and
//! the [`JobHandle`] users hold.
//!
//! # State machine
//!
//! One atomic word holds the lifecycle code and three flags:
//!
//! ```text
//! queued ──start──▶ running ──finish──▶ done | failed | cancelled
//!    └────claim──▶ cancelled | expired
//! ```
//!
//! * Leaving `queued` is a compare-and-swap, so exactly one of `start` and
//!   `claim` wins, whatever races. The winner owns the job's closure and its
//!   outcome slot exclusively until it publishes.
//! * A terminal code becomes visible through the `COMPLETE` flag, set by one
//!   read-modify-write (`publish`) *after* the outcome slot was written: a
//!   reader that sees `COMPLETE` (acquire) sees the outcome. Until then
//!   [`JobStatus`] still reports the previous state.
//! * `HAS_WAITERS` / `HAS_CALLBACKS` tell the publisher whether it must take
//!   the job's small mutex at all; registering and publishing are RMWs on the
//!   same word, which is what makes "every callback runs exactly once" hold
//!   (see [`JobCore::on_complete`]).
//! * The completion *hook*, given at submit, needs neither: it is written
//!   before the job is shared and taken only by the publisher, which owns
//!   the terminal transition. An event-loop bridge that is told of every
//!   job's end (the bindings) uses the hook, so its jobs never touch the
//!   mutex unless something blocks in [`JobHandle::wait`].

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{lock, wait_until, AtomicU32, AtomicU8, Condvar, Mutex, Ordering, UnsafeCell};
use crate::task::{self, Header, TaskCell};

/// How a running job stops without producing a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStop<E> {
    /// The job failed with an error of the caller's type.
    Failed(E),
    /// The job observed its cancel token and stopped early.
    Cancelled,
}

/// Where a job is in its life. Exactly one terminal status is ever reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    /// Lower-case name, as the Python API spells it (`"queued"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    /// True for `Done`, `Failed`, `Cancelled` and `Expired`.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T, E> {
    Done(T),
    Failed(E),
    /// The job panicked; the payload's message. Its status is `Failed`.
    Panicked(String),
    /// Cancelled while queued, or stopped early after observing its token.
    Cancelled,
    /// Its deadline passed before it started.
    Expired,
}

impl<T, E> Outcome<T, E> {
    /// The terminal status this outcome corresponds to.
    pub fn status(&self) -> JobStatus {
        match self {
            Outcome::Done(_) => JobStatus::Done,
            Outcome::Failed(_) | Outcome::Panicked(_) => JobStatus::Failed,
            Outcome::Cancelled => JobStatus::Cancelled,
            Outcome::Expired => JobStatus::Expired,
        }
    }
}

const CODE_MASK: u32 = 0b111;
const QUEUED: u32 = 0;
const RUNNING: u32 = 1;
const DONE: u32 = 2;
const FAILED: u32 = 3;
const CANCELLED: u32 = 4;
const EXPIRED: u32 = 5;
const COMPLETE: u32 = 1 << 3;
const HAS_WAITERS: u32 = 1 << 4;
const HAS_CALLBACKS: u32 = 1 << 5;

/// Outcome slot access: the first of `outcome()` (pins) and `take_outcome()`
/// (takes) decides, forever. A pinned outcome is never moved, so the
/// references `outcome()` hands out stay valid; a taken one is never lent.
const AVAILABLE: u8 = 0;
const PINNED: u8 = 1;
const TAKEN: u8 = 2;

fn code_of(status: JobStatus) -> u32 {
    match status {
        JobStatus::Queued => QUEUED,
        JobStatus::Running => RUNNING,
        JobStatus::Done => DONE,
        JobStatus::Failed => FAILED,
        JobStatus::Cancelled => CANCELLED,
        JobStatus::Expired => EXPIRED,
    }
}

fn status_of(code: u32) -> JobStatus {
    match code {
        QUEUED => JobStatus::Queued,
        RUNNING => JobStatus::Running,
        DONE => JobStatus::Done,
        FAILED => JobStatus::Failed,
        CANCELLED => JobStatus::Cancelled,
        _ => JobStatus::Expired,
    }
}

/// Code run once when a job ends: a completion hook or callback.
pub type Callback = Box<dyn FnOnce() + Send>;

/// State, outcome and completion hooks of one job.
pub(crate) struct JobCore<T, E> {
    state: AtomicU32,
    access: AtomicU8,
    /// Written once by the winner of the transition out of `queued` (or by
    /// the worker running the job) before `COMPLETE` is published.
    outcome: UnsafeCell<Option<Outcome<T, E>>>,
    /// The completion hook given at submit: set before the job is shared,
    /// taken by the publisher (the owner of the terminal transition).
    hook: UnsafeCell<Option<Callback>>,
    /// Pending callbacks; also the mutex waiters sleep on.
    callbacks: Mutex<Vec<Callback>>,
    completed: Condvar,
}

// SAFETY: the outcome slot is written only by the single owner of the
// job's terminal transition, before the release RMW that sets COMPLETE, and
// read only after an acquire load sees COMPLETE. After that it is either
// moved out once (`TAKEN`, needs `T, E: Send`) or lent as shared references
// forever (`PINNED`; `outcome()` demands `T, E: Sync` for that).
unsafe impl<T: Send, E: Send> Sync for JobCore<T, E> {}
// SAFETY: all fields are owned values moved with the core; `T`, `E` are Send.
unsafe impl<T: Send, E: Send> Send for JobCore<T, E> {}

impl<T, E> Default for JobCore<T, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> JobCore<T, E> {
    /// A queued job.
    pub(crate) fn new() -> Self {
        Self::with_hook(None)
    }

    /// A queued job whose end runs `hook` (on the publishing thread, before
    /// any callback registered later).
    pub(crate) fn with_hook(hook: Option<Callback>) -> Self {
        JobCore {
            state: AtomicU32::new(QUEUED),
            access: AtomicU8::new(AVAILABLE),
            outcome: UnsafeCell::new(None),
            hook: UnsafeCell::new(hook),
            callbacks: Mutex::new(Vec::new()),
            completed: Condvar::new(),
        }
    }

    /// Public status: a claimed but unpublished terminal state still reads
    /// as `Queued`, so `status().is_terminal()` implies `outcome()` is set.
    pub(crate) fn status(&self) -> JobStatus {
        let s = self.state.load(Ordering::Acquire);
        match (s & CODE_MASK, s & COMPLETE != 0) {
            (RUNNING, _) => JobStatus::Running,
            (code, true) => status_of(code),
            _ => JobStatus::Queued,
        }
    }

    /// The lifecycle code, published or not: `Cancelled` as soon as some
    /// thread won the cancel transition.
    pub(crate) fn claimed_status(&self) -> JobStatus {
        status_of(self.state.load(Ordering::Acquire) & CODE_MASK)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.state.load(Ordering::Acquire) & COMPLETE != 0
    }

    fn leave_queued(&self, to: u32) -> bool {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if current & CODE_MASK != QUEUED {
                return false;
            }
            let next = (current & !CODE_MASK) | to;
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// `queued -> running`. True if this caller now owns the running job.
    pub(crate) fn try_start(&self) -> bool {
        self.leave_queued(RUNNING)
    }

    /// `queued -> cancelled | expired`, not yet published. True if this
    /// caller won; it must then call [`finish_claimed`](Self::finish_claimed).
    pub(crate) fn try_claim(&self, status: JobStatus) -> bool {
        debug_assert!(matches!(status, JobStatus::Cancelled | JobStatus::Expired));
        self.leave_queued(code_of(status))
    }

    /// Publishes the outcome of a claimed job (`Cancelled` or `Expired`).
    /// Returns how many completion callbacks panicked.
    ///
    /// # Safety
    /// The caller won [`try_claim`](Self::try_claim) and has not called this
    /// before.
    pub(crate) unsafe fn finish_claimed(&self) -> usize {
        let code = self.state.load(Ordering::Relaxed) & CODE_MASK;
        let outcome = if code == EXPIRED {
            Outcome::Expired
        } else {
            Outcome::Cancelled
        };
        // SAFETY: forwarded contract: we own the terminal transition.
        unsafe {
            self.store(outcome);
            self.publish(code, status_of(code))
        }
    }

    /// Stores the outcome of a running job, to be published later by
    /// [`publish_run`](Self::publish_run) (the worker first counts it in the
    /// pool's stats, so a waiter woken by the publish sees the counters).
    ///
    /// # Safety
    /// The caller won [`try_start`](Self::try_start) and has not published.
    pub(crate) unsafe fn store_run(&self, outcome: Outcome<T, E>) {
        // SAFETY: forwarded contract.
        unsafe { self.store(outcome) }
    }

    /// Publishes the outcome stored by [`store_run`](Self::store_run), whose
    /// status is `status`. Returns how many completion callbacks panicked.
    ///
    /// # Safety
    /// The caller stored the outcome with `store_run` and has not published.
    pub(crate) unsafe fn publish_run(&self, status: JobStatus) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.publish(RUNNING, status) }
    }

    /// # Safety
    /// The caller owns the terminal transition and nobody reads the slot
    /// before `COMPLETE`.
    unsafe fn store(&self, outcome: Outcome<T, E>) {
        // SAFETY: exclusive by contract.
        self.outcome
            .with_mut(|slot| unsafe { *slot = Some(outcome) });
    }

    /// Flips the code from `from` to `to` and sets `COMPLETE` in one RMW
    /// (release: the stored outcome becomes visible), then wakes waiters and
    /// runs the hook and the callbacks. Returns how many of those panicked
    /// (each is caught; the rest still run).
    ///
    /// # Safety
    /// The caller owns the terminal transition and stored the outcome.
    unsafe fn publish(&self, from: u32, to: JobStatus) -> usize {
        let to = code_of(to);
        let prev = self.state.fetch_xor(from ^ to ^ COMPLETE, Ordering::AcqRel);
        debug_assert_eq!(prev & (CODE_MASK | COMPLETE), from);
        // SAFETY: only the owner of the terminal transition (us, by
        // contract) touches the hook after the job was shared.
        let hook = self.hook.with_mut(|hook| unsafe { (*hook).take() });
        if prev & (HAS_WAITERS | HAS_CALLBACKS) == 0 {
            return run_callbacks(hook);
        }
        let callbacks = {
            let mut guard = lock(&self.callbacks);
            if prev & HAS_WAITERS != 0 {
                self.completed.notify_all();
            }
            std::mem::take(&mut *guard)
        };
        run_callbacks(hook.into_iter().chain(callbacks))
    }

    /// Runs `f` exactly once after the job is terminal: now, on this thread,
    /// if it already is; otherwise on the thread that publishes.
    ///
    /// Registration pushes under the mutex, then sets `HAS_CALLBACKS`. If
    /// that RMW finds `COMPLETE` already set, the publisher did not see our
    /// flag (or is about to drain an older callback): our callback is the
    /// last element, we pop and run it ourselves. Otherwise the publisher's
    /// later RMW sees the flag and drains it after we unlock.
    pub(crate) fn on_complete(&self, f: Callback) {
        if self.is_complete() {
            f();
            return;
        }
        let mut guard = lock(&self.callbacks);
        guard.push(f);
        let prev = self.state.fetch_or(HAS_CALLBACKS, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            let mine = guard.pop();
            drop(guard);
            if let Some(f) = mine {
                f();
            }
        }
    }

    /// Blocks until terminal or until `timeout` passes; true if terminal.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        if self.is_complete() {
            return true;
        }
        if timeout == Some(Duration::ZERO) {
            return false;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let guard = lock(&self.callbacks);
        self.state.fetch_or(HAS_WAITERS, Ordering::AcqRel);
        wait_until(&self.completed, guard, deadline, || self.is_complete())
    }

    /// Lends the outcome for as long as the core lives (pins it: a later
    /// `take_outcome` returns `None`). `None` until terminal or once taken.
    pub(crate) fn outcome(&self) -> Option<&Outcome<T, E>> {
        if !self.is_complete() {
            return None;
        }
        match self
            .access
            .compare_exchange(AVAILABLE, PINNED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(PINNED) => {
                // SAFETY: COMPLETE was seen (acquire), so the slot is written
                // and never written again; PINNED means it is never moved.
                self.outcome.with(|slot| unsafe { (*slot).as_ref() })
            }
            Err(_) => None,
        }
    }

    /// Moves the outcome out, once. `None` until terminal, for every later
    /// caller, and if `outcome()` pinned it first.
    pub(crate) fn take_outcome(&self) -> Option<Outcome<T, E>> {
        if !self.is_complete() {
            return None;
        }
        self.access
            .compare_exchange(AVAILABLE, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // SAFETY: we won AVAILABLE -> TAKEN: no reference was ever lent and
        // no other taker exists; the slot was published before COMPLETE.
        self.outcome.with_mut(|slot| unsafe { (*slot).take() })
    }
}

/// Runs every callback, catching panics so one bad callback neither stops
/// the others nor unwinds into a worker. Returns how many panicked.
fn run_callbacks(callbacks: impl IntoIterator<Item = Callback>) -> usize {
    callbacks
        .into_iter()
        .map(|f| panic::catch_unwind(AssertUnwindSafe(f)).is_err() as usize)
        .sum()
}

/// Best-effort text of a panic payload (also for panics the bindings catch).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "job panicked with a non-string payload".to_owned()
    }
}

/// A submitted job: cheap to clone, shareable across threads.
///
/// The outcome can be read in one of two ways, whichever comes first wins
/// for the life of the job: [`outcome`](Self::outcome) lends it (and pins
/// it), [`take_outcome`](Self::take_outcome) moves it out once. After a
/// take, `outcome()` returns `None`; after a pin, `take_outcome()` does.
pub struct JobHandle<T, E> {
    cell: Arc<dyn TaskCell<T, E>>,
}

impl<T, E> Clone for JobHandle<T, E> {
    fn clone(&self) -> Self {
        JobHandle {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> std::fmt::Debug for JobHandle<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id())
            .field("status", &self.status())
            .finish()
    }
}

impl<T: Send + 'static, E: Send + 'static> JobHandle<T, E> {
    pub(crate) fn new(cell: Arc<dyn TaskCell<T, E>>) -> Self {
        JobHandle { cell }
    }

    fn header(&self) -> &Header {
        self.cell.header()
    }

    fn core(&self) -> &JobCore<T, E> {
        self.cell.core()
    }

    /// Unique among all jobs of the process.
    pub fn id(&self) -> u64 {
        self.header().id
    }

    pub fn status(&self) -> JobStatus {
        self.core().status()
    }

    pub fn is_terminal(&self) -> bool {
        self.core().is_complete()
    }

    /// Cancels the job if it is still queued: it leaves the queue at once
    /// (its slot is free for the next submit), its closure is dropped and
    /// it ends `Cancelled`. True if so, or if it already was cancelled;
    /// false if it is running or ended otherwise.
    pub fn cancel(&self) -> bool {
        if self.core().claimed_status() == JobStatus::Queued {
            let task = Arc::clone(&self.cell).into_task();
            task::cancel_queued(&task);
        }
        self.core().claimed_status() == JobStatus::Cancelled
    }

    /// Blocks until the job is terminal or `timeout` passes (`None`: no
    /// limit). True if terminal.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        self.core().wait(timeout)
    }

    /// The outcome, once terminal; pins it (see the type's docs).
    pub fn outcome(&self) -> Option<&Outcome<T, E>>
    where
        T: Sync,
        E: Sync,
    {
        self.core().outcome()
    }

    /// Moves the outcome out: `Some` for the first caller once terminal.
    pub fn take_outcome(&self) -> Option<Outcome<T, E>> {
        self.core().take_outcome()
    }

    /// Runs `f` exactly once after the job is terminal: at once on this
    /// thread if it already is, else on the thread that ends the job (a
    /// worker, a canceller, the timer), never under a pool lock. A panic in
    /// `f` is caught there and counted in `PoolStats::callback_panics`; here
    /// (already terminal) it unwinds into the caller.
    pub fn on_complete(&self, f: impl FnOnce() + Send + 'static) {
        self.core().on_complete(Box::new(f));
    }
}
