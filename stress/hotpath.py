"""The hot path of one pool alone, as a whole process: for A/B timing of two
builds with ``farm-bench`` (which pairs runs and reports the ratio).

    farm-bench -n 9 --timeout 600 -- venv-a/bin/python stress/hotpath.py roundtrip \\
        --vs 'venv-b/bin/python stress/hotpath.py roundtrip'

``roundtrip``: ``await pool.submit(rp.dot, a, b)`` one at a time;
``inflight``: 64 such jobs in flight (``asyncio.gather`` of the jobs, a
Task per job), many rounds; ``inflight-future``: the same through
``job.asyncio_future()`` (no Task per job; builds that have it). All on
``rp.Pool("hotpath", threads=2)``, or with ``--budget`` on a pool alone on
``rp.Budget("hotpath", threads=2)``. Prints microseconds per job.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import raptors as rp


async def roundtrip(pool: rp.Pool, n: int) -> float:
    a = np.ones(16)
    start = time.perf_counter()
    for _ in range(n):
        await pool.submit(rp.dot, a, a)
    return (time.perf_counter() - start) / n


async def inflight(pool: rp.Pool, rounds: int) -> float:
    a = np.ones(16)
    start = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(pool.submit(rp.dot, a, a) for _ in range(64)))
    return (time.perf_counter() - start) / (rounds * 64)


async def inflight_future(pool: rp.Pool, rounds: int) -> float:
    a = np.ones(16)
    start = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(pool.submit(rp.dot, a, a).asyncio_future() for _ in range(64)))
    return (time.perf_counter() - start) / (rounds * 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["roundtrip", "inflight", "inflight-future"])
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--budget", action="store_true", help="run the pool on an rp.Budget")
    args = parser.parse_args()
    budget = rp.Budget("hotpath", threads=2) if args.budget else None
    # No budget= keyword without --budget, so a build before budgets runs it too.
    on_budget = {} if budget is None else {"budget": budget}
    with rp.Pool("hotpath", threads=2, queue=256, **on_budget) as pool:
        if args.mode == "roundtrip":
            per_job = asyncio.run(roundtrip(pool, args.jobs))
        elif args.mode == "inflight":
            per_job = asyncio.run(inflight(pool, max(args.jobs // 64, 1)))
        else:
            per_job = asyncio.run(inflight_future(pool, max(args.jobs // 64, 1)))
    if budget is not None:
        budget.close()
    print(f"{args.mode}: {per_job * 1e6:.2f} us per job")


if __name__ == "__main__":
    main()
