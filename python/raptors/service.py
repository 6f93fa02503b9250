"""The demo scoring service: cosine-similarity top-10 over an embedded matrix.

``POST /score {"query": [256 floats]}`` -> ``{"ids": [10 ints], "scores": [10 floats]}``,
best first, against a generated (seeded) 20,000 x 256 float32 matrix whose
rows are pre-normalised. ``GET /health``, ``GET /metrics``, ``GET /stats``,
``GET /stats/stream`` and ``GET /dashboard`` (the live page).

Variants (for ``python -m raptors bench``) share the request parsing, the
response encoding and the answers; only the scoring call differs:

* ``raptors``: requests coalesced by ``raptors.fastapi.Batcher`` on the
  tenant's pool: a request that finds a free worker is scored at once,
  alone; requests arriving while the workers are busy leave together as one
  native ``rp.cosine_topk(matrix, queries, 10)`` job (the matrix is read once
  per batch, and the worker never takes the GIL);
* ``raptors-single``: one native ``rp.cosine_topk(matrix, q, 10)`` job per
  request;
* ``raptors-dask``: the ``raptors`` batcher forwarding its batches to a Dask
  cluster (``raptors.dask.DaskPool`` on the scheduler at
  ``RAPTORS_DASK_ADDRESS``; the matrix scattered to every worker once);
  ``/metrics`` adds the pool's ``raptors_dask_*`` families;
* ``numpy-inline``: NumPy called inside the ``async def`` endpoint;
* ``numpy-to-thread``: NumPy through ``await asyncio.to_thread``;
* ``numpy-anyio-tenant``: NumPy through ``anyio.to_thread.run_sync`` with one
  ``anyio.CapacityLimiter`` per tenant (``X-Tenant``), of ``cores - 1``
  tokens: what per-tenant isolation takes without Raptors;
* ``numpy-def``: NumPy in a plain ``def`` endpoint (FastAPI's thread pool);
* ``noop``: parses the request and answers a fixed top-10 (the HTTP floor).

Tenants (``X-Tenant``), priorities (``X-Priority`` or ``?priority=``) and
start deadlines (``X-Timeout-Ms``, milliseconds, or ``X-Timeout`` or
``?timeout=``, seconds) apply to the ``raptors`` variants; the others ignore
them. The tenant pools admit predictively (``RAPTORS_ADMISSION``): a request
whose budget its pool predicts it would miss gets a 503 with
``Retry-After`` at once. The tenant pools own no
threads: they share one ``rp.Budget`` (``tenant-budget``) of
``RAPTORS_TENANT_THREADS`` threads (default: cores - 1), which divides its
threads fairly between busy tenants (equal weights).
"""

import asyncio
import contextlib
import inspect
import json
import math
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np

import raptors as rp

ROWS = 20_000
DIM = 256
K = 10
SEED = 20_240_917
VARIANTS = (
    "raptors",
    "raptors-single",
    "raptors-dask",
    "numpy-inline",
    "numpy-to-thread",
    "numpy-anyio-tenant",
    "numpy-def",
    "noop",
)
MAX_BODY = 64 * 1024
_NUMBER_TYPES = frozenset((float, int))


def default_tenant_threads() -> int:
    """The tenant budget's threads: the usable cores minus one for the event
    loop (parsing, routing, encoding every request), at least one."""
    from raptors.fastapi import default_budget_threads

    return default_budget_threads()


def make_matrix(rows: int = ROWS, dim: int = DIM, seed: int = SEED) -> np.ndarray:
    """The embedded corpus: seeded Gaussian rows, L2-normalised, float32, C-contiguous."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((rows, dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return np.ascontiguousarray(m, dtype=np.float32)


def make_queries(n: int, dim: int = DIM, seed: int = SEED + 1) -> np.ndarray:
    """Seeded query vectors (not normalised: the service must normalise)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim), dtype=np.float32) * 3.0).astype(np.float32)


class BadRequest(ValueError):
    """A malformed request; answered with ``status`` (4xx) and the message."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def parse_query(body: bytes, dim: int = DIM) -> np.ndarray:
    """``{"query": [dim finite numbers]}`` -> float32 vector, or ``BadRequest``."""
    if len(body) > MAX_BODY:
        raise BadRequest(f"body larger than {MAX_BODY} bytes", 413)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON", 400) from None
    except RecursionError:
        raise BadRequest("body nests too deeply", 400) from None
    if not isinstance(doc, dict) or "query" not in doc:
        raise BadRequest('body must be an object with a "query" list')
    query = doc["query"]
    if not isinstance(query, list) or len(query) != dim:
        raise BadRequest(f'"query" must be a list of {dim} numbers')
    # Exact types: bool is an int subclass and NumPy would convert "1" and
    # true; the set of types is built in C, cheaper than a per-item check.
    if not _NUMBER_TYPES.issuperset(map(type, query)):
        raise BadRequest(f'"query" must be a list of {dim} numbers')
    try:
        with np.errstate(over="ignore"):
            q = np.array(query, dtype=np.float32)
    except (OverflowError, ValueError):  # ints beyond any float
        raise BadRequest('"query" must hold finite numbers') from None
    if not np.isfinite(q).all():
        raise BadRequest('"query" must hold finite numbers')
    return q


def _header_or_param(request: Any, header: str, param: str) -> str | None:
    value: str | None = request.headers.get(header)
    if value is None:
        value = request.query_params.get(param)
    return value


def parse_priority(request: Any) -> int:
    raw = _header_or_param(request, "x-priority", "priority")
    if raw is None or raw == "":
        return 0
    try:
        prio = int(raw)
    except ValueError:
        raise BadRequest("priority must be an integer", 400) from None
    if not -(2**31) <= prio < 2**31:
        raise BadRequest("priority out of range", 400)
    return prio


def parse_timeout(request: Any, default: float | None) -> float | None:
    """The request's start budget in seconds: ``X-Timeout-Ms`` (milliseconds),
    else ``X-Timeout`` or ``?timeout=`` (seconds), else ``default``."""
    millis = request.headers.get("x-timeout-ms")
    raw = _header_or_param(request, "x-timeout", "timeout") if millis is None else millis
    if raw is None or raw == "":
        return default
    unit = "seconds" if millis is None else "milliseconds"
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"timeout must be a number of {unit}", 400) from None
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"timeout must be a positive number of {unit}", 400)
    return value if millis is None else value / 1e3


def topk_numpy(matrix: np.ndarray, q: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's best calls: one sgemv, argpartition, then sort the k (ties by index)."""
    norm = float(np.linalg.norm(q))
    unit = q / np.float32(norm) if norm > 0.0 else q
    scores = matrix @ unit
    idx = np.argpartition(scores, -k)[-k:]
    top = scores[idx]
    order = np.lexsort((idx, -top))
    return idx[order], top[order]


def make_raptors_batcher(
    matrix: np.ndarray | dict[str, Any],
    k: int = K,
    *,
    max_batch: int = 32,
    max_total_inflight: int | None = None,
) -> Any:
    """Coalesced scoring: one native ``rp.cosine_topk`` job per batch of queries.

    Each tenant's pool has up to its ``threads`` batch jobs in flight; the
    tenant budget shares the CPU between tenants. ``max_total_inflight``
    (default: no limit) caps the batch jobs in flight over every tenant, a
    bound on memory and on how many batches wait in the pools, not the
    CPU-sharing mechanism. ``matrix`` may be a dict whose ``"matrix"`` is
    read at each batch (a Dask scatter handle, known once the app started)."""
    from raptors.fastapi import Batcher

    def gather(queries: list[np.ndarray]) -> tuple[Any, np.ndarray, int]:
        data = matrix["matrix"] if isinstance(matrix, dict) else matrix
        return data, np.stack(queries), k

    def scatter(result: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        ids, scores = result
        return list(zip(ids, scores, strict=True))

    return Batcher(
        rp.cosine_topk,
        gather=gather,
        scatter=scatter,
        max_batch=max_batch,
        max_total_inflight=max_total_inflight,
    )


def encode_answer(ids: Any, scores: Any) -> bytes:
    return json.dumps(
        {"ids": np.asarray(ids).tolist(), "scores": np.asarray(scores).tolist()},
        separators=(",", ":"),
    ).encode()


def create_app(
    variant: str | None = None,
    *,
    matrix: np.ndarray | None = None,
    tenant_threads: int | None = None,
    tenant_queue: int | None = None,
    tenant_nice: int | None = None,
    max_tenants: int | None = None,
    idle_timeout: float | None = None,
    default_timeout: float | None = None,
    tenant_budget: bool | None = None,
    admission: str | None = None,
    dask_address: str | None = None,
) -> Any:
    """Build the demo FastAPI app. Defaults come from ``RAPTORS_VARIANT``,
    ``RAPTORS_TENANT_THREADS`` (default: one less than the usable cores, at
    least 1: the event loop keeps a core, see docs/capacity-planning.md) and
    ``RAPTORS_TENANT_QUEUE`` (default 64), ``RAPTORS_TENANT_NICE`` (default:
    the pool default, 5), ``RAPTORS_TENANT_BUDGET`` (``0``: no shared
    budget; default: one), ``RAPTORS_MAX_TENANTS`` (default 32) and
    ``RAPTORS_TENANT_IDLE_TIMEOUT`` (seconds, default 300: how long an idle
    tenant keeps its pool) and ``RAPTORS_ADMISSION`` (default
    ``predictive``: a request with a timeout that its tenant pool predicts
    it would miss gets a 503 at once; ``bounded``: the queue bound alone).
    The ``raptors-dask`` variant connects to the Dask scheduler at
    ``dask_address`` (default ``RAPTORS_DASK_ADDRESS``) in the lifespan, with
    a ``DaskPool`` whose queue is ``tenant_queue``.

    ``tenant_threads`` is the size of the budget every tenant pool shares
    (each tenant may use all of it; busy tenants share it equally). With
    ``tenant_budget=False`` each tenant pool owns ``tenant_threads`` threads
    instead (the layout before budgets, kept for comparison)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    from raptors.fastapi import Raptors, TenantTemplate

    variant = variant or os.environ.get("RAPTORS_VARIANT", "raptors")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if tenant_threads is None:
        env = os.environ.get("RAPTORS_TENANT_THREADS")
        tenant_threads = int(env) if env else default_tenant_threads()
    if tenant_queue is None:
        tenant_queue = int(os.environ.get("RAPTORS_TENANT_QUEUE", "64"))
    if tenant_budget is None:
        tenant_budget = os.environ.get("RAPTORS_TENANT_BUDGET", "1") != "0"
    if max_tenants is None:
        max_tenants = int(os.environ.get("RAPTORS_MAX_TENANTS", "32"))
    if idle_timeout is None:
        idle_timeout = float(os.environ.get("RAPTORS_TENANT_IDLE_TIMEOUT", "300"))
    if admission is None:
        admission = os.environ.get("RAPTORS_ADMISSION", "predictive")
    if admission not in ("bounded", "predictive"):
        raise ValueError(f"admission must be 'bounded' or 'predictive', not {admission!r}")
    if tenant_nice is None and os.environ.get("RAPTORS_TENANT_NICE"):
        tenant_nice = int(os.environ["RAPTORS_TENANT_NICE"])
    m = make_matrix() if matrix is None else np.ascontiguousarray(matrix, dtype=np.float32)
    dim = m.shape[1]

    rx = Raptors(
        tenants=TenantTemplate(
            budget=tenant_budget,
            budget_threads=tenant_threads if tenant_budget else None,
            threads=None if tenant_budget else tenant_threads,
            queue=tenant_queue,
            nice=tenant_nice,
            max_tenants=max_tenants,
            idle_timeout=idle_timeout,
            overflow="shared",
            admission="bounded" if admission == "bounded" else "predictive",
        ),
        default_timeout=default_timeout,
    )
    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # Recent FastAPI looks up the OpenTelemetry providers on every request
        # (tens of microseconds); this service exports no traces.
        options["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    lifespan = rx.lifespan
    dask_state: dict[str, Any] = {}
    if variant == "raptors-dask":
        address = dask_address or os.environ.get("RAPTORS_DASK_ADDRESS")
        if not address:
            raise ValueError("the raptors-dask variant needs dask_address or RAPTORS_DASK_ADDRESS")
        lifespan = _dask_lifespan(rx, address, tenant_queue, m, dask_state)
    app = FastAPI(title="raptors demo scoring service", lifespan=lifespan, **options)
    app.state.variant = variant
    app.state.matrix = m
    rx.install(app)

    async def bad_request(request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, BadRequest) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    app.add_exception_handler(BadRequest, bad_request)

    async def query(request: Request) -> np.ndarray:
        return parse_query(await request.body(), dim)

    def job_options(request: Request) -> tuple[int, float | None]:
        return parse_priority(request), parse_timeout(request, rx.default_timeout)

    def answer(ids: Any, scores: Any) -> Response:
        return Response(encode_answer(ids, scores), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    if variant == "raptors":
        batcher = rx.batcher("score", make_raptors_batcher(m))
        app.state.batcher = batcher

        @app.post("/score")
        async def score_raptors(
            request: Request,
            q: Annotated[np.ndarray, Depends(query)],
            pool: Annotated[rp.Pool, Depends(rx.tenant_pool)],
        ) -> Response:
            priority, timeout = job_options(request)
            fut = batcher.submit(pool, q, priority=priority, timeout=timeout)
            ids, scores = await rx.wait(request, fut)
            return answer(ids, scores)

    elif variant == "raptors-dask":
        batcher = rx.batcher("score-dask", make_raptors_batcher(dask_state))
        app.state.batcher = batcher

        @app.post("/score")
        async def score_raptors_dask(
            request: Request, q: Annotated[np.ndarray, Depends(query)]
        ) -> Response:
            priority, timeout = job_options(request)
            fut = batcher.submit(dask_state["pool"], q, priority=priority, timeout=timeout)
            ids, scores = await rx.wait(request, fut)
            return answer(ids, scores)

    elif variant == "raptors-single":

        @app.post("/score")
        async def score_raptors_single(
            request: Request,
            q: Annotated[np.ndarray, Depends(query)],
            pool: Annotated[rp.Pool, Depends(rx.tenant_pool)],
        ) -> Response:
            priority, timeout = job_options(request)
            ids, scores = await rx.run(
                request, pool, rp.cosine_topk, m, q, K, priority=priority, timeout=timeout
            )
            return answer(ids, scores)

    elif variant == "numpy-inline":

        @app.post("/score")
        async def score_inline(q: Annotated[np.ndarray, Depends(query)]) -> Response:
            return answer(*topk_numpy(m, q))

    elif variant == "numpy-to-thread":

        @app.post("/score")
        async def score_to_thread(q: Annotated[np.ndarray, Depends(query)]) -> Response:
            return answer(*await asyncio.to_thread(topk_numpy, m, q))

    elif variant == "numpy-anyio-tenant":
        import anyio

        limiters: dict[str, anyio.CapacityLimiter] = {}
        tokens = tenant_threads

        @app.post("/score")
        async def score_anyio(
            request: Request, q: Annotated[np.ndarray, Depends(query)]
        ) -> Response:
            tenant = request.headers.get("X-Tenant", "default")
            limiter = limiters.get(tenant)
            if limiter is None:
                limiter = limiters.setdefault(tenant, anyio.CapacityLimiter(tokens))
            return answer(*await anyio.to_thread.run_sync(topk_numpy, m, q, limiter=limiter))

    elif variant == "numpy-def":

        @app.post("/score")
        def score_def(q: Annotated[np.ndarray, Depends(query)]) -> Response:
            return answer(*topk_numpy(m, q))

    else:
        fixed = encode_answer(np.arange(K), np.zeros(K, dtype=np.float32))

        @app.post("/score")
        async def score_noop(q: Annotated[np.ndarray, Depends(query)]) -> Response:
            return Response(fixed, media_type="application/json")

    return app


def _dask_lifespan(
    rx: Any, address: str, queue: int, matrix: np.ndarray, state: dict[str, Any]
) -> Any:
    """The app's lifespan with a ``DaskPool`` on ``address``: opened (and the
    matrix scattered to every worker) inside ``rx``'s lifespan, its stats
    added to ``/metrics``, closed before ``rx``'s pools."""
    from raptors.dask import DaskPool, DaskPoolCollector

    collector = DaskPoolCollector()
    rx.registry.register(collector)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with rx.lifespan(app):
            pool = await asyncio.to_thread(DaskPool, "score-dask", address=address, queue=queue)
            try:
                state["matrix"] = await asyncio.to_thread(pool.scatter, matrix)
                state["pool"] = collector.add(pool)
                app.state.dask_pool = pool
                yield
            finally:
                await asyncio.to_thread(pool.close)

    return lifespan


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory raptors.service:app_from_env``."""
    return create_app()
