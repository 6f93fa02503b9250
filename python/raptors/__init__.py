"""Raptors: bounded, prioritised, observable native compute pools for async
Python services.

    import raptors as rp
    pool = rp.Pool("scoring", threads=4, queue=64)
    scores = await pool.submit(rp.cosine_similarity, matrix, q, priority=5)
    pool.stats()

See docs/guide.md for pools, priorities, cancellation, deadlines and stats.
"""

from __future__ import annotations

from ._array import arange, array, asarray, ones, zeros
from ._budget import Budget, budgets, get_budget
from ._capacity import CapacityReport, capacity
from ._pool import Pool, default_pool, get_pool, pools, stats, submit
from ._raptors import (
    Array,
    BudgetStats,
    CancelToken,
    DeadlineExceeded,
    Job,
    JobCancelled,
    Kernel,
    OversubscriptionWarning,
    PoolClosed,
    PoolStats,
    QueueFull,
    RaptorsError,
    WouldMissDeadline,
    __version__,
    add,
    argmax,
    argmin,
    clip,
    cosine_similarity,
    cosine_topk,
    divide,
    dot,
    matmul,
    max,
    mean,
    min,
    multiply,
    norm,
    scale,
    subtract,
    sum,
    topk,
)

__all__ = [
    "Array",
    "Budget",
    "BudgetStats",
    "CancelToken",
    "CapacityReport",
    "DeadlineExceeded",
    "Job",
    "JobCancelled",
    "Kernel",
    "OversubscriptionWarning",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "QueueFull",
    "RaptorsError",
    "WouldMissDeadline",
    "__version__",
    "add",
    "arange",
    "argmax",
    "argmin",
    "array",
    "asarray",
    "budgets",
    "capacity",
    "clip",
    "cosine_similarity",
    "cosine_topk",
    "default_pool",
    "divide",
    "dot",
    "get_budget",
    "get_pool",
    "matmul",
    "max",
    "mean",
    "min",
    "multiply",
    "norm",
    "ones",
    "pools",
    "scale",
    "stats",
    "submit",
    "subtract",
    "sum",
    "topk",
    "zeros",
]
