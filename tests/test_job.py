"""rp.Job (contract section 3): awaiting, the Future API, statuses through
the lifecycle, done callbacks and exception propagation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading
import time
import traceback
import weakref

import pytest
from conftest import HANG, wait_until

pytestmark = pytest.mark.timeout(60)


class JobError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def raising_job_body(captured, message="boom", code=7):
    err = JobError(message, code)
    captured.append(err)
    raise err


# --- awaiting and results -------------------------------------------------------------


async def test_await_returns_result(rp, make_pool):
    pool = make_pool(threads=2)
    job = pool.submit(lambda a, b: a + b, 40, 2)
    assert isinstance(job, rp.Job)
    assert await job == 42
    # Awaiting a finished job again gives the same result.
    assert await job == 42


async def test_await_many_jobs_concurrently(rp, make_pool):
    pool = make_pool(threads=2, queue=256)
    jobs = [pool.submit(pow, i, 2) for i in range(200)]
    assert await asyncio.gather(*jobs) == [i * i for i in range(200)]


async def test_two_awaiters_of_one_job(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "shared")
    gate.wait_entered()

    async def waiter():
        return await job

    t1, t2 = asyncio.create_task(waiter()), asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    gate.open()
    assert await asyncio.wait_for(asyncio.gather(t1, t2), HANG) == ["shared", "shared"]


def test_result_blocks_until_done(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "value")
    gate.open_later(0.2)
    t0 = time.monotonic()
    assert job.result() == "value"
    assert time.monotonic() - t0 >= 0.1


def test_result_timeout_raises_timeout_error(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "late")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        job.result(timeout=0.2)
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed < 3.0
    # A result timeout says nothing about the job: it is still alive.
    assert not job.done()
    assert not job.cancelled()
    with pytest.raises(concurrent.futures.TimeoutError):
        job.exception(timeout=0.05)
    gate.open()
    assert job.result(timeout=HANG) == "late"


def test_result_from_other_threads(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, 99)
    results = []

    def reader():
        results.append(job.result(timeout=HANG))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.open()
    for t in threads:
        t.join(HANG)
    assert results == [99] * 8


def test_exception_none_on_success(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: 1)
    assert job.exception(timeout=HANG) is None
    assert job.result() == 1


def test_exception_returns_the_raised_exception(rp, make_pool):
    pool = make_pool(threads=1)
    captured = []
    job = pool.submit(raising_job_body, captured)
    exc = job.exception(timeout=HANG)
    assert exc is captured[0]
    assert job.status == "failed"
    assert job.done() and not job.cancelled() and not job.running()
    with pytest.raises(JobError) as info:
        job.result()
    assert info.value is captured[0]


# --- status lifecycle -------------------------------------------------------------------


def test_status_lifecycle_done(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=4)
    first, second = gates(), gates()
    blocker = pool.submit(first, "first")
    first.wait_entered()
    job = pool.submit(second, "second")

    assert job.status == "queued"
    assert (job.done(), job.running(), job.cancelled()) == (False, False, False)
    assert blocker.status == "running"
    assert blocker.running()

    first.open()
    second.wait_entered()
    assert job.status == "running"
    assert (job.done(), job.running(), job.cancelled()) == (False, True, False)

    second.open()
    assert job.result(timeout=HANG) == "second"
    assert job.status == "done"
    assert (job.done(), job.running(), job.cancelled()) == (True, False, False)
    assert blocker.status == "done"


def test_status_lifecycle_failed(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()

    def body():
        gate()
        raise KeyError("missing")

    job = pool.submit(body)
    gate.wait_entered()
    assert job.status == "running"
    gate.open()
    with pytest.raises(KeyError):
        job.result(timeout=HANG)
    assert job.status == "failed"
    assert (job.done(), job.running(), job.cancelled()) == (True, False, False)


def test_status_is_a_plain_string(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: None)
    job.result(timeout=HANG)
    assert isinstance(job.status, str)
    assert job.status in {"queued", "running", "done", "failed", "cancelled", "expired"}


# --- done callbacks ------------------------------------------------------------------


def test_done_callback_called_with_the_job(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "x")
    seen = []
    called = threading.Event()

    def cb(j):
        seen.append((j, j.done(), j.status))
        called.set()

    job.add_done_callback(cb)
    time.sleep(0.05)
    assert seen == [], "callback ran before the job finished"
    gate.open()
    assert called.wait(HANG)
    time.sleep(0.05)
    assert len(seen) == 1, "callback must run exactly once"
    got, done, status = seen[0]
    assert got is job
    assert done is True
    assert status == "done"


def test_done_callback_added_after_completion_runs_at_once(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: 3)
    job.result(timeout=HANG)
    seen = []
    job.add_done_callback(seen.append)
    assert seen == [job]  # synchronously, as concurrent.futures does


def test_done_callbacks_in_order_and_for_failures(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(lambda: (gate(), 1 / 0))
    calls = []
    done = threading.Event()
    job.add_done_callback(lambda j: calls.append("first"))
    job.add_done_callback(lambda j: calls.append("second"))
    job.add_done_callback(lambda j: done.set())
    gate.open()
    assert done.wait(HANG)
    assert calls == ["first", "second"]
    assert isinstance(job.exception(), ZeroDivisionError)


def test_done_callback_on_cancel(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    seen = []
    job.add_done_callback(seen.append)
    assert job.cancel()
    assert wait_until(lambda: seen == [job], timeout=HANG)
    assert seen[0].cancelled()


# Reporting a callback's error through the unraisable hook is as valid as logging it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_done_callback_exception_does_not_break_the_job(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: "fine")
    job.result(timeout=HANG)
    later = []

    def bad(_):
        raise RuntimeError("callback failure")

    # concurrent.futures logs and swallows callback errors.
    job.add_done_callback(bad)
    job.add_done_callback(later.append)
    assert later == [job]
    assert job.result() == "fine"


# --- exceptions from fn -------------------------------------------------------------------


async def test_exception_reaches_awaiter_unchanged(rp, make_pool):
    pool = make_pool(threads=1)
    captured = []
    job = pool.submit(raising_job_body, captured, "bad input", 42)
    with pytest.raises(JobError) as info:
        await job
    err = info.value
    assert err is captured[0]
    assert type(err) is JobError
    assert str(err) == "bad input"
    assert err.code == 42
    frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
    assert "raising_job_body" in frames, f"fn's frame missing from traceback: {frames}"


def test_exception_traceback_in_result(rp, make_pool):
    pool = make_pool(threads=1)

    def deep_inner():
        raise ValueError("from the inner frame")

    def outer():
        deep_inner()

    job = pool.submit(outer)
    with pytest.raises(ValueError, match="from the inner frame") as info:
        job.result(timeout=HANG)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "outer" in frames and "deep_inner" in frames, frames


async def test_exception_chaining_is_kept(rp, make_pool):
    pool = make_pool(threads=1)

    def body():
        try:
            {}["k"]
        except KeyError as e:
            raise RuntimeError("wrapped") from e

    with pytest.raises(RuntimeError) as info:
        await pool.submit(body)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "exc_type", [ValueError, TypeError, KeyError, ArithmeticError, OSError, NotImplementedError]
)
async def test_builtin_exception_types_kept(rp, make_pool, exc_type):
    pool = make_pool(threads=1)

    def body():
        raise exc_type("msg")

    with pytest.raises(exc_type):
        await pool.submit(body)


def test_system_exit_in_fn_does_not_kill_worker(rp, make_pool):
    pool = make_pool(threads=1)

    def body():
        raise SystemExit(3)

    job = pool.submit(body)
    # As in ThreadPoolExecutor, a BaseException from fn ends the job failed.
    with pytest.raises(SystemExit):
        job.result(timeout=HANG)
    assert job.done()
    # The only worker survived.
    assert pool.submit(lambda: "alive").result(timeout=HANG) == "alive"


async def test_failing_jobs_leave_the_pool_working(rp, make_pool):
    pool = make_pool(threads=1, queue=64)
    jobs = [pool.submit(lambda i=i: 1 / (i % 2)) for i in range(40)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert sum(isinstance(r, ZeroDivisionError) for r in results) == 20
    assert sum(r == 1.0 for r in results if not isinstance(r, BaseException)) == 20
    s = pool.stats()
    assert (s.completed, s.failed) == (20, 20)


class _Payload:
    pass


def test_result_of_a_job_nobody_holds_is_freed(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    pool.submit(gate)
    gate.wait_entered()
    refs = []

    def make():
        obj = _Payload()
        refs.append(weakref.ref(obj))
        return obj

    for _ in range(5):
        pool.submit(make)  # the job object is dropped at once
    gate.open()
    assert wait_until(lambda: pool.stats().completed == 6, timeout=HANG)
    assert wait_until(lambda: (gc.collect(), all(r() is None for r in refs))[1], timeout=HANG)
    assert len(refs) == 5


def test_awaited_in_one_loop_then_another(rp, make_pool):
    """A job is not tied to the first loop that awaited it."""
    pool = make_pool(threads=1)
    job = pool.submit(lambda: "again")
    assert asyncio.run(_await(job)) == "again"
    assert asyncio.run(_await(job)) == "again"
    pending = pool.submit(time.sleep, 0.05)
    assert asyncio.run(_await(pending)) is None
    assert asyncio.run(_await(pending)) is None


async def _await(job):
    return await asyncio.wait_for(job, HANG)


def test_submit_from_inside_a_job(rp, make_pool):
    pool = make_pool(threads=1, queue=8)

    def outer():
        return pool.submit(lambda: "inner")

    inner = pool.submit(outer).result(timeout=HANG)
    assert isinstance(inner, rp.Job)
    assert inner.result(timeout=HANG) == "inner"


def test_done_callback_may_submit_and_read_stats(rp, make_pool):
    pool = make_pool(threads=1, queue=8)
    chained = []
    done = threading.Event()

    def cb(job):
        pool.stats()
        chained.append(pool.submit(lambda: job.result() + 1))
        done.set()

    first = pool.submit(lambda: 1)
    first.add_done_callback(cb)
    assert done.wait(HANG)
    assert chained[0].result(timeout=HANG) == 2


def test_arguments_are_released_after_the_job(rp, make_pool):
    import numpy as np

    pool = make_pool(threads=2, queue=256)
    a = np.ones(1000)
    obj = object()
    base_a, base_obj = sys.getrefcount(a), sys.getrefcount(obj)
    jobs = [pool.submit(rp.sum, a) for _ in range(100)]
    jobs += [pool.submit(lambda x: None, obj) for _ in range(100)]
    for j in jobs:
        j.result(timeout=HANG)
    del jobs, j
    # A native job may hand its buffer release to a later moment holding the GIL.
    assert wait_until(lambda: (gc.collect(), sys.getrefcount(a) == base_a)[1], timeout=HANG), (
        f"array refcount {sys.getrefcount(a)} != {base_a}: buffer views leaked"
    )
    assert wait_until(lambda: (gc.collect(), sys.getrefcount(obj) == base_obj)[1], timeout=HANG)


def _boom():
    raise ValueError("boom")


def test_failed_job_held_in_a_frame_is_collected(make_pool):
    # The exception's traceback holds the frame that holds the job: a cycle
    # only the garbage collector can break, so Job must take part in it.
    pool = make_pool(threads=1)

    def run():
        job = pool.submit(_boom)
        try:
            job.result(timeout=HANG)
        except ValueError:
            pass
        return weakref.ref(job)

    ref = run()
    gc.collect()
    assert ref() is None


def test_concurrent_futures_wait_does_not_keep_jobs_alive(make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(abs, -1)
    concurrent.futures.wait([job], timeout=HANG)
    ref = weakref.ref(job)
    del job
    # The ending thread lets go of the job just after it has woken the waiters.
    assert wait_until(lambda: (gc.collect(), ref() is None)[1], timeout=HANG)


def test_remove_done_callback_keeps_callbacks_when_comparison_raises(make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "held")
    gate.wait_entered(1)

    class Touchy:
        def __eq__(self, other):
            raise RuntimeError("no comparing me")

        def __call__(self, job):
            calls.append("touchy")

    calls = []
    job.add_done_callback(Touchy())
    job.add_done_callback(lambda j: calls.append("plain"))
    with pytest.raises(RuntimeError, match="no comparing"):
        job.remove_done_callback(print)
    gate.open()
    job.result(timeout=HANG)
    wait_until(lambda: len(calls) == 2)
    assert sorted(calls) == ["plain", "touchy"]


async def test_unreferenced_job_still_delivers_after_gc(make_pool, gates):
    # Nobody holds the job, only its callback: the collector must not take it
    # while the native job it stands for is pending.
    pool = make_pool(threads=1)
    gate = gates()
    pool.submit(gate, "held")
    gate.wait_entered(1)
    done = asyncio.get_running_loop().create_future()
    pool.submit(abs, -3).add_done_callback(lambda job: done.set_result(job.result()))
    gc.collect()
    gate.open()
    assert await asyncio.wait_for(done, HANG) == 3
