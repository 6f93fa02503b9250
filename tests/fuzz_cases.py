"""Hypothesis strategies and one property for fuzzing every kernel and constructor against NumPy.

`cases()` draws a call: a kernel (`rp.add`, ...), a constructor (`rp.array`, `rp.zeros`, ...) or
an `rp.Array` method, with its arguments: NumPy arrays of the four supported dtypes mostly and
sometimes others, 0-d to 3-d shapes, every memory layout NumPy can produce (C, Fortran,
transposed, reversed, stepped, zero-stride broadcast, unaligned, read-only, byte-swapped),
masked arrays, NumPy scalars, `rp.Array`s, (ragged) lists and Python scalars, and valid and
invalid keywords. `check_call(case)` is the property, shared by tests/test_fuzz_kernels.py (CI)
and stress/fuzz_kernels.py (the long run):

- Raptors raises only typed errors (`TYPED`) with a message; never a panic (`RaptorsError`
  "... panicked", or pyo3's `PanicException`, a `BaseException`), a `SystemError` or anything
  else;
- where NumPy raises, Raptors raises an error of a compatible kind;
- where NumPy succeeds and the call is in Raptors' documented domain (`in_domain`), Raptors
  succeeds; wherever Raptors succeeds, its answer equals NumPy's in value, dtype, shape and
  Python type;
- the inputs are unchanged afterwards.

It returns the name of the typed error Raptors raised, or None when the call succeeded.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import raptors as rp
from hypothesis import strategies as st
from kernel_cases import (
    RTOL,
    assert_values,
    reduction_scale,
    ref_cosine_similarity,
    ref_topk,
)

SUPPORTED = tuple(np.dtype(d) for d in ("float32", "float64", "int32", "int64"))
UNSUPPORTED = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "uint64",
    "float16",
    "complex128",
    "object",
    "str",
    "bytes",
    "datetime64",
)
REDUCTIONS = ("sum", "mean", "min", "max", "argmin", "argmax", "norm")
BINARY = ("add", "subtract", "multiply", "divide")
KERNELS = ("dot", "matmul", *REDUCTIONS, *BINARY, "scale", "clip")
KERNELS += ("cosine_similarity", "topk", "cosine_topk")
CONSTRUCTORS = ("array", "asarray", "Array", "zeros", "ones", "arange")
METHODS = ("m.sum", "m.mean", "m.min", "m.max", "m.dot", "m.matmul", "m.rmatmul", "m.convert")

# Errors a caller may see. NumPy's AxisError is a ValueError and an IndexError.
TYPED: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    OverflowError,
    MemoryError,
    IndexError,
    rp.RaptorsError,
)
KINDS = (TypeError, ValueError, OverflowError, MemoryError, IndexError)


class Failure(AssertionError):
    """The property does not hold for a case."""


# --------------------------------------------------------------------------------------------
# The documented domain (docs/kernels.md "Semantics and known deviations from NumPy", the spec
# section 5). Inside it Raptors must give NumPy's answer; outside it may instead raise a typed
# error (and if it answers, the answer must still be NumPy's).
#
# 1. Operands: NumPy arrays / NumPy scalars / rp.Array / buffers / (nested) lists whose NumPy
#    dtype is float32, float64, int32 or int64 (any byte order or alignment: "the bindings copy
#    such input"), with at most 2 dimensions ("At most 2 dimensions (ValueError naming the
#    limit)"); Python bool, int (also beyond int64: weak, NEP 50) and float. Not: other dtypes
#    (bool arrays, uint8, float16, complex, object, str, datetime), None, str, complex, 3-d.
# 2. Masked arrays (np.ma) are outside: the kernels read plain memory and refuse them with a
#    TypeError rather than ignore the mask (constructors convert them as np.asarray does).
# 3. The result NumPy gives must have one of the four dtypes: "where NumPy's result for
#    all-bool operands is a bool ... the call is a TypeError", and a strong use of an int
#    beyond int64 (np.sum(2**70), np.dot(x, 2**70)) is an object array to NumPy, an
#    OverflowError in Raptors.
# 4. `axis` and `k` are None or integers (operator.index, not bool); tuple axes (and
#    np.linalg.norm's int(axis) of floats and strings) are not taken.
# 5. cosine_similarity / cosine_topk / topk have no NumPy function: their references below
#    encode the contract (2-D matrix, 1-D or 2-D query of matching width, Python scalars a
#    TypeError; topk of a 1-D array, 1 <= k <= n; cosine_topk 1 <= k <= rows).
# 6. A Python int NumPy converts with asarray (the operand of a reduction, either of dot/matmul,
#    clip's `a`) is a strong int64: beyond int64 it is uint64 or object to NumPy, an
#    OverflowError or TypeError in Raptors. A weak one (ufunc operands, clip bounds) is kept "as
#    its float value" (docs/kernels.md), so ints of 2**1024 and beyond (no float value) are
#    outside: Raptors raises OverflowError where np.clip would drop such a bound.
# 7. A row or query of cosine_similarity / cosine_topk whose norm is 0 scores 0, whatever the
#    other vector holds ("A zero row or query scores 0"; NumPy's formula gives NaN for 0 * inf).
# 8. `dot` with a 0-d operand is a multiply ("dot with a 0-d operand is a multiply"): IEEE, so
#    inf * 0 is NaN, where NumPy's BLAS scal zeroes a vector times 0 (np.dot(x, 0) is all 0
#    even where x holds NaN); the reference is np.multiply of the operands as arrays.
# --------------------------------------------------------------------------------------------


def supported_dtype(dtype: np.dtype) -> bool:
    return dtype.newbyteorder("=") in SUPPORTED


INT64 = (-(2**63), 2**63 - 1)
FLOAT_MAX_INT = 2**1024  # ints at or beyond this have no float value


def operand_in_domain(x: Any, strong: bool = False) -> bool:
    """Rules 1 and 2 for one argument; `strong`: NumPy reads it with asarray (see rule 6)."""
    if isinstance(x, np.ma.MaskedArray):
        return False
    if isinstance(x, rp.Array):
        return True
    if type(x) is int:
        if strong:
            return INT64[0] <= x <= INT64[1]
        return abs(x) < FLOAT_MAX_INT
    if type(x) in (bool, float):
        return True
    if isinstance(x, (np.ndarray, np.generic)):
        return supported_dtype(x.dtype) and x.ndim <= 2
    if isinstance(x, (list, tuple, memoryview)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = np.asarray(x)
        except Exception:  # noqa: BLE001 - the property classifies every error
            return False
        return supported_dtype(a.dtype) and a.ndim <= 2
    return False


def index_like(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def result_in_domain(r: Any) -> bool:
    if isinstance(r, tuple):
        return all(result_in_domain(x) for x in r)
    if isinstance(r, np.ma.MaskedArray):
        return False
    if isinstance(r, (np.ndarray, np.generic)):
        return supported_dtype(r.dtype)
    return False


def operands_in_domain(case: Case) -> bool:
    """Rules 1, 2 and 4: the arguments alone (an error must then be of NumPy's kind)."""
    if case.kind == "kernel":
        args = case.args[:1] + tuple(b for b in case.args[1:] if b is not None)
        if not all(operand_in_domain(a) for a in (args if case.name == "clip" else case.args)):
            return False
        if case.name in ("topk", "cosine_similarity", "cosine_topk"):
            arrays = case.args[:1] if case.name == "topk" else case.args[:2]
            if any(type(a) in (bool, int, float) for a in arrays):
                return False  # rule 5
        strong = case.args[:1] if case.name in (*REDUCTIONS, "clip") else ()
        if case.name in ("dot", "matmul"):
            strong = case.args
        if not all(operand_in_domain(a, strong=True) for a in strong):
            return False
        if not all(index_like(case.kwargs[k]) for k in ("axis", "k") if k in case.kwargs):
            return False
        if set(case.kwargs) - {"axis", "k"}:
            return False
        if case.name in REDUCTIONS and len(case.args) > 1 and not index_like(case.args[1]):
            return False
        return not (case.name in ("topk", "cosine_topk") and not index_like(case.args[-1]))
    if case.kind == "method" and "axis" in case.kwargs and not index_like(case.kwargs["axis"]):
        return False
    products = ("m.dot", "m.matmul", "m.rmatmul")
    return not (
        case.kind == "method"
        and case.name in products
        and not operand_in_domain(case.args[1], strong=True)
    )


def in_domain(case: Case, expected: Any) -> bool:
    """Where NumPy answered `expected`: must Raptors answer too?"""
    if case.kind == "constructor":
        return (
            isinstance(expected, np.ndarray)
            and supported_dtype(expected.dtype)
            and expected.ndim <= 2
        )
    return operands_in_domain(case) and result_in_domain(expected)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str  # "kernel", "constructor" or "method"
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [describe(a) for a in self.args]
        parts += [f"{k}={describe(v)}" for k, v in self.kwargs.items()]
        return f"{self.kind} {self.name}({', '.join(parts)})"


def describe(x: Any) -> str:
    if isinstance(x, np.ma.MaskedArray):
        return f"np.ma.array({x.data!r}, mask={np.ma.getmaskarray(x).tolist()!r})"
    if isinstance(x, np.ndarray):
        with np.printoptions(threshold=60, precision=17):
            body = repr(x)
        f = x.flags
        return (
            f"<{body} dtype={x.dtype.str} shape={x.shape} strides={x.strides} "
            f"C={f.c_contiguous} F={f.f_contiguous} aligned={f.aligned} writeable={f.writeable}>"
        )
    if isinstance(x, rp.Array):
        return f"rp.asarray({describe(np.asarray(x))})"
    if isinstance(x, memoryview):
        return f"memoryview({describe(np.asarray(x))})"
    if isinstance(x, np.generic):
        return f"np.{type(x).__name__}({x!r})"
    r = repr(x)
    return r if len(r) < 400 else r[:400] + "..."


# Values -------------------------------------------------------------------------------------

SPECIAL_FLOATS = (np.nan, np.inf, -np.inf, -0.0, 0.0)


def values(rng: np.random.Generator, dtype: str, n: int, profile: str) -> np.ndarray:
    """n values of `dtype`, bounded so that NumPy's answer is well defined."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        if profile == "full":
            info = np.iinfo(dt)
            return rng.integers(int(info.min), int(info.max), size=n, endpoint=True, dtype=dt)
        if profile == "ties":
            return rng.integers(0 if dt.kind == "u" else -3, 4, size=n).astype(dt)
        lo = 0 if dt.kind == "u" else max(-1000, int(np.iinfo(dt).min))
        return rng.integers(lo, min(1001, int(np.iinfo(dt).max)), size=n).astype(dt)
    if dt.kind == "f":
        if profile == "ties":
            out = rng.integers(-3, 4, size=n).astype(dt)
        elif profile == "tiny" and dt.itemsize >= 4:
            out = (rng.standard_normal(n) * 1e-30).astype(dt)
        else:
            out = (rng.standard_normal(n) * 100.0).astype(dt)
        if profile == "special" and n:
            picks = rng.integers(0, n, size=max(1, n // 4))
            out[picks] = rng.choice(np.array(SPECIAL_FLOATS, dtype=dt), size=picks.size)
        return out
    if dt.kind == "b":
        return rng.integers(0, 2, size=n).astype(bool)
    if dt.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
    if dt.kind == "O":
        return np.array([int(v) for v in rng.integers(-50, 50, size=n)] or [], dtype=object)
    if dt.kind == "U":
        return np.array([str(v) for v in rng.integers(0, 9, size=n)], dtype="U3")
    if dt.kind == "S":
        return np.array([b"x%d" % v for v in rng.integers(0, 9, size=n)], dtype="S3")
    if dt.kind == "M":
        return rng.integers(0, 10**6, size=n).astype("datetime64[s]")
    raise AssertionError(dtype)


dtypes = st.one_of(
    st.sampled_from([d.name for d in SUPPORTED]),
    st.sampled_from([d.name for d in SUPPORTED]),
    st.sampled_from([d.name for d in SUPPORTED]),
    st.sampled_from(UNSUPPORTED),
)
profiles = st.sampled_from(("normal", "normal", "ties", "special", "full", "tiny"))
LAYOUTS = (
    "C",
    "C",
    "C",
    "F",
    "T",
    "reversed",
    "stepped",
    "broadcast",
    "unaligned",
    "readonly",
    "swapped",
    "masked",
    "rp",
    "list",
    "tuple",
    "memoryview",
    "scalar",
)
SIDE = st.integers(0, 7)
LONG = st.one_of(
    st.sampled_from((63, 64, 65, 1023, 1024, 1025, 4095, 4096, 4097)), st.integers(8, 3000)
)


@st.composite
def shapes(draw: st.DrawFn, min_dims: int = 0, max_dims: int = 3) -> tuple[int, ...]:
    ndim = draw(st.sampled_from([d for d in (0, 1, 1, 1, 2, 2, 2, 3) if min_dims <= d <= max_dims]))
    if ndim == 1 and draw(st.integers(0, 9)) == 0:
        return (draw(LONG),)
    return tuple(draw(SIDE) for _ in range(ndim))


def _base(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], profile: str) -> np.ndarray:
    n = math.prod(shape)
    return values(rng, dtype, n, profile).reshape(shape)


@st.composite
def operands(
    draw: st.DrawFn,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    layout: str | None = None,
    profile: str | None = None,
) -> Any:
    """An array-like of `shape` in one of the layouts (NumPy array, view, rp.Array, list, ...)."""
    shape = draw(shapes()) if shape is None else shape
    dtype = draw(dtypes) if dtype is None else dtype
    profile = draw(profiles) if profile is None else profile
    layout = draw(st.sampled_from(LAYOUTS)) if layout is None else layout
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = _base(rng, dtype, shape, profile)
    nd = len(shape)
    dt = base.dtype
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "T" and nd >= 2:
        return np.ascontiguousarray(base.T).T
    if layout == "reversed" and nd >= 1:
        return np.ascontiguousarray(base[::-1])[::-1] if draw(st.booleans()) else base[::-1]
    if layout == "stepped" and nd >= 1:
        big = _base(rng, dtype, tuple(2 * s + 1 for s in shape), profile)
        view = big[tuple(slice(1, 2 * s + 1, 2) for s in shape)]
        view[...] = base
        return view
    if layout == "broadcast" and nd >= 1:
        small = tuple(1 if draw(st.booleans()) else s for s in shape)
        return np.broadcast_to(_base(rng, dtype, small, profile), shape)
    if layout == "unaligned" and dt.kind in "fiuc" and dt.itemsize > 1:
        raw = bytearray(dt.itemsize * base.size + 1)
        view = np.frombuffer(raw, dtype=dt, count=base.size, offset=1).reshape(shape)
        view[...] = base
        return view
    if layout == "readonly":
        base.setflags(write=False)
        return base
    if layout == "swapped" and dt.kind in "fiuc" and dt.itemsize > 1:
        return base.astype(dt.newbyteorder(">" if dt.byteorder in "=<" else "<"))
    if layout == "masked":
        mask = rng.integers(0, 3, size=shape) == 0 if draw(st.booleans()) else False
        return np.ma.array(base, mask=mask)
    if layout == "rp" and supported_dtype(dt) and nd <= 2:
        return rp.asarray(base)
    if layout == "list" and dt.kind in "fiub":
        return base.tolist()
    if layout == "tuple" and dt.kind in "fiub" and nd >= 1:
        return tuple(base.tolist())
    if layout == "memoryview" and dt.kind in "fiub" and base.size:
        return memoryview(base)
    if layout == "scalar" and nd == 0:
        return base[()]
    return base


PY_SCALARS = (
    0,
    1,
    -1,
    3,
    -7,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**70,
    -(2**70),
    10**300,
    10**400,
    0.0,
    -0.0,
    2.5,
    -1e3,
    1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
)
ODD_SCALARS = (1j, None, "x", b"x", object())

python_scalars = st.one_of(
    st.sampled_from(PY_SCALARS),
    st.integers(-1000, 1000),
    st.floats(-1e3, 1e3),
)


@st.composite
def weird_lists(draw: st.DrawFn) -> Any:
    return draw(
        st.sampled_from(
            (
                [[1.0, 2.0], [3.0]],
                [[1, 2, 3], [4, 5]],
                [1.0, [2.0, 3.0]],
                [1.0, None, 2.0],
                ["a", "b"],
                [1, 2**70],
                [2**63, 1],
                [True, False, True],
                [1, 2.5, True],
                [[[1, 2]], [[3, 4]]],
                [],
                [[]],
                [1j, 2],
            )
        )
    )


@st.composite
def any_operand(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> Any:
    """Mostly an array of `shape`; sometimes a Python scalar, a list oddity or junk."""
    pick = draw(st.integers(0, 19))
    if pick == 0:
        return draw(python_scalars)
    if pick == 1:
        return draw(st.one_of(st.sampled_from(ODD_SCALARS), weird_lists()))
    if pick == 2:
        return draw(operands())  # a shape unrelated to the others
    return draw(operands(shape=shape))


AXES_BAD = (5, -5, 3, -3, True, False, 1.0, "0", (0,), (0, 1), 2**70, np.bool_(True))


@st.composite
def axis_kwargs(draw: st.DrawFn, ndim: int) -> dict[str, Any]:
    pick = draw(st.integers(0, 9))
    if pick <= 1:
        return {}
    if pick == 2:
        return {"axis": None}
    if pick <= 7:
        ax = draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))
        return {"axis": np.int64(ax) if draw(st.integers(0, 5)) == 0 else ax}
    return {"axis": draw(st.sampled_from(AXES_BAD))}


K_BAD = (0, -1, True, 2.0, 2**70, 2**64, None, "3")


@st.composite
def k_value(draw: st.DrawFn, n: int) -> Any:
    pick = draw(st.integers(0, 9))
    if pick <= 6:
        k = draw(st.integers(1, max(n, 1)))
        return np.int64(k) if pick == 0 else k
    if pick == 7:
        return n + draw(st.integers(1, 3))
    return draw(st.sampled_from(K_BAD))


def extra_kwargs(draw: st.DrawFn, kw: dict[str, Any]) -> dict[str, Any]:
    pick = draw(st.integers(0, 29))
    if pick == 0:
        kw = {**kw, "bogus": 1}
    elif pick == 1 and "axis" not in kw:
        kw = {**kw, "axis": 0}
    elif pick == 2 and "k" not in kw:
        kw = {**kw, "k": 1}
    return kw


@st.composite
def kernel_cases(draw: st.DrawFn, name: str | None = None) -> Case:
    name = draw(st.sampled_from(KERNELS)) if name is None else name
    kw: dict[str, Any] = {}
    if name in REDUCTIONS:
        shape = draw(shapes())
        x = draw(any_operand(shape))
        kw = draw(axis_kwargs(len(shape)))
        args: tuple[Any, ...] = (x,)
        if "axis" in kw and draw(st.integers(0, 4)) == 0:
            args, kw = (x, kw["axis"]), {}
    elif name in ("dot", "matmul"):
        m, k, n = draw(SIDE), draw(SIDE), draw(SIDE)
        form = draw(st.sampled_from(("vv", "mv", "vm", "mm", "mm", "0d", "any")))
        if form == "vv":
            k = draw(st.one_of(SIDE, LONG))
        sa, sb = {
            "vv": ((k,), (k,)),
            "mv": ((m, k), (k,)),
            "vm": ((k,), (k, n)),
            "mm": ((m, k), (k, n)),
            "0d": ((), (m, k)),
            "any": (draw(shapes()), draw(shapes())),
        }[form]
        a, b = draw(any_operand(sa)), draw(any_operand(sb))
        args = (b, a) if draw(st.booleans()) and form == "0d" else (a, b)
    elif name in BINARY:
        shape = draw(shapes())
        form = draw(st.sampled_from(("same", "same", "row", "col", "scalar", "0d", "any")))
        if form == "row" and shape:
            sb: tuple[int, ...] = shape[-1:]
        elif form == "col" and len(shape) >= 2:
            sb = (shape[0], 1)
        elif form == "0d":
            sb = ()
        elif form == "any":
            sb = draw(shapes())
        else:
            sb = shape
        a = draw(any_operand(shape))
        b = draw(python_scalars) if form == "scalar" else draw(any_operand(sb))
        args = (b, a) if draw(st.booleans()) else (a, b)
    elif name == "scale":
        shape = draw(shapes())
        a = draw(any_operand(shape))
        pick = draw(st.integers(0, 5))
        if pick == 0:
            factor = draw(any_operand(shape))
        elif pick == 1:
            factor = draw(operands(shape=(), layout="scalar"))
        else:
            factor = draw(python_scalars)
        args = (a, factor)
    elif name == "clip":
        shape = draw(shapes())
        a = draw(any_operand(shape))

        def bound() -> Any:
            pick = draw(st.integers(0, 7))
            if pick == 0:
                return None
            if pick == 1:
                return draw(operands(shape=shape[-1:] if shape else ()))
            if pick == 2:
                return draw(operands(shape=(), layout="scalar"))
            return draw(python_scalars)

        args = (a, bound(), bound())
    elif name in ("cosine_similarity", "cosine_topk"):
        rows, d = draw(SIDE), draw(st.one_of(SIDE, st.integers(8, 64)))
        form = draw(st.sampled_from(("1d", "1d", "2d", "2d", "any")))
        sq = {"1d": (d,), "2d": (draw(SIDE), d), "any": draw(shapes())}[form]
        dt = draw(dtypes)
        prof = draw(st.sampled_from(("normal", "ties", "tiny", "special", "normal")))
        m = draw(
            st.one_of(operands(shape=(rows, d), dtype=dt, profile=prof), any_operand((rows, d)))
        )
        q = draw(st.one_of(operands(shape=sq, dtype=dt, profile=prof), any_operand(sq)))
        args = (m, q)
        if name == "cosine_topk":
            k = draw(k_value(rows))
            if draw(st.booleans()):
                args = (m, q, k)
            else:
                kw = {"k": k}
    else:  # topk
        n = draw(st.one_of(SIDE, LONG))
        shape = (n,) if draw(st.integers(0, 5)) else draw(shapes())
        x = draw(any_operand(shape))
        k = draw(k_value(n))
        if draw(st.booleans()):
            args = (x, k)
        else:
            args, kw = (x,), {"k": k}
    return Case("kernel", name, args, extra_kwargs(draw, kw))


CTOR_DTYPES = (
    None,
    "float32",
    "float64",
    "int32",
    "int64",
    np.float32,
    np.dtype("int64"),
    float,
    int,
    ">f8",
    "<i4",
    "bool",
    "complex128",
    "uint8",
    "f2",
    "not-a-dtype",
    object,
)
SHAPE_ARGS = (0, 1, 5, (), (0,), (3,), (2, 3), (0, 4), (2, 2, 2), -1, (2, -1), 2.0, "3", None)
SHAPE_ARGS += ((2**62, 4), [2, 3], np.int64(4))
ARANGE_ARGS = (0, 1, 7, 1024, 4097, -3, 2.5, -0.5, True, float("nan"), float("inf"), 2**70)
ARANGE_ARGS += (np.int32(5), np.float32(3.5), "5", None, 1j)


@st.composite
def constructor_cases(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(CONSTRUCTORS))
    dtype = draw(st.sampled_from(CTOR_DTYPES))
    if name in ("zeros", "ones"):
        shape = draw(st.one_of(st.sampled_from(SHAPE_ARGS), shapes(max_dims=3)))
        return Case("constructor", name, (shape,) if dtype is None else (shape, dtype))
    if name == "arange":
        n = draw(st.one_of(st.sampled_from(ARANGE_ARGS), st.integers(-2, 300)))
        return Case("constructor", name, (n,) if dtype is None else (n, dtype))
    pick = draw(st.integers(0, 9))
    if pick == 0:
        obj = draw(st.one_of(python_scalars, st.sampled_from(ODD_SCALARS), weird_lists()))
    else:
        obj = draw(operands())
    if name == "asarray" and isinstance(obj, rp.Array) and draw(st.booleans()):
        dtype = draw(st.sampled_from((None, obj.dtype)))
    args = (obj, dtype) if dtype is not None or name == "Array" else (obj,)
    return Case("constructor", name, args)


@st.composite
def method_cases(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(METHODS))
    shape = draw(shapes(max_dims=2))
    a = rp.asarray(
        draw(
            operands(
                shape=shape, dtype=draw(st.sampled_from([d.name for d in SUPPORTED])), layout="C"
            )
        )
    )
    if name in ("m.sum", "m.mean", "m.min", "m.max"):
        kw = draw(axis_kwargs(len(shape)))
        if draw(st.integers(0, 9)) == 0:
            kw = {**kw, "keepdims": True}
        return Case("method", name, (a,), kw)
    if name in ("m.dot", "m.matmul", "m.rmatmul"):
        k = shape[-1] if shape else draw(SIDE)
        if name == "m.rmatmul":
            other_shape = (draw(SIDE), shape[0]) if len(shape) == 2 else (shape[0] if shape else k,)
        else:
            other_shape = draw(st.sampled_from(((k,), (k, draw(SIDE)), ())))
        other = draw(any_operand(other_shape))
        if name == "m.rmatmul" and isinstance(other, (np.ndarray, np.generic)):
            other = np.asarray(other).tolist()  # an ndarray on the left is NumPy's own matmul
        return Case("method", name, (a, other))
    return Case("method", name, (a,))


def cases() -> st.SearchStrategy[Case]:
    """Kernels mostly, then constructors, then rp.Array methods."""
    return st.one_of(
        kernel_cases(), kernel_cases(), kernel_cases(), kernel_cases(), kernel_cases(),
        kernel_cases(), constructor_cases(), method_cases(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def to_numpy(x: Any) -> Any:
    """What NumPy sees for an operand: an rp.Array is its buffer; anything else unchanged."""
    return np.asarray(x) if isinstance(x, rp.Array) else x


def _no_extra(kwargs: dict[str, Any], allowed: tuple[str, ...], name: str) -> None:
    extra = set(kwargs) - set(allowed)
    if extra:
        raise TypeError(f"{name}() got an unexpected keyword argument {min(extra)!r}")


def _index(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, not bool")
    i = operator.index(v)
    if not INT64[0] <= i <= INT64[1]:
        raise OverflowError(f"{what} {i} does not fit a C ssize_t")
    return i


def _plain(x: Any, name: str) -> np.ndarray:
    """An operand of a kernel without a NumPy function: supported dtypes, no masks."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name}: masked arrays are not supported")
    if x is None or isinstance(x, (str, bytes, complex)):
        raise TypeError(f"{name}: unsupported operand {type(x).__name__}")
    a = np.asarray(x)
    if not supported_dtype(a.dtype):
        raise TypeError(f"{name}: unsupported dtype {a.dtype}")
    return a


def np_topk(values: Any, k: Any = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    _no_extra(kwargs, (), "topk")
    if type(values) in (int, float, bool):
        raise TypeError("topk takes an array, not a Python scalar")
    v = _plain(values, "topk")
    kk = _index(k, "k")
    if v.ndim != 1:
        raise ValueError("topk takes a 1-D array")
    if kk < 1 or kk > v.shape[0]:
        raise ValueError("k out of range")
    if v.dtype.kind == "f":
        with np.errstate(all="ignore"):
            order = np.argsort(-v, kind="stable")[:kk].astype(np.intp)
        return order, v[order]
    return ref_topk(v, kk)


def np_cosine(matrix: Any, query: Any, **kwargs: Any) -> np.ndarray:
    _no_extra(kwargs, (), "cosine_similarity")
    if type(matrix) in (int, float, bool) or type(query) in (int, float, bool):
        raise TypeError("cosine_similarity takes arrays, not Python scalars")
    m, q = _plain(matrix, "cosine_similarity"), _plain(query, "cosine_similarity")
    if m.ndim != 2 or q.ndim not in (1, 2) or q.shape[-1] != m.shape[1]:
        raise ValueError("shapes not aligned")
    return cosine_reference(m, q)


def cosine_reference(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """ref_cosine_similarity with rule 7: a zero-norm row or query scores 0."""
    out = ref_cosine_similarity(m, q)
    with np.errstate(all="ignore"):
        mn = np.linalg.norm(m.astype(np.float64), axis=1)
        qn = np.linalg.norm(q.astype(np.float64), axis=-1)
    zero = (mn == 0)[:, None] | (qn == 0)[None, :] if q.ndim == 2 else (mn == 0) | (qn == 0)
    out[zero] = 0
    return out


def np_cosine_topk(matrix: Any, query: Any, k: Any = None, **kwargs: Any) -> Any:
    _no_extra(kwargs, (), "cosine_topk")
    kk = _index(k, "k")
    scores = np_cosine(matrix, query)
    if kk < 1 or kk > scores.shape[0]:
        raise ValueError("k out of range")
    return scores, kk


def _reduction(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(a: Any, axis: Any = None, **kwargs: Any) -> Any:
        _no_extra(kwargs, (), fn.__name__)
        return fn(a, axis=axis)

    return call


def _norm(a: Any, axis: Any = None) -> Any:
    return np.linalg.norm(a, axis=axis)


_norm.__name__ = "norm"


def np_dot(a: Any, b: Any, **kwargs: Any) -> Any:
    """np.dot, but a 0-d operand is a multiply (rule 8)."""
    out = np.dot(a, b, **kwargs)
    if np.ndim(a) == 0 or np.ndim(b) == 0:  # np.dot's dtype, multiply's values
        return np.multiply(np.asarray(a, dtype=out.dtype), np.asarray(b, dtype=out.dtype))
    return out


NP_REF: dict[str, Callable[..., Any]] = {
    "dot": np_dot,
    "matmul": np.matmul,
    **{r: _reduction(getattr(np, r)) for r in REDUCTIONS if r != "norm"},
    "norm": _reduction(_norm),
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.true_divide,
    "scale": np.multiply,
    "clip": np.clip,
    "cosine_similarity": np_cosine,
    "topk": np_topk,
    "cosine_topk": np_cosine_topk,
}


def quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def reference(case: Case) -> Any:
    """NumPy's answer (raises what NumPy raises)."""
    args = tuple(to_numpy(a) for a in case.args)
    if case.kind == "kernel":
        return quiet(NP_REF[case.name], *args, **case.kwargs)
    if case.kind == "constructor":
        if case.name == "arange":  # np.arange's second positional is `stop`
            return quiet(np.arange, args[0], dtype=args[1] if len(args) > 1 else None)
        fn = {"zeros": np.zeros, "ones": np.ones}.get(case.name, np.asarray)
        return quiet(fn, *args)
    a = args[0]
    if case.name in ("m.sum", "m.mean", "m.min", "m.max"):
        return quiet(getattr(np, case.name[2:]), a, **case.kwargs)
    if case.name == "m.dot":
        return quiet(np_dot, a, args[1])
    if case.name == "m.matmul":
        return quiet(np.matmul, a, args[1])
    if case.name == "m.rmatmul":
        return quiet(np.matmul, args[1], a)
    return a  # m.convert


def call_raptors(case: Case, invoke: Callable[..., Any] | None = None) -> Any:
    if case.kind == "kernel":
        fn = getattr(rp, case.name)
        if invoke is not None:
            return invoke(fn, case.args, case.kwargs)
        return quiet(fn, *case.args, **case.kwargs)
    if case.kind == "constructor":
        return quiet(getattr(rp, case.name), *case.args)
    a = case.args[0]
    if case.name in ("m.sum", "m.mean", "m.min", "m.max"):
        return quiet(getattr(a, case.name[2:]), **case.kwargs)
    if case.name == "m.dot":
        return quiet(a.dot, case.args[1])
    if case.name == "m.matmul":
        return quiet(lambda: a @ case.args[1])
    if case.name == "m.rmatmul":
        return quiet(lambda: case.args[1] @ a)
    return (a.numpy(), a.tolist(), a.shape, a.dtype, a.ndim, a.size)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def _upcast(x: Any) -> Any:
    if isinstance(x, np.ndarray) and not isinstance(x, np.ma.MaskedArray) and x.dtype == np.float32:
        return x.astype(np.float64)
    return x


def _f64(x: Any) -> np.ndarray:
    if isinstance(x, (list, tuple, memoryview)):
        x = np.asarray(x)
    if isinstance(x, (bool, int)):
        x = float(x)
    return np.abs(np.asarray(to_numpy(x), dtype=np.float64))


def _scale(case: Case, np_args: tuple[Any, ...]) -> Any:
    """The magnitude a float result's rounding error is relative to (None: the result's)."""
    name = case.name
    try:
        if name in ("sum", "mean", "norm"):
            axis = case.kwargs.get("axis", np_args[1] if len(np_args) > 1 else None)
            return quiet(reduction_scale, name, np.asarray(np_args[0]), axis)
        if name in ("m.sum", "m.mean"):
            return quiet(reduction_scale, name[2:], np.asarray(np_args[0]), case.kwargs.get("axis"))
        if name in ("add", "subtract"):
            return quiet(np.add, _f64(np_args[0]), _f64(np_args[1]))
        if name in ("dot", "m.dot"):
            return quiet(np.dot, _f64(np_args[0]), _f64(np_args[1]))
        if name in ("matmul", "m.matmul"):
            return quiet(np.matmul, _f64(np_args[0]), _f64(np_args[1]))
        if name == "m.rmatmul":
            return quiet(np.matmul, _f64(np_args[1]), _f64(np_args[0]))
    except Exception:  # noqa: BLE001 - the property classifies every error
        return None
    return None


def _values_match(got: Any, candidates: list[Any], scale: Any, dtype: np.dtype) -> None:
    """`got` within tolerance of one of the references (NumPy's own, or NumPy in float64)."""
    first: AssertionError | None = None
    for ref in candidates:
        try:
            assert_values(got, ref, scale=scale, dtype=dtype)
            return
        except AssertionError as exc:
            first = first or exc
    assert first is not None
    raise first


def _check_array_kind(got: Any, expected: Any, want_rp: bool, what: str) -> np.ndarray:
    if isinstance(expected, np.ndarray):
        want = rp.Array if want_rp else np.ndarray
        if not isinstance(got, want) or isinstance(got, np.ma.MaskedArray):
            raise Failure(f"{what}: expected {want.__name__}, got {type(got).__name__}")
        arr = np.asarray(got)
        if arr.dtype != expected.dtype.newbyteorder("="):
            raise Failure(f"{what}: dtype {arr.dtype} != NumPy's {expected.dtype}")
        if arr.shape != expected.shape:
            raise Failure(f"{what}: shape {arr.shape} != NumPy's {expected.shape}")
        return arr
    if not isinstance(expected, np.generic):
        raise Failure(f"{what}: NumPy's result is {describe(expected)}, Raptors' {describe(got)}")
    if not isinstance(got, np.generic):
        raise Failure(
            f"{what}: expected NumPy scalar {type(expected).__name__}, got {type(got).__name__}"
        )
    if got.dtype != expected.dtype:
        raise Failure(f"{what}: dtype {got.dtype} != NumPy's {expected.dtype}")
    return np.asarray(got)


def _compare_kernel(case: Case, got: Any, expected: Any) -> None:
    want_rp = any(isinstance(a, rp.Array) for a in case.args) or (
        case.kind == "method" and "keepdims" not in case.kwargs
    )
    np_args = tuple(to_numpy(a) for a in case.args)
    if case.name == "topk":
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Failure(f"topk: expected a pair, got {type(got).__name__}")
        for g, e, what in zip(got, expected, ("indices", "values"), strict=True):
            arr = _check_array_kind(g, e, want_rp, f"topk {what}")
            if not np.array_equal(arr, e, equal_nan=e.dtype.kind == "f"):
                raise Failure(f"topk {what}: {arr!r} != {e!r}")
        return
    if case.name == "cosine_topk":
        _compare_cosine_topk(case, got, expected, want_rp)
        return
    if case.name.startswith("m.") and case.name != "m.convert":
        # rp.Array methods: ndarray results come back as rp.Array unless NumPy's method ran.
        want_rp = "keepdims" not in case.kwargs
    exp = np.asarray(expected)
    arr = _check_array_kind(got, expected, want_rp, case.name)
    candidates = [exp]
    weak_float = any(type(a) is float for a in np_args)
    if exp.dtype.kind == "f" and not weak_float and case.kind == "kernel":
        try:
            up = tuple(_upcast(a) for a in np_args)
            ref64 = quiet(reference, Case(case.kind, case.name, up, case.kwargs))
            if case.name == "cosine_similarity":
                ref64 = quiet(cosine_reference, np.asarray(np_args[0]), np.asarray(np_args[1]))
            candidates.append(quiet(np.asarray(ref64).astype, exp.dtype))
        except Exception:  # noqa: BLE001, S110 - the property classifies every error
            pass
    scale = _scale(case, np_args)
    if case.name == "cosine_similarity":
        scale = 1.0
    elif scale is not None and np.size(scale) == exp.size:
        scale = np.reshape(scale, exp.shape)  # keepdims
    try:
        _values_match(arr, candidates, scale, exp.dtype)
    except AssertionError as exc:
        raise Failure(f"{case.name}: values differ from NumPy's: {exc}") from None


def _compare_cosine_topk(case: Case, got: Any, expected: Any, want_rp: bool) -> None:
    scores, k = expected
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Failure(f"cosine_topk: expected a pair, got {type(got).__name__}")
    one = scores.ndim == 1
    shape = (k,) if one else (scores.shape[1], k)
    idx = _check_array_kind(got[0], np.zeros(shape, np.intp), want_rp, "cosine_topk indices")
    val = _check_array_kind(got[1], np.zeros(shape, scores.dtype), want_rp, "cosine_topk values")
    tol = 10 * RTOL[scores.dtype] + 1e-30
    cols = [scores] if one else [scores[:, j] for j in range(scores.shape[1])]
    rows_idx = [idx] if one else list(idx)
    rows_val = [val] if one else list(val)
    for j, (s, i, v) in enumerate(zip(cols, rows_idx, rows_val, strict=True)):
        where = f"cosine_topk query {j}"
        if len(set(i.tolist())) != k or i.min(initial=0) < 0 or i.max(initial=0) >= s.shape[0]:
            raise Failure(f"{where}: indices {i!r} not {k} distinct rows")
        s64 = s.astype(np.float64)
        v64 = v.astype(np.float64)
        if not np.allclose(v64, s64[i], rtol=0, atol=tol, equal_nan=True):
            raise Failure(f"{where}: scores {v!r} are not the rows' scores {s[i]!r}")
        finite = v64[~np.isnan(v64)]
        if np.isnan(v64).any() and np.isnan(v64).argmax() < finite.size:
            raise Failure(f"{where}: NaN scores before numbers: {v!r}")
        if np.any(np.diff(finite) > 0):
            raise Failure(f"{where}: scores not in descending order: {v!r}")
        best = -np.sort(-np.where(np.isnan(s64), -np.inf, s64), kind="stable")[:k]
        chosen = np.where(np.isnan(v64), -np.inf, v64)
        if np.any(chosen < best - tol):
            raise Failure(f"{where}: top {k} scores {v!r}, best are {best!r}")


def _same_list(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_same_list(x, y) for x, y in zip(a, b, strict=True))
        )
    if type(a) is not type(b):
        return False
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _compare_array(got: Any, expected: np.ndarray, what: str) -> None:
    if not isinstance(got, rp.Array):
        raise Failure(f"{what}: expected rp.Array, got {type(got).__name__}")
    want_dtype = expected.dtype.newbyteorder("=")
    if got.dtype != want_dtype.name or got.shape != expected.shape:
        raise Failure(
            f"{what}: {got.dtype}{got.shape} != NumPy's {want_dtype.name}{expected.shape}"
        )
    if got.ndim != expected.ndim or got.size != expected.size:
        raise Failure(f"{what}: ndim/size {got.ndim}/{got.size} != {expected.ndim}/{expected.size}")
    arr = np.asarray(got)
    if arr.dtype != want_dtype or not np.array_equal(
        arr, expected, equal_nan=want_dtype.kind == "f"
    ):
        raise Failure(f"{what}: values {arr!r} != NumPy's {expected!r}")
    if not _same_list(got.tolist(), expected.tolist()):
        raise Failure(f"{what}: tolist() {got.tolist()!r} != {expected.tolist()!r}")
    if expected.ndim and len(got) != len(expected):
        raise Failure(f"{what}: len {len(got)} != {len(expected)}")


def compare(case: Case, got: Any, expected: Any) -> None:
    if case.kind == "constructor":
        _compare_array(got, np.asarray(expected), f"rp.{case.name}")
        if case.name == "asarray" and isinstance(case.args[0], rp.Array):
            dt = case.args[1] if len(case.args) > 1 else None
            if (dt is None or np.dtype(dt).name == case.args[0].dtype) and got is not case.args[0]:
                raise Failure("rp.asarray of an rp.Array of that dtype is not the same object")
        return
    if case.name == "m.convert":
        arr, lst, shape, dtype, ndim, size = got
        if not isinstance(arr, np.ndarray) or not np.array_equal(arr, expected, equal_nan=True):
            raise Failure(f"numpy(): {arr!r} != {expected!r}")
        if not _same_list(lst, expected.tolist()):
            raise Failure(f"tolist(): {lst!r} != {expected.tolist()!r}")
        if (shape, dtype, ndim, size) != (
            expected.shape,
            expected.dtype.name,
            expected.ndim,
            expected.size,
        ):
            raise Failure(f"metadata {(shape, dtype, ndim, size)} != NumPy's")
        return
    _compare_kernel(case, got, expected)
    for out in got if isinstance(got, tuple) else (got,):
        if isinstance(out, np.ndarray):
            for a in case.args:
                if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
                    raise Failure(f"{case.name}: the result shares memory with an input")


# --------------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------------


def _snapshot(x: Any) -> Any:
    if isinstance(x, np.ma.MaskedArray):
        return ("ma", x.data.copy(), np.ma.getmaskarray(x).copy(), x.flags.writeable)
    if isinstance(x, np.ndarray):
        return ("nd", x.copy(), x.dtype, x.shape, x.strides, x.flags.writeable)
    if isinstance(x, rp.Array):
        return ("rp", np.array(x), x.dtype, x.shape)
    if isinstance(x, memoryview):
        return ("mv", bytes(x))
    if isinstance(x, np.generic):
        return ("np", x.copy())
    if isinstance(x, (list, tuple)):
        return ("list", copy.deepcopy(x))
    return ("other", x)


def _unchanged(before: Any, x: Any) -> bool:
    kind = before[0]
    if kind == "ma":
        return (
            _eq(before[1], x.data)
            and np.array_equal(before[2], np.ma.getmaskarray(x))
            and before[3] == x.flags.writeable
        )
    if kind == "nd":
        return _eq(before[1], x) and before[2:] == (x.dtype, x.shape, x.strides, x.flags.writeable)
    if kind == "rp":
        return _eq(before[1], np.asarray(x)) and before[2:] == (x.dtype, x.shape)
    if kind == "mv":
        return before[1] == bytes(x)
    if kind == "np":
        return _eq(np.asarray(before[1]), np.asarray(x))
    if kind == "list":
        return bool(before[1] == x)
    return before[1] is x


def _eq(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return np.array_equal(a, b, equal_nan=True)
    return bool(np.array_equal(a, b))


def documented_error(case: Case, error: BaseException) -> bool:
    """An error docs/kernels.md promises whatever else is wrong with the call: "`matmul`
    refuses 0-d operands with NumPy's message" (checked before NEP 50's OverflowError); a
    keyword the kernel does not take is a TypeError naming it (arguments are bound first);
    all-bool operands are refused before `axis` is checked."""
    if isinstance(error, TypeError):
        message = str(error)
        if "got an unexpected keyword argument" in message:
            return True
        return "of Python bools" in message and all(isinstance(a, bool) for a in case.args)
    if case.name not in ("matmul", "m.matmul", "m.rmatmul") or not isinstance(error, ValueError):
        return False
    return any(np.ndim(to_numpy(a)) == 0 for a in case.args if not isinstance(a, list))


def _kinds(exc: BaseException) -> set[type[Exception]]:
    return {k for k in KINDS if isinstance(exc, k)}


def check_call(case: Case, invoke: Callable[..., Any] | None = None) -> str | None:
    """The property for one case. Returns the typed error Raptors raised (its class name), or
    None when it succeeded; raises `Failure` when the property does not hold.

    `invoke(fn, args, kwargs)` runs a kernel some other way (through `pool.submit`, awaited).
    """
    before = [_snapshot(a) for a in case.args]
    try:
        expected = reference(case)
        np_error: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - the property classifies every error
        expected, np_error = None, exc
    got: Any = None
    error: BaseException | None = None
    try:
        got = call_raptors(case, invoke)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the property classifies every error
        error = exc
    for snap, a in zip(before, case.args, strict=True):
        if not _unchanged(snap, a):
            raise Failure(f"an input changed during the call: {describe(a)}")
    if error is not None:
        if not isinstance(error, TYPED) or isinstance(error, SystemError):
            raise Failure(
                f"untyped error {type(error).__module__}.{type(error).__qualname__}: {error}"
            ) from error
        message = str(error)
        if not message.strip():
            raise Failure(f"{type(error).__name__} with an empty message") from error
        if isinstance(error, rp.RaptorsError) or "panick" in message:
            raise Failure(f"panic: {type(error).__name__}: {message}") from error
        if np_error is not None:
            if documented_error(case, error):
                return type(error).__name__
            if (
                operands_in_domain(case)
                and _kinds(np_error)
                and not _kinds(error) & _kinds(np_error)
            ):
                raise Failure(
                    f"error kind differs: Raptors {type(error).__name__}({message!r}), "
                    f"NumPy {type(np_error).__name__}({np_error})"
                ) from error
        elif in_domain(case, expected):
            raise Failure(
                f"Raptors raised {type(error).__name__}({message!r}) where NumPy gave "
                f"{describe(expected)}"
            ) from error
        return type(error).__name__
    if np_error is not None:
        raise Failure(
            f"Raptors returned {describe(got)} where NumPy raised "
            f"{type(np_error).__name__}({np_error})"
        )
    compare(case, got, expected)
    return None
