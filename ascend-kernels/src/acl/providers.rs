//! Which implementation serves each op of the ACL backend, and where ACLNN workspaces come from.
//!
//! As in vllm-ascend, an op comes from CANN's vendor-tuned ACLNN operators where CANN has one
//! that fits, and from this crate's Ascend C kernels where it does not:
//!
//! | op | default | also |
//! | --- | --- | --- |
//! | `matmul` | ACLNN `aclnnMatmul` | |
//! | `silu_and_mul` | ACLNN `aclnnSwiGlu` | |
//! | `rms_norm` | ACLNN `aclnnRmsNorm` | Ascend C `rms_norm` |
//! | `fused_add_rms_norm` | Ascend C `rms_norm` (fused, in place) | ACLNN `aclnnAddRmsNorm` (into scratch, copied back) |
//! | `paged_attention` | ACLNN `aclnnFusedInferAttentionScoreV2` (f16, bf16) | Ascend C |
//! | `paged_prefill_attention` | ACLNN `aclnnFusedInferAttentionScoreV2` (f16, bf16; blocks of 128-512) | Ascend C |
//! | `rotary_embedding` | Ascend C | ACLNN `aclnnRopeWithSinCosCache` (f32: its table must be the query's dtype) |
//! | `reshape_and_cache`, `copy_blocks` | Ascend C | |
//! | `embedding` | ACLNN `aclnnEmbedding` | |
//! | `add` | ACLNN `aclnnAdd` | |
//! | `argmax` | ACLNN `aclnnArgMax` (f32, f16) | |
//! | `top_k` | ACLNN `aclnnTopk` (f32, f16) | |
//!
//! `fused_add_rms_norm` defaults to the Ascend C kernel because the op is in place and CANN does
//! not document whether `aclnnAddRmsNorm` may write its outputs over its inputs; the ACLNN
//! choice writes into scratch buffers and copies back (two more device copies).
//!
//! Attention comes from CANN's fused operator as vllm-ascend's does
//! (`npu_fused_infer_attention_score`): decode steps through its incremental branch, chunked
//! prefill through its prompt branch with the right-down causal mask, a sliding window through
//! the band mode's `preTokens`. Where the operator cannot run a call (an f32 query, a block size
//! its prompt branch refuses, a window on a one-token query, a head past its limits), the call
//! falls back to the next provider of the op: the reason is logged once (the `log` crate,
//! target `ascend_kernels::acl`) and counted in [`fallbacks`]. A call no provider runs is an
//! error naming the op and every provider's reason.
//!
//! An engine changes a choice with [`set_provider`] (process-wide, before or between steps).
//! ACLNN workspaces (and the ACLNN norms' scratch) come from a per-device allocator: a
//! [`CachingAllocator`] made on first use, or the engine's own through
//! [`set_workspace_allocator`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ascend_hal::acl::{AclBackend, AclDevice};
use ascend_hal::alloc::{CachingAllocator, SharedAllocator};
use ascend_hal::{Device, Error, Result};

/// Where the ACL backend takes an op from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// This crate's Ascend C kernels (`libascendc_kernels.so`, built with the `ascend-c`
    /// feature; `ASCEND_KERNELS_LIB` overrides).
    AscendC,
    /// CANN's ACLNN operators (`libopapi.so`, see `ascend_hal::acl::aclnn`).
    Aclnn,
}

/// The ops of [`KernelOps`](crate::KernelOps), as the ACL backend's provider table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclOp {
    /// `reshape_and_cache`.
    ReshapeAndCache,
    /// Decode `paged_attention`.
    PagedAttention,
    /// `paged_prefill_attention`.
    PagedPrefillAttention,
    /// `rotary_embedding`.
    RotaryEmbedding,
    /// `rms_norm`.
    RmsNorm,
    /// `fused_add_rms_norm`.
    FusedAddRmsNorm,
    /// `silu_and_mul`.
    SiluAndMul,
    /// `matmul`.
    Matmul,
    /// `copy_blocks`.
    CopyBlocks,
    /// `embedding`.
    Embedding,
    /// `add`.
    Add,
    /// `argmax`.
    Argmax,
    /// `top_k`.
    TopK,
}

impl AclOp {
    /// Every op.
    pub const ALL: [AclOp; 13] = [
        AclOp::ReshapeAndCache,
        AclOp::PagedAttention,
        AclOp::PagedPrefillAttention,
        AclOp::RotaryEmbedding,
        AclOp::RmsNorm,
        AclOp::FusedAddRmsNorm,
        AclOp::SiluAndMul,
        AclOp::Matmul,
        AclOp::CopyBlocks,
        AclOp::Embedding,
        AclOp::Add,
        AclOp::Argmax,
        AclOp::TopK,
    ];

    /// The op's name in `KernelOps`.
    pub fn name(self) -> &'static str {
        match self {
            AclOp::ReshapeAndCache => "reshape_and_cache",
            AclOp::PagedAttention => "paged_attention",
            AclOp::PagedPrefillAttention => "paged_prefill_attention",
            AclOp::RotaryEmbedding => "rotary_embedding",
            AclOp::RmsNorm => "rms_norm",
            AclOp::FusedAddRmsNorm => "fused_add_rms_norm",
            AclOp::SiluAndMul => "silu_and_mul",
            AclOp::Matmul => "matmul",
            AclOp::CopyBlocks => "copy_blocks",
            AclOp::Embedding => "embedding",
            AclOp::Add => "add",
            AclOp::Argmax => "argmax",
            AclOp::TopK => "top_k",
        }
    }

    /// The providers that implement this op, the default first.
    pub fn providers(self) -> &'static [Provider] {
        use Provider::*;
        match self {
            AclOp::Matmul
            | AclOp::SiluAndMul
            | AclOp::Embedding
            | AclOp::Add
            | AclOp::Argmax
            | AclOp::TopK => &[Aclnn],
            AclOp::RmsNorm | AclOp::PagedAttention | AclOp::PagedPrefillAttention => {
                &[Aclnn, AscendC]
            }
            AclOp::FusedAddRmsNorm | AclOp::RotaryEmbedding => &[AscendC, Aclnn],
            AclOp::ReshapeAndCache | AclOp::CopyBlocks => &[AscendC],
        }
    }

    /// The ACLNN operator that serves the op with [`Provider::Aclnn`], if it has one.
    pub fn aclnn_operator(self) -> Option<&'static str> {
        Some(match self {
            AclOp::Matmul => "aclnnMatmul",
            AclOp::SiluAndMul => "aclnnSwiGlu",
            AclOp::RmsNorm => "aclnnRmsNorm",
            AclOp::FusedAddRmsNorm => "aclnnAddRmsNorm",
            AclOp::Embedding => "aclnnEmbedding",
            AclOp::Add => "aclnnAdd",
            AclOp::Argmax => "aclnnArgMax",
            AclOp::TopK => "aclnnTopk",
            AclOp::PagedAttention | AclOp::PagedPrefillAttention => {
                "aclnnFusedInferAttentionScoreV2"
            }
            AclOp::RotaryEmbedding => "aclnnRopeWithSinCosCache",
            AclOp::ReshapeAndCache | AclOp::CopyBlocks => return None,
        })
    }

    /// The documented default provider.
    pub fn default_provider(self) -> Provider {
        self.providers()[0]
    }
}

static CHOSEN: RwLock<Option<HashMap<AclOp, Provider>>> = RwLock::new(None);

/// The provider that serves `op` now.
pub fn provider(op: AclOp) -> Provider {
    CHOSEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(&op).copied())
        .unwrap_or_else(|| op.default_provider())
}

/// Serves `op` from `provider` from now on, in this process (a call it cannot run still falls
/// back to the op's other providers). [`Error::InvalidArgument`] if the provider has no
/// implementation of the op (there is no Ascend C GEMM, no ACLNN `copy_blocks` in this crate).
pub fn set_provider(op: AclOp, provider: Provider) -> Result<()> {
    if !op.providers().contains(&provider) {
        return Err(Error::InvalidArgument {
            op: "set_provider",
            message: format!(
                "{} has no {provider:?} implementation on the ACL backend; it has {:?}",
                op.name(),
                op.providers()
            ),
        });
    }
    CHOSEN
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(op, provider);
    Ok(())
}

/// Puts every op back on its default provider.
pub fn reset_providers() {
    *CHOSEN.write().unwrap_or_else(|p| p.into_inner()) = None;
}

/// What a provider did with one call of an op.
pub(crate) enum Served {
    /// It queued the work.
    Done,
    /// It cannot run this call (nothing was queued), and why.
    Declined(String),
}

/// A call that went past a provider which could not run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The op.
    pub op: AclOp,
    /// The provider that declined.
    pub from: Provider,
    /// The provider that ran the call.
    pub to: Provider,
    /// Why `from` declined.
    pub reason: String,
    /// Calls that fell back for this reason.
    pub count: u64,
}

static FALLBACKS: Mutex<Vec<Fallback>> = Mutex::new(Vec::new());

/// Every fallback since the process started (or [`clear_fallbacks`]), one entry per op,
/// provider pair and reason.
pub fn fallbacks() -> Vec<Fallback> {
    FALLBACKS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Forgets the recorded fallbacks.
pub fn clear_fallbacks() {
    FALLBACKS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

fn record_fallback(op: AclOp, from: Provider, to: Provider, reason: &str) {
    let mut all = FALLBACKS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = all
        .iter_mut()
        .find(|f| f.op == op && f.from == from && f.to == to && f.reason == reason)
    {
        f.count += 1;
        return;
    }
    log::warn!(
        target: "ascend_kernels::acl",
        "{}: {from:?} cannot run this call ({reason}); {to:?} runs it",
        op.name()
    );
    all.push(Fallback {
        op,
        from,
        to,
        reason: reason.to_string(),
        count: 1,
    });
}

/// Runs one call of `op`: its chosen provider first, then the op's other providers in order,
/// until one queues the work. A provider that declines has queued nothing. An error ends the
/// call (a provider's own failure is not a reason to try another).
pub(crate) fn serve(op: AclOp, mut run: impl FnMut(Provider) -> Result<Served>) -> Result<()> {
    let first = provider(op);
    let order =
        std::iter::once(first).chain(op.providers().iter().copied().filter(|&p| p != first));
    let mut declined: Vec<(Provider, String)> = Vec::new();
    for p in order {
        match run(p)? {
            Served::Done => {
                for (from, reason) in &declined {
                    record_fallback(op, *from, p, reason);
                }
                return Ok(());
            }
            Served::Declined(reason) => declined.push((p, reason)),
        }
    }
    Err(Error::InvalidArgument {
        op: op.name(),
        message: format!(
            "no provider of the ACL backend runs this call: {}",
            declined
                .iter()
                .map(|(p, r)| format!("{p:?}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

static WORKSPACES: Mutex<Vec<SharedAllocator<AclBackend>>> = Mutex::new(Vec::new());

/// Takes ACLNN workspaces for `allocator`'s device from `allocator` from now on (replacing the
/// default caching allocator, or an earlier choice).
pub fn set_workspace_allocator(allocator: SharedAllocator<AclBackend>) {
    let mut all = WORKSPACES.lock().unwrap_or_else(|p| p.into_inner());
    let ordinal = allocator.device().ordinal();
    all.retain(|a| a.device().ordinal() != ordinal);
    all.push(allocator);
}

/// Drops every workspace allocator and the fused attention's mask on each device (the defaults
/// keep their device open for the life of the process otherwise, as torch_npu's caching
/// allocator does).
pub fn clear_workspace_allocators() {
    super::fused::clear_masks();
    WORKSPACES.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The workspace allocator of `device`, made on first use.
pub(crate) fn workspace_allocator(device: &AclDevice) -> Result<SharedAllocator<AclBackend>> {
    let mut all = WORKSPACES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = all
        .iter()
        .find(|a| a.device().ordinal() == device.ordinal())
    {
        return Ok(Arc::clone(a));
    }
    let made: SharedAllocator<AclBackend> =
        Arc::new(CachingAllocator::new(device, Default::default())?);
    all.push(Arc::clone(&made));
    Ok(made)
}
