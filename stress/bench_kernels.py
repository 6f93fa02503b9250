"""Raptors kernels side by side with NumPy, in one run, as ratios of medians, with the
machine's physical limits (memory bandwidth by a copy, GEMM peak) measured in the same run.

    python stress/bench_kernels.py [--quick] [--kernels add,subtract,...]

For a fair comparison against NumPy at its best (OpenBLAS picking its own CPU kernel):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python stress/bench_kernels.py

Prints markdown tables (with the machine line and the command) and writes
stress/results/kernels.json. A ratio is NumPy time / Raptors time: above 1 Raptors is faster.
Every timing is the median of repeats; NumPy and Raptors repeats are interleaved so that
machine noise hits both alike. Each measured pair is also checked for the same answer.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import raptors as rp
from raptors.bench import cpu_model

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # the benchmark still runs; the BLAS line says it is unknown
    threadpool_info = None
    threadpool_limits = None

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
DTYPES = ("float32", "float64", "int32", "int64")
TABLE_SIZES = (100, 10_000, 1_000_000)
COSINE_DIM = 100
TOPK_K = 10


class Timer:
    """Median seconds per call, from `repeats` samples of `inner` calls each.

    `inner` is calibrated so one sample lasts at least `min_sample` seconds, which keeps
    perf_counter resolution and call overhead of the loop itself out of small kernels.
    """

    def __init__(self, repeats: int, min_sample: float):
        self.repeats = repeats
        self.min_sample = min_sample

    def calibrate(self, fn) -> int:
        inner = 1
        while True:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= self.min_sample or inner >= 1 << 22:
                return inner
            inner *= 2 if elapsed > self.min_sample / 8 else 8

    def sample(self, fn, inner: int) -> float:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - start) / inner

    def pair(self, fn_a, fn_b) -> tuple[float, float]:
        """Median time per call of fn_a and fn_b, their repeats interleaved."""
        fn_a()
        fn_b()
        inner_a = self.calibrate(fn_a)
        inner_b = self.calibrate(fn_b)
        a, b = [], []
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(self.repeats):
                a.append(self.sample(fn_a, inner_a))
                b.append(self.sample(fn_b, inner_b))
        finally:
            if gc_was_enabled:
                gc.enable()
        return statistics.median(a), statistics.median(b)


def blas_info() -> dict:
    if threadpool_info is None:
        return {"internal_api": "unknown (pip install threadpoolctl)"}
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return {
                k: lib.get(k)
                for k in (
                    "internal_api",
                    "version",
                    "architecture",
                    "threading_layer",
                    "num_threads",
                )
            }
    return {"internal_api": "none found"}


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return ",".join(
                        x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if x in flags
                    )
    except OSError:
        pass
    return "?"


def machine_line(blas: dict) -> str:
    env = {
        k: os.environ[k]
        for k in (
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
            "OPENBLAS_NUM_THREADS",
            "RAPTORS_THREADS",
        )
        if k in os.environ
    }
    return (
        f"CPU: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; NumPy {np.__version__}; "
        f"Raptors {getattr(rp, '__version__', '?')}; "
        f"BLAS: {blas.get('internal_api')} {blas.get('version', '')} "
        f"kernel {blas.get('architecture', '?')}, {blas.get('num_threads', '?')} threads; "
        f"env: {env or 'no OPENBLAS_* overrides'}"
    )


def command_line() -> str:
    unset = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k not in os.environ]
    prefix = "env " + " ".join(f"-u {k}" for k in unset) + " " if unset else ""
    return prefix + "python " + " ".join(shlex.quote(a) for a in sys.argv)


def blas_threads(n):
    """A context limiting NumPy's BLAS to n threads (None: leave the default)."""
    if n is None or threadpool_limits is None:
        return _NullContext()
    return threadpool_limits(limits=n, user_api="blas")


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def data(dtype, shape, seed=0):
    gen = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return gen.integers(-50, 51, size=shape).astype(dtype)
    return (gen.standard_normal(shape)).astype(dtype)


def same_answer(got, want) -> bool:
    if isinstance(want, tuple):
        return len(got) == len(want) and all(
            same_answer(g, w) for g, w in zip(got, want, strict=True)
        )
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "iu":
        return bool(np.array_equal(got, want))
    rtol = 1e-3 if want.dtype == np.float32 else 1e-9
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    with np.errstate(invalid="ignore"):
        return bool(
            np.all(np.abs(got.astype(np.float64) - want.astype(np.float64)) <= rtol * scale)
        )


# Physical limits: every throughput row is also shown as a fraction of these.


def memory_bandwidth(timer: Timer, quick: bool) -> float:
    """GB/s of `np.copyto` between two float64 arrays far past the L3 (bytes read +
    written): what a streaming kernel can move at most, on one thread."""
    n = 8_000_000 if quick else 32_000_000
    src = data("float64", (n,), 13)
    dst = np.empty_like(src)
    dst[:] = 0  # touched: the copy measures bandwidth, not page faults
    t, _ = timer.pair(lambda: np.copyto(dst, src), lambda: None)
    return 16 * n / t / 1e9


def gemm_peaks(gemm_rows: list[dict]) -> dict[str, float]:
    """Per dtype, the best one-thread GFLOP/s the GEMM section measured (either library):
    the machine's practical multiply-add peak for one core."""
    peaks: dict[str, float] = {}
    for r in gemm_rows:
        dtype = r["case"].split()[1]
        one = [r["raptors_gflops"]] if r["raptors_pool_threads"] == 1 else []
        if r["numpy_blas_threads"] == 1:
            one.append(r["numpy_gflops"])
        peaks[dtype] = max([peaks.get(dtype, 0.0), *one])
    return peaks


# Inputs this large stream from memory on any machine here (L3 caches are at most 32 MB
# per socket): only their GB/s is compared with the memory bandwidth. Smaller inputs are
# served from the caches, which no single figure bounds.
PAST_CACHES = 64_000_000


# Headline figures.


def headline(timer: Timer, quick: bool) -> list[dict]:
    rows = []

    def add(label, unit, work, np_fn, rp_fn, answer_np=None, answer_rp=None, blas=None):
        with blas_threads(blas):
            t_np, t_rp = timer.pair(np_fn, rp_fn)
        ok = same_answer(
            rp_fn() if answer_rp is None else answer_rp(),
            np_fn() if answer_np is None else answer_np(),
        )
        if unit == "us/call":
            v_np, v_rp = t_np * 1e6, t_rp * 1e6
        else:
            v_np, v_rp = work / t_np / 1e9, work / t_rp / 1e9
        rows.append(
            {
                "case": label,
                "bytes": work or 0,
                "numpy_blas_threads": blas or "default",
                "unit": unit,
                "numpy": v_np,
                "raptors": v_rp,
                "ratio": t_np / t_rp,
                "same_answer": ok,
            }
        )

    a = data("float64", (1000,), 1)
    b = data("float64", (1000,), 2)
    n = 2_000_000 if quick else 10_000_000
    big_a = data("float64", (n,), 3)
    big_b = data("float64", (n,), 4)
    for blas in (None, 1):
        add("dot f64 n=1e3", "us/call", None, lambda: np.dot(a, b), lambda: rp.dot(a, b), blas=blas)
        add(
            f"dot f64 n={sci(n)}",
            "GB/s",
            16 * n,
            lambda: np.dot(big_a, big_b),
            lambda: rp.dot(big_a, big_b),
            blas=blas,
        )
    add(f"sum f64 n={sci(n)}", "GB/s", 8 * n, lambda: np.sum(big_a), lambda: rp.sum(big_a))
    return rows


def gemm(timer: Timer, quick: bool) -> list[dict]:
    """matmul n x n: Raptors in pools of 1 and 2 threads vs OpenBLAS at 1 thread and default."""
    n = 512 if quick else 1024
    flops = 2.0 * n**3
    rows = []
    pools = {
        t: rp.Pool(f"bench-kernels-gemm-{t}-{os.getpid()}", threads=t, queue=4) for t in (1, 2)
    }
    try:
        for dtype in ("float64", "float32"):
            a = data(dtype, (n, n), 5)
            b = data(dtype, (n, n), 6)
            want = a @ b
            for np_threads in (1, None):
                for t, pool in pools.items():

                    def rp_fn(pool=pool, a=a, b=b):
                        return pool.submit(rp.matmul, a, b).result()

                    def np_fn(a=a, b=b):
                        return np.matmul(a, b)

                    with blas_threads(np_threads):
                        t_np, t_rp = timer.pair(np_fn, rp_fn)
                    rows.append(
                        {
                            "case": f"matmul {dtype} n={n}",
                            "numpy_blas_threads": np_threads or "default",
                            "raptors_pool_threads": t,
                            "numpy_gflops": flops / t_np / 1e9,
                            "raptors_gflops": flops / t_rp / 1e9,
                            "ratio": t_np / t_rp,
                            "same_answer": same_answer(rp_fn(), want),
                        }
                    )
    finally:
        for pool in pools.values():
            pool.close()
    return rows


# Every kernel x dtype x size.


def table_case(kernel, dtype, n):
    """(numpy_fn, raptors_fn) for one cell. Shapes are chosen so the inputs hold ~n values."""
    x = data(dtype, (n,), 7)
    if kernel in ("dot",):
        y = data(dtype, (n,), 8)
        return (lambda: np.dot(x, y)), (lambda: rp.dot(x, y))
    if kernel == "matmul":
        # Matrix @ vector with a square matrix of n values (GEMM has its own section).
        s = max(1, round(n**0.5))
        m = data(dtype, (s, s), 9)
        v = data(dtype, (s,), 10)
        return (lambda: np.matmul(m, v)), (lambda: rp.matmul(m, v))
    if kernel in ("sum", "mean", "min", "max", "argmin", "argmax"):
        np_fn = getattr(np, kernel)
        rp_fn = getattr(rp, kernel)
        return (lambda: np_fn(x)), (lambda: rp_fn(x))
    if kernel == "norm":
        return (lambda: np.linalg.norm(x)), (lambda: rp.norm(x))
    if kernel in ("add", "subtract", "multiply", "divide"):
        y = data(dtype, (n,), 8)
        if kernel == "divide":
            y[y == 0] = 1
        np_fn = getattr(np, kernel)
        rp_fn = getattr(rp, kernel)
        return (lambda: np_fn(x, y)), (lambda: rp_fn(x, y))
    if kernel == "scale":
        f = 3 if dtype.startswith("int") else 2.5
        return (lambda: np.multiply(x, f)), (lambda: rp.scale(x, f))
    if kernel == "clip":
        lo, hi = (-5, 5) if dtype.startswith("int") else (-1.0, 1.0)
        return (lambda: np.clip(x, lo, hi)), (lambda: rp.clip(x, lo, hi))
    if kernel == "cosine_similarity":
        rows = max(1, n // COSINE_DIM)
        m = data(dtype, (rows, COSINE_DIM), 11)
        q = data(dtype, (COSINE_DIM,), 12)

        def np_cos():
            d = m @ q
            norms = np.linalg.norm(m, axis=1) * np.linalg.norm(q)
            out = np.zeros(d.shape, dtype=np.result_type(d.dtype, norms.dtype))
            return np.divide(d, norms, out=out, where=norms != 0)

        return np_cos, (lambda: rp.cosine_similarity(m, q))
    if kernel == "topk":
        k = min(TOPK_K, n)

        def np_topk():
            part = np.argpartition(x, n - k)[n - k :]
            order = part[np.lexsort((part, -x[part].astype(np.float64)))]
            return order, x[order]

        def rp_topk():
            return rp.topk(x, k)

        return np_topk, rp_topk
    raise AssertionError(kernel)


KERNELS = (
    "dot",
    "matmul",
    "sum",
    "mean",
    "min",
    "max",
    "argmin",
    "argmax",
    "norm",
    "add",
    "subtract",
    "multiply",
    "divide",
    "scale",
    "clip",
    "cosine_similarity",
    "topk",
)


# Kernels that NumPy runs through BLAS for float dtypes: measured at BLAS default threads
# and at one thread (what a service pinning OPENBLAS_NUM_THREADS=1 gets).
BLAS_KERNELS = ("dot", "matmul", "norm", "cosine_similarity")


def kernel_table(timer: Timer, kernels=KERNELS) -> list[dict]:
    rows = []
    for kernel in kernels:
        for dtype in DTYPES:
            uses_blas = kernel in BLAS_KERNELS and dtype.startswith("float")
            for blas in (None, 1) if uses_blas else (None,):
                for n in TABLE_SIZES:
                    row = {
                        "kernel": kernel,
                        "dtype": dtype,
                        "n": n,
                        "numpy_blas_threads": blas or "default",
                    }
                    np_fn, rp_fn = table_case(kernel, dtype, n)
                    try:
                        with blas_threads(blas):
                            t_np, t_rp = timer.pair(np_fn, rp_fn)
                        got, want = rp_fn(), np_fn()
                        if kernel == "topk":  # ties may order differently; values may not
                            got, want = got[1], want[1]
                        row.update(
                            numpy_us=t_np * 1e6,
                            raptors_us=t_rp * 1e6,
                            ratio=t_np / t_rp,
                            same_answer=same_answer(got, want),
                        )
                    except Exception as exc:  # noqa: BLE001 - a failing cell is reported, not fatal
                        row["error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
    return rows


# Output.


def sci(n: int) -> str:
    """1e7 rather than 1e+07."""
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def fmt(v, digits=2):
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def print_report(meta, head, gemm_rows, table):
    print(f"\n# Raptors kernels vs NumPy\n\n{meta['machine']}\n\nCommand: `{meta['command']}`\n")
    print(
        f"Ratio = NumPy time / Raptors time (> 1: Raptors faster); medians of "
        f"{meta['repeats']} repeats.\n"
    )
    limits = meta["limits"]
    peaks = ", ".join(f"{d} {v:.1f}" for d, v in limits["gemm_gflops_one_thread"].items())
    print(
        f"Physical limits, measured in this run: memory bandwidth {limits['copy_gbs']:.1f} GB/s "
        f"(np.copyto far past the L3, bytes read + written, one thread); GEMM peak on one "
        f"thread {peaks} GFLOP/s (the best of either library in the matmul section). "
        f"'of limit' is Raptors' figure as a fraction of the one that bounds it: GB/s of inputs "
        f"past the caches (>= 64 MB) against the bandwidth, matmul GFLOP/s against n x the "
        f"one-thread peak for n threads (a kernel that only reads can pass 100 %: the copy also "
        f"pays for the writes); in-cache sizes have no single bound ('-').\n"
    )
    print(
        "| case | NumPy BLAS threads | unit | NumPy | Raptors | ratio | Raptors of limit "
        "| same answer |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in head:
        of = f"{r['raptors_of_limit']:.0%}" if "raptors_of_limit" in r else "-"
        print(
            f"| {r['case']} | {r['numpy_blas_threads']} | {r['unit']} | {fmt(r['numpy'])} | "
            f"{fmt(r['raptors'])} | {fmt(r['ratio'])} | {of} | {r['same_answer']} |"
        )
    print(
        "\n| matmul (GFLOP/s) | NumPy BLAS threads | NumPy | Raptors pool threads | Raptors "
        "| ratio | Raptors of limit | same answer |"
    )
    print("|---|---|---:|---|---:|---:|---:|---|")
    for r in gemm_rows:
        print(
            f"| {r['case']} | {r['numpy_blas_threads']} | {fmt(r['numpy_gflops'], 1)} | "
            f"{r['raptors_pool_threads']} | {fmt(r['raptors_gflops'], 1)} | "
            f"{fmt(r['ratio'])} | {r['raptors_of_limit']:.0%} | {r['same_answer']} |"
        )
    print(
        f"\nEvery kernel, direct call (ratio; NumPy µs in brackets). matmul here is "
        f"(s x s) @ (s,) with s*s = n; cosine_similarity is (n/{COSINE_DIM} x {COSINE_DIM}) "
        f"against one query; topk k={TOPK_K} vs argpartition + stable sort.\n"
    )
    header = "| kernel | dtype | " + " | ".join(f"n={sci(n)}" for n in TABLE_SIZES) + " |"
    print(header)
    print("|---|---|" + "---:|" * len(TABLE_SIZES))
    groups = {}
    for r in table:
        groups.setdefault((r["kernel"], r["dtype"], r["numpy_blas_threads"]), []).append(r)
    for (kernel, dtype, blas), cells in groups.items():
        parts = []
        for r in cells:
            if "error" in r:
                parts.append(f"error: {r['error'][:40]}")
            else:
                flag = "" if r["same_answer"] else " (DIFFERENT ANSWER)"
                parts.append(f"{r['ratio']:.2f} ({r['numpy_us']:.3g}){flag}")
        label = kernel if blas == "default" else f"{kernel} (NumPy BLAS {blas} thread)"
        print(f"| {label} | {dtype} | " + " | ".join(parts) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, smaller headline sizes (a smoke run, not figures)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument(
        "--kernels",
        help="comma-separated kernels: only their rows of the per-kernel table (no headline, "
        "no matmul section), e.g. add,subtract,multiply,divide,scale",
    )
    args = parser.parse_args()
    only = tuple(args.kernels.split(",")) if args.kernels else None
    if only and not set(only) <= set(KERNELS):
        parser.error(f"unknown kernels {sorted(set(only) - set(KERNELS))}; known: {KERNELS}")

    timer = Timer(repeats=3 if args.quick else 7, min_sample=0.005 if args.quick else 0.02)
    blas = blas_info()
    meta = {
        "machine": machine_line(blas),
        "command": command_line(),
        "blas": blas,
        "repeats": timer.repeats,
        "quick": args.quick,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    head = [] if only else headline(timer, args.quick)
    gemm_rows = [] if only else gemm(timer, args.quick)
    table = kernel_table(timer, only or KERNELS)
    bandwidth = memory_bandwidth(timer, args.quick)
    peaks = gemm_peaks(gemm_rows)
    meta["limits"] = {"copy_gbs": bandwidth, "gemm_gflops_one_thread": peaks}
    for r in head:
        if r["unit"] == "GB/s" and r.get("bytes", 0) >= PAST_CACHES:
            r["raptors_of_limit"] = r["raptors"] / bandwidth
    for r in gemm_rows:
        peak = peaks[r["case"].split()[1]] * r["raptors_pool_threads"]
        r["raptors_of_limit"] = r["raptors_gflops"] / peak
    print_report(meta, head, gemm_rows, table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"meta": meta, "headline": head, "matmul": gemm_rows, "kernels": table}, indent=2
        )
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
