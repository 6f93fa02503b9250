//! Submission, ordering, capacity, outcomes and errors.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use raptors_runtime::{
    BuildError, JobStatus, JobStop, Outcome, Pool, PoolConfig, SubmitError, SubmitOptions,
};

/// A bound that only catches a hang (under Miri and the sanitizers these
/// tests run 10-100x slower).
const LIMIT: Option<Duration> = Some(Duration::from_secs(300));

fn opts(priority: i64) -> SubmitOptions {
    SubmitOptions {
        priority,
        ..SubmitOptions::default()
    }
}

#[test]
fn runs_a_job_and_reports_its_result() {
    let pool = pool("basic", 2, 4);
    let job = pool
        .submit(
            SubmitOptions::default(),
            |ctx| -> Result<_, JobStop<String>> {
                Ok((
                    ctx.pool_name().to_owned(),
                    ctx.pool_threads(),
                    ctx.thread_index(),
                ))
            },
        )
        .unwrap();
    assert!(job.wait(LIMIT));
    assert_eq!(job.status(), JobStatus::Done);
    let Some(Outcome::Done((name, threads, index))) = job.take_outcome() else {
        panic!("expected Done");
    };
    assert_eq!((name.as_str(), threads), ("basic", 2));
    assert!(index < 2);
    let s = pool.stats();
    assert_eq!(
        (s.submitted, s.completed, s.running, s.queued),
        (1, 1, 0, 0)
    );
    assert_invariant(&s);
}

#[test]
fn failures_and_panics_are_outcomes_and_the_pool_keeps_working() {
    let pool = pool("panics", 1, 8);
    let failed = pool
        .submit(SubmitOptions::default(), |_| -> Result<u8, _> {
            Err(JobStop::Failed("bad input".to_owned()))
        })
        .unwrap();
    let panicked = pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<u8, JobStop<String>> { panic!("kernel exploded") },
        )
        .unwrap();
    let fine = pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<u8, JobStop<String>> { Ok(7) },
        )
        .unwrap();
    assert!(fine.wait(LIMIT) && failed.wait(LIMIT) && panicked.wait(LIMIT));
    assert_eq!(
        failed.take_outcome(),
        Some(Outcome::Failed("bad input".into()))
    );
    assert_eq!(panicked.status(), JobStatus::Failed);
    match panicked.take_outcome() {
        Some(Outcome::Panicked(msg)) => assert!(msg.contains("kernel exploded"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(fine.take_outcome(), Some(Outcome::Done(7)));
    let s = pool.stats();
    assert_eq!((s.completed, s.failed), (1, 2));
    assert_invariant(&s);
}

#[test]
fn priority_first_then_fifo() {
    let pool = pool("order", 1, 64);
    let (gate, _busy) = occupy(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let priorities = [0, 5, -3, 5, 0, 9, -3, 0];
    let jobs: Vec<_> = priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let order = Arc::clone(&order);
            pool.submit(opts(p), move |_| -> Result<(), JobStop<()>> {
                order.lock().unwrap().push(i);
                Ok(())
            })
            .unwrap()
        })
        .collect();
    assert_eq!(pool.stats().queued, priorities.len() as u64);
    gate.open();
    for job in &jobs {
        assert!(job.wait(LIMIT));
    }
    // 9 | 5 5 | 0 0 0 | -3 -3, submission order within a priority.
    assert_eq!(*order.lock().unwrap(), vec![5, 1, 3, 0, 4, 7, 2, 6]);
}

#[test]
fn queue_full_once_capacity_jobs_wait() {
    let pool = pool("capacity", 2, 2);
    let (gate, _busy) = occupy(&pool);
    let a = blocker(&pool, &gate);
    let _b = blocker(&pool, &gate);
    let err = pool
        .submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
            Ok(())
        })
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::QueueFull {
            pool: "capacity".into(),
            capacity: 2
        }
    );
    assert!(err.to_string().contains("capacity") && err.to_string().contains("full"));
    let s = pool.stats();
    assert_eq!(
        (s.queued, s.running, s.rejected, s.max_queued),
        (2, 2, 1, 2)
    );
    assert_invariant(&s);

    // Cancelling a waiting job frees its slot at once.
    assert!(a.cancel());
    assert_eq!(a.status(), JobStatus::Cancelled);
    assert_eq!(pool.stats().queued, 1);
    let c = blocker(&pool, &gate);
    assert!(pool
        .submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
            Ok(())
        })
        .is_err());
    gate.open();
    assert!(c.wait(LIMIT));
    let s = pool.stats();
    assert_eq!((s.rejected, s.cancelled), (2, 1));
    assert_invariant(&s);
}

#[test]
fn idle_workers_do_not_count_against_capacity() {
    for _ in 0..50 {
        let pool = pool("idle-capacity", 2, 1);
        let gate = Gate::new();
        // Both workers are idle: two jobs start at once, one more may wait.
        let jobs: Vec<_> = (0..3).map(|_| blocker(&pool, &gate)).collect();
        assert!(matches!(
            pool.submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
                Ok(())
            }),
            Err(SubmitError::QueueFull { capacity: 1, .. })
        ));
        gate.open();
        for job in &jobs {
            assert!(job.wait(LIMIT));
        }
        assert_invariant(&pool.stats());
    }
}

#[test]
fn cancel_semantics() {
    let pool = pool("cancel", 1, 8);
    let (gate, busy) = occupy(&pool);
    let dropped = Counter::default();
    let probe = DropProbe(dropped.clone());
    let queued = pool
        .submit(
            SubmitOptions::default(),
            move |_| -> Result<(), JobStop<()>> {
                drop(probe);
                Ok(())
            },
        )
        .unwrap();
    // Running: not cancellable.
    assert!(!busy[0].cancel());
    assert_eq!(busy[0].status(), JobStatus::Running);
    // Queued: cancelled, closure dropped at once, idempotent.
    assert!(queued.cancel());
    assert_eq!(dropped.get(), 1);
    assert!(queued.cancel());
    assert_eq!(queued.take_outcome(), Some(Outcome::Cancelled));
    gate.open();
    assert!(busy[0].wait(LIMIT));
    // Finished otherwise: false.
    assert!(!busy[0].cancel());
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (1, 1));
    assert_invariant(&s);
}

#[test]
fn outcome_is_lent_or_taken_never_both() {
    let pool = pool("outcome", 1, 4);
    let job = pool
        .submit(SubmitOptions::default(), |_| -> Result<_, JobStop<()>> {
            Ok(vec![1, 2, 3])
        })
        .unwrap();
    assert!(job.wait(LIMIT));
    let other = job.clone();
    assert_eq!(job.outcome(), Some(&Outcome::Done(vec![1, 2, 3])));
    assert_eq!(other.outcome(), Some(&Outcome::Done(vec![1, 2, 3])));
    assert_eq!(other.take_outcome(), None);

    let job = pool
        .submit(SubmitOptions::default(), |_| -> Result<_, JobStop<()>> {
            Ok(5)
        })
        .unwrap();
    assert!(job.wait(LIMIT));
    assert_eq!(job.take_outcome(), Some(Outcome::Done(5)));
    assert_eq!(job.take_outcome(), None);
    assert_eq!(job.outcome(), None);
    assert_eq!(job.status(), JobStatus::Done);
}

#[test]
fn wait_times_out_on_a_running_job() {
    let pool = pool("wait-timeout", 1, 4);
    let (gate, busy) = occupy(&pool);
    assert!(!busy[0].wait(Some(Duration::from_millis(20))));
    assert!(!busy[0].wait(Some(Duration::ZERO)));
    assert!(busy[0].outcome().is_none());
    gate.open();
    assert!(busy[0].wait(None));
}

#[test]
fn job_ids_are_unique() {
    let pool = pool("ids", 2, 1024);
    let mut ids: Vec<u64> = (0..500)
        .map(|_| {
            pool.submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
                Ok(())
            })
            .unwrap()
            .id()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 500);
}

#[test]
fn build_errors_name_the_argument() {
    let cases = [
        (PoolConfig::new("", 1, 1), "name"),
        (PoolConfig::new("p", 0, 1), "threads"),
        (PoolConfig::new("p", 1, 0), "queue_capacity"),
        (
            PoolConfig {
                stack_size: Some(0),
                ..PoolConfig::new("p", 1, 1)
            },
            "stack_size",
        ),
    ];
    for (config, arg) in cases {
        let err = Pool::new(config).unwrap_err();
        assert!(err.to_string().contains(arg), "{err} should name {arg}");
        assert!(!matches!(err, BuildError::Spawn(_)));
    }
}

#[test]
fn submit_after_close_is_refused() {
    let pool = pool("closed", 1, 1);
    pool.close(false);
    assert!(pool.is_closed());
    let err = pool
        .submit(SubmitOptions::default(), |_| -> Result<(), JobStop<()>> {
            Ok(())
        })
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::Closed {
            pool: "closed".into()
        }
    );
    assert!(err.to_string().contains("closed") && err.to_string().contains("'closed'"));
    assert!(pool.join(LIMIT));
    assert_eq!(pool.stats().submitted, 0);
}

#[test]
fn job_stopping_on_its_token_ends_cancelled() {
    let pool = pool("coop-cancel", 1, 4);
    let token = raptors_runtime::CancelToken::new();
    let started = Gate::new();
    let s2 = started.clone();
    let job = pool
        .submit(
            SubmitOptions {
                token: Some(token.clone()),
                ..SubmitOptions::default()
            },
            move |ctx| -> Result<u64, JobStop<()>> {
                s2.open();
                let mut chunks = 0;
                loop {
                    if ctx.is_cancelled() {
                        return Err(JobStop::Cancelled);
                    }
                    chunks += 1;
                    if chunks > 50_000 {
                        return Ok(chunks);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            },
        )
        .unwrap();
    started.wait();
    assert!(!job.cancel(), "a running job is not cancelled by cancel()");
    token.cancel();
    assert!(job.wait(LIMIT));
    assert_eq!(job.status(), JobStatus::Cancelled);
    assert_eq!(job.take_outcome(), Some(Outcome::Cancelled));
    let s = pool.stats();
    assert_eq!(s.cancelled, 1);
    assert_invariant(&s);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pool>();
    check::<raptors_runtime::JobHandle<Vec<u8>, String>>();
    check::<raptors_runtime::CancelToken>();
    check::<raptors_runtime::PoolStats>();
    check::<raptors_runtime::JobContext<'static>>();
}
