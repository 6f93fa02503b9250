//! Micro benchmark: trivial jobs submitted from one thread into a 2-thread
//! pool. Prints throughput (submit + run + complete), without and with a
//! deadline on every job, and the submit->done latency of one job at a
//! time, as medians of repeats.
//!
//! `cargo run --release -p raptors-runtime --example throughput [-- rate|rate-deadline|latency]`
//! (one argument runs only that half, e.g. under a profiler).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raptors_runtime::{JobStop, Pool, PoolConfig, SubmitError, SubmitOptions};

const REPEATS: usize = 7;
const JOBS: u64 = 200_000;
const ROUND_TRIPS: usize = 20_000;
const IN_FLIGHT: u64 = 1024;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Jobs per second for `JOBS` trivial jobs, counting completion by a
/// shared counter (what an event-loop bridge would do in `on_complete`).
fn throughput(pool: &Pool, with_deadline: bool) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut submitted = 0;
    while submitted < JOBS {
        // Keep at most a queue's worth in flight, as an awaiting service
        // would, rather than spinning on QueueFull.
        if submitted - done.load(Ordering::Relaxed) >= IN_FLIGHT {
            std::thread::yield_now();
            continue;
        }
        let d = Arc::clone(&done);
        let opts = SubmitOptions {
            deadline: with_deadline.then(|| Instant::now() + Duration::from_secs(1)),
            ..SubmitOptions::default()
        };
        match pool.submit(opts, move |_| -> Result<(), JobStop<()>> {
            d.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }) {
            Ok(_) => submitted += 1,
            Err(SubmitError::QueueFull { .. }) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    while done.load(Ordering::Acquire) < JOBS {
        std::hint::spin_loop();
    }
    JOBS as f64 / start.elapsed().as_secs_f64()
}

/// Median and p99 of submit -> terminal observed by the submitter, one job
/// in flight at a time.
fn round_trip(pool: &Pool) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| {
            let start = Instant::now();
            let job = pool
                .submit(SubmitOptions::default(), |_| -> Result<u32, JobStop<()>> {
                    Ok(1)
                })
                .expect("accepted");
            while !job.is_terminal() {
                std::hint::spin_loop();
            }
            start.elapsed()
        })
        .collect();
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn main() {
    let only = std::env::args().nth(1);
    let run = |half: &str| only.as_deref().is_none_or(|o| o == half);
    let pool = Pool::new(PoolConfig::new("bench", 2, 4096)).expect("pool");
    for (label, with_deadline) in [("rate", false), ("rate-deadline", true)] {
        if !run(label) {
            continue;
        }
        let rates: Vec<f64> = (0..REPEATS)
            .map(|_| throughput(&pool, with_deadline))
            .collect();
        println!(
            "{label}: {:.0} jobs/s (median of {REPEATS} x {JOBS} trivial jobs, 1 submitter, 2 workers; min {:.0}, max {:.0})",
            median(rates.clone()),
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
        );
    }
    if run("latency") {
        let latencies: Vec<(Duration, Duration)> =
            (0..REPEATS).map(|_| round_trip(&pool)).collect();
        let p50 = median(latencies.iter().map(|l| l.0.as_secs_f64()).collect());
        let p99 = median(latencies.iter().map(|l| l.1.as_secs_f64()).collect());
        println!(
            "submit->done: p50 {:.2} us, p99 {:.2} us (median over {REPEATS} runs of {ROUND_TRIPS} one-at-a-time jobs)",
            p50 * 1e6,
            p99 * 1e6
        );
    }
    let s = pool.stats();
    println!(
        "pool stats: submitted {} completed {} rejected {} wait_p50 {:.2} us run_p50 {:.2} us",
        s.submitted,
        s.completed,
        s.rejected,
        s.wait_p50 * 1e6,
        s.run_p50 * 1e6
    );
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
}
