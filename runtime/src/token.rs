//! Cancellation tokens shared by any number of jobs, in any pools.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use crate::lock::Mutex;

use crate::task::{self, Task};

/// Cancels every queued job submitted with it, and tells running ones to
/// stop early ([`JobContext::is_cancelled`](crate::JobContext::is_cancelled)).
///
/// Invariant: a job is registered with its token while it is queued. The
/// `cancelled` flag is set and the registry drained under the registry
/// lock, and registration checks the flag under the same lock, so a job is
/// either refused at registration (and submitted already cancelled) or found
/// by `cancel`. The pool re-checks the flag under its own lock before
/// enqueueing, which closes the window between registering and enqueueing.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Mirror of the registry's flag, for lock-free checks by running jobs.
    cancelled: AtomicBool,
    jobs: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    cancelled: bool,
    queued: HashMap<u64, Weak<dyn Task>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// One atomic load.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Cancels every job still queued with this token (each leaves its
    /// queue before this returns) and flags running ones. Idempotent.
    pub fn cancel(&self) {
        let queued = {
            let mut jobs = self.inner.jobs.lock();
            if jobs.cancelled {
                return;
            }
            jobs.cancelled = true;
            self.inner.cancelled.store(true, Ordering::Release);
            std::mem::take(&mut jobs.queued)
        };
        for job in queued.into_values() {
            if let Some(job) = job.upgrade() {
                task::cancel_queued(&job);
            }
        }
    }

    /// Registers a queued job; false (not registered) if already cancelled.
    pub(crate) fn register(&self, id: u64, job: Weak<dyn Task>) -> bool {
        let mut jobs = self.inner.jobs.lock();
        if jobs.cancelled {
            return false;
        }
        jobs.queued.insert(id, job);
        true
    }

    /// Forgets a job that left the queue, keeping the registry bounded.
    pub(crate) fn unregister(&self, id: u64) {
        let mut jobs = self.inner.jobs.lock();
        if !jobs.cancelled {
            jobs.queued.remove(&id);
        }
    }

    /// Same token (clones share one).
    pub fn same_as(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
