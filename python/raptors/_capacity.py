"""Capacity planning: predicted wait percentiles for 1 .. n threads from a
pool's recent load, and the fewest threads that meet a wait target.

The model is a queue of ``c`` servers (the pool's threads) fed by Poisson
arrivals at the pool's recent ``arrival_rate``, with run times drawn from
its recent run-time distribution, served in arrival order: M/G/c. Its wait
percentiles are computed by a discrete-event simulation (Lindley's
recursion over ``c`` servers) rather than by a closed formula, because the
closed approximations (Allen-Cunneen, Kingman) give the *mean* wait from the
run times' first two moments and extrapolate the tail as exponential: on
bimodal run times (most jobs short, a few long) their p99 is off by more than
the 35 % this planner promises, while the simulation follows whatever shape
the recorded run times have. ``stress/bench_capacity.py`` measures both
against real pools; docs/capacity-planning.md has the figures.

Run times come from ``run_quantiles`` (the pool's recent run times at each
percentile 0, 1, .., 100, sampled by inverse transform between them; 21
quantiles were too coarse: the top 5 % interpolated up to the maximum
doubled the predicted p99 of exponential run times), or, where only
``run_mean``, ``run_p50`` and ``run_p99`` are known (an older ``/stats``), from
a two-point mixture with that median, p99 and mean. Every thread count is
simulated on the same arrivals and run times (common random numbers), so the
predicted wait never grows with more threads by noise alone. The result is
deterministic for given inputs (fixed seed).

``threads_needed`` is, as the contract defines it, the fewest threads whose
predicted wait p99 (the point estimate) meets the target. A p99 predicted
from measured inputs is itself uncertain, and a count whose estimate lands
just under the target meets it only about half the time, so the report also
gives ``threads_needed_high``: the fewest whose upper confidence bound
meets it (never fewer than ``threads_needed``), the count to provision when
the target must hold. The bound (``wait_p99_high`` in each row) takes two
sources of error, each at one-sided 95 %:

- the inputs: the offered load (arrival rate x run mean) is measured from
  ``rate x 10 s`` arrivals (Poisson counting error ``1/sqrt(n)``) and the last
  ``1024`` run times (error ``cv/sqrt(1024)``); the bound is simulated at
  ``arrival_rate x (1 + 1.645 x that relative error)``, on the same draws;
- the simulation: its measured jobs (``_JOBS`` after ``_WARMUP``) are cut
  into ``_BATCHES`` consecutive batches (batch means: the batches are long
  next to the queue's correlation time); the p99 at the higher rate gets a
  Student-t margin ``t(0.95, B-1) x sd(batch p99s) / sqrt(B)``.

The margin is typically +5-20 % of the p99 at 30-60 % utilization (more near
saturation). It does not cover delays the model has no term for (a worker's
wake-up, CPU taken by other processes) nor a load that changes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Simulated jobs per thread count after the warm-up: the pooled p99 rests on
# ~1,000 tail samples, each batch's on ~50.
_JOBS = 100_000
# The first jobs see an empty pool; they are left out of the percentiles.
_WARMUP = 4_000
# Batches the measured jobs are cut into for the p99's confidence bound.
_BATCHES = 20
# One-sided 95 % Student t quantile with _BATCHES - 1 degrees of freedom.
_T95 = 1.729
# One-sided 95 % normal quantile, for the measured load's upper bound.
_Z95 = 1.645
# The pool's arrival rate is counted over its last 10 s, its run times are
# its last 1024 (runtime/src/stats.rs).
_RATE_WINDOW = 10.0
_RUN_SAMPLES = 1024
# Rows printed past threads_needed (or past the current threads).
_ROWS_PAST = 2
# A pool this close to saturation has no steady state worth predicting.
_SATURATED = 0.995

_REQUIRED = ("name", "threads", "arrival_rate", "run_mean", "run_p99", "utilization")


@dataclass(frozen=True)
class CapacityReport:
    """What ``rp.capacity`` predicts for one pool. Times are in seconds."""

    pool: str
    threads: int
    arrival_rate: float
    run_mean: float
    run_p99: float
    utilization: float
    predicted_wait_p99: float
    threads_needed: int | None
    target_wait_p99: float
    rows: list[dict[str, float]] = field(default_factory=list)
    #: The fewest threads whose wait p99 upper 95 % bound meets the target
    #: (``None`` if none up to ``max_threads``): ``threads_needed`` with the
    #: prediction's own uncertainty covered.
    threads_needed_high: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "threads": self.threads,
            "arrival_rate": self.arrival_rate,
            "run_mean": self.run_mean,
            "run_p99": self.run_p99,
            "utilization": self.utilization,
            "predicted_wait_p99": self.predicted_wait_p99,
            "threads_needed": self.threads_needed,
            "threads_needed_high": self.threads_needed_high,
            "target_wait_p99": self.target_wait_p99,
            "rows": [dict(r) for r in self.rows],
        }

    def __str__(self) -> str:
        needed = "none up to the limit" if self.threads_needed is None else self.threads_needed
        high = (
            "none up to the limit" if self.threads_needed_high is None else self.threads_needed_high
        )
        load = (
            f"pool {self.pool!r}: {self.threads} threads, {self.arrival_rate:.1f} jobs/s, "
            f"run mean {_ms(self.run_mean)} p99 {_ms(self.run_p99)}, "
            f"utilization {self.utilization:.0%}"
        )
        verdict = (
            f"wait p99 now (predicted) {_ms(self.predicted_wait_p99)}; target "
            f"{_ms(self.target_wait_p99)}: threads needed {needed} "
            f"(the fewest whose predicted p99 meets it; {high} with the p99's 95 % bound)"
        )
        header = (
            f"{'threads':>8} {'utilization':>12} {'wait p50':>10} {'wait p99':>10} "
            f"{'p99 95% bound':>14}"
        )
        lines = [load, verdict, header]
        for r in self.rows:
            mark = "  <- now" if r["threads"] == self.threads else ""
            mark += "  <- needed" if r["threads"] == self.threads_needed else ""
            mark += "  <- needed at the bound" if r["threads"] == self.threads_needed_high else ""
            lines.append(
                f"{int(r['threads']):>8} {r['utilization']:>12.0%} "
                f"{_ms(r['wait_p50']):>10} {_ms(r['wait_p99']):>10} "
                f"{_ms(r['wait_p99_high']):>14}{mark}"
            )
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return "saturated" if math.isinf(seconds) else f"{seconds * 1e3:.2f} ms"


def _stats_dict(source: Any) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    stats = source.stats() if callable(getattr(source, "stats", None)) else source
    to_dict = getattr(stats, "to_dict", None)
    if not callable(to_dict):
        raise TypeError(
            "capacity() takes a Pool, a PoolStats or a dict shaped like PoolStats.to_dict(), "
            f"not {type(source).__name__}"
        )
    d = to_dict()
    assert isinstance(d, Mapping)
    return d


def run_time_sampler(stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The run-time distribution the model draws from, as an inverse CDF:
    (probabilities, run times), increasing, for ``np.interp``."""
    quantiles = stats.get("run_quantiles")
    if quantiles:
        q = np.maximum.accumulate(np.asarray(quantiles, dtype=np.float64))
        return np.linspace(0.0, 1.0, len(q)), q
    # A two-point mixture: a fraction p of the jobs take `long`, the rest
    # `short` (the median), matching the mean and, where the mean allows,
    # the p99. Fixed run times (p50 == p99 == mean) stay fixed.
    mean = float(stats["run_mean"])
    short = float(stats.get("run_p50") or mean)
    long = max(float(stats["run_p99"]), short)
    if long <= short or mean <= short:
        return np.array([0.0, 1.0]), np.array([mean, mean])
    p = min((mean - short) / (long - short), 0.5)
    return np.array([0.0, 1.0 - p, 1.0 - p, 1.0]), np.array([short, short, long, long])


def simulate_waits(
    arrival_rate: float,
    inverse_cdf: tuple[np.ndarray, np.ndarray],
    thread_counts: Sequence[int],
    *,
    bound_rate: float | None = None,
    jobs: int = _JOBS,
    warmup: int = _WARMUP,
    batches: int = _BATCHES,
    seed: int = 0,
) -> dict[int, tuple[float, float, float]]:
    """Wait p50, p99 and an upper 95 % confidence bound on the p99 of an
    M/G/c queue for each ``c`` in ``thread_counts``, by simulation on one set
    of arrivals and run times (``warmup`` jobs, then ``jobs`` measured).

    The bound is the p99 plus the batch-means margin, from a second pass on
    the same draws with arrivals at ``bound_rate`` (default: ``arrival_rate``)."""
    if batches < 2 or jobs < batches:
        raise ValueError("simulate_waits needs at least 2 batches of at least 1 job")
    total = warmup + jobs
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, total))
    probabilities, times = inverse_cdf
    runs = np.interp(rng.random(total), probabilities, times).tolist()
    high_rate = arrival_rate if bound_rate is None else max(bound_rate, arrival_rate)
    # The same gaps, shortened: arrivals at the higher rate on the same draws.
    passes = [arrivals.tolist()]
    if high_rate > arrival_rate:
        passes.append((arrivals * (arrival_rate / high_rate)).tolist())
    t = _T95 if batches == _BATCHES else _t95(batches - 1)
    out: dict[int, tuple[float, float, float]] = {}
    for c in thread_counts:
        results = [_waits(at, runs, c, warmup) for at in passes]
        p50, p99 = np.quantile(results[0], [0.5, 0.99])
        high_waits = results[-1]
        per_batch = np.quantile(np.array_split(high_waits, batches), 0.99, axis=1)
        margin = t * float(np.std(per_batch, ddof=1)) / math.sqrt(batches)
        high = max(float(np.quantile(high_waits, 0.99)), float(p99)) + margin
        out[c] = (float(p50), float(p99), high)
    return out


def _waits(arrivals: list[float], runs: list[float], c: int, warmup: int) -> np.ndarray:
    """Each job's wait in arrival order on ``c`` threads (Lindley's recursion)."""
    free = [0.0] * c  # when each thread next frees, a min-heap
    waits: list[float] = []
    append = waits.append
    for arrival, run in zip(arrivals, runs, strict=True):
        earliest = free[0]
        if earliest > arrival:
            append(earliest - arrival)
            heapq.heapreplace(free, earliest + run)
        else:
            append(0.0)
            heapq.heapreplace(free, arrival + run)
    return np.asarray(waits[warmup:])


def _t95(df: int) -> float:
    """One-sided 95 % Student t quantile (Cornish-Fisher, within 1 % for df >= 3)."""
    z = 1.6448536269514722
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    return z + g1 / df + g2 / df**2


def load_error(stats: Mapping[str, Any], inverse_cdf: tuple[np.ndarray, np.ndarray]) -> float:
    """Relative standard error of the measured offered load (arrival rate x
    run mean): Poisson counting error of the arrivals in the rate window,
    and the run times' coefficient of variation over the recorded sample."""
    rate = float(stats.get("arrival_rate") or 0.0)
    if rate <= 0.0:
        return 0.0
    arrivals = max(rate * _RATE_WINDOW, 1.0)
    completed = stats.get("completed")
    samples = _RUN_SAMPLES if completed is None else min(max(int(completed), 1), _RUN_SAMPLES)
    probabilities, times = inverse_cdf
    grid = np.interp(np.linspace(0.0, 1.0, 2049)[1:-1], probabilities, times)
    mean = float(grid.mean())
    cv2 = float(grid.var() / mean**2) if mean > 0.0 else 0.0
    return math.sqrt(1.0 / arrivals + cv2 / samples)


def capacity(source: Any, *, target_wait_p99: float, max_threads: int = 64) -> CapacityReport:
    """Predicted wait percentiles for 1 .. a few threads past the fewest that
    meet ``target_wait_p99`` (seconds) at the pool's recent load.

    ``source``: a ``Pool``, a ``PoolStats`` or a dict shaped like
    ``PoolStats.to_dict()`` (what ``GET /stats`` serves per pool).
    """
    if not target_wait_p99 >= 0.0:
        raise ValueError(f"target_wait_p99 must be >= 0 seconds, got {target_wait_p99!r}")
    if max_threads < 1:
        raise ValueError(f"max_threads must be >= 1, got {max_threads!r}")
    stats = _stats_dict(source)
    missing = [k for k in _REQUIRED if k not in stats]
    if missing:
        raise ValueError(f"capacity(): the stats lack {', '.join(missing)}")
    threads = int(stats["threads"])
    rate = float(stats["arrival_rate"])
    run_mean = float(stats["run_mean"])
    inverse_cdf = run_time_sampler(stats)
    load = rate * run_mean  # threads kept busy on average (offered load)
    bound_rate = rate * (1.0 + _Z95 * load_error(stats, inverse_cdf))

    predictions: dict[int, tuple[float, float, float]] = {}
    threads_needed: int | None = None
    threads_needed_high: int | None = None
    if rate > 0.0 and run_mean > 0.0:
        # Fewer threads than the offered load saturate: their wait grows without bound.
        first = max(1, math.floor(load / _SATURATED) + 1)
        candidates = list(range(first, max_threads + 1))
        # Simulate in rising groups until the bound meets the target and a few counts past it.
        for i in range(0, len(candidates), 4):
            batch = candidates[i : i + 4]
            predictions.update(simulate_waits(rate, inverse_cdf, batch, bound_rate=bound_rate))
            if threads_needed is None:
                threads_needed = next(
                    (c for c in batch if predictions[c][1] <= target_wait_p99), None
                )
            if threads_needed_high is None:
                threads_needed_high = next(
                    (c for c in batch if predictions[c][2] <= target_wait_p99), None
                )
            if threads_needed_high is not None and batch[-1] >= threads_needed_high + _ROWS_PAST:
                break
        if first <= threads <= max_threads and threads not in predictions:
            predictions.update(simulate_waits(rate, inverse_cdf, [threads], bound_rate=bound_rate))
    else:
        # No load measured: one thread waits for nothing.
        threads_needed = threads_needed_high = 1
        predictions = {c: (0.0, 0.0, 0.0) for c in range(1, max(threads, 1) + _ROWS_PAST + 1)}

    last = threads_needed_high if threads_needed_high is not None else threads_needed
    shown = max(predictions, default=1) if last is None else last + _ROWS_PAST
    rows: list[dict[str, float]] = []
    for c in range(1, min(max(threads, shown), max_threads) + 1):
        p50, p99, high = predictions.get(c, (math.inf, math.inf, math.inf))
        rows.append(
            {
                "threads": c,
                "utilization": min(load / c, 1.0),
                "wait_p50": p50,
                "wait_p99": p99,
                "wait_p99_high": high,
            }
        )
    now = predictions.get(threads, (math.inf,) * 3)[1] if threads >= 1 else math.inf
    return CapacityReport(
        pool=str(stats["name"]),
        threads=threads,
        arrival_rate=rate,
        run_mean=run_mean,
        run_p99=float(stats["run_p99"]),
        utilization=float(stats["utilization"]),
        predicted_wait_p99=now,
        threads_needed=threads_needed,
        target_wait_p99=float(target_wait_p99),
        rows=rows,
        threads_needed_high=threads_needed_high,
    )
