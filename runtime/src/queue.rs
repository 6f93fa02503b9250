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

    /// Whether one more job may wait.
    pub(crate) fn has_room(&self) -> bool {
        self.jobs.len() < self.capacity
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
