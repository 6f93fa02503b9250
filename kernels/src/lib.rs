//! raptors-kernels: dtype-generic array kernels with NumPy 2 semantics
//! (values, result dtypes and shapes, NEP 50 promotion, NaN and empty-input
//! rules), fast loops with runtime CPU-feature dispatch, optional splitting
//! across the caller's rayon pool and cooperative cancellation.
//!
//! Entry points: [`check`] (metadata only) returns a [`Plan`] that
//! [`Plan::execute`] runs; [`run`] is both. See `docs/kernels.md`.

mod alloc;
mod array;
mod dtype;
mod error;
mod exec;
pub mod gemm;
mod loops;
mod op;
mod ops;
mod plan;
mod promote;
mod view;

pub use alloc::alloc_limit;
pub use array::{Array, Buffer, Scalar, Value};
pub use dtype::{cast, DType, Element, Float};
pub use error::KernelError;
pub use exec::{Exec, Serial};
pub use loops::{force_simd_level, simd_level, SimdLevel};
pub use op::{Op, Params};
pub use plan::{check, run, Plan};
pub use promote::promote_types;
pub use view::{ArrayView, Operand, MAX_NDIM};
