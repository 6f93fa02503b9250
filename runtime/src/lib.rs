//! Raptors runtime: named pools with bounded priority queues, cancellable
//! jobs, deadlines and exact statistics, run by budgets of native worker
//! threads that pools share with weighted fair sharing.
//!
//! No Python here; the bindings crate builds the Python API on top.
//!
//! # Guarantees
//!
//! * **Bounded queue.** A job submitted while a budget worker is idle (and
//!   the pool below its cap) is started in that worker's name and handed to
//!   it: it is `running` from `submit` on and never enters the queue.
//!   Otherwise it waits in the queue if fewer than `queue_capacity` jobs
//!   wait, or `submit` fails at once with [`SubmitError::QueueFull`]; no
//!   snapshot ever shows more than `queue_capacity` jobs waiting.
//! * **Order.** Higher priority first, FIFO among equal priorities.
//! * **One terminal state.** `queued -> running -> done | failed |
//!   cancelled`, `queued -> cancelled | expired`, decided by compare-and-swap
//!   whatever races; a job cancelled or expired while queued leaves the
//!   queue at once and its closure is dropped.
//! * **Deadlines** are enforced by a timer thread at the deadline, even when
//!   every worker is busy.
//! * **Exact stats.** Every counter changes under the budget's lock with
//!   the transition it counts: in every [`PoolStats`] snapshot,
//!   `submitted == queued + running + completed + failed + cancelled +
//!   expired` (`rejected` is separate).
//! * **Budgets.** A [`Budget`] is a fixed set of native threads, which are
//!   also the threads of its own rayon pool; pools on it keep their own
//!   queue, tokens, deadlines and stats. A free thread starts the next job
//!   of the pool with the least busy time per unit of weight among those
//!   below their cap (see `scheduler.rs`); it never idles while such a job
//!   waits. A pool built without a budget gets a private one of its own
//!   `threads`. A job's `par_iter`/`join` splits over its budget's threads
//!   only. Idle workers spin briefly (one at a time), then park; they help
//!   with a running job's rayon work while spinning and when woken by
//!   [`JobContext::wake_helpers`] (see `idle.rs`).
//! * **Fork.** A forked child never takes a lock inherited from its parent:
//!   inherited pools are closed there, new pools work (see `fork.rs`).
//! * **Panics** in jobs become [`Outcome::Panicked`]; panics in completion
//!   callbacks are caught and counted. Workers survive both.
//!
//! # Example
//!
//! ```
//! use raptors_runtime::{JobStop, Outcome, Pool, PoolConfig, SubmitOptions};
//!
//! let pool = Pool::new(PoolConfig::new("scoring", 2, 64))?;
//! let job = pool.submit(SubmitOptions::default(), |ctx| -> Result<u64, JobStop<String>> {
//!     if ctx.is_cancelled() {
//!         return Err(JobStop::Cancelled);
//!     }
//!     Ok((1..=10).sum())
//! })?;
//! job.wait(None);
//! assert_eq!(job.take_outcome(), Some(Outcome::Done(55)));
//! pool.close(false);
//! assert!(pool.join(None));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admission;
mod budget;
mod context;
mod drain;
mod error;
mod fork;
mod idle;
mod job;
pub mod lock;
mod mailbox;
#[cfg(loom)]
#[doc(hidden)]
pub mod model;
mod pool;
mod queue;
mod scheduler;
mod stats;
mod sync;
mod task;
mod timer;
mod token;
mod worker;

pub use admission::Admission;
pub use budget::{on_worker_thread, Budget, BudgetConfig, BudgetStats, ThreadHook};
pub use context::JobContext;
pub use error::{BuildError, SubmitError};
pub use job::{panic_message, Callback, JobHandle, JobStatus, JobStop, Outcome};
pub use mailbox::Mailbox;
pub use pool::{Pool, PoolConfig, SubmitOptions};
pub use stats::PoolStats;
pub use token::CancelToken;
