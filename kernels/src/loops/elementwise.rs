//! Element-by-element loops over contiguous runs: binary ufuncs (vector with
//! vector, vector with broadcast scalar), in-place accumulation, clip, axpy.
//!
//! Loops that produce an output write it through `&mut [MaybeUninit<T>]`:
//! they never read it, and they write every one of its elements (the
//! inputs must have the output's length: asserted once per call), which is
//! what `alloc::written` relies on.

use super::multiversion;
use super::reduce::{pick_max, pick_min};
use crate::dtype::{Element, Float};
use std::mem::MaybeUninit;

/// A binary ufunc's scalar rule. Implemented by zero-sized kernel types so
/// that every loop is monomorphised (and vectorised) per ufunc and dtype.
pub(crate) trait Binary<T>: Copy + Send + Sync + 'static {
    fn apply(a: T, b: T) -> T;
}

#[derive(Clone, Copy)]
pub(crate) struct AddK;
#[derive(Clone, Copy)]
pub(crate) struct SubK;
#[derive(Clone, Copy)]
pub(crate) struct MulK;
#[derive(Clone, Copy)]
pub(crate) struct DivK;
/// `np.minimum` (NaN-propagating).
#[derive(Clone, Copy)]
pub(crate) struct MinK;
/// `np.maximum` (NaN-propagating).
#[derive(Clone, Copy)]
pub(crate) struct MaxK;

impl<T: Element> Binary<T> for AddK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        a.add(b)
    }
}
impl<T: Element> Binary<T> for SubK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        a.sub(b)
    }
}
impl<T: Element> Binary<T> for MulK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        a.mul(b)
    }
}
impl<T: Float> Binary<T> for DivK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        a.div(b)
    }
}
impl<T: Element> Binary<T> for MinK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        pick_min(a, b)
    }
}
impl<T: Element> Binary<T> for MaxK {
    #[inline(always)]
    fn apply(a: T, b: T) -> T {
        pick_max(a, b)
    }
}

#[inline(always)]
fn vv_body<T: Element, K: Binary<T>>(a: &[T], b: &[T], out: &mut [MaybeUninit<T>]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "operand lengths"
    );
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        o.write(K::apply(x, y));
    }
}

#[inline(always)]
fn vs_body<T: Element, K: Binary<T>>(a: &[T], b: T, out: &mut [MaybeUninit<T>]) {
    assert_eq!(a.len(), out.len(), "operand length");
    for (o, &x) in out.iter_mut().zip(a) {
        o.write(K::apply(x, b));
    }
}

#[inline(always)]
fn sv_body<T: Element, K: Binary<T>>(a: T, b: &[T], out: &mut [MaybeUninit<T>]) {
    assert_eq!(b.len(), out.len(), "operand length");
    for (o, &y) in out.iter_mut().zip(b) {
        o.write(K::apply(a, y));
    }
}

#[inline(always)]
fn acc_body<T: Element, K: Binary<T>>(acc: &mut [T], x: &[T]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = K::apply(*a, v);
    }
}

multiversion! {
    /// `out[i] = K(a[i], b[i])`.
    fn binary_vv<T: Element, K: Binary<T>>(a: &[T], b: &[T], out: &mut [MaybeUninit<T>]) = vv_body;
}
multiversion! {
    /// `out[i] = K(a[i], b)`.
    fn binary_vs<T: Element, K: Binary<T>>(a: &[T], b: T, out: &mut [MaybeUninit<T>]) = vs_body;
}
multiversion! {
    /// `out[i] = K(a, b[i])`.
    fn binary_sv<T: Element, K: Binary<T>>(a: T, b: &[T], out: &mut [MaybeUninit<T>]) = sv_body;
}
multiversion! {
    /// `acc[i] = K(acc[i], x[i])` (column reductions, row accumulation).
    fn accumulate<T: Element, K: Binary<T>>(acc: &mut [T], x: &[T]) = acc_body;
}

/// `np.clip`'s rule for one element: `x` unless it is below `lo` / above
/// `hi`; NaN in `x` or in a bound gives NaN; equal values keep `x`.
#[inline(always)]
pub(crate) fn clip_one<T: Element>(x: T, lo: T, hi: T) -> T {
    let x = if x < lo || lo.is_nan() { lo } else { x };
    if x > hi || hi.is_nan() {
        hi
    } else {
        x
    }
}

#[inline(always)]
fn clip_body<T: Element>(a: &[T], lo: T, hi: T, out: &mut [MaybeUninit<T>]) {
    assert_eq!(a.len(), out.len(), "operand length");
    for (o, &x) in out.iter_mut().zip(a) {
        o.write(clip_one(x, lo, hi));
    }
}

multiversion! {
    /// `out[i] = clip(a[i], lo, hi)`.
    fn clip_vs<T: Element>(a: &[T], lo: T, hi: T, out: &mut [MaybeUninit<T>]) = clip_body;
}

#[inline(always)]
fn axpy_body<T: Element>(alpha: T, x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = o.add(alpha.mul(v));
    }
}

multiversion! {
    /// `y[i] += alpha * x[i]` (vector-matrix products, GEMM fallback).
    fn axpy<T: Element>(alpha: T, x: &[T], y: &mut [T]) = axpy_body;
}

#[inline(always)]
fn square_add_body<T: Element>(acc: &mut [T], x: &[T]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = a.add(v.mul(v));
    }
}

multiversion! {
    /// `acc[i] += x[i] * x[i]` (column norms).
    fn square_accumulate<T: Element>(acc: &mut [T], x: &[T]) = square_add_body;
}
