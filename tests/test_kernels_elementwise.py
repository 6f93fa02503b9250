"""add, subtract, multiply, divide, scale, clip against NumPy (spec section 5)."""

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    BINARY,
    DTYPES,
    FLOAT_DTYPES,
    INPUT_KINDS,
    INT_DTYPES,
    LARGE,
    MIXED_PAIRS,
    NUMPY_REF,
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
    rp_call,
    to_kind,
    upcast,
)


def binary_scale(name, a, b):
    """add/subtract round relative to |a| + |b|; multiply/divide relative to the result."""
    if name in ("add", "subtract"):
        return np.abs(np.asarray(a, np.float64)) + np.abs(np.asarray(b, np.float64))
    return None


def check_binary(name, a, b, *, rp_a=None, rp_b=None, allow_rp_array=False):
    rp_a = a if rp_a is None else rp_a
    rp_b = b if rp_b is None else rp_b
    return check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (rp_a, rp_b),
        (a, b),
        scale=binary_scale(name, a, b),
        allow_rp_array=allow_rp_array,
    )


def operands(name, dtype_a, dtype_b, shape_a, shape_b, seed=0):
    a = make(dtype_a, shape_a, seed=seed)
    b = make(dtype_b, shape_b, seed=seed + 1, nonzero=name == "divide")
    return a, b


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_1d_sizes(name, dtype, n):
    check_binary(name, *operands(name, dtype, dtype, (n,), (n,), seed=n))


@pytest.mark.parametrize("shape", SHAPES_2D, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_2d(name, dtype, shape):
    check_binary(name, *operands(name, dtype, dtype, shape, shape, seed=sum(shape)))


@pytest.mark.parametrize("pair", MIXED_PAIRS, ids="-".join)
@pytest.mark.parametrize("name", BINARY)
def test_mixed_dtype_promotion(name, pair):
    a, b = operands(name, pair[0], pair[1], (65,), (65,))
    check_binary(name, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_large(name, dtype):
    check_binary(name, *operands(name, dtype, dtype, (LARGE,), (LARGE,), seed=3))


@pytest.mark.parametrize(
    "shapes",
    (
        ((7, 9), (9,)),
        ((7, 9), (1, 9)),
        ((7, 9), (7, 1)),
        ((7, 1), (1, 9)),
        ((1,), (33,)),
        ((33,), (1,)),
        ((0, 9), (9,)),
    ),
    ids=str,
)
@pytest.mark.parametrize("name", BINARY)
def test_broadcasting_like_numpy(name, shapes):
    check_binary(name, *operands(name, "float64", "float64", *shapes))


@pytest.mark.parametrize("name", BINARY)
def test_shape_mismatch(name):
    with pytest.raises(ValueError, match=r"(?i)shape|broadcast|mismatch"):
        getattr(rp, name)(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"(?i)shape|broadcast|mismatch"):
        getattr(rp, name)(np.ones((3, 4)), np.ones((4, 3)))


# NEP 50: Python scalars are weak, NumPy scalars are strong.

WEAK_SCALARS = (2, -3, 2.5, 0.1)


@pytest.mark.parametrize("scalar_first", (False, True), ids=("array_op_scalar", "scalar_op_array"))
@pytest.mark.parametrize("scalar", WEAK_SCALARS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_python_scalar_is_weak(name, dtype, scalar, scalar_first):
    a = make(dtype, (17,), seed=1, nonzero=True)
    args = (scalar, a) if scalar_first else (a, scalar)
    check_against_numpy(
        getattr(rp, name), NUMPY_REF[name], args, args, scale=binary_scale(name, *args)
    )


@pytest.mark.parametrize(
    "strong", (np.float64(2.0), np.float32(2.0), np.int64(3), np.int32(3)), ids=repr
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_numpy_scalar_is_strong(name, dtype, strong):
    a = make(dtype, (9,), seed=2, nonzero=True)
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (a, strong),
        (a, strong),
        scale=binary_scale(name, a, strong),
    )


@pytest.mark.parametrize("name", BINARY)
def test_two_python_scalars(name):
    for x, y in ((2, 3), (2.5, 4), (7, 2.0)):
        check_against_numpy(getattr(rp, name), NUMPY_REF[name], (x, y), (x, y))


@pytest.mark.parametrize("name", ("add", "multiply", "subtract"))
def test_python_int_out_of_range_for_int32(name):
    # NumPy 2 refuses a Python int that does not fit the array's integer dtype.
    a = np.arange(3, dtype=np.int32)
    with pytest.raises(
        (OverflowError, ValueError, TypeError), match=r"(?i)bound|overflow|range|int32"
    ):
        getattr(rp, name)(a, 2**40)


# Layouts and input kinds.


@pytest.mark.parametrize("n", (1, 9, 17, 65, 1009))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_noncontiguous_1d(name, dtype, n):
    b = make(dtype, (n,), seed=n + 7, nonzero=True)
    for layout, a in layouts_1d(dtype, n, seed=n).items():
        with note(f"layout={layout}"):
            check_binary(name, a, b)
            check_binary(name, b, a[::-1] if name != "divide" else b[::-1])


@pytest.mark.parametrize("layout", ("transposed", "column_slice", "stepped", "fortran"))
@pytest.mark.parametrize("dtype", ("float32", "int64"))
@pytest.mark.parametrize("name", BINARY)
def test_noncontiguous_2d(name, dtype, layout):
    a = layouts_2d(dtype, (17, 33), seed=1)[layout]
    b = make(dtype, (17, 33), seed=2, nonzero=True)
    check_binary(name, a, b)
    check_binary(name, b, layouts_2d(dtype, (17, 33), seed=3)[layout] if name != "divide" else b)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_input_kinds(name, dtype, kind):
    a, b = operands(name, dtype, dtype, (33,), (33,))
    ra, na = to_kind(a, kind)
    rb, nb = to_kind(b, kind)
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (ra, rb),
        (na, nb),
        scale=binary_scale(name, na, nb),
        allow_rp_array=kind == "rp_array",
    )
    # Mixed with a plain NumPy operand.
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (ra, b),
        (na, b),
        scale=binary_scale(name, na, b),
        allow_rp_array=kind == "rp_array",
    )


@pytest.mark.parametrize("kind", ("rp_array", "list", "memoryview", "readonly_buffer"))
@pytest.mark.parametrize("name", BINARY)
def test_input_kinds_2d(name, kind):
    a, b = operands(name, "float64", "float64", (5, 7), (5, 7))
    ra, na = to_kind(a, kind)
    rb, nb = to_kind(b, kind)
    check_against_numpy(
        getattr(rp, name),
        NUMPY_REF[name],
        (ra, rb),
        (na, nb),
        scale=binary_scale(name, na, nb),
        allow_rp_array=kind == "rp_array",
    )


def test_numpy_in_numpy_out():
    a = make("float64", (4,))
    for name in BINARY + ("scale", "clip"):
        args = (a, a) if name in BINARY else (a, 2.0) if name == "scale" else (a, -1.0, 1.0)
        assert type(getattr(rp, name)(*args)) is np.ndarray, name


# NaN, infinities, overflow, division by zero.


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_nan_and_inf_propagate(name, dtype):
    a = np.array([np.nan, 1.0, np.inf, -np.inf, np.inf, 0.0, -0.0, 3.0] * 5, dtype=dtype)
    b = np.array([1.0, np.nan, np.inf, np.inf, 2.0, -0.0, 0.0, np.nan] * 5, dtype=dtype)
    check_binary(name, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_division_by_zero_like_numpy(dtype):
    a = np.array([1, -1, 0, 5, -7, 0, 3, 2, 1], dtype=dtype)
    b = np.zeros_like(a)
    got = check_binary("divide", a, b)
    assert np.isnan(got[2]) and np.isinf(got[0])
    check_binary("divide", a, 0)
    check_binary("divide", 0.0, a)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("name", ("add", "subtract", "multiply"))
def test_integer_overflow_wraps_like_numpy(name, dtype):
    info = np.iinfo(dtype)
    a = np.array([info.max, info.min, info.max, info.min, -1, info.max // 2 + 1] * 11, dtype=dtype)
    b = np.array([1, -1, info.max, info.min, info.min, 3] * 11, dtype=dtype)
    check_binary(name, a, b)


def test_int_division_is_true_division():
    a = np.array([7, -7, 2**53 + 1, 1], dtype=np.int64)
    b = np.array([2, 2, 1, 3], dtype=np.int64)
    got = check_binary("divide", a, b)
    assert got.dtype == np.float64


# scale(a, factor) is a * factor as a new array.


@pytest.mark.parametrize("factor", (2, -3, 0, 2.5, 0.1, np.float32(1.5), np.float64(1.5)), ids=repr)
@pytest.mark.parametrize("n", (0, 1, 7, 16, 17, 65, 1009, LARGE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale(dtype, n, factor):
    a = make(dtype, (n,), seed=n)
    got = check_against_numpy(rp.scale, NUMPY_REF["scale"], (a, factor), (a, factor))
    assert not np.shares_memory(got, a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_2d_and_noncontiguous(dtype):
    for x in (
        make(dtype, (9, 17)),
        *layouts_2d(dtype, (9, 17)).values(),
        *layouts_1d(dtype, 33).values(),
    ):
        check_against_numpy(rp.scale, NUMPY_REF["scale"], (x, 3), (x, 3))


def test_scale_does_not_modify_input():
    a = make("float64", (100,))
    before = a.copy()
    rp.scale(a, 4.0)
    np.testing.assert_array_equal(a, before)
    r = rp.asarray(a.copy())
    rp.scale(r, 4.0)
    np.testing.assert_array_equal(np.asarray(r), before)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_scale_integer_wraps(dtype):
    a = np.array([np.iinfo(dtype).max, np.iinfo(dtype).min, 5], dtype=dtype)
    check_against_numpy(rp.scale, NUMPY_REF["scale"], (a, 2), (a, 2))


# clip(a, lo, hi) returns a new array.

CLIP_BOUNDS = (
    (-5, 5),
    (-5.5, 5.5),
    (0, 0),
    (10, -10),
    (-1e30, 1e30),
    (None, 3),
    (-3, None),
    # A float bound makes an integer clip float: the missing bound is +-inf then,
    # not the integer dtype's limit.
    (3e9, None),
    (None, -3e9),
    (0.5, None),
)


@pytest.mark.parametrize("bounds", CLIP_BOUNDS, ids=str)
@pytest.mark.parametrize("n", (0, 1, 7, 16, 17, 65, 1009, LARGE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip(dtype, n, bounds):
    lo, hi = bounds
    if dtype.startswith("int") and (isinstance(lo, float) and abs(lo) > 1e20):
        pytest.skip("float bound beyond the integer range is not a meaningful clip")
    a = make(dtype, (n,), seed=n)
    got = check_against_numpy(rp.clip, NUMPY_REF["clip"], (a, lo, hi), (a, lo, hi))
    assert not np.shares_memory(got, a)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("side", ("lo", "hi"))
def test_clip_missing_bound_follows_a_wider_array_bound(dtype, side):
    a = make(dtype, (17,))
    bound = np.full(17, 2**40 if side == "lo" else -(2**40), dtype=np.int64)
    args = (a, bound, None) if side == "lo" else (a, None, bound)
    check_against_numpy(rp.clip, NUMPY_REF["clip"], args, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_2d_noncontiguous_and_kinds(dtype):
    for x in (
        make(dtype, (9, 17)),
        *layouts_2d(dtype, (9, 17)).values(),
        *layouts_1d(dtype, 33).values(),
    ):
        check_against_numpy(rp.clip, NUMPY_REF["clip"], (x, -4, 4), (x, -4, 4))
    for kind in INPUT_KINDS:
        obj, np_x = to_kind(make(dtype, (33,)), kind)
        check_against_numpy(
            rp.clip,
            NUMPY_REF["clip"],
            (obj, -4, 4),
            (np_x, -4, 4),
            allow_rp_array=kind == "rp_array",
        )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clip_nan_propagates(dtype):
    a = np.array([np.nan, -np.inf, np.inf, 1.0, -9.0, 9.0] * 3, dtype=dtype)
    check_against_numpy(rp.clip, NUMPY_REF["clip"], (a, -2.0, 2.0), (a, -2.0, 2.0))


def test_clip_array_bounds_like_numpy():
    a = make("float64", (17,))
    lo = np.full(17, -2.0)
    hi = np.full(17, 3.0)
    check_against_numpy(rp.clip, NUMPY_REF["clip"], (a, lo, hi), (a, lo, hi))


def test_clip_does_not_modify_input():
    a = make("float32", (100,))
    before = a.copy()
    rp.clip(a, -1, 1)
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("name", ("scale", "clip"))
def test_float32_stays_float32_with_python_float(name):
    a = make("float32", (8,))
    args = (a, 0.3) if name == "scale" else (a, -0.3, 0.3)
    got = getattr(rp, name)(*args)
    assert got.dtype == np.float32
    expected = numpy_call(NUMPY_REF[name], *args)
    assert_same_kind(got, expected)
    assert_values(got, NUMPY_REF[name](upcast(a), *args[1:]), rtol=1e-6)


@pytest.mark.parametrize("name", BINARY + ("scale", "clip"))
def test_three_dimensional_input(name):
    x = make("float64", (2, 3, 4), nonzero=True)
    args = (x, x) if name in BINARY else (x, 2.0) if name == "scale" else (x, -1.0, 1.0)
    try:
        got = rp_call(getattr(rp, name), *args)
    except ValueError as exc:
        msg = str(exc)
        assert "2" in msg and ("dim" in msg.lower() or "2-d" in msg.lower()), msg
        return
    assert_values(np.asarray(got), NUMPY_REF[name](*args))


# Issue 14: outputs are written once without zero fill, and operands of the
# result dtype that are contiguous (or scalars) take a direct SIMD path. Every
# element is compared exactly with NumPy (one correctly rounded operation).
FAST_SIZES = (0, 1, 7, 31, 1000, 65_537, 1_000_003)
FAST_OPS = ("add", "subtract", "multiply", "divide")


def _fast_operands(dtype, n, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        x = rng.integers(-1000, 1000, n).astype(dtype)
        x[x == 0] = 7
        return x
    return (rng.standard_normal(n) * 100).astype(dtype)


def _assert_exact(got, want):
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype, (type(got), want.dtype)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("n", FAST_SIZES)
@pytest.mark.parametrize("name", FAST_OPS)
def test_fast_path_contiguous_same_dtype_matches_numpy(name, n, dtype):
    a, b = _fast_operands(dtype, n, 1), _fast_operands(dtype, n, 2)
    f, ref = getattr(rp, name), getattr(np, name)
    _assert_exact(f(a, b), ref(a, b))
    scalar = 3 if dtype.startswith("int") else 2.5
    _assert_exact(f(a, scalar), ref(a, scalar))
    _assert_exact(f(scalar, b), ref(scalar, b))
    _assert_exact(f(a, b[:1]), ref(a, b[:1]))  # a one-element array broadcast
    _assert_exact(rp.scale(a, scalar), np.multiply(a, scalar))
    # Off the fast path, same answers: strided, broadcast, 2-D rows.
    big_b = np.repeat(b, 2)
    _assert_exact(f(a, big_b[::2]), ref(a, big_b[::2]))
    _assert_exact(f(a, np.broadcast_to(b[:1], (n,))), ref(a, np.broadcast_to(b[:1], (n,))))
    if n:
        m = np.tile(a, (3, 1))
        _assert_exact(f(m, b), ref(m, b))
        _assert_exact(f(m.T.copy().T, b), ref(m, b))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_fast_path_outputs_are_fresh_and_own_their_memory(dtype):
    # Written without zero fill: a result never shows an earlier result's
    # values, and results do not share memory with each other or the inputs.
    a, b = _fast_operands(dtype, 4099, 3), _fast_operands(dtype, 4099, 4)
    first = rp.add(a, b)
    del first
    for size in (5, 100, 4099):
        got = rp.subtract(a[:size], a[:size])
        _assert_exact(got, np.zeros(size, dtype))
    x, y = rp.multiply(a, b), rp.multiply(a, b)
    assert not np.shares_memory(x, y) and not np.shares_memory(x, a)
    x[:] = 0
    _assert_exact(y, np.multiply(a, b))
