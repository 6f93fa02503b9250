//! Budgets shared by several pools: weighted fair shares, caps, work
//! conservation, isolation, close, and no lost wake-up under churn.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raptors_runtime::{
    Budget, BudgetConfig, BuildError, JobHandle, JobStatus, JobStop, Pool, PoolConfig, SubmitError,
    SubmitOptions,
};

fn budget(name: &str, threads: usize) -> Budget {
    Budget::new(BudgetConfig::new(name, threads)).expect("budget builds")
}

fn pool_on(budget: &Budget, name: &str, cap: usize, queue: usize, weight: f64) -> Pool {
    Pool::new(PoolConfig::new(name, cap, queue).on_budget(budget, weight)).expect("pool builds")
}

type Handle = JobHandle<(), String>;

/// A job that occupies its thread for `d` (sleeping: no CPU contention,
/// so busy time is exactly what the scheduler handed out).
fn sleeper(pool: &Pool, d: Duration) -> Result<Handle, SubmitError> {
    pool.submit(
        SubmitOptions::default(),
        move |_| -> Result<(), JobStop<String>> {
            std::thread::sleep(d);
            Ok(())
        },
    )
}

fn share(budget: &Budget, pool: &str) -> f64 {
    budget
        .stats()
        .shares
        .iter()
        .find(|(name, _)| name == pool)
        .map_or(0.0, |&(_, s)| s)
}

/// Keeps both pools saturated for `window`; returns the heavy pool's share.
fn saturated_share(light_job: Duration, heavy_job: Duration, window: Duration) -> f64 {
    let b = budget("shares", 2);
    let light = pool_on(&b, "light", 2, 100_000, 1.0);
    let heavy = pool_on(&b, "heavy", 2, 100_000, 3.0);
    let count = |d: Duration| (2 * window.as_micros() / d.as_micros()) as usize + 10;
    for _ in 0..count(light_job) {
        sleeper(&light, light_job).unwrap();
    }
    for _ in 0..count(heavy_job) {
        sleeper(&heavy, heavy_job).unwrap();
    }
    std::thread::sleep(window); // the measurement window, not synchronisation
    let s = share(&b, "heavy");
    eprintln!("heavy pool share {s:.3} (light {light_job:?}, heavy {heavy_job:?})");
    assert!(
        light.stats().queued > 0 && heavy.stats().queued > 0,
        "stayed saturated"
    );
    b.close(true);
    assert!(b.join(Some(Duration::from_secs(10))));
    s
}

#[test]
fn saturated_pools_split_busy_time_by_weight() {
    let s = saturated_share(
        Duration::from_millis(2),
        Duration::from_millis(2),
        Duration::from_millis(1500),
    );
    assert!(
        (0.65..=0.85).contains(&s),
        "weight 3 of 1+3 got {s:.3} of the busy time"
    );
}

#[test]
fn shares_hold_when_one_pool_runs_ten_times_longer_jobs() {
    let s = saturated_share(
        Duration::from_millis(10),
        Duration::from_millis(1),
        Duration::from_millis(1500),
    );
    assert!(
        (0.65..=0.85).contains(&s),
        "weight 3 of 1+3 got {s:.3} of the busy time"
    );
    let s = saturated_share(
        Duration::from_millis(1),
        Duration::from_millis(10),
        Duration::from_millis(1500),
    );
    assert!(
        (0.65..=0.85).contains(&s),
        "weight 3 of 1+3 got {s:.3} of the busy time"
    );
}

#[test]
fn a_quiet_pool_waits_for_at_most_one_running_job() {
    let b = budget("quiet", 2);
    let noisy = pool_on(&b, "noisy", 2, 10_000, 1.0);
    let quiet = pool_on(&b, "quiet", 2, 16, 1.0);
    let job = Duration::from_millis(20);
    for _ in 0..400 {
        sleeper(&noisy, job).unwrap();
    }
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let submitted = Instant::now();
        let started = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&started);
        let handle = quiet
            .submit(
                SubmitOptions::default(),
                move |_| -> Result<(), JobStop<String>> {
                    *seen.lock().unwrap() = Some(Instant::now());
                    Ok(())
                },
            )
            .unwrap();
        assert!(handle.wait(Some(Duration::from_secs(10))));
        let wait = started.lock().unwrap().unwrap() - submitted;
        worst = worst.max(wait);
        std::thread::sleep(Duration::from_millis(7)); // think time of a quiet client
    }
    assert!(noisy.stats().queued > 0, "the noisy pool stayed saturated");
    // One running job of 20 ms, plus generous slack for a loaded machine.
    eprintln!("quiet pool worst wait {worst:?}");
    assert!(worst < job * 3, "the quiet pool's job waited {worst:?}");
    b.close(true);
    assert!(b.join(Some(Duration::from_secs(10))));
}

/// Submits `jobs` jobs that record the most of them running at once.
fn concurrency_probe(pool: &Pool, jobs: usize, d: Duration) -> (Arc<AtomicUsize>, Vec<Handle>) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handles = (0..jobs)
        .map(|_| {
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            pool.submit(
                SubmitOptions::default(),
                move |_| -> Result<(), JobStop<String>> {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(d);
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                },
            )
            .unwrap()
        })
        .collect();
    (most, handles)
}

#[test]
fn a_pool_never_exceeds_its_cap_and_the_budget_stays_busy() {
    let b = budget("caps", 4);
    let capped = pool_on(&b, "capped", 2, 1000, 1.0);
    let other = pool_on(&b, "other", 4, 1000, 1.0);
    let (capped_most, a) = concurrency_probe(&capped, 60, Duration::from_millis(2));
    let (other_most, c) = concurrency_probe(&other, 60, Duration::from_millis(2));
    for h in a.iter().chain(&c) {
        assert!(h.wait(Some(Duration::from_secs(20))));
    }
    assert_eq!(
        capped_most.load(Ordering::SeqCst),
        2,
        "cap 2 reached, never passed"
    );
    // Work conserving: the other pool took the threads the cap left.
    assert!(other_most.load(Ordering::SeqCst) >= 2);
    assert_invariant(&capped.stats());
    assert_eq!(capped.stats().threads, 2);
    b.close(false);
    assert!(b.join(Some(Duration::from_secs(10))));
}

#[test]
fn capped_pools_leave_no_thread_idle_while_a_job_may_start() {
    // Two pools of cap 1 on a budget of 2: both threads are used.
    let b = budget("conserve", 2);
    let p = pool_on(&b, "p", 1, 100, 1.0);
    let q = pool_on(&b, "q", 1, 100, 1.0);
    let gate = Gate::new();
    let _a = blocker(&p, &gate);
    let _b = blocker(&p, &gate);
    let _c = blocker(&q, &gate);
    wait_until(Duration::from_secs(5), || b.stats().running == 2);
    assert_eq!(p.stats().running, 1);
    assert_eq!(p.stats().queued, 1);
    assert_eq!(q.stats().running, 1);
    gate.open();
    b.close(false);
    assert!(b.join(Some(Duration::from_secs(10))));
    assert_eq!(p.stats().completed, 2);
}

#[test]
fn a_budget_runs_exactly_its_threads_for_any_number_of_pools() {
    let b = budget("five", 2);
    let pools: Vec<Pool> = (0..5)
        .map(|i| pool_on(&b, &format!("p{i}"), 2, 100, 1.0))
        .collect();
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let mut handles = Vec::new();
    for p in &pools {
        for _ in 0..20 {
            let threads = Arc::clone(&threads);
            handles.push(
                p.submit(
                    SubmitOptions::default(),
                    move |ctx| -> Result<(), JobStop<String>> {
                        assert!(ctx.thread_index() < ctx.budget_threads());
                        threads.lock().unwrap().insert(std::thread::current().id());
                        Ok(())
                    },
                )
                .unwrap(),
            );
        }
    }
    for h in &handles {
        assert!(h.wait(Some(Duration::from_secs(10))));
    }
    assert!(threads.lock().unwrap().len() <= 2);
    b.close(false);
    assert!(b.join(Some(Duration::from_secs(10))));
}

#[test]
fn failing_panicking_cancelled_and_expired_jobs_leave_other_pools_served() {
    let b = budget("isolation", 2);
    let bad = pool_on(&b, "bad", 2, 10_000, 1.0);
    let good = pool_on(&b, "good", 2, 10_000, 1.0);
    let token = raptors_runtime::CancelToken::new();
    let mut bad_jobs = Vec::new();
    for i in 0..400 {
        let opts = SubmitOptions {
            token: (i % 4 == 2).then(|| token.clone()),
            deadline: (i % 4 == 3).then(|| Instant::now() + Duration::from_micros(50)),
            ..SubmitOptions::default()
        };
        bad_jobs.push(
            bad.submit(opts, move |_| -> Result<(), JobStop<String>> {
                match i % 4 {
                    0 => Err(JobStop::Failed("bad input".into())),
                    1 => panic!("job {i} panicked"),
                    _ => {
                        std::thread::sleep(Duration::from_micros(200));
                        Ok(())
                    }
                }
            })
            .unwrap(),
        );
    }
    token.cancel();
    let good_jobs: Vec<Handle> = (0..200)
        .map(|_| sleeper(&good, Duration::from_micros(100)).unwrap())
        .collect();
    for h in good_jobs.iter().chain(&bad_jobs) {
        assert!(h.wait(Some(Duration::from_secs(20))));
    }
    assert!(good_jobs.iter().all(|h| h.status() == JobStatus::Done));
    let s = bad.stats();
    assert_invariant(&s);
    assert_eq!(s.failed, 200, "failed and panicked jobs: {s:?}");
    assert_eq!(s.completed + s.cancelled + s.expired, 200);
    assert_eq!(good.stats().completed, 200);
    b.close(false);
    assert!(b.join(Some(Duration::from_secs(10))));
}

#[test]
fn closing_one_pool_under_load_leaves_the_others_running() {
    let b = budget("close-one", 2);
    let a = pool_on(&b, "a", 2, 10_000, 1.0);
    let c = pool_on(&b, "c", 2, 10_000, 1.0);
    let a_jobs: Vec<Handle> = (0..500)
        .map(|_| sleeper(&a, Duration::from_micros(200)).unwrap())
        .collect();
    let c_jobs: Vec<Handle> = (0..500)
        .map(|_| sleeper(&c, Duration::from_micros(200)).unwrap())
        .collect();
    a.close(true);
    assert!(a.is_closed() && !c.is_closed() && !b.is_closed());
    assert!(matches!(
        sleeper(&a, Duration::ZERO),
        Err(SubmitError::Closed { .. })
    ));
    assert!(
        a.join(Some(Duration::from_secs(10))),
        "a closed pool on a budget joins once drained"
    );
    assert!(a_jobs.iter().all(|h| h.status().is_terminal()));
    for h in &c_jobs {
        assert!(h.wait(Some(Duration::from_secs(20))));
        assert_eq!(h.status(), JobStatus::Done);
    }
    assert!(
        sleeper(&c, Duration::ZERO).is_ok(),
        "the budget still serves"
    );
    assert_invariant(&a.stats());
    b.close(false);
    assert!(c.is_closed(), "closing a budget closes its pools");
    assert!(b.join(Some(Duration::from_secs(10))));
    assert!(c.join(Some(Duration::from_secs(10))));
}

#[test]
fn build_errors_for_budget_pools_name_the_problem() {
    let b = budget("errors", 2);
    let over = Pool::new(PoolConfig::new("over", 3, 8).on_budget(&b, 1.0)).unwrap_err();
    assert!(
        matches!(
            over,
            BuildError::CapOverBudget {
                cap: 3,
                threads: 2,
                ..
            }
        ),
        "{over}"
    );
    assert!(over.to_string().contains("budget 'errors'"), "{over}");
    for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = Pool::new(PoolConfig::new("w", 1, 8).on_budget(&b, weight)).unwrap_err();
        assert!(matches!(err, BuildError::BadWeight(_)), "{err}");
    }
    b.close(false);
    let err = Pool::new(PoolConfig::new("late", 1, 8).on_budget(&b, 1.0)).unwrap_err();
    assert!(matches!(err, BuildError::BudgetClosed(_)), "{err}");
    assert!(b.join(Some(Duration::from_secs(10))));
}

#[test]
fn no_job_is_lost_or_counted_twice_under_churn() {
    // Many submitters on several pools of one budget, cancels, pool
    // closes and re-creations: every accepted job ends exactly once.
    for round in 0..20 {
        let b = budget("churn", 2);
        let pools: Vec<Pool> = (0..4)
            .map(|i| pool_on(&b, &format!("churn-{i}"), 1 + i % 2, 64, 1.0 + i as f64))
            .collect();
        let ended = Counter::default();
        std::thread::scope(|scope| {
            for (t, pool) in pools.iter().enumerate() {
                let ended = ended.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..300 {
                        let ended = ended.clone();
                        match pool.submit(
                            SubmitOptions::default(),
                            move |_| -> Result<(), JobStop<String>> {
                                ended.bump();
                                Ok(())
                            },
                        ) {
                            Ok(h) => {
                                if (i + t + round) % 7 == 0 {
                                    h.cancel();
                                }
                                mine.push(h);
                            }
                            Err(SubmitError::QueueFull { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        assert_invariant(&pool.stats());
                    }
                    for h in &mine {
                        assert!(h.wait(Some(Duration::from_secs(20))), "a job was lost");
                    }
                });
            }
        });
        let mut ran = 0;
        for p in &pools {
            let s = p.stats();
            assert_invariant(&s);
            assert_eq!(s.queued + s.running, 0);
            ran += s.completed as usize;
        }
        assert_eq!(ran, ended.get(), "every job that ran was counted once");
        b.close(false);
        assert!(b.join(Some(Duration::from_secs(10))));
    }
}

#[test]
fn a_pool_without_a_budget_runs_on_a_private_one() {
    let p = pool("private", 2, 8);
    assert!(p.has_private_budget());
    assert_eq!(p.budget().threads(), 2);
    assert_eq!(p.budget().name(), "private");
    p.close(false);
    assert!(
        p.budget().is_closed(),
        "a private budget closes with its pool"
    );
    assert!(p.join(Some(Duration::from_secs(10))));
    assert!(p.budget().join(Some(Duration::ZERO)), "its threads exited");
}
