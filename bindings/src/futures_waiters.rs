//! The `concurrent.futures` internals that `wait` and `as_completed` reach
//! into (`_condition`, `_waiters`): made on first access, since most jobs
//! are only awaited, and notified when the job ends, as
//! `Future.set_result` does.

use pyo3::prelude::*;
use pyo3::types::PyList;
use raptors_runtime::JobStatus;

use crate::job::JobBase;

pub struct FuturesWaiters {
    pub condition: PyObject,
    pub waiters: PyObject,
}

impl FuturesWaiters {
    pub fn new(py: Python<'_>) -> PyResult<FuturesWaiters> {
        Ok(FuturesWaiters {
            condition: py.import("threading")?.call_method0("Condition")?.unbind(),
            waiters: PyList::empty(py).into_any().unbind(),
        })
    }

    /// Tells every waiter how `job` ended, under the condition, and wakes
    /// threads blocked in `wait` on it.
    pub fn notify(&self, py: Python<'_>, job: &Bound<'_, JobBase>) -> PyResult<()> {
        let condition = self.condition.bind(py);
        condition.call_method0("acquire")?;
        let notified = (|| -> PyResult<()> {
            let method = match job.get().status() {
                JobStatus::Cancelled => "add_cancelled",
                JobStatus::Done => "add_result",
                _ => "add_exception",
            };
            for waiter in self.waiters.bind(py).try_iter()? {
                waiter?.call_method1(method, (job,))?;
            }
            condition.call_method0("notify_all").map(drop)
        })();
        condition.call_method0("release")?;
        notified
    }
}

/// `concurrent.futures`' name for a job's state.
pub fn state_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "PENDING",
        JobStatus::Running => "RUNNING",
        JobStatus::Cancelled => "CANCELLED_AND_NOTIFIED",
        JobStatus::Done | JobStatus::Failed | JobStatus::Expired => "FINISHED",
    }
}
