"""Every `timeout=` argument goes through one parser: None and inf are no
limit, negative and NaN a ValueError, non-numbers a TypeError, each naming
the argument; a bad timeout never panics and never loses the job."""

import math
import threading

import pytest
from conftest import HANG

BAD = [
    (-1, ValueError),
    (-0.001, ValueError),
    (math.nan, ValueError),
    (-math.inf, ValueError),
    ("5", TypeError),
    (True, TypeError),
    ([1], TypeError),
    (1j, TypeError),
]


def _call(rp, pool, where, timeout):
    """Calls the API `where` with `timeout=`, on a job that is already done."""
    if where == "submit":
        return pool.submit(abs, -1, timeout=timeout)
    if where == "rp.submit":
        return rp.submit(abs, -1, pool=pool, timeout=timeout)
    if where == "map":
        return list(pool.map(abs, [-1, -2], timeout=timeout))
    job = pool.submit(abs, -1)
    job.result(timeout=HANG)
    if where == "result":
        return job.result(timeout=timeout)
    if where == "exception":
        return job.exception(timeout=timeout)
    if where == "join":
        pool.close()
        return pool.join(timeout)
    raise AssertionError(where)


WHERE = ["submit", "rp.submit", "map", "result", "exception", "join"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("bad, error", BAD, ids=lambda v: repr(v))
def test_bad_timeout_is_a_typed_error_naming_it(rp, unique_name, where, bad, error):
    pool = rp.Pool(unique_name(), threads=1, queue=4)
    try:
        with pytest.raises(error, match="timeout"):
            _call(rp, pool, where, bad)
        if where != "join":  # the pool still serves after the refused call
            assert pool.submit(abs, -3).result(timeout=HANG) == 3
    finally:
        pool.close()
        assert pool.join(HANG)
    stats = pool.stats()
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.expired


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("limit", [None, math.inf, 0, 0.0, 1e300, HANG])
def test_none_inf_zero_and_huge_timeouts_are_accepted(rp, unique_name, where, limit):
    if where == "map" and limit == 0:
        pytest.skip("map with timeout 0 times out unless the jobs are already done")
    pool = rp.Pool(unique_name(), threads=1, queue=4)
    try:
        got = _call(rp, pool, where, limit)
        if where in ("submit", "rp.submit"):
            if limit == 0:
                # A zero start deadline may expire before a worker takes it.
                assert got.exception(timeout=HANG) is None or isinstance(
                    got.exception(), rp.DeadlineExceeded
                )
            else:
                assert got.result(timeout=HANG) == 1
        elif where == "map":
            assert got == [1, 2]
        elif where == "result":
            assert got == 1
        elif where == "exception":
            assert got is None
        elif where == "join":
            assert got is True
    finally:
        pool.close()
        assert pool.join(HANG)


@pytest.mark.parametrize("where", ["result", "exception", "join"])
def test_zero_timeout_on_an_unfinished_job_times_out_at_once(rp, unique_name, where):
    pool = rp.Pool(unique_name(), threads=1, queue=4)
    gate = threading.Event()
    job = pool.submit(gate.wait, HANG)
    try:
        if where == "join":
            pool.close(wait=False)
            assert pool.join(0) is False
        else:
            with pytest.raises(TimeoutError):
                getattr(job, where)(timeout=0)
            assert not job.done()
    finally:
        gate.set()
        assert job.result(timeout=HANG) is True
        pool.close()
        assert pool.join(HANG)
