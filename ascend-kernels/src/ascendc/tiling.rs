//! Host-side tiling for the Ascend C kernels: the `#[repr(C)]` mirrors of
//! `ascendc/kernels/tiling.h`, and the functions that fill them from a kernel's shape after
//! checking what the kernel needs (32-byte alignment of its rows, a Unified Buffer budget that
//! fits a 910B vector core). The UB sums mirror each kernel's `InitBuffer` calls, so a shape the
//! tiling accepts never overflows the UB in the kernel.

use ascend_hal::{Error, Result};

use crate::shapes::{
    CacheShape, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, RopeStyle, Rotary,
};

/// Bytes of Unified Buffer a 910B vector core leaves to a kernel (192 KiB minus the 8 KiB the
/// framework reserves).
pub const UB_BUDGET: usize = 184 * 1024;
/// Vector cores (AIV) of an Ascend 910B1/B2: 24 AI cores with two vector units each (a 910B3/B4
/// has 40). The ACL backend launches with its device's own count
/// (`AclDevice::vector_cores`, from `aclGetDeviceCapability`); this is the host runners' and the
/// cost model's default.
pub const VECTOR_CORES: u32 = 48;
/// The most query heads per KV head the attention kernel handles (`PA_MAX_GROUP`).
pub const PA_MAX_GROUP: usize = 16;
/// Heads the RoPE kernel rotates per vector instruction (`ROPE_HEADS_PER_PASS`).
pub const ROPE_HEADS_PER_PASS: usize = 16;
/// The largest head the attention kernel handles: a float token row is a level-0 repeat stride,
/// at most 255 blocks of 32 bytes.
pub const PA_MAX_HEAD_SIZE: usize = 255 * 8;
/// The most tokens of K/V the attention kernel stages at a time (`PA_MAX_CHUNK`).
pub const PA_MAX_CHUNK: usize = 128;

const BLOCK: usize = 32;

/// Bytes of work tensor the count form of `ReduceSum` documents for `count` floats (mirrors
/// `ReduceSumWorkFloats` in `kernels/common.h`).
fn reduce_sum_work_bytes(count: usize) -> usize {
    (count / 64).max(1).div_ceil(8).saturating_mul(BLOCK)
}

/// Bytes of work tensor the count form of `ReduceMax` needs for `count` floats (a value and an
/// index per repeat; mirrors `ReduceMaxWorkFloats`).
fn reduce_max_work_bytes(count: usize) -> usize {
    (2 * (count / 64).max(1)).div_ceil(8).saturating_mul(BLOCK)
}

/// Rounds up to whole 32-byte blocks, as `TPipe::InitBuffer` does.
fn r32(bytes: usize) -> usize {
    bytes.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// No dimension of a kernel whose buffers fit the UB comes near this many elements: the UB
/// formulas answer "does not fit" (`usize::MAX`) for anything larger, so their products of up
/// to three dimensions cannot overflow.
const UB_DIM_LIMIT: usize = 1 << 20;

fn any_huge(dims: &[usize]) -> bool {
    dims.iter().any(|&d| d > UB_DIM_LIMIT)
}

/// `ReshapeAndCacheTiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReshapeAndCacheTiling {
    /// Tokens.
    pub num_tokens: u32,
    /// Elements per token row (`kv_heads * head_size`).
    pub row: u32,
    /// Slots in each cache.
    pub num_slots: u32,
    /// Padding, zero.
    pub reserved: u32,
}

/// `PagedAttentionTiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PagedAttentionTiling {
    /// Sequences.
    pub num_seqs: u32,
    /// Query heads.
    pub num_heads: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Elements per head.
    pub head_size: u32,
    /// Tokens per cache block.
    pub block_size: u32,
    /// Cache blocks.
    pub num_blocks: u32,
    /// Block-table row width.
    pub max_blocks_per_seq: u32,
    /// Tokens of K/V staged in the UB at a time.
    pub chunk: u32,
    /// Softmax scale.
    pub scale: f32,
    /// Attend to the last this many positions; 0 for all.
    pub sliding_window: u32,
}

/// `ArkPrefillAttentionTiling`: the attention tiling over `num_seqs` sequences, and the query
/// rows of the chunk.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillAttentionTiling {
    /// As for decode, with `num_seqs` the sequences of the batch.
    pub attn: PagedAttentionTiling,
    /// Query rows (tokens) of the batch.
    pub num_tokens: u32,
    /// Zero.
    pub reserved: u32,
}

/// `ArkCopyBlocksTiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBlocksTiling {
    /// `(src, dst)` pairs.
    pub num_pairs: u32,
    /// Blocks in each cache.
    pub num_blocks: u32,
    /// Elements per block.
    pub block_elems: u32,
    /// Elements per GM -> UB -> GM piece.
    pub chunk: u32,
}

/// `RopeTiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeTiling {
    /// Tokens.
    pub num_tokens: u32,
    /// Query heads.
    pub num_heads: u32,
    /// Key heads.
    pub num_kv_heads: u32,
    /// Elements per head.
    pub head_size: u32,
    /// Leading elements that rotate.
    pub rotary_dim: u32,
    /// Rows of the cos/sin cache.
    pub max_position: u32,
    /// 1 for the GPT-J pairing (adjacent elements), 0 for NeoX (the two halves).
    pub gptj: u32,
}

/// `RmsNormTiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormTiling {
    /// Rows.
    pub num_tokens: u32,
    /// Elements per row.
    pub hidden: u32,
    /// Added to the mean square.
    pub eps: f32,
    /// 1 for the fused residual add.
    pub fused: u32,
    /// Buffers per queue: 2, or 1 when double-buffered rows do not fit.
    pub buffers: u32,
}

const _: () = {
    assert!(std::mem::size_of::<ReshapeAndCacheTiling>() == 16);
    assert!(std::mem::size_of::<PagedAttentionTiling>() == 40);
    assert!(std::mem::size_of::<PrefillAttentionTiling>() == 48);
    assert!(std::mem::size_of::<CopyBlocksTiling>() == 16);
    assert!(std::mem::size_of::<RopeTiling>() == 28);
    assert!(std::mem::size_of::<RmsNormTiling>() == 20);
};

fn refuse(op: &'static str, message: String) -> Error {
    Error::InvalidArgument { op, message }
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        refuse(
            op,
            format!("{what} = {v} does not fit the kernel's u32 tiling"),
        )
    })
}

/// `bytes` must be whole 32-byte blocks: what `DataCopy` moves and where vector operands start.
fn aligned(op: &'static str, what: &str, elems: usize, size: usize) -> Result<()> {
    if !elems.saturating_mul(size).is_multiple_of(BLOCK) {
        return Err(refuse(
            op,
            format!(
                "the Ascend C kernel needs {what} ({elems} elements x {size} bytes = {} bytes) to \
                 be a multiple of 32 bytes",
                elems.saturating_mul(size)
            ),
        ));
    }
    Ok(())
}

fn fits(op: &'static str, ub: usize, detail: &str) -> Result<()> {
    if ub > UB_BUDGET {
        return Err(refuse(
            op,
            format!(
                "needs {ub} bytes of Unified Buffer ({detail}), more than the {UB_BUDGET} a 910B \
                 vector core leaves to kernels"
            ),
        ));
    }
    Ok(())
}

/// Unified Buffer bytes `reshape_and_cache` uses: one double-buffered queue of a token row, and
/// the status word's block.
pub fn reshape_and_cache_ub(row: usize, size: usize) -> usize {
    if any_huge(&[row, size]) {
        return usize::MAX;
    }
    2 * r32(row * size) + BLOCK
}

/// Tiles `reshape_and_cache` for elements of `size` bytes.
pub fn reshape_and_cache(p: &ReshapeAndCache, size: usize) -> Result<ReshapeAndCacheTiling> {
    const OP: &str = "reshape_and_cache";
    let row = p.cache.token_stride();
    aligned(OP, "a token row (kv_heads * head_size)", row, size)?;
    fits(OP, reshape_and_cache_ub(row, size), "2 x one token row")?;
    Ok(ReshapeAndCacheTiling {
        num_tokens: u32_of(OP, "num_tokens", p.num_tokens)?,
        row: u32_of(OP, "row", row)?,
        num_slots: u32_of(OP, "num_slots", p.cache.slots())?,
        reserved: 0,
    })
}

/// Unified Buffer bytes paged attention uses with `chunk` tokens staged (mirrors `Init`).
pub fn paged_attention_ub(group: usize, head_size: usize, chunk: usize, size: usize) -> usize {
    if any_huge(&[group, head_size, chunk, size]) {
        return usize::MAX;
    }
    let rows = group * head_size;
    let kv = chunk * head_size;
    2 * r32(rows * size) * 2          // query and output queues
        + 2 * r32(kv * size) * 2      // K and V queues
        + 2 * r32(rows * 4)           // scaled queries and accumulators, float
        + 2 * r32(kv * 4)             // K and V chunks, float
        + r32(chunk * 64 * 4)         // one 64-float row per token
        + r32(chunk.div_ceil(8) * 8 * 4) // scores
        + chunk.div_ceil(8) * 8 * BLOCK // each weight spread over a block
        + PA_MAX_GROUP * 2 * BLOCK    // running max and sum per head
        + BLOCK                       // reduction results
        + reduce_sum_work_bytes(head_size).max(reduce_max_work_bytes(chunk)) // reductions' work
        + BLOCK // the status word
}

/// Tiles paged decode attention for elements of `size` bytes: picks the largest chunk (at most
/// a block and [`PA_MAX_CHUNK`]) whose buffers fit the UB.
pub fn paged_attention(p: &PagedAttention, size: usize) -> Result<PagedAttentionTiling> {
    const OP: &str = "paged_attention";
    let c = &p.cache;
    let group = p.num_heads / c.num_kv_heads.max(1);
    if group > PA_MAX_GROUP {
        return Err(refuse(
            OP,
            format!(
                "{} query heads per KV head; the Ascend C kernel handles at most {PA_MAX_GROUP}",
                group
            ),
        ));
    }
    aligned(OP, "head_size", c.head_size, size)?;
    aligned(OP, "head_size in float", c.head_size, 4)?;
    if c.head_size > PA_MAX_HEAD_SIZE {
        return Err(refuse(
            OP,
            format!(
                "head_size {} is past the {PA_MAX_HEAD_SIZE} the Ascend C kernel handles (a token \
                 row is a level-0 repeat stride, at most 255 blocks of 32 bytes)",
                c.head_size
            ),
        ));
    }
    let most = c.block_size.min(PA_MAX_CHUNK);
    let chunk = (1..=most)
        .rev()
        .find(|&n| paged_attention_ub(group, c.head_size, n, size) <= UB_BUDGET)
        .ok_or_else(|| {
            refuse(
                OP,
                format!(
                    "even one token per chunk needs {} bytes of Unified Buffer (group {group}, \
                     head_size {}), more than the {UB_BUDGET} a 910B vector core has",
                    paged_attention_ub(group, c.head_size, 1, size),
                    c.head_size
                ),
            )
        })?;
    let window = match p.sliding_window {
        None => 0,
        Some(0) => return Err(refuse(OP, "sliding_window must be at least 1".into())),
        Some(w) => u32_of(OP, "sliding_window", w)?,
    };
    Ok(PagedAttentionTiling {
        num_seqs: u32_of(OP, "num_seqs", p.num_seqs)?,
        num_heads: u32_of(OP, "num_heads", p.num_heads)?,
        num_kv_heads: u32_of(OP, "num_kv_heads", c.num_kv_heads)?,
        head_size: u32_of(OP, "head_size", c.head_size)?,
        block_size: u32_of(OP, "block_size", c.block_size)?,
        num_blocks: u32_of(OP, "num_blocks", c.num_blocks)?,
        max_blocks_per_seq: u32_of(OP, "max_blocks_per_seq", p.max_blocks_per_seq)?,
        chunk: chunk as u32,
        scale: p.scale,
        sliding_window: window,
    })
}

/// Tiles paged prefill attention: the decode kernel's tiling (the same class runs it, one task
/// per query token and KV head) and the chunk's query rows.
pub fn paged_prefill_attention(
    p: &PrefillAttention,
    size: usize,
) -> Result<PrefillAttentionTiling> {
    let attn = paged_attention(
        &PagedAttention {
            num_seqs: p.num_seqs,
            num_heads: p.num_heads,
            cache: p.cache,
            max_blocks_per_seq: p.max_blocks_per_seq,
            scale: p.scale,
            sliding_window: p.sliding_window,
        },
        size,
    )
    .map_err(|e| match e {
        Error::InvalidArgument { message, .. } => refuse("paged_prefill_attention", message),
        other => other,
    })?;
    Ok(PrefillAttentionTiling {
        attn,
        num_tokens: u32_of("paged_prefill_attention", "num_tokens", p.num_tokens)?,
        reserved: 0,
    })
}

/// Bytes of one copy_blocks queue buffer at most (two of them, double-buffered): large enough
/// that a piece is a long burst, small enough to leave the UB mostly free.
pub const COPY_CHUNK_BYTES: usize = 32 * 1024;

/// Tiles `copy_blocks` over `num_pairs` pairs of the cache `c`, elements of `size` bytes.
pub fn copy_blocks(c: &CacheShape, num_pairs: usize, size: usize) -> Result<CopyBlocksTiling> {
    const OP: &str = "copy_blocks";
    let block = c.block_stride();
    aligned(OP, "a cache block", block, size)?;
    let chunk = block.min(COPY_CHUNK_BYTES / size.max(1));
    Ok(CopyBlocksTiling {
        num_pairs: u32_of(OP, "pairs", num_pairs)?,
        num_blocks: u32_of(OP, "num_blocks", c.num_blocks)?,
        block_elems: u32_of(OP, "block elements", block)?,
        chunk: chunk as u32,
    })
}

/// Unified Buffer bytes the RoPE kernel uses (mirrors `Init`).
pub fn rotary_embedding_ub(p: &Rotary, size: usize) -> usize {
    if any_huge(&[p.num_heads, p.num_kv_heads, p.head_size, p.rotary_dim, size]) {
        return usize::MAX;
    }
    let row = p.num_heads.max(p.num_kv_heads) * p.head_size;
    let gptj = match p.style {
        RopeStyle::Neox => 0,
        // Offsets, signs / C / S of one head, and the pair-swapped row.
        RopeStyle::GptJ => 3 * r32(p.head_size * 4) + 3 * r32(p.head_size * 4) + r32(row * 4),
    };
    2 * r32((p.rotary_dim + 16) * 4) // cos/sin rows and the constant blocks
        + 2 * 2 * r32(row * size)
        + r32(row * 4)
        + 3 * ROPE_HEADS_PER_PASS * 64 * 4 // heads x 64-float temporaries
        + gptj
        + BLOCK // the status word
}

/// Tiles RoPE (either pairing) for elements of `size` bytes.
pub fn rotary_embedding(p: &Rotary, size: usize) -> Result<RopeTiling> {
    const OP: &str = "rotary_embedding";
    aligned(OP, "half of rotary_dim", p.rotary_dim / 2, size)?;
    aligned(OP, "head_size", p.head_size, size)?;
    aligned(OP, "head_size in float", p.head_size, 4)?;
    if p.head_size > PA_MAX_HEAD_SIZE {
        return Err(refuse(
            OP,
            format!(
                "head_size {} is past the {PA_MAX_HEAD_SIZE} the Ascend C kernel handles (a head \
                 is a level-0 repeat stride, at most 255 blocks of 32 bytes)",
                p.head_size
            ),
        ));
    }
    fits(
        OP,
        rotary_embedding_ub(p, size),
        "a token's query row x 4, in float, cos/sin",
    )?;
    Ok(RopeTiling {
        num_tokens: u32_of(OP, "num_tokens", p.num_tokens)?,
        num_heads: u32_of(OP, "num_heads", p.num_heads)?,
        num_kv_heads: u32_of(OP, "num_kv_heads", p.num_kv_heads)?,
        head_size: u32_of(OP, "head_size", p.head_size)?,
        rotary_dim: u32_of(OP, "rotary_dim", p.rotary_dim)?,
        max_position: u32_of(OP, "max_position", p.max_position)?,
        gptj: u32::from(p.style == RopeStyle::GptJ),
    })
}

/// Unified Buffer bytes the RMSNorm kernel uses with `buffers` per queue (mirrors `Init`).
pub fn rms_norm_ub(hidden: usize, size: usize, buffers: usize) -> usize {
    if any_huge(&[hidden, size, buffers]) {
        return usize::MAX;
    }
    3 * buffers * r32(hidden * size) + 3 * r32(hidden * 4) + BLOCK + reduce_sum_work_bytes(hidden)
}

/// Tiles RMSNorm (`fused`: with the residual add) for elements of `size` bytes: double-buffered
/// when that fits the UB, else single-buffered.
pub fn rms_norm(p: &RmsNorm, size: usize, fused: bool) -> Result<RmsNormTiling> {
    let op = if fused {
        "fused_add_rms_norm"
    } else {
        "rms_norm"
    };
    aligned(op, "hidden", p.hidden, size)?;
    let buffers = if rms_norm_ub(p.hidden, size, 2) <= UB_BUDGET {
        2
    } else {
        1
    };
    fits(
        op,
        rms_norm_ub(p.hidden, size, buffers),
        "3 single-buffered rows and 3 float rows",
    )?;
    Ok(RmsNormTiling {
        num_tokens: u32_of(op, "num_tokens", p.num_tokens)?,
        hidden: u32_of(op, "hidden", p.hidden)?,
        eps: p.eps,
        fused: fused as u32,
        buffers: buffers as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::CacheShape;

    #[test]
    fn attention_chunk_is_the_largest_that_fits() {
        let cache = CacheShape {
            num_blocks: 8,
            block_size: 128,
            num_kv_heads: 8,
            head_size: 128,
        };
        let p = PagedAttention {
            num_seqs: 1,
            num_heads: 64,
            cache,
            max_blocks_per_seq: 8,
            scale: 0.1,
            sliding_window: None,
        };
        for size in [2, 4] {
            let t = paged_attention(&p, size).unwrap();
            let n = t.chunk as usize;
            assert!(paged_attention_ub(8, 128, n, size) <= UB_BUDGET);
            assert!(n == 128 || paged_attention_ub(8, 128, n + 1, size) > UB_BUDGET);
        }
        assert_eq!(paged_attention(&p, 2).unwrap().chunk, 72);
        assert_eq!(paged_attention(&p, 4).unwrap().chunk, 48);
    }

    #[test]
    fn refusals_name_the_rule() {
        let p = RmsNorm {
            num_tokens: 1,
            hidden: 12,
            eps: 1e-6,
        };
        let e = rms_norm(&p, 2, false).unwrap_err().to_string();
        assert!(
            e.contains("hidden (12 elements x 2 bytes = 24 bytes)"),
            "{e}"
        );
        let p = RmsNorm {
            num_tokens: 1,
            hidden: 8192,
            eps: 1e-6,
        };
        let e = rms_norm(&p, 4, true).unwrap_err().to_string();
        assert!(
            e.contains("Unified Buffer") && e.contains("fused_add_rms_norm"),
            "{e}"
        );
        // A head wider than a level-0 repeat stride can span.
        let p = PagedAttention {
            num_seqs: 1,
            num_heads: 1,
            cache: CacheShape {
                num_blocks: 1,
                block_size: 1,
                num_kv_heads: 1,
                head_size: 2048,
            },
            max_blocks_per_seq: 1,
            scale: 1.0,
            sliding_window: None,
        };
        let e = paged_attention(&p, 2).unwrap_err().to_string();
        assert!(e.contains("head_size 2048 is past the 2040"), "{e}");
    }
}
