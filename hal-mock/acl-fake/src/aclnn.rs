//! The ACLNN functions the ACL backend uses (`libnnopbase.so`'s tensor descriptors and
//! `libopapi.so`'s operators), with the prototypes of the CANN 8.1 headers, over the CPU: the
//! backend loads this same library as both (`ASCEND_HAL_NNOPBASE_LIB`, `ASCEND_HAL_OPAPI_LIB`).
//!
//! The checks are the documented ones, with the real `aclnnStatus` codes
//! (`aclnn/opdev/op_errno.h`): a NULL tensor or out-pointer is `ACLNN_ERR_PARAM_NULLPTR`
//! (161001); a dtype outside an operator's support list, mismatched dtypes or shapes, a
//! workspace smaller than the size the planning call returned, an executor run a second time
//! (a non-repeatable executor is freed by its launch), an executor of another operator, or a
//! descriptor destroyed before the launch are `ACLNN_ERR_PARAM_INVALID` (161002), with the reason
//! in `aclGetRecentErrMsg()`. `aclDestroyAclOpExecutor(NULL)` is `ACLNN_ERR_INNER_NULLPTR`
//! (561103), as its documentation says. A launch consumes its (non-repeatable) executor whether
//! it runs or is refused, and a retry with it is told which launch consumed it and why.
//! `aclnnMatmul`'s `cubeMathType` follows Atlas A2: `USE_FP16` (2) refuses BF16 operands and
//! rounds f32 operands to f16, `USE_HF32` (3) takes f32 operands only, and HF32 (3, or 1 with
//! f32) rounds their mantissas to 10 bits. `aclnnSwiGlu` takes a contiguous `x` only. Every
//! operator asks for a workspace (the real sizes depend on
//! tiling; asking always keeps callers' workspace handling exercised), and the launch runs on
//! the fake stream in order, through the same path as the host kernels library: an argument
//! whose view reaches past its device memory fails the stream (507015) at the next
//! synchronisation. Limits of the fake: `aclnnMatmul` takes 2-D operands only; views need
//! non-negative strides.

#![allow(non_snake_case)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ascend_hal::{DevicePtr, Error};
use hal_mock::KernelArg;
use half::{bf16, f16};

use crate::exports::{call, inject};
use crate::state::{fail, from_hal, set_last_error, Outcome};

pub(crate) const NULLPTR: i32 = 161_001;
pub(crate) const INVALID: i32 = 161_002;
/// `ACLNN_ERR_INNER_NULLPTR`: what `aclDestroyAclOpExecutor(NULL)` returns.
const INNER_NULLPTR: i32 = 561_103;

/// `aclDataType` values the operators take.
pub(crate) const ACL_FLOAT: i32 = 0;
pub(crate) const ACL_FLOAT16: i32 = 1;
pub(crate) const ACL_BF16: i32 = 27;
pub(crate) const ACL_INT8: i32 = 2;
pub(crate) const ACL_INT32: i32 = 3;
/// Two values per byte, the element of even index in the low nibble.
pub(crate) const ACL_INT4: i32 = 29;

pub(crate) fn dtype_name(d: i32) -> String {
    let name = match d {
        ACL_FLOAT => "DT_FLOAT",
        ACL_FLOAT16 => "DT_FLOAT16",
        2 => "DT_INT8",
        3 => "DT_INT32",
        4 => "DT_UINT8",
        6 => "DT_INT16",
        7 => "DT_UINT16",
        8 => "DT_UINT32",
        9 => "DT_INT64",
        10 => "DT_UINT64",
        11 => "DT_DOUBLE",
        12 => "DT_BOOL",
        ACL_BF16 => "DT_BF16",
        ACL_INT4 => "DT_INT4",
        other => return format!("aclDataType {other}"),
    };
    name.into()
}

/// Bytes per element of the `aclDataType`s the fake describes (`acl/acl_base.h`); INT4 counts
/// as 1 here and as half a byte where a view's extent is measured.
fn elem_size(d: i32) -> Option<usize> {
    match d {
        ACL_INT4 => Some(1),
        // INT8, UINT8, BOOL
        2 | 4 | 12 => Some(1),
        // FLOAT16, INT16, UINT16, BF16
        1 | 6 | 7 | 27 => Some(2),
        // FLOAT, INT32, UINT32
        0 | 3 | 8 => Some(4),
        // INT64, UINT64, DOUBLE, COMPLEX64
        9 | 10 | 11 | 16 => Some(8),
        _ => None,
    }
}

/// The most elements of a view the fake describes (it copies views to the host to compute).
const MAX_VIEW_ELEMENTS: u64 = 1 << 32;

/// What `aclCreateTensor` recorded.
#[derive(Debug, Clone)]
pub(crate) struct Tensor {
    pub(crate) dims: Vec<i64>,
    pub(crate) strides: Vec<i64>,
    pub(crate) offset: i64,
    pub(crate) dtype: i32,
    pub(crate) data: u64,
}

impl Tensor {
    pub(crate) fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Whether the view is row-major with no gaps (dims of one may have any stride).
    pub(crate) fn is_contiguous(&self) -> bool {
        let mut want = 1i64;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            if d != 1 && s != want {
                return false;
            }
            want = want.saturating_mul(d);
        }
        true
    }

    /// Bytes from `data` that the view reaches.
    fn reach(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        let last: i64 = self.offset
            + self
                .dims
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<i64>();
        if self.dtype == ACL_INT4 {
            return (last as usize + 2) / 2;
        }
        (last as usize + 1) * elem_size(self.dtype).unwrap_or(1)
    }

    /// The integers of an INT8, INT4 or INT32 view, in row-major order of the view.
    pub(crate) fn read_ints(&self, arg: &KernelArg, name: &'static str) -> Result<Vec<i32>, Error> {
        self.fits(arg, name)?;
        let mut out = Vec::with_capacity(self.numel());
        let p = arg.ptr;
        // SAFETY: `fits` checked that every element of the view lies in the argument's memory.
        self.for_each_offset(|o| unsafe {
            out.push(match self.dtype {
                ACL_INT4 => {
                    let byte = p.add(o / 2).read();
                    let nib = if o % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    ((nib ^ 8) as i32) - 8
                }
                ACL_INT32 => p.cast::<i32>().add(o).read_unaligned(),
                _ => p.cast::<i8>().add(o).read() as i32,
            })
        });
        Ok(out)
    }

    /// Calls `f` with each element's offset, in row-major order of the view.
    pub(crate) fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        if self.numel() == 0 {
            return;
        }
        let n = self.dims.len();
        let mut index = vec![0i64; n];
        let mut at = self.offset;
        loop {
            f(at as usize);
            // Odometer: bump the last dim, carrying into earlier ones.
            let mut d = n;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                index[d] += 1;
                at += self.strides[d];
                if index[d] < self.dims[d] {
                    break;
                }
                at -= self.strides[d] * self.dims[d];
                index[d] = 0;
            }
        }
    }

    pub(crate) fn read(&self, arg: &KernelArg, name: &'static str) -> Result<Vec<f32>, Error> {
        self.fits(arg, name)?;
        let mut out = Vec::with_capacity(self.numel());
        let p = arg.ptr;
        // SAFETY: `fits` checked that every element of the view lies in the argument's memory.
        self.for_each_offset(|o| unsafe {
            out.push(match self.dtype {
                ACL_FLOAT => p.cast::<f32>().add(o).read_unaligned(),
                ACL_FLOAT16 => p.cast::<f16>().add(o).read_unaligned().to_f32(),
                _ => p.cast::<bf16>().add(o).read_unaligned().to_f32(),
            })
        });
        Ok(out)
    }

    pub(crate) fn write(
        &self,
        arg: &KernelArg,
        name: &'static str,
        values: &[f32],
    ) -> Result<(), Error> {
        self.fits(arg, name)?;
        let (p, mut next) = (arg.ptr, values.iter());
        // SAFETY: as in `read`; nothing else accesses the memory while the task runs.
        self.for_each_offset(|o| unsafe {
            let v = next.next().copied().unwrap_or(0.0);
            match self.dtype {
                // Integral values (a quantizer's output), saturated as a cast does.
                ACL_INT8 => p.cast::<i8>().add(o).write(v as i8),
                ACL_FLOAT => p.cast::<f32>().add(o).write_unaligned(v),
                ACL_FLOAT16 => p.cast::<f16>().add(o).write_unaligned(f16::from_f32(v)),
                _ => p.cast::<bf16>().add(o).write_unaligned(bf16::from_f32(v)),
            }
        });
        Ok(())
    }

    pub(crate) fn fits(&self, arg: &KernelArg, name: &'static str) -> Result<(), Error> {
        if self.reach() <= arg.len {
            return Ok(());
        }
        Err(Error::KernelFault {
            op: name,
            message: format!(
                "a tensor view of dims {:?} strides {:?} offset {} reaches {} bytes, past the {} \
                 bytes of device memory at its address (memory access fault)",
                self.dims,
                self.strides,
                self.offset,
                self.reach(),
                arg.len
            ),
        })
    }
}

/// An operator's work on the stream worker, over its arguments' memory.
pub(crate) type Work = Box<dyn FnOnce(&[KernelArg]) -> Result<(), Error> + Send>;

/// A planned operator, waiting for its launch.
pub(crate) struct Plan {
    pub(crate) op: &'static str,
    pub(crate) workspace: u64,
    /// Descriptor handles that must still be alive at the launch.
    pub(crate) tensors: Vec<usize>,
    /// Device addresses the work reads and writes, in the order `work` takes them.
    pub(crate) args: Vec<u64>,
    pub(crate) work: Work,
}

#[derive(Default)]
struct Registry {
    tensors: HashMap<usize, Tensor>,
    /// `aclCreateIntArray`'s copies.
    int_arrays: HashMap<usize, Vec<i64>>,
    /// `aclCreateTensorList`'s lists: the handles of the tensors each owns.
    tensor_lists: HashMap<usize, Vec<usize>>,
    executors: HashMap<usize, Plan>,
    /// Executors consumed by a launch, with what became of it (the most recent ones only).
    consumed: HashMap<usize, String>,
    next: usize,
}

/// How many consumed executors the registry remembers, for retry messages.
const CONSUMED_KEPT: usize = 4096;

impl Registry {
    fn consume(&mut self, executor: usize, what: String) {
        if self.consumed.len() >= CONSUMED_KEPT {
            self.consumed.clear();
        }
        self.consumed.insert(executor, what);
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Handles are addresses in a range no allocation uses, never reused.
const TENSOR_BASE: usize = 0x5f00_0000_0000;
const EXECUTOR_BASE: usize = 0x5f80_0000_0000;

/// `aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType
/// dataType, const int64_t *stride, int64_t offset, aclFormat format, const int64_t
/// *storageDims, uint64_t storageDimsNum, void *tensorData)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclCreateTensor(
    view_dims: *const i64,
    view_dims_num: u64,
    data_type: i32,
    stride: *const i64,
    offset: i64,
    format: i32,
    storage_dims: *const i64,
    storage_dims_num: u64,
    tensor_data: *mut c_void,
) -> *mut c_void {
    // A panic must not cross the C boundary; NULL is how this call fails.
    std::panic::catch_unwind(|| {
        create_tensor(
            view_dims,
            view_dims_num,
            data_type,
            stride,
            offset,
            format,
            storage_dims,
            storage_dims_num,
            tensor_data,
        )
    })
    .unwrap_or_else(|_| {
        set_last_error("aclCreateTensor: the fake panicked");
        std::ptr::null_mut()
    })
}

#[allow(clippy::too_many_arguments)]
fn create_tensor(
    view_dims: *const i64,
    view_dims_num: u64,
    data_type: i32,
    stride: *const i64,
    offset: i64,
    _format: i32,
    storage_dims: *const i64,
    storage_dims_num: u64,
    tensor_data: *mut c_void,
) -> *mut c_void {
    let refuse = |why: String| {
        set_last_error(&format!("aclCreateTensor: {why}"));
        std::ptr::null_mut()
    };
    let n = view_dims_num as usize;
    if n > 8 || storage_dims_num > 8 {
        return refuse(format!("{n} dims: at most 8"));
    }
    if n > 0 && (view_dims.is_null() || stride.is_null()) {
        return refuse("viewDims or stride is NULL".into());
    }
    if storage_dims_num > 0 && storage_dims.is_null() {
        return refuse("storageDims is NULL".into());
    }
    if elem_size(data_type).is_none() {
        return refuse(format!(
            "dataType {data_type} is not an aclDataType the fake describes"
        ));
    }
    // SAFETY: non-null arrays of `n` elements, by the C API's contract.
    let (dims, strides) = unsafe {
        if n == 0 {
            (Vec::new(), Vec::new())
        } else {
            (
                std::slice::from_raw_parts(view_dims, n).to_vec(),
                std::slice::from_raw_parts(stride, n).to_vec(),
            )
        }
    };
    if dims.iter().chain(&strides).any(|&v| v < 0) || offset < 0 {
        return refuse(format!(
            "negative dims, strides or offset: {dims:?} {strides:?} {offset}"
        ));
    }
    // The fake computes on host copies of views: refuse what cannot be counted or held (a real
    // NPU would fault on such a view when the operator ran).
    let count = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let last = dims
        .iter()
        .zip(&strides)
        .try_fold(offset as u64, |at, (&d, &st)| {
            (d as u64)
                .saturating_sub(1)
                .checked_mul(st as u64)
                .and_then(|x| at.checked_add(x))
        });
    match (count, last) {
        (Some(n), Some(l)) if n <= MAX_VIEW_ELEMENTS && l < MAX_VIEW_ELEMENTS * 8 => {}
        _ => {
            return refuse(format!(
                "a view of dims {dims:?} strides {strides:?} offset {offset} is past what the \
                 fake computes on ({MAX_VIEW_ELEMENTS} elements)"
            ))
        }
    }
    let t = Tensor {
        dims,
        strides,
        offset,
        dtype: data_type,
        data: tensor_data as u64,
    };
    registry(|r| {
        r.next += 1;
        let h = TENSOR_BASE + r.next * 16;
        r.tensors.insert(h, t);
        h as *mut c_void
    })
}

/// `aclnnStatus aclDestroyTensor(const aclTensor *tensor)`.
#[no_mangle]
pub extern "C" fn aclDestroyTensor(tensor: *const c_void) -> i32 {
    call("aclDestroyTensor", |_, _| {
        if tensor.is_null() {
            return Ok(());
        }
        match registry(|r| r.tensors.remove(&(tensor as usize))) {
            Some(_) => Ok(()),
            None => fail(
                INVALID,
                format!("aclDestroyTensor: {tensor:p} is not a live aclTensor (destroyed twice?)"),
            ),
        }
    })
}

/// `aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size)`: a copy of the values;
/// NULL (with the reason in `aclGetRecentErrMsg`) for a NULL `value` with a non-zero size or
/// more than 2^20 values.
#[no_mangle]
pub extern "C" fn aclCreateIntArray(value: *const i64, size: u64) -> *mut c_void {
    std::panic::catch_unwind(|| {
        if size > 1 << 20 || (size > 0 && value.is_null()) {
            set_last_error(&format!(
                "aclCreateIntArray: {size} values at {value:p} (NULL, or past the fake's 2^20)"
            ));
            return std::ptr::null_mut();
        }
        let values = if size == 0 {
            Vec::new()
        } else {
            // SAFETY: a non-null array of `size` values, by the C API's contract.
            unsafe { std::slice::from_raw_parts(value, size as usize) }.to_vec()
        };
        registry(|r| {
            r.next += 1;
            let h = TENSOR_BASE + r.next * 16;
            r.int_arrays.insert(h, values);
            h as *mut c_void
        })
    })
    .unwrap_or_else(|_| {
        set_last_error("aclCreateIntArray: the fake panicked");
        std::ptr::null_mut()
    })
}

/// `aclnnStatus aclDestroyIntArray(const aclIntArray *array)`.
#[no_mangle]
pub extern "C" fn aclDestroyIntArray(array: *const c_void) -> i32 {
    call("aclDestroyIntArray", |_, _| {
        if array.is_null() {
            return Ok(());
        }
        match registry(|r| r.int_arrays.remove(&(array as usize))) {
            Some(_) => Ok(()),
            None => fail(
                INVALID,
                format!("aclDestroyIntArray: {array:p} is not a live aclIntArray"),
            ),
        }
    })
}

/// `aclTensorList *aclCreateTensorList(const aclTensor *const *value, uint64_t size)`: the list
/// owns the tensors from here (`aclDestroyTensorList` destroys them). NULL for a NULL `value`
/// with a non-zero size, a tensor that is not live, or one named twice.
#[no_mangle]
pub extern "C" fn aclCreateTensorList(value: *const *const c_void, size: u64) -> *mut c_void {
    std::panic::catch_unwind(|| {
        if size > 4096 || (size > 0 && value.is_null()) {
            set_last_error(&format!(
                "aclCreateTensorList: {size} tensors at {value:p} (NULL, or past the fake's 4096)"
            ));
            return std::ptr::null_mut();
        }
        let handles: Vec<usize> = if size == 0 {
            Vec::new()
        } else {
            // SAFETY: a non-null array of `size` handles, by the C API's contract.
            unsafe { std::slice::from_raw_parts(value, size as usize) }
                .iter()
                .map(|&h| h as usize)
                .collect()
        };
        registry(|r| {
            let mut seen = std::collections::HashSet::new();
            if let Some(bad) = handles
                .iter()
                .find(|h| !r.tensors.contains_key(h) || !seen.insert(**h))
            {
                set_last_error(&format!(
                    "aclCreateTensorList: {bad:#x} is not a live aclTensor, or is listed twice"
                ));
                return std::ptr::null_mut();
            }
            r.next += 1;
            let h = TENSOR_BASE + r.next * 16;
            r.tensor_lists.insert(h, handles);
            h as *mut c_void
        })
    })
    .unwrap_or_else(|_| {
        set_last_error("aclCreateTensorList: the fake panicked");
        std::ptr::null_mut()
    })
}

/// `aclnnStatus aclDestroyTensorList(const aclTensorList *array)`: destroys the list and its
/// tensors.
#[no_mangle]
pub extern "C" fn aclDestroyTensorList(array: *const c_void) -> i32 {
    call("aclDestroyTensorList", |_, _| {
        if array.is_null() {
            return Ok(());
        }
        match registry(|r| {
            let list = r.tensor_lists.remove(&(array as usize))?;
            for h in &list {
                r.tensors.remove(h);
            }
            Some(())
        }) {
            Some(()) => Ok(()),
            None => fail(
                INVALID,
                format!("aclDestroyTensorList: {array:p} is not a live aclTensorList"),
            ),
        }
    })
}

/// The values behind an `aclIntArray` argument named `what` of `function` (`None` for NULL).
pub(crate) fn int_array(function: &str, what: &str, h: *const c_void) -> Outcome<Option<Vec<i64>>> {
    if h.is_null() {
        return Ok(None);
    }
    registry(|r| r.int_arrays.get(&(h as usize)).cloned())
        .map(Some)
        .ok_or_else(|| crate::state::Failure {
            code: INVALID,
            message: format!("{function}: {what} ({h:p}) is not a live aclIntArray"),
        })
}

/// The tensors (and their handles) of an `aclTensorList` argument named `what`.
pub(crate) fn tensor_list(
    function: &str,
    what: &str,
    h: *const c_void,
) -> Outcome<Vec<(usize, Tensor)>> {
    if h.is_null() {
        return fail(
            NULLPTR,
            format!("{function}: expected a proper TensorList but got null for argument {what}"),
        );
    }
    registry(|r| {
        let list = r.tensor_lists.get(&(h as usize))?;
        list.iter()
            .map(|t| r.tensors.get(t).map(|d| (*t, d.clone())))
            .collect::<Option<Vec<_>>>()
    })
    .ok_or_else(|| crate::state::Failure {
        code: INVALID,
        message: format!("{function}: {what} ({h:p}) is not a live aclTensorList"),
    })
}

/// `aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor)`.
#[no_mangle]
pub extern "C" fn aclDestroyAclOpExecutor(executor: *mut c_void) -> i32 {
    call("aclDestroyAclOpExecutor", |_, _| {
        if executor.is_null() {
            return fail(INNER_NULLPTR, "aclDestroyAclOpExecutor: executor is NULL");
        }
        match registry(|r| r.executors.remove(&(executor as usize))) {
            Some(_) => Ok(()),
            None => fail(
                INVALID,
                format!("aclDestroyAclOpExecutor: {executor:p} is not a live executor"),
            ),
        }
    })
}

/// The descriptor behind a handle argument named `what` of `function`.
pub(crate) fn tensor(function: &str, what: &str, h: *const c_void) -> Outcome<Tensor> {
    if h.is_null() {
        return fail(
            NULLPTR,
            format!("{function}: expected a proper Tensor but got null for argument {what}"),
        );
    }
    registry(|r| r.tensors.get(&(h as usize)).cloned()).ok_or_else(|| crate::state::Failure {
        code: INVALID,
        message: format!("{function}: {what} ({h:p}) is not a live aclTensor"),
    })
}

/// The descriptor behind an optional handle argument: `None` for NULL, else as [`tensor`].
pub(crate) fn optional_tensor(
    function: &str,
    what: &str,
    h: *const c_void,
) -> Outcome<Option<Tensor>> {
    if h.is_null() {
        Ok(None)
    } else {
        tensor(function, what, h).map(Some)
    }
}

pub(crate) fn check_float(function: &str, what: &str, t: &Tensor) -> Outcome {
    if matches!(t.dtype, ACL_FLOAT | ACL_FLOAT16 | ACL_BF16) {
        return Ok(());
    }
    fail(
        INVALID,
        format!(
            "{function}: {what} dtype {} should be in dtype support list [DT_FLOAT, DT_FLOAT16, \
             DT_BF16]",
            dtype_name(t.dtype)
        ),
    )
}

pub(crate) fn same_dtype(
    function: &str,
    (a, ta): (&str, &Tensor),
    (b, tb): (&str, &Tensor),
) -> Outcome {
    if ta.dtype == tb.dtype {
        return Ok(());
    }
    fail(
        INVALID,
        format!(
            "{function}: {b} dtype {} should be the same as {a} dtype {}",
            dtype_name(tb.dtype),
            dtype_name(ta.dtype)
        ),
    )
}

pub(crate) fn shape_is(function: &str, what: &str, t: &Tensor, want: &[i64]) -> Outcome {
    if t.dims == want {
        return Ok(());
    }
    fail(
        INVALID,
        format!("{function}: {what} shape {:?} should be {want:?}", t.dims),
    )
}

/// Records a plan and hands its executor and workspace size back.
pub(crate) fn plan(
    function: &str,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
    handles: &[*const c_void],
    plan: Plan,
) -> Outcome {
    if workspace_size.is_null() || executor.is_null() {
        return fail(
            NULLPTR,
            format!("{function}: workspaceSize or executor is NULL"),
        );
    }
    let size = plan.workspace;
    let mut plan = plan;
    plan.tensors = handles.iter().map(|&h| h as usize).collect();
    let h = registry(|r| {
        r.next += 1;
        let h = EXECUTOR_BASE + r.next * 16;
        r.executors.insert(h, plan);
        h
    });
    // SAFETY: non-null out-pointers (checked above) from the caller.
    unsafe {
        *workspace_size = size;
        *executor = h as *mut c_void;
    }
    Ok(())
}

/// The launch call shared by every operator: its checks, then the work queued on the stream.
/// The executor is consumed either way.
pub(crate) fn launch(
    op: &'static str,
    workspace: *mut c_void,
    workspace_size: u64,
    executor: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    call(op, |g, fault| {
        if executor.is_null() {
            return fail(NULLPTR, format!("{op}: executor is NULL"));
        }
        let key = executor as usize;
        let plan = registry(|r| match r.executors.remove(&key) {
            Some(plan) => Ok(plan),
            None => Err(match r.consumed.get(&key) {
                Some(what) => format!(
                    "{op}: executor {executor:p} was consumed by an earlier launch ({what}); a \
                     non-repeatable executor is released by its launch whether it runs or is \
                     refused, so plan again with {op}GetWorkspaceSize"
                ),
                None => format!(
                    "{op}: executor {executor:p} is not a live executor (never planned, or \
                     destroyed with aclDestroyAclOpExecutor)"
                ),
            }),
        })
        .map_err(|message| crate::state::Failure {
            code: INVALID,
            message,
        })?;
        let refused = |message: String| {
            registry(|r| r.consume(key, format!("refused: {message}")));
            message
        };
        if plan.op != op {
            return fail(
                INVALID,
                refused(format!(
                    "{op}: the executor was planned by {}GetWorkspaceSize",
                    plan.op
                )),
            );
        }
        if workspace_size < plan.workspace {
            return fail(
                INVALID,
                refused(format!(
                    "{op}: workspaceSize {workspace_size} is smaller than the {} bytes \
                     {op}GetWorkspaceSize returned",
                    plan.workspace
                )),
            );
        }
        if plan.workspace > 0 && workspace.is_null() {
            return fail(
                NULLPTR,
                refused(format!(
                    "{op}: workspace is NULL but {} bytes are needed",
                    plan.workspace
                )),
            );
        }
        let s = g.stream(stream).map_err(|f| crate::state::Failure {
            message: refused(f.message),
            ..f
        })?;
        // The operator uses the planned bytes of the workspace; a larger size is allowed.
        if plan.workspace > 0
            && g.device_of(workspace as usize, plan.workspace as usize) != Some(s.device)
        {
            return fail(
                INVALID,
                refused(format!(
                    "{op}: workspace {workspace:p} + {} bytes is not device memory of the \
                     stream's device {}",
                    plan.workspace, s.device
                )),
            );
        }
        drop(g);
        if let Some(dead) = registry(|r| {
            plan.tensors
                .iter()
                .find(|h| !r.tensors.contains_key(h))
                .copied()
        }) {
            return fail(
                INVALID,
                refused(format!(
                    "{op}: aclTensor {dead:#x} was destroyed before the launch (destroy \
                     descriptors after aclnnXxx returns)"
                )),
            );
        }
        registry(|r| r.consume(key, "it ran".into()));
        if inject(&s, fault) {
            return Ok(());
        }
        let args: Vec<DevicePtr> = plan.args.iter().map(|&a| DevicePtr(a)).collect();
        s.stream
            .enqueue_kernel(op, &args, plan.work)
            .map_err(|e| from_hal(op, e))
    })
}

/// `aclnnStatus aclnnXxx(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
/// aclrtStream stream)`: the launch call, the same for every operator.
macro_rules! launch_entry {
    ($name:ident) => {
        #[doc = concat!("`aclnnStatus ", stringify!($name), "(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor, aclrtStream stream)`.")]
        #[no_mangle]
        pub extern "C" fn $name(
            workspace: *mut c_void,
            workspace_size: u64,
            executor: *mut c_void,
            stream: *mut c_void,
        ) -> i32 {
            launch(stringify!($name), workspace, workspace_size, executor, stream)
        }
    };
}
pub(crate) use launch_entry;

/// Bytes every elementwise operator asks for.
pub(crate) const SMALL_WORKSPACE: u64 = 1024;

// ---- aclnnMatmul ----

/// `aclnnStatus aclnnMatmulGetWorkspaceSize(const aclTensor *self, const aclTensor *mat2,
/// aclTensor *out, int8_t cubeMathType, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnMatmulGetWorkspaceSize(
    self_: *const c_void,
    mat2: *const c_void,
    out: *mut c_void,
    cube_math_type: i8,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnMatmulGetWorkspaceSize";
    call(F, |_, _| {
        let a = tensor(F, "self", self_)?;
        let b = tensor(F, "mat2", mat2)?;
        let o = tensor(F, "out", out)?;
        for (n, t) in [("self", &a), ("mat2", &b), ("out", &o)] {
            check_float(F, n, t)?;
        }
        same_dtype(F, ("self", &a), ("mat2", &b))?;
        same_dtype(F, ("self", &a), ("out", &o))?;
        if !(0..=3).contains(&cube_math_type) {
            return fail(
                INVALID,
                format!("{F}: cubeMathType {cube_math_type} is not 0..3"),
            );
        }
        // Atlas A2: USE_FP16 refuses BF16; USE_HF32 takes FLOAT only.
        if cube_math_type == 2 && a.dtype == ACL_BF16 {
            return fail(
                INVALID,
                format!("{F}: cubeMathType USE_FP16 (2) is not supported for DT_BF16 inputs"),
            );
        }
        if cube_math_type == 3 && a.dtype != ACL_FLOAT {
            return fail(
                INVALID,
                format!(
                    "{F}: cubeMathType USE_HF32 (3) is not supported for {} inputs (DT_FLOAT \
                     only)",
                    dtype_name(a.dtype)
                ),
            );
        }
        // How the cube unit sees f32 operands: as f16 (USE_FP16), as HF32 (USE_HF32, or
        // ALLOW_FP32_DOWN_PRECISION on A2), or as they are.
        let operand: fn(f32) -> f32 = match (a.dtype, cube_math_type) {
            (ACL_FLOAT, 2) => |v| f16::from_f32(v).to_f32(),
            (ACL_FLOAT, 1 | 3) => round_hf32,
            _ => |v| v,
        };
        if a.dims.len() != 2 || b.dims.len() != 2 {
            return fail(
                INVALID,
                format!(
                    "{F}: the fake takes 2-D operands, got self {:?} and mat2 {:?}",
                    a.dims, b.dims
                ),
            );
        }
        let (m, k, n) = (a.dims[0], a.dims[1], b.dims[1]);
        if b.dims[0] != k {
            return fail(
                INVALID,
                format!(
                    "{F}: self shape {:?} and mat2 shape {:?} cannot be multiplied",
                    a.dims, b.dims
                ),
            );
        }
        shape_is(F, "out", &o, &[m, n])?;
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let (ta, tb, to) = (a.clone(), b.clone(), o.clone());
        let work = move |args: &[KernelArg]| {
            let x: Vec<f32> = ta
                .read(&args[0], "aclnnMatmul")?
                .into_iter()
                .map(operand)
                .collect();
            let w: Vec<f32> = tb
                .read(&args[1], "aclnnMatmul")?
                .into_iter()
                .map(operand)
                .collect();
            // `w` is row-major [k, n]; accumulate in f32 as the cube unit does.
            let mut y = vec![0f32; m * n];
            for i in 0..m {
                let row = &mut y[i * n..(i + 1) * n];
                for t in 0..k {
                    let xv = x[i * k + t];
                    for (acc, &wv) in row.iter_mut().zip(&w[t * n..(t + 1) * n]) {
                        *acc += xv * wv;
                    }
                }
            }
            to.write(&args[2], "aclnnMatmul", &y)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[self_, mat2, out.cast_const()],
            Plan {
                op: "aclnnMatmul",
                workspace: (m as u64)
                    .saturating_mul(n as u64)
                    .saturating_mul(4)
                    .max(512),
                tensors: Vec::new(),
                args: vec![a.data, b.data, o.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnMatmul);

/// `v` rounded to HF32 (an f32 with a 10-bit mantissa, round to nearest even), what the cube
/// unit computes f32 operands in when allowed to.
fn round_hf32(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    let bits = v.to_bits();
    let drop = 13; // 23 - 10 mantissa bits
    let half = 1u32 << (drop - 1);
    let lsb = (bits >> drop) & 1;
    let rounded = bits.wrapping_add(half - 1 + lsb) & !((1u32 << drop) - 1);
    f32::from_bits(rounded)
}

// ---- aclnnSwiGlu ----

/// `aclnnStatus aclnnSwiGluGetWorkspaceSize(const aclTensor *x, int64_t dim, const aclTensor
/// *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnSwiGluGetWorkspaceSize(
    x: *const c_void,
    dim: i64,
    out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnSwiGluGetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "x", x)?;
        let to = tensor(F, "out", out)?;
        check_float(F, "x", &tx)?;
        same_dtype(F, ("x", &tx), ("out", &to))?;
        if !tx.is_contiguous() {
            return fail(
                INVALID,
                format!(
                    "{F}: x must be contiguous, got dims {:?} strides {:?}",
                    tx.dims, tx.strides
                ),
            );
        }
        let nd = tx.dims.len() as i64;
        if nd == 0 || dim < -nd || dim >= nd {
            return fail(
                INVALID,
                format!("{F}: dim {dim} is out of range for x of {nd} dims"),
            );
        }
        let d = dim.rem_euclid(nd) as usize;
        if tx.dims[d] % 2 != 0 {
            return fail(
                INVALID,
                format!(
                    "{F}: x dim {dim} has {} elements; it must be even to split in two",
                    tx.dims[d]
                ),
            );
        }
        let mut want = tx.dims.clone();
        want[d] /= 2;
        shape_is(F, "out", &to, &want)?;
        let outer: usize = tx.dims[..d].iter().map(|&v| v as usize).product();
        let inner: usize = tx.dims[d + 1..].iter().map(|&v| v as usize).product();
        let half = want[d] as usize;
        let (cx, co) = (tx.clone(), to.clone());
        let work = move |args: &[KernelArg]| {
            let v = cx.read(&args[0], "aclnnSwiGlu")?;
            let mut y = vec![0f32; outer * half * inner];
            for o in 0..outer {
                for h in 0..half {
                    for i in 0..inner {
                        let a = v[(o * 2 * half + h) * inner + i];
                        let b = v[(o * 2 * half + half + h) * inner + i];
                        y[(o * half + h) * inner + i] = a / (1.0 + (-a).exp()) * b;
                    }
                }
            }
            co.write(&args[1], "aclnnSwiGlu", &y)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[x, out],
            Plan {
                op: "aclnnSwiGlu",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args: vec![tx.data, to.data],
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnSwiGlu);

// ---- aclnnRmsNorm, aclnnAddRmsNorm ----

/// Checks the norm's operands: `gamma` is `x`'s trailing dims, `y` (and `x_out`) are shaped
/// and typed like `x`, `rstd` is f32 of `x`'s leading dims then ones. Returns (rows, row).
fn norm_shapes(
    f: &str,
    x: &Tensor,
    gamma: &Tensor,
    y: &Tensor,
    rstd: &Tensor,
) -> Outcome<(usize, usize)> {
    check_float(f, "x", x)?;
    same_dtype(f, ("x", x), ("gamma", gamma))?;
    same_dtype(f, ("x", x), ("yOut", y))?;
    let g = gamma.dims.len();
    if g == 0 || g > x.dims.len() || x.dims[x.dims.len() - g..] != gamma.dims[..] {
        return fail(
            INVALID,
            format!(
                "{f}: gamma shape {:?} should be the last dims of x shape {:?}",
                gamma.dims, x.dims
            ),
        );
    }
    shape_is(f, "yOut", y, &x.dims)?;
    if rstd.dtype != ACL_FLOAT {
        return fail(
            INVALID,
            format!(
                "{f}: rstdOut dtype {} should be DT_FLOAT",
                dtype_name(rstd.dtype)
            ),
        );
    }
    let lead = x.dims.len() - g;
    let mut want = x.dims[..lead].to_vec();
    want.extend(std::iter::repeat_n(1, g));
    shape_is(f, "rstdOut", rstd, &want)?;
    let rows = x.dims[..lead].iter().map(|&v| v as usize).product();
    Ok((rows, gamma.numel()))
}

/// Normalises each row of `v` (in place) by `gamma`, returning the reciprocal roots.
fn normalise(v: &mut [f32], gamma: &[f32], row: usize, eps: f64) -> Vec<f32> {
    v.chunks_mut(row.max(1))
        .map(|r| {
            let ms = r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / row as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for (a, &g) in r.iter_mut().zip(gamma) {
                *a = (*a as f64 * inv * g as f64) as f32;
            }
            inv as f32
        })
        .collect()
}

/// `aclnnStatus aclnnRmsNormGetWorkspaceSize(const aclTensor *x, const aclTensor *gamma, double
/// epsilon, const aclTensor *yOut, const aclTensor *rstdOut, uint64_t *workspaceSize,
/// aclOpExecutor **executor)`.
#[no_mangle]
pub extern "C" fn aclnnRmsNormGetWorkspaceSize(
    x: *const c_void,
    gamma: *const c_void,
    epsilon: f64,
    y_out: *const c_void,
    rstd_out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnRmsNormGetWorkspaceSize";
    call(F, |_, _| {
        let tx = tensor(F, "x", x)?;
        let tg = tensor(F, "gamma", gamma)?;
        let ty = tensor(F, "yOut", y_out)?;
        let tr = tensor(F, "rstdOut", rstd_out)?;
        let (_, row) = norm_shapes(F, &tx, &tg, &ty, &tr)?;
        if epsilon.is_nan() || epsilon < 0.0 {
            return fail(INVALID, format!("{F}: epsilon {epsilon} must be >= 0"));
        }
        let args = vec![tx.data, tg.data, ty.data, tr.data];
        let work = move |a: &[KernelArg]| {
            let mut v = tx.read(&a[0], "aclnnRmsNorm")?;
            let g = tg.read(&a[1], "aclnnRmsNorm")?;
            let inv = normalise(&mut v, &g, row, epsilon);
            ty.write(&a[2], "aclnnRmsNorm", &v)?;
            tr.write(&a[3], "aclnnRmsNorm", &inv)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[x, gamma, y_out, rstd_out],
            Plan {
                op: "aclnnRmsNorm",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args,
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnRmsNorm);

/// `aclnnStatus aclnnAddRmsNormGetWorkspaceSize(const aclTensor *x1, const aclTensor *x2, const
/// aclTensor *gamma, double epsilon, const aclTensor *yOut, const aclTensor *rstdOut, const
/// aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn aclnnAddRmsNormGetWorkspaceSize(
    x1: *const c_void,
    x2: *const c_void,
    gamma: *const c_void,
    epsilon: f64,
    y_out: *const c_void,
    rstd_out: *const c_void,
    x_out: *const c_void,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    const F: &str = "aclnnAddRmsNormGetWorkspaceSize";
    call(F, |_, _| {
        let t1 = tensor(F, "x1", x1)?;
        let t2 = tensor(F, "x2", x2)?;
        let tg = tensor(F, "gamma", gamma)?;
        let ty = tensor(F, "yOut", y_out)?;
        let tr = tensor(F, "rstdOut", rstd_out)?;
        let txo = tensor(F, "xOut", x_out)?;
        same_dtype(F, ("x1", &t1), ("x2", &t2))?;
        shape_is(F, "x2", &t2, &t1.dims)?;
        same_dtype(F, ("x1", &t1), ("xOut", &txo))?;
        shape_is(F, "xOut", &txo, &t1.dims)?;
        let (_, row) = norm_shapes(F, &t1, &tg, &ty, &tr)?;
        if epsilon.is_nan() || epsilon < 0.0 {
            return fail(INVALID, format!("{F}: epsilon {epsilon} must be >= 0"));
        }
        let args = vec![t1.data, t2.data, tg.data, ty.data, tr.data, txo.data];
        let work = move |a: &[KernelArg]| {
            const OP: &str = "aclnnAddRmsNorm";
            let v1 = t1.read(&a[0], OP)?;
            let v2 = t2.read(&a[1], OP)?;
            let g = tg.read(&a[2], OP)?;
            // The sum is stored in the inputs' dtype, and the norm is of the stored sum.
            let mut sum: Vec<f32> = v1.iter().zip(&v2).map(|(p, q)| p + q).collect();
            txo.write(&a[5], OP, &sum)?;
            sum = txo.read(&a[5], OP)?;
            let inv = normalise(&mut sum, &g, row, epsilon);
            ty.write(&a[3], OP, &sum)?;
            tr.write(&a[4], OP, &inv)
        };
        plan(
            F,
            workspace_size,
            executor,
            &[x1, x2, gamma, y_out, rstd_out, x_out],
            Plan {
                op: "aclnnAddRmsNorm",
                workspace: SMALL_WORKSPACE,
                tensors: Vec::new(),
                args,
                work: Box::new(work),
            },
        )
    })
}

launch_entry!(aclnnAddRmsNorm);
