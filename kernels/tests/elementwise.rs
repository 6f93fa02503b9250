//! Broadcasting ufuncs, scale and clip: values, result dtypes (the NumPy 2 /
//! NEP 50 promotion table), shapes and errors.

mod common;
use common::*;
use raptors_kernels::*;

fn promo(a: DType, b: DType) -> DType {
    use DType::*;
    // NumPy 2: np.result_type for every pair of the four dtypes.
    match (a, b) {
        (Int32, Int32) => Int32,
        (Int32, Int64) | (Int64, Int32) | (Int64, Int64) => Int64,
        (Float32, Float32) => Float32,
        (Float32, Float64) | (Float64, Float32) | (Float64, Float64) => Float64,
        _ => Float64,
    }
}

#[test]
fn promotion_table() {
    for a in DTYPES {
        for b in DTYPES {
            assert_eq!(promote_types(a, b), promo(a, b), "{a:?} {b:?}");
        }
    }
}

fn apply(op: Op, x: f64, y: f64, dt: DType) -> f64 {
    let r = match op {
        Op::Add => x + y,
        Op::Subtract => x - y,
        Op::Multiply | Op::Scale => x * y,
        Op::Divide => x / y,
        _ => unreachable!(),
    };
    match dt {
        DType::Float32 => r as f32 as f64,
        _ => r,
    }
}

/// Broadcast reference: values of a (shape sa) op b (shape sb).
fn reference(
    op: Op,
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    dt: DType,
) -> (Vec<usize>, Vec<f64>) {
    let nd = sa.len().max(sb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; nd - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(sa), pad(sb));
    let out: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let (r, c) = match out.as_slice() {
        [] => (1, 1),
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => unreachable!(),
    };
    let idx = |p: &[usize], i: usize, j: usize| -> usize {
        match p {
            [] => 0,
            [n] => {
                if *n == 1 {
                    0
                } else {
                    j
                }
            }
            [pr, pc] => (if *pr == 1 { 0 } else { i }) * pc + if *pc == 1 { 0 } else { j },
            _ => unreachable!(),
        }
    };
    let mut vals = Vec::new();
    for i in 0..r {
        for j in 0..c {
            vals.push(apply(op, a[idx(&pa, i, j)], b[idx(&pb, i, j)], dt));
        }
    }
    (out, vals)
}

#[test]
fn binary_ops_all_dtype_pairs_shapes_layouts() {
    let shape_pairs: [(&[usize], &[usize]); 10] = [
        (&[7], &[7]),
        (&[3, 4], &[4]),
        (&[3, 1], &[1, 4]),
        (&[3, 4], &[3, 1]),
        (&[], &[5]),
        (&[2, 3], &[]),
        (&[1000], &[1000]),
        (&[65, 33], &[65, 33]),
        (&[0], &[0]),
        (&[4, 0], &[0]),
    ];
    for op in [Op::Add, Op::Subtract, Op::Multiply, Op::Divide, Op::Scale] {
        for da in DTYPES {
            for db in DTYPES {
                for (sa, sb) in shape_pairs {
                    for (la, lb) in [
                        (Layout::C, Layout::C),
                        (Layout::F, Layout::Strided),
                        (Layout::Strided, Layout::F),
                    ] {
                        let na: usize = sa.iter().product();
                        let nb: usize = sb.iter().product();
                        let mut va = values(na, 1 + na as u64, !da.is_float());
                        let vb: Vec<f64> = values(nb, 2 + nb as u64, !db.is_float())
                            .into_iter()
                            .map(|v| if v == 0.0 { 3.0 } else { v })
                            .collect();
                        if op == Op::Divide && na > 0 && !da.is_float() {
                            va[0] = 0.0;
                        }
                        let (ca, cb) = (Case::new(da, &va, sa, la), Case::new(db, &vb, sb, lb));
                        let mut want_dt = promo(da, db);
                        if op == Op::Divide && !want_dt.is_float() {
                            want_dt = DType::Float64;
                        }
                        let ctx = format!("{} {da:?}{sa:?} {db:?}{sb:?} {la:?}/{lb:?}", op.name());
                        let got =
                            run(op, &[ca.op(), cb.op()], &Params::default(), &Serial).unwrap();
                        let (dt, shape, vals) = flat(&got);
                        assert_eq!(dt, want_dt, "{ctx}");
                        let (ws, wv) = reference(op, &ca.vals, sa, &cb.vals, sb, want_dt);
                        assert_eq!(shape, ws, "{ctx}");
                        assert_all_close(
                            &vals,
                            &wv,
                            if want_dt == DType::Float32 {
                                1.2e-7
                            } else {
                                1e-15
                            },
                            &ctx,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn nep50_weak_python_scalars() {
    let cases = [
        (DType::Int32, DType::Int32, DType::Float64),
        (DType::Int64, DType::Int64, DType::Float64),
        (DType::Float32, DType::Float32, DType::Float32),
        (DType::Float64, DType::Float64, DType::Float64),
    ];
    for (dt, with_int, with_float) in cases {
        let c = Case::new(dt, &[1.0, 2.0, 3.0], &[3], Layout::C);
        for (op, want_i) in [
            (Op::Add, 4.0),
            (Op::Subtract, -2.0),
            (Op::Multiply, 3.0),
            (Op::Scale, 3.0),
        ] {
            let (d, _, v) =
                flat(&run(op, &[c.op(), Operand::Int(3)], &Params::default(), &Serial).unwrap());
            assert_eq!(d, with_int, "{} {dt:?}", op.name());
            assert_eq!(v[0], want_i);
            let (d, _, v) = flat(
                &run(
                    op,
                    &[c.op(), Operand::Float(2.5)],
                    &Params::default(),
                    &Serial,
                )
                .unwrap(),
            );
            assert_eq!(d, with_float, "{} {dt:?} float", op.name());
            assert_eq!(v[0], apply(op, 1.0, 2.5, d));
        }
        // Python scalar first.
        let (d, _, v) = flat(
            &run(
                Op::Subtract,
                &[Operand::Int(10), c.op()],
                &Params::default(),
                &Serial,
            )
            .unwrap(),
        );
        assert_eq!((d, v), (with_int, vec![9.0, 8.0, 7.0]));
    }
    let c = Case::new(DType::Int32, &[1.0], &[1], Layout::C);
    assert_eq!(
        run(
            Op::Add,
            &[c.op(), Operand::Int(1 << 32)],
            &Params::default(),
            &Serial
        ),
        Err(KernelError::Overflow(
            "Python integer 4294967296 out of bounds for int32".into()
        ))
    );
    assert_eq!(
        check(
            Op::Multiply,
            &[c.op(), Operand::Int(-(1 << 31) - 1)],
            &Params::default()
        ),
        Err(KernelError::Overflow(
            "Python integer -2147483649 out of bounds for int32".into()
        ))
    );
    // Two Python scalars: int64 / float64 scalars, as NumPy returns.
    assert_eq!(
        run(
            Op::Add,
            &[Operand::Int(2), Operand::Int(3)],
            &Params::default(),
            &Serial
        )
        .unwrap(),
        Value::Scalar(Scalar::I64(5))
    );
    assert_eq!(
        run(
            Op::Add,
            &[Operand::Int(2), Operand::Float(3.0)],
            &Params::default(),
            &Serial
        )
        .unwrap(),
        Value::Scalar(Scalar::F64(5.0))
    );
    assert_eq!(
        run(
            Op::Divide,
            &[Operand::Int(1), Operand::Int(4)],
            &Params::default(),
            &Serial
        )
        .unwrap(),
        Value::Scalar(Scalar::F64(0.25))
    );
    // float32 + huge Python float overflows to inf in float32, as NumPy.
    let f = Case::new(DType::Float32, &[1.0], &[1], Layout::C);
    let (d, _, v) = flat(
        &run(
            Op::Add,
            &[f.op(), Operand::Float(1e300)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!((d, v[0]), (DType::Float32, f64::INFINITY));
}

#[test]
fn integer_arithmetic_wraps() {
    let a = Array::from_vec(vec![i32::MAX, i32::MIN], &[2]).unwrap();
    let got = run(
        Op::Add,
        &[Operand::Array(a.view()), Operand::Int(1)],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    assert_eq!(
        got,
        Value::Array(Array::from_vec(vec![i32::MIN, i32::MIN + 1], &[2]).unwrap())
    );
    let got = run(
        Op::Multiply,
        &[Operand::Array(a.view()), Operand::Int(2)],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    assert_eq!(
        got,
        Value::Array(Array::from_vec(vec![-2, 0], &[2]).unwrap())
    );
}

#[test]
fn broadcast_errors() {
    let a = Case::new(DType::Float64, &[0.0; 3], &[3], Layout::C);
    let b = Case::new(DType::Float64, &[0.0; 4], &[4], Layout::C);
    let e = Err(KernelError::Value(
        "operands could not be broadcast together with shapes (3,) (4,) ".into(),
    ));
    assert_eq!(
        run(Op::Add, &[a.op(), b.op()], &Params::default(), &Serial),
        e
    );
    assert_eq!(
        check(Op::Add, &[a.op(), b.op()], &Params::default())
            .map(|_| Value::Scalar(Scalar::I32(0))),
        e
    );
    assert!(matches!(
        check(Op::Add, &[a.op()], &Params::default()),
        Err(KernelError::Type(_))
    ));
    assert!(matches!(
        check(
            Op::Add,
            &[a.op(), b.op()],
            &Params {
                axis: Some(0),
                k: None
            }
        ),
        Err(KernelError::Type(_))
    ));
}

fn clip_ref(x: f64, lo: f64, hi: f64) -> f64 {
    let x = if x < lo || lo.is_nan() { lo } else { x };
    if x > hi || hi.is_nan() {
        hi
    } else {
        x
    }
}

#[test]
fn clip_matches_numpy_rules() {
    for dt in DTYPES {
        for n in [0usize, 1, 65, 1000] {
            for layout in [Layout::C, Layout::Strided] {
                let vals = values(n, 5, !dt.is_float());
                let c = Case::new(dt, &vals, &[n], layout);
                let (lo, hi) = if dt.is_float() {
                    (-0.5, 0.25)
                } else {
                    (-30.0, 40.0)
                };
                let ops = if dt.is_float() {
                    [Operand::Float(lo), Operand::Float(hi)]
                } else {
                    [Operand::Int(lo as i64), Operand::Int(hi as i64)]
                };
                let (d, s, v) = flat(
                    &run(
                        Op::Clip,
                        &[c.op(), ops[0], ops[1]],
                        &Params::default(),
                        &Serial,
                    )
                    .unwrap(),
                );
                assert_eq!((d, s), (dt, vec![n]));
                let want: Vec<f64> = c.vals.iter().map(|&x| clip_ref(x, lo, hi)).collect();
                assert_eq!(v, want, "{dt:?} {n} {layout:?}");
            }
        }
    }
    // Array bounds broadcast; lo > hi gives hi; NaN propagates.
    let a = Case::new(
        DType::Float64,
        &[f64::NAN, 1.0, 5.0, -3.0],
        &[2, 2],
        Layout::C,
    );
    let lo = Case::new(DType::Float64, &[0.0, f64::NAN], &[2], Layout::C);
    let (_, s, v) = flat(
        &run(
            Op::Clip,
            &[a.op(), lo.op(), Operand::Float(2.0)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!(s, vec![2, 2]);
    assert!(v[0].is_nan() && v[1].is_nan() && v[3].is_nan());
    assert_eq!(v[2], 2.0);
    let f = Case::new(DType::Float32, &[0.0, 1.0, 2.0], &[3], Layout::C);
    let (d, _, v) = flat(
        &run(
            Op::Clip,
            &[f.op(), Operand::Int(2), Operand::Int(1)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!((d, v), (DType::Float32, vec![1.0; 3]));
    // Out-of-range Python int bounds saturate for int32 (no OverflowError in np.clip).
    let i = Case::new(DType::Int32, &[0.0, 1.0, 2.0], &[3], Layout::C);
    let (d, _, v) = flat(
        &run(
            Op::Clip,
            &[i.op(), Operand::Int(-(1 << 40)), Operand::Int(1 << 40)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!((d, v), (DType::Int32, vec![0.0, 1.0, 2.0]));
    // A bound beyond the range on the side where it would clip is NumPy's OverflowError.
    for (lo, hi) in [(1 << 40, 1 << 41), (0, -(1 << 40))] {
        let err = run(
            Op::Clip,
            &[i.op(), Operand::Int(lo), Operand::Int(hi)],
            &Params::default(),
            &Serial,
        );
        assert!(
            matches!(err, Err(KernelError::Overflow(_))),
            "clip({lo}, {hi})"
        );
    }
    let (d, _, v) = flat(
        &run(
            Op::Clip,
            &[i.op(), Operand::Int(0), Operand::Float(1.5)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!((d, v), (DType::Float64, vec![0.0, 1.0, 1.5]));
    // Signed zeros: equal values keep x.
    let z = Case::new(DType::Float64, &[-0.0], &[1], Layout::C);
    let (_, _, v) = flat(
        &run(
            Op::Clip,
            &[z.op(), Operand::Float(0.0), Operand::Float(1.0)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert!(v[0] == 0.0 && v[0].is_sign_negative());
}

#[test]
fn mixed_dtypes_convert_in_blocks_across_rows() {
    // Large enough for many chunks, whose boundaries fall mid-row.
    let shape = [1000usize, 37];
    let n = shape[0] * shape[1];
    for (da, db) in [
        (DType::Int32, DType::Float32),
        (DType::Int64, DType::Int32),
        (DType::Float32, DType::Float64),
    ] {
        let a = Case::new(da, &values(n, 41, true), &shape, Layout::C);
        let b = Case::new(
            db,
            &values(n, 42, true)
                .iter()
                .map(|v| v + 0.5)
                .collect::<Vec<_>>(),
            &shape,
            Layout::C,
        );
        let b_row = Case::new(db, &values(37, 43, true), &[37], Layout::C);
        for (op, other) in [(Op::Divide, &b), (Op::Add, &b), (Op::Multiply, &b_row)] {
            let got = run(op, &[a.op(), other.op()], &Params::default(), &Serial).unwrap();
            let (dt, s, v) = flat(&got);
            let mut want_dt = promote_types(da, db);
            if op == Op::Divide && !want_dt.is_float() {
                want_dt = DType::Float64;
            }
            assert_eq!((dt, s.clone()), (want_dt, shape.to_vec()));
            let (_, wv) = reference(op, &a.vals, &shape, &other.vals, &other.shape, want_dt);
            assert_all_close(&v, &wv, 1e-15, &format!("{} {da:?} {db:?}", op.name()));
        }
    }
}

/// Two operands, each with its logical values and shape.
type Side<'a> = (
    Operand<'a>,
    &'a [f64],
    &'a [usize],
    Operand<'a>,
    &'a [f64],
    &'a [usize],
);

/// The fast path (operands of the result dtype, each contiguous with the
/// output's size or a scalar) and its neighbours on the general path, over
/// all four dtypes and sizes from empty to several chunks, against the
/// broadcast reference; outputs are written without zero fill, so every
/// element is compared.
#[test]
fn contiguous_same_dtype_fast_path_matches_reference() {
    for op in [Op::Add, Op::Subtract, Op::Multiply, Op::Divide, Op::Scale] {
        for dt in DTYPES {
            for n in [0usize, 1, 7, 31, 1000, 65_537, 200_003] {
                let a = Case::new(
                    dt,
                    &values(n, 11 + n as u64, !dt.is_float()),
                    &[n],
                    Layout::C,
                );
                let vb: Vec<f64> = values(n, 12 + n as u64, !dt.is_float())
                    .into_iter()
                    .map(|v| if v == 0.0 { 3.0 } else { v })
                    .collect();
                let b = Case::new(dt, &vb, &[n], Layout::C);
                let one = Case::new(dt, &[5.0], &[1], Layout::C);
                let strided = Case::new(dt, &vb, &[n], Layout::Strided);
                let weak = if dt.is_float() {
                    Operand::Float(2.5)
                } else {
                    Operand::Int(3)
                };
                let weak_val = if dt.is_float() { 2.5 } else { 3.0 };
                let cases: [Side<'_>; 5] = [
                    (a.op(), &a.vals, &[n], b.op(), &b.vals, &[n]),
                    (a.op(), &a.vals, &[n], weak, &[weak_val], &[]),
                    (weak, &[weak_val], &[], b.op(), &b.vals, &[n]),
                    (a.op(), &a.vals, &[n], one.op(), &one.vals, &[1]),
                    (a.op(), &a.vals, &[n], strided.op(), &strided.vals, &[n]),
                ];
                for (i, (x, xv, xs, y, yv, ys)) in cases.into_iter().enumerate() {
                    let mut want_dt = dt;
                    if op == Op::Divide && !dt.is_float() {
                        want_dt = DType::Float64;
                    }
                    let ctx = format!("{} {dt:?} n={n} case {i}", op.name());
                    let got = run(op, &[x, y], &Params::default(), &Serial).unwrap();
                    let (got_dt, shape, vals) = flat(&got);
                    assert_eq!(got_dt, want_dt, "{ctx}");
                    if n == 0 {
                        // (`reference` takes the larger extent, not NumPy's 0.)
                        assert_eq!((shape, vals), (vec![0], vec![]), "{ctx}");
                        continue;
                    }
                    let (ws, wv) = reference(op, xv, xs, yv, ys, want_dt);
                    assert_eq!(shape, ws, "{ctx}");
                    // One correctly rounded operation: exact in every dtype.
                    assert_eq!(vals, wv, "{ctx}");
                }
            }
        }
    }
}
