"""The demo service's scoring call: Raptors vs FAISS vs NumPy, per query batch size.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python stress/bench_scoring.py [--quick]

Cosine top-10 of a batch of B queries against the demo's 20,000 x 256 float32 matrix
(rows pre-normalised, as the service has it), at 1 and at 2 threads:

* Raptors: ``rp.cosine_topk(matrix, queries, 10)``; 1 thread is a direct call, 2 threads
  the same call submitted to a 2-thread ``rp.Pool`` (a kernel splits over its pool's
  threads);
* FAISS: ``IndexFlatIP.search`` on the same matrix with normalised queries (what a
  vector-similarity service would otherwise pick: it releases the GIL and uses BLAS for
  large batches), with ``faiss.omp_set_num_threads(1 | 2)``;
* NumPy: its best calls for the same answer (normalise the queries, one ``matrix @ Q.T``,
  then ``argpartition`` and a stable sort per query), OpenBLAS at 1 | 2 threads.

Medians of ``--repeats`` timings, the three interleaved in rounds. Ratios are the other's
time / Raptors' time (> 1: Raptors faster). GFLOP/s counts the 2 x rows x dim x B
multiply-adds of the scores, and "of peak" divides Raptors' by the float32 GEMM peak
measured in the same run (``rp.matmul`` of two 1024 x 1024 float32 matrices, one thread;
OpenBLAS's ``sgemm`` printed next to it). "same ids": Raptors' and FAISS's ids are the same set
per query as NumPy's wherever scores do not tie within 1e-5 (float32 sums in another
order can swap two ids whose scores differ in the last bits).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import raptors as rp
from raptors import service
from raptors.bench import cpu_model
from threadpoolctl import threadpool_limits

try:
    import faiss
except ImportError:  # the table still prints, without the FAISS columns
    faiss = None

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def numpy_cosine_topk(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    scores = matrix @ (queries / np.where(norms > 0, norms, 1)).T  # rows are unit already
    ids = np.empty((queries.shape[0], k), dtype=np.intp)
    for j in range(queries.shape[0]):
        col = scores[:, j]
        part = np.argpartition(col, -k)[-k:]
        ids[j] = part[np.lexsort((part, -col[part]))]
    return ids


def faiss_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ids = index.search(queries / np.where(norms > 0, norms, 1), k)
    return ids, scores


def same_sets(
    ids: np.ndarray, want: np.ndarray, scores: np.ndarray, want_scores: np.ndarray
) -> bool:
    """Equal id sets per query, allowing swaps among scores tied within 1e-5."""
    for got_row, want_row, s, ws in zip(ids, want, scores, want_scores, strict=True):
        if set(got_row) == set(want_row):
            continue
        if not np.allclose(np.sort(s), np.sort(ws), atol=1e-5):
            return False
    return True


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gemm_peak(repeats: int) -> tuple[float, float]:
    """float32 GFLOP/s of rp.matmul and of OpenBLAS sgemm, n = 1024, one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    flops = 2 * 1024**3
    with threadpool_limits(limits=1, user_api="blas"):
        rp_ms = median_ms(lambda: rp.matmul(a, b), repeats)
        np_ms = median_ms(lambda: a @ b, repeats)
    return flops / rp_ms / 1e6, flops / np_ms / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--quick", action="store_true", help="fewer repeats (11)")
    args = p.parse_args()
    if args.quick:
        args.repeats = 11
    matrix = service.make_matrix()
    queries = service.make_queries(max(BATCHES))
    rows, dim = matrix.shape
    k = service.K
    index = None
    if faiss is not None:
        index = faiss.IndexFlatIP(dim)
        index.add(matrix)
    pool = rp.Pool(f"bench-scoring-{os.getpid()}", threads=2, queue=4)

    peak, sgemm = gemm_peak(max(5, args.repeats // 4))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, FAISS {getattr(faiss, '__version__', 'not installed')}"
    )
    print(
        "command: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python stress/bench_scoring.py"
        + (" --quick" if args.quick else "")
    )
    print(
        f"float32 GEMM peak, n = 1024, 1 thread: rp.matmul {peak:.0f} GFLOP/s, "
        f"OpenBLAS sgemm {sgemm:.0f} GFLOP/s\n"
    )
    print(
        "| queries | threads | Raptors ms | GFLOP/s | of peak | FAISS ms | FAISS / Raptors "
        "| NumPy ms | NumPy / Raptors | same ids |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    try:
        for b in BATCHES:
            q = queries[:b]
            want = numpy_cosine_topk(matrix, q, k)
            got_ids, got_scores = rp.cosine_topk(matrix, q, k)
            want_scores = np.take_along_axis(matrix @ (q / np.linalg.norm(q, axis=1)[:, None]).T,
                                             want.T, axis=0).T  # fmt: skip
            same = same_sets(np.asarray(got_ids), want, np.asarray(got_scores), want_scores)
            if index is not None:
                f_ids, f_scores = faiss_search(index, q, k)
                same = same and same_sets(f_ids, want, f_scores, want_scores)
            pooled = functools.partial(
                lambda q: pool.submit(rp.cosine_topk, matrix, q, k).result(), q
            )
            for threads in (1, 2):
                rp_call = (
                    functools.partial(rp.cosine_topk, matrix, q, k) if threads == 1 else pooled
                )
                calls: dict[str, Callable[[], object]] = {
                    "raptors": rp_call,
                    "numpy": functools.partial(numpy_cosine_topk, matrix, q, k),
                }
                if index is not None:
                    calls["faiss"] = functools.partial(faiss_search, index, q, k)
                    faiss.omp_set_num_threads(threads)
                times: dict[str, list[float]] = {name: [] for name in calls}
                n = max(1, args.repeats // 3)
                with threadpool_limits(limits=threads, user_api="blas"):
                    for _ in range(3):  # interleaved rounds
                        for name, fn in calls.items():
                            times[name].append(median_ms(fn, n))
                ms = {name: statistics.median(t) for name, t in times.items()}
                gflops = 2 * rows * dim * b / ms["raptors"] / 1e6
                f_ms = ms.get("faiss")
                f_cols = f"{f_ms:.3f} | {f_ms / ms['raptors']:.2f}" if f_ms is not None else "- | -"
                print(
                    f"| {b} | {threads} | {ms['raptors']:.3f} | {gflops:.0f} | "
                    f"{gflops / peak:.0%} | {f_cols} | {ms['numpy']:.3f} | "
                    f"{ms['numpy'] / ms['raptors']:.2f} | {same} |",
                    flush=True,
                )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
