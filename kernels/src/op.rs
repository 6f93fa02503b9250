//! The operation table (`Op`, `Params`) and the two entry points: `check`
//! (metadata only, before a job is queued) and `run`.

use crate::alloc;
use crate::array::Value;
use crate::dtype::DType;
use crate::error::{shape_str, value_error, KernelError};
use crate::exec::Exec;
use crate::ops;
use crate::promote::{promote_types, result_type, strong_dtype, true_divide_type, WeakIntPolicy};
use crate::view::Operand;

/// Every kernel the library offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Op {
    Dot,
    Matmul,
    Sum,
    Mean,
    Min,
    Max,
    Argmin,
    Argmax,
    Norm,
    Add,
    Subtract,
    Multiply,
    Divide,
    Scale,
    Clip,
    CosineSimilarity,
    Topk,
    CosineTopk,
}

impl Op {
    pub const ALL: [Op; 18] = [
        Op::Dot,
        Op::Matmul,
        Op::Sum,
        Op::Mean,
        Op::Min,
        Op::Max,
        Op::Argmin,
        Op::Argmax,
        Op::Norm,
        Op::Add,
        Op::Subtract,
        Op::Multiply,
        Op::Divide,
        Op::Scale,
        Op::Clip,
        Op::CosineSimilarity,
        Op::Topk,
        Op::CosineTopk,
    ];

    /// The Python-facing name (`"dot"`, `"cosine_similarity"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Dot => "dot",
            Op::Matmul => "matmul",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Min => "min",
            Op::Max => "max",
            Op::Argmin => "argmin",
            Op::Argmax => "argmax",
            Op::Norm => "norm",
            Op::Add => "add",
            Op::Subtract => "subtract",
            Op::Multiply => "multiply",
            Op::Divide => "divide",
            Op::Scale => "scale",
            Op::Clip => "clip",
            Op::CosineSimilarity => "cosine_similarity",
            Op::Topk => "topk",
            Op::CosineTopk => "cosine_topk",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Number of operands: dot 2, sum 1, scale 2 (a, factor), clip 3 (a, lo, hi), topk 1.
    pub fn arity(self) -> usize {
        match self {
            Op::Sum
            | Op::Mean
            | Op::Min
            | Op::Max
            | Op::Argmin
            | Op::Argmax
            | Op::Norm
            | Op::Topk => 1,
            Op::Clip => 3,
            _ => 2,
        }
    }

    /// True for the selections that take `k`.
    pub fn takes_k(self) -> bool {
        matches!(self, Op::Topk | Op::CosineTopk)
    }

    /// True for the ufunc-style ops, where Python scalars are weak (NEP 50);
    /// elsewhere a Python scalar is a 0-d array of its default dtype.
    pub fn promotes_weakly(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Subtract | Op::Multiply | Op::Divide | Op::Scale | Op::Clip
        )
    }

    /// True where NumPy's result for operands that are all bools is a bool
    /// (or, for `subtract`, an error): Raptors has no bool dtype, so such a
    /// call is refused rather than answered as int64.
    pub fn bool_operands_give_bool(self) -> bool {
        matches!(
            self,
            Op::Dot
                | Op::Matmul
                | Op::Add
                | Op::Subtract
                | Op::Multiply
                | Op::Min
                | Op::Max
                | Op::Scale
                | Op::Clip
        )
    }

    /// True for the reductions that take `axis`.
    pub fn takes_axis(self) -> bool {
        matches!(
            self,
            Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm
        )
    }

    /// How the reduction reads `axis` on a 0-d operand, as NumPy does: the
    /// ufunc reductions take axis 0 or -1 as "all", the arg-reductions view
    /// the scalar as 1-d, `mean` and `norm` have no axis to reduce.
    fn scalar_axis(self) -> ScalarAxis {
        match self {
            Op::Sum | Op::Min | Op::Max => ScalarAxis::MeansAll,
            Op::Argmin | Op::Argmax => ScalarAxis::OneDimensional,
            _ => ScalarAxis::Refused,
        }
    }
}

/// See [`Op::scalar_axis`].
enum ScalarAxis {
    MeansAll,
    OneDimensional,
    Refused,
}

/// Optional parameters: `axis` for the reductions (negative counts from the
/// end, as in NumPy), `k` for `topk` and `cosine_topk`.
#[derive(Clone, Copy, Default, Debug)]
pub struct Params {
    pub axis: Option<isize>,
    pub k: Option<usize>,
}

/// Cheap metadata-only validation (shapes, dtypes, axis, k, arity) done before a job is queued.
pub fn check(op: Op, operands: &[Operand<'_>], params: &Params) -> Result<(), KernelError> {
    if operands.len() != op.arity() {
        return Err(KernelError::Type(format!(
            "{}() takes {} operand{} ({} given)",
            op.name(),
            op.arity(),
            if op.arity() == 1 { "" } else { "s" },
            operands.len()
        )));
    }
    if params.axis.is_some() && !op.takes_axis() {
        return Err(KernelError::Type(format!(
            "{}() does not take an axis",
            op.name()
        )));
    }
    if params.k.is_some() && !op.takes_k() {
        return Err(KernelError::Type(format!(
            "{}() does not take k",
            op.name()
        )));
    }
    let name = op.name();
    if !op.promotes_weakly() {
        // A strong use makes a Python int an int64 array, as NumPy would
        // (it makes an object array of a bigger one, which Raptors has not).
        for operand in operands {
            operand.out_of_int64()?;
        }
    }
    match op {
        Op::Dot => {
            let shape = ops::dot::check_dot(&operands[0], &operands[1])?;
            let dt = promote_types(strong_dtype(&operands[0]), strong_dtype(&operands[1]));
            check_output(name, &shape, operands, dt)
        }
        Op::Matmul => {
            let shape = ops::dot::check_matmul(&operands[0], &operands[1])?;
            let dt = promote_types(strong_dtype(&operands[0]), strong_dtype(&operands[1]));
            check_output(name, &shape, operands, dt)
        }
        Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm => {
            ops::reduce::check(op, &operands[0], params.axis).map(|_| ())
        }
        Op::Add | Op::Subtract | Op::Multiply | Op::Divide | Op::Scale => {
            let shape = ops::elementwise::broadcast_shape(operands)?;
            let dt = if op == Op::Divide {
                true_divide_type(operands)?
            } else {
                result_type(operands, WeakIntPolicy::Raise)?
            };
            check_output(name, &shape, operands, dt)
        }
        Op::Clip => {
            let shape = ops::elementwise::broadcast_shape(operands)?;
            let dt = result_type(operands, WeakIntPolicy::Saturate)?;
            check_output(name, &shape, operands, dt)
        }
        Op::CosineSimilarity => {
            let shape = ops::cosine::check(&operands[0], &operands[1])?;
            check_output(name, &shape, operands, DType::Float64)
        }
        Op::Topk => ops::topk::check(&operands[0], params.k).map(|_| ()),
        Op::CosineTopk => {
            ops::cosine_topk::check(&operands[0], &operands[1], params.k)?;
            let shape = ops::cosine::check(&operands[0], &operands[1])?;
            check_output(name, &shape, operands, DType::Float64)
        }
    }
}

/// The output of `kernel` (logical `shape`, dtype `dt`) can exist: its
/// element count must not overflow `usize` (`ValueError` naming the
/// operands' shapes and the output shape) and its bytes must fit one
/// allocation (`Memory`). Checked before anything is allocated or queued;
/// every kernel computes its output size with plain multiplication after
/// this check.
fn check_output(
    kernel: &'static str,
    shape: &[usize],
    operands: &[Operand<'_>],
    dt: DType,
) -> Result<(), KernelError> {
    let Some(n) = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
        let inputs: Vec<String> = operands.iter().map(|o| shape_str(o.shape())).collect();
        return Err(value_error(format!(
            "{kernel}: output shape {} of operands with shapes {} has more elements than fit in memory addresses (the product overflows)",
            shape_str(shape),
            inputs.join(" ")
        )));
    };
    alloc::check_bytes(kernel, n, dt.itemsize())
}

/// Run the kernel. Results follow NumPy 2 dtype (NEP 50) and shape rules for the same call.
pub fn run(
    op: Op,
    operands: &[Operand<'_>],
    params: &Params,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    check(op, operands, params)?;
    match op {
        Op::Dot => ops::dot::dot(&operands[0], &operands[1], exec),
        Op::Matmul => ops::dot::matmul(&operands[0], &operands[1], exec),
        Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm => {
            ops::reduce::reduce(op, &operands[0], params.axis, exec)
        }
        Op::Add => {
            ops::elementwise::binary(ops::elementwise::BinaryOp::Add, operands, op.name(), exec)
        }
        Op::Subtract => ops::elementwise::binary(
            ops::elementwise::BinaryOp::Subtract,
            operands,
            op.name(),
            exec,
        ),
        Op::Multiply | Op::Scale => ops::elementwise::binary(
            ops::elementwise::BinaryOp::Multiply,
            operands,
            op.name(),
            exec,
        ),
        Op::Divide => ops::elementwise::binary(
            ops::elementwise::BinaryOp::Divide,
            operands,
            op.name(),
            exec,
        ),
        Op::Clip => ops::elementwise::clip(operands, exec),
        Op::CosineSimilarity => ops::cosine::cosine_similarity(&operands[0], &operands[1], exec),
        Op::Topk => ops::topk::topk(&operands[0], params.k, exec),
        Op::CosineTopk => ops::cosine_topk::cosine_topk(&operands[0], &operands[1], params.k, exec),
    }
}

/// Resolves `axis` of reduction `op` against `ndim` like NumPy (`AxisError`
/// is a `ValueError`); a 0-d operand follows [`Op::scalar_axis`].
pub(crate) fn normalize_axis(
    op: Op,
    axis: Option<isize>,
    ndim: usize,
) -> Result<Option<usize>, KernelError> {
    let Some(a) = axis else { return Ok(None) };
    let mut ndim = ndim;
    if ndim == 0 {
        match op.scalar_axis() {
            ScalarAxis::MeansAll | ScalarAxis::OneDimensional if a == 0 || a == -1 => {
                return Ok(None)
            }
            ScalarAxis::OneDimensional => ndim = 1,
            ScalarAxis::MeansAll | ScalarAxis::Refused => {}
        }
    }
    let n = ndim as isize;
    if a < -n || a >= n {
        return Err(value_error(format!(
            "axis {a} is out of bounds for array of dimension {ndim}"
        )));
    }
    Ok(Some(if a < 0 { (a + n) as usize } else { a as usize }))
}

/// `shapes (2,3) and (4,) not aligned: 3 (dim 1) != 4 (dim 0)`.
pub(crate) fn not_aligned(a: &[usize], b: &[usize], da: usize, db: usize) -> KernelError {
    value_error(format!(
        "shapes {} and {} not aligned: {} (dim {da}) != {} (dim {db})",
        shape_str(a),
        shape_str(b),
        a[da],
        b[db]
    ))
}
