//! `await job`: one [`JobAwait`] per await, which is both the iterator the
//! coroutine drives and the future the awaiting asyncio Task waits on.
//!
//! A job is not an asyncio future itself (`asyncio.isfuture(job)` is false),
//! because an asyncio future's `cancel()` must end the waiting at once,
//! while `job.cancel()` of a running job is `False` and leaves it running.
//! Each await gets its own future-like object instead:
//! - its `add_done_callback` (the Task's wake-up) is delivered on the loop
//!   thread through the loop's [`hub`](crate::hub);
//! - its `cancel()` (what `task.cancel()`, `asyncio.timeout` and
//!   `asyncio.wait_for` call) cancels a queued job, or, if the job is running,
//!   ends this one await at once: the Task wakes with `CancelledError` and
//!   the job runs on;
//! - its callbacks run exactly once: the hub delivery and a cancel both run
//!   on the loop thread, and whichever comes first takes them.
//!
//! Everything else asyncio does with a job (`gather`, `wait`, `shield`,
//! `ensure_future`) goes through `__await__` in a Task, so it behaves the
//! same way; `job.asyncio_future()` hands out the future-like directly, for
//! `gather` without a Task per job and for callbacks that must run on the
//! loop.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use raptors_runtime::lock::Mutex;
use raptors_runtime::JobStatus;

use crate::errors;
use crate::hub;
use crate::job::JobBase;
use crate::listeners::{self, report_callback_error, Added, Callback};

#[derive(Default)]
struct AwaitState {
    callbacks: Vec<Callback>,
    /// The loop the callbacks run on, set by the first registration.
    event_loop: Option<PyObject>,
    /// Registered with the job's listeners (at most once).
    registered: bool,
    /// Ended by `cancel()` while the job ran on; holds the message.
    cancelled: Option<Option<PyObject>>,
}

#[pyclass(frozen, module = "raptors._raptors")]
pub struct JobAwait {
    job: Py<JobBase>,
    yielded: AtomicBool,
    blocking: AtomicBool,
    state: Mutex<AwaitState>,
}

impl JobAwait {
    pub fn new(job: Py<JobBase>) -> JobAwait {
        JobAwait {
            job,
            yielded: AtomicBool::new(false),
            blocking: AtomicBool::new(false),
            state: Mutex::new(AwaitState::default()),
        }
    }

    /// The callbacks to run now that the job has ended (empty if `cancel()`
    /// ran them already). Called by the hub on the loop thread.
    pub fn take_callbacks(&self) -> Vec<Callback> {
        std::mem::take(&mut self.state.lock().callbacks)
    }

    /// Puts back callbacks a hub drain did not get to.
    pub fn restore_callbacks(&self, rest: Vec<Callback>) {
        let mut state = self.state.lock();
        let newer = std::mem::replace(&mut state.callbacks, rest);
        state.callbacks.extend(newer);
    }

    fn await_cancelled(&self) -> bool {
        self.state.lock().cancelled.is_some()
    }

    fn is_done(&self) -> bool {
        self.await_cancelled() || self.job.get().is_done()
    }

    /// What the awaiting Task sees as this future's outcome.
    fn outcome(&self, py: Python<'_>) -> PyResult<PyObject> {
        let message = self.state.lock().cancelled.as_ref().map(|m| {
            m.as_ref()
                .map(|m| m.clone_ref(py))
                .unwrap_or_else(|| py.None())
        });
        if let Some(message) = message {
            return Err(asyncio_cancelled(py, message));
        }
        let job = self.job.get();
        if !job.is_done() {
            return Err(invalid_state(py, "Result is not set."));
        }
        if job.status() == JobStatus::Cancelled {
            return Err(job.asyncio_cancelled_error(py));
        }
        job.outcome_result(py)
    }
}

fn asyncio_cancelled(py: Python<'_>, message: PyObject) -> PyErr {
    if message.is_none(py) {
        pyo3::exceptions::asyncio::CancelledError::new_err(())
    } else {
        pyo3::exceptions::asyncio::CancelledError::new_err((message,))
    }
}

static INVALID_STATE: GILOnceCell<PyObject> = GILOnceCell::new();

fn invalid_state(py: Python<'_>, message: &str) -> PyErr {
    let class = INVALID_STATE.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("asyncio")?.getattr("InvalidStateError")?.unbind())
    });
    match class.and_then(|class| class.bind(py).call1((message,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

#[pymethods]
impl JobAwait {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Yields this future to the awaiting Task once, then returns the result.
    fn __next__(slf: &Bound<'_, Self>) -> PyResult<PyObject> {
        let py = slf.py();
        let me = slf.get();
        if me.is_done() {
            let value = me.outcome(py)?;
            return Err(PyStopIteration::new_err((value,)));
        }
        if !me.yielded.swap(true, Ordering::Relaxed) {
            me.blocking.store(true, Ordering::Relaxed);
            return Ok(slf.clone().into_any().unbind());
        }
        Err(PyRuntimeError::new_err("await wasn't used with future"))
    }

    /// Receives what the awaiting Task throws in: the exception `result()`
    /// raised when it woke, or a cancellation. A cancelled job surfaces as a
    /// plain `asyncio.CancelledError` (asyncio compares that type exactly);
    /// anything else passes through unchanged.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
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
        if job.status() == JobStatus::Cancelled
            && exc.is_instance(&errors::job_cancelled_type(py))?
        {
            return Err(job.asyncio_cancelled_error(py));
        }
        Err(PyErr::from_value(exc))
    }

    fn close(&self) {}

    /// Awaiting the future-like `job.asyncio_future()` returns: a fresh await
    /// of the same job, unless this one has ended by cancellation.
    fn __await__(slf: &Bound<'_, Self>) -> PyResult<Py<JobAwait>> {
        let me = slf.get();
        if me.await_cancelled() {
            return Ok(slf.clone().unbind());
        }
        Py::new(slf.py(), JobAwait::new(me.job.clone_ref(slf.py())))
    }

    /// asyncio's marker for future-like objects (see `asyncio.isfuture`).
    #[getter(_asyncio_future_blocking)]
    fn asyncio_future_blocking(&self) -> bool {
        self.blocking.load(Ordering::Relaxed)
    }

    #[setter(_asyncio_future_blocking)]
    fn set_asyncio_future_blocking(&self, value: bool) {
        self.blocking.store(value, Ordering::Relaxed);
    }

    /// The loop this await runs on: the one its wake-up was registered with,
    /// else the running loop.
    fn get_loop(&self, py: Python<'_>) -> PyResult<PyObject> {
        if let Some(event_loop) = self.state.lock().event_loop.as_ref() {
            return Ok(event_loop.clone_ref(py));
        }
        match hub::running_loop(py)? {
            Some(event_loop) => Ok(event_loop.unbind()),
            None => Err(PyRuntimeError::new_err("no running event loop")),
        }
    }

    fn done(&self) -> bool {
        self.is_done()
    }

    fn cancelled(&self) -> bool {
        self.await_cancelled() || self.job.get().status() == JobStatus::Cancelled
    }

    fn result(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.outcome(py)
    }

    fn exception(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        match self.outcome(py) {
            Ok(_) => Ok(None),
            Err(err) if !self.is_done() || self.cancelled() => Err(err),
            Err(err) => Ok(Some(err.into_value(py).into_any())),
        }
    }

    /// Calls `fn(self)` on the awaiting loop when the job ends or this await
    /// is cancelled; at once (scheduled on the loop) if that has happened.
    #[pyo3(signature = (func, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        func: PyObject,
        context: Option<PyObject>,
    ) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let event_loop = match hub::running_loop(py)? {
            Some(event_loop) => event_loop,
            None => slf.call_method0("get_loop")?,
        };
        let callback = Callback::new(func, context);
        if !me.is_done() {
            let hub = hub::hub_for(py, &event_loop)?;
            let register = {
                let mut state = me.state.lock();
                state.callbacks.push(callback);
                state
                    .event_loop
                    .get_or_insert_with(|| event_loop.clone().unbind());
                !std::mem::replace(&mut state.registered, true)
            };
            if !register {
                return Ok(());
            }
            match me
                .job
                .get()
                .listeners()
                .add_awaiter(hub, slf.clone().unbind())
            {
                Added::Pending => return Ok(()),
                // Ended meanwhile: run what is registered, as a delivery would.
                Added::Finished(_) => {
                    for callback in me.take_callbacks() {
                        callback.schedule(py, &event_loop, slf.as_any())?;
                    }
                    return Ok(());
                }
            }
        }
        callback.schedule(py, &event_loop, slf.as_any())
    }

    /// Removes every registration of `fn`; returns how many were removed.
    fn remove_done_callback(&self, py: Python<'_>, func: PyObject) -> PyResult<usize> {
        let (kept, removed, failure) = listeners::without(py, self.take_callbacks(), func.bind(py));
        self.restore_callbacks(kept);
        match failure {
            Some(err) => Err(err),
            None => Ok(removed),
        }
    }

    /// Ends this await. A queued job is cancelled (and wakes the Task as
    /// cancelled when it leaves the queue); a running job runs on while the
    /// awaiting Task wakes at once with `CancelledError`. False when the job
    /// or this await has already ended.
    #[pyo3(signature = (msg=None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<PyObject>) -> PyResult<bool> {
        let py = slf.py();
        let me = slf.get();
        if me.is_done() {
            return Ok(false);
        }
        let job = me.job.get();
        if job.cancel_with(msg.as_ref().map(|m| m.clone_ref(py))) {
            return Ok(true);
        }
        if job.is_done() {
            // It ended as we asked; its delivery is on the way.
            return Ok(false);
        }
        let (callbacks, event_loop) = {
            let mut state = me.state.lock();
            state.cancelled = Some(msg);
            (
                std::mem::take(&mut state.callbacks),
                state.event_loop.as_ref().map(|l| l.clone_ref(py)),
            )
        };
        if let Some(event_loop) = event_loop {
            let event_loop = event_loop.bind(py);
            for callback in callbacks {
                if let Err(err) = callback.schedule(py, event_loop, slf.as_any()) {
                    report_callback_error(py, slf.as_any(), err);
                }
            }
        }
        Ok(true)
    }

    /// What `asyncio.gather` reads of a cancelled child.
    #[getter]
    fn _cancel_message(&self, py: Python<'_>) -> Option<PyObject> {
        let state = self.state.lock();
        match state.cancelled.as_ref() {
            Some(message) => message.as_ref().map(|m| m.clone_ref(py)),
            None => self.job.get().cancel_message(py),
        }
    }

    fn _make_cancelled_error(&self, py: Python<'_>) -> PyObject {
        match self.outcome(py) {
            Err(err) if err.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py) => {
                err.into_value(py).into_any()
            }
            _ => pyo3::exceptions::asyncio::CancelledError::new_err(())
                .into_value(py)
                .into_any(),
        }
    }

    fn __repr__(&self) -> String {
        format!("<JobAwait of {}>", self.job.get().describe())
    }
}
