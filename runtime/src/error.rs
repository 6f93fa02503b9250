//! Errors returned when building a pool or budget, or submitting to a pool.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Why [`Pool::submit`](crate::Pool::submit) refused a job. A refused job is
/// not counted in `submitted`; `QueueFull` and `WouldMissDeadline`
/// refusals are counted in `rejected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every worker is busy and `capacity` jobs are already waiting.
    QueueFull { pool: String, capacity: usize },
    /// Predictive admission: the job's predicted wait before it could start
    /// exceeds the time left to its deadline (`timeout`, from the submit).
    WouldMissDeadline {
        pool: String,
        capacity: usize,
        predicted_wait: Duration,
        timeout: Duration,
    },
    /// The pool was closed and accepts no new work.
    Closed { pool: String },
}

impl SubmitError {
    /// Name of the pool that refused the job.
    pub fn pool(&self) -> &str {
        match self {
            SubmitError::QueueFull { pool, .. }
            | SubmitError::WouldMissDeadline { pool, .. }
            | SubmitError::Closed { pool } => pool,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::QueueFull { pool, capacity } => write!(
                f,
                "pool '{pool}' queue is full: all workers are busy and {capacity} jobs are already waiting"
            ),
            SubmitError::WouldMissDeadline {
                pool,
                predicted_wait,
                timeout,
                ..
            } => write!(
                f,
                "pool '{pool}' would start the job in about {:.1} ms (predicted p99), after its \
                 timeout of {:.1} ms: not admitted",
                predicted_wait.as_secs_f64() * 1e3,
                timeout.as_secs_f64() * 1e3
            ),
            SubmitError::Closed { pool } => write!(f, "pool '{pool}' is closed and accepts no new jobs"),
        }
    }
}

impl Error for SubmitError {}

/// Why [`Pool::new`](crate::Pool::new) could not build a pool.
#[derive(Debug)]
pub enum BuildError {
    /// `name` was empty.
    EmptyName,
    /// `threads` was 0.
    ZeroThreads,
    /// `queue_capacity` was 0.
    ZeroCapacity,
    /// `stack_size` was `Some(0)`.
    ZeroStackSize,
    /// `weight` was not a finite number > 0.
    BadWeight(f64),
    /// A pool's `threads` (its cap) exceeded its budget's threads.
    CapOverBudget {
        cap: usize,
        budget: String,
        threads: usize,
    },
    /// The budget was closed.
    BudgetClosed(String),
    /// The operating system refused to start a worker or timer thread.
    Spawn(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::EmptyName => f.write_str("name must be a non-empty string"),
            BuildError::ZeroThreads => f.write_str("threads must be >= 1, got 0"),
            BuildError::ZeroCapacity => f.write_str("queue_capacity must be >= 1, got 0"),
            BuildError::ZeroStackSize => f.write_str("stack_size must be > 0, got 0"),
            BuildError::BadWeight(weight) => {
                write!(f, "weight must be a finite number > 0, got {weight}")
            }
            BuildError::CapOverBudget {
                cap,
                budget,
                threads,
            } => write!(
                f,
                "threads={cap} exceeds the {threads} threads of budget '{budget}'"
            ),
            BuildError::BudgetClosed(budget) => {
                write!(f, "budget '{budget}' is closed and accepts no new pools")
            }
            BuildError::Spawn(reason) => write!(f, "could not start a thread: {reason}"),
        }
    }
}

impl Error for BuildError {}
