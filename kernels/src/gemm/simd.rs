//! Vector operations the register-blocked microkernel needs, and that microkernel, written once
//! for every (ISA, float type) pair.

use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

/// Depth steps per iteration of the microkernel loop.
const UNROLL: usize = 4;

/// One ISA's vector of `T`. Implementations carry the ISA's `#[target_feature]`, so they must
/// only be called on CPUs that have it.
pub(super) trait Simd<T> {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const T) -> Self::V;
    unsafe fn splat(p: *const T) -> Self::V;
    /// `a * b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn store(p: *mut T, v: Self::V);
}

/// The `MR x (NV * LANES)` microkernel body (see [`super::kernel::MicroKernel`]).
///
/// Accumulators live in `MR * NV` vector registers; each step loads `NV` vectors of B and
/// broadcasts `MR` scalars of A. Must be inlined into a function compiled with `S`'s features,
/// which is what makes the `S` methods inline into straight-line vector code.
///
/// # Safety
/// As for [`super::kernel::MicroKernel`] with `mr = MR`, `nr = NV * S::LANES`.
#[inline(always)]
pub(super) unsafe fn tile<S: Simd<T>, T, const MR: usize, const NV: usize>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    overwrite: bool,
) {
    let nr = NV * S::LANES;
    // SAFETY: the caller guarantees the ISA and the extents of `a`, `b` and the C tile; every
    // offset below stays inside them.
    unsafe {
        // C is touched only after the k loop; start fetching it now (it may be in DRAM when C
        // exceeds the caches) so the loads at the end do not stall.
        for r in 0..MR {
            let row = c.add(r * ldc).cast::<i8>();
            for line in (0..nr * size_of::<T>()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(line));
            }
        }
        let mut acc = [[S::zero(); NV]; MR];
        // One rank-1 update of the accumulators from step `p` of both panels.
        let step = |acc: &mut [[S::V; NV]; MR], p: usize| {
            let (ap, bp) = (a.add(p * MR), b.add(p * nr));
            let bv: [S::V; NV] = core::array::from_fn(|j| S::load(bp.add(j * S::LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(ap.add(r));
                for (x, v) in row.iter_mut().zip(bv) {
                    *x = S::fma(av, v, *x);
                }
            }
        };
        // Unrolled by UNROLL to cut loop overhead and give the scheduler independent loads.
        let body = k / UNROLL * UNROLL;
        for p in (0..body).step_by(UNROLL) {
            for u in 0..UNROLL {
                step(&mut acc, p + u);
            }
        }
        for p in body..k {
            step(&mut acc, p);
        }
        for (r, row) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            for (j, &x) in row.iter().enumerate() {
                let dst = cr.add(j * S::LANES);
                let v = if overwrite {
                    x
                } else {
                    S::add(S::load(dst), x)
                };
                S::store(dst, v);
            }
        }
    }
}
