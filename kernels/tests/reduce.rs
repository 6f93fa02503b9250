//! Reductions against references computed here, for every dtype, layout
//! and axis, at sizes around the SIMD widths, block and chunk boundaries.

mod common;
use common::*;
use raptors_kernels::*;

const SIZES_1D: [usize; 14] = [
    1, 2, 7, 63, 64, 65, 127, 1023, 1024, 1025, 4099, 65537, 100_003, 1_000_000,
];
const SHAPES_2D: [[usize; 2]; 10] = [
    [1, 1],
    [3, 5],
    [5, 3],
    [64, 65],
    [1, 100],
    [100, 1],
    [17, 1031],
    [2, 3000],
    [3000, 2],
    [257, 129],
];

fn sum_dtype(dt: DType) -> DType {
    match dt {
        DType::Int32 | DType::Int64 => DType::Int64,
        d => d,
    }
}

fn float_out(dt: DType) -> DType {
    if dt.is_float() {
        dt
    } else {
        DType::Float64
    }
}

/// Compensated (Neumaier) sum: an accurate reference.
fn ksum(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in xs {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

/// Reference reduction of one lane: value, and the scale for float tolerance.
fn reference(op: Op, lane: &[f64]) -> (f64, f64) {
    let abs: f64 = lane.iter().map(|x| x.abs()).sum();
    let n = lane.len() as f64;
    let first_nan = lane.iter().position(|x| x.is_nan());
    match op {
        Op::Sum => (ksum(lane.iter().cloned()), abs),
        Op::Mean => (ksum(lane.iter().cloned()) / n, abs / n),
        Op::Norm => {
            let s = ksum(lane.iter().map(|x| x * x));
            (s.sqrt(), s.sqrt())
        }
        Op::Min => (
            if first_nan.is_some() {
                f64::NAN
            } else {
                lane.iter().cloned().fold(f64::INFINITY, f64::min)
            },
            0.0,
        ),
        Op::Max => (
            if first_nan.is_some() {
                f64::NAN
            } else {
                lane.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            },
            0.0,
        ),
        Op::Argmin | Op::Argmax => {
            if let Some(i) = first_nan {
                return (i as f64, 0.0);
            }
            let mut best = 0;
            for (i, &x) in lane.iter().enumerate() {
                if (op == Op::Argmin && x < lane[best]) || (op == Op::Argmax && x > lane[best]) {
                    best = i;
                }
            }
            (best as f64, 0.0)
        }
        _ => unreachable!(),
    }
}

fn expected_dtype(op: Op, dt: DType) -> DType {
    match op {
        Op::Sum => sum_dtype(dt),
        Op::Mean | Op::Norm => float_out(dt),
        Op::Argmin | Op::Argmax => DType::Int64,
        _ => dt,
    }
}

const REDUCTIONS: [Op; 7] = [
    Op::Sum,
    Op::Mean,
    Op::Min,
    Op::Max,
    Op::Argmin,
    Op::Argmax,
    Op::Norm,
];

fn check_against(op: Op, case: &Case, axis: Option<isize>) {
    let ctx = format!(
        "{} {:?} {:?} axis {:?}",
        op.name(),
        case.dtype,
        case.shape,
        axis
    );
    let got =
        run1(op, case.op(), Params { axis, k: None }).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let (dt, shape, vals) = flat(&got);
    assert_eq!(dt, expected_dtype(op, case.dtype), "{ctx}: dtype");
    let out_dt = expected_dtype(op, case.dtype);
    let lanes: Vec<Vec<f64>> = match (axis, case.shape.as_slice()) {
        (None, _) | (Some(_), [_]) => vec![case.vals.clone()],
        (Some(a), [r, c]) => {
            let a = if a < 0 { a + 2 } else { a } as usize;
            if a == 1 {
                (0..*r)
                    .map(|i| case.vals[i * c..(i + 1) * c].to_vec())
                    .collect()
            } else {
                (0..*c)
                    .map(|j| (0..*r).map(|i| case.vals[i * c + j]).collect())
                    .collect()
            }
        }
        _ => unreachable!(),
    };
    let want_shape: Vec<usize> = match (axis, case.shape.as_slice()) {
        (None, _) | (Some(_), [_]) => vec![],
        _ => vec![lanes.len()],
    };
    assert_eq!(shape, want_shape, "{ctx}: shape");
    for (i, lane) in lanes.iter().enumerate() {
        let (want, scale) = reference(op, lane);
        let g = vals[i];
        let eps = match out_dt {
            DType::Float32 => 6e-8,
            DType::Float64 => 1.2e-16,
            _ => 0.0,
        };
        let n = lane.len().max(2) as f64;
        let allowed = eps * (20.0 + 4.0 * n.log2()) * scale.max(f64::MIN_POSITIVE);
        let ok = if want.is_nan() {
            g.is_nan()
        } else {
            (g - want).abs() <= allowed
        };
        assert!(
            ok,
            "{ctx}: lane {i}: got {g}, want {want} (allowed {allowed})"
        );
    }
}

#[test]
fn reductions_1d_all_dtypes_and_sizes() {
    for dt in DTYPES {
        for &n in &SIZES_1D {
            let vals = values(n, n as u64, !dt.is_float());
            let layouts: &[Layout] = if n > 100_000 {
                &[Layout::C]
            } else {
                &[Layout::C, Layout::Strided]
            };
            for &layout in layouts {
                let case = Case::new(dt, &vals, &[n], layout);
                for op in REDUCTIONS {
                    check_against(op, &case, None);
                    check_against(op, &case, Some(0));
                }
            }
        }
    }
}

#[test]
fn reductions_2d_all_axes_and_layouts() {
    for dt in DTYPES {
        for shape in SHAPES_2D {
            let vals = values(shape[0] * shape[1], 7 + shape[0] as u64, !dt.is_float());
            for layout in LAYOUTS {
                let case = Case::new(dt, &vals, &shape, layout);
                for op in REDUCTIONS {
                    for axis in [None, Some(0), Some(1), Some(-1), Some(-2)] {
                        check_against(op, &case, axis);
                    }
                }
            }
        }
    }
}

#[test]
fn nan_propagation_and_first_nan_index() {
    for dt in [DType::Float32, DType::Float64] {
        for n in [5usize, 64, 200, 3000] {
            let mut vals = values(n, 3, false);
            vals[n / 3] = f64::NAN;
            vals[n / 2] = f64::NAN;
            let case = Case::new(dt, &vals, &[n], Layout::C);
            for op in [Op::Min, Op::Max, Op::Sum, Op::Mean, Op::Norm] {
                let (_, _, v) = flat(&run1(op, case.op(), Params::default()).unwrap());
                assert!(v[0].is_nan(), "{} {dt:?} n={n}", op.name());
            }
            for op in [Op::Argmin, Op::Argmax] {
                let (_, _, v) = flat(&run1(op, case.op(), Params::default()).unwrap());
                assert_eq!(v[0] as usize, n / 3, "{} {dt:?} n={n}", op.name());
            }
            // Column reductions take the NaN-propagating path too.
            let case2 = Case::new(dt, &vals[..n / 5 * 5], &[n / 5, 5], Layout::C);
            check_against(Op::Min, &case2, Some(0));
            check_against(Op::Argmax, &case2, Some(0));
        }
    }
}

#[test]
fn empty_reductions_follow_numpy() {
    for dt in DTYPES {
        let e = Case::new(dt, &[], &[0], Layout::C);
        let (d, _, v) = flat(&run1(Op::Sum, e.op(), Params::default()).unwrap());
        assert_eq!((d, v[0]), (sum_dtype(dt), 0.0));
        let (d, _, v) = flat(&run1(Op::Mean, e.op(), Params::default()).unwrap());
        assert_eq!(d, float_out(dt));
        assert!(v[0].is_nan());
        let (_, _, v) = flat(&run1(Op::Norm, e.op(), Params::default()).unwrap());
        assert_eq!(v[0], 0.0);
        for (op, msg) in [
            (
                Op::Min,
                "zero-size array to reduction operation minimum which has no identity",
            ),
            (
                Op::Max,
                "zero-size array to reduction operation maximum which has no identity",
            ),
            (Op::Argmin, "attempt to get argmin of an empty sequence"),
            (Op::Argmax, "attempt to get argmax of an empty sequence"),
        ] {
            assert_eq!(
                run1(op, e.op(), Params::default()),
                Err(KernelError::Value(msg.into()))
            );
            assert_eq!(
                check(op, &[e.op()], &Params::default()),
                Err(KernelError::Value(msg.into()))
            );
        }
        // (0, 3) along axis 1 has no lanes: an empty result, no error.
        let z = Case::new(dt, &[], &[0, 3], Layout::C);
        let (_, s, _) = flat(
            &run1(
                Op::Min,
                z.op(),
                Params {
                    axis: Some(1),
                    k: None,
                },
            )
            .unwrap(),
        );
        assert_eq!(s, vec![0]);
        assert!(run1(
            Op::Min,
            z.op(),
            Params {
                axis: Some(0),
                k: None
            }
        )
        .is_err());
        let (_, s, v) = flat(
            &run1(
                Op::Sum,
                z.op(),
                Params {
                    axis: Some(0),
                    k: None,
                },
            )
            .unwrap(),
        );
        assert_eq!((s, v), (vec![3], vec![0.0; 3]));
        let (_, _, v) = flat(
            &run1(
                Op::Mean,
                z.op(),
                Params {
                    axis: Some(0),
                    k: None,
                },
            )
            .unwrap(),
        );
        assert!(v.iter().all(|x| x.is_nan()) && v.len() == 3);
        let z2 = Case::new(dt, &[], &[3, 0], Layout::C);
        let (_, s, v) = flat(
            &run1(
                Op::Sum,
                z2.op(),
                Params {
                    axis: Some(1),
                    k: None,
                },
            )
            .unwrap(),
        );
        assert_eq!((s, v), (vec![3], vec![0.0; 3]));
    }
}

#[test]
fn axis_errors_and_zero_d() {
    let c = Case::new(DType::Float64, &[1.0, 2.0, 3.0, 4.0], &[2, 2], Layout::C);
    for (axis, msg) in [
        (2, "axis 2 is out of bounds for array of dimension 2"),
        (-3, "axis -3 is out of bounds for array of dimension 2"),
    ] {
        assert_eq!(
            run1(
                Op::Sum,
                c.op(),
                Params {
                    axis: Some(axis),
                    k: None
                }
            ),
            Err(KernelError::Value(msg.into()))
        );
    }
    let s = Case::new(DType::Float32, &[2.5], &[], Layout::C);
    for axis in [None, Some(0), Some(-1)] {
        assert_eq!(
            run1(Op::Sum, s.op(), Params { axis, k: None }).unwrap(),
            Value::Scalar(Scalar::F32(2.5))
        );
    }
    assert!(run1(
        Op::Sum,
        s.op(),
        Params {
            axis: Some(1),
            k: None
        }
    )
    .is_err());
    // Python scalars reduce as 0-d arrays of the default dtypes.
    assert_eq!(
        run1(Op::Sum, Operand::Int(3), Params::default()).unwrap(),
        Value::Scalar(Scalar::I64(3))
    );
    assert_eq!(
        run1(Op::Norm, Operand::Int(-3), Params::default()).unwrap(),
        Value::Scalar(Scalar::F64(3.0))
    );
    assert_eq!(
        run1(Op::Argmax, Operand::Float(1.5), Params::default()).unwrap(),
        Value::Scalar(Scalar::I64(0))
    );
}

#[test]
fn integer_sums_wrap_like_numpy() {
    let big = Case::new(DType::Int64, &[i64::MAX as f64, 0.0], &[2], Layout::C);
    let a = Array::from_vec(vec![i64::MAX, 1], &[2]).unwrap();
    assert_eq!(
        run1(Op::Sum, Operand::Array(a.view()), Params::default()).unwrap(),
        Value::Scalar(Scalar::I64(i64::MIN))
    );
    drop(big);
    // int32 sums are int64: no wrap at 2^31.
    let a = Array::from_vec(vec![i32::MAX; 4], &[2, 2]).unwrap();
    assert_eq!(
        run1(Op::Sum, Operand::Array(a.view()), Params::default()).unwrap(),
        Value::Scalar(Scalar::I64(4 * i32::MAX as i64))
    );
    let (_, _, v) = flat(
        &run1(
            Op::Sum,
            Operand::Array(a.view()),
            Params {
                axis: Some(0),
                k: None,
            },
        )
        .unwrap(),
    );
    assert_eq!(v, vec![2.0 * i32::MAX as f64; 2]);
}

#[test]
fn float32_sum_of_ten_million_is_pairwise_accurate() {
    let n = 10_000_000;
    let vals = values(n, 99, false);
    let v32: Vec<f32> = vals.iter().map(|&x| (x as f32 + 1.0) * 0.5).collect();
    let exact: f64 = v32.iter().map(|&x| x as f64).sum();
    let a = ArrayView::from_slice(&v32, &[n]).unwrap();
    let got = match run1(Op::Sum, Operand::Array(a), Params::default()).unwrap() {
        Value::Scalar(Scalar::F32(s)) => s as f64,
        v => panic!("{v:?}"),
    };
    // NumPy's pairwise sum is within a few float32 ulps here; a naive
    // float32 loop would be off by ~1e-3 relative.
    let rel = ((got - exact) / exact).abs();
    assert!(rel < 4e-7, "relative error {rel}");
    let mean = match run1(Op::Mean, Operand::Array(a), Params::default()).unwrap() {
        Value::Scalar(Scalar::F32(s)) => s as f64,
        v => panic!("{v:?}"),
    };
    assert!(((mean - exact / n as f64) / (exact / n as f64)).abs() < 4e-7);
}
