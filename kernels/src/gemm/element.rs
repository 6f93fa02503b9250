//! Element types the GEMM accepts, and the per-type kernel lookup.

use std::any::Any;
use std::sync::OnceLock;

use super::dispatch;
use super::kernel::KernelSpec;
use crate::loops::best_simd_level;
use crate::{DType, Element};

/// An element type [`super::gemm`] supports: every [`Element`]. `f32` and `f64` run SIMD
/// kernels; `i32` and `i64` the portable kernel with wrapping arithmetic, as NumPy's integer
/// matmul.
pub trait GemmElement: Element {}

impl<T: Element> GemmElement for T {}

/// The kernel for `T` at the best SIMD level of this CPU (the one detector,
/// [`best_simd_level`]), selected on first use and cached for the process.
///
/// Not the level `force_simd_level` sets: the microkernels round differently
/// (the portable one does not fuse multiply and add), and the loops' promise
/// that every forced level gives bit-identical answers covers the products
/// that go through the GEMM (batched cosine) too. Each level's microkernel
/// is tested on its own (`dispatch`'s tests).
pub(super) fn spec<T: GemmElement>() -> &'static KernelSpec<T> {
    static F64: OnceLock<KernelSpec<f64>> = OnceLock::new();
    static F32: OnceLock<KernelSpec<f32>> = OnceLock::new();
    static I64: OnceLock<KernelSpec<i64>> = OnceLock::new();
    static I32: OnceLock<KernelSpec<i32>> = OnceLock::new();
    let spec: &'static dyn Any = match T::DTYPE {
        DType::Float64 => F64.get_or_init(|| dispatch::f64_for(best_simd_level())),
        DType::Float32 => F32.get_or_init(|| dispatch::f32_for(best_simd_level())),
        DType::Int64 => I64.get_or_init(dispatch::select_int),
        DType::Int32 => I32.get_or_init(dispatch::select_int),
    };
    spec.downcast_ref()
        .expect("Element::DTYPE names the implementing type")
}
