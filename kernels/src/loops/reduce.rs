//! Reduction loops: sums (pairwise over multi-accumulator blocks), dot
//! products, min/max with NaN propagation, and first-match search.

use super::{multiversion, BLOCK, LANES};
use crate::dtype::{Element, Float};

/// Tree-sums the accumulators (pairwise, so the error stays logarithmic).
/// `N` is a power of two.
#[inline(always)]
fn tree<S: Element, const N: usize>(mut acc: [S; N]) -> S {
    let mut w = N;
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

/// Lanes of one row-by-query accumulator: one AVX-512 register of f32.
const TILE_LANES: usize = 16;

/// Elements of a row summed per lane before the lanes fold into running
/// totals: 64 sequential adds per lane, then one add per block, so the error
/// stays near pairwise summation's for any vector length.
const TILE_BLOCK: usize = 64 * TILE_LANES;

/// Queries scored together against one row: 4 independent accumulator chains
/// (plus the row's sum of squares) hide add latency, and the row is loaded
/// once per 4 products (8 measured slower: more per-step overhead).
const TILE_QUERIES: usize = 4;

/// Runs `$body` with `$k` bound to each constant `0..8` below `$n`, unrolled
/// in the source: as a loop, LLVM unrolls the short lane loop inside first
/// and then vectorises across `$k` with gathers instead of across lanes.
macro_rules! unroll8 {
    ($k:ident < $n:expr => $body:block) => {
        unroll8!(@ $k, $n, $body, 0 1 2 3 4 5 6 7)
    };
    (@ $k:ident, $n:expr, $body:block, $($i:literal)*) => {
        $(
            if $i < $n {
                let $k: usize = $i;
                $body
            }
        )*
    };
}

/// `acc[i] += x[i] * y[i]` for every lane.
#[inline(always)]
fn mul_add_lanes<T: Float>(acc: &mut [T; TILE_LANES], x: &[T; TILE_LANES], y: &[T; TILE_LANES]) {
    for i in 0..TILE_LANES {
        acc[i] = acc[i].add(x[i].mul(y[i]));
    }
}

/// `acc[i] += x[i]` for every lane.
#[inline(always)]
fn add_lanes<T: Float>(acc: &mut [T; TILE_LANES], x: &[T; TILE_LANES]) {
    for i in 0..TILE_LANES {
        acc[i] = acc[i].add(x[i]);
    }
}

/// One `TILE_LANES`-wide step: `acc[r][j] += x[r] * y[j]` lane-wise and
/// (when `NORM`) `sq[r] += x[r] * x[r]`. `R` and `Q` are at most 8.
#[inline(always)]
fn tile_step<T: Float, const R: usize, const Q: usize, const NORM: bool>(
    x: [&[T; TILE_LANES]; R],
    y: [&[T; TILE_LANES]; Q],
    acc: &mut [[[T; TILE_LANES]; Q]; R],
    sq: &mut [[T; TILE_LANES]; R],
) {
    unroll8!(r < R => {
        unroll8!(j < Q => {
            mul_add_lanes(&mut acc[r][j], x[r], y[j]);
        });
        if NORM {
            mul_add_lanes(&mut sq[r], x[r], x[r]);
        }
    });
}

/// Pairwise sum of one accumulator's lanes, written as fixed halvings so each
/// level is one vector add.
#[inline(always)]
fn fold_lanes<T: Float>(a: [T; TILE_LANES]) -> T {
    let b: [T; 8] = std::array::from_fn(|i| a[i].add(a[i + 8]));
    let c: [T; 4] = std::array::from_fn(|i| b[i].add(b[i + 4]));
    let d: [T; 2] = std::array::from_fn(|i| c[i].add(c[i + 2]));
    d[0].add(d[1])
}

/// `TILE_LANES` elements of `v` from `p`, zero-padded past its end.
#[inline(always)]
fn lanes_padded<T: Float>(v: &[T], p: usize) -> [T; TILE_LANES] {
    let mut out = [T::ZERO; TILE_LANES];
    let n = (v.len() - p).min(TILE_LANES);
    out[..n].copy_from_slice(&v[p..p + n]);
    out
}

/// `TILE_LANES` elements of `v` from `p` (which must all exist).
#[inline(always)]
fn lanes<T: Float>(v: &[T], p: usize) -> &[T; TILE_LANES] {
    v[p..p + TILE_LANES]
        .try_into()
        .expect("TILE_LANES elements")
}

/// Dots of `R` rows with `Q` queries over their first `d` elements, and (when
/// `NORM`) each row's sum of squares. Returns `(dots[r][j], sumsq[r])`.
#[inline(always)]
fn tile<T: Float, const R: usize, const Q: usize, const NORM: bool>(
    rows: [&[T]; R],
    qs: [&[T]; Q],
    d: usize,
) -> ([[T; Q]; R], [T; R]) {
    let rows = rows.map(|r| &r[..d]);
    let qs = qs.map(|q| &q[..d]);
    let mut tot = [[[T::ZERO; TILE_LANES]; Q]; R];
    let mut tsq = [[T::ZERO; TILE_LANES]; R];
    let mut start = 0;
    while start < d {
        let end = (start + TILE_BLOCK).min(d);
        let mut acc = [[[T::ZERO; TILE_LANES]; Q]; R];
        let mut sq = [[T::ZERO; TILE_LANES]; R];
        let mut p = start;
        while p + TILE_LANES <= end {
            let x = rows.map(|r| lanes(r, p));
            let y = qs.map(|q| lanes(q, p));
            tile_step::<T, R, Q, NORM>(x, y, &mut acc, &mut sq);
            p += TILE_LANES;
        }
        if p < end {
            // Only the last block can end short: pad its tail with zeros.
            let x = rows.map(|r| lanes_padded(r, p));
            let y = qs.map(|q| lanes_padded(q, p));
            tile_step::<T, R, Q, NORM>(
                std::array::from_fn(|r| &x[r]),
                std::array::from_fn(|j| &y[j]),
                &mut acc,
                &mut sq,
            );
        }
        unroll8!(r < R => {
            unroll8!(j < Q => {
                add_lanes(&mut tot[r][j], &acc[r][j]);
            });
            if NORM {
                add_lanes(&mut tsq[r], &sq[r]);
            }
        });
        start = end;
    }
    (tot.map(|t| t.map(fold_lanes)), tsq.map(fold_lanes))
}

/// Scores `R` rows against queries `j0..j0 + Q`, writing dots into `dots`
/// (these rows' outputs, row-major, `nq` per row) and, for the first query
/// block, the rows' sums of squares into `sumsq`.
#[inline(always)]
fn tile_into<T: Float, const R: usize, const Q: usize>(
    rows: [&[T]; R],
    queries: &[T],
    d: usize,
    nq: usize,
    j0: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    let qs: [&[T]; Q] = std::array::from_fn(|j| &queries[(j0 + j) * d..(j0 + j + 1) * d]);
    let (dt, sq) = if j0 == 0 {
        tile::<T, R, Q, true>(rows, qs, d)
    } else {
        (tile::<T, R, Q, false>(rows, qs, d).0, [T::ZERO; R])
    };
    for r in 0..R {
        dots[r * nq + j0..r * nq + j0 + Q].copy_from_slice(&dt[r]);
        if j0 == 0 {
            sumsq[r] = sq[r];
        }
    }
}

#[inline(always)]
fn rows_dots_sumsq_body<T: Float>(
    rows: &[&[T]],
    queries: &[T],
    d: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    let nq = dots.len() / rows.len().max(1);
    for r in 0..rows.len() {
        let (dots, sumsq) = (&mut dots[r * nq..(r + 1) * nq], &mut sumsq[r..=r]);
        let mut j = 0;
        while j < nq {
            let left = nq - j;
            let step = if left >= TILE_QUERIES {
                tile_into::<T, 1, TILE_QUERIES>([rows[r]], queries, d, nq, j, dots, sumsq);
                TILE_QUERIES
            } else if left >= 4 {
                tile_into::<T, 1, 4>([rows[r]], queries, d, nq, j, dots, sumsq);
                4
            } else if left >= 2 {
                tile_into::<T, 1, 2>([rows[r]], queries, d, nq, j, dots, sumsq);
                2
            } else {
                tile_into::<T, 1, 1>([rows[r]], queries, d, nq, j, dots, sumsq);
                1
            };
            j += step;
        }
    }
}

multiversion! {
    /// Row-streaming products for cosine similarity: for every row (each at
    /// least `d` long) its dots with all `nq = dots.len() / rows.len()`
    /// queries (`queries` holds them contiguously, `d` apart) into `dots`
    /// (row-major) and its sum of squares into `sumsq` (left as is when
    /// `nq` is 0). Each row is read from
    /// memory once and reused from L1 for every query block.
    fn rows_dots_sumsq<T: Float>(
        rows: &[&[T]],
        queries: &[T],
        d: usize,
        dots: &mut [T],
        sumsq: &mut [T],
    ) = rows_dots_sumsq_body;
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
