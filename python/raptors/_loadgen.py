"""A minimal keep-alive HTTP/1.1 load generator for the bench (one process per role).

Roles, run as ``python -m raptors._loadgen score|health ...``:

* ``score``: N connections, each posting pre-built ``/score`` requests back to
  back (closed loop: one request in flight per connection);
* ``health``: one connection sending ``GET /health`` every ``--interval``.

Both start at the wall-clock time ``--start-at``, discard the first
``--warmup`` seconds and record for ``--duration`` seconds, then print one
JSON object on stdout. Requests are pre-encoded bytes and responses are
parsed just enough to find their end, so a request costs the client a few
tens of microseconds; the client's own CPU time over the measured window is
reported next to the server's (read from ``/proc/<pid>/stat``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def build_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def build_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive). Handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep_alive = b"connection: close" not in lower
    i = lower.find(b"content-length:")
    if i >= 0:
        j = lower.index(b"\r\n", i)
        body = await reader.readexactly(int(lower[i + 15 : j]))
    elif b"transfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = b""
    return status, body, keep_alive


def _percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of a non-empty sorted list."""
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def summarize(latencies: list[float]) -> dict[str, Any]:
    s = sorted(latencies)
    return {
        "count": len(s),
        "p50_ms": None if not s else 1e3 * _percentile(s, 0.50),
        "p99_ms": None if not s else 1e3 * _percentile(s, 0.99),
        "max_ms": None if not s else 1e3 * s[-1],
    }


class Window:
    """The shared timeline: warm-up, then the measured window, then stop."""

    def __init__(self, start_at: float, warmup: float, duration: float) -> None:
        # Translate the shared wall-clock start into this process's monotonic clock.
        now_wall, now_mono = time.time(), time.perf_counter()
        self.start = now_mono + (start_at - now_wall)
        self.record_from = self.start + warmup
        self.stop = self.record_from + duration


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def score_worker(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    win: Window,
    lat: list[float],
    counts: dict[str, int],
    statuses: dict[int, int],
) -> None:
    reader, writer = await _connect(host, port)
    i = offset
    n = len(requests)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= win.stop:
                break
            try:
                writer.write(requests[i % n])
                status, _, keep_alive = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if t0 >= win.record_from:
                    counts["errors"] += 1
                writer.close()
                await asyncio.sleep(0.01)
                reader, writer = await _connect(host, port)
                continue
            t1 = time.perf_counter()
            i += 1
            if t0 >= win.record_from and t1 <= win.stop:
                lat.append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    counts["errors"] += 1
            if not keep_alive:
                writer.close()
                reader, writer = await _connect(host, port)
    finally:
        writer.close()


async def run_score(args: argparse.Namespace) -> dict[str, Any]:
    spec = args.spec
    headers = spec.get("headers", {})
    requests = [
        build_post(args.host, args.port, "/score", body.encode(), headers)
        for body in spec["bodies"]
    ]
    win = Window(args.start_at, args.warmup, args.duration)
    lat: list[float] = []
    counts = {"errors": 0}
    statuses: dict[int, int] = {}
    delay = win.start - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    tasks = [
        asyncio.ensure_future(
            score_worker(args.host, args.port, requests, c * 7, win, lat, counts, statuses)
        )
        for c in range(args.clients)
    ]
    await asyncio.sleep(max(0.0, win.record_from - time.perf_counter()))
    cpu0, srv0, t0 = own_cpu_seconds(), process_cpu_seconds(args.server_pid), time.perf_counter()
    await asyncio.sleep(max(0.0, win.stop - time.perf_counter()))
    cpu1, srv1, t1 = own_cpu_seconds(), process_cpu_seconds(args.server_pid), time.perf_counter()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    elapsed = t1 - t0
    out = summarize(lat)
    out.update(
        role="score",
        clients=args.clients,
        seconds=elapsed,
        rps=len(lat) / elapsed,
        errors=counts["errors"] + len(failures),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        worker_failures=failures[:3],
        client_cpu=(cpu1 - cpu0) / elapsed,
        server_cpu=None if srv0 is None or srv1 is None else (srv1 - srv0) / elapsed,
    )
    return out


async def run_health(args: argparse.Namespace) -> dict[str, Any]:
    win = Window(args.start_at, args.warmup, args.duration)
    request = build_get(args.host, args.port, "/health")
    reader, writer = await _connect(args.host, args.port)
    lat: list[float] = []
    errors = 0
    delay = win.start - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    next_at = time.perf_counter()
    cpu0 = t_cpu0 = None
    try:
        while True:
            now = time.perf_counter()
            if now >= win.stop:
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)
            t0 = time.perf_counter()
            if cpu0 is None and t0 >= win.record_from:
                cpu0, t_cpu0 = own_cpu_seconds(), t0
            next_at = t0 + args.interval
            try:
                writer.write(request)
                status, _, _ = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += t0 >= win.record_from
                writer.close()
                reader, writer = await _connect(args.host, args.port)
                continue
            t1 = time.perf_counter()
            if t0 >= win.record_from and t1 <= win.stop:
                lat.append(t1 - t0)
                errors += status != 200
    finally:
        writer.close()
    out = summarize(lat)
    elapsed = max(time.perf_counter() - (t_cpu0 or time.perf_counter()), 1e-9)
    out.update(
        role="health",
        errors=errors,
        client_cpu=None if cpu0 is None else (own_cpu_seconds() - cpu0) / elapsed,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raptors._loadgen", description=__doc__)
    p.add_argument("role", choices=("score", "health"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--start-at", type=float, required=True, help="wall-clock start (time.time())")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", help="JSON file: {bodies: [...], headers: {...}}")
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.010)
    args = p.parse_args(argv)
    if args.duration <= 0 or args.duration > 3600 or args.warmup < 0 or args.clients < 1:
        p.error("duration must be in (0, 3600], warmup >= 0, clients >= 1")
    runner = run_score if args.role == "score" else run_health
    if args.role == "score":
        if not args.requests:
            p.error("score needs --requests")
        with open(args.requests, encoding="utf-8") as f:
            args.spec = json.load(f)
    try:
        import uvloop  # the cheaper loop when installed: less client CPU per request
    except ImportError:
        result = asyncio.run(runner(args))
    else:
        result = uvloop.run(runner(args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
