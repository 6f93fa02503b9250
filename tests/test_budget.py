"""Shared CPU budgets and fair sharing (contract section 9): rp.Budget,
rp.BudgetStats, pools on a budget (cap, weight), sections 1-4 and 7 for such
pools, the four scheduling guarantees, isolation between pools on one budget,
use from several threads and event loops, and rp.OversubscriptionWarning.

Scheduling tests use Python callables that sleep as their *work*: `time.sleep`
releases the GIL and keeps a budget thread occupied, so busy time is what the
job body says it is. Shares are measured over windows of at least a second,
with generous bounds; nothing here is a performance assertion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import HANG, assert_invariant, wait_until

pytestmark = pytest.mark.timeout(60)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def expected_default_threads() -> int:
    env = os.environ.get("RAPTORS_THREADS")
    return int(env) if env else usable_cores()


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def make_budget(rp, gates, unique_name):
    """Factory `make_budget(threads=2, name=None)` of uniquely named budgets.

    Budgets still open at teardown are closed without waiting and with their
    queued jobs cancelled; the gates of the test open after that.
    """
    made = []

    def make(threads=2, name=None):
        budget = rp.Budget(name or unique_name("-budget"), threads=threads)
        made.append(budget)
        return budget

    yield make
    for budget in made:
        if not budget.closed:
            budget.close(wait=False, cancel_pending=True)


@pytest.fixture
def make_bpool(rp, make_budget, unique_name):
    """Factory `make_bpool(budget, threads=None, queue=64, weight=1)` of pools
    on a budget; closed (without waiting) before the budgets at teardown."""
    made = []

    def make(budget, threads=None, queue=64, weight=1, name=None):
        pool = rp.Pool(
            name or unique_name(), threads=threads, queue=queue, budget=budget, weight=weight
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        if not pool.closed:
            pool.close(wait=False, cancel_pending=True)


class Recorder:
    """Job bodies that record when, and on which native thread, they ran.

    `spans` holds `[start, end, native_id]`; `end` is `None` while the job
    runs, so a window that closes mid-job still counts its busy time.
    """

    def __init__(self) -> None:
        self.spans: list[list] = []
        self._cond = threading.Condition()

    def sleep(self, seconds: float) -> None:
        span = [time.monotonic(), None, threading.get_native_id()]
        with self._cond:
            self.spans.append(span)
            self._cond.notify_all()
        time.sleep(seconds)
        span[1] = time.monotonic()

    def wait_started(self, n: int, timeout: float = HANG) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.spans) >= n, timeout)
        assert ok, f"only {len(self.spans)} of {n} recorded jobs started within {timeout}s"

    def busy(self, lo: float, hi: float) -> float:
        """Busy thread-seconds of the recorded jobs inside `[lo, hi]`."""
        total = 0.0
        for start, end, _ in list(self.spans):
            end = hi if end is None else end
            total += max(0.0, min(end, hi) - max(start, lo))
        return total


class Concurrency:
    """A job body that sleeps and tracks how many calls run at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(seconds)
        finally:
            with self._lock:
                self.now -= 1


def sleep_until(t: float) -> None:
    """Lets a measurement window elapse (not a synchronisation)."""
    time.sleep(max(0.0, t - time.monotonic()))


def _run_python(rp, code: str, drop=(), **env) -> str:
    """Run `code` in a fresh interpreter that imports the same `raptors` as this one."""
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(env)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rp.__file__)))
    full_env["PYTHONPATH"] = os.pathsep.join(
        [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=tempfile.gettempdir(),  # keep a source checkout in the cwd from shadowing it
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- rp.Budget: construction and attributes ------------------------------------------


def test_public_names(rp):
    assert isinstance(rp.Budget, type)
    assert isinstance(rp.BudgetStats, type)
    assert issubclass(rp.OversubscriptionWarning, RuntimeWarning)


def test_budget_attributes(rp, unique_name):
    name = unique_name("-budget")
    budget = rp.Budget(name, threads=2)
    try:
        assert isinstance(budget, rp.Budget)
        assert budget.name == name
        assert budget.threads == 2
        assert budget.closed is False
        assert budget.pools() == []
    finally:
        budget.close()
    assert budget.closed is True


def test_budget_positional_threads(rp, unique_name):
    budget = rp.Budget(unique_name("-budget"), 3)
    try:
        assert budget.threads == 3
    finally:
        budget.close()


@pytest.mark.parametrize("how", ["omitted", "None"])
def test_budget_threads_none_means_usable_cores(rp, unique_name, how):
    name = unique_name("-budget")
    budget = rp.Budget(name) if how == "omitted" else rp.Budget(name, threads=None)
    try:
        assert budget.threads == expected_default_threads()
    finally:
        budget.close()


def test_budget_default_threads_follow_raptors_threads(rp):
    out = _run_python(
        rp,
        """
        import raptors as rp
        b = rp.Budget("env-probe")
        p = rp.Pool("env-probe-pool", budget=b)
        print(b.threads, p.threads, p.submit(abs, -1).result(timeout=30))
        b.close()
        """,
        RAPTORS_THREADS="3",
    )
    assert out.split() == ["3", "3", "1"]


def test_budget_default_threads_without_env_is_usable_cores(rp):
    out = _run_python(
        rp,
        "import raptors as rp; b = rp.Budget('probe'); print(b.threads); b.close()",
        drop=("RAPTORS_THREADS",),
    )
    assert int(out) == usable_cores()


@pytest.mark.parametrize("bad", [0, -1])
def test_budget_threads_bad_value(rp, unique_name, bad):
    # Section 1's convention: bad values give ValueError naming the argument.
    with pytest.raises(ValueError, match="threads"):
        rp.Budget(unique_name("-budget"), threads=bad)


@pytest.mark.parametrize("bad", ["2", 2.0, [2]])
def test_budget_threads_wrong_type(rp, unique_name, bad):
    with pytest.raises(TypeError, match="threads"):
        rp.Budget(unique_name("-budget"), threads=bad)


def test_budget_name_validation(rp):
    with pytest.raises(TypeError, match="name"):
        rp.Budget(123, threads=1)
    with pytest.raises(ValueError, match="name"):
        rp.Budget("", threads=1)


def test_budget_name_unique_among_open_budgets(rp, unique_name):
    name = unique_name("-budget")
    first = rp.Budget(name, threads=1)
    try:
        with pytest.raises(ValueError):
            rp.Budget(name, threads=1)
        with pytest.raises(ValueError):
            rp.Budget(name, threads=2)
        # The refused attempt did not disturb the first budget.
        assert first.closed is False
        pool = rp.Pool(unique_name(), budget=name, queue=4)
        assert pool.submit(abs, -4).result(timeout=HANG) == 4
    finally:
        first.close()
    second = rp.Budget(name, threads=2)  # free again once closed
    try:
        assert (second.name, second.threads, second.closed) == (name, 2, False)
    finally:
        second.close()


def test_failed_budget_construction_does_not_take_the_name(rp, unique_name):
    name = unique_name("-budget")
    with pytest.raises(ValueError):
        rp.Budget(name, threads=0)
    budget = rp.Budget(name, threads=1)
    budget.close()


def test_budget_names_race_exactly_one_wins(rp, unique_name):
    name = unique_name("-budget")
    barrier = threading.Barrier(8)
    won, refused, other = [], [], []

    def attempt():
        barrier.wait(HANG)
        try:
            won.append(rp.Budget(name, threads=1))
        except ValueError:
            refused.append(1)
        except BaseException as e:  # noqa: BLE001 - reported below
            other.append(repr(e))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    try:
        assert other == []
        assert (len(won), len(refused)) == (1, 7)
    finally:
        for budget in won:
            budget.close()


def test_budget_and_pool_names_are_separate(rp, unique_name):
    """A budget's name is unique among open *budgets*: a pool may share it."""
    name = unique_name()
    pool = rp.Pool(name, threads=1, queue=4)
    try:
        budget = rp.Budget(name, threads=1)
        try:
            assert budget.name == pool.name == name
        finally:
            budget.close()
    finally:
        pool.close()


def test_section_example(rp, unique_name):
    budget = rp.Budget(unique_name("-tenants"), threads=3)
    try:
        gold = rp.Pool(unique_name("-gold"), queue=64, budget=budget, weight=3)
        free = rp.Pool(unique_name("-free"), queue=64, budget=budget, weight=1, threads=1)
        assert (gold.threads, free.threads) == (3, 1)
        assert (gold.queue_capacity, free.queue_capacity) == (64, 64)
        assert gold.submit(pow, 2, 5).result(timeout=HANG) == 32
        assert free.submit(pow, 3, 2).result(timeout=HANG) == 9
        listed = budget.pools()
        assert isinstance(listed, list)
        assert all(isinstance(p, rp.Pool) for p in listed)
        assert sorted(p.name for p in listed) == sorted([gold.name, free.name])
    finally:
        budget.close()
    assert gold.closed and free.closed


# --- pools on a budget: construction ---------------------------------------------------


def test_pool_on_budget_object_or_name(rp, make_budget, unique_name):
    budget = make_budget(threads=2)
    by_object = rp.Pool(unique_name("-obj"), queue=4, budget=budget)
    by_name = rp.Pool(unique_name("-name"), queue=4, budget=budget.name)
    assert by_object.threads == by_name.threads == 2  # None: all of the budget's threads
    assert sorted(p.name for p in budget.pools()) == sorted([by_object.name, by_name.name])
    assert by_object.submit(abs, -1).result(timeout=HANG) == 1
    assert by_name.submit(abs, -2).result(timeout=HANG) == 2
    # Sections 1 and 4 hold: the registry and rp.stats() know both pools.
    assert rp.get_pool(by_object.name) is by_object
    assert rp.get_pool(by_name.name) is by_name
    assert {by_object.name, by_name.name} <= {p.name for p in rp.pools()}
    assert {by_object.name, by_name.name} <= set(rp.stats())
    assert rp.submit(abs, -3, pool=by_name.name).result(timeout=HANG) == 3


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_cap_is_reported_as_pool_threads(rp, make_budget, make_bpool, cap):
    budget = make_budget(threads=3)
    pool = make_bpool(budget, threads=cap)
    assert pool.threads == cap
    assert pool.stats().threads == cap
    assert budget.threads == 3  # the pool's cap does not change the budget


def test_cap_more_than_budget_threads_is_value_error(rp, make_budget, unique_name):
    budget = make_budget(threads=2)
    name = unique_name()
    with pytest.raises(ValueError, match="threads"):
        rp.Pool(name, threads=3, budget=budget)
    assert budget.pools() == []
    pool = rp.Pool(name, threads=2, budget=budget)  # the name was not taken
    pool.close()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), ("1", TypeError)])
def test_cap_is_validated(rp, make_budget, unique_name, bad, error):
    budget = make_budget(threads=2)
    with pytest.raises(error, match="threads"):
        rp.Pool(unique_name(), threads=bad, budget=budget)


@pytest.mark.parametrize("weight", [1, 3, 100, 0.5, 2.5, 1e-3])
def test_weight_accepts_positive_int_or_float(rp, make_budget, make_bpool, weight):
    pool = make_bpool(make_budget(threads=1), weight=weight)
    assert pool.submit(abs, -7).result(timeout=HANG) == 7


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, float("-inf"), float("nan")])
def test_weight_bad_value(rp, make_budget, unique_name, bad):
    budget = make_budget(threads=1)
    name = unique_name()
    with pytest.raises(ValueError, match="weight"):
        rp.Pool(name, budget=budget, weight=bad)
    assert budget.pools() == []
    rp.Pool(name, budget=budget, weight=1).close()  # the name was not taken


@pytest.mark.parametrize("bad", ["3", None, [1], object(), 1j])
def test_weight_wrong_type(rp, make_budget, unique_name, bad):
    budget = make_budget(threads=1)
    with pytest.raises(TypeError, match="weight"):
        rp.Pool(unique_name(), budget=budget, weight=bad)


@pytest.mark.parametrize("weight", [1, 5, 0.25])
def test_weight_without_budget_is_accepted(rp, unique_name, weight):
    pool = rp.Pool(unique_name(), threads=1, queue=4, weight=weight)
    try:
        assert pool.threads == 1
        assert pool.submit(abs, -9).result(timeout=HANG) == 9
    finally:
        pool.close()


@pytest.mark.parametrize("bad", [3, 2.5, object(), ["budget"]])
def test_budget_argument_wrong_type(rp, unique_name, bad):
    with pytest.raises(TypeError, match="budget"):
        rp.Pool(unique_name(), budget=bad)


def test_budget_argument_unknown_or_closed_name(rp, unique_name):
    with pytest.raises((ValueError, KeyError)):
        rp.Pool(unique_name(), budget=unique_name("-no-such-budget"))
    budget = rp.Budget(unique_name("-budget"), threads=1)
    budget.close()
    with pytest.raises((ValueError, KeyError)):
        rp.Pool(unique_name(), budget=budget.name)
    # A closed Budget object cannot take pools either.
    name = unique_name()
    with pytest.raises((ValueError, RuntimeError)):
        rp.Pool(name, budget=budget)
    with pytest.raises(KeyError):
        rp.get_pool(name)


# --- budget.close and context managers ------------------------------------------------


def _two_pools_with_queued_jobs(make_budget, make_bpool, gates, record=None):
    """A 1-thread budget whose thread is held by a gate in pool `a`, with
    three jobs queued in `a` and three in `b`."""
    budget = make_budget(threads=1)
    a = make_bpool(budget, queue=8)
    b = make_bpool(budget, queue=8)
    gate = gates()
    blocker = a.submit(gate, "blocker")
    gate.wait_entered()
    body = record.append if record is not None else (lambda item: item)
    queued = [a.submit(body, ("a", i)) for i in range(3)] + [
        b.submit(body, ("b", i)) for i in range(3)
    ]
    return budget, a, b, gate, blocker, queued


def test_close_waits_for_every_pools_jobs(rp, make_budget, make_bpool, gates):
    budget, a, b, gate, blocker, queued = _two_pools_with_queued_jobs(
        make_budget, make_bpool, gates
    )
    finished = threading.Event()

    def closer():
        budget.close()
        finished.set()

    t = threading.Thread(target=closer)
    t.start()
    try:
        assert not finished.wait(0.2), "close(wait=True) returned while a job was running"
        gate.open()
        assert finished.wait(HANG)
    finally:
        gate.open()
        t.join(HANG)
    assert blocker.result(timeout=0) == "blocker"
    assert [j.result(timeout=0) for j in queued] == [("a", i) for i in range(3)] + [
        ("b", i) for i in range(3)
    ]
    assert budget.closed is True
    assert a.closed and b.closed
    assert budget.pools() == []
    for pool in (a, b):
        with pytest.raises(rp.PoolClosed):
            pool.submit(abs, -1)
        s = pool.stats()  # a closed pool's stats still work
        assert (s.queued, s.running, s.cancelled) == (0, 0, 0)
        assert_invariant(s)
        with pytest.raises(KeyError):
            rp.get_pool(pool.name)
        assert pool.name not in {p.name for p in rp.pools()}
    assert a.stats().completed == 4 and b.stats().completed == 3


def test_close_cancel_pending(rp, make_budget, make_bpool, gates):
    ran = []
    budget, a, b, gate, blocker, queued = _two_pools_with_queued_jobs(
        make_budget, make_bpool, gates, record=ran
    )
    finished = threading.Event()

    def closer():
        budget.close(wait=True, cancel_pending=True)
        finished.set()

    t = threading.Thread(target=closer)
    t.start()
    try:
        assert not finished.wait(0.2), "close(wait=True) returned while a job was running"
        gate.open()
        assert finished.wait(HANG)
    finally:
        gate.open()
        t.join(HANG)
    assert blocker.result(timeout=0) == "blocker", "the running job must finish normally"
    assert [j.status for j in queued] == ["cancelled"] * 6
    assert ran == []
    assert (a.stats().cancelled, b.stats().cancelled) == (3, 3)
    assert (a.stats().completed, b.stats().completed) == (1, 0)
    assert a.closed and b.closed and budget.closed


def test_close_without_waiting(rp, make_budget, make_bpool, gates):
    budget, a, b, gate, blocker, queued = _two_pools_with_queued_jobs(
        make_budget, make_bpool, gates
    )
    t0 = time.monotonic()
    budget.close(wait=False)
    assert time.monotonic() - t0 < 1.0
    assert budget.closed and a.closed and b.closed
    assert not blocker.done()
    with pytest.raises(rp.PoolClosed):
        a.submit(abs, -1)
    with pytest.raises(rp.PoolClosed):
        b.submit(abs, -1)
    gate.open()
    # Queued jobs still run, as Pool.close(wait=False) lets them.
    assert [j.result(timeout=HANG) for j in queued] == [("a", i) for i in range(3)] + [
        ("b", i) for i in range(3)
    ]
    assert blocker.result(timeout=HANG) == "blocker"


def test_close_without_waiting_cancel_pending(rp, make_budget, make_bpool, gates):
    budget, a, b, gate, blocker, queued = _two_pools_with_queued_jobs(
        make_budget, make_bpool, gates
    )
    t0 = time.monotonic()
    budget.close(wait=False, cancel_pending=True)
    assert time.monotonic() - t0 < 1.0
    # Pending jobs are cancelled by close itself, not later.
    assert all(j.cancelled() for j in queued)
    assert (a.stats().cancelled, b.stats().cancelled) == (3, 3)
    assert not blocker.done()
    gate.open()
    assert blocker.result(timeout=HANG) == "blocker"


def test_close_is_idempotent_and_frees_names(rp, unique_name):
    name = unique_name("-budget")
    budget = rp.Budget(name, threads=1)
    pool_name = unique_name()
    pool = rp.Pool(pool_name, budget=budget, queue=4)
    assert pool.submit(abs, -1).result(timeout=HANG) == 1
    budget.close()
    budget.close()
    budget.close(wait=False, cancel_pending=True)
    assert budget.closed and pool.closed
    with pytest.raises((ValueError, RuntimeError)):
        rp.Pool(unique_name(), budget=budget)
    again = rp.Budget(name, threads=1)
    try:
        reused = rp.Pool(pool_name, budget=again, queue=4)
        assert reused.submit(abs, -2).result(timeout=HANG) == 2
    finally:
        again.close()


def test_closing_a_pool_leaves_its_budget_open(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    a = make_bpool(budget, queue=8)
    b = make_bpool(budget, queue=8)
    gate_a, gate_b = gates(), gates()
    a.submit(gate_a)
    held_b = b.submit(gate_b, "b")
    gate_a.wait_entered()
    gate_b.wait_entered()
    queued_a = [a.submit(abs, -i) for i in range(3)]
    finished = threading.Event()

    def closer():
        a.close()
        finished.set()

    t = threading.Thread(target=closer)
    t.start()
    try:
        assert not finished.wait(0.1), "Pool.close(wait=True) returned while its job ran"
        gate_a.open()
        # Pool.close waits for the pool's own jobs only, not for the budget's.
        assert finished.wait(HANG), "closing a pool waited for another pool's job"
    finally:
        gate_a.open()
        t.join(HANG)
    assert [j.result(timeout=0) for j in queued_a] == [0, 1, 2]
    assert not held_b.done()
    assert a.closed and not b.closed and not budget.closed
    assert [p.name for p in budget.pools()] == [b.name]
    # The name is free again, on the same budget.
    again = make_bpool(budget, name=a.name)
    assert again.submit(abs, -5).result(timeout=HANG) == 5
    gate_b.open()
    assert held_b.result(timeout=HANG) == "b"


def test_sync_context_manager(rp, unique_name, gates):
    name = unique_name("-budget")
    gate = gates()
    with rp.Budget(name, threads=1) as budget:
        assert isinstance(budget, rp.Budget)
        assert budget.name == name
        pool = rp.Pool(unique_name(), budget=budget, queue=8)
        blocker = pool.submit(gate, "blocker")
        gate.wait_entered()
        queued = [pool.submit(lambda i=i: i) for i in range(3)]
        assert budget.closed is False
        gate.open()
    # Exit closes with the defaults (wait=True): everything already finished.
    assert budget.closed and pool.closed
    assert blocker.result(timeout=0) == "blocker"
    assert [j.result(timeout=0) for j in queued] == [0, 1, 2]
    with pytest.raises(rp.PoolClosed):
        pool.submit(abs, -1)
    rp.Budget(name, threads=1).close()  # the name is free


def test_sync_context_manager_closes_on_exception(rp, unique_name):
    with pytest.raises(ZeroDivisionError), rp.Budget(unique_name("-budget"), 1) as budget:
        pool = rp.Pool(unique_name(), budget=budget, queue=4)
        raise ZeroDivisionError
    assert budget.closed and pool.closed


async def test_async_context_manager(rp, unique_name):
    name = unique_name("-budget")
    async with rp.Budget(name, threads=1) as budget:
        assert isinstance(budget, rp.Budget)
        pool = rp.Pool(unique_name(), budget=budget, queue=8)
        assert await pool.submit(lambda: "async inside") == "async inside"
        queued = [pool.submit(time.sleep, 0.01) for _ in range(3)]
        assert budget.closed is False
    assert budget.closed and pool.closed
    # Queued jobs still run (the exit may or may not have waited for them).
    await asyncio.wait_for(asyncio.gather(*queued), HANG)
    assert all(j.status == "done" for j in queued)
    with pytest.raises(rp.PoolClosed):
        pool.submit(abs, -1)
    rp.Budget(name, threads=1).close()  # the name is free


async def test_pool_on_budget_async_context_manager_closes_only_the_pool(
    rp, make_budget, unique_name
):
    budget = make_budget(threads=1)
    async with rp.Pool(unique_name(), budget=budget, queue=4) as pool:
        assert await pool.submit(abs, -3) == 3
    assert pool.closed and not budget.closed
    assert budget.pools() == []


# --- budget.stats() -------------------------------------------------------------------


def test_fresh_budget_stats(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    make_bpool(budget)
    s = budget.stats()
    assert isinstance(s, rp.BudgetStats)
    assert s.name == budget.name
    assert s.threads == 2
    assert s.running == 0
    assert isinstance(s.running, int) and not isinstance(s.running, bool)
    assert isinstance(s.utilization, float)
    assert 0.0 <= s.utilization < 0.05
    assert isinstance(s.shares, dict)
    for name, share in s.shares.items():
        assert isinstance(name, str)
        assert isinstance(share, float) and not math.isnan(share)
        assert 0.0 <= share <= 1.0


def test_budget_stats_to_dict(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    pool = make_bpool(budget)
    pool.submit(time.sleep, 0.02).result(timeout=HANG)
    s = budget.stats()
    d = s.to_dict()
    assert type(d) is dict
    for field in ("name", "threads", "running", "utilization", "shares"):
        assert d[field] == getattr(s, field), field
    assert type(d["shares"]) is dict
    assert type(d["threads"]) is int and type(d["running"]) is int
    assert type(d["utilization"]) is float
    json.dumps(d)  # plain data, as a /stats endpoint serves it


def test_budget_stats_running_counts_every_pool(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    a, b = make_bpool(budget), make_bpool(budget)
    gate = gates()
    jobs = [a.submit(gate), b.submit(gate)]
    gate.wait_entered(2)
    waiting = a.submit(abs, -1)
    s = budget.stats()
    assert (s.running, s.threads) == (2, 2)
    assert (a.stats().running, b.stats().running, a.stats().queued) == (1, 1, 1)
    gate.open()
    for j in [*jobs, waiting]:
        j.result(timeout=HANG)
    assert wait_until(lambda: budget.stats().running == 0)


def test_budget_utilization_half_busy(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    pool = make_bpool(budget)
    gate = gates()
    job = pool.submit(gate)
    gate.wait_entered()
    time.sleep(0.5)  # the measured period
    u = budget.stats().utilization
    gate.open()
    job.result(timeout=HANG)
    # One of two threads busy: about one half, never near full or idle.
    assert 0.1 < u < 0.9, u


def test_budget_utilization_fully_busy(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    a, b = make_bpool(budget, threads=1), make_bpool(budget, threads=1)
    gate = gates()
    jobs = [a.submit(gate), b.submit(gate)]
    gate.wait_entered(2)
    time.sleep(0.5)  # the measured period
    u = budget.stats().utilization
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert 0.5 < u <= 1.0, u


def test_budget_shares_are_fractions_of_busy_time(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    big, small, idle = make_bpool(budget), make_bpool(budget), make_bpool(budget)
    # Run side by side on the two threads: 0.15 s and 0.05 s of busy time.
    jobs = [big.submit(time.sleep, 0.15), small.submit(time.sleep, 0.05)]
    for j in jobs:
        j.result(timeout=HANG)
    shares = budget.stats().shares
    assert 0.6 < shares[big.name] < 0.9, shares
    assert 0.1 < shares[small.name] < 0.4, shares
    assert shares.get(idle.name, 0.0) < 0.02, shares
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.05), shares
    # Busy time counts, not job counts: ten short jobs weigh less than one long.
    for _ in range(10):
        small.submit(time.sleep, 0.001).result(timeout=HANG)
    shares = budget.stats().shares
    assert shares[big.name] > shares[small.name], shares


# --- sections 1-4 and 7 for a pool on a budget ------------------------------------------


def test_queue_full_when_budget_threads_are_busy_elsewhere(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    hog = make_bpool(budget, queue=4)
    pool = make_bpool(budget, queue=2)
    gate = gates()
    held = [hog.submit(gate) for _ in range(2)]
    gate.wait_entered(2)
    # No idle budget thread: the jobs wait in the pool's own queue.
    waiting = [pool.submit(abs, -1), pool.submit(abs, -2)]
    assert pool.stats().queued == 2
    with pytest.raises(rp.QueueFull) as info:
        pool.submit(abs, -3)
    assert info.value.pool == pool.name
    assert info.value.capacity == 2
    s = pool.stats()
    assert (s.submitted, s.rejected, s.queued) == (2, 1, 2)
    assert_invariant(s)
    assert hog.stats().rejected == 0  # the other pool's queue is its own
    gate.open()
    assert [j.result(timeout=HANG) for j in waiting] == [1, 2]
    for j in held:
        j.result(timeout=HANG)


def test_jobs_start_at_once_on_idle_threads_and_never_count_against_queue(
    rp, make_budget, make_bpool, gates
):
    budget = make_budget(threads=2)
    pool = make_bpool(budget, queue=1)
    gate = gates()
    # Two idle budget threads, pool below its cap of 2: both start at once.
    running = [pool.submit(gate, i) for i in range(2)]
    gate.wait_entered(2)
    s = pool.stats()
    assert (s.running, s.queued, s.rejected) == (2, 0, 0)
    waiting = pool.submit(abs, -1)  # every thread busy: this one takes the queue slot
    with pytest.raises(rp.QueueFull):
        pool.submit(abs, -2)
    gate.open()
    assert [j.result(timeout=HANG) for j in running] == [0, 1]
    assert waiting.result(timeout=HANG) == 1


def test_queue_full_at_cap_although_a_budget_thread_is_idle(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    capped = make_bpool(budget, threads=1, queue=1)
    other = make_bpool(budget, queue=1)
    gate = gates()
    held = capped.submit(gate, "held")
    gate.wait_entered()
    waiting = capped.submit(abs, -1)  # at its cap: it waits and counts against queue
    assert capped.stats().queued == 1
    with pytest.raises(rp.QueueFull):
        capped.submit(abs, -2)
    # Work-conserving: the idle thread serves another pool at once, even while
    # the capped pool has a job waiting.
    other_gate = gates()
    other_job = other.submit(other_gate, "other")
    other_gate.wait_entered()
    assert other.stats().queued == 0
    assert waiting.status == "queued"
    other_gate.open()
    gate.open()
    assert other_job.result(timeout=HANG) == "other"
    assert held.result(timeout=HANG) == "held"
    assert waiting.result(timeout=HANG) == 1


def test_lone_pool_gets_every_budget_thread(rp, make_budget, make_bpool, gates):
    """Work-conserving: a pool with a tiny weight alone uses the whole budget."""
    budget = make_budget(threads=2)
    make_bpool(budget, weight=100)  # idle
    lone = make_bpool(budget, weight=0.01)
    gate = gates()
    jobs = [lone.submit(gate, i) for i in range(2)]
    gate.wait_entered(2)
    assert budget.stats().running == 2
    gate.open()
    assert [j.result(timeout=HANG) for j in jobs] == [0, 1]


def test_priorities_order_jobs_inside_each_pool(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=1)
    a, b = make_bpool(budget, queue=16), make_bpool(budget, queue=16)
    gate = gates()
    blocker = a.submit(gate)
    gate.wait_entered()
    order = []
    jobs = []
    for tag, pool, prios in (("a", a, [0, 5, -1, 5, 2, 0]), ("b", b, [1, 1, 9, -3, 9, 0])):
        for i, p in enumerate(prios):
            jobs.append(pool.submit(order.append, (tag, p, i), priority=p))
    gate.open()
    blocker.result(timeout=HANG)
    for j in jobs:
        j.result(timeout=HANG)
    for tag in "ab":
        seq = [(p, i) for t, p, i in order if t == tag]
        # Higher priority first, submission order among equals.
        assert seq == sorted(seq, key=lambda pi: (-pi[0], pi[1])), (tag, seq)
    assert len(order) == 12


def test_job_cancel_and_tokens(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=1)
    pool = make_bpool(budget, queue=16)
    gate = gates()
    blocker = pool.submit(gate)
    gate.wait_entered()
    ran = []
    token = rp.CancelToken()
    by_token = [pool.submit(ran.append, i, token=token) for i in range(4)]
    single = pool.submit(ran.append, "single")
    kept = pool.submit(ran.append, "kept")
    assert pool.stats().queued == 6
    assert single.cancel() is True
    assert single.status == "cancelled"
    assert pool.stats().queued == 5  # it left the queue at once
    token.cancel()
    assert token.cancelled
    assert all(j.cancelled() for j in by_token)
    with pytest.raises(concurrent.futures.CancelledError):
        by_token[0].result(timeout=0)
    assert pool.stats().cancelled == 5
    already = pool.submit(ran.append, "never", token=token)
    assert already.cancelled()
    gate.open()
    blocker.result(timeout=HANG)
    kept.result(timeout=HANG)
    assert ran == ["kept"]
    s = pool.stats()
    # Whether a job born cancelled counts in `cancelled` is not pinned down.
    assert s.cancelled in (5, 6)
    assert (s.completed, s.queued, s.running) == (2, 0, 0)
    assert_invariant(s)


async def test_await_cancelled_job_on_budget(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=1)
    pool = make_bpool(budget)
    gate = gates()
    pool.submit(gate)
    gate.wait_entered()
    job = pool.submit(abs, -1)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    gate.open()


async def test_deadlines_expire_queued_jobs(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=1)
    pool = make_bpool(budget, queue=8)
    gate = gates()
    blocker = pool.submit(gate)
    gate.wait_entered()
    ran = threading.Event()
    late = pool.submit(ran.set, timeout=0.1)
    patient = pool.submit(lambda: "patient", timeout=HANG)
    t0 = time.monotonic()
    with pytest.raises(rp.DeadlineExceeded):
        await asyncio.wait_for(late, HANG)
    assert time.monotonic() - t0 < 3.0
    assert not blocker.done(), "the deadline must fire while the budget thread is busy"
    assert late.status == "expired"
    s = pool.stats()
    assert (s.expired, s.queued, s.running) == (1, 1, 1)
    assert_invariant(s)
    gate.open()
    assert await asyncio.wait_for(patient, HANG) == "patient"
    assert not ran.is_set(), "an expired job must never run"


def test_deadline_met_runs_normally_on_budget(rp, make_budget, make_bpool):
    pool = make_bpool(make_budget(threads=1))
    job = pool.submit(time.sleep, 0.2, timeout=0.05)  # starts at once on the idle thread
    assert job.result(timeout=HANG) is None
    assert job.status == "done"


async def test_await_results_and_exceptions(rp, make_budget, make_bpool):
    pool = make_bpool(make_budget(threads=2))
    assert await pool.submit(lambda x, y: x * y, 6, 7) == 42

    def boom():
        raise KeyError("exact message")

    with pytest.raises(KeyError, match="exact message"):
        await pool.submit(boom)
    v = np.arange(8, dtype=np.float64)
    assert float(await pool.submit(rp.dot, v, v)) == float(np.dot(v, v))


def test_pool_on_budget_is_an_executor(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    pool = make_bpool(budget, queue=2)
    assert isinstance(pool, concurrent.futures.Executor)
    # map feeds the small queue as slots free instead of raising QueueFull.
    assert list(pool.map(lambda x: x * x, range(200))) == [x * x for x in range(200)]
    assert list(pool.map(pow, [2, 3], [3, 2])) == [8, 9]
    assert pool.stats().rejected == 0
    futs = [pool.submit(pow, 2, i) for i in range(2)]
    done, not_done = concurrent.futures.wait(futs, timeout=HANG)
    assert (len(done), len(not_done)) == (2, 0)
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs)) == [1, 2]
    with pool as ex:
        assert ex.submit(abs, -1).result(timeout=HANG) == 1
    assert pool.closed and not budget.closed
    other = make_bpool(budget)
    other.shutdown(wait=True)
    assert other.closed and not budget.closed


async def test_run_in_executor_on_budget_pool(rp, make_budget, make_bpool):
    pool = make_bpool(make_budget(threads=2), queue=128)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(pool, pow, 2, 5) == 32
    results = await asyncio.gather(*(loop.run_in_executor(pool, abs, -i) for i in range(50)))
    assert results == list(range(50))


def test_pool_on_budget_close_semantics(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=1)
    pool = make_bpool(budget, queue=8)
    gate = gates()
    blocker = pool.submit(gate, "b")
    gate.wait_entered()
    ran = []
    queued = [pool.submit(ran.append, i) for i in range(3)]
    pool.close(wait=False, cancel_pending=True)
    assert all(j.cancelled() for j in queued)
    assert pool.closed and not budget.closed
    with pytest.raises(rp.PoolClosed):
        pool.submit(abs, -1)
    gate.open()
    assert blocker.result(timeout=HANG) == "b"
    assert ran == []
    s = pool.stats()
    assert (s.completed, s.cancelled) == (1, 3)
    assert_invariant(s)


# --- guarantee 1: weighted shares of busy time ---------------------------------------------


@pytest.mark.parametrize(
    "light_weight, heavy_weight, light_job, heavy_job",
    [(1, 3, 0.01, 0.01), (1, 3, 0.1, 0.01), (0.5, 1.5, 0.01, 0.1)],
    ids=["same-length", "light-jobs-10x-longer", "heavy-jobs-10x-longer-float-weights"],
)
def test_saturated_pools_split_busy_time_by_weight(
    rp, make_budget, make_bpool, light_weight, heavy_weight, light_job, heavy_job
):
    budget = make_budget(threads=2)
    light = make_bpool(budget, queue=1024, weight=light_weight)
    heavy = make_bpool(budget, queue=1024, weight=heavy_weight)
    rec_light, rec_heavy = Recorder(), Recorder()
    # Enough work for each pool to fill both threads alone for 2.5 s: both
    # stay saturated through the window whatever the split.
    n_light, n_heavy = int(5.0 / light_job), int(5.0 / heavy_job)
    for i in range(max(n_light, n_heavy)):
        if i < n_light:
            light.submit(rec_light.sleep, light_job)
        if i < n_heavy:
            heavy.submit(rec_heavy.sleep, heavy_job)
    lo = time.monotonic() + 0.3
    hi = lo + 1.5
    sleep_until(hi)
    reported = budget.stats().shares
    still_queued = (light.stats().queued, heavy.stats().queued)
    busy_light, busy_heavy = rec_light.busy(lo, hi), rec_heavy.busy(lo, hi)
    light.close(wait=True, cancel_pending=True)
    heavy.close(wait=True, cancel_pending=True)

    assert min(still_queued) > 0, f"a pool ran dry: queued={still_queued}"
    total = busy_light + busy_heavy
    # Work-conserving: the two threads were busy nearly all the window.
    assert total > 0.7 * 2 * (hi - lo), f"busy {total:.2f} thread-s of {2 * (hi - lo):.2f}"
    measured = busy_heavy / total
    assert 0.6 <= measured <= 0.9, (
        f"weight {heavy_weight} pool got {measured:.2f} of the busy time "
        f"(light {busy_light:.2f}s, heavy {busy_heavy:.2f}s); expected about 0.75"
    )
    share_light, share_heavy = reported.get(light.name, 0.0), reported.get(heavy.name, 0.0)
    assert share_light + share_heavy > 0.9, reported
    ratio = share_heavy / (share_light + share_heavy)
    assert 0.6 <= ratio <= 0.9, f"budget.stats().shares = {reported}"


def test_idle_pool_does_not_bank_credit(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    early = make_bpool(budget, queue=1024)
    late = make_bpool(budget, queue=1024)
    rec_early, rec_late = Recorder(), Recorder()
    job = 0.01
    for _ in range(400):
        early.submit(rec_early.sleep, job)
    rec_early.wait_started(20)
    alone_from = time.monotonic()
    rec_early.wait_started(100)  # ~0.4 s of the early pool alone on both threads
    entered = time.monotonic()
    for _ in range(200):
        late.submit(rec_late.sleep, job)
    lo, hi = entered + 0.05, entered + 0.65
    sleep_until(hi)
    still_queued = (early.stats().queued, late.stats().queued)
    alone = rec_early.busy(alone_from, entered) / (entered - alone_from)
    busy_early, busy_late = rec_early.busy(lo, hi), rec_late.busy(lo, hi)
    early.close(wait=True, cancel_pending=True)
    late.close(wait=True, cancel_pending=True)

    assert min(still_queued) > 0, f"a pool ran dry: queued={still_queued}"
    assert alone > 1.4, f"a lone saturated pool kept only {alone:.2f} of 2 threads busy"
    # Equal weights: about half each from the moment the late pool arrives.
    # Had the late pool banked credit for its idle time, it would own both
    # threads for about as long as the early pool ran alone.
    share_early = busy_early / (busy_early + busy_late)
    assert 0.25 <= share_early <= 0.75, (
        f"early pool got {share_early:.2f} of the busy time after the late pool arrived"
    )


# --- guarantee 2: a quiet pool waits for one running job at most -------------------------


@pytest.mark.parametrize("busy_weight", [1, 4])
def test_quiet_pool_never_waits_behind_other_queues(rp, make_budget, make_bpool, busy_weight):
    budget = make_budget(threads=2)
    busy = make_bpool(budget, queue=1024, weight=busy_weight)
    quiet = make_bpool(budget, queue=8, weight=1)
    rec = Recorder()
    job = 0.02
    for _ in range(200):  # 2 s of work for both threads
        busy.submit(rec.sleep, job)
    rec.wait_started(4)
    waits = []
    for _ in range(15):
        started = []
        t0 = time.monotonic()
        quiet.submit(lambda started=started: started.append(time.monotonic())).result(HANG)
        waits.append(started[0] - t0)
    still_queued = busy.stats().queued
    busy.close(wait=True, cancel_pending=True)

    assert still_queued > 0, "the busy pool ran dry: the test measured nothing"
    waits.sort()
    # Waiting behind the busy pool's queue would take seconds; waiting for one
    # of its running 20 ms jobs to end takes at most 20 ms plus overhead.
    assert waits[len(waits) // 2] < 2 * job, f"quiet waits {[round(w, 4) for w in waits]}"
    assert waits[-1] < 5 * job, f"quiet waits {[round(w, 4) for w in waits]}"


# --- guarantee 3: a pool never occupies more threads than its cap ------------------------


def test_pools_never_exceed_their_caps(rp, make_budget, make_bpool):
    budget = make_budget(threads=3)
    two = make_bpool(budget, threads=2, queue=1024, weight=5)
    one = make_bpool(budget, threads=1, queue=1024, weight=5)
    rest = make_bpool(budget, queue=1024, weight=1)
    tracked = {two.name: Concurrency(), one.name: Concurrency(), rest.name: Concurrency()}
    jobs = []
    for _ in range(80):
        for pool in (two, one, rest):
            jobs.append(pool.submit(tracked[pool.name], 0.002))
    stop = threading.Event()
    seen = []

    def watcher():
        while not stop.is_set():
            seen.append((two.stats().running, one.stats().running, budget.stats().running))

    w = threading.Thread(target=watcher)
    w.start()
    try:
        for j in jobs:
            j.result(timeout=HANG)
    finally:
        stop.set()
        w.join(HANG)
    assert tracked[two.name].peak == 2, "a cap-2 pool with a long queue should reach its cap"
    assert tracked[one.name].peak == 1
    assert tracked[rest.name].peak <= 3
    assert all(t <= 2 and o <= 1 and b <= 3 for t, o, b in seen), max(seen)
    assert sum(c.calls for c in tracked.values()) == 240


def test_capped_pool_alone_stays_under_its_cap(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    pool = make_bpool(budget, threads=1, queue=256)
    tracked = Concurrency()
    jobs = [pool.submit(tracked, 0.001) for _ in range(100)]
    for j in jobs:
        j.result(timeout=HANG)
    assert tracked.peak == 1, "a cap-1 pool ran two jobs at once on an idle budget"


# --- guarantee 4: kernels and the budget's native threads ---------------------------------


def _calibrated_matmul(rp, pool, seconds=0.4):
    """Square operands whose matmul takes about `seconds` on `pool`."""
    rng = np.random.default_rng(3)
    n = 256
    a = rng.standard_normal((n, n))
    pool.submit(rp.matmul, a, a).result(timeout=60)  # warm up
    t0 = time.perf_counter()
    pool.submit(rp.matmul, a, a).result(timeout=60)
    once = max(time.perf_counter() - t0, 1e-6)
    n = int(min(3000, n * (seconds / once) ** (1 / 3)))
    return rng.standard_normal((n, n)), rng.standard_normal((n, n))


@pytest.mark.parametrize(
    "budget_threads, cap, hold_one",
    [(2, 1, False), (1, None, False), (2, None, True)],
    ids=["cap-1-of-2", "budget-of-1", "other-pool-holds-1-of-2"],
)
def test_kernel_splits_only_onto_idle_threads_within_cap(
    rp, make_budget, make_bpool, gates, budget_threads, cap, hold_one
):
    if usable_cores() < 2:
        pytest.skip("needs at least 2 usable cores to tell 1 from 2")
    budget = make_budget(threads=budget_threads)
    pool = make_bpool(budget, threads=cap)
    if hold_one:
        holder = make_bpool(budget, threads=1)
        gate = gates()
        holder.submit(gate)  # waits on an Event: holds a thread, burns no CPU
        gate.wait_entered()
    a, b = _calibrated_matmul(rp, pool)
    c0, w0 = time.process_time(), time.monotonic()
    out = pool.submit(rp.matmul, a, b).result(timeout=60)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    assert np.asarray(out).shape == (a.shape[0], b.shape[1])
    # One usable thread: the process burns about one core while the caller waits.
    assert cpu <= 1.3 * wall, (
        f"the kernel used {cpu:.3f}s CPU in {wall:.3f}s wall (n={a.shape[0]}): "
        "it ran on more threads than its budget and cap allow"
    )


def test_budget_runs_exactly_its_threads_however_many_pools(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    pools = [make_bpool(budget, queue=256, weight=i + 1) for i in range(5)]
    gate = gates()

    def held():
        tid = threading.get_native_id()
        gate()
        return tid

    holders = [pools[0].submit(held), pools[3].submit(held)]
    gate.wait_entered(2)
    queued = [p.submit(threading.get_native_id) for p in pools for _ in range(40)]
    assert budget.stats().running == 2
    assert sum(p.stats().running for p in pools) == 2
    assert all(j.status == "queued" for j in queued), "a job started with both threads held"
    gate.open()
    held_ids = {j.result(timeout=HANG) for j in holders}
    ids = {j.result(timeout=HANG) for j in queued}
    assert len(held_ids) == 2
    assert ids <= held_ids, f"jobs of 5 pools ran on {len(ids | held_ids)} threads, budget has 2"
    python_threads = {
        t.native_id for t in threading.enumerate() if not isinstance(t, threading._DummyThread)
    }
    assert not (ids | held_ids) & python_threads, "a Python threading.Thread ran a job"
    assert threading.get_native_id() not in ids


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_pools_on_a_budget_add_no_threads(rp, make_budget, make_bpool, gates):
    def exercise(pool):
        assert pool.submit(abs, -1, timeout=HANG).result(timeout=HANG) == 1
        jobs = [pool.submit(time.sleep, 0.001, priority=i % 3) for i in range(8)]
        for j in jobs:
            j.result(timeout=HANG)

    budget = make_budget(threads=2)
    first = make_bpool(budget)
    gate = gates()
    both = [first.submit(gate) for _ in range(2)]  # both budget threads have run
    gate.wait_entered(2)
    gate.open()
    for j in both:
        j.result(timeout=HANG)
    exercise(first)  # the budget's threads (and any timer) exist now
    before = len(os.listdir("/proc/self/task"))
    more = [make_bpool(budget, threads=1 + i % 2, weight=i + 1) for i in range(6)]
    for pool in more:
        exercise(pool)
    after = len(os.listdir("/proc/self/task"))
    # Threads of earlier tests may still be exiting, so only growth is a failure.
    assert after <= before, f"6 pools on a budget added {after - before} threads"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="looks threads up in /proc")
def test_budget_threads_end_after_close(rp, unique_name, gates):
    budget = rp.Budget(unique_name("-budget"), threads=2)
    try:
        pool = rp.Pool(unique_name(), budget=budget, queue=4)
        gate = gates()

        def held():
            tid = threading.get_native_id()
            gate()
            return tid

        jobs = [pool.submit(held) for _ in range(2)]
        gate.wait_entered(2)
        gate.open()
        tids = {j.result(timeout=HANG) for j in jobs}
        assert len(tids) == 2
        assert all(os.path.exists(f"/proc/self/task/{tid}") for tid in tids)
    finally:
        budget.close()
    # "closes its pools as Pool.close does, then its threads"
    assert wait_until(lambda: not any(os.path.exists(f"/proc/self/task/{tid}") for tid in tids)), (
        "a closed budget's threads kept running"
    )


# --- isolation between pools on one budget -------------------------------------------------


def test_failing_pool_does_not_disturb_another(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    failing = make_bpool(budget, queue=512)
    steady = make_bpool(budget, queue=512)

    def boom(i):
        raise ValueError(f"planned {i}")

    bad, good = [], []
    for i in range(200):
        bad.append(failing.submit(boom, i))
        good.append(steady.submit(lambda i=i: i * 3))
    assert [j.result(timeout=HANG) for j in good] == [i * 3 for i in range(200)]
    for i, j in enumerate(bad):
        with pytest.raises(ValueError, match=f"planned {i}$"):
            j.result(timeout=HANG)
    fs, ss = failing.stats(), steady.stats()
    assert (fs.failed, fs.completed, ss.completed, ss.failed) == (200, 0, 200, 0)
    assert_invariant(fs)
    assert_invariant(ss)
    # Both pools and the budget keep working.
    assert failing.submit(abs, -1).result(timeout=HANG) == 1
    assert steady.submit(abs, -2).result(timeout=HANG) == 2


def test_cancelled_and_expired_jobs_do_not_disturb_another_pool(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    troubled = make_bpool(budget, threads=1, queue=256)
    steady = make_bpool(budget, queue=256)
    gate = gates()
    troubled.submit(gate)
    gate.wait_entered()
    token = rp.CancelToken()
    doomed = [troubled.submit(abs, -i, token=token) for i in range(50)]
    late = [troubled.submit(abs, -i, timeout=0.05) for i in range(50)]
    good = [steady.submit(lambda i=i: i + 1) for i in range(200)]
    token.cancel()
    assert [j.result(timeout=HANG) for j in good] == list(range(1, 201))
    for j in late:
        with pytest.raises(rp.DeadlineExceeded):
            j.result(timeout=HANG)
    assert all(j.status == "cancelled" for j in doomed)
    s = troubled.stats()
    assert (s.cancelled, s.expired, s.running, s.queued) == (50, 50, 1, 0)
    assert_invariant(s)
    gate.open()
    assert troubled.submit(abs, -3).result(timeout=HANG) == 3
    assert steady.stats().completed == 200


def test_full_queue_in_one_pool_does_not_refuse_another(rp, make_budget, make_bpool, gates):
    budget = make_budget(threads=2)
    full = make_bpool(budget, threads=1, queue=1)
    free = make_bpool(budget, queue=1)
    gate = gates()
    full.submit(gate)
    gate.wait_entered()
    full.submit(abs, -1)
    with pytest.raises(rp.QueueFull):
        full.submit(abs, -2)
    assert [free.submit(abs, -i).result(timeout=HANG) for i in range(20)] == list(range(20))
    assert free.stats().rejected == 0
    gate.open()


@pytest.mark.parametrize("wait", [False, True])
def test_closing_one_pool_under_load_leaves_the_other_running(rp, make_budget, make_bpool, wait):
    budget = make_budget(threads=2)
    closing = make_bpool(budget, queue=512)
    steady = make_bpool(budget, queue=512)
    rec_closing, rec_steady = Recorder(), Recorder()
    closing_jobs = [closing.submit(rec_closing.sleep, 0.005) for _ in range(300)]
    steady_jobs = [steady.submit(rec_steady.sleep, 0.005) for _ in range(150)]
    rec_closing.wait_started(10)
    rec_steady.wait_started(10)
    closing.close(wait=wait, cancel_pending=True)
    assert closing.closed and not steady.closed and not budget.closed
    with pytest.raises(rp.PoolClosed):
        closing.submit(abs, -1)
    for j in steady_jobs:
        assert j.result(timeout=HANG) is None
    statuses = {j.status for j in closing_jobs if j.done()}
    assert statuses <= {"done", "cancelled"}
    assert wait_until(lambda: all(j.done() for j in closing_jobs))
    assert sum(j.status == "cancelled" for j in closing_jobs) > 0
    s = closing.stats()
    assert (s.queued, s.running) == (0, 0)
    assert_invariant(s)
    assert [p.name for p in budget.pools()] == [steady.name]
    assert steady.stats().completed == 150
    assert steady.submit(abs, -4).result(timeout=HANG) == 4


# --- several threads and event loops ------------------------------------------------------


def test_budget_from_several_event_loops_in_threads(rp, make_budget, make_bpool, unique_name):
    budget = make_budget(threads=2)
    shared = make_bpool(budget, queue=1024)
    barrier = threading.Barrier(4)
    results, errors = {}, []

    async def client(k):
        loop_thread = threading.get_ident()
        name = unique_name(f"-loop{k}")
        async with rp.Pool(name, queue=256, budget=budget, weight=k + 1) as own:
            out = []
            for i in range(20):
                out.append(await own.submit(lambda i=i: (k, i)))
                assert threading.get_ident() == loop_thread
            out += await asyncio.gather(*(shared.submit(lambda i=i: (k, i)) for i in range(20, 80)))
            out += await asyncio.gather(*(own.submit(lambda i=i: (k, i)) for i in range(80, 100)))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(own, pow, 2, k) == 2**k
            return out

    def run(k):
        try:
            barrier.wait(HANG)
            # debug=True makes asyncio reject a callback run from the wrong thread.
            results[k] = asyncio.run(client(k), debug=True)
        except BaseException as e:  # noqa: BLE001 - reported below with its thread
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG * 3)
    assert not any(t.is_alive() for t in threads), "a loop thread hung"
    assert errors == []
    for k in range(4):
        assert results[k] == [(k, i) for i in range(100)]
    assert shared.stats().completed == 4 * 60
    assert [p.name for p in budget.pools()] == [shared.name]


def test_pools_created_and_used_from_many_threads(rp, make_budget, unique_name):
    budget = make_budget(threads=2)
    barrier = threading.Barrier(6)
    results, errors = {}, []

    def worker(k):
        try:
            barrier.wait(HANG)
            pool = rp.Pool(unique_name(f"-th{k}"), queue=512, budget=budget, weight=k + 1)
            try:
                jobs = [pool.submit(lambda i=i: (k, i)) for i in range(300)]
                results[k] = [j.result(timeout=HANG) for j in jobs]
            finally:
                pool.close()
        except BaseException as e:  # noqa: BLE001 - reported below with its thread
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG * 3)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for k in range(6):
        assert results[k] == [(k, i) for i in range(300)]
    assert budget.pools() == []


# --- stats invariant for every pool under churn --------------------------------------------


def test_invariant_for_every_pool_under_churn(rp, make_budget, make_bpool):
    budget = make_budget(threads=2)
    pools = [
        make_bpool(budget, threads=None, queue=16, weight=1),
        make_bpool(budget, threads=1, queue=16, weight=2),
        make_bpool(budget, threads=2, queue=8, weight=0.5),
    ]
    stop = threading.Event()
    violations = []
    snapshots = [0]

    def watcher():
        while not stop.is_set():
            for pool in pools:
                s = pool.stats()
                total = s.queued + s.running + s.completed + s.failed + s.cancelled + s.expired
                if s.submitted != total:
                    violations.append(("invariant", s.to_dict()))
                # Jobs handed to idle threads may be counted as waiting for an instant.
                max_waiting = s.queue_capacity + s.threads
                if not (0 <= s.running <= s.threads and 0 <= s.queued <= max_waiting):
                    violations.append(("bounds", s.to_dict()))
            bs = budget.stats()
            if not (0 <= bs.running <= bs.threads and 0.0 <= bs.utilization <= 1.0):
                violations.append(("budget", bs.to_dict()))
            shares = list(bs.shares.values())
            if any(not 0.0 <= v <= 1.0 for v in shares) or sum(shares) > 1.01:
                violations.append(("shares", bs.to_dict()))
            snapshots[0] += 1

    def body(kind):
        if kind == "fail":
            raise ValueError("planned")
        if kind == "slow":
            time.sleep(0.0005)
        return kind

    lock = threading.Lock()
    rejected = {pool.name: 0 for pool in pools}

    def producer(seed):
        rnd = random.Random(seed)
        token = rp.CancelToken()
        mine = []
        for i in range(800):
            pool = rnd.choice(pools)
            try:
                job = pool.submit(
                    body,
                    rnd.choice(["ok", "ok", "fail", "slow"]),
                    priority=rnd.randint(-2, 2),
                    token=token,
                    timeout=rnd.choice([None, None, 0.001]),
                )
            except rp.QueueFull:
                with lock:
                    rejected[pool.name] += 1
                continue
            mine.append((pool, job))
            if rnd.random() < 0.2:
                rnd.choice(mine)[1].cancel()
            if i % 200 == 199:
                token.cancel()
                token = rp.CancelToken()
        for _, job in mine:
            with contextlib.suppress(
                ValueError, rp.DeadlineExceeded, concurrent.futures.CancelledError
            ):
                job.result(timeout=HANG)
        return mine

    w = threading.Thread(target=watcher)
    w.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            futures = [ex.submit(producer, k) for k in range(3)]
            all_jobs = [pj for f in futures for pj in f.result()]
    finally:
        stop.set()
        w.join(HANG)
    assert snapshots[0] > 10
    assert violations == [], violations[:3]
    for pool in pools:
        s = pool.stats()
        assert_invariant(s)
        mine = [job for p, job in all_jobs if p is pool]
        assert (s.queued, s.running) == (0, 0)
        assert s.submitted == len(mine)
        assert s.rejected == rejected[pool.name]
        by_status = {}
        for job in mine:
            by_status[job.status] = by_status.get(job.status, 0) + 1
        assert by_status.get("done", 0) == s.completed
        assert by_status.get("failed", 0) == s.failed
        assert by_status.get("cancelled", 0) == s.cancelled
        assert by_status.get("expired", 0) == s.expired
    assert wait_until(lambda: budget.stats().running == 0)


# --- rp.OversubscriptionWarning ---------------------------------------------------------------

_WARNING_PROBE = """
import json, os, warnings
import raptors as rp

cores = len(os.sched_getaffinity(0))
steps = []
with warnings.catch_warnings(record=True) as caught:
    # Python's own once-per-location filter must not be what limits it.
    warnings.simplefilter("always")

    def seen():
        return [w for w in caught if issubclass(w.category, rp.OversubscriptionWarning)]

    def step(label):
        steps.append([label, len(seen())])

{body}
print(json.dumps({{
    "cores": cores,
    "steps": steps,
    "messages": [str(w.message) for w in seen()],
    "runtime_warning": [issubclass(w.category, RuntimeWarning) for w in seen()],
}}))
"""


def _probe_warnings(rp, body: str) -> dict:
    code = _WARNING_PROBE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    return json.loads(_run_python(rp, code, drop=("RAPTORS_THREADS",)).splitlines()[-1])


def _names_counts(message: str, *counts: int) -> bool:
    return all(re.search(rf"(?<!\d){n}(?!\d)", message) for n in counts)


def test_oversubscription_warning_when_a_budget_crosses_the_line(rp):
    out = _probe_warnings(
        rp,
        """
        own = rp.Pool("own", threads=cores, queue=4)
        step("pool at the core count")
        budget = rp.Budget("shared", threads=1)
        step("budget crosses")
        extra = rp.Pool("extra", threads=2, queue=4)
        step("still over")
        for item in (extra, budget, own):
            item.close()
        again = rp.Budget("again", threads=cores + 1)
        step("crosses again")
        again.close()
        """,
    )
    cores = out["cores"]
    assert out["steps"] == [
        ["pool at the core count", 0],
        ["budget crosses", 1],
        ["still over", 1],
        ["crosses again", 1],
    ], out
    assert out["runtime_warning"] == [True]
    # The warning names the counts: cores + 1 threads for `cores` usable cores.
    assert _names_counts(out["messages"][0], cores + 1, cores), out["messages"]


def test_oversubscription_warning_when_a_pool_crosses_the_line(rp):
    out = _probe_warnings(
        rp,
        """
        gone = rp.Pool("gone", threads=cores, queue=4)
        gone.close()
        budget = rp.Budget("shared", threads=cores)
        step("closed pools do not count")
        tenants = [rp.Pool(f"tenant{i}", budget=budget, queue=4) for i in range(4)]
        for t in tenants:
            t.submit(abs, -1).result(timeout=30)
        step("pools on a budget own no threads")
        crosser = rp.Pool("crosser", threads=1, queue=4)
        step("pool crosses")
        more = rp.Budget("more", threads=2)
        step("once per process")
        for item in (crosser, more, budget):
            item.close()
        """,
    )
    cores = out["cores"]
    assert out["steps"] == [
        ["closed pools do not count", 0],
        ["pools on a budget own no threads", 0],
        ["pool crosses", 1],
        ["once per process", 1],
    ], out
    assert out["runtime_warning"] == [True]
    assert _names_counts(out["messages"][0], cores + 1, cores), out["messages"]


def test_no_oversubscription_warning_within_the_cores(rp):
    out = _probe_warnings(
        rp,
        """
        budget = rp.Budget("all", threads=cores)
        pools = [rp.Pool(f"p{i}", budget=budget, queue=4, weight=i + 1) for i in range(8)]
        for p in pools:
            p.submit(abs, -1).result(timeout=30)
        step("a budget of every core with many pools")
        budget.close()
        """,
    )
    assert out["steps"] == [["a budget of every core with many pools", 0]], out
