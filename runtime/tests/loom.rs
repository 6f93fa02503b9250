//! Loom models of the job state machine: start vs cancel vs expire vs the
//! submit hook and completion callbacks vs waiters vs outcome readers; the
//! drain protocol of `Pool::join` (last publish vs close vs waiter); the
//! mailbox's wake-up protocol (posts vs the asyncio hub's drain); and a
//! token's register/cancel window (cancel vs submit vs a worker).
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p raptors-runtime --test loom --release`
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize as LoomUsize, Ordering as LoomOrdering};
use loom::thread;
use raptors_runtime::model::{ModelJob, ModelTokenPool};
use raptors_runtime::{JobStatus, Mailbox, Outcome};

fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    (count, move || {
        c.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn start_races_cancel_and_the_submit_hook_runs_once_with_a_racing_callback() {
    loom::model(|| {
        let (hooks, hook) = counter();
        let (calls, callback) = counter();
        let job = Arc::new(ModelJob::with_hook(hook));
        let worker = {
            let job = Arc::clone(&job);
            thread::spawn(move || {
                if let Some(started) = job.try_start() {
                    started.finish(Outcome::Done(7));
                }
            })
        };
        let canceller = {
            let job = Arc::clone(&job);
            thread::spawn(move || {
                if let Some(claimed) = job.try_cancel() {
                    claimed.finish();
                }
            })
        };
        job.on_complete(callback);
        worker.join().unwrap();
        canceller.join().unwrap();
        assert!(job.is_terminal());
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn start_races_cancel_and_one_callback_runs_once() {
    loom::model(|| {
        let job = Arc::new(ModelJob::new());
        let (calls, callback) = counter();
        let worker = {
            let job = Arc::clone(&job);
            thread::spawn(move || match job.try_start() {
                Some(started) => {
                    started.finish(Outcome::Done(7));
                    true
                }
                None => false,
            })
        };
        let canceller = {
            let job = Arc::clone(&job);
            thread::spawn(move || match job.try_cancel() {
                Some(claimed) => {
                    claimed.finish();
                    true
                }
                None => false,
            })
        };
        job.on_complete(callback);
        let ran = worker.join().unwrap();
        let cancelled = canceller.join().unwrap();
        assert!(ran ^ cancelled, "exactly one transition out of queued");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let want = if ran {
            JobStatus::Done
        } else {
            JobStatus::Cancelled
        };
        assert_eq!(job.status(), want);
        let outcome = job.take_outcome().expect("terminal");
        assert_eq!(outcome.status(), want);
    });
}

#[test]
fn cancel_races_expire_with_a_waiter() {
    loom::model(|| {
        let job = Arc::new(ModelJob::new());
        let waiter = {
            let job = Arc::clone(&job);
            thread::spawn(move || {
                assert!(job.wait());
                // Terminal status implies a published outcome.
                job.status()
            })
        };
        let expirer = {
            let job = Arc::clone(&job);
            thread::spawn(move || job.try_expire().map(|c| c.finish()).is_some())
        };
        let cancelled = job.try_cancel().map(|c| c.finish()).is_some();
        let expired = expirer.join().unwrap();
        assert!(cancelled ^ expired);
        let seen = waiter.join().unwrap();
        let want = if cancelled {
            JobStatus::Cancelled
        } else {
            JobStatus::Expired
        };
        assert_eq!(seen, want);
        assert_eq!(job.outcome().map(Outcome::status), Some(want));
    });
}

#[test]
fn callbacks_registered_around_completion_run_exactly_once() {
    loom::model(|| {
        let job = Arc::new(ModelJob::new());
        let (first_calls, first) = counter();
        let (second_calls, second) = counter();
        let registrar = {
            let job = Arc::clone(&job);
            thread::spawn(move || job.on_complete(second))
        };
        job.on_complete(first);
        let finisher = {
            let job = Arc::clone(&job);
            thread::spawn(move || {
                let started = job.try_start().expect("only starter");
                started.finish(Outcome::Failed(1))
            })
        };
        assert_eq!(finisher.join().unwrap(), 0);
        registrar.join().unwrap();
        assert_eq!(first_calls.load(Ordering::SeqCst), 1);
        assert_eq!(second_calls.load(Ordering::SeqCst), 1);
        assert_eq!(job.status(), JobStatus::Failed);
    });
}

#[test]
fn outcome_is_either_lent_or_taken() {
    loom::model(|| {
        let job = Arc::new(ModelJob::new());
        job.try_start().expect("starts").finish(Outcome::Done(3));
        let taker = {
            let job = Arc::clone(&job);
            thread::spawn(move || job.take_outcome())
        };
        let lent = job.outcome().cloned();
        let taken = taker.join().unwrap();
        match (lent, taken) {
            (Some(Outcome::Done(3)), None) | (None, Some(Outcome::Done(3))) => {}
            other => panic!("both or neither got the outcome: {other:?}"),
        }
    });
}

/// `Pool::join` on a pool whose last job is published while it closes:
/// the waiter always wakes (no lost wake-up in `drain.rs`).
#[test]
fn join_wakes_when_the_last_jobs_publish_while_the_pool_closes() {
    loom::model(|| {
        let drain = Arc::new(raptors_runtime::model::ModelDrain::with_jobs(1));
        let publishers: Vec<_> = (0..1)
            .map(|_| {
                let drain = Arc::clone(&drain);
                thread::spawn(move || drain.published())
            })
            .collect();
        let closer = {
            let drain = Arc::clone(&drain);
            thread::spawn(move || drain.close())
        };
        assert!(drain.wait());
        for p in publishers {
            p.join().unwrap();
        }
        closer.join().unwrap();
    });
}

/// Two posters race the consumer's drain of a hub's mailbox: at rest,
/// every item was popped, or a wake-up is pending after the consumer's
/// last clear (no delivery waits for a wake-up that never comes).
#[test]
fn mailbox_posts_racing_a_drain_are_popped_or_wake_the_consumer() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new());
        // The wake-up descriptor: an eventfd's counter.
        let eventfd = Arc::new(LoomUsize::new(0));
        let posters: Vec<_> = (0..2u32)
            .map(|item| {
                let (mailbox, eventfd) = (Arc::clone(&mailbox), Arc::clone(&eventfd));
                thread::spawn(move || {
                    if mailbox.post(item) {
                        eventfd.fetch_add(1, LoomOrdering::SeqCst);
                    }
                })
            })
            .collect();
        let mut popped = Vec::new();
        for _ in 0..2 {
            // The loop's reader: runs when the descriptor is readable.
            if eventfd.swap(0, LoomOrdering::SeqCst) > 0 {
                mailbox.begin_drain();
                while let Some(item) = mailbox.pop() {
                    popped.push(item);
                }
            }
        }
        for poster in posters {
            poster.join().unwrap();
        }
        let pending = eventfd.load(LoomOrdering::SeqCst) > 0;
        let mut left = Vec::new();
        while let Some(item) = mailbox.pop() {
            left.push(item);
        }
        assert!(
            left.is_empty() || pending,
            "{left:?} stranded with no wake-up"
        );
        popped.extend(left);
        popped.sort_unstable();
        assert_eq!(popped, [0, 1], "each item delivered once");
    });
}

/// A drain stopped after one item (an exit request raised by a callback)
/// leaves what is left with a wake-up pending.
#[test]
fn mailbox_drain_stopped_early_wakes_again() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new());
        let eventfd = Arc::new(LoomUsize::new(0));
        for item in 0..2u32 {
            if mailbox.post(item) {
                eventfd.fetch_add(1, LoomOrdering::SeqCst);
            }
        }
        let poster = {
            let (mailbox, eventfd) = (Arc::clone(&mailbox), Arc::clone(&eventfd));
            thread::spawn(move || {
                if mailbox.post(2) {
                    eventfd.fetch_add(1, LoomOrdering::SeqCst);
                }
            })
        };
        assert!(eventfd.swap(0, LoomOrdering::SeqCst) > 0);
        mailbox.begin_drain();
        assert_eq!(mailbox.pop(), Some(0));
        if mailbox.end_drain_early() {
            eventfd.fetch_add(1, LoomOrdering::SeqCst);
        }
        poster.join().unwrap();
        assert!(
            eventfd.load(LoomOrdering::SeqCst) > 0,
            "items left, no wake-up"
        );
    });
}

/// `cancel` races a submit with the same token: the job ends cancelled
/// whichever side wins the window between registering and enqueueing, and
/// never stays queued.
#[test]
fn token_cancel_racing_submit_never_leaves_the_job_queued() {
    loom::model(|| {
        let pool = Arc::new(ModelTokenPool::new());
        let job = Arc::new(ModelJob::new());
        let (calls, callback) = counter();
        job.on_complete(callback);
        let submitter = {
            let (pool, job) = (Arc::clone(&pool), Arc::clone(&job));
            thread::spawn(move || pool.submit(1, &job))
        };
        pool.cancel();
        submitter.join().unwrap();
        assert_eq!(pool.queued(), 0);
        assert_eq!(job.status(), JobStatus::Cancelled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

/// With a worker also racing: the job is run or cancelled, exactly once.
#[test]
fn token_cancel_racing_submit_and_a_worker_ends_the_job_once() {
    loom::model(|| {
        let pool = Arc::new(ModelTokenPool::new());
        let job = Arc::new(ModelJob::new());
        let (calls, callback) = counter();
        job.on_complete(callback);
        let submitter = {
            let (pool, job) = (Arc::clone(&pool), Arc::clone(&job));
            thread::spawn(move || pool.submit(1, &job))
        };
        let worker = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.run_next())
        };
        pool.cancel();
        submitter.join().unwrap();
        let ran = worker.join().unwrap();
        assert_eq!(pool.queued(), 0);
        let want = if ran {
            JobStatus::Done
        } else {
            JobStatus::Cancelled
        };
        assert_eq!(job.status(), want);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}
