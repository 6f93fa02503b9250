//! A kernel call is checked once: [`check`] validates the metadata (arity,
//! parameters, shapes, dtypes, output size) and returns a [`Plan`] holding
//! what it resolved (the output shape and dtype, the normalised axis, `k`);
//! [`Plan::execute`] runs the kernel from the plan without validating again.
//! [`run`] is both in one call.
//!
//! A plan is only made by `check`, and it records the operands it was
//! checked for (their kind, dtype and shape: a few words). `execute` on other
//! operands is refused with a `TypeError` rather than trusted: the kernels
//! size their outputs from the plan.

use crate::alloc;
use crate::array::Value;
use crate::dtype::DType;
use crate::error::{shape_str, value_error, KernelError};
use crate::exec::Exec;
use crate::op::{Op, Params};
use crate::ops;
use crate::ops::elementwise::BinaryOp;
use crate::promote::{promote_types, result_type, strong_dtype, true_divide_type, WeakIntPolicy};
use crate::view::{Operand, MAX_NDIM};

/// The most operands an operation takes (`clip`).
const MAX_OPERANDS: usize = 3;

/// What a plan records of one operand: enough to tell it from any other
/// operand a kernel could be handed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct OperandKey {
    /// `None` for a Python scalar, whose kind is `scalar`.
    dtype: Option<DType>,
    scalar: u8,
    ndim: u8,
    dims: [usize; MAX_NDIM],
}

impl OperandKey {
    fn of(operand: &Operand<'_>) -> OperandKey {
        let (dtype, scalar) = match operand {
            Operand::Array(v) => (Some(v.dtype()), 0),
            Operand::Int(_) => (None, 1),
            Operand::BigInt(_) => (None, 2),
            Operand::Float(_) => (None, 3),
        };
        let shape = operand.shape();
        let mut dims = [0; MAX_NDIM];
        dims[..shape.len()].copy_from_slice(shape);
        OperandKey {
            dtype,
            scalar,
            ndim: shape.len() as u8,
            dims,
        }
    }
}

/// A checked kernel call: made by [`check`], consumed by [`Plan::execute`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    op: Op,
    /// The output's logical shape (`[]` for a reduction to a scalar, and
    /// unused by the reductions and `topk`, which size their own outputs).
    shape: Vec<usize>,
    /// The result dtype of `dot`, `matmul`, the element-wise ops and `clip`.
    dtype: DType,
    /// The normalised axis of a reduction.
    axis: Option<usize>,
    /// `k` of `topk` and `cosine_topk`.
    k: usize,
    operands: [OperandKey; MAX_OPERANDS],
}

impl Plan {
    pub fn op(&self) -> Op {
        self.op
    }

    /// Runs the kernel on `operands`, which must be the ones `check` saw.
    /// Results follow NumPy 2 dtype (NEP 50) and shape rules for the call.
    pub fn execute(&self, operands: &[Operand<'_>], exec: &dyn Exec) -> Result<Value, KernelError> {
        if operands.len() != self.op.arity() || keys(operands) != self.operands {
            return Err(KernelError::Type(format!(
                "{}(): the operands differ from the ones the call was checked with",
                self.op.name()
            )));
        }
        let shape = self.shape.clone();
        let dt = self.dtype;
        let name = self.op.name();
        match self.op {
            Op::Dot => ops::dot::dot(&operands[0], &operands[1], shape, dt, exec),
            Op::Matmul => ops::dot::matmul(&operands[0], &operands[1], shape, dt, exec),
            Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm => {
                ops::reduce::reduce(self.op, &operands[0], self.axis, exec)
            }
            Op::Add => ops::elementwise::binary(BinaryOp::Add, operands, shape, dt, name, exec),
            Op::Subtract => {
                ops::elementwise::binary(BinaryOp::Subtract, operands, shape, dt, name, exec)
            }
            Op::Multiply | Op::Scale => {
                ops::elementwise::binary(BinaryOp::Multiply, operands, shape, dt, name, exec)
            }
            Op::Divide => {
                ops::elementwise::binary(BinaryOp::Divide, operands, shape, dt, name, exec)
            }
            Op::Clip => ops::elementwise::clip(operands, shape, dt, exec),
            Op::CosineSimilarity => {
                ops::cosine::cosine_similarity(&operands[0], &operands[1], exec)
            }
            Op::Topk => ops::topk::topk(&operands[0], self.k, exec),
            Op::CosineTopk => {
                ops::cosine_topk::cosine_topk(&operands[0], &operands[1], self.k, exec)
            }
        }
    }
}

fn keys(operands: &[Operand<'_>]) -> [OperandKey; MAX_OPERANDS] {
    let mut keys = [OperandKey::default(); MAX_OPERANDS];
    for (key, operand) in keys.iter_mut().zip(operands) {
        *key = OperandKey::of(operand);
    }
    keys
}

/// Validates a call from its metadata alone (nothing is read or allocated),
/// before a job is queued; the errors are NumPy's.
pub fn check(op: Op, operands: &[Operand<'_>], params: &Params) -> Result<Plan, KernelError> {
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
    let mut plan = Plan {
        op,
        shape: Vec::new(),
        dtype: DType::Float64,
        axis: None,
        k: 0,
        operands: keys(operands),
    };
    match op {
        Op::Dot | Op::Matmul => {
            let (a, b) = (&operands[0], &operands[1]);
            plan.shape = if op == Op::Dot {
                ops::dot::check_dot(a, b)?
            } else {
                ops::dot::check_matmul(a, b)?
            };
            plan.dtype = promote_types(strong_dtype(a), strong_dtype(b));
            check_output(name, &plan.shape, operands, plan.dtype)?;
        }
        Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Argmin | Op::Argmax | Op::Norm => {
            plan.axis = ops::reduce::check(op, &operands[0], params.axis)?;
        }
        Op::Add | Op::Subtract | Op::Multiply | Op::Divide | Op::Scale | Op::Clip => {
            plan.shape = ops::elementwise::broadcast_shape(operands)?;
            plan.dtype = match op {
                Op::Divide => true_divide_type(operands)?,
                Op::Clip => result_type(operands, WeakIntPolicy::Saturate)?,
                _ => result_type(operands, WeakIntPolicy::Raise)?,
            };
            check_output(name, &plan.shape, operands, plan.dtype)?;
        }
        Op::CosineSimilarity => {
            plan.shape = ops::cosine::check(&operands[0], &operands[1])?;
            check_output(name, &plan.shape, operands, DType::Float64)?;
        }
        Op::Topk => plan.k = ops::topk::check(&operands[0], params.k)?,
        Op::CosineTopk => {
            plan.k = ops::cosine_topk::check(&operands[0], &operands[1], params.k)?;
            plan.shape = ops::cosine::check(&operands[0], &operands[1])?;
            check_output(name, &plan.shape, operands, DType::Float64)?;
        }
    }
    Ok(plan)
}

/// [`check`], then [`Plan::execute`]: a kernel call in one step.
pub fn run(
    op: Op,
    operands: &[Operand<'_>],
    params: &Params,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    check(op, operands, params)?.execute(operands, exec)
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
