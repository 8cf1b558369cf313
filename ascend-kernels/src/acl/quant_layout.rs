//! How the ACL backend keeps a block-quantized weight on the device: the layout
//! `aclnnWeightQuantBatchMatmulV2` reads (weight-only quantization, per group of 32 along `k`),
//! made once on the host from the GGUF blocks at upload.
//!
//! For an `[n, k]` weight with `g = k / 32` groups per row, in this order:
//!
//! | part | `Q8_0` | `Q4_0` | `Q4_1` |
//! | --- | --- | --- | --- |
//! | values `[n, k]` | int8 `q` | int4 `nib − 8` | int4 `nib − 8` |
//! | scales `[n, g]`, activation dtype | `d` | `d` | `d` |
//! | offsets `[n, g]`, activation dtype | — | — | `8 + m / d` |
//!
//! so that the operator's `(w + offset) · scale` is the GGUF value (`d·q`, `d·(nib − 8)`,
//! `d·nib + m`). int4 is two values per byte, the even element in the low nibble
//! (`ACL_INT4`), which is `nib XOR 8` per nibble, as llama.cpp's CANN backend stores `Q4_0`. The
//! three parts take exactly the bytes of the blocks (`Q8_0`: 32 + 2 per 32 values; `Q4_0`:
//! 16 + 2; `Q4_1`: 16 + 2 + 2), so a weight's size does not depend on the backend.
//!
//! A W8A8 weight ([`QuantFormat::Int8PerChannel`], rows of `k` int8 values and an `f32`
//! scale) is laid out for `aclnnQuantMatmulV4`: the values `[n, k]` int8, then the `n` scales
//! as `f32` (the dtype the operator takes with per-token activations, for f16 and bf16 output
//! alike), again exactly the rows' bytes.
//!
//! The scales and offsets are in the activation dtype because the operator requires it: with
//! bf16 activations a scale keeps 8 bits of mantissa, not f16's 11. A `Q4_1` block whose
//! offset `8 + m / d` does not fit the dtype (`d` is 0, or tiny next to `m`) is stored as the
//! constant `m` (scale `m / 8`, offset 16, values −8): its values differ from `m` by at most
//! `15·d`, under 2.3·10⁻⁴·|m| when the offset overflows f16.

use ascend_hal::{Error, Result};

use crate::float::KvFloat;
use crate::quant::{half_at, QuantFormat, BLOCK};

/// The nibble of value `j` (0..32) of a `Q4_x` block whose 16 bytes of nibbles are `qs`.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    }
}

/// The ACL layout (above) of the `[n, k]` weight whose GGUF blocks (or W8A8 rows) are
/// `blocks`, with scales and offsets in `T` (W8A8: scales in f32).
///
/// # Errors
/// [`Error::InvalidArgument`] when `k` is not whole blocks, `blocks` is not `n` rows of them,
/// or `T` is not f16/bf16 (the operators' activation dtypes).
pub fn pack<T: KvFloat>(format: QuantFormat, n: usize, k: usize, blocks: &[u8]) -> Result<Vec<u8>> {
    const OP: &str = "pack_quant_weight";
    let bad = |message: String| Error::InvalidArgument { op: OP, message };
    if std::mem::size_of::<T>() != 2 {
        return Err(bad(if format.is_blocks() {
            format!(
                "the ACL layout keeps scales in the activation dtype, which \
                 aclnnWeightQuantBatchMatmulV2 takes as f16 or bf16, not {}",
                T::DTYPE
            )
        } else {
            format!(
                "W8A8's activations go through aclnnDynamicQuant, which takes f16 or bf16, not {}",
                T::DTYPE
            )
        }));
    }
    let row = format
        .row_bytes(k)
        .filter(|_| k > 0)
        .ok_or_else(|| bad(format!("k = {k} is not {}", format.row_rule())))?;
    if n.checked_mul(row) != Some(blocks.len()) {
        return Err(bad(format!(
            "{} bytes are not {n} rows of {row} bytes ({format}, k = {k})",
            blocks.len()
        )));
    }
    if format == QuantFormat::Int8PerChannel {
        let mut values = Vec::with_capacity(blocks.len());
        for r in blocks.chunks_exact(row) {
            values.extend_from_slice(&r[..k]);
        }
        for r in blocks.chunks_exact(row) {
            values.extend_from_slice(&r[k..]);
        }
        return Ok(values);
    }
    let groups = n * (k / BLOCK);
    let mut values = Vec::with_capacity(blocks.len());
    let mut scales: Vec<T> = Vec::with_capacity(groups);
    let mut offsets: Vec<T> = Vec::new();
    let mut nibbles = [0u8; BLOCK];
    for b in blocks.chunks_exact(format.block_bytes()) {
        let d = half_at(b, 0);
        match format {
            QuantFormat::Q8_0 => {
                values.extend_from_slice(&b[2..34]);
                scales.push(T::from_f32(d));
            }
            QuantFormat::Q4_0 => {
                for (j, v) in nibbles.iter_mut().enumerate() {
                    *v = nibble(&b[2..18], j);
                }
                scales.push(T::from_f32(d));
            }
            QuantFormat::Int8PerChannel => unreachable!("packed above"),
            QuantFormat::Q4_1 => {
                let m = half_at(b, 2);
                for (j, v) in nibbles.iter_mut().enumerate() {
                    *v = nibble(&b[4..20], j);
                }
                let offset = T::from_f32(8.0 + m / d);
                if d != 0.0 && offset.to_f32().is_finite() {
                    scales.push(T::from_f32(d));
                    offsets.push(offset);
                } else {
                    nibbles = [0; BLOCK];
                    scales.push(T::from_f32(m / 8.0));
                    offsets.push(T::from_f32(16.0));
                }
            }
        }
        if format != QuantFormat::Q8_0 {
            // int4 `nib − 8` is `nib XOR 8` in 4 bits; the even element in the low nibble.
            values.extend(
                nibbles
                    .chunks_exact(2)
                    .map(|p| (p[0] ^ 8) | ((p[1] ^ 8) << 4)),
            );
        }
    }
    debug_assert_eq!(
        Some(values.len()),
        parts(format, n, k).map(|(at_scales, _)| at_scales)
    );
    values.extend_from_slice(bytemuck::cast_slice(&scales));
    values.extend_from_slice(bytemuck::cast_slice(&offsets));
    debug_assert_eq!(values.len(), blocks.len());
    Ok(values)
}

/// Byte offsets of the parts of a packed `[n, k]` weight: (scales, offsets), the values
/// starting at 0 (a format without offsets has them at the end). `None` when `k` is not whole
/// blocks or the weight's size overflows `usize`.
pub fn parts(format: QuantFormat, n: usize, k: usize) -> Option<(usize, usize)> {
    n.checked_mul(format.row_bytes(k)?)?;
    let all = n.checked_mul(k)?;
    match format {
        QuantFormat::Int8PerChannel => Some((all, all.checked_add(n.checked_mul(4)?)?)),
        QuantFormat::Q8_0 => Some((all, all.checked_add(all / BLOCK * 2)?)),
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            Some((all / 2, (all / 2).checked_add(all / BLOCK * 2)?))
        }
    }
}

/// The values of a packed weight, row-major `[n, k]` (`(w + offset) · scale` in f32): what the
/// layout means, for tests and checks. `None` when `k` is not whole blocks or `packed` is not
/// the size of an `[n, k]` weight of `format`.
pub fn unpack<T: KvFloat>(
    format: QuantFormat,
    n: usize,
    k: usize,
    packed: &[u8],
) -> Option<Vec<f32>> {
    let (at_scales, at_offsets) = parts(format, n, k)?;
    let row = format.row_bytes(k)?;
    if std::mem::size_of::<T>() != 2 || n.checked_mul(row)? != packed.len() {
        return None;
    }
    if format == QuantFormat::Int8PerChannel {
        let scale = |r: usize| crate::quant::f32_at(packed, at_scales + 4 * r);
        return Some(
            (0..n * k)
                .map(|i| packed[i] as i8 as f32 * scale(i / k))
                .collect(),
        );
    }
    let elem = |at: usize, i: usize| -> f32 {
        let b = &packed[at + 2 * i..at + 2 * i + 2];
        bytemuck::pod_read_unaligned::<T>(b).to_f32()
    };
    let values = (0..n * k)
        .map(|i| {
            let w = match format {
                QuantFormat::Q8_0 => packed[i] as i8 as f32,
                _ => {
                    let byte = packed[i / 2];
                    let nib = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    ((nib ^ 8) as i32 - 8) as f32
                }
            };
            let g = i / BLOCK;
            let offset = if format == QuantFormat::Q4_1 {
                elem(at_offsets, g)
            } else {
                0.0
            };
            (w + offset) * elem(at_scales, g)
        })
        .collect();
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};
    use half::{bf16, f16};

    fn weights(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i / k) as f32 * 0.2)
            .collect()
    }

    fn check<T: KvFloat>(rel: f32) {
        let (n, k) = (5, 96);
        for f in QuantFormat::ALL {
            let mut blocks = Vec::new();
            quantize(f, &weights(n, k), &mut blocks).unwrap();
            let mut want = vec![0f32; n * k];
            dequantize(f, &blocks, &mut want).unwrap();
            let packed = pack::<T>(f, n, k, &blocks).unwrap();
            assert_eq!(packed.len(), blocks.len(), "{f}: same bytes as the blocks");
            let got = unpack::<T>(f, n, k, &packed).unwrap();
            let top = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= rel * top, "{f} value {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn the_layout_means_the_gguf_values() {
        // f16 scales are the blocks' own; Q4_1's offset rounds to f16 (2^-11 of |m / d|).
        check::<f16>(2e-3);
        // bf16 keeps 8 bits of each scale.
        check::<bf16>(1e-2);
    }

    #[test]
    fn a_w8a8_weight_is_its_values_then_its_f32_scales() {
        let (n, k) = (3, 40);
        let w = weights(n, k);
        let mut rows = Vec::new();
        let mut want = vec![0f32; n * k];
        for r in 0..n {
            let at = rows.len();
            quantize(
                QuantFormat::Int8PerChannel,
                &w[r * k..(r + 1) * k],
                &mut rows,
            )
            .unwrap();
            dequantize(
                QuantFormat::Int8PerChannel,
                &rows[at..],
                &mut want[r * k..(r + 1) * k],
            )
            .unwrap();
        }
        let packed = pack::<bf16>(QuantFormat::Int8PerChannel, n, k, &rows).unwrap();
        assert_eq!(packed.len(), rows.len());
        assert_eq!(&packed[k..2 * k], &rows[k + 4..2 * k + 4], "row 1's values");
        assert_eq!(
            &packed[n * k + 4..n * k + 8],
            &rows[2 * k + 4..2 * k + 8],
            "its scale"
        );
        // Exactly the rows' values: the scales stay f32.
        assert_eq!(
            unpack::<f16>(QuantFormat::Int8PerChannel, n, k, &packed).unwrap(),
            want
        );
        assert_eq!(
            parts(QuantFormat::Int8PerChannel, n, k),
            Some((n * k, n * k + 4 * n))
        );
    }

    #[test]
    fn a_constant_q4_1_block_keeps_its_value() {
        // d = 0, m = 1.5: every value is 1.5.
        let mut block = vec![0u8; 20];
        block[2..4].copy_from_slice(&f16::from_f32(1.5).to_bits().to_le_bytes());
        block[4..].fill(0x5a);
        let packed = pack::<f16>(QuantFormat::Q4_1, 1, 32, &block).unwrap();
        assert!(unpack::<f16>(QuantFormat::Q4_1, 1, 32, &packed)
            .unwrap()
            .iter()
            .all(|&v| v == 1.5));
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let e = pack::<f32>(QuantFormat::Q8_0, 1, 32, &[0; 34]).unwrap_err();
        assert!(e.to_string().contains("f16 or bf16"), "{e}");
        let e = pack::<f16>(QuantFormat::Q8_0, 2, 32, &[0; 34]).unwrap_err();
        assert!(
            e.to_string()
                .contains("34 bytes are not 2 rows of 34 bytes"),
            "{e}"
        );
        let e = pack::<f16>(QuantFormat::Q4_0, 1, 40, &[0; 18]).unwrap_err();
        assert!(e.to_string().contains("k = 40"), "{e}");
        let e = pack::<f16>(QuantFormat::Q4_0, 1, 0, &[]).unwrap_err();
        assert!(
            e.to_string().contains("k = 0 is not whole Q4_0 blocks"),
            "{e}"
        );
        let e = pack::<f16>(QuantFormat::Q8_0, usize::MAX, 32, &[0; 34]).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("34 bytes are not {} rows", usize::MAX)),
            "{e}"
        );
        assert!(unpack::<f16>(QuantFormat::Q8_0, usize::MAX, 32, &[0; 34]).is_none());
        let w8 = QuantFormat::Int8PerChannel;
        let e = pack::<f16>(w8, 1, 0, &[0; 4]).unwrap_err();
        assert!(
            e.to_string()
                .contains("k = 0 is not a positive count of int8 values"),
            "{e}"
        );
        let e = pack::<f16>(w8, usize::MAX, 8, &[0; 12]).unwrap_err();
        assert!(e.to_string().contains("12 bytes are not"), "{e}");
        assert!(unpack::<f16>(w8, 2, 8, &[0; 12]).is_none());
        assert!(unpack::<f16>(w8, usize::MAX, 8, &[0; 12]).is_none());
        assert!(unpack::<f16>(QuantFormat::Q4_0, 2, 32, &[0; 18]).is_none());
        assert!(unpack::<f32>(QuantFormat::Q4_0, 1, 32, &[0; 18]).is_none());
    }
}
