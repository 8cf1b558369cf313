//! The CPU kernels' innermost loops, with an AVX2 + FMA version chosen at run time on x86-64.
//!
//! A default x86-64 build may only assume SSE2, so the portable loops compile to 4-wide
//! multiplies and adds; on a machine with AVX2 and FMA (every x86 server of the last decade) the
//! 8-wide fused versions below do the same work in about a third of the instructions. The
//! detection is `is_x86_feature_detected!`, which caches its answer.

/// Whether the CPU runs the AVX2 + FMA versions (the detection caches its answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `sum(a[i] * b[i])` over the shorter of the two slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { x86::dot(a, b) };
    }
    portable::dot(a, b)
}

/// `acc[i] = acc[i] * scale + w * v[i]` over the shorter of the two slices.
#[inline]
pub fn scale_add(acc: &mut [f32], scale: f32, w: f32, v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { x86::scale_add(acc, scale, w, v) };
    }
    portable::scale_add(acc, scale, w, v)
}

/// `out[i] = dot(q, rows[i * stride..][..q.len()])` for every `i < out.len()`: one query row
/// against a run of key rows, sharing each load of the query.
///
/// # Panics
/// If `rows` is shorter than the last row needs (a caller bug, as with slice indexing).
#[inline]
pub fn dots(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            rows.len() >= last * stride + q.len(),
            "dots: rows too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above; the row bounds were
        // checked just before.
        return unsafe { x86::dots(q, rows, stride, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = portable::dot(q, &rows[i * stride..][..q.len()]);
    }
}

/// `out[r][c] = x[r] · w[c]` over the first `k` elements, each element with one 8-lane
/// accumulator over `k` in steps of 8, the lanes summed in a fixed order, then the `k % 8` tail
/// added in order. Every element gets exactly this arithmetic whatever the tile's shape, so a
/// matmul built from tiles gives a row the same result whichever rows share its batch.
///
/// # Panics
/// If a row of `x` or `w` is shorter than `k` (a caller bug, as with slice indexing).
#[inline]
pub fn dot_tile<const R: usize, const C: usize>(
    x: &[&[f32]; R],
    w: &[&[f32]; C],
    k: usize,
    out: &mut [[f32; C]; R],
) {
    assert!(
        x.iter().chain(w.iter()).all(|row| row.len() >= k),
        "dot_tile: a row is shorter than k"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above; every row holds `k`
        // floats, checked just before.
        return unsafe { x86::dot_tile(x, w, k, out) };
    }
    for r in 0..R {
        for c in 0..C {
            out[r][c] = portable::dot_one_lane_set(&x[r][..k], &w[c][..k]);
        }
    }
}

/// `x = exp(x)` for every element: relative error within a few units in the last place; inputs
/// below -87.34 (results under the smallest normal float, and `-inf`) give 0, above 88.37 give
/// `inf`, NaN stays NaN. (The portable fallback is `f32::exp`.)
#[inline]
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { x86::exp_in_place(xs) };
    }
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// The loops for any target: 8 independent accumulators, which the compiler vectorises with
/// what the target guarantees.
pub(crate) mod portable {
    const LANES: usize = 8;

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for (x, y) in ra.iter().zip(rb) {
            sum += x * y;
        }
        sum
    }

    /// [`super::dot_tile`]'s arithmetic for one element: one set of 8 lanes, summed as the
    /// AVX2 version sums them, then the tail.
    pub fn dot_one_lane_set(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        let h = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        let mut sum = (h[0] + h[2]) + (h[1] + h[3]);
        for (x, y) in ra.iter().zip(rb) {
            sum += x * y;
        }
        sum
    }

    pub fn scale_add(acc: &mut [f32], scale: f32, w: f32, v: &[f32]) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a = *a * scale + w * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                // SAFETY: `j + 8 <= i + 32 <= n`, so both 8-float loads read inside the slices;
                // unaligned loads need no alignment.
                *acc = unsafe {
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(j)), _mm256_loadu_ps(pb.add(j)), *acc)
                };
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, so both loads read inside the slices.
            acc[0] = unsafe {
                _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                )
            };
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let mut total = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
        for j in i..n {
            total += a[j] * b[j];
        }
        total
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `rows` holds `(out.len() - 1) * stride + q.len()` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let n = q.len();
        let whole = n / 8 * 8;
        let (pq, pr) = (q.as_ptr(), rows.as_ptr());
        let mut i = 0;
        // Four rows at a time, each query chunk loaded once for the four.
        while i + 4 <= out.len() {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut j = 0;
            while j < whole {
                // SAFETY: `j + 8 <= whole <= q.len()`, and row `i + k` (k < 4, i + k < out.len())
                // has `q.len()` floats from `(i + k) * stride`, inside `rows` by the contract.
                unsafe {
                    let x = _mm256_loadu_ps(pq.add(j));
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(pr.add((i + k) * stride + j)), *a);
                    }
                }
                j += 8;
            }
            // Horizontal sums of the four accumulators at once.
            let s01 = _mm256_hadd_ps(acc[0], acc[1]);
            let s23 = _mm256_hadd_ps(acc[2], acc[3]);
            let s = _mm256_hadd_ps(s01, s23);
            let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let mut four = [0f32; 4];
            // SAFETY: `four` holds 4 floats.
            unsafe { _mm_storeu_ps(four.as_mut_ptr(), r) };
            for k in 0..4 {
                let row = &rows[(i + k) * stride..][..n];
                out[i + k] = four[k] + (whole..n).map(|t| q[t] * row[t]).sum::<f32>();
            }
            i += 4;
        }
        for o in i..out.len() {
            // SAFETY: the CPU supports AVX2 and FMA (this function's contract).
            out[o] = unsafe { dot(q, &rows[o * stride..][..n]) };
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; every row of `x` and `w` holds at least `k` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_tile<const R: usize, const C: usize>(
        x: &[&[f32]; R],
        w: &[&[f32]; C],
        k: usize,
        out: &mut [[f32; C]; R],
    ) {
        let whole = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut wv = [_mm256_setzero_ps(); C];
        let mut j = 0;
        while j < whole {
            for c in 0..C {
                // SAFETY: `j + 8 <= whole <= k <= w[c].len()` (the contract).
                wv[c] = unsafe { _mm256_loadu_ps(w[c].as_ptr().add(j)) };
            }
            for r in 0..R {
                // SAFETY: `j + 8 <= whole <= k <= x[r].len()` (the contract).
                let xv = unsafe { _mm256_loadu_ps(x[r].as_ptr().add(j)) };
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            j += 8;
        }
        for r in 0..R {
            for c in 0..C {
                let v = acc[r][c];
                let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
                let mut total = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
                for t in whole..k {
                    total += x[r][t] * w[c][t];
                }
                out[r][c] = total;
            }
        }
    }

    /// `exp` of 8 lanes: Cephes' `expf` (range reduction by ln 2 in two parts, a degree-5
    /// polynomial, the power of two built in the exponent bits).
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let hi = _mm256_set1_ps(88.376_26);
        let lo = _mm256_set1_ps(-87.336_55); // below this the result is not a normal float
        let clamped = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            clamped,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), clamped);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)),
            23,
        ));
        let y = _mm256_mul_ps(y, pow2);
        // Below the range: 0; above: inf; NaN: NaN.
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
        let y = _mm256_blendv_ps(
            y,
            _mm256_set1_ps(f32::INFINITY),
            _mm256_cmp_ps(x, hi, _CMP_GT_OQ),
        );
        _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_in_place(xs: &mut [f32]) {
        let n = xs.len();
        let p = xs.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`: the 8 floats lie inside `xs`, borrowed mutably for the call.
            unsafe { _mm256_storeu_ps(p.add(i), exp8(_mm256_loadu_ps(p.add(i)))) };
            i += 8;
        }
        if i < n {
            // The tail through a full-width copy, so it gets the same rounding as the rest.
            let mut tail = [0f32; 8];
            tail[..n - i].copy_from_slice(&xs[i..]);
            // SAFETY: `tail` holds 8 floats.
            unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), exp8(_mm256_loadu_ps(tail.as_ptr()))) };
            xs[i..].copy_from_slice(&tail[..n - i]);
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_add(acc: &mut [f32], scale: f32, w: f32, v: &[f32]) {
        let n = acc.len().min(v.len());
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let (s8, w8) = (_mm256_set1_ps(scale), _mm256_set1_ps(w));
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, so the 8 floats read and written lie inside both slices,
            // and `acc` is borrowed mutably for the call.
            unsafe {
                let a = _mm256_loadu_ps(pa.add(i));
                let x = _mm256_loadu_ps(pv.add(i));
                _mm256_storeu_ps(pa.add(i), _mm256_fmadd_ps(w8, x, _mm256_mul_ps(a, s8)));
            }
            i += 8;
        }
        for j in i..n {
            acc[j] = acc[j] * scale + w * v[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, salt: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + salt) * 0.731).sin()).collect()
    }

    #[test]
    fn dots_match_the_row_by_row_loop() {
        for (hs, n) in [
            (128usize, 0usize),
            (128, 1),
            (128, 5),
            (64, 8),
            (80, 7),
            (13, 9),
            (256, 16),
        ] {
            let stride = hs + 24;
            let q = data(hs, 0.25);
            let rows = data(n.max(1) * stride, 3.0);
            let mut got = vec![0f32; n];
            dots(&q, &rows, stride, &mut got);
            for (i, g) in got.iter().enumerate() {
                let want = portable::dot(&q, &rows[i * stride..][..hs]);
                assert!(
                    (g - want).abs() <= 1e-4,
                    "dots hs {hs} n {n} row {i}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn tiles_give_every_element_the_same_bits_whatever_the_shape() {
        for k in [0usize, 1, 7, 8, 9, 64, 100, 576] {
            let xs: Vec<Vec<f32>> = (0..4).map(|r| data(k, r as f32 * 1.7)).collect();
            let ws: Vec<Vec<f32>> = (0..8).map(|c| data(k, 10.0 + c as f32)).collect();
            let mut one = [[0f32; 1]; 1];
            let mut tile = [[0f32; 2]; 4];
            dot_tile(
                &[&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]],
                &[&ws[0][..], &ws[1][..]],
                k,
                &mut tile,
            );
            let mut wide = [[0f32; 8]; 1];
            let w8: [&[f32]; 8] = std::array::from_fn(|c| &ws[c][..]);
            dot_tile(&[&xs[2][..]], &w8, k, &mut wide);
            for r in 0..4 {
                for c in 0..2 {
                    dot_tile(&[&xs[r][..]], &[&ws[c][..]], k, &mut one);
                    assert_eq!(
                        tile[r][c].to_bits(),
                        one[0][0].to_bits(),
                        "k {k} ({r}, {c})"
                    );
                    let exact: f64 = xs[r]
                        .iter()
                        .zip(&ws[c])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    assert!(
                        (one[0][0] as f64 - exact).abs() <= 1e-5 * (1.0 + k as f64),
                        "k {k}"
                    );
                }
            }
            for c in 0..8 {
                dot_tile(&[&xs[2][..]], &[&ws[c][..]], k, &mut one);
                assert_eq!(
                    wide[0][c].to_bits(),
                    one[0][0].to_bits(),
                    "k {k} column {c}"
                );
            }
        }
    }

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.045).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.0, -87.0, -87.5, -100.0, 89.0, 1000.0,
        ]);
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            f32::MIN,
            f32::MAX,
        ]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            if x.is_nan() {
                assert!(g.is_nan(), "exp({x}) = {g}");
            } else if *x < -87.336_55 {
                assert_eq!(*g, 0.0, "exp({x})");
            } else if want.is_infinite() || *x > 88.376_26 {
                assert_eq!(*g, f32::INFINITY, "exp({x})");
            } else {
                let rel = ((g - want) / want).abs();
                assert!(
                    rel <= 4.0 * f32::EPSILON,
                    "exp({x}) = {g}, std says {want} ({rel:e})"
                );
            }
        }
    }

    #[test]
    fn dispatched_loops_match_the_portable_ones() {
        // Lengths around every loop boundary (32-float blocks, 8-float steps, the scalar tail).
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 64, 100, 128, 1000] {
            let (a, b) = (data(n, 0.5), data(n + 3, 1.5));
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for got in [dot(&a, &b), portable::dot(&a, &b)] {
                assert!(
                    (got as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64),
                    "n {n}: {got} vs {exact}"
                );
            }
            let (mut x, mut y) = (data(n, 2.5), data(n, 2.5));
            scale_add(&mut x, 0.75, -1.25, &b);
            portable::scale_add(&mut y, 0.75, -1.25, &b);
            for (i, (p, q)) in x.iter().zip(&y).enumerate() {
                assert!((p - q).abs() <= 1e-6, "n {n}, element {i}: {p} vs {q}");
            }
        }
    }
}
