//! Matrix multiplication `C = A * B` for `f32`, `f64` (packed, cache-blocked, SIMD microkernels
//! chosen at run time: AVX-512F, else AVX2+FMA, else portable) and `i32`, `i64` (portable kernel,
//! wrapping arithmetic).
//!
//! Structure: `matrix` describes the operands, `pack` copies blocks into micro-panel order,
//! `driver` runs the blocked loop nest on one thread, `parallel` splits the output across the
//! current rayon pool, `dispatch` picks a `kernel::KernelSpec` per type, once per process, for the best SIMD
//! level the one detector (`loops::best_simd_level`) finds, from the ISA-specific microkernels
//! (`avx512`, `avx2`, `scalar`).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod driver;
mod element;
mod kernel;
mod matrix;
mod pack;
mod parallel;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;
mod workspace;

pub use element::GemmElement;

/// The microkernel the GEMM uses for `T` (`"avx512f"`, `"avx2+fma"`, `"scalar"`): the best
/// level's, whatever `force_simd_level` set.
pub fn kernel_name<T: GemmElement>() -> &'static str {
    element::spec::<T>().isa
}

use crate::{Exec, KernelError};
use matrix::{Output, Problem, Strided};

/// `C = A * B`: C is `m x n`, row-major and contiguous (overwritten); A is `m x k` with element
/// `(i, p)` at `a + i * rsa + p * csa`; B is `k x n` with element `(p, j)` at `b + p * rsb + j *
/// csb`. Strides are in elements and may be negative or zero, so transposed and strided views are
/// used in place without copies.
///
/// Splits across the current rayon pool when `exec.max_threads() > 1`, the caller runs on one of
/// that pool's threads and the product is large enough; calls `exec.wake_helpers()` before
/// splitting. Checks `exec.is_cancelled()` between blocks and then returns
/// [`KernelError::Cancelled`] (C is left partly written).
///
/// Errors: [`KernelError::Value`] if `c.len() != m * n`.
///
/// # Safety
/// When `m`, `n` and `k` are all non-zero, every element of A and B addressed by the shapes and
/// strides must be valid for reads for the duration of the call, properly aligned, and must not
/// overlap `c`.
#[allow(clippy::too_many_arguments)] // the BLAS-style signature the kernels crate calls
pub unsafe fn gemm<T: GemmElement>(
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    c: &mut [T],
    exec: &dyn Exec,
) -> Result<(), KernelError> {
    if m.checked_mul(n) != Some(c.len()) {
        return Err(KernelError::Value(format!(
            "gemm output holds {} elements, expected {m} x {n}",
            c.len()
        )));
    }
    let p = Problem {
        m,
        n,
        k,
        a: Strided {
            ptr: a,
            rs: rsa,
            cs: csa,
        },
        b: Strided {
            ptr: b,
            rs: rsb,
            cs: csb,
        },
        c: Output::new(c, n),
    };
    let spec = element::spec::<T>();
    match parallel::threads_for(&p, exec) {
        1 => driver::run(spec, p, exec),
        threads => parallel::run(spec, p, threads, exec),
    }
}

/// Name of the instruction set `gemm::<T>` uses on this CPU (`"avx512f"`, `"avx2+fma"` or
/// `"scalar"`).
pub fn isa<T: GemmElement>() -> &'static str {
    element::spec::<T>().isa
}
