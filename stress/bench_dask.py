"""DaskPool beside plain Dask ``client.submit`` on one LocalCluster, one run.

    python stress/bench_dask.py [--repeats 50] [--burst 400]

Three figures, each for both and as a ratio (Raptors / Dask):

- round trip: median seconds of ``submit(dot, a, b).result()`` (64-vectors);
- burst throughput: jobs per second for ``--burst`` scoring jobs (8 queries
  against a scattered 20,000 x 256 float32 matrix, top 10), answers compared;
- cancel to end: seconds from ``token.cancel()`` to the end of a running
  2,500 x 2,500 matmul; plain Dask cannot stop a running task, so its figure
  is the time the worker stays busy after ``future.cancel()``, that is the
  kernel's remaining run (measured as the whole run, cancelled at its start).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import time

import dask
import distributed
import numpy as np
import raptors as rp
from raptors.dask import DaskPool


def numpy_topk(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's cosine top-k, the plain-Dask twin of ``rp.cosine_topk``."""
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--burst", type=int, default=400)
    args = parser.parse_args()
    with (
        dask.config.set({"distributed.scheduler.worker-saturation": 1.0}),
        distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        DaskPool("bench", client, queue=max(1024, args.burst)) as pool,
    ):
        a = np.random.default_rng(0).standard_normal(64)
        rows: list[tuple[str, float, float, str]] = []

        def median_round_trip(send: object) -> float:
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                send()  # type: ignore[operator]
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        median_round_trip(lambda: pool.submit(rp.dot, a, a).result())  # warm both paths
        median_round_trip(lambda: client.submit(np.dot, a, a, pure=False).result())
        raptors_rt = median_round_trip(lambda: pool.submit(rp.dot, a, a).result())
        dask_rt = median_round_trip(lambda: client.submit(np.dot, a, a, pure=False).result())
        rows.append(("round trip, median s", raptors_rt, dask_rt, "lower is better"))

        matrix = np.random.default_rng(1).standard_normal((20_000, 256)).astype(np.float32)
        queries = [
            np.random.default_rng(2 + i).standard_normal((8, 256)).astype(np.float32)
            for i in range(args.burst)
        ]
        handle = pool.scatter(matrix)
        [matrix_future] = client.scatter([matrix], broadcast=True)
        started = time.perf_counter()
        jobs = [pool.submit(rp.cosine_topk, handle, q, 10) for q in queries]
        ours = [job.result(600) for job in jobs]
        raptors_rate = args.burst / (time.perf_counter() - started)
        started = time.perf_counter()
        futures = [client.submit(numpy_topk, matrix_future, q, 10, pure=False) for q in queries]
        theirs = client.gather(futures)
        dask_rate = args.burst / (time.perf_counter() - started)
        same = all(
            np.array_equal(np.sort(np.asarray(mine[0]), axis=1), np.sort(other[0], axis=1))
            for mine, other in zip(ours, theirs, strict=True)
        )
        rows.append(("burst, jobs/s", raptors_rate, dask_rate, f"same top-10 ids: {same}"))

        n = 2500
        big = pool.scatter(np.ones((n, n)))
        [big_future] = client.scatter([np.ones((n, n))], broadcast=True)
        token = rp.CancelToken()
        job = pool.submit(rp.matmul, big, big, token=token)
        with pool._lock:  # notified on every state change
            pool._lock.wait_for(lambda: job.status != "queued", 60)
        cancelled_at = time.perf_counter()
        token.cancel()
        with contextlib.suppress(concurrent.futures.CancelledError):
            job.result(600)
        raptors_stop = time.perf_counter() - cancelled_at
        status = job.status
        started = time.perf_counter()
        client.submit(np.matmul, big_future, big_future, pure=False).result()
        dask_stop = time.perf_counter() - started
        rows.append(("cancel to end, s", raptors_stop, dask_stop, f"Raptors job: {status}"))

    print(f"{'measure':<24}{'Raptors':>12}{'Dask':>12}{'ratio':>8}  note")
    for label, mine, other, note in rows:
        print(f"{label:<24}{mine:>12.4g}{other:>12.4g}{mine / other:>8.2f}  {note}")


if __name__ == "__main__":
    main()
