//! The type-erased unit the queue holds: a job's header, its closure and its
//! [`JobCore`], in one allocation shared by the queue and every handle.
//!
//! Ownership rule: whoever wins the job's transition out of `queued` (a
//! worker starting it, or a canceller / the timer / `close` claiming it)
//! owns the closure. Queued-to-terminal transitions only happen to jobs
//! removed from the queue under the pool lock, so the queue never holds a
//! job that is not `queued`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::context::JobContext;
use crate::job::{panic_message, Callback, JobCore, JobStatus, JobStop, Outcome};
use crate::pool::Shared;
use crate::queue::QueueKey;
use crate::sync::UnsafeCell;
use crate::token::CancelToken;

/// Immutable facts about a job.
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) priority: i64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) submitted_at: Instant,
    pub(crate) token: Option<CancelToken>,
    pub(crate) pool: Weak<Shared>,
}

impl Header {
    pub(crate) fn key(&self) -> QueueKey {
        QueueKey::new(self.priority, self.id)
    }
}

/// What the pool needs from a job, whatever its result types.
pub(crate) trait Task: Send + Sync {
    fn header(&self) -> &Header;
    /// `queued -> running`; true if the caller now owns the run.
    fn try_start(&self) -> bool;
    /// `queued -> status` (cancelled or expired), unpublished.
    fn try_claim(&self, status: JobStatus) -> bool;
    /// Runs the closure and stores its outcome; returns its status.
    ///
    /// # Safety
    /// The caller won `try_start` and runs the job once.
    unsafe fn run(&self, ctx: &JobContext<'_>) -> JobStatus;
    /// Publishes what `run` stored. Returns callback panics.
    ///
    /// # Safety
    /// After `run` returned `status`, once.
    unsafe fn publish_run(&self, status: JobStatus) -> usize;
    /// Drops the closure and publishes the claimed terminal state. Returns
    /// callback panics.
    ///
    /// # Safety
    /// The caller won `try_claim`, once.
    unsafe fn finish_claimed(&self) -> usize;
}

/// What a [`JobHandle`](crate::JobHandle) needs: the typed core.
pub(crate) trait TaskCell<T, E>: Send + Sync {
    fn header(&self) -> &Header;
    fn core(&self) -> &JobCore<T, E>;
    fn into_task(self: Arc<Self>) -> Arc<dyn Task>;
}

pub(crate) struct JobCell<T, E, F> {
    header: Header,
    core: JobCore<T, E>,
    func: UnsafeCell<Option<F>>,
}

// SAFETY: `func` is only touched by the owner of the transition out of
// `queued` (see the module docs); `core` is Sync for Send `T`, `E`.
unsafe impl<T: Send, E: Send, F: Send> Sync for JobCell<T, E, F> {}

impl<T, E, F> JobCell<T, E, F>
where
    F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new(header: Header, func: F, hook: Option<Callback>) -> Self {
        JobCell {
            header,
            core: JobCore::with_hook(hook),
            func: UnsafeCell::new(Some(func)),
        }
    }

    /// # Safety
    /// The caller owns the transition out of `queued`.
    unsafe fn take_func(&self) -> F {
        // SAFETY: exclusive by contract.
        let func = self.func.with_mut(|slot| unsafe { (*slot).take() });
        func.expect("a job's closure is taken once, by the owner of its first transition")
    }
}

impl<T, E, F> Task for JobCell<T, E, F>
where
    F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn header(&self) -> &Header {
        &self.header
    }

    fn try_start(&self) -> bool {
        self.core.try_start()
    }

    fn try_claim(&self, status: JobStatus) -> bool {
        self.core.try_claim(status)
    }

    unsafe fn run(&self, ctx: &JobContext<'_>) -> JobStatus {
        // SAFETY: the caller won `try_start`.
        let func = unsafe { self.take_func() };
        let outcome = match panic::catch_unwind(AssertUnwindSafe(|| func(ctx))) {
            Ok(Ok(value)) => Outcome::Done(value),
            Ok(Err(JobStop::Failed(error))) => Outcome::Failed(error),
            Ok(Err(JobStop::Cancelled)) => Outcome::Cancelled,
            Err(payload) => Outcome::Panicked(panic_message(&*payload)),
        };
        let status = outcome.status();
        // SAFETY: we own the running job and have not published.
        unsafe { self.core.store_run(outcome) };
        status
    }

    unsafe fn publish_run(&self, status: JobStatus) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.core.publish_run(status) }
    }

    unsafe fn finish_claimed(&self) -> usize {
        // SAFETY: the caller won `try_claim`: the closure is ours to drop,
        // before waiters learn the job ended (its captures are released).
        drop(unsafe { self.take_func() });
        // SAFETY: forwarded contract.
        unsafe { self.core.finish_claimed() }
    }
}

impl<T, E, F> TaskCell<T, E> for JobCell<T, E, F>
where
    F: FnOnce(&JobContext<'_>) -> Result<T, JobStop<E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn header(&self) -> &Header {
        &self.header
    }

    fn core(&self) -> &JobCore<T, E> {
        &self.core
    }

    fn into_task(self: Arc<Self>) -> Arc<dyn Task> {
        self
    }
}

/// Cancels `task` if it is still in its pool's queue (it leaves the queue at
/// once). True if this call cancelled it.
pub(crate) fn cancel_queued(task: &Arc<dyn Task>) -> bool {
    let Some(shared) = task.header().pool.upgrade() else {
        // Workers hold the pool while any job is queued.
        return false;
    };
    match shared.remove_queued(&task.header().key(), JobStatus::Cancelled) {
        Some(removed) => {
            shared.finish_claimed(&removed);
            true
        }
        None => false,
    }
}
