"""Adaptive micro-batching (`raptors.batch`, re-exported by `raptors.fastapi`):
concurrent calls coalesced into one pool job.

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

Sharing the CPU between pools is not the batcher's job: pools on one
``rp.Budget`` share its threads by weight in the runtime (a quiet tenant's
batch waits for at most one running job of another pool). The optional
``max_total_inflight`` (default ``None``: no limit) caps the batch jobs in
flight over every pool together: a bound on the batches submitted at once
(their gathered inputs and results held in memory, and how many batches
queue in the pools, i.e. latency), for when the pools together could hold
more than you want in flight. With the cap, a slot that frees goes to the
pool served least recently among those with waiting items (its
highest-priority items first), so a flooding pool gets bigger batches, not
more of the slots.

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
  a batch job whose items are all cancelled while it is still queued in the
  pool is cancelled there (a started one runs, its results dropped);
* ``pending`` counts items waiting for a batch, per pool, exactly;
* ``inflight`` counts submitted batch jobs not yet finished, exactly, and
  never exceeds ``max_total_inflight`` when that is set;
* all state is touched only on the event loop thread (done callbacks are
  delivered there by ``rp.Job``), so no lock is needed.

The pool is anything with the shape of ``rp.Pool`` that the batcher uses
(`BatchPool`: ``name``, ``closed``, ``threads``, ``queue_capacity`` and a
``submit(fn, *args, priority=, timeout=)`` whose job has
``asyncio_future()``, ``result()`` and ``cancel()``): an ``rp.Pool``, or a
``raptors.dask.DaskPool``, whose batch jobs then run on a Dask cluster
(``threads``: the cluster's worker threads).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import raptors as rp

__all__ = ["BatchJob", "BatchPool", "Batcher"]


class BatchJob(Protocol):
    """What the batcher needs of a submitted job."""

    def asyncio_future(self) -> Any:
        """A future of the job resolved on the running loop."""

    def result(self) -> Any: ...

    def cancel(self) -> bool: ...


class BatchPool(Protocol):
    """What the batcher needs of a pool: ``rp.Pool`` and
    ``raptors.dask.DaskPool`` have it."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def threads(self) -> int: ...

    @property
    def queue_capacity(self) -> int: ...

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = ...,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> BatchJob: ...


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

    pool: BatchPool
    priority: int
    timeout: float | None
    pending: deque[_Item] = dataclasses.field(default_factory=deque)
    inflight: int = 0


def _as_one_argument(items: list[Any]) -> tuple[list[Any]]:
    return (items,)


class Batcher:
    """Coalesces concurrent calls to ``fn`` into batch jobs on a pool.

    ``max_batch``: items per batch job. ``max_inflight``: batch jobs in
    flight per (pool, priority, timeout) (``None``: the pool's ``threads``).
    ``max_total_inflight``: batch jobs in flight over every pool (``None``,
    the default: no limit; a memory and latency bound, not CPU sharing,
    which the pools' budget does). ``max_pending``: items waiting per pool
    (``None``: the pool's ``queue_capacity``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        gather: Callable[[list[Any]], Sequence[Any]] | None = None,
        scatter: Callable[[Any], Sequence[Any]] | None = None,
        max_batch: int = 32,
        max_inflight: int | None = None,
        max_total_inflight: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        limits = (
            ("max_batch", max_batch),
            ("max_inflight", max_inflight),
            ("max_total_inflight", max_total_inflight),
            ("max_pending", max_pending),
        )
        for name, value in limits:
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        self.fn = fn
        self.gather = gather if gather is not None else _as_one_argument
        self.scatter = scatter
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.max_total_inflight = max_total_inflight
        self.max_pending = max_pending
        self._lanes: dict[_Key, _Lane] = {}
        self._pending: dict[int, int] = {}
        self._served: dict[int, int] = {}  # pool id -> dispatch tick it was last served
        self._tick = 0
        self.inflight = 0
        self.batches = 0
        self.items = 0
        self.rejected = 0
        self.expired = 0

    @property
    def pending(self) -> int:
        """Items waiting for a batch, over every pool."""
        return sum(self._pending.values())

    def holds(self, pool: BatchPool) -> bool:
        """Whether items for ``pool`` wait here or its batch jobs are in flight:
        such a pool is in use even while its own queue is empty."""
        if id(pool) in self._pending:
            return True
        return any(lane.pool is pool and lane.inflight for lane in list(self._lanes.values()))

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: batches and items submitted, items waiting,
        batch jobs in flight, items refused (queue full) and expired."""
        return {
            "batches": self.batches,
            "items": self.items,
            "pending": self.pending,
            "inflight": self.inflight,
            "rejected": self.rejected,
            "expired": self.expired,
        }

    def submit(
        self, pool: BatchPool, item: Any, *, priority: int = 0, timeout: float | None = None
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
            lane = self._lanes[key] = _Lane(pool, priority, timeout)
        runnable = self._has_slot(lane) and not lane.pending
        if not runnable:
            capacity = self.max_pending or pool.queue_capacity
            if self._pending.get(id(pool), 0) >= capacity:
                self.rejected += 1
                fut.set_exception(_queue_full(pool, capacity))
                self._forget_if_idle(key, lane)
                return fut
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = _Item(item, fut, deadline)
        lane.pending.append(entry)
        self._pending[id(pool)] = self._pending.get(id(pool), 0) + 1
        if runnable:
            self._flush(key, lane)
        elif timeout is not None:
            entry.timer = loop.call_later(timeout, self._expire, key, lane, entry)
        return fut

    def _has_slot(self, lane: _Lane) -> bool:
        total = self.max_total_inflight
        # At least one: a cluster may have no worker for a moment.
        return lane.inflight < (self.max_inflight or max(1, lane.pool.threads)) and (
            total is None or self.inflight < total
        )

    def _expire(self, key: _Key, lane: _Lane, entry: _Item) -> None:
        """An item's start deadline passed while it waited for a batch: it
        leaves the lane (freeing its place) with ``DeadlineExceeded``."""
        lane.pending.remove(entry)
        pool_id = id(lane.pool)
        self._pending[pool_id] -= 1
        if not self._pending[pool_id]:
            del self._pending[pool_id]
        self._forget_if_idle(key, lane)
        if not entry.future.done():
            self.expired += 1
            entry.future.set_exception(
                rp.DeadlineExceeded(
                    f"waited {lane.timeout:g} s for a batch slot on pool '{lane.pool.name}'"
                )
            )

    def _take(self, lane: _Lane) -> list[_Item]:
        """Up to ``max_batch`` live waiting items, oldest first."""
        pool_id = id(lane.pool)
        batch: list[_Item] = []
        pending = lane.pending
        while pending and len(batch) < self.max_batch:
            entry = pending.popleft()
            self._pending[pool_id] -= 1
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.future.done():  # cancelled or expired while waiting: drop it
                batch.append(entry)
        if not self._pending[pool_id]:
            del self._pending[pool_id]
        return batch

    def _flush(self, key: _Key, lane: _Lane) -> None:
        pool = lane.pool
        self._tick += 1
        self._served[id(pool)] = self._tick
        batch = self._take(lane)
        if not batch:
            self._forget_if_idle(key, lane)
            return
        deadlines = [e.deadline for e in batch if e.deadline is not None]
        timeout = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None
        try:
            args = self.gather([e.value for e in batch])
            job = pool.submit(self.fn, *args, priority=lane.priority, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - QueueFull, PoolClosed, gather's error: to every waiter
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            self._forget_if_idle(key, lane)
            return
        lane.inflight += 1
        self.inflight += 1
        self.batches += 1
        self.items += len(batch)
        # Delivered on this loop, batched with other completions, without
        # the worker taking the GIL.
        job.asyncio_future().add_done_callback(lambda _: self._finished(key, lane, job, batch))

        def abandon(_: asyncio.Future[Any]) -> None:
            # Every caller gone (e.g. their clients disconnected) while the
            # job still waits in the pool: cancel it, it costs no compute.
            if all(e.future.cancelled() for e in batch):
                job.cancel()

        for e in batch:
            e.future.add_done_callback(abandon)

    def _finished(self, key: _Key, lane: _Lane, job: Any, batch: list[_Item]) -> None:
        lane.inflight -= 1
        self.inflight -= 1
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
        self._forget_if_idle(key, lane)
        self._dispatch()

    def _dispatch(self) -> None:
        """Fills free slots: the least recently served pool with waiting items
        first, and within it the highest priority."""
        while True:
            best: tuple[int, int] | None = None
            chosen: tuple[_Key, _Lane] | None = None
            for key, lane in self._lanes.items():
                if not lane.pending or not self._has_slot(lane):
                    continue
                rank = (self._served.get(id(lane.pool), 0), -lane.priority)
                if best is None or rank < best:
                    best, chosen = rank, (key, lane)
            if chosen is None:
                return
            self._flush(*chosen)

    def _forget_if_idle(self, key: _Key, lane: _Lane) -> None:
        if not lane.pending and lane.inflight == 0:
            self._lanes.pop(key, None)
            if not any(id(other.pool) == id(lane.pool) for other in self._lanes.values()):
                self._served.pop(id(lane.pool), None)


def _queue_full(pool: BatchPool, capacity: int) -> rp.QueueFull:
    exc = rp.QueueFull(
        f"pool '{pool.name}' queue is full: all workers are busy and "
        f"{capacity} requests are already waiting for a batch"
    )
    exc.pool = pool.name
    exc.capacity = capacity
    return exc


def _pool_closed(pool: BatchPool) -> rp.PoolClosed:
    exc = rp.PoolClosed(f"pool '{pool.name}' is closed and accepts no new jobs")
    exc.pool = pool.name
    return exc
