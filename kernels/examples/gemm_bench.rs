//! GEMM throughput: GFLOP/s (median of repeats) for f32/f64 square matrices, 1 and 2 threads.
//!
//! `cargo run --release -p raptors-kernels --example gemm_bench [n ...]`

use std::time::Instant;

use raptors_kernels::gemm::{gemm, isa, GemmElement};
use raptors_kernels::Exec;

/// Lets the GEMM split across up to `threads` threads of the pool it runs in.
struct Threads(usize);
impl Exec for Threads {
    fn max_threads(&self) -> usize {
        self.0
    }
}

fn fill<T: GemmElement>(len: usize, seed: u64, from_f64: fn(f64) -> T) -> Vec<T> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            from_f64((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
        })
        .collect()
}

/// Median seconds per n x n x n product over repeats of ~0.1 s each.
fn time<T: GemmElement>(n: usize, threads: usize, from_f64: fn(f64) -> T) -> f64 {
    let a = fill(n * n, 1, from_f64);
    let b = fill(n * n, 2, from_f64);
    let mut c = fill(n * n, 3, from_f64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    pool.install(|| {
        let exec = Threads(threads);
        let mut once = || {
            let (ni, nn) = (n as isize, n);
            // SAFETY: a and b are n x n row-major buffers; c is n * n.
            unsafe {
                gemm(
                    nn,
                    nn,
                    nn,
                    a.as_ptr(),
                    ni,
                    1,
                    b.as_ptr(),
                    ni,
                    1,
                    &mut c,
                    &exec,
                )
            }
            .expect("gemm");
        };
        once();
        let start = Instant::now();
        let mut iters = 0;
        while start.elapsed().as_secs_f64() < 0.05 {
            once();
            iters += 1;
        }
        let per = start.elapsed().as_secs_f64() / iters as f64;
        let inner = ((0.1 / per) as usize).max(1);
        let mut samples: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..inner {
                    once();
                }
                t.elapsed().as_secs_f64() / inner as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("size"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 256, 1024, 2048]
    } else {
        sizes
    };
    println!("isa: f32 {}, f64 {}", isa::<f32>(), isa::<f64>());
    println!(
        "{:>6} {:>5} {:>12} {:>12} {:>8}",
        "dtype", "n", "1t GFLOP/s", "2t GFLOP/s", "2t/1t"
    );
    for &n in &sizes {
        let flop = 2.0 * (n as f64).powi(3) / 1e9;
        let f32s = [
            time::<f32>(n, 1, |x| x as f32),
            time::<f32>(n, 2, |x| x as f32),
        ];
        let f64s = [time::<f64>(n, 1, |x| x), time::<f64>(n, 2, |x| x)];
        for (name, [t1, t2]) in [("f32", f32s), ("f64", f64s)] {
            println!(
                "{name:>6} {n:>5} {:>12.1} {:>12.1} {:>8.2}",
                flop / t1,
                flop / t2,
                t1 / t2
            );
        }
    }
}
