//! Cosine-similarity scoring of a tall-skinny matrix (default 20000 x 256,
//! rows L2-normalised, C-contiguous) against 1..64 queries, one thread
//! (`Serial`): median ms per call over 31 calls, per-query ms, and the
//! packed GEMM's time for the same product (what batches above the
//! streaming cutoff run) as a ratio.
//!
//! `cargo run --release -p raptors-kernels --example cosine_bench [rows] [d] [nq...]`
//! (`COSINE_BENCH_SIMD=avx2|baseline` lowers the dispatch level;
//! `COSINE_BENCH_NO_GEMM=1` skips the GEMM column).

use raptors_kernels::gemm::{gemm, GemmElement};
use raptors_kernels::*;
use std::hint::black_box;
use std::time::Instant;

const CALLS: usize = 31;

/// Median seconds per call of `f` over `CALLS` calls, after two warm-ups.
fn median(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut s: Vec<f64> = (0..CALLS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    s.sort_by(|a, b| a.total_cmp(b));
    s[CALLS / 2]
}

/// Deterministic values in [-1, 1), each run of `d` scaled to unit norm.
fn unit_rows(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f64> = (0..n * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    for r in v.chunks_mut(d.max(1)) {
        let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn run_dtype<T: Float + GemmElement>(
    rows: usize,
    d: usize,
    nqs: &[usize],
    conv: fn(&[f64], &[usize]) -> Array,
) {
    let m = conv(&unit_rows(rows, d, 1), &[rows, d]);
    let vm = Operand::Array(m.view());
    println!("\n{} {rows} x {d}", m.dtype().name());
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>10}",
        "nq", "cosine ms", "per q ms", "gemm ms", "cos/gemm"
    );
    let skip_gemm = std::env::var_os("COSINE_BENCH_NO_GEMM").is_some();
    for &nq in nqs {
        let shape: Vec<usize> = if nq == 1 { vec![d] } else { vec![nq, d] };
        let q = conv(&unit_rows(nq, d, 7 + nq as u64), &shape);
        let vq = Operand::Array(q.view());
        let t = median(|| {
            black_box(run(Op::CosineSimilarity, &[vm, vq], &Params::default(), &Serial).unwrap());
        });
        let (mp, qp) = (
            T::buffer_slice(&m.data).unwrap(),
            T::buffer_slice(&q.data).unwrap(),
        );
        let mut out = vec![T::ZERO; rows * nq];
        let g = if skip_gemm {
            f64::NAN
        } else {
            median(|| {
                // SAFETY: m is rows x d and q is nq x d, both C-contiguous;
                // q^T is addressed by swapping its strides; out is rows x nq.
                unsafe {
                    gemm(
                        rows,
                        nq,
                        d,
                        mp.as_ptr(),
                        d as isize,
                        1,
                        qp.as_ptr(),
                        1,
                        d as isize,
                        &mut out,
                        &Serial,
                    )
                    .unwrap()
                };
                black_box(&out);
            })
        };
        println!(
            "{nq:>4} {:>10.3} {:>10.3} {:>10.3} {:>10.2}",
            t * 1e3,
            t * 1e3 / nq as f64,
            g * 1e3,
            t / g
        );
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("rows and d are integers"))
        .collect();
    let rows = args.first().copied().unwrap_or(20_000);
    let d = args.get(1).copied().unwrap_or(256);
    let nqs = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        vec![1, 2, 3, 4, 5, 6, 8, 12, 16, 17, 24, 32, 40, 48, 64]
    };
    if let Ok(level) = std::env::var("COSINE_BENCH_SIMD") {
        let want = match level.as_str() {
            "avx2" => SimdLevel::Avx2,
            "baseline" => SimdLevel::Baseline,
            _ => SimdLevel::Avx512,
        };
        force_simd_level(want);
    }
    println!("simd level: {:?}", simd_level());
    run_dtype::<f32>(rows, d, &nqs, |v, s| {
        Array::from_vec(v.iter().map(|&x| x as f32).collect(), s).unwrap()
    });
    run_dtype::<f64>(rows, d, &nqs, |v, s| {
        Array::from_vec(v.to_vec(), s).unwrap()
    });
}
