//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raptors_runtime::{JobHandle, JobStop, Pool, PoolConfig, PoolStats, SubmitOptions};

/// A latch jobs block on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    pub fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }
}

pub fn pool(name: &str, threads: usize, capacity: usize) -> Pool {
    Pool::new(PoolConfig::new(name, threads, capacity)).expect("pool builds")
}

/// Submits a job that blocks on `gate`, then returns `()`.
pub fn blocker(pool: &Pool, gate: &Gate) -> JobHandle<(), String> {
    let gate = gate.clone();
    pool.submit(
        SubmitOptions::default(),
        move |_| -> Result<(), JobStop<String>> {
            gate.wait();
            Ok(())
        },
    )
    .expect("blocker accepted")
}

/// Occupies every worker of `pool` with a job blocked on the returned gate.
pub fn occupy(pool: &Pool) -> (Gate, Vec<JobHandle<(), String>>) {
    let gate = Gate::new();
    let jobs = (0..pool.threads()).map(|_| blocker(pool, &gate)).collect();
    let threads = pool.threads() as u64;
    wait_until(Duration::from_secs(5), || pool.stats().running == threads);
    (gate, jobs)
}

/// Polls `cond` until true; panics after `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn assert_invariant(s: &PoolStats) {
    assert_eq!(
        s.submitted,
        s.queued + s.running + s.completed + s.failed + s.cancelled + s.expired,
        "stats invariant broken: {s:?}"
    );
}

/// Counts calls; for "exactly once" checks.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts its own drops: proves a closure's captures were released.
pub struct DropProbe(pub Counter);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.bump();
    }
}
