"""Whole-process lifecycles: interpreter exit while a job is blocked, a fork
from inside a running event loop, and a pre-fork server (gunicorn
``--preload`` with uvicorn workers) whose workers all serve the demo."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import warnings

import pytest
from conftest import HANG

pytestmark = pytest.mark.timeout(180)


def _env_for(rp) -> dict[str, str]:
    """The environment of a child interpreter importing this `raptors`."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rp.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_exit_waiting_for_a_blocked_job_says_so_on_stderr(rp):
    """The job waits for a line on stdin; the test sends it only once the
    notice is on stderr, so exit must say why it waits before it can end."""
    script = textwrap.dedent(
        """
        import sys, threading
        import raptors as rp
        import raptors._pool
        raptors._pool.EXIT_NOTICE_SECONDS = 0.2
        release = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), release.set()), daemon=True).start()
        pool = rp.Pool("blocked-at-exit", threads=1, queue=4)
        pool.submit(release.wait)
        pool.submit(int, "1")  # queued behind it: still runs
        print("exiting", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env_for(rp),
        cwd=tempfile.gettempdir(),
    )
    try:
        assert proc.stdout.readline().strip() == "exiting"
        line = proc.stderr.readline()
        assert "interpreter exit is waiting for the jobs of pool(s) 'blocked-at-exit'" in line
        assert "1 running, 1 queued" in line
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(HANG) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_fork_from_inside_a_running_loop(rp, make_pool):
    """A child forked by a coroutine (multiprocessing from async code) awaits
    jobs on a loop of its own; the parent's loop keeps receiving its own."""
    pool = make_pool(threads=2, queue=64)
    assert await pool.submit(abs, -1) == 1  # this loop now has a hub
    report_read, report_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:
        code = 1
        try:

            async def child() -> None:
                fresh = rp.Pool("child-of-a-loop", threads=1, queue=8)
                for i in range(200):
                    assert await fresh.submit(abs, -i) == i
                fresh.close()

            result: list[BaseException | None] = []
            # The forked thread still counts as running the parent's loop.
            thread = threading.Thread(
                target=lambda: result.append(_run_or_error(child())),
            )
            thread.start()
            thread.join(HANG)
            code = 0 if result == [None] else 1
            if code:
                os.write(report_write, repr(result).encode())
        finally:
            os._exit(code)
    os.close(report_write)
    for i in range(500):
        assert await asyncio.wait_for(pool.submit(abs, -i), HANG) == i
    code = await asyncio.to_thread(_exit_code_of, pid)
    with os.fdopen(report_read, "rb") as report:
        assert code == 0, report.read().decode()


def _exit_code_of(pid: int) -> int:
    deadline = time.monotonic() + HANG
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("forked child hung")
        time.sleep(0.01)
    return os.waitstatus_to_exitcode(done[1])


def _run_or_error(coro) -> BaseException | None:
    try:
        asyncio.run(coro)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return exc
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    request.add_header("Connection", "close")
    with urllib.request.urlopen(request, timeout=HANG) as response:
        return response.status, response.read()


@pytest.mark.skipif(shutil.which("gunicorn") is None, reason="needs gunicorn")
def test_gunicorn_preload_with_two_uvicorn_workers_both_serve_score(rp):
    """The app (its pools, budget and matrix) is built in the master before
    the fork; each worker must get working pools of its own."""
    port = _free_port()
    env = _env_for(rp)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
            "raptors.service:app_from_env()",
        ],
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/stats")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.05)
        query = json.dumps({"query": [0.5] * 256}).encode()
        answered_by: dict[int, int] = {}
        deadline = time.monotonic() + HANG * 3
        while len(answered_by) < 2:
            assert time.monotonic() < deadline, f"only workers {answered_by} served /score"
            statuses: list[int] = []

            def score(into: list[int] = statuses) -> None:
                into.append(_get(f"{base}/score", query)[0])

            threads = [threading.Thread(target=score) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(HANG)
            assert statuses == [200] * 8
            for _ in range(8):
                stats = json.loads(_get(f"{base}/stats")[1])
                completed = sum(pool["completed"] for pool in stats["pools"].values())
                if completed:
                    answered_by[stats["pid"]] = completed
        assert server.pid not in answered_by, "the master must not serve"
    finally:
        server.terminate()
        try:
            server.wait(HANG)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
