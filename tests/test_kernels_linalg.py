"""dot, matmul, cosine_similarity, topk against NumPy (spec section 5)."""

import numpy as np
import pytest
import raptors as rp
from kernel_cases import (
    DTYPES,
    FLOAT_DTYPES,
    INPUT_KINDS,
    INT_DTYPES,
    LARGE,
    MIXED_PAIRS,
    SIZES,
    assert_same_kind,
    assert_values,
    check_against_numpy,
    layouts_1d,
    layouts_2d,
    make,
    ref_cosine_similarity,
    ref_topk,
    to_kind,
)

PRODUCTS = ("dot", "matmul")
NP_PRODUCT = {"dot": np.dot, "matmul": np.matmul}


def product_scale(a, b):
    """A product's rounding error is relative to sum |a_ik| |b_kj|, not to the result."""
    a64 = np.abs(np.asarray(a, np.float64))
    b64 = np.abs(np.asarray(b, np.float64))
    return np.dot(a64, b64)


def check_product(name, a, b, *, rp_a=None, rp_b=None, allow_rp_array=False):
    rp_a = a if rp_a is None else rp_a
    rp_b = b if rp_b is None else rp_b
    return check_against_numpy(
        getattr(rp, name),
        NP_PRODUCT[name],
        (rp_a, rp_b),
        (a, b),
        scale=product_scale(a, b),
        allow_rp_array=allow_rp_array,
    )


@pytest.mark.parametrize("n", SIZES + (LARGE,))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_vector_vector(name, dtype, n):
    got = check_product(name, make(dtype, (n,), seed=n), make(dtype, (n,), seed=n + 1))
    assert isinstance(got, np.generic)


MATRIX_DIMS = (
    (1, 1, 1),
    (7, 9, 5),
    (8, 8, 8),
    (9, 17, 3),
    (16, 33, 16),
    (17, 64, 65),
    (33, 1, 7),
    (65, 129, 31),
    (3, 257, 2),
    (128, 127, 129),
)


@pytest.mark.parametrize("mkn", MATRIX_DIMS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_matrix_shapes(name, dtype, mkn):
    m, k, n = mkn
    a = make(dtype, (m, k), seed=m)
    b = make(dtype, (k, n), seed=n)
    v = make(dtype, (k,), seed=k)
    w = make(dtype, (m,), seed=k + 1)
    check_product(name, a, b)  # (m,k) x (k,n)
    check_product(name, a, v)  # (m,k) x (k,)
    check_product(name, w, a)  # (m,) x (m,k)


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("name", PRODUCTS)
def test_large_matmul(name, dtype):
    a = make(dtype, (300, 257), seed=1)
    b = make(dtype, (257, 311), seed=2)
    check_product(name, a, b)
    check_product(name, make(dtype, (1000, 1000), seed=3), make(dtype, (1000,), seed=4))


@pytest.mark.parametrize(
    "shapes",
    (
        ((0, 4), (4, 3)),
        ((3, 0), (0, 4)),
        ((3, 4), (4, 0)),
        ((0,), (0,)),
        ((0, 0), (0, 0)),
        ((3, 0), (0,)),
    ),
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_empty_dimensions(name, dtype, shapes):
    check_product(name, np.ones(shapes[0], dtype), np.ones(shapes[1], dtype))


@pytest.mark.parametrize("pair", MIXED_PAIRS, ids="-".join)
@pytest.mark.parametrize("name", PRODUCTS)
def test_mixed_dtype_promotion(name, pair):
    a = make(pair[0], (9, 17), seed=1)
    b = make(pair[1], (17, 5), seed=2)
    check_product(name, a, b)
    check_product(name, a[0], b[:, 0])


@pytest.mark.parametrize("layout", ("transposed", "column_slice", "stepped", "fortran"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_noncontiguous_matrices(name, dtype, layout):
    a = layouts_2d(dtype, (33, 17), seed=1)[layout]
    b = layouts_2d(dtype, (17, 9), seed=2)[layout]
    check_product(name, a, b)
    check_product(name, a, make(dtype, (17,)))
    check_product(name, make(dtype, (33,)), a)


@pytest.mark.parametrize("layout", ("step2", "step3", "reversed", "column"))
@pytest.mark.parametrize("n", (1, 8, 17, 65, 1009))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_noncontiguous_vectors(name, dtype, n, layout):
    a = layouts_1d(dtype, n, seed=1)[layout]
    b = layouts_1d(dtype, n, seed=2)["step2"]
    check_product(name, a, b)
    check_product(name, make(dtype, (5, n)), a)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_input_kinds(name, dtype, kind):
    a = make(dtype, (17,), seed=1)
    b = make(dtype, (17,), seed=2)
    ra, na = to_kind(a, kind)
    rb, nb = to_kind(b, kind)
    check_against_numpy(
        getattr(rp, name), NP_PRODUCT[name], (ra, rb), (na, nb), scale=product_scale(na, nb)
    )
    m = make(dtype, (5, 17), seed=3)
    if kind != "array_array":
        rm, nm = to_kind(m, kind)
        check_against_numpy(
            getattr(rp, name),
            NP_PRODUCT[name],
            (rm, rb),
            (nm, nb),
            scale=product_scale(nm, nb),
            allow_rp_array=kind == "rp_array",
        )


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_integer_overflow_wraps_like_numpy(name, dtype):
    big = np.iinfo(dtype).max // 3
    a = np.full(64, big, dtype=dtype)
    b = np.full(64, 7, dtype=dtype)
    check_product(name, a, b)
    check_product(name, a.reshape(8, 8), b.reshape(8, 8))


def test_dot_with_python_scalar_like_numpy():
    a = make("float32", (9,))
    for args in ((2.0, a), (a, 2), (3, make("int32", (4, 3)))):
        check_against_numpy(rp.dot, np.dot, args, args)


def test_matmul_refuses_scalars():
    with pytest.raises(ValueError, match=r"(?i)dimension|scalar|0-d|ndim"):
        rp.matmul(2.0, np.ones(3))


@pytest.mark.parametrize(
    "shapes", (((3,), (4,)), ((3, 4), (5, 2)), ((3, 4), (3,)), ((5,), (4, 5))), ids=str
)
@pytest.mark.parametrize("name", PRODUCTS)
def test_shape_mismatch(name, shapes):
    with pytest.raises(ValueError, match=r"(?i)shape|align|mismatch|dimension"):
        getattr(rp, name)(np.ones(shapes[0]), np.ones(shapes[1]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", PRODUCTS)
def test_nan_propagates(name, dtype):
    a = make(dtype, (17, 9))
    b = make(dtype, (9, 5))
    a[3, 4] = np.nan
    b[2, 1] = np.inf
    check_product(name, a, b)
    v = make(dtype, (65,))
    v[64] = np.nan
    check_product(name, v, make(dtype, (65,)))


@pytest.mark.parametrize("name", PRODUCTS)
def test_three_dimensional_input(name):
    x = make("float64", (2, 3, 4))
    y = make("float64", (2, 4, 3))
    try:
        got = getattr(rp, name)(x, y)
    except ValueError as exc:
        msg = str(exc)
        assert "2" in msg and ("dim" in msg.lower() or "2-d" in msg.lower()), msg
        return
    assert_values(np.asarray(got), NP_PRODUCT[name](x, y), scale=None)


# cosine_similarity(matrix, query)


@pytest.mark.parametrize("dim", (1, 3, 8, 16, 17, 64, 256, 257))
@pytest.mark.parametrize("rows", (0, 1, 7, 100))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_single_query(dtype, rows, dim):
    m = make(dtype, (rows, dim), seed=rows)
    q = make(dtype, (dim,), seed=dim)
    got = check_against_numpy(
        rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0
    )
    assert got.shape == (rows,)


@pytest.mark.parametrize("queries", (1, 3, 8))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_query_batch(dtype, queries):
    m = make(dtype, (50, 33), seed=1)
    q = make(dtype, (queries, 33), seed=2)
    got = check_against_numpy(
        rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0
    )
    assert got.shape == (50, queries)
    # Each column equals the single-query answer.
    for j in range(queries):
        assert_values(got[:, j], rp.cosine_similarity(m, q[j]), scale=1.0)


def test_cosine_large_matrix():
    m = make("float32", (20_000, 256), seed=5)
    q = make("float32", (256,), seed=6)
    check_against_numpy(rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_zero_norm_scores_zero(dtype):
    m = make(dtype, (6, 9), seed=1)
    m[2] = 0
    q = make(dtype, (9,), seed=2)
    got = rp.cosine_similarity(m, q)
    assert got[2] == 0 and not np.isnan(got).any()
    zero = rp.cosine_similarity(m, np.zeros(9, dtype=dtype))
    np.testing.assert_array_equal(np.asarray(zero), np.zeros(6))
    check_against_numpy(rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0)


@pytest.mark.parametrize("queries", (None, 3, 40))
@pytest.mark.parametrize("bad", (np.inf, -np.inf, np.nan))
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_cosine_of_a_non_finite_vector_is_nan_like_numpy(dtype, bad, queries):
    # Found by fuzzing: a row or query holding an infinity (a sum of squares that
    # overflows, re-scored on the slow path) scored 0 instead of NumPy's NaN. A zero
    # row still scores 0; a NaN among zeros is not a zero row.
    m = make(dtype, (5, 9), seed=1)
    m[1, 3] = bad
    m[2] = 0
    m[3] = 0
    m[3, 4] = np.nan
    q = make(dtype, (9,) if queries is None else (queries, 9), seed=2)
    got = np.asarray(rp.cosine_similarity(m, q))
    assert np.isnan(got[1]).all() and np.isnan(got[3]).all()
    assert (got[2] == 0).all() and not np.isnan(got[[0, 4]]).any()
    q_bad = q.copy()
    q_bad[..., 0] = bad
    got = np.asarray(rp.cosine_similarity(m, q_bad))
    assert np.isnan(got[[0, 1, 3, 4]]).all() and (got[2] == 0).all()
    idx, vals = rp.cosine_topk(m, q_bad[0] if q.ndim == 2 else q_bad, 5)
    assert np.isnan(np.asarray(vals)[1:]).all() and np.asarray(idx)[0] == 2


@pytest.mark.parametrize(
    "queries", (None, 3, 40), ids=("one-query", "streamed-batch", "gemm-batch")
)
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_cosine_is_scale_free_for_tiny_and_huge_rows(dtype, queries):
    # Rows whose squares underflow (or overflow) in the dtype still score
    # their cosine: it does not depend on the vectors' scale.
    tiny, huge = (1e-22, 1e20) if dtype == "float32" else (1e-160, 1e160)
    m = make(dtype, (8, 33), seed=4)
    m[1] *= tiny
    m[2] *= huge
    m[3] = 0
    m[4, :] = 0
    m[4, 5] = tiny  # one tiny non-zero element
    q = make(dtype, (33,) if queries is None else (queries, 33), seed=5)

    def rescaled(a):
        # The same directions at unit scale: the reference's float64 norms
        # would underflow or overflow on the float64 cases' scales too.
        a = np.asarray(a, dtype=np.float64)
        largest = np.max(np.abs(a), axis=-1, keepdims=True)
        return a / np.where(largest == 0, 1.0, largest)

    for query in (q, q * np.asarray(tiny, dtype=dtype)):
        got = rp.cosine_similarity(m, query)
        want = ref_cosine_similarity(rescaled(m), rescaled(query))
        assert_values(got, want.astype(dtype), scale=1.0, dtype=np.dtype(dtype))
    got = np.asarray(rp.cosine_similarity(m, q))
    assert got[3].tolist() == np.zeros_like(got[3]).tolist()  # a zero row scores 0


def test_cosine_self_similarity_is_one_and_bounded():
    m = make("float64", (40, 17), seed=3)
    got = rp.cosine_similarity(m, m[7])
    assert abs(got[7] - 1.0) <= 1e-12
    assert np.all(np.abs(got) <= 1.0 + 1e-12)
    # Scale invariance of the query.
    assert_values(rp.cosine_similarity(m, 5.0 * m[7]), got, scale=1.0)


@pytest.mark.parametrize("pair", MIXED_PAIRS, ids="-".join)
def test_cosine_mixed_dtypes(pair):
    m = make(pair[0], (12, 17), seed=1)
    q = make(pair[1], (17,), seed=2)
    # NumPy's own expression takes a float32 operand's norm in float32: float32 tolerance.
    rtol = 1e-5 if "float32" in pair else None
    check_against_numpy(
        rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0, rtol=rtol
    )


@pytest.mark.parametrize("kind", ("rp_array", "list", "memoryview", "readonly_buffer"))
def test_cosine_input_kinds(kind):
    m = make("float32", (10, 16), seed=1)
    q = make("float32", (16,), seed=2)
    rm, nm = to_kind(m, kind)
    rq, nq = to_kind(q, kind)
    check_against_numpy(
        rp.cosine_similarity,
        ref_cosine_similarity,
        (rm, rq),
        (nm, nq),
        scale=1.0,
        allow_rp_array=kind == "rp_array",
    )


@pytest.mark.parametrize("layout", ("transposed", "column_slice", "stepped", "fortran"))
def test_cosine_noncontiguous(layout):
    m = layouts_2d("float64", (21, 17), seed=1)[layout]
    q = layouts_1d("float64", 17, seed=2)["step2"]
    check_against_numpy(rp.cosine_similarity, ref_cosine_similarity, (m, q), (m, q), scale=1.0)


def test_cosine_dimension_mismatch():
    with pytest.raises(ValueError, match=r"(?i)shape|dimension|mismatch|align|length"):
        rp.cosine_similarity(np.ones((4, 8)), np.ones(7))
    with pytest.raises(ValueError, match=r"(?i)shape|dimension|mismatch|align|length"):
        rp.cosine_similarity(np.ones((4, 8)), np.ones((2, 7)))


# cosine_topk(matrix, query, k): topk of cosine_similarity, per query


def ref_cosine_topk(m, q, k):
    """NumPy's answer: the reference scores ranked by ref_topk, per query."""
    scores = ref_cosine_similarity(m, q)
    if np.asarray(q).ndim == 1:
        return ref_topk(scores, k)
    ranked = [ref_topk(scores[:, j], k) for j in range(scores.shape[1])]
    ids = np.array([r[0] for r in ranked], dtype=np.intp).reshape(len(ranked), k)
    vals = np.array([r[1] for r in ranked], dtype=scores.dtype).reshape(len(ranked), k)
    return ids, vals


def check_cosine_topk(m, q, k):
    got = rp.cosine_topk(m, q, k)
    assert isinstance(got, tuple) and len(got) == 2
    want_ids, want_vals = ref_cosine_topk(m, q, k)
    ids = assert_same_kind(got[0], want_ids)
    vals = assert_same_kind(got[1], want_vals)
    assert_values(vals, want_vals, scale=1.0)
    # Ids: NumPy's where scores are apart; within rounding of a tie either order is right.
    scores = np.asarray(ref_cosine_similarity(m, q), np.float64)
    scores = scores[:, None] if np.asarray(q).ndim == 1 else scores
    tol = 1e-5 if vals.dtype == np.float32 else 1e-12
    for j, (row_ids, row_want) in enumerate(zip(ids.reshape(-1, k), want_ids.reshape(-1, k))):
        if not np.array_equal(row_ids, row_want):
            np.testing.assert_allclose(scores[row_ids, j], scores[row_want, j], atol=tol)
    # Exactly the composition of the two public kernels.
    if np.asarray(q).ndim == 1:
        comp = rp.topk(rp.cosine_similarity(m, q), k)
        np.testing.assert_array_equal(ids, comp[0])
        np.testing.assert_array_equal(vals, comp[1])
    return ids, vals


@pytest.mark.parametrize("dim", (1, 17, 256))
@pytest.mark.parametrize("rows", (1, 7, 100))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_topk_single_query(dtype, rows, dim):
    m = make(dtype, (rows, dim), seed=rows)
    q = make(dtype, (dim,), seed=dim)
    for k in sorted({1, min(3, rows), rows}):
        ids, vals = check_cosine_topk(m, q, k)
        assert ids.shape == vals.shape == (k,)


@pytest.mark.parametrize("queries", (0, 1, 5, 17, 33))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_topk_query_batch(dtype, queries):
    m = make(dtype, (120, 31), seed=4)
    q = make(dtype, (queries, 31), seed=5)
    ids, vals = check_cosine_topk(m, q, 10)
    assert ids.shape == vals.shape == (queries, 10)
    for j in range(queries):  # row j is query j's own answer
        one = rp.cosine_topk(m, q[j], 10)
        np.testing.assert_array_equal(ids[j], one[0])
        assert_values(vals[j], one[1], scale=1.0)


def test_cosine_topk_demo_shape_and_ties():
    m = make("float32", (20_000, 256), seed=6)
    q = make("float32", (4, 256), seed=7)
    check_cosine_topk(m, q, 10)
    check_cosine_topk(m, q[0], 10)
    # A zero query scores every row 0: the first k rows, in index order.
    ids, vals = rp.cosine_topk(m[:50], np.zeros(256, np.float32), 5)
    assert ids.tolist() == [0, 1, 2, 3, 4] and not vals.any()


@pytest.mark.parametrize("layout", ("transposed", "stepped", "fortran"))
def test_cosine_topk_noncontiguous(layout):
    m = layouts_2d("float64", (60, 24), seed=8)[layout]
    check_cosine_topk(m, make("float64", (24,), seed=9), 6)
    check_cosine_topk(m, make("float64", (3, 48), seed=9)[:, ::2], 6)


def test_cosine_topk_bad_input():
    m = np.ones((4, 8))
    for k in (0, 5):
        with pytest.raises(ValueError, match=r"cosine_topk: k must be between 1 and 4"):
            rp.cosine_topk(m, np.ones(8), k)
    with pytest.raises(TypeError, match="missing required argument 'k'"):
        rp.cosine_topk(m, np.ones(8))
    with pytest.raises(TypeError):
        rp.cosine_topk(m, np.ones(8), 2.5)
    with pytest.raises(ValueError, match=r"different vector lengths"):
        rp.cosine_topk(m, np.ones(7), 2)
    with pytest.raises(ValueError, match=r"2-D"):
        rp.cosine_topk(np.ones(8), np.ones(8), 2)


# topk(values, k)


def check_topk(values, k, *, np_values=None, ranked=None):
    """ranked: a precomputed ref_topk of at least k entries (sorting 1e6 values once)."""
    np_values = np.asarray(values) if np_values is None else np_values
    want_idx, want_vals = (
        ref_topk(np_values, k) if ranked is None else (ranked[0][:k], ranked[1][:k])
    )
    got = rp.topk(values, k)
    assert isinstance(got, tuple) and len(got) == 2, f"expected (indices, values), got {got!r}"
    idx, vals = got
    idx = assert_same_kind(idx, want_idx, allow_rp_array=True)
    vals = assert_same_kind(vals, want_vals, allow_rp_array=True)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals, want_vals)
    return idx, vals


@pytest.mark.parametrize("n", (1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 257, 1009, 65537))
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_sizes(dtype, n):
    x = make(dtype, (n,), seed=n)
    for k in sorted({1, min(2, n), min(3, n), min(10, n), max(1, n // 2), n}):
        check_topk(x, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_large(dtype):
    x = make(dtype, (LARGE,), seed=2)
    ranked = ref_topk(x, 1000)
    for k in (1, 10, 100, 1000):
        check_topk(x, k, ranked=ranked)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_ties_in_index_order(dtype):
    x = np.array([3, 1, 3, 2, 3, 1, 2, 3], dtype=dtype)
    idx, _vals = check_topk(x, 5)
    assert idx.tolist() == [0, 2, 4, 7, 3]
    check_topk(np.zeros(100, dtype=dtype), 17)
    check_topk(np.tile(np.arange(5, dtype=dtype), 40), 50)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_sorted_inputs(dtype):
    x = np.arange(1000).astype(dtype)
    check_topk(x, 10)
    check_topk(x[::-1].copy(), 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_extreme_values(dtype):
    info = np.iinfo(dtype) if dtype.startswith("int") else np.finfo(dtype)
    x = np.array([0, info.min, info.max, -1, info.max, info.min], dtype=dtype)
    check_topk(x, 6)
    if dtype in FLOAT_DTYPES:
        check_topk(np.array([1.0, np.inf, -np.inf, 2.0, -0.5], dtype=dtype), 5)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_input_kinds(dtype, kind):
    x = make(dtype, (65,), seed=3)
    obj, np_x = to_kind(x, kind)
    check_topk(obj, 7, np_values=np_x)


@pytest.mark.parametrize("layout", ("step2", "step3", "reversed", "column"))
def test_topk_noncontiguous(layout):
    check_topk(layouts_1d("float32", 257, seed=4)[layout], 12)


@pytest.mark.parametrize("k", (0, -1, 9, 100))
def test_topk_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"(?i)\bk\b|range|larger|exceed|length|positive|least"):
        rp.topk(np.arange(8.0), k)


def test_topk_empty_values():
    with pytest.raises(ValueError):
        rp.topk(np.zeros(0), 1)


@pytest.mark.parametrize("k", (2.5, "3", None))
def test_topk_k_not_an_integer(k):
    with pytest.raises(TypeError):
        rp.topk(np.arange(8.0), k)


def test_topk_numpy_integer_k():
    check_topk(np.arange(20.0), np.int64(4))
