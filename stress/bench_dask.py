"""DaskPool beside plain Dask ``client.submit`` on one LocalCluster, one run.

    python stress/bench_dask.py [--repeats 50] [--burst 400] [--cancels 7]

Three figures, each for both and as a ratio (Raptors / Dask):

- round trip: median seconds of ``submit(dot, a, b).result()`` (64-vectors),
  ``--repeats`` each, in alternating blocks of 10 so machine noise spreads
  over both;
- burst throughput: jobs per second for ``--burst`` scoring jobs (8 queries
  against a scattered 20,000 x 256 float32 matrix, top 10), answers compared;
- cancel: ``--cancels`` times, ``token.cancel()`` 20 ms into a running
  2,500 x 2,500 matmul; medians of the seconds until the kernel stopped on
  its worker (the task's compute end in Dask's task stream) and until the
  job ended on the client. Plain Dask cannot stop a running task, so its
  figure is the time the worker stays busy after ``future.cancel()``, that
  is the kernel's remaining run (measured as the whole run, cancelled at its
  start).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import time

import distributed
import numpy as np
import raptors as rp
from raptors.dask import DaskPool, local_cluster


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
    parser.add_argument("--cancels", type=int, default=7)
    args = parser.parse_args()
    with (
        local_cluster() as cluster,
        distributed.Client(cluster) as client,
        DaskPool("bench", client, queue=max(1024, args.burst)) as pool,
    ):
        a = np.random.default_rng(0).standard_normal(64)
        rows: list[tuple[str, float, float, str]] = []

        def round_trip(send: object) -> float:
            started = time.perf_counter()
            send()  # type: ignore[operator]
            return time.perf_counter() - started

        def send_raptors() -> None:
            pool.submit(rp.dot, a, a).result()

        def send_dask() -> None:
            client.submit(np.dot, a, a, pure=False).result()

        times: dict[object, list[float]] = {send_raptors: [], send_dask: []}
        for send in times:  # warm both paths
            for _ in range(10):
                round_trip(send)
        for block in range(max(1, args.repeats // 10)):
            for send, seen in times.items() if block % 2 else reversed(times.items()):
                seen += [round_trip(send) for _ in range(10)]
        raptors_rt = statistics.median(times[send_raptors])
        dask_rt = statistics.median(times[send_dask])
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
        stops: list[float] = []
        ends: list[float] = []
        statuses: set[str] = set()
        for _ in range(args.cancels):
            token = rp.CancelToken()
            with distributed.get_task_stream(client) as stream:
                job = pool.submit(rp.matmul, big, big, token=token)
                with pool._lock:  # notified on every state change
                    pool._lock.wait_for(lambda job=job: job.status != "queued", 60)
                time.sleep(0.02)
                cancelled_at = time.time()
                token.cancel()
                with contextlib.suppress(concurrent.futures.CancelledError):
                    job.result(600)
                ends.append(time.time() - cancelled_at)
                statuses.add(job.status)
                deadline = time.monotonic() + 10
                while not stream.data and time.monotonic() < deadline:
                    time.sleep(0.01)
            stopped = [
                part["stop"]
                for task in stream.data
                if task["key"] == job.id
                for part in task["startstops"]
                if part["action"] == "compute"
            ]
            stops.append(max(stopped) - cancelled_at if stopped else float("nan"))
        started = time.perf_counter()
        client.submit(np.matmul, big_future, big_future, pure=False).result()
        dask_stop = time.perf_counter() - started
        note = f"Raptors jobs: {', '.join(sorted(statuses))}"
        rows.append(("cancel to kernel stop, s", statistics.median(stops), dask_stop, note))
        rows.append(("cancel to job end, s", statistics.median(ends), dask_stop, note))

    print(f"{'measure':<26}{'Raptors':>12}{'Dask':>12}{'ratio':>8}  note")
    for label, mine, other, note in rows:
        print(f"{label:<26}{mine:>12.4g}{other:>12.4g}{mine / other:>8.2f}  {note}")


if __name__ == "__main__":
    main()
