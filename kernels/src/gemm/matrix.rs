//! Borrowed strided matrices: the operands as the caller lays them out, and the output.

use core::marker::PhantomData;

/// A read-only `rows x cols` matrix addressed as `ptr + i * rs + j * cs` (element strides, any
/// sign). Carries no extents: the GEMM entry point owns the promise that every addressed element
/// is readable.
pub(super) struct Strided<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

// Manual impls: the derives would demand `T: Copy`, but only pointers are copied.
impl<T> Clone for Strided<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Strided<T> {}
impl<T> Clone for Output<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Output<'_, T> {}
impl<T> Clone for Problem<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Problem<'_, T> {}

impl<T> Strided<T> {
    /// Address of element `(i, j)`, computed without dereferencing.
    #[inline(always)]
    pub fn at(self, i: usize, j: usize) -> *const T {
        self.ptr
            .wrapping_offset(i as isize * self.rs)
            .wrapping_offset(j as isize * self.cs)
    }

    /// The submatrix starting at `(i, j)`.
    #[inline(always)]
    pub fn shifted(self, i: usize, j: usize) -> Self {
        Strided {
            ptr: self.at(i, j),
            ..self
        }
    }
}

/// The row-major output matrix: `rows x cols` elements, row stride `ld`, unit column stride.
pub(super) struct Output<'c, T> {
    pub ptr: *mut T,
    pub ld: usize,
    _c: PhantomData<&'c mut [T]>,
}

impl<'c, T> Output<'c, T> {
    pub fn new(c: &'c mut [T], ld: usize) -> Self {
        Output {
            ptr: c.as_mut_ptr(),
            ld,
            _c: PhantomData,
        }
    }

    /// Address of element `(i, j)`, computed without dereferencing.
    #[inline(always)]
    pub fn at(self, i: usize, j: usize) -> *mut T {
        self.ptr.wrapping_add(i * self.ld + j)
    }
}

/// One GEMM problem `C = A * B` (`m x k` times `k x n`).
///
/// Invariant: every element of A, B and C addressed through the extents is valid for the
/// lifetime of the call; A and B are not written and do not overlap C.
pub(super) struct Problem<'c, T> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strided<T>,
    pub b: Strided<T>,
    pub c: Output<'c, T>,
}

// SAFETY: A and B are only read; C is written through disjoint sub-problems
// (`rows`/`cols` split the output without overlap), so sharing across threads is race-free.
unsafe impl<T: Sync> Sync for Problem<'_, T> {}
// SAFETY: as for `Sync`; the pointers are plain addresses with no thread affinity.
unsafe impl<T: Send> Send for Problem<'_, T> {}

impl<T> Problem<'_, T> {
    /// The sub-problem computing output rows `lo..hi`.
    pub fn rows(self, lo: usize, hi: usize) -> Self {
        Problem {
            m: hi - lo,
            a: self.a.shifted(lo, 0),
            c: Output {
                ptr: self.c.at(lo, 0),
                ..self.c
            },
            ..self
        }
    }

    /// The sub-problem computing output columns `lo..hi`.
    pub fn cols(self, lo: usize, hi: usize) -> Self {
        Problem {
            n: hi - lo,
            b: self.b.shifted(0, lo),
            c: Output {
                ptr: self.c.at(0, lo),
                ..self.c
            },
            ..self
        }
    }
}
