"""``python -m raptors demo [--dask]``: a short offline tour of the public API
(with ``--dask``: of ``raptors.dask.DaskPool`` on a LocalCluster of this machine)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from typing import Any

import numpy as np

import raptors as rp


def _print_stats(pools: list[Any]) -> None:
    cols = ("submitted", "completed", "failed", "cancelled", "expired", "rejected", "queued",
            "running")  # fmt: skip
    print(f"  {'pool':<14}" + "".join(f"{c:>10}" for c in cols) + f"{'run p50 ms':>12}")
    for pool in pools:
        st = pool.stats()
        row = "".join(f"{getattr(st, c):>10}" for c in cols)
        print(f"  {st.name:<14}{row}{st.run_p50 * 1e3:>12.3f}")
        total = st.queued + st.running + st.completed + st.failed + st.cancelled + st.expired
        assert st.submitted == total, f"stats invariant broken for {st.name}: {st}"


async def _tour() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((5_000, 128), dtype=np.float32)
    query = rng.standard_normal(128, dtype=np.float32)

    with (
        rp.Pool("demo-compute", threads=2, queue=32) as compute,
        rp.Pool("demo-serial", threads=1, queue=8) as serial,
    ):
        print(f"pools: {compute.name} ({compute.threads} threads), {serial.name} (1 thread)")

        # Kernels run in Rust with the GIL released; awaiting never blocks the loop.
        d = await compute.submit(rp.dot, matrix[0], query)
        sims = await compute.submit(rp.cosine_similarity, matrix, query)
        ids, vals = await compute.submit(rp.topk, sims, 3)
        print(f"kernels: dot={float(d):.4f}; top-3 cosine ids={np.asarray(ids).tolist()} "
              f"scores={[round(float(v), 4) for v in np.asarray(vals)]}")  # fmt: skip

        # Python callables too. Hold the single worker so the next jobs queue up,
        # then watch priorities decide the order.
        gate = threading.Event()
        order: list[str] = []
        blocker = serial.submit(gate.wait, 5.0)
        jobs = {
            name: serial.submit(order.append, name, priority=prio)
            for name, prio in (("low", 0), ("high", 10), ("mid", 5), ("doomed", 1))
        }
        print(f"queued on {serial.name}: {serial.stats().queued} jobs; cancelling 'doomed' -> "
              f"{jobs['doomed'].cancel()}")  # fmt: skip
        gate.set()
        await blocker
        for name in ("low", "high", "mid"):
            await jobs[name]
        print(f"ran in priority order: {order}; 'doomed' status: {jobs['doomed'].status}")

        # Load shedding: a full queue refuses at once instead of growing.
        gate.clear()
        held = serial.submit(gate.wait, 5.0)
        while not held.running():
            await asyncio.sleep(0.001)
        fillers = [serial.submit(time.sleep, 0) for _ in range(serial.queue_capacity)]
        try:
            serial.submit(time.sleep, 0)
        except rp.QueueFull as exc:
            print(f"queue full: {type(exc).__name__} (pool {exc.pool!r}, capacity {exc.capacity})")
        gate.set()
        await asyncio.gather(held, *fillers)

        print("stats:")
        _print_stats([compute, serial])


def _gate(event_name: str) -> None:
    """A job that holds its Dask worker until the cluster-wide event is set."""
    import distributed

    distributed.Event(event_name).wait(30)


def _stamp(name: str) -> tuple[str, float]:
    return name, time.time()


def _dask_tour() -> None:
    import uuid

    import distributed

    from raptors.batch import Batcher
    from raptors.dask import DaskPool, local_cluster

    print("starting a LocalCluster: 2 worker processes x 1 thread (worker-saturation 1.0) ...")
    with (
        local_cluster() as cluster,
        distributed.Client(cluster) as client,
        DaskPool("demo-dask", client, queue=8) as pool,
    ):
        print(f"pool {pool.name}: scheduler {cluster.scheduler_address}, {pool.threads} threads")
        rng = np.random.default_rng(7)
        matrix = rng.standard_normal((5_000, 128), dtype=np.float32)
        query = rng.standard_normal(128, dtype=np.float32)
        handle = pool.scatter(matrix)  # sent to every worker once
        ids, vals = pool.submit(rp.cosine_topk, handle, query, 3).result()
        print(f"kernel on a worker: top-3 cosine ids={np.asarray(ids).tolist()} "
              f"scores={[round(float(v), 4) for v in np.asarray(vals)]}")  # fmt: skip

        # Hold both workers; the jobs behind wait at the scheduler and leave
        # in priority order as the workers free up.
        gate = f"demo-gate-{uuid.uuid4().hex}"
        held = [pool.submit(_gate, gate) for _ in range(pool.threads)]
        while not all(job.running() for job in held):
            time.sleep(0.005)
        jobs = {
            name: pool.submit(_stamp, name, priority=prio)
            for name, prio in (("low", 0), ("high", 10), ("mid", 5), ("doomed", 1))
        }
        print(f"queued: {pool.stats().queued} jobs; cancelling 'doomed' -> "
              f"{jobs['doomed'].cancel()}")  # fmt: skip
        fill = [pool.submit(_stamp, "filler") for _ in range(pool.queue_capacity - 3)]
        try:
            pool.submit(_stamp, "one too many")
        except rp.QueueFull as exc:
            print(f"queue full: {type(exc).__name__} (pool {exc.pool!r}, capacity {exc.capacity})")
        time.sleep(0.1)  # the submits reach the scheduler before the gate opens
        distributed.Event(gate, client=client).set()
        started = sorted((jobs[n].result(30) for n in ("low", "high", "mid")), key=lambda r: r[1])
        for job in (*held, *fill):
            job.result(30)
        first = " and ".join(sorted(name for name, _ in started[: pool.threads]))
        print(f"priority order: {first} started first (one per worker), then "
              f"{', '.join(name for name, _ in started[pool.threads:])}; "
              f"'doomed': {jobs['doomed'].status}")  # fmt: skip

        # A token stops a running kernel on its worker between chunks.
        big = pool.scatter(np.ones((2_000, 2_000)))
        token = rp.CancelToken()
        long = pool.submit(rp.matmul, big, big, token=token)
        while not long.running():
            time.sleep(0.001)
        cancelled_at = time.perf_counter()
        token.cancel()
        with contextlib.suppress(concurrent.futures.CancelledError):
            long.result(30)
        print(f"token cancelled a running 2,000^2 matmul: {long.status} "
              f"{(time.perf_counter() - cancelled_at) * 1e3:.0f} ms later")  # fmt: skip

        # A Batcher coalesces concurrent calls into batch jobs on the cluster.
        batcher = Batcher(
            rp.cosine_topk,
            gather=lambda qs: (handle, np.stack(qs), 3),
            scatter=lambda r: list(zip(*r, strict=True)),
            max_pending=64,
        )

        async def calls() -> list[Any]:
            queries = rng.standard_normal((16, 128), dtype=np.float32)
            return await asyncio.gather(*(batcher.submit(pool, q) for q in queries))

        answers = asyncio.run(calls())
        print(f"batcher: {len(answers)} concurrent calls in {batcher.stats()['batches']} "
              "batch jobs")  # fmt: skip
        print("stats:")
        _print_stats([pool])


def main(dask: bool = False) -> int:
    if dask:
        _dask_tour()
    else:
        asyncio.run(_tour())
    return 0
