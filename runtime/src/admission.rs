//! Admission: whether a pool accepts a job, beyond the queue bound.
//!
//! With [`Admission::Predictive`], a submit with a deadline is refused at
//! once ([`SubmitError::WouldMissDeadline`](crate::SubmitError)) when the
//! predicted wait before the job could start exceeds the time left to its
//! deadline: a job that would expire in the queue is shed while the caller
//! can still answer, instead of holding a queue slot until it expires.
//!
//! # The prediction
//!
//! Inputs, all read under the budget lock in O(distinct priorities + the
//! budget's threads), nothing sorted:
//! * `k`: the queued jobs of the pool that would start first (a higher or
//!   equal priority; later submits of a higher priority may still overtake);
//! * the pool's running jobs and how long each has run (`e_i`);
//! * `c`: the threads the pool may use: its cap, or on a shared budget its
//!   weighted share of the budget's threads among the busy pools, if lower;
//! * the mean `m` and standard deviation `s` of its recent run times (the
//!   same 1024 samples as `run_p50`/`run_p99`).
//!
//! A running job is expected to end in `|m - e_i|`: what is left of the
//! mean, or, once past it, as long again as it overran (a job far past the
//! mean is a long one). Each of the `c` threads then starts a job every
//! `m`; counting a thread's starts by time `t` as `(t - r_i)/m + 1/2`
//! (the midpoint of the floor) and asking for `k + 1` starts gives the
//! expected wait
//!
//! ```text
//! w = ((k + 1 - c/2) m + sum_i |m - e_i|) / c        (at least 0)
//! ```
//!
//! within `m/2` of where the counted starts reach `k + 1` (each thread's
//! count is off by at most a half). The
//! prediction adds the spread of the `k + 1` run times that pass first,
//! `z s sqrt(k + 1) / c` with `z = 2.33` (the normal 99th percentile), so
//! that an admitted job rarely expires: the predicted wait is a p99, not a
//! mean. It is 0 when a thread would be free for the job (`running + k <
//! c`) and when no run time has been measured yet (nothing to predict
//! from: the job is admitted and measured). It never falls with more
//! queued work and never rises with more threads.

/// How a pool decides whether to accept a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// The queue bound alone (`QueueFull` when `queue_capacity` jobs wait).
    #[default]
    Bounded,
    /// The queue bound, and a job with a deadline is refused at once when
    /// its predicted wait exceeds the time left to the deadline.
    Predictive,
}

/// The normal distribution's 99th percentile: the prediction is a p99.
const Z_P99: f64 = 2.33;

/// What the prediction reads about a pool, in seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Queued jobs that would start before the new one.
    pub(crate) ahead: usize,
    /// The pool's running jobs (what `elapsed` yields).
    pub(crate) running: usize,
    /// Threads the pool may use (> 0; fractional on a shared budget).
    pub(crate) threads: f64,
    /// Mean and standard deviation of recent run times.
    pub(crate) run_mean: f64,
    pub(crate) run_std_dev: f64,
}

/// `d` in seconds, by a multiply where `Duration::as_secs_f64` divides (a
/// few ns of latency on every submit; the last bit may differ).
pub(crate) fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs() as f64 + f64::from(d.subsec_nanos()) * 1e-9
}

/// The predicted p99 wait, in seconds (at least 0), of a job submitted into
/// `load`, the pool's running jobs having run for `elapsed` seconds each.
/// See the module doc. Seconds, not a `Duration`: the submit path compares
/// it with the time left and builds a `Duration` only for a refusal.
pub(crate) fn predicted_wait(load: Load, elapsed: impl Iterator<Item = f64>) -> f64 {
    let Load {
        ahead,
        running,
        threads: c,
        run_mean: m,
        run_std_dev: s,
    } = load;
    // Checked before the running jobs are read: under light load a thread
    // is free and the submit pays for nothing else.
    if m <= 0.0 || !m.is_finite() || c <= 0.0 || ((running + ahead) as f64) < c {
        return 0.0;
    }
    let left: f64 = elapsed.map(|e| (m - e).abs()).sum();
    let starts = (ahead + 1) as f64;
    let per_thread = 1.0 / c;
    let mean = (((starts - c / 2.0) * m + left) * per_thread).max(0.0);
    let spread = Z_P99 * s * starts.sqrt() * per_thread;
    mean + spread
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ahead: usize, threads: f64) -> Load {
        Load {
            ahead,
            running: 0,
            threads,
            run_mean: 0.002,
            run_std_dev: 0.001,
        }
    }

    /// The prediction with running jobs of these elapsed times.
    fn predict(load: Load, elapsed: &[f64]) -> f64 {
        let load = Load {
            running: elapsed.len(),
            ..load
        };
        predicted_wait(load, elapsed.iter().copied())
    }

    #[test]
    fn a_free_thread_or_no_measurement_predicts_no_wait() {
        assert_eq!(predict(load(0, 2.0), &[0.001]), 0.0);
        let unmeasured = Load {
            run_mean: 0.0,
            ..load(50, 1.0)
        };
        assert_eq!(predict(unmeasured, &[0.1]), 0.0);
    }

    #[test]
    fn one_thread_waits_for_the_running_job_and_the_queue() {
        let exact = Load {
            run_std_dev: 0.0,
            ..load(3, 1.0)
        };
        // 1 ms left of the running job, 3 jobs of 2 ms ahead, and the
        // midpoint's half a job: 1 + 6 + 1 ms.
        let w = predict(exact, &[0.001]);
        assert!((w - 0.008).abs() < 1e-12, "{w}");
    }

    #[test]
    fn jobs_started_together_are_within_half_a_run() {
        // c jobs just started, k queued: the job starts after
        // (floor(k / c) + 1) runs.
        for c in 1..=8 {
            for k in 0..40 {
                let exact = Load {
                    run_std_dev: 0.0,
                    ..load(k, c as f64)
                };
                let w = predict(exact, &vec![0.0; c]);
                let truth = ((k / c) + 1) as f64 * 0.002;
                assert!(
                    (w - truth).abs() <= 0.001 + 1e-12,
                    "c {c} k {k}: {w} vs {truth}"
                );
            }
        }
    }

    #[test]
    fn an_overrunning_job_holds_its_thread() {
        let on_time = predict(load(0, 1.0), &[0.002]);
        let overrun = predict(load(0, 1.0), &[0.102]);
        assert!(overrun > on_time + 0.09, "{on_time} {overrun}");
    }

    #[test]
    fn more_queued_work_waits_longer_and_more_threads_shorter() {
        let running = [0.0005, 0.0015, 0.003, 0.0];
        for threads in [1.0, 1.5, 2.0, 3.0, 4.0] {
            let mut last = 0.0;
            for ahead in 0..200 {
                let w = predict(load(ahead, threads), &running);
                assert!(w >= last, "ahead {ahead} threads {threads}: {w} < {last}");
                last = w;
            }
        }
        for ahead in [0, 1, 5, 50] {
            let mut last = f64::INFINITY;
            for threads in [1.0, 1.5, 2.0, 3.0, 4.0, 8.0] {
                let w = predict(load(ahead, threads), &running);
                assert!(w <= last, "ahead {ahead} threads {threads}: {w} > {last}");
                last = w;
            }
        }
    }
}
