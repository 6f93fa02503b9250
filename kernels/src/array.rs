//! Owned results: `Buffer`, `Array`, `Scalar` and `Value`.

use crate::dtype::{DType, Element};
use crate::error::{shape_str, value_error, KernelError};
use crate::view::ArrayView;
use crate::with_dtype;

/// Owned, C-contiguous result buffer. The bindings hand the Vec to NumPy without copying.
#[derive(Debug, Clone, PartialEq)]
pub enum Buffer {
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buffer {
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::I32(_) => DType::Int32,
            Buffer::I64(_) => DType::Int64,
            Buffer::F32(_) => DType::Float32,
            Buffer::F64(_) => DType::Float64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buffer::I32(v) => v.len(),
            Buffer::I64(v) => v.len(),
            Buffer::F32(v) => v.len(),
            Buffer::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An owned C-contiguous array. Invariant: `data.len() == shape.iter().product()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Buffer,
}

impl Array {
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// A borrowed view of the whole array.
    pub fn view(&self) -> ArrayView<'_> {
        with_dtype!(self.dtype(), T => {
            let data = T::buffer_slice(&self.data).expect("buffer variant matches its dtype");
            ArrayView::from_slice(data, &self.shape).expect("Array invariant: shape matches data")
        })
    }

    /// Takes ownership of `data` laid out in C order.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Array, KernelError> {
        let size: usize = shape.iter().product();
        if size != data.len() {
            return Err(value_error(format!(
                "cannot reshape array of size {} into shape {}",
                data.len(),
                shape_str(shape)
            )));
        }
        Ok(Array {
            shape: shape.to_vec(),
            data: T::into_buffer(data),
        })
    }

    /// `np.zeros(shape, dtype)`.
    pub fn zeros(shape: &[usize], dtype: DType) -> Array {
        Self::filled(shape, dtype, 0)
    }

    /// `np.ones(shape, dtype)`.
    pub fn ones(shape: &[usize], dtype: DType) -> Array {
        Self::filled(shape, dtype, 1)
    }

    fn filled(shape: &[usize], dtype: DType, v: i64) -> Array {
        let size: usize = shape.iter().product();
        with_dtype!(dtype, T => Array {
            shape: shape.to_vec(),
            data: T::into_buffer(vec![T::from_i64(v); size]),
        })
    }

    /// `np.arange(n, dtype=dtype)`: 0, 1, .., n-1.
    pub fn arange(n: usize, dtype: DType) -> Array {
        with_dtype!(dtype, T => Array {
            shape: vec![n],
            data: T::into_buffer((0..n).map(|i| T::from_i64(i as i64)).collect()),
        })
    }

    /// Elements as `T`, when the array holds that dtype.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::buffer_slice(&self.data)
    }
}

/// One value of a NumPy scalar type (what NumPy returns for 0-d results).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl Scalar {
    pub fn dtype(&self) -> DType {
        match self {
            Scalar::I32(_) => DType::Int32,
            Scalar::I64(_) => DType::Int64,
            Scalar::F32(_) => DType::Float32,
            Scalar::F64(_) => DType::Float64,
        }
    }

    /// The value as `f64` (`as` conversion), convenient for tests and printing.
    pub fn to_f64(&self) -> f64 {
        match *self {
            Scalar::I32(v) => v as f64,
            Scalar::I64(v) => v as f64,
            Scalar::F32(v) => v as f64,
            Scalar::F64(v) => v,
        }
    }
}

/// What a kernel returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 0-d result (NumPy returns a scalar of the result dtype).
    Scalar(Scalar),
    Array(Array),
    /// `topk`, `cosine_topk`: (indices int64, values).
    Pair(Array, Array),
}

impl Value {
    /// Wraps a result of logical `shape` (`[]` gives a `Scalar`).
    pub(crate) fn from_vec<T: Element>(data: Vec<T>, shape: Vec<usize>) -> Value {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        if shape.is_empty() {
            Value::Scalar(data[0].into_scalar())
        } else {
            Value::Array(Array {
                shape,
                data: T::into_buffer(data),
            })
        }
    }

    /// The scalar, when the value is one.
    pub fn as_scalar(&self) -> Option<Scalar> {
        match self {
            Value::Scalar(s) => Some(*s),
            _ => None,
        }
    }

    /// The array, when the value is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}
