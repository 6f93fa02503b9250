//! The microkernel contract shared by every ISA, and the cache-blocking plan that goes with it.

use super::matrix::Strided;
use super::pack::{pack_a, pack_b};
use super::GemmElement;

/// Computes one `mr x nr` tile of C from packed operands.
///
/// Arguments: `(k, a, b, c, ldc, overwrite)`. `a` is an A micro-panel packed by
/// [`super::pack::pack_a`] (`k` groups of `mr` values), `b` a B micro-panel packed by
/// [`super::pack::pack_b`] (`k` groups of `nr` values). The tile at `c` has row stride `ldc` and
/// unit column stride; it is overwritten when `overwrite` is true, accumulated into otherwise.
///
/// # Safety
/// `a` must be readable for `k * mr` elements, `b` for `k * nr`, the tile at `c` writable for
/// `mr` rows of `nr` elements, and the CPU must support the kernel's ISA.
pub type MicroKernel<T> = unsafe fn(usize, *const T, *const T, *mut T, usize, bool);

/// Packs a block of A or B into micro-panels: `(src, rows, cols, dst)`; see [`super::pack`].
///
/// # Safety
/// Every element of the `rows x cols` block of `src` must be readable and `dst` writable for the
/// packed size.
pub type Packer<T> = unsafe fn(Strided<T>, usize, usize, *mut T);

/// A microkernel with its register tile and cache blocking.
///
/// Invariants: `nc` is a multiple of `nr`; `mc` is a multiple of `mr`; all are non-zero.
/// `kc x nc` elements of packed B are meant to stay in L2 while each packed `mr x kc` A
/// micro-panel is reused from L1 across the whole B block.
pub struct KernelSpec<T> {
    /// Name of the instruction set the microkernel uses, for benchmarks and diagnostics.
    pub(super) isa: &'static str,
    pub(super) mr: usize,
    pub(super) nr: usize,
    pub(super) kc: usize,
    pub(super) mc: usize,
    pub(super) nc: usize,
    pub(super) ukr: MicroKernel<T>,
    /// Packs `rows x kc` of A into `mr`-row panels.
    pub(super) pack_a: Packer<T>,
    /// Packs `kc x cols` of B into `nr`-column panels.
    pub(super) pack_b: Packer<T>,
}

impl<T: GemmElement> KernelSpec<T> {
    /// Builds the spec for an `MR x NR` microkernel, rounding the cache blocks to whole tiles.
    pub(super) fn new<const MR: usize, const NR: usize>(
        isa: &'static str,
        (mc, kc, nc): (usize, usize, usize),
        ukr: MicroKernel<T>,
    ) -> Self {
        KernelSpec {
            isa,
            mr: MR,
            nr: NR,
            kc: kc.max(1),
            mc: mc.max(MR) / MR * MR,
            nc: nc.max(NR) / NR * NR,
            ukr,
            pack_a: pack_a::<T, MR>,
            pack_b: pack_b::<T, NR>,
        }
    }
}
