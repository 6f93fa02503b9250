//! AVX-512F microkernels (x86-64 only; selected at run time by [`super::dispatch`]).

use core::arch::x86_64::*;

use super::simd::{tile, Simd};

/// Marker for 512-bit vectors.
pub(super) struct Avx512;

impl Simd<f64> for Avx512 {
    type V = __m512d;
    const LANES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512d {
        _mm512_setzero_pd()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f64) -> __m512d {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe { _mm512_loadu_pd(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(p: *const f64) -> __m512d {
        // SAFETY: the caller guarantees `p` is readable.
        _mm512_set1_pd(unsafe { *p })
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        _mm512_fmadd_pd(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
        _mm512_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f64, v: __m512d) {
        // SAFETY: the caller guarantees 8 writable elements at `p`.
        unsafe { _mm512_storeu_pd(p, v) }
    }
}

impl Simd<f32> for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable elements at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees `p` is readable.
        _mm512_set1_ps(unsafe { *p })
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable elements at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

/// The AVX-512 instance of [`tile`], usable as a [`super::kernel::MicroKernel`].
///
/// # Safety
/// As for [`super::kernel::MicroKernel`]; the CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn ukr<T, const MR: usize, const NV: usize>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    overwrite: bool,
) where
    Avx512: Simd<T>,
{
    // SAFETY: forwarded contract; AVX-512F is enabled for this function.
    unsafe { tile::<Avx512, T, MR, NV>(k, a, b, c, ldc, overwrite) }
}
