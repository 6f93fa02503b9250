//! Per-thread packing buffers, reused across calls so steady-state GEMMs do not allocate.

use std::cell::RefCell;

/// One cache line; the unit of allocation, so every region starts 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Most buffers a thread keeps between calls: a parallel GEMM's calling thread holds two at once
/// (shared A block, its own B block); more only arise from nested calls via work stealing.
const KEEP: usize = 3;

thread_local! {
    static SPARE: RefCell<Vec<Vec<Line>>> = const { RefCell::new(Vec::new()) };
}

/// Scratch memory borrowed from the current thread's spare buffers.
///
/// A buffer is moved out while in use, so a nested GEMM on the same thread (rayon work stealing
/// inside a join) gets another buffer instead of aliasing this one.
pub(super) struct Workspace {
    lines: Vec<Line>,
}

impl Workspace {
    /// A workspace of at least `bytes` bytes.
    pub fn take(bytes: usize) -> Self {
        let need = bytes.div_ceil(64);
        let reused = SPARE.with_borrow_mut(|spare| {
            let fit = spare.iter().position(|buf| buf.len() >= need);
            fit.or(spare.len().checked_sub(1))
                .map(|i| spare.swap_remove(i))
        });
        let mut lines = reused.unwrap_or_default();
        if lines.len() < need {
            lines = vec![Line([0; 64]); need];
        }
        Workspace { lines }
    }

    /// Splits the workspace into regions of the given element counts, each 64-byte aligned.
    ///
    /// Panics if the regions do not fit (a sizing bug, not an input condition).
    pub fn regions<T, const N: usize>(&mut self, lens: [usize; N]) -> [*mut T; N] {
        let base = self.lines.as_mut_ptr();
        let mut line = 0;
        lens.map(|len| {
            let start = line;
            line += (len * size_of::<T>()).div_ceil(64);
            assert!(line <= self.lines.len(), "gemm workspace undersized");
            base.wrapping_add(start).cast::<T>()
        })
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEEP {
                spare.push(lines);
            }
        });
    }
}

/// Bytes needed for `lens` elements of `T` as laid out by [`Workspace::regions`].
pub(super) fn bytes_for<T>(lens: &[usize]) -> usize {
    lens.iter()
        .map(|len| (len * size_of::<T>()).div_ceil(64) * 64)
        .sum()
}
