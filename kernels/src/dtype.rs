//! Element types: the `DType` tag, the `Element` trait that makes every kernel
//! generic over it, and the single dispatch macro that monomorphises a generic
//! kernel for the dtype found at run time.

use crate::array::{Buffer, Scalar};
use std::fmt::Debug;

/// The element types kernels accept and produce.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DType {
    Int32,
    Int64,
    Float32,
    Float64,
}

impl DType {
    /// NumPy's name for the dtype (`"int32"`, `"float64"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }

    /// Parses a NumPy dtype name; `None` when the name is not one of the four.
    pub fn from_name(name: &str) -> Option<DType> {
        match name {
            "int32" => Some(DType::Int32),
            "int64" => Some(DType::Int64),
            "float32" => Some(DType::Float32),
            "float64" => Some(DType::Float64),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::Int32 | DType::Float32 => 4,
            DType::Int64 | DType::Float64 => 8,
        }
    }

    /// True for `float32` and `float64`.
    pub fn is_float(self) -> bool {
        matches!(self, DType::Float32 | DType::Float64)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A machine element type a kernel can be instantiated for.
///
/// Integer arithmetic wraps (NumPy's behaviour); float arithmetic is IEEE.
/// Sealed: exactly `i32`, `i64`, `f32`, `f64`.
pub trait Element:
    Copy + Send + Sync + 'static + PartialOrd + Debug + Default + sealed::Sealed
{
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Type that `np.sum` accumulates and returns (int32 sums are int64 on Linux).
    type Sum: Element;

    /// Wrapping for integers.
    fn add(self, other: Self) -> Self;
    /// Wrapping for integers.
    fn sub(self, other: Self) -> Self;
    /// Wrapping for integers.
    fn mul(self, other: Self) -> Self;
    /// Value as `f64` (`as` conversion: exact for all but huge int64).
    fn to_f64(self) -> f64;
    /// Value as `i64` (`as` conversion; only used for integer to integer casts).
    fn to_i64(self) -> i64;
    /// `as` conversion from `f64` (used for float destinations).
    fn from_f64(v: f64) -> Self;
    /// `as` conversion from `i64` (wrapping for `i32`).
    fn from_i64(v: i64) -> Self;
    /// Widening conversion into the sum type.
    fn to_sum(self) -> Self::Sum;
    /// True only for a float NaN.
    fn is_nan(self) -> bool;
    /// Wraps a vector in the matching `Buffer` variant.
    fn into_buffer(v: Vec<Self>) -> Buffer;
    /// Wraps a value in the matching `Scalar` variant.
    fn into_scalar(self) -> Scalar;
    /// The buffer's elements when it holds this type.
    fn buffer_slice(b: &Buffer) -> Option<&[Self]>;
}

/// Floating-point elements: what division, `mean`, `norm` and cosine need.
pub trait Float: Element<Sum = Self> {
    /// Quiet NaN.
    const NAN: Self;
    fn div(self, other: Self) -> Self;
    fn sqrt(self) -> Self;
}

/// Converts one element between dtypes the way NumPy's `astype` does for the
/// casts promotion can require (int to wider int, anything to float).
#[inline(always)]
pub fn cast<S: Element, D: Element>(s: S) -> D {
    if D::DTYPE.is_float() {
        D::from_f64(s.to_f64())
    } else {
        D::from_i64(s.to_i64())
    }
}

/// The `Element` items every dtype shares: `as` casts and the `Buffer` /
/// `Scalar` variant of the type.
macro_rules! element_conversions {
    ($t:ty, $variant:ident) => {
        #[inline(always)]
        fn to_f64(self) -> f64 {
            self as f64
        }
        #[inline(always)]
        fn to_i64(self) -> i64 {
            self as i64
        }
        #[inline(always)]
        fn from_f64(v: f64) -> Self {
            v as $t
        }
        #[inline(always)]
        fn from_i64(v: i64) -> Self {
            v as $t
        }
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::$variant(v)
        }
        fn into_scalar(self) -> Scalar {
            Scalar::$variant(self)
        }
        fn buffer_slice(b: &Buffer) -> Option<&[Self]> {
            match b {
                Buffer::$variant(v) => Some(v),
                _ => None,
            }
        }
    };
}

macro_rules! impl_int {
    ($t:ty, $dt:ident, $variant:ident, $sum:ty) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            const ZERO: Self = 0;
            const ONE: Self = 1;
            type Sum = $sum;
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn to_sum(self) -> $sum {
                self as $sum
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                false
            }
            element_conversions!($t, $variant);
        }
    };
}

macro_rules! impl_float {
    ($t:ty, $dt:ident, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            type Sum = $t;
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn to_sum(self) -> $t {
                self
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                self != self
            }
            element_conversions!($t, $variant);
        }

        impl Float for $t {
            const NAN: Self = <$t>::NAN;
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    };
}

impl_int!(i32, Int32, I32, i64);
impl_int!(i64, Int64, I64, i64);
impl_float!(f32, Float32, F32);
impl_float!(f64, Float64, F64);

/// Runs `$body` with `$T` bound to the Rust type of the runtime dtype `$dt`.
///
/// The one place where a generic kernel is monomorphised per dtype.
#[macro_export]
macro_rules! with_dtype {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::Int32 => {
                type $T = i32;
                $body
            }
            $crate::DType::Int64 => {
                type $T = i64;
                $body
            }
            $crate::DType::Float32 => {
                type $T = f32;
                $body
            }
            $crate::DType::Float64 => {
                type $T = f64;
                $body
            }
        }
    };
}

/// Like `with_dtype!` for the two float dtypes; `$dt` must be a float dtype.
macro_rules! with_float_dtype {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::Float32 => {
                type $T = f32;
                $body
            }
            _ => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use with_float_dtype;
