"""Stats (contract section 4): every field, to_dict, rp.stats, percentiles,
utilization and the invariant under churn."""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import threading
import time

import pytest
from conftest import HANG, assert_invariant, wait_until

pytestmark = pytest.mark.timeout(60)

COUNT_FIELDS = (
    "queued",
    "running",
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "expired",
    "rejected",
    "max_queued",
)
TIME_FIELDS = ("wait_p50", "wait_p99", "run_p50", "run_p99")
ALL_FIELDS = ("name", "threads", "queue_capacity", *COUNT_FIELDS, *TIME_FIELDS, "utilization")


def test_fresh_pool_stats(rp, make_pool):
    pool = make_pool(threads=2, queue=5)
    s = pool.stats()
    assert isinstance(s, rp.PoolStats)
    assert s.name == pool.name
    assert (s.threads, s.queue_capacity) == (2, 5)
    for f in COUNT_FIELDS:
        value = getattr(s, f)
        assert isinstance(value, int) and not isinstance(value, bool), f
        assert value == 0, f
    for f in TIME_FIELDS:
        value = getattr(s, f)
        assert isinstance(value, float), f
        assert value == 0.0, f"{f} must be 0.0 before any job was measured"
    assert isinstance(s.utilization, float)
    assert 0.0 <= s.utilization <= 1.0
    assert_invariant(s)


def test_to_dict(rp, make_pool):
    pool = make_pool(threads=1, queue=3)
    pool.submit(lambda: None).result(timeout=HANG)
    s = pool.stats()
    d = s.to_dict()
    assert type(d) is dict
    assert set(ALL_FIELDS) <= set(d), f"missing: {set(ALL_FIELDS) - set(d)}"
    for f in ALL_FIELDS:
        assert d[f] == getattr(s, f), f
        assert type(d[f]) is type(getattr(s, f)), f
    # A plain dict: its values are plain Python objects (the run-time
    # distribution a list of floats).
    assert type(d["run_quantiles"]) is list
    assert all(type(x) is float for x in d["run_quantiles"])
    assert all(isinstance(v, (str, int, float, list)) for v in d.values())


def test_rp_stats(rp, make_pool):
    a = make_pool(threads=1)
    b = make_pool(threads=2)
    b.submit(lambda: None).result(timeout=HANG)
    all_stats = rp.stats()
    assert isinstance(all_stats, dict)
    assert a.name in all_stats and b.name in all_stats
    assert isinstance(all_stats[b.name], rp.PoolStats)
    assert all_stats[b.name].completed == 1
    assert all_stats[a.name].threads == 1
    assert set(all_stats) == {p.name for p in rp.pools()}
    for name, s in all_stats.items():
        assert s.name == name
        assert_invariant(s)
    a.close()
    assert a.name not in rp.stats()


def test_counts_through_a_workload(rp, saturated):
    pool, gate, blocker = saturated(queue=6)
    ok = [pool.submit(lambda: None) for _ in range(2)]
    bad = pool.submit(lambda: 1 / 0)
    to_cancel = pool.submit(lambda: None)
    to_expire = pool.submit(lambda: None, timeout=0.05)
    extra = pool.submit(lambda: None)
    with pytest.raises(rp.QueueFull):
        pool.submit(lambda: None)

    s = pool.stats()
    assert (s.submitted, s.queued, s.running, s.rejected) == (7, 6, 1, 1)
    assert s.max_queued == 6
    assert_invariant(s)

    assert to_cancel.cancel()
    assert wait_until(lambda: to_expire.status == "expired")
    s = pool.stats()
    assert (s.queued, s.cancelled, s.expired) == (4, 1, 1)
    assert s.max_queued == 6, "max_queued is a high-water mark, it never drops"
    assert_invariant(s)

    gate.open()
    for j in (*ok, extra, blocker):
        j.result(timeout=HANG)
    bad.exception(timeout=HANG)
    s = pool.stats()
    assert (s.submitted, s.completed, s.failed, s.cancelled, s.expired) == (7, 4, 1, 1, 1)
    assert (s.queued, s.running, s.rejected, s.max_queued) == (0, 0, 1, 6)
    assert_invariant(s)


def test_running_counts_busy_workers(rp, make_pool, gates):
    pool = make_pool(threads=3, queue=8)
    gate = gates()
    jobs = [pool.submit(gate) for _ in range(5)]
    gate.wait_entered(3)
    s = pool.stats()
    assert (s.running, s.queued, s.submitted) == (3, 2, 5)
    # Back-to-back submits may be seen waiting for an instant before idle workers take them.
    assert 2 <= s.max_queued <= 5
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert pool.stats().running == 0


def test_snapshot_does_not_change(rp, make_pool):
    pool = make_pool(threads=1)
    s = pool.stats()
    pool.submit(lambda: None).result(timeout=HANG)
    assert s.submitted == 0 and s.completed == 0
    assert pool.stats().completed == 1


def test_percentiles_measure_wait_and_run(rp, saturated):
    pool, gate, blocker = saturated(queue=16)
    jobs = [pool.submit(time.sleep, 0.02) for _ in range(5)]
    time.sleep(0.2)
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    blocker.result(timeout=HANG)
    s = pool.stats()
    for f in TIME_FIELDS:
        assert isinstance(getattr(s, f), float)
    # Each queued job waited at least the 0.2 s the gate stayed shut.
    assert 0.15 <= s.wait_p50 <= s.wait_p99 < 30, (s.wait_p50, s.wait_p99)
    # Each job slept 20 ms; the blocker ran for at least 0.2 s.
    assert 0.015 <= s.run_p50 <= s.run_p99 < 30, (s.run_p50, s.run_p99)
    assert s.run_p99 >= 0.15, "the blocker's 0.2 s run must show in the p99"


def test_percentiles_seconds_not_milliseconds(rp, make_pool):
    pool = make_pool(threads=1)
    for _ in range(5):
        pool.submit(time.sleep, 0.05).result(timeout=HANG)
    s = pool.stats()
    assert 0.04 <= s.run_p50 <= 1.0, s.run_p50
    assert 0.0 <= s.wait_p50 < 1.0, s.wait_p50


def test_utilization_in_range(rp, make_pool, gates):
    pool = make_pool(threads=2)
    gate = gates()
    jobs = [pool.submit(gate) for _ in range(2)]
    gate.wait_entered(2)
    time.sleep(0.3)
    busy = pool.stats().utilization
    gate.open()
    for j in jobs:
        j.result(timeout=HANG)
    assert 0.0 < busy <= 1.0, busy
    after = pool.stats().utilization
    assert 0.0 <= after <= 1.0
    for _ in range(20):
        pool.submit(time.sleep, 0.001).result(timeout=HANG)
        assert 0.0 <= pool.stats().utilization <= 1.0


def test_utilization_with_one_of_two_workers_busy(rp, make_pool, gates):
    pool = make_pool(threads=2)
    gate = gates()
    job = pool.submit(gate)
    gate.wait_entered()
    time.sleep(0.5)
    u = pool.stats().utilization
    gate.open()
    job.result(timeout=HANG)
    # One of two workers busy: about one half, never near full.
    assert 0.1 < u < 0.9, u


def test_closed_pool_stats(rp, make_pool):
    pool = make_pool(threads=1)
    pool.submit(lambda: None).result(timeout=HANG)
    pool.close()
    s = pool.stats()
    assert s.completed == 1 and s.submitted == 1
    assert s.to_dict()["completed"] == 1
    assert_invariant(s)


def test_invariant_under_churn(rp, make_pool):
    pool = make_pool(threads=2, queue=32)
    stop = threading.Event()
    violations = []
    snapshots = [0]

    def watcher():
        while not stop.is_set():
            s = pool.stats()
            snapshots[0] += 1
            total = s.queued + s.running + s.completed + s.failed + s.cancelled + s.expired
            if s.submitted != total:
                violations.append(s.to_dict())
            # Jobs handed to idle workers may be counted as waiting for an instant.
            max_waiting = s.queue_capacity + s.threads
            if not (0 <= s.queued <= max_waiting and 0 <= s.running <= s.threads):
                violations.append(("bounds", s.to_dict()))
            if s.max_queued < s.queued or not 0.0 <= s.utilization <= 1.0:
                violations.append(("range", s.to_dict()))

    def body(kind):
        if kind == "fail":
            raise ValueError("planned")
        if kind == "slow":
            time.sleep(0.0005)
        return kind

    rejected = [0]
    lock = threading.Lock()

    def producer(seed):
        rnd = random.Random(seed)
        mine = []
        for _ in range(1500):
            kind = rnd.choice(["ok", "ok", "fail", "slow"])
            try:
                job = pool.submit(
                    body,
                    kind,
                    priority=rnd.randint(-2, 2),
                    timeout=rnd.choice([None, None, 0.001]),
                )
            except rp.QueueFull:
                with lock:
                    rejected[0] += 1
                time.sleep(0.0002)
                continue
            mine.append(job)
            if rnd.random() < 0.25:
                rnd.choice(mine).cancel()
        for j in mine:
            try:
                j.result(timeout=HANG)
            except (ValueError, rp.DeadlineExceeded, concurrent.futures.CancelledError):
                pass
        return mine

    w = threading.Thread(target=watcher)
    w.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            all_jobs = [
                j for fut in [ex.submit(producer, k) for k in range(3)] for j in fut.result()
            ]
    finally:
        stop.set()
        w.join(HANG)
    assert snapshots[0] > 10
    assert violations == [], violations[:3]

    s = pool.stats()
    assert_invariant(s)
    assert (s.queued, s.running) == (0, 0)
    assert s.submitted == len(all_jobs)
    assert s.rejected == rejected[0]
    by_status = {}
    for j in all_jobs:
        by_status[j.status] = by_status.get(j.status, 0) + 1
    assert by_status.get("done", 0) == s.completed
    assert by_status.get("failed", 0) == s.failed
    assert by_status.get("cancelled", 0) == s.cancelled
    assert by_status.get("expired", 0) == s.expired


def test_invariant_under_native_churn(rp, make_pool):
    """Native jobs finish without the GIL: snapshots must stay consistent anyway."""
    import numpy as np

    pool = make_pool(threads=2, queue=64)
    v = np.ones(16)
    stop = threading.Event()
    violations = []

    def watcher():
        while not stop.is_set():
            s = pool.stats()
            total = s.queued + s.running + s.completed + s.failed + s.cancelled + s.expired
            if s.submitted != total:
                violations.append(s.to_dict())

    def producer(seed):
        rnd = random.Random(seed)
        token = rp.CancelToken()
        mine = []
        for i in range(3000):
            try:
                job = pool.submit(
                    rp.dot,
                    v,
                    v,
                    priority=rnd.randint(0, 3),
                    token=token,
                    timeout=rnd.choice([None, 0.0005]),
                )
            except rp.QueueFull:
                continue
            mine.append(job)
            if i % 7 == 0:
                job.cancel()
            if i % 500 == 499:
                token.cancel()
                token = rp.CancelToken()
        return mine

    w = threading.Thread(target=watcher)
    w.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            jobs = [j for f in [ex.submit(producer, k) for k in range(2)] for j in f.result()]
        for j in jobs:
            with contextlib.suppress(rp.DeadlineExceeded, concurrent.futures.CancelledError):
                assert j.result(timeout=HANG) == 16.0
    finally:
        stop.set()
        w.join(HANG)
    assert violations == [], violations[:3]
    s = pool.stats()
    assert_invariant(s)
    assert s.submitted == len(jobs)
    assert (s.queued, s.running) == (0, 0)
    assert s.completed == sum(j.status == "done" for j in jobs)
    assert s.cancelled == sum(j.status == "cancelled" for j in jobs)
    assert s.expired == sum(j.status == "expired" for j in jobs)


def test_the_fields_are_one_table_the_stub_and_the_metrics_follow(rp, make_pool):
    """PoolStats.FIELDS (generated with the class) is the one list: to_dict
    and repr show it in order, the stub declares exactly it, and every
    number in it is a /metrics series or deliberately not one."""
    import ast
    import pathlib

    from raptors import _metrics

    fields = rp.PoolStats.FIELDS
    assert type(fields) is tuple and len(set(fields)) == len(fields)
    s = make_pool(threads=1, queue=3).stats()
    assert tuple(s.to_dict()) == fields
    assert [part.split("=")[0] for part in repr(s)[len("PoolStats(") : -1].split(", ")] == list(
        fields
    )

    stub = pathlib.Path(rp.__file__).with_name("_raptors.pyi")
    tree = ast.parse(stub.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PoolStats"]
    declared = [
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and n.target.id != "FIELDS"
    ]
    assert tuple(declared) == fields

    exported = {x.field for x in _metrics.SERIES if x.scope == "pool"}
    exported |= {f"{kind}_{suffix}" for kind in ("wait", "run") for _, suffix in _metrics.QUANTILES}
    # Not series: the name is a label; the distribution is for rp.capacity.
    not_exported = {"name", "run_quantiles"}
    assert exported | not_exported == set(fields), set(fields) ^ (exported | not_exported)
