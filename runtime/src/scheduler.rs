//! Weighted fair sharing of a budget's threads between its pools: which
//! queued job a free thread starts next.
//!
//! Everything here lives under the budget's one lock ([`Sched`]); a pool's
//! own state ([`PoolState`]: queue, counters, cap) is a member of it, so a
//! pool on a private budget takes exactly one lock per transition, as a
//! budget shared by many pools does.
//!
//! The rule (start-time fair queuing on measured busy time): every pool has
//! a virtual time, the busy thread time it received divided by its weight,
//! running jobs counted up to now. A free thread starts the next job
//! (priority, then FIFO) of the pool with the least virtual time among the
//! pools that have a job queued and run fewer jobs than their cap; ties go
//! to the pool running fewer jobs. A pool that was idle (nothing queued or
//! running) re-enters at no less than the least virtual time among the busy
//! pools, so idling banks no credit.
//!
//! Invariants (each restored before the lock is released):
//! * `queued` is the sum of the members' queue lengths and `waiting` lists
//!   exactly the members with a non-empty queue;
//! * `eligible` is the sum over members of `min(queue length, cap -
//!   running)`: the jobs a free thread may start now. Workers never idle
//!   while it exceeds the claimed idle workers (see `idle.rs`);
//! * `running[i]` names the member and start of the job worker `i` runs.

use std::sync::Arc;
use std::time::Instant;

use crate::admission::{self, Load};
use crate::idle::Idle;
use crate::pool::Shared;
use crate::queue::Queue;
use crate::stats::Stats;
use crate::task::Task;

/// One pool's part of the budget state.
pub(crate) struct PoolState {
    pub(crate) name: Arc<str>,
    pub(crate) queue: Queue,
    pub(crate) closed: bool,
    /// Jobs of this pool running now.
    pub(crate) running: usize,
    /// Most jobs of this pool running at once.
    pub(crate) cap: usize,
    weight: f64,
    /// Busy seconds received / weight, jobs that ended only.
    vtime: f64,
    /// Sum of the start times (ns since the budget's origin) of the
    /// running jobs, to charge them up to now in O(1).
    running_starts: u128,
    pub(crate) stats: Stats,
}

impl PoolState {
    pub(crate) fn new(
        name: Arc<str>,
        capacity: usize,
        cap: usize,
        weight: f64,
        origin: Instant,
    ) -> Self {
        PoolState {
            name,
            queue: Queue::new(capacity),
            closed: false,
            running: 0,
            cap,
            weight,
            vtime: 0.0,
            running_starts: 0,
            stats: Stats::new(origin),
        }
    }

    /// Jobs of this pool a free thread may start now.
    fn eligible(&self) -> usize {
        self.queue.len().min(self.cap.saturating_sub(self.running))
    }

    fn busy(&self) -> bool {
        self.running > 0 || self.queue.len() > 0
    }

    /// Virtual time at `now_ns`, running jobs charged up to now.
    fn virtual_time(&self, now_ns: u128) -> f64 {
        let charged = (self.running as u128 * now_ns).saturating_sub(self.running_starts);
        self.vtime + charged as f64 * 1e-9 / self.weight
    }
}

/// A member of the budget: a pool's state, and the pool itself while it is
/// open or has work (so its jobs' weak references to it stay valid).
struct Member {
    state: PoolState,
    keep_alive: Option<Arc<Shared>>,
}

/// A job a worker took, with its pool.
pub(crate) struct Taken {
    pub(crate) member: usize,
    pub(crate) pool: Arc<Shared>,
    pub(crate) task: Arc<dyn Task>,
}

/// Everything the budget lock protects.
pub(crate) struct Sched {
    members: Vec<Option<Member>>,
    free: Vec<usize>,
    pub(crate) idle: Idle,
    /// Per worker: the member and start of the job it runs.
    running: Vec<Option<(usize, Instant)>>,
    queued: usize,
    eligible: usize,
    waiting: Vec<usize>,
    pub(crate) closed: bool,
    origin: Instant,
}

impl Sched {
    pub(crate) fn new(threads: usize, origin: Instant) -> Self {
        Sched {
            members: Vec::new(),
            free: Vec::new(),
            idle: Idle::new(threads),
            running: vec![None; threads],
            queued: 0,
            eligible: 0,
            waiting: Vec::new(),
            closed: false,
            origin,
        }
    }

    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    fn nanos(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.origin).as_nanos()
    }

    /// Jobs queued in all pools.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Jobs a free thread may start now.
    pub(crate) fn eligible(&self) -> usize {
        self.eligible
    }

    /// The index the next [`join`](Self::join) returns.
    pub(crate) fn next_member_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.members.len())
    }

    /// Adds a pool; returns its member index.
    pub(crate) fn join(&mut self, state: PoolState, pool: Arc<Shared>) -> usize {
        let member = Member {
            state,
            keep_alive: Some(pool),
        };
        match self.free.pop() {
            Some(index) => {
                self.members[index] = Some(member);
                index
            }
            None => {
                self.members.push(Some(member));
                self.members.len() - 1
            }
        }
    }

    /// Removes a pool whose last reference went (it has no work).
    pub(crate) fn leave(&mut self, member: usize) {
        let gone = self.members[member].take();
        debug_assert!(gone.is_some_and(|m| !m.state.busy() && m.keep_alive.is_none()));
        self.free.push(member);
    }

    pub(crate) fn pool(&self, member: usize) -> &PoolState {
        &self.members[member]
            .as_ref()
            .expect("a pool's member lives as long as the pool")
            .state
    }

    /// A pool's counters (changing them leaves the totals as they are).
    pub(crate) fn stats_mut(&mut self, member: usize) -> &mut Stats {
        &mut self.members[member]
            .as_mut()
            .expect("a pool's member lives as long as the pool")
            .state
            .stats
    }

    /// Mutates a pool's state, keeping the totals and `waiting` exact.
    pub(crate) fn update<R>(&mut self, member: usize, f: impl FnOnce(&mut PoolState) -> R) -> R {
        let state = &mut self.members[member]
            .as_mut()
            .expect("a pool's member lives as long as the pool")
            .state;
        let (queued, eligible) = (state.queue.len(), state.eligible());
        let result = f(state);
        let (now_queued, now_eligible) = (state.queue.len(), state.eligible());
        self.queued = self.queued + now_queued - queued;
        self.eligible = self.eligible + now_eligible - eligible;
        if queued == 0 && now_queued > 0 {
            self.waiting.push(member);
        } else if queued > 0 && now_queued == 0 {
            self.waiting.retain(|&m| m != member);
        }
        result
    }

    /// The idle worker a job of `member` submitted now would start on at
    /// once: one exists and the pool is below its cap. Every job a free
    /// thread may start is already claimed when a worker is idle and
    /// unclaimed (see `idle.rs`), so starting this one first is fair.
    pub(crate) fn free_worker_for(&self, member: usize) -> Option<usize> {
        let state = self.pool(member);
        if state.running < state.cap {
            self.idle.free_worker()
        } else {
            None
        }
    }

    /// What predictive admission reads about `member` for a job of
    /// `priority` submitted at `now` (see `admission.rs`), and the elapsed
    /// seconds of its running jobs.
    pub(crate) fn load(
        &self,
        member: usize,
        priority: i64,
        now: Instant,
    ) -> (Load, impl Iterator<Item = f64> + '_) {
        let state = self.pool(member);
        let load = Load {
            ahead: state.queue.ahead_of(priority),
            running: state.running,
            threads: self.threads_for(member),
            run_mean: state.stats.run.mean(),
            run_std_dev: state.stats.run.std_dev(),
        };
        let elapsed = self
            .running_since(member)
            .map(move |started| admission::seconds(now.saturating_duration_since(started)));
        (load, elapsed)
    }

    /// The threads `member` may use: its cap, or its weighted share of the
    /// budget's threads among the busy pools (itself counted as busy) if
    /// that is lower.
    fn threads_for(&self, member: usize) -> f64 {
        let state = self.pool(member);
        let others: f64 = self
            .pools()
            .filter(|&(m, s)| m != member && s.busy())
            .map(|(_, s)| s.weight)
            .sum();
        let share = self.running.len() as f64 * state.weight / (state.weight + others);
        share.min(state.cap as f64)
    }

    /// Queues `task` in `member`. A pool that was idle re-enters at no
    /// less than the least virtual time among the busy pools.
    pub(crate) fn push(&mut self, member: usize, task: Arc<dyn Task>, now: Instant) {
        if !self.pool(member).busy() {
            let now_ns = self.nanos(now);
            let least_busy = self
                .members
                .iter()
                .flatten()
                .filter(|m| m.state.busy())
                .map(|m| m.state.virtual_time(now_ns))
                .min_by(f64::total_cmp);
            if let Some(least) = least_busy {
                self.update(member, |s| s.vtime = s.vtime.max(least));
            }
        }
        self.update(member, |s| {
            s.queue.push(task);
            s.stats.observe_queue_depth(s.queue.len());
        });
    }

    /// The member a free thread serves next, if any may start a job.
    fn next_member(&self, now: Instant) -> Option<usize> {
        let now_ns = self.nanos(now);
        self.waiting
            .iter()
            .copied()
            .filter(|&m| {
                let s = self.pool(m);
                s.running < s.cap
            })
            .min_by(|&a, &b| {
                let (sa, sb) = (self.pool(a), self.pool(b));
                sa.virtual_time(now_ns)
                    .total_cmp(&sb.virtual_time(now_ns))
                    .then(sa.running.cmp(&sb.running))
                    .then(a.cmp(&b))
            })
    }

    /// Pops the next job a free thread should look at (its pool chosen by
    /// fair share), not yet started; the caller starts or expires it.
    pub(crate) fn pop_next(&mut self, now: Instant) -> Option<Taken> {
        let member = self.next_member(now)?;
        let task = self.update(member, |s| s.queue.pop())?;
        let pool = self.keep_alive(member);
        Some(Taken { member, pool, task })
    }

    pub(crate) fn keep_alive(&self, member: usize) -> Arc<Shared> {
        let held = self.members[member]
            .as_ref()
            .and_then(|m| m.keep_alive.clone());
        held.expect("an open pool, or one with jobs, is kept alive")
    }

    /// Worker `index` starts a job of `member` at `now`.
    pub(crate) fn begin_job(
        &mut self,
        index: usize,
        member: usize,
        submitted_at: Instant,
        now: Instant,
    ) {
        let start_ns = self.nanos(now);
        self.running[index] = Some((member, now));
        self.update(member, |s| {
            s.running += 1;
            s.running_starts += start_ns;
            s.stats.record_start(submitted_at, now);
        });
    }

    /// Worker `index` ended its job with `status` at `now`. Returns the
    /// pool's keep-alive when that drained a closed pool (drop it unlocked).
    pub(crate) fn end_job(
        &mut self,
        index: usize,
        status: crate::job::JobStatus,
        now: Instant,
    ) -> Option<Arc<Shared>> {
        let (member, started) = self.running[index]
            .take()
            .expect("a worker ends only the job it began");
        let start_ns = self.nanos(started);
        self.update(member, |s| {
            s.running -= 1;
            s.running_starts -= start_ns;
            s.vtime += now.saturating_duration_since(started).as_secs_f64() / s.weight;
            s.stats.count_end(status, now);
            s.stats.record_run(started, now);
        });
        self.release_if_drained(member)
    }

    /// Drops the budget's hold on a closed pool with no work left.
    pub(crate) fn release_if_drained(&mut self, member: usize) -> Option<Arc<Shared>> {
        let m = self.members[member].as_mut()?;
        if m.state.closed && !m.state.busy() {
            m.keep_alive.take()
        } else {
            None
        }
    }

    /// Start times of the jobs of `member` running now.
    pub(crate) fn running_since(&self, member: usize) -> impl Iterator<Item = Instant> + '_ {
        self.running
            .iter()
            .flatten()
            .filter(move |(m, _)| *m == member)
            .map(|&(_, started)| started)
    }

    /// The pools still kept alive (open, or closed with work left).
    pub(crate) fn live_pools(&self) -> Vec<(usize, Arc<Shared>)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m.as_ref()?.keep_alive.clone()?)))
            .collect()
    }

    /// Every member's state, with its index.
    pub(crate) fn pools(&self) -> impl Iterator<Item = (usize, &PoolState)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, &m.as_ref()?.state)))
    }
}
