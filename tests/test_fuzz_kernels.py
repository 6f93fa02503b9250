"""Fuzzing every kernel, constructor and rp.Array method against NumPy (CI size).

The strategies and the property are in fuzz_cases.py: typed errors only (never a panic, a
SystemError or a crash), NumPy's answer in value, dtype, shape and Python type wherever
Raptors answers (and an answer wherever NumPy has one inside the documented domain), inputs
unchanged. Derandomized and without an example database, so CI runs the same examples every
time; stress/fuzz_kernels.py runs the same property for 100,000+ examples.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import raptors as rp
from fuzz_cases import Case, cases, check_call, kernel_cases
from hypothesis import HealthCheck, given, settings
from kernel_cases import unique_name


def ci(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # reproducible in CI; no example database written into the tree
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@ci(3500)
@given(case=cases())
def test_calls_match_numpy(case: Case) -> None:
    check_call(case)


@pytest.fixture(scope="module", name="fuzz_pool")
def fuzz_pool_fixture() -> Iterator[rp.Pool]:
    pool = rp.Pool(unique_name("fuzz"), threads=2, queue=64)
    try:
        yield pool
    finally:
        pool.close(wait=True, cancel_pending=True)


@ci(400)
@given(case=kernel_cases())
def test_submitted_calls_match_numpy(fuzz_pool: rp.Pool, case: Case) -> None:
    # A bad call raises at submit time (nothing is queued); one found while running is the
    # job's exception: either way the same typed error as a direct call.
    def through_pool(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fuzz_pool.submit(fn, *args, **kwargs).result(timeout=60)

    check_call(case, invoke=through_pool)


@pytest.fixture(scope="module", name="event_loop_for_fuzz")
def event_loop_for_fuzz_fixture() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@ci(300)
@given(case=kernel_cases())
def test_awaited_calls_match_numpy(
    fuzz_pool: rp.Pool, event_loop_for_fuzz: asyncio.AbstractEventLoop, case: Case
) -> None:
    async def awaited(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await asyncio.wait_for(fuzz_pool.submit(fn, *args, **kwargs), 60)

    def through_asyncio(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return event_loop_for_fuzz.run_until_complete(awaited(fn, args, kwargs))

    check_call(case, invoke=through_asyncio)
