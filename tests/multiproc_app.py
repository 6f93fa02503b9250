"""The app that tests/test_metrics_multiprocess.py serves with ``uvicorn
--workers 2``: one plain pool and tenant pools on a budget, a response header
naming the worker process that answered."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Annotated

import raptors as rp
from fastapi import Depends, FastAPI, Request, Response
from raptors.fastapi import Raptors

rx = Raptors(
    pools=[{"name": "work", "threads": 1, "queue": 64}],
    tenants={"budget_threads": 1, "queue": 16},
    metrics_interval=0.05,
)
app = FastAPI(lifespan=rx.lifespan)
rx.install(app)


@app.middleware("http")
async def worker_pid(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
    response = await call_next(request)
    response.headers["X-Pid"] = str(os.getpid())
    return response


@app.post("/work")
async def work(request: Request, pool: Annotated[rp.Pool, Depends(rx.pool("work"))]) -> dict:
    return {"sum": await rx.run(request, pool, sum, [1, 2])}


@app.post("/tenant")
async def tenant(request: Request, pool: Annotated[rp.Pool, Depends(rx.tenant_pool)]) -> dict:
    return {"sum": await rx.run(request, pool, sum, [3, 4])}
