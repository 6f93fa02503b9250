"""Per-tenant pools for the FastAPI integration: plain pool configuration
(``PoolConfig``), the template tenant pools are made from
(``TenantTemplate``), and ``TenantPools``, tenant id -> that tenant's pool,
with the shared CPU budget, the cap, overflow and idle eviction.

Re-exported by ``raptors.fastapi``; import it from there.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal

from fastapi import HTTPException, Request

import raptors as rp

Admission = Literal["bounded", "predictive"]

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
        on_evict: Callable[[str, rp.Pool], None] | None = None,
    ) -> None:
        self.template = TenantTemplate.coerce(template or {})
        # Work for a pool that it does not hold yet (items waiting in a
        # Batcher): a pool with such work is not idle, whatever its stats say.
        self._in_use = in_use
        # Told (tenant, pool) after an idle pool is evicted and closed, under
        # this object's lock: it must not call back into it.
        self._on_evict = on_evict
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
        if self._on_evict is not None:
            self._on_evict(tenant, entry.pool)

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
