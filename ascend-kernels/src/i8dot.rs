//! W8A8's inner loop ([`QuantFormat::Int8PerChannel`](crate::QuantFormat::Int8PerChannel)): one
//! int8 weight row against up to 4 rows of int8 activations quantized per token, with AVX2
//! (`vpmaddubsw` / `vpmaddwd`), AVX-512 VNNI and AVX-VNNI (`vpdpbusd`) versions chosen at run time
//! on x86-64, the weight's sign moved onto the activation so that the unsigned operand is `|w|`.
//!
//! Each sum is exact in `i32` (`k` is at most [`INT8_MAX_K`](crate::quant::INT8_MAX_K), and
//! activations are within ±127, so no pair saturates `i16`), so the AVX2 and portable loops
//! give the same integers whatever the order, and a row's result does not depend on the rows
//! it shares a call with. The result is `(sum as f32 · s_w) · s_x`, as `aclnnQuantMatmulV4`
//! scales its int32 product (`x1 @ x2 · scale · pertokenScale`).

use crate::quant::f32_at;

/// One row of activations quantized per token (a view of [`crate::quant::TokenQuant`]).
#[derive(Clone, Copy)]
pub struct TokenRow<'a> {
    /// The row's scale.
    pub scale: f32,
    /// The values, each within ±127.
    pub qs: &'a [i8],
}

/// `o[r * (c1 - c0) + c - c0] = (w_c · x_r) · s_w[c] · s_x[r]` for the columns `c0..c1` of a
/// weight of rows of `k` int8 values and an `f32` scale (`k + 4` bytes each), activation rows
/// in tiles of 4 so that each weight row is read once per 4 rows.
///
/// # Panics
/// If `w` has fewer than `c1` rows, `o` fewer than `rows.len() * (c1 - c0)` elements, or an
/// activation row fewer than `k` values (caller bugs, as with slice indexing).
pub fn columns(w: &[u8], k: usize, (c0, c1): (usize, usize), rows: &[TokenRow<'_>], o: &mut [f32]) {
    let row_bytes = k + 4;
    assert!(
        w.len() >= c1 * row_bytes
            && o.len() >= rows.len() * (c1 - c0)
            && rows.iter().all(|x| x.qs.len() >= k),
        "i8dot: an argument is shorter than the shapes need"
    );
    let width = c1 - c0;
    for c in c0..c1 {
        let row = &w[c * row_bytes..(c + 1) * row_bytes];
        let (values, scale): (&[i8], f32) = (bytemuck::cast_slice(&row[..k]), f32_at(row, k));
        let mut put = |r: usize, sum: i32| {
            o[r * width + c - c0] = sum as f32 * scale * rows[r].scale;
        };
        let mut r = 0;
        while r + 4 <= rows.len() {
            let xs = [rows[r].qs, rows[r + 1].qs, rows[r + 2].qs, rows[r + 3].qs];
            for (i, s) in dots(values, &xs).into_iter().enumerate() {
                put(r + i, s);
            }
            r += 4;
        }
        for (i, x) in rows[r..].iter().enumerate() {
            put(r + i, dots(values, &[x.qs])[0]);
        }
    }
}

/// `w · xs[r]` for every `r`, over `w.len()` values (each `xs[r]` at least that long).
fn dots<const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
    debug_assert!(xs.iter().all(|x| x.len() >= w.len()));
    // Every arm's loop is one `chosen` names only on a CPU with its features; every `xs[r]`
    // holds at least `w.len()` values (the caller's assertion).
    #[cfg(target_arch = "x86_64")]
    match crate::qdot::VectorLoop::chosen() {
        // SAFETY: as above: AVX2, AVX-512 VNNI and VL.
        crate::qdot::VectorLoop::Vnni512 | crate::qdot::VectorLoop::Vnni => unsafe {
            return x86::dots_vnni(w, xs);
        },
        // SAFETY: as above: AVX2 and AVX-VNNI.
        crate::qdot::VectorLoop::AvxVnni => unsafe {
            return x86::dots_avx_vnni(w, xs);
        },
        // SAFETY: as above: AVX2.
        crate::qdot::VectorLoop::Avx2 => unsafe {
            return x86::dots(w, xs);
        },
        crate::qdot::VectorLoop::Portable => {}
    }
    portable(w, xs)
}

fn portable<const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
    xs.map(|x| w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::int8::{Avx2, AvxVnni, Dot, Vnni};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2; every `xs[r]` at least `w.len()` values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots<const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
        // SAFETY: passed on from this function's contract.
        unsafe { dots_with::<Avx2, R>(w, xs) }
    }

    /// As [`dots`], with `vpdpbusd` (the same integers).
    ///
    /// # Safety
    /// AVX2, AVX-512 VNNI and VL; every `xs[r]` at least `w.len()` values.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    pub unsafe fn dots_vnni<const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
        // SAFETY: passed on from this function's contract.
        unsafe { dots_with::<Vnni, R>(w, xs) }
    }

    /// As [`dots`], with AVX-VNNI's `vpdpbusd` (the same integers).
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI; every `xs[r]` at least `w.len()` values.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn dots_avx_vnni<const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
        // SAFETY: passed on from this function's contract.
        unsafe { dots_with::<AvxVnni, R>(w, xs) }
    }

    /// The loop, inlined into the entry compiled with `D`'s features.
    ///
    /// # Safety
    /// AVX2 and `D`'s features; every `xs[r]` at least `w.len()` values.
    #[inline(always)]
    unsafe fn dots_with<D: Dot, const R: usize>(w: &[i8], xs: &[&[i8]; R]) -> [i32; R] {
        let k = w.len();
        let whole = k / 32 * 32;
        let mut out = [0i32; R];
        // SAFETY: the features are the caller's (this function's contract); every load reads
        // 32 values at `i` with `i + 32 <= k`, inside `w` and (the contract) every `xs[r]`.
        unsafe {
            let mut acc = [_mm256_setzero_si256(); R];
            let mut i = 0;
            while i < whole {
                let wv = _mm256_loadu_si256(w.as_ptr().add(i) as *const __m256i);
                let wabs = _mm256_sign_epi8(wv, wv);
                for r in 0..R {
                    let xv = _mm256_loadu_si256(xs[r].as_ptr().add(i) as *const __m256i);
                    // |w| <= 128 unsigned times x (|x| <= 127) with w's sign.
                    let lanes = D::dot(wabs, _mm256_sign_epi8(xv, wv));
                    acc[r] = _mm256_add_epi32(acc[r], lanes);
                }
                i += 32;
            }
            for r in 0..R {
                let v = acc[r];
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                out[r] = _mm_cvtsi128_si32(s);
            }
        }
        for r in 0..R {
            out[r] += w[whole..]
                .iter()
                .zip(&xs[r][whole..k])
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum::<i32>();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and VNNI loops give the portable loop's integers, at the extremes of the value
    /// range and for lengths with and without a tail.
    #[test]
    fn simd_sums_equal_the_portable_sums() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for k in [1, 31, 32, 33, 64, 95, 576, 1000] {
            let w: Vec<i8> = (0..k)
                .map(|i| {
                    if i % 7 == 0 {
                        -128
                    } else {
                        (next() % 256 - 128) as i8
                    }
                })
                .collect();
            let xs: Vec<Vec<i8>> = (0..4)
                .map(|r| {
                    (0..k)
                        .map(|i| {
                            if (i + r) % 5 == 0 {
                                127 * (1 - 2 * (i % 2) as i8)
                            } else {
                                (next() % 255 - 127) as i8
                            }
                        })
                        .collect()
                })
                .collect();
            let refs = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let want = portable(&w, &refs);
            assert_eq!(dots(&w, &refs), want, "k = {k}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 (just checked); every row holds k values.
                assert_eq!(unsafe { x86::dots(&w, &refs) }, want, "AVX2, k = {k}");
                if std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: AVX2, AVX-512 VNNI and VL (just checked); as above.
                    assert_eq!(unsafe { x86::dots_vnni(&w, &refs) }, want, "VNNI, k = {k}");
                }
                if std::is_x86_feature_detected!("avxvnni") {
                    // SAFETY: AVX2 and AVX-VNNI (just checked); as above.
                    let got = unsafe { x86::dots_avx_vnni(&w, &refs) };
                    assert_eq!(got, want, "AVX-VNNI, k = {k}");
                }
            }
            assert_eq!(dots(&w, &[refs[2]])[0], want[2], "k = {k}, one row");
        }
    }

    /// A row's result is the same alone or in a tile of 4, and is `sum · s_w · s_x`.
    #[test]
    fn columns_scale_each_sum_by_both_scales() {
        let k = 40;
        let mut w = Vec::new();
        for c in 0..3 {
            w.extend((0..k).map(|i| ((i * 3 + c) % 17) as i8 as u8));
            w.extend((0.5f32 + c as f32).to_le_bytes());
        }
        let xq: Vec<Vec<i8>> = (0..5)
            .map(|r| (0..k).map(|i| ((i * 5 + r) % 11) as i8 - 5).collect())
            .collect();
        let rows: Vec<TokenRow<'_>> = xq
            .iter()
            .enumerate()
            .map(|(r, qs)| TokenRow {
                scale: 0.25 * (r + 1) as f32,
                qs,
            })
            .collect();
        let mut all = vec![0f32; 5 * 3];
        columns(&w, k, (0, 3), &rows, &mut all);
        for (r, x) in rows.iter().enumerate() {
            let mut one = [0f32; 3];
            columns(&w, k, (0, 3), &[*x], &mut one);
            assert_eq!(one, all[r * 3..r * 3 + 3], "row {r}");
            for (c, got) in one.iter().enumerate() {
                let sum: i32 = (0..k)
                    .map(|i| ((i * 3 + c) % 17) as i32 * x.qs[i] as i32)
                    .sum();
                assert_eq!(*got, sum as f32 * (0.5 + c as f32) * x.scale);
            }
        }
    }
}
