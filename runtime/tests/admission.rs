//! Predictive admission and the load fields of the stats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raptors_runtime::{Admission, JobStop, Pool, PoolConfig, SubmitError, SubmitOptions};

const RUN: Duration = Duration::from_millis(2);

fn predictive(name: &str, threads: usize) -> Pool {
    let mut config = PoolConfig::new(name, threads, 64);
    config.admission = Admission::Predictive;
    Pool::new(config).expect("pool builds")
}

/// Runs `n` jobs of about `RUN` one after the other, so the pool has
/// measured run times.
fn warm(pool: &Pool, n: usize) {
    for _ in 0..n {
        let job = pool
            .submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
                std::thread::sleep(RUN);
                Ok(())
            })
            .unwrap();
        assert!(job.wait(Some(Duration::from_secs(5))));
    }
}

fn queue_plain(pool: &Pool, n: usize, priority: i64) {
    for _ in 0..n {
        pool.submit(
            SubmitOptions {
                priority,
                ..SubmitOptions::default()
            },
            |_| -> Result<(), JobStop<()>> { Ok(()) },
        )
        .unwrap();
    }
}

fn submit_with_timeout(pool: &Pool, priority: i64, timeout: Duration) -> Result<(), SubmitError> {
    pool.submit(
        SubmitOptions {
            priority,
            deadline: Some(Instant::now() + timeout),
            token: None,
        },
        |_| -> Result<(), JobStop<()>> { Ok(()) },
    )
    .map(drop)
}

/// The predicted wait of a job of `priority`, read off a refusal with a
/// timeout shorter than any prediction.
fn predicted(pool: &Pool, priority: i64) -> Duration {
    match submit_with_timeout(pool, priority, Duration::from_micros(200)) {
        Err(SubmitError::WouldMissDeadline {
            predicted_wait,
            timeout,
            capacity,
            pool: name,
        }) => {
            assert!(predicted_wait > timeout);
            assert_eq!((name.as_str(), capacity), (pool.name(), 64));
            predicted_wait
        }
        other => panic!("expected WouldMissDeadline, got {other:?}"),
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "reads wall-clock margins of 200 us that Miri's slowdown exceeds"
)]
fn a_job_that_would_start_after_its_deadline_is_refused_and_counted() {
    let pool = predictive("admit-refuse", 1);
    warm(&pool, 20);
    let (gate, _blockers) = occupy(&pool);
    queue_plain(&pool, 10, 0);
    let before = pool.stats();

    let wait = predicted(&pool, 0);
    // Ten jobs of ~2 ms ahead on one thread: at least 20 ms.
    assert!(wait >= Duration::from_millis(20), "{wait:?}");
    let after = pool.stats();
    assert_eq!(after.rejected, before.rejected + 1);
    assert_eq!(after.submitted, before.submitted);
    assert_invariant(&after);

    // A long enough timeout, or none, is admitted.
    submit_with_timeout(&pool, 0, Duration::from_secs(30)).unwrap();
    queue_plain(&pool, 1, 0);
    assert_eq!(pool.stats().submitted, before.submitted + 2);
    gate.open();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
    let end = pool.stats();
    assert_invariant(&end);
    assert_eq!(end.expired, 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "reads wall-clock margins of 200 us that Miri's slowdown exceeds"
)]
fn the_prediction_grows_with_the_work_ahead_of_the_job() {
    let pool = predictive("admit-ahead", 1);
    warm(&pool, 20);
    let (gate, _blockers) = occupy(&pool);
    queue_plain(&pool, 5, 0);
    let five = predicted(&pool, 0);
    queue_plain(&pool, 5, 0);
    let ten = predicted(&pool, 0);
    // A higher priority starts before all ten.
    let first = predicted(&pool, 1);
    // Lower-priority work is not ahead of it.
    queue_plain(&pool, 20, -1);
    let ten_again = predicted(&pool, 0);
    assert!(five < ten, "{five:?} {ten:?}");
    assert!(first < five, "{first:?} {five:?}");
    // Only the blocker's elapsed time changed between the two reads: 20
    // lower-priority jobs would add 40 ms.
    let moved = ten_again.abs_diff(ten);
    assert!(moved < Duration::from_millis(20), "{ten:?} {ten_again:?}");
    gate.open();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
}

#[test]
fn bounded_admission_and_jobs_without_a_timeout_are_never_refused_by_prediction() {
    let bounded = pool("admit-bounded", 1, 64);
    warm(&bounded, 20);
    let (gate, _blockers) = occupy(&bounded);
    queue_plain(&bounded, 10, 0);
    submit_with_timeout(&bounded, 0, Duration::from_micros(200)).unwrap();
    gate.open();
    bounded.close(false);
    assert!(bounded.join(Some(Duration::from_secs(10))));
    assert_eq!(bounded.stats().rejected, 0);

    let pool = predictive("admit-untimed", 1);
    warm(&pool, 20);
    let (gate, _blockers) = occupy(&pool);
    queue_plain(&pool, 40, 0);
    assert_eq!(pool.stats().rejected, 0);
    gate.open();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
}

#[test]
fn an_unmeasured_pool_admits_and_a_free_thread_predicts_no_wait() {
    let pool = predictive("admit-fresh", 2);
    // Nothing measured: admitted even behind a busy worker.
    let (gate, _blockers) = occupy(&pool);
    submit_with_timeout(&pool, 0, Duration::from_micros(500)).unwrap();
    gate.open();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));

    let pool = predictive("admit-free", 2);
    warm(&pool, 20);
    // Both threads idle: the job starts at once whatever its timeout.
    submit_with_timeout(&pool, 0, Duration::from_micros(200)).unwrap();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
    assert_eq!(pool.stats().rejected, 0);
}

#[test]
fn stats_report_rates_the_mean_and_the_run_time_distribution() {
    let pool = predictive("admit-stats", 1);
    let fresh = pool.stats();
    assert_eq!(
        (fresh.arrival_rate, fresh.completion_rate, fresh.run_mean),
        (0.0, 0.0, 0.0)
    );
    assert!(fresh.run_quantiles.is_empty());
    warm(&pool, 30);
    let s = pool.stats();
    assert!(s.arrival_rate > 0.0 && s.completion_rate > 0.0, "{s:?}");
    assert!(s.run_mean >= RUN.as_secs_f64() && s.run_mean < 1.0, "{s:?}");
    assert_eq!(s.run_quantiles.len(), 101);
    assert!(s.run_quantiles.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(s.run_quantiles[50], s.run_p50);
    assert_eq!(s.run_quantiles[99], s.run_p99);
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
}
