"""Accuracy of the capacity planner (api.md section 10): predicted wait p99 next to measured.

    python stress/bench_capacity.py                 # 9 loads x 2 runs (about 15 minutes)
    python stress/bench_capacity.py --quick         # fewer jobs (about 5 minutes)

For each run-time shape (fixed, exponential, bimodal: 90 % at 0.5x, 10 % at 5.5x the mean)
and utilization (50, 70, 85 %), a ``--threads`` (2) thread pool is fed ``--jobs`` Poisson
arrivals at ``utilization x threads / mean`` per second from one submitting thread (open
loop: arrival times are drawn in advance and the submitter sleeps until each). A job
notes ``perf_counter()`` when it starts, then sleeps for its drawn run time: a job that
holds a thread for a known time without competing for the two cores, so the measurement
is of queueing, not of CPU contention. The measured wait is the pool's: start - submit
(what ``wait_p99`` in its stats measures). The submitter's lateness (submit - scheduled
arrival) is reported beside it: on a shared machine the submitting thread is sometimes
descheduled for tens of ms, its arrivals then come in a burst and are not Poisson; a run
whose lateness p99 exceeds ``--max-late`` x the target is counted as disturbed and run
again (up to ``--attempts`` times; the table says how many it took).

After the run, ``rp.capacity(pool, target_wait_p99=...)`` predicts from the pool's own
stats (arrival rate, run-time quantiles of its recent jobs): the table shows its wait
p99 at the pool's threads next to the measured one, and, as a control, the closed
Allen-Cunneen approximation (M/G/c mean wait from the run times' squared coefficient of
variation, tail as exponential) on the same inputs. Then the load is run again with
``threads_needed`` threads (the fewest whose predicted wait p99 meets the target)
for ``--rerun-jobs`` arrivals (default 40,000: the measured p99 then rests on 360 tail
samples; a 20,000-job p99 of bimodal run times near the target moves by ~10 % from run to
run) and the measured wait p99 is checked against the target (``--target-factor`` x the
mean run time, default 2); the table gives the re-run p99's 95 % interval (20 batch means)
so a miss can be told from measurement noise. Targets (issue 11): predicted within 35 % of measured;
``threads_needed`` meets the target.

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
from dataclasses import dataclass
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


def drive(
    pool: rp.Pool, rate: float, runs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Open-loop Poisson arrivals; returns each job's wait (start - submit) and
    the submitter's lateness (submit - scheduled arrival)."""
    n = len(runs)
    starts = np.full(n, np.nan)
    submits = np.full(n, np.nan)
    done = threading.Event()
    remaining = [n]
    lock = threading.Lock()

    def job(i: int, run: float) -> None:
        starts[i] = time.perf_counter()
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
        submits[i] = time.perf_counter()
        pool.submit(job, i, float(runs[i])).add_done_callback(finished)
    if not done.wait(timeout=300):
        raise RuntimeError("jobs did not finish within 300 s")
    assert not np.isnan(starts).any()
    return starts - submits, submits - arrivals


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


@dataclass
class Run:
    wait_p99: float
    wait_p99_interval: tuple[float, float]
    late_p99: float
    load: float
    attempts: int
    report: rp.CapacityReport
    allen_cunneen: float


def measure(
    shape: str, util: float, threads: int, jobs: int, args: argparse.Namespace, seed: int
) -> Run:
    """One load on ``threads`` threads, run again while the submitter was disturbed."""
    target = args.target_factor * args.mean_ms / 1e3
    for attempt in range(1, args.attempts + 1):
        rng = np.random.default_rng(seed + 1000 * (attempt - 1))
        runs = run_times(shape, args.mean_ms / 1e3, jobs, rng)
        rate = util * threads / (args.mean_ms / 1e3)
        name = f"cap-{shape}-{util:.3f}-{threads}-{seed}-{attempt}"
        pool = rp.Pool(name, threads=threads, queue=1_000_000)
        try:
            waits, late = drive(pool, rate, runs, rng)
            report = rp.capacity(pool, target_wait_p99=target)
        finally:
            pool.close(wait=True)
        skip = len(waits) // 10  # the first jobs found an empty pool
        late_p99 = float(np.quantile(late[skip:], 0.99))
        if late_p99 <= args.max_late * target or attempt == args.attempts:
            kept = waits[skip:]
            p99 = float(np.quantile(kept, 0.99))
            batches = np.quantile(np.array_split(kept, 20), 0.99, axis=1)
            half = 2.093 * float(np.std(batches, ddof=1)) / math.sqrt(20)  # t(0.975, 19)
            return Run(
                wait_p99=p99,
                wait_p99_interval=(p99 - half, p99 + half),
                late_p99=late_p99,
                load=os.getloadavg()[0],
                attempts=attempt,
                report=report,
                allen_cunneen=allen_cunneen_p99(rate, runs, threads),
            )
    raise AssertionError("unreachable")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=6000, help="arrivals per prediction run")
    p.add_argument("--rerun-jobs", type=int, default=40_000,
                   help="arrivals per re-run with threads_needed threads")  # fmt: skip
    p.add_argument("--max-late", type=float, default=0.5,
                   help="submitter lateness p99 above this x target: run again")  # fmt: skip
    p.add_argument("--attempts", type=int, default=4)
    p.add_argument("--mean-ms", type=float, default=2.0)
    p.add_argument("--target-factor", type=float, default=2.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results/capacity.json")
    args = p.parse_args()
    if args.quick:
        args.jobs, args.rerun_jobs = 3000, 8000

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )
    print(f"command: python stress/bench_capacity.py {'--quick' if args.quick else ''}".rstrip())
    target = args.target_factor * args.mean_ms / 1e3
    print(
        f"{args.threads} threads, {args.jobs} Poisson arrivals per prediction run, "
        f"{args.rerun_jobs} per re-run, mean run time {args.mean_ms} ms, target wait p99 "
        f"{target * 1e3:.1f} ms; load average at start {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| run times | utilization | measured wait p99 ms | rp.capacity ms | error |"
        " Allen-Cunneen ms | error | threads_needed | its p99 bound ms |"
        " re-run wait p99 ms (95 % interval) | meets target | submitter late p99 ms (run / re-run) |"
        " attempts | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    rows = []
    for si, shape in enumerate(SHAPES):
        for ui, util in enumerate(UTILIZATIONS):
            seed = 100 * si + ui
            first = measure(shape, util, args.threads, args.jobs, args, seed)
            report = first.report
            measured, predicted = first.wait_p99, report.predicted_wait_p99
            needed = report.threads_needed
            bound = math.nan
            rerun: Run | None = None
            if needed is not None:
                bound = next(r["wait_p99_high"] for r in report.rows if r["threads"] == needed)
                # The same offered load (jobs/s) on threads_needed threads.
                rerun_util = util * args.threads / needed
                rerun = measure(shape, rerun_util, needed, args.rerun_jobs, args, seed + 50)
            rerun_p99 = math.nan if rerun is None else rerun.wait_p99
            ac = first.allen_cunneen
            row = {
                "shape": shape,
                "utilization": util,
                "measured_p99": measured,
                "predicted_p99": predicted,
                "error": predicted / measured - 1 if measured > 0 else math.nan,
                "allen_cunneen_p99": ac,
                "allen_cunneen_error": ac / measured - 1 if measured > 0 else math.nan,
                "threads_needed": needed,
                "threads_needed_bound": bound,
                "rerun_p99": rerun_p99,
                "rerun_p99_interval": None if rerun is None else rerun.wait_p99_interval,
                "meets_target": bool(rerun_p99 <= target),
                "late_p99": first.late_p99,
                "rerun_late_p99": math.nan if rerun is None else rerun.late_p99,
                "attempts": [first.attempts, 0 if rerun is None else rerun.attempts],
                "load": [first.load, math.nan if rerun is None else rerun.load],
                "report": report.to_dict(),
            }
            rows.append(row)
            interval = (
                ""
                if rerun is None
                else " ({:.2f}-{:.2f})".format(*(x * 1e3 for x in rerun.wait_p99_interval))
            )
            print(
                f"| {shape} | {util:.0%} | {measured * 1e3:.2f} | {predicted * 1e3:.2f} | "
                f"{row['error']:+.0%} | {ac * 1e3:.2f} | {row['allen_cunneen_error']:+.0%} | "
                f"{needed} | {bound * 1e3:.2f} | {rerun_p99 * 1e3:.2f}{interval} | "
                f"{'yes' if row['meets_target'] else 'NO'} | "
                f"{first.late_p99 * 1e3:.2f} / {row['rerun_late_p99'] * 1e3:.2f} | "
                f"{row['attempts'][0]} / {row['attempts'][1]} | "
                f"{row['load'][0]:.1f} / {row['load'][1]:.1f} |",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=1, default=str))
    worst = max(abs(r["error"]) for r in rows)
    met = sum(r["meets_target"] for r in rows)
    print(f"\nworst rp.capacity error {worst:.0%}; re-runs meeting the target: "
          f"{met} of {len(rows)}; load average at end {os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
