"""Submitting jobs (contract section 2): queue bound and QueueFull, idle
workers, priorities, arguments, reserved keywords, deadlines, kernels."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import numpy as np
import pytest
from conftest import HANG, assert_invariant, wait_until

pytestmark = pytest.mark.timeout(60)


# --- queue bound -----------------------------------------------------------------


def test_queue_full_with_counts(rp, saturated):
    pool, gate, blocker = saturated(queue=3)
    queued = [pool.submit(lambda i=i: i) for i in range(3)]
    assert all(j.status == "queued" for j in queued)

    t0 = time.monotonic()
    with pytest.raises(rp.QueueFull) as info:
        pool.submit(lambda: "rejected")
    assert time.monotonic() - t0 < 1.0, "QueueFull must be raised at once, not after waiting"
    err = info.value
    assert isinstance(err, rp.RaptorsError)
    assert err.pool == pool.name
    assert err.capacity == 3

    s = pool.stats()
    assert s.rejected == 1
    assert s.submitted == 4, "a rejected submit must not count as submitted"
    assert (s.queued, s.running) == (3, 1)
    assert s.max_queued == 3
    assert_invariant(s)

    # Every further attempt is refused and counted too.
    for _ in range(4):
        with pytest.raises(rp.QueueFull):
            pool.submit(lambda: None, priority=100)
    assert pool.stats().rejected == 5
    assert pool.stats().submitted == 4

    gate.open()
    assert [j.result(timeout=HANG) for j in queued] == [0, 1, 2]
    assert blocker.result(timeout=HANG) == "blocker"
    s = pool.stats()
    assert (s.submitted, s.completed, s.rejected, s.queued, s.running) == (4, 4, 5, 0, 0)
    assert_invariant(s)


def test_queue_frees_when_a_job_starts(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=1)
    g1, g2 = gates(), gates()
    first = pool.submit(g1, 1)
    g1.wait_entered()
    second = pool.submit(g2, 2)  # waits
    with pytest.raises(rp.QueueFull):
        pool.submit(lambda: None)
    g1.open()
    g2.wait_entered()  # `second` left the queue and runs now
    third = pool.submit(lambda: 3)  # the queue slot is free again
    g2.open()
    assert [j.result(timeout=HANG) for j in (first, second, third)] == [1, 2, 3]


def test_idle_workers_do_not_count_against_queue(rp, make_pool, gates):
    pool = make_pool(threads=2, queue=1)
    gate = gates()
    # Both workers are idle: back-to-back submits start at once and never
    # occupy the single queue slot, however quickly they arrive.
    a = pool.submit(gate, "a")
    b = pool.submit(gate, "b")
    gate.wait_entered(2)
    c = pool.submit(lambda: "c")  # the one queue slot
    with pytest.raises(rp.QueueFull) as info:
        pool.submit(lambda: "d")
    assert info.value.capacity == 1
    s = pool.stats()
    assert (s.running, s.queued, s.submitted, s.rejected) == (2, 1, 3, 1)
    gate.open()
    assert [j.result(timeout=HANG) for j in (a, b, c)] == ["a", "b", "c"]


def test_idle_single_worker_then_one_queue_slot(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=1)
    gate = gates()
    a = pool.submit(gate, "a")  # idle worker: starts, does not take the slot
    b = pool.submit(lambda: "b")  # submitted immediately: takes the slot
    with pytest.raises(rp.QueueFull):
        pool.submit(lambda: "c")
    gate.open()
    assert (a.result(timeout=HANG), b.result(timeout=HANG)) == ("a", "b")


def test_submit_returns_at_once_with_a_job(rp, saturated):
    pool, gate, _ = saturated(queue=64)
    t0 = time.monotonic()
    jobs = [pool.submit(time.sleep, 0) for _ in range(64)]
    assert time.monotonic() - t0 < 1.0
    assert all(isinstance(j, rp.Job) for j in jobs)
    assert all(not j.done() for j in jobs)
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)


# --- priorities ---------------------------------------------------------------------


def test_priority_order_on_one_thread(rp, saturated):
    pool, gate, _ = saturated(queue=32)
    order = []
    plan = [0, 5, 1, 5, 0, 10, 1, -3, 10, 0, 5, -3]
    jobs = [pool.submit(order.append, (p, seq), priority=p) for seq, p in enumerate(plan)]
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    expected = sorted(((p, seq) for seq, p in enumerate(plan)), key=lambda t: (-t[0], t[1]))
    assert order == expected


def test_equal_priority_is_fifo(rp, saturated):
    pool, gate, _ = saturated(queue=200)
    order = []
    jobs = [pool.submit(order.append, i) for i in range(200)]
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert order == list(range(200))


def test_priority_applies_to_later_arrivals(rp, saturated):
    """A high-priority job submitted last still overtakes everything waiting."""
    pool, gate, _ = saturated(queue=16)
    order = []
    jobs = [pool.submit(order.append, i) for i in range(10)]
    jobs.append(pool.submit(order.append, "urgent", priority=1))
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert order[0] == "urgent"
    assert order[1:] == list(range(10))


def test_large_and_negative_priorities(rp, saturated):
    pool, gate, _ = saturated(queue=8)
    order = []
    big = 2**62
    jobs = [
        pool.submit(order.append, "low", priority=-big),
        pool.submit(order.append, "mid", priority=0),
        pool.submit(order.append, "high", priority=big),
    ]
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert order == ["high", "mid", "low"]


@pytest.mark.parametrize("bad", ["high", 1.5, [1]])
def test_priority_must_be_int(rp, make_pool, bad):
    pool = make_pool(threads=1)
    with pytest.raises(TypeError, match="priority"):
        pool.submit(lambda: None, priority=bad)
    assert pool.stats().submitted == 0


# --- arguments ------------------------------------------------------------------------


def test_args_and_kwargs_pass_through(rp, make_pool):
    pool = make_pool(threads=1)

    def fn(*args, **kwargs):
        return args, kwargs

    marker = object()
    args, kwargs = pool.submit(fn, 1, "two", marker, x=3, y=marker).result(timeout=HANG)
    assert args == (1, "two", marker)
    assert args[2] is marker
    assert kwargs == {"x": 3, "y": marker}


def test_result_object_is_returned_unchanged(rp, make_pool):
    pool = make_pool(threads=1)
    payload = {"big": list(range(1000))}
    assert pool.submit(lambda: payload).result(timeout=HANG) is payload
    assert pool.submit(lambda: None).result(timeout=HANG) is None


def test_reserved_keywords_are_not_passed_to_fn(rp, make_pool):
    pool = make_pool(threads=1)

    def fn(**kwargs):
        return kwargs

    token = rp.CancelToken()
    got = pool.submit(fn, priority=3, token=token, timeout=30.0, other=1).result(timeout=HANG)
    assert got == {"other": 1}


def test_functools_partial_passes_reserved_names(rp, make_pool):
    pool = make_pool(threads=1)

    def fn(*, priority, token, timeout, pool):
        return priority, token, timeout, pool

    wrapped = functools.partial(fn, priority="p", token="t", timeout="to", pool="pl")
    assert pool.submit(wrapped).result(timeout=HANG) == ("p", "t", "to", "pl")
    assert rp.submit(wrapped, pool=pool).result(timeout=HANG) == ("p", "t", "to", "pl")


def test_rp_submit_reserves_pool_keyword(rp, make_pool):
    pool = make_pool(threads=1)

    def fn(**kwargs):
        return kwargs

    assert rp.submit(fn, pool=pool, a=1).result(timeout=HANG) == {"a": 1}


def test_builtin_and_bound_method_callables(rp, make_pool):
    pool = make_pool(threads=1)
    items = [3, 1, 2]
    assert pool.submit(sorted, items).result(timeout=HANG) == [1, 2, 3]
    assert pool.submit("-".join, ["a", "b"]).result(timeout=HANG) == "a-b"
    assert pool.submit(pow, 2, 10).result(timeout=HANG) == 1024


def test_non_callable_is_rejected(rp, make_pool):
    """A TypeError at submit (preferred) or from the job; never a crash or a hang."""
    pool = make_pool(threads=1)
    try:
        job = pool.submit(42)
    except TypeError:
        return
    with pytest.raises(TypeError):
        job.result(timeout=HANG)


# --- kernels as jobs --------------------------------------------------------------


async def test_submit_kernel_dot(rp, make_pool):
    pool = make_pool(threads=2)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    got = await pool.submit(rp.dot, a, b)
    expected = np.dot(a, b)
    assert type(got) is type(expected)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


async def test_submit_kernel_matmul(rp, make_pool):
    pool = make_pool(threads=2)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 48)), rng.standard_normal((48, 32))
    got = np.asarray(await pool.submit(rp.matmul, a, b))
    np.testing.assert_allclose(got, a @ b, rtol=1e-10, atol=1e-10)


async def test_rp_submit_kernel_on_default_pool(rp):
    a = np.arange(10, dtype=np.float64)
    assert await rp.submit(rp.sum, a) == pytest.approx(45.0)


# --- deadlines -------------------------------------------------------------------------


async def test_deadline_expires_queued_job_promptly(rp, saturated):
    pool, gate, blocker = saturated(queue=4)
    ran = threading.Event()
    t0 = time.monotonic()
    job = pool.submit(ran.set, timeout=0.3)
    assert job.status == "queued"
    with pytest.raises(rp.DeadlineExceeded) as info:
        await asyncio.wait_for(job, HANG)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, rp.RaptorsError)
    assert 0.25 <= elapsed < 3.0, f"expired after {elapsed:.3f}s, deadline 0.3s"
    assert not blocker.done(), "the deadline must fire while the blocker still runs"
    assert job.status == "expired"
    assert job.done()
    assert not job.running()
    with pytest.raises(rp.DeadlineExceeded):
        job.result(timeout=0)
    assert isinstance(job.exception(timeout=0), rp.DeadlineExceeded)
    s = pool.stats()
    assert (s.expired, s.queued, s.running) == (1, 0, 1)
    assert_invariant(s)
    gate.open()
    blocker.result(timeout=HANG)
    await asyncio.sleep(0.05)
    assert not ran.is_set(), "an expired job must never run"


def test_deadline_expired_sync_result(rp, saturated):
    pool, _, _ = saturated(queue=4)
    job = pool.submit(lambda: "late", timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(rp.DeadlineExceeded):
        job.result(timeout=HANG)
    assert time.monotonic() - t0 < 3.0
    assert job.status == "expired"


def test_deadline_frees_the_queue_slot(rp, saturated):
    pool, gate, _ = saturated(queue=1)
    job = pool.submit(lambda: None, timeout=0.1)
    assert wait_until(lambda: job.status == "expired", timeout=HANG)
    assert pool.stats().queued == 0
    other = pool.submit(lambda: "fits")  # the slot is free
    gate.open()
    assert other.result(timeout=HANG) == "fits"


def test_deadline_met_runs_normally(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(time.sleep, 0.3, timeout=0.1)
    # Started at once on the idle worker: the deadline only limits the wait.
    assert job.result(timeout=HANG) is None
    assert job.status == "done"
    assert pool.stats().expired == 0


def test_deadline_only_expires_jobs_that_wait(rp, saturated):
    pool, gate, _ = saturated(queue=8)
    short = pool.submit(lambda: "short", timeout=0.1)
    long = pool.submit(lambda: "long", timeout=HANG)
    none = pool.submit(lambda: "none")
    time.sleep(0.4)
    gate.open()
    with pytest.raises(rp.DeadlineExceeded):
        short.result(timeout=HANG)
    assert long.result(timeout=HANG) == "long"
    assert none.result(timeout=HANG) == "none"


def test_deadline_exceeded_hierarchy(rp):
    assert issubclass(rp.DeadlineExceeded, TimeoutError)
    assert issubclass(rp.DeadlineExceeded, rp.RaptorsError)


@pytest.mark.parametrize("bad", [float("nan")])
def test_bad_timeout_value(rp, make_pool, bad):
    pool = make_pool(threads=1)
    with pytest.raises(ValueError, match="timeout"):
        pool.submit(lambda: None, timeout=bad)


def test_bad_timeout_type(rp, make_pool):
    pool = make_pool(threads=1)
    with pytest.raises(TypeError, match="timeout"):
        pool.submit(lambda: None, timeout="soon")


def test_bad_token_type(rp, make_pool):
    pool = make_pool(threads=1)
    with pytest.raises(TypeError, match="token"):
        pool.submit(lambda: None, token="not a token")
