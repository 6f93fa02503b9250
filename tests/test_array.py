"""rp.Array surface and constructors (spec section 5)."""

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    DTYPES,
    as_numpy,
    assert_same_kind,
    assert_values,
    kernel_pool_fixture,  # noqa: F401  (fixture kernel_pool)
    make,
)


def data_pointer(a):
    return np.asarray(a).__array_interface__["data"][0]


@pytest.mark.parametrize("shape", ((0,), (1,), (17,), (3, 5), (0, 4), (1, 1)), ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attributes_match_numpy(dtype, shape):
    x = make(dtype, shape)
    a = rp.asarray(x)
    assert isinstance(a, rp.Array)
    assert a.shape == x.shape and isinstance(a.shape, tuple)
    assert a.dtype == dtype and str(a.dtype) == dtype
    assert a.ndim == x.ndim
    assert a.size == x.size
    assert len(a) == len(x)
    assert a.tolist() == x.tolist()
    assert [type(v) for v in np.ravel(a.tolist())] == [type(v) for v in np.ravel(x.tolist())]


def test_tolist_python_types():
    assert rp.array([1.5, 2.5]).tolist() == [1.5, 2.5]
    assert all(type(v) is float for v in rp.array([1.5, 2.5]).tolist())
    assert all(type(v) is int for v in rp.array([1, 2], dtype="int32").tolist())
    assert rp.array([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_and_asarray_share_memory(dtype):
    a = rp.array(make(dtype, (33,)))
    v1 = a.numpy()
    v2 = np.asarray(a)
    v3 = a.numpy()
    assert isinstance(v1, np.ndarray) and isinstance(v2, np.ndarray)
    assert v1.dtype == np.dtype(dtype) and v1.shape == (33,)
    assert np.shares_memory(v1, v2) and np.shares_memory(v1, v3)
    assert data_pointer(v1) == data_pointer(v2) == data_pointer(v3)


def test_numpy_view_reflects_array_contents():
    a = rp.zeros((4, 5))
    v = a.numpy()
    if v.flags.writeable:
        v[1, 2] = 42.0
        assert a.tolist()[1][2] == 42.0
        assert rp.sum(a) == 42.0
    else:
        with pytest.raises(ValueError):
            v[1, 2] = 42.0


def test_2d_numpy_view_is_c_contiguous():
    a = rp.array(make("float32", (7, 9)))
    v = a.numpy()
    assert v.shape == (7, 9) and v.flags.c_contiguous
    np.testing.assert_array_equal(v, np.asarray(a))


def test_asarray_of_numpy_copies_into_rust_memory():
    # rp.Array always owns its memory (immutable, shareable by running jobs);
    # kernels read NumPy arrays in place, so no copy is needed to compute.
    x = make("float64", (1000,))
    a = rp.asarray(x)
    assert not np.shares_memory(np.asarray(a), x)
    np.testing.assert_array_equal(np.asarray(a), x)


def test_array_copies_like_numpy():
    x = make("float64", (10,))
    a = rp.array(x)
    x[0] = 12345.0
    assert a.tolist()[0] != 12345.0


def test_asarray_of_rp_array_is_identity_or_view():
    a = rp.arange(10)
    b = rp.asarray(a)
    assert np.shares_memory(np.asarray(a), np.asarray(b))


# Constructors with NumPy's default dtypes.


@pytest.mark.parametrize(
    "obj",
    ([1, 2, 3], [1.0, 2.0], [1, 2.5], [[1, 2], [3, 4]], [[1.0], [2.0]], (1, 2), 3, 2.5),
    ids=repr,
)
def test_array_default_dtype(obj):
    a = rp.array(obj)
    want = np.array(obj)
    assert a.dtype == want.dtype.name
    assert a.shape == want.shape
    np.testing.assert_array_equal(np.asarray(a), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_array_from_numpy_keeps_dtype(dtype):
    x = make(dtype, (5, 3))
    for ctor in (rp.array, rp.asarray):
        a = ctor(x)
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), x)


@pytest.mark.parametrize("spelling", ("str", "np_dtype", "np_type"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_array_dtype_argument(dtype, spelling):
    dt = {"str": dtype, "np_dtype": np.dtype(dtype), "np_type": np.dtype(dtype).type}[spelling]
    for ctor in (rp.array, rp.asarray):
        a = ctor([1, 2, 3], dtype=dt)
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), np.array([1, 2, 3], dtype=dtype))


def test_array_dtype_conversion_truncates_like_numpy():
    a = rp.array([1.7, -2.7, 3.2], dtype="int32")
    np.testing.assert_array_equal(np.asarray(a), np.array([1.7, -2.7, 3.2]).astype(np.int32))


def test_array_from_noncontiguous_numpy():
    x = make("float64", (10, 12))
    for view in (x.T, x[:, 3], x[::2, ::3]):
        a = rp.asarray(view)
        assert a.shape == view.shape
        np.testing.assert_array_equal(np.asarray(a), view)


@pytest.mark.parametrize(
    "bad",
    ([[1, 2], [3]], ["a", "b"], [1 + 2j], np.ones((2, 2), complex)),
    ids=("ragged", "strings", "complex_list", "complex_array"),
)
def test_array_bad_input(bad):
    with pytest.raises((TypeError, ValueError)):
        rp.array(bad)


def test_array_three_dimensional():
    try:
        a = rp.array(np.ones((2, 2, 2)))
    except ValueError as exc:
        assert "2" in str(exc) and "dim" in str(exc).lower()
    else:
        assert a.shape == (2, 2, 2)


@pytest.mark.parametrize("ctor,fill", (("zeros", 0), ("ones", 1)))
@pytest.mark.parametrize("shape", (0, 5, (3,), (2, 3), (0, 4)), ids=str)
def test_zeros_ones(ctor, fill, shape):
    a = getattr(rp, ctor)(shape)
    want = getattr(np, ctor)(shape)
    assert a.dtype == "float64" and a.shape == want.shape
    np.testing.assert_array_equal(np.asarray(a), want)
    for dtype in DTYPES:
        b = getattr(rp, ctor)(shape, dtype=dtype)
        assert b.dtype == dtype
        np.testing.assert_array_equal(np.asarray(b), getattr(np, ctor)(shape, dtype=dtype))


def test_zeros_bad_arguments():
    with pytest.raises((TypeError, ValueError)):
        rp.zeros(-1)
    with pytest.raises((TypeError, ValueError)):
        rp.zeros(3, dtype="complex128")
    with pytest.raises(TypeError):
        rp.zeros("3")


@pytest.mark.parametrize("n", (0, 1, 5, 1000))
def test_arange_default_dtypes(n):
    a = rp.arange(n)
    assert a.dtype == "int64"
    np.testing.assert_array_equal(np.asarray(a), np.arange(n))
    f = rp.arange(float(n))
    assert f.dtype == np.arange(float(n)).dtype.name
    np.testing.assert_array_equal(np.asarray(f), np.arange(float(n)))
    for dtype in DTYPES:
        d = rp.arange(n, dtype=dtype)
        assert d.dtype == dtype
        np.testing.assert_array_equal(np.asarray(d), np.arange(n, dtype=dtype))


# Methods and operators.


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_operator_and_dot_method(dtype):
    x = make(dtype, (9, 17), seed=1)
    y = make(dtype, (17, 5), seed=2)
    v = make(dtype, (17,), seed=3)
    a, b, c = rp.asarray(x), rp.asarray(y), rp.asarray(v)
    scale = np.abs(x.astype(np.float64)) @ np.abs(y.astype(np.float64))
    for got in (a @ b, a.dot(b), a @ y, a.dot(y)):
        got = assert_same_kind(got, x @ y, allow_rp_array=True)
        assert_values(
            got, x.astype(np.float64) @ y.astype(np.float64), scale=scale, dtype=(x @ y).dtype
        )
    got = assert_same_kind(c @ c, v @ v)
    assert_values(
        got,
        v.astype(np.float64) @ v.astype(np.float64),
        scale=np.abs(v.astype(np.float64)) @ np.abs(v.astype(np.float64)),
        dtype=(v @ v).dtype,
    )


def test_numpy_array_matmul_rp_array():
    x = make("float64", (4, 6))
    a = rp.asarray(make("float64", (6, 3)))
    got = as_numpy(x @ a)
    np.testing.assert_allclose(got, x @ np.asarray(a), rtol=1e-12)


def test_matmul_operator_shape_mismatch():
    with pytest.raises(ValueError):
        rp.ones((3, 4)) @ rp.ones((5, 2))


@pytest.mark.parametrize("axis", (None, 0, 1, -1))
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduction_methods(dtype, axis):
    x = make(dtype, (13, 7), seed=4)
    a = rp.asarray(x)
    kw = {} if axis is None else {"axis": axis}
    x64 = x.astype(np.float64)
    scales = {"sum": np.sum(np.abs(x64), **kw), "mean": np.mean(np.abs(x64), **kw)}
    for name in ("sum", "mean", "min", "max"):
        want = getattr(np, name)(x, **kw)
        try:
            got = getattr(a, name)(**kw)
        except TypeError:
            if axis is None or name == "sum":
                raise
            continue  # the contract names axis= only for a.sum
        got = assert_same_kind(got, want, allow_rp_array=True)
        assert_values(got, getattr(np, name)(x64, **kw), scale=scales.get(name), dtype=want.dtype)


def test_method_results_are_numpy_scalars():
    a = rp.asarray(np.arange(10, dtype=np.float32))
    assert type(a.sum()) is np.float32
    assert type(a.mean()) is np.float32
    assert type(a.min()) is np.float32 and a.min() == 0
    assert type(a.max()) is np.float32 and a.max() == 9
    b = rp.arange(10)
    assert type(b.sum()) is np.int64 and b.sum() == 45
    assert type(b.mean()) is np.float64 and b.mean() == 4.5


def test_empty_min_method_refused():
    with pytest.raises(ValueError):
        rp.zeros(0).min()


# Async twins run on a pool and return awaitables.


async def test_dot_async(kernel_pool):
    x = make("float64", (1000,), seed=1)
    y = make("float64", (1000,), seed=2)
    a, b = rp.asarray(x), rp.asarray(y)
    for awaitable in (
        a.dot_async(b),
        a.dot_async(b, pool=kernel_pool),
        a.dot_async(y, pool=kernel_pool, priority=5),
    ):
        got = await awaitable
        assert type(got) is np.float64
        assert abs(got - x @ y) <= 1e-12 * float(np.abs(x) @ np.abs(y))


async def test_matmul_async(kernel_pool):
    x = make("float32", (65, 33), seed=1)
    y = make("float32", (33, 17), seed=2)
    got = await rp.asarray(x).matmul_async(rp.asarray(y), pool=kernel_pool)
    got = assert_same_kind(got, x @ y, allow_rp_array=True)
    assert_values(
        got,
        x.astype(np.float64) @ y.astype(np.float64),
        scale=np.abs(x.astype(np.float64)) @ np.abs(y.astype(np.float64)),
    )


@pytest.mark.parametrize("axis", (None, 0, 1))
async def test_sum_and_mean_async(kernel_pool, axis):
    x = make("int32", (40, 30), seed=3)
    a = rp.asarray(x)
    kw = {} if axis is None else {"axis": axis}
    s = await a.sum_async(pool=kernel_pool, **kw)
    m = await a.mean_async(pool=kernel_pool, **kw)
    s = assert_same_kind(s, np.sum(x, **kw), allow_rp_array=True)
    m = assert_same_kind(m, np.mean(x, **kw), allow_rp_array=True)
    np.testing.assert_array_equal(s, np.sum(x, **kw))
    np.testing.assert_allclose(m, np.mean(x, **kw), rtol=1e-12)


async def test_async_twins_default_pool():
    a = rp.arange(100, dtype="float64")
    assert await a.sum_async() == 4950.0
    assert await a.mean_async() == 49.5


async def test_async_shape_mismatch_raises():
    with pytest.raises(ValueError):
        await rp.ones(3).dot_async(rp.ones(4))


@pytest.mark.parametrize("name", ("sum", "mean", "min", "max"))
@pytest.mark.parametrize("dtype", ("float32", "float64", "int32", "int64"))
def test_numpy_reductions_accept_an_rp_array(name, dtype):
    """`np.sum(a, ...)` calls `a.sum(axis=, dtype=, out=, ...)`."""
    values = np.arange(12).reshape(3, 4).astype(dtype)
    a = rp.Array(values)
    fn = getattr(np, name)
    for kwargs in ({}, {"axis": 0}, {"axis": 1}, {"keepdims": True}, {"axis": 0, "keepdims": True}):
        np.testing.assert_allclose(np.asarray(fn(a, **kwargs)), fn(values, **kwargs), rtol=1e-6)
    out = np.empty(4, dtype=np.float64)
    assert fn(a, axis=0, out=out) is out
    np.testing.assert_allclose(out, fn(values, axis=0))
    if name in ("sum", "mean"):
        assert fn(a, dtype=np.float64) == pytest.approx(fn(values, dtype=np.float64))
    else:
        assert fn(a, initial=100) == fn(values, initial=100)
        mask = values % 2 == 0
        assert fn(a, where=mask, initial=-1) == fn(values, where=mask, initial=-1)
