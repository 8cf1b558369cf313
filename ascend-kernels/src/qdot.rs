//! The quantized GEMM's inner loop: one weight row in a block format against up to 8 rows of
//! int8 activation blocks, with an AVX2 version chosen at run time on x86-64 (`vpmaddubsw` /
//! `vpmaddwd`, as llama.cpp's AVX2 kernels do), and the same loop with AVX-512 VNNI's
//! `vpdpbusd` (on 256-bit registers) where the CPU has it: one instruction for the two, the same
//! integer sums, so the same bits.
//!
//! Per block the integer dot product is exact (i32); it is scaled by `d_x · d_w` and added to
//! the row's `f32` sum (plus `m_w · sums_x` for `Q4_1`, and `−8·d_w · sums_x` for `Q4_0`). The
//! x86 loop takes blocks 8 at a time, the values of the 8 laid side by side ([`group_quads`]),
//! so that each of a block's sums ends in a lane of its own and 8 blocks are scaled by one
//! instruction; lane `j` adds blocks `j, j + 8, …`, and the lanes are added at the end. A
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

/// How a weight's rows are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GGUF's blocks, in order.
    Blocks,
    /// The CPU backend's layout: [`crate::interleaved`].
    Interleaved,
}

/// `qs` (whole blocks of [`BLOCK`] values) rearranged for the x86 loops, into `out`: per
/// group of 8 blocks, for each quad `i` of values `4i..4i + 4` (8 of them), quad `i` of each of
/// the 8 blocks in turn; zeros stand for the blocks past the end of a last, partial group. One
/// 32-byte load then holds 4 values of 8 blocks, which a byte dot product instruction adds
/// into one 32-bit lane per block: a block's sum ends in a lane of its own, with no reduction
/// across lanes. `ceil(blocks / 8) · 256` bytes.
pub fn group_quads(qs: &[i8], out: &mut Vec<i8>) {
    let blocks = qs.len() / BLOCK;
    out.clear();
    out.resize(blocks.div_ceil(GROUP) * GROUP * BLOCK, 0);
    for (b, block) in qs.chunks_exact(BLOCK).enumerate() {
        let (g, j) = (b / GROUP, b % GROUP);
        for (i, quad) in block.chunks_exact(4).enumerate() {
            let at = (g * GROUP + i) * BLOCK + j * 4;
            out[at..at + 4].copy_from_slice(quad);
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
            && x.quads.len() >= blocks.div_ceil(GROUP) * GROUP * BLOCK),
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
/// layouts give the same bits.
///
/// # Panics
/// If `w` has fewer than `c1` rows, `o` fewer than `rows.len() * (c1 - c0)` elements, or an
/// activation row fewer blocks than a weight row (caller bugs, as with slice indexing), or if
/// `f` is not a block format (W8A8 goes through `i8dot`).
pub fn columns(
    f: QuantFormat,
    layout: Layout,
    w: &[u8],
    row_bytes: usize,
    (c0, c1): (usize, usize),
    rows: &[ActRow<'_>],
    o: &mut [f32],
) {
    let blocks = row_bytes / f.block_bytes();
    assert!(
        f.is_blocks()
            && w.len() >= c1 * row_bytes
            && o.len() >= rows.len() * (c1 - c0)
            && rows.iter().all(|x| x.scales.len() >= blocks
                && x.sums.len() >= blocks
                && x.qs.len() >= blocks * BLOCK
                && x.quads.len() >= blocks.div_ceil(GROUP) * GROUP * BLOCK),
        "qdot: an argument is shorter than the shapes need"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        if crate::simd::has_vnni() {
            // SAFETY: as below, and the CPU supports AVX-512 VNNI and VL (just checked).
            return unsafe { x86::columns_vnni(f, layout, w, row_bytes, (c0, c1), rows, o) };
        }
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above; the lengths are
        // checked just before.
        return unsafe { x86::columns(f, layout, w, row_bytes, (c0, c1), rows, o) };
    }
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
    use crate::simd::int8::{Avx2, Dot, Vnni};
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

        /// The values of the first `n` (at most 8) blocks from `b`, `SIZE` bytes apart, as 8
        /// vectors: lane `j` of vector `i` holds values `4i..4i + 4` of block `j` (zeros for
        /// `j >= n`, which are not read): [`group_quads`](super::group_quads)'s order.
        ///
        /// # Safety
        /// AVX2; blocks `0..n` from `b` whole.
        unsafe fn quads(b: *const u8, n: usize) -> [__m256i; GROUP];

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

    /// The 16 bytes `off` bytes into block `j` (blocks `size` bytes apart from `b`) if
    /// `j < n`, else zeros: the blocks past a row's end are neither read nor pointed at.
    ///
    /// # Safety
    /// AVX2; blocks `0..n` from `b` whole, each at least `off + 16` bytes.
    #[inline(always)]
    unsafe fn block16(b: *const u8, (j, n): (usize, usize), size: usize, off: usize) -> __m128i {
        if j < n {
            // SAFETY: block j < n lies whole from `b` and holds 16 bytes from `off` (this
            // function's contract).
            unsafe { _mm_loadu_si128(b.add(j * size + off) as *const __m128i) }
        } else {
            // SAFETY: AVX2 (this function's contract).
            unsafe { _mm_setzero_si128() }
        }
    }

    /// The nibble values of `n` blocks whose 16 bytes of nibbles start `off` bytes into
    /// each: byte `t` holds value `t` (low nibble) and value `16 + t` (high).
    ///
    /// # Safety
    /// AVX2; blocks `0..n` from `b`, `size` bytes apart, whole.
    #[inline(always)]
    unsafe fn nibble_quads(b: *const u8, n: usize, size: usize, off: usize) -> [__m256i; GROUP] {
        // SAFETY: block j's nibbles are read only for j < n, which lie inside the blocks
        // (this function's contract); the rest is register arithmetic under AVX2.
        unsafe {
            let row = |j: usize| block16(b, (j, n), size, off);
            // Blocks j and j + 4 share a vector; a 4 x 4 transpose of 32-bit words in each half
            // leaves word i of blocks 0..8 in vector i.
            let v0 = _mm256_set_m128i(row(4), row(0));
            let v1 = _mm256_set_m128i(row(5), row(1));
            let v2 = _mm256_set_m128i(row(6), row(2));
            let v3 = _mm256_set_m128i(row(7), row(3));
            let (t0, t1) = (_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
            let (t2, t3) = (_mm256_unpacklo_epi32(v2, v3), _mm256_unpackhi_epi32(v2, v3));
            nibble_split([
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ])
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
        unsafe fn quads(b: *const u8, n: usize) -> [__m256i; GROUP] {
            // SAFETY: a Q8_0 block is 34 bytes, its 32 values from offset 2; blocks j >= n are
            // not read (this function's contract).
            unsafe {
                let r: [__m256i; GROUP] = std::array::from_fn(|j| {
                    if j < n {
                        _mm256_loadu_si256(b.add(j * Self::SIZE + 2) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    }
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
        unsafe fn quads(b: *const u8, n: usize) -> [__m256i; GROUP] {
            // SAFETY: a Q4_0 block is 18 bytes: 16 bytes of nibbles from offset 2.
            unsafe { nibble_quads(b, n, Self::SIZE, 2) }
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
        unsafe fn quads(b: *const u8, n: usize) -> [__m256i; GROUP] {
            // SAFETY: a Q4_1 block is 20 bytes: 16 bytes of nibbles from offset 4.
            unsafe { nibble_quads(b, n, Self::SIZE, 4) }
        }
        #[inline(always)]
        unsafe fn mins(_: __m256, h: __m128i) -> __m256 {
            // SAFETY: F16C (this function's contract).
            unsafe { _mm256_cvtph_ps(h) }
        }
    }

    /// The scales and minima of the first `n` (at most 8) blocks from `b`, `F::SIZE` bytes
    /// apart (0 for the others, which are not read).
    ///
    /// # Safety
    /// AVX2, F16C; blocks `0..n` from `b` whole.
    #[inline(always)]
    unsafe fn scales<F: Format>(b: *const u8, n: usize) -> (__m256, __m256) {
        // SAFETY: block j's first 4 bytes are read only for j < n, inside the block (blocks
        // are 18 bytes or more).
        unsafe {
            let head = |j: usize| -> i32 {
                if j < n {
                    (b.add(j * F::SIZE) as *const i32).read_unaligned()
                } else {
                    0
                }
            };
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

    /// Adds blocks `8g..8g + n` (`n <= 8`) of weight row `w` times `R` activation rows to the
    /// rows' accumulators, lane `j` of each for block `8g + j`. The weight's values are
    /// rearranged like the activations' [`group_quads`](super::group_quads) (or, with `IL` and
    /// a whole group, read so from the interleaved layout), so each byte dot
    /// product instruction adds 4 values of all 8 blocks at once, and lane `j` ends with block
    /// `8g + j`'s exact integer sum: no reduction across lanes. Converted, it is scaled by
    /// `d_w · d_x`, then `m_w · s_x` is added. Every activation row adds the same products in
    /// the same order whatever the tile.
    ///
    /// # Safety
    /// AVX2, FMA, F16C and `D`'s features; blocks `8g..8g + n` of `w` whole, and of every row
    /// of `xs`.
    #[inline(always)]
    unsafe fn group<F: Format, D: Dot, const IL: bool, const R: usize>(
        w: *const u8,
        (g, n): (usize, usize),
        xs: &[ActRow<'_>; R],
        acc: &mut [__m256; R],
    ) {
        let b = g * GROUP;
        // SAFETY: blocks b..b + n of the weight row and of every activation row are whole, and
        // the activations' quads hold whole groups (this function's contract); nothing past
        // them is read: the masked loads and the blocks' loads skip blocks past n.
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            let base = w.add(b * F::SIZE);
            let interleaved = IL && n == GROUP;
            let wq = if interleaved {
                F::interleaved_quads(base.add(GROUP * F::HEAD))
            } else {
                F::quads(base, n)
            };
            // Unsigned by signed bytes: a signed weight goes in as |w| (at most 128), its sign
            // moved onto x.
            let wu: [__m256i; GROUP] = if F::UNSIGNED {
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
            } else {
                scales::<F>(base, n)
            };
            // One activation row at a time, not unrolled: unrolled, all the rows' loads were
            // hoisted to the top and spilled to the stack (measured 10% slower at 8 rows).
            let xs: &[ActRow<'_>] = if R > 1 { std::hint::black_box(xs) } else { xs };
            for (x, acc) in xs.iter().zip(acc.iter_mut()) {
                let xq = x.quads.as_ptr().add(b * BLOCK) as *const __m256i;
                // Two chains of 4, so that a product need not wait for the one before.
                let mut s = [_mm256_setzero_si256(); 2];
                for i in 0..GROUP {
                    let xv = _mm256_loadu_si256(xq.add(i));
                    let xv = if F::UNSIGNED {
                        xv
                    } else {
                        _mm256_sign_epi8(xv, wq[i])
                    };
                    s[i % 2] = D::dot_add(s[i % 2], wu[i], xv);
                }
                let (dx, sx) = if n == GROUP {
                    (
                        _mm256_loadu_ps(x.scales.as_ptr().add(b)),
                        _mm256_loadu_ps(x.sums.as_ptr().add(b)),
                    )
                } else {
                    (
                        _mm256_maskload_ps(x.scales.as_ptr().add(b), valid),
                        _mm256_maskload_ps(x.sums.as_ptr().add(b), valid),
                    )
                };
                let sums = _mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1]));
                let a = _mm256_fmadd_ps(sums, _mm256_mul_ps(dw, dx), *acc);
                *acc = if F::UNSIGNED {
                    _mm256_fmadd_ps(mw, sx, a)
                } else {
                    a
                };
            }
        }
    }

    /// `out[r] = dot(weight row w, xs[r])`, blocks in groups of 8 ([`group`]). Inlined into an
    /// entry compiled with `D`'s features (which is why it has none itself).
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
        let full = blocks / GROUP;
        for g in 0..full {
            // SAFETY: blocks 8g..8g + 8 lie inside every row (this function's contract).
            unsafe { group::<F, D, IL, R>(w, (g, GROUP), xs, &mut acc) };
        }
        if full * GROUP < blocks {
            let n = blocks - full * GROUP;
            // SAFETY: as above, for the last blocks.
            unsafe { group::<F, D, IL, R>(w, (full, n), xs, &mut acc) };
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
        for c in c0..c1 {
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

    /// The values of block `b` land where the x86 loop reads them: quad `i` of block `8g + j`
    /// at `(8g + i) · 32 + 4j`, zeros for the blocks a last group lacks.
    #[test]
    fn group_quads_lays_blocks_side_by_side() {
        let blocks = 11;
        let qs: Vec<i8> = (0..blocks * BLOCK).map(|v| (v % 251) as u8 as i8).collect();
        let mut out = vec![7i8; 3];
        group_quads(&qs, &mut out);
        assert_eq!(out.len(), 2 * GROUP * BLOCK);
        for b in 0..blocks {
            for v in 0..BLOCK {
                let (g, j, i) = (b / GROUP, b % GROUP, v / 4);
                let at = (g * GROUP + i) * BLOCK + 4 * j + v % 4;
                assert_eq!(out[at], qs[b * BLOCK + v], "block {b} value {v}");
            }
        }
        for i in 0..GROUP {
            let at = (GROUP + i) * BLOCK;
            assert!(
                out[at + 4 * 3..at + BLOCK].iter().all(|&v| v == 0),
                "quad {i}"
            );
        }
    }

    /// The VNNI loop gives the AVX2 loop's bits (the same integer sums), and the interleaved
    /// layout the blocks' bits, for every format and every tile shape (13 rows: a tile of 8,
    /// one of 4 and a single row; 19 blocks: two whole groups of 8 and a last one of 3); all
    /// agree with the exact sum, and each row alone gives the bits it gives in the batch.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vnni_loop_gives_the_avx2_loops_bits() {
        use std::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let vnni = has!("avx512vnni") && has!("avx512vl");
        let (k, n, m) = (19 * BLOCK, 5, 13);
        let acts: Vec<ActivationBlocks> = (0..m)
            .map(|r| {
                let x: Vec<f32> = (0..k)
                    .map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0 + (i % 5) as f32 * 0.3)
                    .collect();
                let mut a = ActivationBlocks::default();
                a.quantize(&x);
                a
            })
            .collect();
        let quads = quads_of(&acts);
        let rows = act_rows(&acts, &quads);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * (0.07 + (i / BLOCK % 3) as f32 * 0.05))
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for f in QuantFormat::ALL {
            let mut wb = Vec::new();
            quantize(f, &w, &mut wb).unwrap();
            let mut wf = vec![0f32; n * k];
            crate::quant::dequantize(f, &wb, &mut wf).unwrap();
            let rb = f.row_bytes(k).unwrap();
            let wi = crate::interleaved::interleave(f, n, k, &wb).unwrap();
            let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
            // SAFETY: the CPU has AVX2, FMA, F16C (checked above), and AVX-512 VNNI and VL
            // where `columns_vnni` runs; `wb` and `wi` hold n rows of `rb` bytes, the outputs
            // m · n values, every activation row k / 32 blocks and their quads.
            unsafe {
                x86::columns(f, Layout::Blocks, &wb, rb, (0, n), &rows, &mut a);
                x86::columns(f, Layout::Interleaved, &wi, rb, (0, n), &rows, &mut b);
                assert_eq!(bits(&a), bits(&b), "{f}: interleaved, AVX2");
                if vnni {
                    for (layout, w) in [(Layout::Blocks, &wb), (Layout::Interleaved, &wi)] {
                        b.fill(1.0);
                        x86::columns_vnni(f, layout, w, rb, (0, n), &rows, &mut b);
                        assert_eq!(bits(&a), bits(&b), "{f}: {layout:?}, VNNI");
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
