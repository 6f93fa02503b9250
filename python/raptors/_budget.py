"""`rp.Budget`: native worker threads that several pools share, with weighted
fair sharing between them, and the oversubscription check.

The native base class (`BudgetCore`) owns the threads and the scheduler; this
class adds the registry of open budgets by name, the pools on each budget,
close with the same meaning as `Pool.close`, and context managers.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Self

from . import _raptors
from ._raptors import BudgetCore, BudgetStats, OversubscriptionWarning

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["Budget", "BudgetStats", "OversubscriptionWarning", "budgets", "get_budget"]

_registry_lock = threading.RLock()
_registry: dict[str, Budget] = {}
_warned = False


class Closing:
    """Context managers (sync and async) for what closes and joins: a Pool or
    a Budget. ``with`` closes and waits; ``async with`` closes, then joins
    off the event loop."""

    # Set in a forked child, which has none of the worker threads.
    _forked = False

    if TYPE_CHECKING:  # defined by the classes it is mixed into (natively for _join)

        def close(self, wait: bool = True, cancel_pending: bool = False) -> None: ...
        def _join(self, timeout: float | None = None) -> bool: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close(wait=False)
        import asyncio

        if not self._forked:
            await asyncio.get_running_loop().run_in_executor(None, self._join, None)


class Budget(Closing, BudgetCore):
    """A set of native worker threads shared by pools.

    ``Budget(name, threads=None, *, nice=5)``: ``threads`` workers (``None``:
    ``RAPTORS_THREADS`` or the usable cores). Pools join it with
    ``rp.Pool(name, budget=budget, weight=w, threads=cap)``; a free thread
    starts the next job of the pool with the least busy time per unit of
    weight among those below their cap.
    """

    _pools: weakref.WeakSet[Pool]

    def __new__(cls, name: str, threads: int | None = None, *, nice: int | None = None) -> Self:
        with _registry_lock:
            if isinstance(name, str) and name in _registry:
                raise ValueError(f"a budget named {name!r} is already open")
            self = super().__new__(cls, name, threads, nice=nice)
            self._pools = weakref.WeakSet()
            _registry[name] = self
        check_oversubscription()
        return self

    def __init__(self, name: str, threads: int | None = None, *, nice: int | None = None) -> None:
        # Everything happens in __new__, under the registry lock.
        pass

    def pools(self) -> list[Pool]:
        """The open pools on this budget."""
        with _registry_lock:
            return [pool for pool in self._pools if not pool.closed]

    def _add_pool(self, pool: Pool) -> None:
        with _registry_lock:
            self._pools.add(pool)

    def close(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Closes every pool on the budget as ``Pool.close`` does, then its
        threads (they exit once no job is queued). With ``wait``, returns once
        every job that will run has finished and the threads exited."""
        with _registry_lock:
            pools = list(self._pools)
            if _registry.get(self.name) is self:
                del _registry[self.name]
        for pool in pools:
            pool.close(wait=False, cancel_pending=cancel_pending)
        self._close(cancel_pending)
        if wait and not self._forked:
            for pool in pools:
                pool.join()
            self._join(None)

    def join(self, timeout: float | None = None) -> bool:
        """Waits until every worker thread of the (closed) budget exited."""
        return self._forked or self._join(timeout)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<raptors.Budget {self.name!r} threads={self.threads} {state}>"


def resolve(budget: Any) -> Budget | None:
    """``budget=`` of ``rp.Pool``: a Budget, an open budget's name, or None."""
    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, str):
        return get_budget(budget)
    raise TypeError(
        f"budget must be an rp.Budget, an open budget's name or None, not {type(budget).__name__}"
    )


def get_budget(name: str) -> Budget:
    """The open budget called ``name``; ``KeyError`` if there is none."""
    with _registry_lock:
        try:
            return _registry[name]
        except KeyError:
            raise KeyError(f"no open budget named {name!r}") from None


def budgets() -> list[Budget]:
    """Every open budget."""
    with _registry_lock:
        return list(_registry.values())


def check_oversubscription() -> None:
    """Warns, once per process, when the native worker threads of the open
    pools with threads of their own and of the open budgets exceed the usable
    cores."""
    global _warned
    if _warned:
        return
    from ._pool import pools

    own = [pool for pool in pools() if pool._has_own_threads]
    open_budgets = [budget for budget in budgets() if not budget.closed]
    threads = sum(pool.threads for pool in own) + sum(b.threads for b in open_budgets)
    cores = _raptors._usable_cores()
    if threads <= cores:
        return
    _warned = True
    warnings.warn(
        OversubscriptionWarning(
            f"{threads} native worker threads ({len(own)} pools with threads of their own, "
            f"{len(open_budgets)} budgets) on {cores} usable cores: they compete through the OS "
            "scheduler; share the cores with an rp.Budget and per-pool weights instead"
        ),
        stacklevel=3,
    )


def _close_all_budgets() -> None:
    """Closes every open budget and waits for its threads (at exit, after the
    pools were closed)."""
    for budget in budgets():
        budget.close(wait=True)


def _after_fork_in_child() -> None:
    # A forked child has none of its parent's worker threads: its copies of
    # the parent's budgets are closed (the runtime refuses their work).
    global _registry_lock, _warned
    _registry_lock = threading.RLock()
    _warned = False
    for budget in list(_registry.values()):
        budget._forked = True
    _registry.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
