//! `cosine_similarity(matrix, query)`: rows of a 2-D matrix against one 1-D
//! query (shape `(rows,)`) or a 2-D batch of queries (shape `(rows, queries)`,
//! as `matrix @ queries.T` normalised). A zero-norm row or query scores 0.
//! Integer inputs compute in float64; float32 stays float32.

use crate::alloc;
use crate::array::Value;
use crate::dtype::{with_float_dtype, DType, Float};
use crate::error::{shape_str, value_error, KernelError};
use crate::exec::{chunk_items, fill_chunks, Exec};
use crate::gemm::gemm;
use crate::loops;
use crate::ops::operand::Typed;
use crate::promote::promote_types;
use crate::view::{Mat, Operand};

/// The kernel named in `Memory` errors (`cosine_topk` scores through it too).
const KERNEL: &str = "cosine_similarity";

fn array_shape<'o>(op: &'o Operand<'_>, what: &str) -> Result<&'o [usize], KernelError> {
    match op {
        Operand::Array(v) => Ok(v.shape()),
        _ => Err(KernelError::Type(format!(
            "cosine_similarity: {what} must be an array, not a Python scalar"
        ))),
    }
}

/// Validates shapes: matrix `(rows, d)`, query `(d,)` or `(queries, d)`;
/// returns the output shape, `(rows,)` or `(rows, queries)`.
pub(crate) fn check(matrix: &Operand<'_>, query: &Operand<'_>) -> Result<Vec<usize>, KernelError> {
    let (sm, sq) = (array_shape(matrix, "matrix")?, array_shape(query, "query")?);
    if sm.len() != 2 {
        return Err(value_error(format!(
            "cosine_similarity: matrix must be 2-D, got shape {}",
            shape_str(sm)
        )));
    }
    if sq.is_empty() {
        return Err(value_error(
            "cosine_similarity: query must be 1-D or 2-D, got shape ()",
        ));
    }
    if sq[sq.len() - 1] != sm[1] {
        return Err(value_error(format!(
            "cosine_similarity: matrix {} and query {} have different vector lengths ({} != {})",
            shape_str(sm),
            shape_str(sq),
            sm[1],
            sq[sq.len() - 1]
        )));
    }
    Ok(match sq {
        [_] => vec![sm[0]],
        _ => vec![sm[0], sq[0]],
    })
}

fn result_dtype(matrix: &Operand<'_>, query: &Operand<'_>) -> DType {
    let dt = match (matrix, query) {
        (Operand::Array(a), Operand::Array(b)) => promote_types(a.dtype(), b.dtype()),
        _ => DType::Float64,
    };
    if dt.is_float() {
        dt
    } else {
        DType::Float64
    }
}

/// `dot / (norm_a * norm_b)`, 0 when either norm is 0.
#[inline]
fn score<T: Float>(dot: T, na: T, nb: T) -> T {
    if na == T::ZERO || nb == T::ZERO {
        T::ZERO
    } else {
        dot.div(na.mul(nb))
    }
}

fn row_sumsqs<T: Float>(m: Mat<'_, T>) -> Vec<T> {
    (0..m.rows())
        .map(|r| loops::sumsq(m.row(r).as_slice().expect("unit stride")))
        .collect()
}

/// Whether a sum of squares is outside the range where the fast kernels'
/// `dot / (norm * norm)` is accurate: it underflowed towards 0 (a row of
/// tiny, non-zero values: its squares lose their digits in `T`) or
/// overflowed. Such rows and queries are scored by [`exact_score`].
#[inline]
fn needs_exact<T: Float>(sumsq: T) -> bool {
    let v = sumsq.to_f64();
    let smallest = if T::DTYPE == DType::Float32 {
        1e-30
    } else {
        1e-290
    };
    v < smallest || !v.is_finite()
}

/// The cosine of `row` and `q` computed in f64 on both vectors scaled by
/// their largest magnitude, so it neither underflows nor overflows (cosine
/// is scale-free); 0 when either is all zeros, NaN when either holds an
/// infinity or a NaN (NumPy's `dot / (norm * norm)` is NaN then). The slow
/// path of the rare rows [`needs_exact`] picks.
fn exact_score<T: Float>(row: &[T], q: &[T]) -> T {
    // The largest magnitude, NaN if any element is NaN (`f64::max` skips NaN).
    let largest = |v: &[T]| {
        v.iter().fold(0.0f64, |m, x| {
            let a = x.to_f64().abs();
            if a.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(a)
            }
        })
    };
    let (rmax, qmax) = (largest(row), largest(q));
    if rmax == 0.0 || qmax == 0.0 {
        return T::ZERO;
    }
    if !rmax.is_finite() || !qmax.is_finite() {
        return T::from_f64(f64::NAN);
    }
    let (mut dot, mut rr, mut qq) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in row.iter().zip(q) {
        let (a, b) = (a.to_f64() / rmax, b.to_f64() / qmax);
        dot += a * b;
        rr += a * a;
        qq += b * b;
    }
    T::from_f64(dot / (rr.sqrt() * qq.sqrt()))
}

/// Re-scores with [`exact_score`] the entries of `out` (`rows x nq`, row
/// major) whose row or query sum of squares [`needs_exact`].
fn rescore_out_of_range<T: Float>(
    m: Mat<'_, T>,
    q: &[T],
    row_sumsq: &[T],
    query_sumsq: &[T],
    out: &mut [T],
) {
    let nq = query_sumsq.len();
    let d = m.cols();
    let exact_queries: Vec<bool> = query_sumsq.iter().map(|&s| needs_exact(s)).collect();
    let any_query = exact_queries.iter().any(|&e| e);
    for (r, (orow, &rs)) in out.chunks_mut(nq).zip(row_sumsq).enumerate() {
        let exact_row = needs_exact(rs);
        if !exact_row && !any_query {
            continue;
        }
        let row = m.row(r).as_slice().expect("unit stride");
        for (j, o) in orow.iter_mut().enumerate() {
            if exact_row || exact_queries[j] {
                *o = exact_score(row, &q[j * d..(j + 1) * d]);
            }
        }
    }
}

/// Largest query batch scored by the row-streaming kernel, per element
/// size; larger batches go through the packed GEMM, whose packing of the
/// whole matrix is then amortised. Measured on 20000 x 256, one thread
/// (`examples/cosine_bench.rs`): the GEMM takes ~5.3 ms (f32) and ~6 ms
/// (f64) almost regardless of the batch, streaming ~0.15 ms (f32) and
/// ~0.3 ms (f64) per query.
const fn stream_max_queries(item_bytes: usize) -> usize {
    if item_bytes <= 4 {
        32
    } else {
        16
    }
}

/// Scores every row against the `nq` contiguous queries in `q` (norms `qn`)
/// with the row-streaming kernel, in chunks of whole rows (rows whose sum of
/// squares [`needs_exact`] are re-scored exactly; queries are the caller's).
fn stream<T: Float>(
    m: Mat<'_, T>,
    q: &[T],
    qn: &[T],
    exec: &dyn Exec,
) -> Result<Vec<T>, KernelError> {
    let (rows, d, nq) = (m.rows(), m.cols(), qn.len());
    let mut out = alloc::zeroed::<T>(KERNEL, rows * nq)?;
    if nq == 0 {
        return Ok(out);
    }
    let per_row = (d * std::mem::size_of::<T>()).max(1);
    fill_chunks(
        exec,
        &mut out,
        chunk_items(per_row) * nq,
        per_row.div_ceil(nq),
        |start, piece| {
            let r0 = start / nq;
            let chunk: Vec<&[T]> = (r0..r0 + piece.len() / nq)
                .map(|r| m.row(r).as_slice().expect("unit stride"))
                .collect();
            let mut sumsq = vec![T::ZERO; chunk.len()];
            loops::rows_dots_sumsq(&chunk, q, d, piece, &mut sumsq);
            for ((orow, sq), row) in piece.chunks_mut(nq).zip(sumsq).zip(&chunk) {
                let rn = sq.sqrt();
                for (o, &qn) in orow.iter_mut().zip(qn) {
                    *o = score(*o, rn, qn);
                }
                if needs_exact(sq) {
                    for (j, o) in orow.iter_mut().enumerate() {
                        *o = exact_score(row, &q[j * d..(j + 1) * d]);
                    }
                }
            }
        },
    )?;
    Ok(out)
}

fn cosine<T: Float>(m: Mat<'_, T>, q: Mat<'_, T>, exec: &dyn Exec) -> Result<Value, KernelError> {
    let owned;
    let m = if m.cols() <= 1 || m.strides[1] == 1 {
        m
    } else {
        owned = m.to_contiguous::<T>(KERNEL)?.into_owned();
        Mat::from_contiguous(&owned, 2, m.rows(), m.cols())
    };
    let (rows, d) = (m.rows(), m.cols());
    if q.ndim == 1 {
        let qv = q.row(0).contiguous(KERNEL)?;
        let qs = [loops::sumsq(&qv)];
        let mut out = stream(m, &qv, &[qs[0].sqrt()], exec)?;
        if needs_exact(qs[0]) {
            rescore_out_of_range(m, &qv, &vec![T::ONE; rows], &qs, &mut out);
        }
        return Ok(Value::from_vec(out, vec![rows]));
    }
    let nq = q.rows();
    let qv = q.to_contiguous::<T>(KERNEL)?;
    let q = Mat::from_contiguous(&qv, 2, nq, d);
    let qs = row_sumsqs(q);
    let qn: Vec<T> = qs.iter().map(|s| s.sqrt()).collect();
    if nq <= stream_max_queries(std::mem::size_of::<T>()) {
        let mut out = stream(m, &qv, &qn, exec)?;
        if qs.iter().any(|&s| needs_exact(s)) {
            rescore_out_of_range(m, &qv, &vec![T::ONE; rows], &qs, &mut out);
        }
        return Ok(Value::from_vec(out, vec![rows, nq]));
    }
    let rs = row_sumsqs(m);
    let mut out = alloc::zeroed::<T>(KERNEL, rows * nq)?;
    // SAFETY: m is rows x d, q^T is d x nq (strides swapped), both valid
    // views; out holds rows * nq elements.
    unsafe {
        gemm(
            rows,
            nq,
            d,
            m.ptr(),
            m.strides[0],
            m.strides[1],
            q.ptr(),
            q.strides[1],
            q.strides[0],
            &mut out,
            exec,
        )?
    };
    for (orow, &r) in out.chunks_mut(nq).zip(&rs) {
        let rn = r.sqrt();
        for (o, &qn) in orow.iter_mut().zip(&qn) {
            *o = score(*o, rn, qn);
        }
    }
    rescore_out_of_range(m, &qv, &rs, &qs, &mut out);
    Ok(Value::from_vec(out, vec![rows, nq]))
}

/// Runs `cosine_similarity`.
pub(crate) fn cosine_similarity(
    matrix: &Operand<'_>,
    query: &Operand<'_>,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let dt = result_dtype(matrix, query);
    with_float_dtype!(dt, T => {
        let (tm, tq) = (Typed::<T>::new(matrix, KERNEL)?, Typed::<T>::new(query, KERNEL)?);
        cosine::<T>(tm.mat(), tq.mat(), exec)
    })
}
