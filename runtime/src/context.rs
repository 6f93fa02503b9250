//! What a running job can see of where it runs.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::budget::BudgetShared;
use crate::pool::Shared;
use crate::token::CancelToken;

/// Passed to every job closure. Lives for the duration of the run; `Sync`,
/// so parallel pieces of the job may check [`is_cancelled`](Self::is_cancelled).
pub struct JobContext<'a> {
    budget: &'a BudgetShared,
    pool: &'a Shared,
    thread_index: usize,
    token: Option<&'a CancelToken>,
    /// Whether this job counts in the budget's `help_wanted` (once per job).
    wants_help: AtomicBool,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(
        budget: &'a BudgetShared,
        pool: &'a Shared,
        thread_index: usize,
        token: Option<&'a CancelToken>,
    ) -> Self {
        JobContext {
            budget,
            pool,
            thread_index,
            token,
            wants_help: AtomicBool::new(false),
        }
    }

    /// Withdraws this job's help request, if it made one. Called by the
    /// worker when the job returns.
    pub(crate) fn end(&self) {
        if self.wants_help.load(Ordering::Relaxed) {
            self.budget.withdraw_help();
        }
    }

    /// True once this job's token was cancelled (one atomic load): long
    /// kernels check it between chunks and return `Err(JobStop::Cancelled)`.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_some_and(CancelToken::is_cancelled)
    }

    /// Index of the budget worker running the job, in `0..budget_threads()`.
    pub fn thread_index(&self) -> usize {
        self.thread_index
    }

    /// Threads this job's pool may occupy at once (its cap on a shared
    /// budget): how many ways a kernel may split.
    pub fn pool_threads(&self) -> usize {
        self.pool.cap()
    }

    /// Threads of the budget the job runs on.
    pub fn budget_threads(&self) -> usize {
        self.budget.threads()
    }

    pub fn pool_name(&self) -> &str {
        self.pool.name()
    }

    pub fn budget_name(&self) -> &str {
        self.budget.name()
    }

    /// Wakes parked idle workers of the budget (at most as many as the
    /// pool's cap leaves free) so they help with the rayon work this job
    /// splits (`par_iter`, `join`). Until the job returns, idle workers
    /// keep looking for rayon work instead of parking (they still take
    /// queued jobs first). Call it before a parallel section; without it,
    /// parked workers do not join in.
    pub fn wake_helpers(&self) {
        let first = !self.wants_help.swap(true, Ordering::Relaxed);
        self.budget.wake_helpers(self.pool.member(), first);
    }
}
