"""Shared CPU budgets (api.md section 9), measured side by side in one run, as ratios.

    python stress/bench_budget.py                     # full run (about 1.5 minutes)
    python stress/bench_budget.py --quick             # 2 s windows, fewer jobs (about 50 s)
    python stress/bench_budget.py --section overhead  # one section only (repeatable)

Three sections, each printed as a markdown table of medians of ``--repeats``
(default 3); within a repeat the cases of a section run back to back, so
machine noise spreads evenly over them. Every pool and budget of a case is
new (so their recent windows hold only that case) and closed when it ends.

1. weighted shares (``shares``): a ``--threads`` (2) thread ``rp.Budget``
   with two pools of weights 1 and 3, each kept saturated by a feeder thread
   (``--queue`` jobs in flight, re-submitted in batches as they complete, so
   the queue never drains). A job is one native kernel call that releases the
   GIL: ``rp.sum`` (``--kernel``) of a float64 array sized for ``--job-ms``
   (1 ms) by a direct call. After a warm-up, over a ``--window`` of >= 2 s,
   the weight-3 pool's share of the busy time is read from
   ``budget.stats().shares`` and, independently, from the pools' own stats
   (jobs completed in the window x their mean run time, or median where
   ``PoolStats`` has no ``run_mean``). Target (api.md 9.1): 0.75 within 0.10.
   Second case: the weight-1 pool's jobs are ``--long-factor`` (10) x longer.
2. quiet pool latency (``quiet``): a budget with one saturated pool and one
   quiet pool, both weight 1; the quiet pool's client submits one job at a
   time with ``--think-ms`` (4 ms) between, far below its share. Its wait is
   measured submit -> start (the quiet job is a Python callable that notes
   ``perf_counter()`` when it starts, then calls the same native kernel, so
   this includes winning the GIL on the worker, ~20 µs) and read from the
   quiet pool's ``stats().wait_p99``. Reported as a ratio to the longest job
   run among the saturated pools (their ``run_p99``); target (api.md 9.2)
   <= 1.2x. Saturated jobs of 1x and ``--long-factor`` x the job time, next to
   two controls: the quiet pool alone on the budget, and what the budget
   replaces, quiet and saturated jobs sharing one plain ``rp.Pool`` (FIFO).
3. the cost of a budget on one pool alone (``overhead``): submit -> await of
   one tiny job at a time (``rp.dot`` of two float64 vectors of length 16;
   ``np.dot`` for the baselines), median and p99 of per-job latencies, and
   64 jobs in flight (``gather`` of 64, many rounds), for
   ``rp.Pool(threads=2)`` against ``rp.Pool(budget=rp.Budget(threads=2))``
   and the baselines ``asyncio.to_thread`` (the loop's default executor) and
   ``run_in_executor(ThreadPoolExecutor(2))``; the baselines also with BLAS
   at one thread (threadpoolctl), though a length-16 dot runs on one thread
   either way. Target: the budget pool within 5 % of the private pool.

Results: markdown tables on stdout (with the machine line and the command)
and ``stress/results/budget.json``. ``--strict`` exits 1 when a target is
missed. Needs a release build of Raptors with api.md section 9 (``rp.Budget``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import raptors as rp
from raptors.bench import cpu_model

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # the benchmark still runs; no BLAS-1-thread rows, BLAS line says unknown
    threadpool_info = None
    threadpool_limits = None

RESULTS = Path(__file__).resolve().parent / "results" / "budget.json"
SECTIONS = ("shares", "quiet", "overhead")
KERNELS = ("sum", "dot", "topk")
PREFIX = "bench-budget"
WEIGHTS = (1, 3)
SHARE_TARGET = WEIGHTS[1] / sum(WEIGHTS)  # 0.75
SHARE_TOLERANCE = 0.10  # api.md 9.1: within 10 % of the total busy time
QUIET_TARGET = 1.2  # quiet wait p99 / longest saturated job
OVERHEAD_TARGET = 0.05  # budget pool within 5 % of a private pool
IN_FLIGHT = 64
TINY_N = 16
PRIVATE = "rp.Pool(threads={t})"
ON_BUDGET = "rp.Pool(budget=rp.Budget(threads={t}))"
NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class Config:
    threads: int
    queue: int
    kernel_name: str
    kernel: Callable[..., Any]
    job_s: float
    long_factor: int
    think_s: float
    warmup_s: float
    window_s: float
    round_trip_jobs: int
    rounds: int
    repeats: int


# --- resources: every pool, budget, executor and thread a case opens is closed -----------


class Opened:
    """Closes what was added, newest first, when the block ends (also on errors):
    client threads stop before the pools they feed, pools before their budget."""

    live: ClassVar[list[Opened]] = []  # every block still open, for main's final clean-up

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, obj: Any) -> Any:
        self.items.append(obj)
        return obj

    def __enter__(self) -> Self:
        Opened.live.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        while self.items:
            obj = self.items.pop()
            try:
                _shut(obj)
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                print(f"warning: closing {obj!r} failed: {exc!r}", file=sys.stderr)
        if self in Opened.live:
            Opened.live.remove(self)


def _shut(obj: Any) -> None:
    if isinstance(obj, threading.Thread):
        obj.halt.set()
        if obj.is_alive():
            obj.join(timeout=60)
    elif isinstance(obj, (rp.Pool, rp.Budget)):
        if not obj.closed:
            obj.close(wait=True, cancel_pending=True)
    else:
        obj.shutdown(wait=True, cancel_futures=True)


class Feeder(threading.Thread):
    """Keeps ``pool`` saturated: ``depth`` of its jobs in flight, topped up each
    time the oldest ``depth // 4`` have ended (jobs of one pool start in FIFO
    order, so the oldest end first; topping up in batches keeps the feeder's
    CPU small). With ``depth`` = the queue bound, at least three quarters of it
    minus the running jobs wait at every moment, and no submit is refused."""

    def __init__(self, pool: Any, fn: Callable[..., Any], args: tuple, depth: int) -> None:
        super().__init__(name=f"feeder-{pool.name}", daemon=True)
        self.pool, self.fn, self.args, self.depth = pool, fn, args, depth
        self.batch = max(1, depth // 4)
        self.halt = threading.Event()
        self.submitted = 0
        self.refused = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        inflight: collections.deque[Any] = collections.deque()
        try:
            while not self.halt.is_set():
                while len(inflight) < self.depth:
                    try:
                        inflight.append(self.pool.submit(self.fn, *self.args))
                    except rp.QueueFull:  # someone else fills a shared pool
                        self.refused += 1
                        break
                    self.submitted += 1
                if not inflight:
                    time.sleep(0.0005)
                    continue
                last = inflight[min(len(inflight), self.batch) - 1]
                with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
                    last.exception(timeout=0.05)
                while inflight and inflight[0].done():
                    job = inflight.popleft()
                    if not job.cancelled() and job.exception() is not None:
                        raise job.exception()
        except rp.PoolClosed:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"feeder of pool {self.pool.name!r} failed") from self.error
        if not self.is_alive():
            raise RuntimeError(f"feeder of pool {self.pool.name!r} stopped early")


def _stamped(fn: Callable[..., Any], *args: Any) -> float:
    """A quiet job: notes when it started, then runs the native kernel."""
    started = time.perf_counter()
    fn(*args)
    return started


class QuietClient(threading.Thread):
    """Submits one job at a time to ``pool``, thinking ``think_s`` between jobs;
    records each job's submit -> start wait while ``measuring`` is set."""

    def __init__(self, pool: Any, fn: Callable[..., Any], args: tuple, think_s: float) -> None:
        super().__init__(name=f"quiet-{pool.name}", daemon=True)
        self.pool, self.fn, self.args, self.think_s = pool, fn, args, think_s
        self.halt = threading.Event()
        self.measuring = False
        self.waits: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                submitted = time.perf_counter()
                started = self.pool.submit(_stamped, self.fn, *self.args).result(timeout=120)
                if self.measuring:
                    self.waits.append(started - submitted)
                self.halt.wait(self.think_s)
        except rp.PoolClosed:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"quiet client of {self.pool.name!r} failed") from self.error
        if not self.is_alive():
            raise RuntimeError(f"quiet client of {self.pool.name!r} stopped early")


# --- work ---------------------------------------------------------------------------------


def make_args(kernel_name: str, n: int) -> tuple:
    """Arguments of one job of size ``n`` (float64, contiguous)."""
    if kernel_name == "dot":
        return (np.full(n, 0.5), np.full(n, 2.0))
    if kernel_name == "topk":  # k = n/2: selection and sort, cache-resident, never split
        return (np.random.default_rng(n).standard_normal(n), max(1, n // 2))
    return (np.full(n, 0.5),)


def _time_call(fn: Callable[..., Any], args: tuple) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def calibrate(kernel: Callable[..., Any], kernel_name: str, target_s: float) -> tuple[int, float]:
    """The size at which one direct call takes about ``target_s`` (median of calls)."""
    n = 1 << 16
    t = NAN
    for _ in range(12):
        args = make_args(kernel_name, n)
        kernel(*args)
        t = statistics.median(_time_call(kernel, args) for _ in range(7))
        factor = min(64.0, max(1 / 64, target_s / max(t, 1e-9)))
        new_n = int(min(1 << 28, max(1024, n * factor)))
        if abs(new_n - n) <= n // 25:
            break
        n = new_n
    return n, t


def check_answers(kernel: Callable[..., Any], kernel_name: str, args: tuple) -> None:
    """Same answers as NumPy before anything is timed."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(TINY_N), rng.standard_normal(TINY_N)
    got, want = float(rp.dot(a, b)), float(np.dot(a, b))
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (got, want)
    if kernel_name == "topk":
        values, k = args
        got_vals = np.asarray(kernel(values, k)[1])
        want_vals = np.sort(values)[::-1][:k]
        assert np.allclose(got_vals, want_vals), "topk values differ from NumPy's"
    else:
        got = float(kernel(*args))
        want = float(np.dot(*args) if kernel_name == "dot" else np.sum(*args))
        assert math.isclose(got, want, rel_tol=1e-9), (got, want)


# --- section 1: weighted shares -------------------------------------------------------------


def _run_time(st: Any) -> tuple[float, str]:
    """Mean run time of a pool's recent jobs (``run_mean``, api.md 10) or, where
    ``PoolStats`` has none, the median."""
    mean = getattr(st, "run_mean", None)
    if mean:
        return float(mean), "run_mean"
    return float(st.run_p50), "run_p50"


def run_shares(cfg: Config, light_args: tuple, heavy_args: tuple, tag: str) -> dict:
    with Opened() as opened:
        name = f"{PREFIX}-shares-{tag}"
        budget = opened.add(rp.Budget(name, threads=cfg.threads))
        light, heavy = [
            opened.add(rp.Pool(f"{name}-w{w}", queue=cfg.queue, budget=budget, weight=w))
            for w in WEIGHTS
        ]
        feeders = [
            opened.add(Feeder(light, cfg.kernel, light_args, cfg.queue)),
            opened.add(Feeder(heavy, cfg.kernel, heavy_args, cfg.queue)),
        ]
        for feeder in feeders:
            feeder.start()
        time.sleep(cfg.warmup_s)
        before = [light.stats(), heavy.stats()]
        t0 = time.perf_counter()
        time.sleep(cfg.window_s)
        bstats = budget.stats()
        after = [light.stats(), heavy.stats()]
        elapsed = time.perf_counter() - t0
        for feeder in feeders:
            feeder.check()
        names = (light.name, heavy.name)
    jobs = [end.completed - start.completed for start, end in zip(before, after, strict=True)]
    run_times = [_run_time(a) for a in after]
    busy = [n * r for n, (r, _) in zip(jobs, run_times, strict=True)]
    shares = dict(bstats.shares)
    return {
        "budget_share": float(shares.get(names[1], NAN)),
        "stats_share": busy[1] / sum(busy) if sum(busy) > 0 else NAN,
        "count_share": jobs[1] / sum(jobs) if sum(jobs) > 0 else NAN,
        "budget_utilization": float(bstats.utilization),
        "light_jobs_per_s": jobs[0] / elapsed,
        "heavy_jobs_per_s": jobs[1] / elapsed,
        "light_run_ms": run_times[0][0] * 1e3,
        "heavy_run_ms": run_times[1][0] * 1e3,
        "light_queued_at_end": after[0].queued,
        "heavy_queued_at_end": after[1].queued,
        "window_s": elapsed,
        "run_time_source": run_times[1][1],
        "budget_shares": shares,
    }


def shares_section(cfg: Config, base: tuple, long: tuple) -> dict:
    cases = {
        "equal jobs": (base, base),
        f"weight-1 jobs {cfg.long_factor}x longer": (long, base),
    }
    samples: dict[str, list[dict]] = {name: [] for name in cases}
    for r in range(cfg.repeats):
        for i, (name, (light_args, heavy_args)) in enumerate(cases.items()):
            print(f"  shares: {name}, repeat {r + 1}/{cfg.repeats}", file=sys.stderr, flush=True)
            samples[name].append(run_shares(cfg, light_args, heavy_args, f"{r}-{i}"))
    return {"samples": samples, "summary": {k: _medians(v) for k, v in samples.items()}}


# --- section 2: quiet pool latency ----------------------------------------------------------


def run_quiet(
    cfg: Config, setup: str, noisy_args: tuple | None, quiet_args: tuple, tag: str
) -> dict:
    """``setup``: "alone" (the quiet pool alone on a budget), "budget" (next to a
    saturated pool on the same budget) or "shared" (both clients on one plain
    pool with threads of its own)."""
    budget = None
    with Opened() as opened:
        if setup == "shared":
            # Room for the quiet job beyond the feeder's depth: it is never refused.
            shared = rp.Pool(f"{PREFIX}-quiet-{tag}", threads=cfg.threads, queue=cfg.queue + 8)
            quiet = noisy = opened.add(shared)
        else:
            budget = opened.add(rp.Budget(f"{PREFIX}-quiet-{tag}", threads=cfg.threads))
            quiet = opened.add(
                rp.Pool(f"{PREFIX}-quiet-{tag}-quiet", queue=cfg.queue, budget=budget, weight=1)
            )
            noisy = None
            if setup == "budget":
                noisy = opened.add(
                    rp.Pool(f"{PREFIX}-quiet-{tag}-busy", queue=cfg.queue, budget=budget, weight=1)
                )
        workers: list[Any] = []
        if noisy is not None:
            workers.append(opened.add(Feeder(noisy, cfg.kernel, noisy_args, cfg.queue)))
        client = opened.add(QuietClient(quiet, cfg.kernel, quiet_args, cfg.think_s))
        workers.append(client)
        for worker in workers:
            worker.start()
        time.sleep(cfg.warmup_s)
        client.measuring = True
        time.sleep(cfg.window_s)
        client.measuring = False
        qstats = quiet.stats()
        nstats = noisy.stats() if noisy is not None else None
        bstats = budget.stats() if budget is not None else None
        for worker in workers:
            worker.check()
        quiet_name = quiet.name
    waits = sorted(client.waits)
    wait_p99 = _percentile(waits, 0.99)
    # The saturated pools' longest job: their run p99 (one pool here). In the
    # shared pool the quiet jobs (1x) are among them: a few in a hundred.
    longest = float(nstats.run_p99) if nstats is not None else NAN
    stats_wait_p99 = float(qstats.wait_p99) if setup != "shared" else NAN
    quiet_share = NAN if bstats is None else float(dict(bstats.shares).get(quiet_name, NAN))
    return {
        "quiet_jobs": len(waits),
        "wait_p50_ms": _percentile(waits, 0.50) * 1e3,
        "wait_p99_ms": wait_p99 * 1e3,
        "wait_max_ms": (waits[-1] if waits else NAN) * 1e3,
        "stats_wait_p99_ms": stats_wait_p99 * 1e3,
        "longest_run_ms": longest * 1e3,
        "ratio": wait_p99 / longest if longest > 0 else NAN,
        "stats_ratio": stats_wait_p99 / longest if longest > 0 else NAN,
        "quiet_run_p50_ms": float(qstats.run_p50) * 1e3,
        "quiet_share": quiet_share,
        "budget_utilization": float(bstats.utilization) if bstats is not None else NAN,
    }


def quiet_section(cfg: Config, base: tuple, long: tuple) -> dict:
    lf = cfg.long_factor
    cases = {
        "budget, quiet pool alone": ("alone", None),
        "budget, next to a saturated pool (1x jobs)": ("budget", base),
        f"budget, next to a saturated pool ({lf}x jobs)": ("budget", long),
        "one shared rp.Pool, no budget (1x jobs)": ("shared", base),
        f"one shared rp.Pool, no budget ({lf}x jobs)": ("shared", long),
    }
    samples: dict[str, list[dict]] = {name: [] for name in cases}
    for r in range(cfg.repeats):
        for i, (name, (setup, noisy_args)) in enumerate(cases.items()):
            print(f"  quiet: {name}, repeat {r + 1}/{cfg.repeats}", file=sys.stderr, flush=True)
            samples[name].append(run_quiet(cfg, setup, noisy_args, base, f"{r}-{i}"))
    return {"samples": samples, "summary": {k: _medians(v) for k, v in samples.items()}}


# --- section 3: the cost of a budget on one pool alone -------------------------------------


async def _round_trip(call: Callable[[], Any], jobs: int) -> dict:
    latencies = []
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(jobs):
        s = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    latencies.sort()
    return {
        "median_us": _percentile(latencies, 0.50) * 1e6,
        "p99_us": _percentile(latencies, 0.99) * 1e6,
        "mean_us": wall / jobs * 1e6,
        "cpu_us_per_job": cpu / jobs * 1e6,
    }


async def _throughput(call: Callable[[], Any], rounds: int) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(call() for _ in range(IN_FLIGHT)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    jobs = rounds * IN_FLIGHT
    return {"jobs_per_s": jobs / wall, "cpu_us_per_job": cpu / jobs * 1e6}


def _blas(limit: int | None) -> contextlib.AbstractContextManager:
    if limit is None or threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


async def _overhead(cfg: Config) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(TINY_N), rng.standard_normal(TINY_N)
    t = cfg.threads
    with Opened() as opened:
        private = opened.add(rp.Pool(f"{PREFIX}-private", threads=t))
        budget = opened.add(rp.Budget(f"{PREFIX}-overhead", threads=t))
        on_budget = opened.add(rp.Pool(f"{PREFIX}-on-budget", budget=budget))
        tpe = opened.add(concurrent.futures.ThreadPoolExecutor(t))

        def run_in_executor() -> Any:
            return asyncio.get_running_loop().run_in_executor(tpe, np.dot, a, b)

        # name -> (a zero-argument function returning one job's awaitable, BLAS limit)
        contenders: dict[str, tuple[Callable[[], Any], int | None]] = {
            PRIVATE.format(t=t): (lambda: private.submit(rp.dot, a, b), None),
            ON_BUDGET.format(t=t): (lambda: on_budget.submit(rp.dot, a, b), None),
            "asyncio.to_thread": (lambda: asyncio.to_thread(np.dot, a, b), None),
            f"run_in_executor(TPE({t}))": (run_in_executor, None),
        }
        if threadpool_limits is not None:
            contenders["asyncio.to_thread (BLAS 1 thread)"] = (
                lambda: asyncio.to_thread(np.dot, a, b),
                1,
            )
            contenders[f"run_in_executor(TPE({t})) (BLAS 1 thread)"] = (run_in_executor, 1)

        for call, limit in contenders.values():  # warm every path
            with _blas(limit):
                for _ in range(50):
                    await call()
                await asyncio.gather(*(call() for _ in range(IN_FLIGHT)))

        samples: dict[str, dict[str, list[dict]]] = {"round_trip": {}, "throughput": {}}
        for name in contenders:  # rows in this order, whatever order a repeat runs them in
            samples["round_trip"][name] = []
            samples["throughput"][name] = []
        for r in range(cfg.repeats):
            print(f"  overhead: repeat {r + 1}/{cfg.repeats}", file=sys.stderr, flush=True)
            # Odd repeats run the contenders in reverse, so none always follows another;
            # a short pause lets the previous contender's workers finish spinning and park.
            step = -1 if r % 2 else 1
            order = list(contenders.items())[::step]
            for name, (call, limit) in order:
                await asyncio.sleep(0.02)
                with _blas(limit):
                    samples["round_trip"][name].append(await _round_trip(call, cfg.round_trip_jobs))
            for name, (call, limit) in order:
                await asyncio.sleep(0.02)
                with _blas(limit):
                    samples["throughput"][name].append(await _throughput(call, cfg.rounds))
    summary = {
        kind: {name: _medians(runs) for name, runs in by_name.items()}
        for kind, by_name in samples.items()
    }
    return {"samples": samples, "summary": summary}


def overhead_section(cfg: Config) -> dict:
    return asyncio.run(_overhead(cfg))


# --- summaries and tables -------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return NAN
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _medians(runs: list[dict]) -> dict:
    """Median of every numeric metric over the repeats (NaNs left out)."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for key, first in runs[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            out[key] = first
            continue
        values = [float(r[key]) for r in runs if not math.isnan(float(r[key]))]
        out[key] = statistics.median(values) if values else NAN
    return out


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _x(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}x"


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "NO")


def _share_ok(share: float) -> bool | None:
    if math.isnan(share):
        return None
    return abs(share - SHARE_TARGET) <= SHARE_TOLERANCE


def shares_table(res: dict, cfg: Config, command: str) -> tuple[list[str], list[bool]]:
    verdicts = []
    lines = [
        (
            f"## 1. Weighted shares: weights {WEIGHTS[0]}:{WEIGHTS[1]} on a {cfg.threads}-thread "
            f"budget, both pools saturated, {cfg.window_s:g} s window"
        ),
        "",
        f"Command: `{command}`",
        "",
        (
            f"| case | w{WEIGHTS[0]} job ms | w{WEIGHTS[1]} job ms | w3 share, budget.stats() "
            "| vs 0.75 | w3 share, Σ pool run time | vs 0.75 | within ±0.10 "
            "| jobs/s w1 / w3 | budget utilization |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, s in res["summary"].items():
        oks = [_share_ok(s["budget_share"]), _share_ok(s["stats_share"])]
        verdicts += [ok for ok in oks if ok is not None]
        both = None if None in oks else all(oks)
        lines.append(
            f"| {name} | {_f(s['light_run_ms'])} | {_f(s['heavy_run_ms'])} "
            f"| {_f(s['budget_share'], 3)} | {_x(s['budget_share'] / SHARE_TARGET)} "
            f"| {_f(s['stats_share'], 3)} | {_x(s['stats_share'] / SHARE_TARGET)} "
            f"| {_ok(both)} | {_f(s['light_jobs_per_s'], 0)} / {_f(s['heavy_jobs_per_s'], 0)} "
            f"| {_f(s['budget_utilization'], 3)} |"
        )
    source = next(iter(res["samples"].values()))[0]["run_time_source"]
    drained = [
        name
        for name, runs in res["samples"].items()
        if any(min(r["light_queued_at_end"], r["heavy_queued_at_end"]) < 1 for r in runs)
    ]
    if drained:
        lines += ["", f"WARNING: a queue was empty at a window's end (not saturated): {drained}"]
    lines += [
        "",
        (
            f"Target (api.md 9.1): the weight-3 pool's share of the busy time {SHARE_TARGET:.2f} "
            f"± {SHARE_TOLERANCE:.2f}. 'Σ pool run time' = jobs completed in the window x the "
            f"pool's `{source}` (pool.stats()); job ms = that run time. 'vs 0.75' = share / 0.75. "
            "budget.stats() reads the budget's recent window (warm-up included where it is "
            "longer than the window)."
        ),
        "",
    ]
    return lines, verdicts


def quiet_table(res: dict, cfg: Config, command: str) -> tuple[list[str], list[bool]]:
    verdicts = []
    lines = [
        (
            f"## 2. Quiet pool latency: one job at a time, {cfg.think_s * 1e3:g} ms think time, "
            f"next to a saturated pool ({cfg.threads}-thread budget, both weight 1, "
            f"{cfg.window_s:g} s window)"
        ),
        "",
        f"Command: `{command}`",
        "",
        (
            "| setup | saturated job run p99 ms | quiet jobs | quiet wait p50 ms "
            "| quiet wait p99 ms (submit→start) | vs longest saturated job "
            "| quiet wait p99 ms (pool.stats) | vs longest saturated job | within 1.2x |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in res["summary"].items():
        ok = None
        if name.startswith("budget, next to"):
            ratios = [v for v in (s["ratio"], s["stats_ratio"]) if not math.isnan(v)]
            ok = all(v <= QUIET_TARGET for v in ratios) if ratios else None
            if ok is not None:
                verdicts.append(ok)
        lines.append(
            f"| {name} | {_f(s['longest_run_ms'])} | {_f(s['quiet_jobs'], 0)} "
            f"| {_f(s['wait_p50_ms'], 3)} | {_f(s['wait_p99_ms'], 3)} | {_x(s['ratio'])} "
            f"| {_f(s['stats_wait_p99_ms'], 3)} | {_x(s['stats_ratio'])} | {_ok(ok)} |"
        )
    lines += [
        "",
        (
            f"Target (api.md 9.2): the quiet pool's wait p99 <= {QUIET_TARGET}x the longest "
            "job of the saturated pool (its run p99): it waits for at most one running job. "
            "Submit→start is measured by the quiet job itself (a Python callable around the "
            "same kernel: it includes winning the GIL on the worker); pool.stats() is the quiet "
            "pool's own wait_p99 (n/a in a shared pool, whose stats mix both clients' jobs)."
        ),
        "",
    ]
    return lines, verdicts


def overhead_table(res: dict, cfg: Config, command: str) -> tuple[list[str], list[bool]]:
    rt, tp = res["summary"]["round_trip"], res["summary"]["throughput"]
    ref = PRIVATE.format(t=cfg.threads)
    ref_rt, ref_tp = rt[ref]["median_us"], tp[ref]["jobs_per_s"]
    lines = [
        f"## 3. The cost of a budget on one pool alone: tiny jobs (dot of {TINY_N} float64)",
        "",
        f"Command: `{command}`",
        "",
        (
            "| contender | round trip median µs | p99 µs | vs private pool | CPU µs/job "
            f"| {IN_FLIGHT} in flight jobs/s | vs private pool | CPU µs/job |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in rt:
        lines.append(
            f"| {name} | {_f(rt[name]['median_us'], 1)} | {_f(rt[name]['p99_us'], 1)} "
            f"| {_x(rt[name]['median_us'] / ref_rt)} | {_f(rt[name]['cpu_us_per_job'], 1)} "
            f"| {_f(tp[name]['jobs_per_s'], 0)} | {_x(tp[name]['jobs_per_s'] / ref_tp)} "
            f"| {_f(tp[name]['cpu_us_per_job'], 1)} |"
        )
    on_budget = ON_BUDGET.format(t=cfg.threads)
    rt_ratio = rt[on_budget]["median_us"] / ref_rt
    tp_ratio = tp[on_budget]["jobs_per_s"] / ref_tp
    verdicts = [rt_ratio <= 1 + OVERHEAD_TARGET, tp_ratio >= 1 - OVERHEAD_TARGET]
    lines += [
        "",
        (
            f"Target: the budget pool within {OVERHEAD_TARGET:.0%} of the private pool: round "
            f"trip {_x(rt_ratio, 3)} (<= {1 + OVERHEAD_TARGET:.2f}x: {_ok(verdicts[0])}), "
            f"{IN_FLIGHT} in flight {_x(tp_ratio, 3)} (>= {1 - OVERHEAD_TARGET:.2f}x: "
            f"{_ok(verdicts[1])}). 'vs private pool' = contender / private pool (round trip: "
            "> 1 is slower; jobs/s: < 1 is slower). CPU is the whole process's (workers "
            "included) per job. The private pool and the budget are open side by side (idle "
            "workers park), so Raptors may warn of oversubscription; the warning is silenced."
        ),
        "",
    ]
    return lines, verdicts


# --- machine line, command, main ------------------------------------------------------------


def blas_info() -> dict:
    if threadpool_info is None:
        return {"internal_api": "unknown (threadpoolctl not installed)"}
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return {
                k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")
            }
    return {"internal_api": "none found"}


def machine_line(blas: dict) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    names = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "RAPTORS_THREADS")
    env = {k: os.environ[k] for k in names if k in os.environ}
    blas_text = str(blas.get("internal_api"))
    if "version" in blas:
        blas_text += (
            f" {blas.get('version')} kernel {blas.get('architecture')}, "
            f"{blas.get('num_threads')} threads"
        )
    return (
        f"CPU: {cpu_model()}, {cores} cores; Python {platform.python_version()}; "
        f"NumPy {np.__version__}; Raptors {getattr(rp, '__version__', '?')}; "
        f"BLAS: {blas_text}; env: {env or 'no OPENBLAS_*/RAPTORS_* overrides'}"
    )


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s windows, fewer tiny jobs")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per case (3)")
    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--threads", type=int, default=2, help="budget / pool threads (2)")
    parser.add_argument("--queue", type=int, default=64, help="queue bound of each pool (64)")
    parser.add_argument("--kernel", choices=KERNELS, default="sum", help="job kernel (sum)")
    parser.add_argument("--job-ms", type=float, default=1.0, help="job time, direct call (1)")
    parser.add_argument("--long-factor", type=int, default=10, help="long jobs: x job (10)")
    parser.add_argument("--think-ms", type=float, default=4.0, help="quiet client think (4)")
    parser.add_argument("--window", type=float, default=None, help="seconds (3; quick: 2)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (0.5; quick: 0.25)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    window = args.window if args.window is not None else (2.0 if args.quick else 3.0)
    warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 0.5)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if window < 2.0:
        parser.error("--window must be at least 2 s (api.md 9.1 measures over 2 s)")
    if warmup < 0 or args.threads < 1 or args.queue < 2 or args.long_factor < 1:
        parser.error("--warmup >= 0, --threads >= 1, --queue >= 2, --long-factor >= 1")
    if args.job_ms <= 0 or args.think_ms < 0:
        parser.error("--job-ms must be > 0 and --think-ms >= 0")
    if args.queue <= args.threads:
        parser.error("--queue must exceed --threads, or a saturated pool's queue can drain")
    if not hasattr(rp, "Budget"):
        print(
            "this build of raptors has no rp.Budget (api.md section 9): rebuild once it lands",
            file=sys.stderr,
        )
        return 2
    oversubscription = getattr(rp, "OversubscriptionWarning", None)
    if oversubscription is not None:
        warnings.simplefilter("ignore", oversubscription)

    sections = tuple(s for s in SECTIONS if s in (args.section or SECTIONS))
    kernel = getattr(rp, args.kernel)
    n, direct_s = calibrate(kernel, args.kernel, args.job_ms / 1e3)
    base = make_args(args.kernel, n)
    check_answers(kernel, args.kernel, base)
    long = make_args(args.kernel, n * args.long_factor) if set(sections) - {"overhead"} else base
    cfg = Config(
        threads=args.threads,
        queue=args.queue,
        kernel_name=args.kernel,
        kernel=kernel,
        job_s=args.job_ms / 1e3,
        long_factor=args.long_factor,
        think_s=args.think_ms / 1e3,
        warmup_s=warmup,
        window_s=window,
        round_trip_jobs=400 if args.quick else 2000,
        rounds=20 if args.quick else 100,
        repeats=args.repeats,
    )
    blas = blas_info()
    meta = {
        "machine": machine_line(blas),
        "command": command_line(),
        "blas": blas,
        "quick": args.quick,
        "repeats": args.repeats,
        "sections": sections,
        "kernel": args.kernel,
        "elements": n,
        "bytes": int(sum(a.nbytes for a in base if hasattr(a, "nbytes"))),
        "direct_call_ms": direct_s * 1e3,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kernel"
        },
    }
    results: dict[str, Any] = {}
    try:
        if "shares" in sections:
            results["shares"] = shares_section(cfg, base, long)
        if "quiet" in sections:
            results["quiet"] = quiet_section(cfg, base, long)
        if "overhead" in sections:
            results["overhead"] = overhead_section(cfg)
    finally:
        for opened in list(Opened.live):
            opened.close()

    mib = meta["bytes"] / 2**20
    out = [
        "# Raptors shared CPU budgets (api.md section 9)",
        "",
        meta["machine"],
        "",
        f"Command: `{meta['command']}`",
        "",
        (
            f"Medians of {args.repeats} repeats. Jobs: `rp.{args.kernel}` of float64 arrays of "
            f"{n:,} elements ({mib:.1f} MiB), {direct_s * 1e3:.2f} ms per direct call (target "
            f"{args.job_ms:g} ms); long jobs {args.long_factor}x the elements."
        ),
        "",
    ]
    verdicts: list[bool] = []
    for key, table in (("shares", shares_table), ("quiet", quiet_table)):
        if key in results:
            lines, ok = table(results[key], cfg, meta["command"])
            out += lines
            verdicts += ok
    if "overhead" in results:
        lines, ok = overhead_table(results["overhead"], cfg, meta["command"])
        out += lines
        verdicts += ok
    missed = verdicts.count(False)
    out.append(f"Targets met: {len(verdicts) - missed} of {len(verdicts)}.")
    print("\n".join(out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    print(f"\nwrote {args.out}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
