//! Counters, recent-latency percentiles, the utilization and rate windows
//! of a pool, and the [`PoolStats`] snapshot.
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
    /// Submits per second over the last ~10 s, accepted or rejected (a
    /// submit to a closed pool is not counted).
    pub arrival_rate: f64,
    /// Jobs that ended (any terminal state) per second over the last ~10 s.
    pub completion_rate: f64,
    /// Mean start-to-end time of recent jobs (last 1024); 0.0 until measured.
    pub run_mean: f64,
    /// Run times of recent jobs (last 1024) at the percentiles 0, 1, .., 100
    /// (nearest rank): the distribution a capacity model samples. Empty
    /// until measured.
    pub run_quantiles: Vec<f64>,
    /// Seconds a job of priority 0 submitted now would wait before it
    /// starts: the p99 prediction predictive admission makes (`admission.rs`),
    /// read under the same lock as the counters; 0.0 while a thread is free
    /// or before any run time was measured.
    pub predicted_wait: f64,
    /// `on_complete` callbacks that panicked (caught; the job still ended).
    pub callback_panics: u64,
}

/// Fixed-size ring of the most recent samples, in seconds, with their sum
/// and sum of squares kept in O(1) per push (for the mean and spread that
/// predictive admission reads on the submit path).
pub(crate) struct Ring {
    samples: Vec<f64>,
    next: usize,
    sum: f64,
    sum_sq: f64,
    /// `mean()` and `std_dev()`, kept current by `push`: predictive
    /// admission reads them on every submit, a sample arrives once per job.
    mean: f64,
    std_dev: f64,
}

impl Ring {
    fn new() -> Self {
        Ring {
            samples: Vec::new(),
            next: 0,
            sum: 0.0,
            sum_sq: 0.0,
            mean: 0.0,
            std_dev: 0.0,
        }
    }

    fn push(&mut self, seconds: f64) {
        if self.samples.len() < RING_SAMPLES {
            self.samples.push(seconds);
        } else {
            let old = std::mem::replace(&mut self.samples[self.next], seconds);
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.sum += seconds;
        self.sum_sq += seconds * seconds;
        self.next = (self.next + 1) % RING_SAMPLES;
        if self.next == 0 {
            // Once per lap, so rounding in the running sums never accumulates.
            self.sum = self.samples.iter().sum();
            self.sum_sq = self.samples.iter().map(|x| x * x).sum();
        }
        let n = self.samples.len() as f64;
        self.mean = self.sum / n;
        self.std_dev = (self.sum_sq / n - self.mean * self.mean).max(0.0).sqrt();
    }

    /// Mean of the samples; 0.0 when empty.
    pub(crate) fn mean(&self) -> f64 {
        self.mean
    }

    /// Standard deviation of the samples; 0.0 when empty.
    pub(crate) fn std_dev(&self) -> f64 {
        self.std_dev
    }
}

/// Nearest-rank percentile `p` (0..=1) of sorted, non-empty `samples`.
fn rank(sorted: &[f64], p: f64) -> f64 {
    let index = (p * sorted.len() as f64).ceil() as usize;
    sorted[index.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and the 101 percentiles 0..=100 of `samples`; zeros and an
/// empty list when empty.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64, Vec<f64>) {
    if samples.is_empty() {
        return (0.0, 0.0, Vec::new());
    }
    samples.sort_unstable_by(f64::total_cmp);
    let all = (0..=100)
        .map(|p| rank(&samples, f64::from(p) / 100.0))
        .collect();
    (rank(&samples, 0.50), rank(&samples, 0.99), all)
}

/// Amounts per one-second bucket for the last `WINDOW_BUCKETS` seconds
/// since `origin`: busy worker-nanoseconds, submits, ends.
pub(crate) struct Window {
    origin: Instant,
    /// `(epoch second, amount)`; slot `epoch % WINDOW_BUCKETS`.
    buckets: [(u64, u64); WINDOW_BUCKETS as usize],
}

impl Window {
    fn new(origin: Instant) -> Self {
        Window {
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

    /// Adds `amount` to the bucket of `epoch` (older than the window: dropped).
    fn add_to(&mut self, epoch: u64, amount: u64) {
        let slot = &mut self.buckets[(epoch % WINDOW_BUCKETS) as usize];
        if slot.0 < epoch {
            *slot = (epoch, 0);
        } else if slot.0 > epoch {
            return;
        }
        slot.1 += amount;
    }

    /// Counts one event at `t`.
    fn count(&mut self, t: Instant) {
        self.add_to(self.epoch(t), 1);
    }

    /// Adds the busy interval `[start, end]`, split over its seconds. Parts
    /// older than the window are dropped.
    fn add_busy(&mut self, start: Instant, end: Instant) {
        let last = self.epoch(end);
        let first = self
            .epoch(start)
            .max(last.saturating_sub(WINDOW_BUCKETS - 1));
        for epoch in first..=last {
            let from = start.max(self.epoch_start(epoch));
            let to = end.min(self.epoch_start(epoch + 1));
            self.add_to(epoch, to.saturating_duration_since(from).as_nanos() as u64);
        }
    }

    /// The window ending at `now`: its start, its length in seconds and the
    /// sum of its buckets.
    fn span(&self, now: Instant) -> (Instant, f64, u64) {
        let last = self.epoch(now);
        let first = last.saturating_sub(WINDOW_BUCKETS - 1);
        let start = self.epoch_start(first);
        let total = self
            .buckets
            .iter()
            .filter(|(epoch, _)| (first..=last).contains(epoch))
            .map(|&(_, amount)| amount)
            .sum();
        (
            start,
            now.saturating_duration_since(start).as_secs_f64(),
            total,
        )
    }

    /// Events per second over the window ending at `now`.
    fn rate(&self, now: Instant) -> f64 {
        let (_, elapsed, total) = self.span(now);
        if elapsed <= 0.0 {
            0.0
        } else {
            total as f64 / elapsed
        }
    }

    /// Busy thread-seconds in the window ending at `now`, jobs still
    /// running (started at `in_flight`) counted up to now, and the
    /// window's length in seconds.
    fn busy(&self, now: Instant, in_flight: impl Iterator<Item = Instant>) -> (f64, f64) {
        let (window_start, elapsed, finished) = self.span(now);
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
    pub(crate) run: Ring,
    busy: Window,
    arrivals: Window,
    ends: Window,
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
            busy: Window::new(origin),
            arrivals: Window::new(origin),
            ends: Window::new(origin),
        }
    }

    /// Counts a submit at `now` that was accepted or rejected.
    pub(crate) fn count_arrival(&mut self, now: Instant) {
        self.arrivals.count(now);
    }

    /// Counts a job that reached `status` (terminal) at `now`.
    pub(crate) fn count_end(&mut self, status: JobStatus, now: Instant) {
        match status {
            JobStatus::Done => self.completed += 1,
            JobStatus::Failed => self.failed += 1,
            JobStatus::Cancelled => self.cancelled += 1,
            JobStatus::Expired => self.expired += 1,
            JobStatus::Queued | JobStatus::Running => {
                debug_assert!(false, "count_end of a non-terminal status");
                return;
            }
        }
        self.ends.count(now);
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
        self.busy.add_busy(started, ended);
    }

    /// Busy thread-seconds and window length, as `Window::busy`.
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
            run_mean: self.run.mean(),
            utilization: self.busy.utilization(now, threads, in_flight),
            arrival_rate: self.arrivals.rate(now),
            completion_rate: self.ends.rate(now),
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
    run_mean: f64,
    utilization: f64,
    arrival_rate: f64,
    completion_rate: f64,
}

/// Configuration and live gauges that complete a [`Capture`].
pub(crate) struct Gauges<'a> {
    pub(crate) name: &'a str,
    pub(crate) threads: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) queued: usize,
    pub(crate) running: usize,
    pub(crate) predicted_wait: f64,
}

impl Capture {
    pub(crate) fn finish(self, gauges: Gauges<'_>) -> PoolStats {
        let (wait_p50, wait_p99, _) = percentiles(self.wait);
        let (run_p50, run_p99, run_quantiles) = percentiles(self.run);
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
            arrival_rate: self.arrival_rate,
            completion_rate: self.completion_rate,
            run_mean: self.run_mean,
            run_quantiles,
            predicted_wait: gauges.predicted_wait,
            callback_panics: self.callback_panics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentiles(Vec::new()), (0.0, 0.0, Vec::new()));
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let (p50, p99, all) = percentiles(samples);
        assert_eq!((p50, p99), (50.0, 99.0));
        assert_eq!(all.len(), 101);
        assert_eq!((all[0], all[1], all[50], all[100]), (1.0, 1.0, 50.0, 100.0));
        let (p50, p99, all) = percentiles(vec![7.0]);
        assert_eq!((p50, p99), (7.0, 7.0));
        assert!(all.iter().all(|&x| x == 7.0));
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
    fn ring_mean_and_spread_follow_the_kept_samples() {
        let mut ring = Ring::new();
        assert_eq!((ring.mean(), ring.std_dev()), (0.0, 0.0));
        for _ in 0..RING_SAMPLES {
            ring.push(1.0);
        }
        // Half a lap of 3.0 over the 1.0s: mean 2, spread 1, whatever the
        // running sums saw on the way.
        for _ in 0..(RING_SAMPLES / 2) {
            ring.push(3.0);
        }
        assert!((ring.mean() - 2.0).abs() < 1e-9, "{}", ring.mean());
        assert!((ring.std_dev() - 1.0).abs() < 1e-9, "{}", ring.std_dev());
    }

    #[test]
    fn window_rates_count_events_per_second() {
        let origin = Instant::now();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let mut window = Window::new(origin);
        for ms in (0..4000).step_by(100) {
            window.count(at(ms));
        }
        // 40 events in 4 s.
        assert!((window.rate(at(4000)) - 10.0).abs() < 1e-9);
        // Out of the window 20 s later.
        assert_eq!(window.rate(at(24_000)), 0.0);
    }

    #[test]
    fn busy_window_splits_and_bounds_utilization() {
        let origin = Instant::now();
        let mut window = Window::new(origin);
        let at = |ms: u64| origin + Duration::from_millis(ms);
        // One of two threads busy from 0.5 s to 2.5 s, observed at 4 s.
        window.add_busy(at(500), at(2500));
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
