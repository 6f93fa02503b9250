//! The listeners of one job, and the completion hook that runs them.
//!
//! Three kinds of listener wait for a job:
//! - **callbacks** (`job.add_done_callback`), run on the thread that ends
//!   the job with the GIL taken, whichever thread added them, as
//!   `concurrent.futures` does: never deferred to an event loop that may be
//!   blocked or closed;
//! - **awaiters** ([`JobAwait`], one per `await job`), pushed to their
//!   loop's [`hub`](crate::hub), which wakes the awaiting Task on the loop
//!   thread;
//! - **`concurrent.futures` waiters** ([`FuturesWaiters`]), notified first,
//!   as `Future.set_result` does.
//!
//! Every job registers one native completion hook at submit. When the
//! runtime ends the job (on a worker, a cancelling thread or the deadline
//! timer), the hook marks the list finished and takes everything out under
//! the list's lock, then runs it without that lock. Nothing is added to a
//! finished list: a listener that comes later runs at once.
//!
//! Lock order: the list's lock is never held while taking the GIL or calling
//! Python, so a thread holding the GIL may always take it.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use raptors_runtime::lock::Mutex;

use crate::awaiter::JobAwait;
use crate::futures_waiters::FuturesWaiters;
use crate::gil;
use crate::hub::{Delivery, HubCore};
use crate::job::JobBase;

/// A callback and the `contextvars.Context` to run it in.
pub struct Callback {
    func: PyObject,
    context: Option<PyObject>,
}

impl Callback {
    pub fn new(func: PyObject, context: Option<PyObject>) -> Callback {
        Callback { func, context }
    }

    pub fn invoke(self, py: Python<'_>, arg: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.context {
            Some(context) => context.call_method1(py, "run", (self.func, arg)).map(drop),
            None => self.func.call1(py, (arg,)).map(drop),
        }
    }

    /// Queues the callback on `event_loop` with `arg`, in its context.
    pub fn schedule(
        self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        arg: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("context", self.context)?;
        event_loop
            .call_method("call_soon", (self.func, arg), Some(&kwargs))
            .map(drop)
    }
}

#[derive(Default)]
struct Registered {
    /// Set by the completion hook; nothing is added afterwards.
    finished: bool,
    callbacks: Vec<Callback>,
    awaiters: Vec<(Arc<HubCore>, Py<JobAwait>)>,
    /// Kept after the job ends: later `wait()` calls read `_state` under it.
    waiters: Option<Arc<FuturesWaiters>>,
    /// The job to pass to callbacks and waiters; taken when the job ends, so
    /// that a job does not keep itself alive.
    job: Option<Py<JobBase>>,
}

/// `callbacks` without those whose function equals `func`, and how many
/// were removed. A comparison that raises keeps its callback and every later
/// one (nothing is lost); its error comes back beside what was kept.
pub fn without(
    py: Python<'_>,
    callbacks: Vec<Callback>,
    func: &Bound<'_, PyAny>,
) -> (Vec<Callback>, usize, Option<PyErr>) {
    let before = callbacks.len();
    let mut kept = Vec::with_capacity(before);
    let mut failure = None;
    for callback in callbacks {
        if failure.is_none() {
            match callback.func.bind(py).eq(func) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => failure = Some(err),
            }
        }
        kept.push(callback);
    }
    let removed = before - kept.len();
    (kept, removed, failure)
}

/// What a registration found: the list was still open, or the job had ended
/// and the listener is handed back to be run at once.
pub enum Added<T> {
    Pending,
    Finished(T),
}

#[derive(Default)]
pub struct Listeners(Mutex<Registered>);

impl Listeners {
    pub fn add_callback(&self, job: &Bound<'_, JobBase>, callback: Callback) -> Added<Callback> {
        let mut guard = self.0.lock();
        if guard.finished {
            return Added::Finished(callback);
        }
        guard.callbacks.push(callback);
        guard.job.get_or_insert_with(|| job.clone().unbind());
        Added::Pending
    }

    /// Registers an awaiter with the hub of its loop. False if the job has
    /// already ended.
    pub fn add_awaiter(&self, hub: Arc<HubCore>, awaiter: Py<JobAwait>) -> Added<Py<JobAwait>> {
        let mut guard = self.0.lock();
        if guard.finished {
            return Added::Finished(awaiter);
        }
        guard.awaiters.push((hub, awaiter));
        Added::Pending
    }

    /// The `concurrent.futures` waiter machinery, made by `create` on first use.
    pub fn futures_waiters(
        &self,
        job: &Bound<'_, JobBase>,
        create: impl FnOnce() -> PyResult<FuturesWaiters>,
    ) -> PyResult<Arc<FuturesWaiters>> {
        if let Some(existing) = self.0.lock().waiters.clone() {
            return Ok(existing);
        }
        // Created outside the lock: it calls Python.
        let created = Arc::new(create()?);
        let mut guard = self.0.lock();
        if !guard.finished {
            guard.job.get_or_insert_with(|| job.clone().unbind());
        }
        Ok(Arc::clone(guard.waiters.get_or_insert(created)))
    }

    /// Takes every callback out, for `remove_done_callback` to filter.
    pub fn take_callbacks(&self) -> Vec<Callback> {
        std::mem::take(&mut self.0.lock().callbacks)
    }

    /// Puts back what `take_callbacks` took; hands them back if the job
    /// ended in between.
    pub fn restore_callbacks(&self, callbacks: Vec<Callback>) -> Added<Vec<Callback>> {
        let mut guard = self.0.lock();
        if guard.finished {
            return Added::Finished(callbacks);
        }
        guard.callbacks.extend(callbacks);
        Added::Pending
    }

    /// The completion hook to submit the job with (`Pool::submit_with_hook`):
    /// fires the list once, on the thread that ends the job.
    pub fn completion_hook(self: &Arc<Self>) -> impl FnOnce() + Send + 'static {
        let listeners = Arc::clone(self);
        move || listeners.fire()
    }

    /// Runs every listener: once, on the thread that ends the job.
    pub fn fire(&self) {
        let (callbacks, awaiters, waiters, job) = {
            let mut guard = self.0.lock();
            guard.finished = true;
            (
                std::mem::take(&mut guard.callbacks),
                std::mem::take(&mut guard.awaiters),
                guard.waiters.clone(),
                guard.job.take(),
            )
        };
        for (hub, awaiter) in awaiters {
            hub.push(Delivery { awaiter });
        }
        let Some(job) = job else {
            return;
        };
        // `move`: the job reference must be dropped with the GIL held, or
        // pyo3 defers its decref to the next time it takes the GIL itself.
        gil::with_gil_here(move |py| {
            let job = job.bind(py);
            if let Some(waiters) = waiters {
                if let Err(err) = waiters.notify(py, job) {
                    err.write_unraisable(py, Some(job.as_any()));
                }
            }
            for callback in callbacks {
                if let Err(err) = callback.invoke(py, job.as_any()) {
                    report_callback_error(py, job.as_any(), err);
                }
            }
        });
    }
}

/// `concurrent.futures` logs an `Exception` from a callback and goes on. On
/// the thread ending the job there is no caller to raise anything else to:
/// it is reported as unraisable.
pub fn report_callback_error(py: Python<'_>, job: &Bound<'_, PyAny>, err: PyErr) {
    if !err.is_instance_of::<pyo3::exceptions::PyException>(py) {
        err.write_unraisable(py, Some(job));
        return;
    }
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
