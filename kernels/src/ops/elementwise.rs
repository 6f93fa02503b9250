//! Broadcasting ufuncs: add, subtract, multiply, divide (and scale), clip.
//!
//! Layout is chosen once per call: when every operand is C-contiguous with
//! the output's shape or constant (a scalar, or a broadcast view whose
//! strides are all zero), the whole call is one flat run through the
//! vectorised loops; otherwise the output is walked row by row in flat
//! chunks, each run of each operand's row being contiguous (read in place),
//! broadcast (stride 0 along the row: read as a scalar) or strided
//! (gathered into a stack block of `CONVERT_BLOCK`). No operand is ever
//! copied whole; the output is the only allocation.
//!
//! Fast path: when both operands of a binary op already have the result
//! dtype and are each either C-contiguous with the output's element count
//! or a scalar, the call skips the broadcast machinery and runs the SIMD
//! loop over the slices, chunk by chunk.
//!
//! The output is allocated uninitialised (`alloc::written`, no zero fill)
//! and written exactly once: every path below hands each output chunk to a
//! loop that writes all of its elements (`loops` asserts the lengths).

use crate::alloc;
use crate::array::Value;
use crate::dtype::{cast, with_float_dtype, DType, Element};
use crate::error::{shape_str, value_error, KernelError};
use crate::exec::{chunk_items, fill_chunks, Exec};
use crate::loops::{self, AddK, Binary, DivK, MulK, SubK};
use crate::ops::operand::Typed;
use crate::view::{ArrayView, Mat, Operand};
use crate::with_dtype;
use std::mem::MaybeUninit;

/// The binary ufuncs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
}

/// NumPy's broadcast of the operands' logical shapes (at most 2-D).
pub(crate) fn broadcast_shape(operands: &[Operand<'_>]) -> Result<Vec<usize>, KernelError> {
    let ndim = operands.iter().map(|o| o.ndim()).max().unwrap_or(0);
    let mut out = vec![1usize; ndim];
    for op in operands {
        let s = op.shape();
        let off = ndim - s.len();
        for (d, &n) in s.iter().enumerate() {
            let o = &mut out[off + d];
            if *o == 1 {
                *o = n;
            } else if n != 1 && n != *o {
                let shapes: Vec<String> = operands.iter().map(|o| shape_str(o.shape())).collect();
                return Err(value_error(format!(
                    "operands could not be broadcast together with shapes {} ",
                    shapes.join(" ")
                )));
            }
        }
    }
    Ok(out)
}

/// Output shape as `[rows, cols]` (1-D and 0-d outputs are one row).
fn out_dims(shape: &[usize]) -> [usize; 2] {
    match shape {
        [] => [1, 1],
        [n] => [1, *n],
        [r, c] => [*r, *c],
        _ => unreachable!("at most 2-D"),
    }
}

/// One operand's part of a run of output elements.
enum Row<'a, T> {
    Slice(&'a [T]),
    Scalar(T),
}

impl<T: Element> Row<'_, T> {
    fn as_slice(&self) -> Option<&[T]> {
        match self {
            Row::Slice(s) => Some(s),
            Row::Scalar(_) => None,
        }
    }
}

/// Where an operand's elements come from: already `T`, or another dtype
/// converted block by block (never a whole-array copy).
#[derive(Clone, Copy)]
enum Data<'a, T> {
    Native(Mat<'a, T>),
    Foreign(ArrayView<'a>),
}

/// Element `(r, c)` of a foreign view, converted to `T`.
fn convert_one<T: Element>(v: &ArrayView<'_>, r: usize, c: usize) -> T {
    with_dtype!(v.dtype(), S => cast::<S, T>(v.mat::<S>().get(r, c)))
}

/// Converts `out.len()` elements of row `r` of a foreign view, from column `c0`, into `out`.
fn convert_into<T: Element>(v: &ArrayView<'_>, r: usize, c0: usize, out: &mut [T]) {
    with_dtype!(v.dtype(), S => {
        let lane = v.mat::<S>().row(r);
        match lane.as_slice() {
            Some(x) => {
                let n = out.len();
                for (o, &e) in out.iter_mut().zip(&x[c0..c0 + n]) {
                    *o = cast::<S, T>(e);
                }
            }
            None => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = cast::<S, T>(lane.get(c0 + i));
                }
            }
        }
    })
}

/// Elements converted or gathered per block: stays in L1, on the stack.
const CONVERT_BLOCK: usize = 1024;

/// An operand broadcast against `[rows, cols]`, read in place: a broadcast
/// (zero-stride) operand is read as a scalar, a strided one gathered a
/// block at a time, one of another dtype converted a block at a time.
#[derive(Clone, Copy)]
struct Bcast<'a, T> {
    data: Data<'a, T>,
    /// The operand's own 2-D form.
    shape: [usize; 2],
    cols: usize,
}

/// A whole operand as one flat run matching the output.
#[derive(Clone, Copy)]
enum Flat<'a, T> {
    Slice(&'a [T]),
    Scalar(T),
    /// C-contiguous view of another dtype.
    Foreign(ArrayView<'a>),
}

impl<'a, T: Element> Bcast<'a, T> {
    fn new(t: &'a Typed<'a, T>, cols: usize) -> Self {
        match t {
            Typed::Deferred(v) => {
                let shape = match v.shape() {
                    [] => [1, 1],
                    [n] => [1, *n],
                    [r, c] => [*r, *c],
                    _ => unreachable!("at most 2-D"),
                };
                Bcast {
                    data: Data::Foreign(*v),
                    shape,
                    cols,
                }
            }
            _ => {
                let m = t.mat();
                Bcast {
                    data: Data::Native(m),
                    shape: m.shape,
                    cols,
                }
            }
        }
    }

    /// True when one output row sees a single value of this operand
    /// (broadcast along columns, or stride 0 along them).
    fn row_scalar(&self) -> bool {
        self.shape[1] == 1
            || match self.data {
                Data::Native(m) => m.strides[1] == 0,
                Data::Foreign(v) => v.byte_strides().last().is_none_or(|&s| s == 0),
            }
    }

    /// True when reading a run of a row needs a block buffer (a strided
    /// lane or another dtype).
    fn needs_buffer(&self) -> bool {
        !self.row_scalar()
            && match self.data {
                Data::Native(m) => m.strides[1] != 1,
                Data::Foreign(_) => true,
            }
    }

    /// Columns `c0..c0 + len` of output row `r`; gathered or converted into
    /// `buf` when needed (`len <= CONVERT_BLOCK` then).
    fn seg<'r>(
        &self,
        r: usize,
        c0: usize,
        len: usize,
        buf: &'r mut [T; CONVERT_BLOCK],
    ) -> Row<'r, T>
    where
        'a: 'r,
    {
        let r = if self.shape[0] == 1 { 0 } else { r };
        let scalar = self.row_scalar();
        match self.data {
            Data::Native(m) if scalar => Row::Scalar(m.get(r, 0)),
            Data::Native(m) => {
                let lane = m.row(r);
                match lane.as_slice() {
                    Some(s) => Row::Slice(&s[c0..c0 + len]),
                    None => {
                        for (i, o) in buf[..len].iter_mut().enumerate() {
                            *o = lane.get(c0 + i);
                        }
                        Row::Slice(&buf[..len])
                    }
                }
            }
            Data::Foreign(v) if scalar => Row::Scalar(convert_one::<T>(&v, r, 0)),
            Data::Foreign(v) => {
                convert_into(&v, r, c0, &mut buf[..len]);
                Row::Slice(&buf[..len])
            }
        }
    }

    fn flat(&self, rows: usize) -> Option<Flat<'a, T>> {
        let full = self.shape == [rows, self.cols];
        match self.data {
            Data::Native(m) if m.len() > 0 && m.is_constant() => Some(Flat::Scalar(m.get(0, 0))),
            Data::Native(m) if full => m.as_slice().map(Flat::Slice),
            Data::Foreign(v) if !v.is_empty() && v.is_constant() => {
                Some(Flat::Scalar(convert_one::<T>(&v, 0, 0)))
            }
            Data::Foreign(v) if full && v.is_c_contiguous() => Some(Flat::Foreign(v)),
            _ => None,
        }
    }
}

/// Writes every element of `out` (see the module docs).
fn binary_rows<T: Element, K: Binary<T>>(
    a: &Row<'_, T>,
    b: &Row<'_, T>,
    out: &mut [MaybeUninit<T>],
) {
    match (a, b) {
        (Row::Scalar(x), Row::Scalar(y)) => out.fill(MaybeUninit::new(K::apply(*x, *y))),
        (Row::Scalar(x), _) => loops::binary_sv::<T, K>(*x, b.as_slice().expect("not scalar"), out),
        (_, Row::Scalar(y)) => loops::binary_vs::<T, K>(a.as_slice().expect("not scalar"), *y, out),
        _ => loops::binary_vv::<T, K>(
            a.as_slice().expect("not scalar"),
            b.as_slice().expect("not scalar"),
            out,
        ),
    }
}

/// Sub-run `start..start+len` of a flat operand; a foreign one is
/// converted into `buf` (`len <= CONVERT_BLOCK`).
fn sub<'r, T: Element>(
    flat: &'r Flat<'_, T>,
    start: usize,
    len: usize,
    buf: &'r mut [T; CONVERT_BLOCK],
) -> Row<'r, T> {
    match flat {
        Flat::Scalar(s) => Row::Scalar(*s),
        Flat::Slice(s) => Row::Slice(&s[start..start + len]),
        Flat::Foreign(v) => {
            let cols = v.shape().last().copied().unwrap_or(1).max(1);
            let mut i = start;
            while i < start + len {
                let (r, c) = (i / cols, i % cols);
                let take = (cols - c).min(start + len - i);
                convert_into(v, r, c, &mut buf[i - start..i - start + take]);
                i += take;
            }
            Row::Slice(&buf[..len])
        }
    }
}

/// Runs `f` over `piece` (flat indices from `start`) in blocks of
/// `CONVERT_BLOCK`, with one conversion buffer per operand; every element
/// of `piece` is in exactly one block.
fn flat_blocks<T: Element, const N: usize>(
    flats: &[Flat<'_, T>; N],
    start: usize,
    piece: &mut [MaybeUninit<T>],
    f: impl Fn(&[Row<'_, T>; N], &mut [MaybeUninit<T>]),
) {
    if !flats.iter().any(|f| matches!(f, Flat::Foreign(_))) {
        let rows: [Row<'_, T>; N] = std::array::from_fn(|i| match flats[i] {
            Flat::Scalar(s) => Row::Scalar(s),
            Flat::Slice(s) => Row::Slice(&s[start..start + piece.len()]),
            Flat::Foreign(_) => unreachable!("checked above"),
        });
        return f(&rows, piece);
    }
    let mut bufs = [[T::ZERO; CONVERT_BLOCK]; N];
    for (b, out) in piece.chunks_mut(CONVERT_BLOCK).enumerate() {
        let s0 = start + b * CONVERT_BLOCK;
        let mut it = bufs.iter_mut();
        let rows: [Row<'_, T>; N] = std::array::from_fn(|i| {
            sub(
                &flats[i],
                s0,
                out.len(),
                it.next().expect("one buffer per operand"),
            )
        });
        f(&rows, out);
    }
}

/// Fills `out` (`rows x cols`, C order) with `f` applied to the operands'
/// rows: over flat runs when every operand is a full contiguous array or a
/// scalar (layout chosen once, here), else row by row.
///
/// Every element of `out` is handed to `f` exactly once; when `f` writes
/// all of the elements it is given and this returns `Ok`, `out` is fully
/// initialised.
fn fill_broadcast<T: Element, const N: usize>(
    ops: &[Bcast<'_, T>; N],
    rows: usize,
    cols: usize,
    out: &mut [MaybeUninit<T>],
    per_item: usize,
    exec: &dyn Exec,
    f: impl Fn(&[Row<'_, T>; N], &mut [MaybeUninit<T>]) + Sync,
) -> Result<(), KernelError> {
    let flats: [Option<Flat<'_, T>>; N] = std::array::from_fn(|i| ops[i].flat(rows));
    if flats.iter().all(Option::is_some) {
        let flats = flats.map(|f| f.expect("checked"));
        return fill_chunks(
            exec,
            out,
            chunk_items(per_item),
            per_item,
            |start, piece| flat_blocks(&flats, start, piece, &f),
        );
    }
    if cols == 0 {
        debug_assert!(out.is_empty());
        return Ok(()); // no columns: no elements to write
    }
    // Row by row, in flat chunks of the output (a chunk may start and end
    // inside a row); runs of a row are cut to CONVERT_BLOCK when an operand
    // needs a buffer.
    let buffered = ops.iter().any(Bcast::needs_buffer);
    fill_chunks(
        exec,
        out,
        chunk_items(per_item),
        per_item,
        |start, piece| {
            let mut bufs = [[T::ZERO; CONVERT_BLOCK]; N];
            let mut done = 0;
            while done < piece.len() {
                let i = start + done;
                let (r, c) = (i / cols, i % cols);
                let mut take = (cols - c).min(piece.len() - done);
                if buffered {
                    take = take.min(CONVERT_BLOCK);
                }
                let mut it = bufs.iter_mut();
                let rows: [Row<'_, T>; N] = std::array::from_fn(|k| {
                    ops[k].seg(r, c, take, it.next().expect("one buffer per operand"))
                });
                f(&rows, &mut piece[done..done + take]);
                done += take;
            }
        },
    )
}

/// The fast path's view of an operand: the result dtype already, and
/// either C-contiguous with all `n` output elements or one scalar.
fn direct<'a, T: Element>(t: &Typed<'a, T>, n: usize) -> Option<Row<'a, T>> {
    match t {
        Typed::Scalar(s) => Some(Row::Scalar(*s)),
        Typed::View(m) if m.len() == n => m.as_slice().map(Row::Slice),
        Typed::View(m) if m.len() == 1 => Some(Row::Scalar(m.get(0, 0))),
        _ => None,
    }
}

/// Sub-run `start..start + len` of a fast-path operand.
fn direct_sub<'r, T: Element>(row: &Row<'r, T>, start: usize, len: usize) -> Row<'r, T> {
    match row {
        Row::Slice(s) => Row::Slice(&s[start..start + len]),
        Row::Scalar(x) => Row::Scalar(*x),
    }
}

fn run_binary<'a, T: Element, K: Binary<T>>(
    a: &'a Typed<'a, T>,
    b: &'a Typed<'a, T>,
    shape: Vec<usize>,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let [rows, cols] = out_dims(&shape);
    let n = rows * cols;
    let per_item = 3 * std::mem::size_of::<T>();
    let out = if let (Some(x), Some(y)) = (direct(a, n), direct(b, n)) {
        // Fast path: no broadcast bookkeeping, one loop call per chunk.
        // SAFETY: `fill_chunks` hands every element of the output to the
        // closure exactly once, and `binary_rows` writes every element of
        // the run it is given (operand runs have the run's length).
        unsafe {
            alloc::written(kernel, n, |out| {
                fill_chunks(
                    exec,
                    out,
                    chunk_items(per_item),
                    per_item,
                    |start, piece| {
                        let len = piece.len();
                        binary_rows::<T, K>(
                            &direct_sub(&x, start, len),
                            &direct_sub(&y, start, len),
                            piece,
                        )
                    },
                )
            })?
        }
    } else {
        let ops = [Bcast::new(a, cols), Bcast::new(b, cols)];
        // SAFETY: `fill_broadcast` hands every output element to the
        // closure exactly once; `binary_rows` writes all it is given.
        unsafe {
            alloc::written(kernel, n, |out| {
                fill_broadcast(&ops, rows, cols, out, per_item, exec, |r, o| {
                    binary_rows::<T, K>(&r[0], &r[1], o)
                })
            })?
        }
    };
    Ok(Value::from_vec(out, shape))
}

/// add / subtract / multiply / divide (and scale) with broadcasting and NEP 50 promotion.
///
/// `kernel` names the calling kernel in a `Memory` error.
pub(crate) fn binary(
    op: BinaryOp,
    operands: &[Operand<'_>],
    shape: Vec<usize>,
    dt: DType,
    kernel: &'static str,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    if op == BinaryOp::Divide {
        return with_float_dtype!(dt, T => {
            let (a, b) = (Typed::<T>::lazy(&operands[0]), Typed::<T>::lazy(&operands[1]));
            run_binary::<T, DivK>(&a, &b, shape, kernel, exec)
        });
    }
    with_dtype!(dt, T => {
        let (a, b) = (Typed::<T>::lazy(&operands[0]), Typed::<T>::lazy(&operands[1]));
        match op {
            BinaryOp::Add => run_binary::<T, AddK>(&a, &b, shape, kernel, exec),
            BinaryOp::Subtract => run_binary::<T, SubK>(&a, &b, shape, kernel, exec),
            _ => run_binary::<T, MulK>(&a, &b, shape, kernel, exec),
        }
    })
}

fn run_clip<'a, T: Element>(
    t: &'a [Typed<'a, T>; 3],
    shape: Vec<usize>,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    let [rows, cols] = out_dims(&shape);
    let n = rows * cols;
    let ops = [0, 1, 2].map(|i| Bcast::new(&t[i], cols));
    let per_item = 2 * std::mem::size_of::<T>();
    // Writes every element of `out`.
    let clip_row = |a: &Row<'_, T>,
                    lo: &Row<'_, T>,
                    hi: &Row<'_, T>,
                    out: &mut [MaybeUninit<T>]| match (a, lo, hi) {
        (_, Row::Scalar(l), Row::Scalar(h)) => match a {
            Row::Scalar(x) => out.fill(MaybeUninit::new(loops::clip_one(*x, *l, *h))),
            _ => loops::clip_vs(a.as_slice().expect("not scalar"), *l, *h, out),
        },
        _ => {
            let get = |r: &Row<'_, T>, i: usize| match r {
                Row::Scalar(s) => *s,
                _ => r.as_slice().expect("not scalar")[i],
            };
            for (i, o) in out.iter_mut().enumerate() {
                o.write(loops::clip_one(get(a, i), get(lo, i), get(hi, i)));
            }
        }
    };
    // SAFETY: `fill_broadcast` hands every output element to the closure
    // exactly once; `clip_row` writes all it is given.
    let out = unsafe {
        alloc::written("clip", n, |out| {
            fill_broadcast(&ops, rows, cols, out, per_item, exec, |r, o| {
                clip_row(&r[0], &r[1], &r[2], o)
            })
        })?
    };
    Ok(Value::from_vec(out, shape))
}

/// `np.clip(a, lo, hi)`: `minimum(maximum(a, lo), hi)` with NumPy's NaN and
/// tie rules; out-of-range Python int bounds saturate as in NumPy.
pub(crate) fn clip(
    operands: &[Operand<'_>],
    shape: Vec<usize>,
    dt: DType,
    exec: &dyn Exec,
) -> Result<Value, KernelError> {
    with_dtype!(dt, T => {
        let t = [0, 1, 2].map(|i| Typed::<T>::lazy(&operands[i]));
        run_clip::<T>(&t, shape, exec)
    })
}
