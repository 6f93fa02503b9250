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
    /// `clip(a, lo, hi)` bounds, as `np.clip` takes them: a bound beyond the
    /// range of `a`'s integer dtype on the side where it never clips (`lo`
    /// at or below its minimum, `hi` at or above its maximum) is no bound and
    /// saturates; any other bound the result dtype cannot hold raises.
    Saturate,
}

/// The result dtype of a ufunc-style call over `operands` (NEP 50: Python
/// scalars are weak and take the arrays' kind unless they force int to float),
/// with its Python ints checked against it (see [`check_weak_ints`]).
pub(crate) fn result_type(
    operands: &[Operand<'_>],
    policy: WeakIntPolicy,
) -> Result<DType, KernelError> {
    let dt = promoted(operands);
    check_weak_ints(operands, dt, policy)?;
    Ok(dt)
}

/// `result_type` of a true division: integer results become float64, as in
/// NumPy, before the Python ints are checked (so `int32 / 2**40` is fine).
pub(crate) fn true_divide_type(operands: &[Operand<'_>]) -> Result<DType, KernelError> {
    let dt = match promoted(operands) {
        dt if dt.is_float() => dt,
        _ => DType::Float64,
    };
    check_weak_ints(operands, dt, WeakIntPolicy::Raise)?;
    Ok(dt)
}

fn promoted(operands: &[Operand<'_>]) -> DType {
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
            Operand::Int(_) | Operand::BigInt(_) => {}
        }
    }
    match (strong, weak_float) {
        (Some(s), true) if !s.is_float() => DType::Float64,
        (Some(s), _) => s,
        (None, true) => DType::Float64,
        (None, false) => DType::Int64,
    }
}

/// NumPy's `OverflowError` for a Python int the integer loop dtype `dt`
/// cannot hold; under `Saturate` (`clip` bounds) the ints that are no bound
/// are skipped here and clamped later.
fn check_weak_ints(
    operands: &[Operand<'_>],
    dt: DType,
    policy: WeakIntPolicy,
) -> Result<(), KernelError> {
    if dt.is_float() {
        return Ok(());
    }
    for (position, op) in operands.iter().enumerate() {
        if policy == WeakIntPolicy::Saturate && clip_bound_is_unbounded(operands, position) {
            continue;
        }
        op.out_of_int64()?;
        if let (Operand::Int(v), DType::Int32) = (op, dt) {
            if i32::try_from(*v).is_err() {
                return Err(KernelError::Overflow(format!(
                    "Python integer {v} out of bounds for {}",
                    dt.name()
                )));
            }
        }
    }
    Ok(())
}

/// `np.clip`'s `_clip`: for an integer `a`, a Python int lower bound at or
/// below the minimum of `a`'s dtype (an upper bound at or above its maximum)
/// never clips and is dropped before NumPy's ufunc sees it.
fn clip_bound_is_unbounded(operands: &[Operand<'_>], position: usize) -> bool {
    if position == 0 {
        return false;
    }
    let (min, max): (i128, i128) = match operands.first() {
        Some(Operand::Array(a)) if a.dtype() == DType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        Some(Operand::Array(a)) if a.dtype() == DType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        Some(Operand::Int(_)) => (i64::MIN.into(), i64::MAX.into()),
        _ => return false,
    };
    let lower = position == 1;
    match &operands[position] {
        Operand::Int(v) if lower => i128::from(*v) <= min,
        Operand::Int(v) => i128::from(*v) >= max,
        // Beyond int64, so beyond either integer dtype's range.
        Operand::BigInt(v) if lower => *v < 0.0,
        Operand::BigInt(v) => *v > 0.0,
        _ => false,
    }
}

/// The dtype a strong (non-NEP 50) use of an operand has: arrays keep
/// theirs, Python ints are int64, Python floats float64 (`np.dot`, reductions).
pub(crate) fn strong_dtype(op: &Operand<'_>) -> DType {
    match op {
        Operand::Array(v) => v.dtype(),
        Operand::Int(_) | Operand::BigInt(_) => DType::Int64,
        Operand::Float(_) => DType::Float64,
    }
}

/// A Python int outside int64 as `T`: its float value, or saturated into
/// `T`'s range for integer `T` (only `clip` bounds get here).
pub(crate) fn weak_big_int<T: Element>(v: f64) -> T {
    if T::DTYPE.is_float() {
        T::from_f64(v)
    } else if v > 0.0 {
        weak_int::<T>(i64::MAX)
    } else {
        weak_int::<T>(i64::MIN)
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
