//! `dot` and `matmul` for operands of at most two dimensions.
//!
//! Vector-vector and matrix-vector products use the dot / axpy loops,
//! matrix-matrix products the GEMM. A 0-d operand makes `dot` a multiply.

use crate::alloc;
use crate::array::Value;
use crate::dtype::{DType, Element};
use crate::error::{value_error, KernelError};
use crate::exec::{chunk_items, fill_chunks, map_chunks, Exec};
use crate::gemm::gemm;
use crate::loops;
use crate::op::not_aligned;
use crate::ops::elementwise::{binary, BinaryOp};
use crate::ops::operand::Typed;
use crate::view::{Mat, Operand};
use crate::with_dtype;

/// Output shape of `np.dot` for operands of these shapes.
pub(crate) fn check_dot(a: &Operand<'_>, b: &Operand<'_>) -> Result<Vec<usize>, KernelError> {
    let (sa, sb) = (a.shape(), b.shape());
    match (sa.len(), sb.len()) {
        (0, _) => Ok(sb.to_vec()),
        (_, 0) => Ok(sa.to_vec()),
        (na, nb) => {
            // Contract the last axis of a with the first (1-D) or second-to-last (2-D) of b.
            let db = 0;
            let _ = nb;
            if sa[na - 1] != sb[db] {
                return Err(not_aligned(sa, sb, na - 1, db));
            }
            let mut out = sa[..na - 1].to_vec();
            out.extend_from_slice(&sb[1..]);
            Ok(out)
        }
    }
}

/// Output shape of `np.matmul` (0-d operands are refused, as in NumPy).
pub(crate) fn check_matmul(a: &Operand<'_>, b: &Operand<'_>) -> Result<Vec<usize>, KernelError> {
    const SIG: &str = "(n?,k),(k,m?)->(n?,m?)";
    for (i, op) in [a, b].into_iter().enumerate() {
        if op.ndim() == 0 {
            return Err(value_error(format!(
                "matmul: Input operand {i} does not have enough dimensions (has 0, gufunc core with signature {SIG} requires 1)"
            )));
        }
    }
    let (sa, sb) = (a.shape(), b.shape());
    let ka = sa[sa.len() - 1];
    if sb[0] != ka {
        return Err(value_error(format!(
            "matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc signature {SIG} (size {} is different from {ka})",
            sb[0]
        )));
    }
    let mut out = sa[..sa.len() - 1].to_vec();
    out.extend_from_slice(&sb[1..]);
    Ok(out)
}

/// A Python scalar as a strong 0-d array (np.dot does not apply NEP 50 weak rules).
fn strong<'a>(
    op: &Operand<'a>,
    iv: &'a [i64; 1],
    fv: &'a [f64; 1],
) -> Result<Operand<'a>, KernelError> {
    Ok(match op {
        Operand::Array(v) => Operand::Array(*v),
        Operand::Int(_) => Operand::Array(crate::ArrayView::from_slice(iv, &[])?),
        Operand::BigInt(v) => return Err(crate::view::big_int_error(*v)),
        Operand::Float(_) => Operand::Array(crate::ArrayView::from_slice(fv, &[])?),
    })
}

/// `np.dot(a, b)`.
pub(crate) fn dot(
    a: &Operand<'_>,
    b: &Operand<'_>,
    shape: Vec<usize>,
    dt: DType,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    if a.ndim() == 0 || b.ndim() == 0 {
        let scalars = |o: &Operand<'_>| match o {
            Operand::Int(v) => ([*v], [0.0]),
            Operand::Float(v) => ([0], [*v]),
            Operand::Array(_) | Operand::BigInt(_) => ([0], [0.0]),
        };
        let ((ia, fa), (ib, fb)) = (scalars(a), scalars(b));
        let ops = [strong(a, &ia, &fa)?, strong(b, &ib, &fb)?];
        return binary(BinaryOp::Multiply, &ops, shape, dt, "dot", exec);
    }
    with_dtype!(dt, T => {
        let (ta, tb) = (Typed::<T>::new(a, "dot")?, Typed::<T>::new(b, "dot")?);
        products::<T>(ta.mat(), tb.mat(), shape, "dot", exec)
    })
}

/// `np.matmul(a, b)` (equal to `dot` for operands of 1 or 2 dimensions).
pub(crate) fn matmul(
    a: &Operand<'_>,
    b: &Operand<'_>,
    shape: Vec<usize>,
    dt: DType,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    with_dtype!(dt, T => {
        let (ta, tb) = (Typed::<T>::new(a, "matmul")?, Typed::<T>::new(b, "matmul")?);
        products::<T>(ta.mat(), tb.mat(), shape, "matmul", exec)
    })
}

/// Product of `a` (1-D as a row, or 2-D) and `b` (1-D as a column, or 2-D).
/// Operands are read in place (strided vectors a chunk at a time, GEMM
/// packs blocks); only a strided vector operand of a matrix product is
/// gathered once (it is the small side). `kernel` names the caller in a
/// `Memory` error.
fn products<T: Element>(
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    shape: Vec<usize>,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let item = std::mem::size_of::<T>();
    match (a.ndim, b.ndim) {
        (1, 1) => {
            let (x, y) = (a.row(0), b.row(0));
            let parts = map_chunks(exec, x.len, chunk_items(2 * item), 2 * item, |r| {
                let (mut bx, mut by) = (Vec::new(), Vec::new());
                loops::dot(x.run(r.clone(), &mut bx), y.run(r, &mut by))
            })?;
            Ok(Value::Scalar(loops::pairwise_sum(&parts).into_scalar()))
        }
        (2, 1) => {
            let v = b.row(0).contiguous(kernel)?;
            let out = matvec(a, &v, kernel, exec)?;
            Ok(Value::from_vec(out, shape))
        }
        (1, 2) => {
            // v @ B == (B^T) @ v
            let v = a.row(0).contiguous(kernel)?;
            let out = matvec(b.t(), &v, kernel, exec)?;
            Ok(Value::from_vec(out, shape))
        }
        _ => {
            let (m, k, n) = (a.rows(), a.cols(), b.cols());
            let mut c = alloc::zeroed::<T>(kernel, m * n)?;
            // SAFETY: a is m x k and b is k x n views valid for reads at
            // their element strides, and c holds m * n elements.
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    a.ptr(),
                    a.strides[0],
                    a.strides[1],
                    b.ptr(),
                    b.strides[0],
                    b.strides[1],
                    &mut c,
                    exec,
                )?
            };
            Ok(Value::from_vec(c, shape))
        }
    }
}

/// `A @ v` for a 2-D `A` (rows x k, read in place) and contiguous `v` (k).
pub(crate) fn matvec<T: Element>(
    a: Mat<'_, T>,
    v: &[T],
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Vec<T>, KernelError> {
    let (rows, k) = (a.rows(), a.cols());
    let item = std::mem::size_of::<T>();
    let mut out = alloc::zeroed::<T>(kernel, rows)?;
    if rows > 1 && a.strides[0] == 0 {
        // Equal rows (a broadcast): one dot, repeated.
        let mut buf = Vec::new();
        let d = loops::dot(a.row(0).run(0..k, &mut buf), v);
        out.fill(d);
    } else if k <= 1 || a.strides[1] == 1 {
        // Rows are contiguous: one dot per row.
        let per_row = (k * item).max(1);
        fill_chunks(
            exec,
            &mut out,
            (chunk_items(per_row)).max(1),
            per_row,
            |start, piece| {
                for (i, o) in piece.iter_mut().enumerate() {
                    *o = loops::dot(a.row(start + i).as_slice().expect("unit stride"), v);
                }
            },
        )?;
    } else if a.strides[0] == 1 || rows <= 1 {
        // Columns are contiguous: accumulate alpha * column, per output piece.
        let cols = a.t();
        let per_out = (k * item).max(1);
        fill_chunks(
            exec,
            &mut out,
            chunk_items(per_out).max(256),
            per_out,
            |start, piece| {
                for (p, &alpha) in v.iter().enumerate() {
                    let col = cols.row(p).as_slice().expect("unit stride");
                    loops::axpy(alpha, &col[start..start + piece.len()], piece);
                }
            },
        )?;
    } else {
        // Neither stride is one: each row gathered into a scratch row.
        let per_row = (k * item).max(1);
        fill_chunks(
            exec,
            &mut out,
            chunk_items(per_row),
            per_row,
            |start, piece| {
                let mut buf = Vec::new();
                for (i, o) in piece.iter_mut().enumerate() {
                    *o = loops::dot(a.row(start + i).run(0..k, &mut buf), v);
                }
            },
        )?;
    }
    Ok(out)
}
