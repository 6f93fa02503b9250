//! `BudgetCore`: the native half of `rp.Budget` (threads shared by pools),
//! `rp.BudgetStats`, and the one place worker threads are configured (how
//! many by default, their OS priority, their per-thread Python state) for
//! budgets and pools alike.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};
use raptors_runtime::{Budget, BudgetConfig, ThreadHook};

use crate::gil;
use crate::timeout::Timeout;

/// Workers run this much "nicer" than the threads that submit to them, so
/// that an event loop sharing the cores with a saturated pool is scheduled
/// first when it wakes (measured: heartbeat p99 4 ms -> 0.6-1.4 ms on two
/// saturated cores, same throughput). `nice=0` keeps the caller's priority.
const DEFAULT_NICE: i32 = 5;

/// An `int` argument that is not a `bool`, with errors naming the argument.
pub fn int_argument(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<i64> {
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

pub fn positive(value: i64, argument: &str) -> PyResult<usize> {
    if value < 1 {
        return Err(PyValueError::new_err(format!(
            "{argument} must be >= 1, got {value}"
        )));
    }
    usize::try_from(value).map_err(|_| PyValueError::new_err(format!("{argument} is out of range")))
}

/// A non-empty `str` name.
pub fn name_argument(name: &Bound<'_, PyAny>) -> PyResult<String> {
    let name = name
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
    Ok(name)
}

/// The usable cores of this process (affinity and cgroup quota applied).
#[pyfunction]
pub fn _usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        Err(_) => Ok(_usable_cores()),
    }
}

/// `threads=`: a positive int, or `None` for the default.
pub fn threads_argument(threads: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match threads.filter(|t| !t.is_none()) {
        Some(t) => Ok(Some(positive(int_argument(t, "threads")?, "threads")?)),
        None => Ok(None),
    }
}

/// How worker threads of one budget are set up.
pub struct WorkerThreads {
    pub threads: usize,
    pub nice: i32,
}

impl WorkerThreads {
    pub fn new(threads: Option<usize>, nice: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let threads = match threads {
            Some(n) => n,
            None => default_threads()?,
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
        Ok(WorkerThreads { threads, nice })
    }

    /// The start and stop hooks every Raptors worker runs.
    pub fn hooks(&self) -> (ThreadHook, ThreadHook) {
        let nice = self.nice;
        let start: ThreadHook = Arc::new(move |_index| lower_thread_priority(nice));
        let stop: ThreadHook = Arc::new(|_index| gil::worker_stopping());
        (start, stop)
    }
}

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

#[pyclass(subclass, frozen, module = "raptors._raptors")]
pub struct BudgetCore {
    budget: Budget,
    nice: i32,
}

impl BudgetCore {
    pub fn runtime_budget(&self) -> &Budget {
        &self.budget
    }

    pub fn nice_steps(&self) -> i32 {
        self.nice
    }
}

#[pymethods]
impl BudgetCore {
    #[new]
    #[pyo3(signature = (name, threads=None, *, nice=None))]
    fn new(
        name: &Bound<'_, PyAny>,
        threads: Option<&Bound<'_, PyAny>>,
        nice: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let name = name_argument(name)?;
        let workers = WorkerThreads::new(threads_argument(threads)?, nice)?;
        let (start, stop) = workers.hooks();
        let mut config = BudgetConfig::new(name, workers.threads);
        config.on_thread_start = Some(start);
        config.on_thread_stop = Some(stop);
        let budget = Budget::new(config).map_err(|err| PyValueError::new_err(err.to_string()))?;
        Ok(BudgetCore {
            budget,
            nice: workers.nice,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        self.budget.name()
    }

    #[getter]
    fn threads(&self) -> usize {
        self.budget.threads()
    }

    /// How many steps below the submitting threads' priority workers run.
    #[getter]
    fn nice(&self) -> i32 {
        self.nice
    }

    #[getter]
    fn closed(&self) -> bool {
        self.budget.is_closed()
    }

    /// A snapshot of the budget's use and of each pool's share of it.
    fn stats(&self) -> BudgetStats {
        let s = self.budget.stats();
        BudgetStats {
            name: s.name,
            threads: s.threads,
            running: s.running,
            utilization: s.utilization,
            shares: s.shares,
        }
    }

    /// Closes every pool on the budget, then lets its threads exit.
    #[pyo3(signature = (cancel_pending=false))]
    fn _close(&self, cancel_pending: bool) {
        self.budget.close(cancel_pending);
    }

    /// Waits (GIL released, Ctrl-C honoured) until every worker exited.
    #[pyo3(signature = (timeout=None))]
    fn _join(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        if self.budget.is_current_worker() {
            return Err(PyRuntimeError::new_err(format!(
                "a job cannot wait for its own budget '{}' to finish: it would wait for itself",
                self.budget.name()
            )));
        }
        let deadline = Timeout::parse("timeout", timeout)?.deadline();
        let budget = &self.budget;
        gil::wait_interruptibly(py, deadline, |slice| budget.join(Some(slice)))
    }

    /// Whether the calling thread is one of this budget's workers.
    fn _is_worker_thread(&self) -> bool {
        self.budget.is_current_worker()
    }
}

/// A snapshot of a budget: `shares` maps each pool's name to its fraction
/// of the budget's busy time over the recent window (~10 s).
#[pyclass(frozen, module = "raptors", name = "BudgetStats")]
pub struct BudgetStats {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    threads: usize,
    #[pyo3(get)]
    running: u64,
    #[pyo3(get)]
    utilization: f64,
    /// In pool-name order.
    shares: Vec<(String, f64)>,
}

#[pymethods]
impl BudgetStats {
    #[getter]
    fn shares<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, share) in &self.shares {
            dict.set_item(name, share)?;
        }
        Ok(dict)
    }

    /// The same fields as a plain dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("name", &self.name)?;
        dict.set_item("threads", self.threads)?;
        dict.set_item("running", self.running)?;
        dict.set_item("utilization", self.utilization)?;
        dict.set_item("shares", self.shares(py)?)?;
        Ok(dict)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BudgetStats(name={:?}, threads={}, running={}, utilization={:?}, shares={})",
            self.name,
            self.threads,
            self.running,
            self.utilization,
            self.shares(py)?.repr()?
        ))
    }
}
