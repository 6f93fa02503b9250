//! The SIMD dispatch levels all give the same answers (own test binary:
//! the level is process-wide).

mod common;
use common::*;
use raptors_kernels::*;

#[test]
fn every_simd_level_gives_the_same_answers() {
    // The loops use the same accumulator layout at every level, so even
    // float results are bit-identical.
    assert_same_at_every_simd_level(|| {
        let mut r = Vec::new();
        for dt in DTYPES {
            for n in [1usize, 63, 1000, 4097] {
                let c = Case::new(dt, &values(n, 8, !dt.is_float()), &[n], Layout::C);
                for op in [
                    Op::Sum,
                    Op::Min,
                    Op::Max,
                    Op::Argmin,
                    Op::Argmax,
                    Op::Norm,
                    Op::Mean,
                ] {
                    r.push(run(op, &[c.op()], &Params::default(), &Serial).unwrap());
                }
                r.push(run(Op::Dot, &[c.op(), c.op()], &Params::default(), &Serial).unwrap());
                r.push(run(Op::Multiply, &[c.op(), c.op()], &Params::default(), &Serial).unwrap());
                r.push(
                    run(
                        Op::Clip,
                        &[c.op(), Operand::Int(-3), Operand::Int(5)],
                        &Params::default(),
                        &Serial,
                    )
                    .unwrap(),
                );
            }
        }
        r
    });
}
