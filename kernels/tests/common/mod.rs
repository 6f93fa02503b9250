//! Shared test helpers: operands of every dtype and layout built from f64
//! values, and result extraction as f64.
#![allow(dead_code)]

use raptors_kernels::*;

pub const DTYPES: [DType; 4] = [DType::Int32, DType::Int64, DType::Float32, DType::Float64];

/// Deterministic pseudo-random values; small integers when `int`.
pub fn values(n: usize, seed: u64, int: bool) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            if int {
                (u * 200.0).floor() - 100.0
            } else {
                u * 2.0 - 1.0
            }
        })
        .collect()
}

pub fn array_from(dt: DType, vals: &[f64], shape: &[usize]) -> Array {
    match dt {
        DType::Int32 => Array::from_vec(vals.iter().map(|&v| v as i32).collect(), shape).unwrap(),
        DType::Int64 => Array::from_vec(vals.iter().map(|&v| v as i64).collect(), shape).unwrap(),
        DType::Float32 => Array::from_vec(vals.iter().map(|&v| v as f32).collect(), shape).unwrap(),
        DType::Float64 => Array::from_vec(vals.to_vec(), shape).unwrap(),
    }
}

pub fn buffer_ptr(a: &Array) -> *const u8 {
    match &a.data {
        Buffer::I32(v) => v.as_ptr().cast(),
        Buffer::I64(v) => v.as_ptr().cast(),
        Buffer::F32(v) => v.as_ptr().cast(),
        Buffer::F64(v) => v.as_ptr().cast(),
    }
}

pub fn buffer_f64(b: &Buffer) -> Vec<f64> {
    match b {
        Buffer::I32(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::F32(v) => v.iter().map(|&x| x as f64).collect(),
        Buffer::F64(v) => v.clone(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    C,
    /// Every other element of a larger buffer.
    Strided,
    /// 2-D stored column-major (a transposed view); 1-D falls back to C.
    F,
}

pub const LAYOUTS: [Layout; 3] = [Layout::C, Layout::Strided, Layout::F];

/// An operand with its own storage; `vals` are the logical C-order values
/// (already rounded to the dtype).
pub struct Case {
    pub store: Array,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub vals: Vec<f64>,
    pub dtype: DType,
}

impl Case {
    pub fn new(dt: DType, vals: &[f64], shape: &[usize], layout: Layout) -> Case {
        let item = dt.itemsize() as isize;
        let rounded = buffer_f64(&array_from(dt, vals, &[vals.len()]).data);
        let (store_vals, strides): (Vec<f64>, Vec<isize>) = match (layout, shape) {
            (Layout::Strided, _) => {
                let mut s = vec![-7.0; rounded.len() * 2];
                for (i, v) in rounded.iter().enumerate() {
                    s[2 * i] = *v;
                }
                let st = match shape {
                    [] => vec![],
                    [_] => vec![2 * item],
                    [_, c] => vec![2 * item * *c as isize, 2 * item],
                    _ => unreachable!(),
                };
                (s, st)
            }
            (Layout::F, [r, c]) => {
                let mut s = vec![0.0; rounded.len()];
                for i in 0..*r {
                    for j in 0..*c {
                        s[j * r + i] = rounded[i * c + j];
                    }
                }
                (s, vec![item, item * *r as isize])
            }
            (_, _) => {
                let st = match shape {
                    [] => vec![],
                    [_] => vec![item],
                    [_, c] => vec![item * *c as isize, item],
                    _ => unreachable!(),
                };
                (rounded.clone(), st)
            }
        };
        let n = store_vals.len();
        Case {
            store: array_from(dt, &store_vals, &[n]),
            shape: shape.to_vec(),
            strides,
            vals: rounded,
            dtype: dt,
        }
    }

    pub fn view(&self) -> ArrayView<'_> {
        // SAFETY: strides and shape address elements inside `store`.
        unsafe {
            ArrayView::from_raw_parts(
                buffer_ptr(&self.store),
                self.dtype,
                &self.shape,
                &self.strides,
            )
        }
        .unwrap()
    }

    pub fn op(&self) -> Operand<'_> {
        Operand::Array(self.view())
    }
}

/// Result as (dtype, shape, values as f64).
pub fn flat(v: &Value) -> (DType, Vec<usize>, Vec<f64>) {
    match v {
        Value::Scalar(s) => (s.dtype(), vec![], vec![s.to_f64()]),
        Value::Array(a) => (a.dtype(), a.shape.clone(), buffer_f64(&a.data)),
        Value::Pair(..) => panic!("pair"),
    }
}

pub fn close(got: f64, want: f64, rel: f64) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    if got == want {
        return true;
    }
    (got - want).abs() <= rel * want.abs().max(1.0)
}

pub fn assert_all_close(got: &[f64], want: &[f64], rel: f64, ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, rel), "{ctx}: element {i}: got {g}, want {w}");
    }
}

/// Tolerance for a result computed in `dt` over about `n` terms.
pub fn tol(dt: DType, n: usize) -> f64 {
    let eps = if dt == DType::Float32 { 6e-8 } else { 1.2e-16 };
    if dt.is_float() {
        eps * (8.0 + (n as f64).sqrt() * 4.0)
    } else {
        1e-12
    }
}

pub fn run1(op: Op, a: Operand<'_>, params: Params) -> Result<Value, KernelError> {
    run(op, &[a], &params, &Serial)
}

/// Runs `results` once at every SIMD dispatch level and asserts they all
/// agree bit for bit, then restores the detected level. The level is
/// process-wide: call this only from a test binary of its own.
pub fn assert_same_at_every_simd_level(results: impl Fn() -> Vec<Value>) {
    let best = simd_level();
    let runs: Vec<Vec<Value>> = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .map(|level| {
            force_simd_level(level);
            results()
        })
        .collect();
    force_simd_level(best);
    assert_eq!(runs[0], runs[1], "baseline vs AVX2");
    assert_eq!(runs[1], runs[2], "AVX2 vs AVX-512");
}
