//! `PoolCore`: the native half of `rp.Pool`. The Python class adds the
//! `concurrent.futures.Executor` surface, the name registry and context
//! managers; everything on the hot path (`submit`) is here.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyTuple};
use raptors_runtime::{Admission, Pool, PoolConfig, SubmitOptions};

use crate::budget::{self, BudgetCore, WorkerThreads};
use crate::errors;
use crate::gil;
use crate::job::JobBase;
use crate::kernel::Kernel;
use crate::listeners::Listeners;
use crate::stats::PoolStats;
use crate::task;
use crate::timeout::Timeout;
use crate::token::CancelToken;

#[pyclass(subclass, frozen, module = "raptors._raptors")]
pub struct PoolCore {
    pool: Pool,
    admission: Admission,
    name: Arc<str>,
    /// Identifies the worker threads that run the pool's jobs (its budget's).
    nice: i32,
}

/// `weight=`: a finite `int` or `float` > 0 (`bool` is not a number here).
fn weight_argument(weight: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
    let Some(weight) = weight.filter(|w| !w.is_none()) else {
        return Ok(1.0);
    };
    if weight.is_instance_of::<PyBool>()
        || !(weight.is_instance_of::<PyInt>() || weight.is_instance_of::<PyFloat>())
    {
        return Err(PyTypeError::new_err(format!(
            "weight must be an int or a float, not {}",
            weight.get_type().name()?
        )));
    }
    let value: f64 = weight
        .extract()
        .map_err(|_| PyValueError::new_err("weight is out of range"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(PyValueError::new_err(format!(
            "weight must be a finite number > 0, got {}",
            weight.repr()?
        )));
    }
    Ok(value)
}

/// `admission=`: `"bounded"` (the default) or `"predictive"`.
fn admission_argument(admission: Option<&Bound<'_, PyAny>>) -> PyResult<Admission> {
    let Some(admission) = admission.filter(|a| !a.is_none()) else {
        return Ok(Admission::Bounded);
    };
    let Ok(text) = admission.extract::<&str>() else {
        return Err(PyTypeError::new_err(format!(
            "admission must be a str, not {}",
            admission.get_type().name()?
        )));
    };
    match text {
        "bounded" => Ok(Admission::Bounded),
        "predictive" => Ok(Admission::Predictive),
        other => Err(PyValueError::new_err(format!(
            "admission must be 'bounded' or 'predictive', got {other:?}"
        ))),
    }
}

#[pymethods]
impl PoolCore {
    #[new]
    #[pyo3(signature = (name, threads=None, queue=None, *, nice=None, budget=None, weight=None, admission=None))]
    fn new(
        name: &Bound<'_, PyAny>,
        threads: Option<&Bound<'_, PyAny>>,
        queue: Option<&Bound<'_, PyAny>>,
        nice: Option<&Bound<'_, PyAny>>,
        budget: Option<&Bound<'_, PyAny>>,
        weight: Option<&Bound<'_, PyAny>>,
        admission: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let name = budget::name_argument(name)?;
        let threads = budget::threads_argument(threads)?;
        let queue = match queue.filter(|q| !q.is_none()) {
            Some(q) => budget::positive(budget::int_argument(q, "queue")?, "queue")?,
            None => 1024,
        };
        let weight = weight_argument(weight)?;
        let admission = admission_argument(admission)?;
        let build_error = |err: raptors_runtime::BuildError| PyValueError::new_err(err.to_string());
        let (pool, nice) = match budget.filter(|b| !b.is_none()) {
            Some(budget) => {
                let budget = budget.downcast::<BudgetCore>().map_err(|_| {
                    PyTypeError::new_err("budget must be an rp.Budget or an open budget's name")
                })?;
                let budget = budget.get();
                if nice.is_some_and(|n| !n.is_none()) {
                    return Err(PyValueError::new_err(
                        "nice applies to a pool's own threads: set it on the budget",
                    ));
                }
                let runtime_budget = budget.runtime_budget();
                let cap = threads.unwrap_or(runtime_budget.threads());
                let mut config =
                    PoolConfig::new(name.clone(), cap, queue).on_budget(runtime_budget, weight);
                config.admission = admission;
                let pool = Pool::new(config).map_err(build_error)?;
                (pool, budget.nice_steps())
            }
            None => {
                let workers = WorkerThreads::new(threads, nice)?;
                let (start, stop) = workers.hooks();
                let mut config = PoolConfig::new(name.clone(), workers.threads, queue);
                config.on_thread_start = Some(start);
                config.on_thread_stop = Some(stop);
                config.admission = admission;
                let pool = Pool::new(config).map_err(build_error)?;
                (pool, workers.nice)
            }
        };
        Ok(PoolCore {
            pool,
            admission,
            name: name.into(),
            nice,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// `"bounded"` or `"predictive"`.
    #[getter]
    fn admission(&self) -> &'static str {
        match self.admission {
            Admission::Bounded => "bounded",
            Admission::Predictive => "predictive",
        }
    }

    #[getter]
    fn queue_capacity(&self) -> usize {
        self.pool.queue_capacity()
    }

    /// How many steps below the submitting threads' priority workers run.
    #[getter]
    fn nice(&self) -> i32 {
        self.nice
    }

    #[getter]
    fn closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Submits `fn(*args, **kwargs)`; returns an `rp.Job` at once, or raises
    /// `QueueFull` / `PoolClosed`. Never blocks.
    #[pyo3(signature = (func, /, *args, priority=None, token=None, timeout=None, **kwargs))]
    #[allow(clippy::too_many_arguments)] // Python's signature, bound by PyO3
    fn submit(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        priority: Option<&Bound<'_, PyAny>>,
        token: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<JobBase>> {
        let priority = match priority {
            Some(p) => budget::int_argument(p, "priority")?,
            None => 0,
        };
        let token = match token.filter(|t| !t.is_none()) {
            Some(token) => Some(
                token
                    .downcast::<CancelToken>()
                    .map_err(|_| PyTypeError::new_err("token must be an rp.CancelToken"))?
                    .get()
                    .runtime_token()
                    .clone(),
            ),
            None => None,
        };
        let options = SubmitOptions {
            priority,
            deadline: Timeout::parse("timeout", timeout)?.deadline(),
            token,
        };
        let listeners = Arc::new(Listeners::default());
        let hook = listeners.completion_hook();
        let submitted = if let Ok(kernel) = func.downcast::<Kernel>() {
            let prepared = kernel.get().prepare(py, args, kwargs)?;
            self.pool
                .submit_with_hook(options, hook, task::kernel_call(prepared))
        } else {
            if !func.is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "fn must be callable, not {}",
                    func.get_type().name()?
                )));
            }
            let call = task::python_call(
                func.clone().unbind(),
                args.clone().unbind(),
                kwargs.map(|k| k.clone().unbind()),
            );
            self.pool.submit_with_hook(options, hook, call)
        };
        let handle = submitted.map_err(|err| errors::submit_error(py, &err))?;
        JobBase::create(py, handle, Arc::clone(&self.name), listeners)
    }

    /// A consistent snapshot of the pool's counters and timings.
    fn stats(&self) -> PoolStats {
        PoolStats::from(self.pool.stats())
    }

    /// Stops accepting jobs; with `cancel_pending`, cancels every queued job.
    #[pyo3(signature = (cancel_pending=false))]
    fn _close(&self, cancel_pending: bool) {
        self.pool.close(cancel_pending);
    }

    /// Waits (GIL released, Ctrl-C honoured) until every accepted job ended
    /// and every worker exited. True if so before `timeout`.
    #[pyo3(signature = (timeout=None))]
    fn _join(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        if self.pool.is_current_worker() {
            return Err(PyRuntimeError::new_err(format!(
                "a job cannot wait for its own pool '{}' to finish: it would wait for itself",
                self.name
            )));
        }
        let deadline = Timeout::parse("timeout", timeout)?.deadline();
        let pool = &self.pool;
        gil::wait_interruptibly(py, deadline, |slice| pool.join(Some(slice)))
    }

    /// Whether a submit now would be accepted (a hint for `map`).
    fn _has_room(&self) -> bool {
        self.pool.has_room()
    }

    /// Whether the pool runs on a budget of its own threads.
    #[getter]
    fn _has_own_threads(&self) -> bool {
        self.pool.has_private_budget()
    }

    /// Whether the calling thread is one of the workers of this pool's budget.
    fn _is_worker_thread(&self) -> bool {
        self.pool.is_current_worker()
    }
}
