//! The single-threaded blocked loop nest (BLIS order, with A and B roles mirrored for a
//! row-major C): for each `mc x kc` block of A (packed, L3) and each `kc x nc` block of B
//! (packed, L2), every A micro-panel is swept across all B micro-panels from L1.

use super::element::GemmElement;
use super::kernel::KernelSpec;
use super::matrix::Problem;
use super::workspace::{bytes_for, Workspace};
use crate::{Exec, KernelError};

/// Cache blocks for one problem: the spec's maxima, evened out so no block is a small
/// remainder (a thin last block would repack a whole operand for little work).
///
/// `kc` depends on `k` alone, so every split of the same product sums in the same order and
/// parallel results equal serial ones bit for bit.
#[derive(Clone, Copy)]
pub(super) struct Blocks {
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
}

impl Blocks {
    pub fn new<T>(spec: &KernelSpec<T>, m: usize, n: usize, k: usize) -> Self {
        Blocks {
            mc: even(m, spec.mc, spec.mr),
            kc: even(k, spec.kc, 1),
            nc: even(n, spec.nc, spec.nr),
        }
    }
}

/// The block size, a multiple of `unit` and at most `max` (itself a multiple of `unit`), that
/// covers `len` in the fewest, most nearly equal blocks.
fn even(len: usize, max: usize, unit: usize) -> usize {
    let blocks = len.div_ceil(max).max(1);
    len.div_ceil(blocks).next_multiple_of(unit).clamp(unit, max)
}

/// Computes `p` on the current thread, checking for cancellation between B blocks.
pub(super) fn run<T: GemmElement>(
    spec: &KernelSpec<T>,
    p: Problem<'_, T>,
    exec: &dyn Exec,
) -> Result<(), KernelError> {
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    if p.k == 0 {
        zero(p);
        return Ok(());
    }
    let Blocks { mc, kc, nc } = Blocks::new(spec, p.m, p.n, p.k);
    let lens = [mc * kc, kc * nc, spec.mr * spec.nr];
    let mut ws = Workspace::take(bytes_for::<T>(&lens));
    let [a_pack, b_pack, edge] = ws.regions::<T, 3>(lens);
    for i0 in (0..p.m).step_by(mc) {
        let mb = mc.min(p.m - i0);
        for p0 in (0..p.k).step_by(kc) {
            let kb = kc.min(p.k - p0);
            // SAFETY: the block lies inside A (Problem invariant); `a_pack` holds mc * kc.
            unsafe { (spec.pack_a)(p.a.shifted(i0, p0), mb, kb, a_pack) };
            for j0 in (0..p.n).step_by(nc) {
                if exec.is_cancelled() {
                    return Err(KernelError::Cancelled);
                }
                let nb = nc.min(p.n - j0);
                // SAFETY: the block lies inside B (Problem invariant); `b_pack` holds kc * nc.
                unsafe {
                    (spec.pack_b)(p.b.shifted(p0, j0), kb, nb, b_pack);
                    macro_kernel(
                        spec,
                        p.rows(i0, i0 + mb).cols(j0, j0 + nb),
                        kb,
                        a_pack,
                        b_pack,
                        edge,
                        p0 == 0,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Zeroes C (the product of an empty inner dimension).
pub(super) fn zero<T: GemmElement>(p: Problem<'_, T>) {
    for i in 0..p.m {
        // SAFETY: row `i` of C holds `n` writable elements (Problem invariant).
        unsafe { core::slice::from_raw_parts_mut(p.c.at(i, 0), p.n) }.fill(T::ZERO);
    }
}

/// Multiplies a packed `p.m x kb` A block by a packed `kb x p.n` B block into `p.c`
/// (overwriting or accumulating), tile by tile. Only `p.m`, `p.n` and `p.c` of `p` are used.
///
/// # Safety
/// `a_pack`/`b_pack` hold the blocks packed by `spec` with depth `kb`; `edge` is writable for
/// `mr * nr` elements; C satisfies the [`Problem`] invariant; the CPU supports `spec`'s ISA.
pub(super) unsafe fn macro_kernel<T: GemmElement>(
    spec: &KernelSpec<T>,
    p: Problem<'_, T>,
    kb: usize,
    a_pack: *const T,
    b_pack: *const T,
    edge: *mut T,
    overwrite: bool,
) {
    let (mr, nr) = (spec.mr, spec.nr);
    for (pi, ii) in (0..p.m).step_by(mr).enumerate() {
        let ap = a_pack.wrapping_add(pi * mr * kb);
        let h = mr.min(p.m - ii);
        for (pj, jj) in (0..p.n).step_by(nr).enumerate() {
            let bp = b_pack.wrapping_add(pj * nr * kb);
            let w = nr.min(p.n - jj);
            let cp = p.c.at(ii, jj);
            if h == mr && w == nr {
                // SAFETY: a full tile inside C; panels and ISA as guaranteed by the caller.
                unsafe { (spec.ukr)(kb, ap, bp, cp, p.c.ld, overwrite) };
            } else {
                // SAFETY: as above, computing into the `mr x nr` edge buffer, then merging only
                // the `h x w` part that lies inside C.
                unsafe {
                    (spec.ukr)(kb, ap, bp, edge, nr, true);
                    merge_edge(edge, nr, cp, p.c.ld, h, w, overwrite);
                }
            }
        }
    }
}

/// Writes (or adds) the `h x w` corner of an edge tile into C.
///
/// # Safety
/// `src` readable for `h` rows of stride `lds`; `dst` writable for `h` rows of `w` at stride `ldd`.
unsafe fn merge_edge<T: GemmElement>(
    src: *const T,
    lds: usize,
    dst: *mut T,
    ldd: usize,
    h: usize,
    w: usize,
    overwrite: bool,
) {
    for r in 0..h {
        // SAFETY: guaranteed by the caller.
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.add(r * lds), w),
                core::slice::from_raw_parts_mut(dst.add(r * ldd), w),
            )
        };
        if overwrite {
            d.copy_from_slice(s);
        } else {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = d.add(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::even;

    #[test]
    fn blocks_are_even_whole_units_within_the_maximum() {
        assert_eq!(even(1024, 256, 32), 256);
        assert_eq!(even(1030, 256, 1), 206);
        assert_eq!(even(2048, 4092, 6), 2052);
        assert_eq!(even(5000, 4092, 6), 2502);
        assert_eq!(even(0, 256, 8), 8);
        assert_eq!(even(3, 256, 8), 8);
    }
}
