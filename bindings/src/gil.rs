//! The GIL rules, in one place.
//!
//! - Native work runs through [`release`], which drops the GIL for inputs
//!   big enough to be worth the hand-off (tiny ones run inline, as NumPy does).
//! - A pool worker takes the GIL only through [`with_gil_on_worker`]. The
//!   first time, it creates a Python thread state that it keeps for the
//!   thread's life, so later calls only swap the GIL instead of creating and
//!   destroying a thread state per job. [`worker_stopping`] tears it down
//!   while the interpreter is still alive; after [`interpreter_exiting`] it is
//!   left for the process exit to reclaim.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;

/// Inputs with fewer elements than this run without releasing the GIL: the
/// release and re-acquire would cost more than the work.
pub const RELEASE_THRESHOLD: usize = 1 << 14;

/// Runs `work` with the GIL released when `elements` is large enough.
pub fn release<T, F>(py: Python<'_>, elements: usize, work: F) -> T
where
    F: FnOnce() -> T + pyo3::marker::Ungil,
    T: pyo3::marker::Ungil,
{
    if elements < RELEASE_THRESHOLD {
        work()
    } else {
        py.allow_threads(work)
    }
}

/// Blocks until `wait(slice)` returns true or `deadline` passes, with the GIL
/// released, in short slices so that Ctrl-C (a pending signal) still
/// interrupts the caller. True if `wait` succeeded.
pub fn wait_interruptibly<F>(py: Python<'_>, deadline: Option<Instant>, wait: F) -> PyResult<bool>
where
    F: Fn(Duration) -> bool + pyo3::marker::Ungil + Sync,
{
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        let slice = deadline.map_or(SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(SLICE)
        });
        if py.allow_threads(|| wait(slice)) {
            return Ok(true);
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

static EXITING: AtomicBool = AtomicBool::new(false);

/// Called from the package's `atexit` hook, after every pool was closed.
pub fn interpreter_exiting() {
    EXITING.store(true, Ordering::Release);
}

struct WorkerThreadState {
    gilstate: ffi::PyGILState_STATE,
    tstate: *mut ffi::PyThreadState,
}

thread_local! {
    static WORKER_STATE: Cell<Option<WorkerThreadState>> = const { Cell::new(None) };
}

/// Takes the GIL on a pool worker, keeping the thread's Python state alive
/// between calls.
pub fn with_gil_on_worker<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    WORKER_STATE.with(|state| {
        let current = state.take();
        let kept = current.or_else(|| {
            if EXITING.load(Ordering::Acquire) {
                return None;
            }
            // SAFETY: the interpreter is initialised (this extension is loaded)
            // and this thread holds no GIL: Ensure creates this thread's state
            // and takes the GIL; SaveThread releases it, keeping the state.
            unsafe {
                let gilstate = ffi::PyGILState_Ensure();
                let tstate = ffi::PyEval_SaveThread();
                Some(WorkerThreadState { gilstate, tstate })
            }
        });
        state.set(kept);
    });
    Python::with_gil(f)
}

/// Takes the GIL on any thread: through [`with_gil_on_worker`] on a pool
/// worker (keeping its thread state), plainly elsewhere.
pub fn with_gil_here<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if raptors_runtime::on_worker_thread() {
        with_gil_on_worker(f)
    } else {
        Python::with_gil(f)
    }
}

/// Releases the thread state [`with_gil_on_worker`] kept, if any.
pub fn worker_stopping() {
    if let Some(kept) = WORKER_STATE.with(Cell::take) {
        if EXITING.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `kept` came from Ensure + SaveThread on this very thread,
        // and the interpreter has not begun to exit.
        unsafe {
            ffi::PyEval_RestoreThread(kept.tstate);
            ffi::PyGILState_Release(kept.gilstate);
        }
    }
}
