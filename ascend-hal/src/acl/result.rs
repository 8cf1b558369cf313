//! One small function per ACL C call: the only place besides `sys.rs` that calls through the
//! function table. Each turns the `aclError` into a [`Result`], attaching the function name, the
//! code's header name and meaning, `aclGetRecentErrMsg()`, and advice.
//!
//! Calls that take a handle or a pointer are `unsafe`; their `# Safety` lists say what must hold.
//! None of them binds a context: the safe types do that first (`DeviceInner::bind`).

use std::ffi::{c_void, CStr};
use std::ptr;

use super::codes::{describe_code, is_device_lost};
use super::sys::{self, AclApi, AclErrorCode, AclrtContext, AclrtEvent, AclrtStream};
use crate::error::{Error, Result};

/// Advice for a failing call, empty or starting with `"; "`.
fn hint(function: &str, code: AclErrorCode) -> String {
    let advice = if function == "aclInit" {
        "aclInit usually fails because the NPU driver is not mounted into the container \
         (/dev/davinci*, /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc and \
         /usr/local/Ascend/driver), or because the driver is older than the toolkit (compare \
         /usr/local/Ascend/driver/version.info with the CANN version; `cargo run --example \
         npu_info` checks both)"
    } else if is_device_lost(code) {
        "the device needs a reset: drop every handle and recreate the backend; check `dmesg` \
         and `npu-smi info`"
    } else {
        match code {
            107001 => "check ASCEND_RT_VISIBLE_DEVICES and `npu-smi info`",
            107002 => {
                "the calling thread had no device context; this crate binds one before every \
                 call, so something else changed it (mixing raw ACL calls on the same thread?)"
            }
            207004 => {
                "no NPU is visible: check `npu-smi info`, the device nodes mounted into the \
                 container, and ASCEND_RT_VISIBLE_DEVICES"
            }
            207006 => "the process lacks access to /dev/davinci*: run as a member of HwHiAiUser",
            _ => "",
        }
    };
    if advice.is_empty() {
        String::new()
    } else {
        format!("; {advice}")
    }
}

/// The error for `code` returned by `function`.
pub(crate) fn error(api: &AclApi, function: &'static str, code: AclErrorCode) -> Error {
    let (name, meaning) = describe_code(code);
    Error::Acl {
        function,
        code,
        name,
        meaning,
        recent: recent_message(api),
        hint: hint(function, code),
    }
}

fn check(api: &AclApi, function: &'static str, code: AclErrorCode) -> Result<()> {
    if code == sys::ACL_SUCCESS {
        Ok(())
    } else {
        Err(error(api, function, code))
    }
}

/// `aclGetRecentErrMsg()`, or empty.
pub(crate) fn recent_message(api: &AclApi) -> String {
    // SAFETY: takes no arguments; returns NULL or a NUL-terminated thread-local string that stays
    // valid until the next ACL call on this thread, and it is copied before any.
    unsafe { c_string((api.aclGetRecentErrMsg)()) }.unwrap_or_default()
}

/// Copies a C string that may be NULL.
///
/// # Safety
/// 1. `p` is NULL or points to a NUL-terminated string valid for the duration of the call.
unsafe fn c_string(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// `aclInit(NULL)`: `Ok(true)` if this call initialised ACL, `Ok(false)` if it already was
/// (by another library in the process, as torch_npu does too).
pub(crate) fn init(api: &AclApi) -> Result<bool> {
    // SAFETY: a NULL config path is documented as "no configuration file".
    let code = unsafe { (api.aclInit)(ptr::null()) };
    match code {
        sys::ACL_SUCCESS => Ok(true),
        sys::ACL_ERROR_REPEAT_INITIALIZE => Ok(false),
        _ => Err(error(api, "aclInit", code)),
    }
}

/// `aclFinalize()`; a repeated finalisation is not an error.
pub(crate) fn finalize(api: &AclApi) -> Result<()> {
    // SAFETY: no arguments; the caller made sure no ACL object of this process is still alive.
    let code = unsafe { (api.aclFinalize)() };
    if code == sys::ACL_ERROR_REPEAT_FINALIZE {
        return Ok(());
    }
    check(api, "aclFinalize", code)
}

/// `aclrtGetVersion`: the ACL API version (e.g. 1.16.0 for CANN 8.5).
pub(crate) fn version(api: &AclApi) -> Result<(i32, i32, i32)> {
    let (mut major, mut minor, mut patch) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    check(api, "aclrtGetVersion", unsafe {
        (api.aclrtGetVersion)(&mut major, &mut minor, &mut patch)
    })?;
    Ok((major, minor, patch))
}

/// `aclrtGetSocName()` (e.g. `Ascend910B4`).
pub(crate) fn soc_name(api: &AclApi) -> Option<String> {
    // SAFETY: no arguments; returns NULL or a static NUL-terminated string.
    unsafe { c_string((api.aclrtGetSocName)()) }
}

/// `aclGetDeviceCapability(device, info)`, when the library has it and answers.
pub(crate) fn device_capability(api: &AclApi, device: u32, info: i32) -> Option<i64> {
    let f = api.aclGetDeviceCapability?;
    let mut value = 0i64;
    // SAFETY: plain values and a valid out-pointer.
    (unsafe { f(device, info, &mut value) } == sys::ACL_SUCCESS).then_some(value)
}

/// `aclsysGetCANNVersion(pkg)`, when the library has it.
pub(crate) fn package_version(api: &AclApi, pkg: u32) -> Option<String> {
    let f = api.aclsysGetCANNVersion?;
    // SAFETY: `AclCannPackageVersion` is plain `c_char` arrays, for which all zeros is valid.
    let mut v: sys::AclCannPackageVersion = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer to a 512-byte struct of the declared layout.
    if unsafe { f(pkg, &mut v) } != sys::ACL_SUCCESS {
        return None;
    }
    v.version[v.version.len() - 1] = 0;
    // SAFETY: the array is NUL-terminated (its last byte was just zeroed).
    unsafe { c_string(v.version.as_ptr()) }.filter(|s| !s.is_empty())
}

/// `aclrtGetDeviceCount`.
pub(crate) fn device_count(api: &AclApi) -> Result<u32> {
    let mut n = 0u32;
    // SAFETY: a valid out-pointer.
    check(api, "aclrtGetDeviceCount", unsafe {
        (api.aclrtGetDeviceCount)(&mut n)
    })?;
    Ok(n)
}

/// `aclrtSetDevice`: retains the device's primary context and makes it current on this thread.
pub(crate) fn set_device(api: &AclApi, id: i32) -> Result<()> {
    // SAFETY: plain integer argument; invalid ids are rejected with 107001.
    check(api, "aclrtSetDevice", unsafe { (api.aclrtSetDevice)(id) })
}

/// `aclrtResetDevice`: releases one reference to the device's primary context.
pub(crate) fn reset_device(api: &AclApi, id: i32) -> Result<()> {
    // SAFETY: plain integer argument.
    check(api, "aclrtResetDevice", unsafe {
        (api.aclrtResetDevice)(id)
    })
}

/// `aclrtGetCurrentContext`.
pub(crate) fn current_context(api: &AclApi) -> Result<AclrtContext> {
    let mut ctx = ptr::null_mut();
    // SAFETY: a valid out-pointer.
    check(api, "aclrtGetCurrentContext", unsafe {
        (api.aclrtGetCurrentContext)(&mut ctx)
    })?;
    Ok(ctx)
}

/// `aclrtSetCurrentContext`.
///
/// # Safety
/// 1. `ctx` is a live context returned by `current_context` for a device still set.
pub(crate) unsafe fn set_current_context(api: &AclApi, ctx: AclrtContext) -> Result<()> {
    // SAFETY: `ctx` is live by the caller's contract.
    check(api, "aclrtSetCurrentContext", unsafe {
        (api.aclrtSetCurrentContext)(ctx)
    })
}

/// `aclrtSynchronizeDevice` (the current context's device).
pub(crate) fn synchronize_device(api: &AclApi) -> Result<()> {
    // SAFETY: no arguments.
    check(api, "aclrtSynchronizeDevice", unsafe {
        (api.aclrtSynchronizeDevice)()
    })
}

/// `aclrtGetMemInfo(ACL_HBM_MEM)`: `(free, total)` of the current device.
pub(crate) fn mem_info(api: &AclApi) -> Result<(usize, usize)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two valid out-pointers.
    check(api, "aclrtGetMemInfo", unsafe {
        (api.aclrtGetMemInfo)(sys::ACL_HBM_MEM, &mut free, &mut total)
    })?;
    Ok((free, total))
}

/// `aclrtMalloc(size, HUGE_FIRST)` on the current device.
pub(crate) fn malloc(api: &AclApi, size: usize) -> Result<*mut c_void> {
    let mut p = ptr::null_mut();
    // SAFETY: a valid out-pointer; size and policy are plain values.
    check(api, "aclrtMalloc", unsafe {
        (api.aclrtMalloc)(&mut p, size, sys::ACL_MEM_MALLOC_HUGE_FIRST)
    })?;
    Ok(p)
}

/// `aclrtFree`.
///
/// # Safety
/// 1. `p` came from `malloc` and is freed once; no queued work still uses it.
pub(crate) unsafe fn free(api: &AclApi, p: *mut c_void) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtFree", unsafe { (api.aclrtFree)(p) })
}

/// `aclrtMallocHost`.
pub(crate) fn malloc_host(api: &AclApi, size: usize) -> Result<*mut c_void> {
    let mut p = ptr::null_mut();
    // SAFETY: a valid out-pointer.
    check(api, "aclrtMallocHost", unsafe {
        (api.aclrtMallocHost)(&mut p, size)
    })?;
    Ok(p)
}

/// `aclrtFreeHost`.
///
/// # Safety
/// 1. `p` came from `malloc_host` and is freed once; no queued copy still uses it.
pub(crate) unsafe fn free_host(api: &AclApi, p: *mut c_void) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtFreeHost", unsafe { (api.aclrtFreeHost)(p) })
}

/// `aclrtMemcpy(dst, count, src, count, kind)`: synchronous.
///
/// # Safety
/// 1. `dst` and `src` are valid for `count` bytes of the sides `kind` names.
pub(crate) unsafe fn memcpy(
    api: &AclApi,
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    kind: u32,
) -> Result<()> {
    // SAFETY: by the caller's contract; `destMax` is the same `count`.
    check(api, "aclrtMemcpy", unsafe {
        (api.aclrtMemcpy)(dst, count, src, count, kind)
    })
}

/// `aclrtMemcpyAsync(dst, count, src, count, kind, stream)`.
///
/// # Safety
/// 1. `dst` and `src` stay valid for `count` bytes until the copy completes on `stream`;
/// 2. `stream` is a live stream of the current context.
pub(crate) unsafe fn memcpy_async(
    api: &AclApi,
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    kind: u32,
    stream: AclrtStream,
) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtMemcpyAsync", unsafe {
        (api.aclrtMemcpyAsync)(dst, count, src, count, kind, stream)
    })
}

/// `aclrtMemsetAsync(p, count, value, count, stream)`.
///
/// # Safety
/// 1. `p` is device memory valid for `count` bytes until the fill completes;
/// 2. `stream` is a live stream of the current context.
pub(crate) unsafe fn memset_async(
    api: &AclApi,
    p: *mut c_void,
    value: u8,
    count: usize,
    stream: AclrtStream,
) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtMemsetAsync", unsafe {
        (api.aclrtMemsetAsync)(p, count, i32::from(value), count, stream)
    })
}

/// `aclrtCreateStream` in the current context.
pub(crate) fn create_stream(api: &AclApi) -> Result<AclrtStream> {
    let mut s = ptr::null_mut();
    // SAFETY: a valid out-pointer.
    check(api, "aclrtCreateStream", unsafe {
        (api.aclrtCreateStream)(&mut s)
    })?;
    Ok(s)
}

/// `aclrtDestroyStream`.
///
/// # Safety
/// 1. `s` is a live stream, synchronised, destroyed once.
pub(crate) unsafe fn destroy_stream(api: &AclApi, s: AclrtStream) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtDestroyStream", unsafe {
        (api.aclrtDestroyStream)(s)
    })
}

/// `aclrtSynchronizeStream`.
///
/// # Safety
/// 1. `s` is a live stream of the current context.
pub(crate) unsafe fn synchronize_stream(api: &AclApi, s: AclrtStream) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtSynchronizeStream", unsafe {
        (api.aclrtSynchronizeStream)(s)
    })
}

/// `aclrtStreamQuery`: `Some(done)`, or `None` when the library lacks it.
///
/// # Safety
/// 1. `s` is a live stream of the current context.
pub(crate) unsafe fn query_stream(api: &AclApi, s: AclrtStream) -> Result<Option<bool>> {
    let Some(f) = api.aclrtStreamQuery else {
        return Ok(None);
    };
    let mut status = u32::MAX;
    // SAFETY: `s` is live by the caller's contract; a valid out-pointer.
    check(api, "aclrtStreamQuery", unsafe { f(s, &mut status) })?;
    Ok(Some(status == sys::ACL_STREAM_STATUS_COMPLETE))
}

/// `aclrtStreamWaitEvent`.
///
/// # Safety
/// 1. `s` and `e` are live, of the current context's device.
pub(crate) unsafe fn stream_wait_event(api: &AclApi, s: AclrtStream, e: AclrtEvent) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtStreamWaitEvent", unsafe {
        (api.aclrtStreamWaitEvent)(s, e)
    })
}

/// `aclrtCreateEventWithFlag(ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE)`.
pub(crate) fn create_event(api: &AclApi) -> Result<AclrtEvent> {
    let mut e = ptr::null_mut();
    // SAFETY: a valid out-pointer and a documented flag combination.
    check(api, "aclrtCreateEventWithFlag", unsafe {
        (api.aclrtCreateEventWithFlag)(&mut e, sys::ACL_EVENT_SYNC_AND_TIME_LINE)
    })?;
    Ok(e)
}

/// `aclrtDestroyEvent`.
///
/// # Safety
/// 1. `e` is live and destroyed once.
pub(crate) unsafe fn destroy_event(api: &AclApi, e: AclrtEvent) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtDestroyEvent", unsafe {
        (api.aclrtDestroyEvent)(e)
    })
}

/// `aclrtRecordEvent`.
///
/// # Safety
/// 1. `e` and `s` are live, of the current context's device.
pub(crate) unsafe fn record_event(api: &AclApi, e: AclrtEvent, s: AclrtStream) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtRecordEvent", unsafe {
        (api.aclrtRecordEvent)(e, s)
    })
}

/// `aclrtQueryEventStatus`: whether the last record completed.
///
/// # Safety
/// 1. `e` is live.
pub(crate) unsafe fn query_event(api: &AclApi, e: AclrtEvent) -> Result<bool> {
    let mut status = u32::MAX;
    // SAFETY: `e` is live by the caller's contract; a valid out-pointer.
    check(api, "aclrtQueryEventStatus", unsafe {
        (api.aclrtQueryEventStatus)(e, &mut status)
    })?;
    Ok(status == sys::ACL_EVENT_RECORDED_STATUS_COMPLETE)
}

/// `aclrtSynchronizeEvent`.
///
/// # Safety
/// 1. `e` is live.
pub(crate) unsafe fn synchronize_event(api: &AclApi, e: AclrtEvent) -> Result<()> {
    // SAFETY: by the caller's contract.
    check(api, "aclrtSynchronizeEvent", unsafe {
        (api.aclrtSynchronizeEvent)(e)
    })
}

/// `aclrtEventElapsedTime(&ms, start, end)` (the output comes first in C).
///
/// # Safety
/// 1. Both events are live, recorded with timing, and complete.
pub(crate) unsafe fn event_elapsed(
    api: &AclApi,
    start: AclrtEvent,
    end: AclrtEvent,
) -> Result<f32> {
    let mut ms = 0f32;
    // SAFETY: by the caller's contract; a valid out-pointer.
    check(api, "aclrtEventElapsedTime", unsafe {
        (api.aclrtEventElapsedTime)(&mut ms, start, end)
    })?;
    Ok(ms)
}

/// The physical-memory properties of huge-page HBM on `device`.
pub(crate) fn huge_hbm(device: u32) -> sys::AclrtPhysicalMemProp {
    sys::AclrtPhysicalMemProp {
        handle_type: 0,
        allocation_type: 0,
        mem_attr: sys::ACL_HBM_MEM_HUGE,
        location: sys::AclrtMemLocation {
            id: device,
            type_: sys::ACL_MEM_LOCATION_TYPE_DEVICE,
        },
        reserve: 0,
    }
}

fn vmm<T>(f: Option<T>, function: &'static str) -> Result<T> {
    f.ok_or(Error::Unsupported {
        backend: "acl",
        op: function,
    })
}

/// `aclrtMemGetAllocationGranularity(huge HBM, RECOMMENDED)`, when the library has it.
pub(crate) fn granularity(api: &AclApi, device: u32) -> Result<Option<usize>> {
    let Some(f) = api.aclrtMemGetAllocationGranularity else {
        return Ok(None);
    };
    let mut prop = huge_hbm(device);
    let mut g = 0usize;
    // SAFETY: a valid property struct of the declared layout and a valid out-pointer.
    check(api, "aclrtMemGetAllocationGranularity", unsafe {
        f(
            &mut prop,
            sys::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED,
            &mut g,
        )
    })?;
    Ok(Some(g))
}

/// `aclrtReserveMemAddress(&va, size, 0, NULL, huge)`.
pub(crate) fn reserve_address(api: &AclApi, size: usize) -> Result<*mut c_void> {
    let f = vmm(api.aclrtReserveMemAddress, "aclrtReserveMemAddress")?;
    let mut va = ptr::null_mut();
    // SAFETY: a valid out-pointer; alignment and expectPtr are the documented reserved values.
    check(api, "aclrtReserveMemAddress", unsafe {
        f(
            &mut va,
            size,
            0,
            ptr::null_mut(),
            sys::ACL_RESERVE_HUGE_PAGE,
        )
    })?;
    Ok(va)
}

/// `aclrtReleaseMemAddress`.
///
/// # Safety
/// 1. `va` came from `reserve_address`, is released once, and nothing is mapped in it.
pub(crate) unsafe fn release_address(api: &AclApi, va: *mut c_void) -> Result<()> {
    let f = vmm(api.aclrtReleaseMemAddress, "aclrtReleaseMemAddress")?;
    // SAFETY: by the caller's contract.
    check(api, "aclrtReleaseMemAddress", unsafe { f(va) })
}

/// `aclrtMallocPhysical(&h, size, huge HBM of `device`, 0)`.
pub(crate) fn malloc_physical(
    api: &AclApi,
    size: usize,
    device: u32,
) -> Result<sys::AclrtDrvMemHandle> {
    let f = vmm(api.aclrtMallocPhysical, "aclrtMallocPhysical")?;
    let prop = huge_hbm(device);
    let mut h = ptr::null_mut();
    // SAFETY: a valid out-pointer and property struct; flags must be 0.
    check(api, "aclrtMallocPhysical", unsafe {
        f(&mut h, size, &prop, 0)
    })?;
    Ok(h)
}

/// `aclrtFreePhysical`.
///
/// # Safety
/// 1. `h` came from `malloc_physical`, is freed once, and is not mapped.
pub(crate) unsafe fn free_physical(api: &AclApi, h: sys::AclrtDrvMemHandle) -> Result<()> {
    let f = vmm(api.aclrtFreePhysical, "aclrtFreePhysical")?;
    // SAFETY: by the caller's contract.
    check(api, "aclrtFreePhysical", unsafe { f(h) })
}

/// `aclrtMapMem(va, size, 0, h, 0)`.
///
/// # Safety
/// 1. `va..va + size` lies in a reservation and is unmapped; `h` is `size` bytes, unmapped.
pub(crate) unsafe fn map_mem(
    api: &AclApi,
    va: *mut c_void,
    size: usize,
    h: sys::AclrtDrvMemHandle,
) -> Result<()> {
    let f = vmm(api.aclrtMapMem, "aclrtMapMem")?;
    // SAFETY: by the caller's contract; offset and flags are 0.
    check(api, "aclrtMapMem", unsafe { f(va, size, 0, h, 0) })
}

/// `aclrtUnmapMem(va)`.
///
/// # Safety
/// 1. A physical allocation is mapped at exactly `va`, and no work uses it.
pub(crate) unsafe fn unmap_mem(api: &AclApi, va: *mut c_void) -> Result<()> {
    let f = vmm(api.aclrtUnmapMem, "aclrtUnmapMem")?;
    // SAFETY: by the caller's contract.
    check(api, "aclrtUnmapMem", unsafe { f(va) })
}
