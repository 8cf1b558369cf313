//! The quantized matmuls of CANN 8.1.RC1 over the CPU, with the checks their documentation
//! lists for Atlas A2: weight-only `aclnnWeightQuantBatchMatmulV2`, and W8A8's
//! `aclnnDynamicQuant` + `aclnnQuantMatmulV4` (below).
//!
//! `aclnnWeightQuantBatchMatmulV2` (`aclnnop/aclnn_weight_quant_batch_matmul_v2.h`):
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
    dtype_name, launch, launch_entry, optional_tensor, plan, same_dtype, tensor, Plan, Tensor,
    ACL_BF16, ACL_FLOAT, ACL_FLOAT16, ACL_INT32, ACL_INT4, ACL_INT8, INVALID, SMALL_WORKSPACE,
};
use crate::exports::call;
use crate::state::{fail, Outcome};

/// The largest `k` and `n` the operator takes.
const MAX_KN: i64 = 65535;

/// The most elements of an operand the fake holds as f32 on the host for one call.
const MAX_FAKE_ELEMENTS: i64 = 1 << 28;

/// Refuses a matmul of `[m, k] · [k, n]` whose operands are past [`MAX_FAKE_ELEMENTS`].
fn within_fake(function: &str, m: i64, k: i64, n: i64) -> Outcome {
    if m * k > MAX_FAKE_ELEMENTS || k * n > MAX_FAKE_ELEMENTS || m * n > MAX_FAKE_ELEMENTS {
        return fail(
            INVALID,
            format!(
                "{function}: m {m}, k {k}, n {n} are past what the fake computes on \
                 ({MAX_FAKE_ELEMENTS} elements per operand; the operator itself takes them)"
            ),
        );
    }
    Ok(())
}

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
        let to = optional_tensor(F, "antiquantOffsetOptional", antiquant_offset)?;
        let tb = optional_tensor(F, "biasOptional", bias)?;
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
        within_fake(F, m, k, n)?;
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

// ---- aclnnDynamicQuant ----
//
// `aclnnop/aclnn_dynamic_quant.h`: per-token symmetric quantization of `x` (FLOAT16 or BF16,
// 2 to 8 dims, any strides) to INT8 `yOut` (x's shape, contiguous) with FLOAT `scaleOut` (x's
// shape without its last dim, contiguous); `smoothScalesOptional` (x's last dim, x's dtype)
// multiplies x first. Per row, in f32 as CANN's golden computes it: `scale = max|x| / 127` (1
// for a row of zeros), `y = round(x / scale)` ties to even, within [-128, 127].

/// `aclnnStatus aclnnDynamicQuantGetWorkspaceSize(const aclTensor* x, const aclTensor*
/// smoothScalesOptional, const aclTensor* yOut, const aclTensor* scaleOut, uint64_t*
/// workspaceSize, aclOpExecutor** executor)`.
#[no_mangle]
pub extern "C" fn aclnnDynamicQuantGetWorkspaceSize(
    x: *const c_void,
    smooth_scales: *const c_void,
    y_out: *const c_void,
    scale_out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnDynamicQuantGetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "x", x)?;
        let ty = tensor(F, "yOut", y_out)?;
        let ts = tensor(F, "scaleOut", scale_out)?;
        let tm = optional_tensor(F, "smoothScalesOptional", smooth_scales)?;
        if !matches!(tx.dtype, ACL_FLOAT16 | ACL_BF16) {
            return fail(
                INVALID,
                format!(
                    "{F}: x dtype {} should be in dtype support list [DT_FLOAT16, DT_BF16]",
                    dtype_name(tx.dtype)
                ),
            );
        }
        if !(2..=8).contains(&tx.dims.len()) {
            return fail(
                INVALID,
                format!("{F}: x must have 2 to 8 dims, got {:?}", tx.dims),
            );
        }
        let cols = *tx.dims.last().unwrap_or(&0);
        if ty.dtype != ACL_INT8 || ty.dims != tx.dims || !ty.is_contiguous() {
            return fail(
                INVALID,
                format!(
                    "{F}: yOut must be a contiguous DT_INT8 tensor of x's shape {:?}, got {:?} {}",
                    tx.dims,
                    ty.dims,
                    dtype_name(ty.dtype)
                ),
            );
        }
        let lead = &tx.dims[..tx.dims.len() - 1];
        if ts.dtype != ACL_FLOAT || ts.dims != lead || !ts.is_contiguous() {
            return fail(
                INVALID,
                format!(
                    "{F}: scaleOut must be a contiguous DT_FLOAT tensor of x's shape without its \
                     last dim, {lead:?}, got {:?} {}",
                    ts.dims,
                    dtype_name(ts.dtype)
                ),
            );
        }
        if let Some(m) = &tm {
            same_dtype(F, ("x", &tx), ("smoothScalesOptional", m))?;
            if m.dims != [cols] {
                return fail(
                    INVALID,
                    format!(
                        "{F}: smoothScalesOptional must be [{cols}] (x's last dim), got {:?}",
                        m.dims
                    ),
                );
            }
        }
        if tx.dims.iter().product::<i64>() > MAX_FAKE_ELEMENTS {
            return fail(
                INVALID,
                format!(
                    "{F}: x {:?} is past what the fake computes on ({MAX_FAKE_ELEMENTS} \
                     elements; the operator itself takes it)",
                    tx.dims
                ),
            );
        }
        let cols = cols as usize;
        let (cx, cy, cs, cm) = (tx.clone(), ty.clone(), ts.clone(), tm.clone());
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnDynamicQuant";
            let mut xv = cx.read(&args[0], OP)?;
            if let Some(m) = &cm {
                let mv = m.read(&args[3], OP)?;
                for row in xv.chunks_mut(cols.max(1)) {
                    for (v, s) in row.iter_mut().zip(&mv) {
                        *v *= s;
                    }
                }
            }
            let mut scales = Vec::with_capacity(xv.len() / cols.max(1));
            for row in xv.chunks_mut(cols.max(1)) {
                let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = amax / 127.0;
                let s = if s == 0.0 { 1.0 } else { s };
                for v in row.iter_mut() {
                    *v = (*v / s).round_ties_even().clamp(-128.0, 127.0);
                }
                scales.push(s);
            }
            cy.write(&args[1], OP, &xv)?;
            cs.write(&args[2], OP, &scales)
        };
        let mut handles = vec![x, y_out, scale_out];
        if !smooth_scales.is_null() {
            handles.push(smooth_scales);
        }
        plan(
            F,
            workspace_size,
            executor,
            &handles,
            Plan {
                op: "aclnnDynamicQuant",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![
                    tx.data,
                    ty.data,
                    ts.data,
                    tm.as_ref().map_or(tx.data, |m| m.data),
                ],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnDynamicQuant);

// ---- aclnnQuantMatmulV4 ----
//
// `aclnnop/aclnn_quant_matmul_v4.h`, Atlas A2: `out = x1 @ x2 · scale [· pertokenScale]`
// with an int32 product, the data-type combinations of its documentation that give FLOAT16
// or BF16 out:
//
// | scale | pertokenScaleOptional | bias | out |
// | --- | --- | --- | --- |
// | FLOAT | FLOAT | NULL, INT32, FLOAT16, FLOAT | FLOAT16 |
// | FLOAT, BF16 | NULL, FLOAT | NULL, INT32, BF16, FLOAT | BF16 |
//
// `x1` INT8 `(m, k)` (`(k, m)` with `transposeX1`), `x2` INT8 `(k, n)` (`(n, k)` with
// `transposeX2`), each contiguous or the transposed view of contiguous storage; `scale` 1-D
// `(1,)` or `(n,)`; `pertokenScaleOptional` `(m,)`; `bias` `(n,)`; `offset` only with INT8 out;
// `out` `(m, n)`; no empty tensors. An INT32 bias is added to the product before scaling, a
// float one after. (The 65535 limit on the last dims does not apply: int8 operands with 1-D
// FLOAT/BF16 scales lift it.) Limits of the fake: no batch dims, no INT4/INT32 (INT4-packed)
// operands, no FRACTAL_NZ `x2`, no UINT64/INT64 (TransQuantParamV2) scales, no INT8/INT32 out.

/// `aclnnStatus aclnnQuantMatmulV4GetWorkspaceSize(const aclTensor* x1, const aclTensor* x2,
/// const aclTensor* scale, const aclTensor* offset, const aclTensor* pertokenScaleOptional,
/// const aclTensor* bias, bool transposeX1, bool transposeX2, const aclTensor* out, uint64_t*
/// workspaceSize, aclOpExecutor** executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnQuantMatmulV4GetWorkspaceSize(
    x1: *const c_void,
    x2: *const c_void,
    scale: *const c_void,
    offset: *const c_void,
    pertoken_scale: *const c_void,
    bias: *const c_void,
    transpose_x1: bool,
    transpose_x2: bool,
    out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnQuantMatmulV4GetWorkspaceSize";
    call(F, |_, _| {
        let t1 = tensor(F, "x1", x1)?;
        let t2 = tensor(F, "x2", x2)?;
        let ts = tensor(F, "scale", scale)?;
        let to = tensor(F, "out", out)?;
        let tp = optional_tensor(F, "pertokenScaleOptional", pertoken_scale)?;
        let tb = optional_tensor(F, "bias", bias)?;
        for (what, t) in [("x1", &t1), ("x2", &t2)] {
            if t.dtype != ACL_INT8 {
                return fail(
                    INVALID,
                    format!(
                        "{F}: {what} dtype {} should be DT_INT8 (DT_INT4 and DT_INT32 INT4-packed \
                         operands are not implemented by the fake)",
                        dtype_name(t.dtype)
                    ),
                );
            }
            if t.dims.len() != 2 {
                return fail(
                    INVALID,
                    format!(
                        "{F}: {what} must be 2-D (batch dims are not implemented by the fake), \
                         got {:?}",
                        t.dims
                    ),
                );
            }
            if !plain_or_transposed(t) {
                return fail(
                    INVALID,
                    format!(
                        "{F}: {what} must be contiguous or the transposed view of contiguous \
                         storage, got dims {:?} strides {:?}",
                        t.dims, t.strides
                    ),
                );
            }
        }
        let (m, k1) = if transpose_x1 {
            (t1.dims[1], t1.dims[0])
        } else {
            (t1.dims[0], t1.dims[1])
        };
        let (k2, n) = if transpose_x2 {
            (t2.dims[1], t2.dims[0])
        } else {
            (t2.dims[0], t2.dims[1])
        };
        if k1 != k2 {
            return fail(
                INVALID,
                format!(
                    "{F}: the k of x1 {:?} (transposeX1 {transpose_x1}) and x2 {:?} (transposeX2 \
                     {transpose_x2}) differ: {k1} vs {k2}",
                    t1.dims, t2.dims
                ),
            );
        }
        let k = k1;
        if m == 0 || k == 0 || n == 0 {
            return fail(
                INVALID,
                format!("{F}: empty tensors are not supported (m {m}, k {k}, n {n})"),
            );
        }
        within_fake(F, m, k, n)?;
        if !offset.is_null() {
            return fail(
                INVALID,
                format!(
                    "{F}: offset is taken only with DT_INT8 out (not implemented by the fake); \
                     pass NULL"
                ),
            );
        }
        let scale_ok = match to.dtype {
            ACL_FLOAT16 => ts.dtype == ACL_FLOAT,
            ACL_BF16 => matches!(ts.dtype, ACL_FLOAT | ACL_BF16),
            other => {
                return fail(
                    INVALID,
                    format!(
                        "{F}: out dtype {} is not implemented by the fake (it computes DT_FLOAT16 \
                         and DT_BF16 out)",
                        dtype_name(other)
                    ),
                )
            }
        };
        if !scale_ok {
            return fail(
                INVALID,
                format!(
                    "{F}: scale dtype {} with out dtype {} is not a supported combination (out \
                     DT_FLOAT16 takes a DT_FLOAT scale, DT_BF16 a DT_FLOAT or DT_BF16 one; \
                     DT_UINT64/DT_INT64 scales from TransQuantParamV2 are not implemented by the \
                     fake)",
                    dtype_name(ts.dtype),
                    dtype_name(to.dtype)
                ),
            );
        }
        if ts.dims != [1] && ts.dims != [n] {
            return fail(
                INVALID,
                format!("{F}: scale must be 1-D (1,) or ({n},), got {:?}", ts.dims),
            );
        }
        match &tp {
            None if to.dtype == ACL_FLOAT16 => {
                return fail(
                    INVALID,
                    format!(
                        "{F}: DT_FLOAT16 out with a DT_FLOAT scale needs pertokenScaleOptional \
                         (without it the scale must be DT_UINT64/DT_INT64)"
                    ),
                )
            }
            Some(p) if p.dtype != ACL_FLOAT || p.dims != [m] => {
                return fail(
                    INVALID,
                    format!(
                        "{F}: pertokenScaleOptional must be DT_FLOAT ({m},), got {:?} {}",
                        p.dims,
                        dtype_name(p.dtype)
                    ),
                )
            }
            _ => {}
        }
        if let Some(b) = &tb {
            let float = if to.dtype == ACL_FLOAT16 {
                ACL_FLOAT16
            } else {
                ACL_BF16
            };
            if !matches!(b.dtype, ACL_INT32 | ACL_FLOAT) && b.dtype != float {
                return fail(
                    INVALID,
                    format!(
                        "{F}: bias dtype {} with out dtype {} should be DT_INT32, DT_FLOAT or {}",
                        dtype_name(b.dtype),
                        dtype_name(to.dtype),
                        dtype_name(float)
                    ),
                );
            }
            if b.dims != [n] {
                return fail(
                    INVALID,
                    format!("{F}: bias must be ({n},) with a 2-D out, got {:?}", b.dims),
                );
            }
        }
        if to.dims != [m, n] {
            return fail(
                INVALID,
                format!("{F}: out must be ({m}, {n}), got {:?}", to.dims),
            );
        }
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let (c1, c2, cs, cp, cb, co) = (
            t1.clone(),
            t2.clone(),
            ts.clone(),
            tp.clone(),
            tb.clone(),
            to.clone(),
        );
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnQuantMatmulV4";
            let a = c1.read_ints(&args[0], OP)?;
            let b = c2.read_ints(&args[1], OP)?;
            let sv = cs.read(&args[2], OP)?;
            let pv = match &cp {
                Some(p) => Some(p.read(&args[3], OP)?),
                None => None,
            };
            let (int_bias, float_bias) = match &cb {
                Some(t) if t.dtype == ACL_INT32 => (Some(t.read_ints(&args[4], OP)?), None),
                Some(t) => (None, Some(t.read(&args[4], OP)?)),
                None => (None, None),
            };
            // Element (i, r) of x1 and (r, j) of x2 in their views' row-major order.
            let x1_at = |i: usize, r: usize| if transpose_x1 { r * m + i } else { i * k + r };
            let x2_at = |r: usize, j: usize| if transpose_x2 { j * k + r } else { r * n + j };
            let mut y = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    // The cube unit's int32 accumulator.
                    let mut acc = (0..k).fold(0i32, |acc, r| {
                        acc.wrapping_add(a[x1_at(i, r)].wrapping_mul(b[x2_at(r, j)]))
                    });
                    if let Some(bias) = &int_bias {
                        acc = acc.wrapping_add(bias[j]);
                    }
                    let mut v = acc as f32 * sv[if sv.len() == 1 { 0 } else { j }];
                    if let Some(p) = &pv {
                        v *= p[i];
                    }
                    if let Some(bias) = &float_bias {
                        v += bias[j];
                    }
                    y[i * n + j] = v;
                }
            }
            co.write(&args[5], OP, &y)
        };
        let mut handles = vec![x1, x2, scale, out];
        handles.extend([pertoken_scale, bias].into_iter().filter(|h| !h.is_null()));
        plan(
            F,
            workspace_size,
            executor,
            &handles,
            Plan {
                op: "aclnnQuantMatmulV4",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![
                    t1.data,
                    t2.data,
                    ts.data,
                    tp.as_ref().map_or(ts.data, |p| p.data),
                    tb.as_ref().map_or(ts.data, |b| b.data),
                    to.data,
                ],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnQuantMatmulV4);
