//! The mutex and condition variable of every lock Raptors takes outside the
//! loom-modelled state machines (`sync.rs`): the budget's scheduler lock,
//! worker slots, the deadline timer, tokens, and the bindings' job state.
//!
//! They are `std::sync`'s, behind `parking_lot`'s calling convention
//! (`lock()` returns the guard, `Condvar::wait(&mut guard)`), for one reason:
//! fork. A `parking_lot` lock that is contended parks its thread in that
//! crate's process-wide table of waiters, guarded by locks of its own; a
//! forked child inherits the table in whatever state a parent thread left
//! it, so the child's first contended lock, even one it created itself, can
//! hang or crash (seen: a child's fresh pool wedged in `grow_hashtable`).
//! `std`'s locks are one futex word each, with no shared state: in a child,
//! only a lock a parent thread held at the fork stays held, and `fork.rs`
//! keeps the child from taking those.
//!
//! Poisoning is ignored: no code panics while holding one of these locks
//! (callbacks and jobs run after the guard is dropped), and a panic caught
//! elsewhere must not make the pool unusable.

use std::ops::{Deref, DerefMut};
use std::sync::{PoisonError, TryLockError, WaitTimeoutResult};
use std::time::{Duration, Instant};

#[derive(Default, Debug)]
pub struct Mutex<T: ?Sized>(std::sync::Mutex<T>);

/// A held [`Mutex`]. Always holds its lock, except inside
/// [`Condvar::wait`] and [`MutexGuard::unlocked`], which take `&mut` of it.
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a std::sync::Mutex<T>,
    guard: Option<std::sync::MutexGuard<'a, T>>,
}

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> Mutex<T> {
    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            mutex: &self.0,
            guard: Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// The lock if it is free now; `None` if another thread holds it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let guard = match self.0.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(MutexGuard {
            mutex: &self.0,
            guard: Some(guard),
        })
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// Runs `f` with the lock released, then takes it again.
    pub fn unlocked<R>(this: &mut Self, f: impl FnOnce() -> R) -> R {
        drop(this.guard.take());
        let result = f();
        this.guard = Some(this.mutex.lock().unwrap_or_else(PoisonError::into_inner));
        result
    }

    fn take(&mut self) -> std::sync::MutexGuard<'a, T> {
        self.guard.take().expect("a MutexGuard holds its lock")
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("a MutexGuard holds its lock")
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("a MutexGuard holds its lock")
    }
}

#[derive(Default, Debug)]
pub struct Condvar(std::sync::Condvar);

impl Condvar {
    pub const fn new() -> Self {
        Condvar(std::sync::Condvar::new())
    }

    /// Releases `guard`'s lock until notified (or woken spuriously).
    pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let inner = guard.take();
        guard.guard = Some(self.0.wait(inner).unwrap_or_else(PoisonError::into_inner));
    }

    /// [`wait`](Self::wait) until `deadline` at the latest.
    pub fn wait_until<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        deadline: Instant,
    ) -> WaitTimeoutResult {
        self.wait_for(guard, deadline.saturating_duration_since(Instant::now()))
    }

    /// [`wait`](Self::wait) for `timeout` at the longest.
    pub fn wait_for<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        timeout: Duration,
    ) -> WaitTimeoutResult {
        let inner = guard.take();
        let (inner, result) = self
            .0
            .wait_timeout(inner, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        guard.guard = Some(inner);
        result
    }

    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}
