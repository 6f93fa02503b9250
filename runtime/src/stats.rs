//! Counters, recent-latency percentiles and the utilization window of a
//! pool, and the [`PoolStats`] snapshot.
//!
//! Everything here lives under the budget's lock and changes in the same
//! critical section as the transition it counts, so a snapshot always
//! satisfies `submitted == queued + running + completed + failed + cancelled
//! + expired`.

use std::time::{Duration, Instant};

use crate::job::JobStatus;

/// Samples kept for the wait/run percentiles.
const RING_SAMPLES: usize = 1024;
/// Utilization window: this many one-second buckets (the current, partial
/// one included).
const WINDOW_BUCKETS: u64 = 10;

/// A consistent snapshot of one pool. Durations are in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
    pub name: String,
    pub threads: usize,
    pub queue_capacity: usize,
    /// Jobs waiting now.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs accepted since the pool started (refusals excluded).
    pub submitted: u64,
    pub completed: u64,
    /// Failed jobs, panicked ones included.
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Submits refused with `QueueFull`.
    pub rejected: u64,
    /// Highest queue depth seen.
    pub max_queued: u64,
    /// Submit-to-start time of recent jobs (last 1024); 0.0 until measured.
    pub wait_p50: f64,
    pub wait_p99: f64,
    /// Start-to-end time of recent jobs (last 1024); 0.0 until measured.
    pub run_p50: f64,
    pub run_p99: f64,
    /// Busy worker time / (threads x elapsed) over the last ~10 s, running
    /// jobs counted up to now; in 0..=1.
    pub utilization: f64,
    /// `on_complete` callbacks that panicked (caught; the job still ended).
    pub callback_panics: u64,
}

/// Fixed-size ring of the most recent samples, in seconds.
pub(crate) struct Ring {
    samples: Vec<f64>,
    next: usize,
}

impl Ring {
    fn new() -> Self {
        Ring {
            samples: Vec::new(),
            next: 0,
        }
    }

    fn push(&mut self, seconds: f64) {
        if self.samples.len() < RING_SAMPLES {
            self.samples.push(seconds);
        } else {
            self.samples[self.next] = seconds;
        }
        self.next = (self.next + 1) % RING_SAMPLES;
    }
}

/// Nearest-rank p50 and p99 of `samples`; zeros when empty.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable_by(f64::total_cmp);
    let rank = |p: f64| {
        let index = (p * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    (rank(0.50), rank(0.99))
}

/// Busy worker-nanoseconds per one-second bucket, for the last
/// `WINDOW_BUCKETS` seconds since `origin`.
pub(crate) struct BusyWindow {
    origin: Instant,
    /// `(epoch second, busy nanos)`; slot `epoch % WINDOW_BUCKETS`.
    buckets: [(u64, u64); WINDOW_BUCKETS as usize],
}

impl BusyWindow {
    fn new(origin: Instant) -> Self {
        BusyWindow {
            origin,
            buckets: [(0, 0); WINDOW_BUCKETS as usize],
        }
    }

    fn epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_secs()
    }

    fn epoch_start(&self, epoch: u64) -> Instant {
        self.origin + Duration::from_secs(epoch)
    }

    /// Adds the busy interval `[start, end]`, split over its seconds. Parts
    /// older than the window are dropped.
    fn add(&mut self, start: Instant, end: Instant) {
        let last = self.epoch(end);
        let first = self
            .epoch(start)
            .max(last.saturating_sub(WINDOW_BUCKETS - 1));
        for epoch in first..=last {
            let from = start.max(self.epoch_start(epoch));
            let to = end.min(self.epoch_start(epoch + 1));
            let nanos = to.saturating_duration_since(from).as_nanos() as u64;
            let slot = &mut self.buckets[(epoch % WINDOW_BUCKETS) as usize];
            if slot.0 < epoch {
                *slot = (epoch, 0);
            } else if slot.0 > epoch {
                continue;
            }
            slot.1 += nanos;
        }
    }

    /// Busy thread-seconds in the window ending at `now`, jobs still
    /// running (started at `in_flight`) counted up to `now`, and the
    /// window's length in seconds.
    fn busy(&self, now: Instant, in_flight: impl Iterator<Item = Instant>) -> (f64, f64) {
        let last = self.epoch(now);
        let first = last.saturating_sub(WINDOW_BUCKETS - 1);
        let window_start = self.epoch_start(first);
        let elapsed = now.saturating_duration_since(window_start).as_secs_f64();
        let finished: u64 = self
            .buckets
            .iter()
            .filter(|(epoch, _)| (first..=last).contains(epoch))
            .map(|&(_, nanos)| nanos)
            .sum();
        let running: f64 = in_flight
            .map(|start| {
                now.saturating_duration_since(start.max(window_start))
                    .as_secs_f64()
            })
            .sum();
        (finished as f64 * 1e-9 + running, elapsed)
    }

    /// Utilization of `threads` over the window ending at `now`, in 0..=1.
    fn utilization(
        &self,
        now: Instant,
        threads: usize,
        in_flight: impl Iterator<Item = Instant>,
    ) -> f64 {
        let (busy, elapsed) = self.busy(now, in_flight);
        utilization(busy, threads, elapsed)
    }
}

/// `busy` thread-seconds over `threads` threads for `elapsed` seconds, in 0..=1.
pub(crate) fn utilization(busy: f64, threads: usize, elapsed: f64) -> f64 {
    if elapsed <= 0.0 {
        return 0.0;
    }
    (busy / (threads as f64 * elapsed)).clamp(0.0, 1.0)
}

/// The counting half of a pool's state.
pub(crate) struct Stats {
    pub(crate) submitted: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) expired: u64,
    pub(crate) rejected: u64,
    pub(crate) max_queued: u64,
    pub(crate) callback_panics: u64,
    wait: Ring,
    run: Ring,
    busy: BusyWindow,
}

impl Stats {
    pub(crate) fn new(origin: Instant) -> Self {
        Stats {
            submitted: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            rejected: 0,
            max_queued: 0,
            callback_panics: 0,
            wait: Ring::new(),
            run: Ring::new(),
            busy: BusyWindow::new(origin),
        }
    }

    /// Counts a job that reached `status` (terminal).
    pub(crate) fn count_end(&mut self, status: JobStatus) {
        match status {
            JobStatus::Done => self.completed += 1,
            JobStatus::Failed => self.failed += 1,
            JobStatus::Cancelled => self.cancelled += 1,
            JobStatus::Expired => self.expired += 1,
            JobStatus::Queued | JobStatus::Running => {
                debug_assert!(false, "count_end of a non-terminal status")
            }
        }
    }

    pub(crate) fn observe_queue_depth(&mut self, depth: usize) {
        self.max_queued = self.max_queued.max(depth as u64);
    }

    pub(crate) fn record_start(&mut self, submitted_at: Instant, started: Instant) {
        self.wait.push(
            started
                .saturating_duration_since(submitted_at)
                .as_secs_f64(),
        );
    }

    pub(crate) fn record_run(&mut self, started: Instant, ended: Instant) {
        self.run
            .push(ended.saturating_duration_since(started).as_secs_f64());
        self.busy.add(started, ended);
    }

    /// Busy thread-seconds and window length, as `BusyWindow::busy`.
    pub(crate) fn busy(
        &self,
        now: Instant,
        in_flight: impl Iterator<Item = Instant>,
    ) -> (f64, f64) {
        self.busy.busy(now, in_flight)
    }

    /// The raw material of a snapshot, copied under the lock; `finish`
    /// sorts outside it.
    pub(crate) fn capture(
        &self,
        now: Instant,
        threads: usize,
        in_flight: impl Iterator<Item = Instant>,
    ) -> Capture {
        Capture {
            submitted: self.submitted,
            completed: self.completed,
            failed: self.failed,
            cancelled: self.cancelled,
            expired: self.expired,
            rejected: self.rejected,
            max_queued: self.max_queued,
            callback_panics: self.callback_panics,
            wait: self.wait.samples.clone(),
            run: self.run.samples.clone(),
            utilization: self.busy.utilization(now, threads, in_flight),
        }
    }
}

pub(crate) struct Capture {
    submitted: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    expired: u64,
    rejected: u64,
    max_queued: u64,
    callback_panics: u64,
    wait: Vec<f64>,
    run: Vec<f64>,
    utilization: f64,
}

/// Configuration and live gauges that complete a [`Capture`].
pub(crate) struct Gauges<'a> {
    pub(crate) name: &'a str,
    pub(crate) threads: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) queued: usize,
    pub(crate) running: usize,
}

impl Capture {
    pub(crate) fn finish(self, gauges: Gauges<'_>) -> PoolStats {
        let (wait_p50, wait_p99) = percentiles(self.wait);
        let (run_p50, run_p99) = percentiles(self.run);
        PoolStats {
            name: gauges.name.to_owned(),
            threads: gauges.threads,
            queue_capacity: gauges.queue_capacity,
            queued: gauges.queued as u64,
            running: gauges.running as u64,
            submitted: self.submitted,
            completed: self.completed,
            failed: self.failed,
            cancelled: self.cancelled,
            expired: self.expired,
            rejected: self.rejected,
            max_queued: self.max_queued,
            wait_p50,
            wait_p99,
            run_p50,
            run_p99,
            utilization: self.utilization,
            callback_panics: self.callback_panics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentiles(Vec::new()), (0.0, 0.0));
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(samples), (50.0, 99.0));
        assert_eq!(percentiles(vec![7.0]), (7.0, 7.0));
    }

    #[test]
    fn ring_keeps_the_most_recent_samples() {
        let mut ring = Ring::new();
        for i in 0..(RING_SAMPLES + 10) {
            ring.push(i as f64);
        }
        assert_eq!(ring.samples.len(), RING_SAMPLES);
        let min = ring.samples.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(min, 10.0);
    }

    #[test]
    fn busy_window_splits_and_bounds_utilization() {
        let origin = Instant::now();
        let mut window = BusyWindow::new(origin);
        let at = |ms: u64| origin + Duration::from_millis(ms);
        // One of two threads busy from 0.5 s to 2.5 s, observed at 4 s.
        window.add(at(500), at(2500));
        let u = window.utilization(at(4000), 2, std::iter::empty());
        assert!((u - 2.0 / 8.0).abs() < 1e-9, "{u}");
        // A job running since 3 s on the other thread adds 1 s.
        let u = window.utilization(at(4000), 2, std::iter::once(at(3000)));
        assert!((u - 3.0 / 8.0).abs() < 1e-9, "{u}");
        // 20 s later the old interval left the window.
        let u = window.utilization(at(24_000), 2, std::iter::empty());
        assert_eq!(u, 0.0);
        // Always capped at 1.
        let u = window.utilization(at(4000), 1, [at(0), at(0)].into_iter());
        assert_eq!(u, 1.0);
    }
}
