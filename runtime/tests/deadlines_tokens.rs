//! Deadlines (timer thread and expiry at pop) and cancel tokens.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raptors_runtime::{CancelToken, JobStatus, JobStop, Outcome, Pool, SubmitOptions};

const LIMIT: Option<Duration> = Some(Duration::from_secs(5));

fn with_deadline(
    pool: &Pool,
    deadline: Instant,
    ran: &Counter,
) -> raptors_runtime::JobHandle<(), String> {
    let ran = ran.clone();
    pool.submit(
        SubmitOptions {
            deadline: Some(deadline),
            ..SubmitOptions::default()
        },
        move |_| -> Result<(), JobStop<String>> {
            ran.bump();
            Ok(())
        },
    )
    .unwrap()
}

#[test]
fn deadline_fires_at_the_deadline_while_workers_are_busy() {
    let pool = pool("deadline-busy", 1, 1);
    let (gate, _busy) = occupy(&pool);
    let ran = Counter::default();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(60);
    let job = with_deadline(&pool, deadline, &ran);
    // The queue (capacity 1) is full now.
    assert!(pool
        .submit(
            SubmitOptions::default(),
            |_| -> Result<(), JobStop<String>> { Ok(()) }
        )
        .is_err());
    assert!(job.wait(LIMIT));
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(Instant::now() >= deadline, "expired early");
    assert!(
        late < Duration::from_millis(40),
        "expired {late:?} after its deadline"
    );
    assert_eq!(job.status(), JobStatus::Expired);
    assert_eq!(job.take_outcome(), Some(Outcome::Expired));
    // Its slot is free again.
    let s = pool.stats();
    assert_eq!((s.expired, s.queued), (1, 0));
    assert_invariant(&s);
    let next = blocker(&pool, &gate);
    gate.open();
    assert!(next.wait(LIMIT));
    assert_eq!(ran.get(), 0, "an expired job never runs");
}

#[test]
fn many_deadlines_expire_in_order_and_others_run() {
    let pool = pool("deadline-many", 1, 64);
    let (gate, _busy) = occupy(&pool);
    let ran = Counter::default();
    let now = Instant::now();
    let expiring: Vec<_> = (0..20)
        .map(|i| with_deadline(&pool, now + Duration::from_millis(10 + i), &ran))
        .collect();
    let surviving: Vec<_> = (0..5)
        .map(|_| with_deadline(&pool, now + Duration::from_secs(60), &ran))
        .collect();
    for job in &expiring {
        assert!(job.wait(LIMIT));
        assert_eq!(job.status(), JobStatus::Expired);
    }
    gate.open();
    for job in &surviving {
        assert!(job.wait(LIMIT));
        assert_eq!(job.status(), JobStatus::Done);
    }
    assert_eq!(ran.get(), 5);
    let s = pool.stats();
    assert_eq!((s.expired, s.completed), (20, 6));
    assert_invariant(&s);
}

#[test]
fn past_deadline_expires_at_submit() {
    let pool = pool("deadline-past", 1, 4);
    let ran = Counter::default();
    let job = with_deadline(&pool, Instant::now() - Duration::from_millis(1), &ran);
    assert_eq!(job.status(), JobStatus::Expired);
    let s = pool.stats();
    assert_eq!((s.submitted, s.expired), (1, 1));
    assert_invariant(&s);
}

#[test]
fn token_cancels_every_queued_job_across_pools() {
    let (a, b) = (pool("token-a", 1, 64), pool("token-b", 1, 64));
    let (gate_a, busy_a) = occupy(&a);
    let (gate_b, _busy_b) = occupy(&b);
    let token = CancelToken::new();
    let dropped = Counter::default();
    let mut jobs = Vec::new();
    for i in 0..40 {
        let probe = DropProbe(dropped.clone());
        let pool = if i % 2 == 0 { &a } else { &b };
        jobs.push(
            pool.submit(
                SubmitOptions {
                    token: Some(token.clone()),
                    priority: i,
                    ..SubmitOptions::default()
                },
                move |_| -> Result<(), JobStop<String>> {
                    drop(probe);
                    Ok(())
                },
            )
            .unwrap(),
        );
    }
    let untouched = blocker(&a, &gate_a);
    assert_eq!(a.stats().queued, 21);
    token.cancel();
    assert!(token.is_cancelled());
    assert!(jobs.iter().all(|j| j.status() == JobStatus::Cancelled));
    assert_eq!(dropped.get(), 40, "closures released at cancel");
    assert_eq!((a.stats().queued, b.stats().queued), (1, 0));
    assert_eq!((a.stats().cancelled, b.stats().cancelled), (20, 20));
    // Running job without the token is unaffected; a cancelled token gives
    // an already cancelled job, counted as submitted and cancelled.
    let late = a
        .submit(
            SubmitOptions {
                token: Some(token.clone()),
                ..SubmitOptions::default()
            },
            |_| -> Result<(), JobStop<String>> { Ok(()) },
        )
        .unwrap();
    assert_eq!(late.status(), JobStatus::Cancelled);
    assert!(late.cancel());
    let s = a.stats();
    assert_eq!((s.submitted, s.cancelled), (23, 21));
    assert_invariant(&s);
    gate_a.open();
    gate_b.open();
    assert!(untouched.wait(LIMIT) && busy_a[0].wait(LIMIT));
    assert_eq!(untouched.status(), JobStatus::Done);
}

#[test]
fn token_cancel_races_with_submit() {
    // Whatever the interleaving, every job ends exactly once and none
    // submitted with the token stays queued after both sides finish.
    let pool = pool("token-race", 1, 10_000);
    let (gate, _busy) = occupy(&pool);
    for _ in 0..200 {
        let token = CancelToken::new();
        let t = token.clone();
        let canceller = std::thread::spawn(move || t.cancel());
        let jobs: Vec<_> = (0..20)
            .map(|_| {
                pool.submit(
                    SubmitOptions {
                        token: Some(token.clone()),
                        ..SubmitOptions::default()
                    },
                    |_| -> Result<(), JobStop<String>> { Ok(()) },
                )
                .unwrap()
            })
            .collect();
        canceller.join().unwrap();
        for job in &jobs {
            assert_eq!(job.status(), JobStatus::Cancelled);
        }
        assert_eq!(pool.stats().queued, 0);
    }
    gate.open();
    assert_invariant(&pool.stats());
}
