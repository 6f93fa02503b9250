"""Soak the demo service under locust: tenant churn, deadlines, cancels, bounded in time.

    python stress/soak.py [--minutes 10] [--users 24] [--tenants 5000]

Starts ``python -m raptors serve`` (embedded matrix, the demo's defaults:
tenant pools on one budget of cores - 1 threads behind the Batcher) on a free
127.0.0.1 port with ``RAPTORS_MAX_TENANTS=--max-tenants`` and
``RAPTORS_TENANT_IDLE_TIMEOUT=--idle-timeout``, so that thousands of tenants
churn through the tenant pools (LRU eviction of idle pools at the cap, the
idle sweep, the shared overflow pool when every pool is busy). It drives it
with ``stress/soak_locustfile.py`` (one headless locust process) for
``--minutes``, and every ``--sample-seconds`` reads the server's RSS
(``/proc/PID/status`` VmRSS) and ``/stats``, checking at every sample:

* every pool: submitted == queued + running + completed + failed +
  cancelled + expired;
* every budget: 0 <= running <= threads;
* tenants: count == created - evicted, count <= max_tenants, and the
  overflow tenants remembered stay bounded (at most ``--max-overflow-tenants``);
* batchers: pending and inflight >= 0.

At the end, after locust stopped and the server drained: the same, plus
nothing queued, running, pending or in flight; every request locust sent
ended with an HTTP answer (200, 503 shed, 504 deadline) or a deliberate
client-side cancel, none with a connection error, a timeout or another
status; no ERROR or traceback in the server's log. RSS growth: warm-up is
the first 20 % of the run (2 minutes of 10); the baseline is the median RSS
of the next 10 % (minute 2-3), the end the median of the last 10 % (minute
9-10); growth = end / baseline - 1.

Prints a summary; exits 1 if the RSS growth is >= ``--max-rss-growth``
percent (5; ``--no-rss-check`` for short runs, whose windows are too short
to mean anything) or any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_locust import check_invariants, free_port, get_json, wait_ready

LOCUSTFILE = HERE / "soak_locustfile.py"
ANSWERS = ("200", "503", "504")
WARMUP, WINDOW = 0.2, 0.1  # fractions of the run


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stats_problems(stats: dict, drained: bool, max_overflow_tenants: int) -> list[str]:
    """Every check of one ``/stats`` snapshot (see the module docstring)."""
    problems = check_invariants(stats, drained=drained)
    for name, b in stats.get("budgets", {}).items():
        if not 0 <= b["running"] <= b["threads"]:
            problems.append(f"budget {name}: running {b['running']} of {b['threads']} threads")
    t = stats.get("tenants")
    if t is not None:
        if t["count"] != t["created"] - t["evicted"]:
            problems.append(
                f"tenants: count {t['count']} != created {t['created']} - evicted {t['evicted']}"
            )
        if t["count"] > t["max_tenants"]:
            problems.append(f"tenants: {t['count']} pools over the cap {t['max_tenants']}")
        if len(t["overflow_tenants"]) > max_overflow_tenants:
            problems.append(
                f"tenants: {len(t['overflow_tenants'])} overflow tenants remembered "
                f"(bound {max_overflow_tenants})"
            )
    for name, b in stats.get("batchers", {}).items():
        if b["pending"] < 0 or b["inflight"] < 0:
            problems.append(f"batcher {name}: pending {b['pending']}, inflight {b['inflight']}")
        if drained and (b["pending"] or b["inflight"]):
            problems.append(
                f"batcher {name}: {b['pending']} pending, {b['inflight']} in flight after drain"
            )
    return problems


def post_score(port: int, tenant: str) -> None:
    """One valid ``/score`` request; raises unless it is answered 200."""
    body = json.dumps({"query": [1.0] * 256})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", "/score", body, {"Content-Type": "application/json", "X-Tenant": tenant}
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/score for {tenant!r} answered {resp.status}")
    finally:
        conn.close()


def drained(stats: dict) -> bool:
    pools = stats["pools"].values()
    batchers = stats.get("batchers", {}).values()
    return not any(st["queued"] or st["running"] for st in pools) and not any(
        b["pending"] or b["inflight"] for b in batchers
    )


def window_median(samples: list[tuple[float, int]], lo: float, hi: float) -> float:
    values = [rss for t, rss in samples if lo <= t < hi]
    if not values:
        raise SystemExit(f"no RSS sample between {lo:.0f} s and {hi:.0f} s")
    return float(statistics.median(values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="run time (10)")
    p.add_argument("--users", type=int, default=24, help="locust users (24)")
    p.add_argument("--tenants", type=int, default=5000, help="distinct churn tenants (5000)")
    p.add_argument("--max-tenants", type=int, default=32, help="tenant pool cap (32)")
    p.add_argument("--idle-timeout", type=float, default=5.0, help="tenant idle timeout, s (5)")
    p.add_argument(
        "--sample-seconds",
        type=float,
        default=None,
        help="sampling period (5, or run / 50 if less)",
    )
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="percent (5)")
    p.add_argument("--no-rss-check", action="store_true", help="report the growth, do not check")
    p.add_argument("--max-overflow-tenants", type=int, default=None,
                   help="bound on the overflow tenants remembered at any sample "
                        "(default: max(1000, 4 x --max-tenants))")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args(argv)
    if not 0.1 <= args.minutes <= 120:
        p.error("--minutes must be within 0.1..120")
    seconds = args.minutes * 60.0
    if args.sample_seconds is None:
        args.sample_seconds = min(5.0, seconds / 50)
    max_overflow = args.max_overflow_tenants or max(1000, 4 * args.max_tenants)

    port = free_port()
    env = dict(os.environ)
    env.update(
        RAPTORS_MAX_TENANTS=str(args.max_tenants),
        RAPTORS_TENANT_IDLE_TIMEOUT=str(args.idle_timeout),
        RAPTORS_SOAK_TENANTS=str(args.tenants),
    )
    failures: list[str] = []
    samples: list[tuple[float, int]] = []
    checks = 0
    peak = {"tenant_pools": 0, "overflow_tenants": 0, "queued": 0}
    with tempfile.TemporaryDirectory(prefix="raptors-soak-") as tmp:
        out = Path(tmp) / "outcomes.json"
        env["RAPTORS_SOAK_OUT"] = str(out)
        server_log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "raptors", "serve", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
        with open(server_log, "w", encoding="utf-8") as log:
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(server, port)
            pid = get_json(port, "/stats")["pid"]
            if pid != server.pid:
                raise SystemExit(f"/stats pid {pid} is not the server's {server.pid}")
            print(f"soak: server pid {pid} on port {port}, {args.users} users, "
                  f"{args.tenants} churn tenants, max_tenants {args.max_tenants}, idle timeout "
                  f"{args.idle_timeout:g} s, {seconds:.0f} s", flush=True)  # fmt: skip
            locust = subprocess.Popen(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                 "--host", f"http://127.0.0.1:{port}", "-u", str(args.users),
                 "-r", str(args.users), "-t", f"{seconds:.0f}s", "--stop-timeout", "5",
                 "--only-summary", "--loglevel", "WARNING"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            start = time.monotonic()
            next_sample = start
            while locust.poll() is None:
                now = time.monotonic()
                if now - start > seconds + 90:
                    locust.kill()
                    failures.append("locust did not stop in time")
                    break
                if now >= next_sample:
                    next_sample += args.sample_seconds
                    samples.append((now - start, rss_kib(server.pid)))
                    try:
                        st = get_json(port, "/stats")
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        failures.append(f"/stats at {now - start:.0f} s: {exc!r}")
                        continue
                    checks += 1
                    failures += [
                        f"at {now - start:.0f} s: {x}"
                        for x in stats_problems(st, False, max_overflow)
                    ]
                    t = st["tenants"]
                    peak["tenant_pools"] = max(peak["tenant_pools"], t["count"])
                    peak["overflow_tenants"] = max(
                        peak["overflow_tenants"], len(t["overflow_tenants"])
                    )
                    peak["queued"] = max(
                        peak["queued"], sum(x["queued"] for x in st["pools"].values())
                    )
                with contextlib.suppress(subprocess.TimeoutExpired):
                    locust.wait(timeout=max(0.05, next_sample - time.monotonic()))
            _, err = locust.communicate()
            if locust.returncode not in (0, 1):
                failures.append(f"locust exited {locust.returncode}: {err[-2000:]}")
            # Drain: poll the server until nothing is queued, running or pending.
            deadline = time.monotonic() + 60
            final = get_json(port, "/stats")
            while not drained(final) and time.monotonic() < deadline:
                time.sleep(0.2)
                final = get_json(port, "/stats")
            # One request of a new tenant runs the lazy sweep: with the overflow
            # pool idle, it forgets its tenants, so none may be left.
            post_score(port, "soak-final-check")
            final = get_json(port, "/stats")
            checks += 1
            failures += [f"final: {x}" for x in stats_problems(final, True, max_overflow)]
            if final["tenants"]["overflow_tenants"]:
                failures.append(
                    f"final: {len(final['tenants']['overflow_tenants'])} overflow tenants "
                    "remembered with the overflow pool idle"
                )
            rss_end_now = rss_kib(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                failures.append("server did not exit within 30 s of SIGINT")
        log_text = server_log.read_text(encoding="utf-8", errors="replace")
        client = json.loads(out.read_text()) if out.exists() else None

    if "Traceback" in log_text or "ERROR" in log_text:
        failures.append("server log has errors:\n" + log_text[-3000:])
    if client is None:
        failures.append("locust wrote no outcomes")
        client = {"outcomes": {}, "tenants": 0}
    outcomes = client["outcomes"]
    total = sum(outcomes.values())
    bad = {k: v for k, v in outcomes.items() if k not in (*ANSWERS, "cancel")}
    if bad:
        failures.append(f"requests without a documented answer: {bad}")
    if total == 0:
        failures.append("no request was sent")
    items = sum(b["items"] for b in final.get("batchers", {}).values())
    if outcomes.get("200", 0) > items:
        failures.append(f"{outcomes.get('200', 0)} answers 200 but only {items} batched items")

    base = window_median(samples, WARMUP * seconds, (WARMUP + WINDOW) * seconds)
    end = window_median(samples, (1 - WINDOW) * seconds, seconds + 1)
    growth = (end / base - 1.0) * 100.0
    rss_ok = growth < args.max_rss_growth
    if not rss_ok and not args.no_rss_check:
        failures.append(f"RSS grew {growth:.2f} % (limit {args.max_rss_growth:g} %)")
    t = final["tenants"]
    pools = final["pools"].values()
    terminal = {k: sum(st[k] for st in pools) for k in ("completed", "failed", "cancelled",
                                                         "expired", "rejected")}  # fmt: skip
    summary = {
        "seconds": seconds,
        "requests": total,
        "outcomes": dict(sorted(outcomes.items())),
        "distinct_tenants": client["tenants"],
        "tenant_pools_created": t["created"],
        "tenant_pools_evicted": t["evicted"],
        "tenant_pools_open_at_end": t["count"],
        "overflow_tenants_at_end": len(t["overflow_tenants"]),
        "peak": peak,
        "open_pools_submitted": sum(st["submitted"] for st in pools),
        "open_pools_terminal": terminal,
        "batchers": final.get("batchers", {}),
        "rss_kib": {
            "first": samples[0][1] if samples else None,
            "baseline_median": base,
            "end_median": end,
            "max": max(r for _, r in samples),
            "after_drain": rss_end_now,
        },
        "rss_growth_pct": round(growth, 2),
        "samples": len(samples),
        "invariant_checks": checks,
        "failures": failures,
    }
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({**summary, "rss_samples": samples}, indent=2))
    print(f"\nRSS: {base / 1024:.1f} MiB after warm-up (median, {WARMUP * seconds:.0f}-"
          f"{(WARMUP + WINDOW) * seconds:.0f} s), {end / 1024:.1f} MiB at the end (median, last "
          f"{WINDOW * seconds:.0f} s): {growth:+.2f} %")  # fmt: skip
    if failures:
        print(f"\nSOAK FAILED ({len(failures)}):\n  " + "\n  ".join(failures[:50]))
        return 1
    print(f"soak passed: {total} requests, {client['tenants']} tenants, {checks} invariant "
          f"checks, nothing lost")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
