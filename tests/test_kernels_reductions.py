"""sum, mean, min, max, argmin, argmax, norm against NumPy (spec section 5)."""

import math

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    AXES,
    DTYPES,
    FLOAT_DTYPES,
    INPUT_KINDS,
    LARGE,
    NUMPY_REF,
    REDUCTIONS,
    SHAPES_2D,
    SIZES,
    assert_same_kind,
    assert_values,
    check_against_numpy,
    layouts_1d,
    layouts_2d,
    make,
    note,
    numpy_call,
    reduction_scale,
    rp_call,
    to_kind,
)
from kernel_cases import (
    as_numpy as as_numpy_result,
)

REFUSES_EMPTY = ("min", "max", "argmin", "argmax")
ARG = ("argmin", "argmax")


def _kw(axis):
    return {} if axis is None else {"axis": axis}


def check_reduction(name, x, axis=None, *, obj=None, np_x=None, allow_rp_array=False):
    """Compare rp.<name>(obj, axis=...) with NumPy on the same data (or its refusal)."""
    obj = x if obj is None else obj
    np_x = x if np_x is None else np_x
    kw = _kw(axis)
    try:
        numpy_call(NUMPY_REF[name], np_x, **kw)
    except ValueError:
        with pytest.raises(ValueError, match=r"(?i)empty|zero-size|identity"):
            rp_call(getattr(rp, name), obj, **kw)
        return None
    return check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (obj,),
        (np_x,),
        kw,
        scale=reduction_scale(name, np_x, axis),
        allow_rp_array=allow_rp_array,
        allow_python_int=name in ARG and axis is None,
    )


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_1d_sizes(name, dtype, n):
    check_reduction(name, make(dtype, (n,), seed=n))


@pytest.mark.parametrize("shape", SHAPES_2D, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_2d_axes(name, dtype, shape):
    x = make(dtype, shape, seed=sum(shape))
    for axis in AXES:
        with note(f"axis={axis}"):
            check_reduction(name, x, axis)


@pytest.mark.parametrize("axis", (None, 0, -1))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_1d_axis_zero_and_minus_one(name, dtype, axis):
    check_reduction(name, make(dtype, (33,), seed=3), axis)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_axis_out_of_range(name):
    x = make("float64", (4, 5))
    with pytest.raises((ValueError, IndexError), match=r"(?i)axis"):
        getattr(rp, name)(x, axis=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_large(name, dtype):
    check_reduction(name, make(dtype, (LARGE,), seed=11))


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("dtype", ("float32", "int64"))
@pytest.mark.parametrize("name", REDUCTIONS)
def test_large_2d(name, dtype, axis):
    check_reduction(name, make(dtype, (1031, 1009), seed=12), axis)


@pytest.mark.parametrize("n", (1, 9, 17, 65, 1009))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_noncontiguous_1d(name, dtype, n):
    for layout, x in layouts_1d(dtype, n, seed=n).items():
        assert x.shape == (n,)
        with note(f"layout={layout}"):
            check_reduction(name, x)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("layout", ("transposed", "column_slice", "stepped", "fortran"))
@pytest.mark.parametrize("dtype", ("float32", "float64", "int32"))
@pytest.mark.parametrize("name", REDUCTIONS)
def test_noncontiguous_2d(name, dtype, layout, axis):
    x = layouts_2d(dtype, (17, 33), seed=5)[layout]
    check_reduction(name, x, axis)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("n", (1, 17, 257))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_input_kinds_1d(name, dtype, n, kind):
    x = make(dtype, (n,), seed=n)
    obj, np_x = to_kind(x, kind)
    check_reduction(name, x, obj=obj, np_x=np_x, allow_rp_array=kind == "rp_array")


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("kind", ("rp_array", "list", "memoryview", "readonly_buffer"))
@pytest.mark.parametrize("name", REDUCTIONS)
def test_input_kinds_2d(name, kind, axis):
    x = make("float32", (9, 17), seed=4)
    obj, np_x = to_kind(x, kind)
    check_reduction(name, x, axis, obj=obj, np_x=np_x, allow_rp_array=kind == "rp_array")


@pytest.mark.parametrize("value", (0, 3, -7, 2.5, -0.0), ids=repr)
@pytest.mark.parametrize("name", ("sum", "mean", "min", "max", "argmin", "argmax", "norm"))
def test_python_scalar_input(name, value):
    check_reduction(name, np.asarray(value), obj=value, np_x=value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REFUSES_EMPTY)
def test_empty_reduction_refused_like_numpy(name, dtype):
    with pytest.raises(ValueError, match=r"(?i)empty|zero-size|identity"):
        getattr(rp, name)(np.zeros(0, dtype=dtype))
    with pytest.raises(ValueError, match=r"(?i)empty|zero-size|identity"):
        getattr(rp, name)([])
    with pytest.raises(ValueError, match=r"(?i)empty|zero-size|identity"):
        getattr(rp, name)(np.zeros((0, 3), dtype=dtype), axis=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sum_mean_norm_like_numpy(dtype):
    x = np.zeros(0, dtype=dtype)
    check_reduction("sum", x)
    check_reduction("norm", x)
    # NumPy answers NaN (with a RuntimeWarning) for the mean of nothing.
    check_reduction("mean", x)


# NaN and infinity propagation.

NAN_CASES = {
    "nan_first": lambda n: [0],
    "nan_middle": lambda n: [n // 2],
    "nan_last": lambda n: [n - 1],
    "nan_many": lambda n: list(range(1, n, 3)),
}


@pytest.mark.parametrize("n", (1, 8, 17, 64, 1009, 65537))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_nan_propagates(name, dtype, n):
    for where, positions in NAN_CASES.items():
        x = make(dtype, (n,), seed=n)
        x[positions(n)] = np.nan
        with note(f"NaN placement {where}"):
            check_reduction(name, x)


@pytest.mark.parametrize("axis", (0, 1))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_nan_propagates_along_axis(name, dtype, axis):
    x = make(dtype, (9, 17), seed=9)
    x[2, 5] = np.nan
    x[7, 16] = np.nan
    check_reduction(name, x, axis)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_infinities(name, dtype):
    for values in (
        [1.0, np.inf, 2.0],
        [-np.inf, 1.0, 3.0],
        [np.inf, -np.inf, 0.0],
        [np.inf] * 33,
        [-np.inf] * 17 + [5.0],
    ):
        check_reduction(name, np.array(values, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ("min", "max", "argmin", "argmax"))
def test_ties_pick_first_like_numpy(name, dtype):
    x = np.zeros(100, dtype=dtype)
    x[[13, 40, 77]] = 5
    x[[3, 50, 99]] = -5
    check_reduction(name, x)
    check_reduction(name, np.tile(x, (3, 1)), 1)
    check_reduction(name, np.tile(x, (3, 1)).T.copy(), 0)


@pytest.mark.parametrize("n", (7, 16, 17, 1009))
@pytest.mark.parametrize("name", ("min", "max", "argmin", "argmax"))
def test_extremes_at_every_position(name, n):
    # Catches SIMD tails and lane-merging bugs: the extreme moves through every position.
    base = make("float32", (n,), seed=1)
    big = np.float32(1e6)
    for i in range(n):
        x = base.copy()
        x[i] = big if name in ("max", "argmax") else -big
        got = getattr(rp, name)(x)
        want = NUMPY_REF[name](x)
        assert got == want, f"position {i}: got {got!r}, want {want!r}"


# Integer overflow behaves as NumPy's (sum of int32 widens to int64; int64 wraps).


def test_int32_sum_widens_to_int64():
    x = np.full(1000, np.iinfo(np.int32).max, dtype=np.int32)
    got = check_reduction("sum", x)
    assert got == 1000 * (2**31 - 1)
    got0 = check_reduction("sum", x.reshape(10, 100), 0)
    assert got0.dtype == np.int64


@pytest.mark.parametrize("axis", (None, 0, 1))
def test_int64_sum_wraps_like_numpy(axis):
    x = np.full((4, 5), 2**62 + 12345, dtype=np.int64)
    x[1, 2] = np.iinfo(np.int64).min
    check_reduction("sum", x, axis)


def test_int64_mean_does_not_wrap():
    # NumPy's mean of integers accumulates in float64.
    x = np.full(64, 2**62, dtype=np.int64)
    got = check_reduction("mean", x)
    assert math.isclose(float(got), 2.0**62, rel_tol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_extremes_min_max(dtype):
    info = np.iinfo(dtype) if dtype.startswith("int") else np.finfo(dtype)
    x = np.array([0, info.max, info.min, -1, 1], dtype=dtype)
    for name in ("min", "max", "argmin", "argmax"):
        check_reduction(name, x)


def test_norm_int_large_values_is_float64():
    x = np.array([2**40, -(2**40), 3], dtype=np.int64)
    got = check_reduction("norm", x)
    assert got.dtype == np.float64


# Accuracy of float32 sums of millions of values (spec: at least as good as pairwise).

F32_EPS = float(np.finfo(np.float32).eps)


def _accuracy_data(kind, n):
    gen = np.random.default_rng(2024)
    if kind == "uniform":
        return gen.random(n, dtype=np.float32)
    if kind == "lognormal":
        return gen.lognormal(0.0, 2.0, n).astype(np.float32)
    if kind == "mixed_sign":
        return (gen.standard_normal(n) * 100 + 1).astype(np.float32)
    if kind == "constant":
        return np.full(n, 0.1, dtype=np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("n", (1_000_003, 4_000_000))
@pytest.mark.parametrize("kind", ("uniform", "lognormal", "mixed_sign", "constant"))
def test_float32_sum_accuracy(kind, n):
    x = _accuracy_data(kind, n)
    exact = (
        math.fsum(x.astype(np.float64).tolist())
        if n <= 1_100_000
        else float(np.sum(x.astype(np.float64)))
    )
    got = rp.sum(x)
    assert isinstance(got, np.float32)
    err_rp = abs(float(got) - exact)
    err_np = abs(float(np.sum(x)) - exact)
    bound = 2 * err_np + 4 * F32_EPS * float(np.sum(np.abs(x), dtype=np.float64))
    assert err_rp <= bound, f"rp error {err_rp:.4g} vs NumPy {err_np:.4g} (bound {bound:.4g})"
    # mean goes through the same accumulation.
    m = rp.mean(x)
    assert isinstance(m, np.float32)
    err_mean = abs(float(m) - exact / n)
    err_np_mean = abs(float(np.mean(x)) - exact / n)
    assert err_mean <= 2 * err_np_mean + 4 * F32_EPS * float(np.mean(np.abs(x), dtype=np.float64))


@pytest.mark.parametrize("axis", (None, 0, 1))
def test_float32_2d_sum_accuracy(axis):
    x = _accuracy_data("uniform", 2_000_000).reshape(1000, 2000)
    exact = np.sum(x.astype(np.float64), axis=axis)
    got = rp.sum(x, axis=axis)
    assert_same_kind(got, np.sum(x, axis=axis), allow_rp_array=True)
    assert_values(
        np.asarray(got, dtype=np.float64),
        exact,
        scale=np.sum(np.abs(x), axis=axis, dtype=np.float64),
        rtol=1e-5,
    )


def test_float64_sum_accuracy_cancellation():
    gen = np.random.default_rng(7)
    x = gen.standard_normal(2_000_000) * 1e8
    x = np.concatenate([x, -x[::-1], [1.0]])
    got = rp.sum(x)
    assert isinstance(got, np.float64)
    err = abs(float(got) - 1.0)
    assert err <= max(2 * abs(float(np.sum(x)) - 1.0), 1e-12 * float(np.sum(np.abs(x))))


@pytest.mark.parametrize("name", REDUCTIONS)
def test_three_dimensional_input(name):
    x = make("float64", (2, 3, 4))
    try:
        got = getattr(rp, name)(x)
    except ValueError as exc:
        msg = str(exc)
        assert "2" in msg and ("dim" in msg.lower() or "2-d" in msg.lower()), msg
        return
    assert_values(np.asarray(got), NUMPY_REF[name](x), scale=reduction_scale(name, x, None))


@pytest.mark.parametrize("name", REDUCTIONS)
def test_axis_spellings(name):
    x = make("float64", (6, 5), seed=8)
    ref = NUMPY_REF[name]
    scale_none = reduction_scale(name, x, None)
    assert_values(getattr(rp, name)(x, axis=None), ref(x, axis=None), scale=scale_none)
    for axis in (np.int64(1), np.int32(-1)):
        got = as_numpy_result(getattr(rp, name)(x, axis=axis))
        assert_values(got, ref(x, axis=axis), scale=reduction_scale(name, x, int(axis)))


@pytest.mark.parametrize("name", ("sum", "mean", "min", "max", "argmin", "argmax"))
def test_axis_positional_like_numpy(name):
    # (np.linalg.norm's second positional parameter is ord, not axis.)
    x = make("float64", (6, 5), seed=8)
    got = as_numpy_result(getattr(rp, name)(x, 0))
    assert_values(got, NUMPY_REF[name](x, 0), scale=reduction_scale(name, x, 0))


@pytest.mark.parametrize("name", REDUCTIONS)
def test_axis_bad_type(name):
    with pytest.raises(TypeError):
        getattr(rp, name)(make("float64", (3, 4)), axis=1.5)


@pytest.mark.parametrize("axis", (0, -1, 1, -2))
@pytest.mark.parametrize("name", REDUCTIONS)
def test_axis_on_0d_input_follows_numpy(name, axis):
    # NumPy: sum/min/max read axis 0/-1 of a 0-d array as "all", argmin/argmax
    # view it as 1-d, mean and norm refuse any axis (AxisError, a ValueError).
    x = np.array(3.5)
    try:
        expected = numpy_call(NUMPY_REF[name], x, axis=axis)
    except (ValueError, IndexError) as exc:
        with pytest.raises(ValueError, match=str(exc)):
            getattr(rp, name)(x, axis=axis)
        return
    got = getattr(rp, name)(x, axis=axis)
    assert np.asarray(got) == np.asarray(expected)
