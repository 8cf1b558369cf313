//! The ops the ACL backend takes from CANN's ACLNN operators (see [`super::providers`]): shapes
//! are checked as the CPU backend checks them, then the operator's descriptors are made over
//! the op's buffers and the two-phase protocol runs with a workspace from the device's
//! workspace allocator.

use std::sync::Arc;

use ascend_hal::acl::aclnn::{AclTensor, Aclnn, CubeMathType};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::alloc::SharedAllocator;
use ascend_hal::{DType, DeviceBuffer, DevicePtr, DeviceRepr, Result, Stream, StreamExt};

use super::providers::workspace_allocator;
use crate::float::KvFloat;
use crate::ops::{device_arg, In, Out};
use crate::shapes::{Matmul, RmsNorm, SiluAndMul};

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
