//! Single-precision matrix product for x86-64 CPUs with AVX2 and FMA or AVX-512:
//! operands packed into panels (BLIS's scheme) and a register-blocked kernel written with
//! `std::arch` intrinsics, 6x16 in twelve 256-bit registers (AVX2) or 12x32 in 24 512-bit
//! registers (AVX-512), chosen at run time by [`super::isa::active`]. Every linear layer,
//! attention product and convolution of the CPU models runs through it
//! ([`super::conv_gemm::gemm_raw`] calls it when [`available`], and the `gemm` crate
//! otherwise).
//!
//! Why by hand: the `gemm` crate (candle's CPU matmul) reached 134-136 GFLOP/s over the
//! products of a DeiT train step on this 2-core machine against PyTorch's 152-153, 1.3-1.5x
//! slower on the weight gradients (`dyᵀ·x`, a transposed operand and a long `k`) and on
//! the 192x192 products, and 2x slower on attention's small per-head products
//! (`cargo bench -p kernels --bench gemm_shapes` against `tools/bench_torch_gemm.py`,
//! BENCHMARKS.md). With the matrix products at two thirds of a train step, that gap was
//! most of what separated our step from PyTorch's. No maintained crate we can take offers
//! a faster f32 GEMM without a system BLAS. This one runs the same products at 206-212
//! GFLOP/s (torch 187 on the same machine, 2026-12-05; BENCHMARKS.md). On a 2-core Xeon
//! with two 512-bit FMA units the AVX-512 kernel runs them at 201 GFLOP/s against the
//! AVX2 kernel's 104 (2026-12-06); on Zen 4, which splits 512-bit FMAs in two, both
//! kernels reach the same peak. Where the CPU has AVX512-BF16, a product of two bf16
//! operands (mixed precision) is packed as bf16 pairs and runs on a `vdpbf16ps` kernel
//! instead (the `bf16` module).
//!
//! The scheme: `C = scale * A·B` is cut into blocks of `KC` along `k` and `NC` along
//! `n`; each block of `B` is copied once into `NR`-column panels (`k`-major, zero-padded);
//! a transposed `A` is copied `MC x KC` at a time into `MR`-row panels, a non-transposed
//! one is read in place (only its last partial panel is copied). The kernel multiplies one
//! `A` panel by one `B` panel with its `MR x NR` tile of `C` in registers. Packing
//! reads either layout of either operand, so no caller copies. With several threads the
//! product is cut into one sub-product per thread (a range of rows or of columns of `C`),
//! each run whole by its thread; every element of `C` is summed in the same order whatever
//! the split, so the result does not depend on the thread count.

use rayon::prelude::*;
use std::cell::RefCell;

use super::isa::{self, Isa};
use super::precision::round_slice_serial;

mod bf16;

/// Depth of one packed block. Each block past the first reloads and rewrites the tile of
/// `C`: on the DeiT products (`k` up to 4224) 256 gave 167-178 GFLOP/s, 512 gave 191 and
/// 768 gave 191-194, 1024 and more less (`gemm_shapes`, 2 threads, 2026-12-05). A `B`
/// panel is then 48 KiB, streamed through L1 by the prefetcher.
const KC: usize = 768;
/// Rows of one packed `A` block (`MC x KC`, 432 KiB, stays in this CPU's 1 MiB L2; 72 and
/// 288 measured the same); rounded down to a multiple of the kernel's `MR`.
const MC: usize = 144;
/// Columns of one packed `B` block.
const NC: usize = 3072;
/// Products below this many multiply-adds run on the calling thread only.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// One of our register-blocked kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 6x16 tile, AVX2 and FMA.
    Avx2,
    /// 12x32 tile, AVX-512 F with FMA.
    Avx512,
    /// [`Kernel::Avx512`] for f32 operands; a product of two bf16 operands packed as bf16
    /// pairs and multiplied by `vdpbf16ps`, 12x32 (AVX512-BF16; `bf16` module).
    Avx512Bf16,
}

impl Kernel {
    /// The kernel for an instruction-set level (none below AVX2).
    pub fn for_isa(isa: Isa) -> Option<Kernel> {
        match isa {
            Isa::Scalar => None,
            Isa::Avx2 => Some(Kernel::Avx2),
            Isa::Avx512 => Some(Kernel::Avx512),
            Isa::Avx512Bf16 => Some(Kernel::Avx512Bf16),
        }
    }

    /// What it is, for reports: `avx2 6x16`, `avx512 12x32`.
    pub fn describe(self) -> &'static str {
        match self {
            Kernel::Avx2 => "avx2 6x16",
            Kernel::Avx512 => "avx512 12x32",
            Kernel::Avx512Bf16 => "avx512 12x32, bf16 products avx512bf16 12x32",
        }
    }

    /// The level the kernel needs.
    fn isa(self) -> Isa {
        match self {
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Avx512 => Isa::Avx512,
            Kernel::Avx512Bf16 => Isa::Avx512Bf16,
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        self.isa() <= isa::detected()
    }

    /// Every kernel this CPU can run (for tests that compare them).
    pub fn supported() -> Vec<Kernel> {
        [Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Bf16]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }
}

/// The kernel [`sgemm`] runs: the one for [`isa::active`], none at the scalar level or
/// when the environment sets `DEIT_PIPE_SGEMM=off` (which sends every product to the
/// `gemm` crate, for A/B measurements).
pub fn kernel() -> Option<Kernel> {
    use std::sync::OnceLock;
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if std::env::var("DEIT_PIPE_SGEMM").as_deref() == Ok("off") {
            return None;
        }
        Kernel::for_isa(isa::active())
    })
}

/// True when [`sgemm`] has a kernel to run (see [`kernel`]).
pub fn available() -> bool {
    kernel().is_some()
}

/// One operand: the buffer, its leading dimension (distance between rows), whether it is
/// read transposed (element `(i, j)` at `j * ld + i` instead of `i * ld + j`), and whether
/// its elements are rounded to bf16 as they are packed (bf16 mixed precision, see
/// [`super::precision`]: the buffer itself is left as it is).
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows of the stored matrix.
    pub ld: usize,
    /// Read the stored matrix transposed.
    pub trans: bool,
    /// Read every element rounded to bf16 (to nearest even).
    pub bf16: bool,
}

impl<'a> Operand<'a> {
    /// The operand whose element `(0, 0)` is this one's `(i, j)`.
    fn from(self, i: usize, j: usize) -> Operand<'a> {
        Operand {
            data: &self.data[self.at(i, j).min(self.data.len())..],
            ..self
        }
    }

    /// Offset of logical element `(i, j)`.
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> usize {
        if self.trans {
            j * self.ld + i
        } else {
            i * self.ld + j
        }
    }
}

/// Where the product goes: `m` rows of `n` elements, row `i` at `ptr + i * ld`.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: a `Dst` is only handed to threads that write disjoint parts of it (`sgemm`'s
// split by rows or columns), and the caller of `sgemm` guarantees exclusive access.
unsafe impl Send for Dst {}
// SAFETY: as above; the threads only read the pointer value.
unsafe impl Sync for Dst {}

impl Dst {
    /// The destination starting at element `(i, j)` of this one.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the destination.
    unsafe fn offset(self, i: usize, j: usize) -> Dst {
        Dst {
            // SAFETY: the caller's guarantee.
            ptr: unsafe { self.ptr.add(i * self.ld + j) },
            ld: self.ld,
        }
    }
}

/// Writes zeros to the first `n` columns of the given rows (a product with `k = 0`).
///
/// # Safety
/// As for [`sgemm`]'s destination.
unsafe fn zero_rows(dst: Dst, rows: std::ops::Range<usize>, n: usize) {
    for i in rows {
        // SAFETY: row `i`, columns `0..n` are inside the destination.
        unsafe { std::ptr::write_bytes(dst.ptr.add(i * dst.ld), 0, n) };
    }
}

/// A 64-byte aligned group of 16 four-byte words, so packed panels start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lane16([u32; 16]);

/// An element of packed panels: f32s, or the `bf16` module's pairs.
///
/// # Safety
/// Four bytes, alignment at most four, and every bit pattern a valid value.
unsafe trait Word: Copy {}
// SAFETY: four bytes, any bits an f32.
unsafe impl Word for f32 {}
// SAFETY: four bytes, any bits a u32.
unsafe impl Word for u32 {}

/// A reusable, 64-byte aligned scratch buffer of at least `len` elements.
fn scratch<T: Word>(buf: &mut Vec<Lane16>, len: usize) -> &mut [T] {
    const { assert!(std::mem::size_of::<T>() == 4 && std::mem::align_of::<T>() <= 4) };
    let lanes = len.div_ceil(16);
    if buf.len() < lanes {
        buf.resize(lanes, Lane16([0; 16]));
    }
    // SAFETY: `Lane16` is `repr(C)` around `[u32; 16]`, so `lanes` of them are `16 * lanes`
    // contiguous, initialized words, each a valid `T` (`Word`: four bytes, any bits),
    // borrowed mutably from `buf` for the result's life.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<T>(), len) }
}

thread_local! {
    /// Packed `A` blocks of the calling thread (kept between products, every kernel's).
    static PACK_A: RefCell<Vec<Lane16>> = const { RefCell::new(Vec::new()) };
    /// Packed `B` blocks of the calling thread (kept between products, every kernel's).
    static PACK_B: RefCell<Vec<Lane16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the calling thread's packing buffers for `A` and `B`, which the f32 and
/// bf16 paths share (one set per thread, whichever precision runs). `f` must not wait on
/// other threads, so that no other product can start on this thread while they are
/// borrowed.
fn with_pack_buffers<R>(f: impl FnOnce(&mut Vec<Lane16>, &mut Vec<Lane16>) -> R) -> R {
    PACK_A.with_borrow_mut(|pa| PACK_B.with_borrow_mut(|pb| f(pa, pb)))
}

/// `dst = scale * (lhs x rhs)` (`m x k` by `k x n`), every element of the `m x n`
/// destination written, none read; `parallel` splits it over rayon's threads. Runs
/// [`kernel`]; callers check [`available`] first.
///
/// With several threads the product is cut into one sub-product per thread, along the
/// rows of `dst` or along its columns, whichever makes each thread re-pack the smaller
/// operand, and each runs the whole `k` loop alone: one fork and join per product. (One
/// join per `KC` block, sharing the packed `B`, ran the weight gradients' long-`k`
/// products at half the speed of one thread: each join wakes the other core, which on
/// this VM costs about as much as a block's work.)
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` floats at stride `dst_ld >= n`, with
/// no other access to them during the call; the operands must hold every element the
/// product reads (`m x k` and `k x n` at their leading dimensions), and [`available`]
/// must be true.
pub unsafe fn sgemm(
    dst: (*mut f32, usize),
    dims: (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
    parallel: bool,
) {
    let kernel = kernel().expect("sgemm called without a kernel (check `available`)");
    // SAFETY: the caller's guarantees; the kernel is one this CPU runs.
    unsafe { sgemm_on(kernel, dst, dims, lhs, rhs, scale, parallel) }
}

/// [`sgemm`] on a given kernel (tests and benchmarks compare them).
///
/// # Safety
/// As for [`sgemm`], and the CPU runs `kernel` ([`Kernel::runs_here`]).
pub unsafe fn sgemm_on(
    kernel: Kernel,
    dst: (*mut f32, usize),
    dims: (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
    parallel: bool,
) {
    assert!(
        kernel.runs_here(),
        "sgemm: this CPU cannot run the {} kernel",
        kernel.describe()
    );
    let (tile, run): ((usize, usize), Serial) = match kernel {
        Kernel::Avx2 => ((Avx2Tile::MR, Avx2Tile::NR), serial::<Avx2Tile>),
        Kernel::Avx512Bf16 if lhs.bf16 && rhs.bf16 => ((bf16::MR, bf16::NR), bf16::serial),
        Kernel::Avx512 | Kernel::Avx512Bf16 => {
            ((Avx512Tile::MR, Avx512Tile::NR), serial::<Avx512Tile>)
        }
    };
    // SAFETY: the caller's guarantees; the CPU runs the kernel (asserted).
    unsafe { split(dst, dims, lhs, rhs, scale, parallel, tile, run) }
}

/// A product on the calling thread with one kernel: [`serial`] or `bf16::serial`.
type Serial = unsafe fn(Dst, (usize, usize, usize), Operand<'_>, Operand<'_>, f32);

/// A register-blocked kernel: its tile and the function that computes one.
trait Micro {
    /// Rows of the register tile.
    const MR: usize;
    /// Columns of the register tile (a multiple of 8).
    const NR: usize;

    /// `tile (+)= scale * a·b` for one `MR`-row panel of `A` and one `NR`-column panel of
    /// `B`, `kc` deep. `a = (ptr, ld)`: with `IN_PLACE`, row `r` of the panel is `kc`
    /// contiguous floats at `ptr + r * ld`; without, a packed panel, step `p`'s `MR`
    /// values at `ptr + p * MR`.
    ///
    /// # Safety
    /// `a` holds the panel's `kc` steps as described and `b` `kc * NR` floats; the tile's
    /// `rows x cols` elements are valid for reads and writes; the CPU runs the kernel.
    unsafe fn tile<const IN_PLACE: bool>(
        kc: usize,
        a: (*const f32, usize),
        b: &[f32],
        tile: Tile,
        scale: f32,
        accumulate: bool,
    );
}

/// The AVX2 kernel, 6x16.
struct Avx2Tile;

impl Micro for Avx2Tile {
    const MR: usize = 6;
    const NR: usize = 16;

    unsafe fn tile<const IN_PLACE: bool>(
        kc: usize,
        a: (*const f32, usize),
        b: &[f32],
        tile: Tile,
        scale: f32,
        accumulate: bool,
    ) {
        // SAFETY: the caller's guarantees.
        unsafe { kernel_6x16::<IN_PLACE>(kc, a, b, tile, scale, accumulate) }
    }
}

/// The AVX-512 kernel, 12x32.
struct Avx512Tile;

impl Micro for Avx512Tile {
    const MR: usize = 12;
    const NR: usize = 32;

    unsafe fn tile<const IN_PLACE: bool>(
        kc: usize,
        a: (*const f32, usize),
        b: &[f32],
        tile: Tile,
        scale: f32,
        accumulate: bool,
    ) {
        // SAFETY: the caller's guarantees.
        unsafe { kernel_12x32::<IN_PLACE>(kc, a, b, tile, scale, accumulate) }
    }
}

/// [`sgemm`] split over threads, each part run by `run`, whose register tile is
/// `(mr, nr)`.
///
/// # Safety
/// As for [`sgemm_on`], for the kernel `run` runs.
#[allow(clippy::too_many_arguments)]
unsafe fn split(
    (dst, dst_ld): (*mut f32, usize),
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
    parallel: bool,
    (mr, nr): (usize, usize),
    run: Serial,
) {
    if m == 0 || n == 0 {
        return;
    }
    let dst = Dst {
        ptr: dst,
        ld: dst_ld,
    };
    if k == 0 {
        // SAFETY: the caller's guarantee on `dst`; zero bytes are 0.0.
        unsafe { zero_rows(dst, 0..m, n) };
        return;
    }
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MACS {
        rayon::current_num_threads()
    } else {
        1
    };
    // Split the rows when re-packing `B` (k x n) per thread costs less than `A` (m x k).
    // (Splitting the columns whenever `A` is read in place measured the same: 211 against
    // 208 GFLOP/s over the bench's products.)
    let by_rows = n <= m;
    let (len, tile) = if by_rows { (m, mr) } else { (n, nr) };
    let per = len.div_ceil(tile).div_ceil(threads).max(1) * tile;
    let parts: Vec<(usize, usize)> = (0..len)
        .step_by(per)
        .map(|s| (s, (s + per).min(len)))
        .collect();
    let part = |&(s, e): &(usize, usize)| {
        let (i0, j0, mm, nn) = if by_rows {
            (s, 0, e - s, n)
        } else {
            (0, s, m, e - s)
        };
        // SAFETY: `(i0, j0)` is inside the destination.
        let sub = unsafe { dst.offset(i0, j0) };
        // SAFETY: each part writes its own rows or columns of the destination, which the
        // caller handed over exclusively; the sub-operands hold what the part reads.
        unsafe { run(sub, (mm, nn, k), lhs.from(i0, 0), rhs.from(0, j0), scale) };
    };
    if parts.len() > 1 {
        parts.par_iter().for_each(part);
    } else {
        parts.iter().for_each(part);
    }
}

/// The blocks of a product, in the order they are run: `(jc, nc)`, columns of `NC`, then
/// within each `(pc, kc)`, depths of `KC`.
fn blocks(n: usize, k: usize) -> impl Iterator<Item = ((usize, usize), (usize, usize))> {
    (0..n).step_by(NC).flat_map(move |jc| {
        (0..k)
            .step_by(KC)
            .map(move |pc| ((jc, NC.min(n - jc)), (pc, KC.min(k - pc))))
    })
}

/// [`sgemm`] on the calling thread.
///
/// # Safety
/// As for [`sgemm`].
unsafe fn serial<K: Micro>(
    dst: Dst,
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
) {
    debug_assert!(k > 0, "`split` writes the zeros of an empty product");
    // `serial` never waits on other threads (`with_pack_buffers`' contract).
    with_pack_buffers(|pa, pb| {
        for ((jc, nc), (pc, kc)) in blocks(n, k) {
            let packed_b = scratch(pb, kc * nc.div_ceil(K::NR) * K::NR);
            pack_b::<K>(packed_b, rhs, pc, jc, kc, nc);
            if rhs.bf16 {
                // On the packed copy (in cache), on this thread: `serial` must not
                // wait on others while it holds the buffers.
                round_slice_serial(packed_b);
            }
            // A whole number of the kernel's row panels.
            let mc_max = MC / K::MR * K::MR;
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                // A bf16 operand is always packed: the rounding is on the copy.
                let a = if lhs.trans || lhs.bf16 {
                    let packed = scratch(pa, kc * mc.div_ceil(K::MR) * K::MR);
                    pack_a::<K>(packed, lhs, ic, pc, mc, kc);
                    if lhs.bf16 {
                        round_slice_serial(packed);
                    }
                    APanels::Packed(packed)
                } else {
                    // Whole panels straight from `lhs`'s rows; the last rows packed.
                    let full = mc / K::MR * K::MR;
                    let tail = scratch(pa, kc * K::MR);
                    if full < mc {
                        pack_a::<K>(tail, lhs, ic + full, pc, mc - full, kc);
                    }
                    APanels::Direct {
                        rows: &lhs.data[lhs.at(ic, pc).min(lhs.data.len())..],
                        ld: lhs.ld,
                        tail,
                    }
                };
                // SAFETY: the block is inside the destination (the caller's
                // guarantee); the CPU runs the kernel.
                unsafe {
                    macro_block::<K>(dst, (ic, jc), (mc, nc, kc), a, packed_b, scale, pc > 0)
                };
            }
        }
    });
}

/// Copies the `kc x nc` block of `rhs` at `(pc, jc)` into `NR`-column panels: panel `q`
/// holds, for each `p`, the `NR` elements `(pc + p, jc + q*NR ..)`, zero past `nc`.
fn pack_b<K: Micro>(out: &mut [f32], rhs: Operand<'_>, pc: usize, jc: usize, kc: usize, nc: usize) {
    let nr = K::NR;
    if !rhs.trans {
        // Row by row of the block, each row's 16-wide pieces to their panels: the source
        // is read in order (panel by panel, each step of a panel was another cache line,
        // 768 floats apart for a weight gradient's activations).
        let full = nc / nr;
        for p in 0..kc {
            let src = &rhs.data[rhs.at(pc + p, jc)..][..nc];
            for q in 0..full {
                // Constant lengths: inlined moves, not calls to `memcpy`.
                out[(q * kc + p) * nr..][..nr].copy_from_slice(&src[q * nr..][..nr]);
            }
            if full * nr < nc {
                let dst = &mut out[(full * kc + p) * nr..][..nr];
                let cols = nc - full * nr;
                dst[..cols].copy_from_slice(&src[full * nr..]);
                dst[cols..].fill(0.0);
            }
        }
        return;
    }
    for (q, panel) in out.chunks_exact_mut(kc * nr).enumerate() {
        let j0 = jc + q * nr;
        let cols = nr.min(jc + nc - j0);
        if cols == nr {
            for half in 0..nr / 16 {
                // SAFETY: AVX2 is available (every kernel needs it, [`sgemm_on`]'s
                // contract); the 16 rows of `kc` floats are inside `rhs` (slicing checks
                // them), and the panel holds `kc * nr` floats.
                unsafe { pack_b_rows_16(panel, nr, half * 16, rhs, pc, j0 + half * 16, kc) };
            }
        } else {
            // Column `j` of the logical block is row `j` of the stored matrix: read rows,
            // `P` steps at a time so the panel rows written (`P x NR`, 2 KiB) stay in L1
            // (a whole 48 KiB panel per column did not: `pack_b` was 4.8% of a step).
            const P: usize = 32;
            for p0 in (0..kc).step_by(P) {
                let steps = P.min(kc - p0);
                for c in 0..cols {
                    let src = &rhs.data[rhs.at(pc + p0, j0 + c)..][..steps];
                    for (p, &v) in src.iter().enumerate() {
                        panel[(p0 + p) * nr + c] = v;
                    }
                }
                for p in p0..p0 + steps {
                    panel[p * nr + cols..(p + 1) * nr].fill(0.0);
                }
            }
        }
    }
}

/// 16 columns of one whole panel (`nr` wide) of a transposed `rhs`: 16 stored rows
/// (`j0..j0 + 16`, `kc` floats from column `pc`) transposed into the panel's columns
/// `col..col + 16`, 8x8 blocks at a time in AVX registers. (Scalar, this was 4.7% of a
/// DeiT-Ti forward, which packs every weight matrix this way.)
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_b_rows_16(
    panel: &mut [f32],
    nr: usize,
    col: usize,
    rhs: Operand<'_>,
    pc: usize,
    j0: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 16;
    let rows: [&[f32]; ROWS] = std::array::from_fn(|c| &rhs.data[rhs.at(pc, j0 + c)..][..kc]);
    let panel = &mut panel[..kc * nr];
    assert!(col + ROWS <= nr);
    let whole = kc / 8 * 8;
    for p0 in (0..whole).step_by(8) {
        for half in 0..2 {
            let r = &rows[half * 8..][..8];
            // SAFETY: `p0 + 8 <= kc`, so each row holds the 8 floats loaded, and the
            // panel the 8 stores of 8 floats at `(p0 + i) * nr + col + half * 8`
            // (`col + 16 <= nr`, asserted).
            unsafe {
                let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(r[i][p0..].as_ptr()));
                let out = transpose_8x8(v);
                for (i, o) in out.iter().enumerate() {
                    let at = (p0 + i) * nr + col + half * 8;
                    _mm256_storeu_ps(panel[at..][..8].as_mut_ptr(), *o);
                }
            }
        }
    }
    for p in whole..kc {
        for (c, row) in rows.iter().enumerate() {
            panel[p * nr + col + c] = row[p];
        }
    }
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_b_rows_16(
    _: &mut [f32],
    _: usize,
    _: usize,
    _: Operand<'_>,
    _: usize,
    _: usize,
    _: usize,
) {
    unreachable!("sgemm packing called without AVX2")
}

/// Copies the `mc x kc` block of `lhs` at `(ic, pc)` into `MR`-row panels: panel `q`
/// holds, for each `p`, the `MR` elements `(ic + q*MR .., pc + p)`, zero past `mc`.
fn pack_a<K: Micro>(out: &mut [f32], lhs: Operand<'_>, ic: usize, pc: usize, mc: usize, kc: usize) {
    let mr = K::MR;
    for (q, panel) in out.chunks_exact_mut(kc * mr).enumerate() {
        let i0 = ic + q * mr;
        let rows = mr.min(ic + mc - i0);
        if lhs.trans {
            // Row `i` of the logical block is column `i` of the stored matrix: for each
            // `p`, the panel's rows are contiguous.
            for (p, dst) in panel.chunks_exact_mut(mr).enumerate() {
                let src = &lhs.data[lhs.at(i0, pc + p)..];
                if rows == mr {
                    dst[..mr].copy_from_slice(&src[..mr]);
                } else {
                    dst[..rows].copy_from_slice(&src[..rows]);
                    dst[rows..].fill(0.0);
                }
            }
        } else if mr == 12 && rows == mr {
            // A whole 12-row panel in 8x8 register transposes (rows 0-7, then rows 4-11
            // of which the upper four lanes are kept). Element by element, this was 13% of
            // a bf16 DeiT-Ti train step, which packs every `A` (`perf`, 2026-12-06).
            let row = |r: usize| &lhs.data[lhs.at(i0 + r, pc)..][..kc];
            for (first, lanes) in [(0, 0..8), (4, 4..8)] {
                let rows8: [&[f32]; 8] = std::array::from_fn(|r| row(first + r));
                // SAFETY: every kernel needs AVX2 ([`sgemm_on`]'s contract); the 8 rows
                // hold `kc` floats (sliced above) and the panel `kc * 12`.
                unsafe { pack_rows_8(panel, (mr, first), rows8, kc, lanes) };
            }
        } else {
            for r in 0..rows {
                let src = &lhs.data[lhs.at(i0 + r, pc)..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    panel[p * mr + r] = v;
                }
            }
            for r in rows..mr {
                for p in 0..kc {
                    panel[p * mr + r] = 0.0;
                }
            }
        }
    }
}

/// 8 rows of `kc` floats transposed into a panel of `stride`-wide steps: lane `l` of
/// `lanes` (a subrange of `0..8`) of step `p` is `rows[l][p]`, stored at
/// `panel[p * stride + col + l]`. 8x8 blocks in AVX registers, the last `kc % 8` steps one
/// by one.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_rows_8(
    panel: &mut [f32],
    (stride, col): (usize, usize),
    rows: [&[f32]; 8],
    kc: usize,
    lanes: std::ops::Range<usize>,
) {
    use std::arch::x86_64::*;
    assert!(lanes.end <= 8 && col + lanes.end <= stride);
    assert!(rows.iter().all(|r| r.len() >= kc) && panel.len() >= kc * stride);
    let whole = kc / 8 * 8;
    for p0 in (0..whole).step_by(8) {
        // SAFETY: `p0 + 8 <= kc`: each row holds the 8 floats loaded (asserted), and the
        // panel every step `p0 + i` written (`(p0 + i) * stride + col + 8 <= kc * stride`).
        unsafe {
            let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i][p0..].as_ptr()));
            let t = transpose_8x8(v);
            for (i, o) in t.iter().enumerate() {
                let at = panel.as_mut_ptr().add((p0 + i) * stride + col);
                if lanes.start == 0 {
                    _mm256_storeu_ps(at, *o);
                } else {
                    // Lanes 4-7 only (the one partial range used).
                    debug_assert_eq!(lanes.start, 4);
                    _mm_storeu_ps(at.add(4), _mm256_extractf128_ps::<1>(*o));
                }
            }
        }
    }
    for p in whole..kc {
        for l in lanes.clone() {
            panel[p * stride + col + l] = rows[l][p];
        }
    }
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_rows_8(
    _: &mut [f32],
    _: (usize, usize),
    _: [&[f32]; 8],
    _: usize,
    _: std::ops::Range<usize>,
) {
    unreachable!("sgemm packing called without AVX2")
}

/// The 8x8 transpose of eight rows of 8 floats: pairs, then quads, then 128-bit halves.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose_8x8(v: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Where a block's `MR`-row panels of `A` come from.
enum APanels<'a> {
    /// All packed by [`pack_a`] (`A` read transposed: its panels' rows are strided).
    Packed(&'a [f32]),
    /// Whole panels read in place from `rows` (row `r` of the block at `r * ld`, the
    /// kernel's six row streams are each contiguous), the last partial panel packed in
    /// `tail`. Packing a non-transposed `A` was 6% of a DeiT train step (`perf`).
    Direct {
        rows: &'a [f32],
        ld: usize,
        tail: &'a [f32],
    },
}

/// Multiplies one `A` block (`mc x kc`) by one packed `B` block (`kc x nc`) into `dst`
/// at `(ic, jc)`: stores `scale * AB`, or adds it when `accumulate`.
///
/// # Safety
/// The `mc x nc` destination region at `(ic, jc)` is valid and exclusively ours;
/// [`available`] is true.
unsafe fn macro_block<K: Micro>(
    dst: Dst,
    (ic, jc): (usize, usize),
    (mc, nc, kc): (usize, usize, usize),
    a: APanels<'_>,
    packed_b: &[f32],
    scale: f32,
    accumulate: bool,
) {
    let (mr, nr) = (K::MR, K::NR);
    if let APanels::Direct { rows, ld, .. } = a {
        let full = mc / mr * mr;
        if full > 0 {
            assert!(
                rows.len() >= (full - 1) * ld + kc,
                "sgemm: A block out of bounds"
            );
        }
    }
    for jr in (0..nc).step_by(nr) {
        let b = &packed_b[(jr / nr) * kc * nr..][..kc * nr];
        for ir in (0..mc).step_by(mr) {
            let tile = Tile {
                // SAFETY: `(ic + ir, jc + jr)` is inside the destination region.
                ptr: unsafe { dst.ptr.add((ic + ir) * dst.ld + jc + jr) },
                ld: dst.ld,
                rows: mr.min(mc - ir),
                cols: nr.min(nc - jr),
            };
            // SAFETY (all three calls): the `A` panel holds `kc` steps (a packed panel
            // `kc * MR` floats; in place, rows `ir..ir + MR` of `kc` floats, asserted
            // above), `b` holds `kc * NR`; the tile is inside the destination region (the
            // caller's guarantee); the CPU runs the kernel.
            match a {
                APanels::Packed(p) => {
                    let panel = &p[(ir / mr) * kc * mr..][..kc * mr];
                    unsafe {
                        K::tile::<false>(kc, (panel.as_ptr(), 0), b, tile, scale, accumulate)
                    };
                }
                APanels::Direct { rows, ld, tail } => {
                    if tile.rows == mr {
                        let panel = rows[ir * ld..].as_ptr();
                        unsafe { K::tile::<true>(kc, (panel, ld), b, tile, scale, accumulate) };
                    } else {
                        let panel = &tail[..kc * mr];
                        unsafe {
                            K::tile::<false>(kc, (panel.as_ptr(), 0), b, tile, scale, accumulate)
                        };
                    }
                }
            }
        }
    }
}

/// The destination of one kernel call: `rows x cols` (at most `MR x NR`) at `ptr`.
struct Tile {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
}

/// `tile (+)= scale * a·b` for one `MR`-row panel of `A` and one `NR`-column panel of `B`,
/// `kc` deep, with the 6x16 sums in twelve AVX registers. `a = (ptr, ld)`: with
/// `IN_PLACE`, row `r` of the panel is `kc` contiguous floats at `ptr + r * ld`; without,
/// a packed panel, step `p`'s six values at `ptr + p * MR`.
///
/// # Safety
/// `a` holds the panel's `kc` steps as described and `b` `kc * NR` floats; the tile's
/// `rows x cols` elements are valid for reads and writes; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16<const IN_PLACE: bool>(
    kc: usize,
    (a, lda): (*const f32, usize),
    b: &[f32],
    tile: Tile,
    scale: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = Avx2Tile::MR;
    const NR: usize = Avx2Tile::NR;
    assert!(b.len() >= kc * NR);
    let bp = b.as_ptr();
    // Element `(r, p)` of the panel.
    let at = |r: usize, p: usize| if IN_PLACE { r * lda + p } else { p * MR + r };
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    for p in 0..kc {
        // SAFETY: `p < kc`: inside both panels (the caller's guarantee on `a`, asserted
        // for `b`).
        unsafe {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
            let a0 = _mm256_broadcast_ss(&*a.add(at(0, p)));
            c00 = _mm256_fmadd_ps(a0, b0, c00);
            c01 = _mm256_fmadd_ps(a0, b1, c01);
            let a1 = _mm256_broadcast_ss(&*a.add(at(1, p)));
            c10 = _mm256_fmadd_ps(a1, b0, c10);
            c11 = _mm256_fmadd_ps(a1, b1, c11);
            let a2 = _mm256_broadcast_ss(&*a.add(at(2, p)));
            c20 = _mm256_fmadd_ps(a2, b0, c20);
            c21 = _mm256_fmadd_ps(a2, b1, c21);
            let a3 = _mm256_broadcast_ss(&*a.add(at(3, p)));
            c30 = _mm256_fmadd_ps(a3, b0, c30);
            c31 = _mm256_fmadd_ps(a3, b1, c31);
            let a4 = _mm256_broadcast_ss(&*a.add(at(4, p)));
            c40 = _mm256_fmadd_ps(a4, b0, c40);
            c41 = _mm256_fmadd_ps(a4, b1, c41);
            let a5 = _mm256_broadcast_ss(&*a.add(at(5, p)));
            c50 = _mm256_fmadd_ps(a5, b0, c50);
            c51 = _mm256_fmadd_ps(a5, b1, c51);
        }
    }
    let rows = [
        [c00, c01],
        [c10, c11],
        [c20, c21],
        [c30, c31],
        [c40, c41],
        [c50, c51],
    ];
    let s = _mm256_set1_ps(scale);
    if tile.rows == MR && tile.cols == NR {
        for (r, [lo, hi]) in rows.iter().enumerate() {
            // SAFETY: a full tile: row `r`'s 16 elements are valid (the caller's guarantee).
            unsafe {
                let p = tile.ptr.add(r * tile.ld);
                let (mut lo, mut hi) = (_mm256_mul_ps(*lo, s), _mm256_mul_ps(*hi, s));
                if accumulate {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(p));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(p.add(8)));
                }
                _mm256_storeu_ps(p, lo);
                _mm256_storeu_ps(p.add(8), hi);
            }
        }
        return;
    }
    // A partial tile (the last rows or columns): through a buffer.
    let mut buf = [[0f32; NR]; MR];
    for (r, [lo, hi]) in rows.iter().enumerate().take(tile.rows) {
        // SAFETY: `buf[r]` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(buf[r].as_mut_ptr(), _mm256_mul_ps(*lo, s));
            _mm256_storeu_ps(buf[r].as_mut_ptr().add(8), _mm256_mul_ps(*hi, s));
        }
    }
    for (r, row) in buf.iter().enumerate().take(tile.rows) {
        for (c, &v) in row.iter().enumerate().take(tile.cols) {
            // SAFETY: `(r, c)` is inside the tile (the caller's guarantee).
            unsafe {
                let p = tile.ptr.add(r * tile.ld + c);
                *p = if accumulate { *p + v } else { v };
            }
        }
    }
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_6x16<const IN_PLACE: bool>(
    _: usize,
    _: (*const f32, usize),
    _: &[f32],
    _: Tile,
    _: f32,
    _: bool,
) {
    unreachable!("sgemm kernel called without AVX2")
}

/// The AVX-512 kernel: `tile (+)= scale * a·b` with the 12x32 sums in 24 512-bit
/// registers (two per row), the panel's step `p` one pair of `B` loads and twelve
/// broadcasts of `A` for 24 FMAs. Partial tiles store through masks. Contract as
/// [`Micro::tile`] (with `MR = 12`, `NR = 32`).
///
/// Why 12x32: 24 accumulators hide the FMA latency on CPUs with two 512-bit FMA units
/// (Intel Xeon since Skylake-SP), and leave registers for the two `B` rows and a
/// broadcast; every row of the tile reuses each `B` load. 14x32 (28 accumulators) ran
/// the bench's products at 146 GFLOP/s against 12x32's 201 (`gemm_shapes`, this 2-core
/// Xeon, 2026-12-06).
///
/// # Safety
/// As for [`Micro::tile`]; the CPU has AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn kernel_12x32<const IN_PLACE: bool>(
    kc: usize,
    (a, lda): (*const f32, usize),
    b: &[f32],
    tile: Tile,
    scale: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = Avx512Tile::MR;
    const NR: usize = Avx512Tile::NR;
    assert!(b.len() >= kc * NR);
    let bp = b.as_ptr();
    // Element `(r, p)` of the panel.
    let at = |r: usize, p: usize| if IN_PLACE { r * lda + p } else { p * MR + r };
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        // SAFETY: `p < kc`: inside both panels (the caller's guarantee on `a`, asserted
        // for `b`).
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(p * NR));
            let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
            for (r, row) in c.iter_mut().enumerate() {
                let ar = _mm512_set1_ps(*a.add(at(r, p)));
                row[0] = _mm512_fmadd_ps(ar, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ar, b1, row[1]);
            }
        }
    }
    store_12x32!(c, tile, scale, accumulate);
}

/// Stores (or with `accumulate` adds) `$scale` times the 12x32 sums `$c` (two 512-bit
/// registers a row) to `$tile`, its partial rows and columns through masks. A macro, not a
/// function: called, the 24 accumulators went through memory (`store_12x32` was 3.4% of
/// an f32 DeiT-Ti train step, `perf`, EPYC, 2026-12-07), and `#[inline(always)]` cannot
/// be put on a `#[target_feature]` function.
///
/// Expands to unsafe code: the tile's `rows x cols` elements must be valid for reads and
/// writes, and the CPU must have AVX-512 F (the calling kernel's contract).
macro_rules! store_12x32 {
    ($c:expr, $tile:expr, $scale:expr, $accumulate:expr) => {{
        use std::arch::x86_64::*;
        let (c, tile): (&[[__m512; 2]; 12], &Tile) = (&$c, &$tile);
        let s = _mm512_set1_ps($scale);
        // Column masks of the two halves (all ones for a full tile).
        let lanes = |cols: usize| -> __mmask16 {
            if cols >= 16 {
                0xFFFF
            } else {
                ((1u32 << cols) - 1) as __mmask16
            }
        };
        let (m0, m1) = (lanes(tile.cols), lanes(tile.cols.saturating_sub(16)));
        for (r, [lo, hi]) in c.iter().enumerate().take(tile.rows) {
            // SAFETY: row `r < tile.rows`; the masks touch only its first `tile.cols`
            // elements, valid for reads and writes (the calling kernel's contract).
            unsafe {
                let p = tile.ptr.add(r * tile.ld);
                let (mut lo, mut hi) = (_mm512_mul_ps(*lo, s), _mm512_mul_ps(*hi, s));
                if $accumulate {
                    lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m0, p));
                    hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m1, p.add(16)));
                }
                _mm512_mask_storeu_ps(p, m0, lo);
                if m1 != 0 {
                    _mm512_mask_storeu_ps(p.add(16), m1, hi);
                }
            }
        }
    }};
}
use store_12x32;

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_12x32<const IN_PLACE: bool>(
    _: usize,
    _: (*const f32, usize),
    _: &[f32],
    _: Tile,
    _: f32,
    _: bool,
) {
    unreachable!("sgemm kernel called without AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A stored matrix for logical `rows x cols`, transposed or not, with padding columns.
    fn operand(
        rng: &mut ChaCha8Rng,
        rows: usize,
        cols: usize,
        trans: bool,
        pad: usize,
    ) -> (Vec<f32>, usize) {
        let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
        let ld = sc + pad;
        let data = (0..sr * ld)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        (data, ld)
    }

    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: Operand<'_>,
        b: Operand<'_>,
        scale: f32,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        // An operand read as bf16 is the f64 of its rounded elements.
        let value = |o: &Operand<'_>, at: usize| {
            let v = o.data[at];
            f64::from(if o.bf16 {
                crate::precision::round_bf16(v)
            } else {
                v
            })
        };
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| value(&a, a.at(i, p)) * value(&b, b.at(p, j)))
                    .sum();
                out[i * n + j] = s * scale as f64;
            }
        }
        out
    }

    #[test]
    fn equals_the_f64_product_for_every_layout_and_edge() {
        let kernels = Kernel::supported();
        if kernels.is_empty() {
            eprintln!("no AVX2/FMA on this CPU: sgemm not tested");
        }
        for kernel in kernels {
            equals_the_f64_product_on(kernel);
        }
    }

    fn equals_the_f64_product_on(kernel: Kernel) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let shapes = [
            (1, 1, 1),
            (6, 16, 1),
            (7, 17, 3),
            (5, 3, 300),
            (13, 40, 257),
            (150, 33, 20),
            (200, 70, 530),
            (12, 3100, 9),
            (9, 20, 1600),
            (25, 65, 31),
            (147, 200, 64),
        ];
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // bf16 operands (rounded as packed) for every layout, one split each.
                for (parallel, bf16) in [(false, false), (true, false), (ta, true)] {
                    let (ad, ald) = operand(&mut rng, m, k, ta, 3);
                    let (bd, bld) = operand(&mut rng, k, n, tb, 1);
                    let a = Operand {
                        data: &ad,
                        ld: ald,
                        trans: ta,
                        bf16,
                    };
                    let b = Operand {
                        data: &bd,
                        ld: bld,
                        trans: tb,
                        bf16,
                    };
                    let ld = n + 2;
                    let mut out = vec![f32::NAN; m * ld];
                    // SAFETY: `out` holds `m` rows at stride `ld >= n`; AVX2 checked.
                    unsafe {
                        sgemm_on(
                            kernel,
                            (out.as_mut_ptr(), ld),
                            (m, n, k),
                            a,
                            b,
                            0.5,
                            parallel,
                        )
                    };
                    let want = reference(m, n, k, a, b, 0.5);
                    for i in 0..m {
                        for j in 0..n {
                            let (got, w) = (out[i * ld + j] as f64, want[i * n + j]);
                            let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                            assert!(
                                (got - w).abs() <= tol,
                                "{kernel:?} {m}x{n}x{k} ta={ta} tb={tb} bf16={bf16}: ({i},{j}) \
                                 {got} vs {w}"
                            );
                        }
                        for j in n..ld {
                            assert!(out[i * ld + j].is_nan(), "padding column {j} written");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn result_does_not_depend_on_the_thread_split() {
        for kernel in Kernel::supported() {
            same_for_any_split_on(kernel);
        }
    }

    fn same_for_any_split_on(kernel: Kernel) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (m, n, k) = (301, 75, 600);
        let (ad, ald) = operand(&mut rng, m, k, false, 0);
        let (bd, bld) = operand(&mut rng, k, n, true, 0);
        let a = Operand {
            data: &ad,
            ld: ald,
            trans: false,
            bf16: false,
        };
        let b = Operand {
            data: &bd,
            ld: bld,
            trans: true,
            bf16: false,
        };
        let run = |parallel: bool| {
            let mut out = vec![0f32; m * n];
            // SAFETY: `out` holds `m x n`; the kernel is supported.
            unsafe {
                sgemm_on(
                    kernel,
                    (out.as_mut_ptr(), n),
                    (m, n, k),
                    a,
                    b,
                    1.0,
                    parallel,
                )
            };
            out
        };
        let serial = run(false);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let split = pool.install(|| run(true));
        assert_eq!(serial, split);
    }

    #[test]
    fn bf16_products_take_the_dot_product_kernel_where_the_cpu_has_it() {
        // `vdpbf16ps` reads bf16 subnormals as zero; the f32 kernels on rounded operands
        // keep them. 1e-39 is a bf16 subnormal (it rounds to one, 0x000B).
        let product = |kernel: Kernel, bf16: bool| {
            let (a, b) = ([1e-39f32, 0.0, 0.0, 0.0], [1.0f32; 4]);
            let op = |data, trans| Operand {
                data,
                ld: 4,
                trans,
                bf16,
            };
            let mut out = [f32::NAN];
            // SAFETY: `out` holds 1 x 1; the operands 1 x 4 and 4 x 1 (`b` transposed).
            unsafe {
                sgemm_on(
                    kernel,
                    (out.as_mut_ptr(), 1),
                    (1, 1, 4),
                    op(&a, false),
                    op(&b, true),
                    1.0,
                    false,
                )
            };
            out[0]
        };
        let rounded = crate::precision::round_bf16(1e-39);
        assert!(rounded != 0.0 && !rounded.is_normal());
        for kernel in Kernel::supported() {
            let want_bf16 = if kernel == Kernel::Avx512Bf16 {
                0.0
            } else {
                rounded
            };
            assert_eq!(product(kernel, true), want_bf16, "{kernel:?}");
            assert_eq!(product(kernel, false), 1e-39, "{kernel:?} f32");
        }
    }

    #[test]
    fn zero_depth_writes_zeros() {
        for kernel in Kernel::supported() {
            let mut out = vec![f32::NAN; 4 * 5];
            let a = Operand {
                data: &[],
                ld: 0,
                trans: false,
                bf16: false,
            };
            // SAFETY: `out` holds 4 x 5; nothing is read from the empty operands.
            unsafe { sgemm_on(kernel, (out.as_mut_ptr(), 5), (4, 5, 0), a, a, 1.0, true) };
            assert!(out.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn the_kernel_follows_the_active_level() {
        let want = Kernel::for_isa(isa::active());
        if std::env::var("DEIT_PIPE_SGEMM").as_deref() != Ok("off") {
            assert_eq!(kernel(), want);
        }
        assert_eq!(
            Kernel::supported().len(),
            match isa::detected() {
                Isa::Scalar => 0,
                Isa::Avx2 => 1,
                Isa::Avx512 => 2,
                Isa::Avx512Bf16 => 3,
            }
        );
    }
}
