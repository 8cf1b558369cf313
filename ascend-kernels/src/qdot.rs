//! The quantized GEMM's inner loop: one weight row in a block format against up to 8 rows of
//! int8 activation blocks, with an AVX2 version chosen at run time on x86-64 (`vpmaddubsw` /
//! `vpmaddwd`, as llama.cpp's AVX2 kernels do), and the same loop with AVX-512 VNNI's
//! `vpdpbusd` (on 256-bit registers; or AVX-VNNI's, the same instruction, on client CPUs without
//! AVX-512) where the CPU has it: one instruction for the two, the same integer sums, so the same
//! bits.
//!
//! Per block the integer dot product is exact (i32); it is scaled by `d_x · d_w` and added to
//! the row's `f32` sum (plus `m_w · sums_x` for `Q4_1`, and `−8·d_w · sums_x` for `Q4_0`). The
//! x86 loop takes blocks 8 at a time, the values of the 8 laid side by side ([`group_quads`]),
//! so that each of a block's sums ends in a lane of its own and 8 blocks are scaled by one
//! instruction; lane `j` adds blocks `j, j + 8, …`, and the lanes are added at the end. A
//! row's last, partial group goes in [`chunks`] of 4, 2 and 1 blocks, each block over 8/c
//! lanes, rather than padded to 8 (k = 576 leaves 2 blocks: 2 dot products, not 8). A
//! weight in the CPU backend's [`interleaved`](crate::interleaved) layout has its groups of 8
//! blocks stored in that order already; from GGUF's blocks the loop transposes them. The
//! portable loop adds the blocks in order, so the two differ by rounding only. Which one runs
//! depends on the CPU alone, never on how many rows share the call, so a row's result is the
//! same in any batch.

use crate::quant::{half_at, QuantFormat, BLOCK};

/// One row of activations quantized per block (a view of [`crate::quant::ActivationBlocks`]).
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    /// Per block: the scale.
    pub scales: &'a [f32],
    /// Per block: the scale times the sum of the block's values.
    pub sums: &'a [f32],
    /// The values, `BLOCK` per block.
    pub qs: &'a [i8],
    /// The same values in [`group_quads`]' order (what the x86 loops read).
    pub quads: &'a [i8],
}

/// Blocks per group of [`group_quads`] (and of the interleaved weight layout).
pub const GROUP: usize = crate::interleaved::GROUP;

/// Activation rows from which [`columns`] runs on AMX where the CPU has it (same bits). On the
/// 2-core Sapphire Rapids VM (whose two cores share one AMX unit) AMX was slower than VNNI at
/// 8 rows (75-80 us against 65-70 for a 1536 x 576 Q4_1 GEMM) and faster from about 12:
/// 104 against 139 us at 16 rows, 225 against 315 at 32, 2.7 against 3.5-5 ms at 512.
const AMX_ROWS: usize = 16;

/// Whether [`columns`] runs `rows` activation rows on AMX (a weight in the interleaved
/// layout, on a CPU and system with AMX): it then reads the weight in panels of 16 columns
/// and the rows' values as tiles, fastest from an [`ActMatrix`] ([`columns`]), and reads no
/// [`ActRow::quads`] when the columns it is given are whole panels ([`AMX_PANEL`]).
pub fn runs_on_amx(layout: Layout, rows: usize) -> bool {
    layout == Layout::Interleaved
        && rows >= AMX_ROWS
        && AMX_ALLOWED.load(std::sync::atomic::Ordering::Relaxed)
        && amx_hardware()
}

/// Whether this CPU and system can run the AMX loop.
fn amx_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether [`runs_on_amx`] may say yes ([`crate::cpu::set_amx`]).
pub static AMX_ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Columns per AMX panel: the column ranges given to [`columns`] are best multiples of it.
pub const AMX_PANEL: usize = 16;

/// Activation rows per AMX tile, at most ([`ActMatrix`] pads each block's rows to a multiple).
pub(crate) const AMX_TILE_ROWS: usize = 16;

/// A batch's quantized activations as the AMX loop reads them, made once per GEMM rather than
/// once per column range: the rows' values in one buffer, each row on a 64-byte boundary (a
/// tile load reads them in place), and their scales and sums by block (`[block][row]`, rows
/// padded with zeros to whole tiles of 16).
#[derive(Default)]
pub struct ActMatrix {
    bytes: Vec<i8>,
    at: usize,
    stride: usize,
    len: usize,
    step: usize,
    table: Vec<f32>,
}

impl ActMatrix {
    /// The rows' values, scales and sums, copied.
    pub fn new(rows: &[ActRow<'_>]) -> Self {
        let len = rows.iter().map(|x| x.qs.len()).min().unwrap_or(0);
        let blocks = len / BLOCK;
        let stride = len.next_multiple_of(64);
        let mut bytes = vec![0i8; rows.len() * stride + 63];
        let at = bytes.as_ptr().align_offset(64).min(63);
        let step = rows.len().next_multiple_of(AMX_TILE_ROWS);
        let mut table = vec![0f32; 2 * blocks * step];
        let (scales, sums) = table.split_at_mut(blocks * step);
        for (r, x) in rows.iter().enumerate() {
            bytes[at + r * stride..][..len].copy_from_slice(&x.qs[..len]);
            for b in 0..blocks {
                scales[b * step + r] = x.scales[b];
                sums[b * step + r] = x.sums[b];
            }
        }
        ActMatrix {
            bytes,
            at,
            stride,
            len,
            step,
            table,
        }
    }

    /// Row 0's values and the distance between rows, in bytes.
    pub(crate) fn values(&self) -> (*const i8, usize) {
        (self.bytes[self.at..].as_ptr(), self.stride)
    }

    /// The scales by block then the sums by block, and the rows per block (a multiple of
    /// [`AMX_TILE_ROWS`]).
    pub(crate) fn by_block(&self) -> (&[f32], usize) {
        (&self.table, self.step)
    }
}

/// How a weight's rows are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GGUF's blocks, in order.
    Blocks,
    /// The CPU backend's layout: [`crate::interleaved`].
    Interleaved,
}

/// The chunks a row of `blocks` blocks is taken in, as `(first block, blocks)`: whole groups
/// of [`GROUP`], then a last, partial group in chunks of 4, 2 and 1 blocks, one per binary
/// digit of its length (so 2 blocks left over cost 2 vectors, not a group's 8).
pub fn chunks(blocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = blocks / GROUP * GROUP;
    let tail = blocks - full;
    let groups = (0..full).step_by(GROUP).map(|b| (b, GROUP));
    let tail = [4, 2, 1]
        .into_iter()
        .filter(move |&c| tail & c != 0)
        .scan(full, |b, c| {
            *b += c;
            Some((*b - c, c))
        });
    groups.chain(tail)
}

/// `qs` (whole blocks of [`BLOCK`] values) rearranged for the x86 loops, into `out`, in the
/// [`chunks`] of the row: a chunk of `c` blocks is `c` vectors of 32 bytes, and lane `l`
/// (bytes `4l..4l + 4`) of vector `v` holds quad `v · 8/c + l mod 8/c` (values `4·that..`) of
/// the chunk's block `l / (8/c)`. For a whole group (`c = 8`), lane `j` of vector `i` is quad
/// `i` of block `j`. One 32-byte load then holds 4 values of each of its lanes, which a byte
/// dot product instruction adds into that lane: each lane's sum is of one block, with no
/// reduction across lanes. Block `b`'s chunk starts at byte `32 · (its first block)`, and the
/// whole is `blocks · 32` bytes, as `qs`.
pub fn group_quads(qs: &[i8], out: &mut Vec<i8>) {
    let blocks = qs.len() / BLOCK;
    out.clear();
    out.resize(blocks * BLOCK, 0);
    for (first, c) in chunks(blocks) {
        let lanes = GROUP / c;
        for j in 0..c {
            let block = &qs[(first + j) * BLOCK..(first + j + 1) * BLOCK];
            for (i, quad) in block.chunks_exact(4).enumerate() {
                let (v, l) = (i / lanes, j * lanes + i % lanes);
                let at = (first + v) * BLOCK + 4 * l;
                out[at..at + 4].copy_from_slice(quad);
            }
        }
    }
}

/// (The per-row entry the tests compare with the portable loop; the kernel calls [`columns`].)
///
/// `out[r] = Σ_blocks` of weight row `w` (whole blocks of format `f`) times activation row
/// `xs[r]`, for every `r < R`.
///
/// # Panics
/// If an activation row has fewer blocks than `w` (a caller bug, as with slice indexing).
#[cfg(test)]
pub fn dots<const R: usize>(f: QuantFormat, w: &[u8], xs: &[ActRow<'_>; R], out: &mut [f32; R]) {
    let blocks = w.len() / f.block_bytes();
    assert!(
        xs.iter().all(|x| x.scales.len() >= blocks
            && x.sums.len() >= blocks
            && x.qs.len() >= blocks * BLOCK
            && x.quads.len() >= blocks * BLOCK),
        "qdot: an activation row is shorter than the weight row"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above; every activation row holds
        // `blocks` blocks, checked just before, and `w` holds `blocks` whole blocks.
        return unsafe { x86::dots(f, w, blocks, xs, out) };
    }
    portable(f, w, blocks, xs, out)
}

/// `o[r * (c1 - c0) + c - c0] = dot(weight row c, rows[r])` for the columns `c0..c1` of a
/// weight of `row_bytes` per row (in `layout`) and every activation row, rows in tiles of 8
/// and 4: the whole loop in one dispatch, so the AVX2 version inlines its inner steps. Both
/// layouts give the same bits. The AMX loop runs instead (the same bits again) where the
/// caller gives `matrix` (an [`ActMatrix`] of these rows, made once per GEMM where
/// [`runs_on_amx`]) and the CPU has AMX, or without one where [`runs_on_amx`] (from a copy of
/// the rows it makes).
///
/// # Panics
/// If `w` has fewer than `c1` rows, `o` fewer than `rows.len() * (c1 - c0)` elements, or an
/// activation row fewer blocks than a weight row (caller bugs, as with slice indexing), if
/// `f` is not a block format (W8A8 goes through `i8dot`), or if `matrix` holds fewer rows or
/// blocks than `rows`.
#[allow(clippy::too_many_arguments)]
pub fn columns(
    f: QuantFormat,
    layout: Layout,
    w: &[u8],
    row_bytes: usize,
    (c0, c1): (usize, usize),
    rows: &[ActRow<'_>],
    matrix: Option<&ActMatrix>,
    o: &mut [f32],
) {
    let blocks = row_bytes / f.block_bytes();
    // AMX runs where the caller made the rows' matrix for it (decided once per GEMM, so a
    // `set_amx` meanwhile changes nothing), or as `runs_on_amx` says; it reads no quads when it
    // takes every column.
    let amx = match matrix {
        Some(_) => amx_hardware() && layout == Layout::Interleaved,
        None => runs_on_amx(layout, rows.len()),
    };
    let no_quads = amx && (c1 - c0).is_multiple_of(AMX_PANEL);
    assert!(
        f.is_blocks()
            && w.len() >= c1 * row_bytes
            && o.len() >= rows.len() * (c1 - c0)
            && rows.iter().all(|x| x.scales.len() >= blocks
                && x.sums.len() >= blocks
                && x.qs.len() >= blocks * BLOCK
                && (no_quads || x.quads.len() >= blocks * BLOCK)),
        "qdot: an argument is shorter than the shapes need"
    );
    #[cfg(target_arch = "x86_64")]
    if amx {
        if let Some(mx) = matrix {
            assert!(
                mx.len >= blocks * BLOCK
                    && mx.bytes.len() >= mx.at + rows.len() * mx.stride
                    && mx.step >= rows.len()
                    && mx.table.len() >= 2 * blocks * mx.step,
                "qdot: the activation matrix is smaller than the rows"
            );
        }
        // SAFETY: AMX is available (`amx` says so), the format is a block format in the
        // interleaved layout, and the lengths (the matrix's too) are checked above.
        let done = unsafe { crate::amx::columns(f, w, row_bytes, (c0, c1), rows, matrix, o) };
        if done < c1 - c0 {
            // The last columns, fewer than a panel: the same bits from the vector loops.
            let (from, width, rest) = (c0 + done, c1 - c0, c1 - c0 - done);
            let mut t = vec![0f32; rows.len() * rest];
            vector_columns(f, layout, w, row_bytes, (from, c1), rows, &mut t);
            for r in 0..rows.len() {
                o[r * width + done..(r + 1) * width].copy_from_slice(&t[r * rest..][..rest]);
            }
        }
        return;
    }
    vector_columns(f, layout, w, row_bytes, (c0, c1), rows, o)
}

/// An int8 loop of the quantized GEMMs, in the order they are preferred where the CPU has
/// them ([`crate::cpu::quant_matmul_loop`], [`crate::cpu::limit_quant_matmul_loop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VectorLoop {
    /// AVX-512 VNNI, the block GEMM's whole groups two weight columns at once on 512-bit
    /// registers (W8A8 runs [`VectorLoop::Vnni`]).
    Vnni512,
    /// AVX-512 VNNI's `vpdpbusd` on 256-bit registers.
    Vnni,
    /// AVX-VNNI's `vpdpbusd` (client CPUs from Alder Lake, without AVX-512).
    AvxVnni,
    /// AVX2's `vpmaddubsw` / `vpmaddwd`.
    Avx2,
    /// Scalar code for any target, the blocks in order (rounded differently from the others).
    Portable,
}

/// [`VectorLoop::chosen`] takes no loop before this one ([`VectorLoop`]'s order, as a `u8`).
static LOOP_LIMIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl VectorLoop {
    const ALL: [VectorLoop; 5] = [
        VectorLoop::Vnni512,
        VectorLoop::Vnni,
        VectorLoop::AvxVnni,
        VectorLoop::Avx2,
        VectorLoop::Portable,
    ];

    /// The first loop, at or after the limit ([`VectorLoop::limit`]), that this CPU runs after
    /// the `ASCEND_KERNELS_NO_*` variables (read once).
    pub(crate) fn chosen() -> VectorLoop {
        let limit = LOOP_LIMIT.load(std::sync::atomic::Ordering::Relaxed) as usize;
        Self::ALL[limit.min(Self::ALL.len() - 1)..]
            .iter()
            .copied()
            .find(|l| l.available())
            .unwrap_or(VectorLoop::Portable)
    }

    /// Whether this CPU (and the variables) let this loop run.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            match self {
                VectorLoop::Vnni512 => base && crate::simd::has_vnni512(),
                VectorLoop::Vnni => base && crate::simd::has_vnni(),
                VectorLoop::AvxVnni => base && crate::simd::has_avx_vnni(),
                VectorLoop::Avx2 => base,
                VectorLoop::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == VectorLoop::Portable
        }
    }

    /// Makes [`VectorLoop::chosen`] skip the loops before `first`, for the whole process.
    pub(crate) fn limit(first: VectorLoop) {
        let at = Self::ALL.iter().position(|&l| l == first).unwrap_or(0);
        LOOP_LIMIT.store(at as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// A name for reports: `"avx512-vnni-512"`, `"avx512-vnni"`, `"avx-vnni"`, `"avx2"` or
    /// `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            VectorLoop::Vnni512 => "avx512-vnni-512",
            VectorLoop::Vnni => "avx512-vnni",
            VectorLoop::AvxVnni => "avx-vnni",
            VectorLoop::Avx2 => "avx2",
            VectorLoop::Portable => "portable",
        }
    }
}

/// [`columns`] without AMX, its arguments checked: the loop [`VectorLoop::chosen`] names.
fn vector_columns(
    f: QuantFormat,
    layout: Layout,
    w: &[u8],
    row_bytes: usize,
    (c0, c1): (usize, usize),
    rows: &[ActRow<'_>],
    o: &mut [f32],
) {
    let cs = (c0, c1);
    // `chosen` names a loop only on a CPU with its features (AVX2, FMA and F16C for all of
    // them); the lengths are checked by `columns`, this function's only caller.
    #[cfg(target_arch = "x86_64")]
    match VectorLoop::chosen() {
        // SAFETY: as above, and the CPU has AVX-512 F, BW, VNNI and VL.
        VectorLoop::Vnni512 => unsafe {
            return x86::columns_vnni512(f, layout, w, row_bytes, cs, rows, o);
        },
        // SAFETY: as above, and the CPU has AVX-512 VNNI and VL.
        VectorLoop::Vnni => unsafe {
            return x86::columns_vnni(f, layout, w, row_bytes, cs, rows, o);
        },
        // SAFETY: as above, and the CPU has AVX-VNNI.
        VectorLoop::AvxVnni => unsafe {
            return x86::columns_avx_vnni(f, layout, w, row_bytes, cs, rows, o);
        },
        // SAFETY: as above.
        VectorLoop::Avx2 => unsafe {
            return x86::columns(f, layout, w, row_bytes, cs, rows, o);
        },
        VectorLoop::Portable => {}
    }
    let blocks = row_bytes / f.block_bytes();
    let width = c1 - c0;
    let mut blocks_of_row = Vec::new();
    for c in c0..c1 {
        let mut wc = &w[c * row_bytes..(c + 1) * row_bytes];
        if layout == Layout::Interleaved {
            crate::interleaved::row_to_blocks(f, wc, &mut blocks_of_row);
            wc = &blocks_of_row;
        }
        for (r, x) in rows.iter().enumerate() {
            let mut t = [0f32; 1];
            portable(f, wc, blocks, &[*x], &mut t);
            o[r * width + c - c0] = t[0];
        }
    }
}

/// The weight block's values as integers (`Q4_0`: `nib − 8`; `Q4_1`: `nib`) and its scale and
/// minimum.
fn block_values(f: QuantFormat, b: &[u8], q: &mut [i32; BLOCK]) -> (f32, f32) {
    let d = half_at(b, 0);
    match f {
        QuantFormat::Q8_0 => {
            for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                *q = v as i8 as i32;
            }
            (d, 0.0)
        }
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let (qs, off, m) = if f == QuantFormat::Q4_1 {
                (&b[4..20], 0, half_at(b, 2))
            } else {
                (&b[2..18], 8, 0.0)
            };
            for (j, &v) in qs.iter().enumerate() {
                q[j] = (v & 0x0f) as i32 - off;
                q[j + 16] = (v >> 4) as i32 - off;
            }
            (d, m)
        }
        QuantFormat::Int8PerChannel => unreachable!("W8A8 rows go through i8dot"),
    }
}

fn portable<const R: usize>(
    f: QuantFormat,
    w: &[u8],
    blocks: usize,
    xs: &[ActRow<'_>; R],
    out: &mut [f32; R],
) {
    *out = [0.0; R];
    let mut q = [0i32; BLOCK];
    for b in 0..blocks {
        let (d, m) = block_values(f, &w[b * f.block_bytes()..], &mut q);
        for (o, x) in out.iter_mut().zip(xs) {
            let xq = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            let isum: i32 = q.iter().zip(xq).map(|(&a, &c)| a * c as i32).sum();
            *o += d * x.scales[b] * isum as f32 + m * x.sums[b];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Tiles of one weight row × `R` activation rows, one loop per block format (the format is
    //! a type, so nothing is decided inside the loop). Every (weight row, activation row) pair
    //! keeps its own 8-lane accumulator and adds the same products in the same order whatever
    //! the tile, so a row's result does not depend on its neighbours.

    use super::ActRow;
    use super::Layout;
    use super::GROUP;
    use crate::interleaved;
    use crate::quant::{QuantFormat, BLOCK};
    use crate::simd::int8::{Avx2, AvxVnni, Dot, Vnni, Vnni512};
    use crate::simd::x86::hsum;
    use std::arch::x86_64::*;

    /// One block format, as the tile loop needs it.
    trait Format {
        /// Bytes per block.
        const SIZE: usize;
        /// Bytes before a block's values (its scale, and `Q4_1`'s minimum).
        const HEAD: usize;
        /// Whether the values enter the byte products as unsigned nibbles (`Q4_0`, `Q4_1`),
        /// their offset moved into a per-block minimum (`Q4_1`'s own; `Q4_0`'s `−8·d`, since
        /// `Σ (n − 8)·x = Σ n·x − 8·Σ x`), or as signed bytes (`Q8_0`), whose signs then move
        /// onto the activations.
        const UNSIGNED: bool;

        /// The values of the `C` blocks (1, 2, 4 or 8) from `b`, `SIZE` bytes apart, as `C`
        /// vectors in [`group_quads`](super::group_quads)' order for a chunk of `C` blocks.
        ///
        /// # Safety
        /// AVX2; blocks `0..C` from `b` whole.
        unsafe fn quads<const C: usize>(b: *const u8) -> [__m256i; C];

        /// The same vectors from a whole group in the [`interleaved`](crate::interleaved)
        /// layout, whose values start at `v`.
        ///
        /// # Safety
        /// AVX2; the group's values readable from `v`.
        unsafe fn interleaved_quads(v: *const u8) -> [__m256i; GROUP];

        /// The minima of 8 blocks from their scales `d` and the f16 bits of their second
        /// half-word `h` (`Q4_1`'s minimum; the first of the values for the others). The
        /// default has none.
        ///
        /// # Safety
        /// AVX2, F16C.
        #[inline(always)]
        unsafe fn mins(d: __m256, h: __m128i) -> __m256 {
            let _ = (d, h);
            // SAFETY: AVX (this function's contract).
            unsafe { _mm256_setzero_ps() }
        }
    }

    struct Q8_0;
    struct Q4_0;
    struct Q4_1;

    /// `32 / C` bytes from each of the `C` blocks (1, 2 or 4) from `b` (`size` bytes apart),
    /// `off` bytes into each, side by side in one vector.
    ///
    /// # Safety
    /// AVX2; `off + 32 / C` bytes of each block readable.
    #[inline(always)]
    unsafe fn pieces<const C: usize>(b: *const u8, size: usize, off: usize) -> __m256i {
        // SAFETY: C blocks from `b`, each readable for 32 / C bytes from `off` (this
        // function's contract).
        unsafe {
            let at = |j: usize| b.add(j * size + off);
            match C {
                1 => _mm256_loadu_si256(at(0) as *const __m256i),
                2 => _mm256_set_m128i(
                    _mm_loadu_si128(at(1) as *const __m128i),
                    _mm_loadu_si128(at(0) as *const __m128i),
                ),
                4 => {
                    let q = |j: usize| (at(j) as *const i64).read_unaligned();
                    _mm256_setr_epi64x(q(0), q(1), q(2), q(3))
                }
                _ => unreachable!("a chunk from blocks is 1, 2 or 4 of them"),
            }
        }
    }

    /// The values of `C` `Q4_x` blocks (1, 2, 4 or 8) whose 16 bytes of nibbles start `off`
    /// bytes into each (byte `t` holds value `t` in its low nibble and `16 + t` in its high),
    /// in a chunk's order.
    ///
    /// # Safety
    /// AVX2; blocks `0..C` from `b`, `size` bytes apart, whole.
    #[inline(always)]
    unsafe fn nibble_quads<const C: usize>(b: *const u8, size: usize, off: usize) -> [__m256i; C] {
        // SAFETY: only the 16 bytes of nibbles of blocks 0..C are read, which lie inside the
        // blocks (this function's contract); the rest is register arithmetic under AVX2.
        unsafe {
            let mask = _mm256_set1_epi8(0x0f);
            let low = |v: __m256i| _mm256_and_si256(v, mask);
            let high = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
            match C {
                // Values 0..16 then 16..32: the low nibbles, then the high ones.
                1 => {
                    let n = _mm_loadu_si128(b.add(off) as *const __m128i);
                    let both = _mm256_set_m128i(n, n);
                    std::array::from_fn(|_| _mm256_blend_epi32::<0xf0>(low(both), high(both)))
                }
                8 => {
                    let row = |j: usize| _mm_loadu_si128(b.add(j * size + off) as *const __m128i);
                    // Blocks j and j + 4 share a vector; a 4 x 4 transpose of 32-bit words in
                    // each half leaves word i of blocks 0..8 in vector i.
                    let v0 = _mm256_set_m128i(row(4), row(0));
                    let v1 = _mm256_set_m128i(row(5), row(1));
                    let v2 = _mm256_set_m128i(row(6), row(2));
                    let v3 = _mm256_set_m128i(row(7), row(3));
                    let (t0, t1) = (_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
                    let (t2, t3) = (_mm256_unpacklo_epi32(v2, v3), _mm256_unpackhi_epi32(v2, v3));
                    let words = [
                        _mm256_unpacklo_epi64(t0, t2),
                        _mm256_unpackhi_epi64(t0, t2),
                        _mm256_unpacklo_epi64(t1, t3),
                        _mm256_unpackhi_epi64(t1, t3),
                    ];
                    let q = nibble_split(words);
                    std::array::from_fn(|i| q[i])
                }
                // Vector v holds values 32v/C.. of each block: the low nibbles of its bytes
                // (32v/C) mod 16.. for the first half of the vectors, the high ones after.
                _ => std::array::from_fn(|v| {
                    let n = pieces::<C>(b, size, off + (32 * v / C) % 16);
                    if v < C / 2 {
                        low(n)
                    } else {
                        high(n)
                    }
                }),
            }
        }
    }

    /// The 8 value vectors of 8 `Q4_x` blocks from their 4 nibble words (word `i` of block
    /// `j` in lane `j` of `words[i]`): word `i`'s low nibbles are values `4i..4i + 4`, its high
    /// ones `16 + 4i..`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn nibble_split(words: [__m256i; 4]) -> [__m256i; GROUP] {
        // SAFETY: register arithmetic under AVX2 (this function's contract).
        unsafe {
            let mask = _mm256_set1_epi8(0x0f);
            std::array::from_fn(|i| {
                if i < 4 {
                    _mm256_and_si256(words[i], mask)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(words[i - 4]), mask)
                }
            })
        }
    }

    /// The `n`-th 32-byte vector from `p`.
    ///
    /// # Safety
    /// AVX; 32 bytes readable from `p + 32n`.
    #[inline(always)]
    unsafe fn vector(p: *const u8, n: usize) -> __m256i {
        // SAFETY: this function's contract.
        unsafe { _mm256_loadu_si256((p as *const __m256i).add(n)) }
    }

    impl Format for Q8_0 {
        const SIZE: usize = QuantFormat::Q8_0.block_bytes();
        const HEAD: usize = interleaved::head_bytes(QuantFormat::Q8_0);
        const UNSIGNED: bool = false;
        #[inline(always)]
        unsafe fn interleaved_quads(v: *const u8) -> [__m256i; GROUP] {
            // SAFETY: 8 vectors of values (this function's contract).
            std::array::from_fn(|i| unsafe { vector(v, i) })
        }
        #[inline(always)]
        unsafe fn quads<const C: usize>(b: *const u8) -> [__m256i; C] {
            // SAFETY: a Q8_0 block is 34 bytes, its 32 values from offset 2; only blocks 0..C
            // are read (this function's contract).
            unsafe {
                if C < GROUP {
                    // Vector v holds values 32v/C.. of each block.
                    return std::array::from_fn(|v| pieces::<C>(b, Self::SIZE, 2 + 32 * v / C));
                }
                let r: [__m256i; GROUP] = std::array::from_fn(|j| {
                    _mm256_loadu_si256(b.add(j * Self::SIZE + 2) as *const __m256i)
                });
                // An 8 x 8 transpose of 32-bit words: pairs, then quads in each half, then
                // the halves.
                let t: [__m256i; GROUP] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm256_unpacklo_epi32(a, b)
                    } else {
                        _mm256_unpackhi_epi32(a, b)
                    }
                });
                // u[4h + i]: word i (and 4 + i in the high half) of blocks 4h..4h + 4.
                let u: [__m256i; GROUP] = std::array::from_fn(|q| {
                    let (h, i) = (q / 4, q % 4);
                    let (a, b) = (t[4 * h + i / 2], t[4 * h + 2 + i / 2]);
                    if i % 2 == 0 {
                        _mm256_unpacklo_epi64(a, b)
                    } else {
                        _mm256_unpackhi_epi64(a, b)
                    }
                });
                std::array::from_fn(|i| {
                    if i < 4 {
                        _mm256_permute2x128_si256::<0x20>(u[i], u[4 + i])
                    } else {
                        _mm256_permute2x128_si256::<0x31>(u[i - 4], u[i])
                    }
                })
            }
        }
    }

    impl Format for Q4_0 {
        const SIZE: usize = QuantFormat::Q4_0.block_bytes();
        const HEAD: usize = interleaved::head_bytes(QuantFormat::Q4_0);
        const UNSIGNED: bool = true;
        #[inline(always)]
        unsafe fn interleaved_quads(v: *const u8) -> [__m256i; GROUP] {
            // SAFETY: 4 vectors of nibble words (this function's contract).
            unsafe { nibble_split(std::array::from_fn(|i| vector(v, i))) }
        }
        #[inline(always)]
        unsafe fn quads<const C: usize>(b: *const u8) -> [__m256i; C] {
            // SAFETY: a Q4_0 block is 18 bytes: 16 bytes of nibbles from offset 2.
            unsafe { nibble_quads::<C>(b, Self::SIZE, 2) }
        }
        #[inline(always)]
        unsafe fn mins(d: __m256, _: __m128i) -> __m256 {
            // SAFETY: AVX (this function's contract).
            unsafe { _mm256_mul_ps(d, _mm256_set1_ps(-8.0)) }
        }
    }

    impl Format for Q4_1 {
        const SIZE: usize = QuantFormat::Q4_1.block_bytes();
        const HEAD: usize = interleaved::head_bytes(QuantFormat::Q4_1);
        const UNSIGNED: bool = true;
        #[inline(always)]
        unsafe fn interleaved_quads(v: *const u8) -> [__m256i; GROUP] {
            // SAFETY: 4 vectors of nibble words (this function's contract).
            unsafe { nibble_split(std::array::from_fn(|i| vector(v, i))) }
        }
        #[inline(always)]
        unsafe fn quads<const C: usize>(b: *const u8) -> [__m256i; C] {
            // SAFETY: a Q4_1 block is 20 bytes: 16 bytes of nibbles from offset 4.
            unsafe { nibble_quads::<C>(b, Self::SIZE, 4) }
        }
        #[inline(always)]
        unsafe fn mins(_: __m256, h: __m128i) -> __m256 {
            // SAFETY: F16C (this function's contract).
            unsafe { _mm256_cvtph_ps(h) }
        }
    }

    /// The scales and minima of the 8 blocks from `b`, `F::SIZE` bytes apart, lane `j` for
    /// block `j`.
    ///
    /// # Safety
    /// AVX2, F16C; blocks `0..8` from `b` whole.
    #[inline(always)]
    unsafe fn scales<F: Format>(b: *const u8) -> (__m256, __m256) {
        // SAFETY: each block's first 4 bytes are read, inside the block (blocks are 18 bytes
        // or more).
        unsafe {
            let head = |j: usize| -> i32 { (b.add(j * F::SIZE) as *const i32).read_unaligned() };
            let head = _mm256_setr_epi32(
                head(0),
                head(1),
                head(2),
                head(3),
                head(4),
                head(5),
                head(6),
                head(7),
            );
            // The low half-words (the scales) to quadwords 0 and 2, the high ones to 1 and 3,
            // then in block order: scales in the low 128 bits, second half-words in the high.
            let halves = _mm256_packus_epi32(
                _mm256_and_si256(head, _mm256_set1_epi32(0xffff)),
                _mm256_srli_epi32::<16>(head),
            );
            let halves = _mm256_permute4x64_epi64::<0b11_01_10_00>(halves);
            let d = _mm256_cvtph_ps(_mm256_castsi256_si128(halves));
            (d, F::mins(d, _mm256_extracti128_si256::<1>(halves)))
        }
    }

    /// The scales and minima of a chunk of `C` blocks (1, 2 or 4) from `b`, `F::SIZE` bytes
    /// apart, spread over their lanes: lane `l` is for block `l / (8/C)`, and holds its scale,
    /// and its minimum if it is the block's first lane (0 in the others, so that the minimum
    /// is added once).
    ///
    /// # Safety
    /// AVX2, F16C; blocks `0..C` from `b` whole.
    #[inline(always)]
    unsafe fn chunk_scales<F: Format, const C: usize>(b: *const u8) -> (__m256, __m256) {
        let lanes = GROUP / C;
        // Byte shuffles from the blocks' first 4 bytes (block j's in word j): half-word 0
        // (the scale) of block l / lanes into lane l; half-word 1 into a block's first lane.
        let (mut d_at, mut h_at) = ([0x80u8; 16], [0x80u8; 16]);
        for l in 0..GROUP {
            let j = (4 * (l / lanes)) as u8;
            d_at[2 * l..2 * l + 2].copy_from_slice(&[j, j + 1]);
            if l % lanes == 0 {
                h_at[2 * l..2 * l + 2].copy_from_slice(&[j + 2, j + 3]);
            }
        }
        // SAFETY: the first 4 bytes of blocks 0..C are read, inside them (this function's
        // contract; blocks are 18 bytes or more); the rest is register arithmetic under AVX2
        // and F16C.
        unsafe {
            let head = |j: usize| -> i32 {
                if j < C {
                    (b.add(j * F::SIZE) as *const i32).read_unaligned()
                } else {
                    0
                }
            };
            let heads = _mm_setr_epi32(head(0), head(1), head(2), head(3));
            let at = |a: &[u8; 16]| _mm_loadu_si128(a.as_ptr() as *const __m128i);
            let d = _mm256_cvtph_ps(_mm_shuffle_epi8(heads, at(&d_at)));
            let m = F::mins(d, _mm_shuffle_epi8(heads, at(&h_at)));
            // Q4_0's minimum comes from the scale, in every lane: keep the first lanes'.
            let first: [i32; GROUP] = std::array::from_fn(|l| -((l % lanes == 0) as i32));
            let first = _mm256_loadu_si256(first.as_ptr() as *const __m256i);
            (d, _mm256_and_ps(m, _mm256_castsi256_ps(first)))
        }
    }

    /// Lane `l` of the result is lane `l / (8/C)` of `v`: a chunk's per-block value in each of
    /// the block's lanes.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn spread<const C: usize>(v: __m256) -> __m256 {
        let lanes = GROUP / C;
        let at: [i32; GROUP] = std::array::from_fn(|l| (l / lanes) as i32);
        // SAFETY: register arithmetic under AVX2 (this function's contract), and a load of
        // the local array.
        unsafe { _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(at.as_ptr() as *const __m256i)) }
    }

    /// The activation row's per-block values `p[0..C]` spread over their lanes ([`spread`]).
    ///
    /// # Safety
    /// AVX2; `C` values readable from `p`.
    #[inline(always)]
    unsafe fn spread_from<const C: usize>(p: *const f32) -> __m256 {
        // SAFETY: only p[0..C] are read (this function's contract); the permute reads lanes
        // 0..C of the loaded vector, which the load defined.
        unsafe {
            match C {
                8 => _mm256_loadu_ps(p),
                1 => _mm256_broadcast_ss(&*p),
                2 => spread::<C>(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(
                    p as *const f64,
                )))),
                4 => spread::<C>(_mm256_castps128_ps256(_mm_loadu_ps(p))),
                _ => unreachable!("a chunk is 1, 2, 4 or 8 blocks"),
            }
        }
    }

    /// Adds the chunk of `C` blocks (1, 2, 4 or 8) from block `b` of weight row `w` times `R`
    /// activation rows to the rows' accumulators. The weight's values are rearranged like the
    /// activations' [`group_quads`](super::group_quads) (or, with `IL` and a whole group,
    /// read so from the interleaved layout), so each byte dot product instruction adds 4
    /// values of every lane's block at once, and each lane ends with an exact integer sum of
    /// one block's values. Converted, it is scaled by `d_w · d_x` of its block, then
    /// `m_w · s_x` is added, once per block (in the block's first lane). Every activation row
    /// adds the same products in the same order whatever the tile.
    ///
    /// # Safety
    /// AVX2, FMA, F16C and `D`'s features; blocks `b..b + C` of `w` whole, and of every row of
    /// `xs`.
    #[inline(always)]
    unsafe fn chunk<F: Format, D: Dot, const IL: bool, const C: usize, const R: usize>(
        w: *const u8,
        b: usize,
        xs: &[ActRow<'_>; R],
        acc: &mut [__m256; R],
    ) {
        // SAFETY: blocks b..b + C of the weight row and of every activation row are whole
        // (this function's contract), and the activations' quads for them are the C vectors
        // from byte 32b; nothing past them is read.
        unsafe {
            let base = w.add(b * F::SIZE);
            let interleaved = IL && C == GROUP;
            let wq: [__m256i; C] = if interleaved {
                let q = F::interleaved_quads(base.add(GROUP * F::HEAD));
                std::array::from_fn(|i| q[i])
            } else {
                F::quads::<C>(base)
            };
            // Unsigned by signed bytes: a signed weight goes in as |w| (at most 128), its sign
            // moved onto x.
            let wu: [__m256i; C] = if F::UNSIGNED {
                wq
            } else {
                std::array::from_fn(|i| _mm256_sign_epi8(wq[i], wq[i]))
            };
            let (dw, mw) = if interleaved {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
                let h = if F::HEAD > 2 {
                    _mm_loadu_si128(base.add(2 * GROUP) as *const __m128i)
                } else {
                    _mm_setzero_si128()
                };
                (d, F::mins(d, h))
            } else if C < GROUP {
                chunk_scales::<F, C>(base)
            } else {
                scales::<F>(base)
            };
            // One activation row at a time, not unrolled: unrolled, all the rows' loads were
            // hoisted to the top and spilled to the stack (measured 10% slower at 8 rows).
            let xs: &[ActRow<'_>] = if R > 1 { std::hint::black_box(xs) } else { xs };
            for (x, acc) in xs.iter().zip(acc.iter_mut()) {
                let xq = x.quads.as_ptr().add(b * BLOCK) as *const __m256i;
                // Two chains, so that a product need not wait for the one before.
                let mut s = [_mm256_setzero_si256(); 2];
                for i in 0..C {
                    let xv = _mm256_loadu_si256(xq.add(i));
                    let xv = if F::UNSIGNED {
                        xv
                    } else {
                        _mm256_sign_epi8(xv, wq[i])
                    };
                    s[i % 2] = D::dot_add(s[i % 2], wu[i], xv);
                }
                let dx = spread_from::<C>(x.scales.as_ptr().add(b));
                let sums = _mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1]));
                let a = _mm256_fmadd_ps(sums, _mm256_mul_ps(dw, dx), *acc);
                *acc = if F::UNSIGNED {
                    _mm256_fmadd_ps(mw, spread_from::<C>(x.sums.as_ptr().add(b)), a)
                } else {
                    a
                };
            }
        }
    }

    /// `out[r] = dot(weight row w, xs[r])`, blocks in the row's [`chunks`](super::chunks).
    /// Inlined into an entry compiled with `D`'s features (which is why it has none itself).
    ///
    /// # Safety
    /// AVX2, FMA, F16C and `D`'s features; `blocks` whole blocks of `F` readable from `w`,
    /// every row of `xs` at least `blocks` blocks.
    #[inline(always)]
    unsafe fn tile<F: Format, D: Dot, const IL: bool, const R: usize>(
        w: *const u8,
        blocks: usize,
        xs: &[ActRow<'_>; R],
        out: &mut [f32; R],
    ) {
        // SAFETY: AVX (this function's contract).
        let mut acc = [unsafe { _mm256_setzero_ps() }; R];
        let full = blocks / GROUP * GROUP;
        for b in (0..full).step_by(GROUP) {
            // SAFETY: blocks b..b + 8 lie inside every row (this function's contract).
            unsafe { chunk::<F, D, IL, GROUP, R>(w, b, xs, &mut acc) };
        }
        // The last, partial group, as `chunks` takes it: 4, 2, then 1 blocks.
        let (tail, mut b) = (blocks - full, full);
        if tail & 4 != 0 {
            // SAFETY: as above, blocks b..b + 4 (b + 4 <= blocks, since tail has bit 4).
            unsafe { chunk::<F, D, IL, 4, R>(w, b, xs, &mut acc) };
            b += 4;
        }
        if tail & 2 != 0 {
            // SAFETY: as above, blocks b..b + 2.
            unsafe { chunk::<F, D, IL, 2, R>(w, b, xs, &mut acc) };
            b += 2;
        }
        if tail & 1 != 0 {
            // SAFETY: as above, block b.
            unsafe { chunk::<F, D, IL, 1, R>(w, b, xs, &mut acc) };
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: AVX2, FMA and F16C (this function's contract).
            *o = unsafe { hsum(a) };
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` holds `c1` rows of `row_bytes`, `o` at least `rows.len() *
    /// (c1 - c0)` elements, every activation row at least a weight row's blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn columns(
        f: QuantFormat,
        layout: Layout,
        w: &[u8],
        row_bytes: usize,
        cs: (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<Avx2>(f, layout, w, row_bytes, cs, rows, o) }
    }

    /// As [`columns`], with `vpdpbusd`.
    ///
    /// # Safety
    /// As [`columns`], and AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn columns_vnni(
        f: QuantFormat,
        layout: Layout,
        w: &[u8],
        row_bytes: usize,
        cs: (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<Vnni>(f, layout, w, row_bytes, cs, rows, o) }
    }

    /// As [`columns_vnni`], with AVX-VNNI's `vpdpbusd` (the VEX form of the same instruction,
    /// on client CPUs without AVX-512).
    ///
    /// # Safety
    /// As [`columns`], and AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn columns_avx_vnni(
        f: QuantFormat,
        layout: Layout,
        w: &[u8],
        row_bytes: usize,
        cs: (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<AvxVnni>(f, layout, w, row_bytes, cs, rows, o) }
    }

    /// As [`columns_vnni`], with whole groups of the interleaved layout two columns at a time
    /// on 512-bit registers ([`tile_pair`]).
    ///
    /// # Safety
    /// As [`columns`], and AVX-512 F, BW, VNNI and VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512f,avx512bw")]
    pub unsafe fn columns_vnni512(
        f: QuantFormat,
        layout: Layout,
        w: &[u8],
        row_bytes: usize,
        cs: (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<Vnni512>(f, layout, w, row_bytes, cs, rows, o) }
    }

    /// The format's loop with `D`'s dot products, inlined into the entry with its features.
    ///
    /// # Safety
    /// As [`columns`], and `D`'s features.
    #[inline(always)]
    unsafe fn columns_with<D: Dot>(
        f: QuantFormat,
        layout: Layout,
        w: &[u8],
        row_bytes: usize,
        (c0, c1): (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe {
            let a = (w, row_bytes, c0, c1, rows, o);
            match (f, layout) {
                (QuantFormat::Q8_0, Layout::Blocks) => columns_of::<Q8_0, D, false>(a),
                (QuantFormat::Q4_0, Layout::Blocks) => columns_of::<Q4_0, D, false>(a),
                (QuantFormat::Q4_1, Layout::Blocks) => columns_of::<Q4_1, D, false>(a),
                (QuantFormat::Q8_0, Layout::Interleaved) => columns_of::<Q8_0, D, true>(a),
                (QuantFormat::Q4_0, Layout::Interleaved) => columns_of::<Q4_0, D, true>(a),
                (QuantFormat::Q4_1, Layout::Interleaved) => columns_of::<Q4_1, D, true>(a),
                (QuantFormat::Int8PerChannel, _) => unreachable!("W8A8 rows go through i8dot"),
            }
        }
    }

    /// Activation rows in tiles of 8, then 4, then one at a time, each tile against the
    /// columns one at a time: a weight row's values are rearranged once per tile, and read in
    /// address order, which the prefetcher follows best (4 columns at once measured 30% slower
    /// at batch 1; 2 columns per tile of 8 rows measured no faster than one).
    ///
    /// # Safety
    /// As [`columns`], and `D`'s features.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    unsafe fn columns_of<F: Format, D: Dot, const IL: bool>(
        (w, row_bytes, c0, c1, rows, o): (&[u8], usize, usize, usize, &[ActRow<'_>], &mut [f32]),
    ) {
        let m = rows.len();
        let mut r = 0;
        while r + 8 <= m {
            // SAFETY: passed on from this function's contract; rows r..r + 8 exist.
            unsafe { rows_of::<F, D, IL, 8>(w, row_bytes, (c0, c1), rows, r, o) };
            r += 8;
        }
        while r + 4 <= m {
            // SAFETY: as above, rows r..r + 4.
            unsafe { rows_of::<F, D, IL, 4>(w, row_bytes, (c0, c1), rows, r, o) };
            r += 4;
        }
        while r < m {
            // SAFETY: as above, row r.
            unsafe { rows_of::<F, D, IL, 1>(w, row_bytes, (c0, c1), rows, r, o) };
            r += 1;
        }
    }

    /// `tile` for two weight rows `w0` and `w1` (interleaved layout) at once: each whole group
    /// in 512-bit registers, `w0`'s 8 lanes in the low half and `w1`'s in the high, against the
    /// activations' quads loaded into both halves; the last, partial group per row with
    /// [`chunk`] on the halves. Every lane takes the operations [`tile`] gives it, in the same
    /// order, so the same bits.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL; `blocks` whole blocks readable from `w0`
    /// and from `w1`, every row of `xs` at least `blocks` blocks.
    #[inline(always)]
    unsafe fn tile_pair<F: Format, const R: usize>(
        w0: *const u8,
        w1: *const u8,
        blocks: usize,
        xs: &[ActRow<'_>; R],
        out: &mut [[f32; R]; 2],
    ) {
        // SAFETY: every load is inside the weight rows' blocks 0..blocks or the activation
        // rows' (this function's contract); the rest is register arithmetic under the
        // contract's features.
        unsafe {
            let join =
                |a: __m256i, b: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
            let join_ps = |a: __m256, b: __m256| {
                let a = _mm512_castpd256_pd512(_mm256_castps_pd(a));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(a, _mm256_castps_pd(b)))
            };
            // Both halves from one 32-byte load.
            let twice =
                |p: *const u8| _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i));
            let twice_ps = |p: *const f32| {
                _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(p as *const f64)))
            };
            let mut acc = [_mm512_setzero_ps(); R];
            let full = blocks / GROUP * GROUP;
            for b in (0..full).step_by(GROUP) {
                let (b0, b1) = (w0.add(b * F::SIZE), w1.add(b * F::SIZE));
                let (q0, q1) = (
                    F::interleaved_quads(b0.add(GROUP * F::HEAD)),
                    F::interleaved_quads(b1.add(GROUP * F::HEAD)),
                );
                let wq: [__m512i; GROUP] = std::array::from_fn(|i| join(q0[i], q1[i]));
                // Unsigned by signed bytes, as in `chunk`: a signed weight as |w|, its sign on x.
                let wu: [__m512i; GROUP] = if F::UNSIGNED {
                    wq
                } else {
                    std::array::from_fn(|i| _mm512_abs_epi8(wq[i]))
                };
                let negative: [__mmask64; GROUP] =
                    std::array::from_fn(|i| _mm512_movepi8_mask(wq[i]));
                let scales = |base: *const u8| {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
                    let h = if F::HEAD > 2 {
                        _mm_loadu_si128(base.add(2 * GROUP) as *const __m128i)
                    } else {
                        _mm_setzero_si128()
                    };
                    (d, F::mins(d, h))
                };
                let ((d0, m0), (d1, m1)) = (scales(b0), scales(b1));
                let (dw, mw) = (join_ps(d0, d1), join_ps(m0, m1));
                let xs: &[ActRow<'_>] = if R > 1 { std::hint::black_box(xs) } else { xs };
                for (x, acc) in xs.iter().zip(acc.iter_mut()) {
                    let xq = x.quads.as_ptr().add(b * BLOCK) as *const u8;
                    let mut s = [_mm512_setzero_si512(); 2];
                    for i in 0..GROUP {
                        let xv = twice(xq.add(32 * i));
                        let xv = if F::UNSIGNED {
                            xv
                        } else {
                            // x · sign(w): negated where w < 0 (where w = 0 the product is 0
                            // either way, |x| <= 127).
                            _mm512_mask_sub_epi8(xv, negative[i], _mm512_setzero_si512(), xv)
                        };
                        s[i % 2] = _mm512_dpbusd_epi32(s[i % 2], wu[i], xv);
                    }
                    let dx = twice_ps(x.scales.as_ptr().add(b));
                    let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(s[0], s[1]));
                    let a = _mm512_fmadd_ps(sums, _mm512_mul_ps(dw, dx), *acc);
                    *acc = if F::UNSIGNED {
                        _mm512_fmadd_ps(mw, twice_ps(x.sums.as_ptr().add(b)), a)
                    } else {
                        a
                    };
                }
            }
            // The halves, then each row's last, partial group as `tile` takes it.
            for (j, w) in [w0, w1].into_iter().enumerate() {
                let mut half: [__m256; R] = std::array::from_fn(|r| {
                    let v = _mm512_castps_pd(acc[r]);
                    _mm256_castpd_ps(if j == 0 {
                        _mm512_castpd512_pd256(v)
                    } else {
                        _mm512_extractf64x4_pd::<1>(v)
                    })
                });
                let (tail, mut b) = (blocks - full, full);
                if tail & 4 != 0 {
                    chunk::<F, Vnni, true, 4, R>(w, b, xs, &mut half);
                    b += 4;
                }
                if tail & 2 != 0 {
                    chunk::<F, Vnni, true, 2, R>(w, b, xs, &mut half);
                    b += 2;
                }
                if tail & 1 != 0 {
                    chunk::<F, Vnni, true, 1, R>(w, b, xs, &mut half);
                }
                for (o, a) in out[j].iter_mut().zip(half) {
                    *o = hsum(a);
                }
            }
        }
    }

    /// Activation rows `r0..r0 + R` against the columns `c0..c1`.
    ///
    /// # Safety
    /// As [`columns`], and `D`'s features; `rows` holds `r0 + R` rows.
    #[inline(always)]
    unsafe fn rows_of<F: Format, D: Dot, const IL: bool, const R: usize>(
        w: &[u8],
        row_bytes: usize,
        (c0, c1): (usize, usize),
        rows: &[ActRow<'_>],
        r0: usize,
        o: &mut [f32],
    ) {
        let (width, blocks) = (c1 - c0, row_bytes / F::SIZE);
        let xs: [ActRow<'_>; R] = std::array::from_fn(|i| rows[r0 + i]);
        let mut c = c0;
        if D::PAIRS && IL {
            while c + 2 <= c1 {
                let mut t = [[0f32; R]; 2];
                // SAFETY: rows c and c + 1 are whole rows of `w`, and D::PAIRS says the entry
                // enabled AVX-512 F and BW (this function's contract).
                unsafe {
                    let (w0, w1) = (
                        w[c * row_bytes..].as_ptr(),
                        w[(c + 1) * row_bytes..].as_ptr(),
                    );
                    tile_pair::<F, R>(w0, w1, blocks, &xs, &mut t)
                };
                for (j, t) in t.iter().enumerate() {
                    for (i, &v) in t.iter().enumerate() {
                        o[(r0 + i) * width + c + j - c0] = v;
                    }
                }
                c += 2;
            }
        }
        for c in c..c1 {
            let mut t = [0f32; R];
            // SAFETY: row c is a whole row of `w` (this function's contract).
            unsafe { tile::<F, D, IL, R>(w[c * row_bytes..].as_ptr(), blocks, &xs, &mut t) };
            for (i, &v) in t.iter().enumerate() {
                o[(r0 + i) * width + c - c0] = v;
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` holds `blocks` whole blocks of `f` and every row of `xs` at least
    /// `blocks` blocks.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots<const R: usize>(
        f: QuantFormat,
        w: &[u8],
        blocks: usize,
        xs: &[ActRow<'_>; R],
        out: &mut [f32; R],
    ) {
        let p = w.as_ptr();
        // SAFETY: passed on from this function's contract.
        unsafe {
            match f {
                QuantFormat::Q8_0 => tile::<Q8_0, Avx2, false, R>(p, blocks, xs, out),
                QuantFormat::Q4_0 => tile::<Q4_0, Avx2, false, R>(p, blocks, xs, out),
                QuantFormat::Q4_1 => tile::<Q4_1, Avx2, false, R>(p, blocks, xs, out),
                QuantFormat::Int8PerChannel => unreachable!("W8A8 rows go through i8dot"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize, ActivationBlocks};

    fn quads_of(acts: &[ActivationBlocks]) -> Vec<Vec<i8>> {
        acts.iter()
            .map(|a| {
                let mut q = Vec::new();
                group_quads(&a.qs, &mut q);
                q
            })
            .collect()
    }

    /// `m` rows of `k` activations (whole blocks, mixed signs and magnitudes), quantized.
    fn test_rows(m: usize, k: usize) -> Vec<ActivationBlocks> {
        (0..m)
            .map(|r| {
                let x: Vec<f32> = (0..k)
                    .map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0 + (i % 5) as f32 * 0.3)
                    .collect();
                let mut a = ActivationBlocks::default();
                a.quantize(&x);
                a
            })
            .collect()
    }

    /// An `[n, k]` weight whose blocks have three different scales.
    fn test_weights(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * (0.07 + (i / BLOCK % 3) as f32 * 0.05))
            .collect()
    }

    fn act_rows<'a>(acts: &'a [ActivationBlocks], quads: &'a [Vec<i8>]) -> Vec<ActRow<'a>> {
        acts.iter()
            .zip(quads)
            .map(|(a, q)| ActRow {
                scales: &a.scales,
                sums: &a.sums,
                qs: &a.qs,
                quads: q,
            })
            .collect()
    }

    #[test]
    fn the_dispatched_loop_matches_the_portable_one_and_the_exact_sum() {
        let k = 256;
        let w: Vec<f32> = (0..k)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.07)
            .collect();
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..k)
                    .map(|i| ((i * 7 + r * 13) % 19) as f32 * 0.1 - 0.9)
                    .collect()
            })
            .collect();
        let acts: Vec<ActivationBlocks> = xs
            .iter()
            .map(|x| {
                let mut a = ActivationBlocks::default();
                a.quantize(x);
                a
            })
            .collect();
        let quads = quads_of(&acts);
        let rows = act_rows(&acts, &quads);
        let xs3 = [rows[0], rows[1], rows[2]];
        for f in QuantFormat::ALL {
            let mut wb = Vec::new();
            quantize(f, &w, &mut wb).unwrap();
            let mut wf = vec![0f32; k];
            crate::quant::dequantize(f, &wb, &mut wf).unwrap();
            let (mut fast, mut slow) = ([0f32; 3], [0f32; 3]);
            dots(f, &wb, &xs3, &mut fast);
            portable(f, &wb, k / BLOCK, &xs3, &mut slow);
            for r in 0..3 {
                let exact: f64 = acts[r]
                    .values()
                    .iter()
                    .zip(&wf)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                for got in [fast[r], slow[r]] {
                    assert!(
                        (got as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "{f} row {r}: {got} vs {exact}"
                    );
                }
                // One row alone gives the same bits as in a tile of three.
                let mut one = [0f32; 1];
                dots(f, &wb, &[xs3[r]], &mut one);
                assert_eq!(one[0].to_bits(), fast[r].to_bits(), "{f} row {r}");
            }
        }
    }

    /// A row is taken in whole groups, then its last blocks in chunks of 4, 2 and 1.
    #[test]
    fn chunks_cover_the_row_once() {
        let got = |blocks| chunks(blocks).collect::<Vec<_>>();
        assert_eq!(got(0), []);
        assert_eq!(got(2), [(0, 2)]);
        assert_eq!(got(18), [(0, 8), (8, 8), (16, 2)]);
        assert_eq!(got(15), [(0, 8), (8, 4), (12, 2), (14, 1)]);
        assert_eq!(got(16), [(0, 8), (8, 8)]);
    }

    /// The values of each block land where the x86 loop reads them: in a chunk of `c` blocks
    /// from block `f`, quad `i` of block `f + j` at `(f + i / (8/c)) · 32 + 4 · (j · 8/c +
    /// i mod 8/c)`.
    #[test]
    fn group_quads_lays_blocks_side_by_side() {
        let blocks = 15;
        let qs: Vec<i8> = (0..blocks * BLOCK).map(|v| (v % 251) as u8 as i8).collect();
        let mut out = vec![7i8; 3];
        group_quads(&qs, &mut out);
        assert_eq!(out.len(), blocks * BLOCK);
        let mut seen = vec![false; out.len()];
        for (first, c) in [(0, 8), (8, 4), (12, 2), (14, 1)] {
            let lanes = GROUP / c;
            for j in 0..c {
                for v in 0..BLOCK {
                    let i = v / 4;
                    let at = (first + i / lanes) * BLOCK + 4 * (j * lanes + i % lanes) + v % 4;
                    let b = first + j;
                    assert_eq!(out[at], qs[b * BLOCK + v], "block {b} value {v}");
                    seen[at] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s), "every byte holds a value");
    }

    /// The VNNI loops (AVX-512 VNNI on 256 and 512-bit registers, AVX-VNNI) give the AVX2
    /// loop's bits (the same integer sums), where the CPU has them, and the interleaved
    /// layout the blocks' bits, for every format and every tile shape (13 rows: a tile of 8,
    /// one of 4 and a single row) and rows of every kind of chunk (19 blocks: two whole groups
    /// and chunks of 2 and 1; 12: a group and a chunk of 4; 7, 4 and 2: no whole group; 16:
    /// no chunk); all agree with the exact sum, and each row alone gives the bits it gives in
    /// the batch.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vnni_loop_gives_the_avx2_loops_bits() {
        use std::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for blocks in [19, 12, 7, 4, 2, 16] {
            x86_loops_agree(blocks);
        }
    }

    /// The AMX loop gives the AVX2 loop's bits for every format, rows of every kind of chunk
    /// (1 to 48 blocks), one tile of 16 rows and a last tile of 1, 4, 8 or 13 rows (17, 20,
    /// 24, 29 and 33 rows), columns in whole panels and not (37 columns: 2 panels and 5 left;
    /// from column 5: 2 panels), with the rows given as an [`ActMatrix`] (then, for whole
    /// panels, without the VNNI loop's quads) or not (copied).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_amx_loop_gives_the_avx2_loops_bits() {
        use std::is_x86_feature_detected as has;
        if !(crate::amx::available() && has!("avx2") && has!("fma") && has!("f16c")) {
            eprintln!("skipped: this CPU (or system) has no AMX");
            return;
        }
        let n = 37;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for blocks in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 15, 16, 18, 19, 48] {
            let k = blocks * BLOCK;
            let (w, acts) = (test_weights(n, k), test_rows(33, k));
            let quads = quads_of(&acts);
            let rows = act_rows(&acts, &quads);
            for f in QuantFormat::ALL.into_iter().filter(|f| f.is_blocks()) {
                let mut wb = Vec::new();
                quantize(f, &w, &mut wb).unwrap();
                let rb = f.row_bytes(k).unwrap();
                let wi = crate::interleaved::interleave(f, n, k, &wb).unwrap();
                for m in [16, 17, 20, 24, 29, 33] {
                    assert!(runs_on_amx(Layout::Interleaved, m));
                    let matrix = ActMatrix::new(&rows[..m]);
                    for cs in [(0, n), (5, n)] {
                        let width = cs.1 - cs.0;
                        let mut want = vec![0f32; m * width];
                        // SAFETY: the CPU has AVX2, FMA and F16C (checked above); `wi` holds n
                        // rows of `rb` bytes, `want` m · width values, every activation row
                        // k / 32 blocks and their quads.
                        unsafe {
                            x86::columns(f, Layout::Interleaved, &wi, rb, cs, &rows[..m], &mut want)
                        };
                        // Whole panels from a matrix need no quads.
                        let no_quads: Vec<ActRow<'_>> = rows[..m]
                            .iter()
                            .map(|x| ActRow { quads: &[], ..*x })
                            .collect();
                        let panels = width % 16 == 0;
                        for mx in [None, Some(&matrix)] {
                            let mut got = vec![1f32; m * width];
                            let il = Layout::Interleaved;
                            let rows = if mx.is_some() && panels {
                                &no_quads
                            } else {
                                &rows[..m]
                            };
                            columns(f, il, &wi, rb, cs, rows, mx, &mut got);
                            assert_eq!(
                                bits(&got),
                                bits(&want),
                                "{f}, {blocks} blocks, {m} rows, columns {cs:?}, matrix {}",
                                mx.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn x86_loops_agree(blocks: usize) {
        use std::is_x86_feature_detected as has;
        let vnni = has!("avx512vnni") && has!("avx512vl");
        let wide = vnni && has!("avx512f") && has!("avx512bw");
        let avx_vnni = has!("avxvnni");
        // 5 columns: two pairs and one alone in the 512-bit loop.
        let (k, n, m) = (blocks * BLOCK, 5, 13);
        let acts = test_rows(m, k);
        let quads = quads_of(&acts);
        let rows = act_rows(&acts, &quads);
        let w = test_weights(n, k);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for f in QuantFormat::ALL {
            let mut wb = Vec::new();
            quantize(f, &w, &mut wb).unwrap();
            let mut wf = vec![0f32; n * k];
            crate::quant::dequantize(f, &wb, &mut wf).unwrap();
            let rb = f.row_bytes(k).unwrap();
            let wi = crate::interleaved::interleave(f, n, k, &wb).unwrap();
            let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
            // SAFETY: the CPU has AVX2, FMA, F16C (checked above), AVX-512 VNNI and VL where
            // `columns_vnni` runs, F and BW too where `columns_vnni512` does, and AVX-VNNI
            // where `columns_avx_vnni` does; `wb` and `wi` hold n rows of `rb` bytes, the
            // outputs m · n values, every activation row k / 32 blocks and their quads.
            unsafe {
                x86::columns(f, Layout::Blocks, &wb, rb, (0, n), &rows, &mut a);
                x86::columns(f, Layout::Interleaved, &wi, rb, (0, n), &rows, &mut b);
                assert_eq!(bits(&a), bits(&b), "{f}: interleaved, AVX2");
                if avx_vnni {
                    for (layout, w) in [(Layout::Blocks, &wb), (Layout::Interleaved, &wi)] {
                        b.fill(1.0);
                        x86::columns_avx_vnni(f, layout, w, rb, (0, n), &rows, &mut b);
                        assert_eq!(bits(&a), bits(&b), "{f}: {layout:?}, AVX-VNNI");
                    }
                }
                if vnni {
                    for (layout, w) in [(Layout::Blocks, &wb), (Layout::Interleaved, &wi)] {
                        b.fill(1.0);
                        x86::columns_vnni(f, layout, w, rb, (0, n), &rows, &mut b);
                        assert_eq!(bits(&a), bits(&b), "{f}: {layout:?}, VNNI");
                        if wide {
                            b.fill(1.0);
                            x86::columns_vnni512(f, layout, w, rb, (0, n), &rows, &mut b);
                            assert_eq!(bits(&a), bits(&b), "{f}: {layout:?}, VNNI 512");
                        }
                    }
                }
            }
            // The portable loop on the interleaved rows reads them as the blocks they are.
            let mut back = Vec::new();
            for c in 0..n {
                crate::interleaved::row_to_blocks(f, &wi[c * rb..(c + 1) * rb], &mut back);
                assert_eq!(back, wb[c * rb..(c + 1) * rb], "{f} row {c}");
            }
            for (r, act) in acts.iter().enumerate() {
                let xv = act.values();
                for c in 0..n {
                    let exact: f64 = xv
                        .iter()
                        .zip(&wf[c * k..(c + 1) * k])
                        .map(|(&x, &w)| x as f64 * w as f64)
                        .sum();
                    let got = a[r * n + c] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "{f} row {r} column {c}: {got} vs {exact}"
                    );
                }
                let mut alone = vec![0f32; n];
                // SAFETY: as above, one activation row.
                unsafe {
                    x86::columns(
                        f,
                        Layout::Interleaved,
                        &wi,
                        rb,
                        (0, n),
                        &rows[r..r + 1],
                        &mut alone,
                    )
                };
                assert_eq!(bits(&alone), bits(&a[r * n..(r + 1) * n]), "{f} row {r}");
            }
        }
    }
}
