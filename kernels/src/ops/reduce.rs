//! Reductions: sum, mean, min, max, argmin, argmax, norm (axis None or one axis).
//!
//! One generic driver (`full`, `along`) serves every reduction; each
//! reduction is a small `Reduce` implementation saying how to reduce a
//! contiguous run, merge two partial results (first one first) and finish.
//! Layout is chosen once per call:
//! - full reduction of contiguous data: one run, split in fixed chunks;
//! - reduced axis unit-stride: one contiguous run per output element;
//! - other axis unit-stride: whole rows folded into per-column partials;
//! - broadcast (zero-stride) dimensions: read as scalars (`Reduce::repeated`);
//! - anything else strided: gathered a chunk at a time into scratch.
//!
//! Invariant: no input is ever copied whole; scratch is at most one chunk
//! (`CHUNK_BYTES`) per running chunk, and every buffer is allocated
//! fallibly (`alloc`).

use crate::alloc;
use crate::array::Value;
use crate::dtype::{with_float_dtype, Element, Float};
use crate::error::{value_error, KernelError};
use crate::exec::{chunk_items, map_chunks, Exec};
use crate::loops::{self, MaxK, MinK};
use crate::op::{normalize_axis, Op};
use crate::promote::strong_dtype;
use crate::view::{Lane, Mat, Operand};
use crate::with_dtype;

/// A reduction over runs of `T`.
pub(crate) trait Reduce<T: Element>: Sync {
    /// Partial result of some prefix-free run of elements.
    type Part: Copy + Send;
    /// Result element type.
    type Out: Element;
    /// True when the answer is a position, so traversal must be in C order.
    const C_ORDER: bool = false;
    /// Partial of the contiguous run `x`, whose first element has index `start`.
    /// `x` is non-empty unless `EMPTY_OK`.
    fn run(&self, x: &[T], start: usize) -> Self::Part;
    /// Merge; `a` covers earlier indices than `b`.
    fn merge(&self, a: Self::Part, b: Self::Part) -> Self::Part;
    /// Result from the partial of `n` elements.
    fn finish(&self, p: Self::Part, n: usize) -> Self::Out;
    /// Partial of `n >= 1` copies of `x`, the first at index `start` (a
    /// broadcast run, read as a scalar); `kernel` names the caller in a
    /// `Memory` error. The default is bit-identical to
    /// what `full` computes for a contiguous run of `n` copies: the same
    /// chunks and pairwise merge, each distinct chunk reduced once, in
    /// O(chunk + log n) time. Position-independent unless overridden.
    fn repeated(
        &self,
        x: T,
        n: usize,
        _start: usize,
        kernel: &'static str,
    ) -> Result<Self::Part, KernelError> {
        let chunk = chunk_items(std::mem::size_of::<T>());
        let buf = alloc::filled(kernel, n.min(chunk), x)?;
        let (count, tail) = (n.div_ceil(chunk), n % chunk);
        let whole = self.run(&buf, 0);
        let last = if tail == 0 {
            whole
        } else {
            self.run(&buf[..tail], 0)
        };
        Ok(repeat_merge(self, count, whole, last))
    }
    /// Per-column partials of one row (row index `r`).
    fn col_first(&self, row: &[T], r: usize) -> Vec<Self::Part> {
        row.iter()
            .map(|x| self.run(std::slice::from_ref(x), r))
            .collect()
    }
    /// Folds row `r` into per-column partials.
    fn col_fold(&self, parts: &mut [Self::Part], row: &[T], r: usize) {
        for (p, x) in parts.iter_mut().zip(row) {
            *p = self.merge(*p, self.run(std::slice::from_ref(x), r));
        }
    }
}

/// `merge_all` of `count` partials equal to `whole` except the last, which
/// is `last`, without materialising them: the tree has at most two distinct
/// subtree sizes per level, so each level is computed once (memoised).
fn repeat_merge<T: Element, R: Reduce<T> + ?Sized>(
    r: &R,
    count: usize,
    whole: R::Part,
    last: R::Part,
) -> R::Part {
    // (len, ends with `last`) -> merged partial
    fn go<T: Element, R: Reduce<T> + ?Sized>(
        r: &R,
        len: usize,
        tail: bool,
        whole: R::Part,
        last: R::Part,
        memo: &mut Vec<(usize, bool, R::Part)>,
    ) -> R::Part {
        if len == 1 {
            return if tail { last } else { whole };
        }
        if let Some(&(_, _, p)) = memo.iter().find(|(l, t, _)| *l == len && *t == tail) {
            return p;
        }
        let a = go(r, len / 2, false, whole, last, memo);
        let b = go(r, len - len / 2, tail, whole, last, memo);
        let p = r.merge(a, b);
        memo.push((len, tail, p));
        p
    }
    go(r, count.max(1), true, whole, last, &mut Vec::new())
}

/// Pairwise merge of partials in order (keeps float error logarithmic).
fn merge_all<T: Element, R: Reduce<T>>(r: &R, parts: &[R::Part]) -> R::Part {
    match parts.len() {
        1 => parts[0],
        n => {
            let (a, b) = parts.split_at(n / 2);
            r.merge(merge_all(r, a), merge_all(r, b))
        }
    }
}

struct SumR;
impl<T: Element> Reduce<T> for SumR {
    type Part = T::Sum;
    type Out = T::Sum;
    fn run(&self, x: &[T], _: usize) -> T::Sum {
        loops::sum(x)
    }
    fn merge(&self, a: T::Sum, b: T::Sum) -> T::Sum {
        a.add(b)
    }
    fn finish(&self, p: T::Sum, _: usize) -> T::Sum {
        p
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<T::Sum> {
        row.iter().map(|x| x.to_sum()).collect()
    }
    fn col_fold(&self, parts: &mut [T::Sum], row: &[T], _: usize) {
        for (p, x) in parts.iter_mut().zip(row) {
            *p = p.add(x.to_sum());
        }
    }
}

/// Mean of floats: summed in their own type, divided by the count.
struct MeanFloatR;
impl<T: Float> Reduce<T> for MeanFloatR {
    type Part = T;
    type Out = T;
    fn run(&self, x: &[T], _: usize) -> T {
        loops::sum(x)
    }
    fn merge(&self, a: T, b: T) -> T {
        a.add(b)
    }
    fn finish(&self, p: T, n: usize) -> T {
        p.div(T::from_i64(n as i64))
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<T> {
        row.to_vec()
    }
    fn col_fold(&self, parts: &mut [T], row: &[T], _: usize) {
        loops::accumulate::<T, loops::AddK>(parts, row)
    }
}

/// Mean of integers: NumPy sums them as float64.
struct MeanIntR;
impl<T: Element> Reduce<T> for MeanIntR {
    type Part = f64;
    type Out = f64;
    fn run(&self, x: &[T], _: usize) -> f64 {
        loops::sum_f64(x)
    }
    fn merge(&self, a: f64, b: f64) -> f64 {
        a + b
    }
    fn finish(&self, p: f64, n: usize) -> f64 {
        p / n as f64
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<f64> {
        row.iter().map(|x| x.to_f64()).collect()
    }
    fn col_fold(&self, parts: &mut [f64], row: &[T], _: usize) {
        for (p, x) in parts.iter_mut().zip(row) {
            *p += x.to_f64();
        }
    }
}

/// L2 norm of floats (integers are converted to float64 first, as NumPy does).
struct NormR;
impl<T: Float> Reduce<T> for NormR {
    type Part = T;
    type Out = T;
    fn run(&self, x: &[T], _: usize) -> T {
        loops::sumsq(x)
    }
    fn merge(&self, a: T, b: T) -> T {
        a.add(b)
    }
    fn finish(&self, p: T, _: usize) -> T {
        p.sqrt()
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<T> {
        row.iter().map(|&x| x.mul(x)).collect()
    }
    fn col_fold(&self, parts: &mut [T], row: &[T], _: usize) {
        loops::square_accumulate(parts, row)
    }
}

/// L2 norm of integers: each element converted to float64 as it is read
/// (NumPy converts the whole array first; the values are the same, no copy
/// is made).
struct NormIntR;
impl<T: Element> Reduce<T> for NormIntR {
    type Part = f64;
    type Out = f64;
    fn run(&self, x: &[T], _: usize) -> f64 {
        loops::sumsq_f64(x)
    }
    fn merge(&self, a: f64, b: f64) -> f64 {
        a + b
    }
    fn finish(&self, p: f64, _: usize) -> f64 {
        p.sqrt()
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<f64> {
        row.iter().map(|x| x.to_f64() * x.to_f64()).collect()
    }
    fn col_fold(&self, parts: &mut [f64], row: &[T], _: usize) {
        for (p, x) in parts.iter_mut().zip(row) {
            *p += x.to_f64() * x.to_f64();
        }
    }
}

/// min (`MAX = false`) or max, NaN-propagating.
struct ExtremeR<const MAX: bool>;
impl<T: Element, const MAX: bool> Reduce<T> for ExtremeR<MAX> {
    type Part = T;
    type Out = T;
    fn run(&self, x: &[T], _: usize) -> T {
        if MAX {
            loops::max(x)
        } else {
            loops::min(x)
        }
    }
    fn merge(&self, a: T, b: T) -> T {
        if MAX {
            loops::pick_max(a, b)
        } else {
            loops::pick_min(a, b)
        }
    }
    fn finish(&self, p: T, _: usize) -> T {
        p
    }
    fn repeated(&self, x: T, _: usize, _: usize, _: &'static str) -> Result<T, KernelError> {
        Ok(x)
    }
    fn col_first(&self, row: &[T], _: usize) -> Vec<T> {
        row.to_vec()
    }
    fn col_fold(&self, parts: &mut [T], row: &[T], _: usize) {
        if MAX {
            loops::accumulate::<T, MaxK>(parts, row)
        } else {
            loops::accumulate::<T, MinK>(parts, row)
        }
    }
}

/// argmin / argmax: first index of the extreme, or of the first NaN.
struct ArgR<const MAX: bool>;
impl<const MAX: bool> ArgR<MAX> {
    /// True when `x` replaces the current best `best` (strictly better, or
    /// the first NaN).
    #[inline(always)]
    fn better<T: Element>(x: T, best: T) -> bool {
        (if MAX { x > best } else { x < best }) || (x.is_nan() && !best.is_nan())
    }
}
impl<T: Element, const MAX: bool> Reduce<T> for ArgR<MAX> {
    type Part = (T, usize);
    type Out = i64;
    const C_ORDER: bool = true;
    fn run(&self, x: &[T], start: usize) -> (T, usize) {
        let v = if MAX { loops::max(x) } else { loops::min(x) };
        (v, start + loops::position(x, v))
    }
    fn merge(&self, a: (T, usize), b: (T, usize)) -> (T, usize) {
        if Self::better(b.0, a.0) {
            b
        } else {
            a
        }
    }
    fn finish(&self, p: (T, usize), _: usize) -> i64 {
        p.1 as i64
    }
    fn repeated(
        &self,
        x: T,
        _: usize,
        start: usize,
        _: &'static str,
    ) -> Result<(T, usize), KernelError> {
        Ok((x, start))
    }
    fn col_first(&self, row: &[T], r: usize) -> Vec<(T, usize)> {
        row.iter().map(|&x| (x, r)).collect()
    }
    fn col_fold(&self, parts: &mut [(T, usize)], row: &[T], r: usize) {
        for (p, &x) in parts.iter_mut().zip(row) {
            if Self::better(x, p.0) {
                *p = (x, r);
            }
        }
    }
}

/// Partial of the lane `x`, whose first element has index `start`, read in
/// place: unit stride as one run; stride 0 as `repeated`; any other stride
/// gathered chunk by chunk into a scratch buffer of at most `CHUNK_BYTES`,
/// the chunks merged pairwise. `x` is non-empty.
fn lane_part<T: Element, R: Reduce<T>>(
    r: &R,
    x: Lane<'_, T>,
    start: usize,
    kernel: &'static str,
) -> Result<R::Part, KernelError> {
    if let Some(s) = x.as_slice() {
        return Ok(r.run(s, start));
    }
    if x.stride == 0 {
        return r.repeated(x.get(0), x.len, start, kernel);
    }
    let chunk = chunk_items(std::mem::size_of::<T>());
    let mut buf = alloc::with_capacity(kernel, x.len.min(chunk))?;
    let mut parts = alloc::with_capacity(kernel, x.len.div_ceil(chunk))?;
    for c0 in (0..x.len).step_by(chunk) {
        buf.clear();
        buf.extend((c0..(c0 + chunk).min(x.len)).map(|i| x.get(i)));
        parts.push(r.run(&buf, start + c0));
    }
    Ok(merge_all(r, &parts))
}

/// Reduces every element of `m` (C order for index-reporting reductions),
/// reading it in place whatever its layout:
/// - C- (or, for value reductions, F-) contiguous: one run in fixed chunks;
/// - every stride zero (a broadcast scalar): `repeated`, O(chunk + log n);
/// - equal rows (row stride 0): one row reduced, then `rows` copies of its
///   partial merged pairwise, O(cols + log rows); equal columns likewise
///   through the transpose for value reductions;
/// - anything else: the same fixed C-order chunks as the contiguous case,
///   each gathered into a scratch buffer of `CHUNK_BYTES` (so the result is
///   bit-identical to that of a contiguous copy, and no copy is made).
fn full<T: Element, R: Reduce<T>>(
    r: &R,
    m: Mat<'_, T>,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<R::Out, KernelError> {
    let n = m.len();
    let item = std::mem::size_of::<T>();
    if n == 0 {
        return Ok(r.finish(r.run(&[], 0), 0));
    }
    let slice = match (m.as_slice(), m.t().as_slice()) {
        (Some(s), _) => Some(s),
        (None, Some(s)) if !R::C_ORDER => Some(s),
        _ => None,
    };
    if let Some(slice) = slice {
        let parts = map_chunks(exec, n, chunk_items(item), item, |rg| {
            r.run(&slice[rg.clone()], rg.start)
        })?;
        return Ok(r.finish(merge_all(r, &parts), n));
    }
    if m.is_constant() {
        return Ok(r.finish(r.repeated(m.get(0, 0), n, 0, kernel)?, n));
    }
    let (rows, cols) = (m.rows(), m.cols());
    if !R::C_ORDER && cols > 1 && m.strides[1] == 0 {
        // Equal columns: the transpose has equal rows.
        return full(r, m.t(), kernel, exec);
    }
    if rows > 1 && m.strides[0] == 0 {
        // Equal rows: C order visits row 0 first, so its partial (with its
        // own indices) also answers index reductions.
        let row = lane_part(r, m.row(0), 0, kernel)?;
        return Ok(r.finish(repeat_merge(r, rows, row, row), n));
    }
    if cols > 1 && m.strides[1] == 0 {
        // Each row one value (index reductions only, see above).
        let rows_per_chunk = chunk_items(item);
        let parts = map_chunks(exec, rows, rows_per_chunk, item, |rg| {
            let mut p = r.repeated(m.get(rg.start, 0), cols, rg.start * cols, kernel)?;
            for i in rg.start + 1..rg.end {
                p = r.merge(p, r.repeated(m.get(i, 0), cols, i * cols, kernel)?);
            }
            Ok::<_, KernelError>(p)
        })?;
        let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
        return Ok(r.finish(merge_all(r, &parts), n));
    }
    let chunk = chunk_items(item);
    let parts = map_chunks(exec, n, chunk, item, |rg| {
        let mut buf = alloc::with_capacity(kernel, rg.len())?;
        let mut i = rg.start;
        while i < rg.end {
            let (row, c) = (i / cols, i % cols);
            let take = (cols - c).min(rg.end - i);
            let lane = m.row(row);
            buf.extend((c..c + take).map(|j| lane.get(j)));
            i += take;
        }
        Ok::<_, KernelError>(r.run(&buf, rg.start))
    })?;
    let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(r.finish(merge_all(r, &parts), n))
}

/// Reduces `m` along `axis` (0 or 1 of its 2-D form), one output per lane,
/// reading it in place:
/// - equal lanes (stride 0 across them): one lane reduced, its result repeated;
/// - unit-stride lanes: one run each;
/// - unit stride across lanes (and not stride 0 along them): whole rows
///   folded into per-lane partials;
/// - anything else: each lane by `lane_part` (stride 0: `repeated`; other
///   strides: gathered a chunk at a time).
fn along<T: Element, R: Reduce<T>>(
    r: &R,
    m: Mat<'_, T>,
    axis: usize,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Vec<R::Out>, KernelError> {
    // Lanes are the rows of `lanes`.
    let lanes = if axis == 0 { m.t() } else { m };
    let (count, len) = (lanes.rows(), lanes.cols());
    let item = std::mem::size_of::<T>();
    let lane_unit = len <= 1 || lanes.strides[1] == 1;
    if count > 1 && lanes.strides[0] == 0 && len >= 1 {
        let one = r.finish(lane_part(r, lanes.row(0), 0, kernel)?, len);
        return alloc::filled(kernel, count, one);
    }
    let mut out = alloc::with_capacity(kernel, count)?;
    // Lanes with stride 0 (each one value) go to `lane_part` below, which
    // reads each as a scalar; folding them as columns would walk them all.
    if !lane_unit && lanes.strides[1] != 0 && lanes.strides[0] == 1 && count >= 2 && len >= 1 {
        // Column form: rows of `cols` are contiguous; fold them in row chunks.
        let cols = lanes.t();
        let rows_per_chunk = (chunk_items(item) / count).max(1);
        let parts = map_chunks(exec, len, rows_per_chunk, count * item, |rg| {
            let first = cols.row(rg.start).as_slice().expect("unit stride");
            let mut p = r.col_first(first, rg.start);
            for i in rg.start + 1..rg.end {
                r.col_fold(&mut p, cols.row(i).as_slice().expect("unit stride"), i);
            }
            p
        })?;
        out.extend((0..count).map(|j| {
            let col: Vec<R::Part> = parts.iter().map(|p| p[j]).collect();
            r.finish(merge_all(r, &col), len)
        }));
        return Ok(out);
    }
    let lanes_per_chunk = (chunk_items(item) / len.max(1)).max(1);
    let chunks = map_chunks(exec, count, lanes_per_chunk, len.max(1) * item, |rg| {
        rg.map(|i| {
            let x = lanes.row(i);
            match x.as_slice() {
                Some(s) => Ok(r.finish(r.run(s, 0), len)),
                None if len == 0 => Ok(r.finish(r.run(&[], 0), 0)),
                None => Ok(r.finish(lane_part(r, x, 0, kernel)?, len)),
            }
        })
        .collect::<Result<Vec<_>, KernelError>>()
    })?;
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

fn run_reduce<T: Element, R: Reduce<T>>(
    r: &R,
    m: Mat<'_, T>,
    axis: Option<usize>,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    match axis {
        None => Ok(Value::Scalar(full(r, m, kernel, exec)?.into_scalar())),
        Some(_) if m.ndim <= 1 => Ok(Value::Scalar(full(r, m, kernel, exec)?.into_scalar())),
        Some(a) => {
            let out = along(r, m, a, kernel, exec)?;
            let n = out.len();
            Ok(Value::from_vec(out, vec![n]))
        }
    }
}

/// Validates a reduction; returns the normalised axis.
pub(crate) fn check(
    op: Op,
    operand: &Operand<'_>,
    axis: Option<isize>,
) -> Result<Option<usize>, KernelError> {
    let shape = operand.shape();
    let axis = normalize_axis(op, axis, shape.len())?;
    let size: usize = shape.iter().product();
    // Length of each reduced run. NumPy refuses an empty run even when there
    // are no runs at all (a (0, 0) array reduced along either axis).
    let reduced = match axis {
        None => size,
        Some(a) => shape[a],
    };
    if reduced == 0 {
        let msg = match op {
            Op::Min => Some(
                "zero-size array to reduction operation minimum which has no identity".to_string(),
            ),
            Op::Max => Some(
                "zero-size array to reduction operation maximum which has no identity".to_string(),
            ),
            Op::Argmin => Some("attempt to get argmin of an empty sequence".to_string()),
            Op::Argmax => Some("attempt to get argmax of an empty sequence".to_string()),
            _ => None,
        };
        if let Some(m) = msg {
            return Err(value_error(m));
        }
    }
    Ok(axis)
}

/// Runs reduction `op` on `operand` (a Python scalar counts as a 0-d array).
/// `axis` is the one [`check`] normalised.
pub(crate) fn reduce(
    op: Op,
    operand: &Operand<'_>,
    axis: Option<usize>,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let (iv, fv);
    let view = match operand {
        Operand::Array(v) => *v,
        Operand::Int(x) => {
            iv = [*x];
            crate::ArrayView::from_slice(&iv, &[])?
        }
        Operand::Float(x) => {
            fv = [*x];
            crate::ArrayView::from_slice(&fv, &[])?
        }
        Operand::BigInt(v) => return Err(crate::view::big_int_error(*v)),
    };
    debug_assert_eq!(strong_dtype(operand), view.dtype());
    let dt = view.dtype();
    match op {
        Op::Sum => with_dtype!(dt, T => run_reduce(&SumR, view.mat::<T>(), axis, op.name(), exec)),
        Op::Min => {
            with_dtype!(dt, T => run_reduce(&ExtremeR::<false>, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Max => {
            with_dtype!(dt, T => run_reduce(&ExtremeR::<true>, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Argmin => {
            with_dtype!(dt, T => run_reduce(&ArgR::<false>, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Argmax => {
            with_dtype!(dt, T => run_reduce(&ArgR::<true>, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Mean if dt.is_float() => {
            with_float_dtype!(dt, T => run_reduce(&MeanFloatR, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Mean => {
            with_dtype!(dt, T => run_reduce(&MeanIntR, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Norm if dt.is_float() => {
            with_float_dtype!(dt, T => run_reduce(&NormR, view.mat::<T>(), axis, op.name(), exec))
        }
        Op::Norm => {
            with_dtype!(dt, T => run_reduce(&NormIntR, view.mat::<T>(), axis, op.name(), exec))
        }
        _ => Err(value_error(format!("{} is not a reduction", op.name()))),
    }
}
