//! `rp.Array`: an immutable array whose memory Rust owns.
//!
//! It exports that memory through the buffer protocol (read-only), so
//! `np.asarray(arr)` and `arr.numpy()` are views, not copies; and kernels read
//! it in place. Being immutable, it can be shared by any number of jobs
//! running at once.

use std::ffi::{c_int, CStr};

use numpy::prelude::*;
use numpy::PyUntypedArray;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use raptors_kernels::{Buffer, DType, Op};

use crate::kernel::Kernel;

#[pyclass(frozen, module = "raptors", name = "Array")]
pub struct Array {
    inner: raptors_kernels::Array,
    /// `Py_ssize_t` shape and byte strides for buffer exports.
    buffer_shape: Vec<isize>,
    buffer_strides: Vec<isize>,
}

impl Array {
    pub fn from_kernel(inner: raptors_kernels::Array) -> Array {
        let itemsize = inner.dtype().itemsize() as isize;
        let buffer_shape: Vec<isize> = inner.shape.iter().map(|&n| n as isize).collect();
        let mut buffer_strides = vec![itemsize; buffer_shape.len()];
        for d in (0..buffer_shape.len().saturating_sub(1)).rev() {
            buffer_strides[d] = buffer_strides[d + 1] * buffer_shape[d + 1].max(1);
        }
        Array {
            inner,
            buffer_shape,
            buffer_strides,
        }
    }

    pub fn inner(&self) -> &raptors_kernels::Array {
        &self.inner
    }

    pub fn data_ptr(&self) -> *const u8 {
        match &self.inner.data {
            Buffer::I32(v) => v.as_ptr().cast(),
            Buffer::I64(v) => v.as_ptr().cast(),
            Buffer::F32(v) => v.as_ptr().cast(),
            Buffer::F64(v) => v.as_ptr().cast(),
        }
    }

    fn nbytes(&self) -> usize {
        self.inner.data.len() * self.inner.dtype().itemsize()
    }

    fn format(&self) -> &'static CStr {
        match self.inner.dtype() {
            DType::Float32 => c"f",
            DType::Float64 => c"d",
            DType::Int32 => c"i",
            DType::Int64 => c"q",
        }
    }

    /// Copies any array-like (NumPy's conversion rules) into Rust memory.
    fn from_object(
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Array> {
        let numpy = py.import("numpy")?;
        let converted = numpy.call_method1("asarray", (obj, dtype))?;
        let array = converted.downcast::<PyUntypedArray>()?;
        let dtype = crate::convert::dtype_of(&array.dtype())?;
        if array.ndim() > 2 {
            return Err(PyValueError::new_err(format!(
                "rp.Array supports at most 2 dimensions, got {}",
                array.ndim()
            )));
        }
        // One copy into a fresh, aligned, native-order, C-ordered NumPy array
        // (whatever the source's layout), then one memcpy into Rust memory.
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", crate::convert::numpy_dtype(py, dtype))?;
        kwargs.set_item("order", "C")?;
        let staged = numpy.call_method("array", (array,), Some(&kwargs))?;
        let staged = staged.downcast::<PyUntypedArray>()?;
        let shape = staged.shape().to_vec();
        let len: usize = shape.iter().product();
        // SAFETY: `staged` is a fresh C-ordered, aligned, native array of
        // `len` elements of `dtype` starting at `data`.
        let data = unsafe { (*staged.as_array_ptr()).data };
        fn copy<T: Copy>(data: *const i8, len: usize) -> Vec<T> {
            // SAFETY: see the caller.
            unsafe { std::slice::from_raw_parts(data.cast::<T>(), len) }.to_vec()
        }
        let buffer = match dtype {
            DType::Float32 => Buffer::F32(copy(data, len)),
            DType::Float64 => Buffer::F64(copy(data, len)),
            DType::Int32 => Buffer::I32(copy(data, len)),
            DType::Int64 => Buffer::I64(copy(data, len)),
        };
        Ok(Array::from_kernel(raptors_kernels::Array {
            shape,
            data: buffer,
        }))
    }

    fn call_kernel(
        slf: &Bound<'_, Array>,
        op: Op,
        extra: &[&Bound<'_, PyAny>],
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        let mut args = vec![slf.clone().into_any()];
        args.extend(extra.iter().map(|a| (*a).clone()));
        Kernel::new(op).call(py, &PyTuple::new(py, args)?, kwargs)
    }

    /// `self.<op>(axis=...)` natively. Given anything only NumPy's method
    /// takes (`dtype`, `out`, `keepdims`, `initial`, `where`; `np.sum(a, ...)`
    /// passes `out=None` and `dtype=None` itself, which count as not given),
    /// NumPy's method on a zero-copy view of `self`.
    fn reduction(
        slf: &Bound<'_, Array>,
        op: Op,
        axis: Option<&Bound<'_, PyAny>>,
        numpy_only: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        let given = numpy_only.filter(|kwargs| kwargs.values().iter().any(|v| !v.is_none()));
        let Some(kwargs) = given else {
            return Array::call_kernel(slf, op, &[], Some(&axis_kwargs(py, axis)?));
        };
        let kwargs = kwargs.copy()?;
        kwargs.set_item("axis", axis)?;
        let view = py.import("numpy")?.call_method1("asarray", (slf,))?;
        Ok(view.call_method(op.name(), (), Some(&kwargs))?.unbind())
    }

    /// Submits `op(self, *extra)` through `raptors.submit`.
    fn submit_kernel(
        slf: &Bound<'_, Array>,
        op: Op,
        extra: &[&Bound<'_, PyAny>],
        kwargs: &Bound<'_, PyDict>,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        let kernel = Bound::new(py, Kernel::new(op))?;
        let mut args = vec![kernel.into_any(), slf.clone().into_any()];
        args.extend(extra.iter().map(|a| (*a).clone()));
        let submit = py.import("raptors")?.getattr("submit")?;
        Ok(submit.call(PyTuple::new(py, args)?, Some(kwargs))?.unbind())
    }

    /// Submits the reduction `op(self, axis=axis)` through `raptors.submit`.
    fn submit_reduction(
        slf: &Bound<'_, Array>,
        op: Op,
        axis: Option<&Bound<'_, PyAny>>,
        pool: Option<&Bound<'_, PyAny>>,
        priority: i64,
    ) -> PyResult<PyObject> {
        let kwargs = submit_kwargs(slf.py(), pool, priority)?;
        kwargs.set_item("axis", axis)?;
        Array::submit_kernel(slf, op, &[], &kwargs)
    }
}

fn axis_kwargs<'py>(
    py: Python<'py>,
    axis: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let kwargs = PyDict::new(py);
    if let Some(axis) = axis {
        kwargs.set_item("axis", axis)?;
    }
    Ok(kwargs)
}

fn submit_kwargs<'py>(
    py: Python<'py>,
    pool: Option<&Bound<'py, PyAny>>,
    priority: i64,
) -> PyResult<Bound<'py, PyDict>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("pool", pool)?;
    kwargs.set_item("priority", priority)?;
    Ok(kwargs)
}

#[pymethods]
impl Array {
    #[new]
    #[pyo3(signature = (obj, dtype=None))]
    fn new(
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Array> {
        Array::from_object(py, obj, dtype)
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.shape)
    }

    /// NumPy's name for the dtype, e.g. `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    #[getter]
    fn ndim(&self) -> usize {
        self.inner.shape.len()
    }

    #[getter]
    fn size(&self) -> usize {
        self.inner.data.len()
    }

    fn __len__(&self) -> PyResult<usize> {
        self.inner
            .shape
            .first()
            .copied()
            .ok_or_else(|| PyTypeError::new_err("len() of unsized object"))
    }

    /// A NumPy view of the same memory (read-only, no copy).
    fn numpy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("numpy")?.call_method1("asarray", (slf,))
    }

    fn tolist<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Array::numpy(slf)?.call_method0("tolist")
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("View is null"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("rp.Array is read-only"));
        }
        let this = slf.get();
        // SAFETY: `view` is valid (checked non-null, provided by CPython); the
        // pointers stored in it live as long as `obj`, which the view owns.
        unsafe {
            (*view).buf = this.data_ptr() as *mut _;
            (*view).len = this.nbytes() as isize;
            (*view).readonly = 1;
            (*view).itemsize = this.inner.dtype().itemsize() as isize;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                this.format().as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = this.buffer_shape.len() as c_int;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                this.buffer_shape.as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                this.buffer_strides.as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __matmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        Array::call_kernel(slf, Op::Matmul, &[other], None)
    }

    fn __rmatmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let py = slf.py();
        let kernel = Bound::new(py, Kernel::new(Op::Matmul))?;
        Ok(kernel.call1((other, slf))?.unbind())
    }

    fn dot(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        Array::call_kernel(slf, Op::Dot, &[other], None)
    }

    #[pyo3(signature = (axis=None, **numpy_only))]
    fn sum(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        numpy_only: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        Array::reduction(slf, Op::Sum, axis, numpy_only)
    }

    #[pyo3(signature = (axis=None, **numpy_only))]
    fn mean(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        numpy_only: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        Array::reduction(slf, Op::Mean, axis, numpy_only)
    }

    #[pyo3(signature = (axis=None, **numpy_only))]
    fn min(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        numpy_only: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        Array::reduction(slf, Op::Min, axis, numpy_only)
    }

    #[pyo3(signature = (axis=None, **numpy_only))]
    fn max(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        numpy_only: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        Array::reduction(slf, Op::Max, axis, numpy_only)
    }

    /// `rp.submit(rp.dot, self, other, pool=pool, priority=priority)`.
    #[pyo3(signature = (other, pool=None, priority=0))]
    fn dot_async(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        pool: Option<&Bound<'_, PyAny>>,
        priority: i64,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        Array::submit_kernel(slf, Op::Dot, &[other], &submit_kwargs(py, pool, priority)?)
    }

    /// `rp.submit(rp.matmul, self, other, pool=pool, priority=priority)`.
    #[pyo3(signature = (other, pool=None, priority=0))]
    fn matmul_async(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        pool: Option<&Bound<'_, PyAny>>,
        priority: i64,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        Array::submit_kernel(
            slf,
            Op::Matmul,
            &[other],
            &submit_kwargs(py, pool, priority)?,
        )
    }

    /// `rp.submit(rp.sum, self, axis=axis, pool=pool, priority=priority)`.
    #[pyo3(signature = (axis=None, pool=None, priority=0))]
    fn sum_async(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        pool: Option<&Bound<'_, PyAny>>,
        priority: i64,
    ) -> PyResult<PyObject> {
        Array::submit_reduction(slf, Op::Sum, axis, pool, priority)
    }

    /// `rp.submit(rp.mean, self, axis=axis, pool=pool, priority=priority)`.
    #[pyo3(signature = (axis=None, pool=None, priority=0))]
    fn mean_async(
        slf: &Bound<'_, Self>,
        axis: Option<&Bound<'_, PyAny>>,
        pool: Option<&Bound<'_, PyAny>>,
        priority: i64,
    ) -> PyResult<PyObject> {
        Array::submit_reduction(slf, Op::Mean, axis, pool, priority)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let list = Array::tolist(slf)?;
        Ok(format!(
            "rp.Array({}, dtype={})",
            list.repr()?,
            slf.get().dtype()
        ))
    }
}
