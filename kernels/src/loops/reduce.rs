//! Reduction loops: sums (pairwise over multi-accumulator blocks), dot
//! products, min/max with NaN propagation, and first-match search.

use super::{multiversion, BLOCK, LANES};
use crate::dtype::{Element, Float};

/// Tree-sums the accumulators (pairwise, so the error stays logarithmic).
#[inline(always)]
fn tree<S: Element>(mut acc: [S; LANES]) -> S {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = acc[i].add(acc[i + w]);
        }
    }
    acc[0]
}

/// Combines block results pairwise with a binary-counter stack: the same
/// error bound as recursive pairwise summation, without recursion or
/// closures (so everything inlines into the dispatched loop).
struct Cascade<S> {
    stack: [S; 64],
    depth: usize,
    count: usize,
}

impl<S: Element> Cascade<S> {
    #[inline(always)]
    fn new() -> Self {
        Cascade {
            stack: [S::ZERO; 64],
            depth: 0,
            count: 0,
        }
    }

    #[inline(always)]
    fn push(&mut self, mut s: S) {
        let mut k = self.count;
        while k & 1 == 1 {
            self.depth -= 1;
            s = self.stack[self.depth].add(s);
            k >>= 1;
        }
        self.stack[self.depth] = s;
        self.depth += 1;
        self.count += 1;
    }

    #[inline(always)]
    fn finish(mut self) -> S {
        let mut total = S::ZERO;
        while self.depth > 0 {
            self.depth -= 1;
            total = self.stack[self.depth].add(total);
        }
        total
    }
}

/// Maps each element with `f` and sums a block of at most `BLOCK` elements.
#[inline(always)]
fn block_sum<T: Element, S: Element>(x: &[T], f: impl Fn(T) -> S) -> S {
    let mut acc = [S::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].add(f(c[i]));
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = a.add(f(v));
    }
    tree(acc)
}

#[inline(always)]
fn mapped_sum<T: Element, S: Element>(x: &[T], f: impl Fn(T) -> S + Copy) -> S {
    if x.len() <= BLOCK {
        return block_sum(x, f);
    }
    let mut c = Cascade::new();
    for block in x.chunks(BLOCK) {
        c.push(block_sum(block, f));
    }
    c.finish()
}

#[inline(always)]
fn sum_body<T: Element>(x: &[T]) -> T::Sum {
    mapped_sum(x, |v: T| v.to_sum())
}

#[inline(always)]
fn sum_f64_body<T: Element>(x: &[T]) -> f64 {
    mapped_sum(x, |v: T| v.to_f64())
}

#[inline(always)]
fn sumsq_body<T: Float>(x: &[T]) -> T {
    mapped_sum(x, |v: T| v.mul(v))
}

multiversion! {
    /// `np.sum` of a contiguous run in the sum dtype (wrapping for ints).
    fn sum<T: Element>(x: &[T]) -> T::Sum = sum_body;
}
multiversion! {
    /// Sum of the elements converted to f64 (integer `mean`).
    fn sum_f64<T: Element>(x: &[T]) -> f64 = sum_f64_body;
}
multiversion! {
    /// Sum of squares (`norm`).
    fn sumsq<T: Float>(x: &[T]) -> T = sumsq_body;
}

#[inline(always)]
fn dot_block<T: Element>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] = acc[i].add(x[i].mul(y[i]));
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *s = s.add(x.mul(y));
    }
    tree(acc)
}

#[inline(always)]
fn dot_body<T: Element>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    if n <= BLOCK {
        return dot_block(&a[..n], &b[..n]);
    }
    let mut c = Cascade::new();
    for (x, y) in a[..n].chunks(BLOCK).zip(b[..n].chunks(BLOCK)) {
        c.push(dot_block(x, y));
    }
    c.finish()
}

multiversion! {
    /// Dot product of two equally long runs (wrapping for ints).
    fn dot<T: Element>(a: &[T], b: &[T]) -> T = dot_body;
}

#[inline(always)]
fn dot_sumsq_block<T: Float>(a: &[T], b: &[T]) -> (T, T) {
    let mut acc = [T::ZERO; LANES];
    let mut sq = [T::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] = acc[i].add(x[i].mul(y[i]));
            sq[i] = sq[i].add(x[i].mul(x[i]));
        }
    }
    for (((s, q), &x), &y) in acc
        .iter_mut()
        .zip(sq.iter_mut())
        .zip(ca.remainder())
        .zip(cb.remainder())
    {
        *s = s.add(x.mul(y));
        *q = q.add(x.mul(x));
    }
    (tree(acc), tree(sq))
}

#[inline(always)]
fn dot_sumsq_body<T: Float>(a: &[T], b: &[T]) -> (T, T) {
    let n = a.len().min(b.len());
    if n <= BLOCK {
        return dot_sumsq_block(&a[..n], &b[..n]);
    }
    let (mut cd, mut cq) = (Cascade::new(), Cascade::new());
    for (x, y) in a[..n].chunks(BLOCK).zip(b[..n].chunks(BLOCK)) {
        let (d, q) = dot_sumsq_block(x, y);
        cd.push(d);
        cq.push(q);
    }
    (cd.finish(), cq.finish())
}

multiversion! {
    /// `(dot(a, b), dot(a, a))` in one pass (cosine similarity rows).
    fn dot_sumsq<T: Float>(a: &[T], b: &[T]) -> (T, T) = dot_sumsq_body;
}

/// `np.minimum`'s choice: the smaller value, NaN if `x` is NaN (NaN in
/// `acc` stays, because `x < NaN` is false).
#[inline(always)]
pub(crate) fn pick_min<T: Element>(acc: T, x: T) -> T {
    if x < acc || x.is_nan() {
        x
    } else {
        acc
    }
}

/// `np.maximum`'s choice, NaN-propagating like `pick_min`.
#[inline(always)]
pub(crate) fn pick_max<T: Element>(acc: T, x: T) -> T {
    if x > acc || x.is_nan() {
        x
    } else {
        acc
    }
}

#[inline(always)]
fn fold_body<T: Element, const MAX: bool>(x: &[T]) -> T {
    let pick = |a: T, v: T| if MAX { pick_max(a, v) } else { pick_min(a, v) };
    if x.len() < 2 * LANES {
        return x[1..].iter().fold(x[0], |a, &v| pick(a, v));
    }
    let mut acc = [x[0]; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = pick(acc[i], c[i]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = pick(*a, v);
    }
    acc.iter().fold(acc[0], |a, &v| pick(a, v))
}

#[inline(always)]
fn min_body<T: Element>(x: &[T]) -> T {
    fold_body::<T, false>(x)
}

#[inline(always)]
fn max_body<T: Element>(x: &[T]) -> T {
    fold_body::<T, true>(x)
}

multiversion! {
    /// Smallest element, NaN if any is NaN. `x` must not be empty.
    fn min<T: Element>(x: &[T]) -> T = min_body;
}
multiversion! {
    /// Largest element, NaN if any is NaN. `x` must not be empty.
    fn max<T: Element>(x: &[T]) -> T = max_body;
}

#[inline(always)]
fn position_body<T: Element>(x: &[T], v: T) -> usize {
    let nan = v.is_nan();
    let hit = |e: T| if nan { e.is_nan() } else { e == v };
    let mut chunks = x.chunks_exact(LANES);
    let mut base = 0;
    for c in &mut chunks {
        let mut any = false;
        for &e in c {
            any |= hit(e);
        }
        if any {
            return base + c.iter().position(|&e| hit(e)).unwrap_or(LANES);
        }
        base += LANES;
    }
    base + chunks
        .remainder()
        .iter()
        .position(|&e| hit(e))
        .unwrap_or(x.len() - base)
}

multiversion! {
    /// Index of the first element equal to `v` (first NaN when `v` is NaN);
    /// `x.len()` when there is none.
    fn position<T: Element>(x: &[T], v: T) -> usize = position_body;
}

/// Pairwise sum of chunk partials, in order (`parts` is non-empty).
pub(crate) fn pairwise_sum<S: Element>(parts: &[S]) -> S {
    match parts.len() {
        1 => parts[0],
        n => {
            let (a, b) = parts.split_at(n / 2);
            pairwise_sum(a).add(pairwise_sum(b))
        }
    }
}
