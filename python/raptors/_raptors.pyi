"""Type stub for the native module ``raptors._raptors`` (bindings/src)."""

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, Literal, Self, TypeAlias, final

import numpy as np
from typing_extensions import disjoint_base

__version__: str
__all__ = [
    "Array",
    "BudgetCore",
    "BudgetStats",
    "CancelToken",
    "DeadlineExceeded",
    "Hub",
    "Job",
    "JobAwait",
    "JobCancelled",
    "Kernel",
    "OversubscriptionWarning",
    "PoolClosed",
    "PoolCore",
    "PoolStats",
    "QueueFull",
    "RaptorsError",
    "_JobBase",
    "__version__",
    "_after_fork_in_child",
    "_interpreter_exiting",
    "_test_panic_kernel",
    "_timeout_seconds",
    "_usable_cores",
    "add",
    "argmax",
    "argmin",
    "clip",
    "cosine_similarity",
    "cosine_topk",
    "divide",
    "dot",
    "matmul",
    "max",
    "mean",
    "min",
    "multiply",
    "norm",
    "scale",
    "subtract",
    "sum",
    "topk",
]

class RaptorsError(Exception): ...

class QueueFull(RaptorsError):
    pool: str
    capacity: int

class PoolClosed(RaptorsError, RuntimeError):
    pool: str

class DeadlineExceeded(RaptorsError, TimeoutError): ...
class JobCancelled(concurrent.futures.CancelledError, asyncio.CancelledError): ...
class OversubscriptionWarning(RuntimeWarning): ...

_JobStatus: TypeAlias = Literal["queued", "running", "done", "failed", "cancelled", "expired"]

@disjoint_base
class _JobBase:
    @property
    def status(self) -> _JobStatus: ...
    @property
    def pool(self) -> str: ...
    @property
    def id(self) -> int: ...
    def done(self) -> bool: ...
    def running(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self, msg: Any | None = None) -> bool: ...
    def result(self, timeout: float | None = None) -> Any: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def add_done_callback(
        self, func: Callable[[Job], object], *, context: Any | None = None
    ) -> None: ...
    def remove_done_callback(self, func: Callable[[Job], object]) -> int: ...
    def set_result(self, *_args: Any) -> None: ...
    def set_exception(self, *_args: Any) -> None: ...
    def set_running_or_notify_cancel(self) -> bool: ...
    def __await__(self) -> Generator[Any, None, Any]: ...
    def asyncio_future(self) -> JobAwait: ...
    def _wait(self, timeout: float | None = None) -> bool: ...

# `_state`, `_condition` and `_waiters` are native properties standing in
# for the attributes `concurrent.futures.Future` declares.
@final
class Job(_JobBase, concurrent.futures.Future[Any]):
    """A submitted job: a concurrent.futures.Future that can be awaited."""

@final
class CancelToken:
    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

@final
class PoolStats:
    name: str
    threads: int
    queue_capacity: int
    queued: int
    running: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    expired: int
    rejected: int
    max_queued: int
    wait_p50: float
    wait_p99: float
    run_p50: float
    run_p99: float
    utilization: float
    def to_dict(self) -> dict[str, Any]: ...

@disjoint_base
class PoolCore:
    def __new__(
        cls,
        name: str,
        threads: int | None = None,
        queue: int | None = None,
        *,
        nice: int | None = None,
        budget: BudgetCore | None = None,
        weight: float | None = None,
    ) -> Self: ...
    @property
    def nice(self) -> int: ...
    @property
    def _has_own_threads(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def queue_capacity(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def submit(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        priority: int | None = None,
        token: CancelToken | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Job: ...
    def stats(self) -> PoolStats: ...
    def _close(self, cancel_pending: bool = False) -> None: ...
    def _join(self, timeout: float | None = None) -> bool: ...
    def _is_worker_thread(self) -> bool: ...
    def _has_room(self) -> bool: ...

@final
class BudgetStats:
    name: str
    threads: int
    running: int
    utilization: float
    @property
    def shares(self) -> dict[str, float]: ...
    def to_dict(self) -> dict[str, Any]: ...

@disjoint_base
class BudgetCore:
    def __new__(cls, name: str, threads: int | None = None, *, nice: int | None = None) -> Self: ...
    @property
    def name(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def nice(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def stats(self) -> BudgetStats: ...
    def _close(self, cancel_pending: bool = False) -> None: ...
    def _join(self, timeout: float | None = None) -> bool: ...
    def _is_worker_thread(self) -> bool: ...

_ArrayLike: TypeAlias = Any

@final
class Array:
    def __new__(cls, obj: _ArrayLike, dtype: Any = None) -> Self: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    def __len__(self) -> int: ...
    def numpy(self) -> np.ndarray: ...
    def tolist(self) -> Any: ...
    def __matmul__(self, other: _ArrayLike, /) -> Any: ...
    def __rmatmul__(self, other: _ArrayLike, /) -> Any: ...
    def dot(self, other: _ArrayLike) -> Any: ...
    def sum(
        self,
        axis: int | None = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **numpy_only: Any,
    ) -> Any: ...
    def mean(
        self,
        axis: int | None = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **numpy_only: Any,
    ) -> Any: ...
    def min(
        self,
        axis: int | None = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **numpy_only: Any,
    ) -> Any: ...
    def max(
        self,
        axis: int | None = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **numpy_only: Any,
    ) -> Any: ...
    def dot_async(self, other: _ArrayLike, pool: Any = None, priority: int = 0) -> Job: ...
    def matmul_async(self, other: _ArrayLike, pool: Any = None, priority: int = 0) -> Job: ...
    def sum_async(self, axis: int | None = None, pool: Any = None, priority: int = 0) -> Job: ...
    def mean_async(self, axis: int | None = None, pool: Any = None, priority: int = 0) -> Job: ...

@final
class Kernel:
    """A native kernel: call it directly, or pass it to ``submit``."""

    @property
    def __name__(self) -> str: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

dot: Kernel
matmul: Kernel
sum: Kernel
mean: Kernel
min: Kernel
max: Kernel
argmin: Kernel
argmax: Kernel
norm: Kernel
add: Kernel
subtract: Kernel
multiply: Kernel
divide: Kernel
scale: Kernel
clip: Kernel
cosine_similarity: Kernel
topk: Kernel
cosine_topk: Kernel
_test_panic_kernel: Kernel

def _interpreter_exiting() -> None: ...
def _after_fork_in_child() -> None: ...
def _timeout_seconds(value: object, name: str = "timeout") -> float | None: ...
def _usable_cores() -> int: ...

@final
class JobAwait:
    """One ``await job``: the iterator the coroutine drives and the future
    the awaiting Task waits on."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> JobAwait: ...
    @property
    def _asyncio_future_blocking(self) -> bool: ...
    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value: bool) -> None: ...
    def get_loop(self) -> asyncio.AbstractEventLoop: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> Any: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(
        self, func: Callable[[JobAwait], object], *, context: Any | None = None
    ) -> None: ...
    def remove_done_callback(self, func: Callable[[JobAwait], object]) -> int: ...
    def cancel(self, msg: Any | None = None) -> bool: ...
    @property
    def _cancel_message(self) -> Any | None: ...
    def _make_cancelled_error(self) -> asyncio.CancelledError: ...

@final
class Hub:
    """Drains a loop's queued job deliveries (registered with ``loop.add_reader``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None: ...
