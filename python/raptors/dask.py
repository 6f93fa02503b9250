"""`raptors.dask.DaskPool`: Raptors pools and jobs on a Dask distributed cluster.

    from raptors.dask import DaskPool
    pool = DaskPool("batch", address="tcp://scheduler:8786", queue=1024)
    ids, scores = await pool.submit(rp.cosine_topk, matrix, queries, 10, priority=5)

Every job is one Dask task. On each worker a worker plugin
(`RaptorsWorkerPlugin`, registered by the pool) runs one ``rp.Pool`` with
the worker's ``nthreads``; the task hands its function to that pool, so
kernels run natively with the GIL released and observe a worker-local
``rp.CancelToken``.

Invariants (the client keeps them under one lock, ``DaskPool._lock``):

- a job has exactly one terminal state; the first transition to one wins and
  every later report (a late start event, a result of a job already
  cancelled or expired) is dropped;
- ``queued`` counts jobs submitted and not yet reported started by a worker;
  ``submit`` raises ``rp.QueueFull`` when it has reached ``queue``;
- ``submitted == queued + running + completed + failed + cancelled + expired``
  at every ``stats()`` snapshot.

A worker reports a start with a Dask event (``log_event``) that the client
subscribes to, once the job has run ``_START_REPORT_DELAY`` (a shorter job's
result is its report); a job is "running" from that report on (a result
that overtakes it counts as one). ``cancel()`` answers True while no start
was reported and then cancels the Dask task; should the worker have started
it meanwhile, its result is dropped and its token tripped, so the job still
ends "cancelled" and only that one outcome is seen. A job Dask retries after
its worker died stays "running", counted once; past ``allowed-failures`` it
fails with ``distributed.KilledWorker``. Token cancellation and deadlines are
watched by one client thread.

Jobs are Dask *data-producer* tasks, so a scheduler with queuing on holds
those no worker thread is free for and starts them in priority order.
Results are gathered, and jobs ended, on the client's event loop; done
callbacks run on the pool's finisher thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

import distributed
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.threadpoolexecutor import thread_state

from . import _pool, _raptors
from ._raptors import CancelToken, DeadlineExceeded, JobCancelled, Kernel, PoolClosed, QueueFull

__all__ = [
    "DaskJob",
    "DaskPool",
    "DaskPoolCollector",
    "DaskPoolStats",
    "RaptorsWorkerPlugin",
    "Scattered",
    "local_cluster",
]

JobStatus = Literal["queued", "running", "done", "failed", "cancelled", "expired"]
_TERMINAL = frozenset({"done", "failed", "cancelled", "expired"})
# How often the watcher thread looks at the tokens of unfinished jobs:
# CancelToken has no callback, and 2 ms keeps cancel-to-stop well below 50 ms.
_TOKEN_POLL_SECONDS = 0.002
# How often the pool asks the scheduler for the cluster's threads.
_THREADS_REFRESH_SECONDS = 1.0
# Recent jobs kept for the wait and run percentiles.
_RECENT = 1024
_PLUGIN_NAME = "raptors"
# A worker reports a job's start only once it has run this long: a shorter
# job's result is its start report, and one message fewer on the worker's and
# the scheduler's batched streams saves their batching interval (2 ms each)
# on every short job's round trip.
_START_REPORT_DELAY = 0.002
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- worker side


class RaptorsWorkerPlugin(WorkerPlugin):
    """Runs one ``rp.Pool`` per Dask worker, with the worker's ``nthreads``,
    and keeps a worker-local ``CancelToken`` per running job."""

    name = _PLUGIN_NAME

    pool: _pool.Pool | None = None

    def setup(self, worker: distributed.Worker) -> None:
        # Built here, in the worker process: the plugin itself is pickled there.
        self.tokens: dict[str, CancelToken] = {}
        # Jobs whose cancel arrived before they started here (bounded: old
        # entries belong to jobs long gone).
        self.cancelled: deque[str] = deque(maxlen=4096)
        self.lock = threading.Lock()
        self.pool = _pool.Pool(
            f"dask-worker-{uuid.uuid4().hex[:8]}", threads=max(1, worker.state.nthreads)
        )

    def teardown(self, worker: distributed.Worker) -> None:
        if self.pool is not None:
            self.pool.close(wait=False, cancel_pending=True)

    def trip(self, job_ids: Iterable[str]) -> None:
        with self.lock:
            for job_id in job_ids:
                token = self.tokens.get(job_id)
                if token is None:
                    self.cancelled.append(job_id)
                else:
                    token.cancel()


async def _trip_on_worker(job_ids: list[str], dask_worker: distributed.Worker) -> None:
    """Run by ``client.run`` on a worker's event loop (a coroutine, so the
    client need not wait for it): trips the tokens of ``job_ids``."""
    plugin = dask_worker.plugins[_PLUGIN_NAME]
    assert isinstance(plugin, RaptorsWorkerPlugin)
    plugin.trip(job_ids)


def _with_task_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run on a Raptors thread with the Dask task's thread-local
    context, so ``distributed.get_worker()`` / ``get_client()`` (and the
    Events, Queues and Locks built on them) work inside a job as in a task."""
    task_vars = contextvars.copy_context()  # distributed keeps the worker here
    thread_locals = dict(vars(thread_state))

    def in_task_context(*args: Any, **kwargs: Any) -> Any:
        vars(thread_state).update(thread_locals)
        try:
            return task_vars.run(fn, *args, **kwargs)
        finally:
            vars(thread_state).clear()

    return in_task_context


@dataclass(frozen=True)
class _KernelByName:
    """A Raptors kernel as sent to a worker: native kernels do not pickle,
    and every worker has the same kernels under the same names."""

    name: str


def _run_job(
    job_id: str,
    topic: str,
    deadline: float | None,
    fn: Callable[..., Any] | _KernelByName,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[str, Any]:
    """The Dask task of one job: ``(outcome, value)`` with outcome "done",
    "cancelled" or "expired"; an exception of ``fn`` propagates unchanged.
    ``deadline`` is wall-clock (``time.time()``) so it means the same on
    every machine with a synchronised clock."""
    worker = distributed.get_worker()
    plugin = worker.plugins[_PLUGIN_NAME]
    assert isinstance(plugin, RaptorsWorkerPlugin) and plugin.pool is not None
    if deadline is not None and time.time() > deadline:
        return ("expired", None)
    if isinstance(fn, _KernelByName):
        fn = getattr(_raptors, fn.name)
        assert isinstance(fn, Kernel)
    else:
        fn = _with_task_context(fn)
    token = CancelToken()
    with plugin.lock:
        if job_id in plugin.cancelled:
            return ("cancelled", None)
        plugin.tokens[job_id] = token
    try:
        started = time.monotonic()
        job = plugin.pool.submit(fn, *args, token=token, **kwargs)
        try:
            if not job._wait(_START_REPORT_DELAY):
                # Still running: report the start (with the time it has run).
                elapsed = time.monotonic() - started
                worker.log_event(topic, ("start", job_id, worker.address, elapsed))
            return ("done", job.result())
        except JobCancelled:
            return ("cancelled", None)
    finally:
        with plugin.lock:
            del plugin.tokens[job_id]


# ---------------------------------------------------------------- client side


@dataclass(frozen=True)
class DaskPoolStats:
    """A consistent snapshot of a `DaskPool`, with `rp.PoolStats`' names.

    ``threads`` is the cluster's worker threads (as of the last look, every second);
    ``utilization`` is busy job time / (threads x elapsed) since the pool
    started."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scattered:
    """A handle to an input sent to every worker once (``DaskPool.scatter``);
    ``submit`` accepts it in place of the object."""

    def __init__(self, future: distributed.Future[Any]) -> None:
        self.future = future

    def __repr__(self) -> str:
        return f"<raptors.dask.Scattered {self.future.key!r}>"


class DaskJob(concurrent.futures.Future[Any]):
    """A job of a `DaskPool`: a ``concurrent.futures.Future`` that can be
    awaited, with `rp.Job`'s ``status`` and cancellation rules."""

    def __init__(self, pool: DaskPool, job_id: str, token: CancelToken | None) -> None:
        super().__init__()
        self._pool = pool
        self.id = job_id
        self.token = token
        self._status: JobStatus = "queued"
        self._dask_future: distributed.Future[Any] | None = None
        self._worker: str | None = None
        self._submitted_at = time.monotonic()
        self._started_at: float | None = None
        self._tripped = False  # its token was tripped on its worker
        # Futures of ``asyncio_future()`` calls, resolved by ``_finish``.
        self._asyncio: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []

    @property
    def pool(self) -> str:
        return self._pool.name

    @property
    def status(self) -> JobStatus:
        return self._status

    def running(self) -> bool:
        return self._status == "running"

    def cancel(self, msg: Any | None = None) -> bool:
        """True when the job had not started (it will never run) or was
        already cancelled; False when it runs or ended otherwise."""
        return self._pool._cancel_job(self)

    def asyncio_future(self) -> asyncio.Future[Any]:
        """An asyncio future of this job on the running loop, resolved on that
        loop when the job ends (as ``rp.Job.asyncio_future``). Cancelling it
        cancels the job: a queued job is dropped, a running one runs on
        (``cancel()`` is False) while the awaiting task gets CancelledError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(self._on_asyncio_done)
        with self._pool._lock:  # the lock every end of a job holds
            if not self.done():
                self._asyncio.append((loop, future))
                return future
        _copy_outcome(self, future)
        return future

    def _on_asyncio_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.asyncio_future().__await__()

    def _invoke_callbacks(self) -> None:
        # Done callbacks run on the pool's finisher thread, never on the
        # thread that ended the job (often the client's event loop, which
        # must not block: it delivers every other job and Dask's messages).
        # (CPython's Future keeps them in _done_callbacks, unknown to typeshed.)
        if self._done_callbacks:  # type: ignore[attr-defined]
            try:
                self._pool._finisher.submit(super()._invoke_callbacks)  # type: ignore[misc]
            except RuntimeError:  # the pool closed its finisher: run them here
                super()._invoke_callbacks()  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<raptors.dask.DaskJob {self.id} pool={self.pool!r} {self._status}>"


class DaskPool(concurrent.futures.Executor):
    """A pool whose jobs run on a Dask distributed cluster (see the module doc).

    ``client``: an existing ``distributed.Client`` (left open by ``close``);
    else ``address``: a scheduler address, for which the pool opens (and
    closes) its own client. At most ``queue`` jobs wait for a worker."""

    def __init__(
        self,
        name: str,
        client: distributed.Client | None = None,
        *,
        address: str | None = None,
        queue: int = 1024,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must be a non-empty str")
        if isinstance(queue, bool) or not isinstance(queue, int):
            raise TypeError(f"queue must be an int, not {type(queue).__name__}")
        if queue < 1:
            raise ValueError(f"queue must be >= 1, got {queue}")
        if client is not None and address is not None:
            raise ValueError("give client or address, not both")
        if client is None and address is None:
            raise ValueError("a DaskPool needs a client or an address")
        self.name = name
        self.queue_capacity = queue
        self._owns_client = client is None
        self.client: distributed.Client = (
            client if client is not None else distributed.Client(address)
        )
        self._lock = threading.Condition()
        self._jobs: dict[str, DaskJob] = {}
        self._closed = False
        self._counts = dict.fromkeys(
            ("submitted", "queued", "running", "completed", "failed", "cancelled", "expired"), 0
        )
        self._rejected = 0
        self._max_queued = 0
        self._waits: deque[float] = deque(maxlen=_RECENT)
        self._runs: deque[float] = deque(maxlen=_RECENT)
        self._busy = 0.0
        self._started = time.monotonic()
        self._ids = itertools.count()
        self._topic = f"raptors-{name}-{uuid.uuid4().hex[:8]}"
        self._deadlines: list[tuple[float, int, DaskJob]] = []
        self._finisher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"raptors-dask-{name}-done"
        )
        self._watcher = threading.Thread(
            target=self._watch, name=f"raptors-dask-{name}", daemon=True
        )
        self._threads = 0
        self._threads_due = 0.0
        self.client.register_plugin(RaptorsWorkerPlugin())
        self._refresh_threads()
        self.client.subscribe_topic(self._topic, self._on_event)
        self._watcher.start()

    # ------------------------------------------------------------ submit

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        timeout: float | None = None,
        token: CancelToken | None = None,
        **kwargs: Any,
    ) -> DaskJob:
        """Sends ``fn(*args, **kwargs)`` to the cluster; never blocks. Raises
        ``rp.QueueFull`` when ``queue`` jobs wait, ``rp.PoolClosed`` after close."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if token is not None and not isinstance(token, CancelToken):
            raise TypeError(f"token must be an rp.CancelToken, not {type(token).__name__}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout}")
        with self._lock:
            if self._closed:
                error = PoolClosed(f"pool {self.name!r} is closed")
                error.pool = self.name
                raise error
            if self._counts["queued"] >= self.queue_capacity:
                self._rejected += 1
                full = QueueFull(
                    f"pool {self.name!r}: {self.queue_capacity} jobs already wait for a worker"
                )
                full.pool = self.name
                full.capacity = self.queue_capacity
                raise full
            job = DaskJob(self, f"{self._topic}-{next(self._ids)}", token)
            self._counts["submitted"] += 1
            self._counts["queued"] += 1
            self._max_queued = max(self._max_queued, self._counts["queued"])
            if token is not None and token.cancelled:
                self._finish(job, "cancelled")
                return job
            self._jobs[job.id] = job
            deadline = None
            if timeout is not None:
                deadline = time.time() + timeout
                heapq.heappush(self._deadlines, (time.monotonic() + timeout, next(self._ids), job))
            if token is not None or timeout is not None:
                self._lock.notify_all()
        future = self._send(
            job.id,
            priority,
            (
                job.id,
                self._topic,
                deadline,
                _KernelByName(fn.__name__) if isinstance(fn, Kernel) else fn,
                tuple(_unwrap(arg) for arg in args),
                {key: _unwrap(value) for key, value in kwargs.items()},
            ),
        )
        with self._lock:
            job._dask_future = future
            if job._status in _TERMINAL:
                # Cancelled or expired before the task existed.
                future.cancel()
                return job
        # The result is gathered on the client's event loop as soon as the
        # task ends (one hop fewer than a done callback that calls result()).
        loop = self.client.loop
        assert loop is not None, "an open Client has a loop"
        loop.add_callback(self._collect, job, future)
        return job

    def _send(self, key: str, priority: int, args: tuple[Any, ...]) -> distributed.Future[Any]:
        """One Dask task of ``_run_job(*args)``, marked a *data producer*:
        the scheduler then treats every job as root-ish whatever the size of
        its task group, so with queuing on (``worker-saturation`` finite) it
        holds the jobs no worker thread is free for and hands them out in
        priority order as threads free up. Without the marking a small group
        goes to the workers at once and a later high priority waits behind
        it. Built like ``Client.submit`` builds its task, with the marking;
        dask versions without it get ``Client.submit``."""
        if _Task is not None and _LLGExpr is not None:
            task = _Task(key, _run_job, *map(_parse_input, args), _data_producer=True)
            expr = _LLGExpr({key: task}, _determ_token=uuid.uuid4().hex)
            future = self.client.get(expr, key, sync=False, priority=priority, fifo_timeout="100ms")
            assert isinstance(future, distributed.Future)
            return future
        return self.client.submit(_run_job, *args, key=key, priority=priority, pure=False)

    def scatter(self, obj: Any) -> Scattered:
        """Sends ``obj`` to every worker once; the handle stands for it in ``submit``."""
        future = self.client.scatter(obj, broadcast=True, hash=False)
        assert isinstance(future, distributed.Future)
        return Scattered(future)

    # ------------------------------------------------------------ Executor

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """`Executor.map`: blocks while the queue is full instead of raising
        ``QueueFull`` part-way; a timeout cancels the jobs not yet returned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        jobs: list[DaskJob] = []
        for args in zip(*iterables):
            while True:
                try:
                    jobs.append(self.submit(fn, *args))
                    break
                except QueueFull:
                    oldest = next((job for job in jobs if not job.done()), None)
                    if oldest is None:
                        with self._lock:
                            self._lock.wait(0.01)
                    else:
                        concurrent.futures.wait([oldest], timeout=0.05)

        def results() -> Iterator[Any]:
            try:
                jobs.reverse()
                while jobs:
                    job = jobs.pop()
                    try:
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        yield job.result(left)
                    finally:
                        job.cancel()
            finally:
                for job in jobs:
                    job.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.close(wait=wait, cancel_pending=cancel_futures)

    def close(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stops accepting jobs; queued jobs still run unless ``cancel_pending``;
        with ``wait``, returns once every job has ended."""
        with self._lock:
            first = not self._closed
            self._closed = True
            self._lock.notify_all()
            pending = [job for job in self._jobs.values() if job._status == "queued"]
        if cancel_pending:
            for job in pending:
                job.cancel()
        if wait:
            with self._lock:
                while self._jobs:
                    self._lock.wait(0.1)
        if first:
            if wait:
                self._finisher.shutdown(wait=False)
            self.client.unsubscribe_topic(self._topic)
            if self._owns_client:
                self.client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------ stats

    @property
    def threads(self) -> int:
        """The cluster's worker threads, as of the last look (every second):
        what a `Batcher` sizes its batch jobs in flight by."""
        return self._threads

    def stats(self) -> DaskPoolStats:
        """A snapshot; ``threads`` is the cluster's worker threads as of the
        last look (every second), so stats never wait for the scheduler."""
        threads = self._threads
        with self._lock:
            waits = sorted(self._waits)
            runs = sorted(self._runs)
            elapsed = time.monotonic() - self._started
            busy = self._busy + sum(
                time.monotonic() - job._started_at
                for job in self._jobs.values()
                if job._status == "running" and job._started_at is not None
            )
            return DaskPoolStats(
                name=self.name,
                threads=threads,
                queue_capacity=self.queue_capacity,
                rejected=self._rejected,
                max_queued=self._max_queued,
                wait_p50=_percentile(waits, 0.50),
                wait_p99=_percentile(waits, 0.99),
                run_p50=_percentile(runs, 0.50),
                run_p99=_percentile(runs, 0.99),
                utilization=min(1.0, busy / (threads * elapsed)) if threads and elapsed else 0.0,
                **self._counts,
            )

    # ------------------------------------------------------------ transitions

    def _finish(self, job: DaskJob, status: JobStatus, value: Any = None) -> bool:
        """Moves ``job`` to a terminal state (under ``_lock``); False if it had one."""
        if job._status in _TERMINAL:
            return False
        now = time.monotonic()
        self._counts[job._status] -= 1
        if job._started_at is not None:
            self._runs.append(now - job._started_at)
            self._busy += now - job._started_at
        job._status = status
        self._counts[{"done": "completed"}.get(status, status)] += 1
        self._jobs.pop(job.id, None)
        self._lock.notify_all()
        # The Future's own state (its done callbacks go to the finisher
        # thread, see DaskJob._invoke_callbacks) and its asyncio futures.
        if status == "done":
            job.set_result(value)
        elif status == "failed":
            job.set_exception(value)
        elif status == "expired":
            job.set_exception(DeadlineExceeded(f"job {job.id} did not start within its timeout"))
        else:
            concurrent.futures.Future.cancel(job)
        waiters, job._asyncio = job._asyncio, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_copy_outcome, job, future)
        return True

    def _cancel_job(self, job: DaskJob) -> bool:
        with self._lock:
            if job._status == "cancelled":
                return True
            if job._status != "queued":
                return False
            self._finish(job, "cancelled")
            future = job._dask_future
        if future is not None:
            future.cancel()
        # Should a worker have started it this instant, its token stops the kernel.
        self._trip([job])
        return True

    def _on_event(self, event: tuple[float, Any]) -> None:
        """A worker's start report (runs on the client's event loop)."""
        kind, job_id, worker, elapsed = event[1]
        with self._lock:
            job = self._jobs.get(job_id)
            if kind != "start" or job is None or job._status in _TERMINAL:
                return
            if job._status == "running":
                # Dask retried the job on another worker (its first worker
                # died): it stays running, counted once; a token already
                # tripped must reach the new worker too.
                job._worker = worker
                tripped = job._tripped
            else:
                job._status = "running"
                job._worker = worker
                job._started_at = max(job._submitted_at, time.monotonic() - elapsed)
                self._waits.append(job._started_at - job._submitted_at)
                self._counts["queued"] -= 1
                self._counts["running"] += 1
                self._lock.notify_all()
                tripped = job.token is not None and job.token.cancelled
        if tripped:
            self._trip([job])

    async def _collect(self, job: DaskJob, future: distributed.Future[Any]) -> None:
        """Awaits the Dask task's end on the client's loop and ends the job
        there (one thread hop fewer than ending it on another thread)."""
        status: JobStatus
        try:
            outcome, value = await future._result()
            status = "done" if outcome == "done" else outcome
        except concurrent.futures.CancelledError:
            status, value = "cancelled", None
        except BaseException as error:  # noqa: BLE001 (the job's own exception, passed on)
            status, value = "failed", error
        # Ended here, on the loop: waiters in result() and asyncio futures
        # are woken from here, done callbacks on the finisher thread. No other
        # thread holds the job afterwards, so its Dask result is released
        # when the caller drops the job, as a Dask future's would be: after a
        # result() that is before the caller's next submit, in the same
        # client batch (ended on another thread, the job could outlive the
        # next submit, whose batch the release then delayed by 10 ms).
        self._on_task_end(job, status, value)

    def _on_task_end(self, job: DaskJob, status: JobStatus, value: Any) -> None:
        with self._lock:
            if job._status == "queued" and status in ("done", "failed"):
                # The result overtook the start report: it did run.
                job._started_at = job._submitted_at
            self._finish(job, status, value)

    def _trip(self, jobs: list[DaskJob]) -> None:
        """Trips the worker-local tokens of ``jobs`` (those a worker started)."""
        by_worker: dict[str | None, list[str]] = {}
        for job in jobs:
            job._tripped = True
            by_worker.setdefault(job._worker, []).append(job.id)
        for worker, ids in by_worker.items():
            if self.client.status not in ("running", "connecting"):
                return
            try:
                self.client.run(
                    _trip_on_worker, ids, workers=None if worker is None else [worker], wait=False
                )
            except Exception:  # noqa: BLE001 (logged with its traceback)
                # The job then runs to its end and reports that; say why.
                _log.exception("pool %r: could not trip the tokens of %s", self.name, ids)

    def _watch(self) -> None:
        """Cancels jobs whose token was cancelled and expires jobs not started
        by their deadline."""
        while True:
            to_trip: list[DaskJob] = []
            to_cancel: list[DaskJob] = []
            if time.monotonic() >= self._threads_due:
                self._refresh_threads()
            with self._lock:
                if self._closed and not self._jobs:
                    return
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, job = heapq.heappop(self._deadlines)
                    if job._status == "queued" and self._finish(job, "expired"):
                        to_cancel.append(job)
                tokened = False
                for job in list(self._jobs.values()):
                    if job.token is None:
                        continue
                    tokened = True
                    if not job.token.cancelled:
                        continue
                    if job._status == "queued":
                        self._finish(job, "cancelled")
                        to_cancel.append(job)
                    elif job._status == "running" and job not in to_trip:
                        to_trip.append(job)
                        job.token = None  # tripped once is enough
                if not to_trip and not to_cancel:
                    wait = None if not tokened else _TOKEN_POLL_SECONDS
                    if self._deadlines:
                        until = self._deadlines[0][0] - now
                        wait = until if wait is None else min(wait, until)
                    refresh = max(0.0, self._threads_due - now)
                    self._lock.wait(refresh if wait is None else min(wait, refresh))
                    continue
            for job in to_cancel:
                if job._dask_future is not None:
                    job._dask_future.cancel()
            if to_trip:
                self._trip(to_trip)

    def _refresh_threads(self) -> None:
        """``threads`` from the scheduler (kept when it cannot be asked)."""
        self._threads_due = time.monotonic() + _THREADS_REFRESH_SECONDS
        if self.client.status not in ("running", "connecting"):
            return
        try:
            self._threads = sum(self.client.nthreads().values())
        except Exception:  # noqa: BLE001 (a closing client: keep the last figure)
            _log.debug("pool %r: could not refresh the cluster's threads", self.name)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<raptors.dask.DaskPool {self.name!r} queue={self.queue_capacity} {state}>"


# ---------------------------------------------------------------- Prometheus

_DASK_GAUGES = (
    ("queued", "Jobs submitted and not yet started on a worker (the backlog)."),
    ("running", "Jobs running on the workers now."),
    ("threads", "Worker threads of the cluster (as of the pool's last look)."),
    ("queue_capacity", "Bound on queued jobs (QueueFull beyond)."),
    ("max_queued", "Highest backlog seen."),
    ("utilization", "Busy job time / (threads x elapsed) since the pool started."),
    (
        "saturation",
        (
            "(queued + running) / threads: worker threads the pool's jobs could use now "
            "per thread there is (above 1: add workers; +Inf with work and no worker)."
        ),
    ),
)
_DASK_COUNTERS = (
    ("submitted", "Jobs accepted."),
    ("completed", "Jobs that finished successfully."),
    ("failed", "Jobs that raised (a worker's death past allowed-failures included)."),
    ("cancelled", "Jobs cancelled."),
    ("expired", "Jobs whose start deadline passed."),
    ("rejected", "Submits refused with QueueFull."),
)


@contextlib.contextmanager
def local_cluster(
    n_workers: int = 2, threads_per_worker: int = 1, **config: Any
) -> Iterator[distributed.LocalCluster]:
    """A ``LocalCluster`` of worker processes on this machine, set up as
    DaskPool wants it: ``worker-saturation`` 1.0 (the scheduler holds what no
    thread is free for, so priorities order every waiting job), no
    dashboards. ``config``: more ``distributed.scheduler.*`` settings, by
    their last name with ``_`` for ``-`` (``allowed_failures=1``)."""
    import dask

    settings = {"distributed.scheduler.worker-saturation": 1.0}
    settings |= {f"distributed.scheduler.{k.replace('_', '-')}": v for k, v in config.items()}
    with (
        dask.config.set(settings),
        distributed.LocalCluster(
            processes=True,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
    ):
        yield cluster


def _saturation(st: DaskPoolStats) -> float:
    demand = st.queued + st.running
    if st.threads:
        return demand / st.threads
    return float("inf") if demand else 0.0


class DaskPoolCollector:
    """A ``prometheus_client`` collector of `DaskPool` stats, read at scrape
    time (``registry.register(DaskPoolCollector(pool))``; ``add`` more
    pools later). Families, labelled ``pool``: gauges
    ``raptors_dask_pool_{queued,running,threads,queue_capacity,max_queued,
    utilization,saturation}``, counters ``raptors_dask_jobs_{submitted,
    completed,failed,cancelled,expired,rejected}_total`` and
    ``raptors_dask_job_{wait,run}_seconds{quantile="0.5"|"0.99"}``.
    ``saturation`` and ``queued`` are the autoscaling signals
    (docs/scale-out.md). Needs ``prometheus_client`` (the fastapi extra)."""

    def __init__(self, *pools: DaskPool) -> None:
        self.pools = list(pools)

    def add(self, pool: DaskPool) -> DaskPool:
        self.pools.append(pool)
        return pool

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = [pool.stats() for pool in self.pools]
        for field, doc in _DASK_GAUGES:
            gauge = GaugeMetricFamily(f"raptors_dask_pool_{field}", doc, labels=["pool"])
            for st in snapshots:
                value = _saturation(st) if field == "saturation" else getattr(st, field)
                gauge.add_metric([st.name], float(value))
            yield gauge
        for field, doc in _DASK_COUNTERS:
            counter = CounterMetricFamily(f"raptors_dask_jobs_{field}", doc, labels=["pool"])
            for st in snapshots:
                counter.add_metric([st.name], float(getattr(st, field)))
            yield counter
        for kind, doc in (("wait", "Seconds from submit to start"), ("run", "Seconds run")):
            gauge = GaugeMetricFamily(
                f"raptors_dask_job_{kind}_seconds",
                f"{doc}, recent jobs, by quantile.",
                labels=["pool", "quantile"],
            )
            for st in snapshots:
                gauge.add_metric([st.name, "0.5"], float(getattr(st, f"{kind}_p50")))
                gauge.add_metric([st.name, "0.99"], float(getattr(st, f"{kind}_p99")))
            yield gauge


def _producer_task_api() -> tuple[Any, Any, Any]:
    """dask's ``Task`` (when it takes ``_data_producer``), ``LLGExpr`` and
    ``parse_input``; Nones when this dask lacks them."""
    try:
        from dask._expr import LLGExpr
        from dask._task_spec import Task, parse_input

        Task("probe", abs, 1, _data_producer=True)
    except (ImportError, TypeError):
        return None, None, None
    return Task, LLGExpr, parse_input


_Task, _LLGExpr, _parse_input = _producer_task_api()


def _copy_outcome(job: DaskJob, future: asyncio.Future[Any]) -> None:
    """``job``'s outcome into ``future`` (on the future's loop)."""
    if future.done():
        return
    if job.cancelled():
        future.cancel()
    elif (error := job.exception(0)) is not None:
        future.set_exception(error)
    else:
        future.set_result(job.result(0))


def _unwrap(value: Any) -> Any:
    return value.future if isinstance(value, Scattered) else value


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
