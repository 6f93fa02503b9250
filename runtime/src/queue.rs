//! The bounded priority queue of waiting jobs and its capacity rule.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::task::Task;

/// Order of waiting jobs: higher priority first, then lower id (ids grow
/// with submission, so equal priorities run FIFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct QueueKey(Reverse<i64>, u64);

impl QueueKey {
    pub(crate) fn new(priority: i64, id: u64) -> Self {
        QueueKey(Reverse(priority), id)
    }
}

/// Jobs that wait for a worker.
///
/// Capacity rule: at most `capacity` jobs wait. A job that finds an idle
/// worker is handed to it, started, and never enters the queue.
///
/// `waiting` holds `(p, n)`: `n > 0` jobs of priority `p` are in `jobs`,
/// highest `p` first, one entry per distinct priority. The jobs that would
/// start before a new one are counted without walking the queue; a queue
/// holds few distinct priorities, so a sorted `Vec` beats a map here.
pub(crate) struct Queue {
    jobs: BTreeMap<QueueKey, Arc<dyn Task>>,
    waiting: Vec<(i64, usize)>,
    capacity: usize,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            jobs: BTreeMap::new(),
            waiting: Vec::new(),
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether one more job may wait.
    pub(crate) fn has_room(&self) -> bool {
        self.jobs.len() < self.capacity
    }

    /// Waiting jobs that would start before a job of `priority` submitted
    /// now: those of a higher or equal priority. O(distinct priorities).
    pub(crate) fn ahead_of(&self, priority: i64) -> usize {
        self.waiting
            .iter()
            .take_while(|&&(p, _)| p >= priority)
            .map(|&(_, n)| n)
            .sum()
    }

    /// Where priority `p`'s entry in `waiting` is, or would be inserted.
    fn slot(&self, p: i64) -> Result<usize, usize> {
        self.waiting.binary_search_by(|&(q, _)| p.cmp(&q))
    }

    pub(crate) fn push(&mut self, job: Arc<dyn Task>) {
        let key = job.header().key();
        let previous = self.jobs.insert(key, job);
        debug_assert!(previous.is_none(), "job ids are unique");
        match self.slot(key.0 .0) {
            Ok(i) => self.waiting[i].1 += 1,
            Err(i) => self.waiting.insert(i, (key.0 .0, 1)),
        }
    }

    fn left(&mut self, key: &QueueKey) {
        if let Ok(i) = self.slot(key.0 .0) {
            self.waiting[i].1 -= 1;
            if self.waiting[i].1 == 0 {
                self.waiting.remove(i);
            }
        }
    }

    /// The next job to run.
    pub(crate) fn pop(&mut self) -> Option<Arc<dyn Task>> {
        let (key, job) = self.jobs.pop_first()?;
        self.left(&key);
        Some(job)
    }

    /// Removes a waiting job, in O(log n).
    pub(crate) fn remove(&mut self, key: &QueueKey) -> Option<Arc<dyn Task>> {
        let job = self.jobs.remove(key)?;
        self.left(key);
        Some(job)
    }

    /// Removes every waiting job, in run order.
    pub(crate) fn drain(&mut self) -> Vec<Arc<dyn Task>> {
        self.waiting.clear();
        std::mem::take(&mut self.jobs).into_values().collect()
    }
}
