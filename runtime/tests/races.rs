//! Cancel / deadline / token / start / complete races, and the stats
//! invariant under concurrent churn.
//!
//! `RAPTORS_STRESS_ROUNDS=N` repeats the race round and the churn N times
//! (default: 5 race rounds, 1 churn): the long runs `docs/reliability.md`
//! quotes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raptors_runtime::{CancelToken, JobHandle, JobStatus, JobStop, Outcome, Pool, SubmitOptions};

/// How many times the long tests repeat (`RAPTORS_STRESS_ROUNDS`).
fn rounds(default: usize) -> usize {
    std::env::var("RAPTORS_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Keeps the default hook's output for unexpected panics only.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| m.contains("planned panic"));
            if !planned {
                default(info);
            }
        }));
    });
}

#[derive(Default)]
struct Record {
    ran: AtomicBool,
    callbacks: AtomicUsize,
    cancel_won: AtomicBool,
}

type Job = (JobHandle<u32, String>, Arc<Record>);

fn submit_tracked(pool: &Pool, i: u32, token: &CancelToken) -> Option<Job> {
    let record = Arc::new(Record::default());
    let r = Arc::clone(&record);
    let opts = SubmitOptions {
        priority: i64::from(i % 3),
        deadline: i
            .is_multiple_of(5)
            .then(|| Instant::now() + Duration::from_micros(u64::from(i % 200))),
        token: i.is_multiple_of(7).then(|| token.clone()),
    };
    let job = pool
        .submit(opts, move |_| -> Result<u32, JobStop<String>> {
            r.ran.store(true, Ordering::SeqCst);
            match i % 11 {
                0 => Err(JobStop::Failed("odd".into())),
                1 => panic!("planned panic"),
                _ => Ok(i),
            }
        })
        .ok()?;
    let r = Arc::clone(&record);
    job.on_complete(move || {
        r.callbacks.fetch_add(1, Ordering::SeqCst);
    });
    Some((job, record))
}

fn check_ended_once(job: &JobHandle<u32, String>, record: &Record) {
    assert!(job.wait(Some(Duration::from_secs(10))), "job never ended");
    wait_until(Duration::from_secs(5), || {
        record.callbacks.load(Ordering::SeqCst) >= 1
    });
    assert_eq!(
        record.callbacks.load(Ordering::SeqCst),
        1,
        "callbacks ran more than once"
    );
    let status = job.status();
    let ran = record.ran.load(Ordering::SeqCst);
    match status {
        JobStatus::Done | JobStatus::Failed => assert!(ran),
        JobStatus::Expired => assert!(!ran),
        JobStatus::Cancelled => assert!(!ran, "no job here observes its token"),
        JobStatus::Queued | JobStatus::Running => unreachable!("waited"),
    }
    if record.cancel_won.load(Ordering::SeqCst) {
        assert_eq!(status, JobStatus::Cancelled);
    }
    let outcome = job.take_outcome().expect("terminal jobs have an outcome");
    assert_eq!(outcome.status(), status);
    if let Outcome::Panicked(msg) = &outcome {
        assert!(msg.contains("planned panic"));
    }
}

#[test]
fn every_job_ends_exactly_once_whatever_races() {
    quiet_planned_panics();
    for _ in 0..rounds(5) {
        race_round();
    }
}

fn race_round() {
    let pool = pool("races", 2, 512);
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    // Cancellers race with the workers for the jobs the submitters queue.
    let cancellers: Vec<_> = (0..2)
        .map(|_| {
            let rx = Arc::clone(&rx);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok((job, record)) = next else { break };
                    if job.cancel() {
                        record.cancel_won.store(true, Ordering::SeqCst);
                    }
                    seen.push((job, record));
                }
                seen
            })
        })
        .collect();
    let submitters: Vec<_> = (0..2u32)
        .map(|t| {
            let (pool, token, tx) = (pool.clone(), token.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..3000u32 {
                    let i = i * 2 + t;
                    if i == 3001 {
                        token.cancel();
                    }
                    // Back off while the queue is full: every job is accepted.
                    let (job, record) = loop {
                        match submit_tracked(&pool, i, &token) {
                            Some(accepted) => break accepted,
                            None => std::thread::sleep(Duration::from_micros(50)),
                        }
                    };
                    if i % 2 == 0 {
                        tx.send((job, record)).unwrap();
                    } else {
                        kept.push((job, record));
                    }
                }
                kept
            })
        })
        .collect();
    drop(tx);
    let mut all: Vec<Job> = submitters
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.extend(cancellers.into_iter().flat_map(|h| h.join().unwrap()));
    assert_eq!(all.len(), 6000);
    for (job, record) in &all {
        check_ended_once(job, record);
    }
    let s = pool.stats();
    assert_invariant(&s);
    assert_eq!(s.submitted as usize, all.len());
    assert_eq!((s.queued, s.running), (0, 0));
    let by = |want: JobStatus| all.iter().filter(|(j, _)| j.status() == want).count() as u64;
    assert_eq!(s.completed, by(JobStatus::Done));
    assert_eq!(s.failed, by(JobStatus::Failed));
    assert_eq!(s.cancelled, by(JobStatus::Cancelled));
    assert_eq!(s.expired, by(JobStatus::Expired));
    // Every path was exercised.
    assert!(
        s.completed > 0 && s.failed > 0 && s.cancelled > 0 && s.expired > 0,
        "{s:?}"
    );
    eprintln!("{s:?}");
}

#[test]
fn stats_invariant_holds_under_churn() {
    quiet_planned_panics();
    for _ in 0..rounds(1) {
        churn_round();
    }
}

fn churn_round() {
    let pool = pool("churn", 2, 16);
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut taken = 0u64;
            let mut max_queued = 0;
            while !stop.load(Ordering::SeqCst) {
                let s = pool.stats();
                assert_invariant(&s);
                // Jobs an idle worker is about to take do not count.
                assert!(
                    s.queued <= 16 + (2 - s.running),
                    "queue bound broken: {s:?}"
                );
                assert!(s.running <= 2);
                assert!(s.max_queued >= max_queued);
                max_queued = s.max_queued;
                taken += 1;
            }
            taken
        })
    };
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel::<JobHandle<u32, String>>();
    let canceller = std::thread::spawn(move || rx.into_iter().filter(|j| j.cancel()).count());
    let submitters: Vec<_> = (0..3u32)
        .map(|t| {
            let (pool, token, tx) = (pool.clone(), token.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut rejected = 0u64;
                for i in 0..4000u32 {
                    let i = i * 3 + t;
                    match submit_tracked(&pool, i, &token) {
                        Some((job, _)) if i % 3 == 0 => tx.send(job).unwrap(),
                        Some(_) => {}
                        None => rejected += 1,
                    }
                    if i == 6000 {
                        token.cancel();
                    }
                }
                rejected
            })
        })
        .collect();
    drop(tx);
    let rejected: u64 = submitters.into_iter().map(|h| h.join().unwrap()).sum();
    let cancelled_by_handle = canceller.join().unwrap();
    pool.close(false);
    assert!(pool.join(Some(Duration::from_secs(10))));
    stop.store(true, Ordering::SeqCst);
    assert!(snapshots.join().unwrap() > 10);
    let s = pool.stats();
    assert_invariant(&s);
    assert_eq!(s.rejected, rejected);
    assert_eq!(s.submitted + s.rejected, 12_000);
    assert!(s.cancelled >= cancelled_by_handle as u64);
    assert_eq!((s.queued, s.running), (0, 0));
}

/// A job an idle worker was woken for starts at once: snapshots never show
/// more than `queue_capacity` jobs waiting, also while woken workers have
/// not yet taken the jobs they were claimed for.
#[test]
fn snapshots_never_show_more_waiting_jobs_than_the_capacity() {
    let pool = pool("claiming", 2, 1);
    for _ in 0..2_000 {
        let gate = Gate::new();
        let mut jobs = Vec::new();
        for _ in 0..3 {
            if let Ok(job) = {
                let gate = gate.clone();
                pool.submit(
                    SubmitOptions::default(),
                    move |_| -> Result<(), JobStop<String>> {
                        gate.wait();
                        Ok(())
                    },
                )
            } {
                jobs.push(job);
            }
            let s = pool.stats();
            assert!(
                s.queued <= 1,
                "{} jobs waiting in a queue of 1: {s:?}",
                s.queued
            );
            assert!(s.running <= 2, "{s:?}");
            assert_invariant(&s);
        }
        gate.open();
        for job in &jobs {
            assert!(job.wait(Some(Duration::from_secs(10))));
        }
    }
}
