//! Runtime CPU-feature detection, done once and cached: the one place the
//! kernels ask what the CPU can run (the loops' `multiversion!` follow
//! [`simd_level`], the GEMM's microkernel choice [`best_simd_level`]).

use std::sync::atomic::{AtomicU8, Ordering};

/// Instruction-set level the fast loops run with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SimdLevel {
    /// x86-64 baseline (SSE2) or a non-x86 target.
    Baseline,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/VL/BW/DQ.
    Avx512,
}

/// 0 = not detected yet, else `encode(level)`.
static LEVEL: AtomicU8 = AtomicU8::new(0);

fn encode(l: SimdLevel) -> u8 {
    match l {
        SimdLevel::Baseline => 1,
        SimdLevel::Avx2 => 2,
        SimdLevel::Avx512 => 3,
    }
}

fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// The level in use: the best the CPU supports, unless lowered by
/// `force_simd_level`.
#[inline]
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        1 => SimdLevel::Baseline,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => {
            let l = detect();
            LEVEL.store(encode(l), Ordering::Relaxed);
            l
        }
    }
}

/// The best level this CPU supports, whatever was forced.
pub(crate) fn best_simd_level() -> SimdLevel {
    static BEST: AtomicU8 = AtomicU8::new(0);
    match BEST.load(Ordering::Relaxed) {
        1 => SimdLevel::Baseline,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => {
            let l = detect();
            BEST.store(encode(l), Ordering::Relaxed);
            l
        }
    }
}

/// Lowers the level for the whole process (tests and benchmarks compare
/// the code paths). A level above what the CPU supports is clamped to it.
pub fn force_simd_level(level: SimdLevel) -> SimdLevel {
    let best = best_simd_level();
    let chosen = if encode(level) > encode(best) {
        best
    } else {
        level
    };
    LEVEL.store(encode(chosen), Ordering::Relaxed);
    chosen
}
