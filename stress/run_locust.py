"""Run the locust scenario headless against the demo service, bounded in time.

    python stress/run_locust.py [--seconds 20] [--quiet-users 2] [--noisy-factor 5]

Starts ``python -m raptors serve`` on a free 127.0.0.1 port (the demo's
defaults: the tenant pools share one budget of cores - 1 threads, divided
fairly between busy tenants, behind the coalescing Batcher), then runs locust twice against it for ``--seconds`` each:

1. the quiet tenant alone, to get its baseline latency;
2. the quiet tenant with the noisy tenant at ``--noisy-factor`` times its load;
3. with ``--control``, the same load with the noisy tenant sent to a second
   server process: the quiet tenant then shares only the machine's cores
   with it, which separates the server's isolation from CPU contention.

Each tenant's users run in their own locust process, as separate clients
would: the quiet tenant's latency then reflects the server, not the noisy
client's work in a shared gevent loop.

Prints the per-tenant latency table of both phases, the quiet tenant's p99
ratio (target: within 1.3x of alone), the final pool stats from ``/stats``,
and checks the stats invariant of every pool
(submitted == queued + running + completed + failed + cancelled + expired)
with nothing left queued or running. Exits non-zero if an invariant fails.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
TERMINAL = ("completed", "failed", "cancelled", "expired")
# The quiet tenant's p99 next to the noisy one / alone (issue 9).
TARGET_RATIO = 1.3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            if get_json(port, "/health").get("status") == "ok":
                return
        time.sleep(0.1)
    raise SystemExit("server did not become ready")


def run_phase(
    name: str, ports: dict[str, int], seconds: float, env: dict, out: Path
) -> dict[str, dict]:
    """Runs one locust process per tenant, side by side: a tenant's client is
    its own process (as separate clients would be), so the noisy tenant's
    client work never delays the quiet tenant's requests inside one gevent
    loop; what the quiet tenant sees is the server."""
    counts = {
        u: int(env["RAPTORS_QUIET_USERS"]) * (int(env["RAPTORS_NOISY_FACTOR"]) if u == "NoisyTenant" else 1)
        for u in ports
    }  # fmt: skip
    desc = ", ".join(f"{u} ({n} users)" for u, n in counts.items())
    print(f"phase {name}: {desc}, one locust process each, for {seconds:g} s ...", flush=True)
    procs = []
    for user, n in counts.items():
        prefix = out / f"{name}-{user}"
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", f"http://127.0.0.1:{ports[user]}", "-u", str(n), "-r", str(n),
            "-t", f"{seconds:g}s", "--stop-timeout", "3", "--csv", str(prefix),
            "--only-summary", "--loglevel", "WARNING", user,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        procs.append((prefix, proc))
    rows = {}
    for prefix, proc in procs:
        try:
            _, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"locust did not finish in {seconds + 60:g} s") from None
        if proc.returncode not in (0, 1):  # 1: some requests failed (e.g. 503 shed)
            raise SystemExit(f"locust failed ({proc.returncode}):\n{err[-3000:]}")
        with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row["Name"].startswith("/score ["):
                    rows[row["Name"][8:-1]] = row
    return rows


def fmt_row(phase: str, tenant: str, row: dict) -> str:
    return (
        f"{phase:<14} {tenant:<8} {int(row['Request Count']):>8} {int(row['Failure Count']):>8} "
        f"{float(row['Requests/s']):>8.1f} {row['50%']:>7} {row['95%']:>7} {row['99%']:>7} "
        f"{float(row['Max Response Time']):>8.1f}"
    )


def check_invariants(stats: dict, drained: bool = True) -> list[str]:
    """The stats invariant of every pool in a ``/stats`` snapshot; with
    ``drained``, also nothing queued or running."""
    problems = []
    for name, st in stats["pools"].items():
        accounted = st["queued"] + st["running"] + sum(st[k] for k in TERMINAL)
        if st["submitted"] != accounted:
            problems.append(f"{name}: submitted {st['submitted']} != accounted {accounted}")
        if drained and (st["queued"] or st["running"]):
            problems.append(f"{name}: {st['queued']} queued, {st['running']} running after drain")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per phase (20)")
    p.add_argument("--quiet-users", type=int, default=2)
    p.add_argument("--noisy-factor", type=int, default=5)
    p.add_argument("--user-rps", type=float, default=20.0, help="requests/s per locust user (20)")
    p.add_argument("--variant", default="raptors",
                   help="the demo's scoring variant (raptors; see raptors.service)")  # fmt: skip
    p.add_argument("--tenant-threads", type=int, default=None,
                   help="threads of the tenant budget (default: the demo's, cores - 1)")  # fmt: skip
    p.add_argument("--client-timeout", type=float, default=2.0)
    p.add_argument("--control", action="store_true",
                   help="add a third phase: the noisy tenant on a second server process, so "
                        "the quiet tenant shares only the machine with it")  # fmt: skip
    args = p.parse_args()
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be within 1..600")

    port = free_port()
    env = dict(os.environ)
    env.update(
        RAPTORS_QUIET_USERS=str(args.quiet_users),
        RAPTORS_NOISY_FACTOR=str(args.noisy_factor),
        RAPTORS_USER_RPS=str(args.user_rps),
        RAPTORS_CLIENT_TIMEOUT=str(args.client_timeout),
    )

    def start_server(port: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "raptors", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--variant", args.variant]  # fmt: skip
        if args.tenant_threads is not None:
            cmd += ["--tenant-threads", str(args.tenant_threads)]
        return subprocess.Popen(cmd, env=env)

    servers = [start_server(port)]
    phases: list[tuple[str, dict[str, dict]]] = []
    try:
        wait_ready(servers[0], port)
        with tempfile.TemporaryDirectory(prefix="raptors-locust-") as tmp:
            quiet = {"QuietTenant": port}
            phases.append(
                ("quiet-alone", run_phase("quiet-alone", quiet, args.seconds, env, Path(tmp)))
            )
            both = {"QuietTenant": port, "NoisyTenant": port}
            phases.append(
                ("noisy+quiet", run_phase("noisy+quiet", both, args.seconds, env, Path(tmp)))
            )
            if args.control:
                other = free_port()
                servers.append(start_server(other))
                wait_ready(servers[1], other)
                apart = {"QuietTenant": port, "NoisyTenant": other}
                phases.append(
                    ("noisy-apart", run_phase("noisy-apart", apart, args.seconds, env, Path(tmp)))
                )
        time.sleep(0.5)  # let the last in-flight jobs finish before the final snapshot
        stats = get_json(port, "/stats")
    finally:
        for server in servers:
            server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    head = (f"{'phase':<14} {'tenant':<8} {'requests':>8} {'failures':>8} {'req/s':>8} "
            f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8}")  # fmt: skip
    print()
    print(head)
    print("-" * len(head))
    for phase, rows in phases:
        for tenant, row in sorted(rows.items()):
            print(fmt_row(phase, tenant, row))
    results = dict(phases)
    q_alone, q_both = (
        float(results["quiet-alone"]["quiet"]["99%"]),
        float(results["noisy+quiet"]["quiet"]["99%"]),
    )
    ratio = q_both / q_alone if q_alone else float("inf")
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"\nquiet tenant p99: {q_alone:g} ms alone, {q_both:g} ms next to the noisy tenant "
          f"-> {ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x target)")  # fmt: skip
    if "noisy-apart" in results:
        q_apart = float(results["noisy-apart"]["quiet"]["99%"])
        print(f"control: {q_apart:g} ms with the noisy tenant on another server process "
              f"({q_apart / q_alone:.2f}x): what sharing the machine alone costs")  # fmt: skip

    print("\nfinal pool stats:")
    cols = ("submitted", "completed", "failed", "cancelled", "expired", "rejected", "queued",
            "running", "max_queued")  # fmt: skip
    print(f"  {'pool':<16}" + "".join(f"{c:>11}" for c in cols) + f"{'wait p99':>10}{'run p50':>9}")
    for name, st in sorted(stats["pools"].items()):
        print(f"  {name:<16}" + "".join(f"{st[c]:>11}" for c in cols)
              + f"{st['wait_p99'] * 1e3:>8.2f}ms{st['run_p50'] * 1e3:>7.2f}ms")  # fmt: skip
    problems = check_invariants(stats)
    if problems:
        print("\nSTATS INVARIANT FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("\nstats invariant holds for every pool; nothing queued or running, nothing lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
