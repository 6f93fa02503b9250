"""Fuzzing the demo service's HTTP surface in-process over raw ASGI.

One app (the ``raptors`` variant: tenant pools on a budget behind the
Batcher, a small tenant cap so tenant pools churn) runs on an event loop of
its own for the whole module; every request is driven through raw ASGI
``receive``/``send`` so the client can hang up at any stage (before the
body, after some chunks, right after the body while the job is queued or
running, once the response has started). Property: every request gets
exactly one well-formed response, with no 5xx but the documented 503/504,
the app raises nothing and logs no ERROR, a valid request is answered 200,
and afterwards the service answers a valid /score and the stats of every
pool and the batcher add up, with nothing left queued, running or pending.
The long version over real sockets is stress/fuzz_http.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import HANG

pytest.importorskip("fastapi")
pytest.importorskip("hypothesis")

import raptors as rp
from http_fuzz_cases import FuzzRequest, allowed, encode, requests
from hypothesis import HealthCheck, given, settings
from raptors import service

SMALL = service.make_matrix(rows=2_000, dim=service.DIM, seed=7)
TERMINAL = ("completed", "failed", "cancelled", "expired")
EXAMPLES = 250
VALID = encode({"query": [0.5] * service.DIM})


class ErrorRecords(logging.Handler):
    """Collects every record at ERROR or above, and any with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


class Served:
    """The demo app with its lifespan entered, on a loop in a thread of its own."""

    def __init__(self) -> None:
        self.app = service.create_app(
            "raptors", matrix=SMALL, tenant_threads=1, tenant_queue=4, max_tenants=4
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.run(self._lifespan.__aenter__())

    def run(self, coro, timeout: float = HANG):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG)
        self.loop.close()

    @property
    def rx(self):
        return self.app.state.raptors


async def drive(app, req: FuzzRequest) -> list[dict]:
    """Runs one request through raw ASGI; returns the messages the app sent
    (after a disconnect, as uvicorn does, sends are accepted and dropped)."""
    sent: list[dict] = []
    response_started = asyncio.Event()
    chunks = list(req.chunks)
    delivered = 0
    gone = False

    async def receive() -> dict:
        nonlocal delivered, gone
        if gone:
            return {"type": "http.disconnect"}
        if req.stage == "before-body" or (req.stage == "mid-body" and delivered >= req.stage_chunk):
            gone = True
            return {"type": "http.disconnect"}
        if delivered < len(chunks):
            body = chunks[delivered]
            delivered += 1
            return {"type": "http.request", "body": body, "more_body": delivered < len(chunks)}
        if delivered == len(chunks) and not chunks:
            delivered += 1
            return {"type": "http.request", "body": b"", "more_body": False}
        # The body is in: only a disconnect can come now.
        if req.stage == "after-body":
            gone = True
            return {"type": "http.disconnect"}
        if req.stage == "during-response":
            await response_started.wait()
            gone = True
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a client that waits for its answer
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            response_started.set()

    path = req.path.encode("utf-8", "surrogateescape")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": req.method, "scheme": "http", "path": req.path, "raw_path": path,
        "query_string": req.query, "root_path": "", "headers": req.headers,
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), HANG)
    return sent


def check_response(req: FuzzRequest, sent: list[dict]) -> int:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"{len(starts)} response starts for {req.describe()}"
    assert sent[0] is starts[0], f"body before the start for {req.describe()}"
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and not bodies[-1].get("more_body", False), req.describe()
    status = int(starts[0]["status"])
    assert allowed(status), (
        f"{status} for {req.describe()}: {b''.join(m.get('body', b'') for m in bodies)[:300]!r}"
    )
    if req.valid:
        assert status in (200, 503, 504), f"{status} for a valid request {req.describe()}"
    if req.stage in ("before-body", "mid-body") and req.method == "POST" and req.path == "/score":
        assert status in (400, 413, 422, 499), f"{status} after a disconnect: {req.describe()}"
    return status


def stats_problems(snapshot: dict, drained: bool) -> list[str]:
    problems = []
    for name, st in snapshot["pools"].items():
        accounted = st["queued"] + st["running"] + sum(st[k] for k in TERMINAL)
        if st["submitted"] != accounted:
            problems.append(f"{name}: submitted {st['submitted']} != {accounted}")
        if drained and (st["queued"] or st["running"]):
            problems.append(f"{name}: {st['queued']} queued, {st['running']} running")
    t = snapshot["tenants"]
    if t["count"] != t["created"] - t["evicted"] or t["count"] > t["max_tenants"]:
        problems.append(f"tenants: {t}")
    for name, b in snapshot["batchers"].items():
        if drained and (b["pending"] or b["inflight"]):
            problems.append(f"batcher {name}: {b}")
    return problems


async def idle(rx) -> dict:
    """The stats once nothing is queued, running or pending (polled on the
    app's loop: the batch completions are delivered there)."""
    deadline = time.monotonic() + HANG
    while True:
        snap = rx.stats_snapshot()
        if not stats_problems(snap, drained=True) or time.monotonic() > deadline:
            return snap
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.close()
    assert s.rx.tenants.pools() == {}  # the lifespan exit drained and closed them


@pytest.fixture
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def valid_score(served: Served, tenant: bytes = b"after-fuzz") -> int:
    req = FuzzRequest(
        "POST", "/score", b"", [(b"x-tenant", tenant), (b"content-type", b"application/json")],
        [VALID],
    )  # fmt: skip
    return check_response(req, served.run(drive(served.app, req)))


statuses: Counter[int] = Counter()


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(req=requests())
def fuzz_one(served: Served, req: FuzzRequest) -> None:
    statuses[check_response(req, served.run(drive(served.app, req)))] += 1


def test_fuzzed_requests_get_well_formed_answers_and_lose_nothing(served, errors):
    fuzz_one(served)
    assert not errors.records, errors.text()
    assert sum(statuses.values()) >= EXAMPLES
    assert {200, 400, 422, 499} <= set(statuses), statuses  # the fuzz reaches each kind
    # Still serving, and every job accounted for with nothing left behind.
    assert valid_score(served) == 200
    snap = served.run(idle(served.rx))
    assert not stats_problems(snap, drained=True), stats_problems(snap, drained=True)


@pytest.mark.parametrize("stage", ["after-body", "during-response"])
def test_a_disconnect_while_the_job_is_queued_or_answered(served, errors, stage):
    """The tenant budget held busy: a valid request's batch job waits in its
    pool; the client hangs up (right after the body, or only once the answer
    started, i.e. it waits the job out). The first is cancelled (499), the
    second is answered; nothing is lost either way."""
    rx = served.rx
    tenant = f"queued-{stage}"
    gate = threading.Event()
    blocker = rx.tenants.get("blocker")
    blocker.submit(gate.wait, HANG)

    async def go() -> list[dict]:
        req = FuzzRequest(
            "POST", "/score", b"", [(b"x-tenant", tenant.encode())], [VALID], stage=stage
        )
        task = asyncio.ensure_future(drive(served.app, req))
        pool = rx.tenants.get(tenant)
        while not pool.stats().queued and not task.done():
            await asyncio.sleep(0.002)
        if stage == "during-response":
            gate.set()
        return await task

    try:
        sent = served.run(go())
    finally:
        gate.set()
    status = sent[0]["status"]
    assert status == (499 if stage == "after-body" else 200), sent
    snap = served.run(idle(rx))
    assert not stats_problems(snap, drained=True), stats_problems(snap, drained=True)
    pool_stats = snap["pools"][rx.tenants.template.prefix + tenant]
    assert pool_stats["cancelled"] == (1 if stage == "after-body" else 0), pool_stats
    assert not errors.records, errors.text()
    assert valid_score(served, tenant.encode()) == 200


def test_many_distinct_and_odd_tenant_names_churn_without_leaks(served, errors):
    rx = served.rx
    odd = [b"", b"\xff\xfe", "ünï".encode(), b"a" * 65, b"a\x00", b"x" * 10_000, b"a b"]
    for i in range(300):
        tenant = f"churn-{i}".encode() if i % 10 else odd[(i // 10) % len(odd)]
        req = FuzzRequest("POST", "/score", b"", [(b"x-tenant", tenant)], [VALID])
        status = check_response(req, served.run(drive(served.app, req)))
        assert status == (200 if i % 10 or tenant == b"" else 400), (tenant, status)
    snap = served.run(idle(rx))
    assert not stats_problems(snap, drained=True)
    t = snap["tenants"]
    assert t["count"] <= t["max_tenants"] and t["evicted"] >= 200
    assert len(t["overflow_tenants"]) <= t["max_tenants"] * 4
    assert len(rp.pools()) < 50  # evicted pools left the registry
    assert not errors.records, errors.text()
