"""Broadcast and strided views are read in place; memory exhaustion is a
`MemoryError`, an overflowing output size a `ValueError` (issue 10, items 2
and 4). NumPy is the oracle for values."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import raptors as rp
from kernel_cases import kernel_pool_fixture  # noqa: F401  (fixture kernel_pool)

# 10**10 float64 elements: a copy would need 80 GB, more than this machine
# (or any CI runner) has; reading them in place is O(1) for a broadcast.
HUGE = 10**10


@pytest.mark.parametrize("value", [0.5, -3.0, 7])
def test_reductions_of_a_huge_broadcast_are_read_in_place(value):
    x = np.broadcast_to(np.asarray(value), (HUGE,))
    small = np.broadcast_to(np.asarray(value), (10**6,))
    assert rp.sum(x) == value * HUGE
    assert rp.mean(x) == value
    assert rp.min(x) == value and rp.max(x) == value
    assert rp.argmin(x) == 0 and rp.argmax(x) == 0
    np.testing.assert_allclose(rp.norm(x), abs(value) * HUGE**0.5, rtol=1e-12)
    # The same kernels on a smaller broadcast agree with NumPy.
    for fn, ref in ((rp.sum, np.sum), (rp.mean, np.mean), (rp.max, np.max)):
        np.testing.assert_allclose(fn(small), ref(small), rtol=1e-12)
    assert rp.sum(small).dtype == np.sum(small).dtype


def test_two_d_broadcasts_and_axes_match_numpy():
    row = np.arange(1000, dtype=np.float64) % 17 - 8
    rows = np.broadcast_to(row, (10**7, 1000))  # 80 GB if copied
    assert rp.max(rows) == row.max()
    assert rp.argmax(rows) == np.argmax(row)
    np.testing.assert_allclose(rp.sum(rows), row.sum() * 10**7, rtol=1e-12)
    col = np.broadcast_to(row[:, None], (1000, 10**7))
    assert rp.argmin(col) == np.argmin(row) * 10**7
    np.testing.assert_allclose(rp.sum(col, axis=1), row * 10**7, rtol=1e-12)
    small = np.broadcast_to(row[:, None], (1000, 300))
    for axis in (None, 0, 1):
        np.testing.assert_allclose(rp.sum(small, axis=axis), np.sum(small, axis=axis))
        np.testing.assert_array_equal(rp.argmax(small, axis=axis), np.argmax(small, axis=axis))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_strided_views_match_numpy(dtype):
    base = (np.arange(3 * 200_003) % 101 - 50).astype(dtype)
    x = base[::3]
    assert not x.flags.c_contiguous
    for fn, ref in ((rp.sum, np.sum), (rp.min, np.min), (rp.argmax, np.argmax)):
        np.testing.assert_allclose(fn(x), ref(x), rtol=1e-5)
    np.testing.assert_allclose(rp.norm(x), np.linalg.norm(x), rtol=1e-6)
    m = base[: 600 * 1000].reshape(600, 1000)[::2, ::3]
    for axis in (None, 0, 1):
        np.testing.assert_allclose(rp.sum(m, axis=axis), np.sum(m, axis=axis), rtol=1e-5)
        np.testing.assert_allclose(rp.max(m, axis=axis), np.max(m, axis=axis))
    np.testing.assert_allclose(rp.add(m, 1.5), np.add(m, 1.5), rtol=1e-6)
    np.testing.assert_allclose(rp.multiply(m, m.T.T), np.multiply(m, m), rtol=1e-6)
    np.testing.assert_allclose(rp.clip(m, -10, 10), np.clip(m, -10, 10))


def test_elementwise_with_a_huge_broadcast_operand_reads_it_as_a_scalar():
    x = np.arange(10**6, dtype=np.float64)
    b = np.broadcast_to(np.float32(2.0), (10**6,))
    np.testing.assert_array_equal(rp.multiply(x, b), np.multiply(x, b))
    rows = np.broadcast_to(np.arange(7, dtype=np.int32), (5, 7))
    np.testing.assert_array_equal(rp.subtract(rows, x[:7]), np.subtract(rows, x[:7]))


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter whose address space is capped at
    8 GB, so an allocation that escapes the size check fails (abort) instead
    of thrashing the machine."""
    prelude = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        import numpy as np, raptors as rp
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_peak_memory_of_broadcast_and_strided_reductions_stays_flat():
    result = _run(
        """
        import resource
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base = np.ones(2 * 10**7)          # 160 MB, allocated before measuring
        strided = base[::2]
        before = peak()
        assert rp.sum(np.broadcast_to(1.0, (10**9,))) == 1e9   # 8 GB if copied
        assert rp.mean(strided) == 1.0                         # 80 MB if copied
        assert rp.sum(np.broadcast_to(1.0, (10**5, 10**4)), axis=0)[0] == 1e5
        print(peak() - before)
        """
    )
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.split()[-1])
    assert growth < 16 << 20, f"peak RSS grew by {growth} bytes"


def test_an_output_beyond_memory_raises_memory_error_and_the_process_survives():
    result = _run(
        """
        x = np.broadcast_to(1.0, (10**12,))
        try:
            rp.add(x, 1.0)
        except MemoryError as e:
            print("direct:", e)
        try:
            rp.sum(np.broadcast_to(1.0, (10**12, 2)), axis=1)
        except MemoryError as e:
            print("axis:", e)
        print(rp.add(np.ones(3), 1.0).sum())
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("direct: add:") and "8000000000000 bytes" in lines[0], lines
    assert lines[1].startswith("axis: sum:") and "8000000000000 bytes" in lines[1], lines
    assert lines[2] == "6.0"


@pytest.mark.parametrize("name", ["add", "subtract", "multiply", "divide", "scale"])
def test_every_elementwise_output_beyond_memory_is_a_memory_error(name):
    # The fast path's uninitialised output keeps the memory rule: refused
    # before allocation, MemoryError naming the kernel and the size.
    x = np.broadcast_to(1.0, (10**12,))
    with pytest.raises(MemoryError, match=rf"{name}: unable to allocate 8000000000000 bytes"):
        getattr(rp, name)(x, 2.0)
    assert getattr(rp, name)(np.ones(3), 2.0).shape == (3,)


async def test_memory_error_through_submit(kernel_pool):
    x = np.broadcast_to(1.0, (10**12,))
    with pytest.raises(MemoryError, match="8000000000000 bytes"):
        await kernel_pool.submit(rp.add, x, 1.0)
    # Found while running (an axis reduction's output): the job's exception.
    job = kernel_pool.submit(rp.sum, np.broadcast_to(1.0, (10**12, 2)), axis=1)
    with pytest.raises(MemoryError, match="sum: unable to allocate 8000000000000 bytes"):
        await job
    assert await kernel_pool.submit(rp.sum, np.ones(4)) == 4.0


OVERFLOW_CASES = {
    "matmul": (rp.matmul, (2**33, 1), (1, 2**33)),
    "dot": (rp.dot, (2**33, 1), (1, 2**33)),
    "add": (rp.add, (2**40, 1), (2**40,)),
    "cosine_similarity": (rp.cosine_similarity, (2**33, 1), (2**33, 1)),
}


@pytest.mark.parametrize("case", tuple(OVERFLOW_CASES))
async def test_an_output_size_that_overflows_is_a_value_error(kernel_pool, case):
    fn, sa, sb = OVERFLOW_CASES[case]
    a, b = np.broadcast_to(1.0, sa), np.broadcast_to(1.0, sb)
    names = rf"\({sa[0]},{sa[1]}\)"
    with pytest.raises(ValueError, match=names):
        fn(a, b)
    with pytest.raises(ValueError, match=names):
        await kernel_pool.submit(fn, a, b)
