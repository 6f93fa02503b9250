"""Prometheus metrics of a ``Raptors`` app: ``RaptorsCollector`` reads the
stats of every pool, budget and batcher at scrape time.

Re-exported by ``raptors.fastapi``; import it from there.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import raptors as rp

if TYPE_CHECKING:
    from raptors.fastapi import Raptors

_GAUGES = (
    ("queued", "Jobs waiting in the queue now."),
    ("running", "Jobs running now."),
    ("utilization", "Busy worker time / (threads x elapsed), recent window."),
    ("max_queued", "Highest queue depth seen."),
    ("threads", "Worker threads."),
    ("queue_capacity", "Queue bound (waiting jobs)."),
    ("arrival_rate", "Submits per second, accepted or rejected, recent window."),
    ("completion_rate", "Jobs ended per second, recent window."),
    ("run_mean", "Mean seconds from start to end, recent jobs."),
)
_COUNTERS = (
    ("submitted", "Jobs accepted."),
    ("completed", "Jobs that finished successfully."),
    ("failed", "Jobs that raised."),
    ("cancelled", "Jobs cancelled."),
    ("expired", "Jobs whose start deadline passed."),
    ("rejected", "Submits refused with QueueFull (WouldMissDeadline included)."),
)
_QUANTILES = (("wait", "Seconds from submit to start"), ("run", "Seconds from start to end"))
_BATCHER_GAUGES = (
    ("pending", "Items waiting for a batch now."),
    ("inflight", "Batch jobs submitted and not finished."),
)
_BATCHER_COUNTERS = (
    ("batches", "Batch jobs submitted."),
    ("items", "Items submitted in batches."),
    ("rejected", "Items refused with QueueFull while waiting items were at the bound."),
    ("expired", "Items whose start deadline passed while waiting for a batch."),
)
_BUDGET_GAUGES = (
    ("threads", "Native worker threads of the budget, shared by its pools."),
    ("running", "Jobs running on the budget's threads now."),
    ("utilization", "Busy budget thread time / (threads x elapsed), recent window."),
)
# Gauges of a pool on a budget, labelled with the budget too.
_POOL_BUDGET_GAUGES = (("share", "The pool's fraction of its budget's busy time, recent window."),)

_Row = tuple[list[str], Any]


def _families(
    kind: Callable[..., Any],
    prefix: str,
    table: Iterable[tuple[str, str]],
    labels: list[str],
    rows: list[_Row],
    value: Callable[[Any, str], Any],
) -> Iterator[Any]:
    """One metric family per ``(field, doc)`` of ``table``, named ``prefix +
    field``, with a sample ``value(source, field)`` per ``(label values,
    source)`` row."""
    for field, doc in table:
        family = kind(prefix + field, doc, labels=labels)
        for values, source in rows:
            family.add_metric(values, float(value(source, field)))
        yield family


class RaptorsCollector:
    """Reads ``pool.stats()`` of every pool of a ``Raptors`` app, and
    ``budget.stats()`` of the budgets they run on, at scrape time."""

    def __init__(self, owner: Raptors) -> None:
        self.owner = owner

    def describe(self) -> list[Any]:
        return []

    def _labelled(self) -> list[tuple[list[str], Any, rp.Budget | None]]:
        """``([pool, tenant], pool stats, the pool's budget)`` of every pool."""
        tenant_of_pool: dict[str, str] = {}
        if self.owner.tenants is not None:
            tenant_of_pool = {p.name: t for t, p in self.owner.tenants.pools().items()}
        rows = []
        for name, pool in sorted(self.owner.all_pools().items()):
            rows.append(([name, tenant_of_pool.get(name, "")], pool.stats(), pool.budget))
        return rows

    def collect(self) -> Iterable[Any]:
        labelled = self._labelled()
        rows = [(values, st) for values, st, _ in labelled]
        labels = ["pool", "tenant"]
        yield from _families(GaugeMetricFamily, "raptors_pool_", _GAUGES, labels, rows, getattr)
        yield from _families(CounterMetricFamily, "raptors_jobs_", _COUNTERS, labels, rows, getattr)
        for kind, doc in _QUANTILES:
            g = GaugeMetricFamily(
                f"raptors_job_{kind}_seconds",
                f"{doc}, recent jobs, by quantile.",
                labels=[*labels, "quantile"],
            )
            for values, st in rows:
                g.add_metric([*values, "0.5"], float(getattr(st, f"{kind}_p50")))
                g.add_metric([*values, "0.99"], float(getattr(st, f"{kind}_p99")))
            yield g
        budgets = {name: budget.stats() for name, budget in sorted(self.owner.budgets().items())}
        if budgets:
            yield from _families(
                GaugeMetricFamily,
                "raptors_budget_",
                _BUDGET_GAUGES,
                ["budget"],
                [([name], st) for name, st in budgets.items()],
                getattr,
            )
            shares = {name: st.shares for name, st in budgets.items()}
            on_budget = [
                ([*values, budget.name], {"share": shares[budget.name].get(values[0], 0.0)})
                for values, _, budget in labelled
                if budget is not None and budget.name in shares
            ]
            yield from _families(
                GaugeMetricFamily,
                "raptors_pool_",
                _POOL_BUDGET_GAUGES,
                [*labels, "budget"],
                on_budget,
                operator.getitem,
            )
        batchers = [(name, b.stats()) for name, b in sorted(self.owner.batchers.items())]
        if batchers:
            snapshots = [([name], st) for name, st in batchers]
            yield from _families(
                GaugeMetricFamily,
                "raptors_batcher_",
                _BATCHER_GAUGES,
                ["batcher"],
                snapshots,
                operator.getitem,
            )
            yield from _families(
                CounterMetricFamily,
                "raptors_batcher_",
                _BATCHER_COUNTERS,
                ["batcher"],
                snapshots,
                operator.getitem,
            )
