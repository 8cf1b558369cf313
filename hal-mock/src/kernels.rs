//! The CPU backend's kernels: `ascend_kernels::cpu`, run on the stream's worker in stream order,
//! over the device memory of the ops' arguments.

use ascend_hal::{DevicePtr, DeviceRepr, Error, Result};
use ascend_kernels::{
    cpu, device_arg, AddArgs, ArgmaxArgs, CopyBlocksArgs, EmbeddingArgs, FusedAddRmsNormArgs,
    KernelOps, KvFloat, MatmulArgs, PagedAttentionArgs, PrefillAttentionArgs, QuantFormat,
    QuantMatmulArgs, ReshapeAndCacheArgs, RmsNormArgs, RotaryArgs, SiluAndMulArgs, TopKArgs,
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
    fn quant_matmul_supported<T: KvFloat>(_: QuantFormat) -> std::result::Result<(), String> {
        Ok(()) // cpu::quant_matmul runs every format with every activation dtype
    }

    /// The [`interleaved`](ascend_kernels::interleaved) layout: each row's groups of 8 blocks
    /// with their scales side by side, which the x86 loop reads without a transpose; the same
    /// bytes. Measured in `benches/matmul.rs` (its `Q4_1_blocks` rows): batch 1 takes 0.51-0.92
    /// of the blocks' time at SmolLM2's shapes, batch 8 0.79-1.18 (mostly faster).
    fn pack_quant_weight<'a, T: KvFloat>(
        format: QuantFormat,
        n: usize,
        k: usize,
        blocks: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        ascend_kernels::interleaved::interleave(format, n, k, blocks)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| match e {
                Error::InvalidArgument { message, .. } => Error::InvalidArgument {
                    op: "pack_quant_weight",
                    message,
                },
                other => other,
            })
    }

    fn launch_reshape_and_cache<T: KvFloat>(
        stream: &CpuStream,
        args: ReshapeAndCacheArgs<'_, Self, T>,
    ) -> Result<()> {
        let ReshapeAndCacheArgs {
            p,
            key,
            value,
            key_cache,
            value_cache,
            slot_mapping,
        } = args;
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

    fn launch_paged_attention<T: KvFloat>(
        stream: &CpuStream,
        args: PagedAttentionArgs<'_, Self, T>,
    ) -> Result<()> {
        let PagedAttentionArgs {
            p,
            out,
            query,
            key_cache,
            value_cache,
            block_tables,
            seq_lens,
            seq_lens_host,
        } = args;
        const OP: &str = "paged_attention";
        p.validate::<T>(
            out.len(),
            query.len(),
            key_cache.len(),
            value_cache.len(),
            block_tables.len(),
            seq_lens.len(),
        )?;
        p.validate_host(seq_lens_host)?;
        let host_lens = seq_lens_host.to_vec();
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
            let lens = typed(OP, r[4])?;
            same_as_host(OP, "seq_lens", lens, &host_lens)?;
            cpu::paged_attention::<T>(
                &p,
                typed_mut(OP, w[0])?,
                typed(OP, r[0])?,
                typed(OP, r[1])?,
                typed(OP, r[2])?,
                typed(OP, r[3])?,
                lens,
            )
        })
    }

    fn launch_paged_prefill_attention<T: KvFloat>(
        stream: &CpuStream,
        args: PrefillAttentionArgs<'_, Self, T>,
    ) -> Result<()> {
        let PrefillAttentionArgs {
            p,
            out,
            query,
            key_cache,
            value_cache,
            block_tables,
            query_start_loc,
            seq_lens,
            query_start_loc_host,
            seq_lens_host,
        } = args;
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
        p.validate_host(query_start_loc_host, seq_lens_host)?;
        let (host_starts, host_lens) = (query_start_loc_host.to_vec(), seq_lens_host.to_vec());
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
            let (starts, lens) = (typed(OP, r[4])?, typed(OP, r[5])?);
            same_as_host(OP, "query_start_loc", starts, &host_starts)?;
            same_as_host(OP, "seq_lens", lens, &host_lens)?;
            cpu::paged_prefill_attention::<T>(
                &p,
                typed_mut(OP, w[0])?,
                typed(OP, r[0])?,
                typed(OP, r[1])?,
                typed(OP, r[2])?,
                typed(OP, r[3])?,
                starts,
                lens,
            )
        })
    }

    fn launch_rotary_embedding<T: KvFloat>(
        stream: &CpuStream,
        args: RotaryArgs<'_, Self, T>,
    ) -> Result<()> {
        let RotaryArgs {
            p,
            positions,
            query,
            key,
            cos_sin_cache,
        } = args;
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

    fn launch_rms_norm<T: KvFloat>(
        stream: &CpuStream,
        args: RmsNormArgs<'_, Self, T>,
    ) -> Result<()> {
        let RmsNormArgs { p, out, x, weight } = args;
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

    fn launch_fused_add_rms_norm<T: KvFloat>(
        stream: &CpuStream,
        args: FusedAddRmsNormArgs<'_, Self, T>,
    ) -> Result<()> {
        let FusedAddRmsNormArgs {
            p,
            x,
            residual,
            weight,
        } = args;
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

    fn launch_silu_and_mul<T: KvFloat>(
        stream: &CpuStream,
        args: SiluAndMulArgs<'_, Self, T>,
    ) -> Result<()> {
        let SiluAndMulArgs { p, out, x } = args;
        const OP: &str = "silu_and_mul";
        p.validate::<T>(out.len(), x.len())?;
        let reads = [range(OP, stream, "input", &x)?];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::silu_and_mul::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?)
        })
    }

    fn launch_matmul<T: KvFloat>(stream: &CpuStream, args: MatmulArgs<'_, Self, T>) -> Result<()> {
        let MatmulArgs { p, out, x, weight } = args;
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

    fn launch_quant_matmul<T: KvFloat>(
        stream: &CpuStream,
        args: QuantMatmulArgs<'_, Self, T>,
    ) -> Result<()> {
        let QuantMatmulArgs { p, out, x, weight } = args;
        const OP: &str = "quant_matmul";
        p.validate::<T>(out.len(), x.len(), weight.len())?;
        let reads = [
            range(OP, stream, "x", &x)?,
            range(OP, stream, "weight", &weight)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::quant_matmul_interleaved::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?, r[1])
        })
    }

    fn launch_embedding<T: KvFloat>(
        stream: &CpuStream,
        args: EmbeddingArgs<'_, Self, T>,
    ) -> Result<()> {
        let EmbeddingArgs { p, out, table, ids } = args;
        const OP: &str = "embedding";
        p.validate::<T>(out.len(), table.len(), ids.len())?;
        let reads = [
            range(OP, stream, "table", &table)?,
            range(OP, stream, "ids", &ids)?,
        ];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::embedding::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?, typed(OP, r[1])?)
        })
    }

    fn launch_add<T: KvFloat>(stream: &CpuStream, args: AddArgs<'_, Self, T>) -> Result<()> {
        let AddArgs { p, out, a, b } = args;
        const OP: &str = "add";
        p.validate::<T>(out.len(), a.len(), b.len())?;
        let reads = [range(OP, stream, "a", &a)?, range(OP, stream, "b", &b)?];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::add::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?, typed(OP, r[1])?)
        })
    }

    fn launch_argmax<T: KvFloat>(stream: &CpuStream, args: ArgmaxArgs<'_, Self, T>) -> Result<()> {
        let ArgmaxArgs { p, out, x } = args;
        const OP: &str = "argmax";
        p.validate::<T>(out.len(), x.len())?;
        let reads = [range(OP, stream, "x", &x)?];
        let writes = [range(OP, stream, "out", &out)?];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            cpu::argmax::<T>(&p, typed_mut(OP, w[0])?, typed(OP, r[0])?)
        })
    }

    fn launch_top_k<T: KvFloat>(stream: &CpuStream, args: TopKArgs<'_, Self, T>) -> Result<()> {
        let TopKArgs {
            p,
            values,
            indices,
            x,
        } = args;
        const OP: &str = "top_k";
        p.validate::<T>(values.len(), indices.len(), x.len())?;
        let reads = [range(OP, stream, "x", &x)?];
        let writes = [
            range(OP, stream, "values", &values)?,
            range(OP, stream, "indices", &indices)?,
        ];
        let p = *p;
        stream.enqueue_region_task(OP, &reads, &writes, move |r, w| {
            let (v, i) = two(w);
            cpu::top_k::<T>(&p, typed_mut(OP, v)?, typed_mut(OP, i)?, typed(OP, r[0])?)
        })
    }

    fn launch_copy_blocks<T: KvFloat>(
        stream: &CpuStream,
        args: CopyBlocksArgs<'_, Self, T>,
    ) -> Result<()> {
        let CopyBlocksArgs {
            cache,
            key_cache,
            value_cache,
            pairs,
        } = args;
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

/// When the op runs: the device copy of `what` must hold the values its host copy held at the
/// call (a provider may read either; both must describe the same batch).
fn same_as_host(op: &'static str, what: &str, device: &[i32], host: &[i32]) -> Result<()> {
    match device.iter().zip(host).position(|(d, h)| d != h) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidArgument {
            op,
            message: format!(
                "{what}[{i}] is {} on the device but {} in {what}_host: the host copy must hold \
                 the values the device copy holds when the op runs",
                device[i], host[i]
            ),
        }),
    }
}
