//! The Raptors exception hierarchy, defined once here and re-exported by the
//! Python package.
//!
//! ```text
//! RaptorsError(Exception)
//! ├── QueueFull            .pool, .capacity
//! │   └── WouldMissDeadline .predicted_wait, .timeout (seconds)
//! ├── PoolClosed           .pool
//! └── DeadlineExceeded     also a TimeoutError
//! JobCancelled(concurrent.futures.CancelledError, asyncio.CancelledError)
//! OversubscriptionWarning(RuntimeWarning)
//! ```
//!
//! `JobCancelled` is what a cancelled job raises. It derives from both
//! cancellation errors so that `job.result()` raises a
//! `concurrent.futures.CancelledError` while `await job` surfaces an
//! `asyncio.CancelledError` (a Task that wakes on a cancelled job sees an
//! `asyncio.CancelledError` and ends cancelled, not failed).

use pyo3::exceptions::{PyMemoryError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};
use raptors_kernels::KernelError;
use raptors_runtime::SubmitError;

struct Hierarchy {
    raptors_error: Py<PyType>,
    queue_full: Py<PyType>,
    would_miss_deadline: Py<PyType>,
    pool_closed: Py<PyType>,
    deadline_exceeded: Py<PyType>,
    job_cancelled: Py<PyType>,
    oversubscription: Py<PyType>,
}

static HIERARCHY: GILOnceCell<Hierarchy> = GILOnceCell::new();

fn new_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[&Bound<'py, PyAny>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "raptors")?;
    namespace.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let class = py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .downcast_into::<PyType>()?;
    Ok(class.unbind())
}

fn hierarchy(py: Python<'_>) -> &Hierarchy {
    HIERARCHY
        .get_or_try_init(py, || -> PyResult<Hierarchy> {
            let exception = py.get_type::<pyo3::exceptions::PyException>();
            let timeout = py.get_type::<pyo3::exceptions::PyTimeoutError>();
            let runtime_error = py.get_type::<pyo3::exceptions::PyRuntimeError>();
            let raptors_error = new_class(
                py,
                "RaptorsError",
                &[exception.as_any()],
                "Base class of every error Raptors raises.",
            )?;
            let base = raptors_error.bind(py).clone().into_any();
            let queue_full = new_class(
                py,
                "QueueFull",
                &[&base],
                "Every worker is busy and the pool's queue is at capacity: the job was not accepted.\n\n\
                 Attributes: ``pool`` (the pool's name) and ``capacity`` (its queue bound).",
            )?;
            let would_miss_deadline = new_class(
                py,
                "WouldMissDeadline",
                &[queue_full.bind(py).as_any()],
                "Predictive admission: the job's predicted wait before it could start exceeds \
                 its timeout, so it was not accepted (a QueueFull: a 503 handler sheds it).\n\n\
                 Attributes: ``pool``, ``capacity``, ``predicted_wait`` and ``timeout`` \
                 (seconds).",
            )?;
            let pool_closed = new_class(
                py,
                "PoolClosed",
                &[&base, runtime_error.as_any()],
                "The pool is closed and accepts no new jobs (also a RuntimeError, as \
                 Executor.submit after shutdown promises). Attribute: ``pool``.",
            )?;
            let deadline_exceeded = new_class(
                py,
                "DeadlineExceeded",
                &[&base, timeout.as_any()],
                "The job did not start before its timeout; it never ran.",
            )?;
            let cf_cancelled = py
                .import("concurrent.futures")?
                .getattr("CancelledError")?;
            let asyncio_cancelled = py.import("asyncio")?.getattr("CancelledError")?;
            let job_cancelled = new_class(
                py,
                "JobCancelled",
                &[&cf_cancelled, &asyncio_cancelled],
                "The job was cancelled. It is both a concurrent.futures.CancelledError and an \
                 asyncio.CancelledError.",
            )?;
            let runtime_warning = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            let oversubscription = new_class(
                py,
                "OversubscriptionWarning",
                &[runtime_warning.as_any()],
                "The native worker threads of the open pools and budgets exceed the usable \
                 cores: they compete for them through the OS scheduler instead of sharing a \
                 budget. Emitted once per process.",
            )?;
            Ok(Hierarchy {
                oversubscription,
                raptors_error,
                queue_full,
                would_miss_deadline,
                pool_closed,
                deadline_exceeded,
                job_cancelled,
            })
        })
        .expect("creating the Raptors exception classes cannot fail")
}

/// Adds the exception classes to the extension module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let h = hierarchy(py);
    module.add("RaptorsError", h.raptors_error.bind(py))?;
    module.add("QueueFull", h.queue_full.bind(py))?;
    module.add("WouldMissDeadline", h.would_miss_deadline.bind(py))?;
    module.add("PoolClosed", h.pool_closed.bind(py))?;
    module.add("DeadlineExceeded", h.deadline_exceeded.bind(py))?;
    module.add("JobCancelled", h.job_cancelled.bind(py))?;
    module.add("OversubscriptionWarning", h.oversubscription.bind(py))?;
    Ok(())
}

fn instantiate<'py>(py: Python<'py>, class: &Py<PyType>, message: String) -> Bound<'py, PyAny> {
    class
        .bind(py)
        .call1((message,))
        .expect("constructing an exception from a message cannot fail")
}

/// A `RaptorsError` with `message`.
pub fn raptors_error(py: Python<'_>, message: String) -> PyErr {
    PyErr::from_value(instantiate(py, &hierarchy(py).raptors_error, message))
}

/// The exception object a cancelled job raises.
pub fn job_cancelled(py: Python<'_>, message: String) -> PyErr {
    PyErr::from_value(instantiate(py, &hierarchy(py).job_cancelled, message))
}

/// The `JobCancelled` class.
pub fn job_cancelled_type(py: Python<'_>) -> Bound<'_, PyType> {
    hierarchy(py).job_cancelled.bind(py).clone()
}

/// The exception object an expired job raises.
pub fn deadline_exceeded(py: Python<'_>, message: String) -> PyErr {
    PyErr::from_value(instantiate(py, &hierarchy(py).deadline_exceeded, message))
}

/// Converts a refused submission into `QueueFull`, `WouldMissDeadline` or
/// `PoolClosed`, with the pool's name (and capacity, prediction) as
/// attributes.
pub fn submit_error(py: Python<'_>, error: &SubmitError) -> PyErr {
    let h = hierarchy(py);
    let build = || -> PyResult<PyErr> {
        Ok(match error {
            SubmitError::QueueFull { pool, capacity } => {
                let exc = instantiate(py, &h.queue_full, error.to_string());
                exc.setattr("pool", pool)?;
                exc.setattr("capacity", *capacity)?;
                PyErr::from_value(exc)
            }
            SubmitError::WouldMissDeadline {
                pool,
                capacity,
                predicted_wait,
                timeout,
            } => {
                let exc = instantiate(py, &h.would_miss_deadline, error.to_string());
                exc.setattr("pool", pool)?;
                exc.setattr("capacity", *capacity)?;
                exc.setattr("predicted_wait", predicted_wait.as_secs_f64())?;
                exc.setattr("timeout", timeout.as_secs_f64())?;
                PyErr::from_value(exc)
            }
            SubmitError::Closed { pool } => {
                let exc = instantiate(py, &h.pool_closed, error.to_string());
                exc.setattr("pool", pool)?;
                PyErr::from_value(exc)
            }
        })
    };
    build().unwrap_or_else(|err| err)
}

/// Maps a kernel error onto the Python exception NumPy would raise.
pub fn kernel_error(py: Python<'_>, error: KernelError) -> PyErr {
    match error {
        KernelError::Value(message) => PyValueError::new_err(message),
        KernelError::Type(message) => PyTypeError::new_err(message),
        KernelError::Overflow(message) => PyOverflowError::new_err(message),
        error @ KernelError::Memory { .. } => PyMemoryError::new_err(error.to_string()),
        KernelError::Cancelled => job_cancelled(py, "the kernel observed its cancel token".into()),
    }
}
