//! The ops the ACL backend takes from CANN's fused attention (`aclnnFusedInferAttentionScoreV2`)
//! and cached-table RoPE (`aclnnRopeWithSinCosCache`), with the limits their CANN 8.1
//! documentation gives checked first: a call the operator cannot run is declined with the
//! reason (nothing queued) and goes to the op's next provider (see [`super::providers`]).
//!
//! Attention sees the paged caches as the operator's PageAttention layout for `BSH` queries,
//! `[num_blocks, block_size, kv_heads · head_size]` (the caches' own layout, no copy), the block
//! table as an int32 `[B, max_blocks]` tensor, and the sequence lengths as host arrays (the ops'
//! `seq_lens_host`, `query_start_loc_host`).
//!
//! - Decode (`paged_attention`): one launch, query `[num_seqs, 1, heads · head_size]`: the
//!   incremental branch, every valid key attended.
//! - Chunked prefill (`paged_prefill_attention`): the batch is walked in order; each run of
//!   consecutive one-token chunks is one incremental launch as above, each longer chunk one
//!   prompt launch `[1, chunk, heads · head_size]` over its block-table row with
//!   `actualSeqLengths` = the chunk and `actualSeqLengthsKv` = its context, `sparseMode` 3
//!   (right-down causal: the chunk's last query sees the whole context) and the optimised
//!   2048 × 2048 mask, or with a sliding window `sparseMode` 4 (band) with `preTokens` =
//!   window − 1 and `nextTokens` = 0. Every launch is a view into the op's buffers: no copies.
//!   (A batch of equal-length chunks could be one launch; vLLM's batches rarely are, and the
//!   launches are what vllm-ascend's per-request split makes too.)

use std::sync::Mutex;

use ascend_hal::acl::aclnn::{Aclnn, FusedAttentionAttrs, FusedAttentionTensors};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::{DType, DeviceBuffer, DevicePtr, DeviceRepr, Result, Stream, StreamExt};

use super::providers::{workspace_allocator, Served};
use crate::float::KvFloat;
use crate::ops::{device_arg, In, Out, PagedAttentionArgs, PrefillAttentionArgs, RotaryArgs};
use crate::shapes::CacheShape;

/// The operator, as reasons name it.
const FIA: &str = "aclnnFusedInferAttentionScoreV2";
/// `preTokens` / `nextTokens` when they do not limit anything (the operator's default).
const UNLIMITED: i64 = 2_147_483_647;
/// The side of the optimised mask the causal and band modes take.
const MASK_SIDE: usize = 2048;

fn declined(reason: String) -> Result<Served> {
    Ok(Served::Declined(reason))
}

/// The limits every call of the operator has (CANN 8.1 documentation, Atlas A2), as a reason.
fn limits<T: KvFloat>(num_heads: usize, c: &CacheShape) -> Option<String> {
    if !matches!(T::DTYPE, DType::F16 | DType::BF16) {
        return Some(format!(
            "{FIA} takes f16 or bf16 queries on Atlas A2, not {:?}",
            T::DTYPE
        ));
    }
    let group = num_heads / c.num_kv_heads.max(1);
    if num_heads > 256 || group > 64 {
        return Some(format!(
            "{FIA} takes at most 256 query heads and 64 per KV head, not {num_heads} and {group}"
        ));
    }
    if c.head_size > 512 {
        return Some(format!(
            "{FIA} takes heads of at most 512 elements, not {}",
            c.head_size
        ));
    }
    if c.num_kv_heads * c.head_size > 65535 {
        return Some(format!(
            "{FIA}'s (num_blocks, block_size, H) cache layout takes kv_heads · head_size below \
             65536, not {}",
            c.num_kv_heads * c.head_size
        ));
    }
    None
}

/// One launch of the operator, in device addresses.
struct Launch<'h> {
    batch: usize,
    seq: usize,
    heads: usize,
    cache: CacheShape,
    max_blocks: usize,
    query: DevicePtr,
    out: DevicePtr,
    key_cache: DevicePtr,
    value_cache: DevicePtr,
    table: DevicePtr,
    scale: f32,
    /// Valid queries per batch (the prompt branch).
    q_lens: Option<&'h [i64]>,
    kv_lens: &'h [i64],
    sparse_mode: i64,
    pre_tokens: i64,
    next_tokens: i64,
    mask: Option<DevicePtr>,
}

/// The device addresses both attention ops launch on.
struct Buffers {
    query: DevicePtr,
    out: DevicePtr,
    key_cache: DevicePtr,
    value_cache: DevicePtr,
    table: DevicePtr,
}

/// The attention buffers' addresses, each checked to be on the stream's device (the error
/// names the argument).
fn buffers<T: KvFloat>(
    op: &'static str,
    stream: &AclStream,
    query: &In<'_, AclBackend, T>,
    out: &Out<'_, AclBackend, T>,
    key_cache: &In<'_, AclBackend, T>,
    value_cache: &In<'_, AclBackend, T>,
    block_tables: &In<'_, AclBackend, i32>,
) -> Result<Buffers> {
    Ok(Buffers {
        query: device_arg::<AclBackend, T, _>(op, stream, "query", query)?,
        out: device_arg::<AclBackend, T, _>(op, stream, "out", out)?,
        key_cache: device_arg::<AclBackend, T, _>(op, stream, "key_cache", key_cache)?,
        value_cache: device_arg::<AclBackend, T, _>(op, stream, "value_cache", value_cache)?,
        table: device_arg::<AclBackend, i32, _>(op, stream, "block_tables", block_tables)?,
    })
}

fn offset(p: DevicePtr, elements: usize, size: usize) -> DevicePtr {
    DevicePtr(p.0 + (elements * size) as u64)
}

fn dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&v| v as i64).collect()
}

/// Queues one launch.
///
/// # Safety
/// The addresses are of buffers on `stream`'s device that hold what the launch's shapes say
/// and stay alive until the caller synchronises (the stream-order contract of every op).
unsafe fn launch<T: KvFloat>(stream: &AclStream, l: &Launch<'_>) -> Result<()> {
    let device = stream.device();
    let (aclnn, ws) = (Aclnn::load_for(&device)?, workspace_allocator(&device)?);
    let c = l.cache;
    let h = l.heads * c.head_size;
    let hkv = c.num_kv_heads * c.head_size;
    let cache_dims = dims(&[c.num_blocks, c.block_size, hkv]);
    let query = aclnn.contiguous(T::DTYPE, &dims(&[l.batch, l.seq, h]), l.query)?;
    let out = aclnn.contiguous(T::DTYPE, &dims(&[l.batch, l.seq, h]), l.out)?;
    let key = aclnn.tensor_list(vec![aclnn.contiguous(
        T::DTYPE,
        &cache_dims,
        l.key_cache,
    )?])?;
    let value = aclnn.tensor_list(vec![aclnn.contiguous(
        T::DTYPE,
        &cache_dims,
        l.value_cache,
    )?])?;
    let table = aclnn.contiguous(DType::I32, &dims(&[l.batch, l.max_blocks]), l.table)?;
    // The log-sum-exp output is a float [1] when it is not asked for.
    let lse_buf = DeviceBuffer::<AclBackend, f32>::alloc_in(&*ws, stream, 1)?;
    let lse = aclnn.contiguous(DType::F32, &[1], lse_buf.device_ptr())?;
    let kv_lens = aclnn.int_array(l.kv_lens)?;
    let q_lens = l.q_lens.map(|v| aclnn.int_array(v)).transpose()?;
    let mask = l
        .mask
        .map(|m| aclnn.contiguous(DType::U8, &dims(&[MASK_SIDE, MASK_SIDE]), m))
        .transpose()?;
    let tensors = FusedAttentionTensors {
        query: &query,
        key: &key,
        value: &value,
        atten_mask: mask.as_ref(),
        actual_seq_lengths: q_lens.as_ref(),
        actual_seq_lengths_kv: Some(&kv_lens),
        block_table: Some(&table),
        attention_out: &out,
        softmax_lse: &lse,
    };
    let attrs = FusedAttentionAttrs {
        num_heads: l.heads as i64,
        scale: l.scale as f64,
        pre_tokens: l.pre_tokens,
        next_tokens: l.next_tokens,
        input_layout: c"BSH",
        num_key_value_heads: c.num_kv_heads as i64,
        sparse_mode: l.sparse_mode,
        // High precision; rows never lack a key here (every query sees its own position).
        inner_precise: 0,
        block_size: c.block_size as i64,
        softmax_lse_flag: false,
    };
    // SAFETY: the caller's contract; the descriptors live until the call returns, and the
    // scratch returns to its allocator after the launch is queued (reused in stream order).
    unsafe { aclnn.fused_infer_attention_score_v2(stream, &*ws, &tensors, &attrs) }
}

/// Decode attention: one incremental launch over every sequence.
pub(super) fn decode<T: KvFloat>(
    stream: &AclStream,
    a: &PagedAttentionArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "paged_attention";
    let p = a.p;
    let c = p.cache;
    if let Some(why) = limits::<T>(p.num_heads, &c) {
        return declined(why);
    }
    if p.sliding_window.is_some() {
        return declined(format!(
            "{FIA}'s one-token (incremental) branch ignores preTokens, so it cannot apply a \
             sliding window"
        ));
    }
    if !c.block_size.is_multiple_of(16) {
        return declined(format!(
            "{FIA}'s one-token branch takes blocks of a multiple of 16 tokens (f16/bf16), not {}",
            c.block_size
        ));
    }
    if p.num_seqs > 65536 {
        return declined(format!(
            "{FIA} takes at most 65536 sequences, not {}",
            p.num_seqs
        ));
    }
    let Buffers {
        query: q,
        out,
        key_cache: kc,
        value_cache: vc,
        table,
    } = buffers(
        OP,
        stream,
        &a.query,
        &a.out,
        &a.key_cache,
        &a.value_cache,
        &a.block_tables,
    )?;
    if p.num_seqs == 0 {
        return Ok(Served::Done);
    }
    let kv_lens: Vec<i64> = a.seq_lens_host.iter().map(|&l| l as i64).collect();
    let l = Launch {
        batch: p.num_seqs,
        seq: 1,
        heads: p.num_heads,
        cache: c,
        max_blocks: p.max_blocks_per_seq,
        query: q,
        out,
        key_cache: kc,
        value_cache: vc,
        table,
        scale: p.scale,
        q_lens: None,
        kv_lens: &kv_lens,
        sparse_mode: 0,
        pre_tokens: UNLIMITED,
        next_tokens: UNLIMITED,
        mask: None,
    };
    // SAFETY: the views were checked against the shapes by the caller and are on the stream's
    // device; their owners keep them alive until the caller synchronises.
    unsafe { launch::<T>(stream, &l) }?;
    Ok(Served::Done)
}

/// Chunked-prefill attention: incremental launches for runs of one-token chunks, a prompt
/// launch per longer chunk.
pub(super) fn prefill<T: KvFloat>(
    stream: &AclStream,
    a: &PrefillAttentionArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "paged_prefill_attention";
    let p = a.p;
    let c = p.cache;
    if let Some(why) = limits::<T>(p.num_heads, &c) {
        return declined(why);
    }
    let starts = a.query_start_loc_host;
    let chunk = |s: usize| (starts[s + 1] - starts[s]) as usize;
    let any_prompt = (0..p.num_seqs).any(|s| chunk(s) > 1);
    let any_single = (0..p.num_seqs).any(|s| chunk(s) == 1);
    if any_single && !c.block_size.is_multiple_of(16) {
        return declined(format!(
            "{FIA}'s one-token branch takes blocks of a multiple of 16 tokens (f16/bf16), not {}",
            c.block_size
        ));
    }
    if any_prompt && !(c.block_size.is_multiple_of(128) && (128..=512).contains(&c.block_size)) {
        return declined(format!(
            "{FIA}'s prompt branch (chunks of several tokens) takes blocks of 128, 256, 384 or \
             512 tokens with a block table, not {}",
            c.block_size
        ));
    }
    if any_prompt && !c.head_size.is_multiple_of(16) {
        return declined(format!(
            "{FIA}'s prompt branch takes heads of a multiple of 16 elements (f16/bf16), not {}",
            c.head_size
        ));
    }
    if p.sliding_window.is_some() && any_single {
        return declined(format!(
            "one-token chunks take {FIA}'s incremental branch, which ignores preTokens, so it \
             cannot apply a sliding window"
        ));
    }
    let Buffers {
        query: q,
        out,
        key_cache: kc,
        value_cache: vc,
        table,
    } = buffers(
        OP,
        stream,
        &a.query,
        &a.out,
        &a.key_cache,
        &a.value_cache,
        &a.block_tables,
    )?;
    if p.num_tokens == 0 {
        return Ok(Served::Done);
    }
    let mask = if any_prompt {
        Some(mask_on(stream)?)
    } else {
        None
    };
    let h = p.num_heads * c.head_size;
    let size = std::mem::size_of::<T>();
    let lens: Vec<i64> = a.seq_lens_host.iter().map(|&l| l as i64).collect();
    let base = |first: usize, batch: usize, seq: usize| Launch {
        batch,
        seq,
        heads: p.num_heads,
        cache: c,
        max_blocks: p.max_blocks_per_seq,
        query: offset(q, starts[first] as usize * h, size),
        out: offset(out, starts[first] as usize * h, size),
        key_cache: kc,
        value_cache: vc,
        table: offset(table, first * p.max_blocks_per_seq, 4),
        scale: p.scale,
        q_lens: None,
        kv_lens: &[],
        sparse_mode: 0,
        pre_tokens: UNLIMITED,
        next_tokens: UNLIMITED,
        mask: None,
    };
    let mut s = 0;
    while s < p.num_seqs {
        match chunk(s) {
            0 => s += 1,
            1 => {
                let first = s;
                while s < p.num_seqs && chunk(s) == 1 {
                    s += 1;
                }
                let l = Launch {
                    kv_lens: &lens[first..s],
                    ..base(first, s - first, 1)
                };
                // SAFETY: as in `decode`; the run's rows lie inside the checked views.
                unsafe { launch::<T>(stream, &l) }?;
            }
            n => {
                let q_len = [n as i64];
                let (sparse_mode, pre_tokens, next_tokens) = match p.sliding_window {
                    Some(w) => (4, w as i64 - 1, 0),
                    None => (3, UNLIMITED, UNLIMITED),
                };
                let l = Launch {
                    q_lens: Some(&q_len),
                    kv_lens: &lens[s..s + 1],
                    sparse_mode,
                    pre_tokens,
                    next_tokens,
                    mask,
                    ..base(s, 1, n)
                };
                // SAFETY: as above.
                unsafe { launch::<T>(stream, &l) }?;
                s += 1;
            }
        }
    }
    Ok(Served::Done)
}

/// The optimised causal mask of each device (2048 × 2048 bytes, 1 strictly above the
/// diagonal: the pairs the causal and band modes never compute), uploaded once.
static MASKS: Mutex<Vec<(usize, DeviceBuffer<AclBackend, u8>)>> = Mutex::new(Vec::new());

/// Drops every device's mask (with the workspace allocators).
pub(super) fn clear_masks() {
    MASKS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The mask on `stream`'s device, uploaded through `stream` on first use (so every launch on
/// this stream is ordered after the upload; a launch on another stream of the device waits
/// for it too, through the synchronisation below).
fn mask_on(stream: &AclStream) -> Result<DevicePtr> {
    let ordinal = stream.device_ordinal();
    let mut masks = MASKS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = masks.iter().find(|(o, _)| *o == ordinal) {
        return Ok(m.device_ptr());
    }
    let host: Vec<u8> = (0..MASK_SIDE * MASK_SIDE)
        .map(|x| u8::from(x % MASK_SIDE > x / MASK_SIDE))
        .collect();
    let mask = DeviceBuffer::<AclBackend, u8>::from_slice(stream, &host)?;
    // Once per device and process: other streams may use the mask before this one runs.
    stream.synchronize()?;
    let ptr = mask.device_ptr();
    masks.push((ordinal, mask));
    Ok(ptr)
}

/// RoPE through `aclnnRopeWithSinCosCache` into scratch, copied back (CANN does not document
/// its outputs over its inputs).
pub(super) fn rotary<T: KvFloat>(
    stream: &AclStream,
    a: &mut RotaryArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "rotary_embedding";
    const ROPE: &str = "aclnnRopeWithSinCosCache";
    let p = *a.p;
    if T::DTYPE != DType::F32 {
        return declined(format!(
            "{ROPE} takes its cos/sin table in the query's dtype, and this op's table is f32: it \
             runs f32 queries only"
        ));
    }
    if !p.head_size.is_multiple_of(16) || !p.rotary_dim.is_multiple_of(16) {
        return declined(format!(
            "{ROPE} takes head and rotary sizes of a multiple of 16 (f32), not {} and {}",
            p.head_size, p.rotary_dim
        ));
    }
    let pos = device_arg::<AclBackend, i64, _>(OP, stream, "positions", &a.positions)?;
    let table = device_arg::<AclBackend, f32, _>(OP, stream, "cos_sin_cache", &a.cos_sin_cache)?;
    let q = device_arg::<AclBackend, T, _>(OP, stream, "query", &a.query)?;
    let k = device_arg::<AclBackend, T, _>(OP, stream, "key", &a.key)?;
    if p.num_tokens == 0 {
        return Ok(Served::Done);
    }
    let device = stream.device();
    let (aclnn, ws) = (Aclnn::load_for(&device)?, workspace_allocator(&device)?);
    let (qw, kw) = (p.num_heads * p.head_size, p.num_kv_heads * p.head_size);
    let q_out = DeviceBuffer::<AclBackend, T>::alloc_in(&*ws, stream, p.num_tokens * qw)?;
    let k_out = DeviceBuffer::<AclBackend, T>::alloc_in(&*ws, stream, p.num_tokens * kw)?;
    let tp = aclnn.contiguous(DType::I64, &dims(&[p.num_tokens]), pos)?;
    let tq = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, qw]), q)?;
    let tk = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, kw]), k)?;
    let tc = aclnn.contiguous(DType::F32, &dims(&[p.max_position, p.rotary_dim]), table)?;
    let tqo = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, qw]), q_out.device_ptr())?;
    let tko = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, kw]), k_out.device_ptr())?;
    let neox = p.style == crate::shapes::RopeStyle::Neox;
    // SAFETY: the descriptors cover exactly the checked lengths of buffers on the stream's
    // device, which their owners keep alive until the caller synchronises.
    unsafe {
        aclnn.rope_with_sin_cos_cache(
            stream,
            &*ws,
            &tp,
            &tq,
            &tk,
            &tc,
            p.head_size as i64,
            neox,
            &tqo,
            &tko,
        )
    }?;
    stream.copy_d2d(&q_out, &mut a.query)?;
    stream.copy_d2d(&k_out, &mut a.key)?;
    Ok(Served::Done)
}
