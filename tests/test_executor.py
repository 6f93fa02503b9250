"""Ecosystem fit (contract section 7): rp.Pool as a concurrent.futures.Executor,
rp.Job wherever a Future is accepted, asyncio combinators."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time

import pytest
from conftest import HANG

pytestmark = pytest.mark.timeout(60)


def test_pool_is_an_executor(rp, make_pool):
    pool = make_pool(threads=1)
    assert isinstance(pool, concurrent.futures.Executor)


def code_written_for_thread_pool_executor(executor):
    """Ordinary Executor client code, unaware of Raptors."""
    with executor as ex:
        futs = [ex.submit(pow, 2, i) for i in range(10)]
        mapped = list(ex.map(pow, [3, 4], [2, 2]))
        done, not_done = concurrent.futures.wait(futs, timeout=HANG)
    return [f.result() for f in futs], mapped, len(done), len(not_done)


def test_code_written_for_thread_pool_executor(rp, unique_name):
    expected = code_written_for_thread_pool_executor(concurrent.futures.ThreadPoolExecutor(2))
    pool = rp.Pool(unique_name(), threads=2)
    assert code_written_for_thread_pool_executor(pool) == expected
    assert pool.closed


async def test_run_in_executor(rp, make_pool):
    pool = make_pool(threads=2)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(pool, pow, 2, 5) == 32
    assert await loop.run_in_executor(pool, functools.partial(divmod, 17), 5) == (3, 2)
    with pytest.raises(ZeroDivisionError):
        await loop.run_in_executor(pool, divmod, 1, 0)


async def test_run_in_executor_many(rp, make_pool):
    pool = make_pool(threads=2, queue=128)
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(pool, abs, -i) for i in range(100)))
    assert results == list(range(100))


async def test_run_in_executor_cancel_queued(rp, saturated):
    pool, gate, _ = saturated()
    loop = asyncio.get_running_loop()
    ran = threading.Event()
    fut = loop.run_in_executor(pool, ran.set)
    await asyncio.sleep(0.01)
    fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    for _ in range(200):  # the cancel reaches the job through loop callbacks
        if pool.stats().cancelled == 1:
            break
        await asyncio.sleep(0.01)
    assert pool.stats().cancelled == 1
    gate.open()
    await asyncio.sleep(0.05)
    assert not ran.is_set()


# --- map -----------------------------------------------------------------------------


def test_map_order_and_multiple_iterables(rp, make_pool):
    pool = make_pool(threads=2, queue=64)
    assert list(pool.map(lambda x: x * x, range(50))) == [x * x for x in range(50)]
    assert list(pool.map(pow, [2, 3, 4], [3, 2, 1])) == [8, 9, 4]
    # Shortest iterable wins, as builtins.map does.
    assert list(pool.map(pow, [2, 3, 4], [1])) == [2]
    assert list(pool.map(abs, [])) == []


def test_map_results_in_order_despite_finishing_order(rp, make_pool):
    pool = make_pool(threads=2, queue=16)

    def slow_first(i):
        time.sleep(0.05 if i == 0 else 0)
        return i

    assert list(pool.map(slow_first, range(8))) == list(range(8))


def test_map_blocks_instead_of_raising_queue_full(rp, make_pool):
    pool = make_pool(threads=1, queue=2)
    out = list(pool.map(lambda x: x + 1, range(500)))
    assert out == list(range(1, 501))


def test_map_while_pool_saturated(rp, saturated):
    pool, gate, _ = saturated(queue=2)
    gate.open_later(0.2)
    t0 = time.monotonic()
    out = list(pool.map(lambda x: -x, range(50)))
    assert out == [-x for x in range(50)]
    assert time.monotonic() - t0 >= 0.1  # it waited for the gate


def test_map_waiting_for_slots_is_not_counted_as_rejections(rp, saturated):
    """`rejected` counts submits refused with QueueFull; map refuses nothing, it waits.

    Load-shedding dashboards and alerts read `rejected`: a batch map must not
    make them report refused work that was in fact all accepted.
    """
    pool, gate, _ = saturated(queue=2)
    gate.open_later(0.2)
    assert list(pool.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    s = pool.stats()
    assert s.rejected == 0, f"map counted {s.rejected} rejections while waiting for slots"
    assert s.submitted == 21


def test_map_feeds_lazily_from_a_generator(rp, make_pool):
    pool = make_pool(threads=1, queue=4)
    pulled = []

    def source():
        for i in range(200):
            pulled.append(i)
            yield i

    assert list(pool.map(lambda x: 2 * x, source())) == [2 * i for i in range(200)]
    assert len(pulled) == 200


def test_map_timeout(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    t0 = time.monotonic()
    it = pool.map(gate, range(3), timeout=0.2)
    with pytest.raises(TimeoutError):
        list(it)
    assert time.monotonic() - t0 < 5.0


def test_map_timeout_cancels_the_job_it_timed_out_on(rp, make_pool, gates):
    """Executor.map: on a timeout every job not yet done is cancelled, the one
    whose result timed out included (it is still queued here)."""
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    blocker = pool.submit(gate)
    gate.wait_entered(1)
    it = pool.map(abs, [-1, -2, -3], timeout=0.05)
    with pytest.raises(TimeoutError):
        next(it)
    gate.open()
    assert blocker.result(timeout=HANG) is None
    s = pool.stats()
    assert (s.cancelled, s.completed) == (3, 1), s


def test_map_does_not_keep_the_last_result_alive(rp, make_pool):
    """CPython's test_free_reference: while the caller holds nothing, the
    suspended iterator holds no reference to the result it yielded."""
    import gc
    import weakref

    class Result:
        pass

    pool = make_pool(threads=1, queue=8)
    it = pool.map(lambda _: Result(), range(2))
    ref = weakref.ref(next(it))
    gc.collect()
    assert ref() is None
    assert isinstance(next(it), Result)


def test_map_exception_raised_at_its_position(rp, make_pool):
    pool = make_pool(threads=1, queue=8)
    it = pool.map(lambda x: 10 // x, [5, 2, 0, 1])
    assert next(it) == 2
    assert next(it) == 5
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_after_close(rp, make_pool):
    pool = make_pool(threads=1)
    pool.close()
    with pytest.raises(rp.PoolClosed):
        list(pool.map(abs, [1, 2]))


# --- shutdown -------------------------------------------------------------------------


def test_shutdown_wait_runs_queued(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    pool.submit(gate)
    gate.wait_entered()
    jobs = [pool.submit(lambda i=i: i) for i in range(4)]
    gate.open_later(0.1)
    pool.shutdown(wait=True)
    assert all(j.done() for j in jobs)
    assert [j.result() for j in jobs] == [0, 1, 2, 3]
    assert pool.closed


def test_shutdown_cancel_futures(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    running = pool.submit(gate, "r")
    gate.wait_entered()
    jobs = [pool.submit(lambda: None) for _ in range(4)]
    gate.open_later(0.1)
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(j.cancelled() for j in jobs)
    assert running.result(timeout=0) == "r"


def test_shutdown_no_wait(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    running = pool.submit(gate, "r")
    gate.wait_entered()
    queued = pool.submit(lambda: "q")
    t0 = time.monotonic()
    pool.shutdown(wait=False)
    assert time.monotonic() - t0 < 1.0
    assert not running.done()
    with pytest.raises(rp.PoolClosed):
        pool.submit(lambda: None)
    gate.open()
    assert queued.result(timeout=HANG) == "q"


def test_shutdown_keyword_only_cancel_futures(rp, make_pool):
    pool = make_pool(threads=1)
    with pytest.raises(TypeError):
        pool.shutdown(True, True)
    pool.shutdown(True, cancel_futures=False)
    assert pool.closed


def test_executor_submit_after_shutdown(rp, make_pool):
    pool = make_pool(threads=1)
    pool.shutdown()
    with pytest.raises(rp.PoolClosed):
        pool.submit(abs, -1)


# --- jobs as concurrent.futures futures -------------------------------------------------


def test_concurrent_futures_wait(rp, make_pool, gates):
    pool = make_pool(threads=2, queue=16)
    gate = gates()
    slow = pool.submit(gate, "slow")
    fast = [pool.submit(lambda i=i: i) for i in range(5)]
    done, not_done = concurrent.futures.wait(fast, timeout=HANG)
    assert done == set(fast) and not not_done

    done, not_done = concurrent.futures.wait(
        [slow, *fast], timeout=HANG, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert slow in not_done and len(done) == 5

    done, not_done = concurrent.futures.wait([slow], timeout=0.1)
    assert not done and not_done == {slow}

    gate.open_later(0.05)
    done, not_done = concurrent.futures.wait([slow], timeout=HANG)
    assert done == {slow}


def test_concurrent_futures_wait_first_exception(rp, make_pool, gates):
    pool = make_pool(threads=2, queue=16)
    gate = gates()
    slow = pool.submit(gate)
    bad = pool.submit(lambda: 1 / 0)
    done, not_done = concurrent.futures.wait(
        [slow, bad], timeout=HANG, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert done == {bad} and not_done == {slow}


def test_concurrent_futures_wait_sees_cancelled(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    job.cancel()
    done, _ = concurrent.futures.wait([job], timeout=HANG)
    assert done == {job}


def test_as_completed(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=16)
    gate = gates()
    blocker = pool.submit(gate, "blocker")
    gate.wait_entered()
    jobs = [pool.submit(lambda i=i: i) for i in range(5)]
    gate.open_later(0.3)
    seen = list(concurrent.futures.as_completed([blocker, *jobs], timeout=HANG))
    assert set(seen) == {blocker, *jobs}
    assert len(seen) == 6
    assert seen[0] is blocker  # one worker: the blocker finishes first
    assert sorted(j.result() for j in seen[1:]) == [0, 1, 2, 3, 4]


def test_as_completed_timeout(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate)
    with pytest.raises(TimeoutError):
        list(concurrent.futures.as_completed([job], timeout=0.1))


# --- jobs in asyncio ----------------------------------------------------------------------


async def test_wrap_future(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: "wrapped")
    fut = asyncio.wrap_future(job)
    assert await fut == "wrapped"
    bad = asyncio.wrap_future(pool.submit(lambda: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        await bad


async def test_wrap_future_of_cancelled_job(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    fut = asyncio.wrap_future(job)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(fut, HANG)


async def test_gather(rp, make_pool):
    pool = make_pool(threads=2, queue=128)
    jobs = [pool.submit(lambda i=i: i * 3) for i in range(100)]
    assert await asyncio.gather(*jobs) == [i * 3 for i in range(100)]
    mixed = await asyncio.gather(
        pool.submit(lambda: 1), pool.submit(lambda: 1 / 0), return_exceptions=True
    )
    assert mixed[0] == 1 and isinstance(mixed[1], ZeroDivisionError)


async def test_gather_of_kernels(rp, make_pool):
    import numpy as np

    pool = make_pool(threads=2, queue=128)
    a = np.arange(16, dtype=np.float64)
    out = await asyncio.gather(*(pool.submit(rp.dot, a, a * k) for k in range(64)))
    expected = [float(np.dot(a, a * k)) for k in range(64)]
    assert [float(x) for x in out] == pytest.approx(expected)


async def test_asyncio_wait(rp, make_pool, gates):
    pool = make_pool(threads=2, queue=16)
    gate = gates()
    slow = pool.submit(gate, "slow")
    fast = pool.submit(lambda: "fast")
    done, pending = await asyncio.wait_for(
        asyncio.wait([slow, fast], return_when=asyncio.FIRST_COMPLETED), HANG
    )
    assert len(done) == 1 and len(pending) == 1
    assert [d.result() for d in done] == ["fast"]
    done, pending = await asyncio.wait(pending, timeout=0.05)
    assert not done
    gate.open()
    done, pending = await asyncio.wait(pending, timeout=HANG)
    assert [d.result() for d in done] == ["slow"] and not pending


async def test_wait_for(rp, saturated):
    pool, gate, _ = saturated()
    gate.open()
    assert await asyncio.wait_for(pool.submit(lambda: 7), HANG) == 7
    gate2_pool, _, _ = saturated()
    queued = gate2_pool.submit(lambda: None)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queued, 0.1)
    assert time.monotonic() - t0 < 5.0
    # wait_for cancels what it waited on; a queued job can be cancelled.
    assert queued.cancelled()


async def test_ensure_future_and_create_task(rp, make_pool):
    pool = make_pool(threads=1)
    fut = asyncio.ensure_future(pool.submit(lambda: "ensured"))
    assert await fut == "ensured"

    async def coro():
        return await pool.submit(lambda: "task")

    assert await asyncio.create_task(coro()) == "task"


async def test_as_completed_asyncio(rp, make_pool):
    pool = make_pool(threads=2, queue=64)
    jobs = [pool.submit(lambda i=i: i) for i in range(20)]
    got = sorted([await f for f in asyncio.as_completed(jobs, timeout=HANG)])
    assert got == list(range(20))


async def test_await_from_a_job_done_in_the_past(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(lambda: "early")
    await asyncio.to_thread(job.result, HANG)
    assert await job == "early"


async def test_uvloop_if_available(rp, make_pool):
    uvloop = pytest.importorskip("uvloop")
    pool = make_pool(threads=1)

    async def main():
        return await pool.submit(lambda: "uv")

    def run():
        return uvloop.run(main())

    assert await asyncio.to_thread(run) == "uv"


async def test_shield_keeps_a_queued_job_alive(rp, saturated):
    pool, gate, _ = saturated()
    job = pool.submit(lambda: "survived")

    async def client():
        return await asyncio.shield(job)

    task = asyncio.create_task(client())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not job.cancelled()
    gate.open()
    assert await asyncio.wait_for(job, HANG) == "survived"


async def test_asyncio_timeout_cancels_queued_job(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await job
    assert job.cancelled()


def _run_until_complete_in_thread(pool, set_current: bool):
    """loop.run_until_complete(job) on a fresh loop in a fresh thread; a hang is
    broken by stopping the loop, which makes run_until_complete raise."""
    out = []
    loop = asyncio.new_event_loop()

    def run():
        if set_current:
            asyncio.set_event_loop(loop)
        try:
            out.append(loop.run_until_complete(pool.submit(lambda: "ruc")))
        except BaseException as e:  # noqa: BLE001 - the test reports it
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG)
    if t.is_alive():
        loop.call_soon_threadsafe(loop.stop)
        t.join(HANG)
    if not t.is_alive():
        loop.close()
    return out


@pytest.mark.parametrize("set_current", [False, True], ids=["fresh-loop", "current-loop"])
def test_run_until_complete(rp, make_pool, set_current):
    pool = make_pool(threads=1)
    out = _run_until_complete_in_thread(pool, set_current)
    assert out == ["ruc"], f"run_until_complete(job) gave {out!r}"


def test_a_pool_is_the_event_loops_default_executor(rp, unique_name):
    """`loop.set_default_executor(pool)`: asyncio.to_thread and
    run_in_executor(None, ...) run on the pool's workers, and the loop's
    shutdown of its default executor closes the pool."""
    pool = rp.Pool(unique_name(), threads=1, queue=8)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)
        a = await asyncio.to_thread(lambda: pool._is_worker_thread())
        b = await loop.run_in_executor(None, pool._is_worker_thread)
        return a, b

    assert asyncio.run(main()) == (True, True)  # asyncio.run shuts the executor down
    assert pool.closed
    assert pool.stats().completed == 2
