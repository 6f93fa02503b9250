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

fn row_norms<T: Float>(m: Mat<'_, T>) -> Vec<T> {
    (0..m.rows())
        .map(|r| loops::sumsq(m.row(r).as_slice().expect("unit stride")).sqrt())
        .collect()
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
/// with the row-streaming kernel, in chunks of whole rows.
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
            for (orow, sq) in piece.chunks_mut(nq).zip(sumsq) {
                let rn = sq.sqrt();
                for (o, &qn) in orow.iter_mut().zip(qn) {
                    *o = score(*o, rn, qn);
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
        let qn = [loops::sumsq(&qv).sqrt()];
        return Ok(Value::from_vec(stream(m, &qv, &qn, exec)?, vec![rows]));
    }
    let nq = q.rows();
    let qv = q.to_contiguous::<T>(KERNEL)?;
    let q = Mat::from_contiguous(&qv, 2, nq, d);
    let qn = row_norms(q);
    if nq <= stream_max_queries(std::mem::size_of::<T>()) {
        return Ok(Value::from_vec(stream(m, &qv, &qn, exec)?, vec![rows, nq]));
    }
    let rn = row_norms(m);
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
    for (orow, &rn) in out.chunks_mut(nq).zip(&rn) {
        for (o, &qn) in orow.iter_mut().zip(&qn) {
            *o = score(*o, rn, qn);
        }
    }
    Ok(Value::from_vec(out, vec![rows, nq]))
}

/// Runs `cosine_similarity`.
pub(crate) fn cosine_similarity(
    matrix: &Operand<'_>,
    query: &Operand<'_>,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    check(matrix, query)?;
    let dt = result_dtype(matrix, query);
    with_float_dtype!(dt, T => {
        let (tm, tq) = (Typed::<T>::new(matrix, KERNEL)?, Typed::<T>::new(query, KERNEL)?);
        cosine::<T>(tm.mat(), tq.mat(), exec)
    })
}
