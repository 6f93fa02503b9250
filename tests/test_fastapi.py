"""raptors.fastapi: lifespan, dependencies, tenants, error mapping, disconnects, metrics."""

import asyncio
import json
import math
import os
import threading
import time
import uuid
from typing import Annotated

import numpy as np
import pytest
from conftest import HANG

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import raptors as rp
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from raptors.fastapi import (
    Batcher,
    PoolConfig,
    Raptors,
    TenantLimitReached,
    TenantPools,
    TenantTemplate,
    default_budget_threads,
    retry_after_seconds,
)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def block(pool: rp.Pool) -> tuple[threading.Event, rp.Job]:
    """Occupy every worker of ``pool`` until the returned event is set."""
    gate = threading.Event()
    jobs = [pool.submit(gate.wait, 10.0) for _ in range(pool.threads)]
    wait_until(lambda: pool.stats().running == pool.threads)
    return gate, jobs


def make_app(rx: Raptors, pool_name: str | None = None) -> FastAPI:
    app = FastAPI(lifespan=rx.lifespan)
    rx.install(app)

    if pool_name is not None:
        named = rx.pool(pool_name)

        @app.get("/pool")
        async def which(pool: Annotated[rp.Pool, Depends(named)]) -> dict:
            return {"name": pool.name, "threads": pool.threads, "queue": pool.queue_capacity}

        @app.post("/work")
        async def work(request: Request, pool: Annotated[rp.Pool, Depends(named)]) -> dict:
            timeout = request.query_params.get("timeout")
            value = await rx.run(
                request, pool, sum, [1, 2, 3], timeout=float(timeout) if timeout else None
            )
            return {"value": value}

    @app.post("/tenant")
    async def tenant(request: Request, pool: Annotated[rp.Pool, Depends(rx.tenant_pool)]) -> dict:
        value = await rx.run(request, pool, sum, [1, 2])
        return {"pool": pool.name, "value": value}

    return app


def test_lifespan_creates_and_closes_pools():
    a, b = uniq("life-a"), uniq("life-b")
    rx = Raptors(pools=[PoolConfig(a, threads=2, queue=7), {"name": b, "threads": 1, "nice": 0}])
    app = make_app(rx, a)
    with TestClient(app) as client:
        pa, pb = rp.get_pool(a), rp.get_pool(b)
        assert (pa.threads, pa.queue_capacity, pa.nice) == (2, 7, 5)
        assert (pb.threads, pb.nice) == (1, 0) and not pa.closed and not pb.closed
        assert client.get("/pool").json() == {"name": a, "threads": 2, "queue": 7}
        assert client.post("/work").json() == {"value": 6}
        assert app.state.raptors is rx
    assert pa.closed and pb.closed
    assert a not in [p.name for p in rp.pools()]
    with pytest.raises(KeyError):
        rp.get_pool(a)
    assert pa.stats().completed == 1


def test_pool_config_dict_form_and_validation():
    rx = Raptors(pools={"x": {"threads": 1, "queue": 3}})
    assert rx.configs == [PoolConfig("x", 1, 3)]
    with pytest.raises(ValueError, match="unique"):
        Raptors(pools=[{"name": "x"}, {"name": "x"}])
    with pytest.raises(ValueError, match="unknown keys"):
        Raptors(pools=[{"name": "x", "thread": 2}])
    with pytest.raises(ValueError, match="overflow"):
        TenantTemplate(overflow="drop")


def test_shutdown_drains_accepted_jobs():
    name = uniq("drain")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    app = make_app(rx, name)
    done = []
    with TestClient(app):
        pool = rp.get_pool(name)
        jobs = [pool.submit(lambda i=i: (time.sleep(0.02), done.append(i))) for i in range(5)]
    # close(wait=True) in the lifespan exit: every accepted job has finished.
    assert sorted(done) == list(range(5))
    assert all(j.status == "done" for j in jobs)


def test_queue_full_is_503_with_retry_after_from_stats():
    name = uniq("full")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    with TestClient(make_app(rx, name)) as client:
        pool = rp.get_pool(name)
        pool.submit(time.sleep, 0.3).result(timeout=5)  # run_p50 becomes ~0.3 s
        gate, _ = block(pool)
        fillers = [pool.submit(time.sleep, 0) for _ in range(8)]
        r = client.post("/work")
        gate.set()
        assert r.status_code == 503
        # 8 queued x ~0.3 s run_p50 / 1 thread = 2.4 s -> 3 whole seconds
        assert r.headers["Retry-After"] == "3"
        assert r.json()["retry_after"] == 3
        for f in fillers:
            f.result(timeout=5)
        assert pool.stats().rejected == 1


def test_would_miss_deadline_is_503_with_retry_after_from_the_prediction():
    name = uniq("predict")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=64, admission="predictive")])
    with TestClient(make_app(rx, name)) as client:
        pool = rp.get_pool(name)
        assert pool.admission == "predictive"
        for _ in range(3):
            pool.submit(time.sleep, 0.5).result(timeout=HANG)  # run_mean ~0.5 s
        gate, _ = block(pool)
        fillers = [pool.submit(time.sleep, 0) for _ in range(4)]
        r = client.post("/work", params={"timeout": "0.1"})
        gate.set()
        assert r.status_code == 503, r.text
        doc = r.json()
        # About 4.5 runs of 0.5 s ahead, against a 0.1 s budget.
        assert doc["predicted_wait"] > 2.0 and doc["timeout"] == pytest.approx(0.1, abs=0.01)
        assert int(r.headers["Retry-After"]) == doc["retry_after"]
        assert doc["retry_after"] == math.ceil(doc["predicted_wait"] - doc["timeout"])
        for f in fillers:
            f.result(timeout=HANG)
        assert pool.stats().rejected == 1


def test_admission_is_validated_in_configs():
    with pytest.raises(ValueError, match="admission"):
        TenantTemplate(admission="eager")
    with pytest.raises(ValueError, match="admission"):
        Raptors(pools=[{"name": uniq("bad"), "admission": "eager"}]).open()


def test_retry_after_estimate():
    class S:
        threads, queued, run_p50 = 4, 10, 0.5

    assert retry_after_seconds(S) == 2  # ceil(10 * 0.5 / 4)
    S.run_p50 = 0.0
    assert retry_after_seconds(S) == 1  # never below one second


def test_deadline_is_504():
    name = uniq("deadline")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    with TestClient(make_app(rx, name)) as client:
        pool = rp.get_pool(name)
        gate, _ = block(pool)
        timer = threading.Timer(0.3, gate.set)
        timer.start()
        r = client.post("/work?timeout=0.05")
        timer.join()
        assert r.status_code == 504
        wait_until(lambda: pool.stats().running == 0)
        assert pool.stats().expired == 1


def test_closed_pool_is_503():
    name = uniq("closed")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    with TestClient(make_app(rx, name)) as client:
        rx.get(name).close()
        r = client.post("/work")
        assert r.status_code == 503
        assert "Retry-After" in r.headers


def tenant_app(**template) -> tuple[Raptors, FastAPI]:
    prefix = uniq("t") + "-"
    rx = Raptors(tenants=TenantTemplate(prefix=prefix, **template))
    return rx, make_app(rx)


def test_tenant_template_sets_the_workers_nice():
    rx, app = tenant_app(threads=1, queue=2, nice=0)
    with TestClient(app):
        assert rx.tenants.get("acme").nice == 0
    rx, app = tenant_app(threads=1, queue=2)
    with TestClient(app):
        assert rx.tenants.get("acme").nice == 5  # the pool default


# Blocking a tenant's workers must leave a thread for the other tenants: with
# threads of their own (budget=False, the layout before budgets), or on a budget
# of 2 threads with each tenant capped at 1. (On the default budget of cores - 1
# threads, 1 on a 2-core host, a blocked tenant holds the whole budget: the
# budget's isolation is queue isolation and fair sharing, tested below.)
TWO_TENANTS_RUN_AT_ONCE = [
    pytest.param({"budget": False, "threads": 1}, id="own-threads"),
    pytest.param({"budget_threads": 2, "threads": 1}, id="budget-capped"),
]


@pytest.mark.parametrize("layout", TWO_TENANTS_RUN_AT_ONCE)
def test_tenant_pools_are_isolated(layout):
    rx, app = tenant_app(queue=2, **layout)
    with TestClient(app) as client:
        r = client.post("/tenant", headers={"X-Tenant": "noisy"})
        assert r.status_code == 200
        noisy = rx.tenants.get("noisy")
        assert r.json()["pool"] == noisy.name
        gate, _ = block(noisy)
        flood = [noisy.submit(time.sleep, 0) for _ in range(2)]
        assert client.post("/tenant", headers={"X-Tenant": "noisy"}).status_code == 503
        # The quiet tenant's job does not wait behind the noisy one's queue.
        t0 = time.monotonic()
        r = client.post("/tenant", headers={"X-Tenant": "quiet"})
        assert r.status_code == 200 and r.json()["value"] == 3
        assert time.monotonic() - t0 < 2.0
        assert r.json()["pool"] != noisy.name
        # No header: the default tenant, its own pool.
        r = client.post("/tenant")
        assert r.json()["pool"] == rx.tenants.get("default").name
        gate.set()
        for f in flood:
            f.result(timeout=5)
        names = {p.name for p in rx.tenants.pools().values()}
    assert len(names) == 3
    assert not any(n in [p.name for p in rp.pools()] for n in names)


def test_shutdown_drains_and_closes_tenant_pools():
    rx, app = tenant_app(threads=1, queue=8)
    done = []
    with TestClient(app) as client:
        assert client.post("/tenant", headers={"X-Tenant": "t1"}).status_code == 200
        pool = rx.tenants.get("t1")
        jobs = [pool.submit(lambda i=i: (time.sleep(0.02), done.append(i))) for i in range(4)]
    assert pool.closed
    assert sorted(done) == list(range(4))
    assert all(j.status == "done" for j in jobs)


def test_bad_tenant_header_is_400():
    _, app = tenant_app()
    with TestClient(app) as client:
        assert client.post("/tenant", headers={"X-Tenant": "a b/c"}).status_code == 400
        assert client.post("/tenant", headers={"X-Tenant": "x" * 65}).status_code == 400


@pytest.mark.parametrize("layout", TWO_TENANTS_RUN_AT_ONCE)
def test_tenant_cap_rejects_with_429(layout):
    # Two tenants are held busy at once: each needs a thread (see above).
    rx, app = tenant_app(max_tenants=2, idle_timeout=60, **layout)
    with TestClient(app) as client:
        for t in ("a", "b"):
            assert client.post("/tenant", headers={"X-Tenant": t}).status_code == 200
        # Both are idle but recently used: the least recently used idle one is evicted.
        r = client.post("/tenant", headers={"X-Tenant": "c"})
        assert r.status_code == 200
        assert rx.tenants.evicted == 1
        gates = [block(rx.tenants.get(t))[0] for t in ("b", "c")]
        r = client.post("/tenant", headers={"X-Tenant": "d"})
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert rx.tenants.refused == 1
        for g in gates:
            g.set()


@pytest.mark.parametrize("layout", TWO_TENANTS_RUN_AT_ONCE)
def test_tenant_cap_shared_overflow_pool(layout):
    # The overflow pool serves while tenant "a" is blocked: it needs a thread.
    rx, app = tenant_app(max_tenants=1, overflow="shared", **layout)
    with TestClient(app) as client:
        assert client.post("/tenant", headers={"X-Tenant": "a"}).status_code == 200
        gate, _ = block(rx.tenants.get("a"))
        r1 = client.post("/tenant", headers={"X-Tenant": "b"})
        r2 = client.post("/tenant", headers={"X-Tenant": "c"})
        gate.set()
        assert r1.status_code == r2.status_code == 200
        assert r1.json()["pool"] == r2.json()["pool"] == rx.tenants.template.prefix + "overflow"
        snap = client.get("/stats").json()["tenants"]
        # "b"'s job had ended when "c" came: the idle overflow pool forgot it.
        assert snap["overflow_tenants"] == ["c"]


def test_overflow_tenants_are_forgotten_once_the_overflow_pool_is_idle():
    """Regression (soak with tenant churn): every tenant ever sent to the
    overflow pool was remembered for good, a set growing with each new
    tenant name (2,225 after one minute of churn, listed in every /stats),
    and such a tenant stayed on the shared pool even once the cap had room."""
    rx, app = tenant_app(max_tenants=1, overflow="shared", budget_threads=2, threads=1)
    with TestClient(app) as client:
        tenants = rx.tenants
        assert client.post("/tenant", headers={"X-Tenant": "a"}).status_code == 200
        gate, _ = block(tenants.get("a"))
        overflow = tenants.get("o-0")
        o_gate, o_jobs = block(overflow)  # the overflow pool busy: its tenants stay
        for i in range(1, 50):
            assert tenants.get(f"o-{i}") is overflow
        tenants.sweep()
        assert len(client.get("/stats").json()["tenants"]["overflow_tenants"]) == 50
        assert tenants.get("o-7") is overflow  # sticky while its pool holds work
        o_gate.set()
        o_jobs[0].result(timeout=HANG)
        wait_until(lambda: overflow.stats().running == 0, HANG)
        tenants.sweep()
        assert client.get("/stats").json()["tenants"]["overflow_tenants"] == []
        gate.set()
        wait_until(lambda: tenants.get("a").stats().running == 0, HANG)
        # The cap has room again (the idle "a" is evicted): a pool of its own.
        assert tenants.get("o-7") is not overflow
        assert tenants.get("o-7").name == tenants.template.prefix + "o-7"


def test_overflow_tenants_expire_after_idle_timeout_while_the_pool_stays_busy():
    rx, app = tenant_app(
        max_tenants=1, overflow="shared", budget_threads=2, threads=1, idle_timeout=0.05
    )
    with TestClient(app):
        tenants = rx.tenants
        gate, _ = block(tenants.get("a"))
        overflow = tenants.get("old")
        o_gate, _ = block(overflow)
        time.sleep(0.1)  # "old" idle for longer than idle_timeout
        assert tenants.get("new") is overflow
        tenants.sweep()
        assert tenants.snapshot()["overflow_tenants"] == ["new"]
        o_gate.set()
        gate.set()


def test_idle_tenants_are_evicted_and_closed():
    rx, app = tenant_app(idle_timeout=0.05)
    with TestClient(app) as client:
        assert client.post("/tenant", headers={"X-Tenant": "old"}).status_code == 200
        old = rx.tenants.get("old")
        time.sleep(0.15)
        assert client.post("/tenant", headers={"X-Tenant": "new"}).status_code == 200
        assert old.closed
        assert "old" not in rx.tenants.pools()
        assert rx.tenants.evicted >= 1
        assert old.stats().completed == 1  # nothing was lost by the eviction


def test_busy_tenant_is_not_evicted():
    rx, app = tenant_app(idle_timeout=0.05)
    with TestClient(app) as client:
        busy = rx.tenants.get("busy")
        gate, jobs = block(busy)
        time.sleep(0.15)
        rx.tenants.sweep()
        assert not busy.closed
        gate.set()
        jobs[0].result(timeout=5)
        assert client.post("/tenant", headers={"X-Tenant": "busy"}).status_code == 200


async def test_a_tenant_with_items_waiting_in_a_batcher_is_not_evicted():
    """Its own queue is empty, but requests for it wait in the Batcher for a
    slot of the shared budget: evicting it would fail them with PoolClosed."""
    rx, app = tenant_app(threads=1, queue=4, idle_timeout=0.01, max_tenants=2, overflow="reject")
    gate = threading.Event()
    batcher = rx.batcher(
        "b", Batcher(lambda items: [gate.wait(HANG) and x for x in items], max_total_inflight=1)
    )
    async with rx.lifespan(app):
        noisy, quiet = rx.tenants.get("noisy"), rx.tenants.get("quiet")
        first = batcher.submit(noisy, "n")  # takes the only slot
        wait_until(lambda: noisy.stats().running == 1)
        second = batcher.submit(quiet, "q")  # waits in the batcher
        assert quiet.stats().queued == quiet.stats().running == 0
        assert batcher.holds(quiet) and batcher.holds(noisy)
        await asyncio.sleep(0.03)  # past idle_timeout: only the batcher's item keeps quiet in use
        rx.tenants.sweep()
        with pytest.raises(TenantLimitReached):
            rx.tenants.get("third")  # neither tenant may be evicted for it
        assert not quiet.closed and not noisy.closed
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), HANG) == ["n", "q"]
        assert not batcher.holds(quiet)
        rx.tenants.sweep()
        wait_until(lambda: quiet.closed)  # idle now, and evicted


async def test_disconnect_before_start_cancels_the_job():
    name = uniq("disc")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    app = make_app(rx, name)
    async with rx.lifespan(app):
        pool = rp.get_pool(name)
        gate, _ = block(pool)
        disconnected = asyncio.Event()
        sent: list[dict] = []
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/work", "raw_path": b"/work", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80), "app": app, "state": {},
        }  # fmt: skip
        task = asyncio.ensure_future(app(scope, receive, send))
        while pool.stats().queued < 1:
            await asyncio.sleep(0.002)
        disconnected.set()
        await asyncio.wait_for(task, 5)
        gate.set()
        st = pool.stats()
        assert st.cancelled == 1
        assert st.completed + st.running + st.queued <= 1  # only the blocker ran
        assert sent[0]["status"] == 499


async def test_job_that_started_survives_disconnect():
    name = uniq("disc2")
    rx = Raptors(pools=[PoolConfig(name, threads=1, queue=8)])
    app = make_app(rx, name)
    async with rx.lifespan(app):
        pool = rp.get_pool(name)
        req = Request({"type": "http", "headers": []}, receive=_disconnect_now)
        job = pool.submit(time.sleep, 0.05)
        while not job.running():
            await asyncio.sleep(0.001)
        await rx.wait(req, job)  # disconnect arrives, cancel refused: result delivered
        assert job.status == "done"


async def _disconnect_now() -> dict:
    return {"type": "http.disconnect"}


def test_metrics_parse_and_carry_the_numbers():
    name = uniq("metrics")
    rx, app = tenant_app(threads=1, queue=4)
    rx.configs.append(PoolConfig(name, threads=1, queue=1))
    with TestClient(app) as client:
        pool = rx.get(name)
        pool.submit(sum, [1]).result(timeout=5)
        pool.submit(sum, [2]).result(timeout=5)
        with pytest.raises(TypeError):
            pool.submit(sum, 3).result(timeout=5)
        gate, _ = block(pool)
        queued = pool.submit(time.sleep, 0)
        with pytest.raises(rp.QueueFull):
            pool.submit(time.sleep, 0)
        client.post("/tenant", headers={"X-Tenant": "acme"})
        r = client.get("/metrics")
        gate.set()
        queued.result(timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    # Every pool series names its pool, tenant and budget ("": own threads).
    lab = (("budget", ""), ("pool", name), ("tenant", ""))
    assert samples[("raptors_jobs_submitted_total", lab)] == 5
    assert samples[("raptors_jobs_completed_total", lab)] == 2
    assert samples[("raptors_jobs_failed_total", lab)] == 1
    assert samples[("raptors_jobs_rejected_total", lab)] == 1
    assert samples[("raptors_pool_queued", lab)] == 1
    assert samples[("raptors_pool_running", lab)] == 1
    assert samples[("raptors_pool_threads", lab)] == 1
    assert samples[("raptors_pool_queue_capacity", lab)] == 1
    assert 0.0 <= samples[("raptors_pool_utilization", lab)] <= 1.0
    # One queued behind one running on one thread: the runtime's p99
    # prediction is at least the queued job's run time plus half a run.
    run_mean = samples[("raptors_pool_run_mean_seconds", lab)]
    assert run_mean > 0.0
    assert samples[("raptors_pool_predicted_wait_seconds", lab)] >= 1.5 * run_mean
    for kind in ("wait", "run"):
        for q in ("0.5", "0.99"):
            key = tuple(sorted((*lab, ("quantile", q))))
            assert samples[(f"raptors_job_{kind}_seconds", key)] >= 0.0
    tenant_lab = (
        ("budget", rx.tenants.template.prefix + "budget"),
        ("pool", rx.tenants.template.prefix + "acme"),
        ("tenant", "acme"),
    )
    assert samples[("raptors_jobs_completed_total", tenant_lab)] == 1


def test_json_stats_per_pool_and_tenant():
    name = uniq("stats")
    rx, app = tenant_app(threads=1, queue=4)
    rx.configs.append(PoolConfig(name, threads=1, queue=4))
    with TestClient(app) as client:
        client.post("/tenant", headers={"X-Tenant": "acme"})
        acme = rx.tenants.get("acme")
        gate, _ = block(acme)
        pending = [acme.submit(time.sleep, 0) for _ in range(3)]
        doc = client.get("/stats").json()
        gate.set()
        for p in pending:
            p.result(timeout=5)
    json.dumps(doc)
    assert doc["pools"][name]["submitted"] == 0
    assert doc["pools"][acme.name]["queued"] == 3
    assert doc["pools"][acme.name]["running"] == 1
    entry = doc["tenants"]["tenants"]["acme"]
    assert entry == {
        "pool": acme.name,
        "queued": 3,
        "running": 1,
        "idle_seconds": entry["idle_seconds"],
        # The tenant pools share a budget (the default): weight and share too.
        "weight": 1.0,
        "share": entry["share"],
    }
    assert 0.0 <= entry["share"] <= 1.0
    assert doc["tenants"]["count"] == 1


async def test_batcher_coalesces_and_keeps_order():
    pool = rp.Pool(uniq("batch"), threads=1, queue=4)
    calls: list[list[int]] = []

    def double_all(items):
        calls.append(list(items))
        return [2 * x for x in items]

    batcher = Batcher(double_all, max_batch=3, max_pending=6)
    try:
        gate, _ = block(pool)
        futs = [batcher.submit(pool, i) for i in range(7)]
        # The worker is busy: the first call took the one slot (queued alone),
        # the other six wait in the batcher and leave three at a time.
        assert pool.stats().queued == 1
        gate.set()
        assert await asyncio.gather(*futs) == [2 * i for i in range(7)]
        assert calls == [[0], [1, 2, 3], [4, 5, 6]]
        assert (batcher.batches, batcher.items) == (3, 7)
    finally:
        pool.close()


async def test_a_queued_batch_job_whose_callers_all_left_is_cancelled():
    """Regression (HTTP fuzz): a call that finds a free slot is submitted
    alone at once, so a client that left while that job waited in the pool
    got its 499 but the job still ran: an abandoned request cost compute."""
    pool = rp.Pool(uniq("batch-abandon"), threads=1, queue=4)
    ran: list[list[int]] = []

    def record(items):
        ran.append(list(items))
        return items

    batcher = Batcher(record, max_inflight=2)
    try:
        gate, _ = block(pool)
        # Both find a free slot: each is submitted at once, alone, and waits
        # in the pool behind the gate; a third waits in the batcher.
        first, second, third = (batcher.submit(pool, i) for i in (1, 2, 3))
        assert pool.stats().queued == 2 and batcher.pending == 1
        first.cancel()  # its caller left: the queued job is cancelled

        async def cancelled() -> None:
            while pool.stats().cancelled < 1:
                await asyncio.sleep(0.002)

        await asyncio.wait_for(cancelled(), HANG)
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(second, third), HANG) == [2, 3]
        st = pool.stats()
        assert st.cancelled == 1 and sorted(ran) == [[2], [3]], (st, ran)
        assert st.submitted == st.completed + st.cancelled + st.failed + st.expired
    finally:
        pool.close()


async def test_batcher_drops_cancelled_items_and_reports_queue_full():
    pool = rp.Pool(uniq("batch2"), threads=1, queue=1)
    seen: list[list[int]] = []

    def record(items):
        seen.append(list(items))
        return items

    batcher = Batcher(record)
    try:
        gate, _ = block(pool)
        filler = pool.submit(time.sleep, 0)  # the queue (capacity 1) is now full
        first = batcher.submit(pool, 0)
        with pytest.raises(rp.QueueFull):
            await first
        # The pool is still busy, so later items queue in the batcher itself.
        gate.set()
        filler.result(timeout=5)
        a, b = batcher.submit(pool, 1), batcher.submit(pool, 2)
        b.cancel()
        assert await a == 1
        assert [2] not in seen and all(2 not in s for s in seen)
    finally:
        pool.close()


async def test_batcher_runs_a_native_kernel_through_gather_and_scatter():
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((300, 16)).astype(np.float32)
    queries = [rng.standard_normal(16).astype(np.float32) for _ in range(6)]
    pool = rp.Pool(uniq("batch-native"), threads=1, queue=8)
    batcher = Batcher(
        rp.cosine_topk,
        gather=lambda qs: (matrix, np.stack(qs), 3),
        scatter=lambda result: list(zip(*result, strict=True)),
    )
    try:
        gate, _ = block(pool)
        futs = [batcher.submit(pool, q) for q in queries]
        gate.set()
        answers = await asyncio.gather(*futs)
        assert batcher.items == 6 and batcher.batches == 2  # one alone, then five together
        for q, (ids, scores) in zip(queries, answers, strict=True):
            want_ids, want_scores = rp.topk(rp.cosine_similarity(matrix, q), 3)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    finally:
        pool.close()


async def test_batcher_bounds_waiting_items_like_the_queue():
    pool = rp.Pool(uniq("batch-bound"), threads=1, queue=2)
    batcher = Batcher(lambda items: items)
    try:
        gate, _ = block(pool)
        first = batcher.submit(pool, 0)  # takes the lane's one slot: queued in the pool
        waiting = [batcher.submit(pool, i) for i in (1, 2)]
        assert batcher.pending == 2
        refused = batcher.submit(pool, 3)
        with pytest.raises(rp.QueueFull, match="2 requests are already waiting") as info:
            await refused
        assert (info.value.pool, info.value.capacity) == (pool.name, 2)
        assert batcher.rejected == 1 and batcher.pending == 2
        gate.set()
        assert await first == 0
        assert await asyncio.gather(*waiting) == [1, 2]
        assert batcher.pending == 0 and batcher.items == 3
    finally:
        pool.close()


async def test_batcher_expires_items_that_wait_past_their_timeout():
    pool = rp.Pool(uniq("batch-expire"), threads=1, queue=4)
    ran: list[list[int]] = []

    def slow_first(items):
        ran.append(list(items))
        if 0 in items:
            time.sleep(0.3)
        return items

    batcher = Batcher(slow_first)
    try:
        first = batcher.submit(pool, 0, timeout=0.05)  # starts at once, runs 0.3 s
        wait_until(lambda: pool.stats().running == 1)
        late = batcher.submit(pool, 1, timeout=0.05)  # waits for the lane's one slot
        assert batcher.pending == 1
        with pytest.raises(rp.DeadlineExceeded, match="waited 0.05 s for a batch slot"):
            await asyncio.wait_for(late, HANG)
        assert batcher.expired == 1
        assert await asyncio.wait_for(first, HANG) == 0
        await asyncio.sleep(0.05)
        assert ran == [[0]] and batcher.pending == 0
        s = pool.stats()
        assert (s.submitted, s.completed, s.expired) == (
            1,
            1,
            0,
        )  # the late item never reached the pool
    finally:
        pool.close()


async def test_batcher_hands_closed_pools_and_gather_errors_to_the_caller():
    pool = rp.Pool(uniq("batch-errors"), threads=1, queue=2)

    def gather(items):
        raise ValueError(f"cannot stack {len(items)} items")

    batcher = Batcher(lambda items: items, gather=gather)
    with pytest.raises(ValueError, match="cannot stack 1 items"):
        await batcher.submit(pool, 0)
    pool.close()
    with pytest.raises(rp.PoolClosed, match="closed") as info:
        await Batcher(lambda items: items).submit(pool, 0)
    assert info.value.pool == pool.name
    assert pool.stats().submitted == 0


async def test_batcher_shares_a_slot_budget_fairly_between_pools():
    noisy = rp.Pool(uniq("noisy"), threads=1, queue=16)
    quiet = rp.Pool(uniq("quiet"), threads=1, queue=16)
    gate = threading.Event()
    order: list[list[str]] = []

    def run(items):
        gate.wait(HANG)
        order.append(list(items))
        return items

    batcher = Batcher(run, max_batch=2, max_total_inflight=1)
    try:
        futs = [batcher.submit(noisy, "n0")]  # takes the one shared slot
        futs += [batcher.submit(noisy, f"n{i}") for i in range(1, 7)]
        futs.append(batcher.submit(quiet, "q0"))
        futs.append(batcher.submit(noisy, "high", priority=5))
        assert (batcher.inflight, batcher.pending) == (1, 8)
        assert noisy.stats().submitted == 1 and quiet.stats().submitted == 0
        gate.set()
        await asyncio.wait_for(asyncio.gather(*futs), HANG)
        # The quiet pool goes next although it asked last; then the noisy
        # pool's highest priority; the flood leaves in batches.
        assert order == [["n0"], ["q0"], ["high"], ["n1", "n2"], ["n3", "n4"], ["n5", "n6"]]
        assert batcher.stats() == {
            "batches": 6, "items": 9, "pending": 0, "inflight": 0, "rejected": 0, "expired": 0,
        }  # fmt: skip
    finally:
        noisy.close()
        quiet.close()


# --- tenant pools on a shared budget ---------------------------------------------------


def os_threads() -> int:
    """Threads of this process, as the kernel counts them."""
    return len(os.listdir("/proc/self/task"))


needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task"
)


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_default_budget_threads_leave_the_event_loop_a_core():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_budget_threads() == max(1, cores - 1)
    rx, app = tenant_app()
    with TestClient(app):
        assert rx.tenants.budget.threads == default_budget_threads()
        pool = rx.tenants.get("acme")
        # threads=None on a budget: the tenant may use all of the budget's threads.
        assert pool.budget is rx.tenants.budget and pool.threads == default_budget_threads()


@needs_proc
def test_tenant_pools_share_one_budget_and_own_no_threads():
    rx, app = tenant_app(budget_threads=2, queue=4)
    prefix = rx.tenants.template.prefix
    with TestClient(app) as client:
        budget = rx.tenants.budget
        assert isinstance(budget, rp.Budget) and not budget.closed
        assert budget.name == prefix + "budget" and budget.threads == 2
        assert rp.get_budget(budget.name) is budget
        assert client.post("/tenant", headers={"X-Tenant": "t0"}).json()["value"] == 3
        before = os_threads()
        for i in range(1, 8):
            r = client.post("/tenant", headers={"X-Tenant": f"t{i}"})
            assert r.status_code == 200 and r.json()["pool"] == f"{prefix}t{i}"
        assert os_threads() == before  # eight tenants, the budget's threads only
        pools = rx.tenants.pools()
        assert len(pools) == 8
        assert all(p.budget is budget and p.threads == 2 for p in pools.values())
        assert {p.name for p in budget.pools()} == {p.name for p in pools.values()}
        assert rx.budgets() == {budget.name: budget}
    assert budget.closed and all(p.closed for p in pools.values())
    assert budget.name not in [b.name for b in rp.budgets()]


@needs_proc
def test_budget_false_keeps_threads_of_their_own_per_tenant():
    rx, app = tenant_app(budget=False, queue=4)
    with TestClient(app) as client:
        assert rx.tenants.budget is None
        assert client.post("/tenant", headers={"X-Tenant": "t0"}).status_code == 200
        before = os_threads()
        for i in range(1, 4):
            assert client.post("/tenant", headers={"X-Tenant": f"t{i}"}).status_code == 200
        assert os_threads() == before + 3  # threads=None with budget=False: 1 each
        pool = rx.tenants.get("t1")
        assert pool.budget is None and pool.threads == 1
        doc = client.get("/stats").json()
        assert doc["budgets"] == {} and doc["tenants"]["budget"] is None
        assert doc["tenants"]["tenants"]["t1"]["weight"] is None
        assert doc["tenants"]["tenants"]["t1"]["share"] is None
        assert "raptors_budget_threads" not in client.get("/metrics").text
    rx, app = tenant_app(budget=False, threads=2)
    with TestClient(app):
        pool = rx.tenants.get("t")
        assert pool.budget is None and pool.threads == 2


WEIGHTS = [
    pytest.param({"weights": {"gold": 3}}, id="mapping"),  # "free": default_weight 1
    # A callable; None means default_weight. 1.5 : 0.5 is 3 : 1.
    pytest.param({"weights": lambda t: {"gold": 1.5}.get(t), "default_weight": 0.5}, id="callable"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_tenant_weights_split_the_budget(weights):
    rx, app = tenant_app(budget_threads=1, queue=256, **weights)
    with TestClient(app):
        gold, free = rx.tenants.get("gold"), rx.tenants.get("free")
        snap = rx.tenants.snapshot()["tenants"]
        assert snap["gold"]["weight"] == 3 * snap["free"]["weight"]
        # Both tenants kept saturated: far more 10 ms jobs queued than run in the window.
        jobs = []
        for _ in range(200):
            jobs += [gold.submit(time.sleep, 0.01), free.submit(time.sleep, 0.01)]
        # Over >= 1.1 s of the budget's one thread (the jobs' sleeps are the work):
        wait_until(lambda: gold.stats().completed + free.stats().completed >= 110, timeout=HANG)
        shares = rx.tenants.budget.stats().shares
        snap = rx.tenants.snapshot()["tenants"]
        for job in jobs:
            job.cancel()  # the rest never runs: the lifespan's drain is quick
    fraction = shares[gold.name] / (shares[gold.name] + shares[free.name])
    assert 0.6 <= fraction <= 0.9, shares
    assert snap["gold"]["share"] > snap["free"]["share"] > 0.0


def test_threads_cap_each_tenant_on_the_budget():
    rx, app = tenant_app(budget_threads=2, threads=1, queue=4)
    with TestClient(app):
        capped, other = rx.tenants.get("capped"), rx.tenants.get("other")
        assert capped.threads == other.threads == 1 and rx.tenants.budget.threads == 2
        gate = threading.Event()
        held = [capped.submit(gate.wait, HANG) for _ in range(2)]
        wait_until(lambda: capped.stats().running == 1 and capped.stats().queued == 1)
        # A budget thread is idle, but the capped tenant may not take it ...
        assert other.submit(sum, [1, 2]).result(timeout=HANG) == 3  # ... the other tenant may.
        assert (capped.stats().running, capped.stats().queued) == (1, 1)
        gate.set()
        for job in held:
            assert job.result(timeout=HANG) is True


def test_a_cap_above_the_budget_fails_at_startup():
    with pytest.raises(ValueError, match="per-tenant cap"):
        TenantTemplate(threads=3, budget_threads=2)
    rx, app = tenant_app(threads=default_budget_threads() + 1)
    name = rx.tenants.template.prefix + "budget"
    with pytest.raises(ValueError, match="per-tenant cap"), TestClient(app):
        pass
    assert name not in [b.name for b in rp.budgets()]


def test_evicting_a_tenant_leaves_the_others_on_the_budget():
    rx, app = tenant_app(budget_threads=2, threads=1, max_tenants=2, idle_timeout=60)
    with TestClient(app) as client:
        budget = rx.tenants.budget
        busy, idle = rx.tenants.get("busy"), rx.tenants.get("idle")
        gate = threading.Event()
        held = busy.submit(gate.wait, HANG)
        wait_until(lambda: busy.stats().running == 1)
        new = rx.tenants.get("new")  # the least recently used idle tenant goes
        assert idle.closed and rx.tenants.evicted == 1
        assert not budget.closed and not busy.closed
        assert {p.name for p in budget.pools()} == {busy.name, new.name}
        assert new.submit(sum, [4]).result(timeout=HANG) == 4
        queued = busy.submit(sum, [5])
        gate.set()
        assert held.result(timeout=HANG) is True and queued.result(timeout=HANG) == 5
        for tenant in ("busy", "new"):
            assert client.post("/tenant", headers={"X-Tenant": tenant}).status_code == 200


def test_close_closes_the_budget_and_open_makes_a_new_one():
    rx, app = tenant_app(budget_threads=1)
    with TestClient(app) as client:
        first = rx.tenants.budget
        assert client.post("/tenant", headers={"X-Tenant": "a"}).status_code == 200
        pool = rx.tenants.get("a")
    assert first.closed and pool.closed and rx.tenants.budget is None
    assert first.name not in [b.name for b in rp.budgets()]
    with TestClient(app) as client:  # the lifespan again: Raptors.open
        second = rx.tenants.budget
        assert second is not first and second.name == first.name and not second.closed
        assert client.post("/tenant", headers={"X-Tenant": "a"}).status_code == 200
        assert rx.tenants.get("a").budget is second
    assert second.closed


def test_tenant_pools_alone_open_their_budget_on_first_use_and_close_it():
    tenants = TenantPools({"prefix": uniq("alone") + "-", "budget_threads": 1})
    assert tenants.budget is None
    pool = tenants.get("a")
    budget = tenants.budget
    assert pool.budget is budget and budget.threads == 1
    assert pool.submit(sum, [1, 1]).result(timeout=HANG) == 2
    tenants.close()
    assert pool.closed and budget.closed and tenants.budget is None
    with pytest.raises(rp.PoolClosed):
        tenants.get("a")


def test_stats_and_metrics_show_the_budget_and_each_tenant_share():
    name = uniq("plain")
    rx, app = tenant_app(budget_threads=1, weights={"acme": 2})
    rx.configs.append(PoolConfig(name, threads=1, queue=4))
    with TestClient(app) as client:
        acme = rx.tenants.get("acme")
        budget = rx.tenants.budget
        acme.submit(time.sleep, 0.05).result(timeout=HANG)  # busy time on the budget
        doc = client.get("/stats").json()
        text = client.get("/metrics").text
    json.dumps(doc)
    assert set(doc["budgets"]) == {budget.name}  # the plain pool runs on no shared budget
    b = doc["budgets"][budget.name]
    assert (b["name"], b["threads"], b["running"]) == (budget.name, 1, 0)
    assert 0.0 < b["utilization"] <= 1.0
    assert b["shares"] == {acme.name: pytest.approx(1.0)}
    assert doc["tenants"]["budget"] == budget.name
    entry = doc["tenants"]["tenants"]["acme"]
    assert entry["weight"] == 2.0 and entry["share"] == pytest.approx(1.0)

    samples = samples_of(text)
    lab = (("budget", budget.name),)
    assert samples[("raptors_budget_threads", lab)] == 1
    assert samples[("raptors_budget_running", lab)] == 0
    assert 0.0 < samples[("raptors_budget_utilization", lab)] <= 1.0
    share = (("budget", budget.name), ("pool", acme.name), ("tenant", "acme"))
    assert samples[("raptors_pool_share", share)] == pytest.approx(1.0)
    # Only pools on a budget have a share; every pool gauge has the same labels.
    assert [k for k in samples if k[0] == "raptors_pool_share"] == [("raptors_pool_share", share)]
    assert samples[("raptors_pool_threads", share)] == 1


def test_tenant_template_validates_the_budget_fields():
    for kwargs, error, match in [
        ({"budget": 1}, TypeError, "budget must be True or False"),
        ({"budget_threads": 0}, ValueError, "budget_threads must be >= 1"),
        ({"budget_threads": 1.5}, TypeError, "budget_threads must be an int"),
        ({"threads": 0}, ValueError, "threads must be >= 1"),
        ({"budget": False, "budget_threads": 2}, ValueError, "needs budget=True"),
        ({"default_weight": 0}, ValueError, "default_weight must be a finite number > 0"),
        ({"default_weight": True}, TypeError, "default_weight must be an int or a float"),
        ({"weights": {"a": -1}}, ValueError, r"weights\['a'\] must be a finite number > 0"),
        ({"weights": {"a": float("nan")}}, ValueError, "finite number"),
        ({"weights": {"a": "3"}}, TypeError, r"weights\['a'\] must be an int or a float"),
        ({"weights": {1: 3}}, TypeError, "weights keys must be tenant ids"),
        ({"weights": 3}, TypeError, "weights must be a mapping"),
    ]:
        with pytest.raises(error, match=match):
            TenantTemplate(**kwargs)
    template = TenantTemplate(weights={"a": 2}, default_weight=0.5)
    assert template.weight_of("a") == 2.0 and template.weight_of("b") == 0.5
    assert hash(template) == hash(TenantTemplate(weights={"a": 2}, default_weight=0.5))
    bad = TenantTemplate(weights=lambda tenant: 0)
    with pytest.raises(ValueError, match=r"weights\('x'\) must be a finite number > 0"):
        bad.weight_of("x")


async def test_a_batcher_has_no_cross_pool_cap_by_default():
    """The budget shares the CPU between tenant pools; the Batcher does not
    hold a quiet tenant's item back because another tenant's batches run."""
    rx, app = tenant_app(budget_threads=1, queue=8)
    batcher = rx.batcher("b", Batcher(lambda items: list(items)))
    assert batcher.max_total_inflight is None
    async with rx.lifespan(app):
        noisy, quiet = rx.tenants.get("noisy"), rx.tenants.get("quiet")
        gate = threading.Event()
        held = noisy.submit(gate.wait, HANG)  # the budget's one thread
        wait_until(lambda: noisy.stats().running == 1)
        futs = [batcher.submit(noisy, f"n{i}") for i in range(3)]  # 1 queued, 2 waiting
        futs.append(batcher.submit(quiet, "q"))  # its own slot: straight to its pool
        assert quiet.stats().queued == 1 and batcher.pending == 2 and batcher.inflight == 2
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*futs), HANG) == ["n0", "n1", "n2", "q"]
        assert await asyncio.wait_for(held, HANG) is True


def test_the_predicted_wait_series_is_the_runtimes_prediction():
    """/metrics exports PoolStats.predicted_wait, the prediction admission
    makes, not a second formula: 0 while a thread is free, then growing with
    the work queued ahead."""
    from raptors._metrics import pool_row

    pool = rp.Pool(f"pw-{uuid.uuid4().hex[:6]}", threads=1, queue=16)
    try:
        for _ in range(5):
            pool.submit(time.sleep, 0.002).result(HANG)
        assert pool.stats().predicted_wait == 0.0 == pool_row(pool, "", {}).values["predicted_wait"]
        gate = threading.Event()
        held = pool.submit(gate.wait, HANG)
        wait_until(lambda: pool.stats().running == 1)
        one = pool_row(pool, "", {}).values["predicted_wait"]
        queued = [pool.submit(time.sleep, 0.002) for _ in range(8)]
        eight = pool.stats().predicted_wait
        assert 0.0 < one < eight
        assert pool_row(pool, "", {}).values["predicted_wait"] > one
        gate.set()
        for job in [held, *queued]:
            job.result(HANG)
    finally:
        pool.close()


def test_every_series_has_one_name_and_a_multiprocess_mode():
    from raptors._metrics import SERIES

    names = [s.name for s in SERIES]
    assert len(set(names)) == len(names) and len({s.otel for s in SERIES}) == len(SERIES)
    for s in SERIES:
        assert s.name.startswith("raptors_") and not s.name.endswith("_total")
        assert s.otel.startswith("raptors.")
        if s.kind == "gauge":
            assert s.mode in ("livesum", "livemax", "liveall")
        if s.unit == "s":
            assert s.name.endswith("_seconds")


class _FakeMeter:
    """Records the observable instruments made on it (the OpenTelemetry API
    without an SDK collects nothing)."""

    def __init__(self) -> None:
        self.instruments: dict[str, tuple[str, str, list]] = {}

    def _make(self, kind: str, name: str, callbacks=None, unit: str = "", description: str = ""):
        self.instruments[name] = (kind, unit, list(callbacks or []))
        return name

    def create_observable_gauge(self, name, callbacks=None, unit="", description=""):
        return self._make("gauge", name, callbacks, unit, description)

    def create_observable_counter(self, name, callbacks=None, unit="", description=""):
        return self._make("counter", name, callbacks, unit, description)

    def collect(self) -> dict[str, list[tuple[float, dict]]]:
        from opentelemetry.metrics import CallbackOptions

        out = {}
        for name, (_, _, callbacks) in self.instruments.items():
            out[name] = [
                (o.value, dict(o.attributes)) for cb in callbacks for o in cb(CallbackOptions())
            ]
        return out


def test_opentelemetry_instruments_carry_the_same_numbers():
    pytest.importorskip("opentelemetry.metrics")
    name = uniq("otel")
    rx, app = tenant_app(budget_threads=1, max_tenants=1)
    rx.configs.append(PoolConfig(name, threads=1, queue=8))
    meter = _FakeMeter()
    assert rx.instrument_opentelemetry(meter) is rx.instrument_opentelemetry(meter)
    rx.otel.max_age = 0.0  # a fresh snapshot for every collection
    with TestClient(app):
        for _ in range(3):
            rx.get(name).submit(sum, [1]).result(timeout=HANG)
        prefix = rx.tenants.template.prefix
        # max_tenants=1: each evicts the other; globex's pool and acme's
        # first one come and go between two collections.
        for tenant in ("acme", "globex", "acme"):
            rx.tenants.get(tenant).submit(sum, [2]).result(timeout=HANG)
        seen = meter.collect()
        assert rx.tenants.evicted == 2
    assert meter.instruments["raptors.pool.queue.capacity"][:2] == ("gauge", "{job}")
    assert meter.instruments["raptors.pool.job.completed"][:2] == ("counter", "{job}")
    plain = {"raptors.pool.name": name}
    assert (8.0, plain) in seen["raptors.pool.queue.capacity"]
    assert (3.0, plain) in seen["raptors.pool.job.completed"]
    completed = {a.get("raptors.tenant.id"): v for v, a in seen["raptors.pool.job.completed"]}
    # Totals never go back: the evicted pools, never seen open, still count.
    assert completed["acme"] == 2.0 and completed["globex"] == 1.0
    capacity = {a.get("raptors.tenant.id"): v for v, a in seen["raptors.pool.queue.capacity"]}
    assert "globex" not in capacity  # gauges: only open pools
    budget = {"raptors.budget.name": prefix + "budget"}
    assert (1.0, budget) in seen["raptors.budget.thread.limit"]
    acme = {"raptors.pool.name": prefix + "acme", "raptors.tenant.id": "acme", **budget}
    assert any(a == {**acme, "quantile": "0.99"} for _, a in seen["raptors.pool.job.wait.duration"])
