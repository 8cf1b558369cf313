//! The ops the ACL backend takes from CANN's ACLNN operators (see [`super::providers`]): shapes
//! are checked as the CPU backend checks them, then the operator's descriptors are made over
//! the op's buffers and the two-phase protocol runs with a workspace from the device's
//! workspace allocator.

use std::sync::Arc;

use ascend_hal::acl::aclnn::{AclTensor, Aclnn, CubeMathType};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::alloc::SharedAllocator;
use ascend_hal::{DType, DeviceBuffer, DevicePtr, DeviceRepr, Error, Result, Stream, StreamExt};

use super::providers::workspace_allocator;
use crate::float::KvFloat;
use crate::ops::{device_arg, In, Out};
use crate::quant::{QuantFormat, BLOCK};
use crate::shapes::{Add, Argmax, Embedding, Matmul, QuantMatmul, RmsNorm, SiluAndMul, TopK};

/// The ACLNN libraries and the workspace allocator for `stream`'s device.
fn setup(stream: &AclStream) -> Result<(Arc<Aclnn>, SharedAllocator<AclBackend>)> {
    let device = stream.device();
    Ok((Aclnn::load_for(&device)?, workspace_allocator(&device)?))
}

fn addr<T: ascend_hal::Element, R: DeviceRepr<AclBackend, T>>(
    op: &'static str,
    stream: &AclStream,
    what: &'static str,
    view: &R,
) -> Result<DevicePtr> {
    device_arg::<AclBackend, T, R>(op, stream, what, view)
}

fn dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&v| v as i64).collect()
}

/// `out = x · wᵀ` through `aclnnMatmul`, the `[n, k]` weight seen as `[k, n]` by its strides.
pub(super) fn matmul<T: KvFloat>(
    stream: &AclStream,
    p: &Matmul,
    out: Out<'_, AclBackend, T>,
    x: In<'_, AclBackend, T>,
    weight: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "matmul";
    p.validate::<T>(out.len(), x.len(), weight.len())?;
    let (px, pw, po) = (
        addr(OP, stream, "x", &x)?,
        addr(OP, stream, "weight", &weight)?,
        addr(OP, stream, "out", &out)?,
    );
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let (m, n, k) = (p.m as i64, p.n as i64, p.k as i64);
    let a = aclnn.contiguous(T::DTYPE, &[m, k], px)?;
    let b = aclnn.tensor(T::DTYPE, &[k, n], &[1, k], 0, &[n, k], pw)?;
    let o = aclnn.contiguous(T::DTYPE, &[m, n], po)?;
    // SAFETY: the descriptors cover exactly the checked lengths of buffers on the stream's
    // device, which their owners keep alive until the caller synchronises (the stream-order
    // contract of every KernelOps op).
    unsafe { aclnn.matmul(stream, &*ws, &a, &b, &o, CubeMathType::KeepDtype) }
}

/// `k` and `n` of `aclnnWeightQuantBatchMatmulV2`: at most 65535 (its documented range).
const WEIGHT_QUANT_MAX_DIM: usize = 65535;

/// `Ok` when the operators that run `format` take `T` activations (f16, bf16), else why not
/// and what to do: asked before a model uploads `format` weights, and again at each launch.
pub(super) fn weight_quant_activations<T: KvFloat>(
    format: QuantFormat,
) -> std::result::Result<(), String> {
    if std::mem::size_of::<T>() == 2 {
        return Ok(());
    }
    let operators = if format.is_blocks() {
        "aclnnWeightQuantBatchMatmulV2"
    } else {
        "aclnnDynamicQuant + aclnnQuantMatmulV4"
    };
    Err(format!(
        "the ACL provider of quant_matmul for {format}, {operators}, takes f16 or bf16 \
         activations, not {}: run the model in f16/bf16 for {format} weights, or load them \
         dequantized",
        T::DTYPE
    ))
}

/// `out = x · wᵀ` on a weight in the layout of [`super::quant_layout`] through
/// `aclnnWeightQuantBatchMatmulV2`: the values as `[k, n]` int8/int4 (the transposed view of
/// `[n, k]`), scales (and `Q4_1`'s offsets) per group of 32 as `[k / 32, n]` views of `[n, k /
/// 32]`; with one group per row (`k = 32`) per channel, as `[n]`, since the operator's group
/// size must be below `k`. W8A8 (`Int8PerChannel`) goes through [`w8a8`].
pub(super) fn quant_matmul<T: KvFloat>(
    stream: &AclStream,
    p: &QuantMatmul,
    out: Out<'_, AclBackend, T>,
    x: In<'_, AclBackend, T>,
    weight: In<'_, AclBackend, u8>,
) -> Result<()> {
    const OP: &str = "quant_matmul";
    p.validate::<T>(out.len(), x.len(), weight.len())?;
    weight_quant_activations::<T>(p.format)
        .map_err(|message| Error::InvalidArgument { op: OP, message })?;
    // (aclnnQuantMatmulV4 lifts its 65535 limit for int8 operands with 1-D f32 scales: W8A8.)
    if p.format.is_blocks() && (p.n > WEIGHT_QUANT_MAX_DIM || p.k > WEIGHT_QUANT_MAX_DIM) {
        return Err(Error::InvalidArgument {
            op: OP,
            message: format!(
                "n = {} and k = {}: aclnnWeightQuantBatchMatmulV2 takes at most \
                 {WEIGHT_QUANT_MAX_DIM} for each; split the weight",
                p.n, p.k
            ),
        });
    }
    let (px, pw, po) = (
        addr(OP, stream, "x", &x)?,
        addr(OP, stream, "weight", &weight)?,
        addr(OP, stream, "out", &out)?,
    );
    if p.m == 0 {
        return Ok(());
    }
    if p.format == QuantFormat::Int8PerChannel {
        return w8a8::<T>(stream, p, (px, pw, po));
    }
    let Some((at_scales, at_offsets)) = super::quant_layout::parts(p.format, p.n, p.k) else {
        return Err(Error::InvalidArgument {
            op: OP,
            message: format!("k = {} is not whole blocks", p.k),
        });
    };
    let (aclnn, ws) = setup(stream)?;
    let (m, n, k, g) = (p.m as i64, p.n as i64, p.k as i64, (p.k / BLOCK) as i64);
    let values_type = match p.format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => ascend_hal::acl::aclnn::data_type::ACL_INT4,
        QuantFormat::Q8_0 | QuantFormat::Int8PerChannel => {
            ascend_hal::acl::aclnn::data_type::ACL_INT8
        }
    };
    let at = |bytes: usize| DevicePtr(pw.0 + bytes as u64);
    let tx = aclnn.contiguous(T::DTYPE, &[m, k], px)?;
    let tw = aclnn.tensor_of(values_type, &[k, n], &[1, k], 0, &[n, k], pw)?;
    let group_view = |data: DevicePtr| {
        if g == 1 {
            aclnn.contiguous(T::DTYPE, &[n], data)
        } else {
            aclnn.tensor(T::DTYPE, &[g, n], &[1, g], 0, &[n, g], data)
        }
    };
    let scale = group_view(at(at_scales))?;
    let offset = match p.format {
        QuantFormat::Q4_1 => Some(group_view(at(at_offsets))?),
        _ => None,
    };
    let group_size = if g == 1 { 0 } else { BLOCK as i32 };
    let ty = aclnn.contiguous(T::DTYPE, &[m, n], po)?;
    // SAFETY: as in `matmul`; the views lie inside the weight buffer, whose length the shapes
    // were checked against (the layout takes exactly the blocks' bytes).
    unsafe {
        aclnn.weight_quant_batch_matmul_v2(
            stream,
            &*ws,
            &tx,
            &tw,
            &scale,
            offset.as_ref(),
            group_size,
            &ty,
        )
    }
}

/// W8A8 on a weight in the layout of [`super::quant_layout`] (`[n, k]` int8, then `n` f32
/// scales): `aclnnDynamicQuant` quantizes `x` per token into scratch of the workspace
/// allocator (`[m, k]` int8 and `[m]` f32 scales), then `aclnnQuantMatmulV4` multiplies it with
/// the weight as `[n, k]` with `transposeX2`, scaled per channel and per token.
fn w8a8<T: KvFloat>(
    stream: &AclStream,
    p: &QuantMatmul,
    (px, pw, po): (DevicePtr, DevicePtr, DevicePtr),
) -> Result<()> {
    let (aclnn, ws) = setup(stream)?;
    let (m, n, k) = (p.m as i64, p.n as i64, p.k as i64);
    let xq = DeviceBuffer::<AclBackend, i8>::alloc_in(&*ws, stream, p.m * p.k)?;
    let xs = DeviceBuffer::<AclBackend, f32>::alloc_in(&*ws, stream, p.m)?;
    let tx = aclnn.contiguous(T::DTYPE, &[m, k], px)?;
    let txq = aclnn.contiguous(DType::I8, &[m, k], xq.view().device_ptr())?;
    let txs = aclnn.contiguous(DType::F32, &[m], xs.view().device_ptr())?;
    let tw = aclnn.contiguous(DType::I8, &[n, k], pw)?;
    let scale = aclnn.contiguous(DType::F32, &[n], DevicePtr(pw.0 + (p.n * p.k) as u64))?;
    let to = aclnn.contiguous(T::DTYPE, &[m, n], po)?;
    // SAFETY: as in `matmul`; the weight's views lie inside its buffer (whose length the shapes
    // were checked against: `n · (k + 4)` bytes), and the scratch goes back to its allocator
    // after the launches, which reuses it only in stream order.
    unsafe {
        aclnn.dynamic_quant(stream, &*ws, &tx, &txq, &txs)?;
        aclnn.quant_matmul_v4(stream, &*ws, &txq, &tw, &scale, &txs, true, &to)
    }
}

/// `out = silu(x[:, :d]) · x[:, d:]` through `aclnnSwiGlu` over the last dim.
pub(super) fn silu_and_mul<T: KvFloat>(
    stream: &AclStream,
    p: &SiluAndMul,
    out: Out<'_, AclBackend, T>,
    x: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "silu_and_mul";
    p.validate::<T>(out.len(), x.len())?;
    let (px, po) = (addr(OP, stream, "x", &x)?, addr(OP, stream, "out", &out)?);
    if p.num_tokens == 0 || p.d == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let tx = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, 2 * p.d]), px)?;
    let to = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, p.d]), po)?;
    // SAFETY: as in `matmul`.
    unsafe { aclnn.swi_glu(stream, &*ws, &tx, -1, &to) }
}

/// The reciprocal roots ACLNN's norms write: scratch of the workspace allocator.
fn rstd<'a>(
    aclnn: &'a Aclnn,
    ws: &SharedAllocator<AclBackend>,
    stream: &AclStream,
    rows: usize,
) -> Result<(DeviceBuffer<AclBackend, f32>, AclTensor<'a>)> {
    let buf = DeviceBuffer::<AclBackend, f32>::alloc_in(&**ws, stream, rows)?;
    let t = aclnn.contiguous(DType::F32, &dims(&[rows, 1]), buf.view().device_ptr())?;
    Ok((buf, t))
}

/// RMSNorm through `aclnnRmsNorm`.
pub(super) fn rms_norm<T: KvFloat>(
    stream: &AclStream,
    p: &RmsNorm,
    out: Out<'_, AclBackend, T>,
    x: In<'_, AclBackend, T>,
    weight: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
    let (px, pw, po) = (
        addr(OP, stream, "x", &x)?,
        addr(OP, stream, "weight", &weight)?,
        addr(OP, stream, "out", &out)?,
    );
    if p.num_tokens == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let shape = dims(&[p.num_tokens, p.hidden]);
    let tx = aclnn.contiguous(T::DTYPE, &shape, px)?;
    let tg = aclnn.contiguous(T::DTYPE, &dims(&[p.hidden]), pw)?;
    let ty = aclnn.contiguous(T::DTYPE, &shape, po)?;
    let (_scratch, tr) = rstd(&aclnn, &ws, stream, p.num_tokens)?;
    // SAFETY: as in `matmul`; the scratch goes back to its allocator after the launch, which
    // reuses it only in stream order.
    unsafe { aclnn.rms_norm(stream, &*ws, &tx, &tg, p.eps as f64, &ty, &tr) }
}

/// `residual += x; x = RMSNorm(residual)` through `aclnnAddRmsNorm`, into scratch (CANN does
/// not document outputs over inputs for it), then copied back.
pub(super) fn fused_add_rms_norm<T: KvFloat>(
    stream: &AclStream,
    p: &RmsNorm,
    mut x: Out<'_, AclBackend, T>,
    mut residual: Out<'_, AclBackend, T>,
    weight: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "fused_add_rms_norm";
    p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
    let (px, pr, pw) = (
        addr(OP, stream, "x", &x)?,
        addr(OP, stream, "residual", &residual)?,
        addr(OP, stream, "weight", &weight)?,
    );
    if p.num_tokens == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let n = p.num_tokens * p.hidden;
    let y = DeviceBuffer::<AclBackend, T>::alloc_in(&*ws, stream, n)?;
    let sum = DeviceBuffer::<AclBackend, T>::alloc_in(&*ws, stream, n)?;
    let shape = dims(&[p.num_tokens, p.hidden]);
    let t1 = aclnn.contiguous(T::DTYPE, &shape, px)?;
    let t2 = aclnn.contiguous(T::DTYPE, &shape, pr)?;
    let tg = aclnn.contiguous(T::DTYPE, &dims(&[p.hidden]), pw)?;
    let ty = aclnn.contiguous(T::DTYPE, &shape, y.view().device_ptr())?;
    let ts = aclnn.contiguous(T::DTYPE, &shape, sum.view().device_ptr())?;
    let (_scratch, tr) = rstd(&aclnn, &ws, stream, p.num_tokens)?;
    // SAFETY: as in `rms_norm`.
    unsafe { aclnn.add_rms_norm(stream, &*ws, &t1, &t2, &tg, p.eps as f64, &ty, &tr, &ts) }?;
    stream.copy_d2d(&y, &mut x)?;
    stream.copy_d2d(&sum, &mut residual)
}

/// CANN 8.1's `aclnnArgMax` and `aclnnTopk` take f32 and f16 values only (their headers' dtype
/// lists have no bf16): a clear error naming the op and the limit, not a wrong result.
fn refuse_bf16<T: KvFloat>(op: &'static str, operator: &str) -> Result<()> {
    if T::DTYPE == DType::BF16 {
        return Err(Error::InvalidArgument {
            op,
            message: format!(
                "{operator} of CANN 8.1 takes f32 or f16 values, not bf16: cast the logits to \
                 f32 (or f16) first, or run this op on the CPU backend"
            ),
        });
    }
    Ok(())
}

/// `out[t] = table[ids[t]]` through `aclnnEmbedding` (int32 indices).
pub(super) fn embedding<T: KvFloat>(
    stream: &AclStream,
    p: &Embedding,
    out: Out<'_, AclBackend, T>,
    table: In<'_, AclBackend, T>,
    ids: In<'_, AclBackend, i32>,
) -> Result<()> {
    const OP: &str = "embedding";
    p.validate::<T>(out.len(), table.len(), ids.len())?;
    let (pt, pi, po) = (
        addr(OP, stream, "table", &table)?,
        addr(OP, stream, "ids", &ids)?,
        addr(OP, stream, "out", &out)?,
    );
    if p.num_tokens == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let tw = aclnn.contiguous(T::DTYPE, &dims(&[p.vocab, p.hidden]), pt)?;
    let ti = aclnn.contiguous(DType::I32, &dims(&[p.num_tokens]), pi)?;
    let to = aclnn.contiguous(T::DTYPE, &dims(&[p.num_tokens, p.hidden]), po)?;
    // SAFETY: as in `matmul`.
    unsafe { aclnn.embedding(stream, &*ws, &tw, &ti, &to) }
}

/// `out = a + b` through `aclnnAdd` (alpha 1; a bias broadcast as a `[1, cols]` view).
pub(super) fn add<T: KvFloat>(
    stream: &AclStream,
    p: &Add,
    out: Out<'_, AclBackend, T>,
    a: In<'_, AclBackend, T>,
    b: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "add";
    p.validate::<T>(out.len(), a.len(), b.len())?;
    let (pa, pb, po) = (
        addr(OP, stream, "a", &a)?,
        addr(OP, stream, "b", &b)?,
        addr(OP, stream, "out", &out)?,
    );
    if p.rows == 0 || p.cols == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let shape = dims(&[p.rows, p.cols]);
    let ta = aclnn.contiguous(T::DTYPE, &shape, pa)?;
    let b_shape = if p.broadcast {
        dims(&[1, p.cols])
    } else {
        shape.clone()
    };
    let tb = aclnn.contiguous(T::DTYPE, &b_shape, pb)?;
    let to = aclnn.contiguous(T::DTYPE, &shape, po)?;
    let alpha = aclnn.scalar_f32(1.0)?;
    // SAFETY: as in `matmul`.
    unsafe { aclnn.add(stream, &*ws, &ta, &tb, &alpha, &to) }
}

/// Each row's argmax through `aclnnArgMax` over the last dim, into int32.
pub(super) fn argmax<T: KvFloat>(
    stream: &AclStream,
    p: &Argmax,
    out: Out<'_, AclBackend, i32>,
    x: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "argmax";
    p.validate::<T>(out.len(), x.len())?;
    refuse_bf16::<T>(OP, "aclnnArgMax")?;
    let (px, po) = (addr(OP, stream, "x", &x)?, addr(OP, stream, "out", &out)?);
    if p.rows == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let tx = aclnn.contiguous(T::DTYPE, &dims(&[p.rows, p.cols]), px)?;
    let to = aclnn.contiguous(DType::I32, &dims(&[p.rows]), po)?;
    // SAFETY: as in `matmul`.
    unsafe { aclnn.arg_max(stream, &*ws, &tx, -1, false, &to) }
}

/// Each row's top `k`, sorted, largest first, through `aclnnTopk` over the last dim.
pub(super) fn top_k<T: KvFloat>(
    stream: &AclStream,
    p: &TopK,
    values: Out<'_, AclBackend, T>,
    indices: Out<'_, AclBackend, i64>,
    x: In<'_, AclBackend, T>,
) -> Result<()> {
    const OP: &str = "top_k";
    p.validate::<T>(values.len(), indices.len(), x.len())?;
    refuse_bf16::<T>(OP, "aclnnTopk")?;
    let (px, pv, pi) = (
        addr(OP, stream, "x", &x)?,
        addr(OP, stream, "values", &values)?,
        addr(OP, stream, "indices", &indices)?,
    );
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let (aclnn, ws) = setup(stream)?;
    let tx = aclnn.contiguous(T::DTYPE, &dims(&[p.rows, p.cols]), px)?;
    let out = dims(&[p.rows, p.k]);
    let tv = aclnn.contiguous(T::DTYPE, &out, pv)?;
    let ti = aclnn.contiguous(DType::I64, &out, pi)?;
    // SAFETY: as in `matmul`.
    unsafe { aclnn.topk(stream, &*ws, &tx, p.k as i64, -1, true, true, &tv, &ti) }
}
