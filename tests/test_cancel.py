"""Cancellation (contract section 3): job.cancel, asyncio task cancellation,
CancelToken, long kernels observing their token, and cancel/complete races."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time

import numpy as np
import pytest
from conftest import HANG, assert_invariant, wait_until

pytestmark = pytest.mark.timeout(60)


# --- job.cancel ------------------------------------------------------------------------


async def test_cancel_queued_job(rp, saturated):
    pool, gate, blocker = saturated(queue=2)
    ran = threading.Event()
    job = pool.submit(ran.set)
    other = pool.submit(lambda: "other")
    assert pool.stats().queued == 2

    assert job.cancel() is True
    # It left the queue at once: the count drops and the slot is free.
    assert job.status == "cancelled"
    assert job.cancelled() and job.done() and not job.running()
    assert pool.stats().queued == 1
    refill = pool.submit(lambda: "refill")  # would raise QueueFull if the slot were held

    with pytest.raises(asyncio.CancelledError):
        await job
    with pytest.raises(concurrent.futures.CancelledError):
        job.result()
    with pytest.raises(concurrent.futures.CancelledError):
        job.result(timeout=0)
    with pytest.raises(concurrent.futures.CancelledError):
        job.exception()

    # Cancelling again answers True, as concurrent.futures and asyncio do.
    assert job.cancel() is True
    assert job.status == "cancelled"

    gate.open()
    assert other.result(timeout=HANG) == "other"
    assert refill.result(timeout=HANG) == "refill"
    blocker.result(timeout=HANG)
    assert not ran.is_set(), "a cancelled job ran"
    s = pool.stats()
    assert (s.cancelled, s.completed, s.queued, s.running) == (1, 3, 0, 0)
    assert_invariant(s)


def test_cancel_with_msg(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    assert job.cancel(msg="client went away") is True
    assert job.cancelled()
    assert job.cancel("again") is True


def test_cancel_running_job_returns_false(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "kept")
    gate.wait_entered()
    assert job.cancel() is False
    assert job.status == "running"
    assert not job.cancelled()
    gate.open()
    assert job.result(timeout=HANG) == "kept"
    assert job.status == "done"
    assert job.cancel() is False


def test_cancel_finished_jobs_returns_false(rp, make_pool):
    pool = make_pool(threads=1)
    ok = pool.submit(lambda: 1)
    ok.result(timeout=HANG)
    bad = pool.submit(lambda: 1 / 0)
    bad.exception(timeout=HANG)
    assert ok.cancel() is False and ok.status == "done"
    assert bad.cancel() is False and bad.status == "failed"
    assert not ok.cancelled() and not bad.cancelled()


def test_cancel_expired_job_returns_false(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None, timeout=0.05)
    assert wait_until(lambda: job.status == "expired")
    assert job.cancel() is False
    assert job.status == "expired"


def test_cancel_middle_of_queue_keeps_order(rp, saturated):
    pool, gate, _ = saturated(queue=16)
    order = []
    jobs = [pool.submit(order.append, i) for i in range(10)]
    for i in (2, 5, 9):
        assert jobs[i].cancel()
    gate.open()
    for i, j in enumerate(jobs):
        if i not in (2, 5, 9):
            j.result(timeout=HANG)
    assert order == [0, 1, 3, 4, 6, 7, 8]


# --- asyncio task cancellation ------------------------------------------------------------


async def test_cancelling_awaiting_task_cancels_queued_job(rp, saturated):
    pool, gate, _ = saturated()
    ran = threading.Event()
    job = pool.submit(ran.set)

    async def client():
        return await job

    task = asyncio.create_task(client())
    await asyncio.sleep(0.02)  # the task is now suspended on the job
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.cancelled()
    assert job.status == "cancelled"
    assert pool.stats().queued == 0
    gate.open()
    await asyncio.sleep(0.05)
    assert not ran.is_set()


async def test_wait_for_timeout_cancels_queued_job(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job, 0.1)
    assert job.cancelled()
    assert job.status == "cancelled"


async def test_cancelling_task_awaiting_running_job_lets_it_finish(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "finished anyway")
    gate.wait_entered()

    async def client():
        return await job

    task = asyncio.create_task(client())
    await asyncio.sleep(0.02)
    task.cancel()
    gate.open_later(0.1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)
    assert job.result(timeout=HANG) == "finished anyway"
    assert job.status == "done"
    assert not job.cancelled()


async def test_await_cancelled_job_from_task_ends_task_cancelled(rp, saturated):
    """A task awaiting a job cancelled by someone else ends cancelled, not failed
    with concurrent.futures.CancelledError."""
    pool, _, _ = saturated()
    job = pool.submit(lambda: None)

    async def client():
        return await job

    task = asyncio.create_task(client())
    await asyncio.sleep(0.02)
    job.cancel()
    await asyncio.wait([task], timeout=HANG)
    assert task.done()
    assert task.cancelled(), f"task ended with {task.exception()!r}"


# --- tokens ---------------------------------------------------------------------------------


def test_token_basics(rp):
    token = rp.CancelToken()
    assert token.cancelled is False
    token.cancel()
    assert token.cancelled is True
    token.cancel()  # idempotent
    assert token.cancelled is True


def test_token_cancels_every_queued_job(rp, saturated):
    pool, gate, blocker = saturated(queue=16)
    token = rp.CancelToken()
    ran = []
    with_token = [pool.submit(ran.append, i, token=token) for i in range(5)]
    without = pool.submit(ran.append, "free")
    assert pool.stats().queued == 6

    token.cancel()
    assert all(j.cancelled() for j in with_token)
    assert [j.status for j in with_token] == ["cancelled"] * 5
    assert not without.cancelled()
    assert wait_until(lambda: pool.stats().queued == 1, timeout=2.0)

    gate.open()
    without.result(timeout=HANG)
    blocker.result(timeout=HANG)
    assert ran == ["free"]
    for j in with_token:
        with pytest.raises(concurrent.futures.CancelledError):
            j.result(timeout=0)
    s = pool.stats()
    assert (s.cancelled, s.completed) == (5, 2)
    assert_invariant(s)


def test_token_spans_pools(rp, make_pool, gates):
    token = rp.CancelToken()
    jobs = []
    for _ in range(2):
        pool = make_pool(threads=1)
        gate = gates()
        pool.submit(gate)
        gate.wait_entered()
        jobs += [pool.submit(lambda: None, token=token) for _ in range(3)]
    token.cancel()
    assert all(j.cancelled() for j in jobs)


async def test_already_cancelled_token_gives_cancelled_job(rp, make_pool):
    pool = make_pool(threads=1)
    token = rp.CancelToken()
    token.cancel()
    ran = threading.Event()
    job = pool.submit(ran.set, token=token)  # must not raise
    assert isinstance(job, rp.Job)
    assert job.cancelled()
    assert job.done()
    assert job.status == "cancelled"
    with pytest.raises(asyncio.CancelledError):
        await job
    with pytest.raises(concurrent.futures.CancelledError):
        job.result()
    # The idle worker must not have run it either.
    assert pool.submit(lambda: None).result(timeout=HANG) is None
    assert not ran.is_set()
    assert_invariant(pool.stats())


def test_already_cancelled_token_never_raises_queue_full(rp, saturated):
    pool, _, _ = saturated(queue=1)
    pool.submit(lambda: None)  # queue full now
    token = rp.CancelToken()
    token.cancel()
    job = pool.submit(lambda: None, token=token)
    assert job.cancelled()


def test_token_does_not_interrupt_running_python_callable(rp, make_pool, gates):
    pool = make_pool(threads=1)
    gate = gates()
    token = rp.CancelToken()
    job = pool.submit(gate, "completed", token=token)
    gate.wait_entered()
    token.cancel()
    assert job.status == "running"
    gate.open()
    assert job.result(timeout=HANG) == "completed"
    assert job.status == "done"


def test_token_cancelled_after_jobs_finished_changes_nothing(rp, make_pool):
    pool = make_pool(threads=1)
    token = rp.CancelToken()
    job = pool.submit(lambda: 5, token=token)
    assert job.result(timeout=HANG) == 5
    token.cancel()
    assert job.status == "done"
    assert job.result() == 5


async def test_long_kernel_observes_its_token(rp, make_pool):
    """A long kernel checks its token between chunks, stops early and ends cancelled."""
    pool = make_pool(threads=1)
    rng = np.random.default_rng(3)
    n = 400
    # Grow n until one run takes long enough to cancel it in the middle.
    for _ in range(5):
        a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        t0 = time.perf_counter()
        await pool.submit(rp.matmul, a, b)
        full = time.perf_counter() - t0
        if full >= 0.4 or n >= 3500:
            break
        n = int(min(3500, n * 1.2 * (0.6 / max(full, 1e-6)) ** (1 / 3)))
    if full < 0.3:
        pytest.skip(f"matmul n={n} took only {full:.3f}s: too short to cancel mid-run")

    token = rp.CancelToken()
    job = pool.submit(rp.matmul, a, b, token=token)
    assert await asyncio.to_thread(wait_until, job.running, HANG)
    await asyncio.sleep(full * 0.1)
    t_cancel = time.perf_counter()
    token.cancel()
    assert await asyncio.to_thread(wait_until, job.done, HANG)
    stopped_after = time.perf_counter() - t_cancel
    with pytest.raises(asyncio.CancelledError):
        await job
    assert job.status == "cancelled"
    assert job.cancelled()
    assert stopped_after < 0.7 * full, (
        f"kernel kept running {stopped_after:.3f}s after its token was cancelled "
        f"(full run {full:.3f}s)"
    )
    s = pool.stats()
    assert s.cancelled == 1
    assert_invariant(s)
    # The worker is free again.
    small = np.ones((2, 2))
    np.testing.assert_allclose(np.asarray(await pool.submit(rp.matmul, small, small)), 2 * small)


# --- races -----------------------------------------------------------------------------------


def _race(rp, pool, make_body, n_jobs, n_threads=4):
    ran = [False] * n_jobs
    callbacks = [0] * n_jobs
    cb_lock = threading.Lock()
    jobs = []
    for i in range(n_jobs):
        jobs.append(pool.submit(make_body(i, ran)))

        def cb(j, i=i):
            with cb_lock:
                callbacks[i] += 1

        jobs[-1].add_done_callback(cb)

    answers = [[None] * n_jobs for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def canceller(k):
        order = list(range(n_jobs))
        random.Random(k).shuffle(order)
        start.wait()
        for i in order:
            answers[k][i] = jobs[i].cancel()

    threads = [threading.Thread(target=canceller, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG * 3)
    assert not any(t.is_alive() for t in threads)

    for j in jobs:
        try:
            j.result(timeout=HANG)
        except concurrent.futures.CancelledError:
            pass
    assert wait_until(lambda: sum(callbacks) >= n_jobs, timeout=HANG)

    n_cancelled = n_done = 0
    for i, j in enumerate(jobs):
        got = {answers[k][i] for k in range(n_threads)}
        assert len(got) == 1, f"job {i}: cancel() answered {got} to different threads"
        assert callbacks[i] == 1, f"job {i}: done callback ran {callbacks[i]} times"
        assert j.done()
        if got == {True}:
            n_cancelled += 1
            assert j.status == "cancelled" and j.cancelled()
            assert not ran[i], f"job {i} was cancelled yet ran"
            with pytest.raises(concurrent.futures.CancelledError):
                j.result(timeout=0)
        else:
            n_done += 1
            assert j.status == "done" and not j.cancelled()
            assert j.result(timeout=0) == i
    s = pool.stats()
    assert_invariant(s)
    assert (s.cancelled, s.completed, s.queued, s.running) == (n_cancelled, n_done, 0, 0)
    return n_cancelled, n_done


def test_cancel_complete_race_python_jobs(rp, make_pool):
    pool = make_pool(threads=2, queue=4096)

    def make_body(i, ran):
        def body():
            ran[i] = True
            return i

        return body

    cancelled, done = _race(rp, pool, make_body, 3000)
    assert cancelled + done == 3000


def test_cancel_complete_race_kernel_jobs(rp, make_pool):
    pool = make_pool(threads=2, queue=4096)
    cancelled, done = _race_kernel(rp, pool, np.ones(16), 3000)
    assert cancelled + done == 3000


def _race_kernel(rp, pool, vec, n_jobs, n_threads=4):
    jobs = [pool.submit(rp.dot, vec, np.full(16, i / 16.0)) for i in range(n_jobs)]
    answers = [[None] * n_jobs for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def canceller(k):
        order = list(range(n_jobs))
        random.Random(k).shuffle(order)
        start.wait()
        for i in order:
            answers[k][i] = jobs[i].cancel()

    threads = [threading.Thread(target=canceller, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG * 3)
    n_cancelled = n_done = 0
    for i, j in enumerate(jobs):
        got = {answers[k][i] for k in range(n_threads)}
        assert len(got) == 1, f"job {i}: cancel() answered {got} to different threads"
        if got == {True}:
            n_cancelled += 1
            assert j.status == "cancelled"
            with pytest.raises(concurrent.futures.CancelledError):
                j.result(timeout=HANG)
        else:
            n_done += 1
            assert j.result(timeout=HANG) == pytest.approx(float(i))
            assert j.status == "done"
    s = pool.stats()
    assert_invariant(s)
    assert (s.cancelled, s.completed, s.queued, s.running) == (n_cancelled, n_done, 0, 0)
    return n_cancelled, n_done


def test_token_cancel_races_with_completion(rp, make_pool):
    pool = make_pool(threads=2, queue=4096)
    for _ in range(5):
        token = rp.CancelToken()
        jobs = [pool.submit(lambda i=i: i, token=token) for i in range(400)]
        t = threading.Thread(target=token.cancel)
        t.start()
        t.join(HANG)
        for i, j in enumerate(jobs):
            try:
                assert j.result(timeout=HANG) == i
                assert j.status == "done"
            except concurrent.futures.CancelledError:
                assert j.status == "cancelled"
        assert_invariant(pool.stats())
    s = pool.stats()
    assert s.cancelled + s.completed == 2000


async def test_close_cancel_pending_ends_awaiting_tasks_cancelled(rp, saturated):
    pool, gate, _ = saturated(queue=8)
    jobs = [pool.submit(lambda: None) for _ in range(4)]

    async def client(job):
        return await job

    tasks = [asyncio.create_task(client(j)) for j in jobs]
    await asyncio.sleep(0.02)
    pool.close(wait=False, cancel_pending=True)
    _, pending = await asyncio.wait(tasks, timeout=HANG)
    assert not pending
    assert all(t.cancelled() for t in tasks)
    gate.open()
