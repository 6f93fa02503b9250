"""Prometheus metrics of a ``Raptors`` app, in one process or several.

One table (``SERIES``) names every series: its Prometheus name and type,
how prometheus_client's multiprocess mode combines the workers' values, and
its OpenTelemetry-style name and unit. ``snapshot`` reads the stats of every
pool, budget and batcher of an app once; two writers turn a snapshot into
samples:

* ``RaptorsCollector`` (one process): a custom collector that takes a
  snapshot at scrape time.
* ``MultiProcessWriter`` (``PROMETHEUS_MULTIPROC_DIR`` set, e.g. ``uvicorn
  --workers N`` or gunicorn): prometheus_client's multiprocess mode does not
  support custom collectors, so each worker process copies its snapshot into
  prometheus_client ``Gauge``/``Counter`` objects (memory-mapped files, one
  set per process) every ``interval`` seconds, and ``/metrics`` answers with
  a ``MultiProcessCollector`` that merges the files of every worker.

Re-exported by ``raptors.fastapi``; import it from there.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import raptors as rp

if TYPE_CHECKING:
    from raptors.fastapi import Raptors

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Scope = Literal["pool", "quantile", "share", "budget", "batcher"]


@dataclasses.dataclass(frozen=True)
class Series:
    """One metric family.

    ``name`` is the Prometheus name (a counter's samples add ``_total``);
    ``field`` the value's key in the snapshot; ``mode`` the gauge's
    ``multiprocess_mode`` (how the workers' values combine; counters are
    always summed); ``otel`` and ``unit`` the OpenTelemetry-style
    instrument name and UCUM unit.
    """

    name: str
    kind: Literal["gauge", "counter"]
    scope: Scope
    field: str
    mode: str
    otel: str
    unit: str
    doc: str


def _g(scope: Scope, name: str, field: str, mode: str, otel: str, unit: str, doc: str) -> Series:
    return Series(name, "gauge", scope, field, mode, otel, unit, doc)


def _c(scope: Scope, name: str, field: str, otel: str, unit: str, doc: str) -> Series:
    return Series(name, "counter", scope, field, "", otel, unit, doc)


# How the multiprocess modes are chosen (docs/fastapi.md, "Several worker
# processes"): amounts that add up across workers (jobs waiting, threads,
# queue bounds, rates) are ``livesum``; quantiles, means and highs are
# ``livemax``, the worst worker (the max of the workers' p99s bounds the p99
# of all their jobs together from above); ratios (utilization, share) have
# neither a sum nor a safe max, so each worker's value is kept with a ``pid``
# label (``liveall``) for PromQL to average. ``live``: a worker that exited
# leaves the gauges; counters keep its counts, so totals never go back.
# fmt: off
SERIES: tuple[Series, ...] = (
    _g("pool", "raptors_pool_queued", "queued", "livesum",
       "raptors.pool.queue.size", "{job}", "Jobs waiting in the queue now."),
    _g("pool", "raptors_pool_running", "running", "livesum",
       "raptors.pool.job.active", "{job}", "Jobs running now."),
    _g("pool", "raptors_pool_threads", "threads", "livesum",
       "raptors.pool.thread.limit", "{thread}",
       "Worker threads (for a pool on a budget: its cap on the budget's threads)."),
    _g("pool", "raptors_pool_queue_capacity", "queue_capacity", "livesum",
       "raptors.pool.queue.capacity", "{job}", "Queue bound (waiting jobs)."),
    _g("pool", "raptors_pool_max_queued", "max_queued", "livemax",
       "raptors.pool.queue.max_size", "{job}", "Highest queue depth seen."),
    _g("pool", "raptors_pool_utilization", "utilization", "liveall",
       "raptors.pool.utilization", "1",
       "Busy worker time / (threads x elapsed), recent window."),
    _g("pool", "raptors_pool_arrival_rate", "arrival_rate", "livesum",
       "raptors.pool.job.arrival_rate", "{job}/s",
       "Submits per second, accepted or rejected, recent window."),
    _g("pool", "raptors_pool_completion_rate", "completion_rate", "livesum",
       "raptors.pool.job.completion_rate", "{job}/s", "Jobs ended per second, recent window."),
    _g("pool", "raptors_pool_run_mean_seconds", "run_mean", "livemax",
       "raptors.pool.job.run.mean", "s", "Mean seconds from start to end, recent jobs."),
    _g("pool", "raptors_pool_predicted_wait_seconds", "predicted_wait", "livemax",
       "raptors.pool.job.predicted_wait", "s",
       "Predicted p99 seconds before a job of priority 0 submitted now starts "
       "(the prediction of admission='predictive'; 0 while a thread is free)."),
    _g("quantile", "raptors_job_wait_seconds", "wait", "livemax",
       "raptors.pool.job.wait.duration", "s",
       "Seconds from submit to start, recent jobs, by quantile."),
    _g("quantile", "raptors_job_run_seconds", "run", "livemax",
       "raptors.pool.job.run.duration", "s",
       "Seconds from start to end, recent jobs, by quantile."),
    _c("pool", "raptors_jobs_submitted", "submitted",
       "raptors.pool.job.submitted", "{job}", "Jobs accepted."),
    _c("pool", "raptors_jobs_completed", "completed",
       "raptors.pool.job.completed", "{job}", "Jobs that finished successfully."),
    _c("pool", "raptors_jobs_failed", "failed",
       "raptors.pool.job.failed", "{job}", "Jobs that raised."),
    _c("pool", "raptors_jobs_cancelled", "cancelled",
       "raptors.pool.job.cancelled", "{job}", "Jobs cancelled."),
    _c("pool", "raptors_jobs_expired", "expired",
       "raptors.pool.job.expired", "{job}", "Jobs whose start deadline passed."),
    _c("pool", "raptors_jobs_rejected", "rejected",
       "raptors.pool.job.rejected", "{job}",
       "Submits refused with QueueFull (WouldMissDeadline included)."),
    _g("share", "raptors_pool_share", "share", "liveall",
       "raptors.pool.budget.share", "1",
       "The pool's fraction of its budget's busy time, recent window."),
    _g("budget", "raptors_budget_threads", "threads", "livesum",
       "raptors.budget.thread.limit", "{thread}",
       "Native worker threads of the budget, shared by its pools."),
    _g("budget", "raptors_budget_running", "running", "livesum",
       "raptors.budget.job.active", "{job}", "Jobs running on the budget's threads now."),
    _g("budget", "raptors_budget_utilization", "utilization", "liveall",
       "raptors.budget.utilization", "1",
       "Busy budget thread time / (threads x elapsed), recent window."),
    _g("batcher", "raptors_batcher_pending", "pending", "livesum",
       "raptors.batcher.item.pending", "{item}", "Items waiting for a batch now."),
    _g("batcher", "raptors_batcher_inflight", "inflight", "livesum",
       "raptors.batcher.batch.active", "{batch}", "Batch jobs submitted and not finished."),
    _c("batcher", "raptors_batcher_batches", "batches",
       "raptors.batcher.batch.submitted", "{batch}", "Batch jobs submitted."),
    _c("batcher", "raptors_batcher_items", "items",
       "raptors.batcher.item.submitted", "{item}", "Items submitted in batches."),
    _c("batcher", "raptors_batcher_rejected", "rejected",
       "raptors.batcher.item.rejected", "{item}",
       "Items refused with QueueFull while waiting items were at the bound."),
    _c("batcher", "raptors_batcher_expired", "expired",
       "raptors.batcher.item.expired", "{item}",
       "Items whose start deadline passed while waiting for a batch."),
)
# fmt: on

# Labels of each scope: every pool series names its pool, its tenant ("" for
# a pool that is not a tenant's) and its budget ("" for a pool with threads
# of its own).
POOL_LABELS = ("pool", "tenant", "budget")
LABELS: dict[Scope, tuple[str, ...]] = {
    "pool": POOL_LABELS,
    "quantile": (*POOL_LABELS, "quantile"),
    "share": POOL_LABELS,
    "budget": ("budget",),
    "batcher": ("batcher",),
}
QUANTILES = (("0.5", "p50"), ("0.99", "p99"))

Labels = tuple[str, ...]


@dataclasses.dataclass
class PoolRow:
    source: rp.Pool
    labels: Labels
    values: dict[str, float]  # by Series.field (pool and share scopes)
    quantiles: dict[str, dict[str, float]]  # field -> {quantile: value}
    on_budget: bool


@dataclasses.dataclass
class Snapshot:
    pools: list[PoolRow]
    budgets: list[tuple[Labels, dict[str, float]]]
    batchers: list[tuple[Labels, dict[str, float]]]


def pool_row(pool: rp.Pool, tenant: str, shares: dict[str, dict[str, float]]) -> PoolRow:
    """The samples of one pool; ``shares``: budget name -> {pool name: share}."""
    st = pool.stats()
    budget = pool.budget
    budget_name = budget.name if budget is not None else ""
    values = {s.field: float(getattr(st, s.field)) for s in SERIES if s.scope == "pool"}
    on_budget = budget_name in shares
    if on_budget:
        values["share"] = float(shares[budget_name].get(pool.name, 0.0))
    quantiles = {
        kind: {q: float(getattr(st, f"{kind}_{suffix}")) for q, suffix in QUANTILES}
        for kind in ("wait", "run")
    }
    return PoolRow(pool, (pool.name, tenant, budget_name), values, quantiles, on_budget)


def snapshot(owner: Raptors) -> Snapshot:
    """Stats of every pool, budget and batcher of ``owner``, read once."""
    budgets = {name: b.stats() for name, b in sorted(owner.budgets().items())}
    shares = {name: dict(st.shares) for name, st in budgets.items()}
    tenant_of_pool: dict[str, str] = {}
    if owner.tenants is not None:
        tenant_of_pool = {p.name: t for t, p in owner.tenants.pools().items()}
    pools = [
        pool_row(pool, tenant_of_pool.get(name, ""), shares)
        for name, pool in sorted(owner.all_pools().items())
    ]
    budget_rows: list[tuple[Labels, dict[str, float]]] = [
        ((name,), {s.field: float(getattr(st, s.field)) for s in SERIES if s.scope == "budget"})
        for name, st in budgets.items()
    ]
    batcher_rows: list[tuple[Labels, dict[str, float]]] = []
    for name, batcher in sorted(owner.batchers.items()):
        stats = batcher.stats()
        batcher_rows.append(
            ((name,), {s.field: float(stats[s.field]) for s in SERIES if s.scope == "batcher"})
        )
    return Snapshot(pools, budget_rows, batcher_rows)


def _rows(snap: Snapshot, scope: Scope) -> Iterator[tuple[Labels, dict[str, float]]]:
    if scope == "pool":
        for row in snap.pools:
            yield row.labels, row.values
    elif scope == "share":
        for row in snap.pools:
            if row.on_budget:
                yield row.labels, row.values
    elif scope == "budget":
        yield from snap.budgets
    elif scope == "batcher":
        yield from snap.batchers


class RaptorsCollector:
    """Reads ``pool.stats()`` of every pool of a ``Raptors`` app, and
    ``budget.stats()`` of the budgets they run on, at scrape time (one
    process; see ``MultiProcessWriter`` for several)."""

    def __init__(self, owner: Raptors) -> None:
        self.owner = owner

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        snap = snapshot(self.owner)
        for s in SERIES:
            kind = GaugeMetricFamily if s.kind == "gauge" else CounterMetricFamily
            family = kind(s.name, s.doc, labels=list(LABELS[s.scope]))
            if s.scope == "quantile":
                for row in snap.pools:
                    for q, value in row.quantiles[s.field].items():
                        family.add_metric([*row.labels, q], value)
            else:
                for labels, values in _rows(snap, s.scope):
                    family.add_metric(list(labels), values[s.field])
            # Families with no sample (no budget, no batcher) are left out.
            if family.samples:
                yield family


# -- several worker processes ------------------------------------------------


def multiprocess_dir() -> str | None:
    """The prometheus_client multiprocess directory, when one is set."""
    return os.environ.get(MULTIPROC_ENV) or None


def _check_multiprocess_values() -> None:
    """prometheus_client chooses between in-memory and file-backed values once,
    when it is imported: with the variable set too late, every worker would
    silently report its own values only."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV} is set, but prometheus_client was imported before it was: "
            "set it in the environment the server starts with"
        )


_METRICS_LOCK = threading.Lock()


@dataclasses.dataclass
class _ProcessMetrics:
    gauges: dict[str, Gauge]
    counters: dict[str, Counter]


_METRICS: _ProcessMetrics | None = None


def _process_metrics() -> _ProcessMetrics:
    """This process's file-backed metric objects, by Prometheus name; created
    once, in no registry (``MultiProcessCollector`` reads their files)."""
    global _METRICS
    with _METRICS_LOCK:
        if _METRICS is None:
            gauges: dict[str, Gauge] = {}
            counters: dict[str, Counter] = {}
            for s in SERIES:
                labels = LABELS[s.scope]
                if s.kind == "gauge":
                    gauges[s.name] = Gauge(
                        s.name,
                        s.doc,
                        labels,
                        registry=None,
                        multiprocess_mode=s.mode,  # type: ignore[arg-type]
                    )
                else:
                    counters[s.name] = Counter(s.name, s.doc, labels, registry=None)
            _METRICS = _ProcessMetrics(gauges, counters)
        return _METRICS


@dataclasses.dataclass
class _Seen:
    """A series source already counted: the object (a pool, or None for a
    batcher), so a new pool of the same name starts from 0, and the
    cumulative counts already passed on."""

    source: Any
    counted: dict[str, float]


Delta = tuple[Series, Labels, float]


class _Counts:
    """Turns snapshots of cumulative stats into counter increments that never
    go back: a pool that closed has its last counts passed on once, and a new
    pool of the same name starts from zero. Not thread-safe (callers lock)."""

    def __init__(self) -> None:
        self._pools: dict[Labels, _Seen] = {}
        self._batchers: dict[Labels, _Seen] = {}

    def update(
        self, snap: Snapshot, retired: Iterable[tuple[str, rp.Pool]] = ()
    ) -> tuple[list[Delta], list[Labels]]:
        """The increments since the last update, and the pools now gone.
        ``retired``: (tenant, pool) of pools closed since, seen or not."""
        deltas: list[Delta] = []
        gone: list[Labels] = []
        rows = {row.labels: row for row in snap.pools}
        for tenant, pool in retired:
            labels = pool_row(pool, tenant, {}).labels
            seen = self._pools.get(labels)
            if seen is None:
                # Created and closed between two updates: counted below.
                self._pools[labels] = _Seen(pool, {})
            elif seen.source is not pool:
                # An older pool of that name, then this one, both unseen since.
                self._add(deltas, "pool", labels, seen, pool_row(seen.source, tenant, {}).values)
                self._pools[labels] = _Seen(pool, {})
        for labels, seen in list(self._pools.items()):
            row = rows.get(labels)
            if row is None or row.source is not seen.source:
                # Closed or evicted (stats still readable): its last counts.
                last = pool_row(seen.source, labels[1], {})
                self._add(deltas, "pool", labels, seen, last.values)
                del self._pools[labels]
                if row is None:
                    gone.append(labels)
        for labels, row in rows.items():
            seen = self._pools.setdefault(labels, _Seen(row.source, {}))
            self._add(deltas, "pool", labels, seen, row.values)
        for labels, values in snap.batchers:
            seen = self._batchers.setdefault(labels, _Seen(None, {}))
            self._add(deltas, "batcher", labels, seen, values)
        return deltas, gone

    @staticmethod
    def _add(
        deltas: list[Delta], scope: Scope, labels: Labels, seen: _Seen, values: dict[str, float]
    ) -> None:
        for s in SERIES:
            if s.scope == scope and s.kind == "counter":
                total = values[s.field]
                delta = total - seen.counted.get(s.field, 0.0)
                if delta > 0:
                    deltas.append((s, labels, delta))
                seen.counted[s.field] = total


class MultiProcessWriter:
    """Copies one process's snapshot into prometheus_client's multiprocess
    files: gauges are set, counters increased by what the stats counted
    since the last copy. ``start`` runs ``refresh`` every ``interval``
    seconds on a daemon thread; ``stop`` ends it and writes once more (a
    closed pool's last counts, and zero gauges for what is gone)."""

    def __init__(self, owner: Raptors, interval: float) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"metrics_interval must be a finite number > 0, got {interval!r}")
        _check_multiprocess_values()
        self.owner = owner
        self.interval = interval
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._retired: collections.deque[tuple[str, rp.Pool]] = collections.deque()
        self._budgets: set[Labels] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="raptors-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        self.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def retire(self, tenant: str, pool: rp.Pool) -> None:
        """``pool`` was closed: the next refresh passes on its last counts.
        Takes no lock (callers may hold the tenant pools' lock)."""
        self._retired.append((tenant, pool))

    def refresh(self) -> None:
        """Write this process's current stats (thread-safe)."""
        with self._lock:
            retired = []
            while self._retired:
                retired.append(self._retired.popleft())
            self._write(snapshot(self.owner), retired)
            self.refreshes += 1

    def _write(self, snap: Snapshot, retired: list[tuple[str, rp.Pool]]) -> None:
        metrics = _process_metrics()
        deltas, gone = self._counts.update(snap, retired)
        for s, labels, delta in deltas:
            metrics.counters[s.name].labels(*labels).inc(delta)
        for labels in gone:
            self._zero(metrics, ("pool", "quantile", "share"), labels)
        gauges = metrics.gauges
        for row in snap.pools:
            for s in SERIES:
                if s.kind != "gauge":
                    continue
                if s.scope == "pool" or (s.scope == "share" and row.on_budget):
                    gauges[s.name].labels(*row.labels).set(row.values[s.field])
                elif s.scope == "quantile":
                    for q, value in row.quantiles[s.field].items():
                        gauges[s.name].labels(*row.labels, q).set(value)
        budgets = dict(snap.budgets)
        for labels in self._budgets - set(budgets):
            self._zero(metrics, ("budget",), labels)
        self._budgets = set(budgets)
        for scope, rows in (("budget", snap.budgets), ("batcher", snap.batchers)):
            for labels, values in rows:
                for s in SERIES:
                    if s.scope == scope and s.kind == "gauge":
                        gauges[s.name].labels(*labels).set(values[s.field])

    @staticmethod
    def _zero(metrics: _ProcessMetrics, scopes: tuple[Scope, ...], labels: Labels) -> None:
        """Zero the gauges of ``labels`` (a file-backed series cannot be removed;
        zero adds nothing to a sum or a max, and a worker that exits takes its
        ``live`` gauges with it)."""
        for s in SERIES:
            if s.kind != "gauge" or s.scope not in scopes:
                continue
            if s.scope == "quantile":
                for q, _ in QUANTILES:
                    metrics.gauges[s.name].labels(*labels, q).set(0.0)
            else:
                metrics.gauges[s.name].labels(*labels).set(0.0)


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # exited, not yet reaped


def mark_dead_workers(path: str) -> list[int]:
    """``mark_process_dead`` for every process whose live gauges are in
    ``path`` but which no longer runs (a worker that crashed or was killed,
    under a server that has no exit hook, such as ``uvicorn --workers``);
    returns their pids. Counters keep their counts."""
    from prometheus_client import multiprocess

    dead = []
    own = os.getpid()
    pids = set()
    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _LIVE_FILE.match(os.path.basename(f))
        if m is not None:
            pids.add(int(m.group(1)))
    for pid in sorted(pids):
        if pid != own and not _pid_alive(pid):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
            dead.append(pid)
    return dead


# -- OpenTelemetry -------------------------------------------------------------

OTEL_ATTRIBUTES = {
    "pool": "raptors.pool.name",
    "tenant": "raptors.tenant.id",
    "budget": "raptors.budget.name",
    "batcher": "raptors.batcher.name",
    "quantile": "quantile",
}


def _attributes(scope: Scope, labels: Labels) -> dict[str, str]:
    """OpenTelemetry attributes of a series: its labels renamed, empty ones left out."""
    return {OTEL_ATTRIBUTES[k]: v for k, v in zip(LABELS[scope], labels, strict=True) if v}


class OpenTelemetryMetrics:
    """The ``SERIES`` as OpenTelemetry observable instruments on ``meter``
    (default: ``opentelemetry.metrics.get_meter("raptors")``), named by their
    ``otel`` column. Each collection reads the app's stats once (the
    callbacks of one collection share a snapshot younger than ``max_age``
    seconds); counters report this process's totals, which never go back
    when a pool closes. Every process exports its own: an OpenTelemetry
    backend adds them up by the process resource attributes."""

    def __init__(self, owner: Raptors, meter: Any = None, max_age: float = 0.05) -> None:
        from opentelemetry import metrics as otel

        self.owner = owner
        self.meter = meter if meter is not None else otel.get_meter("raptors")
        self.max_age = max_age
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._totals: dict[tuple[str, Labels], float] = {}
        self._snap: Snapshot | None = None
        self._taken = -math.inf
        self._retired: collections.deque[tuple[str, rp.Pool]] = collections.deque()
        self.instruments: list[Any] = []
        for s in SERIES:
            create = (
                self.meter.create_observable_gauge
                if s.kind == "gauge"
                else self.meter.create_observable_counter
            )
            self.instruments.append(
                create(s.otel, callbacks=[self._callback(s)], unit=s.unit, description=s.doc)
            )

    def retire(self, tenant: str, pool: rp.Pool) -> None:
        """``pool`` was closed: its last counts go into the totals (no lock)."""
        self._retired.append((tenant, pool))

    def _callback(self, series: Series) -> Callable[[Any], list[Any]]:
        def observe(options: Any) -> list[Any]:
            return self.observe(series)

        return observe

    def _current(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snap is None or now - self._taken > self.max_age:
                snap = snapshot(self.owner)
                retired = []
                while self._retired:
                    retired.append(self._retired.popleft())
                deltas, _ = self._counts.update(snap, retired)
                for s, labels, delta in deltas:
                    key = (s.name, labels)
                    self._totals[key] = self._totals.get(key, 0.0) + delta
                self._snap, self._taken = snap, now
            return self._snap

    def observe(self, series: Series) -> list[Any]:
        """The observations of one instrument now."""
        from opentelemetry.metrics import Observation

        snap = self._current()
        scope = series.scope
        if series.kind == "counter":
            with self._lock:
                totals = [(k[1], v) for k, v in self._totals.items() if k[0] == series.name]
            return [Observation(v, _attributes(scope, labels)) for labels, v in totals]
        if scope == "quantile":
            return [
                Observation(v, _attributes(scope, (*row.labels, q)))
                for row in snap.pools
                for q, v in row.quantiles[series.field].items()
            ]
        return [
            Observation(values[series.field], _attributes(scope, labels))
            for labels, values in _rows(snap, scope)
        ]
