//! Quantized weights as data: GGUF's block formats, decoded and encoded exactly as ggml defines
//! them, and the int8 activation blocks a quantized GEMM multiplies them with.
//!
//! A weight `[n, k]` in a block format is `n` rows of `k / 32` blocks, each row's blocks in
//! order (GGUF's layout, so a tensor's bytes from the file are the weight). A block of 32
//! values:
//!
//! | format | bytes | block | value `j` |
//! | --- | --- | --- | --- |
//! | `Q8_0` | 34 | f16 `d`, 32 × i8 `q` | `d · q[j]` |
//! | `Q4_0` | 18 | f16 `d`, 16 bytes of nibbles | `d · (nib[j] − 8)` |
//! | `Q4_1` | 20 | f16 `d`, f16 `m`, 16 bytes of nibbles | `d · nib[j] + m` |
//!
//! with `nib[j]` the low nibble of byte `j` for `j < 16` and the high nibble of byte `j − 16`
//! otherwise.
//!
//! Activations are quantized per block of 32 as llama.cpp's `q8_0`/`q8_1` do (`d = max|x| /
//! 127`, `q = round(x / d)`, ties away from zero), except that `d` is kept in `f32` (llama.cpp
//! rounds it to f16): [`ActivationBlocks`]. The quantized GEMM is then exact integer dot
//! products per block, scaled, which [`crate::reference::quant_matmul`] states in `f64`.
//!
//! W8A8 is the fourth format, [`QuantFormat::Int8PerChannel`]: each row of the weight is `k`
//! int8 values and one little-endian `f32` scale (`k + 4` bytes, value `j` is `scale · q[j]`,
//! any `k`), and each activation row is quantized as a whole, symmetrically, as CANN's
//! `aclnnDynamicQuant` does ([`TokenQuant`]: `s = max|x| / 127`, `q = round(x / s)`, ties to
//! even). Output element `(i, j)` is then `(Σ q_x · q_w) · s_w[j] · s_x[i]`, one exact `i32`
//! sum per element (which bounds `k` by [`INT8_MAX_K`]).

use ascend_hal::{Error, Result};
use half::f16;

/// Values per block, in every format.
pub const BLOCK: usize = 32;

/// A quantized weight's block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 8-bit values with one f16 scale per block (GGUF type 8).
    Q8_0,
    /// 4-bit values around 8 with one f16 scale per block (GGUF type 2).
    Q4_0,
    /// 4-bit values with an f16 scale and an f16 minimum per block (GGUF type 3).
    Q4_1,
    /// W8A8: int8 values with one `f32` scale per row (output channel), activations quantized
    /// to int8 per token when multiplied. Not a GGUF type: a model makes it from float (or
    /// dequantized) weights with [`quantize`], row by row.
    Int8PerChannel,
}

impl QuantFormat {
    /// The GGUF block formats, in GGUF type order.
    pub const ALL: [QuantFormat; 3] = [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0];

    /// Every format: the GGUF block formats, then [`Int8PerChannel`](Self::Int8PerChannel).
    pub const EVERY: [QuantFormat; 4] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Int8PerChannel,
    ];

    /// Bytes of one block of [`BLOCK`] values; for `Int8PerChannel`, whose scale is per row,
    /// the 32 bytes of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Int8PerChannel => BLOCK,
        }
    }

    /// Whether this is a GGUF block format (values in blocks of [`BLOCK`], activations
    /// quantized per block), as opposed to `Int8PerChannel`.
    pub const fn is_blocks(self) -> bool {
        !matches!(self, QuantFormat::Int8PerChannel)
    }

    /// The format's name, as ggml spells it (`W8A8` for `Int8PerChannel`).
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Int8PerChannel => "W8A8",
        }
    }

    /// Bytes of a row of `k` values, or `None` when `k` is not whole blocks of a block format
    /// (or overflows). `Int8PerChannel` takes any `k`: `k` values and the row's scale.
    pub fn row_bytes(self, k: usize) -> Option<usize> {
        if self == QuantFormat::Int8PerChannel {
            return k.checked_add(4);
        }
        if !k.is_multiple_of(BLOCK) {
            return None;
        }
        (k / BLOCK).checked_mul(self.block_bytes())
    }

    /// Why a row of `k` values cannot be stored in this format, for errors: blocks of 32.
    pub fn row_rule(self) -> String {
        match self {
            QuantFormat::Int8PerChannel => {
                "a positive count of int8 values (each row adds a 4-byte scale)".into()
            }
            _ => format!("whole {self} blocks of {BLOCK} values"),
        }
    }
}

/// The largest `k` of an `Int8PerChannel` weight: every `i32` sum of `k` products of two int8
/// values (each at most 128 · 128 in magnitude) is exact.
pub const INT8_MAX_K: usize = 1 << 17;

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn invalid(op: &'static str, message: String) -> Error {
    Error::InvalidArgument { op, message }
}

/// The bytes of `values` values in format `f` (for `Int8PerChannel`, one row of them), or an
/// error when they are not whole blocks.
fn block_bytes_of(op: &'static str, f: QuantFormat, values: usize) -> Result<usize> {
    f.row_bytes(values).ok_or_else(|| {
        invalid(
            op,
            format!("{values} values are not whole {f} blocks of {BLOCK}"),
        )
    })
}

/// The bytes of a row of an `[n, k]` weight of `f` that is `bytes` long, or an error (for `op`)
/// saying why `bytes` is not `n` rows of `k` values of `f`.
pub(crate) fn weight_row_bytes(
    op: &'static str,
    f: QuantFormat,
    n: usize,
    k: usize,
    bytes: usize,
) -> Result<usize> {
    let row = f.row_bytes(k).filter(|_| k > 0);
    match row.and_then(|r| r.checked_mul(n).map(|len| (r, len))) {
        Some((r, len)) if len == bytes => Ok(r),
        _ => Err(invalid(
            op,
            format!(
                "{bytes} bytes are not {n} rows of k = {k} values of {f} ({})",
                f.row_rule()
            ),
        )),
    }
}

/// The little-endian f32 at byte `i` of `b` (an `Int8PerChannel` row's scale).
pub(crate) fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Checks that `bytes` holds exactly the blocks of `values` values.
fn expect_blocks(op: &'static str, f: QuantFormat, values: usize, bytes: usize) -> Result<()> {
    let want = block_bytes_of(op, f, values)?;
    if want != bytes {
        return Err(invalid(
            op,
            format!("{values} values of {f} take {want} bytes, got {bytes}"),
        ));
    }
    Ok(())
}

/// The little-endian f16 at byte `i` of `b`, as `f32` (a block's scale or minimum).
pub(crate) fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The first block of `bytes` (whole blocks of a block format `f`) whose scale (or, for Q4_1,
/// minimum) is a NaN or an infinity: such a weight is corrupt, and every product with it would
/// be. (`Int8PerChannel` rows are made by [`quantize`] from finite values, so their scales are
/// finite; this checks block formats only.)
pub fn first_non_finite_block(f: QuantFormat, bytes: &[u8]) -> Option<usize> {
    if !f.is_blocks() {
        return None;
    }
    let halves = if f == QuantFormat::Q4_1 { 2 } else { 1 };
    bytes
        .chunks_exact(f.block_bytes())
        .position(|b| (0..halves).any(|i| !half_at(b, 2 * i).is_finite()))
}

/// Decodes `out.len()` values of format `f` from `bytes` (exactly their blocks; for
/// `Int8PerChannel`, exactly one row of `out.len()` values).
pub fn dequantize(f: QuantFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    expect_blocks("dequantize", f, out.len(), bytes.len())?;
    if f == QuantFormat::Int8PerChannel {
        let s = f32_at(bytes, out.len());
        for (o, &q) in out.iter_mut().zip(bytes) {
            *o = s * (q as i8) as f32;
        }
        return Ok(());
    }
    for (b, o) in bytes
        .chunks_exact(f.block_bytes())
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = half_at(b, 0);
        match f {
            QuantFormat::Q8_0 => {
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = d * (q as i8) as f32;
                }
            }
            QuantFormat::Q4_0 => {
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
                    *l = d * ((q & 0x0f) as i32 - 8) as f32;
                    *h = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
            QuantFormat::Q4_1 => {
                let m = half_at(b, 2);
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
                    *l = d * (q & 0x0f) as f32 + m;
                    *h = d * (q >> 4) as f32 + m;
                }
            }
            QuantFormat::Int8PerChannel => unreachable!("decoded above"),
        }
    }
    Ok(())
}

/// Encodes `x` (whole blocks) in format `f` as ggml's reference quantizers do, appending to
/// `out`: `Q8_0` and `Q4_0` scale by the value of largest magnitude (`Q4_0` keeps its sign, so
/// that value is exactly `-8 d`), `Q4_1` spans `[min, max]` in 15 steps. For `Int8PerChannel`
/// `x` is one row (one output channel): `s = max|x| / 127` (0 for a row of zeros), `q =
/// round(x / s)` (ties to even), then `s`.
pub fn quantize(f: QuantFormat, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    block_bytes_of("quantize", f, x.len())?;
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(invalid("quantize", format!("{v} cannot be quantized")));
    }
    if f == QuantFormat::Int8PerChannel {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 127.0;
        if s == 0.0 {
            // A row of zeros (or of values so small that their scale underflows).
            out.extend(std::iter::repeat_n(0u8, x.len()));
            out.extend(0f32.to_le_bytes());
        } else {
            out.extend(
                x.iter()
                    .map(|v| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8 as u8),
            );
            out.extend(s.to_le_bytes());
        }
        return Ok(());
    }
    let put = |out: &mut Vec<u8>, v: f32| out.extend(f16::from_f32(v).to_bits().to_le_bytes());
    for b in x.chunks_exact(BLOCK) {
        match f {
            QuantFormat::Q8_0 => {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(out, d);
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
            QuantFormat::Q4_0 => {
                let max = b
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(out, d);
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
            QuantFormat::Q4_1 => {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(out, d);
                put(out, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
            QuantFormat::Int8PerChannel => unreachable!("encoded above"),
        }
    }
    Ok(())
}

/// `x.round()` (half away from zero) for `|x| < 2^23`, without the `roundf` call that
/// `f32::round` compiles to on x86-64 (no instruction rounds half away), so that a block's 32
/// roundings vectorize: the truncation plus one when the exact remainder reaches a half.
#[inline(always)]
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let rest = x - t as f32; // exact: t is x without its fraction
    t + (rest >= 0.5) as i32 - (rest <= -0.5) as i32
}

/// One block of activations to int8: `q = round(x / d)`, ties away from zero, with
/// `d = max|x| / 127`; returns `d` and `Σ q` (finite values). The portable loop; the kernels
/// call [`crate::simd::quantize_block`], the same arithmetic 8 values at a time.
pub(crate) fn quantize_block(b: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
    // A scale below the normal range has no finite inverse: such a block (every |x| under
    // 127 · 2^-126) is zeros with scale 0, where `x · inf` gave garbage (and an overflow panic
    // in a debug build).
    let d = amax / 127.0;
    let (d, id) = if d.is_normal() {
        (d, 1.0 / d)
    } else {
        (0.0, 0.0)
    };
    for (q, v) in q.iter_mut().zip(b) {
        *q = round_half_away(v * id) as i8;
    }
    (d, q.iter().map(|&q| q as i32).sum())
}

/// `x.round_ties_even()` for `|x| < 2^23`, as [`round_half_away`] avoids its call: a remainder
/// of exactly a half goes to the even neighbour.
#[inline(always)]
fn round_ties_even(x: f32) -> i32 {
    let t = x as i32;
    let rest = x - t as f32;
    let odd = t & 1 != 0;
    t + (rest > 0.5 || (rest == 0.5 && odd)) as i32 - (rest < -0.5 || (rest == -0.5 && odd)) as i32
}

/// The index of the first value of `x` that is a NaN or an infinity, if one is.
///
/// ```
/// use ascend_kernels::quant::first_non_finite;
/// assert_eq!(first_non_finite(&[1.0, f32::INFINITY, f32::NAN]), Some(1));
/// assert_eq!(first_non_finite(&[1.0, -2.0]), None);
/// ```
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    // An exponent of all ones is a NaN or an infinity. Or-ing the test over the row vectorizes
    // (`position` stops at each value): a 49152-value row took 4 us this way and 15 with
    // `position` alone. The position is looked for only when there is one.
    let non_finite = |v: &f32| v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    if !x.iter().fold(false, |any, v| any | non_finite(v)) {
        return None;
    }
    x.iter().position(non_finite)
}

/// Errors unless every value of activation row `row` is finite (a NaN or infinity has no int8
/// block: quantizing it would silently give zeros or saturate the block).
pub fn check_finite(op: &'static str, row: usize, x: &[f32]) -> Result<()> {
    match first_non_finite(x) {
        None => Ok(()),
        Some(i) => Err(invalid(
            op,
            format!(
                "x[{row}, {i}] = {} cannot be quantized to int8: the activations this \
                 matmul is given hold a NaN or an infinity (look upstream of it)",
                x[i]
            ),
        )),
    }
}

/// Rows of activations quantized to int8 per block of [`BLOCK`]: for block `b`, the values are
/// `scales[b] · qs[32 b + j]`, and `sums[b]` is `scales[b] · Σ_j qs[32 b + j]` (what a `Q4_1`
/// block's minimum multiplies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationBlocks {
    /// One scale per block (`max|x| / 127`; 0, with zero values, where that is below the
    /// normal range).
    pub scales: Vec<f32>,
    /// One scaled sum of the block's values per block.
    pub sums: Vec<f32>,
    /// The quantized values, `round(x / scale)`, ties away from zero.
    pub qs: Vec<i8>,
}

impl ActivationBlocks {
    /// Quantizes `x` (whole blocks; finite values), replacing what the buffers held.
    pub fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(BLOCK));
        let blocks = x.len() / BLOCK;
        self.scales.clear();
        self.sums.clear();
        self.qs.clear();
        self.scales.reserve(blocks);
        self.sums.reserve(blocks);
        self.qs.reserve(x.len());
        for b in x.as_chunks::<BLOCK>().0 {
            let mut q = [0i8; BLOCK];
            let (d, sum) = crate::simd::quantize_block(b, &mut q);
            self.qs.extend_from_slice(&q);
            self.scales.push(d);
            self.sums.push(d * sum as f32);
        }
    }

    /// The dequantized values (what the reference multiplies).
    pub fn values(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&q| d * q as f32))
            .collect()
    }
}

/// One row of activations quantized per token for W8A8, as CANN's `aclnnDynamicQuant` does
/// (its documented formula and its test golden, in `f32`): `scale = max|x| / 127`, 1 for a row
/// of zeros; `qs = round(x / scale)`, ties to even. (CANN clamps to [-128, 127]; since `|x /
/// scale| <= 127` up to rounding, the values are within ±127, which this clamp makes certain so
/// that the int8 kernels can negate any of them.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenQuant {
    /// The row's scale.
    pub scale: f32,
    /// The quantized values.
    pub qs: Vec<i8>,
}

impl TokenQuant {
    /// Quantizes `x` (finite values), replacing what the buffers held.
    pub fn quantize(&mut self, x: &[f32]) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 127.0;
        self.scale = if s == 0.0 { 1.0 } else { s };
        self.qs.clear();
        let s = self.scale;
        self.qs.extend(
            x.iter()
                .map(|v| round_ties_even(v / s).clamp(-127, 127) as i8),
        );
    }

    /// The dequantized values (what the reference multiplies).
    pub fn values(&self) -> Vec<f32> {
        self.qs.iter().map(|&q| self.scale * q as f32).collect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_non_finite_scale_or_minimum_names_its_block() {
        for f in QuantFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &[0.5; 96], &mut bytes).unwrap();
            assert_eq!(first_non_finite_block(f, &bytes), None, "{f}");
            let at = 2 * f.block_bytes();
            bytes[at..at + 2].copy_from_slice(&f16::NAN.to_bits().to_le_bytes());
            assert_eq!(first_non_finite_block(f, &bytes), Some(2), "{f}: scale");
            if f == QuantFormat::Q4_1 {
                bytes.clear();
                quantize(f, &[0.5; 96], &mut bytes).unwrap();
                let at = f.block_bytes() + 2;
                bytes[at..at + 2].copy_from_slice(&f16::INFINITY.to_bits().to_le_bytes());
                assert_eq!(first_non_finite_block(f, &bytes), Some(1), "{f}: minimum");
            }
        }
    }

    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn blocks_decode_as_ggml_defines_them() {
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut x = [0f32; 32];
        dequantize(QuantFormat::Q4_1, &b, &mut x).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], j as f32 * 0.5 - 1.0);
            assert_eq!(x[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        let mut b = Vec::new();
        b.extend(h(0.25));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        dequantize(QuantFormat::Q4_0, &b, &mut x).unwrap();
        assert_eq!((x[0], x[31]), (-2.0, 1.75));
        let mut b = Vec::new();
        b.extend(h(2.0));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize(QuantFormat::Q8_0, &b, &mut x).unwrap();
        assert_eq!((x[0], x[31]), (-32.0, 30.0));
    }

    #[test]
    fn quantizing_then_decoding_is_within_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        for f in QuantFormat::ALL {
            let mut b = Vec::new();
            quantize(f, &x, &mut b).unwrap();
            assert_eq!(b.len(), f.row_bytes(64).unwrap());
            let mut y = vec![0f32; 64];
            dequantize(f, &b, &mut y).unwrap();
            for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let step = half_at(&b[blk * f.block_bytes()..], 0).abs();
                for (a, c) in xb.iter().zip(yb) {
                    // Half a step, and the f16 rounding of the scale and minimum; Q4_0 maps
                    // the largest magnitude to -8 d, so the other sign's end clamps at 7 d.
                    let steps = if f == QuantFormat::Q4_0 { 1.0 } else { 0.5 };
                    assert!((a - c).abs() <= steps * step + 1e-2, "{f}: {a} vs {c}");
                }
            }
        }
    }

    #[test]
    fn lengths_that_are_not_whole_blocks_are_errors() {
        let mut y = vec![0f32; 33];
        let e = dequantize(QuantFormat::Q8_0, &[0; 34], &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("33 values are not whole Q8_0 blocks"),
            "{e}"
        );
        let mut y = vec![0f32; 32];
        let e = dequantize(QuantFormat::Q4_1, &[0; 18], &mut y).unwrap_err();
        assert!(e.to_string().contains("take 20 bytes, got 18"), "{e}");
        let e = quantize(QuantFormat::Q4_0, &[f32::NAN; 32], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("NaN cannot be quantized"), "{e}");
    }

    /// The kernels' block quantizer (8 values at a time on x86-64) gives the portable loop's
    /// scale, sum and values bit for bit: on blocks of exact halves (scale 1, so every value
    /// is a tie), just below and above halves, zeros, tiny values, and mixed signs and sizes.
    #[test]
    fn the_vector_block_quantizer_gives_the_portable_bits() {
        let mut blocks: Vec<[f32; BLOCK]> = vec![[0.0; BLOCK], [-0.0; BLOCK], [1e-40; BLOCK]];
        blocks.push(std::array::from_fn(|j| {
            if j == 0 {
                127.0
            } else {
                (j as f32 - 16.5) * if j % 2 == 0 { 1.0 } else { -1.0 }
            }
        }));
        blocks.push(std::array::from_fn(|j| {
            let v = j as f32 * 3.5 + 0.5;
            if j % 3 == 0 {
                -v.next_down()
            } else {
                v.next_up()
            }
        }));
        let mut seed = 7u64;
        for scale in [1e-30f32, 1e-3, 1.0, 37.0, 1e30] {
            for _ in 0..50 {
                blocks.push(std::array::from_fn(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * scale
                }));
            }
        }
        for b in &blocks {
            let (mut fast, mut slow) = ([0i8; BLOCK], [0i8; BLOCK]);
            let (df, sf) = crate::simd::quantize_block(b, &mut fast);
            let (ds, ss) = quantize_block(b, &mut slow);
            assert_eq!((df.to_bits(), sf, fast), (ds.to_bits(), ss, slow), "{b:?}");
            assert_eq!(ss, slow.iter().map(|&q| q as i32).sum::<i32>());
        }
        // A scale that would be subnormal (no finite inverse): zeros, scale 0.
        let mut q = [1i8; BLOCK];
        assert_eq!(
            crate::simd::quantize_block(&[1e-40; BLOCK], &mut q),
            (0.0, 0)
        );
        assert_eq!(q, [0; BLOCK]);
    }

    #[test]
    fn the_inlined_roundings_equal_f32s() {
        let mut x = -130.0f32;
        while x <= 130.0 {
            for v in [x, x + 0.5, (x + 0.5).next_down(), (x + 0.5).next_up()] {
                assert_eq!(round_half_away(v), v.round() as i32, "{v}");
            }
            x += 0.25;
        }
        for v in [0.49999997f32, -0.49999997, 0.5, -0.5, 1.5, -2.5, 0.0, -0.0] {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
            assert_eq!(round_ties_even(v), v.round_ties_even() as i32, "{v}");
        }
        let mut x = -130.0f32;
        while x <= 130.0 {
            for v in [x, x + 0.5, (x + 0.5).next_down(), (x + 0.5).next_up()] {
                assert_eq!(round_ties_even(v), v.round_ties_even() as i32, "{v}");
            }
            x += 0.25;
        }
    }

    #[test]
    fn activation_blocks_keep_their_scale_and_sum() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
        let mut a = ActivationBlocks::default();
        a.quantize(&x);
        assert_eq!(a.scales, vec![21.0 / 127.0]);
        assert_eq!(a.qs[31], 127);
        assert_eq!(a.qs[0], -60); // -10 / (21/127) = -60.48
        let s: i32 = a.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(a.sums[0], a.scales[0] * s as f32);
        // Zeros quantize to zeros with a zero scale, not NaN.
        a.quantize(&[0.0; 32]);
        assert_eq!((a.scales[0], a.qs[5]), (0.0, 0));
    }
}
