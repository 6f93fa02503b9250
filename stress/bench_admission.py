"""Predictive against bounded admission on one open-loop overload trace.

Poisson arrivals at ``--load`` times a pool's capacity (``threads /
run_mean``), jobs of ~``--run-ms`` (exponential, or fixed with ``--fixed``)
each with a start deadline of ``--deadline-x`` times the job. Both
admissions replay the same trace (same arrival times, same run times), one
after the other in one run. Reported per admission: jobs admitted, the
share of the admitted that expired, the jobs served in time (started before
their deadline), and their ratio; then the submit cost of each admission
(a tight loop of submits with a timeout into a pool whose thread is held:
each predicts, then queues), as a ratio.

    python stress/bench_admission.py                 # 2 threads, 1.5x, 2 ms, 10x, 20 s
    python stress/bench_admission.py --duration 5    # shorter
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import numpy as np
import raptors as rp


def trace(rate: float, run: float, duration: float, fixed: bool, seed: int):
    rng = np.random.default_rng(seed)
    n = int(rate * duration * 1.2) + 10
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    arrivals = arrivals[arrivals < duration]
    runs = np.full(len(arrivals), run) if fixed else rng.exponential(run, len(arrivals))
    return arrivals.tolist(), runs.tolist()


def replay(admission: str, threads: int, arrivals, runs, deadline: float, warm: int) -> dict:
    pool = rp.Pool(
        f"adm-{admission}-{uuid.uuid4().hex[:6]}",
        threads=threads,
        queue=1024,
        admission=admission,  # type: ignore[arg-type]
    )
    # Recent run times for the prediction (the same for both admissions).
    for r in runs[:warm]:
        pool.submit(time.sleep, r).result()
    refused = 0
    jobs = []
    start = time.perf_counter()
    for at, r in zip(arrivals, runs, strict=True):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            jobs.append(pool.submit(time.sleep, r, timeout=deadline))
        except rp.QueueFull:
            refused += 1
    pool.close(wait=True)
    statuses = [j.status for j in jobs]
    expired = statuses.count("expired")
    served = statuses.count("done")
    return {
        "offered": len(arrivals),
        "admitted": len(jobs),
        "refused": refused,
        "expired": expired,
        "served_in_time": served,
        "expired_share": expired / max(len(jobs), 1),
    }


def submit_costs(n: int, repeats: int) -> dict[str, float]:
    """Median ns per submit with a timeout, per admission, into a pool whose
    one thread is held (every submit predicts, then queues). The two pools
    alternate repeat by repeat, so a load that comes and goes hits both."""
    pools = {}
    gate = threading.Event()
    for admission in ("bounded", "predictive"):
        pool = rp.Pool(
            f"cost-{admission}-{uuid.uuid4().hex[:6]}",
            threads=1,
            queue=n + 1,
            admission=admission,  # type: ignore[arg-type]
        )
        for _ in range(20):
            pool.submit(time.sleep, 0.001).result()
        pool.submit(gate.wait)
        pools[admission] = pool
    samples: dict[str, list[float]] = {a: [] for a in pools}
    for _ in range(repeats):
        for admission, pool in pools.items():
            t0 = time.perf_counter_ns()
            jobs = [pool.submit(time.sleep, 0, timeout=30) for _ in range(n)]
            samples[admission].append((time.perf_counter_ns() - t0) / n)
            for j in jobs:
                j.cancel()
    gate.set()
    for pool in pools.values():
        pool.close()
    return {a: statistics.median(s) for a, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", type=float, default=1.5)
    ap.add_argument("--run-ms", type=float, default=2.0)
    ap.add_argument("--deadline-x", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--fixed", action="store_true", help="fixed run times, not exponential")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    run = args.run_ms / 1e3
    rate = args.load * args.threads / run
    deadline = args.deadline_x * run
    arrivals, runs = trace(rate, run, args.duration, args.fixed, args.seed)
    shape = "fixed" if args.fixed else "exponential"
    print(
        f"{args.threads} threads, Poisson {rate:.0f}/s ({args.load:g}x capacity), {shape} runs "
        f"of {args.run_ms:g} ms, deadline {deadline * 1e3:g} ms, {args.duration:g} s"
    )
    results = {
        a: replay(a, args.threads, arrivals, runs, deadline, 200) for a in ("bounded", "predictive")
    }
    print(f"{'admission':>11} {'offered':>8} {'admitted':>9} {'refused':>8} {'expired':>8} "
          f"{'expired %':>10} {'in time':>8}")  # fmt: skip
    for a, r in results.items():
        print(
            f"{a:>11} {r['offered']:>8} {r['admitted']:>9} {r['refused']:>8} {r['expired']:>8} "
            f"{r['expired_share']:>10.2%} {r['served_in_time']:>8}"
        )
    ratio = results["predictive"]["served_in_time"] / max(results["bounded"]["served_in_time"], 1)
    print(f"served in time, predictive / bounded: {ratio:.3f}")
    costs = submit_costs(500, 21)
    print(
        f"submit with a timeout, median of 21 x 500: bounded {costs['bounded']:.0f} ns, "
        f"predictive {costs['predictive']:.0f} ns, ratio {costs['predictive'] / costs['bounded']:.3f}"
    )


if __name__ == "__main__":
    main()
