"""The live dashboard: GET /stats/stream (server-sent events of /stats) and
GET /dashboard (one self-contained page), in the integration and the demo
service, down to a real headless browser rendering the page under load."""

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Self

import pytest
from conftest import HANG
from headless import Chromium, events_seen, find_chromium

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI
from fastapi.testclient import TestClient
from raptors._dashboard import StatsBroadcaster
from raptors.fastapi import Raptors, _relative_url

ENV_SERVE = {"RAPTORS_TENANT_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    from raptors.bench import free_port

    return free_port()


def wait_until(cond, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def sse_events(lines: Iterator[str]) -> Iterator[dict]:
    """The ``data:`` events of an SSE stream, parsed as JSON (other fields,
    such as ``retry:``, are checked for form and skipped)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
            continue
        field, _, value = line.partition(":")
        assert field in ("data", "retry"), line
        if field == "data":
            data.append(value.removeprefix(" "))
        else:
            assert value.strip().isdigit(), line


@contextlib.contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """uvicorn in a thread on a free port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(HANG)
        assert not thread.is_alive(), "server did not stop"


def make_app(rx: Raptors) -> FastAPI:
    app = FastAPI(lifespan=rx.lifespan)
    rx.install(app)
    return app


@pytest.fixture
def rx_app():
    name = uniq("dash")
    rx = Raptors(pools=[{"name": name, "threads": 1, "queue": 8}], stream_interval=0.1)
    return rx, make_app(rx), name


# -- the stream ---------------------------------------------------------------


def test_stream_events_are_the_stats_json(rx_app):
    _, app, name = rx_app
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=HANG) as client:
        stats = client.get("/stats").json()
        with client.stream("GET", "/stats/stream") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = sse_events(resp.iter_lines())
            got = [next(events) for _ in range(3)]
    for doc in got:
        assert set(doc) == set(stats)
        assert doc["pid"] == stats["pid"]
        assert set(doc["pools"][name]) == set(stats["pools"][name])
        assert doc["pools"][name]["threads"] == 1


def test_stream_sends_at_least_once_a_second():
    name = uniq("dash")
    rx = Raptors(pools=[{"name": name, "threads": 1}])  # the default interval
    with (
        serve_in_thread(make_app(rx)) as base,
        httpx.Client(base_url=base, timeout=HANG) as client,
        client.stream("GET", "/stats/stream") as resp,
    ):
        events = sse_events(resp.iter_lines())
        next(events)
        t0 = time.monotonic()
        for _ in range(3):
            next(events)
        elapsed = time.monotonic() - t0
    assert elapsed < 3 * 1.0, elapsed


def test_stream_follows_the_pools(rx_app):
    rx, app, name = rx_app
    with (
        serve_in_thread(app) as base,
        httpx.Client(base_url=base, timeout=HANG) as client,
        client.stream("GET", "/stats/stream") as resp,
    ):
        events = sse_events(resp.iter_lines())
        before = next(events)["pools"][name]["completed"]
        rx.get(name).submit(sum, [1, 2]).result(HANG)
        for doc in events:
            if doc["pools"][name]["completed"] == before + 1:
                break


def test_disconnect_ends_the_stream(rx_app):
    rx, app, _ = rx_app
    with serve_in_thread(app) as base:
        with (
            httpx.Client(base_url=base, timeout=HANG) as client,
            client.stream("GET", "/stats/stream") as resp,
        ):
            events = sse_events(resp.iter_lines())  # kept: dropping it closes the response
            next(events)
            assert rx.stream.subscribers == 1 and rx.stream.running
        # The server notices at its next write, within one tick.
        wait_until(lambda: rx.stream.subscribers == 0 and not rx.stream.running)


async def test_one_snapshot_per_tick_for_every_subscriber():
    calls = 0

    def snapshot() -> dict:
        nonlocal calls
        calls += 1
        return {"n": calls}

    stream = StatsBroadcaster(snapshot, interval=0.02)

    async def subscriber(n: int) -> list[int]:
        got = []
        async for event in stream.events():
            if event.startswith(b"data: "):
                got.append(json.loads(event[6:])["n"])
                if len(got) == n:
                    break
        return got

    results = await asyncio.wait_for(asyncio.gather(*(subscriber(5) for _ in range(10))), HANG)
    # Ten subscribers, five events each, from one producer: the snapshots are
    # shared, not built per subscriber.
    assert calls < 5 * 10 / 2, calls
    for got in results:
        assert got == sorted(got) and len(set(got)) == 5
    await asyncio.sleep(0)  # the cancelled producer ends at its next await
    assert stream.subscribers == 0 and not stream.running


async def test_close_ends_every_stream():
    stream = StatsBroadcaster(dict, interval=0.02)

    async def drain() -> int:
        return sum([1 async for _ in stream.events()])

    tasks = [asyncio.create_task(drain()) for _ in range(3)]
    await asyncio.wait_for(_until(lambda: stream.ticks >= 2), HANG)
    await stream.close()
    counts = await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    assert all(c >= 2 for c in counts)
    assert not stream.running and stream.subscribers == 0
    assert [e async for e in stream.events()] == []  # closed: empty stream


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.005)


def test_snapshot_failure_is_logged_and_the_stream_goes_on(caplog):
    fail = True

    def snapshot() -> dict:
        if fail:
            raise RuntimeError("broken stats source")
        return {"ok": True}

    async def main() -> bytes:
        nonlocal fail
        stream = StatsBroadcaster(snapshot, interval=0.01)
        events = stream.events()
        assert (await anext(events)).startswith(b"retry:")
        await _until(lambda: "broken stats source" in caplog.text)
        fail = False
        event = await asyncio.wait_for(anext(events), HANG)
        await events.aclose()
        await stream.close()
        return event

    with caplog.at_level("ERROR", logger="raptors.dashboard"):
        assert json.loads(asyncio.run(main())[6:]) == {"ok": True}


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        StatsBroadcaster(dict, interval=0)


# -- the page -----------------------------------------------------------------


EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def check_page(html: str) -> None:
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "@import" not in html and "url(" not in html
    assert "<script src" not in html.lower() and "<link" not in html.lower()
    assert "__RAPTORS_STREAM_URL__" not in html
    assert 'const STREAM_URL = "stats/stream";' in html


def test_dashboard_is_one_self_contained_page(rx_app):
    _, app, _ = rx_app
    with TestClient(app) as client:
        resp = client.get("/dashboard")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    check_page(resp.text)


def test_demo_service_serves_the_dashboard_and_the_stream():
    import numpy as np
    from raptors.service import create_app

    app = create_app(matrix=np.eye(16, 256, dtype=np.float32), tenant_threads=1)
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {"/dashboard", "/stats/stream", "/stats"} <= paths
    with TestClient(app) as client:
        check_page(client.get("/dashboard").text)


def test_paths_can_move_or_be_switched_off():
    rx = Raptors(stream_path="/ops/stream", dashboard_path="/ops/board/")
    app = make_app(rx)
    with TestClient(app) as client:
        html = client.get("/ops/board/").text
        assert 'const STREAM_URL = "../../ops/stream";' in html
    rx = Raptors(stream_path=None, dashboard_path=None)
    paths = {getattr(r, "path", None) for r in make_app(rx).routes}
    assert "/stats/stream" not in paths and "/dashboard" not in paths


def test_relative_url():
    assert _relative_url("/dashboard", "/stats/stream") == "stats/stream"
    assert _relative_url("/ops/dashboard", "/stats/stream") == "../stats/stream"
    assert _relative_url("/ops/board/", "/ops/stream") == "../../ops/stream"


# -- the demo service as a process ---------------------------------------------


@contextlib.contextmanager
def demo_service() -> Iterator[tuple[int, subprocess.Popen]]:
    """``python -m raptors serve`` on a free port, ready; stopped with SIGINT."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "raptors", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **ENV_SERVE},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=HANG)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_server_shutdown_ends_open_streams():
    with demo_service() as (port, proc):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
        conn.request("GET", "/stats/stream")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"retry:")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest = resp.read()  # returns once the server ends the stream
        out = proc.communicate(timeout=HANG)[0].decode()
        assert time.monotonic() - t0 < 5
    assert b"data: " in rest or rest.strip() == b""
    assert proc.returncode == 0, out
    assert "ERROR" not in out and "Traceback" not in out, out


class Load:
    """Bounded POST /score traffic for two tenants from a thread."""

    TENANTS = ("alpha", "beta")

    def __init__(self, port: int, limit_s: float = 30.0) -> None:
        self.port = port
        self.stop = threading.Event()
        self.sent = 0
        self.limit_s = limit_s
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = json.dumps({"query": [0.25] * 256})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG)
        deadline = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            tenant = self.TENANTS[self.sent % 2]
            conn.request("POST", "/score", body=body, headers={"X-Tenant": tenant})
            conn.getresponse().read()
            self.sent += 1

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(HANG)


FIGURE = re.compile(r'data-pool="([^"]+)" data-metric="([a-z_0-9]+)">([^<]*)<')
COMPLETED = re.compile(r'data-pool="([^"]+)"><h3>[^<]*</h3><div class="meta">[^<]*completed (\d+)')


def completed_above(pool: str, n: int) -> str:
    """A page condition: ``pool``'s card shows more than ``n`` completed jobs."""
    return (
        f"(() => {{ const c = document.querySelector('.card[data-pool=\"{pool}\"] .meta');"
        f" const m = c && /completed (\\d+)/.exec(c.textContent); return m && +m[1] > {n}; }})()"
    )


@pytest.mark.timeout(60)
def test_browser_renders_the_pools_and_their_figures_move():
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with demo_service() as (port, _), Load(port) as load, Chromium(browser) as page:
        wait_until(lambda: load.sent >= 20)  # both tenant pools exist
        page.open(f"http://127.0.0.1:{port}/dashboard")
        page.wait_for(events_seen(3))
        first = page.dom()
        done = {p: int(n) for p, n in COMPLETED.findall(first)}
        assert "tenant-alpha" in done, first[:3000]
        # The same page, once the stream has shown more finished work.
        page.wait_for(completed_above("tenant-alpha", done["tenant-alpha"] + 10))
        second = page.dom()
    for dom in (first, second):
        figures = {(pool, metric): value for pool, metric, value in FIGURE.findall(dom)}
        pools = {pool for pool, _ in figures}
        assert {"tenant-alpha", "tenant-beta"} <= pools, dom[:3000]
        for metric in ("queued", "running", "wait_p99", "utilization", "completed_per_s"):
            assert figures[("tenant-alpha", metric)] not in ("", "\u2013"), (metric, figures)
        assert 'data-budget="tenant-budget"' in dom
        assert 'class="live"' in dom
    later = {p: int(n) for p, n in COMPLETED.findall(second)}
    assert later["tenant-alpha"] > done["tenant-alpha"], (done, later)
    # The rates are derived while load runs: some completions/s reading is > 0.
    rate = re.search(r'data-pool="tenant-alpha" data-metric="completed_per_s">([0-9.]+)<', second)
    assert rate is not None and float(rate.group(1)) > 0, second[:3000]
