//! cosine_similarity gives the same bits at every SIMD dispatch level (own
//! test binary: the level is process-wide). The tile shape differs per
//! level; the order of operations of each product must not.

mod common;
use common::*;
use raptors_kernels::*;

#[test]
fn every_simd_level_gives_the_same_cosines() {
    assert_same_at_every_simd_level(|| {
        let mut r = Vec::new();
        for dt in [DType::Float32, DType::Float64] {
            for (rows, d) in [(9usize, 1usize), (13, 17), (37, 257), (6, 1500)] {
                let m = Case::new(dt, &values(rows * d, 61, false), &[rows, d], Layout::C);
                for nq in [1usize, 2, 5, 9, 33] {
                    let q = Case::new(dt, &values(nq * d, 62, false), &[nq, d], Layout::C);
                    let ops = [m.op(), q.op()];
                    r.push(run(Op::CosineSimilarity, &ops, &Params::default(), &Serial).unwrap());
                }
            }
        }
        r
    });
}
