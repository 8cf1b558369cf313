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
//! | `reshape_and_cache`, `paged_attention`, `paged_prefill_attention`, `rotary_embedding`, `copy_blocks` | Ascend C | |
//! | `embedding` | ACLNN `aclnnEmbedding` | |
//! | `add` | ACLNN `aclnnAdd` | |
//! | `argmax` | ACLNN `aclnnArgMax` (f32, f16) | |
//! | `top_k` | ACLNN `aclnnTopk` (f32, f16) | |
//!
//! `fused_add_rms_norm` defaults to the Ascend C kernel because the op is in place and CANN does
//! not document whether `aclnnAddRmsNorm` may write its outputs over its inputs; the ACLNN
//! choice writes into scratch buffers and copies back (two more device copies).
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
            AclOp::RmsNorm => &[Aclnn, AscendC],
            AclOp::FusedAddRmsNorm => &[AscendC, Aclnn],
            AclOp::ReshapeAndCache
            | AclOp::PagedAttention
            | AclOp::PagedPrefillAttention
            | AclOp::RotaryEmbedding
            | AclOp::CopyBlocks => &[AscendC],
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
            _ => return None,
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

/// Serves `op` from `provider` from now on, in this process. [`Error::InvalidArgument`] if the
/// provider has no implementation of the op (there is no Ascend C GEMM, no ACLNN paged
/// attention in this crate).
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

static WORKSPACES: Mutex<Vec<SharedAllocator<AclBackend>>> = Mutex::new(Vec::new());

/// Takes ACLNN workspaces for `allocator`'s device from `allocator` from now on (replacing the
/// default caching allocator, or an earlier choice).
pub fn set_workspace_allocator(allocator: SharedAllocator<AclBackend>) {
    let mut all = WORKSPACES.lock().unwrap_or_else(|p| p.into_inner());
    let ordinal = allocator.device().ordinal();
    all.retain(|a| a.device().ordinal() != ordinal);
    all.push(allocator);
}

/// Drops every workspace allocator (the defaults keep their device open for the life of the
/// process otherwise, as torch_npu's caching allocator does).
pub fn clear_workspace_allocators() {
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
