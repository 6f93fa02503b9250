"""FastAPI integration: pools in the app's lifespan, per-tenant pools, HTTP
mapping of Raptors errors, disconnect-aware awaiting, Prometheus and JSON
stats.

FastAPI, Starlette and prometheus_client are optional dependencies
(``pip install "raptors[fastapi]"``); they are imported when this module is
imported, so ``import raptors`` alone never needs them.

A ten-line service::

    from fastapi import Depends, FastAPI, Request
    import raptors as rp
    from raptors.fastapi import Raptors

    rx = Raptors(pools=[{"name": "scoring", "threads": 2, "queue": 64}])
    app = FastAPI(lifespan=rx.lifespan)
    rx.install(app)  # 503/504 handlers, /metrics, /stats, /stats/stream, /dashboard

    @app.post("/dot")
    async def dot(request: Request, pool: rp.Pool = Depends(rx.pool("scoring"))):
        return {"dot": float(await rx.run(request, pool, rp.dot, [1.0, 2.0], [3.0, 4.0]))}

Invariants kept here:

* Every pool this module creates is closed by the lifespan's exit (or by
  idle-tenant eviction), with ``close(wait=True)`` on shutdown so accepted
  jobs finish before the process exits; the tenant budget is closed after
  its pools, and evicting one tenant's pool leaves it serving the others.
* With a tenant budget (the default), the process runs its
  ``budget_threads`` native threads for the tenants, however many there are.
* A tenant pool is only evicted when it has nothing queued or running and has
  not been handed out for ``idle_timeout`` seconds, so eviction never drops or
  cancels an accepted job.
* ``Raptors.wait`` cancels a job only on a real client disconnect; a job that
  already started runs to completion and its result is discarded.
* ``GET /stats/stream`` builds one ``/stats`` snapshot per tick for all its
  subscribers, and every stream ends at the lifespan's exit (see
  ``raptors._dashboard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import operator
import os
import re
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import raptors as rp
from raptors._dashboard import StatsBroadcaster, dashboard_html
from raptors.batch import Batcher

Admission = Literal["bounded", "predictive"]

_EXTRA_HINT = 'raptors.fastapi needs FastAPI and prometheus_client: pip install "raptors[fastapi]"'

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{_EXTRA_HINT} ({exc})") from exc

__all__ = [
    "Batcher",
    "ClientDisconnected",
    "PoolConfig",
    "Raptors",
    "RaptorsCollector",
    "TenantLimitReached",
    "TenantPools",
    "TenantTemplate",
    "default_budget_threads",
    "retry_after_seconds",
]

# HTTP status for "client closed request" (nginx convention); the client never
# reads it, but access logs and tests do.
CLIENT_CLOSED_REQUEST = 499

_TENANT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Plain configuration of one named pool (see ``rp.Pool``)."""

    name: str
    threads: int | None = None
    queue: int = 1024
    nice: int | None = None
    admission: Admission = "bounded"

    @classmethod
    def coerce(cls, value: PoolConfig | Mapping[str, Any]) -> PoolConfig:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"name", "threads", "queue", "nice", "admission"}
            if unknown:
                raise ValueError(f"pool config: unknown keys {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"pool config must be a PoolConfig or a dict, not {type(value).__name__}")


def default_budget_threads() -> int:
    """The tenant budget's default size: the usable cores (CPU affinity and
    quota applied, as ``threads=None`` counts them) minus one, so the event
    loop keeps a core; at least 1."""
    return max(1, rp._raptors._usable_cores() - 1)


def _check_count(name: str, value: object) -> None:
    """``value`` is None or an int >= 1 (not a bool)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_weight(name: str, value: object) -> float:
    """``value`` as a weight: a finite int or float > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be an int or a float, not {type(value).__name__}")
    try:
        weight = float(value)
    except OverflowError:
        weight = math.inf
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return weight


@dataclasses.dataclass(frozen=True)
class TenantTemplate:
    """How tenant pools are made and bounded.

    With ``budget=True`` (the default) every tenant pool, and the overflow
    pool, runs on one shared ``rp.Budget`` named ``prefix + "budget"`` of
    ``budget_threads`` native threads (``None``: the usable cores minus one,
    at least 1, so the event loop keeps a core): tenants own no threads, and
    the budget shares its threads between busy tenants in proportion to
    their weights. ``weights`` gives a tenant's weight: a mapping of tenant
    id to weight (tenants not in it get ``default_weight``) or a callable
    ``tenant -> weight`` (returning ``None`` means ``default_weight``),
    called once when the tenant's pool is created. ``threads`` is then the
    per-tenant cap, the most of the budget's threads one tenant's jobs occupy
    at once (``None``: all of them).

    With ``budget=False`` each tenant pool owns ``threads`` worker threads
    (``None``: 1) and competes with the others through the OS scheduler;
    ``weights`` and ``default_weight`` then have no effect.

    ``overflow`` decides what happens to a new tenant once ``max_tenants``
    pools exist and none is idle enough to evict: ``"reject"`` answers HTTP
    429, ``"shared"`` sends it to one shared overflow pool (built from the same
    template, weight ``default_weight``) so it is served, without isolation
    from other overflow tenants.
    """

    threads: int | None = None
    queue: int = 64
    nice: int | None = None
    max_tenants: int = 64
    idle_timeout: float = 300.0
    overflow: str = "reject"
    header: str = "X-Tenant"
    default_tenant: str = "default"
    prefix: str = "tenant-"
    budget: bool = True
    budget_threads: int | None = None
    # Not hashed: a mapping is not hashable, and the template stays so.
    weights: Mapping[str, float] | Callable[[str], float | None] | None = dataclasses.field(
        default=None, hash=False
    )
    default_weight: float = 1.0
    admission: Admission = "bounded"

    def __post_init__(self) -> None:
        if self.admission not in ("bounded", "predictive"):
            raise ValueError(f"admission must be 'bounded' or 'predictive', not {self.admission!r}")
        if self.overflow not in ("reject", "shared"):
            raise ValueError(f"overflow must be 'reject' or 'shared', not {self.overflow!r}")
        if self.max_tenants < 1:
            raise ValueError("max_tenants must be >= 1")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0")
        if not isinstance(self.budget, bool):
            raise TypeError(f"budget must be True or False, not {type(self.budget).__name__}")
        _check_count("threads", self.threads)
        _check_count("budget_threads", self.budget_threads)
        if not self.budget and self.budget_threads is not None:
            raise ValueError(
                "budget_threads sizes the shared tenant budget: it needs budget=True "
                "(with budget=False, threads is each tenant pool's own threads)"
            )
        if (
            self.budget
            and self.threads is not None
            and self.budget_threads is not None
            and self.threads > self.budget_threads
        ):
            raise ValueError(
                f"threads={self.threads} (the per-tenant cap on the budget) is more than "
                f"budget_threads={self.budget_threads}"
            )
        _check_weight("default_weight", self.default_weight)
        weights = self.weights
        if isinstance(weights, Mapping):
            checked: dict[str, float] = {}
            for tenant, weight in weights.items():
                if not isinstance(tenant, str):
                    raise TypeError(
                        f"weights keys must be tenant ids (str), not {type(tenant).__name__}"
                    )
                checked[tenant] = _check_weight(f"weights[{tenant!r}]", weight)
            # A read-only copy: the template is frozen, its weights too.
            object.__setattr__(self, "weights", types.MappingProxyType(checked))
        elif weights is not None and not callable(weights):
            raise TypeError(
                "weights must be a mapping of tenant id to weight, a callable "
                f"tenant -> weight, or None, not {type(weights).__name__}"
            )

    def weight_of(self, tenant: str) -> float:
        """The weight of ``tenant``'s pool on the budget."""
        weights = self.weights
        if weights is None:
            return float(self.default_weight)
        if isinstance(weights, Mapping):
            return float(weights.get(tenant, self.default_weight))
        weight = weights(tenant)
        if weight is None:
            return float(self.default_weight)
        return _check_weight(f"weights({tenant!r})", weight)

    @property
    def pool_threads(self) -> int | None:
        """``threads=`` of a tenant pool: its cap on the budget (``None``: all
        of the budget's threads) or, with ``budget=False``, its own threads
        (``None``: 1)."""
        if self.budget:
            return self.threads
        return 1 if self.threads is None else self.threads

    @classmethod
    def coerce(cls, value: TenantTemplate | Mapping[str, Any]) -> TenantTemplate:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(
            f"tenant template must be a TenantTemplate or a dict, not {type(value).__name__}"
        )


class TenantLimitReached(Exception):
    """A new tenant arrived while ``max_tenants`` pools are busy (HTTP 429)."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant limit of {limit} reached; tenant {tenant!r} refused")
        self.tenant = tenant
        self.limit = limit


class ClientDisconnected(Exception):
    """The client went away before its job started; the job was cancelled."""


@dataclasses.dataclass
class _Tenant:
    pool: rp.Pool
    last_used: float
    weight: float | None  # None: the pool owns its threads (budget=False)


class TenantPools:
    """Tenant id -> that tenant's own pool, created on first use.

    Each tenant has its own bounded queue, so a flooding tenant fills (and
    gets 503s from) only its own queue. With ``template.budget`` (the
    default) the tenant pools own no threads: they run on one shared
    ``rp.Budget`` (``self.budget``, created by ``open`` or the first
    ``get``), which shares its threads between busy tenants by weight and
    caps each at ``template.threads``. Otherwise each pool owns its threads.
    Thread-safe: sync endpoints may call ``get`` from FastAPI's thread pool.
    """

    def __init__(
        self,
        template: TenantTemplate | Mapping[str, Any] | None = None,
        in_use: Callable[[rp.Pool], bool] | None = None,
    ) -> None:
        self.template = TenantTemplate.coerce(template or {})
        # Work for a pool that it does not hold yet (items waiting in a
        # Batcher): a pool with such work is not idle, whatever its stats say.
        self._in_use = in_use
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._overflow: rp.Pool | None = None
        # Tenants sent to the overflow pool -> when they last used it: they
        # stay there while it holds work of theirs (one pool per tenant at a
        # time), and are forgotten like an idle tenant pool is evicted, so a
        # churn of tenants leaves neither an ever-growing set nor tenants
        # pinned to the shared pool once the cap has room again.
        self._overflow_tenants: dict[str, float] = {}
        self._budget: rp.Budget | None = None
        self._closed = False
        self._last_sweep = time.monotonic()
        self.created = 0
        self.evicted = 0
        self.refused = 0

    @property
    def sweep_interval(self) -> float:
        return min(self.template.idle_timeout / 2.0, 5.0)

    @property
    def budget(self) -> rp.Budget | None:
        """The budget the tenant pools share; None with ``budget=False``, before
        ``open`` (or the first ``get``) and after ``close``."""
        return self._budget

    def open(self) -> None:
        """Creates the shared budget (``Raptors.open`` calls this, so that a
        bad configuration fails at startup); idempotent, and done by the first
        ``get`` otherwise."""
        with self._lock:
            if self._closed:
                raise rp.PoolClosed("tenant pools are closed")
            self._open_locked()

    def _open_locked(self) -> None:
        t = self.template
        if not t.budget or self._budget is not None:
            return
        threads = default_budget_threads() if t.budget_threads is None else t.budget_threads
        if t.threads is not None and t.threads > threads:
            raise ValueError(
                f"TenantTemplate threads={t.threads} (the per-tenant cap) is more than "
                f"the tenant budget's {threads} threads"
            )
        self._budget = rp.Budget(t.prefix + "budget", threads=threads, nice=t.nice)

    def _weight_locked(self, tenant: str | None) -> float | None:
        """The weight of a new pool for ``tenant`` (``None``: the overflow
        pool); None when the pools own their threads."""
        if not self.template.budget:
            return None
        if tenant is None:
            return float(self.template.default_weight)
        return self.template.weight_of(tenant)

    def _new_pool_locked(self, name: str, weight: float | None) -> rp.Pool:
        t = self.template
        self._open_locked()
        if self._budget is None or weight is None:
            return rp.Pool(
                name, threads=t.pool_threads, queue=t.queue, nice=t.nice, admission=t.admission
            )
        return rp.Pool(
            name,
            threads=t.pool_threads,
            queue=t.queue,
            budget=self._budget,
            weight=weight,
            admission=t.admission,
        )

    def tenant_of(self, request: Request) -> str:
        """The tenant id of a request (header, else the default tenant); 400 if malformed."""
        tenant = request.headers.get(self.template.header)
        if tenant is None or tenant == "":
            return self.template.default_tenant
        if not _TENANT_ID.match(tenant):
            raise HTTPException(
                status_code=400,
                detail=f"{self.template.header} must match {_TENANT_ID.pattern}",
            )
        return tenant

    def get(self, tenant: str) -> rp.Pool:
        """The pool serving ``tenant``; may create it, evict idle ones, or refuse."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise rp.PoolClosed("tenant pools are closed")
            entry = self._tenants.get(tenant)
            if entry is not None:
                entry.last_used = now
                if now - self._last_sweep >= self.sweep_interval:
                    self._sweep_locked(now)
                return entry.pool
            if tenant in self._overflow_tenants and self._overflow is not None:
                self._overflow_tenants[tenant] = now
                if now - self._last_sweep >= self.sweep_interval:
                    self._sweep_locked(now)
                return self._overflow
            self._sweep_locked(now)
            if len(self._tenants) >= self.template.max_tenants:
                self._evict_lru_idle_locked()
            if len(self._tenants) >= self.template.max_tenants:
                return self._overflow_locked(tenant)
            weight = self._weight_locked(tenant)
            pool = self._new_pool_locked(self.template.prefix + tenant, weight)
            self._tenants[tenant] = _Tenant(pool, now, weight)
            self.created += 1
            return pool

    def _overflow_locked(self, tenant: str) -> rp.Pool:
        if self.template.overflow == "reject":
            self.refused += 1
            raise TenantLimitReached(tenant, self.template.max_tenants)
        if self._overflow is None:
            self._overflow = self._new_pool_locked(
                self.template.prefix + "overflow", self._weight_locked(None)
            )
        self._overflow_tenants[tenant] = time.monotonic()
        return self._overflow

    def _idle(self, pool: rp.Pool) -> bool:
        st = pool.stats()
        if st.queued or st.running:
            return False
        return self._in_use is None or not self._in_use(pool)

    def _evict_locked(self, tenant: str) -> None:
        entry = self._tenants.pop(tenant)
        # Nothing is queued, running or waiting to be submitted, so a
        # non-blocking close loses nothing and keeps the event loop free. On a
        # budget, the other tenants' pools keep its threads.
        entry.pool.close(wait=False)
        self.evicted += 1

    def _sweep_locked(self, now: float) -> None:
        self._last_sweep = now
        horizon = now - self.template.idle_timeout
        for tenant, entry in list(self._tenants.items()):
            if entry.last_used <= horizon and self._idle(entry.pool):
                self._evict_locked(tenant)
        if self._overflow_tenants and self._overflow is not None:
            if self._idle(self._overflow):
                # Nothing of theirs waits or runs: each may get a pool of its
                # own on its next request.
                self._overflow_tenants.clear()
            else:
                for tenant, last_used in list(self._overflow_tenants.items()):
                    if last_used <= horizon:
                        del self._overflow_tenants[tenant]

    def _evict_lru_idle_locked(self) -> None:
        for tenant, entry in sorted(self._tenants.items(), key=lambda kv: kv[1].last_used):
            if self._idle(entry.pool):
                self._evict_locked(tenant)
                return

    def sweep(self) -> None:
        """Evict every tenant idle for ``idle_timeout`` (also done lazily by ``get``)."""
        with self._lock:
            self._sweep_locked(time.monotonic())

    def pools(self) -> dict[str, rp.Pool]:
        """Open tenant pools by tenant id (the overflow pool under ``"*overflow*"``)."""
        with self._lock:
            out = {t: e.pool for t, e in self._tenants.items()}
            if self._overflow is not None:
                out["*overflow*"] = self._overflow
            return out

    def snapshot(self) -> dict[str, Any]:
        """The tenant view of ``/stats``: per tenant its pool, queue, weight and
        share of the budget's busy time (``None`` for both with ``budget=False``)."""
        now = time.monotonic()
        with self._lock:
            budget = self._budget
            shares = budget.stats().shares if budget is not None else {}
            tenants = {}
            for tenant, entry in self._tenants.items():
                st = entry.pool.stats()
                tenants[tenant] = {
                    "pool": entry.pool.name,
                    "queued": st.queued,
                    "running": st.running,
                    "idle_seconds": round(now - entry.last_used, 3),
                    "weight": entry.weight,
                    "share": None if entry.weight is None else shares.get(entry.pool.name, 0.0),
                }
            return {
                "tenants": tenants,
                "count": len(self._tenants),
                "max_tenants": self.template.max_tenants,
                "budget": budget.name if budget is not None else None,
                "overflow": self.template.overflow,
                "overflow_pool": self._overflow.name if self._overflow is not None else None,
                "overflow_tenants": sorted(self._overflow_tenants),
                "created": self.created,
                "evicted": self.evicted,
                "refused": self.refused,
            }

    def detach_all(self) -> list[rp.Pool]:
        """Refuse new lookups and hand over every tenant pool (the caller closes
        them, then the budget that ``detach_budget`` hands over)."""
        with self._lock:
            self._closed = True
            pools = [e.pool for e in self._tenants.values()]
            if self._overflow is not None:
                pools.append(self._overflow)
            self._tenants.clear()
            self._overflow = None
            return pools

    def detach_budget(self) -> rp.Budget | None:
        """Hand over the shared budget (the caller closes it after its pools)."""
        with self._lock:
            budget, self._budget = self._budget, None
            return budget

    def close(self, wait: bool = True) -> None:
        """Refuse new lookups, close every tenant pool (accepted jobs still run;
        with ``wait``, returns once they finished), then the budget."""
        _close_all(self.detach_all(), self.detach_budget(), wait)


def _close_all(pools: list[rp.Pool], budget: rp.Budget | None, wait: bool) -> None:
    """Closes ``pools`` so that they all drain in parallel, waits for each when
    ``wait``, then closes ``budget`` (its threads exit once its pools' jobs ran)."""
    for pool in pools:
        pool.close(wait=False)
    if wait:
        for pool in pools:
            pool.close(wait=True)
    if budget is not None:
        budget.close(wait=wait)


def retry_after_seconds(stats: Any) -> int:
    """Seconds until a full queue has likely drained: queued x run_p50 / threads.

    Whole seconds (the header's unit), at least 1.
    """
    threads = max(int(stats.threads or 1), 1)
    estimate = int(stats.queued) * float(stats.run_p50) / threads
    if not math.isfinite(estimate):
        return 1
    return max(1, math.ceil(estimate))


def would_miss_deadline_response(exc: rp.WouldMissDeadline) -> Response:
    """503 for a job predictive admission refused, with ``Retry-After`` from
    the same prediction: the time until the predicted wait fits the
    request's budget (whole seconds, at least 1)."""
    shortfall = exc.predicted_wait - exc.timeout
    retry = max(1, math.ceil(shortfall)) if math.isfinite(shortfall) else 1
    return JSONResponse(
        {
            "detail": f"pool {exc.pool!r} would start the job after its deadline, retry later",
            "predicted_wait": exc.predicted_wait,
            "timeout": exc.timeout,
            "retry_after": retry,
        },
        status_code=503,
        headers={"Retry-After": str(retry)},
    )


async def _wait_for_disconnect(receive: Callable[[], Any]) -> bool:
    """Returns True once the ASGI server reports ``http.disconnect``.

    Called after the body has been read, so the only messages left are
    disconnects (servers also send one after the response completes, by
    which time this watcher has been cancelled).
    """
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return True


class _DisconnectWatch:
    """Cancels ``job`` when the ASGI server reports that the client left."""

    __slots__ = ("job", "request", "task")

    def __init__(self, request: Request, job: Any) -> None:
        self.request = request
        self.job = job
        self.task: asyncio.Task[bool] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.job.done():
            self.task = loop.create_task(_wait_for_disconnect(self.request.receive))
            self.task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            self.job.cancel("client disconnected")

    def fired(self) -> bool:
        t = self.task
        return t is not None and t.done() and not t.cancelled() and t.exception() is None

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Raptors:
    """Pools, tenant pools and their HTTP surface for one FastAPI app."""

    def __init__(
        self,
        pools: Iterable[PoolConfig | Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] = (),
        tenants: TenantTemplate | Mapping[str, Any] | None = None,
        *,
        default_timeout: float | None = None,
        disconnect_grace: float = 0.01,
        metrics_path: str | None = "/metrics",
        stats_path: str | None = "/stats",
        stream_path: str | None = "/stats/stream",
        dashboard_path: str | None = "/dashboard",
        stream_interval: float = 0.5,
    ) -> None:
        if isinstance(pools, Mapping):
            configs = [PoolConfig.coerce({"name": n, **dict(c)}) for n, c in pools.items()]
        else:
            configs = [PoolConfig.coerce(c) for c in pools]
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        self.configs = configs
        self.tenants = TenantPools(tenants, self._in_use) if tenants is not None else None
        self.default_timeout = default_timeout
        if disconnect_grace < 0:
            raise ValueError("disconnect_grace must be >= 0")
        self.disconnect_grace = disconnect_grace
        self.metrics_path = metrics_path
        self.stats_path = stats_path
        self.stream_path = stream_path
        self.dashboard_path = dashboard_path
        self.stream_interval = stream_interval
        # One producer for every /stats/stream subscriber (see _dashboard).
        self.stream = StatsBroadcaster(self.stats_snapshot, stream_interval)
        self._pools: dict[str, rp.Pool] = {}
        self._dashboard_page: bytes | None = None
        self.batchers: dict[str, Batcher] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RaptorsCollector(self))

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Create the configured pools (the lifespan calls this)."""
        if self.tenants is not None and self.tenants._closed:
            self.tenants = TenantPools(self.tenants.template, self._in_use)
        if self.stream.closed:
            self.stream = StatsBroadcaster(self.stats_snapshot, self.stream_interval)
        try:
            if self.tenants is not None:
                self.tenants.open()
            for cfg in self.configs:
                self._pools[cfg.name] = rp.Pool(
                    cfg.name,
                    threads=cfg.threads,
                    queue=cfg.queue,
                    nice=cfg.nice,
                    admission=cfg.admission,
                )
        except BaseException:
            self.close(wait=False)
            raise

    def close(self, wait: bool = True) -> None:
        """Stop accepting work, let accepted jobs finish (``wait=True``), close
        every pool, then the tenant budget."""
        pools, self._pools = list(self._pools.values()), {}
        budget = None
        if self.tenants is not None:
            pools += self.tenants.detach_all()
            budget = self.tenants.detach_budget()
        _close_all(pools, budget, wait)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Use as ``FastAPI(lifespan=rx.lifespan)`` or enter it from your own lifespan."""
        self.open()
        app.state.raptors = self
        try:
            yield
        finally:
            # Streams first: they would otherwise send snapshots of closing pools.
            await self.stream.close()
            # Draining may take as long as the longest accepted job: off the loop.
            await asyncio.to_thread(self.close, True)

    # -- lookups and dependencies ---------------------------------------

    def get(self, name: str) -> rp.Pool:
        """A configured pool by name (``KeyError`` if unknown or not open)."""
        try:
            return self._pools[name]
        except KeyError:
            raise KeyError(f"no open pool named {name!r} in this app") from None

    def pool(self, name: str) -> Callable[[], Awaitable[rp.Pool]]:
        """A dependency handing a route the named pool: ``Depends(rx.pool("scoring"))``."""

        # async: FastAPI would run a plain def dependency in its thread pool.
        async def dependency() -> rp.Pool:
            return self.get(name)

        dependency.__name__ = f"raptors_pool_{name}"
        return dependency

    async def tenant_pool(self, request: Request) -> rp.Pool:
        """A dependency: the calling tenant's pool (``Depends(rx.tenant_pool)``)."""
        if self.tenants is None:
            raise RuntimeError("Raptors(tenants=...) was not configured")
        return self.tenants.get(self.tenants.tenant_of(request))

    def batcher(self, name: str, batcher: Batcher) -> Batcher:
        """Registers ``batcher`` under ``name`` for /stats and /metrics; returns it."""
        if name in self.batchers:
            raise ValueError(f"a batcher named {name!r} is already registered")
        self.batchers[name] = batcher
        return batcher

    def _in_use(self, pool: rp.Pool) -> bool:
        """Whether a registered batcher holds work for ``pool``."""
        return any(batcher.holds(pool) for batcher in self.batchers.values())

    def all_pools(self) -> dict[str, rp.Pool]:
        """Every pool this app owns, by pool name."""
        out = dict(self._pools)
        if self.tenants is not None:
            for pool in self.tenants.pools().values():
                out[pool.name] = pool
        return out

    def budgets(self) -> dict[str, rp.Budget]:
        """The budgets this app's pools run on, by name (the tenant budget
        included while it is open, even before its first tenant)."""
        out: dict[str, rp.Budget] = {}
        if self.tenants is not None and self.tenants.budget is not None:
            out[self.tenants.budget.name] = self.tenants.budget
        for pool in self.all_pools().values():
            budget = pool.budget
            if budget is not None:
                out.setdefault(budget.name, budget)
        return out

    def find(self, name: str) -> rp.Pool | None:
        pool = self.all_pools().get(name)
        if pool is not None:
            return pool
        try:
            return rp.get_pool(name)
        except KeyError:
            return None

    # -- running jobs ----------------------------------------------------

    async def run(
        self,
        request: Request | None,
        pool: rp.Pool,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        timeout: float | None = None,
        token: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Submit ``fn(*args, **kwargs)`` to ``pool`` and await it, cancelling on disconnect.

        ``timeout`` (default: ``default_timeout``) is the job's start deadline.
        """
        if timeout is None:
            timeout = self.default_timeout
        job = pool.submit(fn, *args, priority=priority, timeout=timeout, token=token, **kwargs)
        return await self.wait(request, job)

    async def wait(self, request: Request | None, job: Any) -> Any:
        """Await ``job`` (an ``rp.Job``, or a ``Batcher`` future); if the client
        disconnects while it is still queued, cancel it.

        Call it after the request body has been read. The connection is
        watched from ``disconnect_grace`` seconds after the call on (a job that
        finishes sooner costs no watcher), so a disconnect is acted on within
        that grace. Raises ``ClientDisconnected`` (answered 499) when the job
        was cancelled because the client left.
        """
        if request is None or job.done():
            return await job
        watch = _DisconnectWatch(request, job)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(self.disconnect_grace, watch.start, loop)
        try:
            return await job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if watch.fired() and not (current is not None and current.cancelling()):
                raise ClientDisconnected("client disconnected before the job started") from None
            raise
        finally:
            handle.cancel()
            watch.stop()

    # -- HTTP surface ----------------------------------------------------

    def install(self, app: FastAPI) -> None:
        """Register the exception handlers and, unless disabled, /metrics,
        /stats, /stats/stream and /dashboard."""
        app.add_exception_handler(rp.QueueFull, self._queue_full)
        app.add_exception_handler(rp.DeadlineExceeded, self._deadline)
        app.add_exception_handler(rp.PoolClosed, self._pool_closed)
        app.add_exception_handler(TenantLimitReached, self._tenant_limit)
        app.add_exception_handler(ClientDisconnected, self._disconnected)
        # A client that goes away while sending its body is normal traffic,
        # not an application error with a traceback in the log.
        app.add_exception_handler(ClientDisconnect, self._disconnected)
        if self.metrics_path:
            app.add_api_route(
                self.metrics_path, self.metrics_response, methods=["GET"], include_in_schema=False
            )
        if self.stats_path:
            app.add_api_route(
                self.stats_path, self.stats_response, methods=["GET"], include_in_schema=False
            )
        if self.stream_path:
            app.add_api_route(
                self.stream_path, self.stream_response, methods=["GET"], include_in_schema=False
            )
        if self.dashboard_path:
            app.add_api_route(
                self.dashboard_path,
                self.dashboard_response,
                methods=["GET"],
                include_in_schema=False,
            )

    async def _queue_full(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, rp.WouldMissDeadline):
            return would_miss_deadline_response(exc)
        name = getattr(exc, "pool", None)
        pool = self.find(name) if isinstance(name, str) else None
        retry = retry_after_seconds(pool.stats()) if pool is not None else 1
        return JSONResponse(
            {"detail": f"pool {name!r} is full, retry later", "retry_after": retry},
            status_code=503,
            headers={"Retry-After": str(retry)},
        )

    async def _deadline(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "deadline exceeded before the job started"}, 504)

    async def _pool_closed(self, request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"detail": "pool closed (shutting down)"}, 503, headers={"Retry-After": "1"}
        )

    async def _tenant_limit(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, 429, headers={"Retry-After": "1"})

    async def _disconnected(self, request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    def stats_snapshot(self) -> dict[str, Any]:
        """The serving process's id, every owned pool's stats by pool name,
        the budgets they run on, and the tenant and batcher views."""
        pools = {name: pool.stats().to_dict() for name, pool in self.all_pools().items()}
        budgets = {name: budget.stats().to_dict() for name, budget in self.budgets().items()}
        out: dict[str, Any] = {"pid": os.getpid(), "pools": pools, "budgets": budgets}
        if self.tenants is not None:
            out["tenants"] = self.tenants.snapshot()
        if self.batchers:
            out["batchers"] = {name: b.stats() for name, b in self.batchers.items()}
        return out

    async def stats_response(self) -> JSONResponse:
        return JSONResponse(self.stats_snapshot())

    async def stream_response(self) -> StreamingResponse:
        """Server-sent events: the /stats body every ``stream_interval``
        seconds, until the client leaves or the app shuts down."""
        return StreamingResponse(
            self.stream.events(),
            media_type="text/event-stream",
            # No proxy buffering or caching of a live feed.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def dashboard_response(self) -> Response:
        """The live dashboard page, fed by ``stream_path``."""
        if not self.stream_path:
            raise HTTPException(404, "the dashboard needs stream_path (GET /stats/stream)")
        if self._dashboard_page is None:
            self._dashboard_page = dashboard_html(
                _relative_url(self.dashboard_path, self.stream_path)
            )
        return Response(
            self._dashboard_page,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    async def metrics_response(self) -> Response:
        return Response(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)


def _relative_url(page: str | None, target: str) -> str:
    """``target`` (an absolute path) as a URL relative to ``page``'s
    directory, so the page finds its stream when the app is mounted under a
    prefix: ``("/dashboard", "/stats/stream") -> "stats/stream"``."""
    page_dir = (page or "/").rsplit("/", 1)[0].strip("/")
    parts = [p for p in page_dir.split("/") if p]
    return "../" * len(parts) + target.lstrip("/")


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
