//! `PoolCore`: the native half of `rp.Pool`. The Python class adds the
//! `concurrent.futures.Executor` surface, the name registry and context
//! managers; everything on the hot path (`submit`) is here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString, PyTuple};
use raptors_runtime::{Pool, PoolConfig, SubmitOptions};

use crate::errors;
use crate::gil;
use crate::job::Job;
use crate::kernel::Kernel;
use crate::stats::PoolStats;
use crate::task;
use crate::timeout::Timeout;
use crate::token::CancelToken;

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

#[pyclass(subclass, frozen, module = "raptors._raptors")]
pub struct PoolCore {
    pool: Pool,
    name: Arc<str>,
    id: u64,
    nice: i32,
}

/// An `int` argument that is not a `bool`, with errors naming the argument.
fn int_argument(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<i64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be an int, not {}",
            value.get_type().name()?
        )));
    }
    value
        .extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("{argument} is out of range")))
}

fn positive(value: i64, argument: &str) -> PyResult<usize> {
    if value < 1 {
        return Err(PyValueError::new_err(format!(
            "{argument} must be >= 1, got {value}"
        )));
    }
    usize::try_from(value).map_err(|_| PyValueError::new_err(format!("{argument} is out of range")))
}

/// `threads=None`: `RAPTORS_THREADS` when set, else the usable cores.
fn default_threads() -> PyResult<usize> {
    match std::env::var("RAPTORS_THREADS") {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(n) => positive(n, "RAPTORS_THREADS"),
            Err(_) => Err(PyValueError::new_err(format!(
                "RAPTORS_THREADS must be an integer >= 1, got {text:?}"
            ))),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Workers run this much "nicer" than the threads that submit to them, so
/// that an event loop sharing the cores with a saturated pool is scheduled
/// first when it wakes (measured: heartbeat p99 4 ms -> 0.6-1.4 ms on two
/// saturated cores, same throughput). `nice=0` keeps the caller's priority.
const DEFAULT_NICE: i32 = 5;

/// Lowers the calling thread's scheduling priority by `nice` steps (Linux:
/// niceness is per thread). Failure only means the pool runs at normal
/// priority, so it is not an error.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            let tid = libc::gettid();
            let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            libc::setpriority(
                libc::PRIO_PROCESS,
                tid as libc::id_t,
                (current + nice).min(19),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[pymethods]
impl PoolCore {
    #[new]
    #[pyo3(signature = (name, threads=None, queue=None, *, nice=None))]
    fn new(
        name: &Bound<'_, PyAny>,
        threads: Option<&Bound<'_, PyAny>>,
        queue: Option<&Bound<'_, PyAny>>,
        nice: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let name: String = name
            .downcast::<PyString>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "name must be a str, not {}",
                    name.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?
            .to_str()?
            .to_owned();
        if name.is_empty() {
            return Err(PyValueError::new_err("name must be a non-empty string"));
        }
        let threads = match threads.filter(|t| !t.is_none()) {
            Some(t) => positive(int_argument(t, "threads")?, "threads")?,
            None => default_threads()?,
        };
        let queue = match queue.filter(|q| !q.is_none()) {
            Some(q) => positive(int_argument(q, "queue")?, "queue")?,
            None => 1024,
        };
        let nice = match nice.filter(|n| !n.is_none()) {
            Some(n) => {
                let n = int_argument(n, "nice")?;
                if !(0..=19).contains(&n) {
                    return Err(PyValueError::new_err(format!(
                        "nice must be between 0 and 19 (workers may only lower their priority), got {n}"
                    )));
                }
                n as i32
            }
            None => DEFAULT_NICE,
        };
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut config = PoolConfig::new(name.clone(), threads, queue);
        config.on_thread_start = Some(Arc::new(move |_index| {
            gil::worker_started(id);
            lower_thread_priority(nice);
        }));
        config.on_thread_stop = Some(Arc::new(|_index| gil::worker_stopping()));
        let pool = Pool::new(config).map_err(|err| PyValueError::new_err(err.to_string()))?;
        Ok(PoolCore {
            pool,
            name: name.into(),
            id,
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
    ) -> PyResult<Py<Job>> {
        let priority = match priority {
            Some(p) => int_argument(p, "priority")?,
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
        let submitted = if let Ok(kernel) = func.downcast::<Kernel>() {
            let prepared = kernel.get().prepare(py, args, kwargs)?;
            self.pool.submit(options, task::kernel_call(prepared))
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
            self.pool.submit(options, call)
        };
        let handle = submitted.map_err(|err| errors::submit_error(py, &err))?;
        Job::create(py, handle, Arc::clone(&self.name))
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
        if gil::is_worker_of(self.id) {
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

    /// Whether the calling thread is one of this pool's workers.
    fn _is_worker_thread(&self) -> bool {
        gil::is_worker_of(self.id)
    }
}
