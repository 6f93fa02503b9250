//! A mailbox: any number of threads post, one consumer drains, and a burst
//! of posts costs the consumer one wake-up.
//!
//! The bindings' asyncio hubs deliver finished jobs to an event loop
//! through one: workers post, the loop drains when its wake-up descriptor
//! is readable. The wake-up itself (an eventfd, a pipe) is the caller's;
//! the mailbox says when to issue one.
//!
//! Protocol. A poster pushes its item, then swaps `signalled` to true; when
//! it was false, the poster must wake the consumer ([`Mailbox::post`]
//! returns true). The consumer, once woken, first clears its wake-up
//! source, then swaps `signalled` to false ([`Mailbox::begin_drain`]), then
//! pops until empty.
//!
//! Invariant: when no call is under way, every posted item has been popped,
//! or `signalled` is true and a wake-up was issued after the consumer last
//! cleared its source. So no item waits for a wake-up that never comes.
//!
//! Why: `signalled` changes only by swaps (read-modify-writes, `AcqRel`), so
//! its changes are totally ordered. A poster whose swap reads true comes
//! before the drain's swap to false in that order, so the drain's swap reads
//! from the poster's or a later swap in the same release sequence and
//! synchronises with it: the poster's push happens before the drain's pops,
//! which see the item. A poster whose swap reads false comes after the
//! drain's swap, and wakes the consumer after the consumer cleared its
//! source, so the consumer drains again. Loom model: `tests/loom.rs`.

use crate::sync::{AtomicBool, Ordering};

/// See the module documentation for the protocol.
pub struct Mailbox<T> {
    signalled: AtomicBool,
    queue: Queue<T>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Mailbox<T> {
    pub fn new() -> Self {
        Self {
            signalled: AtomicBool::new(false),
            queue: Queue::default(),
        }
    }

    /// Posts `item`; true when the caller must wake the consumer (no
    /// wake-up is pending for an earlier post). Any thread.
    #[must_use = "a true result obliges the caller to wake the consumer"]
    pub fn post(&self, item: T) -> bool {
        self.queue.push(item);
        !self.signalled.swap(true, Ordering::AcqRel)
    }

    /// The consumer starts a drain: call after clearing the wake-up source
    /// and before the first [`pop`](Self::pop).
    pub fn begin_drain(&self) {
        // A swap, not a store: it must read the posters' swaps (see above).
        self.signalled.swap(false, Ordering::AcqRel);
    }

    /// The next item, oldest first. Consumer only.
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// The consumer stops a drain before the mailbox is empty; true when it
    /// must wake itself, so that what is left is drained next time.
    #[must_use = "a true result obliges the caller to wake the consumer"]
    pub fn end_drain_early(&self) -> bool {
        !self.queue.is_empty() && !self.signalled.swap(true, Ordering::AcqRel)
    }
}

/// crossbeam's lock-free queue; under loom, a modelled lock and deque, so
/// that the models see the push-then-swap order of the protocol.
#[cfg(not(loom))]
type Queue<T> = crossbeam_queue::SegQueue<T>;

#[cfg(loom)]
struct Queue<T>(crate::sync::Mutex<std::collections::VecDeque<T>>);

#[cfg(loom)]
impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self(crate::sync::Mutex::new(std::collections::VecDeque::new()))
    }
}

#[cfg(loom)]
impl<T> Queue<T> {
    fn push(&self, item: T) {
        crate::sync::lock(&self.0).push_back(item);
    }

    fn pop(&self) -> Option<T> {
        crate::sync::lock(&self.0).pop_front()
    }

    fn is_empty(&self) -> bool {
        crate::sync::lock(&self.0).is_empty()
    }
}
