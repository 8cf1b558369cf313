//! `aclnnWeightQuantBatchMatmulV2` (weight-only quantization, `aclnnop/
//! aclnn_weight_quant_batch_matmul_v2.h` of CANN 8.1.RC1) over the CPU, with the checks its
//! documentation lists for Atlas A2:
//!
//! - `x` `[m, k]` FLOAT16 or BF16, contiguous or transposed; `weight` `[k, n]` INT8 or INT4
//!   (even inner axis), contiguous or transposed; `k` and `n` in [1, 65535]; no empty tensor;
//! - `antiquantScale` in `x`'s dtype: per tensor `(1,)`/`(1, 1)`, per channel `(n,)`/`(1, n)`
//!   with `antiquantGroupSize` 0, or per group `(⌈k / g⌉, n)` with `g` in [32, k − 1] and a
//!   multiple of 32; `antiquantOffsetOptional` shaped and typed as the scale;
//! - `biasOptional` `(n,)`/`(1, n)`, FLOAT16 with FLOAT16 `x`, FLOAT with BF16 `x`;
//! - `quantOffsetOptional` without `quantScaleOptional` is refused; `y` `[m, n]` in `x`'s dtype.
//!
//! `ANTIQUANT(weight) = (weight + offset) · scale` is computed in f16 for f16 `x` (each step
//! rounded, as the operator's f16 path does) and in f32 for bf16; the products accumulate in f32.
//! Refusals are `ACLNN_ERR_PARAM_INVALID` (161002), NULL required arguments
//! `ACLNN_ERR_PARAM_NULLPTR` (161001). Limits of the fake: no output quantization
//! (`quantScaleOptional` must be NULL, so `y` is never INT8), no INT32 (INT4Pack) or FRACTAL_NZ
//! weights, no UINT64/INT64 scales.

#![allow(non_snake_case)]

use std::ffi::{c_int, c_void};

use hal_mock::KernelArg;
use half::f16;

use crate::aclnn::{
    dtype_name, launch, launch_entry, plan, same_dtype, tensor, Plan, Tensor, ACL_BF16, ACL_FLOAT,
    ACL_FLOAT16, ACL_INT4, ACL_INT8, INVALID, SMALL_WORKSPACE,
};
use crate::exports::call;
use crate::state::{fail, Outcome};

/// The largest `k` and `n` the operator takes.
const MAX_KN: i64 = 65535;

/// The most elements of an operand the fake holds as f32 on the host for one call.
const MAX_FAKE_ELEMENTS: i64 = 1 << 28;

/// Whether a 2-D view is contiguous or the transposed view of contiguous storage.
fn plain_or_transposed(t: &Tensor) -> bool {
    t.is_contiguous() || (t.dims.len() == 2 && t.strides == [1, t.dims[0]])
}

/// How the scale is laid out: one value, one per column, or one per group and column.
#[derive(Clone, Copy)]
enum Mode {
    Tensor,
    Channel,
    Group(usize),
}

// ---- aclnnWeightQuantBatchMatmulV2 ----

/// `aclnnStatus aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(const aclTensor *x, const
/// aclTensor *weight, const aclTensor *antiquantScale, const aclTensor *antiquantOffsetOptional,
/// const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional, const aclTensor
/// *biasOptional, int antiquantGroupSize, const aclTensor *y, uint64_t *workspaceSize,
/// aclOpExecutor **executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(
    x: *const c_void,
    weight: *const c_void,
    antiquant_scale: *const c_void,
    antiquant_offset: *const c_void,
    quant_scale: *const c_void,
    quant_offset: *const c_void,
    bias: *const c_void,
    antiquant_group_size: c_int,
    y: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnWeightQuantBatchMatmulV2GetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "x", x)?;
        let tw = tensor(F, "weight", weight)?;
        let ts = tensor(F, "antiquantScale", antiquant_scale)?;
        let ty = tensor(F, "y", y)?;
        let optional = |what: &str, h: *const c_void| -> Outcome<Option<Tensor>> {
            if h.is_null() {
                Ok(None)
            } else {
                tensor(F, what, h).map(Some)
            }
        };
        let to = optional("antiquantOffsetOptional", antiquant_offset)?;
        let tb = optional("biasOptional", bias)?;
        if !quant_offset.is_null() && quant_scale.is_null() {
            return fail(
                INVALID,
                format!("{F}: quantOffsetOptional is given but quantScaleOptional is NULL"),
            );
        }
        if !quant_scale.is_null() {
            return fail(
                INVALID,
                format!(
                    "{F}: quantScaleOptional (output quantization) is not implemented by the \
                     fake; pass NULL"
                ),
            );
        }
        if !matches!(tx.dtype, ACL_FLOAT16 | ACL_BF16) {
            return fail(
                INVALID,
                format!(
                    "{F}: x dtype {} should be in dtype support list [DT_FLOAT16, DT_BF16]",
                    dtype_name(tx.dtype)
                ),
            );
        }
        if !matches!(tw.dtype, ACL_INT8 | ACL_INT4) {
            return fail(
                INVALID,
                format!(
                    "{F}: weight dtype {} should be in dtype support list [DT_INT8, DT_INT4] \
                     (INT32 INT4Pack weights are not implemented by the fake)",
                    dtype_name(tw.dtype)
                ),
            );
        }
        if tx.dims.len() != 2 || tw.dims.len() != 2 {
            return fail(
                INVALID,
                format!(
                    "{F}: x and weight must be 2-D, got {:?} and {:?}",
                    tx.dims, tw.dims
                ),
            );
        }
        let (m, k, n) = (tx.dims[0], tx.dims[1], tw.dims[1]);
        if tw.dims[0] != k {
            return fail(
                INVALID,
                format!(
                    "{F}: the reduce dims differ: x is {:?}, weight {:?}",
                    tx.dims, tw.dims
                ),
            );
        }
        if m == 0 || k == 0 || n == 0 {
            return fail(
                INVALID,
                format!("{F}: empty tensors are not supported (m {m}, k {k}, n {n})"),
            );
        }
        if k > MAX_KN || n > MAX_KN {
            return fail(
                INVALID,
                format!("{F}: k {k} and n {n} must be in [1, {MAX_KN}]"),
            );
        }
        if k * n > MAX_FAKE_ELEMENTS || m * n > MAX_FAKE_ELEMENTS || m * k > MAX_FAKE_ELEMENTS {
            return fail(
                INVALID,
                format!(
                    "{F}: m {m}, k {k}, n {n} are past what the fake computes on ({} elements \
                     per operand; the operator itself takes them)",
                    MAX_FAKE_ELEMENTS
                ),
            );
        }
        for (what, t) in [("x", &tx), ("weight", &tw), ("antiquantScale", &ts)] {
            if !plain_or_transposed(t) {
                return fail(
                    INVALID,
                    format!(
                        "{F}: {what} must be contiguous or transposed, got dims {:?} strides {:?}",
                        t.dims, t.strides
                    ),
                );
            }
        }
        if !tx.is_contiguous() && m > MAX_KN {
            return fail(
                INVALID,
                format!("{F}: a transposed x takes m in [1, {MAX_KN}], got {m}"),
            );
        }
        // The inner (unit-stride) axis of an INT4 weight holds whole bytes.
        let inner = if tw.is_contiguous() { n } else { k };
        if tw.dtype == ACL_INT4 && inner % 2 != 0 {
            return fail(
                INVALID,
                format!("{F}: the inner axis of an INT4 weight must be even, got {inner}"),
            );
        }
        same_dtype(F, ("x", &tx), ("antiquantScale", &ts))?;
        let g = antiquant_group_size as i64;
        let mode = if g == 0 {
            match ts.dims.as_slice() {
                [1] | [1, 1] => Mode::Tensor,
                [c] | [1, c] if *c == n => Mode::Channel,
                other => {
                    return fail(
                        INVALID,
                        format!(
                            "{F}: with antiquantGroupSize 0, antiquantScale must be (1,), (1, 1), \
                             ({n},) or (1, {n}), got {other:?}"
                        ),
                    )
                }
            }
        } else {
            if g < 32 || g > k - 1 || g % 32 != 0 {
                return fail(
                    INVALID,
                    format!(
                        "{F}: antiquantGroupSize {g} must be 0, or in [32, k - 1 = {}] and a \
                         multiple of 32",
                        k - 1
                    ),
                );
            }
            let want = [(k + g - 1) / g, n];
            if ts.dims != want {
                return fail(
                    INVALID,
                    format!(
                        "{F}: with antiquantGroupSize {g}, antiquantScale must be {want:?}, got \
                         {:?}",
                        ts.dims
                    ),
                );
            }
            Mode::Group(g as usize)
        };
        if let Some(o) = &to {
            if o.dims != ts.dims || o.dtype != ts.dtype || !plain_or_transposed(o) {
                return fail(
                    INVALID,
                    format!(
                        "{F}: antiquantOffsetOptional ({:?} {}) must be shaped and typed as \
                         antiquantScale ({:?} {})",
                        o.dims,
                        dtype_name(o.dtype),
                        ts.dims,
                        dtype_name(ts.dtype)
                    ),
                );
            }
        }
        if let Some(b) = &tb {
            let want_type = if tx.dtype == ACL_FLOAT16 {
                ACL_FLOAT16
            } else {
                ACL_FLOAT
            };
            let shaped = matches!(b.dims.as_slice(), [c] | [1, c] if *c == n);
            if !shaped || b.dtype != want_type || !b.is_contiguous() {
                return fail(
                    INVALID,
                    format!(
                        "{F}: biasOptional must be contiguous ({n},) or (1, {n}) of {} with x of \
                         {}, got {:?} {}",
                        dtype_name(want_type),
                        dtype_name(tx.dtype),
                        b.dims,
                        dtype_name(b.dtype)
                    ),
                );
            }
        }
        if ty.dtype != tx.dtype || ty.dims != [m, n] || !ty.is_contiguous() {
            return fail(
                INVALID,
                format!(
                    "{F}: y must be a contiguous [{m}, {n}] of x's dtype {}, got {:?} {}",
                    dtype_name(tx.dtype),
                    ty.dims,
                    dtype_name(ty.dtype)
                ),
            );
        }
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let f16_path = tx.dtype == ACL_FLOAT16;
        let (cx, cw, cs, co, cb, cy) = (
            tx.clone(),
            tw.clone(),
            ts.clone(),
            to.clone(),
            tb.clone(),
            ty.clone(),
        );
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnWeightQuantBatchMatmulV2";
            let xv = cx.read(&args[0], OP)?;
            let wv = cw.read_ints(&args[1], OP)?;
            let sv = cs.read(&args[2], OP)?;
            let ov = match &co {
                Some(o) => Some(o.read(&args[3], OP)?),
                None => None,
            };
            let bv = match &cb {
                Some(b) => Some(b.read(&args[4], OP)?),
                None => None,
            };
            // ANTIQUANT(weight) `[k, n]`, the scale's index for element (r, c) by the mode.
            let at = |r: usize, c: usize| match mode {
                Mode::Tensor => 0,
                Mode::Channel => c,
                Mode::Group(g) => (r / g) * n + c,
            };
            let round = |v: f32| {
                if f16_path {
                    f16::from_f32(v).to_f32()
                } else {
                    v
                }
            };
            let mut w = vec![0f32; k * n];
            for r in 0..k {
                for c in 0..n {
                    let i = at(r, c);
                    let shifted = match &ov {
                        Some(o) => round(wv[r * n + c] as f32 + o[i]),
                        None => wv[r * n + c] as f32,
                    };
                    w[r * n + c] = round(shifted * sv[i]);
                }
            }
            let mut y = vec![0f32; m * n];
            for i in 0..m {
                for (r, &xr) in xv[i * k..(i + 1) * k].iter().enumerate() {
                    for (yc, &wc) in y[i * n..(i + 1) * n].iter_mut().zip(&w[r * n..(r + 1) * n]) {
                        *yc += xr * wc;
                    }
                }
                if let Some(b) = &bv {
                    for (yc, &bc) in y[i * n..(i + 1) * n].iter_mut().zip(b) {
                        *yc += bc;
                    }
                }
            }
            cy.write(&args[5], OP, &y)
        };
        let mut handles = vec![x, weight, antiquant_scale, y];
        handles.extend(
            [antiquant_offset, bias]
                .into_iter()
                .filter(|h| !h.is_null()),
        );
        plan(
            F,
            workspace_size,
            executor,
            &handles,
            Plan {
                op: "aclnnWeightQuantBatchMatmulV2",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![
                    tx.data,
                    tw.data,
                    ts.data,
                    to.as_ref().map_or(ts.data, |o| o.data),
                    tb.as_ref().map_or(ts.data, |b| b.data),
                    ty.data,
                ],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnWeightQuantBatchMatmulV2);
