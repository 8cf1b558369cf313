//! The Ascend C kernels run on the host implementation of the Ascend C API
//! (`ascendc/host/kernel_operator.h`), compiled by `build.rs` with the system C++ compiler (the
//! `host-kernels` feature). Each runner checks shapes exactly as the reference does, tiles the
//! kernel as the NPU launch would, and runs it over `block_dim` simulated vector cores, one
//! after another. A broken hardware rule comes back as [`Error::KernelFault`] naming the rule
//! and the core.
//!
//! ```
//! use ascend_kernels::{ascendc, reference, RmsNorm};
//! use half::f16;
//! let p = RmsNorm { num_tokens: 3, hidden: 64, eps: 1e-6 };
//! let x: Vec<f16> = (0..192).map(|i| f16::from_f32((i as f32 * 0.37).sin())).collect();
//! let w: Vec<f16> = (0..64).map(|i| f16::from_f32(1.0 + i as f32 / 64.0)).collect();
//! let (mut npu, mut oracle) = (vec![f16::ZERO; 192], vec![f16::ZERO; 192]);
//! ascendc::host::rms_norm(&p, &mut npu, &x, &w, 2)?; // two simulated vector cores
//! reference::rms_norm(&p, &mut oracle, &x, &w)?;
//! assert!(npu.iter().zip(&oracle).all(|(a, b)| (a.to_f32() - b.to_f32()).abs() < 4e-3));
//! # Ok::<(), ascend_hal::Error>(())
//! ```

use std::ffi::{c_char, CStr};

use ascend_hal::{Error, Result};
use half::f16;

use super::status as device_status;
use super::tiling::{
    self, CopyBlocksTiling, PagedAttentionTiling, PrefillAttentionTiling, ReshapeAndCacheTiling,
    RmsNormTiling, RopeTiling,
};
use crate::float::KvFloat;
use crate::reference::{check_positions, check_slots};
use crate::shapes::query_ranges;
use crate::shapes::{
    check_seqs, CacheShape, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, Rotary,
};

/// A launch shim: `(block_dim, gm pointers..., tiling, err, err_len) -> status` (the kernels that
/// read device-side indices take a status buffer as their last gm pointer).
type Shim2<Tl> = unsafe extern "C" fn(u32, *mut u8, *mut u8, *const Tl, *mut c_char, usize) -> i32;
type Shim4<Tl> = unsafe extern "C" fn(
    u32,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *const Tl,
    *mut c_char,
    usize,
) -> i32;
type Shim5<Tl> = unsafe extern "C" fn(
    u32,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *const Tl,
    *mut c_char,
    usize,
) -> i32;
type Shim6<Tl> = unsafe extern "C" fn(
    u32,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *const Tl,
    *mut c_char,
    usize,
) -> i32;
type Shim8<Tl> = unsafe extern "C" fn(
    u32,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *mut u8,
    *const Tl,
    *mut c_char,
    usize,
) -> i32;

// The shims of ascendc/host/launch.cpp; their C prototypes take exactly these arguments.
extern "C" {
    fn ascendc_host_copy_blocks_half(
        b: u32,
        kc: *mut u8,
        vc: *mut u8,
        pairs: *mut u8,
        st: *mut u8,
        t: *const CopyBlocksTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_copy_blocks_float(
        b: u32,
        kc: *mut u8,
        vc: *mut u8,
        pairs: *mut u8,
        st: *mut u8,
        t: *const CopyBlocksTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_reshape_and_cache_half(
        b: u32,
        k: *mut u8,
        v: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        s: *mut u8,
        st: *mut u8,
        t: *const ReshapeAndCacheTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_reshape_and_cache_float(
        b: u32,
        k: *mut u8,
        v: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        s: *mut u8,
        st: *mut u8,
        t: *const ReshapeAndCacheTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_attention_half(
        b: u32,
        o: *mut u8,
        q: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        bt: *mut u8,
        sl: *mut u8,
        ws: *mut u8,
        st: *mut u8,
        t: *const PagedAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_attention_merge_half(
        b: u32,
        o: *mut u8,
        ws: *mut u8,
        t: *const PagedAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_attention_float(
        b: u32,
        o: *mut u8,
        q: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        bt: *mut u8,
        sl: *mut u8,
        ws: *mut u8,
        st: *mut u8,
        t: *const PagedAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_attention_merge_float(
        b: u32,
        o: *mut u8,
        ws: *mut u8,
        t: *const PagedAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_prefill_attention_half(
        b: u32,
        o: *mut u8,
        q: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        bt: *mut u8,
        qs: *mut u8,
        sl: *mut u8,
        st: *mut u8,
        t: *const PrefillAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_paged_prefill_attention_float(
        b: u32,
        o: *mut u8,
        q: *mut u8,
        kc: *mut u8,
        vc: *mut u8,
        bt: *mut u8,
        qs: *mut u8,
        sl: *mut u8,
        st: *mut u8,
        t: *const PrefillAttentionTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_rotary_embedding_half(
        b: u32,
        p: *mut u8,
        q: *mut u8,
        k: *mut u8,
        cs: *mut u8,
        st: *mut u8,
        t: *const RopeTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_rotary_embedding_float(
        b: u32,
        p: *mut u8,
        q: *mut u8,
        k: *mut u8,
        cs: *mut u8,
        st: *mut u8,
        t: *const RopeTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_rms_norm_half(
        b: u32,
        x: *mut u8,
        r: *mut u8,
        w: *mut u8,
        o: *mut u8,
        t: *const RmsNormTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_rms_norm_float(
        b: u32,
        x: *mut u8,
        r: *mut u8,
        w: *mut u8,
        o: *mut u8,
        t: *const RmsNormTiling,
        e: *mut c_char,
        n: usize,
    ) -> i32;
    fn ascendc_host_violation(which: u32, gm: *mut u8, e: *mut c_char, n: usize) -> i32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// The element types the Ascend C kernels are built for: `f32` (`float`) and `f16` (`half`).
/// (A2 vector units have no bf16 arithmetic.)
pub trait AscendCFloat: KvFloat + sealed::Sealed {
    #[doc(hidden)]
    const RESHAPE_AND_CACHE: Shim6<ReshapeAndCacheTiling>;
    #[doc(hidden)]
    const PAGED_ATTENTION: Shim8<PagedAttentionTiling>;
    #[doc(hidden)]
    const PAGED_ATTENTION_MERGE: Shim2<PagedAttentionTiling>;
    #[doc(hidden)]
    const PAGED_PREFILL_ATTENTION: Shim8<PrefillAttentionTiling>;
    #[doc(hidden)]
    const ROTARY_EMBEDDING: Shim5<RopeTiling>;
    #[doc(hidden)]
    const RMS_NORM: Shim4<RmsNormTiling>;
    #[doc(hidden)]
    const COPY_BLOCKS: Shim4<CopyBlocksTiling>;
}

impl AscendCFloat for f32 {
    const RESHAPE_AND_CACHE: Shim6<ReshapeAndCacheTiling> = ascendc_host_reshape_and_cache_float;
    const PAGED_ATTENTION: Shim8<PagedAttentionTiling> = ascendc_host_paged_attention_float;
    const PAGED_ATTENTION_MERGE: Shim2<PagedAttentionTiling> =
        ascendc_host_paged_attention_merge_float;
    const PAGED_PREFILL_ATTENTION: Shim8<PrefillAttentionTiling> =
        ascendc_host_paged_prefill_attention_float;
    const ROTARY_EMBEDDING: Shim5<RopeTiling> = ascendc_host_rotary_embedding_float;
    const RMS_NORM: Shim4<RmsNormTiling> = ascendc_host_rms_norm_float;
    const COPY_BLOCKS: Shim4<CopyBlocksTiling> = ascendc_host_copy_blocks_float;
}

impl AscendCFloat for f16 {
    const RESHAPE_AND_CACHE: Shim6<ReshapeAndCacheTiling> = ascendc_host_reshape_and_cache_half;
    const PAGED_ATTENTION: Shim8<PagedAttentionTiling> = ascendc_host_paged_attention_half;
    const PAGED_ATTENTION_MERGE: Shim2<PagedAttentionTiling> =
        ascendc_host_paged_attention_merge_half;
    const PAGED_PREFILL_ATTENTION: Shim8<PrefillAttentionTiling> =
        ascendc_host_paged_prefill_attention_half;
    const ROTARY_EMBEDDING: Shim5<RopeTiling> = ascendc_host_rotary_embedding_half;
    const RMS_NORM: Shim4<RmsNormTiling> = ascendc_host_rms_norm_half;
    const COPY_BLOCKS: Shim4<CopyBlocksTiling> = ascendc_host_copy_blocks_half;
}

const ERR_LEN: usize = 1024;

/// Turns a shim's status and message into a result, and keeps the launch's costs for
/// [`cost::take_launches`](super::cost::take_launches).
fn status(op: &'static str, code: i32, err: &[c_char; ERR_LEN]) -> Result<()> {
    super::cost::record_last_launch();
    if code == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message into the whole buffer (strncpy, then a
    // NUL at the last byte); the buffer was zeroed, so it is terminated even if nothing was
    // written.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(Error::KernelFault { op, message })
}

fn check_block_dim(op: &'static str, block_dim: u32) -> Result<()> {
    if block_dim == 0 || block_dim > u16::MAX as u32 {
        return Err(Error::InvalidArgument {
            op,
            message: format!("block_dim must be 1..=65535, got {block_dim}"),
        });
    }
    Ok(())
}

fn ptr<T>(s: &[T]) -> *mut u8 {
    s.as_ptr() as *mut u8
}

/// `reshape_and_cache` on the host implementation; see [`crate::reference::reshape_and_cache`].
pub fn reshape_and_cache<T: AscendCFloat>(
    p: &ReshapeAndCache,
    key: &[T],
    value: &[T],
    key_cache: &mut [T],
    value_cache: &mut [T],
    slot_mapping: &[i32],
    block_dim: u32,
) -> Result<()> {
    let refused = reshape_and_cache_with(
        p,
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        block_dim,
        Indices::Checked,
    )?;
    device_status::check("reshape_and_cache", refused)
}

/// Whether a host runner checks the device-side indices before the launch (as the public
/// runners do, like the reference), or leaves them to the kernels' own guards (as on the NPU,
/// where the indices live in device memory). Either way the host implementation bounds-checks
/// every global-memory access, so a bad index can fail the launch but never touch memory
/// outside the slices.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indices {
    Checked,
    #[cfg_attr(not(test), allow(dead_code))]
    KernelGuarded,
}

#[allow(clippy::too_many_arguments)]
fn reshape_and_cache_with<T: AscendCFloat>(
    p: &ReshapeAndCache,
    key: &[T],
    value: &[T],
    key_cache: &mut [T],
    value_cache: &mut [T],
    slot_mapping: &[i32],
    block_dim: u32,
    indices: Indices,
) -> Result<u64> {
    const OP: &str = "reshape_and_cache";
    check_block_dim(OP, block_dim)?;
    p.validate::<T>(
        key.len(),
        value.len(),
        key_cache.len(),
        value_cache.len(),
        slot_mapping.len(),
    )?;
    if indices == Indices::Checked {
        check_slots(p, slot_mapping)?;
    }
    let t = tiling::reshape_and_cache(p, std::mem::size_of::<T>())?;
    let mut words = vec![0i32; device_status::words(block_dim)];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: the lengths were checked against the tiling's shape above, so the kernel's global
    // tensors (sized from the same tiling, bounds-checked by the host implementation, whatever
    // the slots hold) lie inside these slices; the inputs are only read; the caches are
    // exclusively borrowed; `words` holds the 8 int32 each of the `block_dim` cores writes;
    // `err` holds ERR_LEN bytes.
    let code = unsafe {
        T::RESHAPE_AND_CACHE(
            block_dim,
            ptr(key),
            ptr(value),
            key_cache.as_mut_ptr().cast(),
            value_cache.as_mut_ptr().cast(),
            ptr(slot_mapping),
            words.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)?;
    Ok(device_status::refused(&words))
}

/// Decode paged attention on the host implementation over `cores` simulated vector cores; see
/// [`crate::reference::paged_attention`]. With fewer (sequence, KV head) pairs than cores, the
/// tiling splits each context across cores and a second launch merges the parts (both
/// launches' costs are in [`cost::take_launches`](super::cost::take_launches)).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<T: AscendCFloat>(
    p: &PagedAttention,
    out: &mut [T],
    query: &[T],
    key_cache: &[T],
    value_cache: &[T],
    block_tables: &[i32],
    seq_lens: &[i32],
    cores: u32,
) -> Result<()> {
    let refused = paged_attention_with(
        p,
        out,
        query,
        key_cache,
        value_cache,
        block_tables,
        seq_lens,
        cores,
        Indices::Checked,
    )?;
    device_status::check("paged_attention", refused)
}

#[allow(clippy::too_many_arguments)]
fn paged_attention_with<T: AscendCFloat>(
    p: &PagedAttention,
    out: &mut [T],
    query: &[T],
    key_cache: &[T],
    value_cache: &[T],
    block_tables: &[i32],
    seq_lens: &[i32],
    cores: u32,
    indices: Indices,
) -> Result<u64> {
    const OP: &str = "paged_attention";
    check_block_dim(OP, cores)?;
    p.validate::<T>(
        out.len(),
        query.len(),
        key_cache.len(),
        value_cache.len(),
        block_tables.len(),
        seq_lens.len(),
    )?;
    if indices == Indices::Checked {
        check_seqs(OP, &p.cache, p.max_blocks_per_seq, block_tables, seq_lens)?;
    }
    let t = tiling::paged_attention(p, std::mem::size_of::<T>(), cores)?;
    let block_dim = t.tasks().clamp(1, cores as usize) as u32;
    let mut workspace = vec![0f32; t.workspace_floats()];
    let ws = if workspace.is_empty() {
        std::ptr::null_mut()
    } else {
        workspace.as_mut_ptr().cast()
    };
    let mut words = vec![0i32; device_status::words(block_dim)];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: as in `reshape_and_cache`: the lengths were checked, so every global tensor of the
    // kernel is inside these slices (and the host implementation bounds-checks each access); only
    // `out` (exclusively borrowed) and the workspace (sized by the tiling, ours) are written.
    let code = unsafe {
        T::PAGED_ATTENTION(
            block_dim,
            out.as_mut_ptr().cast(),
            ptr(query),
            ptr(key_cache),
            ptr(value_cache),
            ptr(block_tables),
            ptr(seq_lens),
            ws,
            words.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)?;
    if t.partitions > 1 {
        let pairs = (t.num_seqs as usize * t.num_heads as usize).clamp(1, cores as usize) as u32;
        // SAFETY: the merge reads the workspace the launch above filled (sized by the same
        // tiling) and writes `out`, exclusively borrowed.
        let code = unsafe {
            T::PAGED_ATTENTION_MERGE(
                pairs,
                out.as_mut_ptr().cast(),
                ws,
                &t,
                err.as_mut_ptr(),
                ERR_LEN,
            )
        };
        status(OP, code, &err)?;
    }
    Ok(device_status::refused(&words))
}

/// Paged prefill attention on the host implementation over `cores` simulated vector cores (tiles
/// of query tokens per KV head, each reading its sequence's K/V once); see
/// [`crate::reference::paged_prefill_attention`].
#[allow(clippy::too_many_arguments)]
pub fn paged_prefill_attention<T: AscendCFloat>(
    p: &PrefillAttention,
    out: &mut [T],
    query: &[T],
    key_cache: &[T],
    value_cache: &[T],
    block_tables: &[i32],
    query_start_loc: &[i32],
    seq_lens: &[i32],
    cores: u32,
) -> Result<()> {
    const OP: &str = "paged_prefill_attention";
    check_block_dim(OP, cores)?;
    p.validate::<T>(
        out.len(),
        query.len(),
        key_cache.len(),
        value_cache.len(),
        block_tables.len(),
        query_start_loc.len(),
        seq_lens.len(),
    )?;
    query_ranges(p, query_start_loc, seq_lens)?;
    check_seqs(OP, &p.cache, p.max_blocks_per_seq, block_tables, seq_lens)?;
    let t = tiling::paged_prefill_attention(p, std::mem::size_of::<T>(), cores)?;
    let block_dim = t.tasks().clamp(1, cores as usize) as u32;
    let mut words = vec![0i32; device_status::words(block_dim)];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: as in `paged_attention`: the lengths and indices were checked, so every global
    // tensor of the kernel is inside these slices; only `out` is written, exclusively borrowed.
    let code = unsafe {
        T::PAGED_PREFILL_ATTENTION(
            block_dim,
            out.as_mut_ptr().cast(),
            ptr(query),
            ptr(key_cache),
            ptr(value_cache),
            ptr(block_tables),
            ptr(query_start_loc),
            ptr(seq_lens),
            words.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)?;
    device_status::check(OP, device_status::refused(&words))
}

/// `copy_blocks` on the host implementation; see [`crate::reference::copy_blocks`]. The
/// kernel runs its pairs in parallel: no block may be both a source and a destination, or the
/// destination of two pairs (refused here; the ACL backend splits such a batch into waves).
pub fn copy_blocks<T: AscendCFloat>(
    c: &CacheShape,
    key_cache: &mut [T],
    value_cache: &mut [T],
    pairs: &[(u32, u32)],
    block_dim: u32,
) -> Result<()> {
    const OP: &str = "copy_blocks";
    check_block_dim(OP, block_dim)?;
    crate::reference::check_pairs(c, key_cache.len(), value_cache.len(), pairs)?;
    if crate::ops::copy_waves(pairs).len() > 1 {
        return Err(Error::InvalidArgument {
            op: OP,
            message: "a block is both copied from and to, or copied to twice: one launch runs \
                      its pairs in parallel"
                .into(),
        });
    }
    let t = tiling::copy_blocks(c, pairs.len(), std::mem::size_of::<T>())?;
    let flat: Vec<i32> = pairs
        .iter()
        .flat_map(|&(s, d)| [s as i32, d as i32])
        .collect();
    let mut words = vec![0i32; device_status::words(block_dim)];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: the cache lengths and every pair were checked, so the kernel's global tensors lie
    // inside these slices; the caches are exclusively borrowed (written), the pairs only read.
    let code = unsafe {
        T::COPY_BLOCKS(
            block_dim,
            key_cache.as_mut_ptr().cast(),
            value_cache.as_mut_ptr().cast(),
            ptr(&flat),
            words.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)?;
    device_status::check(OP, device_status::refused(&words))
}

/// RoPE (NeoX or GPT-J pairing) on the host implementation; see
/// [`crate::reference::rotary_embedding`].
pub fn rotary_embedding<T: AscendCFloat>(
    p: &Rotary,
    positions: &[i64],
    query: &mut [T],
    key: &mut [T],
    cos_sin_cache: &[f32],
    block_dim: u32,
) -> Result<()> {
    let refused = rotary_embedding_with(
        p,
        positions,
        query,
        key,
        cos_sin_cache,
        block_dim,
        Indices::Checked,
    )?;
    device_status::check("rotary_embedding", refused)
}

fn rotary_embedding_with<T: AscendCFloat>(
    p: &Rotary,
    positions: &[i64],
    query: &mut [T],
    key: &mut [T],
    cos_sin_cache: &[f32],
    block_dim: u32,
    indices: Indices,
) -> Result<u64> {
    const OP: &str = "rotary_embedding";
    check_block_dim(OP, block_dim)?;
    p.validate::<T>(positions.len(), query.len(), key.len(), cos_sin_cache.len())?;
    if indices == Indices::Checked {
        check_positions(p, positions)?;
    }
    let t = tiling::rotary_embedding(p, std::mem::size_of::<T>())?;
    let mut words = vec![0i32; device_status::words(block_dim)];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: shapes were checked, so the kernel's global tensors are inside these slices (each
    // access bounds-checked by the host implementation); query
    // and key are exclusively borrowed and distinct.
    let code = unsafe {
        T::ROTARY_EMBEDDING(
            block_dim,
            ptr(positions),
            query.as_mut_ptr().cast(),
            key.as_mut_ptr().cast(),
            ptr(cos_sin_cache),
            words.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)?;
    Ok(device_status::refused(&words))
}

/// RMSNorm on the host implementation; see [`crate::reference::rms_norm`].
pub fn rms_norm<T: AscendCFloat>(
    p: &RmsNorm,
    out: &mut [T],
    x: &[T],
    weight: &[T],
    block_dim: u32,
) -> Result<()> {
    const OP: &str = "rms_norm";
    check_block_dim(OP, block_dim)?;
    p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
    let t = tiling::rms_norm(p, std::mem::size_of::<T>(), false)?;
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: shapes checked; the kernel does not touch the residual when `fused` is 0, so a
    // null pointer is never dereferenced; `out` is exclusively borrowed.
    let code = unsafe {
        T::RMS_NORM(
            block_dim,
            ptr(x),
            std::ptr::null_mut(),
            ptr(weight),
            out.as_mut_ptr().cast(),
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)
}

/// Fused residual add + RMSNorm, in place, on the host implementation; see
/// [`crate::reference::fused_add_rms_norm`].
pub fn fused_add_rms_norm<T: AscendCFloat>(
    p: &RmsNorm,
    x: &mut [T],
    residual: &mut [T],
    weight: &[T],
    block_dim: u32,
) -> Result<()> {
    const OP: &str = "fused_add_rms_norm";
    check_block_dim(OP, block_dim)?;
    p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
    let t = tiling::rms_norm(p, std::mem::size_of::<T>(), true)?;
    let mut err = [0 as c_char; ERR_LEN];
    let x_ptr: *mut u8 = x.as_mut_ptr().cast();
    // SAFETY: shapes checked; `x` is both input and output, which the kernel allows (each row is
    // read into the UB before its result is written back); `residual` is exclusively borrowed.
    let code = unsafe {
        T::RMS_NORM(
            block_dim,
            x_ptr,
            residual.as_mut_ptr().cast(),
            ptr(weight),
            x_ptr,
            &t,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    status(OP, code, &err)
}

/// One broken hardware rule each: kernels that a 910B would reject or run wrongly, for showing
/// the host implementation catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Violation {
    /// 2 x 96 KiB of queue buffers: past the 184 KiB of Unified Buffer.
    UbOverflow = 0,
    /// `DataCopy` of 20 floats (80 bytes): not whole 32-byte blocks.
    MisalignedCopy,
    /// `DataCopy` into a UB tensor 16 bytes into its buffer.
    MisalignedOperand,
    /// `DataCopy` into a tensor after `FreeTensor`.
    UseAfterFree,
    /// Two `EnQue`s on a queue of depth 1.
    QueueDepth,
    /// A third `AllocTensor` from a double-buffered queue with none freed.
    AllocExhausted,
    /// A `DataCopy` reading past its global buffer.
    GmOutOfRange,
    /// A `SetFlag` without its `WaitFlag`.
    UnpairedFlag,
    /// `ReduceMax` with its work tensor inside its source.
    ReduceWorkOverlap,
    /// `ReduceMax` of 1024 floats with 16 floats of work tensor (32 needed).
    ReduceWorkTooSmall,
    /// `GetValue` of a value `Duplicate` wrote, with no `V_S` flag between.
    ScalarReadUnsynced,
    /// `Adds` reading a value `SetValue` wrote, with no `S_V` flag between.
    VectorReadUnsynced,
    /// `Adds` reading what `DataCopy` loaded into a `TBuf`, with no `MTE2_V` synchronisation.
    Mte2ToVectorUnsynced,
    /// `DataCopy` storing what `Duplicate` wrote, with no `V_MTE3` synchronisation.
    VectorToMte3Unsynced,
    /// `DataCopy` refilling a dequeued tensor the vector unit read, without `FreeTensor` /
    /// `AllocTensor` (`V_MTE2`) between.
    RefillWithoutFree,
}

/// Runs the kernel that breaks `v`'s rule and returns what the host implementation said.
pub fn run_violation(v: Violation) -> Result<()> {
    let mut gm = vec![0f32; 64];
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: every violation kernel treats `gm` as 64 floats, the vector's length; `err` holds
    // ERR_LEN bytes.
    let code = unsafe {
        ascendc_host_violation(v as u32, gm.as_mut_ptr().cast(), err.as_mut_ptr(), ERR_LEN)
    };
    status("violation", code, &err)
}

/// The kernels' device-side guards: with the host-side index checks off (as on the NPU, where
/// the indices live in device memory), out-of-range slots, lengths, block ids and positions
/// must neither fail the launch nor touch memory outside the buffers (the host implementation
/// refuses any global access outside them), and must give the documented result.
#[cfg(test)]
mod device_guards {
    use super::*;
    use crate::reference;
    use crate::shapes::{CacheShape, RopeStyle};

    const CACHE: CacheShape = CacheShape {
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
    };

    fn ramp(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + salt).sin() * 0.5)
            .collect()
    }

    #[test]
    fn slots_past_the_cache_are_skipped() {
        let p = ReshapeAndCache {
            num_tokens: 6,
            cache: CACHE,
        };
        let row = CACHE.num_kv_heads * CACHE.head_size;
        let (key, value) = (ramp(6 * row, 1.0), ramp(6 * row, 2.0));
        let slots_total = CACHE.slots() as i32;
        let bad = [0, slots_total, 5, i32::MAX, -1, slots_total - 1];
        // What the kernel must do: exactly what the reference does with the bad slots skipped.
        let skipped: Vec<i32> = bad
            .iter()
            .map(|&s| if s >= slots_total { -1 } else { s })
            .collect();
        let mut want = (
            vec![7.0f32; CACHE.elements()],
            vec![7.0f32; CACHE.elements()],
        );
        reference::reshape_and_cache(&p, &key, &value, &mut want.0, &mut want.1, &skipped).unwrap();
        for cores in [1, 4] {
            let mut got = (
                vec![7.0f32; CACHE.elements()],
                vec![7.0f32; CACHE.elements()],
            );
            let refused = reshape_and_cache_with(
                &p,
                &key,
                &value,
                &mut got.0,
                &mut got.1,
                &bad,
                cores,
                Indices::KernelGuarded,
            )
            .unwrap();
            assert_eq!(got, want, "{cores} cores");
            // The two slots past the cache are reported (the negative one is padding).
            assert_eq!(refused, 2, "{cores} cores");
            let e = device_status::check("reshape_and_cache", refused).unwrap_err();
            assert!(
                e.to_string()
                    .contains("2 slot_mapping entries past the end of the cache were skipped"),
                "{e}"
            );
        }
        // The public runner refuses them before the launch, as the reference does.
        let mut caches = (
            vec![0.0f32; CACHE.elements()],
            vec![0.0f32; CACHE.elements()],
        );
        let e =
            reshape_and_cache(&p, &key, &value, &mut caches.0, &mut caches.1, &bad, 1).unwrap_err();
        assert!(
            e.to_string().contains("slot_mapping[1] = 64 is outside"),
            "{e}"
        );
    }

    #[test]
    fn sequences_with_bad_lengths_or_blocks_get_zeros() {
        let p = PagedAttention {
            num_seqs: 6,
            num_heads: 4,
            cache: CACHE,
            max_blocks_per_seq: 2,
            scale: 0.125,
            sliding_window: None,
        };
        let q = ramp(6 * 4 * 64, 3.0);
        let (kc, vc) = (ramp(CACHE.elements(), 4.0), ramp(CACHE.elements(), 5.0));
        let good_table = [0, 1];
        // 0: fine; 1: length past its table (2 blocks x 16); 2: negative length; 3: a block id
        // past the cache; 4: a negative block id inside the attended range; 5: fine, with a bad
        // entry beyond its length (never read, so not an error).
        let tables = [
            good_table,
            good_table,
            good_table,
            [2, 4],
            [-3, 1],
            [3, i32::MIN],
        ];
        let lens = [20, 33, -1, 17, 5, 16];
        let table: Vec<i32> = tables.concat();
        let mut want = vec![0.0f32; q.len()];
        let valid = [0usize, 5];
        for &s in &valid {
            let one = PagedAttention { num_seqs: 1, ..p };
            let mut o = vec![0.0f32; 4 * 64];
            reference::paged_attention(
                &one,
                &mut o,
                &q[s * 256..][..256],
                &kc,
                &vc,
                &[tables[s][0], tables[s][1].max(0)],
                &[lens[s]],
            )
            .unwrap();
            want[s * 256..][..256].copy_from_slice(&o);
        }
        for cores in [1, 5] {
            let mut out = vec![9.0f32; q.len()];
            let refused = paged_attention_with(
                &p,
                &mut out,
                &q,
                &kc,
                &vc,
                &table,
                &lens,
                cores,
                Indices::KernelGuarded,
            )
            .unwrap();
            // Each bad sequence once, not once per KV head.
            assert_eq!(refused, 4, "{cores} cores");
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5,
                    "{cores} cores, element {i}: {g} vs {w}"
                );
            }
            // The invalid sequences are exactly zero.
            for s in [1, 2, 3, 4] {
                assert!(out[s * 256..][..256].iter().all(|&x| x == 0.0), "seq {s}");
            }
        }
    }

    #[test]
    fn positions_outside_the_table_zero_the_token() {
        let p = Rotary {
            num_tokens: 4,
            num_heads: 2,
            num_kv_heads: 1,
            head_size: 64,
            rotary_dim: 64,
            max_position: 8,
            style: RopeStyle::Neox,
        };
        let cs = ramp(8 * 64, 6.0);
        let (q0, k0) = (ramp(4 * 128, 7.0), ramp(4 * 64, 8.0));
        let positions = [3i64, 8, -1, 7];
        let (mut want_q, mut want_k) = (q0.clone(), k0.clone());
        reference::rotary_embedding(&p, &[3, 0, 0, 7], &mut want_q, &mut want_k, &cs).unwrap();
        for t in [1, 2] {
            want_q[t * 128..][..128].fill(0.0);
            want_k[t * 64..][..64].fill(0.0);
        }
        let (mut q, mut k) = (q0.clone(), k0.clone());
        rotary_embedding_with(
            &p,
            &positions,
            &mut q,
            &mut k,
            &cs,
            3,
            Indices::KernelGuarded,
        )
        .unwrap();
        for (g, w) in q.iter().chain(&k).zip(want_q.iter().chain(&want_k)) {
            assert!((g - w).abs() <= 1e-5, "{g} vs {w}");
        }
    }
}
