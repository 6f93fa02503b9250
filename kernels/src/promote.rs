//! NumPy 2 type promotion (NEP 50) for the four dtypes and weak Python scalars.

use crate::dtype::{DType, Element};
use crate::error::KernelError;
use crate::view::Operand;

/// `np.promote_types` restricted to int32/int64/float32/float64.
pub fn promote_types(a: DType, b: DType) -> DType {
    use DType::*;
    match (a, b) {
        _ if a == b => a,
        (Int32, Int64) | (Int64, Int32) => Int64,
        (Float32, Float64) | (Float64, Float32) => Float64,
        // float32 cannot hold every int32/int64 exactly; NumPy goes to float64.
        _ => Float64,
    }
}

/// How an out-of-range Python int bound meets an integer result dtype.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WeakIntPolicy {
    /// Raise `OverflowError` like NumPy's ufuncs.
    Raise,
    /// Accept: `np.clip` saturates such bounds instead.
    Saturate,
}

/// The result dtype of a ufunc-style call over `operands` (NEP 50: Python
/// scalars are weak and take the arrays' kind unless they force int to float).
pub(crate) fn result_type(
    operands: &[Operand<'_>],
    policy: WeakIntPolicy,
) -> Result<DType, KernelError> {
    let mut strong: Option<DType> = None;
    let mut weak_float = false;
    for op in operands {
        match op {
            Operand::Array(v) => {
                strong = Some(match strong {
                    Some(s) => promote_types(s, v.dtype()),
                    None => v.dtype(),
                })
            }
            Operand::Float(_) => weak_float = true,
            Operand::Int(_) => {}
        }
    }
    let dt = match (strong, weak_float) {
        (Some(s), true) if !s.is_float() => DType::Float64,
        (Some(s), _) => s,
        (None, true) => DType::Float64,
        (None, false) => DType::Int64,
    };
    if dt == DType::Int32 && policy == WeakIntPolicy::Raise {
        for op in operands {
            if let Operand::Int(v) = op {
                if i32::try_from(*v).is_err() {
                    return Err(KernelError::Overflow(format!(
                        "Python integer {v} out of bounds for {}",
                        dt.name()
                    )));
                }
            }
        }
    }
    Ok(dt)
}

/// The dtype a strong (non-NEP 50) use of an operand has: arrays keep
/// theirs, Python ints are int64, Python floats float64 (`np.dot`, reductions).
pub(crate) fn strong_dtype(op: &Operand<'_>) -> DType {
    match op {
        Operand::Array(v) => v.dtype(),
        Operand::Int(_) => DType::Int64,
        Operand::Float(_) => DType::Float64,
    }
}

/// A weak Python int as `T`; saturated into `T`'s range for integer `T`.
pub(crate) fn weak_int<T: Element>(v: i64) -> T {
    if T::DTYPE == DType::Int32 {
        T::from_i64(v.clamp(i32::MIN as i64, i32::MAX as i64))
    } else {
        T::from_i64(v)
    }
}
