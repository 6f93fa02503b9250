"""Array constructors: `rp.array`, `rp.asarray`, `rp.zeros`, `rp.ones`, `rp.arange`.

They follow NumPy's conversion and default-dtype rules (NumPy does the
conversion), then copy once into Rust-owned memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._raptors import Array

__all__ = ["arange", "array", "asarray", "ones", "zeros"]


def array(obj: Any, dtype: Any = None) -> Array:
    """A new ``rp.Array`` holding a copy of ``obj`` (NumPy's conversion rules)."""
    return Array(obj, dtype)


def asarray(obj: Any, dtype: Any = None) -> Array:
    """``obj`` itself when it is an ``rp.Array`` of that dtype, else ``array(obj, dtype)``."""
    if isinstance(obj, Array) and (dtype is None or np.dtype(dtype).name == obj.dtype):
        return obj
    return Array(obj, dtype)


def zeros(shape: int | tuple[int, ...], dtype: Any = "float64") -> Array:
    return Array(np.zeros(shape, dtype=dtype))


def ones(shape: int | tuple[int, ...], dtype: Any = "float64") -> Array:
    return Array(np.ones(shape, dtype=dtype))


def arange(n: float, dtype: Any = None) -> Array:
    """``0, 1, ..., n-1``; integers default to int64 and floats to float64, as in NumPy."""
    return Array(np.arange(n, dtype=dtype))
