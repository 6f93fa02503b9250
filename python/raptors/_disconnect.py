"""Disconnect-aware awaiting for the FastAPI integration: a watcher that
cancels a queued job when the ASGI server reports that its client left.

Re-exported by ``raptors.fastapi``; import it from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request


class ClientDisconnected(Exception):
    """The client went away before its job started; the job was cancelled."""


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
