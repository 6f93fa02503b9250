//! Splitting one GEMM across the current rayon pool.
//!
//! The output is cut into one strip per thread, each a whole number of register tiles.
//! Column strips (when C is at least as wide as tall) share A: for every `mc x kc` block, the
//! threads first pack disjoint panel ranges of A into one buffer, then each multiplies it by the
//! B blocks of its own columns, which it packs itself. Two fork-joins per A block, no other
//! synchronisation. Row strips (C taller than wide) are independent GEMMs, each packing the
//! narrower B again: `k x n` copies per thread, small next to the `m x n x k` work.

use rayon::prelude::*;

use super::driver::{self, macro_kernel, Blocks};
use super::element::GemmElement;
use super::kernel::KernelSpec;
use super::matrix::Problem;
use super::workspace::{bytes_for, Workspace};
use crate::{Exec, KernelError};

/// Below this many multiply-adds per thread, waking a helper (~20-40 µs) costs more than the
/// split saves (2^20 FMAs take ~10 µs at 100 GFLOP/s).
const MIN_WORK_PER_THREAD: usize = 1 << 21;

/// Below this many elements an A block is packed by the calling thread alone: a fork-join
/// would cost about as much as the copy.
const MIN_PARALLEL_PACK: usize = 1 << 17;

/// How many threads `p` should use under `exec` (1 means: run on the calling thread).
pub(super) fn threads_for<T>(p: &Problem<'_, T>, exec: &dyn Exec) -> usize {
    if exec.max_threads() <= 1 || rayon::current_thread_index().is_none() {
        return 1;
    }
    let work = p.m.saturating_mul(p.n).saturating_mul(p.k);
    exec.max_threads()
        .min(rayon::current_num_threads())
        .min(work / MIN_WORK_PER_THREAD)
        .max(1)
}

/// Runs `p` on `threads` threads of the current rayon pool.
pub(super) fn run<T: GemmElement>(
    spec: &KernelSpec<T>,
    p: Problem<'_, T>,
    threads: usize,
    exec: &dyn Exec,
) -> Result<(), KernelError> {
    exec.wake_helpers();
    let col_strips_fill = p.n.div_ceil(spec.nr) >= threads;
    if (p.n >= p.m && col_strips_fill) || p.m.div_ceil(spec.mr) < threads {
        by_cols(spec, p, threads, exec)
    } else {
        strips(p.m, spec.mr, threads)
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|(lo, hi)| driver::run(spec, p.rows(lo, hi), exec))
    }
}

/// A pointer to a packed buffer shared by the tasks of one fork-join.
///
/// Invariant: tasks write disjoint ranges of it, or only read it, within one fork-join.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: see the invariant; the fork-join orders the writes before the reads.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    // A method, so closures capture the whole `Shared` rather than the bare pointer field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Column strips sharing the packed A (see the module docs).
fn by_cols<T: GemmElement>(
    spec: &KernelSpec<T>,
    p: Problem<'_, T>,
    threads: usize,
    exec: &dyn Exec,
) -> Result<(), KernelError> {
    if p.k == 0 {
        driver::zero(p);
        return Ok(());
    }
    let (mr, nr) = (spec.mr, spec.nr);
    let Blocks { mc, kc, nc } = Blocks::new(spec, p.m, p.n.div_ceil(threads), p.k);
    let mut ws = Workspace::take(bytes_for::<T>(&[mc * kc]));
    let [a_pack] = ws.regions::<T, 1>([mc * kc]);
    let a_pack = Shared(a_pack);
    let columns = strips(p.n, nr, threads);
    // Closures share the problem by reference (`Problem` is `Sync`, its raw fields are not).
    let p = &p;
    for i0 in (0..p.m).step_by(mc) {
        let mb = mc.min(p.m - i0);
        let pack_threads = if mb * kc >= MIN_PARALLEL_PACK {
            threads
        } else {
            1
        };
        let panels = strips(mb.div_ceil(mr), 1, pack_threads);
        for p0 in (0..p.k).step_by(kc) {
            if exec.is_cancelled() {
                return Err(KernelError::Cancelled);
            }
            let kb = kc.min(p.k - p0);
            panels.par_iter().with_max_len(1).for_each(|&(lo, hi)| {
                let rows = (hi * mr).min(mb) - lo * mr;
                let a = p.a.shifted(i0 + lo * mr, p0);
                // SAFETY: rows `lo*mr..` of the block lie inside A; each task writes its own
                // panels `lo..hi` of the buffer, which holds mc * kc.
                unsafe { (spec.pack_a)(a, rows, kb, a_pack.get().wrapping_add(lo * mr * kb)) };
            });
            columns
                .par_iter()
                .with_max_len(1)
                .try_for_each(|&(lo, hi)| {
                    let lens = [kc * nc, mr * nr];
                    let mut ws = Workspace::take(bytes_for::<T>(&lens));
                    let [b_pack, edge] = ws.regions::<T, 2>(lens);
                    for j0 in (lo..hi).step_by(nc) {
                        if exec.is_cancelled() {
                            return Err(KernelError::Cancelled);
                        }
                        let nb = nc.min(hi - j0);
                        let block = p.rows(i0, i0 + mb).cols(j0, j0 + nb);
                        // SAFETY: the B block lies inside B; the A block was packed above and is
                        // only read now; this task alone writes C columns `lo..hi`.
                        unsafe {
                            (spec.pack_b)(p.b.shifted(p0, j0), kb, nb, b_pack);
                            macro_kernel(spec, block, kb, a_pack.get(), b_pack, edge, p0 == 0);
                        }
                    }
                    Ok(())
                })?;
        }
    }
    Ok(())
}

/// Splits `0..len` into at most `parts` ranges of whole `unit`s, sizes differing by at most one
/// unit, none empty.
fn strips(len: usize, unit: usize, parts: usize) -> Vec<(usize, usize)> {
    let units = len.div_ceil(unit);
    let parts = parts.min(units).max(1);
    let (base, extra) = (units / parts, units % parts);
    let mut lo = 0;
    (0..parts)
        .map(|s| {
            let hi = (lo + (base + usize::from(s < extra)) * unit).min(len);
            let range = (lo, hi);
            lo = hi;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::strips;

    #[test]
    fn strips_cover_exactly_in_whole_units() {
        for len in [1, 7, 24, 25, 1000, 1024] {
            for parts in 1..5 {
                let s = strips(len, 24, parts);
                assert_eq!(s.first().unwrap().0, 0);
                assert_eq!(s.last().unwrap().1, len);
                for w in s.windows(2) {
                    assert_eq!(w[0].1, w[1].0);
                    assert_eq!(w[0].1 % 24, 0);
                }
                assert!(s.iter().all(|&(lo, hi)| hi > lo));
            }
        }
    }
}
