"""``python -m raptors demo``: a short offline tour of the public API."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

import raptors as rp


def _print_stats(pools: list[rp.Pool]) -> None:
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


def main() -> int:
    asyncio.run(_tour())
    return 0
