//! The quantized GEMM's inner loop: one weight row in a block format against up to 4 rows of
//! int8 activation blocks, with an AVX2 version chosen at run time on x86-64 (`vpmaddubsw` /
//! `vpmaddwd`, as llama.cpp's AVX2 kernels do), and the same loop with AVX-512 VNNI's
//! `vpdpbusd` (on 256-bit registers) where the CPU has it: one instruction for the two, the same
//! integer sums, so the same bits.
//!
//! Per block the integer dot product is exact (i32); it is scaled by `d_x · d_w` and added to
//! the row's `f32` sum (plus `m_w · sums_x` for `Q4_1`). The portable loop adds the blocks in
//! order; the AVX2 one keeps 8 lanes of partial sums and adds them at the end, so the two differ
//! by rounding only. Which one runs depends on the CPU alone, never on how many rows share the
//! call, so a row's result is the same in any batch.

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
            && x.qs.len() >= blocks * BLOCK),
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
/// weight of `row_bytes` per row and every activation row, rows in tiles of 4: the whole loop
/// in one dispatch, so the AVX2 version inlines its inner steps.
///
/// # Panics
/// If `w` has fewer than `c1` rows, `o` fewer than `rows.len() * (c1 - c0)` elements, or an
/// activation row fewer blocks than a weight row (caller bugs, as with slice indexing), or if
/// `f` is not a block format (W8A8 goes through `i8dot`).
pub fn columns(
    f: QuantFormat,
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
                && x.qs.len() >= blocks * BLOCK),
        "qdot: an argument is shorter than the shapes need"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        if crate::simd::has_vnni() {
            // SAFETY: as below, and the CPU supports AVX-512 VNNI and VL (just checked).
            return unsafe { x86::columns_vnni(f, w, row_bytes, c0, c1, rows, o) };
        }
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above; the lengths are
        // checked just before.
        return unsafe { x86::columns(f, w, row_bytes, c0, c1, rows, o) };
    }
    let width = c1 - c0;
    for c in c0..c1 {
        let wc = &w[c * row_bytes..(c + 1) * row_bytes];
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
    //! Register tiles of `C` weight rows × `R` activation rows, one loop per block format (the
    //! format is a type, so nothing is decided inside the loop). Every (weight row, activation
    //! row) pair keeps its own 8-lane accumulator and adds the same products in the same order
    //! whatever the tile, so a row's result does not depend on its neighbours.

    use super::ActRow;
    use crate::quant::{QuantFormat, BLOCK};
    use crate::simd::int8::{Avx2, Dot, Vnni};
    use std::arch::x86_64::*;

    /// One block format, as the tile loop needs it.
    trait Format {
        /// Bytes per block.
        const SIZE: usize;
        /// Whether the block has a minimum (`Q4_1`), whose values are then unsigned.
        const HAS_MIN: bool;

        /// The 32 values in byte lanes 0..32: signed, or unsigned nibbles when `HAS_MIN`.
        ///
        /// # Safety
        /// AVX2; `b` points at a whole block.
        unsafe fn values(b: *const u8) -> __m256i;

        /// The block's scale and minimum (0 without one), converted by F16C. The default
        /// reads the scale alone, which every block starts with.
        ///
        /// # Safety
        /// F16C; `b` points at a whole block.
        #[inline(always)]
        unsafe fn scale_min(b: *const u8) -> (f32, f32) {
            // SAFETY: the block starts with its f16 scale (this function's contract).
            (unsafe { half(b) }, 0.0)
        }
    }

    struct Q8_0;
    struct Q4_0;
    struct Q4_1;

    /// The 16 bytes of nibbles at `p` as 32 byte lanes: low nibbles first, then high.
    ///
    /// # Safety
    /// AVX2; 16 bytes readable at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: 16 bytes are readable at `p` (this function's contract).
        let qs = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(qs, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// The f16 at `p` as `f32`.
    ///
    /// # Safety
    /// F16C; 2 bytes readable at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: 2 bytes are readable at `p`.
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    impl Format for Q8_0 {
        const SIZE: usize = QuantFormat::Q8_0.block_bytes();
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            // SAFETY: a Q8_0 block is 34 bytes: 32 read from offset 2.
            unsafe { _mm256_loadu_si256(b.add(2) as *const __m256i) }
        }
    }

    impl Format for Q4_0 {
        const SIZE: usize = QuantFormat::Q4_0.block_bytes();
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            // SAFETY: a Q4_0 block is 18 bytes: 16 bytes of nibbles from offset 2.
            let n = unsafe { nibbles(b.add(2)) };
            // SAFETY: AVX2 (this function's contract).
            unsafe { _mm256_sub_epi8(n, _mm256_set1_epi8(8)) }
        }
    }

    impl Format for Q4_1 {
        const SIZE: usize = QuantFormat::Q4_1.block_bytes();
        const HAS_MIN: bool = true;
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            // SAFETY: a Q4_1 block is 20 bytes: 16 bytes of nibbles from offset 4.
            unsafe { nibbles(b.add(4)) }
        }
        #[inline(always)]
        unsafe fn scale_min(b: *const u8) -> (f32, f32) {
            // SAFETY: the block starts with its f16 scale and f16 minimum: 4 bytes, both
            // converted by one F16C instruction.
            unsafe {
                let both = (b as *const u32).read_unaligned();
                let v = _mm_cvtph_ps(_mm_cvtsi32_si128(both as i32));
                (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `out[c][r] = dot(weight row c, xs[r])` for `C` weight rows `row_bytes` apart from `w`.
    /// Inlined into an entry compiled with `D`'s features (which is why it has none itself).
    ///
    /// # Safety
    /// AVX2, FMA, F16C and `D`'s features; `C` rows of `blocks` whole blocks of `F` readable
    /// from `w`, every row of `xs` at least `blocks` blocks.
    #[inline(always)]
    unsafe fn tile<F: Format, D: Dot, const C: usize, const R: usize>(
        w: *const u8,
        row_bytes: usize,
        blocks: usize,
        xs: &[ActRow<'_>; R],
        out: &mut [[f32; R]; C],
    ) {
        // SAFETY: the CPU has the features (this function's contract, checked by the entry
        // that dispatched here); block `b` of weight row `c` lies inside `w`, and row `r` of
        // `xs` holds at least `blocks` blocks of 32 values and their scales and sums (also the
        // contract), so every pointer read below is in bounds.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            let mut mins = [[0f32; R]; C];
            for b in 0..blocks {
                let mut wv = [_mm256_setzero_si256(); C];
                let mut wabs = [_mm256_setzero_si256(); C];
                let mut d = [0f32; C];
                let mut m = [0f32; C];
                for c in 0..C {
                    let block = w.add(c * row_bytes + b * F::SIZE);
                    wv[c] = F::values(block);
                    (d[c], m[c]) = F::scale_min(block);
                    // The byte products take unsigned by signed bytes: a signed weight goes in
                    // as |w|, its sign moved onto x (|w| <= 128, |x| <= 127: a pair sums to at
                    // most 32512, within i16).
                    wabs[c] = if F::HAS_MIN {
                        wv[c]
                    } else {
                        _mm256_sign_epi8(wv[c], wv[c])
                    };
                }
                for r in 0..R {
                    let x = &xs[r];
                    let xv = _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let (dx, sx) = (*x.scales.get_unchecked(b), *x.sums.get_unchecked(b));
                    for c in 0..C {
                        let xs = if F::HAS_MIN {
                            xv
                        } else {
                            _mm256_sign_epi8(xv, wv[c])
                        };
                        let sums = _mm256_cvtepi32_ps(D::dot(wabs[c], xs));
                        acc[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(d[c] * dx), sums, acc[c][r]);
                        if F::HAS_MIN {
                            mins[c][r] += m[c] * sx;
                        }
                    }
                }
            }
            for c in 0..C {
                for r in 0..R {
                    out[c][r] = hsum(acc[c][r]) + mins[c][r];
                }
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` holds `c1` rows of `row_bytes`, `o` at least `rows.len() *
    /// (c1 - c0)` elements, every activation row at least a weight row's blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn columns(
        f: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        c0: usize,
        c1: usize,
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<Avx2>(f, w, row_bytes, (c0, c1), rows, o) }
    }

    /// As [`columns`], with `vpdpbusd`.
    ///
    /// # Safety
    /// As [`columns`], and AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn columns_vnni(
        f: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        c0: usize,
        c1: usize,
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe { columns_with::<Vnni>(f, w, row_bytes, (c0, c1), rows, o) }
    }

    /// The format's loop with `D`'s dot products, inlined into the entry with its features.
    ///
    /// # Safety
    /// As [`columns`], and `D`'s features.
    #[inline(always)]
    unsafe fn columns_with<D: Dot>(
        f: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        (c0, c1): (usize, usize),
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        // SAFETY: passed on from this function's contract.
        unsafe {
            match f {
                QuantFormat::Q8_0 => columns_of::<Q8_0, D>(w, row_bytes, c0, c1, rows, o),
                QuantFormat::Q4_0 => columns_of::<Q4_0, D>(w, row_bytes, c0, c1, rows, o),
                QuantFormat::Q4_1 => columns_of::<Q4_1, D>(w, row_bytes, c0, c1, rows, o),
                QuantFormat::Int8PerChannel => unreachable!("W8A8 rows go through i8dot"),
            }
        }
    }

    /// Rows in tiles of 4 against columns in pairs (each weight block loaded once per 4 rows,
    /// each activation block once per 2 columns); the last rows one at a time, a column at a
    /// time. Batch-1 decode is bound by how fast one core streams the weights in, and one
    /// column at a time reads them in address order, which the prefetcher follows best (4
    /// columns at once measured 30% slower).
    ///
    /// # Safety
    /// As [`columns`], and `D`'s features.
    #[inline(always)]
    unsafe fn columns_of<F: Format, D: Dot>(
        w: &[u8],
        row_bytes: usize,
        c0: usize,
        c1: usize,
        rows: &[ActRow<'_>],
        o: &mut [f32],
    ) {
        let (width, blocks, m) = (c1 - c0, row_bytes / F::SIZE, rows.len());
        let at = |c: usize| w[c * row_bytes..].as_ptr();
        let mut put = |c: usize, r: usize, v: f32| o[r * width + c - c0] = v;
        let mut r = 0;
        while r + 4 <= m {
            let xs = [rows[r], rows[r + 1], rows[r + 2], rows[r + 3]];
            let mut c = c0;
            while c + 2 <= c1 {
                let mut t = [[0f32; 4]; 2];
                // SAFETY: rows c and c + 1 are whole rows of `w` (this function's contract).
                unsafe { tile::<F, D, 2, 4>(at(c), row_bytes, blocks, &xs, &mut t) };
                for (j, col) in t.iter().enumerate() {
                    for (i, &v) in col.iter().enumerate() {
                        put(c + j, r + i, v);
                    }
                }
                c += 2;
            }
            if c < c1 {
                let mut t = [[0f32; 4]; 1];
                // SAFETY: as above.
                unsafe { tile::<F, D, 1, 4>(at(c), row_bytes, blocks, &xs, &mut t) };
                for (i, &v) in t[0].iter().enumerate() {
                    put(c, r + i, v);
                }
            }
            r += 4;
        }
        for (r, &row) in rows.iter().enumerate().skip(r) {
            let xs = [row];
            for c in c0..c1 {
                let mut t = [[0f32; 1]; 1];
                // SAFETY: row c is a whole row of `w`.
                unsafe { tile::<F, D, 1, 1>(at(c), row_bytes, blocks, &xs, &mut t) };
                put(c, r, t[0][0]);
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
        let mut t = [[0f32; R]; 1];
        let p = w.as_ptr();
        let row_bytes = blocks * f.block_bytes();
        // SAFETY: passed on from this function's contract.
        unsafe {
            match f {
                QuantFormat::Q8_0 => tile::<Q8_0, Avx2, 1, R>(p, row_bytes, blocks, xs, &mut t),
                QuantFormat::Q4_0 => tile::<Q4_0, Avx2, 1, R>(p, row_bytes, blocks, xs, &mut t),
                QuantFormat::Q4_1 => tile::<Q4_1, Avx2, 1, R>(p, row_bytes, blocks, xs, &mut t),
                QuantFormat::Int8PerChannel => unreachable!("W8A8 rows go through i8dot"),
            }
        }
        *out = t[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize, ActivationBlocks};

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
        let rows: Vec<ActRow<'_>> = acts
            .iter()
            .map(|a| ActRow {
                scales: &a.scales,
                sums: &a.sums,
                qs: &a.qs,
            })
            .collect();
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

    /// The VNNI loop gives the AVX2 loop's bits (the same integer sums), for every format and
    /// every tile shape (7 rows: a tile of 4 and 3 single rows; 5 columns: pairs and one).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vnni_loop_gives_the_avx2_loops_bits() {
        use std::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c") && has!("avx512vnni") && has!("avx512vl"))
        {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let (k, n, m) = (96, 5, 7);
        let acts: Vec<ActivationBlocks> = (0..m)
            .map(|r| {
                let x: Vec<f32> = (0..k)
                    .map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0)
                    .collect();
                let mut a = ActivationBlocks::default();
                a.quantize(&x);
                a
            })
            .collect();
        let rows: Vec<ActRow<'_>> = acts
            .iter()
            .map(|a| ActRow {
                scales: &a.scales,
                sums: &a.sums,
                qs: &a.qs,
            })
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.07)
            .collect();
        for f in QuantFormat::ALL {
            let mut wb = Vec::new();
            quantize(f, &w, &mut wb).unwrap();
            let rb = f.row_bytes(k).unwrap();
            let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
            // SAFETY: the CPU has AVX2, FMA, F16C, AVX-512 VNNI and VL (checked above); `wb`
            // holds n rows of `rb` bytes, the outputs m · n values, every row k / 32 blocks.
            unsafe {
                x86::columns(f, &wb, rb, 0, n, &rows, &mut a);
                x86::columns_vnni(f, &wb, rb, 0, n, &rows, &mut b);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{f}");
        }
    }
}
