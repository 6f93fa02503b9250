//! The GEMM takes its microkernel from the one CPU detector: the best
//! level's, and forcing a lower level for the loops leaves it (and its
//! products) as they are, so batched products stay bit-identical across
//! forced levels (own test binary: the level is process-wide).

use raptors_kernels::gemm::{gemm, kernel_name};
use raptors_kernels::{force_simd_level, simd_level, Serial, SimdLevel};

fn product(m: usize, n: usize, k: usize) -> Vec<f64> {
    let a: Vec<f64> = (0..m * k)
        .map(|i| ((i * 7) % 11) as f64 * 0.3 - 1.7)
        .collect();
    let b: Vec<f64> = (0..k * n)
        .map(|i| ((i * 5) % 13) as f64 * 0.7 - 3.1)
        .collect();
    let mut c = vec![f64::NAN; m * n];
    // SAFETY: a is m x k and b is k x n, row-major, both alive for the call.
    unsafe {
        gemm(
            m,
            n,
            k,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            &mut c,
            &Serial,
        )
    }
    .unwrap();
    c
}

#[test]
fn the_gemm_uses_the_best_levels_microkernel_whatever_level_is_forced() {
    let best = simd_level();
    let name = match best {
        SimdLevel::Avx512 => "avx512f",
        SimdLevel::Avx2 => "avx2+fma",
        SimdLevel::Baseline => "scalar",
    };
    let (m, n, k) = (70, 90, 333);
    let reference = product(m, n, k);
    for level in [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Baseline] {
        force_simd_level(level);
        assert_eq!((kernel_name::<f64>(), kernel_name::<f32>()), (name, name));
        assert_eq!(product(m, n, k), reference, "{level:?}");
    }
    assert_eq!(kernel_name::<i64>(), "scalar");
    force_simd_level(best);
}
