"""Adaptive micro-batching: concurrent calls coalesced into one pool job.

``Batcher(pool_fn)`` collects the items of concurrent ``await
batcher.submit(pool, item)`` calls and runs them as one job,
``pool_fn(items) -> results`` (one result per item, same order). A call that
finds a free slot (fewer than ``max_inflight`` batch jobs of its pool and
priority running or queued) is submitted at once, alone: batching adds no
latency at low load. Items arriving while the slots are busy wait and leave
together, up to ``max_batch`` per job, as soon as a slot frees. Under load
this turns N matrix-vector products into one matrix-matrix product that
reads the matrix once.

Invariants:

* every call's future is resolved exactly once: with its own result, the
  batch job's exception, or cancellation;
* an item cancelled (its awaiting task cancelled, e.g. the client went away)
  before its batch was submitted is dropped from the batch and costs nothing;
* all state is touched only on the event loop thread (done callbacks are
  delivered there by ``rp.Job``), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import raptors as rp

__all__ = ["Batcher"]

_Key = tuple[int, int, float | None]


@dataclasses.dataclass
class _Lane:
    """Items waiting for one (pool, priority), and batch jobs in flight."""

    pending: list[tuple[Any, asyncio.Future[Any]]] = dataclasses.field(default_factory=list)
    inflight: int = 0


class Batcher:
    """Coalesces concurrent calls to ``pool_fn`` into batch jobs on a pool."""

    def __init__(
        self,
        pool_fn: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_inflight: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_inflight is not None and max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.pool_fn = pool_fn
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._lanes: dict[_Key, _Lane] = {}
        self.batches = 0
        self.items = 0

    def submit(
        self, pool: rp.Pool, item: Any, *, priority: int = 0, timeout: float | None = None
    ) -> asyncio.Future[Any]:
        """A future for ``item``'s result. When the pool refuses the batch
        (``QueueFull``, ``PoolClosed``) the future holds that exception."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        key = (id(pool), priority, timeout)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.pending.append((item, fut))
        if lane.inflight < (self.max_inflight or pool.threads):
            self._flush(pool, key, lane, priority, timeout)
        return fut

    def _flush(
        self, pool: rp.Pool, key: _Key, lane: _Lane, priority: int, timeout: float | None
    ) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        while lane.pending and len(batch) < self.max_batch:
            item, fut = lane.pending.pop(0)
            if not fut.done():  # cancelled while waiting: drop it
                batch.append((item, fut))
        if not batch:
            return
        try:
            job = pool.submit(self.pool_fn, [item for item, _ in batch], priority=priority,
                              timeout=timeout)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - QueueFull, PoolClosed: to every waiter
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not lane.pending and lane.inflight == 0:
                self._lanes.pop(key, None)
            return
        lane.inflight += 1
        self.batches += 1
        self.items += len(batch)
        loop = asyncio.get_running_loop()

        def finished(job: Any) -> None:
            # Delivered on the loop that awaits (rp.Job's callbacks run on the
            # submitting thread's loop when one is running); be safe anyway.
            loop.call_soon_threadsafe(self._finished, pool, key, lane, priority, timeout,
                                      job, batch)  # fmt: skip

        job.add_done_callback(finished)

    def _finished(
        self,
        pool: rp.Pool,
        key: _Key,
        lane: _Lane,
        priority: int,
        timeout: float | None,
        job: Any,
        batch: list[tuple[Any, asyncio.Future[Any]]],
    ) -> None:
        lane.inflight -= 1
        try:
            results = job.result()
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
        while lane.pending and lane.inflight < (self.max_inflight or pool.threads):
            self._flush(pool, key, lane, priority, timeout)
        if not lane.pending and lane.inflight == 0:
            self._lanes.pop(key, None)
