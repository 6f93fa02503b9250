"""Bad inputs and input kinds common to every kernel (spec section 5)."""

import array
import re
import subprocess
import sys

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    BINARY,
    KERNELS,
    NUMPY_REF,
    REDUCTIONS,
    as_numpy,
    assert_values,
    make,
    sample_args,
    to_kind,
)

UNSUPPORTED = {
    "complex128": lambda n: np.arange(n) + 1j,
    "complex64": lambda n: (np.arange(n) + 1j).astype(np.complex64),
    "object": lambda n: np.array([object()] * n, dtype=object),
    "str": lambda n: np.array([str(i) for i in range(n)]),
    "bytes": lambda n: np.array([b"x"] * n),
    "datetime64": lambda n: np.arange(n).astype("datetime64[s]"),
}
UNSUPPORTED_MSG = r"(?i)dtype|type|support|complex|object|str|numeric|datetime|bytes"


def with_first_operand(name, first):
    """sample_args with the first array operand replaced."""
    args, kwargs = sample_args(name)
    return (first, *args[1:]), kwargs


def first_operand_like(name, values):
    """An operand of the right dimensionality for the first argument of each kernel."""
    args, _ = sample_args(name)
    return np.resize(np.asarray(values), args[0].shape) if args[0].ndim == 2 else values


@pytest.mark.parametrize("dtype", tuple(UNSUPPORTED))
@pytest.mark.parametrize("name", KERNELS)
def test_unsupported_dtype(name, dtype):
    args, _ = sample_args(name)
    bad = UNSUPPORTED[dtype](args[0].size).reshape(args[0].shape)
    with pytest.raises((TypeError, ValueError), match=UNSUPPORTED_MSG):
        getattr(rp, name)(bad, *args[1:])


@pytest.mark.parametrize("name", ("dot", "matmul", "cosine_similarity") + BINARY)
def test_unsupported_dtype_second_operand(name):
    args, _ = sample_args(name)
    bad = (np.arange(args[1].size) + 1j).reshape(args[1].shape)
    with pytest.raises((TypeError, ValueError), match=UNSUPPORTED_MSG):
        getattr(rp, name)(args[0], bad)


RAGGED = ([[1.0, 2.0], [3.0]], [[1, 2, 3], [4, 5]], [1.0, [2.0, 3.0]])


@pytest.mark.parametrize("mask", (False, [False, True] + [False] * 15), ids=("nomask", "masked"))
@pytest.mark.parametrize("name", KERNELS)
def test_masked_arrays_are_refused(name, mask):
    # Found by fuzzing: kernels read a masked array's memory, masked-out values included, so
    # rp.sum(np.ma.array([1.0, 2.0], mask=[0, 1])) was 3.0 where NumPy gives 1.0.
    args, _ = sample_args(name)
    first = np.ma.array(args[0], mask=np.resize(mask, args[0].shape))
    with pytest.raises(TypeError, match="masked arrays are not supported"):
        getattr(rp, name)(first, *args[1:])
    if len(args) > 1 and isinstance(args[1], np.ndarray):
        with pytest.raises(TypeError, match="masked arrays are not supported"):
            getattr(rp, name)(args[0], np.ma.array(args[1]))


@pytest.mark.parametrize("ragged", RAGGED, ids=str)
@pytest.mark.parametrize("name", KERNELS)
def test_ragged_lists(name, ragged):
    args, _ = sample_args(name)
    with pytest.raises(ValueError, match=r"(?i)ragged|inhomogeneous|sequence|shape|length"):
        getattr(rp, name)(ragged, *args[1:])


NON_NUMERIC = (
    ["a", "b", "c"],
    [1.0, "x", 3.0],
    [1.0, None, 2.0],
    [{}, 1.0, 2.0],
    [[1.0, 2.0], ["a", "b"]],
)


@pytest.mark.parametrize("items", NON_NUMERIC, ids=str)
@pytest.mark.parametrize("name", KERNELS)
def test_non_numeric_items(name, items):
    args, _ = sample_args(name)
    with pytest.raises(
        (TypeError, ValueError),
        match=r"(?i)numeric|number|float|int|dtype|type|support|convert|str|object",
    ):
        getattr(rp, name)(items, *args[1:])


@pytest.mark.parametrize("name", KERNELS)
def test_not_an_array_at_all(name):
    args, _ = sample_args(name)
    with pytest.raises(TypeError):
        getattr(rp, name)(object(), *args[1:])


@pytest.mark.parametrize("name", KERNELS)
def test_three_dimensional_input_names_the_limit(name):
    args, kwargs = sample_args(name)
    cube = make("float64", (2, 3, 4), nonzero=True)
    try:
        got = getattr(rp, name)(cube, *args[1:], **kwargs)
    except ValueError as exc:
        msg = str(exc)
        assert "2" in msg and ("dim" in msg.lower() or "2-d" in msg.lower()), (
            f"ValueError does not name the 2-D limit: {msg!r}"
        )
        return
    except TypeError as exc:  # pragma: no cover - reported as a failure below
        pytest.fail(f"3-D input should be ValueError naming the limit, got TypeError: {exc}")
    # Supporting more dimensions is allowed: then it must be NumPy's answer.
    want = NUMPY_REF[name](cube, *args[1:], **kwargs)
    assert_values(np.asarray(as_numpy(got)), np.asarray(want), scale=None)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_functions_are_plain_callables(name):
    assert callable(getattr(rp, name))


# Buffers: array.array and memoryview dtypes map like NumPy's; read-only buffers work.


@pytest.mark.parametrize(
    "typecode,dtype",
    (("f", "float32"), ("d", "float64"), ("i", "int32"), ("q", "int64"), ("l", "int64")),
)
def test_array_array_dtypes(typecode, dtype):
    buf = array.array(typecode, range(-5, 12))
    got = rp.sum(buf)
    want = np.sum(np.asarray(buf))
    # array("q") is C long long: NumPy's scalar type differs from int64's, its dtype does not.
    assert isinstance(got, np.generic) and got.dtype == want.dtype and got == want
    got = rp.add(buf, buf)
    assert isinstance(as_numpy(got), np.ndarray) and as_numpy(got).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(as_numpy(got), np.add(np.asarray(buf), np.asarray(buf)))


def test_readonly_numpy_array():
    x = make("float64", (33,))
    x.setflags(write=False)
    assert_values(rp.sum(x), np.sum(x), scale=np.sum(np.abs(x)))
    assert_values(rp.add(x, x), x + x)


def test_bytes_cast_buffer():
    data = np.arange(10, dtype=np.float64)
    view = memoryview(data.tobytes()).cast("d")
    assert view.readonly
    assert rp.sum(view) == np.float64(45.0)
    np.testing.assert_array_equal(as_numpy(rp.scale(view, 2.0)), data * 2.0)


def test_strided_memoryview():
    base = np.arange(40, dtype=np.float32)
    view = memoryview(base)[::3]
    assert rp.sum(view) == np.sum(np.asarray(view))
    np.testing.assert_array_equal(
        as_numpy(rp.multiply(view, view)), np.asarray(view) * np.asarray(view)
    )


def test_nested_lists_default_dtypes():
    assert rp.sum([1, 2, 3]).dtype == np.int64
    assert rp.sum([1.0, 2, 3]).dtype == np.float64
    assert as_numpy(rp.add([[1, 2], [3, 4]], [[1, 1], [1, 1]])).dtype == np.int64
    got = rp.dot([[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0])
    np.testing.assert_array_equal(as_numpy(got), np.array([3.0, 7.0]))


@pytest.mark.parametrize(
    "a", (np.zeros((0, 0), np.int32), np.zeros(0, np.int64), 398, np.int32(3)), ids=repr
)
def test_dot_with_an_empty_list_second_takes_the_first_dtype(a):
    # Found by fuzzing: np.dot finds the dtype of its operands in order, and an empty list
    # after the first has none of its own (np.dot(int32_array, []) is int32); Raptors made it
    # float64 as np.asarray([]) is.
    for empty in ([], ()):
        want = np.dot(a, empty)
        got = as_numpy(rp.dot(a, empty))
        assert np.asarray(got).dtype == np.asarray(want).dtype
        assert np.asarray(got).shape == np.asarray(want).shape
    assert np.asarray(rp.dot([], np.zeros(0, np.int32))).dtype == np.float64  # as NumPy


def test_tuples_work_like_lists():
    assert rp.sum((1.5, 2.5)) == np.sum((1.5, 2.5))
    assert rp.dot((1, 2, 3), (4, 5, 6)) == np.dot((1, 2, 3), (4, 5, 6))


@pytest.mark.parametrize("name", REDUCTIONS)
def test_contiguous_input_not_modified(name):
    x = make("float32", (1009,))
    before = x.copy()
    getattr(rp, name)(x)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("kind", ("rp_array", "memoryview"))
def test_rp_array_and_numpy_mix(kind):
    a = make("float64", (5, 7))
    b = make("float64", (7,))
    ra, _ = to_kind(a, kind)
    assert_values(np.asarray(as_numpy(rp.dot(ra, b))), a @ b, scale=np.abs(a) @ np.abs(b))
    assert_values(
        np.asarray(as_numpy(rp.matmul(a, to_kind(b, "rp_array")[0]))),
        a @ b,
        scale=np.abs(a) @ np.abs(b),
    )


# Unusual memory layouts NumPy handles transparently: either the right answer or a clean
# TypeError/ValueError, never garbage read from the raw bytes.


def _right_or_refused(fn, args, want, *, scale=None):
    try:
        got = fn(*args)
    except (TypeError, ValueError) as exc:
        assert re.search(UNSUPPORTED_MSG + "|byte|order|endian|align|stride", str(exc)), exc
        return
    assert_values(
        np.asarray(as_numpy(got), dtype=np.float64), np.asarray(want, np.float64), scale=scale
    )


@pytest.mark.parametrize("dtype", (">f8", ">f4", ">i4", ">i8"))
def test_byte_swapped_arrays(dtype):
    x = np.arange(1, 40).astype(dtype)
    _right_or_refused(rp.sum, (x,), np.sum(x))
    _right_or_refused(rp.dot, (x, x), np.dot(x, x))
    _right_or_refused(rp.add, (x, x), np.add(x, x))
    _right_or_refused(rp.max, (x,), np.max(x))


_UNALIGNED_SCRIPT = """
import sys
import numpy as np
import raptors as rp
dtype = sys.argv[1]
raw = bytearray(np.dtype(dtype).itemsize * 1001 + 1)
x = np.frombuffer(raw, dtype=dtype, count=1001, offset=1)
x[...] = np.arange(1001) % 97 - 48
assert not x.flags.aligned
for name, args in (("sum", (x,)), ("dot", (x, x)), ("multiply", (x, x)), ("argmax", (x,)),
                   ("matmul", (x.reshape(7, 143), x[:143])), ("topk", (x, 5))):
    want = np.sort(args[0])[::-1][: args[1]] if name == "topk" else getattr(np, name)(*args)
    try:
        got = getattr(rp, name)(*args)
    except (TypeError, ValueError) as exc:
        print(name, "refused:", exc)
        continue
    got = got[1] if name == "topk" else got
    assert np.allclose(np.asarray(got, np.float64), np.asarray(want, np.float64)), (name, got)
    print(name, "ok")
"""


@pytest.mark.parametrize("dtype", ("float64", "float32", "int64", "int32"))
def test_unaligned_buffers(dtype):
    # In a child process: reading an unaligned buffer as if it were aligned can crash.
    proc = subprocess.run(
        [sys.executable, "-c", _UNALIGNED_SCRIPT, dtype],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"unaligned {dtype} input: exit code {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}"
    )


def test_zero_stride_broadcast_views():
    row = make("float64", (17,))
    m = np.broadcast_to(row, (9, 17))  # stride 0 along axis 0, read-only
    v = np.broadcast_to(np.float64(2.5), (33,))
    assert m.strides[0] == 0 and v.strides == (0,)
    assert_values(as_numpy(rp.sum(m, axis=0)), np.sum(m, axis=0), scale=np.sum(np.abs(m), 0))
    assert_values(rp.sum(v), np.sum(v))
    assert_values(as_numpy(rp.matmul(m, row)), m @ row, scale=np.abs(m) @ np.abs(row))
    assert_values(as_numpy(rp.cosine_similarity(m, row)), np.ones(9), scale=1.0)


@pytest.mark.parametrize("dtype", ("float16", "uint8", "int8", "int16", "uint32", "uint64", "bool"))
def test_other_numeric_dtypes_right_or_refused(dtype):
    x = np.arange(1, 20).astype(dtype)
    want = np.sum(x)
    try:
        got = rp.sum(x)
    except (TypeError, ValueError) as exc:
        assert re.search(UNSUPPORTED_MSG, str(exc)), exc
        return
    assert np.asarray(got).dtype == np.asarray(want).dtype, f"{dtype}: sum dtype differs"
    assert_values(np.asarray(got), want)


@pytest.mark.parametrize("name", [k for k in KERNELS if k not in REDUCTIONS] + ["sum"])
def test_array_results_are_writeable_like_numpy(name):
    args, kwargs = sample_args(name, "float64", n=33)
    if name == "sum":
        kwargs = {"axis": 0}
    got = getattr(rp, name)(*args, **kwargs)
    for arr in got if isinstance(got, tuple) else (got,):
        arr = as_numpy(arr)
        if arr.ndim == 0:
            continue
        assert arr.flags.writeable, f"{name}: result array is read-only"
        arr.flat[0] = 7
        assert arr.flat[0] == 7
