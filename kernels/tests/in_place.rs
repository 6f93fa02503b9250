//! Broadcast (zero-stride) and strided views are read in place, never
//! copied whole; allocations that cannot be made are `KernelError::Memory`;
//! output sizes that overflow are `KernelError::Value`.

use raptors_kernels::*;

/// A view of `shape` with byte `strides` over `data` (which must cover
/// every addressed element).
fn view<'a, T: Element>(data: &'a [T], shape: &[usize], strides: &[isize]) -> ArrayView<'a> {
    // SAFETY: callers pass strides that address only elements of `data`.
    unsafe { ArrayView::from_raw_parts(data.as_ptr().cast(), T::DTYPE, shape, strides).unwrap() }
}

fn run1(op: Op, v: ArrayView<'_>, axis: Option<isize>) -> Result<Value, KernelError> {
    run(
        op,
        &[Operand::Array(v)],
        &Params {
            axis,
            ..Params::default()
        },
        &Serial,
    )
}

fn buffer_f64(v: Value) -> Vec<f64> {
    match v.as_array().expect("an array").data.clone() {
        Buffer::I32(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::F32(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::F64(v) => v,
    }
}

fn scalar(v: Value) -> f64 {
    v.as_scalar().expect("a scalar").to_f64()
}

#[test]
fn broadcast_scalar_reductions_are_o1_and_exact() {
    // 10^12 elements: a copy would need 8 TB.
    let one = [0.5f64];
    let v = view(&one, &[1_000_000_000_000], &[0]);
    assert_eq!(scalar(run1(Op::Sum, v, None).unwrap()), 5e11);
    assert_eq!(scalar(run1(Op::Mean, v, None).unwrap()), 0.5);
    assert_eq!(scalar(run1(Op::Min, v, None).unwrap()), 0.5);
    assert_eq!(scalar(run1(Op::Max, v, None).unwrap()), 0.5);
    assert_eq!(scalar(run1(Op::Argmin, v, None).unwrap()), 0.0);
    assert_eq!(scalar(run1(Op::Argmax, v, None).unwrap()), 0.0);
    let norm = scalar(run1(Op::Norm, v, None).unwrap());
    assert!((norm - (0.25f64 * 1e12).sqrt()).abs() < 1e-6 * norm);
    let i = [3i32];
    let vi = view(&i, &[1_000_000_000_000], &[0]);
    assert_eq!(
        run1(Op::Sum, vi, None).unwrap().as_scalar(),
        Some(Scalar::I64(3_000_000_000_000))
    );
    // 2-D broadcast scalar, along either axis.
    let v2 = view(&one, &[1_000_000, 1_000_000], &[0, 0]);
    assert_eq!(scalar(run1(Op::Sum, v2, None).unwrap()), 5e11);
    let rows = run1(Op::Max, view(&one, &[3, 1_000_000_000], &[0, 0]), Some(1)).unwrap();
    assert_eq!(
        rows.as_array().unwrap().as_slice::<f64>(),
        Some(&[0.5; 3][..])
    );
}

#[test]
fn broadcast_sum_is_bit_identical_to_a_contiguous_copy() {
    for n in [1, 7, 1024, 1025, 32_768, 32_769, 100_003, 1_000_000] {
        let x = [0.1f64];
        let copy = vec![0.1f64; n];
        let b = run1(Op::Sum, view(&x, &[n], &[0]), None).unwrap();
        let c = run1(Op::Sum, ArrayView::from_slice(&copy, &[n]).unwrap(), None).unwrap();
        assert_eq!(b, c, "n = {n}");
        let xf = [0.1f32];
        let copyf = vec![0.1f32; n];
        let b = run1(Op::Mean, view(&xf, &[n], &[0]), None).unwrap();
        let c = run1(Op::Mean, ArrayView::from_slice(&copyf, &[n]).unwrap(), None).unwrap();
        assert_eq!(b, c, "mean n = {n}");
    }
}

#[test]
fn strided_full_reduction_is_bit_identical_to_a_copy() {
    let n = 300_001;
    let base: Vec<f64> = (0..2 * n)
        .map(|i| ((i * 7919) % 1000) as f64 * 0.001)
        .collect();
    let strided = view(&base, &[n], &[16]);
    let copy: Vec<f64> = base.iter().step_by(2).copied().collect();
    let c = ArrayView::from_slice(&copy, &[n]).unwrap();
    for op in [
        Op::Sum,
        Op::Mean,
        Op::Norm,
        Op::Min,
        Op::Max,
        Op::Argmin,
        Op::Argmax,
    ] {
        assert_eq!(
            run1(op, strided, None).unwrap(),
            run1(op, c, None).unwrap(),
            "{op:?}"
        );
    }
    // 2-D: every other column of a C array.
    let (r, cols) = (299, 1001);
    let strided = view(
        &base[..r * 2 * cols],
        &[r, cols],
        &[2 * cols as isize * 8, 16],
    );
    let copy: Vec<f64> = base[..r * 2 * cols].iter().step_by(2).copied().collect();
    let c = ArrayView::from_slice(&copy, &[r, cols]).unwrap();
    for op in [Op::Sum, Op::Argmax] {
        assert_eq!(
            run1(op, strided, None).unwrap(),
            run1(op, c, None).unwrap(),
            "{op:?}"
        );
        for axis in [0, 1] {
            // Lanes walk another traversal than the copy's (strided lanes
            // versus folded rows): equal to rounding.
            let (a, b) = (
                run1(op, strided, Some(axis)).unwrap(),
                run1(op, c, Some(axis)).unwrap(),
            );
            let (a, b) = (buffer_f64(a), buffer_f64(b));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                    "{op:?} axis {axis}: {x} {y}"
                );
            }
        }
    }
}

#[test]
fn row_and_column_broadcasts_match_the_copy() {
    let row: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
    let rows = 5000;
    let b = view(&row, &[rows, 1000], &[0, 8]);
    let copy: Vec<f64> = (0..rows).flat_map(|_| row.iter().copied()).collect();
    let c = ArrayView::from_slice(&copy, &[rows, 1000]).unwrap();
    for op in [Op::Min, Op::Max, Op::Argmin, Op::Argmax] {
        assert_eq!(
            run1(op, b, None).unwrap(),
            run1(op, c, None).unwrap(),
            "{op:?}"
        );
    }
    let (s, t) = (
        scalar(run1(Op::Sum, b, None).unwrap()),
        scalar(run1(Op::Sum, c, None).unwrap()),
    );
    assert!((s - t).abs() <= 1e-9 * t.abs().max(1.0), "{s} {t}");
    // Column broadcast: (1000, rows) with each row one value.
    let bt = view(&row, &[1000, rows], &[8, 0]);
    let copy_t: Vec<f64> = row
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x, rows))
        .collect();
    let ct = ArrayView::from_slice(&copy_t, &[1000, rows]).unwrap();
    for op in [Op::Min, Op::Argmin, Op::Argmax] {
        assert_eq!(
            run1(op, bt, None).unwrap(),
            run1(op, ct, None).unwrap(),
            "{op:?}"
        );
    }
    for axis in [0, 1] {
        for op in [Op::Max, Op::Argmax, Op::Sum] {
            let (x, y) = (
                run1(op, bt, Some(axis)).unwrap(),
                run1(op, ct, Some(axis)).unwrap(),
            );
            assert_eq!(x, y, "{op:?} axis {axis}");
        }
    }
}

#[test]
fn integer_norm_reads_in_place_like_converting_first() {
    let v: Vec<i32> = (0..100_003).map(|i| (i % 200) - 100).collect();
    let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let a = run1(
        Op::Norm,
        ArrayView::from_slice(&v, &[100_003]).unwrap(),
        None,
    )
    .unwrap();
    let b = run1(
        Op::Norm,
        ArrayView::from_slice(&f, &[100_003]).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn elementwise_reads_broadcast_and_strided_operands_in_place() {
    let n = 100_003;
    let base: Vec<f64> = (0..2 * n).map(|i| i as f64).collect();
    let one = [2.0f64];
    let bc = view(&one, &[n], &[0]);
    let strided = view(&base, &[n], &[16]);
    let out = run(
        Op::Multiply,
        &[Operand::Array(strided), Operand::Array(bc)],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    let expect: Vec<f64> = (0..n).map(|i| 4.0 * i as f64).collect();
    assert_eq!(out.as_array().unwrap().as_slice::<f64>(), Some(&expect[..]));
    // Foreign dtype, strided, broadcast rows in 2-D.
    let ints: Vec<i32> = (0..2000).collect();
    let rows = view(&ints, &[50, 1000], &[0, 8]);
    let out = run(
        Op::Add,
        &[Operand::Array(rows), Operand::Float(0.5)],
        &Params::default(),
        &Serial,
    )
    .unwrap();
    let got = out.as_array().unwrap().as_slice::<f64>().unwrap();
    for r in 0..50 {
        for c in 0..1000 {
            assert_eq!(got[r * 1000 + c], (2 * c) as f64 + 0.5);
        }
    }
}

#[test]
fn an_output_beyond_memory_is_a_memory_error() {
    let one = [1.0f64];
    let huge = view(&one, &[1_000_000_000_000], &[0]);
    let err = run(
        Op::Add,
        &[Operand::Array(huge), Operand::Float(1.0)],
        &Params::default(),
        &Serial,
    )
    .unwrap_err();
    assert_eq!(
        err,
        KernelError::Memory {
            kernel: "add",
            bytes: 8_000_000_000_000
        }
    );
    assert!(err.to_string().contains("8000000000000 bytes"), "{err}");
    // Refused by `check`, before any allocation or queueing.
    assert!(matches!(
        check(
            Op::Add,
            &[Operand::Array(huge), Operand::Float(1.0)],
            &Params::default()
        ),
        Err(KernelError::Memory { .. })
    ));
    // An axis reduction whose output is a broadcast's length.
    let tall = view(&one, &[1_000_000_000_000, 2], &[0, 0]);
    assert!(matches!(
        run1(Op::Sum, tall, Some(1)),
        Err(KernelError::Memory { kernel: "sum", .. })
    ));
}

#[test]
fn an_output_size_that_overflows_is_a_value_error_naming_the_shapes() {
    let one = [1.0f64];
    let a = view(&one, &[1 << 33, 1], &[0, 0]);
    let b = view(&one, &[1, 1 << 33], &[0, 0]);
    for op in [Op::Matmul, Op::Dot, Op::Add] {
        let err = check(
            op,
            &[Operand::Array(a), Operand::Array(b)],
            &Params::default(),
        )
        .unwrap_err();
        let KernelError::Value(msg) = &err else {
            panic!("{op:?}: {err:?}")
        };
        assert!(
            msg.contains("(8589934592,8589934592)") && msg.contains("(8589934592,1)"),
            "{msg}"
        );
        let err2 = run(
            op,
            &[Operand::Array(a), Operand::Array(b)],
            &Params::default(),
            &Serial,
        );
        assert_eq!(err2.unwrap_err(), err);
    }
}
