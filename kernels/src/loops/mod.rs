//! All fast inner loops, and the runtime CPU dispatch they share.
//!
//! Each loop body is a plain generic `#[inline(always)]` function written with
//! many independent accumulators so that LLVM vectorises it. `multiversion!`
//! compiles every body three times (AVX-512, AVX2+FMA, baseline x86-64) and
//! picks one by the CPU level detected once per process and cached.

mod cpu;
mod elementwise;
mod reduce;

pub(crate) use cpu::best_simd_level;
pub use cpu::{force_simd_level, simd_level, SimdLevel};
pub(crate) use elementwise::*;
pub(crate) use reduce::*;

/// Defines `pub(crate) fn $name<generics>(args) -> ret` that calls `$body`
/// compiled for the best instruction set this CPU has.
macro_rules! multiversion {
    ($(#[$attr:meta])* fn $name:ident<$($g:ident: $bound:path),+>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$attr])*
        #[inline]
        pub(crate) fn $name<$($g: $bound),+>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2,popcnt")]
                unsafe fn v4<$($g: $bound),+>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($g),+>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,popcnt")]
                unsafe fn v3<$($g: $bound),+>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($g),+>($($arg),*)
                }
                match $crate::loops::simd_level() {
                    // SAFETY: simd_level() reports AVX-512 only after runtime detection.
                    $crate::loops::SimdLevel::Avx512 => return unsafe { v4::<$($g),+>($($arg),*) },
                    // SAFETY: simd_level() reports AVX2 only after runtime detection.
                    $crate::loops::SimdLevel::Avx2 => return unsafe { v3::<$($g),+>($($arg),*) },
                    $crate::loops::SimdLevel::Baseline => {}
                }
            }
            $body::<$($g),+>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Independent accumulators per loop: 8 AVX-512 registers of f64, enough to
/// hide add latency on two ports.
pub(crate) const LANES: usize = 64;

/// Elements summed by one multi-accumulator block before pairwise combining:
/// 16 sequential adds per accumulator, matching NumPy's pairwise leaf error.
pub(crate) const BLOCK: usize = 16 * LANES;
