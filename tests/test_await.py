"""Awaiting a job, spec sections 3 and 7: the awaiting side is cancellable at
once while the job runs on; done-callbacks never depend on an event loop;
a job is a real `concurrent.futures.Future`.

Every "at once" here is checked with the job still held by a gate: before
the fix these waits lasted until the job ended, so the gate would have to be
opened first and the tests would time out at `HANG` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading

import pytest
from conftest import HANG

pytestmark = pytest.mark.timeout(60)


def test_a_job_is_a_concurrent_futures_future(rp, make_pool):
    pool = make_pool(threads=1)
    job = pool.submit(int, "7")
    assert isinstance(job, cf.Future)
    assert isinstance(job, rp.Job)
    assert job.result(timeout=HANG) == 7
    assert rp.Job[int] is not None  # Future's generic alias


def test_only_the_pool_ends_a_job(rp, make_pool):
    job = make_pool(threads=1).submit(int, "1")
    job.result(timeout=HANG)
    for call in (lambda: job.set_result(2), lambda: job.set_exception(ValueError())):
        with pytest.raises(RuntimeError, match="ended by its pool"):
            call()
    with pytest.raises(RuntimeError, match="ended by its pool"):
        job.set_running_or_notify_cancel()
    assert job.result() == 1


async def test_wait_for_run_in_executor_times_out_while_the_job_runs(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(pool, gate, "late")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 0.05)
    gate.wait_entered(1)
    assert pool.stats().running == 1, "the job runs on"
    gate.open()


async def test_wait_for_a_running_job_times_out_at_once(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "value")
    gate.wait_entered(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job, 0.05)
    assert job.status == "running"
    assert not job.cancel()
    gate.open()
    assert await asyncio.wait_for(job, HANG) == "value"


async def test_asyncio_timeout_on_a_running_job_fires_on_time(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "value")
    gate.wait_entered(1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await job
    assert job.status == "running"
    gate.open()
    assert job.result(timeout=HANG) == "value"


async def test_cancelling_the_task_awaiting_a_running_job(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "value")
    gate.wait_entered(1)

    async def awaiting():
        return await job

    task = asyncio.create_task(awaiting())
    await asyncio.sleep(0)  # the task is now waiting on the job
    assert task.cancel("stop waiting")
    with pytest.raises(asyncio.CancelledError, match="stop waiting"):
        await task
    assert task.cancelled()
    assert job.status == "running" and not job.cancelled()
    gate.open()
    assert job.result(timeout=HANG) == "value"


async def test_cancelling_the_task_awaiting_a_queued_job_cancels_it(rp, saturated):
    pool, gate, _ = saturated()
    job = pool.submit(int, "3")
    task = asyncio.ensure_future(job)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.cancelled()
    assert pool.stats().queued == 0
    gate.open()


async def test_one_await_cancelled_another_still_gets_the_result(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "shared")
    gate.wait_entered(1)
    first = asyncio.create_task(asyncio.wait_for(job, 0.05))
    second = asyncio.ensure_future(job)
    with pytest.raises(TimeoutError):
        await first
    gate.open()
    assert await asyncio.wait_for(second, HANG) == "shared"


async def test_cancel_and_completion_race_wake_the_task_once(rp, make_pool):
    """Many awaits cancelled while their jobs start and end: each task ends
    exactly once (cancelled, or with the result), every job exactly once."""
    pool = make_pool(threads=2, queue=4096)
    for _ in range(30):
        jobs = [pool.submit(pow, 3, i) for i in range(100)]
        tasks = [asyncio.ensure_future(job) for job in jobs]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG)
        # A cancelled await of a running job leaves the job running on.
        cf.wait(jobs, timeout=HANG)
        for i, (job, result) in enumerate(zip(jobs, results, strict=True)):
            if isinstance(result, asyncio.CancelledError):
                assert i % 2 == 0
                assert job.status in ("cancelled", "done")
            else:
                assert result == 3**i
                assert job.status == "done"
    stats = pool.stats()
    assert stats.completed + stats.cancelled == 3000


def test_done_callback_added_on_a_loop_thread_runs_without_the_loop(rp, make_pool, gates):
    """Sync code on the loop thread may wait for a callback it added there."""
    pool = make_pool(threads=1)
    gate = gates()
    called = threading.Event()

    async def main():
        job = pool.submit(gate, 1)
        job.add_done_callback(lambda _: called.set())
        gate.open()
        # Blocks the loop: the callback must not need it.
        return called.wait(HANG)

    assert asyncio.run(main())


def test_done_callback_runs_after_its_loop_closed(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    seen: list[object] = []
    done = threading.Event()

    async def register():
        job = pool.submit(gate, "after")
        job.add_done_callback(lambda j: (seen.append(j.result()), done.set()))
        return job

    job = asyncio.run(register())  # the loop is closed when this returns
    gate.open()
    assert done.wait(HANG)
    assert seen == ["after"]
    assert job.done()


def test_done_callback_runs_on_the_thread_that_ends_the_job(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    threads: list[str] = []
    done = threading.Event()
    job = pool.submit(gate)
    job.add_done_callback(lambda _: (threads.append(threading.current_thread().name), done.set()))
    gate.open()
    assert done.wait(HANG)
    assert threads != [threading.current_thread().name]


def test_system_exit_from_a_callback_on_a_finished_job_is_raised(rp, make_pool):
    job = make_pool(threads=1).submit(int, "1")
    job.result(timeout=HANG)

    def leave(_):
        raise SystemExit(3)

    with pytest.raises(SystemExit) as exit_info:
        job.add_done_callback(leave)
    assert exit_info.value.code == 3


def test_exception_from_a_callback_on_a_finished_job_is_logged(rp, make_pool, caplog):
    job = make_pool(threads=1).submit(int, "1")
    job.result(timeout=HANG)

    def fail(_):
        raise ValueError("callback broke")

    job.add_done_callback(fail)  # does not raise
    assert "exception calling callback" in caplog.text


async def test_awaiting_from_two_loops_in_two_threads(rp, make_pool, gates):
    pool = make_pool(threads=2)
    gate = gates()
    job = pool.submit(gate, "both")
    gate.wait_entered(1)
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(asyncio.run(_await(job))))
    thread.start()
    gate.open()
    assert await asyncio.wait_for(_await(job), HANG) == "both"
    thread.join(HANG)
    assert other == ["both"]


async def _await(job):
    return await job


async def test_asyncio_future_gathers_without_a_task_per_job(rp, make_pool):
    pool = make_pool(threads=2, queue=256)
    futures = [pool.submit(pow, 2, i).asyncio_future() for i in range(64)]
    assert all(asyncio.isfuture(f) for f in futures)
    assert await asyncio.wait_for(asyncio.gather(*futures), HANG) == [2**i for i in range(64)]
    assert await futures[3] == 8  # awaitable again once done


async def test_asyncio_future_callbacks_run_on_the_loop_thread(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "v")
    future = job.asyncio_future()
    ran = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: ran.set_result((threading.get_ident(), f.result())))
    gate.open()
    assert await asyncio.wait_for(ran, HANG) == (threading.get_ident(), "v")


async def test_cancelling_an_asyncio_future_of_a_running_job(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "v")
    gate.wait_entered(1)
    future = job.asyncio_future()
    gathered = asyncio.gather(future, return_exceptions=True)
    await asyncio.sleep(0)
    assert future.cancel("enough")
    assert future.cancelled() and future.done()
    (outcome,) = await asyncio.wait_for(gathered, HANG)
    assert isinstance(outcome, asyncio.CancelledError)
    assert job.status == "running"
    gate.open()
    assert job.result(timeout=HANG) == "v"
