//! `raptors._raptors`: the only place Raptors touches Python.
//!
//! - [`pool`]: `PoolCore`, the native half of `rp.Pool` (submit, stats, close).
//! - [`budget`]: `BudgetCore` and `rp.BudgetStats`, threads shared by pools,
//!   and how every worker thread is set up.
//! - [`job`]: `rp.Job`, a `concurrent.futures.Future` that can be awaited;
//!   [`listeners`]: who is told when it ends; [`awaiter`]: `await job`;
//!   [`futures_waiters`]: what `concurrent.futures.wait` reaches into.
//! - [`hub`]: per-event-loop completion delivery, batched.
//! - [`task`]: what a job runs (kernel or Python callable) and ends with.
//! - [`kernel`], [`convert`], [`array`]: kernels as Python callables, input
//!   and output conversion, and `rp.Array`.
//! - [`gil`]: every rule about when the GIL is held or released.
//! - [`errors`], [`token`], [`stats`]: the exception hierarchy,
//!   `rp.CancelToken` and `rp.PoolStats`.
//! - [`timeout`]: the one parser of every `timeout=` argument.

mod array;
mod awaiter;
mod budget;
mod convert;
mod errors;
mod futures_waiters;
mod gil;
mod hub;
mod job;
mod kernel;
mod listeners;
mod pool;
mod stats;
mod task;
mod timeout;
mod token;

use pyo3::prelude::*;

/// Jobs are allocated on the submitting thread and freed on a worker; glibc's
/// allocator serialises that pattern, mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Called by the package's `os.register_at_fork` child hook.
#[pyfunction]
fn _after_fork_in_child() {
    hub::forget_after_fork();
}

/// Called by the package's `atexit` hook once every pool has been closed.
#[pyfunction]
fn _interpreter_exiting() {
    gil::interpreter_exiting();
}

#[pymodule]
fn _raptors(module: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(module)?;
    module.add_class::<budget::BudgetCore>()?;
    module.add_class::<budget::BudgetStats>()?;
    module.add_class::<pool::PoolCore>()?;
    job::register(module)?;
    module.add_class::<awaiter::JobAwait>()?;
    module.add_class::<hub::Hub>()?;
    module.add_class::<token::CancelToken>()?;
    module.add_class::<stats::PoolStats>()?;
    module.add_class::<kernel::Kernel>()?;
    module.add_class::<array::Array>()?;
    kernel::register(module)?;
    module.add_function(wrap_pyfunction!(_interpreter_exiting, module)?)?;
    module.add_function(wrap_pyfunction!(_after_fork_in_child, module)?)?;
    module.add_function(wrap_pyfunction!(budget::_usable_cores, module)?)?;
    module.add_function(wrap_pyfunction!(timeout::_timeout_seconds, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
