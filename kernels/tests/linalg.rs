//! dot, matmul, cosine_similarity and topk against references computed here.

mod common;
use common::*;
use raptors_kernels::*;

fn promo(a: DType, b: DType) -> DType {
    promote_types(a, b)
}

/// Reference product of logical shapes (1-D a is a row, 1-D b a column).
fn matmul_ref(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let (m, k) = if sa.len() == 1 {
        (1, sa[0])
    } else {
        (sa[0], sa[1])
    };
    let n = if sb.len() == 1 { 1 } else { sb[1] };
    let mut out = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                out[i * n + j] += a[i * k + p] * b[p * n + j];
                scale[i * n + j] += (a[i * k + p] * b[p * n + j]).abs();
            }
        }
    }
    let mut shape = sa[..sa.len() - 1].to_vec();
    shape.extend_from_slice(&sb[1..]);
    (shape, out, scale)
}

#[test]
fn dot_and_matmul_all_dtypes_shapes_layouts() {
    let shapes: [(&[usize], &[usize]); 12] = [
        (&[0], &[0]),
        (&[1], &[1]),
        (&[65], &[65]),
        (&[1025], &[1025]),
        (&[100_003], &[100_003]),
        (&[5, 7], &[7]),
        (&[7], &[7, 5]),
        (&[33, 65], &[65]),
        (&[65], &[65, 33]),
        (&[3, 4], &[4, 5]),
        (&[17, 31], &[31, 9]),
        (&[64, 0], &[0, 3]),
    ];
    for op in [Op::Dot, Op::Matmul] {
        for da in DTYPES {
            for db in DTYPES {
                if da != db && da != DType::Float64 && db != DType::Float32 {
                    continue; // mixed pairs: a representative subset
                }
                for (sa, sb) in shapes {
                    for (la, lb) in [
                        (Layout::C, Layout::C),
                        (Layout::F, Layout::F),
                        (Layout::Strided, Layout::F),
                        (Layout::F, Layout::Strided),
                    ] {
                        let na: usize = sa.iter().product();
                        let nb: usize = sb.iter().product();
                        let ca = Case::new(da, &values(na, 11, !da.is_float()), sa, la);
                        let cb = Case::new(db, &values(nb, 12, !db.is_float()), sb, lb);
                        let ctx = format!("{} {da:?}{sa:?}{la:?} {db:?}{sb:?}{lb:?}", op.name());
                        let got = run(op, &[ca.op(), cb.op()], &Params::default(), &Serial)
                            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        let (dt, shape, vals) = flat(&got);
                        let want_dt = promo(da, db);
                        assert_eq!(dt, want_dt, "{ctx}");
                        let (ws, wv, scale) = matmul_ref(&ca.vals, sa, &cb.vals, sb);
                        assert_eq!(shape, ws, "{ctx}");
                        let eps = match want_dt {
                            DType::Float32 => 6e-8,
                            DType::Float64 => 1.2e-16,
                            _ => 0.0,
                        };
                        let k = sa[sa.len() - 1].max(2) as f64;
                        for (i, (g, w)) in vals.iter().zip(&wv).enumerate() {
                            let allowed = eps * (8.0 + k.sqrt() * 2.0 + k.log2()) * scale[i];
                            assert!((g - w).abs() <= allowed, "{ctx}: {i}: got {g} want {w}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dot_with_zero_d_and_python_scalars() {
    let a = Case::new(DType::Int32, &[0.0, 1.0, 2.0], &[3], Layout::C);
    // np.dot does not treat Python scalars as weak: int32 . 3 is int64.
    let (d, s, v) = flat(
        &run(
            Op::Dot,
            &[a.op(), Operand::Int(3)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!((d, s, v), (DType::Int64, vec![3], vec![0.0, 3.0, 6.0]));
    let (d, _, _) = flat(
        &run(
            Op::Dot,
            &[a.op(), Operand::Float(2.5)],
            &Params::default(),
            &Serial,
        )
        .unwrap(),
    );
    assert_eq!(d, DType::Float64);
    let z = Case::new(DType::Int32, &[2.0], &[], Layout::C);
    let z3 = Case::new(DType::Int32, &[3.0], &[], Layout::C);
    assert_eq!(
        run(Op::Dot, &[z.op(), z3.op()], &Params::default(), &Serial).unwrap(),
        Value::Scalar(Scalar::I32(6))
    );
    assert_eq!(
        run(
            Op::Dot,
            &[Operand::Int(2), Operand::Int(3)],
            &Params::default(),
            &Serial
        )
        .unwrap(),
        Value::Scalar(Scalar::I64(6))
    );
    let e = Case::new(DType::Int32, &[], &[0], Layout::C);
    assert_eq!(
        run(Op::Dot, &[e.op(), e.op()], &Params::default(), &Serial).unwrap(),
        Value::Scalar(Scalar::I32(0))
    );
}

#[test]
fn int32_products_wrap() {
    let a = Array::from_vec(vec![65536i32, 65536], &[2]).unwrap();
    let got = run(
        Op::Dot,
        &[Operand::Array(a.view()), Operand::Array(a.view())],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    assert_eq!(got, Value::Scalar(Scalar::I32(0)));
    let m = Array::from_vec(vec![65536i32, 65536, 1, 1], &[2, 2]).unwrap();
    let got = run(
        Op::Matmul,
        &[Operand::Array(m.view()), Operand::Array(m.view())],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    assert_eq!(
        got,
        Value::Array(Array::from_vec(vec![65536i32, 65536, 65537, 65537], &[2, 2]).unwrap())
    );
}

#[test]
fn shape_errors_match_numpy() {
    let v = |s: &[usize]| Case::new(DType::Float64, &vec![1.0; s.iter().product()], s, Layout::C);
    let (a23, b4, b3, b42, s) = (v(&[2, 3]), v(&[4]), v(&[3]), v(&[4, 2]), v(&[]));
    let err = |op, x: &Case, y: &Case| {
        run(op, &[x.op(), y.op()], &Params::default(), &Serial).unwrap_err()
    };
    assert_eq!(
        err(Op::Dot, &a23, &b4),
        KernelError::Value("shapes (2,3) and (4,) not aligned: 3 (dim 1) != 4 (dim 0)".into())
    );
    assert_eq!(
        err(Op::Dot, &b3, &b4),
        KernelError::Value("shapes (3,) and (4,) not aligned: 3 (dim 0) != 4 (dim 0)".into())
    );
    assert_eq!(
        err(Op::Dot, &a23, &b42),
        KernelError::Value("shapes (2,3) and (4,2) not aligned: 3 (dim 1) != 4 (dim 0)".into())
    );
    assert_eq!(err(Op::Matmul, &a23, &b42), KernelError::Value("matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc signature (n?,k),(k,m?)->(n?,m?) (size 4 is different from 3)".into()));
    assert_eq!(err(Op::Matmul, &b3, &s), KernelError::Value("matmul: Input operand 1 does not have enough dimensions (has 0, gufunc core with signature (n?,k),(k,m?)->(n?,m?) requires 1)".into()));
    assert_eq!(err(Op::Matmul, &s, &b3), KernelError::Value("matmul: Input operand 0 does not have enough dimensions (has 0, gufunc core with signature (n?,k),(k,m?)->(n?,m?) requires 1)".into()));
    let three = [2usize, 2, 2];
    let data = [0f64; 8];
    // SAFETY: the strides address only elements of `data` (8 f64).
    let e = unsafe {
        ArrayView::from_raw_parts(data.as_ptr().cast(), DType::Float64, &three, &[32, 16, 8])
    };
    assert!(matches!(e, Err(KernelError::Value(m)) if m.contains("at most 2 dimensions")));
}

fn cos_ref(m: &[f64], rows: usize, d: usize, q: &[f64]) -> Vec<f64> {
    let nq = q.len() / d.max(1);
    let mut out = Vec::new();
    for r in 0..rows {
        for j in 0..nq {
            let (mut dot, mut a, mut b) = (0.0, 0.0, 0.0);
            for p in 0..d {
                dot += m[r * d + p] * q[j * d + p];
                a += m[r * d + p] * m[r * d + p];
                b += q[j * d + p] * q[j * d + p];
            }
            out.push(if a == 0.0 || b == 0.0 {
                0.0
            } else {
                dot / (a.sqrt() * b.sqrt())
            });
        }
    }
    out
}

#[test]
fn cosine_similarity_single_and_batched() {
    for dm in DTYPES {
        for dq in DTYPES {
            for (rows, d, nq) in [
                (1usize, 1usize, 1usize),
                (7, 65, 1),
                (50, 33, 4),
                (3, 1030, 2),
                (0, 4, 2),
            ] {
                for layout in [Layout::C, Layout::F, Layout::Strided] {
                    let mut mv = values(rows * d, 21, !dm.is_float());
                    if rows > 1 {
                        for p in 0..d {
                            mv[d + p] = 0.0; // a zero-norm row scores 0
                        }
                    }
                    let qv = values(nq * d, 22, !dq.is_float());
                    let cm = Case::new(dm, &mv, &[rows, d], layout);
                    let want_dt = match promote_types(dm, dq) {
                        DType::Float32 => DType::Float32,
                        _ => DType::Float64,
                    };
                    let tol = if want_dt == DType::Float32 {
                        2e-6
                    } else {
                        1e-13
                    };
                    // single query (1-D) and batch (2-D)
                    let c1 = Case::new(dq, &qv[..d], &[d], layout);
                    let (dt, s, v) = flat(
                        &run(
                            Op::CosineSimilarity,
                            &[cm.op(), c1.op()],
                            &Params::default(),
                            &Serial,
                        )
                        .unwrap(),
                    );
                    assert_eq!((dt, s), (want_dt, vec![rows]));
                    assert_all_close(&v, &cos_ref(&cm.vals, rows, d, &c1.vals), tol, "cos 1-D");
                    let cq = Case::new(dq, &qv, &[nq, d], layout);
                    let (dt, s, v) = flat(
                        &run(
                            Op::CosineSimilarity,
                            &[cm.op(), cq.op()],
                            &Params::default(),
                            &Serial,
                        )
                        .unwrap(),
                    );
                    assert_eq!((dt, s), (want_dt, vec![rows, nq]));
                    assert_all_close(&v, &cos_ref(&cm.vals, rows, d, &cq.vals), tol, "cos 2-D");
                }
            }
        }
    }
    let m = Case::new(DType::Float32, &[1.0; 6], &[2, 3], Layout::C);
    let q = Case::new(DType::Float32, &[1.0; 4], &[4], Layout::C);
    assert!(matches!(
        run(
            Op::CosineSimilarity,
            &[m.op(), q.op()],
            &Params::default(),
            &Serial
        ),
        Err(KernelError::Value(_))
    ));
    let q0 = Case::new(DType::Float32, &[0.0; 3], &[3], Layout::C);
    assert_eq!(
        flat(
            &run(
                Op::CosineSimilarity,
                &[m.op(), q0.op()],
                &Params::default(),
                &Serial
            )
            .unwrap()
        )
        .2,
        vec![0.0, 0.0]
    );
}

/// Reference: a stable descending sort with NaN last (np.argsort(-x, kind="stable")).
fn topk_ref(x: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| match (x[a].is_nan(), x[b].is_nan()) {
        (false, false) => x[b].partial_cmp(&x[a]).unwrap(),
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
    });
    idx.truncate(k);
    idx
}

#[test]
fn topk_orders_ties_and_nan() {
    for dt in DTYPES {
        for n in [1usize, 2, 10, 100, 1000, 100_000] {
            // Few distinct values: many ties.
            let vals: Vec<f64> = values(n, 31, true)
                .iter()
                .map(|v| (v / 20.0).floor())
                .collect();
            let mut vals = vals;
            if dt.is_float() && n > 5 {
                vals[3] = f64::NAN;
                vals[n - 1] = f64::NAN;
                vals[1] = -0.0;
            }
            for layout in [Layout::C, Layout::Strided] {
                let c = Case::new(dt, &vals, &[n], layout);
                for k in [1, 2, n / 2, n.saturating_sub(1), n] {
                    if k == 0 || k > n {
                        continue;
                    }
                    let got = run(
                        Op::Topk,
                        &[c.op()],
                        &Params {
                            axis: None,
                            k: Some(k),
                        },
                        &Serial,
                    )
                    .unwrap();
                    let Value::Pair(i, v) = got else { panic!() };
                    assert_eq!(
                        (i.dtype(), v.dtype(), i.shape.clone()),
                        (DType::Int64, dt, vec![k])
                    );
                    let want = topk_ref(&c.vals, k);
                    let gi: Vec<usize> = buffer_f64(&i.data).iter().map(|&x| x as usize).collect();
                    assert_eq!(gi, want, "{dt:?} n={n} k={k}");
                    let gv = buffer_f64(&v.data);
                    for (g, &w) in gv.iter().zip(&want) {
                        assert!(close(*g, c.vals[w], 0.0));
                    }
                }
            }
        }
    }
    let c = Case::new(DType::Float64, &[1.0, 2.0], &[2], Layout::C);
    for k in [Some(0), Some(3), None] {
        assert!(matches!(
            run(Op::Topk, &[c.op()], &Params { axis: None, k }, &Serial),
            Err(KernelError::Value(_))
        ));
    }
    let m = Case::new(DType::Float64, &[1.0; 4], &[2, 2], Layout::C);
    assert!(matches!(
        check(
            Op::Topk,
            &[m.op()],
            &Params {
                axis: None,
                k: Some(1)
            }
        ),
        Err(KernelError::Value(_))
    ));
}

#[test]
fn op_table_round_trips() {
    for op in Op::ALL {
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
    assert_eq!(
        Op::from_name("cosine_similarity"),
        Some(Op::CosineSimilarity)
    );
    assert_eq!(
        (
            Op::Dot.arity(),
            Op::Sum.arity(),
            Op::Scale.arity(),
            Op::Clip.arity(),
            Op::Topk.arity()
        ),
        (2, 1, 2, 3, 1)
    );
    for dt in DTYPES {
        assert_eq!(DType::from_name(dt.name()), Some(dt));
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
fn cosine_similarity_query_batches() {
    let (rows, d) = (37usize, 45usize);
    for dt in [DType::Float32, DType::Float64] {
        let tol = if dt == DType::Float32 { 2e-6 } else { 1e-13 };
        let mut mv = values(rows * d, 31, false);
        mv[5 * d..6 * d].iter_mut().for_each(|v| *v = 0.0);
        for nq in 1..=33usize {
            let mut qv = values(nq * d, 32 + nq as u64, false);
            qv[..d].iter_mut().for_each(|v| *v = 0.0);
            for layout in [Layout::C, Layout::Strided, Layout::F] {
                let cm = Case::new(dt, &mv, &[rows, d], layout);
                let cq = Case::new(dt, &qv, &[nq, d], layout);
                let got = flat(
                    &run(
                        Op::CosineSimilarity,
                        &[cm.op(), cq.op()],
                        &Params::default(),
                        &Serial,
                    )
                    .unwrap(),
                );
                assert_eq!((got.0, &got.1), (dt, &vec![rows, nq]));
                let want = cos_ref(&cm.vals, rows, d, &cq.vals);
                assert_all_close(&got.2, &want, tol, "cos batch");
            }
        }
    }
    // Large enough to split across a pool: parallel equals serial exactly.
    let (rows, d) = (9000usize, 131usize);
    let m = Case::new(
        DType::Float32,
        &values(rows * d, 41, false),
        &[rows, d],
        Layout::C,
    );
    for nq in [1usize, 5, 16] {
        let q = Case::new(
            DType::Float32,
            &values(nq * d, 42, false),
            &[nq, d],
            Layout::C,
        );
        let call = |e: &dyn Exec| {
            flat(
                &run(
                    Op::CosineSimilarity,
                    &[m.op(), q.op()],
                    &Params::default(),
                    e,
                )
                .unwrap(),
            )
            .2
        };
        let serial = call(&Serial);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let par = pool.install(|| call(&Pool2));
        assert_eq!(serial, par);
        assert_all_close(
            &serial,
            &cos_ref(&m.vals, rows, d, &q.vals),
            2e-6,
            "cos par",
        );
    }
}

#[test]
fn cosine_topk_is_topk_of_each_querys_scores() {
    let (rows, d) = (37usize, 9usize);
    for dt in DTYPES {
        let m = Case::new(dt, &values(rows * d, 5, true), &[rows, d], Layout::C);
        let q = Case::new(dt, &values(4 * d, 6, true), &[4, d], Layout::C);
        let k = 5;
        let params = Params {
            axis: None,
            k: Some(k),
        };
        let Value::Pair(ids, vals) =
            run(Op::CosineTopk, &[m.op(), q.op()], &params, &Serial).unwrap()
        else {
            panic!("cosine_topk returns (indices, values)")
        };
        assert_eq!(
            (ids.shape.clone(), vals.shape.clone()),
            (vec![4, k], vec![4, k])
        );
        let scores = run(
            Op::CosineSimilarity,
            &[m.op(), q.op()],
            &Params::default(),
            &Serial,
        )
        .unwrap();
        let scores = buffer_f64(&scores.as_array().unwrap().data);
        let (ids, vals) = (buffer_f64(&ids.data), buffer_f64(&vals.data));
        for j in 0..4 {
            let column: Vec<f64> = (0..rows).map(|r| scores[r * 4 + j]).collect();
            let want = topk_ref(&column, k);
            let got: Vec<usize> = ids[j * k..(j + 1) * k]
                .iter()
                .map(|&x| x as usize)
                .collect();
            assert_eq!(got, want, "{dt:?} query {j}");
            let want_vals: Vec<f64> = want.iter().map(|&r| column[r]).collect();
            assert_eq!(&vals[j * k..(j + 1) * k], &want_vals[..]);
        }
        for bad_k in [0, rows + 1] {
            let params = Params {
                axis: None,
                k: Some(bad_k),
            };
            assert!(matches!(
                run(Op::CosineTopk, &[m.op(), q.op()], &params, &Serial),
                Err(KernelError::Value(_))
            ));
        }
    }
}
