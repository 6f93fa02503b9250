//! Completion hubs: how finished jobs reach an asyncio event loop.
//!
//! One hub per event loop. A hub owns a wake-up file descriptor (an eventfd
//! on Linux, a pipe elsewhere) registered with `loop.add_reader`, and a
//! [`Mailbox`] of deliveries. A thread that ends a job posts each of its
//! awaiters and writes the descriptor only when the mailbox asks for a
//! wake-up, so a burst of completions costs the loop one wake-up and
//! workers one system call per batch rather than one per job. The loop
//! drains the whole mailbox on its own thread, where the awaiting Tasks'
//! wake-ups must run. The wake-up protocol, its invariant and its loom
//! model are the mailbox's (`runtime/src/mailbox.rs`).

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyDict;
use raptors_runtime::Mailbox;

use crate::awaiter::JobAwait;
use crate::listeners::Callback;

/// An await whose job has ended: its callbacks (the Task's wake-up) are
/// run on the hub's loop.
pub struct Delivery {
    pub awaiter: Py<JobAwait>,
}

/// The per-loop completion channel, shared by plain `Arc` with the threads
/// that end jobs (no Python reference to drop on a worker).
pub struct HubCore {
    wake: Waker,
    mailbox: Mailbox<Delivery>,
}

impl HubCore {
    /// Posts `delivery` to the loop, waking it unless a wake-up is pending.
    /// Callable from any thread, with or without the GIL.
    pub fn push(&self, delivery: Delivery) {
        if self.mailbox.post(delivery) {
            self.wake.signal();
        }
    }
}

/// What `loop.add_reader` calls: drains its loop's [`HubCore`].
#[pyclass(frozen, module = "raptors._raptors")]
pub struct Hub {
    core: Arc<HubCore>,
    event_loop: PyObject,
}

#[pymethods]
impl Hub {
    /// Drains every queued delivery; called by the loop when the wake-up
    /// descriptor is readable.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let core = &*self.core;
        core.wake.clear();
        core.mailbox.begin_drain();
        while let Some(delivery) = core.mailbox.pop() {
            let awaiter = delivery.awaiter.bind(py);
            let mut callbacks = awaiter.get().take_callbacks().into_iter();
            while let Some(callback) = callbacks.next() {
                let Err(err) = callback.invoke(py, awaiter.as_any()) else {
                    continue;
                };
                if is_exit_request(py, &err) {
                    // As asyncio does for KeyboardInterrupt/SystemExit: let it
                    // stop the loop. What is left is delivered on the next drain.
                    let rest: Vec<Callback> = callbacks.collect();
                    if !rest.is_empty() {
                        awaiter.get().restore_callbacks(rest);
                        core.push(Delivery {
                            awaiter: delivery.awaiter.clone_ref(py),
                        });
                    }
                    if core.mailbox.end_drain_early() {
                        core.wake.signal();
                    }
                    return Err(err);
                }
                report_callback_error(py, &self.event_loop, awaiter.as_any(), err);
            }
        }
        Ok(())
    }
}

fn is_exit_request(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
        || err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
}

/// Hands a failing callback's exception to the loop's exception handler,
/// as asyncio does for its own callbacks.
fn report_callback_error(
    py: Python<'_>,
    event_loop: &PyObject,
    job: &Bound<'_, PyAny>,
    err: PyErr,
) {
    let context = PyDict::new(py);
    let filled = context
        .set_item("message", "Exception in callback of a Raptors job")
        .and_then(|()| context.set_item("exception", err.value(py)))
        .and_then(|()| context.set_item("future", job));
    let handled = filled.and_then(|()| {
        event_loop
            .call_method1(py, "call_exception_handler", (context,))
            .map(drop)
    });
    if let Err(err) = handled {
        err.write_unraisable(py, Some(job));
    }
}

/// The loop's wake-up descriptor.
struct Waker {
    read: OwnedFd,
    /// `None` for an eventfd, which is read and written through one descriptor.
    write: Option<OwnedFd>,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            let read = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Waker { read, write: None })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for the two descriptors pipe writes.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in fds {
                // SAFETY: fcntl on descriptors we just created.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // SAFETY: fresh descriptors owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            Ok(Waker {
                read,
                write: Some(write),
            })
        }
    }

    fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    fn signal(&self) {
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one: u64 = 1;
        // A failed write means the counter or pipe is already non-empty
        // (EAGAIN), which wakes the loop just the same.
        // SAFETY: writes 8 bytes from a live u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // eventfd: one read resets the counter; pipe: read until empty.
            if n <= 0 || self.write.is_none() || (n as usize) < buf.len() {
                break;
            }
        }
    }
}

/// Hubs of live loops. Each keeps its loop alive; hubs of closed loops are
/// dropped on the next registration. A std mutex, as every lock a forked
/// child may take (see `runtime/src/fork.rs`).
static HUBS: Mutex<Vec<Py<Hub>>> = Mutex::new(Vec::new());

fn hubs() -> MutexGuard<'static, Vec<Py<Hub>>> {
    // Nothing panics while holding it; a poisoned list is still a valid list.
    HUBS.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The hub last used on this thread: the common case is one loop per thread.
    static LAST: RefCell<Option<Py<Hub>>> = const { RefCell::new(None) };
}

static GET_RUNNING_LOOP: GILOnceCell<PyObject> = GILOnceCell::new();

/// In a forked child: forgets the parent's hubs, so that no loop of the
/// child ever drains (and so resets) a wake-up descriptor it shares with the
/// parent. They are leaked, not dropped: a parent worker may have been
/// half-way through a push when the process forked.
pub fn forget_after_fork() {
    // Taken only with the GIL and never across a Python call, so no parent
    // thread held it at the fork; `try_lock` all the same.
    if let Ok(mut hubs) = HUBS.try_lock() {
        std::mem::forget(std::mem::take(&mut *hubs));
    }
    std::mem::forget(LAST.with_borrow_mut(Option::take));
}

/// The running event loop of this thread, if any.
pub fn running_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    let getter = GET_RUNNING_LOOP.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("asyncio")?.getattr("_get_running_loop")?.unbind())
    })?;
    let event_loop = getter.bind(py).call0()?;
    Ok((!event_loop.is_none()).then_some(event_loop))
}

/// The hub of `event_loop`, created and registered with the loop on first use.
pub fn hub_for(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<HubCore>> {
    let cached = LAST.with_borrow(|last| {
        last.as_ref()
            .filter(|hub| hub.get().event_loop.is(event_loop))
            .map(|hub| Arc::clone(&hub.get().core))
    });
    if let Some(core) = cached {
        return Ok(core);
    }
    let known = hubs()
        .iter()
        .find(|hub| hub.get().event_loop.is(event_loop))
        .map(|hub| hub.clone_ref(py));
    let hub = match known {
        Some(hub) => hub,
        None => {
            // Python is never called with HUBS locked: a call may release the GIL.
            let known: Vec<Py<Hub>> = hubs().iter().map(|hub| hub.clone_ref(py)).collect();
            let closed: Vec<Py<Hub>> = known
                .into_iter()
                .filter(|hub| loop_is_closed(py, &hub.get().event_loop))
                .collect();
            let wake = Waker::new()?;
            let fd = wake.fd();
            let hub = Py::new(
                py,
                Hub {
                    core: Arc::new(HubCore {
                        wake,
                        mailbox: Mailbox::new(),
                    }),
                    event_loop: event_loop.clone().unbind(),
                },
            )?;
            event_loop.call_method1("add_reader", (fd, hub.clone_ref(py)))?;
            let removed: Vec<Py<Hub>> = {
                let mut hubs = hubs();
                let (stale, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *hubs)
                    .into_iter()
                    .partition(|hub| closed.iter().any(|c| c.is(hub)));
                *hubs = live;
                hubs.push(hub.clone_ref(py));
                stale
            };
            // Dropped after the lock: a closed loop's last reference may run
            // Python code (and switch threads) as it goes.
            drop((removed, closed));
            hub
        }
    };
    let core = Arc::clone(&hub.get().core);
    let previous = LAST.with_borrow_mut(|last| last.replace(hub));
    drop(previous);
    Ok(core)
}

fn loop_is_closed(py: Python<'_>, event_loop: &PyObject) -> bool {
    event_loop
        .call_method0(py, "is_closed")
        .and_then(|closed| closed.is_truthy(py))
        .unwrap_or(true)
}
