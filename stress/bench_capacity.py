"""Accuracy of the capacity planner (api.md section 10): predicted wait p99 next to measured.

    python stress/bench_capacity.py                 # 9 loads x 2 runs (about 2 minutes)
    python stress/bench_capacity.py --quick         # fewer jobs (about 1 minute)

For each run-time shape (fixed, exponential, bimodal: 90 % at 0.5x, 10 % at 5.5x the mean)
and utilization (50, 70, 85 %), a ``--threads`` (2) thread pool is fed ``--jobs`` Poisson
arrivals at ``utilization x threads / mean`` per second from one submitting thread (open
loop: arrival times are drawn in advance and the submitter sleeps until each). A job
notes ``perf_counter()`` when it starts, then sleeps for its drawn run time: a job that
holds a thread for a known time without competing for the two cores, so the measurement
is of queueing, not of CPU contention. The measured wait is start - scheduled arrival.

After the run, ``rp.capacity(pool, target_wait_p99=...)`` predicts from the pool's own
stats (arrival rate, run-time quantiles of its recent jobs): the table shows its wait
p99 at the pool's threads next to the measured one, and, as a control, the closed
Allen-Cunneen approximation (M/G/c mean wait from the run times' squared coefficient of
variation, tail as exponential) on the same inputs. Then the load is run again with
``threads_needed`` threads and the measured wait p99 is checked against the target
(``--target-factor`` x the mean run time, default 2). Targets (issue 11): predicted within
35 % of measured; ``threads_needed`` meets the target.

Results: a markdown table on stdout and ``stress/results/capacity.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import raptors as rp

SHAPES = ("fixed", "exponential", "bimodal")
UTILIZATIONS = (0.5, 0.7, 0.85)


def run_times(shape: str, mean: float, n: int, rng: np.random.Generator) -> np.ndarray:
    if shape == "fixed":
        return np.full(n, mean)
    if shape == "exponential":
        return rng.exponential(mean, n)
    long = rng.random(n) < 0.1
    return np.where(long, 5.5 * mean, 0.5 * mean)


def drive(pool: rp.Pool, rate: float, runs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Open-loop Poisson arrivals; returns each job's wait (start - scheduled arrival)."""
    n = len(runs)
    waits = np.full(n, np.nan)
    started = np.zeros(n, dtype=bool)
    done = threading.Event()
    remaining = [n]
    lock = threading.Lock()

    def job(i: int, arrival: float, run: float) -> None:
        waits[i] = time.perf_counter() - arrival
        started[i] = True
        time.sleep(run)

    def finished(_: object) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    gaps = rng.exponential(1.0 / rate, n)
    t0 = time.perf_counter() + 0.05
    arrivals = t0 + np.cumsum(gaps)
    for i in range(n):
        delay = arrivals[i] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pool.submit(job, i, float(arrivals[i]), float(runs[i])).add_done_callback(finished)
    if not done.wait(timeout=120):
        raise RuntimeError("jobs did not finish within 120 s")
    assert started.all()
    return waits


def allen_cunneen_p99(rate: float, runs: np.ndarray, c: int) -> float:
    mean = float(runs.mean())
    scv = float(runs.var() / mean**2) if mean > 0 else 0.0
    a = rate * mean
    rho = a / c
    if rho >= 1:
        return math.inf
    # Erlang C: the probability that an arrival waits (M/M/c).
    terms = sum(a**k / math.factorial(k) for k in range(c))
    last = a**c / math.factorial(c) / (1 - rho)
    p_wait = last / (terms + last)
    mean_wait = p_wait / (c / mean - rate) * (1 + scv) / 2
    if p_wait <= 0.01:
        return 0.0
    return mean_wait / p_wait * math.log(p_wait / 0.01)


def measure(
    shape: str, util: float, threads: int, args: argparse.Namespace, seed: int
) -> tuple[float, rp.CapacityReport, float]:
    rng = np.random.default_rng(seed)
    runs = run_times(shape, args.mean_ms / 1e3, args.jobs, rng)
    rate = util * threads / (args.mean_ms / 1e3)
    pool = rp.Pool(f"cap-{shape}-{util}-{threads}-{seed}", threads=threads, queue=100_000)
    try:
        waits = drive(pool, rate, runs, rng)
        report = rp.capacity(pool, target_wait_p99=args.target_factor * args.mean_ms / 1e3)
    finally:
        pool.close(wait=True)
    measured = float(np.quantile(waits[len(waits) // 10 :], 0.99))
    return measured, report, allen_cunneen_p99(rate, runs, threads)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=6000)
    p.add_argument("--mean-ms", type=float, default=2.0)
    p.add_argument("--target-factor", type=float, default=2.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results/capacity.json")
    args = p.parse_args()
    if args.quick:
        args.jobs = 3000

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )
    print(f"command: python stress/bench_capacity.py {'--quick' if args.quick else ''}".rstrip())
    print(
        f"{args.threads} threads, {args.jobs} Poisson arrivals per run, mean run time "
        f"{args.mean_ms} ms, target wait p99 {args.target_factor * args.mean_ms:.1f} ms\n"
    )
    print(
        "| run times | utilization | measured wait p99 ms | rp.capacity ms | error |"
        " Allen-Cunneen ms | error | threads_needed | re-run wait p99 ms | meets target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for si, shape in enumerate(SHAPES):
        for ui, util in enumerate(UTILIZATIONS):
            seed = 100 * si + ui
            measured, report, ac = measure(shape, util, args.threads, args, seed)
            predicted = report.predicted_wait_p99
            needed = report.threads_needed
            rerun = math.nan
            if needed is not None:
                # The same offered load (jobs/s) on threads_needed threads.
                scaled = argparse.Namespace(**vars(args))
                rerun_util = util * args.threads / needed
                rerun, _, _ = measure(shape, rerun_util, needed, scaled, seed + 50)
            target = report.target_wait_p99
            row = {
                "shape": shape,
                "utilization": util,
                "measured_p99": measured,
                "predicted_p99": predicted,
                "error": predicted / measured - 1 if measured > 0 else math.nan,
                "allen_cunneen_p99": ac,
                "allen_cunneen_error": ac / measured - 1 if measured > 0 else math.nan,
                "threads_needed": needed,
                "rerun_p99": rerun,
                "meets_target": bool(rerun <= target),
                "report": report.to_dict(),
            }
            rows.append(row)
            print(
                f"| {shape} | {util:.0%} | {measured * 1e3:.2f} | {predicted * 1e3:.2f} | "
                f"{row['error']:+.0%} | {ac * 1e3:.2f} | {row['allen_cunneen_error']:+.0%} | "
                f"{needed} | {rerun * 1e3:.2f} | {'yes' if row['meets_target'] else 'NO'} |",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=1, default=str))
    worst = max(abs(r["error"]) for r in rows)
    print(f"\nworst rp.capacity error {worst:.0%}; all re-runs meet the target: "
          f"{all(r['meets_target'] for r in rows)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
