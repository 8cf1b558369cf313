//! The ACL backend's kernel ops. The Ascend C kernels are not part of this build yet, so every
//! op reports [`Error::KernelUnavailable`] with what to do, instead of failing obscurely.

use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::{Error, Result};

use crate::float::KvFloat;
use crate::ops::{In, KernelOps, Out};
use crate::shapes::{
    CacheShape, Matmul, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, Rotary,
    SiluAndMul,
};

const REASON: &str = "this build of ascend-kernels has no NPU (Ascend C) kernels yet; run the \
                      model on the CPU backend (ASCEND_HAL_BACKEND=cpu) until they land";

fn unavailable(op: &'static str) -> Result<()> {
    Err(Error::KernelUnavailable {
        backend: "acl",
        op,
        reason: REASON,
    })
}

impl KernelOps for AclBackend {
    fn kernels_available() -> std::result::Result<(), &'static str> {
        Err(REASON)
    }

    fn reshape_and_cache<T: KvFloat>(
        _: &AclStream,
        _: &ReshapeAndCache,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
        _: Out<'_, Self, T>,
        _: Out<'_, Self, T>,
        _: In<'_, Self, i32>,
    ) -> Result<()> {
        unavailable("reshape_and_cache")
    }

    fn paged_attention<T: KvFloat>(
        _: &AclStream,
        _: &PagedAttention,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, i32>,
        _: In<'_, Self, i32>,
    ) -> Result<()> {
        unavailable("paged_attention")
    }

    fn paged_prefill_attention<T: KvFloat>(
        _: &AclStream,
        _: &PrefillAttention,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, i32>,
        _: In<'_, Self, i32>,
        _: In<'_, Self, i32>,
    ) -> Result<()> {
        unavailable("paged_prefill_attention")
    }

    fn rotary_embedding<T: KvFloat>(
        _: &AclStream,
        _: &Rotary,
        _: In<'_, Self, i64>,
        _: Out<'_, Self, T>,
        _: Out<'_, Self, T>,
        _: In<'_, Self, f32>,
    ) -> Result<()> {
        unavailable("rotary_embedding")
    }

    fn rms_norm<T: KvFloat>(
        _: &AclStream,
        _: &RmsNorm,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
    ) -> Result<()> {
        unavailable("rms_norm")
    }

    fn fused_add_rms_norm<T: KvFloat>(
        _: &AclStream,
        _: &RmsNorm,
        _: Out<'_, Self, T>,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
    ) -> Result<()> {
        unavailable("fused_add_rms_norm")
    }

    fn silu_and_mul<T: KvFloat>(
        _: &AclStream,
        _: &SiluAndMul,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
    ) -> Result<()> {
        unavailable("silu_and_mul")
    }

    fn matmul<T: KvFloat>(
        _: &AclStream,
        _: &Matmul,
        _: Out<'_, Self, T>,
        _: In<'_, Self, T>,
        _: In<'_, Self, T>,
    ) -> Result<()> {
        unavailable("matmul")
    }

    fn copy_blocks<T: KvFloat>(
        _: &AclStream,
        _: &CacheShape,
        _: Out<'_, Self, T>,
        _: Out<'_, Self, T>,
        _: &[(u32, u32)],
    ) -> Result<()> {
        unavailable("copy_blocks")
    }
}
