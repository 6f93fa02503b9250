"""The live dashboard's feed: one producer of ``/stats`` snapshots shared by
every ``GET /stats/stream`` subscriber, and the page itself.

Invariants kept here:

* One snapshot per tick, however many subscribers: the producer builds and
  encodes the ``/stats`` body once, as one server-sent event, and every
  subscriber sends those same bytes (a page costs one socket write a tick).
* The producer task runs only while someone subscribes: the first
  subscriber starts it, the last one to leave cancels and awaits it, so an
  idle app runs no task and a closed one leaks none.
* ``close()`` (the integration's lifespan exit) and a uvicorn server that
  was told to exit end every stream cleanly: the subscribers' generators
  return, their responses complete, and the server can drain its
  connections (uvicorn waits for open responses before the lifespan exit).
* A subscriber that does not keep up skips ticks rather than queueing them:
  it always sends the latest snapshot, so a slow page costs no memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["StatsBroadcaster", "dashboard_html"]

# Sent before the first snapshot: EventSource reconnects after this many
# milliseconds if the stream drops (a restart of the service, say).
_RETRY_MS = 2000

logger = logging.getLogger("raptors.dashboard")


def _uvicorn_exiting() -> bool:
    """Whether a uvicorn server in this process was told to exit.

    uvicorn installs its bound ``handle_exit`` as the SIGINT/SIGTERM handler
    and sets ``should_exit`` on a signal; it then waits for open responses
    before the lifespan exit, so streams must notice it themselves."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if getattr(owner, "should_exit", False) is True:
            return True
    return False


class StatsBroadcaster:
    """Calls ``snapshot()`` every ``interval`` seconds while subscribed and
    hands the encoded event to every subscriber."""

    def __init__(self, snapshot: Callable[[], Any], interval: float = 0.5) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._snapshot = snapshot
        self.interval = interval
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        self._latest: bytes | None = None
        self._tick = asyncio.Event()
        self._closed = False
        self.ticks = 0  # snapshots built: one per tick, not per subscriber

    @property
    def subscribers(self) -> int:
        return self._subscribers

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _encode(self) -> bytes:
        body = json.dumps(self._snapshot(), separators=(",", ":"), allow_nan=False)
        return b"data: " + body.encode() + b"\n\n"

    def _publish(self, event: bytes) -> None:
        self._latest = event
        self.ticks += 1
        # A fresh Event per tick: waiters of the old one wake once, and a
        # subscriber that arrives later waits for the next tick.
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _produce(self) -> None:
        while not self._closed:
            if _uvicorn_exiting():
                self._end()
                return
            try:
                event = self._encode()
            except Exception:
                # A bug in a stats source: say so once a tick, keep the
                # streams open with the last good snapshot.
                logger.exception("building the /stats snapshot for the stream failed")
            else:
                self._publish(event)
            await asyncio.sleep(self.interval)

    def _end(self) -> None:
        self._closed = True
        self._tick.set()

    async def close(self) -> None:
        """End every stream and stop the producer; later subscribers get an
        empty stream."""
        self._end()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def events(self) -> AsyncIterator[bytes]:
        """The stream of one subscriber: a ``retry:`` line, then the latest
        snapshot as a ``data:`` event each tick, until ``close()`` or a uvicorn
        exit (a disconnect ends it by closing the generator)."""
        if self._closed:
            return
        self._subscribers += 1
        try:
            if self._task is None or self._task.done():
                self._latest = None
                self._task = asyncio.get_running_loop().create_task(
                    self._produce(), name="raptors-stats-stream"
                )
            yield f"retry: {_RETRY_MS}\n\n".encode()
            sent: bytes | None = None
            while not self._closed:
                latest = self._latest
                if latest is None or latest is sent:
                    await self._tick.wait()
                    continue
                sent = latest
                yield latest
        finally:
            self._subscribers -= 1
            if self._subscribers == 0 and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                # Not awaited here: a generator being closed cannot await
                # safely; the cancelled task ends at its next await.


def dashboard_html(stream_url: str) -> bytes:
    """The dashboard page (``dashboard.html`` in this package), wired to
    ``stream_url`` (relative to the page, or absolute on the same host)."""
    page = importlib.resources.files("raptors").joinpath("dashboard.html").read_text("utf-8")
    # JSON of a string is a valid JS string literal; "</" is escaped so the
    # value cannot close the inline <script>.
    literal = json.dumps(stream_url).replace("</", "<\\/")
    return page.replace("__RAPTORS_STREAM_URL__", literal).encode("utf-8")
