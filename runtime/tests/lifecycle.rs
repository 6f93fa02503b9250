//! close, join, Drop of the last handle, thread hooks, on_complete paths.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raptors_runtime::{
    CancelToken, JobHandle, JobStatus, JobStop, Pool, PoolConfig, SubmitOptions, ThreadHook,
};

const LIMIT: Option<Duration> = Some(Duration::from_secs(5));

/// A pool whose hooks count started and stopped threads.
fn hooked(name: &str, threads: usize, capacity: usize) -> (Pool, Counter, Counter) {
    let (started, stopped) = (Counter::default(), Counter::default());
    let (s, t) = (started.clone(), stopped.clone());
    let on_start: ThreadHook = Arc::new(move |_| s.bump());
    let on_stop: ThreadHook = Arc::new(move |_| t.bump());
    let pool = Pool::new(PoolConfig {
        on_thread_start: Some(on_start),
        on_thread_stop: Some(on_stop),
        ..PoolConfig::new(name, threads, capacity)
    })
    .unwrap();
    (pool, started, stopped)
}

fn unit_job(pool: &Pool) -> JobHandle<(), String> {
    pool.submit(
        SubmitOptions::default(),
        |_| -> Result<(), JobStop<String>> { Ok(()) },
    )
    .unwrap()
}

#[test]
fn worker_threads_are_named_and_hooked() {
    let (pool, started, _) = hooked("named", 2, 4);
    let job = pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<_, JobStop<String>> {
                Ok(std::thread::current().name().map(str::to_owned))
            },
        )
        .unwrap();
    assert!(job.wait(LIMIT));
    let name = match job.take_outcome() {
        Some(raptors_runtime::Outcome::Done(Some(name))) => name,
        other => panic!("{other:?}"),
    };
    assert!(name.starts_with("named-"), "{name}");
    wait_until(Duration::from_secs(5), || started.get() == 2);
}

#[test]
fn close_without_cancel_runs_queued_jobs_then_join_returns() {
    let (pool, started, stopped) = hooked("close-run", 2, 16);
    let (gate, busy) = occupy(&pool);
    let queued: Vec<_> = (0..6).map(|_| unit_job(&pool)).collect();
    pool.close(false);
    pool.close(false);
    assert!(
        !pool.join(Some(Duration::from_millis(30))),
        "jobs are still blocked"
    );
    gate.open();
    assert!(pool.join(LIMIT));
    for job in busy
        .iter()
        .map(|j| j.status())
        .chain(queued.iter().map(|j| j.status()))
    {
        assert_eq!(job, JobStatus::Done);
    }
    assert_eq!((started.get(), stopped.get()), (2, 2));
    let s = pool.stats();
    assert_eq!(
        (s.completed, s.cancelled, s.queued, s.running),
        (8, 0, 0, 0)
    );
    assert_invariant(&s);
}

#[test]
fn close_with_cancel_pending_while_busy() {
    let (pool, _, stopped) = hooked("close-cancel", 1, 16);
    let (gate, busy) = occupy(&pool);
    let dropped = Counter::default();
    let callbacks = Counter::default();
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let probe = DropProbe(dropped.clone());
            let job = pool
                .submit(
                    SubmitOptions::default(),
                    move |_| -> Result<(), JobStop<String>> {
                        drop(probe);
                        Ok(())
                    },
                )
                .unwrap();
            let c = callbacks.clone();
            job.on_complete(move || c.bump());
            job
        })
        .collect();
    pool.close(true);
    // Queued jobs ended before close returned, their closures released.
    assert!(queued.iter().all(|j| j.status() == JobStatus::Cancelled));
    assert_eq!((dropped.get(), callbacks.get()), (5, 5));
    assert_eq!(busy[0].status(), JobStatus::Running);
    let s = pool.stats();
    assert_eq!((s.cancelled, s.queued, s.running), (5, 0, 1));
    assert_invariant(&s);
    gate.open();
    assert!(pool.join(LIMIT));
    assert_eq!(busy[0].status(), JobStatus::Done);
    assert_eq!(stopped.get(), 1);
}

#[test]
fn join_without_close_times_out() {
    let pool = pool("join-open", 1, 1);
    let start = Instant::now();
    assert!(!pool.join(Some(Duration::from_millis(50))));
    assert!(start.elapsed() >= Duration::from_millis(50));
    pool.close(false);
    assert!(pool.join(LIMIT));
}

#[test]
fn join_on_own_worker_refuses() {
    let pool = pool("join-self", 1, 1);
    let inner = pool.clone();
    let job = pool
        .submit(
            SubmitOptions::default(),
            move |_| -> Result<bool, JobStop<String>> { Ok(inner.join(None)) },
        )
        .unwrap();
    assert!(job.wait(LIMIT));
    assert_eq!(
        job.take_outcome(),
        Some(raptors_runtime::Outcome::Done(false))
    );
}

#[test]
fn dropping_the_last_handle_closes_without_cancelling() {
    let (pool, started, stopped) = hooked("drop-last", 2, 64);
    let gate = Gate::new();
    let jobs: Vec<_> = (0..10).map(|_| blocker(&pool, &gate)).collect();
    let clone = pool.clone();
    drop(pool);
    assert!(!clone.is_closed(), "a clone still holds the pool");
    drop(clone);
    gate.open();
    for job in &jobs {
        assert!(job.wait(LIMIT));
        assert_eq!(job.status(), JobStatus::Done);
    }
    wait_until(Duration::from_secs(5), || stopped.get() == 2);
    assert_eq!(started.get(), 2);
    // The job handles outlive the pool and stay readable.
    assert!(jobs[0].take_outcome().is_some());
    assert!(!jobs[0].cancel());
}

#[test]
fn no_threads_leak_over_many_pools() {
    let (started, stopped) = (Counter::default(), Counter::default());
    for i in 0..20 {
        let (s, t) = (started.clone(), stopped.clone());
        let pool = Pool::new(PoolConfig {
            on_thread_start: Some(Arc::new(move |_| s.bump())),
            on_thread_stop: Some(Arc::new(move |_| t.bump())),
            ..PoolConfig::new(format!("leak-{i}"), 2, 16)
        })
        .unwrap();
        for _ in 0..10 {
            unit_job(&pool);
        }
        pool.close(i % 2 == 0);
        assert!(pool.join(LIMIT));
        let s = pool.stats();
        assert_invariant(&s);
        assert_eq!(s.queued + s.running, 0);
    }
    assert_eq!((started.get(), stopped.get()), (40, 40));
}

/// Registers one counting callback before the end and one after.
fn count_callbacks<T: Send + 'static, E: Send + 'static>(
    job: &JobHandle<T, E>,
) -> (Counter, Counter) {
    let (before, after) = (Counter::default(), Counter::default());
    let b = before.clone();
    job.on_complete(move || b.bump());
    (before, after)
}

fn register_after<T: Send + 'static, E: Send + 'static>(job: &JobHandle<T, E>, after: &Counter) {
    assert!(job.wait(LIMIT));
    let a = after.clone();
    job.on_complete(move || a.bump());
    // Registered after completion: ran at once, on this thread.
    assert_eq!(after.get(), 1);
}

#[test]
fn on_complete_runs_exactly_once_on_every_path() {
    let pool = pool("callbacks", 1, 64);
    let (gate, busy) = occupy(&pool);
    let token = CancelToken::new();
    let expiring = pool
        .submit(
            SubmitOptions {
                deadline: Some(Instant::now() + Duration::from_millis(20)),
                ..SubmitOptions::default()
            },
            |_| -> Result<(), JobStop<String>> { Ok(()) },
        )
        .unwrap();
    let by_token = pool
        .submit(
            SubmitOptions {
                token: Some(token.clone()),
                ..SubmitOptions::default()
            },
            |_| -> Result<(), JobStop<String>> { Ok(()) },
        )
        .unwrap();
    let by_cancel = unit_job(&pool);
    let done = unit_job(&pool);
    let failed = pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<(), JobStop<String>> { Err(JobStop::Failed(String::new())) },
        )
        .unwrap();
    let panicked = pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<(), JobStop<String>> { panic!("boom") },
        )
        .unwrap();
    let by_close = unit_job(&pool);
    let all = [
        &busy[0], &expiring, &by_token, &by_cancel, &done, &failed, &panicked, &by_close,
    ];
    let counters: Vec<_> = all.iter().map(|j| count_callbacks(j)).collect();
    // Several callbacks may be registered on one job.
    let extra = Counter::default();
    let e = extra.clone();
    done.on_complete(move || e.bump());

    assert!(expiring.wait(LIMIT));
    token.cancel();
    assert!(by_cancel.cancel());
    gate.open();
    for job in [&done, &failed, &panicked] {
        assert!(job.wait(LIMIT));
    }
    pool.close(true);
    assert!(pool.join(LIMIT));
    let statuses: Vec<_> = all.iter().map(|j| j.status()).collect();
    use JobStatus::*;
    assert_eq!(statuses[..4], [Done, Expired, Cancelled, Cancelled]);
    assert_eq!(statuses[4..7], [Done, Failed, Failed]);
    assert!(matches!(statuses[7], Cancelled | Done));
    for ((before, after), job) in counters.iter().zip(all) {
        register_after(job, after);
        assert_eq!(before.get(), 1, "{:?}", job.status());
    }
    assert_eq!(extra.get(), 1);
    assert_invariant(&pool.stats());
}

/// Submits `f` with a hook that bumps the returned counter.
fn with_hook<F>(
    pool: &Pool,
    opts: SubmitOptions,
    f: F,
) -> (
    Result<JobHandle<(), String>, raptors_runtime::SubmitError>,
    Counter,
)
where
    F: FnOnce(&raptors_runtime::JobContext<'_>) -> Result<(), JobStop<String>> + Send + 'static,
{
    let count = Counter::default();
    let c = count.clone();
    (pool.submit_with_hook(opts, move || c.bump(), f), count)
}

#[test]
fn the_submit_hook_runs_exactly_once_on_every_path_and_never_for_a_refused_submit() {
    let pool = pool("hooks", 1, 3);
    let (gate, _busy) = occupy(&pool);
    let ok = |_: &raptors_runtime::JobContext<'_>| -> Result<(), JobStop<String>> { Ok(()) };
    let cancelled = CancelToken::new();
    cancelled.cancel();
    // Ended inside submit: its hook has run when submit returns.
    let (early, early_hook) = with_hook(
        &pool,
        SubmitOptions {
            token: Some(cancelled),
            ..SubmitOptions::default()
        },
        ok,
    );
    assert_eq!(early.unwrap().status(), JobStatus::Cancelled);
    assert_eq!(early_hook.get(), 1);

    let (queued, queued_hook) = with_hook(&pool, SubmitOptions::default(), ok);
    let (panicking, panicking_hook) =
        with_hook(&pool, SubmitOptions::default(), |_| panic!("boom"));
    let (filler, filler_hook) = with_hook(&pool, SubmitOptions::default(), ok);
    // The queue (3) is full: refused, and its hook is dropped unrun.
    let probe = Counter::default();
    let dropped = DropProbe(probe.clone());
    let refused_hook = Counter::default();
    let r = refused_hook.clone();
    let refused = pool.submit_with_hook(
        SubmitOptions::default(),
        move || {
            let _keep = &dropped;
            r.bump()
        },
        ok,
    );
    assert!(refused.is_err());
    assert_eq!((refused_hook.get(), probe.get()), (0, 1));

    let (queued, panicking, filler) = (queued.unwrap(), panicking.unwrap(), filler.unwrap());
    assert!(filler.cancel());
    let (expiring, expiring_hook) = with_hook(
        &pool,
        SubmitOptions {
            deadline: Some(Instant::now() + Duration::from_millis(20)),
            ..SubmitOptions::default()
        },
        ok,
    );
    let expiring = expiring.unwrap();
    assert!(expiring.wait(LIMIT));
    assert!(queued.cancel());
    let (late, late_hook) = with_hook(&pool, SubmitOptions::default(), ok);
    let late = late.unwrap();
    // A callback added later runs too, after the hook.
    let extra = Counter::default();
    let e = extra.clone();
    late.on_complete(move || e.bump());
    gate.open();
    assert!(panicking.wait(LIMIT) && late.wait(LIMIT));
    pool.close(false);
    assert!(pool.join(LIMIT));
    assert_eq!(
        [&expiring, &queued, &panicking, &late].map(|j| j.status()),
        [
            JobStatus::Expired,
            JobStatus::Cancelled,
            JobStatus::Failed,
            JobStatus::Done
        ]
    );
    for hook in [
        &expiring_hook,
        &queued_hook,
        &panicking_hook,
        &filler_hook,
        &late_hook,
        &extra,
    ] {
        assert_eq!(hook.get(), 1);
    }
    assert_invariant(&pool.stats());
}

#[test]
fn panicking_callbacks_are_caught_and_counted() {
    let pool = pool("callback-panic", 1, 8);
    let (gate, busy) = occupy(&pool);
    let ran = Counter::default();
    busy[0].on_complete(|| panic!("callback bug"));
    let r = ran.clone();
    busy[0].on_complete(move || r.bump());
    gate.open();
    assert!(busy[0].wait(LIMIT));
    wait_until(Duration::from_secs(5), || ran.get() == 1);
    // The worker survived and serves the next job.
    let next = unit_job(&pool);
    assert!(next.wait(LIMIT));
    assert_eq!(next.status(), JobStatus::Done);
    assert_eq!(pool.stats().callback_panics, 1);
}

#[test]
fn last_handle_dropped_inside_a_job_closes_the_pool() {
    let (pool, _, stopped) = hooked("drop-in-job", 2, 8);
    let gate = Gate::new();
    let inner = pool.clone();
    let g = gate.clone();
    let job = pool
        .submit(
            SubmitOptions::default(),
            move |_| -> Result<(), JobStop<String>> {
                g.wait();
                drop(inner);
                Ok(())
            },
        )
        .unwrap();
    drop(pool);
    gate.open();
    assert!(job.wait(LIMIT));
    wait_until(Duration::from_secs(5), || stopped.get() == 2);
}
