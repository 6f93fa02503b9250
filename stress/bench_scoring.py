"""The demo service's scoring call, Raptors vs NumPy, per query batch size.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python stress/bench_scoring.py

Cosine top-10 of a batch of B queries against the demo's 20,000 x 256
float32 matrix (rows pre-normalised, as the service has it), direct calls on
one thread: ``rp.cosine_topk(matrix, queries, 10)`` against NumPy's best
calls for the same answer (normalise the queries, one ``matrix @ Q.T``, then
``argpartition`` and a stable sort per query), with OpenBLAS on one thread
and on its default threads. Medians of ``--repeats`` interleaved timings;
the ratio is NumPy time / Raptors time (> 1: Raptors faster).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import raptors as rp
from raptors import service
from threadpoolctl import threadpool_limits

BATCHES = (1, 2, 4, 8, 16, 32)


def numpy_cosine_topk(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    scores = matrix @ (queries / np.where(norms > 0, norms, 1)).T  # rows are unit already
    ids = np.empty((queries.shape[0], k), dtype=np.intp)
    for j in range(queries.shape[0]):
        col = scores[:, j]
        part = np.argpartition(col, -k)[-k:]
        ids[j] = part[np.lexsort((part, -col[part]))]
    return ids


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=41)
    args = p.parse_args()
    matrix = service.make_matrix()
    queries = service.make_queries(max(BATCHES))
    print(
        "| queries | Raptors ms | NumPy ms (BLAS 1 thread) | ratio | NumPy ms (BLAS default) "
        "| ratio | same ids |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for b in BATCHES:
        q = queries[:b]
        got = rp.cosine_topk(matrix, q, service.K)[0]
        same = bool(np.array_equal(got, numpy_cosine_topk(matrix, q, service.K)))
        row = {}
        n = max(1, args.repeats // 3)
        raptors_call = functools.partial(rp.cosine_topk, matrix, q, service.K)
        numpy_call = functools.partial(numpy_cosine_topk, matrix, q, service.K)
        for blas in (1, None):
            with threadpool_limits(limits=blas, user_api="blas"):
                rp_ms, np_ms = [], []
                for _ in range(3):  # interleave the two, in rounds
                    rp_ms.append(median_ms(raptors_call, n))
                    np_ms.append(median_ms(numpy_call, n))
                row[blas] = (statistics.median(rp_ms), statistics.median(np_ms))
        r1, n1 = row[1]
        rd, nd = row[None]
        print(
            f"| {b} | {min(r1, rd):.3f} | {n1:.3f} | {n1 / r1:.2f} | {nd:.3f} | {nd / rd:.2f} "
            f"| {same} |"
        )


if __name__ == "__main__":
    main()
