//! Fork: what a child process gets of the pools its parent had.
//!
//! `fork()` copies the memory of the process but only the thread that
//! called it. In the child every lock a parent thread held at that moment
//! stays held for ever, and no worker or timer thread exists. So the child
//! never takes an inherited lock: the runtime counts forks in [`EPOCH`]
//! (bumped by a `pthread_atfork` child handler, registered with the first
//! pool, which only touches an atomic and so is async-signal-safe), and
//! every pool and the deadline timer remember the epoch they were made in.
//!
//! The rule a child gets: a pool inherited from the parent is closed
//! (`submit` is refused with `SubmitError::Closed`, `close` and `join`
//! return at once, `stats` reads its last state if its lock was free at the
//! fork, else zeros), and is never freed (its dead threads still own
//! references). Pools created in the child are ordinary pools, with a
//! deadline timer of their own epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks that happened in this process's ancestry since the runtime loaded.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The fork epoch of this process now.
pub(crate) fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// Registers the child handler, once per process (a child inherits it).
pub(crate) fn watch() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: the handler only bumps an atomic, which is async-signal-safe
        // as the child side of pthread_atfork requires.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    EPOCH.fetch_add(1, Ordering::AcqRel);
}
