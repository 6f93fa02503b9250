//! Synchronisation primitives of the job state machine, swapped for loom's
//! model-checked versions under `--cfg loom`.
//!
//! The per-job state machine (`job.rs`), the drain protocol of `join`
//! (`drain.rs`), the mailbox's wake-up protocol (`mailbox.rs`) and the
//! token's registry (`token.rs`) go through this module: they are what the
//! loom models exercise. Every other lock is `lock.rs`'s, covered by the stress tests.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering},
    sync::{Condvar, Mutex, MutexGuard},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};

/// `std::cell::UnsafeCell` with loom's closure-based access API, so the same
/// code compiles against both.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Waits on `condvar` (holding `guard`, a guard of its mutex) until `done()`
/// or `deadline` (`None`: no limit); true if done. `done` is checked under
/// the lock before every wait, so a notify after the state change is never
/// missed.
pub(crate) fn wait_until<T>(
    condvar: &Condvar,
    mut guard: MutexGuard<'_, T>,
    deadline: Option<std::time::Instant>,
    mut done: impl FnMut() -> bool,
) -> bool {
    loop {
        if done() {
            return true;
        }
        guard = match deadline {
            None => condvar
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(deadline) => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return false;
                }
                condvar
                    .wait_timeout(guard, deadline - now)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
        };
    }
}

/// Locks `mutex`, ignoring poisoning: the state machine never panics while a
/// lock is held (callbacks run after the guard is dropped).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
