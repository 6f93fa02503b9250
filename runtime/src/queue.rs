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
/// Capacity rule: a job that an idle worker is about to take does not wait.
/// With `takers` idle workers (notified or not) that will look at the queue
/// before sleeping, a push is admitted iff `len() < capacity + takers`, so
/// the jobs that truly wait never exceed `capacity`.
pub(crate) struct Queue {
    jobs: BTreeMap<QueueKey, Arc<dyn Task>>,
    capacity: usize,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            jobs: BTreeMap::new(),
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether one more job fits, given `takers` idle workers.
    pub(crate) fn has_room(&self, takers: usize) -> bool {
        self.jobs.len() < self.capacity.saturating_add(takers)
    }

    pub(crate) fn push(&mut self, job: Arc<dyn Task>) {
        let key = job.header().key();
        let previous = self.jobs.insert(key, job);
        debug_assert!(previous.is_none(), "job ids are unique");
    }

    /// The next job to run.
    pub(crate) fn pop(&mut self) -> Option<Arc<dyn Task>> {
        self.jobs.pop_first().map(|(_, job)| job)
    }

    /// Removes a waiting job, in O(log n).
    pub(crate) fn remove(&mut self, key: &QueueKey) -> Option<Arc<dyn Task>> {
        self.jobs.remove(key)
    }

    /// Removes every waiting job, in run order.
    pub(crate) fn drain(&mut self) -> Vec<Arc<dyn Task>> {
        std::mem::take(&mut self.jobs).into_values().collect()
    }
}
