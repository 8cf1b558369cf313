//! The ACL backend's kernel ops. Each op comes from a provider (see [`providers`]): CANN's
//! ACLNN operators for the GEMM, SwiGLU and RMSNorm (`vendor`), this crate's Ascend C kernels
//! for the paged-attention family, RoPE, `copy_blocks` and the in-place fused norm, launched on
//! the backend's streams through the `aclrtlaunch_*` stubs of the kernels library
//! (`libascendc_kernels.so` of the `ascend-c` feature, or the host build over the ACL fake,
//! loaded at run time). Shapes are checked and the kernel tiled on the host before anything is
//! queued. Without the library an Ascend C op returns [`Error::KernelUnavailable`] saying what
//! to do; bf16 has no Ascend C kernel (the A2 vector units have no bf16 arithmetic).
//!
//! Unlike the CPU backend, the contents of device-side index arrays (slot mappings, block
//! tables, sequence lengths, query start offsets, positions, block-copy pairs) cannot be checked
//! on the host without a copy and a synchronisation. The kernels guard them instead, so a bad
//! entry never reads or writes outside the buffers: a slot past the cache skips its token (as a
//! negative one does), a sequence or query token whose length or attended block ids are out of
//! range gets zeros, a position outside the cos/sin table zeroes its token's query and key rows,
//! and a bad block pair is skipped. Each core counts what it refused into a status buffer, and
//! the stream's next synchronisation returns [`Error::InvalidArgument`] naming the op and the
//! count (`AclStream::check_after_sync`); the CPU backend refuses such entries at the call.

mod fused;
pub mod providers;
pub mod quant_layout;
mod vendor;

use std::ffi::c_void;

use ascend_hal::acl::aclnn::Aclnn;
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::{DType, DeviceBuffer, DeviceRepr, Error, Result, Stream, StreamExt};

use crate::ascendc::npu::{self, NpuKernels, Pair};
use crate::ascendc::{status, tiling};
use crate::float::KvFloat;
use crate::ops::{
    copy_waves, device_arg, AddArgs, ArgmaxArgs, CopyBlocksArgs, EmbeddingArgs,
    FusedAddRmsNormArgs, KernelOps, MatmulArgs, PagedAttentionArgs, PrefillAttentionArgs,
    QuantMatmulArgs, ReshapeAndCacheArgs, RmsNormArgs, RotaryArgs, SiluAndMulArgs, TopKArgs,
};
use crate::quant::QuantFormat;
use providers::{provider, serve, AclOp, Provider, Served};

const NO_BF16: &str = "the Ascend C kernels are built for f16 and f32 (A2 vector units have no \
     bf16 arithmetic); store activations and caches as f16";

fn unavailable(op: &'static str, reason: &'static str) -> Error {
    Error::KernelUnavailable {
        backend: "acl",
        op,
        reason,
    }
}

/// The launch stubs, or why there are none.
fn stubs(op: &'static str) -> Result<&'static NpuKernels> {
    npu::kernels().map_err(|reason| unavailable(op, reason))
}

/// The stub for `T`.
fn pick<F: Copy, T: KvFloat>(op: &'static str, pair: &Pair<F>) -> Result<F> {
    match T::DTYPE {
        DType::F16 => Ok(pair.half),
        DType::F32 => Ok(pair.float),
        _ => Err(unavailable(op, NO_BF16)),
    }
}

/// A device argument's address for a launch stub, after checking it is on the stream's device.
fn gm<T: ascend_hal::Element, R: DeviceRepr<AclBackend, T>>(
    op: &'static str,
    stream: &AclStream,
    what: &'static str,
    view: &R,
) -> Result<*mut c_void> {
    Ok(device_arg::<AclBackend, T, R>(op, stream, what, view)?.0 as usize as *mut c_void)
}

/// Queues a kernel that reports refused device-side indices: allocates its status buffer (each
/// of the `dim` cores writes its own slot, so it needs no clearing; one small allocation per
/// launch, a per-stream pool being the follow-up once this runs on hardware), hands `launch`
/// the buffer's address and the raw stream, and registers the check that turns a non-zero
/// count into the error of the stream's next synchronisation (which also keeps the buffer
/// alive until the kernel is done).
///
/// # Safety
/// As [`AclStream::launch_raw`]; `launch` may give the kernel the status address it receives,
/// which holds `status::words(dim)` int32.
unsafe fn launch_reporting(
    op: &'static str,
    stream: &AclStream,
    dim: u32,
    launch: impl FnOnce(*mut c_void, *mut c_void) -> u32,
) -> Result<()> {
    let words = DeviceBuffer::<AclBackend, i32>::alloc(&stream.device(), status::words(dim))?;
    let st = gm(op, stream, "status", &words)?;
    // SAFETY: the caller's contract; the status buffer outlives the kernel (the check below
    // owns it until the synchronisation that waits for the kernel).
    unsafe { stream.launch_raw(op, |s| launch(st, s)) }?;
    stream.check_after_sync(move |s| {
        let words: Vec<i32> = s.clone_to_host(&words)?;
        status::check(op, status::refused(&words))
    });
    Ok(())
}

/// Cores for `tasks` independent pieces of work: at most the vector cores of the stream's device
/// (`aclGetDeviceCapability(ACL_DEVICE_INFO_VECTOR_CORE_NUM)`: 48 on a 910B1/B2, 40 on a
/// 910B3/B4), so a launch never runs a second wave of blocks.
fn block_dim(stream: &AclStream, tasks: usize) -> u32 {
    let cores = stream.device().vector_cores().max(1);
    tasks.clamp(1, cores as usize) as u32
}

impl KernelOps for AclBackend {
    /// Weight-only quantization of the GGUF block formats through
    /// `aclnnWeightQuantBatchMatmulV2`, W8A8 (`Int8PerChannel`) through `aclnnDynamicQuant` +
    /// `aclnnQuantMatmulV4`: every format, with f16 or bf16 activations (the operators');
    /// f32 activations are refused.
    fn quant_matmul_supported<T: KvFloat>(format: QuantFormat) -> std::result::Result<(), String> {
        vendor::weight_quant_activations::<T>(format)
    }

    /// The layout of [`quant_layout`]: values, then scales and offsets in `T` (W8A8: values,
    /// then f32 scales).
    fn pack_quant_weight<'a, T: KvFloat>(
        format: QuantFormat,
        n: usize,
        k: usize,
        blocks: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        quant_layout::pack::<T>(format, n, k, blocks).map(std::borrow::Cow::Owned)
    }

    fn kernels_available() -> std::result::Result<(), &'static str> {
        // Every op's current provider must be loadable.
        let chosen: Vec<(AclOp, Provider)> =
            AclOp::ALL.iter().map(|&op| (op, provider(op))).collect();
        if chosen.iter().any(|&(_, p)| p == Provider::AscendC) {
            npu::kernels()?;
        }
        let vendor: Vec<AclOp> = chosen
            .iter()
            .filter(|&&(_, p)| p == Provider::Aclnn)
            .map(|&(op, _)| op)
            .collect();
        if vendor.is_empty() {
            return Ok(());
        }
        let aclnn = Aclnn::load_current().map_err(|e| lasting(e.to_string()))?;
        let has = aclnn.operators();
        for op in vendor {
            let Some(needs) = op.aclnn_operator() else {
                continue;
            };
            if !has.contains(&needs) {
                return Err(lasting(format!(
                    "{} ({}) lacks {needs}, which serves {}: install a CANN toolkit and \
                     kernels package that have it, or choose another provider \
                     (ascend_kernels::acl::providers::set_provider)",
                    aclnn.library_paths().1,
                    "libopapi.so",
                    op.name()
                )));
            }
        }
        Ok(())
    }

    fn launch_reshape_and_cache<T: KvFloat>(
        stream: &AclStream,
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
        let launch = pick::<_, T>(OP, &stubs(OP)?.reshape_and_cache)?;
        p.validate::<T>(
            key.len(),
            value.len(),
            key_cache.len(),
            value_cache.len(),
            slot_mapping.len(),
        )?;
        let t = tiling::reshape_and_cache(p, std::mem::size_of::<T>())?;
        let args = [
            gm(OP, stream, "key", &key)?,
            gm(OP, stream, "value", &value)?,
            gm(OP, stream, "key_cache", &key_cache)?,
            gm(OP, stream, "value_cache", &value_cache)?,
            gm(OP, stream, "slot_mapping", &slot_mapping)?,
        ];
        let dim = block_dim(stream, p.num_tokens);
        // SAFETY: the stub only queues the kernel on `s`; the buffers are on the stream's
        // device, their lengths match the tiling the kernel indexes by (the status buffer holds
        // the 8 words each of the `dim` cores writes), and the borrows' owners keep them alive
        // until the caller synchronises (the stream-order contract of every KernelOps op); the
        // stub copies the tiling into the launch arguments before returning.
        unsafe {
            launch_reporting(OP, stream, dim, |st, s| {
                launch(dim, s, args[0], args[1], args[2], args[3], args[4], st, &t)
            })
        }
    }

    fn launch_paged_attention<T: KvFloat>(
        stream: &AclStream,
        args: PagedAttentionArgs<'_, Self, T>,
    ) -> Result<()> {
        let a = &args;
        a.p.validate::<T>(
            a.out.len(),
            a.query.len(),
            a.key_cache.len(),
            a.value_cache.len(),
            a.block_tables.len(),
            a.seq_lens.len(),
        )?;
        a.p.validate_host(a.seq_lens_host)?;
        serve(AclOp::PagedAttention, |provider| match provider {
            Provider::Aclnn => fused::decode(stream, a),
            Provider::AscendC => ascendc_paged_attention(stream, a),
        })
    }

    fn launch_paged_prefill_attention<T: KvFloat>(
        stream: &AclStream,
        args: PrefillAttentionArgs<'_, Self, T>,
    ) -> Result<()> {
        let a = &args;
        a.p.validate::<T>(
            a.out.len(),
            a.query.len(),
            a.key_cache.len(),
            a.value_cache.len(),
            a.block_tables.len(),
            a.query_start_loc.len(),
            a.seq_lens.len(),
        )?;
        a.p.validate_host(a.query_start_loc_host, a.seq_lens_host)?;
        serve(AclOp::PagedPrefillAttention, |provider| match provider {
            Provider::Aclnn => fused::prefill(stream, a),
            Provider::AscendC => ascendc_prefill_attention(stream, a),
        })
    }

    fn launch_rotary_embedding<T: KvFloat>(
        stream: &AclStream,
        args: RotaryArgs<'_, Self, T>,
    ) -> Result<()> {
        let mut args = args;
        args.p.validate::<T>(
            args.positions.len(),
            args.query.len(),
            args.key.len(),
            args.cos_sin_cache.len(),
        )?;
        serve(AclOp::RotaryEmbedding, |provider| match provider {
            Provider::Aclnn => fused::rotary(stream, &mut args),
            Provider::AscendC => ascendc_rotary(stream, &args),
        })
    }

    fn launch_rms_norm<T: KvFloat>(
        stream: &AclStream,
        args: RmsNormArgs<'_, Self, T>,
    ) -> Result<()> {
        let RmsNormArgs { p, out, x, weight } = args;
        const OP: &str = "rms_norm";
        if provider(AclOp::RmsNorm) == Provider::Aclnn {
            return vendor::rms_norm(stream, p, out, x, weight);
        }
        let launch = pick::<_, T>(OP, &stubs(OP)?.rms_norm)?;
        p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
        let t = tiling::rms_norm(p, std::mem::size_of::<T>(), false)?;
        let args = [
            gm(OP, stream, "x", &x)?,
            gm(OP, stream, "weight", &weight)?,
            gm(OP, stream, "out", &out)?,
        ];
        let dim = block_dim(stream, p.num_tokens);
        // SAFETY: as in `reshape_and_cache`; with `fused` 0 the kernel never touches the
        // residual argument, so it is null.
        unsafe {
            stream.launch_raw(OP, |s| {
                launch(dim, s, args[0], std::ptr::null_mut(), args[1], args[2], &t)
            })
        }
    }

    fn launch_fused_add_rms_norm<T: KvFloat>(
        stream: &AclStream,
        args: FusedAddRmsNormArgs<'_, Self, T>,
    ) -> Result<()> {
        let FusedAddRmsNormArgs {
            p,
            x,
            residual,
            weight,
        } = args;
        const OP: &str = "fused_add_rms_norm";
        if provider(AclOp::FusedAddRmsNorm) == Provider::Aclnn {
            return vendor::fused_add_rms_norm(stream, p, x, residual, weight);
        }
        let launch = pick::<_, T>(OP, &stubs(OP)?.rms_norm)?;
        p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
        let t = tiling::rms_norm(p, std::mem::size_of::<T>(), true)?;
        let args = [
            gm(OP, stream, "x", &x)?,
            gm(OP, stream, "residual", &residual)?,
            gm(OP, stream, "weight", &weight)?,
        ];
        let dim = block_dim(stream, p.num_tokens);
        // SAFETY: as in `reshape_and_cache`; `x` is input and output, which the kernel allows
        // (each row is in the UB before its result is written).
        unsafe {
            stream.launch_raw(OP, |s| {
                launch(dim, s, args[0], args[1], args[2], args[0], &t)
            })
        }
    }

    fn launch_silu_and_mul<T: KvFloat>(
        stream: &AclStream,
        args: SiluAndMulArgs<'_, Self, T>,
    ) -> Result<()> {
        let SiluAndMulArgs { p, out, x } = args;
        vendor::silu_and_mul(stream, p, out, x)
    }

    fn launch_matmul<T: KvFloat>(stream: &AclStream, args: MatmulArgs<'_, Self, T>) -> Result<()> {
        let MatmulArgs { p, out, x, weight } = args;
        vendor::matmul(stream, p, out, x, weight)
    }

    fn launch_quant_matmul<T: KvFloat>(
        stream: &AclStream,
        args: QuantMatmulArgs<'_, Self, T>,
    ) -> Result<()> {
        let QuantMatmulArgs { p, out, x, weight } = args;
        vendor::quant_matmul(stream, p, out, x, weight)
    }

    fn launch_embedding<T: KvFloat>(
        stream: &AclStream,
        args: EmbeddingArgs<'_, Self, T>,
    ) -> Result<()> {
        let EmbeddingArgs { p, out, table, ids } = args;
        vendor::embedding(stream, p, out, table, ids)
    }

    fn launch_add<T: KvFloat>(stream: &AclStream, args: AddArgs<'_, Self, T>) -> Result<()> {
        let AddArgs { p, out, a, b } = args;
        vendor::add(stream, p, out, a, b)
    }

    fn launch_argmax<T: KvFloat>(stream: &AclStream, args: ArgmaxArgs<'_, Self, T>) -> Result<()> {
        let ArgmaxArgs { p, out, x } = args;
        vendor::argmax(stream, p, out, x)
    }

    fn launch_top_k<T: KvFloat>(stream: &AclStream, args: TopKArgs<'_, Self, T>) -> Result<()> {
        let TopKArgs {
            p,
            values,
            indices,
            x,
        } = args;
        vendor::top_k(stream, p, values, indices, x)
    }

    fn launch_copy_blocks<T: KvFloat>(
        stream: &AclStream,
        args: CopyBlocksArgs<'_, Self, T>,
    ) -> Result<()> {
        let CopyBlocksArgs {
            cache,
            key_cache,
            value_cache,
            pairs,
        } = args;
        const OP: &str = "copy_blocks";
        let launch = pick::<_, T>(OP, &stubs(OP)?.copy_blocks)?;
        // The pairs are host data here, so they are checked here, as the CPU backend does.
        crate::reference::check_pairs(cache, key_cache.len(), value_cache.len(), pairs)?;
        let (pk, pv) = (
            gm(OP, stream, "key_cache", &key_cache)?,
            gm(OP, stream, "value_cache", &value_cache)?,
        );
        for wave in copy_waves(pairs) {
            let t = tiling::copy_blocks(cache, wave.len(), std::mem::size_of::<T>())?;
            let flat: Vec<i32> = wave
                .iter()
                .flat_map(|&(s, d)| [s as i32, d as i32])
                .collect();
            let on_device = DeviceBuffer::<AclBackend, i32>::from_slice(stream, &flat)?;
            let pp = gm(OP, stream, "pairs", &on_device)?;
            let dim = block_dim(stream, wave.len());
            // SAFETY: as in `reshape_and_cache`; the pair buffer is kept alive until the
            // stream's next synchronisation by the check registered after it.
            unsafe {
                launch_reporting(OP, stream, dim, |st, s| launch(dim, s, pk, pv, pp, st, &t))
            }?;
            stream.check_after_sync(move |_| {
                drop(on_device);
                Ok(())
            });
        }
        Ok(())
    }
}

/// An error message that outlives the call (`kernels_available` returns `&'static str`): each
/// distinct message is kept once.
fn lasting(message: String) -> &'static str {
    static KEPT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&m) = kept.iter().find(|&&m| m == message) {
        return m;
    }
    let m: &'static str = Box::leak(message.into_boxed_str());
    kept.push(m);
    m
}

/// The Ascend C stub for `T`, or the reason the kernels cannot run `T` (bf16).
fn pick_or_decline<F: Copy, T: KvFloat>(pair: &Pair<F>) -> std::result::Result<F, Served> {
    match T::DTYPE {
        DType::F16 => Ok(pair.half),
        DType::F32 => Ok(pair.float),
        _ => Err(Served::Declined(NO_BF16.into())),
    }
}

/// Decode attention by the Ascend C kernel (the shapes checked by the caller), tiled for the
/// stream's device's vector cores: when it splits contexts across cores, the parts go to a
/// workspace from the device's workspace allocator and a second launch merges them.
fn ascendc_paged_attention<T: KvFloat>(
    stream: &AclStream,
    a: &PagedAttentionArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "paged_attention";
    let kernels = stubs(OP)?;
    let launch = match pick_or_decline::<_, T>(&kernels.paged_attention) {
        Ok(l) => l,
        Err(declined) => return Ok(declined),
    };
    let merge = pick::<_, T>(OP, &kernels.paged_attention_merge)?;
    let p = a.p;
    let cores = stream.device().vector_cores().max(1);
    let t = tiling::paged_attention(p, std::mem::size_of::<T>(), cores)?;
    let args = [
        gm(OP, stream, "out", &a.out)?,
        gm(OP, stream, "query", &a.query)?,
        gm(OP, stream, "key_cache", &a.key_cache)?,
        gm(OP, stream, "value_cache", &a.value_cache)?,
        gm(OP, stream, "block_tables", &a.block_tables)?,
        gm(OP, stream, "seq_lens", &a.seq_lens)?,
    ];
    // The parts' records, returned to the workspace allocator after both launches are queued
    // (it reuses memory in stream order).
    let workspace = match t.workspace_floats() {
        0 => None,
        n => {
            let alloc = providers::workspace_allocator(&stream.device())?;
            Some(DeviceBuffer::<AclBackend, f32>::alloc_in(
                &*alloc, stream, n,
            )?)
        }
    };
    let ws = match &workspace {
        Some(w) => gm(OP, stream, "workspace", w)?,
        None => std::ptr::null_mut(),
    };
    let dim = block_dim(stream, t.tasks());
    // SAFETY: as in `reshape_and_cache`; the workspace holds what the tiling says the parts
    // need, and lives until both launches are queued (the allocator reuses it in stream order).
    unsafe {
        launch_reporting(OP, stream, dim, |st, s| {
            launch(
                dim, s, args[0], args[1], args[2], args[3], args[4], args[5], ws, st, &t,
            )
        })
    }?;
    if t.partitions > 1 {
        let pairs = block_dim(stream, t.num_seqs as usize * t.num_heads as usize);
        // SAFETY: the merge reads the workspace the launch above fills, in stream order, and
        // writes `out`; both are alive until the caller synchronises.
        unsafe { stream.launch_raw(OP, |s| merge(pairs, s, args[0], ws, &t)) }?;
    }
    drop(workspace);
    Ok(Served::Done)
}

/// Chunked-prefill attention by the Ascend C kernel (the shapes checked by the caller).
fn ascendc_prefill_attention<T: KvFloat>(
    stream: &AclStream,
    a: &PrefillAttentionArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "paged_prefill_attention";
    let launch = match pick_or_decline::<_, T>(&stubs(OP)?.paged_prefill_attention) {
        Ok(l) => l,
        Err(declined) => return Ok(declined),
    };
    let p = a.p;
    let cores = stream.device().vector_cores().max(1);
    let t = tiling::paged_prefill_attention(p, std::mem::size_of::<T>(), cores)?;
    let args = [
        gm(OP, stream, "out", &a.out)?,
        gm(OP, stream, "query", &a.query)?,
        gm(OP, stream, "key_cache", &a.key_cache)?,
        gm(OP, stream, "value_cache", &a.value_cache)?,
        gm(OP, stream, "block_tables", &a.block_tables)?,
        gm(OP, stream, "query_start_loc", &a.query_start_loc)?,
        gm(OP, stream, "seq_lens", &a.seq_lens)?,
    ];
    if p.num_tokens == 0 {
        return Ok(Served::Done);
    }
    let dim = block_dim(stream, t.tasks());
    // SAFETY: as in `reshape_and_cache`.
    unsafe {
        launch_reporting(OP, stream, dim, |st, s| {
            launch(
                dim, s, args[0], args[1], args[2], args[3], args[4], args[5], args[6], st, &t,
            )
        })
    }?;
    Ok(Served::Done)
}

/// RoPE by the Ascend C kernel (the shapes checked by the caller).
fn ascendc_rotary<T: KvFloat>(
    stream: &AclStream,
    a: &RotaryArgs<'_, AclBackend, T>,
) -> Result<Served> {
    const OP: &str = "rotary_embedding";
    let launch = match pick_or_decline::<_, T>(&stubs(OP)?.rotary_embedding) {
        Ok(l) => l,
        Err(declined) => return Ok(declined),
    };
    let p = a.p;
    let t = tiling::rotary_embedding(p, std::mem::size_of::<T>())?;
    let args = [
        gm(OP, stream, "positions", &a.positions)?,
        gm(OP, stream, "query", &a.query)?,
        gm(OP, stream, "key", &a.key)?,
        gm(OP, stream, "cos_sin_cache", &a.cos_sin_cache)?,
    ];
    let dim = block_dim(stream, p.num_tokens);
    // SAFETY: as in `reshape_and_cache`.
    unsafe {
        launch_reporting(OP, stream, dim, |st, s| {
            launch(dim, s, args[0], args[1], args[2], args[3], st, &t)
        })
    }?;
    Ok(Served::Done)
}
