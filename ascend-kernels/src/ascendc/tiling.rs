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
/// The most parts a split decode context has (`PA_MAX_PARTITIONS`).
pub const PA_MAX_PARTITIONS: usize = 64;
/// Block-table entries an attention task stages in the UB (`PA_TABLE_STAGE`).
pub const PA_TABLE_STAGE: usize = 512;

const BLOCK: usize = 32;

/// Bytes of work tensor the count form of `ReduceSum` documents for `count` floats (mirrors
/// `ReduceSumWorkFloats` in `kernels/common.h`).
fn reduce_sum_work_bytes(count: usize) -> usize {
    (count / 64).max(1).div_ceil(8).saturating_mul(BLOCK)
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
    /// Decode: float partial rows per query row (a power of two); 0 for prefill.
    pub acc_rows: u32,
    /// Decode: parts each context is split into across cores (1: none).
    pub partitions: u32,
    /// Prefill: query tokens per task (1 for decode).
    pub tile_rows: u32,
    /// KV heads a task reads together (adjacent in each token row of the cache: one longer
    /// burst per token); divides `num_kv_heads`.
    pub kv_heads_per_task: u32,
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
    assert!(std::mem::size_of::<PagedAttentionTiling>() == 56);
    assert!(std::mem::size_of::<PrefillAttentionTiling>() == 64);
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

/// What one attention kernel launch is tiled as (mirrors the arguments of `Init` in
/// `paged_attention.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionLayout {
    /// Query rows a task holds: its query heads times its tokens.
    pub rows: usize,
    /// KV heads a task reads together.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_size: usize,
    /// Tokens of K/V staged at a time.
    pub chunk: usize,
    /// Float partial rows per query row (decode's MulAddDst accumulation); 0 for prefill's
    /// single float row with V cast to float.
    pub acc_rows: usize,
    /// Whether a task writes a partial result (a split decode).
    pub partial: bool,
    /// Bytes per element of the data.
    pub size: usize,
}

/// Unified Buffer bytes the attention kernel uses (mirrors `Init`).
pub fn attention_ub(l: &AttentionLayout) -> usize {
    let AttentionLayout {
        rows,
        kv_heads,
        head_size: hs,
        chunk: n,
        acc_rows,
        partial,
        size,
    } = *l;
    if any_huge(&[rows, kv_heads, hs, n, acc_rows, size]) {
        return usize::MAX;
    }
    let npad = n.div_ceil(64) * 64;
    let small = rows.div_ceil(8) * 8;
    let out = if partial {
        (rows * hs * size).max(rows * (hs + 16) * 4)
    } else {
        rows * hs * size
    };
    let kv = n * kv_heads * hs;
    2 * r32(kv * size)                                                  // K and V
        + r32(rows * hs * size)                                         // the query rows
        + r32(out)                                                      // results
        + r32(n * 64 * 4)                                               // 64-float partial rows
        + r32(rows * npad * 4)                                          // scores
        + if acc_rows > 1 && size == 2 { r32(rows * npad * 2) } else { BLOCK } // weights as T
        + if acc_rows > 1 { BLOCK } else { n.div_ceil(8) * 8 * BLOCK }  // weights spread (decode: in the partial rows)
        + r32(rows * hs * acc_rows.max(1) * 4)                          // accumulators
        + if acc_rows == 0 && size == 2 { r32(kv * 4) } else { BLOCK }  // V as float
        + r32(rows * hs * 4)                                            // results in float
        + 5 * small * BLOCK                                             // per-row blocks
        + r32(4 * small * 4)                                            // per-row values
        + PA_TABLE_STAGE * 4                                            // staged table entries
        + BLOCK // the status word
}

/// Unified Buffer bytes the merge of a split decode uses (mirrors its `Init`).
pub fn attention_merge_ub(group: usize, head_size: usize, parts: usize, size: usize) -> usize {
    if any_huge(&[group, head_size, parts, size]) {
        return usize::MAX;
    }
    let small = parts.div_ceil(8) * 8;
    r32(group * parts * (head_size + 16) * 4)
        + r32(group * head_size * size)
        + r32(group * head_size * 4)
        + r32(parts * 64 * 4)
        + small * BLOCK
        + r32(4 * small * 4)
        + 9 * BLOCK
}

/// Checks what every attention tiling needs of the heads.
fn attention_heads(
    op: &'static str,
    num_heads: usize,
    c: &CacheShape,
    size: usize,
) -> Result<usize> {
    let group = num_heads / c.num_kv_heads.max(1);
    if group > PA_MAX_GROUP {
        return Err(refuse(
            op,
            format!(
                "{group} query heads per KV head; the Ascend C kernel handles at most {PA_MAX_GROUP}"
            ),
        ));
    }
    aligned(op, "head_size", c.head_size, size)?;
    aligned(op, "head_size in float", c.head_size, 4)?;
    if c.head_size > PA_MAX_HEAD_SIZE {
        return Err(refuse(
            op,
            format!(
                "head_size {} is past the {PA_MAX_HEAD_SIZE} the Ascend C kernel handles (a token \
                 row is a level-0 repeat stride, at most 255 blocks of 32 bytes)",
                c.head_size
            ),
        ));
    }
    Ok(group)
}

fn window(op: &'static str, w: Option<usize>) -> Result<u32> {
    match w {
        None => Ok(0),
        Some(0) => Err(refuse(op, "sliding_window must be at least 1".into())),
        Some(w) => u32_of(op, "sliding_window", w),
    }
}

/// The largest chunk (at most [`PA_MAX_CHUNK`] tokens) whose buffers fit. A chunk may span cache
/// blocks (the kernel copies each block's rows into it), so the block size does not bound it.
fn largest_chunk(layout: impl Fn(usize) -> AttentionLayout) -> Option<usize> {
    (1..=PA_MAX_CHUNK)
        .rev()
        .find(|n| attention_ub(&layout(*n)) <= UB_BUDGET)
}

/// Float partial rows decode accumulates each query row into (a power of two): enough that a
/// MulAddDst instruction covers many tokens, few enough to leave the UB to the K/V chunk.
pub const PA_ACC_ROWS: usize = 32;

/// The most KV heads a decode task reads together.
pub const PA_MAX_KV_PER_TASK: usize = 2;

/// The parts to split each of `pairs` contexts into over `cores` cores: the fewest that come
/// within 5 % of the best balance (the most work any core gets), at most `most`.
fn balanced_parts(pairs: usize, cores: usize, most: usize) -> usize {
    if pairs == 0 {
        return 1;
    }
    let load = |p: usize| pairs.saturating_mul(p).div_ceil(cores.max(1)) as f64 / p as f64;
    let best = (1..=most.max(1)).map(load).fold(f64::INFINITY, f64::min);
    (1..=most.max(1))
        .find(|&p| load(p) <= best * 1.05)
        .unwrap_or(1)
}

/// Tiles paged decode attention for elements of `size` bytes over `cores` vector cores. A task
/// is (sequence, KV heads, part): up to [`PA_MAX_KV_PER_TASK`] adjacent KV heads together (a
/// longer burst per token of the strided cache rows) when their buffers still fit with a chunk
/// of at least 64 tokens; the largest chunk (at most [`PA_MAX_CHUNK`] tokens) and the most
/// partial rows (at most [`PA_ACC_ROWS`]) that fit the UB; and each context split into the
/// parts that balance the tasks over the cores best (flash-decoding when pairs leave cores
/// idle), merged afterwards.
pub fn paged_attention(
    p: &PagedAttention,
    size: usize,
    cores: u32,
) -> Result<PagedAttentionTiling> {
    const OP: &str = "paged_attention";
    let c = &p.cache;
    let group = attention_heads(OP, p.num_heads, c, size)?;
    // Parts of at least 64 tokens of the longest context a table row reaches.
    let most_parts =
        (p.max_blocks_per_seq.saturating_mul(c.block_size) / 64).clamp(1, PA_MAX_PARTITIONS);
    // Every (KV heads per task, partial rows) whose buffers fit with the largest chunk they
    // allow, scored by the cost model's figures: a chunk's vector work (each instruction's
    // issue and pipeline latency, each 256-byte repeat) against its loads at a core's share of
    // the HBM (each strided run a transaction), per token and KV head.
    let f = super::cost::Figures::ASCEND_910B;
    let share = f.hbm_bytes_per_s / f.clock_hz / f.vector_cores as f64;
    // Per row: Q.K (a MulAddDst per piece, a reduction, a difference; the zeroing is once per
    // chunk) and P.V (by (token, piece) repeats when the kernel can: one KV head per task,
    // whole pieces; else a MulAddDst per piece and acc_rows tokens), as the kernel issues them.
    let cost = |kv: usize, n: usize, acc_rows: usize| -> f64 {
        let (rows, hs) = ((group * kv) as f64, c.head_size as f64);
        let nf = n as f64;
        let pieces = c.head_size.div_ceil(64) as f64;
        let by_piece = kv == 1 && c.head_size.is_multiple_of(64);
        let (pv_instrs, spread) = if by_piece {
            (n.div_ceil(acc_rows) as f64 + pieces, pieces)
        } else {
            (pieces * n.div_ceil(acc_rows) as f64 + 1.0, 1.0)
        };
        let instrs = rows * (5.0 + pieces + pv_instrs) + 25.0;
        let repeats = nf
            + rows
                * ((2.0 * pieces + 1.0) * nf
                    + spread * nf / 8.0
                    + acc_rows as f64 * hs / 64.0
                    + 4.0);
        let vector = instrs * f.vector_issue_cycles + repeats * f.repeat_cycles;
        let bytes = 2.0 * nf * kv as f64 * hs * size as f64;
        let runs = if kv == c.num_kv_heads { 2.0 } else { 2.0 * nf };
        let engine =
            bytes / f.mte_bytes_per_cycle + runs * f.burst_cycles + 2.0 * f.copy_setup_cycles;
        let loads = engine.max(bytes / share);
        vector.max(loads) / (nf * kv as f64)
    };
    let mut choice: Option<(f64, usize, usize, usize, usize)> = None;
    for kv in 1..=PA_MAX_KV_PER_TASK.min(c.num_kv_heads) {
        if !c.num_kv_heads.is_multiple_of(kv) {
            continue;
        }
        let pairs = p.num_seqs.saturating_mul(c.num_kv_heads / kv);
        let mut parts = balanced_parts(pairs, cores as usize, most_parts);
        while parts > 1 && attention_merge_ub(1, c.head_size, parts, size) > UB_BUDGET {
            parts -= 1;
        }
        for acc_rows in [PA_ACC_ROWS, 16, 8, 4, 2] {
            let layout = |n: usize| AttentionLayout {
                rows: group * kv,
                kv_heads: kv,
                head_size: c.head_size,
                chunk: n,
                acc_rows,
                partial: parts > 1,
                size,
            };
            let Some(n) = largest_chunk(layout) else {
                continue;
            };
            let score = cost(kv, n, acc_rows);
            if choice.is_none_or(|b| score < b.0) {
                choice = Some((score, kv, parts, n, acc_rows));
            }
        }
    }
    let (_, kv, parts, chunk, acc_rows) =
        choice.ok_or_else(|| no_chunk_fits(OP, group, c.head_size))?;
    if acc_rows * c.head_size / 64 > 255 {
        return Err(refuse(
            OP,
            format!(
                "head_size {} is too wide for the decode accumulators",
                c.head_size
            ),
        ));
    }
    PagedAttentionTiling {
        acc_rows: acc_rows as u32,
        partitions: parts as u32,
        tile_rows: 1,
        kv_heads_per_task: kv as u32,
        ..attention_shape(OP, p.num_seqs, p.num_heads, c, p.max_blocks_per_seq, chunk)?
    }
    .with_window(OP, p.scale, p.sliding_window)
}

/// The error when not even a one-token chunk fits the UB.
fn no_chunk_fits(op: &'static str, group: usize, head_size: usize) -> Error {
    refuse(
        op,
        format!(
            "even one token per chunk needs more Unified Buffer than the {UB_BUDGET} a 910B \
             vector core has (group {group}, head_size {head_size})"
        ),
    )
}

/// The attention tiling's shape fields, each checked to fit a `u32`; one task per sequence and
/// KV head, no split and no window until the caller sets them.
fn attention_shape(
    op: &'static str,
    num_seqs: usize,
    num_heads: usize,
    c: &CacheShape,
    max_blocks_per_seq: usize,
    chunk: usize,
) -> Result<PagedAttentionTiling> {
    Ok(PagedAttentionTiling {
        num_seqs: u32_of(op, "num_seqs", num_seqs)?,
        num_heads: u32_of(op, "num_heads", num_heads)?,
        num_kv_heads: u32_of(op, "num_kv_heads", c.num_kv_heads)?,
        head_size: u32_of(op, "head_size", c.head_size)?,
        block_size: u32_of(op, "block_size", c.block_size)?,
        num_blocks: u32_of(op, "num_blocks", c.num_blocks)?,
        max_blocks_per_seq: u32_of(op, "max_blocks_per_seq", max_blocks_per_seq)?,
        chunk: u32_of(op, "chunk", chunk)?,
        scale: 1.0,
        sliding_window: 0,
        acc_rows: 0,
        partitions: 1,
        tile_rows: 1,
        kv_heads_per_task: 1,
    })
}

impl PagedAttentionTiling {
    /// Sets the softmax scale and the window (checked to fit a `u32`).
    fn with_window(
        self,
        op: &'static str,
        scale: f32,
        sliding_window: Option<usize>,
    ) -> Result<Self> {
        Ok(Self {
            scale,
            sliding_window: window(op, sliding_window)?,
            ..self
        })
    }
}

impl PagedAttentionTiling {
    /// Tasks of the decode launch: (sequence, KV heads, part).
    pub fn tasks(&self) -> usize {
        (self.num_seqs as usize)
            .saturating_mul(self.kv_groups())
            .saturating_mul(self.partitions.max(1) as usize)
    }

    /// Groups of KV heads a task reads together.
    pub fn kv_groups(&self) -> usize {
        self.num_kv_heads as usize / self.kv_heads_per_task.max(1) as usize
    }

    /// Floats of the workspace a split decode writes its parts to (0 without a split).
    pub fn workspace_floats(&self) -> usize {
        if self.partitions <= 1 {
            return 0;
        }
        (self.num_seqs as usize)
            .saturating_mul(self.num_heads as usize)
            .saturating_mul(self.partitions as usize)
            .saturating_mul(self.head_size as usize + 16)
    }
}

/// Query tokens per prefill task the tiling tries, largest first.
const PREFILL_TILES: [usize; 5] = [16, 8, 4, 2, 1];

/// Tiles paged prefill attention over `cores` vector cores: the most query tokens per task (at
/// most 16) that still give every core a task and whose buffers (with the largest chunk that
/// fits) fit the UB; each task reads each K/V block of its sequence once for all its rows.
pub fn paged_prefill_attention(
    p: &PrefillAttention,
    size: usize,
    cores: u32,
) -> Result<PrefillAttentionTiling> {
    const OP: &str = "paged_prefill_attention";
    let c = &p.cache;
    let group = attention_heads(OP, p.num_heads, c, size)?;
    let pairs = p.num_tokens.saturating_mul(c.num_kv_heads);
    let busy = pairs.min(cores as usize).max(1);
    let mut choice = None;
    for tile in PREFILL_TILES {
        let tasks = p.num_tokens.div_ceil(tile).saturating_mul(c.num_kv_heads);
        if tile > 1 && tasks < busy {
            continue;
        }
        let layout = |n: usize| AttentionLayout {
            rows: group * tile,
            kv_heads: 1,
            head_size: c.head_size,
            chunk: n,
            acc_rows: 0,
            partial: false,
            size,
        };
        if let Some(n) = largest_chunk(layout) {
            // A tile of fewer tokens that keeps a long chunk beats a big tile of short chunks.
            if tile == 1 || n >= 64 {
                choice = Some((tile, n));
                break;
            }
        }
    }
    let (tile, chunk) = choice.ok_or_else(|| no_chunk_fits(OP, group, c.head_size))?;
    Ok(PrefillAttentionTiling {
        attn: PagedAttentionTiling {
            tile_rows: tile as u32,
            ..attention_shape(OP, p.num_seqs, p.num_heads, c, p.max_blocks_per_seq, chunk)?
        }
        .with_window(OP, p.scale, p.sliding_window)?,
        num_tokens: u32_of(OP, "num_tokens", p.num_tokens)?,
        reserved: 0,
    })
}

impl PrefillAttentionTiling {
    /// Tasks of the prefill launch: (tile of query tokens, KV head).
    pub fn tasks(&self) -> usize {
        (self.num_tokens as usize)
            .div_ceil(self.attn.tile_rows.max(1) as usize)
            .saturating_mul(self.attn.num_kv_heads as usize)
    }
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
    fn attention_tiles_fit_the_unified_buffer_and_split_only_when_cores_idle() {
        let cache = CacheShape {
            num_blocks: 64,
            block_size: 128,
            num_kv_heads: 8,
            head_size: 128,
        };
        let p = PagedAttention {
            num_seqs: 32,
            num_heads: 32,
            cache,
            max_blocks_per_seq: 16,
            scale: 0.1,
            sliding_window: None,
        };
        for size in [2, 4] {
            let t = paged_attention(&p, size, 48).unwrap();
            let l = AttentionLayout {
                rows: 4 * t.kv_heads_per_task as usize,
                kv_heads: t.kv_heads_per_task as usize,
                head_size: 128,
                chunk: t.chunk as usize,
                acc_rows: t.acc_rows as usize,
                partial: false,
                size,
            };
            assert!(attention_ub(&l) <= UB_BUDGET, "{t:?}");
            assert!(t.acc_rows.is_power_of_two());
            // 256 (sequence, KV head) pairs on 48 cores leave a last wave of 16 tasks: two
            // parts each make 512 tasks, 10.7 a core against 6 whole pairs' worth.
            assert_eq!(t.partitions, 2, "{t:?}");
        }
        // 96 pairs fill 48 cores exactly: no split.
        let even = PagedAttention { num_seqs: 12, ..p };
        assert_eq!(paged_attention(&even, 2, 48).unwrap().partitions, 1);
        // One sequence, 8 KV heads, 48 cores: 6 parts each; 40 cores: 5.
        let one = PagedAttention { num_seqs: 1, ..p };
        assert_eq!(paged_attention(&one, 2, 48).unwrap().partitions, 6);
        assert_eq!(paged_attention(&one, 2, 40).unwrap().partitions, 5);
        assert_eq!(paged_attention(&one, 2, 48).unwrap().tasks(), 48);
        // Never parts of fewer than 64 tokens of the longest context (2 blocks of 128).
        let short = PagedAttention {
            max_blocks_per_seq: 2,
            ..one
        };
        assert_eq!(paged_attention(&short, 2, 48).unwrap().partitions, 4);
        // Prefill: tiles of query tokens that keep every core busy.
        let pf = PrefillAttention {
            num_seqs: 4,
            num_tokens: 512,
            num_heads: 32,
            cache,
            max_blocks_per_seq: 16,
            scale: 0.1,
            sliding_window: None,
        };
        let t = paged_prefill_attention(&pf, 2, 48).unwrap();
        assert!(t.attn.tile_rows > 1 && t.tasks() >= 48, "{t:?}");
        let l = AttentionLayout {
            rows: 4 * t.attn.tile_rows as usize,
            kv_heads: 1,
            head_size: 128,
            chunk: t.attn.chunk as usize,
            acc_rows: 0,
            partial: false,
            size: 2,
        };
        assert!(attention_ub(&l) <= UB_BUDGET);
        let few = PrefillAttention {
            num_tokens: 3,
            ..pf
        };
        assert_eq!(
            paged_prefill_attention(&few, 2, 48).unwrap().attn.tile_rows,
            1
        );
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
        let e = paged_attention(&p, 2, 48).unwrap_err().to_string();
        assert!(e.contains("head_size 2048 is past the 2040"), "{e}");
    }
}
