//! The memory rule: every buffer a kernel allocates (outputs, conversion
//! copies, scratch) goes through this module, so that a request that cannot
//! be met is `KernelError::Memory` (Python's `MemoryError`, naming the size
//! and the kernel) instead of an abort, and an element count whose byte size
//! overflows is refused before the allocator is asked.
//!
//! The limit: one allocation may not exceed [`alloc_limit`], the memory
//! this process could ever have (physical memory, or the cgroup's
//! `memory.max` when lower). Asking the allocator is not enough on its own:
//! the bindings' allocator (mimalloc) reserves address space without
//! committing it, so an 8 TB request "succeeds" and the process is killed
//! by the OOM killer while the kernel writes it. A request within the limit
//! that the allocator refuses is the same error.
//!
//! Invariant: no kernel calls `vec![..; n]`, `Vec::with_capacity(n)` or
//! `collect` for a buffer whose length comes from the operands' shapes
//! (bounded per-chunk scratch of at most `CHUNK_BYTES` is exempt only when
//! it is on the stack).
//!
//! Outputs that the loops write exactly once (the element-wise ops) come
//! from [`written`]: allocated uninitialised (no zero fill, no page touched
//! before the loop writes it), handed to the loops as `MaybeUninit`, and
//! given their length only after every element was written. Outputs that a
//! kernel accumulates into start from [`zeroed`].

use crate::dtype::Element;
use crate::error::KernelError;
use std::alloc::{alloc_zeroed, Layout};
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The error for `n` elements of `item` bytes wanted by `kernel`.
pub(crate) fn memory_error(kernel: &'static str, n: usize, item: usize) -> KernelError {
    KernelError::Memory {
        kernel,
        bytes: n as u128 * item as u128,
    }
}

/// Largest single allocation a kernel makes, in bytes: the smaller of the
/// machine's physical memory (`MemTotal` of `/proc/meminfo`) and the
/// cgroup v2 limit (`/sys/fs/cgroup/memory.max`), read once; `isize::MAX`
/// where neither can be read.
pub fn alloc_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
                kib.checked_mul(1024)
            })
            .unwrap_or(isize::MAX as usize);
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        total.min(cgroup).min(isize::MAX as usize)
    })
}

/// Refuses, before any allocation, a buffer of `n` elements of `item` bytes
/// larger than [`alloc_limit`].
pub(crate) fn check_bytes(kernel: &'static str, n: usize, item: usize) -> Result<(), KernelError> {
    match n.checked_mul(item) {
        Some(b) if b <= alloc_limit() => Ok(()),
        _ => Err(memory_error(kernel, n, item)),
    }
}

/// `n` zeros, allocated fallibly. Like `vec![T::ZERO; n]` it asks the
/// allocator for zeroed memory (fresh pages are not touched until written).
pub(crate) fn zeroed<T: Element>(kernel: &'static str, n: usize) -> Result<Vec<T>, KernelError> {
    let item = std::mem::size_of::<T>();
    check_bytes(kernel, n, item)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = Layout::array::<T>(n).map_err(|_| memory_error(kernel, n, item))?;
    // SAFETY: `layout` has a non-zero size (n > 0 and every Element is 4 or 8 bytes).
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(memory_error(kernel, n, item));
    }
    debug_assert!(T::ZERO.to_f64() == 0.0 && T::ZERO.to_f64().is_sign_positive());
    // SAFETY: `ptr` was allocated by the global allocator with the layout of
    // `n` elements of `T`, so it is valid as a Vec of capacity `n`; every
    // Element (i32, i64, f32, f64) has all-zero bits as a valid value equal
    // to `T::ZERO`, so all `n` elements are initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// An empty vector with room for `n` elements, allocated fallibly.
pub(crate) fn with_capacity<T>(kernel: &'static str, n: usize) -> Result<Vec<T>, KernelError> {
    let item = std::mem::size_of::<T>();
    check_bytes(kernel, n, item)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| memory_error(kernel, n, item))?;
    Ok(v)
}

/// `n` elements written once by `fill`, allocated fallibly and never zero
/// filled: `fill` gets the `n` uninitialised slots and the vector takes its
/// length only when `fill` returns `Ok`. On `Err` (a cancelled kernel) the
/// memory is freed without being read.
///
/// # Safety
/// When `fill` returns `Ok(())` it must have written every element of the
/// slice it was given (through `MaybeUninit::write` or by assigning
/// `MaybeUninit::new`), so that all `n` elements are initialised.
pub(crate) unsafe fn written<T>(
    kernel: &'static str,
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]) -> Result<(), KernelError>,
) -> Result<Vec<T>, KernelError> {
    let mut v = with_capacity::<T>(kernel, n)?;
    fill(&mut v.spare_capacity_mut()[..n])?;
    // SAFETY: `with_capacity` reserved at least `n` elements, and by this
    // function's contract `fill` returned `Ok` only after initialising all
    // of the first `n` (the slice it was given). Nothing read them before.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// `n` copies of `x`, allocated fallibly.
pub(crate) fn filled<T: Element>(
    kernel: &'static str,
    n: usize,
    x: T,
) -> Result<Vec<T>, KernelError> {
    let mut v = with_capacity(kernel, n)?;
    v.resize(n, x);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_refuses_an_impossible_size_before_calling_fill() {
        let n = usize::MAX / 8 + 1;
        // SAFETY: `fill` is never called (and would write nothing).
        let got = unsafe { written::<f64>("add", n, |_| panic!("fill called")) };
        assert!(matches!(
            got,
            Err(KernelError::Memory { kernel: "add", .. })
        ));
        let beyond = alloc_limit() / 8 + 1;
        // SAFETY: as above.
        let got = unsafe { written::<f64>("add", beyond, |_| panic!("fill called")) };
        assert!(matches!(
            got,
            Err(KernelError::Memory { kernel: "add", .. })
        ));
    }

    #[test]
    fn written_takes_its_length_only_after_fill_succeeds() {
        // SAFETY: the closure writes every element.
        let v = unsafe {
            written::<i32>("add", 5, |out| {
                assert_eq!(out.len(), 5);
                for (i, o) in out.iter_mut().enumerate() {
                    o.write(i as i32);
                }
                Ok(())
            })
        };
        assert_eq!(v.unwrap(), [0, 1, 2, 3, 4]);
        // A fill that fails (a cancelled kernel) frees the memory unread.
        // SAFETY: the closure returns Err, so nothing is taken as initialised.
        let v = unsafe { written::<f64>("add", 1 << 20, |_| Err(KernelError::Cancelled)) };
        assert!(matches!(v, Err(KernelError::Cancelled)));
        // SAFETY: nothing to write.
        let v = unsafe {
            written::<f32>("add", 0, |out| {
                assert!(out.is_empty());
                Ok(())
            })
        };
        assert!(v.unwrap().is_empty());
    }
}
