//! `rp.dot`, `rp.sum`, ...: kernel objects. Called directly they compute at
//! once (GIL released); passed to `submit` they run on a pool worker. Either
//! way the arguments are bound and checked here, on the caller's thread, so
//! bad input raises before anything is queued.

use std::panic::{self, AssertUnwindSafe};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyTuple};
use raptors_kernels::{DType, Exec, KernelError, Op, Operand, Params, Plan, Serial};
use smallvec::SmallVec;

use crate::convert::{self, HeldOperand, KernelOutput};
use crate::errors;
use crate::gil;

#[derive(Clone, Copy)]
enum KernelKind {
    Op(Op),
    /// Panics inside the kernel: lets tests prove a panic becomes an error.
    TestPanic,
}

/// Argument names of an operation: the operands, then the named parameters.
struct Signature {
    operands: &'static [&'static str],
    axis: bool,
    k: bool,
}

fn signature(op: Op) -> Signature {
    use Op::*;
    let (operands, axis, k): (&'static [&'static str], bool, bool) = match op {
        Dot | Matmul | Add | Subtract | Multiply | Divide => (&["a", "b"], false, false),
        Sum | Mean | Min | Max | Argmin | Argmax | Norm => (&["a"], true, false),
        Scale => (&["a", "factor"], false, false),
        Clip => (&["a", "lo", "hi"], false, false),
        CosineSimilarity => (&["matrix", "query"], false, false),
        Topk => (&["values"], false, true),
        CosineTopk => (&["matrix", "query"], false, true),
    };
    Signature { operands, axis, k }
}

/// A kernel call with its arguments converted and checked once (its
/// [`Plan`]), ready to run on any thread.
pub struct PreparedKernel {
    /// `None`: the test kernel that panics.
    plan: Option<Plan>,
    /// The kernels' views of `operands`, built once in `prepare`. Declared
    /// first so they are dropped first; they point into memory that
    /// `operands` keep alive and are only lent out while `self` lives.
    views: SmallVec<[Operand<'static>; 3]>,
    operands: Vec<HeldOperand>,
    as_rp_array: bool,
}

impl PreparedKernel {
    pub fn elements(&self) -> usize {
        self.operands.iter().map(HeldOperand::elements).sum()
    }

    /// Runs the kernel; the output carries the inputs back (see [`KernelOutput`]).
    pub fn run(self, exec: &dyn Exec) -> Result<KernelOutput, KernelError> {
        let value = self.execute(exec)?;
        Ok(self.output(value))
    }

    /// Runs the kernel, borrowing the prepared call (a direct call does not
    /// move it, a few hundred bytes, into the GIL and unwind closures).
    fn execute(&self, exec: &dyn Exec) -> Result<raptors_kernels::Value, KernelError> {
        let Some(plan) = &self.plan else {
            panic!("the test kernel panicked on purpose")
        };
        plan.execute(&self.views, exec)
    }

    fn output(self, value: raptors_kernels::Value) -> KernelOutput {
        KernelOutput {
            value,
            as_rp_array: self.as_rp_array,
            inputs: self.operands,
        }
    }
}

#[pyclass(frozen, module = "raptors", name = "Kernel")]
pub struct Kernel {
    kind: KernelKind,
    name: &'static str,
}

impl Kernel {
    pub fn new(op: Op) -> Kernel {
        Kernel {
            kind: KernelKind::Op(op),
            name: op.name(),
        }
    }

    pub fn test_panic() -> Kernel {
        Kernel {
            kind: KernelKind::TestPanic,
            name: "_test_panic_kernel",
        }
    }

    /// Binds and checks the call's arguments (NumPy's errors, before queueing).
    pub fn prepare(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PreparedKernel> {
        let op = match self.kind {
            KernelKind::Op(op) => op,
            KernelKind::TestPanic => {
                return Ok(PreparedKernel {
                    plan: None,
                    views: SmallVec::new(),
                    operands: Vec::new(),
                    as_rp_array: false,
                })
            }
        };
        let sig = signature(op);
        let mut names: SmallVec<[&'static str; 4]> = SmallVec::from_slice(sig.operands);
        if sig.k {
            names.push("k");
        }
        if sig.axis {
            names.push("axis");
        }
        let bound = bind_arguments(
            self.name,
            &names,
            sig.operands.len() + usize::from(sig.k),
            args,
            kwargs,
        )?;
        let mut as_rp_array = false;
        let mut operands: Vec<HeldOperand> = Vec::with_capacity(sig.operands.len());
        // np.clip takes None for a missing bound: no limit on that side. The
        // stand-in is chosen once every given operand is known, because it
        // depends on the result dtype (a float bound on an int array).
        let mut missing_bounds: SmallVec<[usize; 2]> = SmallVec::new();
        for (position, value) in bound[..sig.operands.len()].iter().enumerate() {
            let value = value.as_ref().expect("required operands are bound");
            let held = match (op, position) {
                (Op::Clip, 1 | 2) if value.is_none() => {
                    missing_bounds.push(position);
                    HeldOperand::Int(0)
                }
                (Op::Clip, 0) => convert::hold_strong(py, value, &mut as_rp_array)?,
                // np.dot finds the operands' dtype in order: an empty list or
                // tuple after the first operand has none of its own and takes
                // the first's (`np.dot(int32_array, [])` is int32).
                (Op::Dot, 1) if convert::is_empty_sequence(py, value)? => {
                    match operands[0].strong_dtype() {
                        Some(dtype) => convert::hold_as(py, value, dtype)?,
                        None => convert::hold(py, value, &mut as_rp_array)?,
                    }
                }
                _ => convert::hold(py, value, &mut as_rp_array)?,
            };
            operands.push(held);
        }
        // np.dot reads a Python bool as a bool array, whose dtype gives way to
        // the other operand's (np.dot(float32_array, True) is float32).
        if op == Op::Dot {
            for (position, other) in [(0, 1), (1, 0)] {
                if let (HeldOperand::Bool(_), Some(dtype)) =
                    (&operands[position], operands[other].strong_dtype())
                {
                    let value = bound[position].as_ref().expect("dot operands are bound");
                    operands[position] = convert::hold_as(py, value, dtype)?;
                }
            }
        }
        if !missing_bounds.is_empty() {
            let given = || {
                operands
                    .iter()
                    .enumerate()
                    .filter(|(position, _)| !missing_bounds.contains(position))
                    .map(|(_, held)| held)
            };
            let result = if given().any(is_float) {
                DType::Float64
            } else if given().any(|held| held.dtype() == Some(DType::Int64)) {
                DType::Int64
            } else {
                operands[0].dtype().unwrap_or(DType::Int64)
            };
            for &position in &missing_bounds {
                operands[position] = unbounded(result, position == 1);
            }
        }
        let mut params = Params::default();
        let mut rest = bound[sig.operands.len()..].iter();
        if sig.k {
            let k = rest.next().and_then(Option::as_ref).expect("k is required");
            params.k = Some(non_negative_int(k, "k")?);
        }
        if sig.axis {
            if let Some(axis) = rest
                .next()
                .and_then(Option::as_ref)
                .filter(|a| !a.is_none())
            {
                params.axis = Some(integer(axis, "axis")?);
            }
        }
        // A missing clip bound (None) is no operand: np.clip(False, False, None) is a bool.
        if op.bool_operands_give_bool()
            && operands
                .iter()
                .enumerate()
                .filter(|(position, _)| !missing_bounds.contains(position))
                .all(|(_, held)| matches!(held, HeldOperand::Bool(_)))
        {
            return Err(PyTypeError::new_err(format!(
                "{}() of Python bools: NumPy's result is bool, an unsupported dtype \
                 (Raptors kernels take float32, float64, int32 and int64); pass ints",
                self.name
            )));
        }
        let checked = views(&operands)
            .and_then(|views| Ok((raptors_kernels::check(op, &views, &params)?, views)));
        let (plan, views) = checked.map_err(|err| errors::kernel_error(py, err))?;
        Ok(PreparedKernel {
            plan: Some(plan),
            views,
            operands,
            as_rp_array,
        })
    }
}

/// Whether `held` makes a binary result floating point: a float array or a
/// Python float.
fn is_float(held: &HeldOperand) -> bool {
    match held.dtype() {
        Some(dtype) => matches!(dtype, DType::Float32 | DType::Float64),
        None => matches!(held, HeldOperand::Float(_)),
    }
}

/// The bound that never clips a result of dtype `result` (any float: -inf
/// or +inf; an integer: its lowest or highest value). Both are weak Python
/// scalars, so they never change the result dtype.
fn unbounded(result: DType, lower: bool) -> HeldOperand {
    let integer_bound = |min: i64, max: i64| HeldOperand::Int(if lower { min } else { max });
    match result {
        DType::Float32 | DType::Float64 => HeldOperand::Float(if lower {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }),
        DType::Int32 => integer_bound(i32::MIN.into(), i32::MAX.into()),
        DType::Int64 => integer_bound(i64::MIN, i64::MAX),
    }
}

/// The kernels' views of held operands (at most three: no heap allocation),
/// unbounded: valid while `operands` live (see `PreparedKernel::views`).
fn views(operands: &[HeldOperand]) -> Result<SmallVec<[Operand<'static>; 3]>, KernelError> {
    let mut views = SmallVec::new();
    for held in operands {
        views.push(held.operand_unbounded()?);
    }
    Ok(views)
}

fn integer(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<isize> {
    if value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be an integer, not bool"
        )));
    }
    // numpy integers implement __index__; floats do not.
    let index = value.call_method0("__index__").map_err(|_| {
        PyTypeError::new_err(format!(
            "{argument} must be an integer, not {}",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    index.extract::<isize>()
}

fn non_negative_int(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<usize> {
    let n = if value.is_exact_instance_of::<PyInt>() {
        value.extract::<isize>()?
    } else {
        integer(value, argument)?
    };
    usize::try_from(n)
        .map_err(|_| PyValueError::new_err(format!("{argument} must be >= 1, got {n}")))
}

/// Python's argument binding for `name(*names)`, the first `required` of
/// which must be given.
fn bind_arguments<'py>(
    name: &str,
    names: &[&'static str],
    required: usize,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<SmallVec<[Option<Bound<'py, PyAny>>; 4]>> {
    if args.len() > names.len() {
        return Err(PyTypeError::new_err(format!(
            "{name}() takes at most {} positional arguments ({} given)",
            names.len(),
            args.len()
        )));
    }
    let mut bound: SmallVec<[Option<Bound<'py, PyAny>>; 4]> = SmallVec::new();
    bound.resize(names.len(), None);
    for (slot, value) in bound.iter_mut().zip(args.iter()) {
        *slot = Some(value);
    }
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            let Some(position) = names.iter().position(|n| *n == key) else {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got an unexpected keyword argument '{key}'"
                )));
            };
            if bound[position].is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got multiple values for argument '{key}'"
                )));
            }
            bound[position] = Some(value);
        }
    }
    if let Some(missing) = (0..required).find(|&i| bound[i].is_none()) {
        return Err(PyTypeError::new_err(format!(
            "{name}() missing required argument '{}'",
            names[missing]
        )));
    }
    Ok(bound)
}

#[pymethods]
impl Kernel {
    /// Computes now, on the calling thread, with the GIL released for inputs
    /// large enough to be worth it. A panic in the kernel is caught here, as a
    /// worker catches it for a submitted job, and raised as `RaptorsError`:
    /// it never reaches Python as pyo3's `PanicException` (a `BaseException`).
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        self.call(py, args, kwargs)
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name
    }

    fn __repr__(&self) -> String {
        format!("<raptors kernel {}>", self.name)
    }
}

impl Kernel {
    /// A direct call (`rp.dot(a, b)`, `array.sum()`): computes now, on the
    /// calling thread, with the GIL released for inputs large enough to be
    /// worth it; kernel panics become `RaptorsError`. Native callers (the
    /// methods of `rp.Array`) call this, not the Python call protocol.
    pub fn call(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        let panicked = |payload: Box<dyn std::any::Any + Send>| {
            errors::raptors_error(
                py,
                format!(
                    "kernel {} panicked: {}",
                    self.name,
                    raptors_runtime::panic_message(&*payload)
                ),
            )
        };
        let prepared = panic::catch_unwind(AssertUnwindSafe(|| self.prepare(py, args, kwargs)))
            .map_err(panicked)??;
        let elements = prepared.elements();
        let value = gil::release(py, elements, || {
            panic::catch_unwind(AssertUnwindSafe(|| prepared.execute(&Serial)))
        });
        let value = value
            .map_err(panicked)?
            .map_err(|err| errors::kernel_error(py, err))?;
        prepared.output(value).into_py(py)
    }
}

/// Adds every kernel (and the test-only panicking one) to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    for op in Op::ALL {
        module.add(op.name(), Kernel::new(op))?;
    }
    module.add("_test_panic_kernel", Kernel::test_panic())?;
    Ok(())
}
