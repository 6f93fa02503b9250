//! `cosine_topk(matrix, query, k)`: the `k` rows of `matrix` most similar to
//! `query`, as `topk(cosine_similarity(matrix, query), k)` computes them, in
//! one kernel: a pool job scores and selects without handing the scores back
//! to Python in between. A 2-D batch of queries gives `(indices, values)` of
//! shape `(queries, k)`, row `j` being query `j`'s top `k`.

use crate::array::{Array, Value};
use crate::dtype::{with_float_dtype, Float};
use crate::error::{value_error, KernelError};
use crate::exec::Exec;
use crate::ops::{cosine, topk};
use crate::view::Operand;

/// Validates shapes (as `cosine_similarity`) and `1 <= k <= rows`.
pub(crate) fn check(
    matrix: &Operand<'_>,
    query: &Operand<'_>,
    k: Option<usize>,
) -> Result<usize, KernelError> {
    cosine::check(matrix, query)?;
    let rows = match matrix {
        Operand::Array(m) => m.shape()[0],
        _ => unreachable!("checked: an array"),
    };
    let Some(k) = k else {
        return Err(value_error("cosine_topk: k is required"));
    };
    if k < 1 || k > rows {
        return Err(value_error(format!(
            "cosine_topk: k must be between 1 and {rows} (the matrix's rows), got {k}"
        )));
    }
    Ok(k)
}

/// Each query's best `k` from `scores` (`(rows,)` or `(rows, queries)`).
fn select<T: Float>(scores: &Array, k: usize, exec: &dyn Exec) -> Result<Value, KernelError> {
    let data = scores
        .as_slice::<T>()
        .expect("scores hold the result dtype");
    let (rows, queries) = match scores.shape[..] {
        [rows] => (rows, None),
        [rows, queries] => (rows, Some(queries)),
        _ => unreachable!("cosine scores are 1-D or 2-D"),
    };
    let Some(nq) = queries else {
        let (idx, vals) = topk::best(data, k);
        return Ok(Value::Pair(
            Array::from_vec(idx, &[k])?,
            Array::from_vec(vals, &[k])?,
        ));
    };
    let (mut idx, mut vals) = (Vec::with_capacity(nq * k), Vec::with_capacity(nq * k));
    let mut column = Vec::with_capacity(rows);
    for j in 0..nq {
        if exec.is_cancelled() {
            return Err(KernelError::Cancelled);
        }
        column.clear();
        column.extend(data[j..].iter().step_by(nq).copied());
        let (i, v) = topk::best(&column, k);
        idx.extend(i);
        vals.extend(v);
    }
    Ok(Value::Pair(
        Array::from_vec(idx, &[nq, k])?,
        Array::from_vec(vals, &[nq, k])?,
    ))
}

/// Runs `cosine_topk`.
pub(crate) fn cosine_topk(
    matrix: &Operand<'_>,
    query: &Operand<'_>,
    k: usize,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let scores = match cosine::cosine_similarity(matrix, query, exec)? {
        Value::Array(scores) => scores,
        _ => unreachable!("cosine scores are an array"),
    };
    with_float_dtype!(scores.dtype(), T => select::<T>(&scores, k, exec))
}
