"""The worked example of docs/capacity-planning.md: predict, then re-run and measure.

    python stress/capacity_example.py            # about 1 minute

1. Starts the demo service (``python -m raptors serve --variant raptors-single``: one
   native ``rp.cosine_topk`` job per ``POST /score``, on the default tenant's pool) with
   ``--tenant-threads 1`` (the budget, and so the pool, has one thread).
2. Calibrates: 3 s of load at 100 requests/s, then reads the pool's ``run_mean`` from
   ``/stats`` and sets the rate to ``--utilization`` (0.5) of one thread.
3. Sends open-loop Poisson arrivals at that rate for ``--duration`` (20) seconds:
   requests go out at their scheduled times over 64 keep-alive connections, built and
   parsed by ``raptors._loadgen``; ``/stats`` is read once a second. 2 s before the end,
   while the load runs (the pool's 10 s rate window then holds this load only), it runs
   ``python -m raptors capacity URL --target-wait-p99 T --max-threads 2`` and prints its
   output verbatim (``--max-threads 2``: the kernel is CPU-bound and the machine has 2
   cores; threads past the cores would only slow each job down, which the model, whose
   run times do not depend on the thread count, would not see).
4. Restarts the service with ``--tenant-threads`` = ``threads_needed`` and sends the same
   arrivals (same seed, same rate).
5. Prints, for both runs, the predicted wait p99 at that thread count next to the
   measured one: the median of the pool's ``wait_p99`` (its last 1024 jobs) over the
   ``/stats`` snapshots from 8 s on, with the run mean and the HTTP latency; then the
   planner's report taken during the re-run, from the re-run's own stats.

The machine's load average is printed: the service, its event loop and this client
share the cores with whatever else runs, and a CPU-bound kernel's run times grow with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import numpy as np
from raptors._loadgen import build_post, read_response

POOL = "tenant-default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        data: dict[str, Any] = json.load(r)
    return data


def pool_stats(port: int) -> dict[str, Any]:
    pools = get_stats(port).get("pools", {})
    if POOL in pools:
        stats: dict[str, Any] = pools[POOL]
        return stats
    # The busiest pool otherwise.
    busiest: dict[str, Any] = max(pools.values(), key=lambda p: p.get("submitted", 0))
    return busiest


def start_service(port: int, threads: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "raptors", "serve", "--variant", "raptors-single",
           "--port", str(port), "--tenant-threads", str(threads), "--tenant-queue", "100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {proc.stderr.read().decode()}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("service did not answer /health within 60 s")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bodies(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [json.dumps({"query": rng.standard_normal(256).tolist()}).encode() for _ in range(n)]


async def poisson_load(
    port: int,
    rate: float,
    duration: float,
    seed: int,
    connections: int = 64,
    during: Any = None,
) -> dict[str, Any]:
    """Open loop: request i goes out at its scheduled time on a free connection.
    ``during``: a blocking callable run in a thread 2 s before the last arrival
    (the pool's windows then hold this load only); its result is returned."""
    rng = np.random.default_rng(seed)
    n = int(rate * duration)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    requests = [build_post("127.0.0.1", port, "/score", b, {}) for b in bodies(64, seed)]
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    late: list[float] = []
    statuses: dict[int, int] = {}
    snapshots: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        reader, writer = await free.get()
        sent = time.perf_counter()
        late.append(sent - scheduled)
        writer.write(requests[i % len(requests)])
        status, _, _ = await read_response(reader)
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
        free.put_nowait((reader, writer))

    async def snap() -> None:
        while True:
            await asyncio.sleep(1.0)
            snapshots.append(await loop.run_in_executor(None, pool_stats, port))

    snapper = asyncio.create_task(snap())
    side: asyncio.Future[Any] | None = None
    t0 = time.perf_counter() + 0.1
    for i, at in enumerate(arrivals):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, t0 + at)))
        if during is not None and side is None and at >= duration - 2.0:
            side = loop.run_in_executor(None, during)
    await asyncio.gather(*tasks)
    result = None if side is None else await side
    snapper.cancel()
    while not free.empty():
        free.get_nowait()[1].close()
    skip = len(latencies) // 10
    lat = np.sort(np.asarray(latencies[skip:]))
    # Snapshots after the first 8 s (each one's last 1024 jobs are of this load).
    waits = [s["wait_p99"] for s in snapshots[8:]] or [s["wait_p99"] for s in snapshots]
    return {
        "requests": n,
        "statuses": statuses,
        "latency_p50": float(np.quantile(lat, 0.5)),
        "latency_p99": float(np.quantile(lat, 0.99)),
        "client_late_p99": float(np.quantile(np.asarray(late[skip:]), 0.99)),
        "wait_p99_snapshots": waits,
        "wait_p99": float(np.median(waits)),
        "run_mean": float(snapshots[-1]["run_mean"]) if snapshots else float("nan"),
        "during": result,
    }


def capacity_cli(port: int, target: float, max_threads: int) -> str:
    cmd = [sys.executable, "-m", "raptors", "capacity", f"http://127.0.0.1:{port}",
           "--target-wait-p99", str(target), "--max-threads", str(max_threads)]  # fmt: skip
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def parse_report(text: str) -> tuple[int | None, dict[int, tuple[float, float]]]:
    """threads_needed and {threads: (wait p99, its bound)} of POOL's printed report."""
    block = next((b for b in text.split("\n\n") if f"pool '{POOL}'" in b), text)
    needed: int | None = None
    rows: dict[int, tuple[float, float]] = {}
    for line in block.splitlines():
        if "threads needed" in line:
            word = line.split("threads needed ")[1].split()[0]
            needed = int(word) if word.isdigit() else None
        cells = line.split()
        if cells and cells[0].isdigit() and "ms" in cells:
            values = [float(c) if c != "saturated" else math.inf
                      for c in line.replace(" ms", "").split()[2:5]]  # fmt: skip
            rows[int(cells[0])] = (values[1], values[2])
    return needed, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utilization", type=float, default=0.5, help="of one thread (0.5)")
    p.add_argument("--target-wait-p99", type=float, default=0.010, help="seconds (0.010)")
    p.add_argument("--max-threads", type=int, default=2,
                   help="passed to the planner: the cores, for a CPU-bound kernel (2)")  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="seconds per run (20)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", default="stress/results/capacity_example.json")
    args = p.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, NumPy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("command: python stress/capacity_example.py")
    port = free_port()
    proc = start_service(port, 1)
    try:
        asyncio.run(poisson_load(port, 100.0, 3.0, args.seed + 1))
        run_mean = float(pool_stats(port)["run_mean"])
        rate = round(args.utilization / run_mean)
        print(f"calibration: run mean {run_mean * 1e3:.3f} ms -> {rate:.0f} requests/s "
              f"({args.utilization:.0%} of one thread), {args.duration:.0f} s per run\n")  # fmt: skip
        first = asyncio.run(
            poisson_load(
                port, rate, args.duration, args.seed,
                during=lambda: capacity_cli(port, args.target_wait_p99, args.max_threads),
            )
        )  # fmt: skip
    finally:
        stop_service(proc)
    text = first["during"]
    print(f"$ python -m raptors capacity http://127.0.0.1:PORT --target-wait-p99 "
          f"{args.target_wait_p99} --max-threads {args.max_threads}")  # fmt: skip
    print(text)
    needed, rows = parse_report(text)
    second = None
    if needed is not None and needed != 1:
        port = free_port()
        proc = start_service(port, needed)
        try:
            second = asyncio.run(
                poisson_load(
                    port, rate, args.duration, args.seed,
                    during=lambda: capacity_cli(port, args.target_wait_p99, args.max_threads),
                )
            )  # fmt: skip
        finally:
            stop_service(proc)

    print("| threads | predicted wait p99 ms | its 95% bound ms | measured wait p99 ms "
          "(median of 1 s /stats) | run mean ms | HTTP latency p50 / p99 ms | "
          "client late p99 ms | statuses |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for threads, run in ((1, first), (needed, second)):
        if run is None or threads not in rows:
            continue
        p99, high = rows[threads]
        print(f"| {threads} | {p99:.2f} | {high:.2f} | {run['wait_p99'] * 1e3:.2f} | "
              f"{run['run_mean'] * 1e3:.2f} | {run['latency_p50'] * 1e3:.2f} / "
              f"{run['latency_p99'] * 1e3:.2f} | {run['client_late_p99'] * 1e3:.2f} | "
              f"{run['statuses']} |")  # fmt: skip
    if second is not None:
        # The planner again, from the re-run's own stats (its run times at these threads).
        print(f"\nduring the re-run, on {needed} threads:")
        print(f"$ python -m raptors capacity http://127.0.0.1:PORT --target-wait-p99 "
              f"{args.target_wait_p99} --max-threads {args.max_threads}")  # fmt: skip
        print(second["during"])
    met = second is not None and second["wait_p99"] <= args.target_wait_p99
    print(f"\ntarget {args.target_wait_p99 * 1e3:.2f} ms met with threads_needed={needed}: "
          f"{'yes' if met else 'no'}; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rate": rate, "report": text, "first": first, "second": second}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
