//! Operands resolved to one element type: a borrowed view when the dtype
//! already matches, else one converted contiguous copy, or a broadcast scalar.

use crate::dtype::Element;
use crate::error::KernelError;
use crate::promote::{weak_big_int, weak_int};
use crate::view::{ArrayView, Mat, Operand};

/// An operand converted to `T`.
pub(crate) enum Typed<'a, T> {
    View(Mat<'a, T>),
    /// Converted copy in C order: (data, logical ndim, [rows, cols]).
    Owned(Vec<T>, usize, [usize; 2]),
    /// An array of another dtype left unconverted: its user converts it
    /// block by block (see `lazy`). Has no `mat()`.
    Deferred(ArrayView<'a>),
    Scalar(T),
}

impl<'a, T: Element> Typed<'a, T> {
    /// Converts `op` to `T`; Python scalars stay scalars (weak, saturated
    /// for integer `T`: callers have already rejected out-of-range ones
    /// where NumPy raises).
    /// `kernel` names the caller in a `Memory` error of the conversion copy.
    pub fn new(op: &Operand<'a>, kernel: &'static str) -> Result<Self, KernelError> {
        Ok(match op {
            Operand::Int(v) => Typed::Scalar(weak_int::<T>(*v)),
            Operand::BigInt(v) => Typed::Scalar(weak_big_int::<T>(*v)),
            Operand::Float(v) => Typed::Scalar(T::from_f64(*v)),
            Operand::Array(v) => crate::with_dtype!(v.dtype(), S => {
                let m = v.mat::<S>();
                if S::DTYPE == T::DTYPE {
                    // SAFETY: S and T are the same type (sealed Element with equal DTYPE).
                    Typed::View(unsafe { m.retype::<T>() })
                } else {
                    Typed::Owned(m.to_contiguous::<T>(kernel)?.into_owned(), m.ndim, m.shape)
                }
            }),
        })
    }

    /// Like `new`, but an array of another dtype stays `Deferred`.
    pub fn lazy(op: &Operand<'a>) -> Self {
        match op {
            Operand::Array(v) if v.dtype() != T::DTYPE => Typed::Deferred(*v),
            Operand::Array(v) => crate::with_dtype!(v.dtype(), S => {
                // SAFETY: S and T are the same type (sealed Element with equal DTYPE).
                Typed::View(unsafe { v.mat::<S>().retype::<T>() })
            }),
            Operand::Int(v) => Typed::Scalar(weak_int::<T>(*v)),
            Operand::BigInt(v) => Typed::Scalar(weak_big_int::<T>(*v)),
            Operand::Float(v) => Typed::Scalar(T::from_f64(*v)),
        }
    }

    /// The operand as a matrix (a scalar becomes a 0-d one-element view).
    ///
    /// # Panics
    /// On `Deferred`, which callers of `lazy` handle themselves.
    pub fn mat<'s>(&'s self) -> Mat<'s, T>
    where
        'a: 's,
    {
        match self {
            Typed::View(m) => *m,
            Typed::Owned(v, ndim, shape) => Mat::from_contiguous(v, *ndim, shape[0], shape[1]),
            Typed::Scalar(s) => Mat::from_contiguous(std::slice::from_ref(s), 0, 1, 1),
            Typed::Deferred(_) => panic!("a deferred operand has no typed matrix"),
        }
    }
}
