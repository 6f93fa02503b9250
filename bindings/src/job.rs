//! `rp.Job`: a runtime job handle that behaves like a
//! `concurrent.futures.Future` and can be awaited.
//!
//! asyncio accepts it as a future without wrapping it in a Task
//! (`_asyncio_future_blocking`, `get_loop`, `add_done_callback(context=)`,
//! `cancel(msg=)`), and `concurrent.futures.wait` / `as_completed` find the
//! private `_condition`, `_waiters` and `_state` they reach into (created
//! lazily: most jobs are only awaited).
//!
//! Delivery: every job registers one native completion hook at submit. When
//! the runtime ends the job (on a worker, a cancelling thread or the deadline
//! timer), the hook takes the registered listeners out under the listener
//! lock and then, without that lock:
//! - pushes callbacks added from inside an event loop to that loop's
//!   [`Hub`], which runs them on the loop thread;
//! - runs callbacks added outside any loop on the ending thread, taking the
//!   GIL, as `concurrent.futures` does;
//! - notifies `concurrent.futures` waiters.
//!
//! Lock order: the listener lock is never held while taking the GIL or
//! calling Python, so a thread holding the GIL may always take it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};
use raptors_runtime::{JobStatus, Outcome};

use crate::errors;
use crate::gil;
use crate::hub::{self, Delivery, HubCore};
use crate::task::{JobError, JobValue, RuntimeHandle};
use crate::timeout::Timeout;

/// A callback and the `contextvars.Context` to run it in.
pub struct Callback {
    func: PyObject,
    context: Option<PyObject>,
}

impl Callback {
    pub fn invoke(self, py: Python<'_>, job: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.context {
            Some(context) => context.call_method1(py, "run", (self.func, job)).map(drop),
            None => self.func.call1(py, (job,)).map(drop),
        }
    }
}

/// Callbacks bound to one event loop, with a reference to the job to pass them.
struct LoopGroup {
    hub: Arc<HubCore>,
    job: Py<Job>,
    callbacks: Vec<Callback>,
}

/// `concurrent.futures.wait` machinery, created on first access.
struct FuturesWaiters {
    condition: PyObject,
    waiters: PyObject,
}

#[derive(Default)]
struct Listeners {
    /// Set by the completion hook; nothing is added afterwards.
    finished: bool,
    loops: Vec<LoopGroup>,
    /// Callbacks added outside any event loop, and the job to pass them.
    sync: Vec<Callback>,
    sync_job: Option<Py<Job>>,
    /// Kept after the job ends: later `wait()` calls read `_state` under it.
    waiters: Option<Arc<FuturesWaiters>>,
    /// The job to hand the waiters; taken when the job ends, so the job does
    /// not keep itself alive.
    waiters_job: Option<Py<Job>>,
}

/// What the completion hook took out of [`Listeners`].
struct Fired {
    loops: Vec<LoopGroup>,
    sync: Vec<Callback>,
    sync_job: Option<Py<Job>>,
    waiters: Option<(Arc<FuturesWaiters>, Py<Job>)>,
}

fn fire(listeners: &Mutex<Listeners>) {
    let fired = {
        let mut guard = listeners.lock();
        guard.finished = true;
        Fired {
            loops: std::mem::take(&mut guard.loops),
            sync: std::mem::take(&mut guard.sync),
            sync_job: guard.sync_job.take(),
            waiters: guard.waiters.clone().zip(guard.waiters_job.take()),
        }
    };
    for group in fired.loops {
        group.hub.push(Delivery {
            job: group.job,
            callbacks: group.callbacks,
        });
    }
    if fired.sync_job.is_none() && fired.waiters.is_none() {
        return;
    }
    gil::with_gil_here(|py| {
        if let Some((machinery, job)) = fired.waiters {
            if let Err(err) = notify_futures_waiters(py, &machinery, job.bind(py)) {
                err.write_unraisable(py, Some(job.bind(py).as_any()));
            }
        }
        if let Some(job) = fired.sync_job {
            let job = job.bind(py);
            for callback in fired.sync {
                if let Err(err) = callback.invoke(py, job.as_any()) {
                    log_callback_error(py, job.as_any(), err);
                }
            }
        }
    });
}

/// What `concurrent.futures.Future` does for its waiters when it finishes.
fn notify_futures_waiters(
    py: Python<'_>,
    machinery: &FuturesWaiters,
    job: &Bound<'_, Job>,
) -> PyResult<()> {
    let condition = machinery.condition.bind(py);
    condition.call_method0("acquire")?;
    let notified = (|| -> PyResult<()> {
        let method = match job.get().handle.status() {
            JobStatus::Cancelled => "add_cancelled",
            JobStatus::Done => "add_result",
            _ => "add_exception",
        };
        for waiter in machinery.waiters.bind(py).try_iter()? {
            waiter?.call_method1(method, (job,))?;
        }
        condition.call_method0("notify_all").map(drop)
    })();
    condition.call_method0("release")?;
    notified
}

/// `concurrent.futures` logs a failing callback and goes on; so do we.
fn log_callback_error(py: Python<'_>, job: &Bound<'_, PyAny>, err: PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("raptors",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        logger.call_method(
            "error",
            ("exception calling callback for %r", job),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if let Err(err) = logged {
        err.write_unraisable(py, Some(job));
    }
}

/// The converted outcome: the result, or the exception instance to raise.
type Settled = Result<PyObject, PyObject>;

#[pyclass(frozen, weakref, module = "raptors", name = "Job")]
pub struct Job {
    handle: RuntimeHandle,
    pool: Arc<str>,
    listeners: Arc<Mutex<Listeners>>,
    blocking: AtomicBool,
    /// The converted outcome, once asked for. A lock, not a once-cell, so
    /// that the garbage collector can clear it (an exception's traceback
    /// often refers back to the job).
    settled: Mutex<Option<Settled>>,
    cancel_message: Mutex<Option<PyObject>>,
}

impl Job {
    /// Wraps a freshly submitted runtime job and registers its completion hook.
    pub fn create(py: Python<'_>, handle: RuntimeHandle, pool: Arc<str>) -> PyResult<Py<Job>> {
        let listeners = Arc::new(Mutex::new(Listeners::default()));
        let hook_listeners = Arc::clone(&listeners);
        let job = Py::new(
            py,
            Job {
                handle: handle.clone(),
                pool,
                listeners,
                blocking: AtomicBool::new(false),
                settled: Mutex::new(None),
                cancel_message: Mutex::new(None),
            },
        )?;
        handle.on_complete(move || fire(&hook_listeners));
        Ok(job)
    }

    fn is_done(&self) -> bool {
        self.handle.is_terminal()
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
    fn asyncio_cancelled_error(&self, py: Python<'_>) -> PyErr {
        let message = self
            .cancelled_error(py)
            .value(py)
            .str()
            .map(|s| s.to_string())
            .unwrap_or_default();
        pyo3::exceptions::asyncio::CancelledError::new_err(message)
    }

    /// The result, or the job's exception raised.
    fn outcome_result(&self, py: Python<'_>) -> PyResult<PyObject> {
        match self.settled(py) {
            Ok(value) => Ok(value),
            Err(exc) => Err(PyErr::from_value(exc.into_bound(py))),
        }
    }

    fn futures_state(&self) -> &'static str {
        match self.handle.status() {
            JobStatus::Queued => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Cancelled => "CANCELLED_AND_NOTIFIED",
            JobStatus::Done | JobStatus::Failed | JobStatus::Expired => "FINISHED",
        }
    }

    fn futures_waiters(slf: &Bound<'_, Job>) -> PyResult<(PyObject, PyObject)> {
        let py = slf.py();
        let job = slf.get();
        let existing = job.listeners.lock().waiters.clone();
        let machinery = match existing {
            Some(machinery) => machinery,
            None => {
                let created = Arc::new(FuturesWaiters {
                    condition: py.import("threading")?.call_method0("Condition")?.unbind(),
                    waiters: pyo3::types::PyList::empty(py).into_any().unbind(),
                });
                let mut guard = job.listeners.lock();
                if !guard.finished {
                    guard
                        .waiters_job
                        .get_or_insert_with(|| slf.clone().unbind());
                }
                Arc::clone(guard.waiters.get_or_insert(created))
            }
        };
        Ok((
            machinery.condition.clone_ref(py),
            machinery.waiters.clone_ref(py),
        ))
    }
}

#[pymethods]
impl Job {
    /// `"queued"`, `"running"`, `"done"`, `"failed"`, `"cancelled"` or `"expired"`.
    #[getter]
    fn status(&self) -> &'static str {
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
        if let Some(msg) = msg {
            self.cancel_message.lock().get_or_insert(msg);
        }
        self.handle.cancel()
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

    /// Calls `fn(job)` when the job ends. Added from inside a running event
    /// loop, it runs on that loop (in `context`); otherwise on the thread that
    /// ends the job, or at once if the job has already ended.
    #[pyo3(signature = (func, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Job>,
        func: PyObject,
        context: Option<PyObject>,
    ) -> PyResult<()> {
        let py = slf.py();
        let job = slf.get();
        let running = hub::running_loop(py)?;
        let callback = Callback { func, context };
        if !job.is_done() {
            let hub = running.as_ref().map(|l| hub::hub_for(py, l)).transpose()?;
            let me = slf.clone().unbind();
            let mut guard = job.listeners.lock();
            if !guard.finished {
                match hub {
                    Some(hub) => match guard.loops.iter_mut().find(|g| Arc::ptr_eq(&g.hub, &hub)) {
                        Some(group) => group.callbacks.push(callback),
                        None => guard.loops.push(LoopGroup {
                            hub,
                            job: me,
                            callbacks: vec![callback],
                        }),
                    },
                    None => {
                        guard.sync.push(callback);
                        guard.sync_job.get_or_insert(me);
                    }
                }
                return Ok(());
            }
        }
        match running {
            Some(event_loop) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item("context", callback.context)?;
                event_loop.call_method("call_soon", (callback.func, slf), Some(&kwargs))?;
            }
            None => {
                if let Err(err) = callback.invoke(py, slf.as_any()) {
                    log_callback_error(py, slf.as_any(), err);
                }
            }
        }
        Ok(())
    }

    /// Removes every registration of `fn`; returns how many were removed.
    fn remove_done_callback(slf: &Bound<'_, Job>, func: PyObject) -> PyResult<usize> {
        let py = slf.py();
        let job = slf.get();
        let func = func.bind(py);
        // Equality may run Python code: compare outside the lock.
        let (loops, sync) = {
            let mut guard = job.listeners.lock();
            (
                std::mem::take(&mut guard.loops),
                std::mem::take(&mut guard.sync),
            )
        };
        let mut removed = 0;
        // A comparison that raises keeps its callback, and every later one:
        // nothing is lost, and the error is raised once all are back.
        let mut failure: Option<PyErr> = None;
        let mut keep = |callbacks: Vec<Callback>| -> Vec<Callback> {
            let mut kept = Vec::with_capacity(callbacks.len());
            for callback in callbacks {
                if failure.is_none() {
                    match callback.func.bind(py).eq(func) {
                        Ok(true) => {
                            removed += 1;
                            continue;
                        }
                        Ok(false) => {}
                        Err(err) => failure = Some(err),
                    }
                }
                kept.push(callback);
            }
            kept
        };
        let mut kept_loops = Vec::with_capacity(loops.len());
        for mut group in loops {
            group.callbacks = keep(group.callbacks);
            if !group.callbacks.is_empty() {
                kept_loops.push(group);
            }
        }
        let kept_sync = keep(sync);
        let mut guard = job.listeners.lock();
        if guard.finished {
            // The hook ran while the callbacks were out; deliver what is left.
            drop(guard);
            for group in kept_loops {
                group.hub.push(Delivery {
                    job: group.job,
                    callbacks: group.callbacks,
                });
            }
            for callback in kept_sync {
                if let Err(err) = callback.invoke(py, slf.as_any()) {
                    log_callback_error(py, slf.as_any(), err);
                }
            }
        } else {
            guard.loops.extend(kept_loops);
            guard.sync.extend(kept_sync);
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(removed),
        }
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

    /// The loop awaiting the job: the running loop, else the current one.
    fn get_loop(&self, py: Python<'_>) -> PyResult<PyObject> {
        match hub::running_loop(py)? {
            Some(event_loop) => Ok(event_loop.unbind()),
            None => Ok(py
                .import("asyncio")?
                .call_method0("get_event_loop")?
                .unbind()),
        }
    }

    fn __await__(slf: Bound<'_, Job>) -> JobAwait {
        JobAwait {
            job: slf.unbind(),
            yielded: false,
        }
    }

    /// asyncio's marker for future-like objects (see `asyncio.isfuture`).
    /// `None` outside a running loop: there, asyncio (`run_until_complete`,
    /// `ensure_future(job, loop=...)`) wraps the job in a Task on the loop it
    /// is given, since the job cannot know that loop before it runs.
    #[getter(_asyncio_future_blocking)]
    fn asyncio_future_blocking(&self, py: Python<'_>) -> PyResult<Option<bool>> {
        let blocking = self.blocking.load(Ordering::Relaxed);
        if blocking || hub::running_loop(py)?.is_some() {
            Ok(Some(blocking))
        } else {
            Ok(None)
        }
    }

    #[setter(_asyncio_future_blocking)]
    fn set_asyncio_future_blocking(&self, value: bool) {
        self.blocking.store(value, Ordering::Relaxed);
    }

    /// What `asyncio.gather` raises for a cancelled child.
    fn _make_cancelled_error(&self, py: Python<'_>) -> PyObject {
        self.asyncio_cancelled_error(py).into_value(py).into_any()
    }

    /// `concurrent.futures` internals, for `wait` and `as_completed`.
    #[getter]
    fn _state(&self) -> &'static str {
        self.futures_state()
    }

    #[getter]
    fn _condition(slf: &Bound<'_, Job>) -> PyResult<PyObject> {
        Ok(Job::futures_waiters(slf)?.0)
    }

    #[getter]
    fn _waiters(slf: &Bound<'_, Job>) -> PyResult<PyObject> {
        Ok(Job::futures_waiters(slf)?.1)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Job #{} pool='{}' status={}>",
            self.handle.id(),
            self.pool,
            self.handle.status().as_str()
        )
    }
}

/// The iterator `await job` drives: yields the job to the awaiting Task
/// once, then returns its result.
#[pyclass(module = "raptors._raptors")]
pub struct JobAwait {
    job: Py<Job>,
    yielded: bool,
}

#[pymethods]
impl JobAwait {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<PyObject> {
        let job = self.job.get();
        if job.is_done() {
            if job.handle.status() == JobStatus::Cancelled {
                return Err(job.asyncio_cancelled_error(py));
            }
            let value = job.outcome_result(py)?;
            return Err(PyStopIteration::new_err((value,)));
        }
        if !self.yielded {
            self.yielded = true;
            job.blocking.store(true, Ordering::Relaxed);
            return Ok(self.job.clone_ref(py).into_any());
        }
        Err(PyRuntimeError::new_err("await wasn't used with future"))
    }

    /// Receives what the awaiting Task throws in: the exception `job.result()`
    /// raised when it woke, or a cancellation. A cancelled job surfaces as a
    /// plain `asyncio.CancelledError`; anything else passes through unchanged.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &mut self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let exc = match val.filter(|v| !v.is_none()) {
            Some(val) => val.clone(),
            None if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() => typ.clone(),
            None => typ.call0()?,
        };
        if let Some(tb) = tb.filter(|t| !t.is_none()) {
            exc.call_method1("with_traceback", (tb,))?;
        }
        let job = self.job.get();
        if job.handle.status() == JobStatus::Cancelled
            && exc.is_instance(&errors::job_cancelled_type(py))?
        {
            return Err(job.asyncio_cancelled_error(py));
        }
        Err(PyErr::from_value(exc))
    }
}
