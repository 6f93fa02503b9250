"""Shared parametrisation, data and NumPy-oracle helpers for the kernel and array suites.

NumPy is the oracle: every check compares a Raptors result with what NumPy returns for the
same call, in value, dtype, shape and Python type. Floating-point values are compared against
a reference recomputed in float64 (so NumPy's own float32 rounding is not the bar), with a
tolerance relative to the magnitude of the terms (``scale``), not of the result, because sums
cancel.
"""

from __future__ import annotations

import array
import contextlib
import uuid
import warnings

import numpy as np
import pytest
import raptors as rp

DTYPES = ("float32", "float64", "int32", "int64")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")

# Pairs whose promotion differs from either operand (or picks the wider one).
MIXED_PAIRS = (
    ("float32", "float64"),
    ("float64", "float32"),
    ("int32", "float32"),
    ("float32", "int32"),
    ("int32", "int64"),
    ("int64", "float32"),
    ("int32", "float64"),
    ("int64", "float64"),
)

# Lengths: empty, one, odd and prime, around SIMD widths (8/16 lanes of f64/f32 with AVX-512,
# unrolled x4), around block and chunk sizes of 2**10, 2**14, 2**15 and 2**16 elements.
# fmt: off
SIZES = (
    0, 1, 2, 3, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 257,
    1009, 1023, 1024, 1025, 4095, 4096, 4097, 16383, 16384, 16385, 32767, 32768, 32769,
    65535, 65536, 65537,
)
# fmt: on
LARGE = 1_000_003  # prime, > 1e6
# Around 2**19 and 2**20 elements: where a kernel may start splitting across threads.
PARALLEL_SIZES = (524_287, 524_289, 1_048_575, 1_048_577)

# fmt: off
SHAPES_2D = (
    (0, 0), (0, 3), (3, 0), (1, 1), (1, 17), (17, 1), (7, 9), (16, 16), (33, 65), (64, 63),
    (257, 3), (3, 257),
)
# fmt: on
AXES = (None, 0, 1, -1)

RTOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-12}

INPUT_KINDS = ("numpy", "rp_array", "list", "array_array", "memoryview", "readonly_buffer")
_TYPECODE = {"float32": "f", "float64": "d", "int32": "i", "int64": "q"}


def make(dtype, shape, *, seed=0, nonzero=False, positive=False):
    """Deterministic test data; integers stay small so sums and products do not overflow."""
    gen = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        low = 1 if positive else -50
        out = gen.integers(low, 51, size=shape).astype(dtype)
        if nonzero:
            out[out == 0] = 1
        return out
    out = gen.standard_normal(size=shape) * 10.0
    if positive:
        out = np.abs(out) + 0.5
    elif nonzero:
        out[np.abs(out) < 0.5] = 0.5
    return out.astype(dtype)


def to_kind(x, kind):
    """Turn a NumPy array into the requested input kind; returns (object_for_rp, numpy_oracle).

    The oracle is what NumPy itself sees for that object (a list of float32 values is float64
    to NumPy), so the expected dtype follows NumPy's conversion rules for each kind.
    """
    x = np.asarray(x)
    if kind == "numpy":
        return x, x
    if kind == "rp_array":
        return rp.asarray(x), x
    if kind == "list":
        obj = x.tolist()
        return obj, np.asarray(obj)
    if kind == "array_array":
        if x.ndim != 1:
            pytest.skip("array.array is one-dimensional")
        obj = array.array(_TYPECODE[x.dtype.name], x.tolist())
        return obj, np.asarray(obj)
    if kind == "memoryview":
        obj = memoryview(np.ascontiguousarray(x))
        return obj, np.asarray(obj)
    if kind == "readonly_buffer":
        if x.size == 0:
            pytest.skip("memoryview.cast cannot make an empty shaped view")
        obj = memoryview(np.ascontiguousarray(x).tobytes()).cast(_TYPECODE[x.dtype.name], x.shape)
        assert obj.readonly
        return obj, np.asarray(obj)
    raise AssertionError(f"unknown input kind {kind!r}")


def layouts_1d(dtype, n, seed=0):
    """Non-contiguous 1-D views of length n: stepped slice, reversed, column of a 2-D array."""
    base = make(dtype, (3 * n + 2,), seed=seed)
    col = make(dtype, (n, 3), seed=seed + 1)
    return {
        "step2": base[: 2 * n : 2],
        "step3": base[1 : 3 * n + 1 : 3],
        "reversed": base[n - 1 :: -1][:n] if n else base[:0],
        "column": col[:, 1],
    }


def layouts_2d(dtype, shape, seed=0):
    """Non-contiguous 2-D views of the given shape: transposed, column slice, stepped rows."""
    r, c = shape
    t = make(dtype, (c, r), seed=seed).T
    wide = make(dtype, (r, c + 3), seed=seed + 1)[:, 1 : c + 1]
    stepped = make(dtype, (2 * r, 2 * c), seed=seed + 2)[::2, ::2]
    fortran = np.asfortranarray(make(dtype, shape, seed=seed + 3))
    return {"transposed": t, "column_slice": wide, "stepped": stepped, "fortran": fortran}


@contextlib.contextmanager
def note(text):
    """Label an assertion raised inside a loop of sub-cases (shown in pytest's report)."""
    try:
        yield
    except (Exception, pytest.fail.Exception) as exc:
        exc.add_note(text)
        raise


def upcast(a):
    """float32 operands go to float64 so the reference is more accurate than the result."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a.astype(np.float64)
    return a


def numpy_call(fn, *args, **kwargs):
    """Call NumPy with floating-point warnings silenced (the cases test values, not warnings)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def rp_call(fn, *args, **kwargs):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def as_numpy(result):
    """An rp.Array result seen through NumPy; anything else unchanged."""
    if isinstance(result, rp.Array):
        return np.asarray(result)
    return result


def assert_same_kind(actual, expected, *, allow_rp_array=False, allow_python_int=False):
    """Type, dtype and shape as NumPy returns them."""
    if isinstance(expected, np.ndarray):
        if allow_rp_array and isinstance(actual, rp.Array):
            actual = np.asarray(actual)
        assert isinstance(actual, np.ndarray), (
            f"expected numpy.ndarray, got {type(actual).__name__}"
        )
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != NumPy's {expected.dtype}"
        assert actual.shape == expected.shape, f"shape {actual.shape} != NumPy's {expected.shape}"
        return actual
    assert isinstance(expected, np.generic), f"oracle gave {type(expected)}"
    if allow_python_int and type(actual) is int:
        return np.int64(actual)
    assert isinstance(actual, np.generic) and not isinstance(actual, np.ndarray), (
        f"expected NumPy scalar {type(expected).__name__}, got {type(actual).__name__}"
    )
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != NumPy's {expected.dtype}"
    return actual


def assert_values(actual, ref, *, scale=None, rtol=None, dtype=None):
    """Integers exactly; floats with NaN/inf in the same places and |a - ref| <= rtol * scale."""
    a = np.asarray(actual)
    r = np.asarray(ref)
    dtype = np.dtype(dtype) if dtype is not None else a.dtype
    assert a.shape == r.shape, f"shape {a.shape} != {r.shape}"
    if dtype.kind in "iub":
        np.testing.assert_array_equal(a, r)
        return
    a = a.astype(np.float64)
    r = r.astype(np.float64)
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    assert np.array_equal(nan_a, nan_r), f"NaN positions differ: got {a[nan_a != nan_r][:5]}"
    inf_r = np.isinf(r)
    assert np.array_equal(a[inf_r], r[inf_r]), "infinities differ"
    finite = ~(nan_r | inf_r)
    if rtol is None:
        rtol = RTOL.get(dtype, 1e-12)
    if scale is None:
        s = np.abs(r)
    else:
        s = np.broadcast_to(np.abs(np.asarray(scale, np.float64)), r.shape)
    # Two units in the last place of the subnormal range: a float32 reference recomputed in
    # float64 is exact where the float32 result had to round to a subnormal.
    atol = 2 * float(np.finfo(dtype).smallest_subnormal) if dtype.kind == "f" else 0.0
    tol = rtol * s + atol
    with np.errstate(invalid="ignore"):
        err = np.abs(a - r)
    bad = finite & ~(err <= tol)
    if bad.any():
        idx = np.argwhere(bad)[:3]
        detail = ", ".join(
            f"at {tuple(i)}: got {a[tuple(i)]!r}, want {r[tuple(i)]!r}, tol {tol[tuple(i)]:.3g}"
            for i in idx
        )
        raise AssertionError(f"{int(bad.sum())} value(s) out of tolerance: {detail}")


def check_against_numpy(
    rp_fn,
    np_fn,
    rp_args,
    np_args,
    kwargs=None,
    *,
    scale=None,
    rtol=None,
    allow_rp_array=False,
    allow_python_int=False,
):
    """Run both, compare type/dtype/shape with NumPy and values with a float64 reference."""
    kwargs = kwargs or {}
    expected = numpy_call(np_fn, *np_args, **kwargs)
    actual = rp_call(rp_fn, *rp_args, **kwargs)
    actual = assert_same_kind(
        actual, expected, allow_rp_array=allow_rp_array, allow_python_int=allow_python_int
    )
    ref = expected
    # A Python float next to a float32 array is cast to float32 first (NEP 50); recomputing
    # in float64 would change the question, so NumPy's own answer is the reference then.
    weak_float = any(type(a) is float for a in np_args)
    if np.asarray(expected).dtype.kind == "f" and not weak_float:
        ref = numpy_call(np_fn, *[upcast(a) for a in np_args], **kwargs)
        # Rounded to the result dtype: a float32 result may overflow to inf where float64 did not.
        with np.errstate(over="ignore"):
            ref = np.asarray(ref).astype(np.asarray(expected).dtype)
    assert_values(actual, ref, scale=scale, rtol=rtol, dtype=np.asarray(expected).dtype)
    return actual


# References for the kernels that NumPy has under another name or not at all.


def ref_cosine_similarity(matrix, query):
    """Rows of matrix against one query (rows,) or a batch (rows, queries); zero norm -> 0."""
    m = np.asarray(matrix)
    q = np.asarray(query)
    out_dtype = np.result_type(m.dtype, q.dtype, np.float32)
    m64 = m.astype(np.float64)
    q64 = q.astype(np.float64)
    dots = m64 @ q64.T
    mn = np.linalg.norm(m64, axis=1)
    qn = np.linalg.norm(q64, axis=-1)
    denom = mn * qn if q.ndim == 1 else mn[:, None] * qn[None, :]
    with np.errstate(all="ignore"):
        out = np.where(denom == 0, 0.0, dots / np.where(denom == 0, 1.0, denom))
    return out.astype(out_dtype)


def ref_topk(values, k):
    """The k largest, largest first, equal values in index order (exact for every dtype)."""
    v = np.asarray(values)
    n = v.shape[0]
    # Stable ascending sort of the reversed array, reversed back: descending values with
    # equal ones in increasing original index, without negating (which overflows for ints).
    order = (n - 1 - np.argsort(v[::-1], kind="stable")[::-1])[:k].astype(np.intp)
    return order, v[order]


NUMPY_REF = {
    "dot": np.dot,
    "matmul": np.matmul,
    "sum": np.sum,
    "mean": np.mean,
    "min": np.min,
    "max": np.max,
    "argmin": np.argmin,
    "argmax": np.argmax,
    "norm": np.linalg.norm,
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.true_divide,
    "scale": np.multiply,
    "clip": np.clip,
    "cosine_similarity": ref_cosine_similarity,
    "topk": ref_topk,
}
KERNELS = tuple(NUMPY_REF)
REDUCTIONS = ("sum", "mean", "min", "max", "argmin", "argmax", "norm")
BINARY = ("add", "subtract", "multiply", "divide")


def reduction_scale(name, x, axis):
    """Magnitude the reduction's rounding error is relative to."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    if name == "sum":
        return np.sum(ax, axis=axis)
    if name == "mean":
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.mean(ax, axis=axis)
    if name == "norm":
        return np.linalg.norm(ax, axis=axis)
    return None


def sample_args(name, dtype="float64", n=17, seed=0):
    """A valid call of each kernel on 1-D/2-D data: (args, kwargs)."""
    a = make(dtype, (n,), seed=seed)
    b = make(dtype, (n,), seed=seed + 1, nonzero=True)
    m = make(dtype, (5, n), seed=seed + 2)
    if name in ("dot", "matmul"):
        return (m, a), {}
    if name in REDUCTIONS:
        return (m,), {}
    if name in BINARY:
        return (a, b), {}
    if name == "scale":
        return (a, 3), {}
    if name == "clip":
        return (a, -5, 5), {}
    if name == "cosine_similarity":
        return (m, a), {}
    if name == "topk":
        return (a, 3), {}
    raise AssertionError(name)


def unique_name(prefix="kernels"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(name="kernel_pool")
def kernel_pool_fixture():
    """A private two-thread pool, closed after the test."""
    pool = rp.Pool(unique_name(), threads=2, queue=256)
    try:
        yield pool
    finally:
        pool.close(wait=True, cancel_pending=True)


@pytest.fixture(name="single_thread_pool")
def single_thread_pool_fixture():
    pool = rp.Pool(unique_name("kernels1"), threads=1, queue=256)
    try:
        yield pool
    finally:
        pool.close(wait=True, cancel_pending=True)
