//! What a running job can see of where it runs.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::pool::Shared;
use crate::token::CancelToken;

/// Passed to every job closure. Lives for the duration of the run; `Sync`,
/// so parallel pieces of the job may check [`is_cancelled`](Self::is_cancelled).
pub struct JobContext<'a> {
    shared: &'a Shared,
    thread_index: usize,
    token: Option<&'a CancelToken>,
    /// Whether this job counts in `Shared::help_wanted` (once per job).
    wants_help: AtomicBool,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        thread_index: usize,
        token: Option<&'a CancelToken>,
    ) -> Self {
        JobContext {
            shared,
            thread_index,
            token,
            wants_help: AtomicBool::new(false),
        }
    }

    /// Withdraws this job's help request, if it made one. Called by the
    /// worker when the job returns.
    pub(crate) fn end(&self) {
        if self.wants_help.load(Ordering::Relaxed) {
            self.shared.withdraw_help();
        }
    }

    /// True once this job's token was cancelled (one atomic load): long
    /// kernels check it between chunks and return `Err(JobStop::Cancelled)`.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_some_and(CancelToken::is_cancelled)
    }

    /// Index of the worker running the job, in `0..pool_threads()`.
    pub fn thread_index(&self) -> usize {
        self.thread_index
    }

    pub fn pool_threads(&self) -> usize {
        self.shared.threads()
    }

    pub fn pool_name(&self) -> &str {
        self.shared.name()
    }

    /// Wakes this pool's parked idle workers so they help with the rayon
    /// work this job splits (`par_iter`, `join`). Until the job returns,
    /// idle workers keep looking for its rayon work instead of parking
    /// (they still take queued jobs first). Call it before a parallel
    /// section; without it, parked workers do not join in.
    pub fn wake_helpers(&self) {
        let first = !self.wants_help.swap(true, Ordering::Relaxed);
        self.shared.wake_helpers(first);
    }
}
