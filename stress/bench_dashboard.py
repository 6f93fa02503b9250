"""What the live dashboard costs the server: the demo service's CPU time with
no page open, then with ``--clients`` open ``GET /stats/stream`` streams (what
as many open dashboards read), as % of one core.

    python stress/bench_dashboard.py [--clients 10] [--duration 20] [--tenants 4]

The server is ``python -m raptors serve`` on a free loopback port; before
measuring, one request per tenant creates ``--tenants`` tenant pools, so every
event carries that many pools and the tenant budget. CPU time is the server
process's utime + stime from ``/proc/<pid>/stat`` (all its threads) over each
window. The clients are threads of this process reading raw HTTP, so their own
cost is not counted. The target (issue 11): 10 open pages under 2 % of a core.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

from raptors.bench import free_port


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name may hold spaces: the fields start after its ")".
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.05)


class StreamClient(threading.Thread):
    """Reads one /stats/stream until ``stop`` is set; counts its events."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.events = 0
        self.opened = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/stats/stream")
            resp = conn.getresponse()
            self.opened.set()
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    json.loads(line[6:])  # each event is the whole /stats JSON
                    self.events += 1
        except (OSError, ValueError, http.client.HTTPException) as exc:  # main() reports it
            self.error = exc
            self.opened.set()
        finally:
            conn.close()


def measure(pid: int, seconds: float) -> float:
    """The server's CPU over ``seconds`` of wall time, as % of one core."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a synchronisation
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10, help="open streams (10)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds with streams (20)")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds without (10)")
    p.add_argument("--tenants", type=int, default=4, help="tenant pools in each event (4)")
    args = p.parse_args()

    port = free_port()
    env = {**os.environ, "RAPTORS_TENANT_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raptors", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, proc)
        body = json.dumps({"query": [0.5] * 256})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in range(args.tenants):
            conn.request("POST", "/score", body=body, headers={"X-Tenant": f"bench-{i}"})
            conn.getresponse().read()
        conn.request("GET", "/stats")
        event_bytes = len(conn.getresponse().read())
        conn.close()

        idle = measure(proc.pid, args.baseline)

        stop = threading.Event()
        clients = [StreamClient(port, stop) for _ in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.opened.wait(10)
        failed = [c.error for c in clients if c.error is not None]
        if failed:
            raise SystemExit(f"a stream failed: {failed[0]!r}")
        start_events = sum(c.events for c in clients)
        streaming = measure(proc.pid, args.duration)
        events = sum(c.events for c in clients) - start_events
        stop.set()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)

    rate = events / args.duration / max(1, args.clients)
    print(f"server: python -m raptors serve, {args.tenants} tenant pools + tenant budget")
    print(f"event size: {event_bytes} bytes; {rate:.2f} events/s per stream")
    print(f"CPU, no stream ({args.baseline:.0f} s):         {idle:5.2f} % of a core")
    print(f"CPU, {args.clients} streams ({args.duration:.0f} s):      {streaming:5.2f} % of a core")
    print(f"cost of {args.clients} open pages:             {streaming - idle:5.2f} % of a core")
    print(f"server exit code after SIGINT with streams open: {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
