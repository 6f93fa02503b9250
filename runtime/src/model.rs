//! The job state machine exposed to the loom models (`tests/loom.rs`), only
//! under `--cfg loom`. Ownership of a transition is a value ([`Started`],
//! [`Claimed`]), so the models cannot break the contracts the unsafe
//! internals rely on.

use crate::job::{JobCore, JobStatus, Outcome};

/// A bare job: no pool, no closure.
#[derive(Default)]
pub struct ModelJob {
    core: JobCore<u32, u32>,
}

/// Proof of having won `queued -> running`.
pub struct Started<'a>(&'a ModelJob);

/// Proof of having won `queued -> cancelled | expired`.
pub struct Claimed<'a>(&'a ModelJob);

impl ModelJob {
    pub fn new() -> Self {
        Self::default()
    }

    /// A job submitted with a completion hook.
    pub fn with_hook(hook: impl FnOnce() + Send + 'static) -> Self {
        ModelJob {
            core: JobCore::with_hook(Some(Box::new(hook))),
        }
    }

    pub fn try_start(&self) -> Option<Started<'_>> {
        self.core.try_start().then_some(Started(self))
    }

    pub fn try_cancel(&self) -> Option<Claimed<'_>> {
        self.core
            .try_claim(JobStatus::Cancelled)
            .then_some(Claimed(self))
    }

    pub fn try_expire(&self) -> Option<Claimed<'_>> {
        self.core
            .try_claim(JobStatus::Expired)
            .then_some(Claimed(self))
    }

    pub fn status(&self) -> JobStatus {
        self.core.status()
    }

    pub fn is_terminal(&self) -> bool {
        self.core.is_complete()
    }

    pub fn on_complete(&self, f: impl FnOnce() + Send + 'static) {
        self.core.on_complete(Box::new(f));
    }

    pub fn wait(&self) -> bool {
        self.core.wait(None)
    }

    pub fn outcome(&self) -> Option<&Outcome<u32, u32>> {
        self.core.outcome()
    }

    pub fn take_outcome(&self) -> Option<Outcome<u32, u32>> {
        self.core.take_outcome()
    }
}

impl Started<'_> {
    /// Stores and publishes the run's outcome; returns callback panics.
    pub fn finish(self, outcome: Outcome<u32, u32>) -> usize {
        let status = outcome.status();
        // SAFETY: `Started` proves we won `try_start`; consumed, so once.
        unsafe {
            self.0.core.store_run(outcome);
            self.0.core.publish_run(status)
        }
    }
}

impl Claimed<'_> {
    /// Publishes the claimed state; returns callback panics.
    pub fn finish(self) -> usize {
        // SAFETY: `Claimed` proves we won `try_claim`; consumed, so once.
        unsafe { self.0.core.finish_claimed() }
    }
}

/// The drain protocol of `Pool::join` (`drain.rs`), for the loom models.
#[derive(Default)]
pub struct ModelDrain(crate::drain::Drain);

impl ModelDrain {
    /// A drain with `jobs` accepted jobs.
    pub fn with_jobs(jobs: usize) -> Self {
        let drain = ModelDrain::default();
        for _ in 0..jobs {
            drain.0.accept();
        }
        drain
    }

    pub fn published(&self) {
        self.0.published();
    }

    pub fn close(&self) {
        self.0.close();
    }

    /// Blocks until closed and drained (loom reports a deadlock if the
    /// wake-up is lost).
    pub fn wait(&self) -> bool {
        self.0.wait(None)
    }
}

/// A token's registry (`token.rs`, the real code) and the pool's half of
/// the register/cancel window, restated over one modelled lock: submit
/// registers, then re-checks the flag under the pool lock before
/// enqueueing (`Pool::submit`); cancel removes each drained job under the
/// pool lock (`task::cancel_queued`).
#[derive(Default)]
pub struct ModelTokenPool {
    token: crate::token::Registry<()>,
    queue: crate::sync::Mutex<Vec<(u64, std::sync::Arc<ModelJob>)>>,
}

impl ModelTokenPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Submits `job` with the token: queued, or cancelled at once.
    pub fn submit(&self, id: u64, job: &std::sync::Arc<ModelJob>) {
        let registered = self.token.register(id, ());
        let mut queue = crate::sync::lock(&self.queue);
        if !registered || self.token.is_cancelled() {
            drop(queue);
            self.token.unregister(id);
            job.try_cancel().expect("a fresh job is queued").finish();
        } else {
            queue.push((id, std::sync::Arc::clone(job)));
        }
    }

    /// Cancels the token and every job it drained that is still queued.
    pub fn cancel(&self) {
        for id in self.token.cancel().into_iter().flat_map(|m| m.into_keys()) {
            let removed = {
                let mut queue = crate::sync::lock(&self.queue);
                let at = queue.iter().position(|(queued, _)| *queued == id);
                at.map(|at| queue.swap_remove(at).1)
            };
            if let Some(job) = removed {
                job.try_cancel().expect("left the queue").finish();
            }
        }
    }

    /// A worker takes the oldest queued job, if any, and runs it.
    pub fn run_next(&self) -> bool {
        let next = {
            let mut queue = crate::sync::lock(&self.queue);
            (!queue.is_empty()).then(|| queue.remove(0))
        };
        let Some((id, job)) = next else { return false };
        self.token.unregister(id);
        job.try_start()
            .expect("left the queue")
            .finish(Outcome::Done(0));
        true
    }

    /// Jobs still queued.
    pub fn queued(&self) -> usize {
        crate::sync::lock(&self.queue).len()
    }
}
