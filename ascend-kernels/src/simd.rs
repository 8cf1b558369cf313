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

/// Whether the CPU converts half floats in hardware (F16C), with AVX2 for the rest.
#[cfg(target_arch = "x86_64")]
#[inline]
fn f16c() -> bool {
    avx2_fma() && std::is_x86_feature_detected!("f16c")
}

/// Whether the block GEMM also takes two weight columns at once on 512-bit registers: VNNI
/// ([`has_vnni`]) with AVX-512 F and BW, and `ASCEND_KERNELS_NO_ZMM` not set. Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_vnni512() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        has_vnni()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::env::var_os("ASCEND_KERNELS_NO_ZMM").is_none()
    })
}

/// Whether the int8 kernels use AVX-512 VNNI's `vpdpbusd` (with VL, on 256-bit registers):
/// the CPU has both, and neither `ASCEND_KERNELS_NO_VNNI` (which keeps the AVX2 loop, to
/// compare the two on one machine) nor `ASCEND_KERNELS_NO_AVX512` is set. Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        allows_avx512()
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
            && std::env::var_os("ASCEND_KERNELS_NO_VNNI").is_none()
    })
}

/// Whether the int8 kernels use AVX-VNNI's `vpdpbusd` (the VEX form, on 256-bit registers)
/// where [`has_vnni`] is false: the CPU has it (Intel's client cores from Alder Lake, which
/// have no AVX-512, and the servers from Sapphire Rapids) and `ASCEND_KERNELS_NO_VNNI` is not
/// set. The same instruction as AVX-512 VNNI's on 256-bit registers, so the same integers.
/// Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        std::is_x86_feature_detected!("avxvnni")
            && std::env::var_os("ASCEND_KERNELS_NO_VNNI").is_none()
    })
}

/// Whether the CPU kernels may run AVX-512 (the 512-bit and AVX-512 VNNI loops, and AMX,
/// whose scaling uses it): `ASCEND_KERNELS_NO_AVX512` is not set. Set, an AVX-512 server
/// runs the loops a client CPU without AVX-512 runs (AVX-VNNI or AVX2; the same results), to
/// measure them, or to keep a core out of AVX-512's lower clocks on CPUs that have them.
/// Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn allows_avx512() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var_os("ASCEND_KERNELS_NO_AVX512").is_none())
}

/// `dst[i] = f16 bits src[i]` as `f32` (exact), over the shorter of the two slices: 8 at a time
/// with F16C's `vcvtph2ps` where the CPU has it. (`half`'s slice conversion does the same
/// through a call per 8 values, which costs more than the conversion in attention's inner
/// loop.)
#[inline]
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above.
        return unsafe { x86::f16_to_f32(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

/// `dst[i] = bf16 bits src[i]` as `f32` (exact: the bits shifted into the high half), over the
/// shorter of the two slices, 8 at a time with AVX2 where the CPU has it.
#[inline]
pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 (and FMA), checked just above.
        return unsafe { x86::bf16_to_f32(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((*s as u32) << 16);
    }
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

/// An element type a tile reads its second operand in: `f32` as it is, or `f16` bits converted
/// in registers (so attention reads an f16 cache without a converted copy).
pub trait TileElement: sealed::Sealed + Copy + Sync {
    /// As `f32`.
    fn widen(self) -> f32;
}

mod sealed {
    /// Only `f32` and `u16` (f16 bits) are tile elements: the AVX2 loads rely on it.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u16 {}
}

impl TileElement for f32 {
    #[inline]
    fn widen(self) -> f32 {
        self
    }
}

/// `f16` bits.
impl TileElement for u16 {
    #[inline]
    fn widen(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
}

/// `out[r][c] = x[r] · w[c]` over the first `k` elements, each element with one 8-lane
/// accumulator over `k` in steps of 8, the lanes summed in a fixed order, then the `k % 8` tail
/// added in order. Every element gets exactly this arithmetic whatever the tile's shape and
/// whether `w` is `f32` or `f16` bits (the conversion is exact), so a matmul built from tiles
/// gives a row the same result whichever rows share its batch.
///
/// # Panics
/// If a row of `x` or `w` is shorter than `k` (a caller bug, as with slice indexing).
#[inline]
pub fn dot_tile<E: TileElement, const R: usize, const C: usize>(
    x: &[&[f32]; R],
    w: &[&[E]; C],
    k: usize,
    out: &mut [[f32; C]; R],
) {
    assert!(
        x.iter().all(|row| row.len() >= k) && w.iter().all(|row| row.len() >= k),
        "dot_tile: a row is shorter than k"
    );
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above; every row holds `k`
        // elements, checked just before.
        return unsafe { x86::dot_tile(x, w, k, out) };
    }
    for r in 0..R {
        for c in 0..C {
            out[r][c] = portable::dot_one_lane_set(&x[r][..k], &w[c][..k]);
        }
    }
}

/// For `r < R`, `j < hs`: `acc[r*hs + j] = acc[r*hs + j] * carry[r] + Σ_i w[r*n + i] *
/// v[offs[i] + j]` with `n = offs.len()`, the terms added in order of `i` (fused where the CPU
/// has FMA): the value side of attention for the query rows of one KV head, each value row
/// (`f32`, or `f16` bits converted in registers) read once for all of them. A row's result does
/// not depend on `R`.
///
/// # Panics
/// If a slice is shorter than the shapes need (a caller bug, as with slice indexing).
#[inline]
pub fn weighted_rows<E: TileElement, const R: usize>(
    acc: &mut [f32],
    carry: &[f32; R],
    w: &[f32],
    v: &[E],
    offs: &[usize],
    hs: usize,
) {
    let n = offs.len();
    assert!(
        acc.len() >= R * hs
            && w.len() >= R * n
            && offs
                .iter()
                .all(|&o| o.checked_add(hs).is_some_and(|e| e <= v.len())),
        "weighted_rows: a slice is too short"
    );
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above; the lengths and
        // offsets were checked just before.
        return unsafe { x86::weighted_rows(acc, carry, w, v, offs, hs) };
    }
    for r in 0..R {
        for j in 0..hs {
            let mut a = acc[r * hs + j] * carry[r];
            for (i, &o) in offs.iter().enumerate() {
                a += w[r * n + i] * v[o + j].widen();
            }
            acc[r * hs + j] = a;
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

/// One block of 32 activations to int8 ([`crate::quant::quantize_block`]'s arithmetic, so its
/// bits): returns the scale and the sum of the values.
#[inline]
pub fn quantize_block(b: &[f32; 32], q: &mut [i8; 32]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { x86::quantize_block(b, q) };
    }
    crate::quant::quantize_block(b, q)
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
    pub fn dot_one_lane_set<E: super::TileElement>(a: &[f32], b: &[E]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l].widen();
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
            sum += x * y.widen();
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// The sum of 8 lanes, in one fixed order (halves, then pairs, then the last two): every
    /// 8-lane reduction of the kernels goes through it, so they round alike.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// [`crate::quant::quantize_block`] 8 values at a time, with the same operations on each value
    /// (the maximum of the magnitudes is exact in any order), so the same bits: a block took
    /// about 1.6 ns per value through the scalar loop, whose `f32::max` fold and roundings
    /// did not vectorize, and 5% of a SmolLM2 batch-8 decode step.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block(b: &[f32; 32], q: &mut [i8; 32]) -> (f32, i32) {
        // SAFETY: `b` holds 32 values and `q` 32 bytes, read and written as four and one
        // 32-byte vectors; the rest is register arithmetic under AVX2.
        unsafe {
            let p = b.as_ptr();
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
            let sign = _mm256_set1_ps(-0.0);
            let a: [__m256; 4] = std::array::from_fn(|i| _mm256_andnot_ps(sign, v[i]));
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
            let d = amax / 127.0;
            let (d, id) = if d.is_normal() {
                (d, 1.0 / d)
            } else {
                (0.0, 0.0)
            };
            let id = _mm256_set1_ps(id);
            let (half, minus_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
            // round_half_away: the truncation, plus one where the exact remainder is at least
            // a half (minus one at most minus a half); a true comparison is -1.
            let t: [__m256i; 4] = std::array::from_fn(|i| {
                let x = _mm256_mul_ps(v[i], id);
                let t = _mm256_cvttps_epi32(x);
                let rest = _mm256_sub_ps(x, _mm256_cvtepi32_ps(t));
                let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(rest, half));
                let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(rest, minus_half));
                _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
            });
            // |q| <= 127: the packs saturate nothing; they interleave 128-bit lanes, which the
            // permutation puts back in order.
            let w01 = _mm256_packs_epi32(t[0], t[1]);
            let w23 = _mm256_packs_epi32(t[2], t[3]);
            let bytes = _mm256_packs_epi16(w01, w23);
            let bytes =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, bytes);
            let s = _mm256_add_epi32(_mm256_add_epi32(t[0], t[1]), _mm256_add_epi32(t[2], t[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            (d, _mm_cvtsi128_si32(s))
        }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`: 16 bytes read from `src` and 8 floats written to `dst` lie
            // inside them (`dst` borrowed mutably for the call).
            unsafe {
                let h = _mm_loadu_si128(ps.add(i) as *const __m128i);
                _mm256_storeu_ps(pd.add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = half::f16::from_bits(src[j]).to_f32();
        }
    }

    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`: 16 bytes read from `src` and 8 floats written to `dst` lie
            // inside them (`dst` borrowed mutably for the call).
            unsafe {
                let h = _mm_loadu_si128(ps.add(i) as *const __m128i);
                let wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
                _mm256_storeu_ps(pd.add(i), _mm256_castsi256_ps(wide));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = f32::from_bits((src[j] as u32) << 16);
        }
    }

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
        let mut total = hsum(sum);
        for j in i..n {
            total += a[j] * b[j];
        }
        total
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; every row of `x` and `w` holds at least `k`
    /// elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_tile<E: super::TileElement, const R: usize, const C: usize>(
        x: &[&[f32]; R],
        w: &[&[E]; C],
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
                wv[c] = unsafe { load8(w[c].as_ptr().add(j)) };
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
                let mut total = hsum(acc[r][c]);
                for t in whole..k {
                    total += x[r][t] * w[c][t].widen();
                }
                out[r][c] = total;
            }
        }
    }

    /// `f32` or `f16` lanes from an element pointer (the element type is known at
    /// monomorphisation; both branches are the load a `Load8` impl does, written here so they
    /// are compiled with this function's target features).
    ///
    /// # Safety
    /// `p` points at 8 readable elements of `E`, which is `f32` or `u16` (f16 bits); the CPU
    /// supports AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<E: super::TileElement>(p: *const E) -> __m256 {
        if std::mem::size_of::<E>() == 4 {
            // SAFETY: `E` is `f32` (the only 4-byte tile element): 8 readable floats.
            unsafe { _mm256_loadu_ps(p as *const f32) }
        } else {
            // SAFETY: `E` is `u16` f16 bits (the only 2-byte tile element): 16 readable bytes.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `acc` holds `R * hs` floats, `w` `R * offs.len()`,
    /// and every `offs[i] + hs <= v.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_rows<E: super::TileElement, const R: usize>(
        acc: &mut [f32],
        carry: &[f32; R],
        w: &[f32],
        v: &[E],
        offs: &[usize],
        hs: usize,
    ) {
        let n = offs.len();
        let whole = hs / 8 * 8;
        let (pa, pw, pv) = (acc.as_mut_ptr(), w.as_ptr(), v.as_ptr());
        let mut c = 0;
        while c < whole {
            let mut a = [_mm256_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: `r * hs + c + 8 <= R * hs <= acc.len()` (the contract).
                a[r] = unsafe {
                    _mm256_mul_ps(
                        _mm256_loadu_ps(pa.add(r * hs + c)),
                        _mm256_set1_ps(carry[r]),
                    )
                };
            }
            for (i, &o) in offs.iter().enumerate() {
                // SAFETY: `o + c + 8 <= o + hs <= v.len()`, and `r * n + i < R * n <= w.len()`
                // (the contract).
                unsafe {
                    let vv = load8(pv.add(o + c));
                    for (r, ar) in a.iter_mut().enumerate() {
                        *ar = _mm256_fmadd_ps(_mm256_set1_ps(*pw.add(r * n + i)), vv, *ar);
                    }
                }
            }
            for (r, ar) in a.iter().enumerate() {
                // SAFETY: as for the loads above; `acc` is borrowed mutably for the call.
                unsafe { _mm256_storeu_ps(pa.add(r * hs + c), *ar) };
            }
            c += 8;
        }
        for r in 0..R {
            for j in whole..hs {
                let mut a = acc[r * hs + j] * carry[r];
                for (i, &o) in offs.iter().enumerate() {
                    a += w[r * n + i] * v[o + j].widen();
                }
                acc[r * hs + j] = a;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, salt: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + salt) * 0.731).sin()).collect()
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
    fn weighted_rows_match_the_plain_sums_and_do_not_depend_on_the_row_count() {
        for (hs, n) in [(64usize, 16usize), (128, 5), (13, 3), (8, 0), (72, 1)] {
            let stride = hs + 40;
            let v = data(n.max(1) * stride, 0.7);
            let w = data(4 * n, 2.2);
            let carry = [0.5f32, 1.0, 0.25, 2.0];
            let start = data(4 * hs, 4.4);
            let offs: Vec<usize> = (0..n).map(|i| i * stride).collect();
            let mut four = start.clone();
            weighted_rows::<f32, 4>(&mut four, &carry, &w, &v, &offs, hs);
            // The same values as f16 bits (the data rounded to f16 first, so both are exact).
            let v16: Vec<u16> = v
                .iter()
                .map(|x| half::f16::from_f32(*x).to_bits())
                .collect();
            let v_back: Vec<f32> = v16
                .iter()
                .map(|b| half::f16::from_bits(*b).to_f32())
                .collect();
            let (mut from16, mut from32) = (start.clone(), start.clone());
            weighted_rows::<u16, 4>(&mut from16, &carry, &w, &v16, &offs, hs);
            weighted_rows::<f32, 4>(&mut from32, &carry, &w, &v_back, &offs, hs);
            assert!(from16
                .iter()
                .zip(&from32)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            for r in 0..4 {
                let mut one = start[r * hs..(r + 1) * hs].to_vec();
                weighted_rows::<f32, 1>(&mut one, &[carry[r]], &w[r * n..], &v, &offs, hs);
                for j in 0..hs {
                    assert_eq!(
                        four[r * hs + j].to_bits(),
                        one[j].to_bits(),
                        "hs {hs} n {n}"
                    );
                    let exact = start[r * hs + j] as f64 * carry[r] as f64
                        + (0..n)
                            .map(|i| w[r * n + i] as f64 * v[i * stride + j] as f64)
                            .sum::<f64>();
                    assert!((one[j] as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64));
                }
            }
        }
    }

    #[test]
    fn half_conversions_are_exact_for_every_bit_pattern() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        for len in [bits.len(), 13, 8, 7, 0] {
            let mut got = vec![0f32; len];
            f16_to_f32(&bits[..len], &mut got);
            for (b, g) in bits.iter().zip(&got) {
                let want = half::f16::from_bits(*b).to_f32();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "f16 {b:#06x}: {g} vs {want}"
                );
            }
            bf16_to_f32(&bits[..len], &mut got);
            for (b, g) in bits.iter().zip(&got) {
                let want = half::bf16::from_bits(*b).to_f32();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "bf16 {b:#06x}: {g} vs {want}"
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
        }
    }
}

/// The int8 kernels' byte dot product (`qdot`, `i8dot`), as a type so that a loop written once
/// is compiled for each instruction set.
#[cfg(target_arch = "x86_64")]
pub(crate) mod int8 {
    use std::arch::x86_64::*;

    /// How 32 byte products are summed into 8 `i32` lanes (4 adjacent products per lane):
    /// AVX2's `vpmaddubsw` then `vpmaddwd` (pairs through `i16`, which the kernels' operand
    /// ranges never saturate: |u| <= 128, |s| <= 127), or `vpdpbusd` of AVX-512 VNNI or of
    /// AVX-VNNI (the 4 products straight into `i32`, one instruction). The lanes hold the same
    /// integers every way, so the kernels give the same bits.
    pub(crate) trait Dot {
        /// The lane sums of `u · s`: `u` unsigned bytes, `s` signed bytes.
        ///
        /// # Safety
        /// The instructions' features (AVX2; `Vnni`: AVX-512 VNNI and VL; `AvxVnni`:
        /// AVX-VNNI).
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;

        /// Whether the block GEMM may take two weight columns at once in 512-bit registers
        /// (AVX-512 F and BW enabled in its entry).
        const PAIRS: bool = false;

        /// `acc` plus the lane sums of `u · s` (one instruction with VNNI).
        ///
        /// # Safety
        /// As [`Dot::dot`].
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX2 (this function's contract).
            unsafe { _mm256_add_epi32(acc, Self::dot(u, s)) }
        }
    }

    /// `vpmaddubsw` + `vpmaddwd`.
    pub(crate) struct Avx2;
    /// `vpdpbusd` (AVX-512 VNNI, EVEX-encoded).
    pub(crate) struct Vnni;
    /// `vpdpbusd` (AVX-VNNI, VEX-encoded): the same operation.
    pub(crate) struct AvxVnni;
    /// `vpdpbusd`, and the block GEMM's whole groups two weight columns at a time on 512-bit
    /// registers (the same products and scaling per lane, so the same bits).
    pub(crate) struct Vnni512;

    impl Dot for Avx2 {
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX2 (this function's contract).
            unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
        }
    }

    impl Dot for Vnni {
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-512 VNNI and VL (this function's contract).
            unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
        }
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-512 VNNI and VL (this function's contract).
            unsafe { _mm256_dpbusd_epi32(acc, u, s) }
        }
    }

    impl Dot for AvxVnni {
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-VNNI (this function's contract).
            unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s) }
        }
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-VNNI (this function's contract).
            unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
        }
    }

    impl Dot for Vnni512 {
        const PAIRS: bool = true;
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-512 VNNI and VL (this function's contract).
            unsafe { Vnni::dot(u, s) }
        }
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX-512 VNNI and VL (this function's contract).
            unsafe { Vnni::dot_add(acc, u, s) }
        }
    }
}
