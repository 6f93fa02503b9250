//! GEMM against a naive reference: every dtype, edge shapes, strided/transposed/negative-stride
//! operands, parallel == serial, cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};

use raptors_kernels::gemm::{gemm, GemmElement};
use raptors_kernels::{Exec, KernelError, Serial};

/// Test-side view of an element type: conversion for random data and the reference product.
trait Elem: GemmElement + PartialEq + std::fmt::Debug {
    fn literal(x: i64) -> Self;
    /// Random-ish value from a 64-bit seed.
    fn sample(s: u64) -> Self;
    /// Asserts `got` matches the exact-arithmetic reference for a length-`k` dot product.
    fn assert_close(got: &[Self], reference: &[Self], scale: &[f64], k: usize);
    /// Naive `sum_p a[p] * b[p]` in the type's reference arithmetic.
    fn reference_dot(a: impl Iterator<Item = (Self, Self)>) -> Self;
    /// `|x|` as f64, the error scale for floats.
    fn magnitude(self) -> f64;
}

macro_rules! float_elem {
    ($t:ty) => {
        impl Elem for $t {
            fn literal(x: i64) -> Self {
                x as $t
            }
            fn sample(s: u64) -> Self {
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as $t
            }
            fn assert_close(got: &[Self], reference: &[Self], scale: &[f64], k: usize) {
                let tol = (k as f64 + 2.0) * <$t>::EPSILON as f64;
                for (i, ((&g, &r), &s)) in got.iter().zip(reference).zip(scale).enumerate() {
                    let err = (g as f64 - r as f64).abs();
                    assert!(
                        err <= tol * s,
                        "element {i}: got {g}, expected {r} (err {err}, bound {})",
                        tol * s
                    );
                }
            }
            fn reference_dot(a: impl Iterator<Item = (Self, Self)>) -> Self {
                a.map(|(x, y)| x as f64 * y as f64).sum::<f64>() as $t
            }
            fn magnitude(self) -> f64 {
                (self as f64).abs()
            }
        }
    };
}
macro_rules! int_elem {
    ($t:ty) => {
        impl Elem for $t {
            fn literal(x: i64) -> Self {
                x as $t
            }
            fn sample(s: u64) -> Self {
                ((s >> 40) % 201) as $t - 100
            }
            fn assert_close(got: &[Self], reference: &[Self], _: &[f64], _: usize) {
                assert_eq!(got, reference);
            }
            fn reference_dot(a: impl Iterator<Item = (Self, Self)>) -> Self {
                a.fold(0, |acc: $t, (x, y)| acc.wrapping_add(x.wrapping_mul(y)))
            }
            fn magnitude(self) -> f64 {
                (self as f64).abs()
            }
        }
    };
}
float_elem!(f32);
float_elem!(f64);
int_elem!(i32);
int_elem!(i64);

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    /// Column-major: the transpose of a row-major array, as NumPy's `.T` gives.
    ColMajor,
    /// Every other element of every third row of a larger array.
    Padded,
    /// Rows and columns reversed: both strides negative.
    Reversed,
}
const LAYOUTS: [Layout; 4] = [
    Layout::RowMajor,
    Layout::ColMajor,
    Layout::Padded,
    Layout::Reversed,
];

/// A `rows x cols` operand in `layout`: its backing store, and the offset/strides of (0, 0).
struct Operand<T> {
    buf: Vec<T>,
    origin: usize,
    rs: isize,
    cs: isize,
    values: Vec<T>,
}

impl<T: Elem> Operand<T> {
    fn new(rows: usize, cols: usize, layout: Layout, seed: &mut u64) -> Self {
        let values: Vec<T> = (0..rows * cols).map(|_| T::sample(next(seed))).collect();
        let (r, c) = (rows as isize, cols as isize);
        let (len, origin, rs, cs) = match layout {
            Layout::RowMajor => (rows * cols, 0, c, 1),
            Layout::ColMajor => (rows * cols, 0, 1, r),
            Layout::Padded => (3 * rows * (2 * cols + 1) + 1, 0, 3 * (2 * c + 1), 2),
            Layout::Reversed => (rows * cols, (rows * cols).saturating_sub(1), -c, -1),
        };
        let mut buf = vec![T::literal(7777); len];
        for i in 0..rows {
            for j in 0..cols {
                let at = origin as isize + i as isize * rs + j as isize * cs;
                buf[at as usize] = values[i * cols + j];
            }
        }
        Operand {
            buf,
            origin,
            rs,
            cs,
            values,
        }
    }

    fn ptr(&self) -> *const T {
        self.buf.as_ptr().wrapping_add(self.origin)
    }
}

fn next(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}

fn run<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    a: &Operand<T>,
    b: &Operand<T>,
    exec: &dyn Exec,
) -> Result<Vec<T>, KernelError> {
    let mut c = vec![T::literal(-5); m * n];
    // SAFETY: the operands address exactly their rows x cols elements inside their buffers.
    unsafe {
        gemm(
            m,
            n,
            k,
            a.ptr(),
            a.rs,
            a.cs,
            b.ptr(),
            b.rs,
            b.cs,
            &mut c,
            exec,
        )
    }?;
    Ok(c)
}

fn check<T: Elem>(m: usize, n: usize, k: usize, la: Layout, lb: Layout) {
    let mut seed = (m * 1_000_003 + n * 1009 + k) as u64;
    let a = Operand::<T>::new(m, k, la, &mut seed);
    let b = Operand::<T>::new(k, n, lb, &mut seed);
    let got = run(m, n, k, &a, &b, &Serial).expect("gemm");
    let mut reference = Vec::with_capacity(m * n);
    let mut scale = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let pairs = (0..k).map(|p| (a.values[i * k + p], b.values[p * n + j]));
            reference.push(T::reference_dot(pairs));
            let abs =
                (0..k).map(|p| a.values[i * k + p].magnitude() * b.values[p * n + j].magnitude());
            scale.push(abs.sum::<f64>() + f64::MIN_POSITIVE);
        }
    }
    T::assert_close(&got, &reference, &scale, k);
}

fn check_all_dtypes(m: usize, n: usize, k: usize, la: Layout, lb: Layout) {
    check::<f32>(m, n, k, la, lb);
    check::<f64>(m, n, k, la, lb);
    check::<i32>(m, n, k, la, lb);
    check::<i64>(m, n, k, la, lb);
}

#[test]
fn small_and_odd_shapes_all_layouts() {
    for (m, n, k) in [
        (1, 1, 1),
        (1, 17, 1),
        (17, 1, 33),
        (2, 3, 4),
        (7, 25, 13),
        (9, 49, 31),
        (16, 48, 8),
    ] {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                check_all_dtypes(m, n, k, la, lb);
            }
        }
    }
}

#[test]
fn shapes_crossing_cache_blocks() {
    // k crosses the f64 and f32 depth blocks, n the L2 column block, m the L3 row block.
    for (m, n, k) in [(33, 97, 515), (70, 260, 300), (4100, 30, 20)] {
        for (la, lb) in [
            (Layout::RowMajor, Layout::RowMajor),
            (Layout::ColMajor, Layout::Reversed),
            (Layout::Padded, Layout::ColMajor),
        ] {
            check_all_dtypes(m, n, k, la, lb);
        }
    }
}

#[test]
fn empty_dimensions() {
    for (m, n, k) in [(0, 0, 0), (0, 5, 3), (5, 0, 3), (0, 0, 4)] {
        check_all_dtypes(m, n, k, Layout::RowMajor, Layout::RowMajor);
    }
    // k == 0: C must be zeroed, not left as it was.
    let a = Operand::<f64>::new(3, 0, Layout::RowMajor, &mut 1);
    let b = Operand::<f64>::new(0, 4, Layout::RowMajor, &mut 2);
    assert_eq!(run(3, 4, 0, &a, &b, &Serial).unwrap(), vec![0.0; 12]);
}

#[test]
fn zero_strides_broadcast() {
    // A row-broadcast operand (row stride 0), as NumPy's broadcast_to produces.
    let row = [1.5f64, -2.0, 0.25];
    let b: Vec<f64> = (0..12).map(|x| x as f64).collect();
    let mut c = vec![0.0; 2 * 4];
    // SAFETY: A addresses row[0..3] for both rows; B is 3 x 4 row-major.
    unsafe {
        gemm(
            2,
            4,
            3,
            row.as_ptr(),
            0,
            1,
            b.as_ptr(),
            4,
            1,
            &mut c,
            &Serial,
        )
    }
    .unwrap();
    let expect: Vec<f64> = (0..4)
        .map(|j| (0..3).map(|p| row[p] * b[p * 4 + j]).sum())
        .collect();
    assert_eq!(&c[..4], &expect[..]);
    assert_eq!(&c[4..], &expect[..]);
}

#[test]
fn integers_wrap_like_numpy() {
    let a = [i32::MAX, 2, i32::MIN, 3];
    let b = [3, 5, i32::MAX, -1];
    let mut c = [0i32; 4];
    // SAFETY: 2 x 2 row-major operands.
    unsafe { gemm(2, 2, 2, a.as_ptr(), 2, 1, b.as_ptr(), 2, 1, &mut c, &Serial) }.unwrap();
    let w = |x: i32, y: i32| x.wrapping_mul(y);
    assert_eq!(
        c,
        [
            w(a[0], b[0]).wrapping_add(w(a[1], b[2])),
            w(a[0], b[1]).wrapping_add(w(a[1], b[3])),
            w(a[2], b[0]).wrapping_add(w(a[3], b[2])),
            w(a[2], b[1]).wrapping_add(w(a[3], b[3])),
        ]
    );
}

#[test]
fn output_length_mismatch_is_a_value_error() {
    let a = [1.0f32; 6];
    let mut c = [0.0f32; 5];
    // SAFETY: 2 x 3 and 3 x 2 operands inside `a`.
    let err =
        unsafe { gemm(2, 2, 3, a.as_ptr(), 3, 1, a.as_ptr(), 2, 1, &mut c, &Serial) }.unwrap_err();
    assert!(
        matches!(err, KernelError::Value(ref msg) if msg.contains("2 x 2")),
        "{err:?}"
    );
}

/// An executor with `threads` threads that reports cancellation after `polls` checks.
struct TestExec {
    threads: usize,
    polls: AtomicUsize,
    cancel_after: usize,
    woken: AtomicUsize,
}

impl TestExec {
    fn new(threads: usize, cancel_after: usize) -> Self {
        TestExec {
            threads,
            polls: AtomicUsize::new(0),
            cancel_after,
            woken: AtomicUsize::new(0),
        }
    }
}

impl Exec for TestExec {
    fn max_threads(&self) -> usize {
        self.threads
    }
    fn is_cancelled(&self) -> bool {
        self.polls.fetch_add(1, Ordering::Relaxed) >= self.cancel_after
    }
    fn wake_helpers(&self) {
        self.woken.fetch_add(1, Ordering::Relaxed);
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

fn parallel_matches_serial<T: Elem>(m: usize, n: usize, k: usize) {
    let mut seed = 42;
    let a = Operand::<T>::new(m, k, Layout::RowMajor, &mut seed);
    let b = Operand::<T>::new(k, n, Layout::ColMajor, &mut seed);
    let serial = run(m, n, k, &a, &b, &Serial).unwrap();
    let exec = TestExec::new(2, usize::MAX);
    let parallel = pool(2).install(|| run(m, n, k, &a, &b, &exec)).unwrap();
    assert!(
        exec.woken.load(Ordering::Relaxed) > 0,
        "{m}x{n}x{k} did not split"
    );
    // Same kernel and depth blocking per element: results are bitwise equal.
    assert_eq!(serial, parallel);
}

#[test]
fn parallel_equals_serial() {
    // Column strips with A packed by one thread, then by both; row strips.
    for (m, n, k) in [(300, 301, 257), (600, 700, 256), (1100, 90, 200)] {
        parallel_matches_serial::<f32>(m, n, k);
        parallel_matches_serial::<f64>(m, n, k);
        parallel_matches_serial::<i32>(m, n, k);
        parallel_matches_serial::<i64>(m, n, k);
    }
}

#[test]
fn no_split_outside_a_pool_or_with_one_thread() {
    let a = Operand::<f64>::new(300, 300, Layout::RowMajor, &mut 1);
    let exec = TestExec::new(2, usize::MAX);
    run(300, 300, 300, &a, &a, &exec).unwrap();
    assert_eq!(
        exec.woken.load(Ordering::Relaxed),
        0,
        "split on a thread outside any pool"
    );
    let one = TestExec::new(1, usize::MAX);
    pool(2)
        .install(|| run(300, 300, 300, &a, &a, &one))
        .unwrap();
    assert_eq!(
        one.woken.load(Ordering::Relaxed),
        0,
        "split with max_threads() == 1"
    );
}

#[test]
fn cancellation_between_blocks() {
    let a = Operand::<f64>::new(400, 600, Layout::RowMajor, &mut 1);
    let b = Operand::<f64>::new(600, 500, Layout::RowMajor, &mut 2);
    for threads in [1, 2] {
        // Cancelled up front, and cancelled after a few blocks have run.
        for after in [0, 3] {
            let exec = TestExec::new(threads, after);
            let got = pool(2).install(|| run(400, 500, 600, &a, &b, &exec));
            assert_eq!(
                got,
                Err(KernelError::Cancelled),
                "threads {threads}, after {after}"
            );
            assert!(exec.polls.load(Ordering::Relaxed) > after);
        }
    }
}
