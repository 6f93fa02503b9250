"""Property-based checks (hypothesis) of reductions and elementwise kernels against NumPy."""

import numpy as np
import pytest
import raptors as rp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_cases import (
    BINARY,
    NUMPY_REF,
    REDUCTIONS,
    assert_values,
    check_against_numpy,
    numpy_call,
    reduction_scale,
    ref_topk,
    rp_call,
)

FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # reproducible in CI; no example database written into the tree
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64])
shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=40)


def bounded_elements(dtype, full_int_range=False):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return st.floats(-1e6, 1e6, width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
    info = np.iinfo(dtype)
    if full_int_range:
        return st.integers(int(info.min), int(info.max))
    return st.integers(-1000, 1000)


@st.composite
def arrays(draw, full_int_range=False, shape=None, dtype=None, allow_nan=False):
    dtype = draw(dtypes) if dtype is None else dtype
    shape = draw(shapes) if shape is None else shape
    elements = bounded_elements(dtype, full_int_range)
    if allow_nan and np.dtype(dtype).kind == "f":
        elements = st.one_of(elements, st.just(float("nan")), st.just(float("inf")))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def reduction_case(draw):
    x = draw(arrays(full_int_range=draw(st.booleans()), allow_nan=draw(st.booleans())))
    axis = draw(st.sampled_from([None] + list(range(-x.ndim, x.ndim))))
    layout = draw(st.sampled_from(["c", "transposed", "reversed"]))
    if layout == "transposed":
        x = x.T
    elif layout == "reversed":
        x = x[::-1]
    return x, axis


@pytest.mark.parametrize("name", REDUCTIONS)
@FAST
@given(case=reduction_case())
def test_reductions_match_numpy(name, case):
    x, axis = case
    kw = {} if axis is None else {"axis": axis}
    try:
        numpy_call(NUMPY_REF[name], x, **kw)
    except ValueError:
        with pytest.raises(ValueError):
            rp_call(getattr(rp, name), x, **kw)
        return
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (x,),
        (x,),
        kw,
        scale=reduction_scale(name, x, axis),
        allow_python_int=axis is None,
    )


@st.composite
def binary_case(draw):
    shape = draw(shapes)
    full = draw(st.booleans())
    a = draw(arrays(full_int_range=full, shape=shape, allow_nan=draw(st.booleans())))
    # Broadcasting: sometimes a row, sometimes a Python scalar, usually the same shape.
    form = draw(st.sampled_from(["same", "same", "row", "python_scalar", "other_dtype"]))
    if form == "row" and len(shape) == 2:
        b = draw(arrays(full_int_range=full, shape=(shape[1],), dtype=a.dtype.type))
    elif form == "python_scalar":
        b = draw(st.one_of(st.integers(-100, 100), st.floats(-100, 100)))
    elif form == "other_dtype":
        b = draw(arrays(full_int_range=full, shape=shape))
    else:
        b = draw(arrays(full_int_range=full, shape=shape, dtype=a.dtype.type))
    if draw(st.booleans()):
        a, b = b, a
    return a, b


@pytest.mark.parametrize("name", BINARY)
@FAST
@given(case=binary_case())
def test_elementwise_match_numpy(name, case):
    a, b = case
    if not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):
        return
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        scale = np.abs(a.astype(np.float64)) + np.abs(b.astype(np.float64))
    else:
        arr = a if isinstance(a, np.ndarray) else b
        scale = np.abs(arr.astype(np.float64)) + 100.0
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (a, b),
        (a, b),
        scale=scale if name in ("add", "subtract") else None,
    )


@FAST
@given(x=arrays(full_int_range=True), factor=st.integers(-1000, 1000))
def test_scale_int_factor_matches_numpy(x, factor):
    check_against_numpy(rp.scale, NUMPY_REF["scale"], (x, factor), (x, factor))


@FAST
@given(x=arrays(), lo=st.integers(-500, 500), width=st.integers(0, 1000))
def test_clip_matches_numpy(x, lo, width):
    check_against_numpy(rp.clip, NUMPY_REF["clip"], (x, lo, lo + width), (x, lo, lo + width))


@FAST
@given(
    x=arrays(shape=st.integers(1, 300).map(lambda n: (n,)), full_int_range=False), data=st.data()
)
def test_topk_matches_stable_sort(x, data):
    k = data.draw(st.integers(1, x.shape[0]))
    want_idx, want_vals = ref_topk(x, k)
    idx, vals = rp.topk(x, k)
    np.testing.assert_array_equal(np.asarray(idx), want_idx)
    np.testing.assert_array_equal(np.asarray(vals), want_vals)


@FAST
@given(x=arrays(shape=st.integers(0, 200).map(lambda n: (n,)), full_int_range=True))
def test_integer_sum_is_exact_modulo_like_numpy(x):
    # Integer sums are exact (or wrap the same way): no tolerance at all.
    got = rp.sum(x)
    want = np.sum(x)
    if x.dtype.kind == "f":
        assert_values(got, want, scale=np.sum(np.abs(x.astype(np.float64))))
    else:
        assert type(got) is type(want) and got == want


@FAST
@given(
    m=st.integers(0, 12), k=st.integers(0, 12), n=st.integers(0, 12), dtype=dtypes, data=st.data()
)
def test_matmul_matches_numpy(m, k, n, dtype, data):
    a = data.draw(arrays(shape=(m, k), dtype=dtype, full_int_range=False))
    b = data.draw(arrays(shape=(k, n), dtype=dtype, full_int_range=False))
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    check_against_numpy(rp.matmul, np.matmul, (a, b), (a, b), scale=scale)
    check_against_numpy(rp.dot, np.dot, (a, b), (a, b), scale=scale)
