//! Splitting across a rayon pool, cancellation between chunks, and the
//! SIMD dispatch levels all giving the same answers.

mod common;
use common::*;
use raptors_kernels::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An Exec that reports `threads` and cancels after `polls_before_cancel` polls.
struct TestExec {
    threads: usize,
    polls: AtomicUsize,
    cancel_after: usize,
    wakes: AtomicUsize,
}

impl TestExec {
    fn new(threads: usize, cancel_after: usize) -> Self {
        TestExec {
            threads,
            polls: AtomicUsize::new(0),
            cancel_after,
            wakes: AtomicUsize::new(0),
        }
    }
}

impl Exec for TestExec {
    fn max_threads(&self) -> usize {
        self.threads
    }
    fn is_cancelled(&self) -> bool {
        self.polls.fetch_add(1, Ordering::SeqCst) >= self.cancel_after
    }
    fn wake_helpers(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

fn big_cases() -> Vec<(Op, Vec<Case>, Params)> {
    let n = 3_000_000;
    let f = |dt| Case::new(dt, &values(n, 4, false), &[n], Layout::C);
    let m = |dt| Case::new(dt, &values(n, 5, false), &[n / 1000, 1000], Layout::C);
    let q = |dt| Case::new(dt, &values(1000, 6, false), &[1000], Layout::C);
    vec![
        (Op::Sum, vec![f(DType::Float32)], Params::default()),
        (
            Op::Sum,
            vec![m(DType::Float64)],
            Params {
                axis: Some(0),
                k: None,
            },
        ),
        (Op::Mean, vec![f(DType::Int32)], Params::default()),
        (
            Op::Norm,
            vec![m(DType::Float32)],
            Params {
                axis: Some(1),
                k: None,
            },
        ),
        (Op::Argmax, vec![f(DType::Float64)], Params::default()),
        (Op::Min, vec![f(DType::Int64)], Params::default()),
        (
            Op::Dot,
            vec![f(DType::Float64), f(DType::Float64)],
            Params::default(),
        ),
        (
            Op::Dot,
            vec![m(DType::Float32), q(DType::Float32)],
            Params::default(),
        ),
        (
            Op::Add,
            vec![f(DType::Float64), f(DType::Float64)],
            Params::default(),
        ),
        (
            Op::Subtract,
            vec![f(DType::Int32), f(DType::Int32)],
            Params::default(),
        ),
        (
            Op::Multiply,
            vec![m(DType::Float32), q(DType::Float32)],
            Params::default(),
        ),
        (
            Op::CosineSimilarity,
            vec![m(DType::Float32), q(DType::Float32)],
            Params::default(),
        ),
    ]
}

#[test]
fn parallel_split_is_bit_identical_to_serial() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (op, cases, params) in big_cases() {
        let ops: Vec<Operand<'_>> = cases.iter().map(|c| c.op()).collect();
        let serial = run(op, &ops, &params, &Serial).unwrap();
        let exec = TestExec::new(2, usize::MAX);
        let par = pool.install(|| run(op, &ops, &params, &exec)).unwrap();
        assert_eq!(serial, par, "{}", op.name());
        assert!(
            exec.wakes.load(Ordering::SeqCst) >= 1,
            "{} did not split",
            op.name()
        );
        // Outside a pool thread the kernel must not split even if allowed threads.
        let outside = TestExec::new(2, usize::MAX);
        assert_eq!(run(op, &ops, &params, &outside).unwrap(), serial);
        assert_eq!(
            outside.wakes.load(Ordering::SeqCst),
            0,
            "{} split outside a pool",
            op.name()
        );
    }
}

#[test]
fn cancellation_is_observed_between_chunks() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (op, cases, params) in big_cases() {
        let ops: Vec<Operand<'_>> = cases.iter().map(|c| c.op()).collect();
        // Serial: polls happen between chunks, and a cancel stops the kernel.
        let watch = TestExec::new(1, usize::MAX);
        run(op, &ops, &params, &watch).unwrap();
        let polls = watch.polls.load(Ordering::SeqCst);
        assert!(polls > 2, "{} polled {polls} times", op.name());
        let cancel = TestExec::new(1, polls / 2);
        assert_eq!(
            run(op, &ops, &params, &cancel),
            Err(KernelError::Cancelled),
            "{}",
            op.name()
        );
        let par = TestExec::new(2, 3);
        assert_eq!(
            pool.install(|| run(op, &ops, &params, &par)),
            Err(KernelError::Cancelled),
            "{}",
            op.name()
        );
    }
}
