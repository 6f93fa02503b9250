//! The one error type every kernel entry point returns.

use std::fmt;

/// Why a kernel call was refused or stopped.
///
/// Each variant maps to one Python exception in the bindings: `Value` to
/// `ValueError`, `Type` to `TypeError`, `Overflow` to `OverflowError`,
/// `Memory` to `MemoryError` and `Cancelled` to the runtime's cancellation
/// error. Messages follow NumPy's
/// wording for the same problem so that users see familiar text.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// Bad shapes, axis, `k`, empty reduction without identity, arity.
    Value(String),
    /// An operand kind the operation does not accept.
    Type(String),
    /// A Python integer that does not fit the array's integer dtype (NEP 50).
    Overflow(String),
    /// An output or scratch buffer of `bytes` bytes that `kernel` needed
    /// could not be allocated (refused before trying when it exceeds
    /// `alloc_limit()`, else refused by the allocator). Nothing was
    /// returned; the process keeps running.
    Memory { kernel: &'static str, bytes: u128 },
    /// The job was cancelled between two chunks of work.
    Cancelled,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Value(m) | KernelError::Type(m) | KernelError::Overflow(m) => {
                f.write_str(m)
            }
            KernelError::Memory { kernel, bytes } => write!(
                f,
                "{kernel}: unable to allocate {bytes} bytes ({:.2} GiB)",
                *bytes as f64 / (1u64 << 30) as f64
            ),
            KernelError::Cancelled => f.write_str("kernel cancelled"),
        }
    }
}

impl std::error::Error for KernelError {}

/// Shorthand for a `ValueError`-kind error.
pub(crate) fn value_error(msg: impl Into<String>) -> KernelError {
    KernelError::Value(msg.into())
}

/// Formats a shape the way NumPy prints tuples: `(3,)`, `(2,3)`, `()`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(","))
        }
    }
}
