//! Portable microkernel for every element type: the integer path, and the float path on CPUs
//! without AVX2/AVX-512. Integer arithmetic wraps, as NumPy's does.

use super::element::GemmElement;

/// Portable [`super::kernel::MicroKernel`] with an `MR x NR` accumulator array the compiler can
/// keep in registers and auto-vectorise with the baseline ISA.
///
/// # Safety
/// As for [`super::kernel::MicroKernel`] with `mr = MR`, `nr = NR`.
pub(super) unsafe fn ukr<T: GemmElement, const MR: usize, const NR: usize>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc = [[T::ZERO; NR]; MR];
    // SAFETY: the caller guarantees `a` holds `k * MR` elements and `b` holds `k * NR`.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, k * MR),
            core::slice::from_raw_parts(b, k * NR),
        )
    };
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &x) in acc.iter_mut().zip(ap) {
            for (s, &y) in row.iter_mut().zip(bp) {
                *s = s.add(x.mul(y));
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees the C tile has `MR` writable rows of `NR` elements.
        let dst = unsafe { core::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
        for (d, &s) in dst.iter_mut().zip(row) {
            *d = if overwrite { s } else { d.add(s) };
        }
    }
}
