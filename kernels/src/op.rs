//! The operation table (`Op`, `Params`): names, arity, parameters and the
//! per-operation rules the checks in [`plan`](crate::plan) consult.

use crate::error::{shape_str, value_error, KernelError};

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
