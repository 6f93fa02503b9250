//! Kernel benchmarks: ns/call and GB/s per op x dtype x size, medians of
//! repeats, serial and on a 2-thread rayon pool.
//!
//! `cargo run --release -p raptors-kernels --example bench [filter]`
//! (an optional substring filter on the op name).

use raptors_kernels::*;
use std::hint::black_box;
use std::time::Instant;

/// Exec for a kernel running on a pool thread that may use `threads`.
struct Pool(usize);
impl Exec for Pool {
    fn max_threads(&self) -> usize {
        self.0
    }
}

fn array(dt: DType, n: usize, shape: &[usize]) -> Array {
    let vals: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
        .collect();
    match dt {
        DType::Int32 => {
            Array::from_vec(vals.iter().map(|&v| (v * 100.0) as i32).collect(), shape).unwrap()
        }
        DType::Int64 => {
            Array::from_vec(vals.iter().map(|&v| (v * 100.0) as i64).collect(), shape).unwrap()
        }
        DType::Float32 => Array::from_vec(vals.iter().map(|&v| v as f32).collect(), shape).unwrap(),
        DType::Float64 => Array::from_vec(vals, shape).unwrap(),
    }
}

/// Median ns per call over 7 repeats of a batch sized to ~3 ms.
fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64().max(1e-8);
    let iters = ((3e-3 / one) as usize).clamp(1, 1_000_000);
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / iters as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[3]
}

struct Row {
    op: &'static str,
    dt: DType,
    size: String,
    bytes: usize,
}

fn bench(pool: &rayon::ThreadPool, row: Row, call: &(dyn Fn(&dyn Exec) -> Value + Sync)) {
    let serial = time(&mut || {
        black_box(call(&Serial));
    });
    let par = pool.install(|| {
        time(&mut || {
            black_box(call(&Pool(2)));
        })
    });
    println!(
        "{:<18} {:<8} {:>12} {:>12.0} {:>9.2} {:>12.0} {:>9.2}",
        row.op,
        row.dt.name(),
        row.size,
        serial,
        row.bytes as f64 / serial,
        par,
        row.bytes as f64 / par
    );
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    println!("simd level: {:?}", simd_level());
    println!(
        "{:<18} {:<8} {:>12} {:>12} {:>9} {:>12} {:>9}",
        "op", "dtype", "size", "ns/call", "GB/s", "ns pool2", "GB/s"
    );
    let dtypes = [DType::Int32, DType::Int64, DType::Float32, DType::Float64];
    let p = Params::default();
    for op in Op::ALL {
        if !op.name().contains(filter.as_str()) {
            continue;
        }
        for dt in dtypes {
            for n in [100usize, 1000, 10_000, 1_000_000, 10_000_000] {
                let target = matches!(op, Op::Sum | Op::Dot) && dt == DType::Float64;
                if (n == 10_000_000 || n == 1000) && !target {
                    continue;
                }
                let item = dt.itemsize();
                let a = array(dt, n, &[n]);
                let b = array(dt, n, &[n]);
                let (va, vb) = (Operand::Array(a.view()), Operand::Array(b.view()));
                let row = |bytes, size: String| Row {
                    op: op.name(),
                    dt,
                    size,
                    bytes,
                };
                match op {
                    Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm => {
                        bench(&pool, row(n * item, n.to_string()), &|e| {
                            run(op, &[va], &p, e).unwrap()
                        })
                    }
                    Op::Add | Op::Subtract | Op::Multiply | Op::Divide => {
                        bench(&pool, row(3 * n * item, n.to_string()), &|e| {
                            run(op, &[va, vb], &p, e).unwrap()
                        })
                    }
                    Op::Scale => bench(&pool, row(2 * n * item, n.to_string()), &|e| {
                        run(op, &[va, Operand::Int(3)], &p, e).unwrap()
                    }),
                    Op::Clip => bench(&pool, row(2 * n * item, n.to_string()), &|e| {
                        run(op, &[va, Operand::Int(-1), Operand::Int(1)], &p, e).unwrap()
                    }),
                    Op::Dot => bench(&pool, row(2 * n * item, n.to_string()), &|e| {
                        run(op, &[va, vb], &p, e).unwrap()
                    }),
                    Op::Topk => bench(&pool, row(n * item, format!("{n} k=10")), &|e| {
                        run(
                            op,
                            &[va],
                            &Params {
                                axis: None,
                                k: Some(10),
                            },
                            e,
                        )
                        .unwrap()
                    }),
                    Op::Matmul => {
                        let s = (n as f64).sqrt() as usize;
                        if s > 300 {
                            continue;
                        }
                        let m = array(dt, s * s, &[s, s]);
                        let vm = Operand::Array(m.view());
                        // bytes column reports GFLOP/s*1e9 / 1e9 here: 2 s^3 flops.
                        bench(&pool, row(2 * s * s * s, format!("{s}x{s} flop")), &|e| {
                            run(op, &[vm, vm], &p, e).unwrap()
                        })
                    }
                    Op::CosineTopk => {
                        // The demo service's call: 20000 x 256 against a batch.
                        if !dt.is_float() || n != 1_000_000 {
                            continue;
                        }
                        let (rows, d) = (20_000, 256);
                        let m = array(dt, rows * d, &[rows, d]);
                        let vm = Operand::Array(m.view());
                        let params = Params {
                            axis: None,
                            k: Some(10),
                        };
                        for nq in [1usize, 8] {
                            let q = array(dt, nq * d, &[nq, d]);
                            let vq = Operand::Array(q.view());
                            let size = format!("{rows}x{d} q={nq} k=10");
                            bench(&pool, row(rows * d * item, size), &|e| {
                                run(op, &[vm, vq], &params, e).unwrap()
                            });
                        }
                    }
                    Op::CosineSimilarity => {
                        let d = 256;
                        let rows = (n / d).max(1);
                        let m = array(dt, rows * d, &[rows, d]);
                        let q = array(dt, d, &[d]);
                        let (vm, vq) = (Operand::Array(m.view()), Operand::Array(q.view()));
                        bench(&pool, row(rows * d * item, format!("{rows}x{d}")), &|e| {
                            run(op, &[vm, vq], &p, e).unwrap()
                        });
                        if !dt.is_float() || n != 1_000_000 {
                            continue;
                        }
                        // Query batches against a 20000 x 256 matrix (the
                        // row-streaming kernel up to its cutoff, then GEMM).
                        let rows = 20_000;
                        let m = array(dt, rows * d, &[rows, d]);
                        let vm = Operand::Array(m.view());
                        for nq in [1usize, 4, 16, 32, 64, 128] {
                            let q = array(dt, nq * d, &[nq, d]);
                            let vq = Operand::Array(q.view());
                            let size = format!("{rows}x{d} q={nq}");
                            bench(&pool, row(rows * d * item, size), &|e| {
                                run(op, &[vm, vq], &p, e).unwrap()
                            });
                        }
                    }
                }
            }
        }
    }
}
