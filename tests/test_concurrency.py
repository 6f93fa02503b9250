"""Concurrency: pool isolation, the event loop keeps ticking while pools
compute, kernels release the GIL, several loops in several threads."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time

import numpy as np
import pytest
from conftest import HANG

pytestmark = pytest.mark.timeout(90)


# --- isolation ------------------------------------------------------------------------


async def test_saturated_pool_does_not_delay_another(rp, saturated, make_pool):
    busy, _, _ = saturated(queue=2)
    busy.submit(lambda: None)
    busy.submit(lambda: None)
    with pytest.raises(rp.QueueFull):
        busy.submit(lambda: None)

    other = make_pool(threads=1, queue=2)
    t0 = time.monotonic()
    assert await asyncio.wait_for(other.submit(lambda: "free"), HANG) == "free"
    assert time.monotonic() - t0 < 2.0, "a saturated pool delayed another pool's job"
    s = other.stats()
    assert (s.completed, s.rejected, s.queued) == (1, 0, 0)
    assert busy.stats().queued == 2


async def test_pool_busy_with_kernels_does_not_delay_another(rp, make_pool):
    busy = make_pool(threads=1, queue=4)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1200, 1200))
    long_jobs = [busy.submit(rp.matmul, a, a) for _ in range(3)]
    assert await asyncio.to_thread(_wait_running, long_jobs[0])

    other = make_pool(threads=1)
    t0 = time.monotonic()
    v = np.ones(8)
    assert await asyncio.wait_for(other.submit(rp.dot, v, v), HANG) == 8.0
    assert time.monotonic() - t0 < 2.0
    await asyncio.wait_for(asyncio.gather(*long_jobs), 60)


def _wait_running(job, timeout=HANG):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.running() or job.done():
            return True
        time.sleep(0.0005)
    return False


# --- the event loop keeps ticking ---------------------------------------------------------


class Heartbeat:
    """A task that sleeps `period` in a loop and records the largest gap."""

    def __init__(self, period=0.002):
        self.period = period
        self.ticks = 0
        self.max_gap = 0.0
        self._task = None

    async def _run(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    def __enter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()


def _matmul_n_for(rp, seconds, start=300, cap=3000):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((start, start))
    rp.matmul(a, a)  # warm up
    t0 = time.perf_counter()
    rp.matmul(a, a)
    once = max(time.perf_counter() - t0, 1e-6)
    return int(min(cap, start * (seconds / once) ** (1 / 3)))


async def test_loop_ticks_while_pool_computes_600_matmuls(rp, make_pool):
    pool = make_pool(threads=1, queue=64)
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((600, 600)), rng.standard_normal((600, 600))
    expected = a @ b
    await asyncio.sleep(0.05)
    with Heartbeat() as hb:
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(pool.submit(rp.matmul, a, b) for _ in range(20)))
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.01)
    for r in results:
        np.testing.assert_allclose(np.asarray(r), expected, rtol=1e-9, atol=1e-9)
    # The loop only waited: it must have ticked throughout.
    assert hb.max_gap < max(0.25, elapsed / 4), f"loop stalled {hb.max_gap:.3f}s of {elapsed:.3f}s"
    assert hb.ticks >= 3


async def test_loop_ticks_during_one_long_kernel(rp, make_pool):
    pool = make_pool(threads=1)
    n = _matmul_n_for(rp, 0.6)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((n, n))
    with Heartbeat() as hb:
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await pool.submit(rp.matmul, a, a)
        elapsed = time.perf_counter() - t0
    if elapsed < 0.2:
        pytest.skip(f"kernel too short ({elapsed:.3f}s) to tell a blocked loop")
    assert hb.max_gap < elapsed / 2, (
        f"the loop stalled {hb.max_gap:.3f}s during a {elapsed:.3f}s kernel (n={n})"
    )
    assert hb.ticks >= 10


async def test_loop_ticks_during_large_sum(rp, make_pool):
    pool = make_pool(threads=1, queue=16)
    a = np.random.default_rng(9).standard_normal(8_000_000)
    expected = a.sum()
    with Heartbeat() as hb:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(pool.submit(rp.sum, a) for _ in range(10)))
        elapsed = time.perf_counter() - t0
    for v in out:
        assert float(v) == pytest.approx(float(expected), rel=1e-9)
    assert hb.max_gap < max(0.25, elapsed / 2)


# --- the GIL is released while a kernel computes --------------------------------------------


@contextlib.contextmanager
def _ticker(interval=0.0005):
    """A Python thread recording when it ran; it needs the GIL for every tick."""
    stamps = []
    stop = threading.Event()

    def run():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(interval)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # hand the GIL over quickly at call boundaries
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        time.sleep(0.01)
        yield stamps
    finally:
        stop.set()
        t.join(HANG)
        sys.setswitchinterval(old)


def _ticks_inside_calls(call, repeats=5, margin=0.002):
    """Run `call` repeatedly; count ticker stamps strictly inside the calls."""
    windows = []
    with _ticker() as stamps:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            windows.append((t0 + margin, t1 - margin))
            time.sleep(0.002)
        snapshot = list(stamps)
    inside = sum(1 for s in snapshot for lo, hi in windows if lo < s < hi)
    covered = sum(max(0.0, hi - lo) for lo, hi in windows)
    return inside, covered


def _grow_until(make_args, call, target=0.03, start=1 << 20, cap=1 << 26):
    """Double the input size until the median of three calls takes `target` seconds."""
    n = start
    while True:
        args = make_args(n)
        call(*args)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            call(*args)
            times.append(time.perf_counter() - t0)
        if sorted(times)[1] >= target or n >= cap:
            return args
        n *= 2


@pytest.mark.parametrize("kernel", ["dot", "sum", "matmul"])
def test_python_thread_runs_while_kernel_computes(rp, kernel):
    rng = np.random.default_rng(11)
    fn = getattr(rp, kernel)
    # Values do not matter here, only the time a call takes: cheap fills.
    if kernel == "dot":
        args = _grow_until(lambda n: (np.full(n, 0.5), np.full(n, 2.0)), fn)
    elif kernel == "sum":
        args = _grow_until(lambda n: (np.full(n, 0.25),), fn)
    else:
        n = _matmul_n_for(rp, 0.05)
        args = (rng.standard_normal((n, n)), rng.standard_normal((n, n)))
    inside, covered = _ticks_inside_calls(lambda: fn(*args))
    if covered < 0.01:
        pytest.skip(f"rp.{kernel} calls too short ({covered * 1e3:.1f} ms) to observe")
    # With the GIL held through the call, no tick can land inside it.
    assert inside >= 3, (
        f"a Python thread ticked {inside} times during {covered * 1e3:.1f} ms "
        f"of rp.{kernel}: the GIL was not released"
    )


def test_python_thread_runs_while_pool_job_waits(rp, make_pool):
    """A caller blocked in job.result() does not hold the GIL."""
    pool = make_pool(threads=1)
    n = _matmul_n_for(rp, 0.05)
    a = np.random.default_rng(12).standard_normal((n, n))
    inside, covered = _ticks_inside_calls(lambda: pool.submit(rp.matmul, a, a).result(HANG))
    if covered < 0.01:
        pytest.skip("jobs too short to observe")
    assert inside >= 3


# --- several loops in several threads ----------------------------------------------------------


def test_several_loops_in_several_threads(rp, make_pool):
    pool = make_pool(threads=2, queue=1024)
    vec = np.arange(16, dtype=np.float64)
    errors = []
    results = {}

    async def client(k):
        loop_thread = threading.get_ident()
        out = []
        for i in range(30):
            out.append(await pool.submit(lambda i=i: (k, i)))
            assert threading.get_ident() == loop_thread
        out += await asyncio.gather(*(pool.submit(lambda i=i: (k, i)) for i in range(30, 100)))
        dots = await asyncio.gather(*(pool.submit(rp.dot, vec, vec * i) for i in range(50)))
        return out, [float(d) for d in dots]

    def run(k):
        try:
            # debug=True makes asyncio reject a callback run from the wrong thread.
            results[k] = asyncio.run(client(k), debug=True)
        except BaseException as e:  # noqa: BLE001 - reported below with its thread
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a loop thread hung"
    assert errors == []
    base = float(np.dot(vec, vec))
    for k in range(4):
        out, dots = results[k]
        assert out == [(k, i) for i in range(100)]
        assert dots == pytest.approx([base * i for i in range(50)])
    assert pool.stats().completed == 4 * 150


async def test_loop_and_threads_share_a_job(rp, make_pool, gates):
    """One job awaited on the loop and read by plain threads with result()."""
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "shared")
    gate.wait_entered()
    got = []

    def plain():
        got.append(job.result(HANG))

    ts = [threading.Thread(target=plain) for _ in range(3)]
    for t in ts:
        t.start()
    await asyncio.sleep(0.05)
    gate.open()
    assert await asyncio.wait_for(_await(job), HANG) == "shared"
    for t in ts:
        t.join(HANG)
    assert got == ["shared"] * 3


async def _await(job):
    return await job


def test_submit_from_many_threads(rp, make_pool):
    pool = make_pool(threads=2, queue=4096)
    jobs = {}
    lock = threading.Lock()

    def producer(k):
        mine = [pool.submit(lambda k=k, i=i: (k, i)) for i in range(500)]
        with lock:
            jobs[k] = mine

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    for k, mine in jobs.items():
        assert [j.result(HANG) for j in mine] == [(k, i) for i in range(500)]
    s = pool.stats()
    assert (s.submitted, s.completed) == (2000, 2000)


async def test_task_cancel_races_with_completion(rp, make_pool):
    """Tasks cancelled at random moments while their jobs complete: every task
    ends either with the job's result or cancelled, and asyncio reports nothing."""
    import random

    pool = make_pool(threads=2, queue=4096)
    loop = asyncio.get_running_loop()
    loop_errors = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    rnd = random.Random(5)
    v = np.ones(16)

    async def client(i, native):
        if native:
            return await pool.submit(rp.dot, v, v * i)
        return await pool.submit(lambda: i * 16.0)

    for _ in range(5):
        tasks = [asyncio.create_task(client(i, i % 2 == 0)) for i in range(300)]
        for _ in range(3):
            await asyncio.sleep(rnd.random() * 0.002)
            for t in rnd.sample(tasks, 60):
                t.cancel()
        _, pending = await asyncio.wait(tasks, timeout=HANG)
        assert not pending
        for i, t in enumerate(tasks):
            if not t.cancelled():
                assert t.result() == pytest.approx(i * 16.0)
    assert wait_until_idle(pool)
    s = pool.stats()
    assert s.submitted == s.completed + s.cancelled
    assert loop_errors == []


def wait_until_idle(pool, timeout=HANG):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = pool.stats()
        if s.queued == 0 and s.running == 0:
            return True
        time.sleep(0.001)
    return False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_job_completing_after_its_loop_closed(rp, make_pool, gates):
    """A loop closed while a task still awaits a running job: the completion must
    neither crash nor wedge the worker."""
    pool = make_pool(threads=1)
    gate = gates()
    job = pool.submit(gate, "late")
    gate.wait_entered()

    async def client():
        return await job

    loop = asyncio.new_event_loop()
    task = loop.create_task(client())
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()  # the task is abandoned, still waiting on the job
    del task
    gate.open()
    assert job.result(timeout=HANG) == "late"
    assert pool.submit(lambda: "still working").result(timeout=HANG) == "still working"
    assert asyncio.run(_await(pool.submit(lambda: "new loop"))) == "new loop"
