"""Adaptive micro-batching: concurrent calls coalesced into one pool job.

``Batcher(fn)`` collects the items of concurrent ``await
batcher.submit(pool, item)`` calls and runs them as one job,
``fn(items) -> results`` (one result per item, same order). With
``gather``/``scatter`` the job can be a native kernel that never takes the
GIL: the job is ``pool.submit(fn, *gather(items))`` and ``scatter(result)``
splits its result into the per-item results on the event loop, e.g.
``Batcher(rp.cosine_topk, gather=lambda qs: (matrix, np.stack(qs), 10),
scatter=lambda r: list(zip(*r)))``.

A call that finds a free slot (fewer than ``max_inflight`` batch jobs of its
pool, priority and timeout running or queued; default: the pool's threads)
is submitted at once, alone: batching adds no latency at low load. Items
arriving while the slots are busy wait and leave together, up to
``max_batch`` per job, as soon as a slot frees. Under load this turns N
matrix-vector products into one matrix-matrix product that reads the matrix
once.

Waiting items are bounded like the pool's queue: at most ``max_pending``
per pool (default: the pool's ``queue_capacity``); beyond, ``submit``'s
future fails at once with ``rp.QueueFull``. An item's ``timeout`` is its
start deadline counted from ``submit``: an item still waiting when it passes
fails with ``rp.DeadlineExceeded``, and a batch job's start deadline is the
earliest left among its items.

Invariants:

* every call's future is resolved exactly once: with its own result, the
  batch job's exception, ``QueueFull``, ``DeadlineExceeded`` or cancellation;
* an item cancelled (its awaiting task cancelled, e.g. the client went away)
  before its batch was submitted is dropped from the batch and costs nothing;
* ``pending`` counts items waiting for a batch, per pool, exactly;
* all state is touched only on the event loop thread (done callbacks are
  delivered there by ``rp.Job``), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import raptors as rp

__all__ = ["Batcher"]

_Key = tuple[int, int, float | None]


@dataclasses.dataclass(slots=True)
class _Item:
    value: Any
    future: asyncio.Future[Any]
    deadline: float | None
    timer: asyncio.TimerHandle | None = None


@dataclasses.dataclass
class _Lane:
    """Items waiting for one (pool, priority, timeout), and batch jobs in flight."""

    pending: deque[_Item] = dataclasses.field(default_factory=deque)
    inflight: int = 0


def _as_one_argument(items: list[Any]) -> tuple[list[Any]]:
    return (items,)


class Batcher:
    """Coalesces concurrent calls to ``fn`` into batch jobs on a pool."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        gather: Callable[[list[Any]], Sequence[Any]] | None = None,
        scatter: Callable[[Any], Sequence[Any]] | None = None,
        max_batch: int = 32,
        max_inflight: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        for name, value in (("max_inflight", max_inflight), ("max_pending", max_pending)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn = fn
        self.gather = gather if gather is not None else _as_one_argument
        self.scatter = scatter
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.max_pending = max_pending
        self._lanes: dict[_Key, _Lane] = {}
        self._pending: dict[int, int] = {}
        self.batches = 0
        self.items = 0
        self.rejected = 0
        self.expired = 0

    @property
    def pending(self) -> int:
        """Items waiting for a batch, over every pool."""
        return sum(self._pending.values())

    def submit(
        self, pool: rp.Pool, item: Any, *, priority: int = 0, timeout: float | None = None
    ) -> asyncio.Future[Any]:
        """A future for ``item``'s result. When the pool refuses the batch
        (``QueueFull``, ``PoolClosed``) the future holds that exception."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if pool.closed:
            fut.set_exception(_pool_closed(pool))
            return fut
        key = (id(pool), priority, timeout)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        limit = self.max_inflight or pool.threads
        if lane.inflight >= limit:
            capacity = self.max_pending or pool.queue_capacity
            if self._pending.get(id(pool), 0) >= capacity:
                self.rejected += 1
                fut.set_exception(_queue_full(pool, capacity))
                return fut
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = _Item(item, fut, deadline)
        lane.pending.append(entry)
        self._pending[id(pool)] = self._pending.get(id(pool), 0) + 1
        if lane.inflight < limit:
            self._flush(pool, key, lane, priority)
        elif timeout is not None:
            entry.timer = loop.call_later(timeout, self._expire, pool, entry, timeout)
        return fut

    def _expire(self, pool: rp.Pool, entry: _Item, timeout: float) -> None:
        """An item's start deadline passed while it waited for a batch."""
        if not entry.future.done():
            self.expired += 1
            entry.future.set_exception(
                rp.DeadlineExceeded(f"waited {timeout:g} s for a batch slot on pool '{pool.name}'")
            )

    def _take(self, pool: rp.Pool, lane: _Lane) -> list[_Item]:
        """Up to ``max_batch`` live waiting items, oldest first."""
        batch: list[_Item] = []
        pending = lane.pending
        while pending and len(batch) < self.max_batch:
            entry = pending.popleft()
            self._pending[id(pool)] -= 1
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.future.done():  # cancelled or expired while waiting: drop it
                batch.append(entry)
        if not self._pending[id(pool)]:
            del self._pending[id(pool)]
        return batch

    def _flush(self, pool: rp.Pool, key: _Key, lane: _Lane, priority: int) -> None:
        batch = self._take(pool, lane)
        if not batch:
            self._forget_if_idle(key, lane)
            return
        deadlines = [e.deadline for e in batch if e.deadline is not None]
        timeout = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None
        try:
            args = self.gather([e.value for e in batch])
            job = pool.submit(self.fn, *args, priority=priority, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - QueueFull, PoolClosed, gather's error: to every waiter
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            self._forget_if_idle(key, lane)
            return
        lane.inflight += 1
        self.batches += 1
        self.items += len(batch)
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def finished(job: Any) -> None:
            # rp.Job delivers callbacks on the submitting thread's running
            # loop; any other thread hands over to it.
            if threading.get_ident() == loop_thread:
                self._finished(pool, key, lane, priority, job, batch)
            else:
                loop.call_soon_threadsafe(self._finished, pool, key, lane, priority, job, batch)

        job.add_done_callback(finished)

    def _finished(
        self, pool: rp.Pool, key: _Key, lane: _Lane, priority: int, job: Any, batch: list[_Item]
    ) -> None:
        lane.inflight -= 1
        try:
            results = job.result()
            if self.scatter is not None:
                results = self.scatter(results)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
        else:
            for e, result in zip(batch, results, strict=True):
                if not e.future.done():
                    e.future.set_result(result)
        while lane.pending and lane.inflight < (self.max_inflight or pool.threads):
            self._flush(pool, key, lane, priority)
        self._forget_if_idle(key, lane)

    def _forget_if_idle(self, key: _Key, lane: _Lane) -> None:
        if not lane.pending and lane.inflight == 0:
            self._lanes.pop(key, None)


def _queue_full(pool: rp.Pool, capacity: int) -> rp.QueueFull:
    exc = rp.QueueFull(
        f"pool '{pool.name}' queue is full: all workers are busy and "
        f"{capacity} requests are already waiting for a batch"
    )
    exc.pool = pool.name
    exc.capacity = capacity
    return exc


def _pool_closed(pool: rp.Pool) -> rp.PoolClosed:
    exc = rp.PoolClosed(f"pool '{pool.name}' is closed and accepts no new jobs")
    exc.pool = pool.name
    return exc
