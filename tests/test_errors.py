"""Errors (contract section 6, and kernel failures from section 3)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import HANG, assert_invariant

pytestmark = pytest.mark.timeout(60)


def test_hierarchy(rp):
    assert issubclass(rp.RaptorsError, Exception)
    for cls in (rp.QueueFull, rp.PoolClosed, rp.DeadlineExceeded):
        assert issubclass(cls, rp.RaptorsError), cls
    assert issubclass(rp.DeadlineExceeded, TimeoutError)
    # QueueFull and PoolClosed are not timeouts: callers map them to other answers.
    assert not issubclass(rp.QueueFull, TimeoutError)
    assert not issubclass(rp.PoolClosed, TimeoutError)
    # Executor.submit after shutdown raises RuntimeError: code written for
    # ThreadPoolExecutor catches PoolClosed too.
    assert issubclass(rp.PoolClosed, RuntimeError)


def test_submit_after_shutdown_is_a_runtime_error(rp, unique_name):
    pool = rp.Pool(unique_name(), threads=1, queue=2)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(abs, -1)
    with pytest.raises(RuntimeError, match="closed"):
        list(pool.map(abs, [1]))


def test_queue_full_attributes(rp, saturated):
    pool, _, _ = saturated(queue=2)
    pool.submit(lambda: None)
    pool.submit(lambda: None)
    with pytest.raises(rp.QueueFull) as info:
        pool.submit(lambda: None)
    err = info.value
    assert err.pool == pool.name
    assert isinstance(err.pool, str)
    assert err.capacity == 2
    assert isinstance(err.capacity, int)
    assert pool.name in str(err)


def test_queue_full_via_rp_submit(rp, saturated):
    pool, _, _ = saturated(queue=1)
    rp.submit(lambda: None, pool=pool.name)
    with pytest.raises(rp.QueueFull) as info:
        rp.submit(lambda: None, pool=pool.name)
    assert (info.value.pool, info.value.capacity) == (pool.name, 1)


def test_catch_all_raptors_errors(rp, make_pool):
    pool = make_pool(threads=1)
    pool.close()
    with pytest.raises(rp.RaptorsError):
        pool.submit(lambda: None)


def test_deadline_exceeded_caught_as_timeout_error(rp, saturated):
    pool, _, _ = saturated()
    job = pool.submit(lambda: None, timeout=0.05)
    with pytest.raises(TimeoutError):
        job.result(timeout=HANG)
    assert job.status == "expired"


def test_user_exception_is_not_wrapped(rp, make_pool):
    pool = make_pool(threads=1)

    class Custom(Exception):
        pass

    job = pool.submit(lambda: (_ for _ in ()).throw(Custom("raw")))
    with pytest.raises(Custom, match="raw") as info:
        job.result(timeout=HANG)
    assert not isinstance(info.value, rp.RaptorsError)


# --- kernel failures --------------------------------------------------------------------


def _panic_hook():
    import raptors._raptors as native

    hook = getattr(native, "_test_panic_kernel", None)
    if hook is None:
        pytest.skip("raptors._raptors._test_panic_kernel (test-only panic hook) is not built")
    return hook


def test_kernel_panic_on_a_direct_call_is_a_raptors_error():
    """Called directly (not submitted), a panicking kernel raises RaptorsError,
    an Exception, never pyo3's PanicException (a BaseException)."""
    import raptors as rp

    hook = _panic_hook()
    for _ in range(3):  # and the caller's thread stays usable
        with pytest.raises(rp.RaptorsError, match="panicked"):
            hook()
    assert rp.sum(np.ones(3)) == 3.0


async def test_kernel_panic_becomes_raptors_error_and_pool_survives(rp, make_pool):
    hook = _panic_hook()
    pool = make_pool(threads=1, queue=8)
    job = pool.submit(hook)
    with pytest.raises(rp.RaptorsError) as info:
        await asyncio.wait_for(job, HANG)
    assert type(info.value) not in (rp.QueueFull, rp.PoolClosed, rp.DeadlineExceeded)
    assert job.status == "failed"
    assert isinstance(job.exception(), rp.RaptorsError)

    # The only worker survived: Python jobs and kernels still run.
    assert await asyncio.wait_for(pool.submit(lambda: "alive"), HANG) == "alive"
    v = np.ones(4)
    assert await asyncio.wait_for(pool.submit(rp.dot, v, v), HANG) == 4.0
    s = pool.stats()
    assert (s.failed, s.completed, s.running, s.queued) == (1, 2, 0, 0)
    assert_invariant(s)


async def test_many_kernel_panics(rp, make_pool):
    hook = _panic_hook()
    pool = make_pool(threads=2, queue=64)
    jobs = [pool.submit(hook) for _ in range(20)]
    out = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), HANG)
    assert all(isinstance(e, rp.RaptorsError) for e in out)
    assert pool.stats().failed == 20
    assert await asyncio.wait_for(pool.submit(lambda: 1), HANG) == 1


async def test_bad_kernel_input_raises_value_error(rp, make_pool):
    """Shape mismatch: a ValueError at submit or on await, never a crash or a hang."""
    pool = make_pool(threads=1)
    try:
        job = pool.submit(rp.dot, np.ones(3), np.ones(4))
    except ValueError:
        pass
    else:
        with pytest.raises(ValueError):
            await asyncio.wait_for(job, HANG)
        assert job.status == "failed"
    v = np.ones(3)
    assert await asyncio.wait_for(pool.submit(rp.dot, v, v), HANG) == 3.0
    assert_invariant(pool.stats())
