//! Where a kernel runs (`Exec`), and the one helper that splits a kernel into
//! chunks: serially with cancellation checks, or across the current rayon pool.
//!
//! Invariant: chunk boundaries depend only on the problem size, never on the
//! thread count, and chunk results are combined in chunk order. A kernel
//! therefore returns bit-identical results serially and in parallel.

use crate::error::KernelError;
use rayon::prelude::*;
use std::ops::Range;

/// Where a kernel runs: supplied by the runtime.
pub trait Exec: Sync {
    /// Threads the kernel may use (the pool's size); 1 means serial.
    fn max_threads(&self) -> usize {
        1
    }
    /// Polled between chunks; `true` stops the kernel with `KernelError::Cancelled`.
    fn is_cancelled(&self) -> bool {
        false
    }
    /// Called just before the kernel splits, so that sleeping pool threads
    /// are awake to steal the pieces.
    fn wake_helpers(&self) {}
}

/// Runs kernels on the calling thread with no cancellation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Exec for Serial {}

/// Bytes of input one chunk covers: small enough for prompt cancellation
/// (~10 µs at memory bandwidth), large enough that per-chunk costs vanish.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// Least input, in bytes, worth splitting across threads. Waking a helper
/// costs ~20-40 µs here, so splitting pays from roughly 100 µs of work.
pub(crate) const PAR_MIN_BYTES: usize = 4 * 1024 * 1024;

/// True when `exec` lets this call split across the pool it runs on.
pub(crate) fn can_split(exec: &dyn Exec) -> bool {
    exec.max_threads() > 1 && rayon::current_thread_index().is_some()
}

fn cancelled(exec: &dyn Exec) -> Result<(), KernelError> {
    if exec.is_cancelled() {
        Err(KernelError::Cancelled)
    } else {
        Ok(())
    }
}

/// Splits `0..n` into chunks of `chunk` items and maps each one with `f`,
/// returning results in chunk order.
///
/// `bytes_per_item` sizes the decision to go parallel. Cancellation is
/// checked before every chunk when there is more than one.
pub(crate) fn map_chunks<R, F>(
    exec: &dyn Exec,
    n: usize,
    chunk: usize,
    bytes_per_item: usize,
    f: F,
) -> Result<Vec<R>, KernelError>
where
    R: Send,
    F: Fn(Range<usize>) -> R + Sync,
{
    let chunk = chunk.max(1);
    let count = n.div_ceil(chunk).max(1);
    if count == 1 {
        return Ok(vec![f(0..n)]);
    }
    let range = |i: usize| i * chunk..((i + 1) * chunk).min(n);
    if n.saturating_mul(bytes_per_item) >= PAR_MIN_BYTES && can_split(exec) {
        exec.wake_helpers();
        (0..count)
            .into_par_iter()
            .map(|i| {
                cancelled(exec)?;
                Ok(f(range(i)))
            })
            .collect()
    } else {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            cancelled(exec)?;
            out.push(f(range(i)));
        }
        Ok(out)
    }
}

/// Number of items per chunk for items of `bytes_per_item` bytes.
pub(crate) fn chunk_items(bytes_per_item: usize) -> usize {
    (CHUNK_BYTES / bytes_per_item.max(1)).max(1)
}

/// Fills `out` in chunks of `chunk` items with `f(start_index, piece)`,
/// in parallel when allowed; cancellation is checked before every chunk.
pub(crate) fn fill_chunks<T, F>(
    exec: &dyn Exec,
    out: &mut [T],
    chunk: usize,
    bytes_per_item: usize,
    f: F,
) -> Result<(), KernelError>
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk = chunk.max(1);
    let n = out.len();
    if n <= chunk {
        f(0, out);
        return Ok(());
    }
    if n.saturating_mul(bytes_per_item) >= PAR_MIN_BYTES && can_split(exec) {
        exec.wake_helpers();
        out.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, piece)| {
                cancelled(exec)?;
                f(i * chunk, piece);
                Ok(())
            })
    } else {
        for (i, piece) in out.chunks_mut(chunk).enumerate() {
            cancelled(exec)?;
            f(i * chunk, piece);
        }
        Ok(())
    }
}
