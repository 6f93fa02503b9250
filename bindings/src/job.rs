//! `rp.Job`: a runtime job handle that is a `concurrent.futures.Future` and
//! can be awaited.
//!
//! The native class `_JobBase` holds the handle; `rp.Job` is made from it and
//! `concurrent.futures.Future` when the module loads ([`register`]), so a job
//! is accepted wherever a `Future` is (`asyncio.wrap_future`,
//! `loop.run_in_executor`, `concurrent.futures.wait`) while every method a
//! caller uses is the native one. `Future.__init__` never runs: the private
//! `_condition`, `_waiters` and `_state` that `wait` and `as_completed` reach
//! into are native properties, created on first access
//! ([`futures_waiters`](crate::futures_waiters)).
//!
//! Who is told when the job ends is [`listeners`](crate::listeners); how
//! `await job` works is [`awaiter`](crate::awaiter).

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError};
use pyo3::impl_::pyclass_init::PyObjectInit;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use raptors_runtime::lock::Mutex;
use raptors_runtime::{JobStatus, Outcome};

use crate::awaiter::JobAwait;
use crate::errors;
use crate::futures_waiters::{self, FuturesWaiters};
use crate::gil;
use crate::listeners::{self, report_callback_error, Added, Callback, Listeners};
use crate::task::{JobError, JobValue, RuntimeHandle};
use crate::timeout::Timeout;

/// The converted outcome: the result, or the exception instance to raise.
type Settled = Result<PyObject, PyObject>;

#[pyclass(frozen, weakref, subclass, module = "raptors", name = "_JobBase")]
pub struct JobBase {
    handle: RuntimeHandle,
    pool: Arc<str>,
    listeners: Arc<Listeners>,
    /// The converted outcome, once asked for. A lock, not a once-cell, so
    /// that the garbage collector can clear it (an exception's traceback
    /// often refers back to the job).
    settled: Mutex<Option<Settled>>,
    cancel_message: Mutex<Option<PyObject>>,
}

/// `rp.Job`, made by [`register`].
static JOB_TYPE: GILOnceCell<Py<PyType>> = GILOnceCell::new();

/// Makes `rp.Job` from `_JobBase` and `concurrent.futures.Future` and adds
/// both to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<JobBase>()?;
    let future = py.import("concurrent.futures")?.getattr("Future")?;
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "raptors")?;
    namespace.set_item("__qualname__", "Job")?;
    namespace.set_item("__slots__", PyTuple::empty(py))?;
    namespace.set_item(
        "__doc__",
        "A submitted job: a concurrent.futures.Future that can be awaited.",
    )?;
    let bases = PyTuple::new(py, [py.get_type::<JobBase>().into_any(), future])?;
    let class = py
        .get_type::<PyType>()
        .call1(("Job", bases, namespace))?
        .downcast_into::<PyType>()?;
    module.add("Job", &class)?;
    JOB_TYPE.get_or_init(py, || class.unbind());
    Ok(())
}

impl JobBase {
    /// Wraps a freshly submitted runtime job in an `rp.Job`; `listeners`
    /// are the ones whose [completion hook](Listeners::completion_hook) the
    /// job was submitted with.
    pub fn create(
        py: Python<'_>,
        handle: RuntimeHandle,
        pool: Arc<str>,
        listeners: Arc<Listeners>,
    ) -> PyResult<Py<JobBase>> {
        let base = JobBase {
            handle: handle.clone(),
            pool,
            listeners,
            settled: Mutex::new(None),
            cancel_message: Mutex::new(None),
        };
        let class = JOB_TYPE
            .get(py)
            .ok_or_else(|| PyRuntimeError::new_err("raptors._raptors is not initialised"))?;
        // SAFETY: `class` is `rp.Job`, a subclass of `_JobBase` whose only
        // other base (`concurrent.futures.Future`) adds no native layout.
        let job = unsafe {
            let object =
                PyClassInitializer::from(base).into_new_object(py, class.bind(py).as_type_ptr())?;
            Bound::from_owned_ptr(py, object).downcast_into_unchecked::<JobBase>()
        };
        Ok(job.unbind())
    }

    pub fn is_done(&self) -> bool {
        self.handle.is_terminal()
    }

    pub fn status(&self) -> JobStatus {
        self.handle.status()
    }

    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Cancels a job that has not started, keeping `msg` for its error.
    pub fn cancel_with(&self, msg: Option<PyObject>) -> bool {
        if let Some(msg) = msg {
            self.cancel_message.lock().get_or_insert(msg);
        }
        self.handle.cancel()
    }

    pub fn cancel_message(&self, py: Python<'_>) -> Option<PyObject> {
        self.cancel_message.lock().as_ref().map(|m| m.clone_ref(py))
    }

    pub fn describe(&self) -> String {
        format!(
            "<Job #{} pool='{}' status={}>",
            self.handle.id(),
            self.pool,
            self.handle.status().as_str()
        )
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the job ends or `timeout` passes.
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let timeout = Timeout::parse("timeout", timeout)?;
        if self.is_done() {
            return Ok(());
        }
        let handle = &self.handle;
        if gil::wait_interruptibly(py, timeout.deadline(), |slice| handle.wait(Some(slice)))? {
            Ok(())
        } else {
            Err(PyTimeoutError::new_err(format!(
                "job did not finish within {:.3} s",
                timeout.seconds().unwrap_or_default()
            )))
        }
    }

    /// The outcome as Python objects, converted once. Only for ended jobs.
    fn settled(&self, py: Python<'_>) -> Settled {
        let clone = |settled: &Settled| match settled {
            Ok(value) => Ok(value.clone_ref(py)),
            Err(exc) => Err(exc.clone_ref(py)),
        };
        if let Some(settled) = self.settled.lock().as_ref() {
            return clone(settled);
        }
        // Converting may run Python code: not under the lock.
        let converted = match self.handle.take_outcome() {
            Some(outcome) => self.convert_outcome(py, outcome),
            // Another thread took it and is converting it: wait for its result.
            None => loop {
                if let Some(settled) = self.settled.lock().as_ref() {
                    return clone(settled);
                }
                py.allow_threads(std::thread::yield_now);
            },
        };
        clone(self.settled.lock().get_or_insert(converted))
    }

    fn convert_outcome(&self, py: Python<'_>, outcome: Outcome<JobValue, JobError>) -> Settled {
        let exception = |err: PyErr| Err(err.into_value(py).into_any());
        match outcome {
            Outcome::Done(value) => value.into_py_result(py).or_else(exception),
            Outcome::Failed(JobError::Python(err)) => exception(err),
            Outcome::Failed(JobError::Kernel(err)) => exception(errors::kernel_error(py, err)),
            Outcome::Panicked(message) => exception(errors::raptors_error(
                py,
                format!("job in pool '{}' panicked: {message}", self.pool),
            )),
            Outcome::Cancelled => exception(self.cancelled_error(py)),
            Outcome::Expired => exception(errors::deadline_exceeded(
                py,
                format!(
                    "job expired: it did not start before its timeout in pool '{}'",
                    self.pool
                ),
            )),
        }
    }

    fn cancelled_error(&self, py: Python<'_>) -> PyErr {
        let message = self.cancel_message.lock().as_ref().map(|m| m.clone_ref(py));
        let message = match message {
            Some(message) => message
                .bind(py)
                .str()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            None => format!("job in pool '{}' was cancelled", self.pool),
        };
        errors::job_cancelled(py, message)
    }

    /// A plain `asyncio.CancelledError`: what `await` raises for a cancelled
    /// job. asyncio compares the type exactly (`asyncio.timeout` turns only
    /// that type into `TimeoutError`), so the dual `JobCancelled` won't do.
    pub fn asyncio_cancelled_error(&self, py: Python<'_>) -> PyErr {
        let message = self
            .cancelled_error(py)
            .value(py)
            .str()
            .map(|s| s.to_string())
            .unwrap_or_default();
        pyo3::exceptions::asyncio::CancelledError::new_err(message)
    }

    /// The result, or the job's exception raised.
    pub fn outcome_result(&self, py: Python<'_>) -> PyResult<PyObject> {
        match self.settled(py) {
            Ok(value) => Ok(value),
            Err(exc) => Err(PyErr::from_value(exc.into_bound(py))),
        }
    }

    fn futures_waiters(slf: &Bound<'_, JobBase>) -> PyResult<Arc<FuturesWaiters>> {
        let py = slf.py();
        slf.get()
            .listeners
            .futures_waiters(slf, || FuturesWaiters::new(py))
    }
}

#[pymethods]
impl JobBase {
    /// `"queued"`, `"running"`, `"done"`, `"failed"`, `"cancelled"` or `"expired"`.
    #[getter(status)]
    fn status_name(&self) -> &'static str {
        self.handle.status().as_str()
    }

    /// The name of the pool the job was submitted to.
    #[getter]
    fn pool(&self) -> &str {
        &self.pool
    }

    /// A process-unique job number.
    #[getter]
    fn id(&self) -> u64 {
        self.handle.id()
    }

    fn done(&self) -> bool {
        self.is_done()
    }

    fn running(&self) -> bool {
        self.handle.status() == JobStatus::Running
    }

    fn cancelled(&self) -> bool {
        self.handle.status() == JobStatus::Cancelled
    }

    /// Cancels a job that has not started. True if it will never run (or was
    /// already cancelled); false if it is running or ended otherwise.
    #[pyo3(signature = (msg=None))]
    fn cancel(&self, msg: Option<PyObject>) -> bool {
        self.cancel_with(msg)
    }

    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<PyObject> {
        self.wait(py, timeout)?;
        self.outcome_result(py)
    }

    #[pyo3(signature = (timeout=None))]
    fn exception(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PyObject>> {
        self.wait(py, timeout)?;
        match self.settled(py) {
            Ok(_) => Ok(None),
            Err(_) if self.handle.status() == JobStatus::Cancelled => Err(self.cancelled_error(py)),
            Err(exc) => Ok(Some(exc)),
        }
    }

    /// Calls `fn(job)` when the job ends, on the thread that ends it (any
    /// thread may add it), or at once on this thread if it has ended. As in
    /// `concurrent.futures`, an `Exception` from `fn` is logged; run at once,
    /// anything else (`SystemExit`, `KeyboardInterrupt`) reaches the caller.
    #[pyo3(signature = (func, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, JobBase>,
        func: PyObject,
        context: Option<PyObject>,
    ) -> PyResult<()> {
        let py = slf.py();
        let callback = Callback::new(func, context);
        let callback = if slf.get().is_done() {
            callback
        } else {
            match slf.get().listeners.add_callback(slf, callback) {
                Added::Pending => return Ok(()),
                Added::Finished(callback) => callback,
            }
        };
        match callback.invoke(py, slf.as_any()) {
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                report_callback_error(py, slf.as_any(), err);
                Ok(())
            }
            other => other,
        }
    }

    /// Removes every registration of `fn`; returns how many were removed.
    fn remove_done_callback(slf: &Bound<'_, JobBase>, func: PyObject) -> PyResult<usize> {
        let py = slf.py();
        let job = slf.get();
        let func = func.bind(py);
        // Equality may run Python code: compare outside the lock.
        let (kept, removed, failure) = listeners::without(py, job.listeners.take_callbacks(), func);
        if let Added::Finished(kept) = job.listeners.restore_callbacks(kept) {
            // The job ended while the callbacks were out; run what is left.
            for callback in kept {
                if let Err(err) = callback.invoke(py, slf.as_any()) {
                    report_callback_error(py, slf.as_any(), err);
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(removed),
        }
    }

    /// A job is ended by its pool, never by the caller.
    #[pyo3(signature = (*_args))]
    fn set_result(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        Err(ended_by_pool("set_result"))
    }

    #[pyo3(signature = (*_args))]
    fn set_exception(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        Err(ended_by_pool("set_exception"))
    }

    fn set_running_or_notify_cancel(&self) -> PyResult<bool> {
        Err(ended_by_pool("set_running_or_notify_cancel"))
    }

    /// Waits up to `timeout` seconds (`None`: no limit) for the job to end,
    /// without raising its outcome. True if it has ended.
    #[pyo3(signature = (timeout=None))]
    fn _wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        match self.wait(py, timeout) {
            Ok(()) => Ok(true),
            Err(err) if err.is_instance_of::<PyTimeoutError>(py) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Garbage-collector support: a job's exception often refers back to it
    /// (its traceback holds the frame that held the job). Only the outcome
    /// and cancel message are shown to the collector: the listeners (and the
    /// job references they hold) are kept alive on purpose by the pending
    /// native job until it ends, which the collector cannot see.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(settled) = self.settled.try_lock() {
            match settled.as_ref() {
                Some(Ok(value)) => visit.call(value)?,
                Some(Err(exc)) => visit.call(exc)?,
                None => {}
            }
        }
        if let Some(message) = self.cancel_message.try_lock() {
            if let Some(message) = message.as_ref() {
                visit.call(message)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let settled = self.settled.lock().take();
        let message = self.cancel_message.lock().take();
        drop((settled, message));
    }

    fn __await__(slf: Bound<'_, JobBase>) -> JobAwait {
        JobAwait::new(slf.unbind())
    }

    /// An asyncio future-like for this job, for `asyncio.gather` and
    /// callbacks that must run on the loop: its callbacks run on the running
    /// loop, delivered in batches, and cancelling it ends the waiting (and
    /// cancels a queued job) as cancelling an awaiting Task does. Cheaper
    /// than the Task `asyncio.gather(job)` wraps a job in.
    fn asyncio_future(slf: Bound<'_, JobBase>) -> JobAwait {
        JobAwait::new(slf.unbind())
    }

    /// `concurrent.futures` internals, for `wait` and `as_completed`.
    #[getter]
    fn _state(&self) -> &'static str {
        futures_waiters::state_name(self.handle.status())
    }

    #[getter]
    fn _condition(slf: &Bound<'_, JobBase>) -> PyResult<PyObject> {
        Ok(JobBase::futures_waiters(slf)?.condition.clone_ref(slf.py()))
    }

    #[getter]
    fn _waiters(slf: &Bound<'_, JobBase>) -> PyResult<PyObject> {
        Ok(JobBase::futures_waiters(slf)?.waiters.clone_ref(slf.py()))
    }

    fn __repr__(&self) -> String {
        self.describe()
    }
}

fn ended_by_pool(method: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "Job.{method}: a Raptors job is ended by its pool, not by the caller"
    ))
}
