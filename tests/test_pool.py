"""Pools (contract section 1): construction, validation, registry, default
pool, context managers, close, idle CPU and per-pool core limits."""

from __future__ import annotations

import asyncio
import os
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


# --- construction and attributes ---------------------------------------------


def test_attributes(rp, unique_name):
    name = unique_name()
    pool = rp.Pool(name, threads=2, queue=7)
    try:
        assert isinstance(pool, rp.Pool)
        assert pool.name == name
        assert pool.threads == 2
        assert pool.queue_capacity == 7
        assert pool.closed is False
    finally:
        pool.close()
    assert pool.closed is True


def test_positional_arguments(rp, unique_name):
    pool = rp.Pool(unique_name(), 3, 5)
    try:
        assert (pool.threads, pool.queue_capacity) == (3, 5)
    finally:
        pool.close()


def test_defaults(rp, unique_name):
    pool = rp.Pool(unique_name())
    try:
        assert pool.threads == expected_default_threads()
        assert pool.queue_capacity == 1024
    finally:
        pool.close()


def test_threads_none_means_usable_cores(rp, unique_name):
    pool = rp.Pool(unique_name(), threads=None)
    try:
        assert pool.threads == expected_default_threads()
    finally:
        pool.close()


@pytest.mark.parametrize("bad", [123, None, b"scoring", ["x"], 1.5])
def test_name_wrong_type(rp, bad):
    with pytest.raises(TypeError, match="name"):
        rp.Pool(bad)


def test_name_empty(rp):
    with pytest.raises(ValueError, match="name"):
        rp.Pool("")


@pytest.mark.parametrize("bad", ["4", 2.0, 2.5, [2], object()])
def test_threads_wrong_type(rp, unique_name, bad):
    with pytest.raises(TypeError, match="threads"):
        rp.Pool(unique_name(), threads=bad)


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_threads_bad_value(rp, unique_name, bad):
    with pytest.raises(ValueError, match="threads"):
        rp.Pool(unique_name(), threads=bad)


@pytest.mark.parametrize("bad", ["8", 8.0, 1.5, None, [8]])
def test_queue_wrong_type(rp, unique_name, bad):
    with pytest.raises(TypeError, match="queue"):
        rp.Pool(unique_name(), queue=bad)


@pytest.mark.parametrize("bad", [0, -1, -1024])
def test_queue_bad_value(rp, unique_name, bad):
    with pytest.raises(ValueError, match="queue"):
        rp.Pool(unique_name(), queue=bad)


def test_failed_construction_does_not_take_the_name(rp, unique_name):
    name = unique_name()
    with pytest.raises(ValueError):
        rp.Pool(name, threads=0)
    pool = rp.Pool(name, threads=1)
    try:
        assert pool.name == name
    finally:
        pool.close()


def test_queue_of_one_and_thread_of_one_are_valid(rp, unique_name):
    pool = rp.Pool(unique_name(), threads=1, queue=1)
    try:
        assert pool.submit(lambda: 42).result(timeout=HANG) == 42
    finally:
        pool.close()


# --- names and registry ---------------------------------------------------------


def test_name_unique_among_open_pools(rp, unique_name):
    name = unique_name()
    first = rp.Pool(name, threads=1)
    try:
        with pytest.raises(ValueError, match=name):
            rp.Pool(name, threads=1)
        # The failed attempt must not have disturbed the first pool.
        assert rp.get_pool(name) is first
        assert first.submit(lambda: "ok").result(timeout=HANG) == "ok"
    finally:
        first.close()


def test_name_free_again_after_close(rp, unique_name):
    name = unique_name()
    first = rp.Pool(name, threads=1)
    first.close()
    second = rp.Pool(name, threads=2)
    try:
        assert rp.get_pool(name) is second
        assert second.threads == 2
        assert second.submit(lambda: 5).result(timeout=HANG) == 5
    finally:
        second.close()


def test_get_pool(rp, unique_name):
    name = unique_name()
    pool = rp.Pool(name, threads=1)
    try:
        assert rp.get_pool(name) is pool
    finally:
        pool.close()
    with pytest.raises(KeyError):
        rp.get_pool(name)


def test_get_pool_unknown(rp, unique_name):
    with pytest.raises(KeyError):
        rp.get_pool(unique_name("-never-created"))


def test_pools_lists_open_pools_only(rp, unique_name):
    a = rp.Pool(unique_name("-a"), threads=1)
    b = rp.Pool(unique_name("-b"), threads=1)
    try:
        listed = rp.pools()
        assert isinstance(listed, list)
        assert all(isinstance(p, rp.Pool) for p in listed)
        assert any(p is a for p in listed)
        assert any(p is b for p in listed)
        a.close()
        listed = rp.pools()
        assert not any(p is a for p in listed)
        assert not any(p.name == a.name for p in listed)
        assert any(p is b for p in listed)
    finally:
        a.close()
        b.close()


# --- default pool -----------------------------------------------------------


def test_default_pool_via_rp_submit(rp):
    job = rp.submit(lambda x, y: x * y, 6, 7)
    assert isinstance(job, rp.Job)
    assert job.result(timeout=HANG) == 42
    default = rp.get_pool("default")
    assert default.name == "default"
    assert default.threads == expected_default_threads()
    assert any(p is default for p in rp.pools())
    assert "default" in rp.stats()


async def test_default_pool_awaitable(rp):
    assert await rp.submit(sum, [1, 2, 3]) == 6


def test_rp_submit_to_named_pool(rp, make_pool):
    pool = make_pool(threads=1)
    before = pool.stats().submitted
    assert rp.submit(lambda: "by name", pool=pool.name).result(timeout=HANG) == "by name"
    assert rp.submit(lambda: "by object", pool=pool).result(timeout=HANG) == "by object"
    assert pool.stats().submitted == before + 2


def test_rp_submit_to_unknown_pool_name(rp, unique_name):
    with pytest.raises(KeyError):
        rp.submit(lambda: None, pool=unique_name("-missing"))


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


def test_raptors_threads_env_sets_default_threads(rp):
    out = _run_python(
        rp,
        """
        import raptors as rp
        p = rp.Pool("env-probe")
        print(p.threads, rp.submit(lambda: 1).result(timeout=30), rp.get_pool("default").threads)
        p.close()
        """,
        RAPTORS_THREADS="3",
    )
    assert out.split() == ["3", "1", "3"]


def test_without_raptors_threads_default_is_usable_cores(rp):
    out = _run_python(
        rp,
        "import raptors as rp; p = rp.Pool('probe'); print(p.threads); p.close()",
        drop=("RAPTORS_THREADS",),
    )
    assert int(out) == usable_cores()


def test_explicit_threads_beats_raptors_threads(rp):
    out = _run_python(
        rp,
        """
        import raptors as rp
        p = rp.Pool("explicit", threads=1)
        print(p.threads)
        p.close()
        """,
        RAPTORS_THREADS="3",
    )
    assert out == "1"


# --- context managers -------------------------------------------------------------


def test_sync_context_manager(rp, unique_name):
    name = unique_name()
    with rp.Pool(name, threads=1) as pool:
        assert isinstance(pool, rp.Pool)
        assert pool.name == name
        job = pool.submit(lambda: "inside")
        assert pool.closed is False
    assert pool.closed is True
    assert job.result(timeout=HANG) == "inside"
    with pytest.raises(KeyError):
        rp.get_pool(name)
    with pytest.raises(rp.PoolClosed):
        pool.submit(lambda: None)


def test_sync_context_manager_waits_for_queued_jobs(rp, unique_name, gates):
    gate = gates()
    with rp.Pool(unique_name(), threads=1) as pool:
        blocker = pool.submit(gate)
        gate.wait_entered()
        queued = [pool.submit(lambda i=i: i) for i in range(3)]
        gate.open_later(0.1)
    # Exit closes with the defaults (wait=True): everything already finished.
    assert blocker.done()
    assert [j.result(timeout=0) for j in queued] == [0, 1, 2]


def test_sync_context_manager_closes_on_exception(rp, unique_name):
    with pytest.raises(ZeroDivisionError), rp.Pool(unique_name(), threads=1) as pool:
        raise ZeroDivisionError
    assert pool.closed is True


async def test_async_context_manager(rp, unique_name):
    name = unique_name()
    async with rp.Pool(name, threads=1) as pool:
        assert isinstance(pool, rp.Pool)
        assert await pool.submit(lambda: "async inside") == "async inside"
        assert pool.closed is False
    assert pool.closed is True
    with pytest.raises(KeyError):
        rp.get_pool(name)
    with pytest.raises(rp.PoolClosed):
        pool.submit(lambda: None)


async def test_async_context_manager_exit_does_not_block_the_loop(rp, unique_name, gates):
    """Leaving `async with` while a job runs must let the loop keep ticking."""
    gate = gates()
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    hb = asyncio.create_task(heartbeat())
    try:
        async with rp.Pool(unique_name(), threads=1) as pool:
            job = pool.submit(gate, "finished")
            gate.wait_entered()
            gate.open_later(0.3)
            ticks_at_exit = ticks
        waited = job.done()
        ticks_during_exit = ticks - ticks_at_exit
        assert await asyncio.wait_for(job, HANG) == "finished"
    finally:
        hb.cancel()
    # Either the exit waited asynchronously (the loop ticked meanwhile) or it
    # did not wait at all; a synchronous wait inside the loop freezes the ticks.
    if waited:
        assert ticks_during_exit >= 3, "async exit blocked the event loop while waiting"


# --- close ------------------------------------------------------------------------------


def test_close_defaults_wait_and_run_queued(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    blocker = pool.submit(gate, "b")
    gate.wait_entered()
    queued = [pool.submit(lambda i=i: i * 10) for i in range(4)]
    gate.open_later(0.2)
    t0 = time.monotonic()
    pool.close()
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.1, "close(wait=True) returned before the running job finished"
    assert blocker.result(timeout=0) == "b"
    assert [j.result(timeout=0) for j in queued] == [0, 10, 20, 30]
    assert [j.status for j in queued] == ["done"] * 4
    s = pool.stats()
    assert (s.completed, s.queued, s.running, s.cancelled) == (5, 0, 0, 0)
    assert_invariant(s)


def test_close_no_wait_returns_at_once_and_jobs_still_run(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    blocker = pool.submit(gate, "b")
    gate.wait_entered()
    queued = [pool.submit(lambda i=i: i) for i in range(3)]
    t0 = time.monotonic()
    pool.close(wait=False)
    assert time.monotonic() - t0 < 1.0
    assert pool.closed is True
    assert not blocker.done()
    with pytest.raises(rp.PoolClosed):
        pool.submit(lambda: None)
    gate.open()
    assert [j.result(timeout=HANG) for j in queued] == [0, 1, 2]
    assert blocker.result(timeout=HANG) == "b"


def test_close_cancel_pending(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    ran = []
    blocker = pool.submit(gate, "b")
    gate.wait_entered()
    queued = [pool.submit(ran.append, i) for i in range(5)]
    gate.open_later(0.2)
    pool.close(wait=True, cancel_pending=True)
    assert blocker.result(timeout=0) == "b", "the running job must finish normally"
    assert all(j.cancelled() for j in queued)
    assert [j.status for j in queued] == ["cancelled"] * 5
    assert ran == []
    s = pool.stats()
    assert (s.completed, s.cancelled, s.queued, s.running) == (1, 5, 0, 0)
    assert_invariant(s)


def test_close_cancel_pending_no_wait(rp, make_pool, gates):
    pool = make_pool(threads=1, queue=8)
    gate = gates()
    blocker = pool.submit(gate)
    gate.wait_entered()
    queued = [pool.submit(lambda: None) for _ in range(3)]
    t0 = time.monotonic()
    pool.close(wait=False, cancel_pending=True)
    assert time.monotonic() - t0 < 1.0
    # Pending jobs are cancelled by close itself, not later.
    assert all(j.cancelled() for j in queued)
    assert not blocker.done()
    gate.open()
    blocker.result(timeout=HANG)


def test_close_is_idempotent(rp, make_pool):
    pool = make_pool(threads=1)
    assert pool.submit(lambda: 1).result(timeout=HANG) == 1
    pool.close()
    pool.close()
    pool.close(wait=False, cancel_pending=True)
    pool.shutdown()
    assert pool.closed is True


def test_close_from_another_thread_while_busy(rp, make_pool, gates):
    pool = make_pool(threads=2, queue=16)
    gate = gates()
    running = [pool.submit(gate, i) for i in range(2)]
    gate.wait_entered(2)
    queued = [pool.submit(lambda i=i: i) for i in range(10)]
    closer_done = threading.Event()

    def closer():
        pool.close(wait=True)
        closer_done.set()

    t = threading.Thread(target=closer)
    t.start()
    assert wait_until(lambda: pool.closed, timeout=HANG)
    assert not closer_done.wait(0.1), "close(wait=True) returned while jobs were running"
    gate.open()
    assert closer_done.wait(HANG)
    t.join(HANG)
    assert [j.result(timeout=0) for j in running] == [0, 1]
    assert [j.result(timeout=0) for j in queued] == list(range(10))


def test_submit_after_close_raises_pool_closed(rp, make_pool):
    pool = make_pool(threads=1)
    pool.close()
    with pytest.raises(rp.PoolClosed):
        pool.submit(lambda: None)
    with pytest.raises(rp.PoolClosed):
        rp.submit(lambda: None, pool=pool)
    assert issubclass(rp.PoolClosed, rp.RaptorsError)


def test_closed_pool_stats_still_work(rp, make_pool):
    pool = make_pool(threads=1, queue=4)
    for i in range(3):
        pool.submit(lambda: None).result(timeout=HANG)
    with pytest.raises(ValueError):
        pool.submit(int, "not a number").result(timeout=HANG)
    pool.close()
    s = pool.stats()
    assert s.name == pool.name
    assert (s.submitted, s.completed, s.failed) == (4, 3, 1)
    assert_invariant(s)
    assert pool.name not in rp.stats()


# --- native workers, idle CPU, per-pool core limit ----------------------------------


def test_workers_are_not_python_threads(rp, make_pool):
    before = {t.ident for t in threading.enumerate()}
    pool = make_pool(threads=3, queue=64)
    ids = [pool.submit(threading.get_native_id) for _ in range(30)]
    ids = {j.result(timeout=HANG) for j in ids}
    python_threads = {
        t.native_id
        for t in threading.enumerate()
        if not isinstance(t, threading._DummyThread)  # foreign threads seen by Python
    }
    assert threading.get_native_id() not in ids, "jobs must not run on the caller's thread"
    assert not ids & python_threads, "a Python threading.Thread ran a job"
    created = {
        t.ident
        for t in threading.enumerate()
        if t.ident not in before and not isinstance(t, threading._DummyThread)
    }
    assert not created, "creating a pool started Python threads"


def _cpu_seconds() -> float:
    # CPU time of every thread of this process, native workers included.
    return time.process_time()


def test_idle_pool_uses_no_cpu(rp, make_pool):
    pools = [make_pool(threads=2, queue=64) for _ in range(2)]
    for p in pools:
        for j in [p.submit(lambda: None) for _ in range(20)]:
            j.result(timeout=HANG)
    time.sleep(0.2)  # brief adaptive spinning before parking is allowed
    c0, t0 = _cpu_seconds(), time.monotonic()
    time.sleep(1.0)
    cpu, wall = _cpu_seconds() - c0, time.monotonic() - t0
    # Four spinning workers would burn about 2 s of CPU (2 cores) in 1 s.
    assert cpu < 0.15 * wall, f"idle pools used {cpu:.3f}s CPU in {wall:.3f}s"


def test_job_never_uses_more_cores_than_pool_threads(rp, make_pool):
    if usable_cores() < 2:
        pytest.skip("needs at least 2 usable cores to tell 1 from 2")
    pool = make_pool(threads=1)
    rng = np.random.default_rng(1)
    n = 256
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    t0 = time.perf_counter()
    rp.matmul(a, b)
    once = max(time.perf_counter() - t0, 1e-6)
    # Grow n until one kernel takes about 0.4 s, so the measurement is not noise.
    n = int(min(3000, n * (0.4 / once) ** (1 / 3)))
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    c0, w0 = _cpu_seconds(), time.monotonic()
    out = pool.submit(rp.matmul, a, b).result(timeout=60)
    cpu, wall = _cpu_seconds() - c0, time.monotonic() - w0
    assert out.shape == (n, n)
    # The caller sleeps in result(); only the single worker computes.
    assert cpu <= 1.3 * wall, (
        f"a 1-thread pool used {cpu:.3f}s CPU in {wall:.3f}s wall (n={n}): "
        "the kernel ran on more cores than the pool has"
    )


def test_default_pool_recreated_after_close(rp):
    out = _run_python(
        rp,
        """
        import raptors as rp
        first = rp.submit(lambda: 1).result(timeout=30)
        old = rp.get_pool("default")
        old.close()
        second = rp.submit(lambda: 2).result(timeout=30)
        new = rp.get_pool("default")
        print(first, second, new is not old, old.closed, new.closed)
        """,
    )
    assert out.split() == ["1", "2", "True", "True", "False"]


def test_interpreter_exit_with_work_in_flight(rp):
    """Exiting with queued Python and native jobs neither crashes nor hangs."""
    out = _run_python(
        rp,
        """
        import time
        import numpy as np
        import raptors as rp
        pool = rp.Pool("exiting", threads=2, queue=512)
        a = np.ones((200, 200))
        for i in range(100):
            pool.submit(time.sleep, 0.001)
            pool.submit(rp.matmul, a, a)
        rp.submit(print, "queued print ran")
        print("main done", flush=True)
        """,
    )
    assert "main done" in out


def _thread_nice(name):
    """Niceness of this process's thread called `name` (Linux /proc)."""
    import glob

    for task in glob.glob("/proc/self/task/*"):
        try:
            with open(f"{task}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # another pool's thread exited between the listing and the read
        return int(fields[16])  # field 19 of stat, counted after the comm
    raise LookupError(name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
@pytest.mark.parametrize("nice", [0, 7, None])
def test_workers_run_at_lower_os_priority(rp, nice):
    import uuid

    name = "nc" + uuid.uuid4().hex[:8]  # thread names are cut at 15 bytes
    pool = rp.Pool(name, threads=2, queue=4, nice=nice)
    try:
        pool.submit(abs, 1).result(timeout=10)  # workers have started
        base = os.getpriority(os.PRIO_PROCESS, 0)
        expected = min(19, base + (5 if nice is None else nice))
        assert pool.nice == (5 if nice is None else nice)
        for worker in (f"{name}-0", f"{name}-1"):
            # A worker names itself and sets its priority when it first runs.
            deadline = time.monotonic() + HANG
            while True:
                try:
                    if _thread_nice(worker) == expected:
                        break
                except LookupError:
                    pass
                assert time.monotonic() < deadline, f"{worker} never ran at nice {expected}"
                time.sleep(0.01)
    finally:
        pool.close()


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (20, ValueError), ("5", TypeError)])
def test_nice_is_validated(rp, unique_name, bad, error):
    with pytest.raises(error, match="nice"):
        rp.Pool(unique_name(), threads=1, nice=bad)


def test_exit_after_close_without_wait_is_clean():
    # Queued Python jobs of a pool closed with wait=False still run; the
    # interpreter must wait for them rather than finalise under them.
    script = textwrap.dedent(
        """
        import time
        import raptors as rp
        pool = rp.Pool("exit-nowait", threads=2, queue=64)
        for _ in range(20):
            pool.submit(time.sleep, 0.01)
        pool.close(wait=False)
        print("bye")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "bye"
    assert "panicked" not in proc.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_closed_pools(rp, make_pool):
    pool = make_pool(threads=1)
    pool.submit(abs, -1).result(timeout=HANG)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no worker threads exist here
        try:
            pool.submit(abs, -1)
            os.write(write, b"accepted")
        except rp.PoolClosed:
            pool.close()  # must not wait for threads that do not exist
            os.write(write, b"closed")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 64) == b"closed"
    assert status == 0
    assert pool.submit(abs, -2).result(timeout=HANG) == 2  # the parent's pool still works


def test_pools_closed_without_waiting_are_not_kept_once_finished(rp, unique_name):
    """Tenant eviction closes pools with wait=False; once their workers have
    exited nothing in raptors keeps them alive, however many there were."""
    import gc
    import weakref

    from raptors import _pool

    refs = []
    for _ in range(200):
        pool = rp.Pool(unique_name(), threads=1, queue=2)
        assert pool.submit(abs, -1).result(timeout=HANG) == 1
        pool.close(wait=False)
        assert pool.join(HANG)
        refs.append(weakref.ref(pool))
        del pool
    last = rp.Pool(unique_name(), threads=1, queue=2)
    last.close(wait=False)  # prunes every finished pool before it
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0
    assert len(_pool._unjoined) <= 1
    assert last.join(HANG)


def _wait_child(pid, timeout=HANG):
    """waitpid with a bound: a child that hangs is killed and reported."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} hung")
        time.sleep(0.005)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_busy_never_hangs_the_child_and_deadlines_work_there(rp, unique_name):
    """Forks land while workers hold their pool's lock and the timer thread
    holds its own: the child must close the inherited pools without taking
    those locks, and its new pools must expire deadlines (a timer of its own)."""
    import warnings

    busy = rp.Pool(unique_name("busy"), threads=2, queue=64)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            jobs = []
            for _ in range(32):
                try:
                    jobs.append(busy.submit(abs, -1, timeout=0.5))
                except rp.QueueFull:
                    break
            for job in jobs:
                job.result(timeout=HANG)

    feeder = threading.Thread(target=churn)
    feeder.start()
    try:
        for _ in range(60):
            report_read, report_write = os.pipe()
            with warnings.catch_warnings():
                # Forking a process with threads: what this test is about.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(report_read)
                    try:
                        busy.submit(abs, -1)
                    except rp.PoolClosed:
                        pass
                    else:
                        raise AssertionError("an inherited pool accepted a job")
                    busy.stats()
                    fresh = rp.Pool("child-fresh", threads=1, queue=4)
                    gate = threading.Event()
                    fresh.submit(gate.wait, HANG)
                    late = fresh.submit(abs, -1, timeout=0.01)
                    with pytest.raises(rp.DeadlineExceeded):
                        late.result(timeout=HANG)
                    gate.set()
                    fresh.close()
                    code = 0
                except BaseException:  # noqa: BLE001 - every failure reaches the parent
                    import traceback

                    os.write(report_write, traceback.format_exc().encode())
                finally:
                    os._exit(code)
            os.close(report_write)
            status = _wait_child(pid)
            with os.fdopen(report_read, "rb") as report:
                assert status == 0, report.read().decode()
    finally:
        stop.set()
        feeder.join(HANG)
        busy.close()


def _child_uses_raptors():
    import raptors as rp

    assert rp.submit(abs, -2).result(timeout=HANG) == 2  # the child's default pool
    pool = rp.Pool("mp-child", threads=1, queue=2)
    assert pool.submit(abs, -3, timeout=HANG).result(timeout=HANG) == 3
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocessing_fork_children_use_raptors(rp, make_pool):
    import multiprocessing

    pool = make_pool(threads=2)
    pool.submit(abs, -1).result(timeout=HANG)
    rp.submit(abs, -1).result(timeout=HANG)  # the parent's default pool exists
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_child_uses_raptors) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(HANG)
        assert child.exitcode == 0
