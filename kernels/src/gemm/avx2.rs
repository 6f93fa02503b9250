//! AVX2+FMA microkernels (x86-64 only; selected at run time by [`super::dispatch`]).

use core::arch::x86_64::*;

use super::simd::{tile, Simd};

/// Marker for 256-bit vectors.
pub(super) struct Avx2;

impl Simd<f64> for Avx2 {
    type V = __m256d;
    const LANES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256d {
        _mm256_setzero_pd()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f64) -> __m256d {
        // SAFETY: the caller guarantees 4 readable elements at `p`.
        unsafe { _mm256_loadu_pd(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(p: *const f64) -> __m256d {
        // SAFETY: the caller guarantees `p` is readable.
        _mm256_set1_pd(unsafe { *p })
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f64, v: __m256d) {
        // SAFETY: the caller guarantees 4 writable elements at `p`.
        unsafe { _mm256_storeu_pd(p, v) }
    }
}

impl Simd<f32> for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees `p` is readable.
        _mm256_set1_ps(unsafe { *p })
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable elements at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
}

/// The AVX2 instance of [`tile`], usable as a [`super::kernel::MicroKernel`].
///
/// # Safety
/// As for [`super::kernel::MicroKernel`]; the CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn ukr<T, const MR: usize, const NV: usize>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    overwrite: bool,
) where
    Avx2: Simd<T>,
{
    // SAFETY: forwarded contract; AVX2 and FMA is enabled for this function.
    unsafe { tile::<Avx2, T, MR, NV>(k, a, b, c, ldc, overwrite) }
}
