//! The CPU backend's layout of a block-quantized weight: GGUF's blocks with each row's whole
//! groups of 8 blocks interleaved, made once at upload
//! ([`KernelOps::pack_quant_weight`](crate::KernelOps::pack_quant_weight)).
//!
//! The x86 GEMM loop multiplies 8 blocks of a weight row at once, block `j` in 32-bit lane `j`
//! (see `qdot`). From GGUF's blocks it has to gather the 8 blocks' scales with 8 scalar loads
//! and transpose their values with 12 shuffles for every group; a batch-1 decode step pays that
//! for every weight byte it reads. Interleaved, the same group is 2 or 3 vector loads of
//! scales and 4 (`Q4_x`) or 8 (`Q8_0`) of values, already in lane order.
//!
//! A row of `k / 32` blocks keeps its size and its place: row `r` is bytes `r · row_bytes ..
//! (r + 1) · row_bytes` in both layouts, and group `g` (blocks `8g .. 8g + 8`) its bytes
//! `8g · B .. 8(g + 1) · B` (`B` the block's bytes). Within a whole group:
//!
//! | part | `Q8_0` | `Q4_0` | `Q4_1` |
//! | --- | --- | --- | --- |
//! | the 8 scales `d`, f16 | 16 bytes | 16 bytes | 16 bytes |
//! | the 8 minima `m`, f16 | — | — | 16 bytes |
//! | values: for each 4-byte word `i` of a block's values, word `i` of blocks 0..8 | 256 bytes | 128 bytes | 128 bytes |
//!
//! A last group of fewer than 8 blocks (`k / 32` not a multiple of 8) stays as GGUF's blocks.
//! [`QuantFormat::Int8PerChannel`] rows are not blocks and stay as they are.

use ascend_hal::Result;

use crate::quant::{weight_row_bytes, QuantFormat};

/// Blocks per interleaved group.
pub const GROUP: usize = 8;

/// Bytes before a block's values: its f16 scale, and for `Q4_1` its f16 minimum.
pub(crate) const fn head_bytes(f: QuantFormat) -> usize {
    match f {
        QuantFormat::Q4_1 => 4,
        QuantFormat::Int8PerChannel => 0,
        _ => 2,
    }
}

/// One whole group: `8` GGUF blocks `src` to the interleaved `dst` (`forward`), or back.
fn group(f: QuantFormat, src: &[u8], dst: &mut [u8], forward: bool) {
    let size = f.block_bytes();
    let head = head_bytes(f);
    let words = (size - head) / 4;
    // Moves `len` bytes between block j's bytes and the group's interleaved bytes.
    let mut piece = |at_block: usize, at_group: usize, len: usize| {
        let (from, to) = if forward {
            (at_block, at_group)
        } else {
            (at_group, at_block)
        };
        dst[to..to + len].copy_from_slice(&src[from..from + len]);
    };
    for j in 0..GROUP {
        for h in 0..head / 2 {
            piece(j * size + 2 * h, 2 * (h * GROUP + j), 2);
        }
        for i in 0..words {
            piece(
                j * size + head + 4 * i,
                GROUP * head + 4 * (i * GROUP + j),
                4,
            );
        }
    }
}

fn convert(
    op: &'static str,
    f: QuantFormat,
    n: usize,
    k: usize,
    bytes: &[u8],
    forward: bool,
) -> Result<Vec<u8>> {
    let row = weight_row_bytes(op, f, n, k, bytes.len())?;
    let mut out = bytes.to_vec();
    for (src, dst) in bytes.chunks_exact(row).zip(out.chunks_exact_mut(row)) {
        convert_row(f, src, dst, forward);
    }
    Ok(out)
}

/// The whole groups of one row `src` into `dst`, which starts as a copy of `src` (so a last,
/// partial group, which `chunks_exact` leaves out, stays as blocks, and `Int8PerChannel` rows
/// as they are).
fn convert_row(f: QuantFormat, src: &[u8], dst: &mut [u8], forward: bool) {
    if f.is_blocks() {
        let span = GROUP * f.block_bytes();
        for (s, d) in src.chunks_exact(span).zip(dst.chunks_exact_mut(span)) {
            group(f, s, d, forward);
        }
    }
}

/// GGUF's blocks of one interleaved row `row` of `f`, into `out`.
pub(crate) fn row_to_blocks(f: QuantFormat, row: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(row);
    convert_row(f, row, out, false);
}

/// The interleaved layout (above) of the `[n, k]` weight whose GGUF blocks are `blocks`
/// (`Int8PerChannel` rows: a copy).
///
/// # Errors
/// [`Error::InvalidArgument`](ascend_hal::Error::InvalidArgument) when `blocks` is not `n`
/// rows of `k` values of `format`.
pub fn interleave(format: QuantFormat, n: usize, k: usize, blocks: &[u8]) -> Result<Vec<u8>> {
    convert("interleave", format, n, k, blocks, true)
}

/// GGUF's blocks of an `[n, k]` weight in the interleaved layout: [`interleave`]'s inverse.
///
/// # Errors
/// [`Error::InvalidArgument`](ascend_hal::Error::InvalidArgument) when `bytes` is not `n`
/// rows of `k` values of `format`.
pub fn deinterleave(format: QuantFormat, n: usize, k: usize, bytes: &[u8]) -> Result<Vec<u8>> {
    convert("deinterleave", format, n, k, bytes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ascend_hal::Error;

    #[test]
    fn a_group_is_laid_out_as_documented_and_comes_back() {
        // Q4_1, k = 288: one whole group and one block; byte value = its GGUF position.
        let f = QuantFormat::Q4_1;
        let (n, k) = (2, 9 * 32);
        let blocks: Vec<u8> = (0..n * 9 * 20).map(|i| (i * 7 % 251) as u8).collect();
        let il = interleave(f, n, k, &blocks).unwrap();
        for r in 0..n {
            let (b, o) = (&blocks[r * 180..], &il[r * 180..]);
            for j in 0..GROUP {
                assert_eq!(o[2 * j..2 * j + 2], b[20 * j..20 * j + 2], "scale {j}");
                assert_eq!(
                    o[16 + 2 * j..18 + 2 * j],
                    b[20 * j + 2..20 * j + 4],
                    "min {j}"
                );
                for i in 0..4 {
                    let at = 32 + 4 * (i * GROUP + j);
                    assert_eq!(
                        o[at..at + 4],
                        b[20 * j + 4 + 4 * i..][..4],
                        "word {i} of {j}"
                    );
                }
            }
            assert_eq!(o[160..180], b[160..180], "the last, partial group stays");
        }
        assert_eq!(deinterleave(f, n, k, &il).unwrap(), blocks);
        for f in QuantFormat::EVERY {
            let k = 24 * 32;
            let len = f.row_bytes(k).unwrap() * 3;
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            let il = interleave(f, 3, k, &bytes).unwrap();
            assert_eq!(il.len(), bytes.len(), "{f}: the same bytes");
            assert_eq!(il != bytes, f.is_blocks(), "{f}");
            assert_eq!(deinterleave(f, 3, k, &il).unwrap(), bytes, "{f}");
        }
    }

    #[test]
    fn a_weight_that_is_not_whole_rows_is_refused() {
        let e = interleave(QuantFormat::Q8_0, 2, 64, &[0; 135]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    op: "interleave",
                    ..
                }
            ) && e
                .to_string()
                .contains("135 bytes are not 2 rows of k = 64 values of Q8_0"),
            "{e}"
        );
        let e = deinterleave(QuantFormat::Q4_0, 1, 48, &[0; 27]).unwrap_err();
        assert!(
            e.to_string().contains("whole Q4_0 blocks of 32 values"),
            "{e}"
        );
        let e = interleave(QuantFormat::Q4_1, 1, 0, &[]).unwrap_err();
        assert!(e.to_string().contains("k = 0"), "{e}");
    }
}
