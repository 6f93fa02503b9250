"""`raptors.dask.DaskPool` on a real `distributed.LocalCluster` of two worker
processes with one thread each: every sentence of api.md section 11.

Workers are held busy with *gates*: jobs that wait on a cluster-wide
`distributed.Event`, so a test decides when a worker frees up. Waiting is on
events, futures or job states with generous bounds, never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import raptors as rp
from conftest import HANG, assert_invariant, wait_until
from raptors.dask import DaskPool, local_cluster

pytestmark = pytest.mark.timeout(120)

_serial = itertools.count()


def gate(event_name: str, value: object = None) -> object:
    """Blocks its worker until the cluster-wide event ``event_name`` is set."""
    if not distributed.Event(event_name).wait(HANG * 3):
        raise RuntimeError("gate was never opened")
    return value


def _known(keys: list[str], dask_scheduler) -> bool:
    return all(key in dask_scheduler.tasks for key in keys)


def fail(message: str) -> None:
    raise KeyError(message)


@pytest.fixture(scope="module")
def client():
    # Saturation 1.0: the scheduler hands a worker a task only when it has a
    # free thread, so gate jobs land on both workers (the recommended setting
    # for DaskPool: priorities then order every waiting job).
    with local_cluster() as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture
def pool(client):
    dask_pool = DaskPool(f"dask-test-{next(_serial)}", client, queue=4)
    yield dask_pool
    dask_pool.close(wait=True, cancel_pending=True)
    assert_invariant(dask_pool.stats())


@pytest.fixture
def gates(client):
    """Opens gates on demand; every gate opened at the end of the test."""
    names: list[str] = []

    def new() -> str:
        names.append(f"gate-{uuid.uuid4().hex}")
        return names[-1]

    new.open = lambda name: distributed.Event(name, client=client).set()  # type: ignore[attr-defined]
    yield new
    for name in names:
        distributed.Event(name, client=client).set()


def block_workers(pool: DaskPool, gates, n: int = 2):
    """Occupies ``n`` worker threads with gate jobs; returns (event name, jobs)."""
    name = gates()
    jobs = [pool.submit(gate, name, i) for i in range(n)]
    assert wait_until(lambda: all(job.status == "running" for job in jobs), HANG)
    return name, jobs


def test_results_equal_numpy(pool):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 32)), rng.standard_normal((32, 16))
    np.testing.assert_allclose(pool.submit(rp.matmul, a, b).result(HANG), a @ b)
    v = rng.standard_normal(1000)
    assert pool.submit(rp.dot, v, v).result(HANG) == pytest.approx(np.dot(v, v))
    matrix, queries = rng.standard_normal((500, 16)), rng.standard_normal((3, 16))
    ids, scores = pool.submit(rp.cosine_topk, matrix, queries, 5).result(HANG)
    expected = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)) @ (
        queries / np.linalg.norm(queries, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(np.sort(scores, axis=-1), np.sort(np.sort(expected, axis=0)[-5:].T))
    np.testing.assert_array_equal(
        np.sort(ids, axis=-1), np.sort(np.argsort(expected, axis=0)[-5:].T)
    )
    assert pool.submit(sum, [1, 2, 3]).result(HANG) == 6
    job = pool.submit(rp.sum, np.arange(10))
    job.result(HANG)
    assert job.status == "done" and job.done() and not job.running()


def test_exceptions_reach_the_caller_unchanged(pool):
    job = pool.submit(fail, "no such row")
    with pytest.raises(KeyError, match="no such row"):
        job.result(HANG)
    assert job.status == "failed"
    with pytest.raises(ValueError):
        pool.submit(rp.dot, np.ones(3), np.ones(4)).result(HANG)


def test_queue_full_when_queue_jobs_wait(pool, gates):
    name, _ = block_workers(pool, gates)
    waiting = [pool.submit(gate, name) for _ in range(pool.queue_capacity)]
    assert all(job.status == "queued" for job in waiting)
    with pytest.raises(rp.QueueFull) as refused:
        pool.submit(gate, name)
    assert refused.value.pool == pool.name and refused.value.capacity == 4
    s = pool.stats()
    assert (s.queued, s.running, s.rejected) == (4, 2, 1)
    assert_invariant(s)
    gates.open(name)
    concurrent.futures.wait(waiting, timeout=HANG)
    assert all(job.status == "done" for job in waiting)


def test_pool_closed(client):
    dask_pool = DaskPool(f"dask-closed-{next(_serial)}", client)
    assert dask_pool.submit(abs, -1).result(HANG) == 1
    dask_pool.close()
    assert dask_pool.closed
    with pytest.raises(rp.PoolClosed) as refused:
        dask_pool.submit(abs, -1)
    assert isinstance(refused.value, RuntimeError) and refused.value.pool == dask_pool.name
    assert dask_pool.stats().completed == 1


def test_cancel_is_true_while_not_started(pool, gates):
    name, running = block_workers(pool, gates)
    queued = pool.submit(gate, name)
    assert queued.cancel() is True and queued.cancel() is True
    assert queued.status == "cancelled" and queued.cancelled() and queued.done()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(HANG)
    assert running[0].cancel() is False and running[0].status == "running"
    gates.open(name)
    assert running[0].result(HANG) == 0
    assert running[0].cancel() is False
    assert running[1].result(HANG) == 1
    s = pool.stats()
    assert s.cancelled == 1 and s.completed == 2


def test_priority_order_is_strict_across_workers(client, gates):
    """Jobs no worker thread is free for wait at the scheduler (every job is
    root-ish, queuing with worker-saturation 1.0) and leave in priority
    order, FIFO among equals: a high priority submitted after eight low
    ones starts first, then the low ones in submission order."""
    with DaskPool(f"dask-prio-{next(_serial)}", client, queue=16) as dask_pool:
        name, _ = block_workers(dask_pool, gates)
        low = [dask_pool.submit(time.sleep, 0.02) for _ in range(8)]
        high = dask_pool.submit(time.sleep, 0.02, priority=5)
        mid = dask_pool.submit(time.sleep, 0.02, priority=2)
        order = [high, mid, *low]
        assert all(job.status == "queued" for job in order)
        # Submits travel in the client's batches, the gate's event by RPC: let
        # the jobs reach the scheduler before the workers free up.
        keys = [job.id for job in order]
        assert wait_until(lambda: client.run_on_scheduler(_known, keys), HANG, 0.01)
        gates.open(name)
        concurrent.futures.wait(order, timeout=HANG)
        starts = [job._started_at for job in order]
        # Two workers: a job starts no later than the one two places behind it.
        assert all(a <= b for a, b in zip(starts, starts[2:], strict=False)), starts
        assert max(starts[:2]) <= min(starts[2:]), starts
        assert_invariant(dask_pool.stats())


def test_token_cancels_queued_jobs(pool, gates):
    name, _ = block_workers(pool, gates)
    token = rp.CancelToken()
    queued = [pool.submit(gate, name, token=token) for _ in range(2)]
    token.cancel()
    concurrent.futures.wait(queued, timeout=HANG)
    assert [job.status for job in queued] == ["cancelled", "cancelled"]
    already = pool.submit(abs, 1, token=token)
    assert already.status == "cancelled" and already.cancelled()


def test_token_stops_a_running_kernel_on_its_worker(pool):
    n = 2500
    a = pool.scatter(np.ones((n, n)))
    b = pool.scatter(np.ones((n, n)))
    started = time.monotonic()
    full = pool.submit(rp.matmul, a, b)
    assert float(np.asarray(full.result(HANG * 3))[0, 0]) == n
    full_seconds = time.monotonic() - started
    token = rp.CancelToken()
    job = pool.submit(rp.matmul, a, b, token=token)
    assert wait_until(lambda: job.status == "running", HANG)
    cancelled_at = time.monotonic()
    token.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        job.result(HANG)
    stop_seconds = time.monotonic() - cancelled_at
    assert job.status == "cancelled"
    assert stop_seconds < max(0.5, full_seconds / 2), (stop_seconds, full_seconds)


def test_timeout_expires_a_job_not_started(pool, gates):
    name, _ = block_workers(pool, gates)
    job = pool.submit(abs, -1, timeout=0.05)
    with pytest.raises(rp.DeadlineExceeded):
        job.result(HANG)
    assert job.status == "expired" and isinstance(job.exception(), TimeoutError)
    gates.open(name)
    assert pool.submit(abs, -2, timeout=HANG).result(HANG) == 2
    assert pool.stats().expired == 1


def test_callbacks_from_any_thread(pool):
    seen: list[object] = []
    called = threading.Event()

    def on_done(job):
        seen.append(job)
        called.set()

    job = pool.submit(abs, -3)
    job.add_done_callback(on_done)
    assert called.wait(HANG) and seen == [job]
    late: list[object] = []
    job.add_done_callback(late.append)
    assert late == [job]


def test_wait_and_as_completed(pool):
    jobs = [pool.submit(abs, -i) for i in range(4)]
    assert sorted(job.result() for job in concurrent.futures.as_completed(jobs, HANG)) == [
        0,
        1,
        2,
        3,
    ]
    done, not_done = concurrent.futures.wait(jobs, timeout=HANG)
    assert len(done) == 4 and not not_done


async def test_await_from_asyncio(pool, gates):
    assert await pool.submit(abs, -5) == 5
    assert await asyncio.wrap_future(pool.submit(abs, -6)) == 6
    name, running = block_workers(pool, gates)
    queued = pool.submit(gate, name)
    task = asyncio.ensure_future(asyncio.wait_for(queued, 0.05))
    with pytest.raises(TimeoutError):
        await task
    assert queued.status == "cancelled"  # the awaiting task's cancel cancelled it
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(running[0], 0.05)
    assert running[0].status == "running"  # a running job runs on
    gates.open(name)
    assert await running[0] == 0


def test_executor_map_and_context_manager(client):
    with DaskPool(f"dask-exec-{next(_serial)}", client, queue=2) as dask_pool:
        assert list(dask_pool.map(abs, range(-10, 0))) == list(range(10, 0, -1))
        assert isinstance(dask_pool, concurrent.futures.Executor)
    assert dask_pool.closed
    assert dask_pool.stats().rejected == 0 or dask_pool.stats().completed == 10


def test_stats_invariant_under_mixed_outcomes(pool, gates):
    name, _ = block_workers(pool, gates)
    token = rp.CancelToken()
    jobs = [
        pool.submit(gate, name),
        pool.submit(gate, name, token=token),
        pool.submit(abs, 1, timeout=0.01),
    ]
    jobs[0].cancel()
    token.cancel()
    assert_invariant(pool.stats())
    gates.open(name)
    concurrent.futures.wait(jobs, timeout=HANG)
    pool.submit(fail, "x").exception(HANG)
    s = pool.stats()
    assert_invariant(s)
    assert (s.queued, s.running, s.cancelled, s.expired, s.failed) == (0, 0, 2, 1, 1)
    assert s.wait_p99 >= s.wait_p50 > 0 and s.run_p99 >= s.run_p50 > 0
    assert s.to_dict()["submitted"] == s.submitted and s.threads == 2


def test_scatter_sends_once_and_stands_for_the_object(pool):
    matrix = np.random.default_rng(1).standard_normal((2000, 64)).astype(np.float32)
    handle = pool.scatter(matrix)
    queries = matrix[:2]
    ids, _ = pool.submit(rp.cosine_topk, handle, queries, 3).result(HANG)
    assert [row[0] for row in np.asarray(ids)] == [0, 1]
    norms = pool.submit(rp.norm, handle).result(HANG)
    assert norms == pytest.approx(np.linalg.norm(matrix), rel=1e-4)


def test_address_opens_and_closes_its_own_client(client):
    dask_pool = DaskPool(f"dask-addr-{next(_serial)}", address=client.scheduler.address)
    assert dask_pool.submit(abs, -7).result(HANG) == 7
    dask_pool.close()
    assert dask_pool.client.status == "closed"


def test_bad_arguments(client):
    with pytest.raises(ValueError, match="name"):
        DaskPool("", client)
    with pytest.raises(ValueError, match="queue"):
        DaskPool("x", client, queue=0)
    with pytest.raises(TypeError, match="queue"):
        DaskPool("x", client, queue=None)  # type: ignore[arg-type]


def _pid() -> int:
    return os.getpid()


def test_a_worker_dying_mid_job_retries_then_fails_with_killed_worker():
    """A worker process killed while it runs a job: Dask runs the job again
    on another worker (it stays "running", counted once); killed on its
    ``allowed-failures`` + 1-th worker too, the job fails with
    ``distributed.KilledWorker`` naming the deaths. Workers the nannies
    restart get the plugin and take new jobs."""
    with (
        local_cluster(allowed_failures=1) as cluster,
        distributed.Client(cluster) as dask_client,
        DaskPool(f"dask-death-{next(_serial)}", dask_client, queue=4) as dask_pool,
    ):
        name = f"gate-{uuid.uuid4().hex}"
        job = dask_pool.submit(gate, name)
        assert wait_until(lambda: job.status == "running", HANG)
        first = job._worker
        assert first is not None
        os.kill(dask_client.run(_pid, workers=[first])[first], signal.SIGKILL)
        # Retried on the other worker: a start from there, still one running job.
        assert wait_until(lambda: job._worker not in (None, first), HANG)
        s = dask_pool.stats()
        assert (s.submitted, s.running, s.queued, s.failed) == (1, 1, 0, 0)
        assert_invariant(s)
        second = job._worker
        os.kill(dask_client.run(_pid, workers=[second])[second], signal.SIGKILL)
        with pytest.raises(distributed.KilledWorker, match="died"):
            job.result(HANG * 3)
        assert job.status == "failed"
        s = dask_pool.stats()
        assert (s.submitted, s.running, s.queued, s.failed, s.completed) == (1, 0, 0, 1, 0)
        assert_invariant(s)
        # The nannies restart both workers; the plugin is set up on them.
        assert dask_pool.submit(rp.dot, np.ones(3), np.ones(3)).result(HANG * 3) == 3.0
        s = dask_pool.stats()
        assert (s.submitted, s.failed, s.completed) == (2, 1, 1)
        assert_invariant(s)
        distributed.Event(name, client=dask_client).set()


async def test_batcher_forwards_coalesced_batches_to_the_cluster(client, gates):
    """A `Batcher` targets a DaskPool like an rp.Pool: calls arriving while
    its batch jobs (up to the cluster's threads) are in flight leave together
    as one cosine_topk job on a scattered matrix; answers equal one-by-one."""
    from raptors.batch import Batcher

    pool = DaskPool(f"dask-batch-{next(_serial)}", client, queue=16)
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((3000, 32)).astype(np.float32)
    handle = pool.scatter(matrix)
    batcher = Batcher(
        rp.cosine_topk,
        gather=lambda queries: (handle, np.stack(queries), 3),
        scatter=lambda result: list(zip(*result, strict=True)),
        max_batch=8,
    )
    assert pool.threads == 2
    name, _ = block_workers(pool, gates)
    queries = [rng.standard_normal(32).astype(np.float32) for _ in range(12)]
    futures = [batcher.submit(pool, q) for q in queries]
    # Two calls went out alone (a free batch slot each); ten wait for a slot.
    assert (batcher.inflight, batcher.pending) == (2, 10)
    gates.open(name)
    answers = await asyncio.wait_for(asyncio.gather(*futures), HANG)
    for q, (ids, _) in zip(queries, answers, strict=True):
        expected, _ = rp.cosine_topk(matrix, q, 3)
        assert sorted(np.asarray(ids).tolist()) == sorted(np.asarray(expected).tolist())
    st = batcher.stats()
    assert st["items"] == 12 and st["batches"] <= 4 and st["pending"] == st["inflight"] == 0
    s = pool.stats()
    assert s.completed == 2 + st["batches"]
    assert_invariant(s)
    pool.close()


async def test_batcher_on_a_dask_pool_refuses_and_cancels_like_on_a_pool(pool, gates):
    from raptors.batch import Batcher

    batcher = Batcher(abs, gather=lambda items: (sum(items),), scatter=lambda r: [r], max_batch=1)
    name, _ = block_workers(pool, gates)
    fill = [batcher.submit(pool, -1) for _ in range(2 + pool.queue_capacity)]
    refused = batcher.submit(pool, -1)
    with pytest.raises(rp.QueueFull):
        await refused
    # A waiting call whose caller went away costs nothing; one sent is
    # cancelled in the pool while it still waits for a worker.
    fill[-1].cancel()
    fill[0].cancel()
    gates.open(name)
    await asyncio.wait_for(asyncio.gather(*fill, return_exceptions=True), HANG)
    assert [f.result() for f in fill[1:-1]] == [1] * pool.queue_capacity
    assert_invariant(pool.stats())


def test_prometheus_collector_exposes_the_autoscaling_signals(pool, gates):
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families
    from raptors.dask import DaskPoolCollector

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(DaskPoolCollector(pool))
    name, _ = block_workers(pool, gates)
    waiting = [pool.submit(gate, name) for _ in range(3)]
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, sample.labels.get("quantile")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("pool") == pool.name
    }
    assert samples[("raptors_dask_pool_queued", None)] == 3
    assert samples[("raptors_dask_pool_running", None)] == 2
    assert samples[("raptors_dask_pool_threads", None)] == 2
    assert samples[("raptors_dask_pool_saturation", None)] == 2.5
    assert samples[("raptors_dask_jobs_submitted_total", None)] == 5
    assert ("raptors_dask_job_wait_seconds", "0.99") in samples
    gates.open(name)
    concurrent.futures.wait(waiting, timeout=HANG)


def test_service_variant_scores_on_the_cluster_and_exports_gauges(client):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from raptors import service

    matrix = service.make_matrix(rows=2000, dim=16)
    app = service.create_app(
        "raptors-dask", matrix=matrix, dask_address=client.scheduler.address, tenant_queue=8
    )
    query = np.random.default_rng(5).standard_normal(16).astype(np.float32)
    with TestClient(app) as http:
        r = http.post("/score", json={"query": query.tolist()})
        assert r.status_code == 200, r.text
        expected, _ = service.topk_numpy(matrix, query)
        assert sorted(r.json()["ids"]) == sorted(expected.tolist())
        metrics = http.get("/metrics").text
        assert 'raptors_dask_jobs_completed_total{pool="score-dask"} 1.0' in metrics
        assert 'raptors_dask_pool_saturation{pool="score-dask"}' in metrics
        pool = app.state.dask_pool
    assert pool.closed
    assert_invariant(pool.stats())
