"""Predictive admission and the load fields of the stats (contract section 10)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from conftest import HANG, assert_invariant


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


RUN = 0.002  # seconds each measured job takes


@pytest.fixture
def predictive(rp):
    made = []

    def make(threads: int = 1, queue: int = 64, **kw):
        pool = rp.Pool(uniq("adm"), threads=threads, queue=queue, admission="predictive", **kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close(wait=False, cancel_pending=True)


def measured(pool, n: int = 20) -> None:
    """Gives ``pool`` recent run times of about ``RUN``."""
    for _ in range(n):
        pool.submit(time.sleep, RUN).result(timeout=HANG)


def occupied(pool) -> threading.Event:
    """Every worker of ``pool`` blocked until the returned event is set."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(HANG)

    for _ in range(pool.threads):
        pool.submit(hold)
    for _ in range(pool.threads):
        assert started.acquire(timeout=HANG)
    return release


def queued(pool, n: int, priority: int = 0) -> list:
    return [pool.submit(time.sleep, 0, priority=priority) for _ in range(n)]


def refusal(rp, pool, priority: int = 0):
    """The WouldMissDeadline of a submit whose timeout no prediction meets."""
    with pytest.raises(rp.WouldMissDeadline) as info:
        pool.submit(time.sleep, 0, priority=priority, timeout=0.0002)
    return info.value


def test_admission_defaults_to_bounded_and_is_validated(rp):
    pool = rp.Pool(uniq("adm-default"), threads=1)
    try:
        assert pool.admission == "bounded"
    finally:
        pool.close()
    with pytest.raises(ValueError, match="admission"):
        rp.Pool(uniq("adm-bad"), threads=1, admission="eager")
    with pytest.raises(TypeError, match="admission"):
        rp.Pool(uniq("adm-type"), threads=1, admission=1)
    with pytest.raises(TypeError, match="admission"):
        rp.Pool(uniq("adm-none"), threads=1, admission=None)


def test_would_miss_deadline_is_a_queue_full_with_the_prediction(rp, predictive):
    assert issubclass(rp.WouldMissDeadline, rp.QueueFull)
    pool = predictive()
    assert pool.admission == "predictive"
    measured(pool)
    release = occupied(pool)
    jobs = queued(pool, 10)
    before = pool.stats()
    exc = refusal(rp, pool)
    # Ten jobs of ~2 ms ahead of it on one thread.
    assert exc.predicted_wait >= 10 * RUN
    assert exc.timeout == pytest.approx(0.0002, abs=1e-4)
    assert (exc.pool, exc.capacity) == (pool.name, 64)
    assert "predicted" in str(exc) and pool.name in str(exc)
    after = pool.stats()
    assert after.rejected == before.rejected + 1
    assert after.submitted == before.submitted
    assert_invariant(after)
    # A timeout the prediction meets, and no timeout at all, are admitted.
    ok = pool.submit(time.sleep, 0, timeout=30)
    untimed = queued(pool, 5)
    release.set()
    for job in [*jobs, ok, *untimed]:
        job.result(timeout=HANG)
    assert pool.stats().expired == 0


def test_the_prediction_grows_with_the_work_ahead(rp, predictive):
    pool = predictive()
    measured(pool)
    release = occupied(pool)
    queued(pool, 4)
    four = refusal(rp, pool).predicted_wait
    queued(pool, 8)
    twelve = refusal(rp, pool).predicted_wait
    ahead_of_all = refusal(rp, pool, priority=1).predicted_wait
    queued(pool, 30, priority=-1)  # behind it: not counted
    twelve_again = refusal(rp, pool).predicted_wait
    release.set()
    assert ahead_of_all < four < twelve
    assert abs(twelve_again - twelve) < 30 * RUN / 2


def test_more_threads_predict_shorter_waits(rp, predictive):
    waits = []
    for threads in (1, 2):
        pool = predictive(threads=threads)
        measured(pool, 30)
        release = occupied(pool)
        queued(pool, 12)
        waits.append(refusal(rp, pool).predicted_wait)
        release.set()
        pool.close()
    assert waits[1] < waits[0]


def test_a_bounded_pool_admits_what_it_would_not_start_in_time(rp, make_pool):
    pool = make_pool(threads=1, queue=64)
    measured(pool)
    release = occupied(pool)
    queued(pool, 10)
    job = pool.submit(time.sleep, 0, timeout=0.0002)  # admitted, then expires
    release.set()
    with pytest.raises(rp.DeadlineExceeded):
        job.result(timeout=HANG)
    assert pool.stats().rejected == 0


def test_an_unmeasured_pool_admits(rp, predictive):
    pool = predictive()
    release = occupied(pool)
    job = pool.submit(time.sleep, 0, timeout=30)
    release.set()
    job.result(timeout=HANG)


def test_predictive_pools_on_a_budget_use_their_share(rp):
    budget = rp.Budget(uniq("adm-budget"), threads=2)
    a = rp.Pool(uniq("adm-a"), budget=budget, admission="predictive")
    b = rp.Pool(uniq("adm-b"), budget=budget, admission="predictive")
    try:
        measured(a, 30)
        measured(b, 30)
        release = threading.Event()
        started = threading.Semaphore(0)

        def hold() -> None:
            started.release()
            release.wait(HANG)

        a.submit(hold)
        a.submit(hold)
        assert started.acquire(timeout=HANG) and started.acquire(timeout=HANG)
        queued(a, 8)
        alone = refusal(rp, a).predicted_wait
        queued(b, 1)  # b busy too: a's share halves
        shared = refusal(rp, a).predicted_wait
        release.set()
        assert shared > alone
    finally:
        a.close(wait=False, cancel_pending=True)
        b.close(wait=False, cancel_pending=True)
        budget.close()


def test_stats_have_rates_and_the_run_time_distribution(rp, predictive):
    pool = predictive()
    fresh = pool.stats()
    assert (fresh.arrival_rate, fresh.completion_rate, fresh.run_mean) == (0.0, 0.0, 0.0)
    assert fresh.run_quantiles == []
    measured(pool, 30)
    s = pool.stats()
    assert s.arrival_rate > 0 and s.completion_rate > 0
    assert RUN <= s.run_mean < 1.0
    assert len(s.run_quantiles) == 101
    assert s.run_quantiles == sorted(s.run_quantiles)
    assert (s.run_quantiles[50], s.run_quantiles[99]) == (s.run_p50, s.run_p99)
    d = s.to_dict()
    for field in ("arrival_rate", "completion_rate", "run_mean", "run_quantiles"):
        assert d[field] == getattr(s, field)
    assert "run_quantiles=[101 values]" in repr(s)


def test_rejected_submits_count_as_arrivals(rp, make_pool):
    pool = make_pool(threads=1, queue=1)
    release = occupied(pool)
    queued(pool, 1)
    for _ in range(50):
        with pytest.raises(rp.QueueFull):
            pool.submit(time.sleep, 0)
    s = pool.stats()
    release.set()
    assert s.rejected == 50
    # 52 submits in the pool's short life: far more than 50 per second.
    assert s.arrival_rate > 50
