//! Run-time choice of microkernel and cache blocking per element type, by the SIMD level the
//! one detector finds (`loops::best_simd_level`; see `element::spec` for why not the forced one).
//!
//! Block sizes target Zen 4/5 and Skylake-X class caches (32-48 KiB L1D, 1-2 MiB L2 per core):
//! an `mr x kc` A micro-panel stays in L1, a `kc x nc` B block in L2, an `mc x kc` A block in L3.

use super::kernel::KernelSpec;
use super::scalar;
use crate::loops::SimdLevel;

/// The levels whose float microkernels this CPU can run, best first (for
/// tests that try every one).
#[cfg(test)]
pub(super) fn available_levels() -> impl Iterator<Item = SimdLevel> {
    let best = crate::loops::best_simd_level();
    [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Baseline]
        .into_iter()
        .filter(move |&l| rank(l) <= rank(best))
}

#[cfg(test)]
fn rank(level: SimdLevel) -> u8 {
    match level {
        SimdLevel::Baseline => 0,
        SimdLevel::Avx2 => 1,
        SimdLevel::Avx512 => 2,
    }
}

/// Portable kernel; integers never take a SIMD path.
pub(super) fn select_int<T: super::GemmElement>() -> KernelSpec<T> {
    KernelSpec::new::<4, 8>("scalar", (256, 256, 1024), scalar::ukr::<T, 4, 8>)
}

/// Defines `$for_level(level)`, the kernel of a SIMD level (which the CPU must support: a level
/// from [`crate::loops::simd_level`]), for one float type.
macro_rules! float_kernels {
    ($for_level:ident, $t:ty,
     avx512: ($mr5:literal, $nv5:literal, $blk5:expr),
     avx2: ($mr2:literal, $nv2:literal, $blk2:expr),
     portable: ($mrs:literal, $nrs:literal, $blks:expr)) => {
        pub(super) fn $for_level(level: SimdLevel) -> KernelSpec<$t> {
            match level {
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx512 => {
                    use super::{
                        avx512::{ukr, Avx512},
                        simd::Simd,
                    };
                    const NR: usize = $nv5 * <Avx512 as Simd<$t>>::LANES;
                    KernelSpec::new::<$mr5, NR>("avx512f", $blk5, ukr::<$t, $mr5, $nv5>)
                }
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx2 => {
                    use super::{
                        avx2::{ukr, Avx2},
                        simd::Simd,
                    };
                    const NR: usize = $nv2 * <Avx2 as Simd<$t>>::LANES;
                    KernelSpec::new::<$mr2, NR>("avx2+fma", $blk2, ukr::<$t, $mr2, $nv2>)
                }
                _ => KernelSpec::new::<$mrs, $nrs>("scalar", $blks, scalar::ukr::<$t, $mrs, $nrs>),
            }
        }
    };
}

// Tiles: (mr, vectors per row); blocks: (mc, kc, nc). A 6 x 4-vector tile keeps 24 of the 32
// AVX-512 registers as accumulators and needs only 10 loads per 24 FMAs; measured best of 8x3,
// 14x2, 12x2, 6x4 and 4x6 on Zen 5. AVX2 has 16 registers: 6 x 2 (12 accumulators).
// kc * nc * size = 512 KiB for B in L2; kc * mr * size (6-12 KiB) for the A micro-panel in L1;
// mc * kc * size = 8 MiB for the A block in L3 (A is read from it once per B block only).
float_kernels!(f64_for, f64,
    avx512: (6, 4, (4092, 256, 256)),
    avx2: (6, 2, (4092, 256, 256)),
    portable: (4, 8, (256, 256, 1024)));
float_kernels!(f32_for, f32,
    avx512: (6, 4, (4092, 512, 256)),
    avx2: (6, 2, (4092, 512, 256)),
    portable: (4, 8, (256, 512, 1024)));

#[cfg(test)]
mod tests {
    //! Every kernel the CPU can run, not only the one dispatch picks, against a naive product.

    use super::{available_levels, f32_for, f64_for};
    use crate::gemm::driver;
    use crate::gemm::kernel::KernelSpec;
    use crate::gemm::matrix::{Output, Problem, Strided};
    use crate::gemm::GemmElement;
    use crate::Serial;

    fn check<T: GemmElement + Into<f64>>(spec: &KernelSpec<T>, from: fn(f64) -> T, eps: f64) {
        // Shapes straddle the tile and block sizes of every ISA; A is read transposed.
        for (m, n, k) in [
            (1, 1, 1),
            (7, 9, 5),
            (13, 70, 33),
            (31, 130, 600),
            (70, 300, 17),
        ] {
            let a: Vec<T> = (0..m * k)
                .map(|i| from(((i * 7) % 11) as f64 - 5.0))
                .collect();
            let b: Vec<T> = (0..k * n)
                .map(|i| from(((i * 5) % 13) as f64 * 0.5 - 3.0))
                .collect();
            let mut c = vec![from(f64::NAN); m * n];
            let p = Problem {
                m,
                n,
                k,
                a: Strided {
                    ptr: a.as_ptr(),
                    rs: 1,
                    cs: m as isize,
                },
                b: Strided {
                    ptr: b.as_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                c: Output::new(&mut c, n),
            };
            driver::run(spec, p, &Serial).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| a[p * m + i].into() * b[p * n + j].into())
                        .sum();
                    let got: f64 = c[i * n + j].into();
                    assert!(
                        (got - want).abs() <= eps * (1.0 + want.abs()),
                        "{} {m}x{n}x{k} ({i},{j}): {got} vs {want}",
                        spec.isa
                    );
                }
            }
        }
    }

    #[test]
    fn every_available_isa_matches_reference() {
        for level in available_levels() {
            check(&f64_for(level), |x| x, 1e-12);
            check(&f32_for(level), |x| x as f32, 1e-4);
        }
    }
}
