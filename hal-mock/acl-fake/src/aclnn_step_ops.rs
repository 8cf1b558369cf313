//! The ACLNN operators an engine's step uses around the model, over the CPU, with the prototypes
//! and documented checks of CANN 8.1.RC1 (`aclnnop/aclnn_{embedding,add,argmax,topk}.h`,
//! `aclnn/acl_meta.h` for the scalar): `aclnnEmbedding` (a row gather), `aclnnAdd` (`self +
//! alpha · other` with broadcasting), `aclnnArgMax` and `aclnnTopk`, and `aclCreateScalar` /
//! `aclDestroyScalar` for `aclnnAdd`'s alpha.
//!
//! Dtype lists are the headers': `aclnnArgMax` takes FLOAT and FLOAT16 values and writes INT32
//! or INT64; `aclnnTopk` takes (of the float types) FLOAT16, FLOAT32 and writes INT64 indices;
//! `aclnnEmbedding` takes INT32 or INT64 indices and an output of the weight's dtype with one
//! more dim than the indices. Refusals are `ACLNN_ERR_PARAM_INVALID` (161002), NULL arguments
//! `ACLNN_ERR_PARAM_NULLPTR` (161001). An index outside the embedding table faults the kernel
//! (the stream's next synchronisation reports 507015), as a gather on the device would. Limits
//! of the fake: float weights and operands only, `aclnnAdd` of one dtype.

#![allow(non_snake_case)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ascend_hal::Error;
use hal_mock::KernelArg;
use half::{bf16, f16};

use crate::aclnn::{
    check_float, dtype_name, launch, launch_entry, plan, same_dtype, shape_is, tensor, Plan,
    Tensor, ACL_BF16, ACL_FLOAT, ACL_FLOAT16, INVALID, NULLPTR, SMALL_WORKSPACE,
};
use crate::exports::call;
use crate::state::{fail, set_last_error, Outcome};

const ACL_INT32: i32 = 3;
const ACL_INT64: i32 = 9;

// ---- scalars ----

/// What `aclCreateScalar` recorded: the value, as a double.
static SCALARS: Mutex<Option<HashMap<usize, f64>>> = Mutex::new(None);
const SCALAR_BASE: usize = 0x5f40_0000_0000;

fn scalars<R>(f: impl FnOnce(&mut HashMap<usize, f64>) -> R) -> R {
    let mut g = SCALARS.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

/// `aclScalar *aclCreateScalar(void *value, aclDataType dataType)`: NULL for a NULL value or a
/// dtype the fake does not read (the reason in `aclGetRecentErrMsg`).
#[no_mangle]
pub extern "C" fn aclCreateScalar(value: *mut c_void, data_type: i32) -> *mut c_void {
    std::panic::catch_unwind(|| {
        if value.is_null() {
            set_last_error("aclCreateScalar: value is NULL");
            return std::ptr::null_mut();
        }
        // SAFETY: `value` points at one value of `dataType` by the C API's contract.
        let v = unsafe {
            match data_type {
                ACL_FLOAT => value.cast::<f32>().read_unaligned() as f64,
                ACL_FLOAT16 => value.cast::<f16>().read_unaligned().to_f64(),
                ACL_BF16 => value.cast::<bf16>().read_unaligned().to_f64(),
                11 => value.cast::<f64>().read_unaligned(),
                ACL_INT32 => value.cast::<i32>().read_unaligned() as f64,
                ACL_INT64 => value.cast::<i64>().read_unaligned() as f64,
                _ => {
                    set_last_error(&format!(
                        "aclCreateScalar: dataType {data_type} is not one the fake reads"
                    ));
                    return std::ptr::null_mut();
                }
            }
        };
        static NEXT: Mutex<usize> = Mutex::new(0);
        let mut n = NEXT.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        let h = SCALAR_BASE + *n * 16;
        scalars(|m| m.insert(h, v));
        h as *mut c_void
    })
    .unwrap_or_else(|_| {
        set_last_error("aclCreateScalar: the fake panicked");
        std::ptr::null_mut()
    })
}

/// `aclnnStatus aclDestroyScalar(const aclScalar *scalar)`.
#[no_mangle]
pub extern "C" fn aclDestroyScalar(scalar: *const c_void) -> i32 {
    call("aclDestroyScalar", |_, _| {
        if scalar.is_null() {
            return Ok(());
        }
        match scalars(|m| m.remove(&(scalar as usize))) {
            Some(_) => Ok(()),
            None => fail(
                INVALID,
                format!("aclDestroyScalar: {scalar:p} is not a live aclScalar"),
            ),
        }
    })
}

// ---- element access over a kernel argument ----

/// Checks that a view holds one of `allowed` dtypes, as an operator's support list says.
fn dtype_in(function: &str, what: &str, t: &Tensor, allowed: &[(i32, &str)]) -> Outcome {
    if allowed.iter().any(|&(d, _)| d == t.dtype) {
        return Ok(());
    }
    let list: Vec<&str> = allowed.iter().map(|&(_, n)| n).collect();
    fail(
        INVALID,
        format!(
            "{function}: {what} dtype {} should be in dtype support list [{}]",
            dtype_name(t.dtype),
            list.join(", ")
        ),
    )
}

/// The integer elements of an INT32 or INT64 view, in row-major order.
fn read_ints(t: &Tensor, arg: &KernelArg, name: &'static str) -> Result<Vec<i64>, Error> {
    t.fits(arg, name)?;
    let mut out = Vec::with_capacity(t.numel());
    let p = arg.ptr;
    // SAFETY: `fits` checked that every element of the view lies in the argument's memory.
    t.for_each_offset(|o| unsafe {
        out.push(if t.dtype == ACL_INT32 {
            p.cast::<i32>().add(o).read_unaligned() as i64
        } else {
            p.cast::<i64>().add(o).read_unaligned()
        })
    });
    Ok(out)
}

/// Writes `values` to an INT32 or INT64 view, in row-major order.
fn write_ints(
    t: &Tensor,
    arg: &KernelArg,
    name: &'static str,
    values: &[i64],
) -> Result<(), Error> {
    t.fits(arg, name)?;
    let (p, mut next) = (arg.ptr, values.iter());
    // SAFETY: as in `read_ints`; nothing else accesses the memory while the task runs.
    t.for_each_offset(|o| unsafe {
        let v = next.next().copied().unwrap_or(0);
        if t.dtype == ACL_INT32 {
            p.cast::<i32>().add(o).write_unaligned(v as i32)
        } else {
            p.cast::<i64>().add(o).write_unaligned(v)
        }
    });
    Ok(())
}

/// `dim` of a tensor of `nd` dims, as an index, or the documented refusal.
fn axis(function: &str, dim: i64, nd: usize) -> Outcome<usize> {
    let n = nd as i64;
    if nd == 0 || dim < -n || dim >= n {
        return fail(
            INVALID,
            format!("{function}: dim {dim} should be in [-{n}, {n})"),
        );
    }
    Ok(dim.rem_euclid(n) as usize)
}

/// `(outer, len, inner)`: a view of `dims` as slices along `d`.
fn split(dims: &[i64], d: usize) -> (usize, usize, usize) {
    let p = |s: &[i64]| s.iter().map(|&v| v as usize).product::<usize>();
    (p(&dims[..d]), dims[d] as usize, p(&dims[d + 1..]))
}

/// Whether `a` ranks above `b`: larger, a NaN above everything (torch's order).
fn ranks_above(a: f32, b: f32) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

// ---- aclnnEmbedding ----

/// `aclnnStatus aclnnEmbeddingGetWorkspaceSize(const aclTensor *weight, const aclTensor
/// *indices, const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnEmbeddingGetWorkspaceSize(
    weight: *const c_void,
    indices: *const c_void,
    out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnEmbeddingGetWorkspaceSize";
    call(F, |_, _| {
        let tw = tensor(F, "weight", weight)?;
        let ti = tensor(F, "indices", indices)?;
        let to = tensor(F, "out", out)?;
        check_float(F, "weight", &tw)?;
        dtype_in(
            F,
            "indices",
            &ti,
            &[(ACL_INT64, "DT_INT64"), (ACL_INT32, "DT_INT32")],
        )?;
        same_dtype(F, ("weight", &tw), ("out", &to))?;
        if tw.dims.len() != 2 {
            return fail(
                INVALID,
                format!("{F}: weight should be 2-D, got shape {:?}", tw.dims),
            );
        }
        let mut want = ti.dims.clone();
        want.push(tw.dims[1]);
        shape_is(F, "out", &to, &want)?;
        let (vocab, hidden) = (tw.dims[0], tw.dims[1] as usize);
        let (cw, ci, co) = (tw.clone(), ti.clone(), to.clone());
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnEmbedding";
            let ids = read_ints(&ci, &args[1], OP)?;
            cw.fits(&args[0], OP)?;
            let mut rows = Vec::with_capacity(ids.len() * hidden);
            for (i, &id) in ids.iter().enumerate() {
                if id < 0 || id >= vocab {
                    return Err(Error::KernelFault {
                        op: OP,
                        message: format!(
                            "indices[{i}] = {id} is outside the weight's {vocab} rows (the \
                             gather reads outside the table)"
                        ),
                    });
                }
                // The row as a [hidden] view of the weight at `id`.
                let row = Tensor {
                    dims: vec![hidden as i64],
                    strides: vec![cw.strides[1]],
                    offset: cw.offset + id * cw.strides[0],
                    dtype: cw.dtype,
                    data: cw.data,
                };
                rows.extend(row.read(&args[0], OP)?);
            }
            co.write(&args[2], OP, &rows)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[weight, indices, out],
            Plan {
                op: "aclnnEmbedding",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![tw.data, ti.data, to.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnEmbedding);

// ---- aclnnAdd ----

/// The shape `a` and `b` broadcast to (numpy's rules), if they do.
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let n = a.len().max(b.len());
    let at = |s: &[i64], i: usize| {
        let pad = n - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// For each element of `out` (row-major), the element of a broadcast operand of shape `dims`.
fn broadcast_index(out: &[i64], dims: &[i64]) -> Vec<usize> {
    let pad = out.len() - dims.len();
    let mut strides = vec![0usize; out.len()];
    let mut s = 1usize;
    for i in (0..dims.len()).rev() {
        strides[pad + i] = if dims[i] == 1 { 0 } else { s };
        s *= dims[i] as usize;
    }
    let total: usize = out.iter().map(|&v| v as usize).product();
    let mut index = vec![0usize; out.len()];
    let mut result = Vec::with_capacity(total);
    for _ in 0..total {
        result.push(index.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for d in (0..out.len()).rev() {
            index[d] += 1;
            if index[d] < out[d] as usize {
                break;
            }
            index[d] = 0;
        }
    }
    result
}

/// `aclnnStatus aclnnAddGetWorkspaceSize(const aclTensor *self, const aclTensor *other, const
/// aclScalar *alpha, aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnAddGetWorkspaceSize(
    self_: *const c_void,
    other: *const c_void,
    alpha: *const c_void,
    out: *mut c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnAddGetWorkspaceSize";
    call(F, |_, _| {
        let ta = tensor(F, "self", self_)?;
        let tb = tensor(F, "other", other)?;
        let to = tensor(F, "out", out)?;
        if alpha.is_null() {
            return fail(
                NULLPTR,
                format!("{F}: expected a proper Scalar but got null for argument alpha"),
            );
        }
        let alpha = scalars(|m| m.get(&(alpha as usize)).copied()).ok_or_else(|| {
            crate::state::Failure {
                code: INVALID,
                message: format!("{F}: alpha ({alpha:p}) is not a live aclScalar"),
            }
        })?;
        for (n, t) in [("self", &ta), ("other", &tb), ("out", &to)] {
            check_float(F, n, t)?;
        }
        same_dtype(F, ("self", &ta), ("other", &tb))?;
        same_dtype(F, ("self", &ta), ("out", &to))?;
        let Some(shape) = broadcast(&ta.dims, &tb.dims) else {
            return fail(
                INVALID,
                format!(
                    "{F}: the shape of self {:?} and other {:?} cannot broadcast",
                    ta.dims, tb.dims
                ),
            );
        };
        shape_is(F, "out", &to, &shape)?;
        let (ca, cb, co) = (ta.clone(), tb.clone(), to.clone());
        let alpha = alpha as f32;
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnAdd";
            let (a, b) = (ca.read(&args[0], OP)?, cb.read(&args[1], OP)?);
            let (ia, ib) = (
                broadcast_index(&shape, &ca.dims),
                broadcast_index(&shape, &cb.dims),
            );
            let y: Vec<f32> = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| a[i] + alpha * b[j])
                .collect();
            co.write(&args[2], OP, &y)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[self_, other, out.cast_const()],
            Plan {
                op: "aclnnAdd",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![ta.data, tb.data, to.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnAdd);

// ---- aclnnArgMax ----

/// `aclnnStatus aclnnArgMaxGetWorkspaceSize(const aclTensor *self, int64_t dim, bool keepdim,
/// aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnArgMaxGetWorkspaceSize(
    self_: *const c_void,
    dim: i64,
    keepdim: bool,
    out: *mut c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnArgMaxGetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "self", self_)?;
        let to = tensor(F, "out", out)?;
        dtype_in(
            F,
            "self",
            &tx,
            &[(ACL_FLOAT, "DT_FLOAT"), (ACL_FLOAT16, "DT_FLOAT16")],
        )?;
        dtype_in(
            F,
            "out",
            &to,
            &[(ACL_INT32, "DT_INT32"), (ACL_INT64, "DT_INT64")],
        )?;
        let d = axis(F, dim, tx.dims.len())?;
        let mut want = tx.dims.clone();
        if keepdim {
            want[d] = 1;
        } else {
            want.remove(d);
        }
        shape_is(F, "out", &to, &want)?;
        let (outer, len, inner) = split(&tx.dims, d);
        if len == 0 {
            return fail(
                INVALID,
                format!("{F}: self has no elements along dim {dim}"),
            );
        }
        let (cx, co) = (tx.clone(), to.clone());
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnArgMax";
            let x = cx.read(&args[0], OP)?;
            let mut out = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| x[(o * len + j) * inner + i];
                    let best =
                        (1..len).fold(0, |b, j| if ranks_above(at(j), at(b)) { j } else { b });
                    out.push(best as i64);
                }
            }
            write_ints(&co, &args[1], OP, &out)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[self_, out.cast_const()],
            Plan {
                op: "aclnnArgMax",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![tx.data, to.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnArgMax);

// ---- aclnnTopk ----

/// `aclnnStatus aclnnTopkGetWorkspaceSize(const aclTensor *self, int64_t k, int64_t dim, bool
/// largest, bool sorted, aclTensor *valuesOut, aclTensor *indicesOut, uint64_t *workspaceSize,
/// aclOpExecutor **executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnTopkGetWorkspaceSize(
    self_: *const c_void,
    k: i64,
    dim: i64,
    largest: bool,
    sorted: bool,
    values_out: *mut c_void,
    indices_out: *mut c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnTopkGetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "self", self_)?;
        let tv = tensor(F, "valuesOut", values_out)?;
        let ti = tensor(F, "indicesOut", indices_out)?;
        // Of the header's list (INT8, UINT8, INT16, INT32, INT64, FLOAT16, FLOAT32, DOUBLE),
        // the float ones the fake computes on; no BF16.
        dtype_in(
            F,
            "self",
            &tx,
            &[(ACL_FLOAT16, "DT_FLOAT16"), (ACL_FLOAT, "DT_FLOAT")],
        )?;
        same_dtype(F, ("self", &tx), ("valuesOut", &tv))?;
        dtype_in(F, "indicesOut", &ti, &[(ACL_INT64, "DT_INT64")])?;
        let d = axis(F, dim, tx.dims.len())?;
        if k < 0 || k > tx.dims[d] {
            return fail(
                INVALID,
                format!(
                    "{F}: k {k} should be in [0, {}] (the size of dim {dim})",
                    tx.dims[d]
                ),
            );
        }
        let mut want = tx.dims.clone();
        want[d] = k;
        shape_is(F, "valuesOut", &tv, &want)?;
        shape_is(F, "indicesOut", &ti, &want)?;
        let (outer, len, inner) = split(&tx.dims, d);
        let k = k as usize;
        let (cx, cv, ci) = (tx.clone(), tv.clone(), ti.clone());
        let work = move |args: &[KernelArg]| {
            const OP: &str = "aclnnTopk";
            let x = cx.read(&args[0], OP)?;
            let (mut vals, mut idx) =
                (vec![0f32; outer * k * inner], vec![0i64; outer * k * inner]);
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| x[(o * len + j) * inner + i];
                    let mut order: Vec<usize> = (0..len).collect();
                    order.sort_by(|&a, &b| {
                        let (va, vb) = if largest {
                            (at(a), at(b))
                        } else {
                            (at(b), at(a))
                        };
                        if ranks_above(va, vb) {
                            std::cmp::Ordering::Less
                        } else if ranks_above(vb, va) {
                            std::cmp::Ordering::Greater
                        } else {
                            a.cmp(&b)
                        }
                    });
                    let mut chosen = order[..k].to_vec();
                    if !sorted {
                        // Unsorted: the chosen values in their input order.
                        chosen.sort_unstable();
                    }
                    for (slot, &j) in chosen.iter().enumerate() {
                        vals[(o * k + slot) * inner + i] = at(j);
                        idx[(o * k + slot) * inner + i] = j as i64;
                    }
                }
            }
            cv.write(&args[1], OP, &vals)?;
            write_ints(&ci, &args[2], OP, &idx)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[self_, values_out.cast_const(), indices_out.cast_const()],
            Plan {
                op: "aclnnTopk",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![tx.data, tv.data, ti.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnTopk);
