//! Borrowed operands: `ArrayView` (NumPy-layout memory of 0, 1 or 2 dims),
//! `Operand` (a view or a weak Python scalar) and `Mat`, the typed 2-D form
//! every kernel works on.

use crate::dtype::{cast, DType, Element};
use crate::error::{value_error, KernelError};
use std::borrow::Cow;
use std::marker::PhantomData;

/// Most dimensions a view may have.
pub const MAX_NDIM: usize = 2;

/// Read-only strided view of NumPy-layout memory (0, 1 or 2 dims).
///
/// Invariant: `ptr` is valid for reads of every element addressed by
/// `shape`/`strides` for `'a` and aligned to the dtype; byte strides of
/// dimensions longer than one are multiples of the itemsize.
#[derive(Clone, Copy)]
pub struct ArrayView<'a> {
    ptr: *const u8,
    dtype: DType,
    ndim: usize,
    shape: [usize; MAX_NDIM],
    /// Byte strides; zero for dimensions of length one so layout tests ignore them.
    strides: [isize; MAX_NDIM],
    _life: PhantomData<&'a [u8]>,
}

// SAFETY: the view is read-only and the constructor's contract makes the
// memory valid for 'a; sharing read access across threads is sound.
unsafe impl Send for ArrayView<'_> {}
// SAFETY: as above, only shared reads happen through a view.
unsafe impl Sync for ArrayView<'_> {}

impl<'a> ArrayView<'a> {
    /// Wraps NumPy-layout memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of every element addressed by
    /// `shape`/`byte_strides` for `'a`, aligned to `dtype`, and not written
    /// while the view lives.
    pub unsafe fn from_raw_parts(
        ptr: *const u8,
        dtype: DType,
        shape: &[usize],
        byte_strides: &[isize],
    ) -> Result<ArrayView<'a>, KernelError> {
        if shape.len() > MAX_NDIM {
            return Err(value_error(format!(
                "raptors kernels support arrays of at most {MAX_NDIM} dimensions, got {}",
                shape.len()
            )));
        }
        if shape.len() != byte_strides.len() {
            return Err(value_error(format!(
                "shape has {} dimensions but strides has {}",
                shape.len(),
                byte_strides.len()
            )));
        }
        let mut sh = [1usize; MAX_NDIM];
        let mut st = [0isize; MAX_NDIM];
        let item = dtype.itemsize() as isize;
        for (d, (&n, &s)) in shape.iter().zip(byte_strides).enumerate() {
            sh[d] = n;
            if n > 1 {
                if s % item != 0 {
                    return Err(value_error(format!(
                        "byte stride {s} is not a multiple of the {} itemsize {item}",
                        dtype.name()
                    )));
                }
                st[d] = s;
            }
        }
        Ok(ArrayView {
            ptr,
            dtype,
            ndim: shape.len(),
            shape: sh,
            strides: st,
            _life: PhantomData,
        })
    }

    /// A C-contiguous view of `data` with `shape`.
    pub fn from_slice<T: Element>(
        data: &'a [T],
        shape: &[usize],
    ) -> Result<ArrayView<'a>, KernelError> {
        if shape.len() > MAX_NDIM {
            return Err(value_error(format!(
                "raptors kernels support arrays of at most {MAX_NDIM} dimensions, got {}",
                shape.len()
            )));
        }
        let size: usize = shape.iter().product();
        if size != data.len() {
            return Err(value_error(format!(
                "cannot view {} elements as shape {}",
                data.len(),
                crate::error::shape_str(shape)
            )));
        }
        let item = std::mem::size_of::<T>() as isize;
        let strides: Vec<isize> = match shape {
            [] => vec![],
            [_] => vec![item],
            [_, c] => vec![*c as isize * item, item],
            _ => unreachable!("ndim checked above"),
        };
        // SAFETY: the slice covers exactly the C-contiguous elements of `shape`
        // and is borrowed for 'a.
        unsafe { Self::from_raw_parts(data.as_ptr().cast(), T::DTYPE, shape, &strides) }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape[..self.ndim]
    }

    pub fn ndim(&self) -> usize {
        self.ndim
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte strides, zero for dimensions of length one.
    pub fn byte_strides(&self) -> &[isize] {
        &self.strides[..self.ndim]
    }

    /// True when elements lie in C order without gaps.
    pub fn is_c_contiguous(&self) -> bool {
        let item = self.dtype.itemsize() as isize;
        let mut expect = item;
        for d in (0..self.ndim).rev() {
            if self.shape[d] > 1 && self.strides[d] != expect {
                return false;
            }
            expect *= self.shape[d] as isize;
        }
        true
    }

    /// True when every element is the same memory (each dimension longer
    /// than one has stride 0: a broadcast scalar); such a view is read as
    /// one scalar.
    pub fn is_constant(&self) -> bool {
        self.byte_strides().iter().all(|&s| s == 0)
    }

    /// The typed 2-D form; `T` must be this view's dtype.
    pub(crate) fn mat<T: Element>(&self) -> Mat<'a, T> {
        assert_eq!(T::DTYPE, self.dtype, "view dtype mismatch");
        let item = std::mem::size_of::<T>() as isize;
        let (shape, strides) = match self.ndim {
            0 => ([1, 1], [0, 0]),
            1 => ([1, self.shape[0]], [0, self.strides[0] / item]),
            _ => (self.shape, [self.strides[0] / item, self.strides[1] / item]),
        };
        Mat {
            ptr: self.ptr.cast(),
            ndim: self.ndim,
            shape,
            strides,
            _life: PhantomData,
        }
    }
}

/// An operand: an array view, or a Python scalar that is "weak" in NEP 50 promotion.
#[derive(Clone, Copy)]
pub enum Operand<'a> {
    Array(ArrayView<'a>),
    Int(i64),
    /// A Python int outside int64's range, as the nearest float64: weak like
    /// `Int`, but only a floating-point result can hold it (NumPy raises
    /// `OverflowError` otherwise).
    BigInt(f64),
    Float(f64),
}

impl Operand<'_> {
    /// Logical shape (`[]` for Python scalars).
    pub fn shape(&self) -> &[usize] {
        match self {
            Operand::Array(v) => v.shape(),
            _ => &[],
        }
    }

    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// `Overflow` for a Python int that no integer dtype holds.
    pub(crate) fn out_of_int64(&self) -> Result<(), KernelError> {
        match self {
            Operand::BigInt(v) => Err(big_int_error(*v)),
            _ => Ok(()),
        }
    }
}

/// NumPy's `OverflowError` for a Python int beyond int64 where an integer
/// is needed.
pub(crate) fn big_int_error(v: f64) -> KernelError {
    KernelError::Overflow(format!(
        "Python integer (about {v:.3e}) out of bounds for int64"
    ))
}

/// Typed, read-only 2-D view used inside kernels.
///
/// A 1-D array is one row (`shape = [1, n]`), a 0-d array one element.
/// Strides are in elements. Same validity invariant as `ArrayView`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    ptr: *const T,
    /// Logical number of dimensions (0, 1 or 2).
    pub ndim: usize,
    pub shape: [usize; 2],
    pub strides: [isize; 2],
    _life: PhantomData<&'a [T]>,
}

// SAFETY: read-only view, valid for 'a (see ArrayView).
unsafe impl<T: Sync> Send for Mat<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Mat<'_, T> {}

impl<'a, T: Element> Mat<'a, T> {
    /// A C-contiguous matrix over `data` (`data.len() == rows * cols`).
    pub fn from_contiguous(data: &'a [T], ndim: usize, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat {
            ptr: data.as_ptr(),
            ndim,
            shape: [rows, cols],
            strides: [cols as isize, 1],
            _life: PhantomData,
        }
    }

    /// The same view typed as `D`.
    ///
    /// # Safety
    /// `D` must be the same type as `T`.
    pub unsafe fn retype<D: Element>(self) -> Mat<'a, D> {
        debug_assert_eq!(D::DTYPE, T::DTYPE);
        Mat {
            ptr: self.ptr.cast(),
            ndim: self.ndim,
            shape: self.shape,
            strides: self.strides,
            _life: PhantomData,
        }
    }

    /// Same data with rows and columns swapped (no copy).
    pub fn t(&self) -> Self {
        Mat {
            ptr: self.ptr,
            ndim: 2,
            shape: [self.shape[1], self.shape[0]],
            strides: [self.strides[1], self.strides[0]],
            _life: PhantomData,
        }
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    pub fn ptr(&self) -> *const T {
        self.ptr
    }

    /// Element `(r, c)`.
    #[inline(always)]
    pub fn get(&self, r: usize, c: usize) -> T {
        debug_assert!(r < self.shape[0] && c < self.shape[1]);
        // SAFETY: in-bounds by the caller's index and the view invariant.
        unsafe {
            *self
                .ptr
                .offset(r as isize * self.strides[0] + c as isize * self.strides[1])
        }
    }

    /// Row `r` as a strided lane.
    #[inline]
    pub fn row(&self, r: usize) -> Lane<'a, T> {
        debug_assert!(r < self.shape[0]);
        Lane {
            // SAFETY: row start is inside the viewed memory (r < rows).
            ptr: unsafe { self.ptr.offset(r as isize * self.strides[0]) },
            len: self.shape[1],
            stride: if self.shape[1] > 1 {
                self.strides[1]
            } else {
                1
            },
            _life: PhantomData,
        }
    }

    /// True when rows are unit-stride and rows follow each other without gaps.
    pub fn is_c_contiguous(&self) -> bool {
        (self.shape[1] <= 1 || self.strides[1] == 1)
            && (self.shape[0] <= 1 || self.strides[0] == self.shape[1] as isize)
    }

    /// True when every element is the same memory (stride 0 in each
    /// dimension longer than one).
    pub fn is_constant(&self) -> bool {
        (self.shape[0] <= 1 || self.strides[0] == 0) && (self.shape[1] <= 1 || self.strides[1] == 0)
    }

    /// All elements in C order as one slice, when the layout allows it.
    pub fn as_slice(&self) -> Option<&'a [T]> {
        if self.is_c_contiguous() {
            // SAFETY: contiguous layout: exactly len() elements from ptr.
            Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len()) })
        } else {
            None
        }
    }

    /// All elements in C order converted to `D`, borrowed when no work is
    /// needed, else one copy allocated fallibly (`kernel` names the caller
    /// in a `Memory` error). Only for kernels that need one typed,
    /// unit-stride operand (GEMM packing aside): dot/cosine of mixed dtypes.
    pub fn to_contiguous<D: Element>(
        self,
        kernel: &'static str,
    ) -> Result<Cow<'a, [D]>, KernelError> {
        if D::DTYPE == T::DTYPE {
            if let Some(s) = self.as_slice() {
                // SAFETY: D and T are the same type (sealed Element, same DTYPE).
                let s: &'a [D] = unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) };
                return Ok(Cow::Borrowed(s));
            }
        }
        let mut out = crate::alloc::with_capacity(kernel, self.len())?;
        for r in 0..self.rows() {
            let lane = self.row(r);
            match lane.as_slice() {
                Some(s) => out.extend(s.iter().map(|&x| cast::<T, D>(x))),
                None => out.extend((0..lane.len).map(|i| cast::<T, D>(lane.get(i)))),
            }
        }
        Ok(Cow::Owned(out))
    }
}

/// One strided run of elements (a row or column of a `Mat`).
#[derive(Clone, Copy)]
pub(crate) struct Lane<'a, T> {
    ptr: *const T,
    pub len: usize,
    /// In elements; 1 when `len <= 1`.
    pub stride: isize,
    _life: PhantomData<&'a [T]>,
}

// SAFETY: read-only strided view inside a valid `Mat` (see ArrayView).
unsafe impl<T: Sync> Send for Lane<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Lane<'_, T> {}

impl<'a, T: Element> Lane<'a, T> {
    #[inline(always)]
    pub fn get(&self, i: usize) -> T {
        debug_assert!(i < self.len);
        // SAFETY: i < len and the lane lies inside a valid view.
        unsafe { *self.ptr.offset(i as isize * self.stride) }
    }

    #[inline]
    pub fn as_slice(&self) -> Option<&'a [T]> {
        if self.stride == 1 {
            // SAFETY: unit stride: len consecutive valid elements.
            Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
        } else {
            None
        }
    }

    /// The lane's elements, borrowed when contiguous, else gathered once
    /// (allocated fallibly; `kernel` names the caller in a `Memory` error).
    pub fn contiguous(&self, kernel: &'static str) -> Result<Cow<'a, [T]>, KernelError> {
        match self.as_slice() {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => {
                let mut v = crate::alloc::with_capacity(kernel, self.len)?;
                v.extend((0..self.len).map(|i| self.get(i)));
                Ok(Cow::Owned(v))
            }
        }
    }

    /// Elements `range` of the lane, borrowed when contiguous, else
    /// gathered into `buf` (cleared first).
    pub fn run<'b>(&self, range: std::ops::Range<usize>, buf: &'b mut Vec<T>) -> &'b [T]
    where
        'a: 'b,
    {
        match self.as_slice() {
            Some(s) => &s[range],
            None => {
                buf.clear();
                buf.extend(range.map(|i| self.get(i)));
                buf
            }
        }
    }
}
