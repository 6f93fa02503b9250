"""Runtime benchmark: Raptors pools against the usual ways to run work off the event loop.

    python stress/bench_runtime.py            # full run (about 2-3 minutes)
    python stress/bench_runtime.py --quick    # smaller run (about 30 s)

Side by side, in one run, against ``asyncio.to_thread``,
``loop.run_in_executor(ThreadPoolExecutor(2))`` and ``anyio.to_thread.run_sync``:

1. round trip: submit -> await of one trivial job at a time (Raptors: the
   native ``rp.dot`` of two float64 vectors of length 16; baselines: the same
   ``np.dot``), microseconds per job;
2. throughput: 64 jobs in flight (``gather`` of 64 at a time, many rounds),
   jobs per second;
3. event-loop heartbeat lag: a task sleeping 1 ms records how late it wakes
   while 8 client tasks keep the pool busy with float64 matmuls of about 2 ms
   (``rp.matmul`` for Raptors, ``np.matmul`` of the same size for the
   baselines), p50/p99 in ms, plus an idle-loop row.

Every measurement is repeated (>= 5 times, contenders interleaved within each
repeat so machine noise spreads evenly) and the medians are reported. The
baselines run twice, in separate worker processes: with OpenBLAS at its
default threads and with ``OPENBLAS_NUM_THREADS=1`` (Raptors runs in both
processes, so each ratio compares numbers from the same process). To compare
against NumPy at its best, run the command with ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` unset (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).

Results: a markdown table on stdout and ``stress/results/runtime.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"
BLAS_SETTINGS = ("default", "1")
IN_FLIGHT = 64
CLIENTS = 8
HEARTBEAT_PERIOD = 0.001
TARGET_MATMUL_SECONDS = 0.002


# --- worker side: runs in a subprocess with the BLAS setting already in its env ---------


def _worker(args) -> dict:
    import anyio.to_thread
    import numpy as np
    import raptors as rp

    repeats = args.repeats
    quick = args.quick
    pool = rp.Pool("bench-runtime", threads=None, queue=1024)
    tpe = concurrent.futures.ThreadPoolExecutor(2)
    rng = np.random.default_rng(0)
    a16, b16 = rng.standard_normal(16), rng.standard_normal(16)
    n = args.matmul_n or _calibrate_matmul_n(rp, np)
    ma, mb = rng.standard_normal((n, n)), rng.standard_normal((n, n))

    # Same answers before anything is timed.
    want = np.dot(a16, b16)
    got = pool.submit(rp.dot, a16, b16).result(timeout=30)
    assert abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want))), (got, want)
    np.testing.assert_allclose(
        np.asarray(pool.submit(rp.matmul, ma, mb).result(timeout=30)), ma @ mb, rtol=1e-9
    )

    def contenders(kernel, np_fn, args_):
        """name -> zero-argument function returning one job's awaitable, written
        as users write it (a Raptors job or an executor future is awaited as
        is; `asyncio.to_thread` and anyio are coroutines, so `gather` wraps
        them in tasks, as it does for their users)."""

        def run_in_executor():
            return asyncio.get_running_loop().run_in_executor(tpe, np_fn, *args_)

        return {
            "raptors": lambda: pool.submit(kernel, *args_),
            "raptors (Python callable)": lambda: pool.submit(np_fn, *args_),
            "asyncio.to_thread": lambda: asyncio.to_thread(np_fn, *args_),
            "run_in_executor(TPE(2))": run_in_executor,
            "anyio.to_thread": lambda: anyio.to_thread.run_sync(np_fn, *args_),
        }

    round_trip_jobs = 400 if quick else 2000
    rounds = 30 if quick else 150
    window = 0.4 if quick else 1.5

    async def bench() -> dict:
        dot_calls = contenders(rp.dot, np.dot, (a16, b16))
        mm_calls = contenders(rp.matmul, np.matmul, (ma, mb))
        del mm_calls["raptors (Python callable)"]

        out = {"round_trip": {}, "throughput": {}, "heartbeat": {}}
        # Warm every path (thread pools started, code paths hot).
        for call in dot_calls.values():
            for _ in range(50):
                await call()
            await asyncio.gather(*(call() for _ in range(IN_FLIGHT)))

        for _ in range(repeats):
            for name, call in dot_calls.items():
                out["round_trip"].setdefault(name, []).append(
                    await _round_trip(call, round_trip_jobs)
                )
            for name, call in dot_calls.items():
                out["throughput"].setdefault(name, []).append(await _throughput(call, rounds))
            out["heartbeat"].setdefault("idle loop", []).append(await _heartbeat(None, window))
            for name, call in mm_calls.items():
                out["heartbeat"].setdefault(name, []).append(await _heartbeat(call, window))
        return out

    samples = asyncio.run(bench())
    pool.close()
    tpe.shutdown()
    return {
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "blas": _blas_info(np),
        "pool_threads": pool.threads,
        "matmul_n": n,
        "samples": samples,
        "summary": _summarise(samples),
    }


def _calibrate_matmul_n(rp, np) -> int:
    """The n at which one float64 ``rp.matmul`` takes about 2 ms (median of calls)."""
    rng = np.random.default_rng(1)
    n = 256
    for _ in range(6):
        a = rng.standard_normal((n, n))
        rp.matmul(a, a)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            rp.matmul(a, a)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        new_n = max(16, round(n * (TARGET_MATMUL_SECONDS / t) ** (1 / 3)))
        if abs(new_n - n) <= max(4, n // 50):
            return new_n
        n = new_n
    return n


async def _round_trip(call, jobs: int) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(jobs):
        await call()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"us_per_job": wall / jobs * 1e6, "cpu_us_per_job": cpu / jobs * 1e6}


async def _throughput(call, rounds: int) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(call() for _ in range(IN_FLIGHT)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    jobs = rounds * IN_FLIGHT
    return {"jobs_per_s": jobs / wall, "cpu_us_per_job": cpu / jobs * 1e6}


async def _heartbeat(call, window: float) -> dict:
    """Lateness of a 1 ms sleeper while CLIENTS tasks run `call` back to back."""
    measuring = False
    stop = False
    lags: list[float] = []
    done_jobs = 0

    async def beat():
        while not stop:
            t0 = time.perf_counter()
            await asyncio.sleep(HEARTBEAT_PERIOD)
            if measuring:
                lags.append(time.perf_counter() - t0 - HEARTBEAT_PERIOD)

    async def client():
        nonlocal done_jobs
        while not stop:
            await call()
            if measuring:
                done_jobs += 1

    tasks = [asyncio.create_task(beat())]
    if call is not None:
        tasks += [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await asyncio.sleep(0.1)  # warm-up, not measured
    measuring = True
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    measuring = False
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop = True
    await asyncio.gather(*tasks)
    lags.sort()
    return {
        "lag_p50_ms": _percentile(lags, 0.50) * 1e3,
        "lag_p99_ms": _percentile(lags, 0.99) * 1e3,
        "jobs_per_s": done_jobs / wall,
        "cpu_cores": cpu / wall,
        "beats": len(lags),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _summarise(samples: dict) -> dict:
    """Median of every metric over the repeats."""
    summary = {}
    for bench, by_name in samples.items():
        summary[bench] = {}
        for name, runs in by_name.items():
            summary[bench][name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary[bench][name]["repeats"] = len(runs)
    return summary


def _blas_info(np) -> dict:
    info = {}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{deps.get('name')} {deps.get('version')}"
    except Exception as e:  # noqa: BLE001 - an unknown config layout is reported, not fatal
        info["numpy_blas"] = f"unknown ({e!r})"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            info["threadpoolctl"] = (
                f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')}, "
                f"{p.get('num_threads')} threads"
            )
    except ImportError:
        info["threadpoolctl"] = "not installed"
    info["env"] = {
        k: os.environ[k]
        for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
        if k in os.environ
    }
    return info


# --- orchestrator -----------------------------------------------------------------------


def _run_worker(setting: str, args, matmul_n: int | None) -> dict:
    env = dict(os.environ)
    if setting == "default":
        env.pop("OPENBLAS_NUM_THREADS", None)
    else:
        env["OPENBLAS_NUM_THREADS"] = setting
    cmd = [sys.executable, __file__, "--worker", "--repeats", str(args.repeats)]
    if args.quick:
        cmd.append("--quick")
    if matmul_n:
        cmd += ["--matmul-n", str(matmul_n)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker for OPENBLAS_NUM_THREADS={setting} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(x: float, y: float) -> str:
    if y > 0 and not (math.isnan(x) or math.isnan(y)):
        return f"{x / y:.1f}x"
    return "n/a"


def _table(results: dict, machine: str, command: str) -> str:
    lines = [f"Machine: {machine}", f"Command: `{command}`", ""]
    for setting, res in results.items():
        s = res["summary"]
        lines.append(
            f"### OpenBLAS threads: {setting} (Raptors pool threads={res['pool_threads']}, "
            f"matmul n={res['matmul_n']}; BLAS: {res['blas'].get('threadpoolctl', '')})"
        )
        lines.append("")
        rt, tp, hb = s["round_trip"], s["throughput"], s["heartbeat"]
        ref_rt = rt["raptors"]["us_per_job"]
        ref_tp = tp["raptors"]["jobs_per_s"]
        lines += [
            (
                "| contender | round trip µs/job | CPU µs/job | Raptors faster by "
                "| 64 in flight jobs/s | CPU µs/job | Raptors faster by |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in rt:
            lines.append(
                f"| {name} | {rt[name]['us_per_job']:.1f} | {rt[name]['cpu_us_per_job']:.1f} "
                f"| {_ratio(rt[name]['us_per_job'], ref_rt)} "
                f"| {tp[name]['jobs_per_s']:,.0f} | {tp[name]['cpu_us_per_job']:.1f} "
                f"| {_ratio(ref_tp, tp[name]['jobs_per_s'])} |"
            )
        lines += [
            "",
            f"Heartbeat (1 ms sleeper, {CLIENTS} clients of ~2 ms float64 matmuls):",
            "",
            (
                "| contender | lag p50 ms | lag p99 ms | Raptors better by (p99) | matmuls/s "
                "| process CPU (cores) |"
            ),
            "|---|---:|---:|---:|---:|---:|",
        ]
        ref_p99 = hb["raptors"]["lag_p99_ms"]
        for name, row in hb.items():
            lines.append(
                f"| {name} | {row['lag_p50_ms']:.3f} | {row['lag_p99_ms']:.3f} "
                f"| {_ratio(row['lag_p99_ms'], ref_p99)} "
                f"| {row['jobs_per_s']:,.0f} | {row['cpu_cores']:.2f} |"
            )
        lines.append("")
    ref = results[BLAS_SETTINGS[0]]["summary"]
    lines.append(
        f"Targets: Raptors round trip <= 10 µs (measured "
        f"{ref['round_trip']['raptors']['us_per_job']:.1f} µs), 64 in flight >= 300,000 jobs/s "
        f"(measured {ref['throughput']['raptors']['jobs_per_s']:,.0f} jobs/s)."
    )
    lines.append(
        "Medians of repeats. 'Raptors faster by' = baseline time / Raptors time "
        "(or Raptors jobs/s / baseline jobs/s); > 1 favours Raptors."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, same repeats")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (>= 5)")
    parser.add_argument(
        "--matmul-n", type=int, default=None, help="matmul size (default: ~2 ms with rp.matmul)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of repeats)")

    if args.worker:
        print(json.dumps(_worker(args)))
        return

    import numpy as np
    from raptors.bench import cpu_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {}
    matmul_n = args.matmul_n
    for setting in BLAS_SETTINGS:
        # Calibrated once, in the first worker: every setting multiplies the same size.
        results[setting] = _run_worker(setting, args, matmul_n)
        matmul_n = results[setting]["matmul_n"]
    blas = results["default"]["blas"]
    machine = (
        f"{cpu_model()}, {cores} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, BLAS {blas['numpy_blas']} "
        f"({blas.get('threadpoolctl', 'threadpoolctl not installed')}), "
        f"env {blas['env'] or '{}'}"
    )
    command = " ".join(["python", "stress/bench_runtime.py", *sys.argv[1:]])
    print(_table(results, machine, command))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine,
                "command": command,
                "quick": args.quick,
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
