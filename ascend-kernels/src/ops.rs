//! The ops as backends expose them: called with device buffers on a stream, run in stream order.
//!
//! A backend implements [`KernelOps`]; the CPU backend (`hal-mock`) runs the fast CPU kernels on
//! the stream's worker thread, and the ACL backend launches the Ascend C kernels. Shapes are
//! checked before anything is queued, so a mismatch is an error naming the argument and the shape
//! it must have.

use ascend_hal::{
    Backend, DevicePtr, DeviceRepr, DeviceSlice, DeviceSliceMut, Element, Error, PinnedBuffer,
    Result, Stream, StreamExt,
};

use crate::float::KvFloat;
use crate::shapes::{
    CacheShape, Matmul, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, Rotary,
    SiluAndMul,
};

/// Read-only device views of a backend.
pub type In<'a, B, T> = DeviceSlice<'a, B, T>;
/// Writable device views of a backend.
pub type Out<'a, B, T> = DeviceSliceMut<'a, B, T>;

/// The decode-step ops on a backend's streams.
pub trait KernelOps: Backend {
    /// `Err` with the reason when this backend cannot run the kernels in this build (checked
    /// before a workload starts; every op then fails with [`Error::KernelUnavailable`]).
    ///
    /// [`Error::KernelUnavailable`]: ascend_hal::Error::KernelUnavailable
    fn kernels_available() -> std::result::Result<(), &'static str> {
        Ok(())
    }

    /// See [`cpu::reshape_and_cache`](crate::cpu::reshape_and_cache).
    fn reshape_and_cache<T: KvFloat>(
        stream: &Self::Stream,
        p: &ReshapeAndCache,
        key: In<'_, Self, T>,
        value: In<'_, Self, T>,
        key_cache: Out<'_, Self, T>,
        value_cache: Out<'_, Self, T>,
        slot_mapping: In<'_, Self, i32>,
    ) -> Result<()>;

    /// See [`cpu::paged_attention`](crate::cpu::paged_attention).
    #[allow(clippy::too_many_arguments)]
    fn paged_attention<T: KvFloat>(
        stream: &Self::Stream,
        p: &PagedAttention,
        out: Out<'_, Self, T>,
        query: In<'_, Self, T>,
        key_cache: In<'_, Self, T>,
        value_cache: In<'_, Self, T>,
        block_tables: In<'_, Self, i32>,
        seq_lens: In<'_, Self, i32>,
    ) -> Result<()>;

    /// See [`cpu::paged_prefill_attention`](crate::cpu::paged_prefill_attention).
    #[allow(clippy::too_many_arguments)]
    fn paged_prefill_attention<T: KvFloat>(
        stream: &Self::Stream,
        p: &PrefillAttention,
        out: Out<'_, Self, T>,
        query: In<'_, Self, T>,
        key_cache: In<'_, Self, T>,
        value_cache: In<'_, Self, T>,
        block_tables: In<'_, Self, i32>,
        query_start_loc: In<'_, Self, i32>,
        seq_lens: In<'_, Self, i32>,
    ) -> Result<()>;

    /// See [`cpu::rotary_embedding`](crate::cpu::rotary_embedding).
    fn rotary_embedding<T: KvFloat>(
        stream: &Self::Stream,
        p: &Rotary,
        positions: In<'_, Self, i64>,
        query: Out<'_, Self, T>,
        key: Out<'_, Self, T>,
        cos_sin_cache: In<'_, Self, f32>,
    ) -> Result<()>;

    /// See [`cpu::rms_norm`](crate::cpu::rms_norm).
    fn rms_norm<T: KvFloat>(
        stream: &Self::Stream,
        p: &RmsNorm,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()>;

    /// See [`cpu::fused_add_rms_norm`](crate::cpu::fused_add_rms_norm).
    fn fused_add_rms_norm<T: KvFloat>(
        stream: &Self::Stream,
        p: &RmsNorm,
        x: Out<'_, Self, T>,
        residual: Out<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()>;

    /// See [`cpu::silu_and_mul`](crate::cpu::silu_and_mul).
    fn silu_and_mul<T: KvFloat>(
        stream: &Self::Stream,
        p: &SiluAndMul,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
    ) -> Result<()>;

    /// See [`cpu::matmul`](crate::cpu::matmul).
    fn matmul<T: KvFloat>(
        stream: &Self::Stream,
        p: &Matmul,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()>;

    /// See [`cpu::copy_blocks`](crate::cpu::copy_blocks).
    fn copy_blocks<T: KvFloat>(
        stream: &Self::Stream,
        cache: &CacheShape,
        key_cache: Out<'_, Self, T>,
        value_cache: Out<'_, Self, T>,
        pairs: &[(u32, u32)],
    ) -> Result<()>;
}

/// The device address of an op's argument `what`, after checking that it lives on the device of
/// the stream the op runs on ([`Error::WrongDevice`] otherwise). For backends' [`KernelOps`]
/// implementations.
pub fn device_arg<B: Backend, T: Element, R: DeviceRepr<B, T>>(
    op: &'static str,
    stream: &B::Stream,
    what: &'static str,
    view: &R,
) -> Result<DevicePtr> {
    if view.device_ordinal() != stream.device_ordinal() {
        return Err(Error::WrongDevice {
            op,
            what,
            expected: stream.device_ordinal(),
            actual: view.device_ordinal(),
        });
    }
    Ok(view.device_ptr())
}

/// Splits copy-on-write pairs into waves that a parallel kernel can run one after another with
/// the result of running the pairs in order: within a wave no block is both a source and a
/// destination, and no block is the destination of two pairs. Usually one wave (copy-on-write
/// copies a shared block into a fresh one).
pub fn copy_waves(pairs: &[(u32, u32)]) -> Vec<&[(u32, u32)]> {
    let mut waves = Vec::new();
    let (mut start, mut srcs, mut dsts) = (
        0,
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    for (i, &(s, d)) in pairs.iter().enumerate() {
        if dsts.contains(&s) || dsts.contains(&d) || srcs.contains(&d) {
            waves.push(&pairs[start..i]);
            start = i;
            srcs.clear();
            dsts.clear();
        }
        srcs.insert(s);
        dsts.insert(d);
    }
    if start < pairs.len() {
        waves.push(&pairs[start..]);
    }
    waves
}

/// Copies blocks of a device cache out to pinned host memory: `pairs` are `(device block, host
/// block)`. Any backend; ordered on `stream`, and the pinned buffer fences itself.
pub fn swap_out<B: Backend, T: KvFloat>(
    stream: &B::Stream,
    cache: &CacheShape,
    device: In<'_, B, T>,
    host: &mut PinnedBuffer<B, T>,
    pairs: &[(u32, u32)],
) -> Result<()> {
    let n = cache.block_stride();
    check_swap(
        cache,
        ascend_hal::DeviceRepr::len(&device),
        host.len(),
        pairs.iter().copied(),
    )?;
    for &(d, h) in pairs {
        let src = device.sub(d as usize * n..(d as usize + 1) * n)?;
        stream.copy_d2h_at(&src, host, h as usize * n)?;
    }
    Ok(())
}

/// Copies blocks of pinned host memory into a device cache: `pairs` are `(host block, device
/// block)`.
pub fn swap_in<B: Backend, T: KvFloat>(
    stream: &B::Stream,
    cache: &CacheShape,
    host: &PinnedBuffer<B, T>,
    mut device: Out<'_, B, T>,
    pairs: &[(u32, u32)],
) -> Result<()> {
    let n = cache.block_stride();
    check_swap(
        cache,
        ascend_hal::DeviceRepr::len(&device),
        host.len(),
        pairs.iter().map(|&(h, d)| (d, h)),
    )?;
    for &(h, d) in pairs {
        let mut dst = device.sub_mut(d as usize * n..(d as usize + 1) * n)?;
        stream.copy_h2d_at(host, h as usize * n, &mut dst)?;
    }
    Ok(())
}

fn check_swap(
    c: &CacheShape,
    device_len: usize,
    host_len: usize,
    pairs: impl Iterator<Item = (u32, u32)>,
) -> Result<()> {
    let n = c.block_stride();
    if device_len != c.elements() || !host_len.is_multiple_of(n) {
        return Err(ascend_hal::Error::ShapeMismatch {
            op: "swap_blocks",
            arg: "cache",
            expected: format!(
                "a device cache of {} elements and a host buffer of whole {n}-element blocks",
                c.elements()
            ),
            actual: format!("{device_len} and {host_len} elements"),
        });
    }
    let host_blocks = host_len / n;
    for (d, h) in pairs {
        if d as usize >= c.num_blocks || h as usize >= host_blocks {
            return Err(ascend_hal::Error::InvalidArgument {
                op: "swap_blocks",
                message: format!(
                    "device block {d} / host block {h}: the device has {} blocks, the host {host_blocks}",
                    c.num_blocks
                ),
            });
        }
    }
    Ok(())
}
