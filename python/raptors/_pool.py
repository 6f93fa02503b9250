"""`rp.Pool`: the Python face of a native worker pool.

The native base class (`PoolCore`) owns the threads, the bounded priority
queue and `submit`; this class adds what Python users expect around it: the
`concurrent.futures.Executor` surface, the registry of open pools by name,
context managers, and closing every pool when the interpreter exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Self

from . import _budget, _raptors
from ._budget import Budget, Closing
from ._raptors import Job, PoolCore, PoolStats, QueueFull, _timeout_seconds

__all__ = ["Pool", "default_pool", "get_pool", "pools", "stats", "submit"]

_registry_lock = threading.RLock()
_registry: dict[str, Pool] = {}
# Pools closed without waiting: joined at exit, so that no worker runs Python
# code while the interpreter finalises.
_unjoined: set[Pool] = set()
_DEFAULT_NAME = "default"


# ThreadPoolExecutor is a base only so that asyncio's
# `loop.set_default_executor(pool)` (which checks the type) accepts a pool:
# every method an executor has is this class's own, and ThreadPoolExecutor's
# __init__ never runs, so it starts no thread of its own.
class Pool(Closing, PoolCore, concurrent.futures.ThreadPoolExecutor):  # type: ignore[misc]
    """A named pool with a bounded priority queue, run by native worker threads.

    ``Pool(name, threads=None, queue=1024, *, budget=None, weight=1, nice=5,
    admission="bounded")``:
    without ``budget``, the pool owns ``threads`` workers (``None``:
    ``RAPTORS_THREADS`` or the usable cores) running ``nice`` steps below
    normal OS priority (Linux) so the event loop is scheduled first
    (``nice=0`` opts out). With ``budget`` (an ``rp.Budget`` or an open
    budget's name) the pool owns no threads: its jobs run on the budget's,
    at most ``threads`` at once (``None``: all of them), sharing them with
    the other pools in proportion to ``weight``. At most ``queue`` jobs
    wait; ``submit`` raises ``QueueFull`` at once beyond that. With
    ``admission="predictive"``, ``submit(..., timeout=t)`` also raises
    ``WouldMissDeadline`` (a ``QueueFull``) at once when the job's predicted
    wait before it could start exceeds ``t`` (docs/guide.md, "Admission").
    """

    _budget: Budget | None = None

    def __new__(
        cls,
        name: str,
        threads: int | None = None,
        queue: int = 1024,
        *,
        budget: Budget | str | None = None,
        weight: float = 1,
        nice: int | None = None,
        admission: Literal["bounded", "predictive"] = "bounded",
    ) -> Self:
        if queue is None:
            # PoolCore reads None as "default"; the public API has no such value.
            raise TypeError("queue must be an int, not NoneType")
        if weight is None:
            raise TypeError("weight must be an int or a float, not NoneType")
        on_budget = _budget.resolve(budget)
        with _registry_lock:
            if isinstance(name, str) and name in _registry:
                raise ValueError(f"a pool named {name!r} is already open")
            if admission is None:
                raise TypeError("admission must be a str, not NoneType")
            self = super().__new__(
                cls,
                name,
                threads,
                queue,
                nice=nice,
                budget=on_budget,
                weight=weight,
                admission=admission,
            )
            _registry[name] = self
            if on_budget is not None:
                self._budget = on_budget
                on_budget._add_pool(self)
        _budget.check_oversubscription()
        return self

    def __init__(
        self,
        name: str,
        threads: int | None = None,
        queue: int = 1024,
        *,
        budget: Budget | str | None = None,
        weight: float = 1,
        nice: int | None = None,
        admission: Literal["bounded", "predictive"] = "bounded",
    ) -> None:
        # Everything happens in __new__, under the registry lock.
        pass

    @property
    def budget(self) -> Budget | None:
        """The budget whose threads run the pool's jobs; None if it owns its threads."""
        return self._budget

    def close(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stops accepting jobs. Queued jobs still run unless ``cancel_pending``;
        with ``wait``, returns once every job that will run has finished."""
        self._close(cancel_pending)
        with _registry_lock:
            if _registry.get(self.name) is self:
                del _registry[self.name]
            if wait:
                _unjoined.discard(self)
            else:
                _forget_finished_pools()
                _unjoined.add(self)
        if wait and not self._forked:
            self._join(None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """`concurrent.futures.Executor.shutdown`: ``close(wait, cancel_futures)``."""
        self.close(wait=wait, cancel_pending=cancel_futures)

    def join(self, timeout: float | None = None) -> bool:
        """Waits until every accepted job has ended and every worker exited."""
        return self._forked or self._join(timeout)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """`Executor.map`, feeding the pool as slots free: while the queue is
        full the caller blocks instead of getting ``QueueFull`` part-way."""
        limit = _timeout_seconds(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        # Keep at most threads + queue of our jobs unfinished, so that waiting
        # for a slot is not a stream of refused submits (each counted in
        # `rejected`); QueueFull still means waiting when others fill the pool.
        window = self.threads + self.queue_capacity
        jobs: list[Job] = []
        unfinished: deque[Job] = deque()
        for args in zip(*iterables):
            while True:
                while unfinished and unfinished[0].done():
                    unfinished.popleft()
                if len(unfinished) >= window or (not self.closed and not self._has_room()):
                    _wait_for_a_slot(unfinished)
                    unfinished = deque(job for job in unfinished if not job.done())
                    continue
                try:
                    job = self.submit(fn, *args)
                except QueueFull:
                    _wait_for_a_slot(unfinished)
                    continue
                jobs.append(job)
                unfinished.append(job)
                break

        def results() -> Iterator[Any]:
            try:
                jobs.reverse()
                while jobs:
                    # No local keeps the job (or its result) alive while the
                    # caller holds the yielded value.
                    if deadline is None:
                        yield _result_or_cancel(jobs.pop(), None)
                    else:
                        yield _result_or_cancel(jobs.pop(), max(0.0, deadline - time.monotonic()))
            finally:
                for job in jobs:
                    job.cancel()

        return results()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        on = "" if self._budget is None else f" budget={self._budget.name!r}"
        return (
            f"<raptors.Pool {self.name!r} threads={self.threads} "
            f"queue={self.queue_capacity}{on} {state}>"
        )


def _wait_for_a_slot(jobs: Iterable[Job]) -> None:
    """Blocks briefly for a queue slot: until the oldest of ``jobs`` still
    unfinished ends (equal priorities start in FIFO order), at most 50 ms."""
    oldest = next((job for job in jobs if not job.done()), None)
    if oldest is None:
        time.sleep(0.0005)
    else:
        oldest._wait(0.05)


def default_pool() -> Pool:
    """The pool named ``"default"`` (``threads=None``), created on first use."""
    with _registry_lock:
        pool = _registry.get(_DEFAULT_NAME)
        if pool is None:
            pool = Pool(_DEFAULT_NAME)
        return pool


def get_pool(name: str) -> Pool:
    """The open pool called ``name``; ``KeyError`` if there is none."""
    with _registry_lock:
        try:
            return _registry[name]
        except KeyError:
            raise KeyError(f"no open pool named {name!r}") from None


def pools() -> list[Pool]:
    """Every open pool."""
    with _registry_lock:
        return list(_registry.values())


def stats() -> dict[str, PoolStats]:
    """``{name: pool.stats()}`` for every open pool."""
    return {pool.name: pool.stats() for pool in pools()}


def submit(
    fn: Callable[..., Any],
    /,
    *args: Any,
    pool: Pool | str | None = None,
    priority: int = 0,
    token: _raptors.CancelToken | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Job:
    """Submits ``fn(*args, **kwargs)`` to ``pool`` (a Pool, a pool name, or the
    default pool)."""
    if pool is None:
        target = default_pool()
    elif isinstance(pool, str):
        target = get_pool(pool)
    elif isinstance(pool, PoolCore):
        target = pool
    else:
        raise TypeError(f"pool must be a Pool, a pool name or None, not {type(pool).__name__}")
    return target.submit(fn, *args, priority=priority, token=token, timeout=timeout, **kwargs)


# Seconds an exit may wait for running jobs before saying so on stderr.
EXIT_NOTICE_SECONDS = 5.0


@atexit.register
def _close_all_pools() -> None:
    # Workers take the GIL to run Python jobs: they must be done before the
    # interpreter finalises. Queued jobs still run, as ThreadPoolExecutor's do.
    for pool in pools():
        pool.close(wait=False)
    with _registry_lock:
        waiting = list(_unjoined)
    _join_at_exit(waiting, EXIT_NOTICE_SECONDS)
    _budget._close_all_budgets()
    _raptors._interpreter_exiting()


def _join_at_exit(waiting: list[Pool], notice_after: float) -> None:
    """Joins ``waiting``; if that takes longer than ``notice_after`` seconds
    (a Python job blocked on something that never comes, say), says on
    stderr which pools exit waits for, and again every minute."""
    notice_at = time.monotonic() + notice_after
    while waiting:
        waiting = [pool for pool in waiting if not pool._join(0.05)]
        if waiting and time.monotonic() >= notice_at:
            snapshots = [(pool.name, pool.stats()) for pool in waiting]
            busy = ", ".join(
                f"'{name}' ({s.running} running, {s.queued} queued)" for name, s in snapshots
            )
            print(
                f"raptors: interpreter exit is waiting for the jobs of pool(s) {busy}; "
                "queued jobs still run, as with ThreadPoolExecutor "
                "(close pools with cancel_pending=True to drop them)",
                file=sys.stderr,
                flush=True,
            )
            notice_at = time.monotonic() + 60.0


def _result_or_cancel(job: Job, timeout: float | None) -> Any:
    """``job.result(timeout)``; a job still waiting when that times out (or the
    caller is interrupted) is cancelled, as ``Executor.map`` promises."""
    try:
        return job.result(timeout)
    finally:
        job.cancel()  # a no-op for a job that ended or runs


def _forget_finished_pools() -> None:
    """Drops the pools whose workers have all exited from ``_unjoined`` (called
    with ``_registry_lock`` held), so the set holds only pools with work left,
    however many pools a service closes without waiting (tenant eviction)."""
    finished = [pool for pool in _unjoined if not pool._is_worker_thread() and pool._join(0)]
    _unjoined.difference_update(finished)


def _after_fork_in_child() -> None:
    # A forked child has none of its parent's worker threads: its copies of
    # the parent's pools are closed, so submitting raises PoolClosed instead
    # of queueing work that would never run.
    global _registry_lock
    _registry_lock = threading.RLock()
    for pool in list(_registry.values()) + list(_unjoined):
        pool._forked = True
        pool._close(True)
    _registry.clear()
    _unjoined.clear()
    _raptors._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
