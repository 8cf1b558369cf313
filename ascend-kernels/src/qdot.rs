//! The quantized GEMM's inner loop: one weight row in a block format against up to 4 rows of
//! int8 activation blocks, with an AVX2 version chosen at run time on x86-64 (`vpmaddubsw` /
//! `vpmaddwd`, as llama.cpp's AVX2 kernels do).
//!
//! Per block the integer dot product is exact (i32); it is scaled by `d_x · d_w` and added to
//! the row's `f32` sum (plus `m_w · sums_x` for `Q4_1`). The portable loop adds the blocks in
//! order; the AVX2 one keeps 8 lanes of partial sums and adds them at the end, so the two differ
//! by rounding only. Which one runs depends on the CPU alone, never on how many rows share the
//! call, so a row's result is the same in any batch.

use crate::quant::{QuantFormat, BLOCK};

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

fn half_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
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
/// activation row fewer blocks than a weight row (caller bugs, as with slice indexing).
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
        w.len() >= c1 * row_bytes
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
    use super::ActRow;
    use crate::quant::{QuantFormat, BLOCK};
    use std::arch::x86_64::*;

    /// The f16 at byte `i` of `b` as `f32`, converted by F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn half(b: &[u8], i: usize) -> f32 {
        let v = _mm_cvtsi32_si128(u16::from_le_bytes([b[i], b[i + 1]]) as i32);
        _mm_cvtss_f32(_mm_cvtph_ps(v))
    }

    /// The weight block as 32 bytes in lanes 0..32 (Q8_0: signed; Q4_x: the nibbles, 0..15).
    ///
    /// # Safety
    /// AVX2; `b` holds a whole block of `f`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_block(f: QuantFormat, b: &[u8]) -> __m256i {
        match f {
            // SAFETY: a Q8_0 block is 34 bytes: 32 read from offset 2.
            QuantFormat::Q8_0 => unsafe { _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i) },
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                let at = if f == QuantFormat::Q4_1 { 4 } else { 2 };
                // SAFETY: the block holds 16 bytes of nibbles at `at` (18 or 20 bytes in all).
                let qs = unsafe { _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i) };
                let mask = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                _mm256_set_m128i(hi, lo)
            }
        }
    }

    /// Eight i32 partial sums of `w · x` over a block: `w` unsigned (`unsigned_w`) or signed.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dot(w: __m256i, x: __m256i, unsigned_w: bool) -> __m256i {
        // vpmaddubsw multiplies unsigned by signed bytes: for a signed weight, multiply |w| by
        // x with w's sign (|w| ≤ 128 and |x| ≤ 127, so a pair sums to at most 32512: no
        // saturation).
        let pairs = if unsigned_w {
            _mm256_maddubs_epi16(w, x)
        } else {
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        };
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
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
        let (width, blocks, m) = (c1 - c0, row_bytes / f.block_bytes(), rows.len());
        for c in c0..c1 {
            let wc = &w[c * row_bytes..(c + 1) * row_bytes];
            let mut r = 0;
            while r + 4 <= m {
                let mut t = [0f32; 4];
                let tile = [rows[r], rows[r + 1], rows[r + 2], rows[r + 3]];
                // SAFETY: as this function's contract.
                unsafe { dots(f, wc, blocks, &tile, &mut t) };
                for (i, v) in t.iter().enumerate() {
                    o[(r + i) * width + c - c0] = *v;
                }
                r += 4;
            }
            while r < m {
                let mut t = [0f32; 1];
                // SAFETY: as this function's contract.
                unsafe { dots(f, wc, blocks, &[rows[r]], &mut t) };
                o[r * width + c - c0] = t[0];
                r += 1;
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` holds `blocks` whole blocks of `f` and every row of `xs` at least
    /// `blocks` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn dots<const R: usize>(
        f: QuantFormat,
        w: &[u8],
        blocks: usize,
        xs: &[ActRow<'_>; R],
        out: &mut [f32; R],
    ) {
        let size = f.block_bytes();
        let unsigned_w = f == QuantFormat::Q4_1;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        for (b, block) in w.chunks_exact(size).take(blocks).enumerate() {
            // SAFETY: `block` is a whole block of `f`; AVX2 is enabled.
            let mut wv = unsafe { load_block(f, block) };
            if f == QuantFormat::Q4_0 {
                wv = _mm256_sub_epi8(wv, _mm256_set1_epi8(8));
            }
            let d = half(block, 0);
            let m = if unsigned_w { half(block, 2) } else { 0.0 };
            for r in 0..R {
                let x = &xs[r];
                // SAFETY: row `r` holds at least `blocks` blocks of 32 values (checked by the
                // caller), so 32 bytes at `b * BLOCK` are inside it.
                let xv =
                    unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i) };
                // SAFETY: AVX2 is enabled.
                let s = unsafe { block_dot(wv, xv, unsigned_w) };
                let scale = _mm256_set1_ps(d * x.scales[b]);
                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[r]);
                if unsigned_w {
                    mins[r] += m * x.sums[b];
                }
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + mins[r];
        }
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
}
