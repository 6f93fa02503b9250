//! Percentile and utilization sanity, and rayon work splitting over the
//! pool's own threads.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use raptors_runtime::{JobStop, Outcome, SubmitOptions};
use rayon::prelude::*;

const LIMIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn percentiles_and_utilization_reflect_the_load() {
    let pool = pool("stats", 1, 64);
    let fresh = pool.stats();
    assert_eq!(
        (fresh.wait_p50, fresh.wait_p99, fresh.run_p50, fresh.run_p99),
        (0.0, 0.0, 0.0, 0.0)
    );
    assert!(fresh.utilization < 0.05, "{fresh:?}");
    let jobs: Vec<_> = (0..20)
        .map(|_| {
            pool.submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
                std::thread::sleep(Duration::from_millis(5));
                Ok(())
            })
            .unwrap()
        })
        .collect();
    // While busy, the running job counts toward utilization.
    std::thread::sleep(Duration::from_millis(30));
    let busy = pool.stats();
    assert!(busy.utilization > 0.5, "{busy:?}");
    for job in &jobs {
        assert!(job.wait(LIMIT));
    }
    let s = pool.stats();
    assert!(s.run_p50 >= 0.005 && s.run_p50 < 0.05, "{s:?}");
    assert!(s.run_p99 >= s.run_p50);
    // The last job waited for the 19 before it: ~95 ms.
    assert!(s.wait_p99 >= 0.08, "{s:?}");
    assert!(s.wait_p50 <= s.wait_p99);
    assert!(s.utilization > 0.5 && s.utilization <= 1.0, "{s:?}");
    // The first job may still sit in the queue while its worker wakes.
    assert!((19..=20).contains(&s.max_queued), "{s:?}");
}

#[test]
fn rayon_work_in_a_job_splits_over_this_pools_threads_only() {
    let pool = pool("rayon-split", 2, 4);
    let job = pool
        .submit(SubmitOptions::default(), |ctx| -> Result<_, JobStop<()>> {
            ctx.wake_helpers();
            let seen = Mutex::new(BTreeSet::new());
            let total: usize = (0..2_000_000usize)
                .into_par_iter()
                .with_max_len(10_000)
                .map(|i| {
                    if i % 10_000 == 0 {
                        seen.lock().unwrap().insert(rayon::current_thread_index());
                        // Keep pieces long enough for the helper to steal.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    i % 7
                })
                .sum();
            let threads = rayon::current_num_threads();
            Ok((total, seen.into_inner().unwrap(), threads))
        })
        .unwrap();
    assert!(job.wait(LIMIT));
    let Some(Outcome::Done((total, seen, threads))) = job.take_outcome() else {
        panic!("job failed");
    };
    assert_eq!(total, (0..2_000_000usize).map(|i| i % 7).sum::<usize>());
    assert_eq!(
        threads, 2,
        "rayon inside a job sees this pool, not the global one"
    );
    let expected: BTreeSet<_> = [Some(0), Some(1)].into();
    assert_eq!(seen, expected, "both workers ran pieces");
}

#[test]
fn the_pool_serves_jobs_while_and_after_helping() {
    let pool = pool("rayon-serve", 2, 64);
    for round in 0..20 {
        let jobs: Vec<_> = (0..4)
            .map(|k| {
                pool.submit(
                    SubmitOptions::default(),
                    move |ctx| -> Result<u64, JobStop<()>> {
                        if k == 0 {
                            ctx.wake_helpers();
                        }
                        Ok((0..100_000u64).into_par_iter().map(|i| i ^ round).sum())
                    },
                )
                .unwrap()
            })
            .collect();
        for job in &jobs {
            assert!(job.wait(LIMIT));
            let want: u64 = (0..100_000u64).map(|i| i ^ round).sum();
            assert_eq!(job.take_outcome(), Some(Outcome::Done(want)));
        }
    }
    let s = pool.stats();
    assert_eq!(s.completed, 80);
    assert_invariant(&s);
}
