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

This module holds the app (``Raptors``: lifespan, dependencies, ``run`` and
``wait``, the error handlers and routes) and re-exports the parts, each in
a module named for what it holds: ``raptors._tenants`` (``PoolConfig``,
``TenantTemplate``, ``TenantPools``), ``raptors._disconnect``
(``ClientDisconnected`` and the disconnect watcher) and ``raptors._metrics``
(``RaptorsCollector``, and the metrics of several worker processes when
``PROMETHEUS_MULTIPROC_DIR`` is set). Import them from ``raptors.fastapi``.

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
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import raptors as rp
from raptors._dashboard import StatsBroadcaster, dashboard_html
from raptors.batch import Batcher

_EXTRA_HINT = 'raptors.fastapi needs FastAPI and prometheus_client: pip install "raptors[fastapi]"'

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{_EXTRA_HINT} ({exc})") from exc

# The parts, each in its own module (imported once the extra is known to be there).
from raptors._disconnect import ClientDisconnected, _DisconnectWatch
from raptors._metrics import (
    MultiProcessWriter,
    OpenTelemetryMetrics,
    RaptorsCollector,
    mark_dead_workers,
    multiprocess_dir,
)
from raptors._tenants import (
    Admission,  # noqa: F401 - the type of PoolConfig.admission, still importable from here
    PoolConfig,
    TenantLimitReached,
    TenantPools,
    TenantTemplate,
    _close_all,
    default_budget_threads,
)

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
        metrics_interval: float = 1.0,
    ) -> None:
        if isinstance(pools, Mapping):
            configs = [PoolConfig.coerce({"name": n, **dict(c)}) for n, c in pools.items()]
        else:
            configs = [PoolConfig.coerce(c) for c in pools]
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        self.configs = configs
        self.tenants = (
            TenantPools(tenants, self._in_use, self._retired) if tenants is not None else None
        )
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
        # Several worker processes (PROMETHEUS_MULTIPROC_DIR set): each writes
        # its stats to prometheus_client's files every metrics_interval
        # seconds, and /metrics merges every worker's (see raptors._metrics).
        self.multiprocess_dir = multiprocess_dir()
        self.metrics_writer: MultiProcessWriter | None = None
        self.otel: OpenTelemetryMetrics | None = None
        if self.multiprocess_dir is None:
            self.registry.register(RaptorsCollector(self))
        else:
            from prometheus_client import multiprocess

            self.metrics_writer = MultiProcessWriter(self, metrics_interval)
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=self.multiprocess_dir
            )

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Create the configured pools (the lifespan calls this)."""
        if self.tenants is not None and self.tenants._closed:
            self.tenants = TenantPools(self.tenants.template, self._in_use, self._retired)
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
            if self.metrics_writer is not None:
                self.metrics_writer.start()
        except BaseException:
            self.close(wait=False)
            raise

    def close(self, wait: bool = True) -> None:
        """Stop accepting work, let accepted jobs finish (``wait=True``), close
        every pool, then the tenant budget."""
        pools, self._pools = list(self._pools.values()), {}
        retired = [("", pool) for pool in pools]
        budget = None
        if self.tenants is not None:
            retired += list(self.tenants.pools().items())
            pools += self.tenants.detach_all()
            budget = self.tenants.detach_budget()
        for tenant, pool in retired:
            self._retired(tenant, pool)
        _close_all(pools, budget, wait)
        if self.metrics_writer is not None:
            # The closed pools' last counts; zero gauges for what is gone.
            self.metrics_writer.stop()

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

    def instrument_opentelemetry(self, meter: Any = None) -> OpenTelemetryMetrics:
        """Export the /metrics series as OpenTelemetry observable instruments
        on ``meter`` (default: the global meter provider's ``"raptors"``
        meter); needs ``opentelemetry-api``. Call it once per app."""
        if self.otel is None:
            self.otel = OpenTelemetryMetrics(self, meter)
        return self.otel

    def _retired(self, tenant: str, pool: rp.Pool) -> None:
        """A pool closed (evicted, or at shutdown): its last counts still go
        to the multiprocess metrics, however soon after its creation."""
        if self.metrics_writer is not None:
            self.metrics_writer.retire(tenant, pool)
        if self.otel is not None:
            self.otel.retire(tenant, pool)

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
        """The Prometheus text of every pool; with several worker processes,
        merged over every live worker (this one's stats written first, and
        workers that died without a clean exit marked dead)."""
        if self.metrics_writer is not None and self.multiprocess_dir is not None:
            self.metrics_writer.refresh()
            mark_dead_workers(self.multiprocess_dir)
        return generate_latest(self.registry)

    async def metrics_response(self) -> Response:
        if self.metrics_writer is not None:
            # Merging every worker's files takes milliseconds: off the loop.
            return Response(
                await asyncio.to_thread(self.metrics_text), media_type=CONTENT_TYPE_LATEST
            )
        return Response(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)


def _relative_url(page: str | None, target: str) -> str:
    """``target`` (an absolute path) as a URL relative to ``page``'s
    directory, so the page finds its stream when the app is mounted under a
    prefix: ``("/dashboard", "/stats/stream") -> "stats/stream"``."""
    page_dir = (page or "/").rsplit("/", 1)[0].strip("/")
    parts = [p for p in page_dir.split("/") if p]
    return "../" * len(parts) + target.lstrip("/")
