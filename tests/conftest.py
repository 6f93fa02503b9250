"""Shared fixtures for the Raptors test suite.

`raptors` is imported lazily, inside fixtures, so that collecting a module
that does not need it never fails because of this file.

The runtime tests hold a pool's workers busy with *gates*: Python callables
that wait on a `threading.Event`. A gate job occupies one native worker (the
wait releases the GIL), so the tests decide exactly when a worker frees up
and can fill the queue deterministically.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

# Upper bound for anything that should happen "at once" or "soon": long enough
# to never fire on a loaded 2-core machine, short enough to turn a hang into a
# failure instead of a stuck suite.
HANG = 10.0

_pool_serial = itertools.count()


class Gate:
    """A job body that blocks its worker until `open()` is called.

    `entered` counts the calls that started; `wait_entered(n)` waits until
    `n` calls are running, so a test knows the workers are really busy.
    """

    def __init__(self) -> None:
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.entered = 0

    def __call__(self, value=None):
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        if not self._release.wait(HANG * 3):
            raise RuntimeError("gate was never opened")
        return value

    def wait_entered(self, n: int = 1, timeout: float = HANG) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.entered >= n, timeout)
        assert ok, f"only {self.entered} of {n} gate jobs started within {timeout}s"

    def open(self) -> None:
        self._release.set()

    def open_later(self, delay: float) -> threading.Timer:
        timer = threading.Timer(delay, self.open)
        timer.daemon = True
        timer.start()
        return timer


def wait_until(predicate, timeout: float = HANG, interval: float = 0.001) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def assert_invariant(s) -> None:
    """The stats identity the contract requires at every snapshot."""
    total = s.queued + s.running + s.completed + s.failed + s.cancelled + s.expired
    assert s.submitted == total, (
        f"submitted={s.submitted} != queued={s.queued} + running={s.running} + "
        f"completed={s.completed} + failed={s.failed} + cancelled={s.cancelled} + "
        f"expired={s.expired} (= {total})"
    )


@pytest.fixture
def rp():
    import raptors

    return raptors


@pytest.fixture
def gates():
    """Factory of `Gate`s; every gate is opened at teardown so no worker stays stuck."""
    made: list[Gate] = []

    def make() -> Gate:
        g = Gate()
        made.append(g)
        return g

    yield make
    for g in made:
        g.open()


@pytest.fixture
def unique_name(request):
    """Factory of pool names that no other test (or other open pool) uses."""

    def make(tag: str = "") -> str:
        base = request.node.name.replace("[", "-").replace("]", "")
        return f"t{os.getpid()}-{next(_pool_serial)}-{base}{tag}"

    return make


@pytest.fixture
def make_pool(rp, gates, unique_name):
    """Factory `make_pool(threads=1, queue=8, **kw)` of uniquely named pools.

    Pools still open at teardown are closed without waiting, after the gates
    of this test were opened (the `gates` fixture tears down after this one).
    """
    made = []

    def make(threads=1, queue=8, name=None):
        pool = rp.Pool(name or unique_name(), threads=threads, queue=queue)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        if not pool.closed:
            pool.close(wait=False, cancel_pending=True)


@pytest.fixture
def saturated(make_pool, gates):
    """A 1-thread pool whose only worker is held by a gate.

    Returns `(pool, gate, blocker_job)`. Jobs submitted afterwards wait in
    the queue until `gate.open()`.
    """

    def make(queue=8):
        pool = make_pool(threads=1, queue=queue)
        gate = gates()
        job = pool.submit(gate, "blocker")
        gate.wait_entered(1)
        return pool, gate, job

    return make
