"""The demo scoring service: answers, HTTP surface, 4xx, 503, 504, tenants, stats."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import raptors as rp
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from raptors import bench, service

SMALL = service.make_matrix(rows=2_000, dim=service.DIM, seed=5)


def body(q) -> dict:
    return {"query": [float(x) for x in q]}


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return service.make_queries(6)


def test_matrix_is_seeded_normalised_float32():
    m = service.make_matrix()
    assert m.shape == (20_000, 256) and m.dtype == np.float32 and m.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(m[:3], service.make_matrix()[:3])


@pytest.mark.parametrize(
    "variant",
    [
        "raptors",
        "raptors-single",
        "numpy-inline",
        "numpy-to-thread",
        "numpy-anyio-tenant",
        "numpy-def",
    ],
)
def test_every_variant_gives_the_same_correct_top10(variant, queries):
    m64 = SMALL.astype(np.float64)
    app = service.create_app(variant, matrix=SMALL, tenant_threads=1)
    with TestClient(app) as client:
        for q in [*queries, np.zeros(service.DIM, np.float32), SMALL[42] * 3]:
            r = client.post("/score", json=body(q))
            assert r.status_code == 200, r.text
            doc = r.json()
            assert set(doc) == {"ids", "scores"}
            assert all(isinstance(i, int) for i in doc["ids"])
            assert bench.answer_problem(m64, q, doc["ids"], doc["scores"]) is None
        doc = client.post("/score", json=body(SMALL[42] * 3)).json()
        assert doc["ids"][0] == 42 and doc["scores"][0] == pytest.approx(1.0, abs=1e-5)


def test_raptors_variant_coalesces_waiting_requests(queries):
    m64 = SMALL.astype(np.float64)
    app = service.create_app("raptors", matrix=SMALL, tenant_threads=1, tenant_queue=8)
    with TestClient(app) as c:
        pool = app.state.raptors.tenants.get("default")
        gate = threading.Event()
        pool.submit(gate.wait, 10.0)
        while pool.stats().running < 1:
            time.sleep(0.002)
        answers: dict[int, dict] = {}

        def call(i: int) -> None:
            answers[i] = c.post("/score", json=body(queries[i])).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        # The first request takes the one free slot; the rest wait as one batch.
        deadline = time.monotonic() + 5
        while app.state.batcher.items < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.2)
        gate.set()
        for t in threads:
            t.join(10)
        assert app.state.batcher.items == len(queries)
        assert app.state.batcher.batches < len(queries)
    for i, q in enumerate(queries):
        assert bench.answer_problem(m64, q, answers[i]["ids"], answers[i]["scores"]) is None


def test_answer_check_catches_wrong_answers(queries):
    m64 = SMALL.astype(np.float64)
    q = queries[0]
    ids, scores = service.topk_numpy(SMALL, q)
    ids, scores = ids.tolist(), scores.tolist()
    assert bench.answer_problem(m64, q, ids, scores) is None
    assert bench.answer_problem(m64, q, ids[:9] + [ids[0]], scores) is not None
    worse = int(np.argsort(SMALL @ q)[-20])
    assert bench.answer_problem(m64, q, ids[:9] + [worse], scores) is not None
    assert bench.answer_problem(m64, q, ids, [s + 0.01 for s in scores]) is not None


@pytest.fixture(params=["raptors", "raptors-single"])
def client(request):
    app = service.create_app(request.param, matrix=SMALL, tenant_threads=1, tenant_queue=2)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    "payload,status",
    [
        (b"not json", 400),
        (b"[1, 2]", 422),
        (b'{"q": []}', 422),
        (b'{"query": [1.0, 2.0]}', 422),
        (b'{"query": "abc"}', 422),
        (('{"query": [' + ",".join(['"1"'] * 256) + "]}").encode(), 422),
        (('{"query": [' + ",".join(["true"] * 256) + "]}").encode(), 422),
        (('{"query": [' + ",".join(["NaN"] * 256) + "]}").encode(), 422),
        (('{"query": [' + ",".join(["[1]"] * 256) + "]}").encode(), 422),
        (('{"query": [' + ",".join(["1e39"] * 256) + "]}").encode(), 422),
        (('{"query": [' + ",".join(["1" + "0" * 400] + ["1"] * 255) + "]}").encode(), 422),
        (b" " * 70_000, 413),
        (b"[" * 30_000 + b"]" * 30_000, 400),
        (b'{"query": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400),
        (b'{"a": ' * 6_000 + b"1" + b"}" * 6_000, 400),
    ],
)
def test_malformed_requests_are_4xx(client, payload, status):
    r = client.post("/score", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text


def test_a_client_gone_mid_body_is_not_an_application_error(client):
    """The ASGI app answers a disconnect during the body with 499 and raises
    nothing (a server would log a raised exception as an ERROR traceback)."""
    import asyncio

    messages = [
        {"type": "http.request", "body": b'{"query": [1', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/score",
        "raw_path": b"/score",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(client.app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]


def test_integers_are_accepted(client):
    r = client.post("/score", json={"query": [1] * service.DIM})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers,params",
    [({"X-Priority": "high"}, {}), ({}, {"priority": "1.5"}), ({"X-Timeout": "-1"}, {}),
     ({}, {"timeout": "soon"}), ({"X-Tenant": "bad tenant"}, {}), ({"X-Timeout-Ms": "0"}, {}),
     ({"X-Timeout-Ms": "nan"}, {}), ({"X-Timeout-Ms": "fast"}, {})],
)  # fmt: skip
def test_bad_headers_are_400(client, queries, headers, params):
    r = client.post("/score", json=body(queries[0]), headers=headers, params=params)
    assert r.status_code == 400, r.text


def test_priority_header_and_query_param():
    class R:
        def __init__(self, headers, params):
            self.headers, self.query_params = headers, params

    assert service.parse_priority(R({}, {})) == 0
    assert service.parse_priority(R({"x-priority": "7"}, {"priority": "1"})) == 7
    assert service.parse_priority(R({}, {"priority": "-3"})) == -3


def test_priorities_order_queued_requests(queries):
    # One job per request: the pool's queue orders them. (The coalescing
    # variant orders waiting requests in its Batcher: see test_fastapi.)
    app = service.create_app("raptors-single", matrix=SMALL, tenant_threads=1, tenant_queue=8)
    with TestClient(app) as c:
        pool = app.state.raptors.tenants.get("prio")
        gate = threading.Event()
        pool.submit(gate.wait, 10.0)
        while pool.stats().running < 1:
            time.sleep(0.002)
        statuses: list[int] = []

        def call(priority_header=None, params=None):
            headers = {"X-Tenant": "prio"}
            if priority_header is not None:
                headers["X-Priority"] = priority_header
            r = c.post("/score", json=body(queries[0]), headers=headers, params=params)
            statuses.append(r.status_code)

        threads = [
            threading.Thread(target=call),
            threading.Thread(target=call, args=("9",)),
            threading.Thread(target=call, kwargs={"params": {"priority": "5"}}),
        ]
        for n, t in enumerate(threads, 1):
            t.start()
            while pool.stats().queued < n:
                time.sleep(0.002)
        # A probe at priority 3 runs after the two prioritised requests and
        # before the priority-0 one, which must still be waiting then.
        probe = pool.submit(lambda: pool.stats().queued, priority=3)
        gate.set()
        for t in threads:
            t.join(10)
        assert probe.result(timeout=5) == 1
    assert statuses == [200, 200, 200]


def test_full_tenant_queue_is_503_and_other_tenants_are_served(client, queries):
    # The tenant pools share the demo's budget (here 1 thread, which the
    # noisy tenant's blocker holds): the quiet tenant's request is accepted
    # into its own queue at once, not refused or queued behind the noisy
    # tenant's full queue, and is served once the running job ends. (Before
    # budgets each tenant had a thread of its own and was served while the
    # noisy one stayed blocked.)
    rx = client.app.state.raptors
    pool = rx.tenants.get("noisy")
    quiet = rx.tenants.get("quiet")
    gate = threading.Event()
    pool.submit(gate.wait, 10.0)
    while pool.stats().running < 1:
        time.sleep(0.002)
    fill = [pool.submit(time.sleep, 0) for _ in range(2)]
    r = client.post("/score", json=body(queries[0]), headers={"X-Tenant": "noisy"})
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    statuses: list[int] = []

    def call() -> None:
        r = client.post("/score", json=body(queries[0]), headers={"X-Tenant": "quiet"})
        statuses.append(r.status_code)

    caller = threading.Thread(target=call)
    caller.start()
    while quiet.stats().queued < 1:  # accepted: waiting for the budget's thread
        time.sleep(0.002)
    assert pool.stats().queued == 2
    gate.set()
    caller.join(10)
    assert statuses == [200]
    for f in fill:
        f.result(timeout=5)


def test_the_tenant_pools_share_one_budget_and_the_batcher_has_no_total_cap():
    app = service.create_app("raptors", matrix=SMALL, tenant_threads=2)
    with TestClient(app) as c:
        rx = app.state.raptors
        budget = rx.tenants.budget
        assert budget.name == "tenant-budget" and budget.threads == 2
        for tenant in ("acme", "globex"):
            assert c.post("/score", json=body(SMALL[1]), headers={"X-Tenant": tenant}).is_success
        pools = rx.tenants.pools().values()
        # No per-tenant cap: each tenant may use the whole budget; equal weights.
        assert [(p.budget, p.threads) for p in pools] == [(budget, 2), (budget, 2)]
        stats = c.get("/stats").json()
        assert stats["budgets"]["tenant-budget"]["threads"] == 2
        assert {t["weight"] for t in stats["tenants"]["tenants"].values()} == {1.0}
        # CPU sharing is the budget's: the Batcher caps no batch jobs over all tenants.
        assert app.state.batcher.max_total_inflight is None
    assert budget.closed


def test_the_default_budget_leaves_the_event_loop_a_core(monkeypatch):
    monkeypatch.delenv("RAPTORS_TENANT_THREADS", raising=False)
    expected = max(1, len(os.sched_getaffinity(0)) - 1)
    assert service.default_tenant_threads() == expected
    app = service.create_app("raptors-single", matrix=SMALL)
    with TestClient(app):
        assert app.state.raptors.tenants.budget.threads == expected


def test_tenant_budget_false_gives_each_tenant_threads_of_its_own():
    app = service.create_app("raptors-single", matrix=SMALL, tenant_threads=1, tenant_budget=False)
    with TestClient(app) as c:
        assert app.state.raptors.tenants.budget is None
        assert c.post("/score", json=body(SMALL[1]), headers={"X-Tenant": "a"}).is_success
        pool = app.state.raptors.tenants.get("a")
        assert pool.budget is None and pool.threads == 1


def test_timeout_headers_and_query_param():
    class R:
        def __init__(self, headers, params):
            self.headers, self.query_params = headers, params

    assert service.parse_timeout(R({}, {}), None) is None
    assert service.parse_timeout(R({}, {}), 2.0) == 2.0
    assert service.parse_timeout(R({"x-timeout": "0.5"}, {}), None) == 0.5
    assert service.parse_timeout(R({}, {"timeout": "3"}), None) == 3.0
    # Milliseconds win over seconds.
    assert service.parse_timeout(R({"x-timeout-ms": "50", "x-timeout": "9"}, {}), None) == 0.05
    with pytest.raises(service.BadRequest, match="milliseconds"):
        service.parse_timeout(R({"x-timeout-ms": "-5"}, {}), None)


def test_a_budget_the_pool_predicts_it_would_miss_is_503_at_once(client, queries):
    assert client.app.state.raptors.tenants.template.admission == "predictive"
    r = client.post("/score", json=body(queries[0]), headers={"X-Tenant": "busy"})
    assert r.status_code == 200
    pool = client.app.state.raptors.tenants.get("busy")
    for _ in range(20):  # recent run times of ~2 ms
        pool.submit(time.sleep, 0.002).result(timeout=10)
    gate = threading.Event()
    holders = [pool.submit(gate.wait, 10.0) for _ in range(pool.threads)]
    while pool.stats().running < pool.threads:
        time.sleep(0.002)
    # One queue slot left: a refusal is the prediction's, not the bound's.
    fillers = [pool.submit(time.sleep, 0.002) for _ in range(pool.queue_capacity - 1)]
    try:
        r = client.post(
            "/score", json=body(queries[0]), headers={"X-Tenant": "busy", "X-Timeout-Ms": "1"}
        )
    finally:
        gate.set()
    assert r.status_code == 503, r.text
    doc = r.json()
    assert doc["predicted_wait"] > doc["timeout"] == pytest.approx(0.001, abs=5e-4)
    assert r.headers["Retry-After"] == str(doc["retry_after"]) == "1"
    for job in [*holders, *fillers]:
        job.result(timeout=10)
    assert pool.stats().rejected == 1


def test_expired_deadline_is_504(client, queries):
    pool = client.app.state.raptors.tenants.get("slow")
    gate = threading.Event()
    pool.submit(gate.wait, 10.0)
    while pool.stats().running < 1:
        time.sleep(0.002)
    timer = threading.Timer(0.3, gate.set)
    timer.start()
    r = client.post(
        "/score", json=body(queries[0]), headers={"X-Tenant": "slow", "X-Timeout": "0.05"}
    )
    timer.join()
    assert r.status_code == 504
    assert pool.stats().expired == 1


def test_health_metrics_stats(client, queries):
    assert client.get("/health").json() == {"status": "ok"}
    for tenant in ("acme", "globex"):
        assert client.post("/score", json=body(queries[1]), headers={"X-Tenant": tenant}).is_success
    assert client.post("/score", json=body(queries[1])).is_success
    stats = client.get("/stats").json()
    prefix = client.app.state.raptors.tenants.template.prefix
    for tenant in ("acme", "globex", "default"):
        st = stats["pools"][prefix + tenant]
        assert st["completed"] == 1 and st["submitted"] == 1
        assert stats["tenants"]["tenants"][tenant]["pool"] == prefix + tenant
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    done = {
        s.labels["tenant"]: s.value
        for s in families["raptors_jobs_completed"].samples
        if s.name.endswith("_total")
    }
    assert done == {"acme": 1.0, "globex": 1.0, "default": 1.0}
    if client.app.state.variant == "raptors":
        assert stats["batchers"]["score"] == {
            "batches": 3, "items": 3, "pending": 0, "inflight": 0, "rejected": 0, "expired": 0,
        }  # fmt: skip
        items = families["raptors_batcher_items"].samples
        assert [(s.labels, s.value) for s in items if s.name.endswith("_total")] == [
            ({"batcher": "score"}, 3.0)
        ]
    else:
        assert "batchers" not in stats and "raptors_batcher_items" not in families


@pytest.mark.parametrize("variant", ["numpy-inline", "noop"])
def test_baseline_variants_expose_the_same_routes(variant, queries):
    with TestClient(service.create_app(variant, matrix=SMALL)) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/stats").json()["pools"] == {}
        assert c.get("/metrics").status_code == 200
        doc = c.post("/score", json=body(queries[0])).json()
        assert len(doc["ids"]) == len(doc["scores"]) == service.K
        assert c.post("/score", content=b"{}").status_code == 422


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        service.create_app("numba")
    assert rp.Pool  # the service is built on the public API only
