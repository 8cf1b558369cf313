//! CANN's fused paged attention and cached-table RoPE over the CPU, with the prototypes of the
//! 8.1.RC1 headers (`aclnnop/aclnn_fused_infer_attention_score_v2.h`,
//! `aclnnop/level2/aclnn_rope_with_sin_cos_cache.h`) and the checks their documentation lists.
//!
//! `aclnnFusedInferAttentionScoreV2` with a block table (PageAttention): query `[B, S, N·D]`
//! (`inputLayout` "BSH") in FLOAT16 or BF16 (Atlas A2 takes no FLOAT query), key and value
//! lists of one cache tensor each, `[blockNum, blockSize, KV_N·D]` of the query's dtype, an
//! INT32 `[B, maxBlocks]` block table, and host `actualSeqLengthsKv` (required with a block
//! table; one value for every batch, or at least B values of which the first B count). A query
//! of one token (S = 1) takes the incremental branch: every valid key is attended,
//! `sparseMode`, `preTokens` and `nextTokens` are ignored, `blockSize` is a positive multiple of
//! 16 and `innerPrecise` 0 or 1. Longer queries take the prompt branch: `blockSize` a multiple
//! of 128 from 128 to 512, `actualSeqLengths` (one, or at least B values) the valid queries per
//! batch, D a multiple of 16, and the mask by `sparseMode`: 0 with no mask attends every key, 2
//! (left-up causal), 3 (right-down causal) and 4 (band, `preTokens` / `nextTokens` from the
//! right-down diagonal) take the optimised 2048 × 2048 mask (BOOL, INT8 or UINT8, 1 above the
//! diagonal), whose contents are checked when the operator runs. Also checked: `numHeads` from
//! 1 to 256 and a multiple of `numKeyValueHeads` (0 means equal) at most 64 times it, D at most
//! 512, KV_N·D below 65536 (the BSH cache layout's limit), B at most 65536, the block table at
//! least as wide as the longest sequence needs, a FLOAT `softmaxLse` (shape `[1]`, written 0,
//! when `softmaxLseFlag` is false) and an output shaped and typed as the query. Refusals are
//! `ACLNN_ERR_PARAM_INVALID` (161002), NULL required arguments `ACLNN_ERR_PARAM_NULLPTR`
//! (161001). A block id outside the cache faults the kernel (507015 at the next
//! synchronisation): CANN does not check them, and an NPU would read out of bounds.
//!
//! The causal, band-with-`nextTokens` 0 and single-query cases run `ascend_kernels::cpu`'s
//! paged prefill attention, the CPU backend's own kernel, so an engine over the fake and over
//! the CPU backend compute the same numbers; the other masks run a direct loop.
//!
//! Limits of the fake: layout BSH only (CANN also takes BSND, BNSD, TND and the
//! `[blockNum, KV_N, blockSize, D]` cache), no softmax LSE output, `sparseMode` 0 with a mask
//! and 1 (a full S1 × S2 mask) refused, and the quantization, padding, shared-prefix and
//! positional-shift inputs refused when given.
//!
//! `aclnnRopeWithSinCosCache` (RoPE mode, `mropeSection` NULL): INT64 positions `[T]`, queryIn
//! `[T, Nq·headSize]` and keyIn `[T, Nk·headSize]`, cosSinCache `[maxSeqLen, rotaryDim]`, all
//! three of one dtype (FLOAT, FLOAT16 or BF16); headSize and rotaryDim multiples of 32 (16 for
//! FLOAT), rotaryDim at most headSize; outputs shaped and typed as the inputs. A position past
//! the cache faults the kernel.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_void, CStr};

use ascend_hal::Error;
use ascend_kernels::{cpu, CacheShape, KvFloat, PrefillAttention};
use hal_mock::KernelArg;
use half::{bf16, f16};

use crate::aclnn::{
    dtype_name, int_array, launch, launch_entry, optional_tensor, plan, shape_is, tensor,
    tensor_list, Plan, Tensor, ACL_BF16, ACL_FLOAT, ACL_FLOAT16, INVALID, NULLPTR,
};
use crate::exports::call;
use crate::state::{fail, Outcome};

const ACL_INT8: i32 = 2;
const ACL_INT32: i32 = 3;
const ACL_UINT8: i32 = 4;
const ACL_INT64: i32 = 9;
const ACL_BOOL: i32 = 12;

/// The side of the optimised mask sparse modes 2-4 take.
const MASK_SIDE: i64 = 2048;

/// Which keys a query row sees, in the operator's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mask {
    /// Every valid key (the incremental branch, or sparse mode 0 without a mask).
    All,
    /// Key `j` for row `i` when `j <= i` (sparse mode 2).
    LeftUpCausal,
    /// Key `j` for row `i` when `j <= i + kv - q` (sparse mode 3).
    RightDownCausal,
    /// Key `j` for row `i` when `-pre <= j - (i + kv - q) <= next` (sparse mode 4).
    Band { pre: i64, next: i64 },
}

impl Mask {
    fn allows(self, i: usize, j: usize, q: usize, kv: usize) -> bool {
        let diag = i as i64 + kv as i64 - q as i64;
        let j = j as i64;
        match self {
            Mask::All => true,
            Mask::LeftUpCausal => j <= i as i64,
            Mask::RightDownCausal => j <= diag,
            Mask::Band { pre, next } => j >= diag - pre && j <= diag + next,
        }
    }
}

/// What the launch computes, from the planning call's checked arguments.
#[derive(Clone)]
struct Attention {
    batch: usize,
    seq: usize,
    heads: usize,
    cache: CacheShape,
    max_blocks: usize,
    q_lens: Vec<usize>,
    kv_lens: Vec<usize>,
    mask: Mask,
    scale: f32,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    table: Tensor,
    out: Tensor,
    lse: Tensor,
    mask_tensor: Option<Tensor>,
}

fn invalid<T>(message: String) -> Outcome<T> {
    fail(INVALID, message)
}

/// Per-batch values of a host length array: one for all, or the first `batch` of at least
/// `batch`.
fn per_batch(f: &str, what: &str, values: &[i64], batch: usize) -> Outcome<Vec<i64>> {
    match values.len() {
        1 => Ok(vec![values[0]; batch]),
        n if n >= batch => Ok(values[..batch].to_vec()),
        n => invalid(format!(
            "{f}: {what} has {n} values; it takes one, or at least batch = {batch}"
        )),
    }
}

/// `aclnnStatus aclnnFusedInferAttentionScoreV2GetWorkspaceSize(const aclTensor *query, const
/// aclTensorList *key, const aclTensorList *value, const aclTensor *pseShiftOptional, const
/// aclTensor *attenMaskOptional, const aclIntArray *actualSeqLengthsOptional, const aclIntArray
/// *actualSeqLengthsKvOptional, const aclTensor *deqScale1Optional, const aclTensor
/// *quantScale1Optional, const aclTensor *deqScale2Optional, const aclTensor
/// *quantScale2Optional, const aclTensor *quantOffset2Optional, const aclTensor
/// *antiquantScaleOptional, const aclTensor *antiquantOffsetOptional, const aclTensor
/// *blockTableOptional, const aclTensor *queryPaddingSizeOptional, const aclTensor
/// *kvPaddingSizeOptional, const aclTensor *keyAntiquantScaleOptional, const aclTensor
/// *keyAntiquantOffsetOptional, const aclTensor *valueAntiquantScaleOptional, const aclTensor
/// *valueAntiquantOffsetOptional, const aclTensor *keySharedPrefixOptional, const aclTensor
/// *valueSharedPrefixOptional, const aclIntArray *actualSharedPrefixLenOptional, int64_t
/// numHeads, double scaleValue, int64_t preTokens, int64_t nextTokens, char *inputLayout,
/// int64_t numKeyValueHeads, int64_t sparseMode, int64_t innerPrecise, int64_t blockSize,
/// int64_t antiquantMode, bool softmaxLseFlag, int64_t keyAntiquantMode, int64_t
/// valueAntiquantMode, const aclTensor *attentionOut, const aclTensor *softmaxLse, uint64_t
/// *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnFusedInferAttentionScoreV2GetWorkspaceSize(
    query: *const c_void,
    key: *const c_void,
    value: *const c_void,
    pse_shift: *const c_void,
    atten_mask: *const c_void,
    actual_seq_lengths: *const c_void,
    actual_seq_lengths_kv: *const c_void,
    deq_scale1: *const c_void,
    quant_scale1: *const c_void,
    deq_scale2: *const c_void,
    quant_scale2: *const c_void,
    quant_offset2: *const c_void,
    antiquant_scale: *const c_void,
    antiquant_offset: *const c_void,
    block_table: *const c_void,
    query_padding_size: *const c_void,
    kv_padding_size: *const c_void,
    key_antiquant_scale: *const c_void,
    key_antiquant_offset: *const c_void,
    value_antiquant_scale: *const c_void,
    value_antiquant_offset: *const c_void,
    key_shared_prefix: *const c_void,
    value_shared_prefix: *const c_void,
    actual_shared_prefix_len: *const c_void,
    num_heads: i64,
    scale_value: f64,
    pre_tokens: i64,
    next_tokens: i64,
    input_layout: *mut c_char,
    num_key_value_heads: i64,
    sparse_mode: i64,
    inner_precise: i64,
    block_size: i64,
    antiquant_mode: i64,
    softmax_lse_flag: bool,
    key_antiquant_mode: i64,
    value_antiquant_mode: i64,
    attention_out: *const c_void,
    softmax_lse: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnFusedInferAttentionScoreV2GetWorkspaceSize";
    call(F, |_, _| {
        let unsupported = [
            ("pseShiftOptional", pse_shift),
            ("deqScale1Optional", deq_scale1),
            ("quantScale1Optional", quant_scale1),
            ("deqScale2Optional", deq_scale2),
            ("quantScale2Optional", quant_scale2),
            ("quantOffset2Optional", quant_offset2),
            ("antiquantScaleOptional", antiquant_scale),
            ("antiquantOffsetOptional", antiquant_offset),
            ("queryPaddingSizeOptional", query_padding_size),
            ("kvPaddingSizeOptional", kv_padding_size),
            ("keyAntiquantScaleOptional", key_antiquant_scale),
            ("keyAntiquantOffsetOptional", key_antiquant_offset),
            ("valueAntiquantScaleOptional", value_antiquant_scale),
            ("valueAntiquantOffsetOptional", value_antiquant_offset),
            ("keySharedPrefixOptional", key_shared_prefix),
            ("valueSharedPrefixOptional", value_shared_prefix),
            ("actualSharedPrefixLenOptional", actual_shared_prefix_len),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, p)| !p.is_null()) {
            return invalid(format!(
                "{F}: {name} is given; the fake implements the unquantized operator without \
                 padding, shared prefixes or positional shift"
            ));
        }
        if antiquant_mode != 0 || key_antiquant_mode != 0 || value_antiquant_mode != 0 {
            return invalid(format!(
                "{F}: antiquant modes {antiquant_mode}/{key_antiquant_mode}/\
                 {value_antiquant_mode} need quantized caches; the fake takes 0"
            ));
        }
        let q = tensor(F, "query", query)?;
        let keys = tensor_list(F, "key", key)?;
        let values = tensor_list(F, "value", value)?;
        let out = tensor(F, "attentionOut", attention_out)?;
        let lse = tensor(F, "softmaxLse", softmax_lse)?;
        if input_layout.is_null() {
            return fail(NULLPTR, format!("{F}: inputLayout is NULL"));
        }
        // SAFETY: a NUL-terminated string by the C API's contract.
        let layout = unsafe { CStr::from_ptr(input_layout) }.to_string_lossy();
        if layout != "BSH" {
            let known = [
                "BSND",
                "BNSD",
                "BNSD_BSND",
                "TND",
                "NTD_TND",
                "TND_NTD",
                "BSH_NBSD",
            ];
            return invalid(if known.contains(&layout.as_ref()) {
                format!("{F}: inputLayout {layout} is CANN's, but the fake takes BSH only")
            } else {
                format!("{F}: inputLayout {layout:?} is not a layout of this operator")
            });
        }
        if !matches!(q.dtype, ACL_FLOAT16 | ACL_BF16) {
            return invalid(format!(
                "{F}: query dtype {} should be in dtype support list [DT_FLOAT16, DT_BF16] \
                 (Atlas A2)",
                dtype_name(q.dtype)
            ));
        }
        if q.dims.len() != 3 || !q.is_contiguous() {
            return invalid(format!(
                "{F}: query must be a contiguous [B, S, H] tensor for layout BSH, got dims {:?} \
                 strides {:?}",
                q.dims, q.strides
            ));
        }
        let (b, s, hq) = (q.dims[0], q.dims[1], q.dims[2]);
        if !(1..=65536).contains(&b) || s < 1 {
            return invalid(format!(
                "{F}: query batch {b} and sequence {s}: B must be 1..=65536, S positive"
            ));
        }
        if !(1..=256).contains(&num_heads) || hq % num_heads != 0 {
            return invalid(format!(
                "{F}: numHeads {num_heads} must be 1..=256 and divide the query's H = {hq}"
            ));
        }
        let d = hq / num_heads;
        let kv_heads = if num_key_value_heads == 0 {
            num_heads
        } else {
            num_key_value_heads
        };
        if kv_heads < 0
            || kv_heads > num_heads
            || num_heads % kv_heads != 0
            || num_heads / kv_heads > 64
        {
            return invalid(format!(
                "{F}: numKeyValueHeads {num_key_value_heads} must divide numHeads {num_heads}, \
                 at most 64 query heads per KV head"
            ));
        }
        if d > 512 {
            return invalid(format!("{F}: head dim D = {d} is past 512"));
        }
        if kv_heads * d > 65535 {
            return invalid(format!(
                "{F}: KV_N * D = {} is past 65535, the limit of the (blockNum, blockSize, H) \
                 cache layout: use GQA or the (blockNum, KV_N, blockSize, D) layout",
                kv_heads * d
            ));
        }
        // PageAttention: one cache tensor per list, no tensor lists of batches.
        if block_table.is_null() {
            return invalid(format!(
                "{F}: blockTableOptional is NULL; the fake implements PageAttention only"
            ));
        }
        let table = tensor(F, "blockTableOptional", block_table)?;
        if keys.len() != 1 || values.len() != 1 {
            return invalid(format!(
                "{F}: with a block table, key and value are one cache tensor each (got {} and \
                 {}); page attention does not support tensor lists",
                keys.len(),
                values.len()
            ));
        }
        let (k, v) = (&keys[0].1, &values[0].1);
        for (what, t) in [("key", k), ("value", v)] {
            if t.dtype != q.dtype {
                return invalid(format!(
                    "{F}: {what} dtype {} should be the query's, {}",
                    dtype_name(t.dtype),
                    dtype_name(q.dtype)
                ));
            }
            if t.dims.len() != 3 || !t.is_contiguous() {
                return invalid(format!(
                    "{F}: {what} must be a contiguous [blockNum, blockSize, H] cache for layout \
                     BSH, got dims {:?}",
                    t.dims
                ));
            }
        }
        if k.dims != v.dims {
            return invalid(format!(
                "{F}: key shape {:?} and value shape {:?} must be the same",
                k.dims, v.dims
            ));
        }
        let (num_blocks, cache_block, hkv) = (k.dims[0], k.dims[1], k.dims[2]);
        if hkv != kv_heads * d {
            return invalid(format!(
                "{F}: the cache's H = {hkv} should be numKeyValueHeads * D = {}",
                kv_heads * d
            ));
        }
        if cache_block != block_size {
            return invalid(format!(
                "{F}: blockSize {block_size} differs from the cache's block dim {cache_block}"
            ));
        }
        let decode = s == 1;
        let block_ok = if decode {
            block_size > 0 && block_size % 16 == 0
        } else {
            (128..=512).contains(&block_size) && block_size % 128 == 0
        };
        if !block_ok {
            return invalid(format!(
                "{F}: blockSize {block_size} is not supported with page attention: {}",
                if decode {
                    "a query of one token takes a positive multiple of 16 (fp16/bf16)"
                } else {
                    "a query of several tokens takes a multiple of 128 from 128 to 512"
                }
            ));
        }
        if !decode && d % 16 != 0 {
            return invalid(format!(
                "{F}: head dim D = {d} must be 16-aligned for FLOAT16/BF16 inputs"
            ));
        }
        if table.dtype != ACL_INT32
            || table.dims.len() != 2
            || table.dims[0] != b
            || !table.is_contiguous()
        {
            return invalid(format!(
                "{F}: blockTable must be a contiguous INT32 [B = {b}, maxBlocks] tensor, got {} \
                 dims {:?}",
                dtype_name(table.dtype),
                table.dims
            ));
        }
        let max_blocks = table.dims[1];
        let Some(kv_lens) = int_array(F, "actualSeqLengthsKvOptional", actual_seq_lengths_kv)?
        else {
            return invalid(format!(
                "{F}: actualSeqLengthsKvOptional is NULL; page attention needs it"
            ));
        };
        let kv_lens = per_batch(F, "actualSeqLengthsKv", &kv_lens, b as usize)?;
        let most = max_blocks.saturating_mul(block_size);
        if let Some((i, l)) = kv_lens.iter().enumerate().find(|(_, &l)| l < 0 || l > most) {
            return invalid(format!(
                "{F}: actualSeqLengthsKv[{i}] = {l} is outside 0..={most}: the block table's \
                 {max_blocks} blocks of {block_size} (its second dim must cover the longest \
                 sequence)"
            ));
        }
        let q_lens = if decode {
            vec![1; b as usize]
        } else {
            match int_array(F, "actualSeqLengthsOptional", actual_seq_lengths)? {
                None => vec![s; b as usize],
                Some(v) => per_batch(F, "actualSeqLengths", &v, b as usize)?,
            }
        };
        if let Some((i, l)) = q_lens.iter().enumerate().find(|(_, &l)| l < 0 || l > s) {
            return invalid(format!(
                "{F}: actualSeqLengths[{i}] = {l} is outside 0..={s}, the query's S"
            ));
        }
        if !(0..=if decode { 1 } else { 3 }).contains(&inner_precise) {
            return invalid(format!(
                "{F}: innerPrecise {inner_precise} is not supported ({})",
                if decode {
                    "0 or 1 with a one-token query"
                } else {
                    "0..=3"
                }
            ));
        }
        let mask_t = optional_tensor(F, "attenMaskOptional", atten_mask)?;
        let mask = if decode {
            Mask::All
        } else {
            match sparse_mode {
                0 if mask_t.is_none() => Mask::All,
                0 | 1 => {
                    return invalid(format!(
                        "{F}: sparseMode {sparse_mode} with a full S1 x S2 mask is CANN's, but \
                         the fake takes sparse modes 0 (no mask), 2, 3 and 4"
                    ))
                }
                2..=4 => {
                    let Some(m) = &mask_t else {
                        return invalid(format!(
                            "{F}: sparseMode {sparse_mode} needs the optimised 2048 x 2048 \
                             attenMask"
                        ));
                    };
                    let square = matches!(m.dims.as_slice(),
                        [a, b] | [1, a, b] | [1, 1, a, b] if *a == MASK_SIDE && *b == MASK_SIDE);
                    if !square || !matches!(m.dtype, ACL_BOOL | ACL_INT8 | ACL_UINT8) {
                        return invalid(format!(
                            "{F}: sparseMode {sparse_mode} takes attenMask of shape (2048, \
                             2048), (1, 2048, 2048) or (1, 1, 2048, 2048) in BOOL, INT8 or \
                             UINT8, got {} {:?}",
                            dtype_name(m.dtype),
                            m.dims
                        ));
                    }
                    match sparse_mode {
                        2 => Mask::LeftUpCausal,
                        3 => Mask::RightDownCausal,
                        _ => Mask::Band {
                            pre: pre_tokens,
                            next: next_tokens,
                        },
                    }
                }
                other => {
                    return invalid(format!("{F}: sparseMode {other} is not supported (0 to 4)"))
                }
            }
        };
        if softmax_lse_flag {
            return invalid(format!(
                "{F}: softmaxLseFlag is true; the fake does not write the log-sum-exp"
            ));
        }
        if lse.dtype != ACL_FLOAT || lse.numel() < 1 {
            return invalid(format!(
                "{F}: softmaxLse must be a FLOAT tensor of shape [1] when softmaxLseFlag is \
                 false, got {} {:?}",
                dtype_name(lse.dtype),
                lse.dims
            ));
        }
        if out.dtype != q.dtype || !out.is_contiguous() {
            return invalid(format!(
                "{F}: attentionOut must be contiguous and of the query's dtype {}, got {}",
                dtype_name(q.dtype),
                dtype_name(out.dtype)
            ));
        }
        shape_is(F, "attentionOut", &out, &q.dims)?;
        if !scale_value.is_finite() {
            return invalid(format!("{F}: scaleValue {scale_value} is not finite"));
        }
        let plan_of = Attention {
            batch: b as usize,
            seq: s as usize,
            heads: num_heads as usize,
            cache: CacheShape {
                num_blocks: num_blocks as usize,
                block_size: block_size as usize,
                num_kv_heads: kv_heads as usize,
                head_size: d as usize,
            },
            max_blocks: max_blocks as usize,
            q_lens: q_lens.iter().map(|&l| l as usize).collect(),
            kv_lens: kv_lens.iter().map(|&l| l as usize).collect(),
            mask,
            scale: scale_value as f32,
            query: q.clone(),
            key: k.clone(),
            value: v.clone(),
            table: table.clone(),
            out: out.clone(),
            lse: lse.clone(),
            mask_tensor: mask_t.clone(),
        };
        let mut args = vec![q.data, k.data, v.data, table.data, out.data, lse.data];
        let mut handles = vec![
            query,
            keys[0].0 as *const c_void,
            values[0].0 as *const c_void,
        ];
        handles.extend([block_table, attention_out, softmax_lse]);
        if let Some(m) = &mask_t {
            args.push(m.data);
            handles.push(atten_mask);
        }
        let work = move |a: &[KernelArg]| -> Result<(), Error> {
            match plan_of.query.dtype {
                ACL_FLOAT16 => plan_of.run::<f16>(a),
                _ => plan_of.run::<bf16>(a),
            }
        };
        plan(
            F,
            workspace_size,
            executor,
            &handles,
            Plan {
                op: "aclnnFusedInferAttentionScoreV2",
                workspace: 16 << 20,
                tensors: Vec::new(),
                args,
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnFusedInferAttentionScoreV2);

const OP: &str = "aclnnFusedInferAttentionScoreV2";

fn fault(message: String) -> Error {
    Error::KernelFault { op: OP, message }
}

/// `t`'s elements in `arg`'s memory as a slice (the view is contiguous; checked at planning).
///
/// # Safety
/// Nothing else writes the memory while the slice lives (the stream runs one task at a time).
unsafe fn view<'m, E>(t: &Tensor, arg: &KernelArg, what: &str) -> Result<&'m [E], Error> {
    t.fits(arg, OP)?;
    // SAFETY: `fits` checked that offset + numel elements lie in the argument's memory.
    let p = unsafe { arg.ptr.cast::<E>().add(t.offset as usize) };
    if !(p as usize).is_multiple_of(std::mem::align_of::<E>()) {
        return Err(fault(format!(
            "{what} at {p:p} is not aligned to its dtype"
        )));
    }
    // SAFETY: in bounds and aligned, as checked above; read-only for the slice's life.
    Ok(unsafe { std::slice::from_raw_parts(p, t.numel()) })
}

/// Writes `values` over `t`'s elements in `arg`'s memory (through a raw copy: a caller may
/// have passed an output that overlaps an input, which the views above no longer use).
fn write<E: Copy>(t: &Tensor, arg: &KernelArg, values: &[E]) -> Result<(), Error> {
    t.fits(arg, OP)?;
    let n = t.numel().min(values.len());
    // SAFETY: `fits` checked that offset + numel elements lie in the argument's memory.
    let p = unsafe { arg.ptr.cast::<E>().add(t.offset as usize) };
    if !(p as usize).is_multiple_of(std::mem::align_of::<E>()) {
        return Err(fault(format!(
            "an output at {p:p} is not aligned to its dtype"
        )));
    }
    // SAFETY: `p` is aligned and has room for `n` elements (checked above); `values` is a
    // separate host allocation; the stream worker runs this task alone over the memory.
    unsafe { std::ptr::copy(values.as_ptr(), p, n) };
    Ok(())
}

impl Attention {
    fn run<T: KvFloat>(&self, a: &[KernelArg]) -> Result<(), Error> {
        // SAFETY: the stream worker runs this task alone over its arguments' memory.
        let (q, k, v, table) = unsafe {
            (
                view::<T>(&self.query, &a[0], "query")?,
                view::<T>(&self.key, &a[1], "key")?,
                view::<T>(&self.value, &a[2], "value")?,
                view::<i32>(&self.table, &a[3], "blockTable")?,
            )
        };
        if let (Some(m), Some(arg)) = (&self.mask_tensor, a.get(6)) {
            // SAFETY: as above.
            let bytes = unsafe { view::<u8>(m, arg, "attenMask")? };
            let side = MASK_SIDE as usize;
            if let Some(at) = (0..side * side).find(|&x| (bytes[x] != 0) != (x % side > x / side)) {
                return Err(fault(format!(
                    "attenMask[{}][{}] is {}: sparse modes 2-4 take the optimised 2048 x 2048 mask, \
                     1 strictly above the diagonal and 0 elsewhere",
                    at / side,
                    at % side,
                    bytes[at]
                )));
            }
        }
        // Every block a valid key lives in must be in the cache (an NPU would read past it).
        for (b, &len) in self.kv_lens.iter().enumerate() {
            for (i, &id) in table[b * self.max_blocks..][..len.div_ceil(self.cache.block_size)]
                .iter()
                .enumerate()
            {
                if id < 0 || id as usize >= self.cache.num_blocks {
                    return Err(fault(format!(
                        "blockTable[{b}][{i}] = {id} is outside the cache's {} blocks (memory \
                         access fault)",
                        self.cache.num_blocks
                    )));
                }
            }
        }
        let h = self.heads * self.cache.head_size;
        let mut result = vec![T::from_f32(0.0); self.batch * self.seq * h];
        let packed = self.q_lens.iter().all(|&l| l == self.seq);
        let window = match self.mask {
            Mask::All if self.seq == 1 => Some(None),
            Mask::RightDownCausal => Some(None),
            Mask::Band { pre, next: 0 } if pre >= 0 => Some(Some(pre as usize + 1)),
            _ => None,
        };
        let causal_ok = self.q_lens.iter().zip(&self.kv_lens).all(|(q, kv)| q <= kv);
        match window {
            Some(sliding_window) if causal_ok => {
                // The CPU backend's own kernel, over the valid rows packed together.
                let mut starts = vec![0i32];
                let mut rows: Vec<T> = Vec::new();
                for (b, &l) in self.q_lens.iter().enumerate() {
                    starts.push(starts[b] + l as i32);
                    if !packed {
                        rows.extend_from_slice(&q[b * self.seq * h..][..l * h]);
                    }
                }
                let n: usize = self.q_lens.iter().sum();
                let p = PrefillAttention {
                    num_seqs: self.batch,
                    num_tokens: n,
                    num_heads: self.heads,
                    cache: self.cache,
                    max_blocks_per_seq: self.max_blocks,
                    scale: self.scale,
                    sliding_window,
                };
                let lens: Vec<i32> = self.kv_lens.iter().map(|&l| l as i32).collect();
                let mut out = vec![T::from_f32(0.0); n * h];
                cpu::paged_prefill_attention::<T>(
                    &p,
                    &mut out,
                    if packed { q } else { &rows },
                    k,
                    v,
                    table,
                    &starts,
                    &lens,
                )
                .map_err(|e| fault(e.to_string()))?;
                for (b, &l) in self.q_lens.iter().enumerate() {
                    let from = starts[b] as usize * h;
                    result[b * self.seq * h..][..l * h].copy_from_slice(&out[from..from + l * h]);
                }
            }
            _ => self.direct(q, k, v, table, &mut result),
        }
        write(&self.out, &a[4], &result)?;
        write(&self.lse, &a[5], &vec![0f32; self.lse.numel()])
    }

    /// Any mask, one query row and head at a time, in f32 (rows with nothing to attend get 0).
    fn direct<T: KvFloat>(&self, q: &[T], k: &[T], v: &[T], table: &[i32], out: &mut [T]) {
        let c = self.cache;
        let (hs, group, h) = (
            c.head_size,
            self.heads / c.num_kv_heads,
            self.heads * c.head_size,
        );
        let at = |b: usize, j: usize, kvh: usize| {
            let block = table[b * self.max_blocks + j / c.block_size] as usize;
            (block * c.block_size + j % c.block_size) * c.num_kv_heads * hs + kvh * hs
        };
        for b in 0..self.batch {
            let (ql, kl) = (self.q_lens[b], self.kv_lens[b]);
            for i in 0..ql {
                for head in 0..self.heads {
                    let kvh = head / group;
                    let qrow = &q[(b * self.seq + i) * h + head * hs..][..hs];
                    let keys: Vec<usize> = (0..kl)
                        .filter(|&j| self.mask.allows(i, j, ql, kl))
                        .collect();
                    let dst = &mut out[(b * self.seq + i) * h + head * hs..][..hs];
                    if keys.is_empty() {
                        dst.fill(T::from_f32(0.0));
                        continue;
                    }
                    let scores: Vec<f32> = keys
                        .iter()
                        .map(|&j| {
                            let krow = &k[at(b, j, kvh)..][..hs];
                            qrow.iter()
                                .zip(krow)
                                .map(|(x, y)| x.to_f32() * y.to_f32())
                                .sum::<f32>()
                                * self.scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f32 = weights.iter().sum();
                    for (d, o) in dst.iter_mut().enumerate() {
                        let acc: f32 = keys
                            .iter()
                            .zip(&weights)
                            .map(|(&j, w)| w * v[at(b, j, kvh) + d].to_f32())
                            .sum();
                        *o = T::from_f32(acc / sum);
                    }
                }
            }
        }
    }
}

// ---- aclnnRopeWithSinCosCache ----

/// `aclnnStatus aclnnRopeWithSinCosCacheGetWorkspaceSize(const aclTensor *positions, const
/// aclTensor *queryIn, const aclTensor *keyIn, const aclTensor *cosSinCache, const aclIntArray
/// *mropeSection, int64_t headSize, bool isNeoxStyle, aclTensor *queryOut, aclTensor *keyOut,
/// uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnRopeWithSinCosCacheGetWorkspaceSize(
    positions: *const c_void,
    query_in: *const c_void,
    key_in: *const c_void,
    cos_sin_cache: *const c_void,
    mrope_section: *const c_void,
    head_size: i64,
    is_neox_style: bool,
    query_out: *mut c_void,
    key_out: *mut c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnRopeWithSinCosCacheGetWorkspaceSize";
    call(F, |_, _| {
        let pos = tensor(F, "positions", positions)?;
        let qi = tensor(F, "queryIn", query_in)?;
        let ki = tensor(F, "keyIn", key_in)?;
        let cache = tensor(F, "cosSinCache", cos_sin_cache)?;
        let qo = tensor(F, "queryOut", query_out)?;
        let ko = tensor(F, "keyOut", key_out)?;
        if !mrope_section.is_null() {
            return invalid(format!(
                "{F}: mropeSection is given; the fake implements RoPE mode (NULL) only"
            ));
        }
        if pos.dtype != ACL_INT64 || pos.dims.len() != 1 || pos.dims[0] < 1 {
            return invalid(format!(
                "{F}: positions must be a non-empty INT64 [numTokens] tensor, got {} {:?}",
                dtype_name(pos.dtype),
                pos.dims
            ));
        }
        let t = pos.dims[0];
        for (what, x) in [("queryIn", &qi), ("keyIn", &ki), ("cosSinCache", &cache)] {
            if !matches!(x.dtype, ACL_FLOAT | ACL_FLOAT16 | ACL_BF16) || x.dims.len() != 2 {
                return invalid(format!(
                    "{F}: {what} must be a 2-D FLOAT, FLOAT16 or BF16 tensor, got {} {:?}",
                    dtype_name(x.dtype),
                    x.dims
                ));
            }
        }
        if qi.dtype != ki.dtype || qi.dtype != cache.dtype {
            return invalid(format!(
                "{F}: queryIn, keyIn and cosSinCache must share a dtype, got {}, {} and {}",
                dtype_name(qi.dtype),
                dtype_name(ki.dtype),
                dtype_name(cache.dtype)
            ));
        }
        let align = if qi.dtype == ACL_FLOAT { 16 } else { 32 };
        let rotary = cache.dims[1];
        if head_size <= 0
            || head_size % align != 0
            || rotary <= 0
            || rotary % align != 0
            || rotary > head_size
        {
            return invalid(format!(
                "{F}: headSize {head_size} and rotaryDim {rotary} must be multiples of {align} \
                 for {}, rotaryDim at most headSize",
                dtype_name(qi.dtype)
            ));
        }
        for (what, x) in [("queryIn", &qi), ("keyIn", &ki)] {
            if x.dims[0] != t || x.dims[1] % head_size != 0 {
                return fail(
                    561_002,
                    format!(
                        "{F}: {what} shape {:?} should be (numTokens = {t}, heads * headSize = \
                         {head_size}k)",
                        x.dims
                    ),
                );
            }
        }
        shape_is(F, "queryOut", &qo, &qi.dims)?;
        shape_is(F, "keyOut", &ko, &ki.dims)?;
        if qo.dtype != qi.dtype || ko.dtype != ki.dtype {
            return invalid(format!("{F}: queryOut and keyOut take the inputs' dtype"));
        }
        let (hs, rot, max_pos, neox) = (
            head_size as usize,
            rotary as usize,
            cache.dims[0],
            is_neox_style,
        );
        let (cp, cq, ck, cc, cqo, cko) = (
            pos.clone(),
            qi.clone(),
            ki.clone(),
            cache.clone(),
            qo.clone(),
            ko.clone(),
        );
        let work = move |a: &[KernelArg]| -> Result<(), Error> {
            const RUN: &str = "aclnnRopeWithSinCosCache";
            cp.fits(&a[0], RUN)?;
            let mut ps = Vec::with_capacity(cp.numel());
            cp.for_each_offset(|o| {
                // SAFETY: `fits` checked every element of the view.
                ps.push(unsafe { a[0].ptr.cast::<i64>().add(o).read_unaligned() })
            });
            if let Some((i, p)) = ps.iter().enumerate().find(|(_, &p)| p < 0 || p >= max_pos) {
                return Err(Error::KernelFault {
                    op: RUN,
                    message: format!(
                        "positions[{i}] = {p} is outside cosSinCache's {max_pos} rows (memory \
                         access fault)"
                    ),
                });
            }
            let table = cc.read(&a[3], RUN)?;
            for (x, arg_in, y, arg_out) in [(&cq, 1, &cqo, 4), (&ck, 2, &cko, 5)] {
                let mut vals = x.read(&a[arg_in], RUN)?;
                let row = x.dims[1] as usize;
                for (tok, &p) in ps.iter().enumerate() {
                    let cs = &table[p as usize * rot..][..rot];
                    for head in vals[tok * row..][..row].chunks_mut(hs) {
                        rotate(&mut head[..rot], cs, neox);
                    }
                }
                y.write(&a[arg_out], RUN, &vals)?;
            }
            Ok(())
        };
        plan(
            F,
            workspace_size,
            executor,
            &[
                positions,
                query_in,
                key_in,
                cos_sin_cache,
                query_out.cast_const(),
                key_out.cast_const(),
            ],
            Plan {
                op: "aclnnRopeWithSinCosCache",
                workspace: 1024,
                tensors: Vec::new(),
                args: vec![pos.data, qi.data, ki.data, cache.data, qo.data, ko.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnRopeWithSinCosCache);

/// One head's rotary part by a cos/sin row (`rotary / 2` cosines then as many sines), in the
/// documented formulas: NeoX pairs `x[i]` with `x[i + rot/2]`, GPT-J `x[2i]` with `x[2i+1]`.
fn rotate(x: &mut [f32], cs: &[f32], neox: bool) {
    let half = cs.len() / 2;
    let (cos, sin) = cs.split_at(half);
    for i in 0..half {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x1, x2) = (x[a], x[b]);
        x[a] = x1 * cos[i] - x2 * sin[i];
        x[b] = x2 * cos[i] + x1 * sin[i];
    }
}
