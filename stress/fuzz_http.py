"""Fuzz the demo service's HTTP surface over real sockets, bounded in time.

    python stress/fuzz_http.py [--examples 20000] [--max-minutes 15] [--clients 4]

Starts ``python -m raptors serve`` (a uvicorn process, embedded matrix) on a
free 127.0.0.1 port with a small tenant cap (``RAPTORS_MAX_TENANTS=8``, so
tenant pools churn). Hypothesis draws ``--examples`` requests from
``tests/http_fuzz_cases.py`` (the CI test's strategies); ``--clients``
threads send each over a raw socket, framed by Content-Length (right, or
huge with a small body, or malformed) or chunked, and hang up at the drawn
stage: before the body, part-way through it, right after it (the job queued
or running), once the answer started, or never.

Checks: every request sent in full and not hung up gets a well-formed HTTP
response whose status is below 500 or a documented 503/504 (a request that
is malformed on the wire may also be answered by closing the connection);
a valid /score is answered 200, 503 or 504. Every 500 requests, and at the
end, a valid /score still answers 200 and every pool's stats invariant
holds; at the end, after the server drained, nothing is queued, running or
pending, and the server's log has no ERROR and no traceback.

Prints a summary (requests, status counts, outcomes, failures) and exits 1
on any failure.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from http_fuzz_cases import FuzzRequest, allowed, requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from run_locust import free_port, get_json, wait_ready
from soak import drained, post_score, stats_problems

rng = random.Random(0)  # framing and hang-up timing; hypothesis draws the rest
TOKEN = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def wire(req: FuzzRequest, framing: str) -> tuple[bytes, list[bytes], bool]:
    """The request head, the body pieces as sent, and whether the request is
    malformed on the wire (the server may then close without answering)."""
    target = req.path.encode("utf-8", "surrogateescape")
    if req.query:
        target += b"?" + req.query
    body = req.body
    malformed = any(c in b" \r\n\x00" for c in target)
    heads = []
    for name, value in req.headers:
        if name == b"content-length":
            continue
        malformed |= any(c in b"\r\n\x00" for c in value) or not set(name) <= TOKEN
        heads.append(name + b": " + value)
    pieces = list(req.chunks) or [b""]
    if framing == "chunked":
        heads.append(b"transfer-encoding: chunked")
        pieces = [b"%x\r\n%s\r\n" % (len(c), c) for c in pieces if c] + [b"0\r\n\r\n"]
    elif framing == "huge-length":
        heads.append(b"content-length: %d" % (len(body) + 10_000_000))
        malformed = True  # the body never completes: the client hangs up
    elif framing == "bad-length":
        heads.append(b"content-length: " + rng.choice((b"abc", b"-1", b"1e3", b"", b"99" * 30)))
        malformed = True
    else:
        heads.append(b"content-length: %d" % len(body))
    head = (
        req.method.encode() + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(heads) + b"\r\n\r\n"
    )
    return head, pieces, malformed


def read_response(sock: socket.socket, first_only: bool = False, head_only: bool = False) -> bytes:
    """Reads one response (Content-Length or chunked body); b'' if the
    server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        if first_only:
            return data
    head, _, rest = data.partition(b"\r\n\r\n")
    lower = head.lower()
    if head_only:  # the answer to HEAD has no body
        return data
    if b"\ncontent-length:" in lower:
        n = int(lower.split(b"\ncontent-length:")[1].split(b"\r\n")[0])
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    elif b"transfer-encoding: chunked" in lower:
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return head + b"\r\n\r\n" + rest


class Fuzzer:
    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.lock = threading.Lock()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.sent = 0

    def fail(self, msg: str) -> None:
        with self.lock:
            self.failures.append(msg)

    def one(self, req: FuzzRequest, framing: str) -> None:
        head, pieces, malformed = wire(req, framing)
        outcome, status = req.stage, None
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        try:
            if req.stage == "before-body":
                sock.sendall(head)
            elif req.stage == "mid-body":
                sock.sendall(head + b"".join(pieces[: req.stage_chunk]))
                part = b"".join(pieces[req.stage_chunk :])
                sock.sendall(part[: len(part) // 2])
            else:
                try:
                    sock.sendall(head)
                    for p in pieces:
                        sock.sendall(p)
                except (ConnectionResetError, BrokenPipeError):
                    # The server may answer (e.g. 405, 413) and close without
                    # reading the whole body: its answer is still to be read.
                    if req.stage != "none":
                        raise
                if req.stage == "none":
                    data = read_response(sock, head_only=req.method == "HEAD")
                    outcome = "answered"
                    if not data:
                        outcome = "closed"
                        if not malformed and framing == "length":
                            self.fail(f"no answer: {req.describe()}")
                    elif not data.startswith(b"HTTP/1.1 ") or b"\r\n\r\n" not in data:
                        self.fail(f"malformed response {data[:200]!r}: {req.describe()}")
                    else:
                        status = int(data[9:12])
                elif req.stage == "during-response":
                    sock.settimeout(rng.uniform(0.0005, 0.02))
                    try:
                        read_response(sock, first_only=True)
                    except TimeoutError:
                        pass
        except TimeoutError:
            outcome = "timeout"
            if req.stage == "none" and not malformed:  # a huge Content-Length waits
                self.fail(f"no answer in {self.timeout:g} s ({framing}): {req.describe()}")
        except (ConnectionResetError, BrokenPipeError) as exc:
            outcome = type(exc).__name__  # the server closed on a bad request
            if req.stage == "none" and not malformed and framing == "length":
                self.fail(f"{outcome}: {req.describe()}")
        finally:
            sock.close()
        if status is not None:
            if not allowed(status):
                self.fail(f"HTTP {status}: {req.describe()}")
            elif (
                req.valid
                and not malformed  # e.g. a CR in a header value: a 400 is right
                and framing in ("length", "chunked")
                and status not in (200, 503, 504)
            ):
                self.fail(f"HTTP {status} for a valid request: {req.describe()}")
        with self.lock:
            self.sent += 1
            self.outcomes[outcome] += 1
            if status is not None:
                self.statuses[str(status)] += 1

    def check_alive(self, final: bool) -> None:
        try:
            post_score(self.port, "fuzz-check")
            st = get_json(self.port, "/stats")
        except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
            self.fail(f"server not answering: {exc!r}")
            return
        for p in stats_problems(st, False, 10**9):
            self.fail(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=20_000)
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("--clients", type=int, default=4, help="sending threads (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    rng.seed(args.seed)
    port = free_port()
    env = dict(os.environ, RAPTORS_MAX_TENANTS="8", RAPTORS_TENANT_IDLE_TIMEOUT="2")
    stop_at = time.monotonic() + args.max_minutes * 60
    fuzzer = Fuzzer(port, args.client_timeout)
    work: queue.Queue[tuple[FuzzRequest, str] | None] = queue.Queue(maxsize=4 * args.clients)

    def sender() -> None:
        while (item := work.get()) is not None:
            try:
                fuzzer.one(*item)
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                fuzzer.fail(f"client error {exc!r}: {item[0].describe()}")

    generated = 0

    @settings(
        max_examples=args.examples,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )
    @seed(args.seed)
    @given(req=requests())
    def feed(req: FuzzRequest) -> None:
        nonlocal generated
        if time.monotonic() > stop_at:
            return
        framing = rng.choices(("length", "chunked", "huge-length", "bad-length"), (80, 12, 4, 4))[0]
        work.put((req, framing))
        generated += 1
        if generated % 500 == 0:
            fuzzer.check_alive(final=False)
            print(f"  {generated} requests, {len(fuzzer.failures)} failures", flush=True)

    with tempfile.TemporaryDirectory(prefix="raptors-fuzz-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w", encoding="utf-8") as log:
            cmd = [sys.executable, "-m", "raptors", "serve", "--port", str(port)]
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        try:
            wait_ready(server, port)
            threads = [threading.Thread(target=sender) for _ in range(args.clients)]
            for t in threads:
                t.start()
            try:
                feed()
            finally:
                for _ in threads:
                    work.put(None)
                for t in threads:
                    t.join()
            deadline = time.monotonic() + 60
            st = get_json(port, "/stats")
            while not drained(st) and time.monotonic() < deadline:
                time.sleep(0.2)
                st = get_json(port, "/stats")
            fuzzer.check_alive(final=True)
            st = get_json(port, "/stats")
            for prob in stats_problems(st, True, 10**9):
                fuzzer.fail(f"final: {prob}")
            if server.poll() is not None:
                fuzzer.fail(f"server exited with {server.returncode}")
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                fuzzer.fail("server did not exit within 30 s of SIGINT")
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
    if "Traceback" in log_text or "ERROR" in log_text:
        fuzzer.fail("server log has errors:\n" + log_text[-3000:])
    elapsed = time.monotonic() - t0
    t = st["tenants"]
    print(f"\nfuzz_http: {fuzzer.sent} requests in {elapsed:.0f} s ({args.clients} clients)")
    print("  statuses:", dict(sorted(fuzzer.statuses.items())))
    print("  outcomes:", dict(sorted(fuzzer.outcomes.items())))
    print(f"  tenant pools created {t['created']}, evicted {t['evicted']}; pools' jobs: "
          f"{sum(p['submitted'] for p in st['pools'].values())} submitted in the open pools")  # fmt: skip
    warnings = log_text.count("WARNING")
    print(f"  server log: {len(log_text.splitlines())} lines, {warnings} WARNING")
    if fuzzer.failures:
        print(f"\nFAILURES ({len(fuzzer.failures)}):\n  " + "\n  ".join(fuzzer.failures[:30]))
        return 1
    print("  no failure: every answer well-formed, no 5xx but 503/504, invariants hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
