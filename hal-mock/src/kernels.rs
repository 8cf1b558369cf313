//! The CPU backend's kernels: `ascend_kernels::cpu`, run on the stream's worker in stream order,
//! over the device memory of the ops' arguments.

use ascend_hal::{DevicePtr, DeviceRepr, Error, Result};
use ascend_kernels::{
    cpu, device_arg, CacheShape, In, KernelOps, KvFloat, Matmul, Out, PagedAttention,
    PrefillAttention, ReshapeAndCache, RmsNorm, Rotary, SiluAndMul,
};

use crate::backend::CpuBackend;
use crate::stream::CpuStream;

fn range<T: ascend_hal::Element, R: DeviceRepr<CpuBackend, T>>(
    op: &'static str,
    stream: &CpuStream,
    arg: &'static str,
    view: &R,
) -> Result<(DevicePtr, usize)> {
    let ptr = device_arg::<CpuBackend, T, R>(op, stream, arg, view)?;
    Ok((ptr, view.size_in_bytes()))
}

fn typed<'a, T: bytemuck::Pod>(op: &'static str, bytes: &'a [u8]) -> Result<&'a [T]> {
    if bytes.is_empty() {
        return Ok(&[]);
    }
    bytemuck::try_cast_slice(bytes).map_err(|e| Error::InvalidArgument {
        op,
        message: format!(
            "device memory not viewable as {}: {e}",
            std::any::type_name::<T>()
        ),
    })
}

fn typed_mut<'a, T: bytemuck::Pod>(op: &'static str, bytes: &'a mut [u8]) -> Result<&'a mut [T]> {
    if bytes.is_empty() {
        return Ok(&mut []);
    }
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::InvalidArgument {
        op,
        message: format!(
            "device memory not viewable as {}: {e}",
            std::any::type_name::<T>()
        ),
    })
}

/// Splits the written slices into two distinct `&mut`.
fn two<'a>(w: &'a mut [&mut [u8]]) -> (&'a mut [u8], &'a mut [u8]) {
    let (a, b) = w.split_at_mut(1);
    (&mut *a[0], &mut *b[0])
}

impl KernelOps for CpuBackend {
    fn reshape_and_cache<T: KvFloat>(
        stream: &CpuStream,
        p: &ReshapeAndCache,
        key: In<'_, Self, T>,
        value: In<'_, Self, T>,
        key_cache: Out<'_, Self, T>,
        value_cache: Out<'_, Self, T>,
        slot_mapping: In<'_, Self, i32>,
    ) -> Result<()> {
        const OP: &str = "reshape_and_cache";
        p.validate::<T>(
            key.len(),
            value.len(),
            key_cache.len(),
            value_cache.len(),
            slot_mapping.len(),
        )?;
        let reads = [
            range(OP, stream, "key", &key)?,
            range(OP, stream, "value", &value)?,
            range(OP, stream, "slot_mapping", &slot_mapping)?,
        ];
        let writes = [
            range(OP, stream, "key_cache", &key_cache)?,
            range(OP, stream, "value_cache", &value_cache)?,
        ];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            let (kc, vc) = two(w);
            cpu::reshape_and_cache::<T>(
                &p,
                typed(OP, r[0])?,
                typed(OP, r[1])?,
                typed_mut(OP, kc)?,
                typed_mut(OP, vc)?,
                typed(OP, r[2])?,
            )
        })
    }

    fn paged_attention<T: KvFloat>(
        stream: &CpuStream,
        p: &PagedAttention,
        out: Out<'_, Self, T>,
        query: In<'_, Self, T>,
        key_cache: In<'_, Self, T>,
        value_cache: In<'_, Self, T>,
        block_tables: In<'_, Self, i32>,
        seq_lens: In<'_, Self, i32>,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        p.validate::<T>(
            out.len(),
            query.len(),
            key_cache.len(),
            value_cache.len(),
            block_tables.len(),
            seq_lens.len(),
        )?;
        let reads = [
            range(OP, stream, "query", &query)?,
            range(OP, stream, "key_cache", &key_cache)?,
            range(OP, stream, "value_cache", &value_cache)?,
            range(OP, stream, "block_tables", &block_tables)?,
            range(OP, stream, "seq_lens", &seq_lens)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::paged_attention::<T>(
                &p,
                typed_mut(OP, w[0])?,
                typed(OP, r[0])?,
                typed(OP, r[1])?,
                typed(OP, r[2])?,
                typed(OP, r[3])?,
                typed(OP, r[4])?,
            )
        })
    }

    fn paged_prefill_attention<T: KvFloat>(
        stream: &CpuStream,
        p: &PrefillAttention,
        out: Out<'_, Self, T>,
        query: In<'_, Self, T>,
        key_cache: In<'_, Self, T>,
        value_cache: In<'_, Self, T>,
        block_tables: In<'_, Self, i32>,
        query_start_loc: In<'_, Self, i32>,
        seq_lens: In<'_, Self, i32>,
    ) -> Result<()> {
        const OP: &str = "paged_prefill_attention";
        p.validate::<T>(
            out.len(),
            query.len(),
            key_cache.len(),
            value_cache.len(),
            block_tables.len(),
            query_start_loc.len(),
            seq_lens.len(),
        )?;
        let reads = [
            range(OP, stream, "query", &query)?,
            range(OP, stream, "key_cache", &key_cache)?,
            range(OP, stream, "value_cache", &value_cache)?,
            range(OP, stream, "block_tables", &block_tables)?,
            range(OP, stream, "query_start_loc", &query_start_loc)?,
            range(OP, stream, "seq_lens", &seq_lens)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::paged_prefill_attention::<T>(
                &p,
                typed_mut(OP, w[0])?,
                typed(OP, r[0])?,
                typed(OP, r[1])?,
                typed(OP, r[2])?,
                typed(OP, r[3])?,
                typed(OP, r[4])?,
                typed(OP, r[5])?,
            )
        })
    }

    fn rotary_embedding<T: KvFloat>(
        stream: &CpuStream,
        p: &Rotary,
        positions: In<'_, Self, i64>,
        query: Out<'_, Self, T>,
        key: Out<'_, Self, T>,
        cos_sin_cache: In<'_, Self, f32>,
    ) -> Result<()> {
        const OP: &str = "rotary_embedding";
        p.validate::<T>(positions.len(), query.len(), key.len(), cos_sin_cache.len())?;
        let reads = [
            range(OP, stream, "positions", &positions)?,
            range(OP, stream, "cos_sin_cache", &cos_sin_cache)?,
        ];
        let writes = [
            range(OP, stream, "query", &query)?,
            range(OP, stream, "key", &key)?,
        ];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            let (q, k) = two(w);
            cpu::rotary_embedding::<T>(
                &p,
                typed(OP, r[0])?,
                typed_mut(OP, q)?,
                typed_mut(OP, k)?,
                typed(OP, r[1])?,
            )
        })
    }

    fn rms_norm<T: KvFloat>(
        stream: &CpuStream,
        p: &RmsNorm,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
        let reads = [
            range(OP, stream, "input", &x)?,
            range(OP, stream, "weight", &weight)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::rms_norm::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?, typed(OP, r[1])?)
        })
    }

    fn fused_add_rms_norm<T: KvFloat>(
        stream: &CpuStream,
        p: &RmsNorm,
        x: Out<'_, Self, T>,
        residual: Out<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()> {
        const OP: &str = "fused_add_rms_norm";
        p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
        let reads = [range(OP, stream, "weight", &weight)?];
        let writes = [
            range(OP, stream, "input", &x)?,
            range(OP, stream, "residual", &residual)?,
        ];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            let (x, res) = two(w);
            cpu::fused_add_rms_norm::<T>(
                &p,
                typed_mut(OP, x)?,
                typed_mut(OP, res)?,
                typed(OP, r[0])?,
            )
        })
    }

    fn silu_and_mul<T: KvFloat>(
        stream: &CpuStream,
        p: &SiluAndMul,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
    ) -> Result<()> {
        const OP: &str = "silu_and_mul";
        p.validate::<T>(out.len(), x.len())?;
        let reads = [range(OP, stream, "input", &x)?];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::silu_and_mul::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?)
        })
    }

    fn matmul<T: KvFloat>(
        stream: &CpuStream,
        p: &Matmul,
        out: Out<'_, Self, T>,
        x: In<'_, Self, T>,
        weight: In<'_, Self, T>,
    ) -> Result<()> {
        const OP: &str = "matmul";
        p.validate::<T>(out.len(), x.len(), weight.len())?;
        let reads = [
            range(OP, stream, "x", &x)?,
            range(OP, stream, "weight", &weight)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::matmul::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?, typed(OP, r[1])?)
        })
    }

    fn copy_blocks<T: KvFloat>(
        stream: &CpuStream,
        cache: &CacheShape,
        key_cache: Out<'_, Self, T>,
        value_cache: Out<'_, Self, T>,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        const OP: &str = "copy_blocks";
        ascend_kernels::reference::check_pairs(cache, key_cache.len(), value_cache.len(), pairs)?;
        let writes = [
            range(OP, stream, "key_cache", &key_cache)?,
            range(OP, stream, "value_cache", &value_cache)?,
        ];
        let (c, pairs) = (*cache, pairs.to_vec());
        stream.enqueue_region_task(OP, &[], &writes, move |_, w| {
            let (k, v) = two(w);
            cpu::copy_blocks::<T>(&c, typed_mut(OP, k)?, typed_mut(OP, v)?, &pairs)
        })
    }
}
