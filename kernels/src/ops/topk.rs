//! `topk(values, k)`: the `k` largest of a 1-D array, largest first, equal
//! values in index order (a stable descending sort). NaN ranks after every
//! number, NaNs in index order: the order of `np.argsort(-x, kind="stable")`.

use crate::array::{Array, Value};
use crate::dtype::Element;
use crate::error::{shape_str, value_error, KernelError};
use crate::exec::Exec;
use crate::view::{Mat, Operand};
use crate::with_dtype;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Validates the operand and `k`; returns `k`.
pub(crate) fn check(values: &Operand<'_>, k: Option<usize>) -> Result<usize, KernelError> {
    let shape = match values {
        Operand::Array(v) => v.shape(),
        _ => {
            return Err(KernelError::Type(
                "topk: values must be an array, not a Python scalar".into(),
            ))
        }
    };
    if shape.len() != 1 {
        return Err(value_error(format!(
            "topk: values must be 1-D, got shape {}",
            shape_str(shape)
        )));
    }
    let n = shape[0];
    let Some(k) = k else {
        return Err(value_error("topk: k is required"));
    };
    if k < 1 || k > n {
        return Err(value_error(format!(
            "topk: k must be between 1 and {n} (the number of values), got {k}"
        )));
    }
    Ok(k)
}

/// Rank order: larger first, NaN last, ties by index.
#[inline]
fn rank<T: Element>(a: (T, usize), b: (T, usize)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (false, false) => {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        }
        (true, true) => a.1.cmp(&b.1),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

/// An element ordered by `rank` (greater = ranks later), so that a
/// max-heap keeps the worst of the current best `k` on top.
struct Ranked<T>(T, usize);

impl<T: Element> PartialEq for Ranked<T> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<T: Element> Eq for Ranked<T> {}
impl<T: Element> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Element> Ord for Ranked<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        rank((self.0, self.1), (o.0, o.1))
    }
}

/// Best `k` of `x` by one pass with a bounded heap: O(n log k), and
/// most elements cost one comparison with the current worst.
fn heap_select<T: Element>(x: &[T], k: usize) -> Vec<(T, usize)> {
    let mut heap: BinaryHeap<Ranked<T>> = x
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &v)| Ranked(v, i))
        .collect();
    for (i, &v) in x.iter().enumerate().skip(k) {
        let mut top = heap.peek_mut().expect("k >= 1");
        // Later index: only a strictly better value (or a number over a NaN) enters.
        if rank((v, i), (top.0, top.1)) == Ordering::Less {
            *top = Ranked(v, i);
        }
    }
    heap.into_iter().map(|r| (r.0, r.1)).collect()
}

/// The best `k` of `x` (`1 <= k <= x.len()`), in rank order: their indices
/// and values.
pub(crate) fn best<T: Element>(x: &[T], k: usize) -> (Vec<i64>, Vec<T>) {
    let n = x.len();
    // A bounded heap wins while k is small against n; beyond, selection.
    let mut items: Vec<(T, usize)> = if k * 32 <= n {
        heap_select(x, k)
    } else {
        let mut all: Vec<(T, usize)> = x.iter().copied().zip(0..n).collect();
        if k < n {
            all.select_nth_unstable_by(k - 1, |a, b| rank(*a, *b));
            all.truncate(k);
        }
        all
    };
    items.sort_unstable_by(|a, b| rank(*a, *b));
    items.into_iter().map(|(v, i)| (i as i64, v)).unzip()
}

fn topk_typed<T: Element>(m: Mat<'_, T>, k: usize, exec: &dyn Exec) -> Result<Value, KernelError> {
    let x = m.row(0).contiguous("topk")?;
    if exec.is_cancelled() {
        return Err(KernelError::Cancelled);
    }
    let (idx, vals) = best(&x, k);
    Ok(Value::Pair(
        Array::from_vec(idx, &[k])?,
        Array::from_vec(vals, &[k])?,
    ))
}

/// Runs `topk`.
pub(crate) fn topk(values: &Operand<'_>, k: usize, exec: &dyn Exec) -> Result<Value, KernelError> {
    match values {
        Operand::Array(v) => with_dtype!(v.dtype(), T => topk_typed(v.mat::<T>(), k, exec)),
        _ => unreachable!("checked: an array"),
    }
}
