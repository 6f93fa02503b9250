"""Kernels through pool.submit / rp.submit give NumPy's answers; bad input fails at submit time."""

import asyncio

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    KERNELS,
    NUMPY_REF,
    PARALLEL_SIZES,
    as_numpy,
    assert_same_kind,
    assert_values,
    kernel_pool_fixture,  # noqa: F401  (fixture kernel_pool)
    make,
    numpy_call,
    rp_call,
    sample_args,
    single_thread_pool_fixture,  # noqa: F401  (fixture single_thread_pool)
    upcast,
)


def assert_kernel_result(name, got, args, kwargs):
    expected = numpy_call(NUMPY_REF[name], *args, **kwargs)
    if name == "topk":
        assert isinstance(got, tuple) and len(got) == 2
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(as_numpy(g), e)
        return
    got = assert_same_kind(got, expected, allow_python_int=name in ("argmin", "argmax"))
    ref = numpy_call(NUMPY_REF[name], *[upcast(a) for a in args], **kwargs)
    scale = None
    if name in ("dot", "matmul"):
        scale = np.abs(args[0].astype(np.float64)) @ np.abs(args[1].astype(np.float64))
    elif name in ("sum", "mean"):
        scale = getattr(np, name)(np.abs(args[0].astype(np.float64)), **kwargs)
    elif name in ("add", "subtract"):
        scale = np.abs(args[0].astype(np.float64)) + np.abs(args[1].astype(np.float64))
    elif name == "cosine_similarity":
        scale = 1.0
    assert_values(got, ref, scale=scale, dtype=np.asarray(expected).dtype)


@pytest.mark.parametrize("dtype", ("float32", "float64", "int32", "int64"))
@pytest.mark.parametrize("name", KERNELS)
async def test_await_pool_submit_matches_numpy(kernel_pool, name, dtype):
    args, kwargs = sample_args(name, dtype, n=257)
    got = await kernel_pool.submit(getattr(rp, name), *args, **kwargs)
    assert_kernel_result(name, got, args, kwargs)


@pytest.mark.parametrize("name", KERNELS)
def test_job_result_sync_matches_numpy(kernel_pool, name):
    args, kwargs = sample_args(name, "float64", n=1009)
    job = kernel_pool.submit(getattr(rp, name), *args, **kwargs)
    got = job.result(timeout=30)
    assert_kernel_result(name, got, args, kwargs)
    assert job.done() and job.status == "done"


@pytest.mark.parametrize("name", KERNELS)
async def test_rp_submit_by_pool_object_and_name(kernel_pool, name):
    args, kwargs = sample_args(name, "float32", n=65)
    got1 = await rp.submit(getattr(rp, name), *args, pool=kernel_pool, **kwargs)
    got2 = await rp.submit(getattr(rp, name), *args, pool=kernel_pool.name, **kwargs)
    assert_kernel_result(name, got1, args, kwargs)
    assert_kernel_result(name, got2, args, kwargs)


async def test_rp_submit_default_pool():
    x = make("float64", (1000,))
    got = await rp.submit(rp.sum, x)
    assert_kernel_result("sum", got, (x,), {})


@pytest.mark.parametrize("axis", (None, 0, 1, -1))
@pytest.mark.parametrize("name", ("sum", "mean", "min", "max", "argmin", "argmax", "norm"))
async def test_submit_forwards_axis_keyword(kernel_pool, name, axis):
    x = make("float64", (33, 17), seed=2)
    kwargs = {} if axis is None else {"axis": axis}
    got = await kernel_pool.submit(getattr(rp, name), x, **kwargs)
    assert_kernel_result(name, got, (x,), kwargs)


@pytest.mark.parametrize("dtype", ("float32", "float64"))
async def test_large_kernels_on_one_and_two_threads(kernel_pool, single_thread_pool, dtype):
    a = make(dtype, (300, 301), seed=1)
    b = make(dtype, (301, 299), seed=2)
    v = make(dtype, (2_000_003,), seed=3)
    m = make(dtype, (1501, 1003), seed=4)  # big enough to be split across a pool's threads
    cases = (
        ("matmul", (a, b), {}),
        ("matmul", (m, m[0]), {}),
        ("dot", (v, v), {}),
        ("sum", (v,), {}),
        ("norm", (v,), {}),
        ("max", (v,), {}),
        ("argmax", (v,), {}),
        ("sum", (m,), {"axis": 0}),
        ("sum", (m,), {"axis": 1}),
        ("mean", (m.T,), {"axis": 0}),
        ("argmin", (m,), {"axis": 1}),
        ("add", (m, m.T.copy().T), {}),
        ("cosine_similarity", (m, m[7]), {}),
        ("topk", (v, 50), {}),
    )
    for name, args, kwargs in cases:
        for pool in (single_thread_pool, kernel_pool):
            got = await pool.submit(getattr(rp, name), *args, **kwargs)
            assert_kernel_result(name, got, args, kwargs)


@pytest.mark.parametrize("n", PARALLEL_SIZES)
@pytest.mark.parametrize("dtype", ("float32", "float64", "int32"))
async def test_sizes_around_the_parallel_split(kernel_pool, dtype, n):
    x = make(dtype, (n,), seed=n)
    y = make(dtype, (n,), seed=n + 1, nonzero=True)
    for name, args in (
        ("sum", (x,)),
        ("dot", (x, y)),
        ("argmax", (x,)),
        ("min", (x,)),
        ("add", (x, y)),
        ("divide", (x, y)),
        ("clip", (x, -3, 3)),
    ):
        got = await kernel_pool.submit(getattr(rp, name), *args)
        assert_kernel_result(name, got, args, {})
        assert_kernel_result(name, rp_call(getattr(rp, name), *args), args, {})


async def test_many_concurrent_kernel_jobs(kernel_pool):
    data = [make("float64", (4096,), seed=i) for i in range(64)]
    jobs = [kernel_pool.submit(rp.dot, d, d[::-1].copy()) for d in data]
    results = await asyncio.gather(*jobs)
    for d, got in zip(data, results, strict=True):
        want = np.dot(d, d[::-1])
        assert isinstance(got, np.float64)
        assert abs(got - want) <= 1e-12 * float(np.abs(d) @ np.abs(d[::-1]))


async def test_gather_mixed_kernels(kernel_pool):
    x = make("float32", (513, 129), seed=1)
    q = make("float32", (129,), seed=2)
    jobs = [
        kernel_pool.submit(rp.cosine_similarity, x, q),
        kernel_pool.submit(rp.topk, make("float32", (5000,)), 10),
        kernel_pool.submit(rp.matmul, x, q),
        kernel_pool.submit(rp.mean, x, axis=0),
    ]
    cos, (idx, vals), mv, mean0 = await asyncio.gather(*jobs)
    assert cos.shape == (513,) and cos.dtype == np.float32
    assert as_numpy(idx).shape == (10,) and as_numpy(vals).dtype == np.float32
    assert_values(
        mv,
        x.astype(np.float64) @ q.astype(np.float64),
        scale=np.abs(x.astype(np.float64)) @ np.abs(q.astype(np.float64)),
    )
    assert_values(
        mean0,
        np.mean(x.astype(np.float64), axis=0),
        scale=np.mean(np.abs(x.astype(np.float64)), axis=0),
    )


# Bad input raises at submit time, before a job is queued.

BAD_AT_SUBMIT = {
    "dot_shape_mismatch": (rp.dot, (np.ones(3), np.ones(4)), ValueError),
    "matmul_shape_mismatch": (rp.matmul, (np.ones((3, 4)), np.ones((5, 2))), ValueError),
    "add_shape_mismatch": (rp.add, (np.ones(3), np.ones(4)), ValueError),
    "sum_complex": (rp.sum, (np.ones(3, dtype=np.complex128),), (TypeError, ValueError)),
    "dot_object": (rp.dot, (np.array([object()] * 3), np.ones(3)), (TypeError, ValueError)),
    "cosine_dim_mismatch": (rp.cosine_similarity, (np.ones((4, 8)), np.ones(7)), ValueError),
    "topk_k_too_big": (rp.topk, (np.ones(5), 6), ValueError),
    "topk_k_zero": (rp.topk, (np.ones(5), 0), ValueError),
    "min_empty": (rp.min, (np.zeros(0),), ValueError),
    "argmax_empty": (rp.argmax, (np.zeros(0),), ValueError),
    "three_d": (rp.sum, (np.ones((2, 2, 2)),), ValueError),
}


@pytest.mark.parametrize("case", tuple(BAD_AT_SUBMIT))
def test_bad_input_raises_at_submit_time(kernel_pool, case):
    fn, args, exc = BAD_AT_SUBMIT[case]
    if case == "three_d":
        try:
            fn(*args)
        except ValueError:
            pass
        else:
            pytest.skip("3-D input is supported by this build")
    before = kernel_pool.stats().submitted
    with pytest.raises(exc):
        kernel_pool.submit(fn, *args)
    assert kernel_pool.stats().submitted == before, "a job was queued for input refused up front"
    with pytest.raises(exc):
        rp.submit(fn, *args, pool=kernel_pool)
    assert kernel_pool.stats().submitted == before


@pytest.mark.parametrize("bad", ([[1.0, 2.0], [3.0]], ["a", "b"]), ids=("ragged", "strings"))
async def test_bad_lists_raise_at_submit_or_from_the_job(kernel_pool, bad):
    with pytest.raises((TypeError, ValueError)):
        job = kernel_pool.submit(rp.sum, bad)
        await job


async def test_pool_keeps_working_after_bad_input(kernel_pool):
    with pytest.raises(ValueError):
        await kernel_pool.submit(rp.dot, np.ones(3), np.ones(4))
    assert await kernel_pool.submit(rp.dot, np.ones(3), np.ones(3)) == 3.0


async def test_input_kinds_through_submit(kernel_pool):
    x = make("float64", (100,))
    for obj in (x, rp.asarray(x), x.tolist(), memoryview(x)):
        got = await kernel_pool.submit(rp.sum, obj)
        assert isinstance(got, np.float64)
        assert abs(got - np.sum(x)) <= 1e-12 * np.sum(np.abs(x))


def test_direct_calls_from_many_python_threads():
    # Kernels release the GIL: concurrent direct calls must not mix up inputs or outputs.
    import concurrent.futures

    data = [make("float64", (50_000,), seed=i) for i in range(16)]
    mats = [make("float32", (64, 65), seed=100 + i) for i in range(16)]

    def work(i):
        x, m = data[i], mats[i]
        return i, rp.dot(x, x[::-1]), rp.sum(x), rp.matmul(m, m.T), rp.argmax(x)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for i, d, s, mm, am in ex.map(work, range(16)):
            x, m = data[i], mats[i]
            assert abs(d - np.dot(x, x[::-1])) <= 1e-12 * float(np.abs(x) @ np.abs(x))
            assert abs(s - np.sum(x)) <= 1e-12 * float(np.sum(np.abs(x)))
            m64 = m.astype(np.float64)
            assert_values(mm, m64 @ m64.T, scale=np.abs(m64) @ np.abs(m64).T)
            assert am == np.argmax(x)
