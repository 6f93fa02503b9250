//! Packing of operand blocks into the contiguous micro-panel order the microkernels stream.
//!
//! Packed A: panels of `mr` rows; panel `i` holds, for each `p` in `0..k`, the `mr` values
//! `A[i*mr + r, p]`. Packed B: panels of `nr` columns; panel `j` holds, for each `p`, the `nr`
//! values `B[p, j*nr + c]`. Rows/columns beyond the matrix edge are zero, so edge tiles run the
//! full-size kernel and contribute nothing extra.

use super::element::GemmElement;
use super::matrix::Strided;

/// Rows of B transposed per pass when B's columns are contiguous.
const TRANSPOSE_DEPTH: usize = 16;

/// Packs the `rows x k` block of `a` into `dst` (`rows.div_ceil(mr) * mr * k` elements).
///
/// # Safety
/// Every element of the block must be readable and `dst` writable for the packed size.
pub(super) unsafe fn pack_a<T: GemmElement, const MR: usize>(
    a: Strided<T>,
    rows: usize,
    k: usize,
    dst: *mut T,
) {
    let mr = MR;
    for (pi, i0) in (0..rows).step_by(mr).enumerate() {
        let h = mr.min(rows - i0);
        // SAFETY: the panel lies inside `dst`; the caller guarantees the block is readable.
        unsafe {
            let panel = core::slice::from_raw_parts_mut(dst.add(pi * mr * k), mr * k);
            if a.cs == 1 && h == MR {
                // Rows are contiguous: walk the MR rows together, writing whole groups.
                let rows: [&[T]; MR] =
                    core::array::from_fn(|r| core::slice::from_raw_parts(a.at(i0 + r, 0), k));
                for (p, group) in panel.chunks_exact_mut(MR).enumerate() {
                    let group: &mut [T; MR] = group.try_into().unwrap_unchecked();
                    *group = core::array::from_fn(|r| *rows[r].get_unchecked(p));
                }
            } else if a.rs == 1 {
                // Columns are contiguous (A transposed): each group is a slice of a column.
                for (p, group) in panel.chunks_exact_mut(mr).enumerate() {
                    group[..h].copy_from_slice(core::slice::from_raw_parts(a.at(i0, p), h));
                }
            } else {
                for (p, group) in panel.chunks_exact_mut(mr).enumerate() {
                    for (r, slot) in group[..h].iter_mut().enumerate() {
                        *slot = *a.at(i0 + r, p);
                    }
                }
            }
            if h < mr {
                for group in panel.chunks_exact_mut(mr) {
                    group[h..].fill(T::ZERO);
                }
            }
        }
    }
}

/// Packs the `k x cols` block of `b` into `dst` (`cols.div_ceil(nr) * nr * k` elements).
///
/// # Safety
/// Every element of the block must be readable and `dst` writable for the packed size.
pub(super) unsafe fn pack_b<T: GemmElement, const NR: usize>(
    b: Strided<T>,
    k: usize,
    cols: usize,
    dst: *mut T,
) {
    let nr = NR;
    for (pj, j0) in (0..cols).step_by(nr).enumerate() {
        let w = nr.min(cols - j0);
        // SAFETY: the panel lies inside `dst`; the caller guarantees the block is readable.
        unsafe {
            let panel = core::slice::from_raw_parts_mut(dst.add(pj * nr * k), nr * k);
            if b.cs == 1 {
                for (p, group) in panel.chunks_exact_mut(nr).enumerate() {
                    group[..w].copy_from_slice(core::slice::from_raw_parts(b.at(p, j0), w));
                }
            } else if b.rs == 1 {
                // Columns are contiguous (B transposed): transpose in strips of TRANSPOSE_DEPTH
                // rows so the strip being written stays in L1 while every column is read.
                for p0 in (0..k).step_by(TRANSPOSE_DEPTH) {
                    let depth = TRANSPOSE_DEPTH.min(k - p0);
                    let strip = &mut panel[p0 * nr..(p0 + depth) * nr];
                    for c in 0..w {
                        let col = core::slice::from_raw_parts(b.at(p0, j0 + c), depth);
                        for (group, &x) in strip.chunks_exact_mut(nr).zip(col) {
                            *group.get_unchecked_mut(c) = x;
                        }
                    }
                }
            } else {
                for (p, group) in panel.chunks_exact_mut(nr).enumerate() {
                    for (c, slot) in group[..w].iter_mut().enumerate() {
                        *slot = *b.at(p, j0 + c);
                    }
                }
            }
            if w < nr {
                for group in panel.chunks_exact_mut(nr) {
                    group[w..].fill(T::ZERO);
                }
            }
        }
    }
}
