//! Cancellation tokens shared by any number of jobs, in any pools.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crate::sync::{lock, AtomicBool, Mutex, Ordering};
use crate::task::{self, Task};

/// Cancels every queued job submitted with it, and tells running ones to
/// stop early ([`JobContext::is_cancelled`](crate::JobContext::is_cancelled)).
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Registry<Weak<dyn Task>>>,
}

/// The jobs queued with one token, by id.
///
/// Invariant: a job is registered while it is queued. The `cancelled` flag
/// is set and the map drained under the lock, and registration checks the
/// flag under the same lock, so a job is either refused at registration
/// (and submitted already cancelled) or handed to `cancel`'s caller. The
/// pool re-checks the flag under its own lock before enqueueing, which
/// closes the window between registering and enqueueing: a `cancel` that
/// drains the job before it is queued has set the flag before it takes the
/// pool's lock to remove it. Loom model: `tests/loom.rs`.
pub(crate) struct Registry<E> {
    /// Mirror of `Entries::cancelled`, for lock-free checks by running jobs.
    cancelled: AtomicBool,
    entries: Mutex<Entries<E>>,
}

struct Entries<E> {
    cancelled: bool,
    queued: HashMap<u64, E>,
}

impl<E> Default for Registry<E> {
    fn default() -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            entries: Mutex::new(Entries {
                cancelled: false,
                queued: HashMap::new(),
            }),
        }
    }
}

impl<E> Registry<E> {
    /// One atomic load.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the token cancelled; the jobs registered until now, for the
    /// caller to cancel, or `None` if it was cancelled before.
    pub(crate) fn cancel(&self) -> Option<HashMap<u64, E>> {
        let mut entries = lock(&self.entries);
        if entries.cancelled {
            return None;
        }
        entries.cancelled = true;
        self.cancelled.store(true, Ordering::Release);
        Some(std::mem::take(&mut entries.queued))
    }

    /// Registers a queued job; false (not registered) if already cancelled.
    pub(crate) fn register(&self, id: u64, job: E) -> bool {
        let mut entries = lock(&self.entries);
        if entries.cancelled {
            return false;
        }
        entries.queued.insert(id, job);
        true
    }

    /// Forgets a job that left the queue, keeping the map bounded.
    pub(crate) fn unregister(&self, id: u64) {
        let mut entries = lock(&self.entries);
        if !entries.cancelled {
            entries.queued.remove(&id);
        }
    }
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
        self.inner.is_cancelled()
    }

    /// Cancels every job still queued with this token (each leaves its
    /// queue before this returns) and flags running ones. Idempotent.
    pub fn cancel(&self) {
        for job in self
            .inner
            .cancel()
            .into_iter()
            .flat_map(HashMap::into_values)
        {
            if let Some(job) = job.upgrade() {
                task::cancel_queued(&job);
            }
        }
    }

    /// Registers a queued job; false (not registered) if already cancelled.
    pub(crate) fn register(&self, id: u64, job: Weak<dyn Task>) -> bool {
        self.inner.register(id, job)
    }

    /// Forgets a job that left the queue.
    pub(crate) fn unregister(&self, id: u64) {
        self.inner.unregister(id);
    }

    /// Same token (clones share one).
    pub fn same_as(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
