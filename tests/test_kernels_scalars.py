"""Python scalars under NumPy 2's rules (NEP 50), NumPy as the oracle:
ints beyond int64 stay weak and promote where the result is floating point,
and raise `OverflowError` where it is an integer, as in NumPy; Python bools
are weak ints, except where NumPy's result would be a bool, which Raptors
refuses with a `TypeError` naming the dtype (it has no bool dtype)."""

import numpy as np
import pytest
import raptors as rp

BIG = 2**70
DTYPES = (np.float32, np.float64, np.int32, np.int64)


def outcome(fn, *args):
    try:
        with np.errstate(all="ignore"):
            result = fn(*args)
    except (OverflowError, TypeError, ValueError) as exc:
        return type(exc), None
    return None, np.asarray(result)


def assert_like_numpy(name, *args):
    expected_error, expected = outcome(getattr(np, name), *args)
    error, got = outcome(getattr(rp, name), *args)
    assert error is expected_error, (name, args, error, expected_error)
    if expected is not None:
        assert got.dtype == expected.dtype, (name, args)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "big",
    (BIG, -BIG, 2**63, -(2**63) - 1, 10**300),
    ids=("2^70", "-2^70", "2^63", "-2^63-1", "10^300"),
)
@pytest.mark.parametrize("name", ("add", "subtract", "multiply", "divide"))
@pytest.mark.parametrize("big_first", (False, True))
def test_ints_beyond_int64(name, dtype, big, big_first):
    a = np.arange(1, 6, dtype=dtype)
    args = (big, a) if big_first else (a, big)
    assert_like_numpy(name, *args)


@pytest.mark.parametrize("name", ("add", "multiply", "divide"))
def test_ints_beyond_int64_with_scalars_only(name):
    assert_like_numpy(name, 3, BIG)
    assert_like_numpy(name, 2.5, BIG)


@pytest.mark.parametrize("name", ("add", "subtract", "multiply"))
def test_int32_arrays_and_ints_beyond_int32(name):
    a = np.arange(5, dtype=np.int32)
    assert_like_numpy(name, a, 2**40)
    with pytest.raises(OverflowError, match="out of bounds for int32"):
        getattr(rp, name)(a, 2**40)


def test_true_division_of_int32_by_an_int_beyond_int32_promotes():
    a = np.arange(5, dtype=np.int32)
    assert_like_numpy("divide", a, 2**40)
    assert_like_numpy("divide", 2**40, a + 1)


def test_clip_bounds_beyond_int64_saturate():
    assert_like_numpy("clip", np.arange(5), 1, BIG)
    assert_like_numpy("clip", np.arange(5), -BIG, 3)
    assert_like_numpy("clip", np.arange(5.0), -BIG, BIG)


@pytest.mark.parametrize("dtype", (np.int32, np.int64))
@pytest.mark.parametrize(
    "bounds",
    ((BIG, None), (None, -BIG), (2**63, 2**63), (2**40, None), (None, -(2**40)), (-BIG, BIG)),
    ids=str,
)
def test_clip_bounds_beyond_the_range_raise_where_they_would_clip(dtype, bounds):
    # Found by fuzzing: np.clip drops only a bound beyond the array's range on the side
    # where it never clips (lo at or below the minimum, hi at or above the maximum); any
    # other such bound is NumPy's OverflowError. Raptors saturated every one, returning
    # e.g. int64 max for clip(arange(3), 2**70, 2**70).
    assert_like_numpy("clip", np.arange(5, dtype=dtype), *bounds)


@pytest.mark.parametrize(
    "args",
    ((5, np.int32(1), np.int32(3)), (5.5, np.float32(1), np.float32(3)), (7, 1, 3)),
    ids=str,
)
def test_clip_of_a_python_scalar_is_strong_like_numpy(args):
    # Found by fuzzing: np.clip converts `a` with asarray, so a Python int is int64 and a
    # Python float float64 (a ufunc would keep them weak); Raptors gave int32 / float32.
    assert_like_numpy("clip", *args)


def test_an_int_too_big_for_a_float_names_the_problem():
    with pytest.raises(OverflowError, match="too large to convert to float"):
        rp.add(np.ones(3), 10**400)


@pytest.mark.parametrize("name", ("sum", "dot"))
def test_strong_uses_of_ints_beyond_int64_raise_overflow(name):
    """NumPy makes an object array here, which Raptors has not."""
    args = (BIG,) if name == "sum" else (np.ones(2), BIG)
    with pytest.raises(OverflowError, match="out of bounds for int64"):
        getattr(rp, name)(*args)


@pytest.mark.parametrize(
    "args",
    [
        (np.arange(3, dtype=np.int32), True),
        (np.arange(3.0, dtype=np.float32), True),
        (True, 2),
        (2, True),
        (True, 2.5),
        (np.arange(3), False),
    ],
    ids=str,
)
@pytest.mark.parametrize("name", ("add", "subtract", "multiply", "divide"))
def test_bools_with_other_operands_are_weak_ints(name, args):
    assert_like_numpy(name, *args)


@pytest.mark.parametrize("name", ("divide",))
def test_bools_alone_where_numpy_gives_a_number(name):
    assert_like_numpy(name, True, True)


@pytest.mark.parametrize("name", ("sum", "mean", "argmax", "argmin", "norm"))
def test_reductions_of_a_bool_where_numpy_gives_a_number(name):
    numpy_fn = np.linalg.norm if name == "norm" else getattr(np, name)
    expected = np.asarray(numpy_fn(True))
    got = np.asarray(getattr(rp, name)(True))
    assert got.dtype == expected.dtype
    assert got == expected


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("add", (True, True)),
        ("subtract", (True, False)),
        ("multiply", (True, True)),
        ("dot", (True, True)),
        ("max", (True,)),
        ("min", (False,)),
        ("scale", (True, True)),
        ("clip", (True, False, True)),
    ],
    ids=str,
)
def test_bools_alone_where_numpy_gives_a_bool_are_refused(name, args):
    with pytest.raises(TypeError, match=rf"{name}\(\) of Python bools: .*bool"):
        getattr(rp, name)(*args)


@pytest.mark.parametrize("args", ((False, False, None), (True, None, True), (False, None, None)))
def test_clip_of_bools_with_a_missing_bound_is_refused(args):
    # Found by fuzzing: a None bound made the call look non-bool, so clip(False, False, None)
    # was int64 0 where NumPy's result is a bool (and clip(False, None, None) NumPy's TypeError).
    with pytest.raises(TypeError, match=r"clip\(\) of Python bools"):
        rp.clip(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bool_first", (False, True))
def test_dot_with_a_python_bool_takes_the_other_dtype(dtype, bool_first):
    # Found by fuzzing: np.dot reads True as a bool array, which gives way to the other
    # operand's dtype (float32 stays float32); Raptors read it as int64 (float64 results).
    a = np.arange(1, 7, dtype=dtype).reshape(2, 3)
    assert_like_numpy("dot", *((True, a) if bool_first else (a, True)))
    assert_like_numpy("dot", *((False, 3) if bool_first else (2.5, True)))
