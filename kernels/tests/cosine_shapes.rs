//! cosine_similarity's row-streaming tiles over many shapes: every query
//! count the tiles split into blocks, vector lengths around the lane width
//! and block boundaries, row counts around the row-group size, zero rows and
//! queries, non-contiguous queries; against a plain f64 reference.

mod common;
use common::*;
use raptors_kernels::*;

/// Plain f64 cosine of every row with every query (0 for a zero norm).
fn reference(m: &[f64], rows: usize, d: usize, q: &[f64], nq: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * nq);
    for r in 0..rows {
        let x = &m[r * d..(r + 1) * d];
        let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        for j in 0..nq {
            let y = &q[j * d..(j + 1) * d];
            let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
            out.push(if nx == 0.0 || ny == 0.0 {
                0.0
            } else {
                dot / (nx * ny)
            });
        }
    }
    out
}

fn cosine(m: &Case, q: &Case, exec: &dyn Exec) -> (DType, Vec<usize>, Vec<f64>) {
    flat(
        &run(
            Op::CosineSimilarity,
            &[m.op(), q.op()],
            &Params::default(),
            exec,
        )
        .unwrap(),
    )
}

#[test]
fn tiles_match_reference_over_shapes() {
    for dt in [DType::Float32, DType::Float64] {
        let tol = if dt == DType::Float32 { 1e-5 } else { 1e-12 };
        for d in [1usize, 3, 15, 16, 17, 255, 256, 257, 1000] {
            for rows in [0usize, 1, 5, 33] {
                let mut mv = values(rows * d, 7 + d as u64, false);
                if rows > 2 {
                    mv[2 * d..3 * d].iter_mut().for_each(|v| *v = 0.0);
                }
                let m = Case::new(dt, &mv, &[rows, d], Layout::C);
                for nq in 1..=40usize {
                    let mut qv = values(nq * d, 100 + nq as u64, false);
                    if nq > 1 {
                        qv[d..2 * d].iter_mut().for_each(|v| *v = 0.0);
                    }
                    // Alternate contiguous and strided (non-contiguous) queries.
                    let layout = if nq % 2 == 0 {
                        Layout::Strided
                    } else {
                        Layout::C
                    };
                    let q = Case::new(dt, &qv, &[nq, d], layout);
                    let (got_dt, shape, got) = cosine(&m, &q, &Serial);
                    assert_eq!((got_dt, shape), (dt, vec![rows, nq]));
                    let want = reference(&m.vals, rows, d, &q.vals, nq);
                    let ctx = format!("{dt:?} d={d} rows={rows} nq={nq}");
                    assert_all_close(&got, &want, tol, &ctx);
                    for r in 0..rows {
                        for j in 0..nq {
                            if (rows > 2 && r == 2) || (nq > 1 && j == 1) {
                                assert_eq!(got[r * nq + j], 0.0, "{ctx}: zero norm");
                            }
                        }
                    }
                    if nq == 1 {
                        // The 1-D query path gives the same bits as a batch of one.
                        let q1 = Case::new(dt, &qv, &[d], layout);
                        let (_, s1, one) = cosine(&m, &q1, &Serial);
                        assert_eq!((s1, &one), (vec![rows], &got), "{ctx}: 1-D");
                    }
                }
            }
        }
    }
}

/// Exec that may split across the pool it runs on.
struct Pool2;
impl Exec for Pool2 {
    fn max_threads(&self) -> usize {
        2
    }
}

#[test]
fn parallel_tiles_equal_serial_bits() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (rows, d) = (20_003usize, 100usize);
    for dt in [DType::Float32, DType::Float64] {
        let m = Case::new(dt, &values(rows * d, 51, false), &[rows, d], Layout::C);
        for nq in [1usize, 2, 3, 7, 16, 32] {
            let q = Case::new(dt, &values(nq * d, 52, false), &[nq, d], Layout::C);
            let serial = cosine(&m, &q, &Serial);
            let par = pool.install(|| cosine(&m, &q, &Pool2));
            assert_eq!(serial, par, "{dt:?} nq={nq}");
        }
    }
}
