//! Reduction loops: sums (pairwise over multi-accumulator blocks), dot
//! products, min/max with NaN propagation, and first-match search.

use super::{multiversion, simd_level, SimdLevel, BLOCK, LANES};
use crate::dtype::{Element, Float};
use std::hint::black_box;

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
#[inline(always)]
fn sumsq_f64_body<T: Element>(x: &[T]) -> f64 {
    mapped_sum(x, |v: T| {
        let f = v.to_f64();
        f * f
    })
}

multiversion! {
    /// Sum of the squares of the elements converted to f64 (integer `norm`;
    /// bit-identical to `sumsq` of the converted elements).
    fn sumsq_f64<T: Element>(x: &[T]) -> f64 = sumsq_f64_body;
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

/// Accumulator steps summed per lane before the lanes fold into running
/// totals: 64 sequential adds per lane, then one add per block, so the error
/// stays near pairwise summation's for any vector length.
const TILE_BLOCK_STEPS: usize = 64;

/// How far ahead of use (in bytes of rows) the first query block of a row
/// group prefetches the rows it will stream next. Measured on 20000 x 256
/// f32 with one query: 8-16 KiB ahead took 0.50 ms to 0.37 ms; the hardware
/// prefetcher alone trails several short interleaved row streams.
const PREFETCH_BYTES: usize = 8 * 1024;

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
fn mul_add_lanes<T: Float, const L: usize>(acc: &mut [T; L], x: &[T; L], y: &[T; L]) {
    for i in 0..L {
        acc[i] = acc[i].add(x[i].mul(y[i]));
    }
}

/// `acc[i] += x[i]` for every lane.
#[inline(always)]
fn add_lanes<T: Float, const L: usize>(acc: &mut [T; L], x: &[T; L]) {
    for i in 0..L {
        acc[i] = acc[i].add(x[i]);
    }
}

/// Hints the CPU to fetch the cache line holding `p` into L1.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One `L`-lane step: `acc[r][j] += x[r] * y[j]` lane-wise and (when
/// `NORM`) `sq[r] += x[r] * x[r]`. `R` and `Q` are at most 8.
#[inline(always)]
fn tile_step<T: Float, const L: usize, const R: usize, const Q: usize, const NORM: bool>(
    x: [&[T; L]; R],
    y: [&[T; L]; Q],
    acc: &mut [[[T; L]; Q]; R],
    sq: &mut [[T; L]; R],
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

/// The last `v.len() % L` elements of `v`, zero-padded to `L`.
#[inline(always)]
fn tail_padded<T: Float, const L: usize>(v: &[T]) -> [T; L] {
    let mut out = [T::ZERO; L];
    let rest = v.as_chunks::<L>().1;
    out[..rest.len()].copy_from_slice(rest);
    out
}

/// `R` rows scored together, and where the rows to stream after them start
/// (prefetched while these are read; any address is harmless).
#[derive(Clone, Copy)]
struct Group<'a, T, const R: usize> {
    rows: [&'a [T]; R],
    ahead: [*const T; R],
}

/// The zero-padded last partial step of a tile's rows and queries.
type Tail<T, const L: usize, const R: usize, const Q: usize> = ([[T; L]; R], [[T; L]; Q]);

/// Per-lane sums of one block, steps `s0..s1` of `x` and `y` (at most
/// `TILE_BLOCK_STEPS`), plus the zero-padded `tail` step when given:
/// `acc[r][j]` for the dots and (when `NORM`) `sq[r]` for the rows' squares.
/// The `NORM` pass is the first over these rows: it prefetches `ahead`.
#[inline(always)]
fn tile_block<T: Float, const L: usize, const R: usize, const Q: usize, const NORM: bool>(
    x: [&[[T; L]]; R],
    y: [&[[T; L]]; Q],
    ahead: [*const T; R],
    s0: usize,
    s1: usize,
    tail: Option<&Tail<T, L, R, Q>>,
) -> ([[[T; L]; Q]; R], [[T; L]; R]) {
    let mut acc = [[[T::ZERO; L]; Q]; R];
    let mut sq = [[T::ZERO; L]; R];
    for s in s0..s1 {
        if NORM {
            for a in ahead {
                prefetch(a.wrapping_add(s * L));
            }
        }
        tile_step::<T, L, R, Q, NORM>(x.map(|r| &r[s]), y.map(|q| &q[s]), &mut acc, &mut sq);
    }
    if let Some((tx, ty)) = tail {
        tile_step::<T, L, R, Q, NORM>(
            std::array::from_fn(|r| &tx[r]),
            std::array::from_fn(|j| &ty[j]),
            &mut acc,
            &mut sq,
        );
    }
    (acc, sq)
}

/// Dots of `R` rows with `Q` queries over their first `d` elements, and (when
/// `NORM`) each row's sum of squares, as `L`-lane partial sums (lane `i`
/// holds elements `i mod L`, summed in blocks of `TILE_BLOCK_STEPS` steps;
/// a last partial step is zero-padded).
/// The order of operations for one (row, query) pair does not depend on
/// `R`, `Q` or the other rows and queries in the tile.
#[inline(always)]
fn tile<T: Float, const L: usize, const R: usize, const Q: usize, const NORM: bool>(
    g: Group<'_, T, R>,
    qs: [&[T]; Q],
    d: usize,
) -> ([[[T; L]; Q]; R], [[T; L]; R]) {
    let rows = g.rows.map(|r| &r[..d]);
    let qs = qs.map(|q| &q[..d]);
    // Every operand cut to the same `steps` whole steps, so the step loop
    // indexes without bounds checks (which would split it into blocks the
    // vectoriser cannot work across).
    let steps = d / L;
    let x = rows.map(|r| &r.as_chunks::<L>().0[..steps]);
    let y = qs.map(|q| &q.as_chunks::<L>().0[..steps]);
    let tail = (!d.is_multiple_of(L))
        .then(|| (rows.map(tail_padded::<T, L>), qs.map(tail_padded::<T, L>)));
    // Blocks of TILE_BLOCK_STEPS steps over the whole steps and the padded
    // tail; the block ending at `total` takes the tail.
    let total = steps + usize::from(tail.is_some());
    let tail_at = |s1: usize| if s1 == total { tail.as_ref() } else { None };
    // The first block is the totals: no running totals stay live (taking
    // registers) through the common single-block case.
    let mut end = total.min(TILE_BLOCK_STEPS);
    let (mut tot, mut tsq) =
        tile_block::<T, L, R, Q, NORM>(x, y, g.ahead, 0, end.min(steps), tail_at(end));
    while end < total {
        let start = end;
        end = (start + TILE_BLOCK_STEPS).min(total);
        let (acc, sq) =
            tile_block::<T, L, R, Q, NORM>(x, y, g.ahead, start, end.min(steps), tail_at(end));
        unroll8!(r < R => {
            unroll8!(j < Q => {
                add_lanes(&mut tot[r][j], &acc[r][j]);
            });
            if NORM {
                add_lanes(&mut tsq[r], &sq[r]);
            }
        });
    }
    (tot, tsq)
}

/// Scores a group of `R` rows against queries `j0..j0 + Q`, writing dots into
/// `dots` (these rows' outputs, row-major, `nq` per row) and, for the first
/// query block, the rows' sums of squares into `sumsq`. Lanes fold pairwise.
///
/// The lane sums pass through memory (`black_box`) before folding: otherwise
/// the SLP vectoriser may bundle the folds (and then the step loop) across
/// rows instead of lanes, which measured 2-5x slower for some tile shapes
/// under thin LTO.
#[inline(always)]
fn tile_into<T: Float, const L: usize, const R: usize, const Q: usize>(
    g: Group<'_, T, R>,
    queries: &[T],
    d: usize,
    j0: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    let nq = dots.len() / R;
    let qs: [&[T]; Q] = std::array::from_fn(|j| &queries[(j0 + j) * d..(j0 + j + 1) * d]);
    if j0 == 0 {
        let (dt, sq) = black_box(tile::<T, L, R, Q, true>(g, qs, d));
        for r in 0..R {
            for j in 0..Q {
                dots[r * nq + j] = tree(dt[r][j]);
            }
            sumsq[r] = tree(sq[r]);
        }
    } else {
        let dt = black_box(tile::<T, L, R, Q, false>(g, qs, d).0);
        for r in 0..R {
            for j in 0..Q {
                dots[r * nq + j0 + j] = tree(dt[r][j]);
            }
        }
    }
}

/// Scores a group of `R` rows against all `nq = dots.len() / R` queries in
/// balanced blocks of at most `QMAX` (at most 4) queries; the rows stay in
/// L1 from the first block on.
#[inline(always)]
fn row_group<T: Float, const L: usize, const R: usize, const QMAX: usize>(
    g: Group<'_, T, R>,
    queries: &[T],
    d: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    let nq = dots.len() / R;
    let blocks = nq.div_ceil(QMAX);
    let (base, extra) = (nq / blocks, nq % blocks);
    let mut j = 0;
    for b in 0..blocks {
        let q = base + usize::from(b < extra);
        match q {
            1 => tile_into::<T, L, R, 1>(g, queries, d, j, dots, sumsq),
            2 => tile_into::<T, L, R, 2>(g, queries, d, j, dots, sumsq),
            3 => tile_into::<T, L, R, 3>(g, queries, d, j, dots, sumsq),
            _ => tile_into::<T, L, R, 4>(g, queries, d, j, dots, sumsq),
        }
        j += q;
    }
}

/// Rows in groups of `R` (the rest one by one), each group against all
/// queries in blocks of at most `QMAX`.
#[inline(always)]
fn rows_tiled<T: Float, const L: usize, const R: usize, const QMAX: usize>(
    rows: &[&[T]],
    queries: &[T],
    d: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    let nq = dots.len() / rows.len();
    let groups = rows.len() / R;
    let group_bytes = (R * d * std::mem::size_of::<T>()).max(1);
    let lead = PREFETCH_BYTES.div_ceil(group_bytes) * R;
    let ahead = |r: usize| rows.get(r + lead).unwrap_or(&rows[r]).as_ptr();
    for g in 0..groups {
        let r0 = g * R;
        let group = Group {
            rows: std::array::from_fn(|r| rows[r0 + r]),
            ahead: std::array::from_fn(|r| ahead(r0 + r)),
        };
        row_group::<T, L, R, QMAX>(
            group,
            queries,
            d,
            &mut dots[r0 * nq..(r0 + R) * nq],
            &mut sumsq[r0..r0 + R],
        );
    }
    for r in groups * R..rows.len() {
        let group = Group {
            rows: [rows[r]],
            ahead: [ahead(r)],
        };
        row_group::<T, L, 1, QMAX>(
            group,
            queries,
            d,
            &mut dots[r * nq..(r + 1) * nq],
            &mut sumsq[r..=r],
        );
    }
}

/// Picks the tile shape for the SIMD level. A shape changes only which
/// products share loads, never one product's order of operations, so every
/// level gives the same bits. AVX-512: 4 rows x 4 queries + 4 row squares
/// are 20 of the 32 vector registers (one row, as before, re-read every query
/// from L1 and measured 2x slower); with 16 registers, one row at a time.
#[inline(always)]
fn rows_lanes<T: Float, const L: usize>(
    rows: &[&[T]],
    queries: &[T],
    d: usize,
    dots: &mut [T],
    sumsq: &mut [T],
) {
    match simd_level() {
        SimdLevel::Avx512 => rows_tiled::<T, L, 4, 4>(rows, queries, d, dots, sumsq),
        _ => rows_tiled::<T, L, 1, 4>(rows, queries, d, dots, sumsq),
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
    if rows.is_empty() || dots.is_empty() {
        return;
    }
    // One 64-byte register of T per accumulator: 16 f32 or 8 f64 lanes,
    // fixed per type so that every SIMD level sums in the same order.
    if std::mem::size_of::<T>() == 4 {
        rows_lanes::<T, 16>(rows, queries, d, dots, sumsq);
    } else {
        rows_lanes::<T, 8>(rows, queries, d, dots, sumsq);
    }
}

multiversion! {
    /// Row-streaming products for cosine similarity: for every row (each at
    /// least `d` long) its dots with all `nq = dots.len() / rows.len()`
    /// queries (`queries` holds them contiguously, `d` apart) into `dots`
    /// (row-major) and its sum of squares into `sumsq` (left as is when
    /// `nq` is 0). Rows are read from memory once, in groups that share
    /// every query load, and reused from L1 for every query block. A row's
    /// results do not depend on the other rows passed with it.
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
