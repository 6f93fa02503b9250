//! Python objects in, Python objects out.
//!
//! Inputs become [`HeldOperand`]s: NumPy arrays and `rp.Array`s are read
//! in place (the operand keeps a strong reference to the object that owns
//! the memory, so the memory outlives the job); any other buffer, list or
//! scalar goes through `numpy.asarray` once (zero-copy for buffers). Python
//! `int`/`float` stay weak scalars for NEP 50 promotion.
//!
//! Outputs: a kernel's `Vec` becomes a NumPy array without a copy, scalars
//! become NumPy scalars of the result dtype.

use std::ffi::c_void;

use numpy::npyffi::{self, PY_ARRAY_API};
use numpy::prelude::*;
use numpy::{PyArrayDescr, PyUntypedArray};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyTuple};
use raptors_kernels::{ArrayView, Buffer, DType, KernelError, Operand, Scalar, Value, MAX_NDIM};

use crate::array::Array;
use crate::errors;

/// Memory of an input array, kept alive by `owner`.
pub struct HeldArray {
    /// Keeps the memory alive; dropped without the GIL on a worker, which
    /// PyO3 defers to the next moment it holds the GIL.
    _owner: PyObject,
    ptr: *const u8,
    dtype: DType,
    ndim: usize,
    shape: [usize; MAX_NDIM],
    strides: [isize; MAX_NDIM],
    /// The kernels' view, validated once when the array is held (`None`
    /// when the layout is refused: `operand` then reports why). Built once
    /// so that a call does not re-validate it for `check` and again for
    /// `execute` (per-call overhead, issue 14).
    view: Option<ArrayView<'static>>,
}

impl HeldArray {
    fn new(
        owner: PyObject,
        ptr: *const u8,
        dtype: DType,
        shape: &[usize],
        strides: &[isize],
    ) -> HeldArray {
        debug_assert!(shape.len() <= MAX_NDIM && strides.len() == shape.len());
        let mut held = HeldArray {
            _owner: owner,
            ptr,
            dtype,
            ndim: shape.len(),
            shape: [0; MAX_NDIM],
            strides: [0; MAX_NDIM],
            view: None,
        };
        held.shape[..shape.len()].copy_from_slice(shape);
        held.strides[..strides.len()].copy_from_slice(strides);
        // SAFETY: `ptr`, `shape` and `strides` describe memory owned by
        // `owner`, which `held` keeps alive; the 'static view is only handed
        // out by `HeldOperand::operand`, shortened to the borrow of `held`.
        held.view = unsafe { ArrayView::from_raw_parts(ptr, dtype, shape, strides) }.ok();
        held
    }
}

// SAFETY: the pointer targets memory owned by `_owner`, which this value keeps
// alive; kernels only read it.
unsafe impl Send for HeldArray {}
// SAFETY: shared access is read-only.
unsafe impl Sync for HeldArray {}

pub enum HeldOperand {
    Array(HeldArray),
    /// A Python `bool`: a weak int to the kernels, but see
    /// `Op::bool_operands_give_bool`.
    Bool(bool),
    Int(i64),
    /// A Python int outside int64's range (see `Operand::BigInt`).
    BigInt(f64),
    Float(f64),
}

impl HeldOperand {
    /// The dtype of an array operand; `None` for a Python scalar.
    pub fn dtype(&self) -> Option<DType> {
        match self {
            HeldOperand::Array(a) => Some(a.dtype),
            _ => None,
        }
    }

    /// The dtype NumPy gives this operand read with `asarray`: an array's,
    /// int64 or float64 for a Python int or float; `None` for a bool or an
    /// int beyond int64 (bool and object arrays, which Raptors has not).
    pub fn strong_dtype(&self) -> Option<DType> {
        match self {
            HeldOperand::Array(a) => Some(a.dtype),
            HeldOperand::Int(_) => Some(DType::Int64),
            HeldOperand::Float(_) => Some(DType::Float64),
            HeldOperand::Bool(_) | HeldOperand::BigInt(_) => None,
        }
    }

    pub fn elements(&self) -> usize {
        match self {
            HeldOperand::Array(a) => a.shape[..a.ndim].iter().product(),
            _ => 1,
        }
    }

    /// The kernels' view of this operand, unbounded: valid only while this
    /// operand (which keeps the memory alive) lives. `PreparedKernel` keeps
    /// the views next to the operands so that a call builds them once.
    pub fn operand_unbounded(&self) -> Result<Operand<'static>, KernelError> {
        Ok(match self {
            // The view built when the array was held (see `HeldArray::view`).
            HeldOperand::Array(HeldArray { view: Some(v), .. }) => Operand::Array(*v),
            // The layout was refused when held: this reports why.
            // SAFETY: `ptr`, `shape` and `strides` describe memory owned by
            // `_owner`, which lives as long as `self`; nobody writes it while
            // a kernel runs (NumPy users who mutate an input during a job get
            // what NumPy's threads would give them).
            HeldOperand::Array(a) => Operand::Array(unsafe {
                ArrayView::from_raw_parts(a.ptr, a.dtype, &a.shape[..a.ndim], &a.strides[..a.ndim])?
            }),
            HeldOperand::Bool(b) => Operand::Int(i64::from(*b)),
            HeldOperand::Int(i) => Operand::Int(*i),
            HeldOperand::BigInt(f) => Operand::BigInt(*f),
            HeldOperand::Float(f) => Operand::Float(*f),
        })
    }

    /// The kernels' view of this operand.
    pub fn operand(&self) -> Result<Operand<'_>, KernelError> {
        self.operand_unbounded()
    }
}

struct NumpyApi {
    asarray: PyObject,
    masked_array: PyObject,
}

static NUMPY: GILOnceCell<NumpyApi> = GILOnceCell::new();

fn numpy_api(py: Python<'_>) -> PyResult<&NumpyApi> {
    NUMPY.get_or_try_init(py, || {
        Ok(NumpyApi {
            asarray: py.import("numpy")?.getattr("asarray")?.unbind(),
            masked_array: py.import("numpy.ma")?.getattr("MaskedArray")?.unbind(),
        })
    })
}

/// The Raptors dtype of a NumPy dtype; `TypeError` naming it when unsupported.
pub fn dtype_of(descr: &Bound<'_, PyArrayDescr>) -> PyResult<DType> {
    let supported = match (descr.kind(), descr.itemsize()) {
        (b'f', 4) => Some(DType::Float32),
        (b'f', 8) => Some(DType::Float64),
        (b'i', 4) => Some(DType::Int32),
        (b'i', 8) => Some(DType::Int64),
        _ => None,
    };
    supported.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "unsupported dtype {}: Raptors kernels take float32, float64, int32 and int64",
            descr.str().map(|s| s.to_string()).unwrap_or_default()
        ))
    })
}

/// Reads a NumPy array in place when its memory is aligned and in native
/// byte order; otherwise makes one native, aligned copy.
fn hold_ndarray(py: Python<'_>, array: &Bound<'_, PyUntypedArray>) -> PyResult<HeldArray> {
    let descr = array.dtype();
    let dtype = dtype_of(&descr)?;
    // SAFETY: `array` is a live ndarray; reading its flags field is what
    // NumPy's own PyArray_FLAGS macro does.
    let flags = unsafe { (*array.as_array_ptr()).flags };
    let aligned = flags & npyffi::NPY_ARRAY_ALIGNED != 0;
    if !aligned || descr.is_native_byteorder() == Some(false) {
        // A fresh NumPy allocation is aligned and native; ascontiguousarray
        // would return an unaligned but contiguous array unchanged.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("dtype", numpy_dtype(py, dtype))?;
        kwargs.set_item("copy", true)?;
        let copy = py
            .import("numpy")?
            .call_method("array", (array,), Some(&kwargs))?;
        return hold_ndarray(py, copy.downcast::<PyUntypedArray>()?);
    }
    if array.ndim() > MAX_NDIM {
        return Err(errors::kernel_error(
            py,
            KernelError::Value(format!(
                "raptors kernels support arrays of at most {MAX_NDIM} dimensions, got {}",
                array.ndim()
            )),
        ));
    }
    // SAFETY: as above; `data` is the array's first element.
    let ptr = unsafe { (*array.as_array_ptr()).data } as *const u8;
    Ok(HeldArray::new(
        array.clone().into_any().unbind(),
        ptr,
        dtype,
        array.shape(),
        array.strides(),
    ))
}

/// Converts one kernel argument. `wants_rp_array` is set when the argument
/// is an `rp.Array` (results then come back as `rp.Array`).
pub fn hold(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    wants_rp_array: &mut bool,
) -> PyResult<HeldOperand> {
    if let Ok(array) = obj.downcast::<PyUntypedArray>() {
        // A masked array's memory holds the masked-out values too: reading it
        // would ignore the mask where NumPy honours it.
        if !obj.get_type().is(py.get_type::<PyUntypedArray>())
            && obj.is_instance(numpy_api(py)?.masked_array.bind(py))?
        {
            return Err(PyTypeError::new_err(
                "masked arrays are not supported: Raptors kernels would ignore the mask; \
                 pass a.filled(fill_value) or a.compressed()",
            ));
        }
        return Ok(HeldOperand::Array(hold_ndarray(py, array)?));
    }
    if let Ok(array) = obj.downcast::<Array>() {
        *wants_rp_array = true;
        let inner = array.get();
        let view = inner.inner().view();
        return Ok(HeldOperand::Array(HeldArray::new(
            array.clone().into_any().unbind(),
            inner.data_ptr(),
            view.dtype(),
            view.shape(),
            view.byte_strides(),
        )));
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(HeldOperand::Float(obj.extract()?));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(HeldOperand::Bool(obj.extract::<bool>()?));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return match obj.extract::<i64>() {
            Ok(value) => Ok(HeldOperand::Int(value)),
            // Beyond int64: NumPy keeps it weak and raises only where the
            // result is an integer (the kernels decide).
            Err(_) => Ok(HeldOperand::BigInt(obj.extract::<f64>()?)),
        };
    }
    let converted = numpy_api(py)?.asarray.bind(py).call1((obj,))?;
    let array = converted
        .downcast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err("numpy.asarray did not return an ndarray"))?;
    Ok(HeldOperand::Array(hold_ndarray(py, array)?))
}

/// Converts an argument NumPy reads with `asarray` even when it is a Python
/// scalar (`np.clip`'s `a`): a Python int or float there is a strong int64 or
/// float64 (an int beyond int64 an object array), not a weak scalar. Bools
/// stay weak ints: a bool array promotes like one.
pub fn hold_strong(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    wants_rp_array: &mut bool,
) -> PyResult<HeldOperand> {
    if obj.is_exact_instance_of::<PyInt>() || obj.is_exact_instance_of::<PyFloat>() {
        let converted = numpy_api(py)?.asarray.bind(py).call1((obj,))?;
        return hold(py, &converted, wants_rp_array);
    }
    hold(py, obj, wants_rp_array)
}

/// Whether `obj` is a list or tuple holding no numbers at all (`[]`,
/// `[[], []]`): NumPy gives it no dtype of its own.
pub fn is_empty_sequence(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !(obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>()) {
        return Ok(false);
    }
    let Ok(converted) = numpy_api(py)?.asarray.bind(py).call1((obj,)) else {
        return Ok(false);
    };
    let array = converted.downcast::<PyUntypedArray>()?;
    Ok(array.len() == 0 || array.shape().iter().product::<usize>() == 0)
}

/// `numpy.asarray(obj, dtype)`, held.
pub fn hold_as(py: Python<'_>, obj: &Bound<'_, PyAny>, dtype: DType) -> PyResult<HeldOperand> {
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("dtype", numpy_dtype(py, dtype))?;
    let converted = numpy_api(py)?
        .asarray
        .bind(py)
        .call((obj,), Some(&kwargs))?;
    let array = converted
        .downcast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err("numpy.asarray did not return an ndarray"))?;
    Ok(HeldOperand::Array(hold_ndarray(py, array)?))
}

/// A kernel's result, converted to Python on demand.
pub struct KernelOutput {
    pub value: Value,
    pub as_rp_array: bool,
    /// The call's inputs, carried to the thread that converts the result so
    /// that their references are dropped there, with the GIL, rather than
    /// queued for later from the worker.
    pub inputs: Vec<HeldOperand>,
}

impl KernelOutput {
    pub fn into_py(self, py: Python<'_>) -> PyResult<PyObject> {
        let as_rp_array = self.as_rp_array;
        drop(self.inputs);
        match self.value {
            Value::Scalar(scalar) => scalar_to_py(py, scalar),
            Value::Array(array) => array_to_py(py, array, as_rp_array),
            Value::Pair(first, second) => {
                let first = array_to_py(py, first, as_rp_array)?;
                let second = array_to_py(py, second, as_rp_array)?;
                Ok(PyTuple::new(py, [first, second])?.into_any().unbind())
            }
        }
    }
}

/// A NumPy scalar of the value's dtype (`numpy.float32`, `numpy.int64`, ...).
pub fn scalar_to_py(py: Python<'_>, scalar: Scalar) -> PyResult<PyObject> {
    fn make<T: numpy::Element>(py: Python<'_>, mut value: T) -> PyResult<PyObject> {
        let descr = numpy::dtype::<T>(py);
        // SAFETY: PyArray_Scalar copies `itemsize` bytes from a live value of
        // the descriptor's type and returns a new reference (or NULL with an
        // exception set).
        unsafe {
            let ptr = PY_ARRAY_API.PyArray_Scalar(
                py,
                (&mut value as *mut T).cast::<c_void>(),
                descr.as_ptr().cast(),
                std::ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(py, ptr).map(Bound::unbind)
        }
    }
    match scalar {
        Scalar::F32(v) => make(py, v),
        Scalar::F64(v) => make(py, v),
        Scalar::I32(v) => make(py, v),
        Scalar::I64(v) => make(py, v),
    }
}

/// Results of at most this many bytes are copied into an array NumPy
/// allocates itself (from its small-block cache) instead of being handed
/// over inside a container object: the copy costs less than creating and
/// later freeing the container (per-call overhead of small element-wise
/// calls, issue 14).
const COPY_MAX_BYTES: usize = 4096;

/// Hands a result buffer to NumPy (or wraps it as `rp.Array`): without
/// copying, except small ones (see [`COPY_MAX_BYTES`]).
pub fn array_to_py(
    py: Python<'_>,
    array: raptors_kernels::Array,
    as_rp_array: bool,
) -> PyResult<PyObject> {
    if as_rp_array {
        return Ok(Py::new(py, Array::from_kernel(array))?.into_any());
    }
    fn wrap<T: numpy::Element>(
        py: Python<'_>,
        data: Vec<T>,
        shape: &[usize],
    ) -> PyResult<PyObject> {
        if std::mem::size_of_val(data.as_slice()) <= COPY_MAX_BYTES {
            // SAFETY: `new` returns an uninitialised C-contiguous array of
            // `shape` (whose product is `data.len()`, the kernels' Array
            // invariant); it is filled from `data` before anyone sees it.
            unsafe {
                let out = numpy::PyArray::<T, numpy::IxDyn>::new(py, shape, false);
                std::ptr::copy_nonoverlapping(data.as_ptr(), out.data(), data.len());
                return Ok(out.into_any().unbind());
            }
        }
        let flat = data.into_pyarray(py);
        if shape.len() == 1 {
            return Ok(flat.into_any().unbind());
        }
        Ok(flat.reshape(shape)?.into_any().unbind())
    }
    let shape = array.shape;
    match array.data {
        Buffer::F32(v) => wrap(py, v, &shape),
        Buffer::F64(v) => wrap(py, v, &shape),
        Buffer::I32(v) => wrap(py, v, &shape),
        Buffer::I64(v) => wrap(py, v, &shape),
    }
}

/// The NumPy dtype object of a Raptors dtype, in native byte order.
pub fn numpy_dtype(py: Python<'_>, dtype: DType) -> Bound<'_, PyArrayDescr> {
    match dtype {
        DType::Float32 => numpy::dtype::<f32>(py),
        DType::Float64 => numpy::dtype::<f64>(py),
        DType::Int32 => numpy::dtype::<i32>(py),
        DType::Int64 => numpy::dtype::<i64>(py),
    }
}
