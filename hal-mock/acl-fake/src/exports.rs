//! The exported ACL C functions, with the signatures of the CANN headers and the documented
//! argument checks and error codes (see `shared/reference/acl-runtime.md`, section 11).

#![allow(non_snake_case)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, MutexGuard};

use ascend_hal::{Device, DeviceMemory, DevicePtr, Event, HostMemory, Stream};

use crate::state::{
    code, context_device, context_handle, current_device, fail, from_hal, set_current_device,
    set_last_error, state, take_last_error, Fake, FakeStream, Fault, Outcome,
};

pub(crate) type Guard = MutexGuard<'static, Fake>;

/// Runs one exported call: counts it, applies a planned fault, catches panics (which must not
/// cross the C boundary), and records the error message of a failure.
pub(crate) fn call(
    function: &'static str,
    body: impl FnOnce(Guard, Option<Fault>) -> Outcome,
) -> i32 {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut g = state();
        let fault = g.count_call(function);
        if let Some(f) = &fault {
            if !f.in_stream {
                return fail(
                    f.code,
                    format!(
                        "{function}: injected fault: call #{} returns {}",
                        f.nth, f.code
                    ),
                );
            }
        }
        body(g, fault)
    }));
    match result {
        Ok(Ok(())) => code::SUCCESS,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(_) => {
            set_last_error(&format!("{function}: the fake runtime panicked"));
            code::INTERNAL_ERROR
        }
    }
}

pub(crate) fn out<T>(p: *mut T, function: &str) -> Outcome<&'static mut T> {
    // SAFETY: a non-null out-pointer from the caller, valid for a write of `T` by the C API's
    // contract.
    unsafe { p.as_mut() }.ok_or_else(|| crate::state::Failure {
        code: code::INVALID_PARAM,
        message: format!("{function}: output pointer is NULL"),
    })
}

fn check_device(g: &Fake, id: i32, function: &str) -> Outcome<usize> {
    usize::try_from(id)
        .ok()
        .filter(|&d| d < g.devices.len())
        .ok_or_else(|| crate::state::Failure {
            code: code::RT_INVALID_DEVICEID,
            message: format!(
                "{function}: device {id} does not exist ({} devices)",
                g.devices.len()
            ),
        })
}

/// `aclError aclInit(const char *configPath)`.
#[no_mangle]
pub extern "C" fn aclInit(_config: *const c_char) -> i32 {
    call("aclInit", |mut g, _| {
        if g.initialized {
            return fail(code::REPEAT_INITIALIZE, "aclInit: already initialized");
        }
        g.initialized = true;
        g.finalized = false;
        Ok(())
    })
}

/// `aclError aclFinalize()`: releases every resource of the fake devices. As CANN 8.5's
/// `acl.cpp`: the first call returns 0 even without `aclInit` (its "finalized" flag starts
/// false); a second one returns `ACL_ERROR_REPEAT_FINALIZE`.
#[no_mangle]
pub extern "C" fn aclFinalize() -> i32 {
    call("aclFinalize", |mut g, _| {
        if g.finalized {
            return fail(code::REPEAT_FINALIZE, "aclFinalize: already finalized");
        }
        g.finalized = true;
        g.initialized = false;
        g.reset_devices();
        set_current_device(None);
        Ok(())
    })
}

/// `const char *aclGetRecentErrMsg()`.
#[no_mangle]
pub extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    take_last_error()
}

/// `aclError aclrtGetVersion(int32_t *major, int32_t *minor, int32_t *patch)`.
#[no_mangle]
pub extern "C" fn aclrtGetVersion(major: *mut i32, minor: *mut i32, patch: *mut i32) -> i32 {
    call("aclrtGetVersion", |_, _| {
        *out(major, "aclrtGetVersion")? = 1;
        *out(minor, "aclrtGetVersion")? = 16;
        *out(patch, "aclrtGetVersion")? = 0;
        Ok(())
    })
}

/// `const char *aclrtGetSocName()`.
#[no_mangle]
pub extern "C" fn aclrtGetSocName() -> *const c_char {
    // The configured name lives in the process-wide state and only changes through
    // `aclfakeConfigure`, which tests call before any ACL use.
    state().config.soc.as_ptr()
}

/// `aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo deviceInfo, int64_t *value)`:
/// the configured SoC's AI cores (0), vector cores (1) and L2 bytes (2), as CANN 8.1's platform
/// description of that SoC gives them (`data/platform_config/<SoC>.ini`).
#[no_mangle]
pub extern "C" fn aclGetDeviceCapability(device: u32, info: i32, value: *mut i64) -> i32 {
    call("aclGetDeviceCapability", |g, _| {
        let id = i32::try_from(device).unwrap_or(i32::MAX);
        check_device(&g, id, "aclGetDeviceCapability")?;
        let soc = crate::state::soc_profile(&g.config.soc.to_string_lossy()).ok_or_else(|| {
            crate::state::Failure {
                code: code::RT_FEATURE_NOT_SUPPORT,
                message: format!(
                    "aclGetDeviceCapability: the fake has no platform description of {:?}",
                    g.config.soc
                ),
            }
        })?;
        let v = match info {
            0 => soc.ai_cores,
            1 => soc.vector_cores,
            2 => soc.l2_bytes,
            _ => {
                return fail(
                    code::INVALID_PARAM,
                    format!(
                        "aclGetDeviceCapability: deviceInfo {info} is not an aclDeviceInfo \
                         (0 AI_CORE_NUM, 1 VECTOR_CORE_NUM, 2 L2_SIZE)"
                    ),
                )
            }
        };
        *out(value, "aclGetDeviceCapability")? = v;
        Ok(())
    })
}

/// `aclError aclsysGetCANNVersion(aclCANNPackageName name, aclCANNPackageVersion *version)`.
#[no_mangle]
pub extern "C" fn aclsysGetCANNVersion(name: u32, version: *mut c_char) -> i32 {
    call("aclsysGetCANNVersion", |_, _| {
        let text: &CStr = match name {
            0 => c"8.5.0 (acl-fake)",
            7 => c"24.1.rc2 (acl-fake)",
            _ => {
                return fail(
                    code::INVALID_PARAM,
                    format!("aclsysGetCANNVersion: package {name}"),
                )
            }
        };
        let v = out(version, "aclsysGetCANNVersion")?;
        let bytes = text.to_bytes_with_nul();
        // SAFETY: `version` points to an `aclCANNPackageVersion` (512 bytes) whose first field is
        // `char version[128]`; the text is shorter than 128 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), v as *mut c_char, bytes.len())
        };
        Ok(())
    })
}

/// `aclError aclrtGetDeviceCount(uint32_t *count)`.
#[no_mangle]
pub extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> i32 {
    call("aclrtGetDeviceCount", |g, _| {
        *out(count, "aclrtGetDeviceCount")? = g.devices.len() as u32;
        Ok(())
    })
}

/// `aclError aclrtSetDevice(int32_t deviceId)`.
#[no_mangle]
pub extern "C" fn aclrtSetDevice(id: i32) -> i32 {
    call("aclrtSetDevice", |mut g, _| {
        let d = check_device(&g, id, "aclrtSetDevice")?;
        g.devices[d]
            .memory_info()
            .map_err(|e| from_hal("aclrtSetDevice", e))?;
        g.set_count[d] += 1;
        set_current_device(Some(d));
        Ok(())
    })
}

/// `aclError aclrtResetDevice(int32_t deviceId)`.
#[no_mangle]
pub extern "C" fn aclrtResetDevice(id: i32) -> i32 {
    call("aclrtResetDevice", |mut g, _| {
        let d = check_device(&g, id, "aclrtResetDevice")?;
        if g.set_count[d] == 0 {
            return fail(
                code::RT_PARAM_INVALID,
                format!("aclrtResetDevice: device {d} was not set"),
            );
        }
        g.set_count[d] -= 1;
        if g.set_count[d] == 0 && current_device().ok() == Some(d) {
            set_current_device(None);
        }
        Ok(())
    })
}

/// `aclError aclrtGetCurrentContext(aclrtContext *context)`.
#[no_mangle]
pub extern "C" fn aclrtGetCurrentContext(ctx: *mut *mut c_void) -> i32 {
    call("aclrtGetCurrentContext", |_, _| {
        *out(ctx, "aclrtGetCurrentContext")? = context_handle(current_device()?);
        Ok(())
    })
}

/// `aclError aclrtSetCurrentContext(aclrtContext context)`.
#[no_mangle]
pub extern "C" fn aclrtSetCurrentContext(ctx: *mut c_void) -> i32 {
    call("aclrtSetCurrentContext", |g, _| {
        if ctx.is_null() {
            return fail(
                code::INVALID_PARAM,
                "aclrtSetCurrentContext: context is NULL",
            );
        }
        match context_device(ctx).filter(|&d| d < g.devices.len() && g.set_count[d] > 0) {
            Some(d) => {
                set_current_device(Some(d));
                Ok(())
            }
            None => fail(
                code::RT_PARAM_INVALID,
                format!("aclrtSetCurrentContext: {ctx:p} is not a live context"),
            ),
        }
    })
}

/// `aclError aclrtSynchronizeDevice(void)`: also reports misuse any of the device's streams
/// saw (memory freed under a queued copy). A stream's failure is reported here and still by the
/// stream's own synchronisation: a device sync elsewhere (the ACL backend frees memory after
/// one) must not swallow a kernel fault.
#[no_mangle]
pub extern "C" fn aclrtSynchronizeDevice() -> i32 {
    call("aclrtSynchronizeDevice", |g, _| {
        let d = current_device()?;
        let device = g.devices[d].clone();
        let streams = g.streams_of(d);
        drop(g);
        let r = device
            .synchronize_keeping_errors()
            .map_err(|e| from_hal("aclrtSynchronizeDevice", e));
        for s in &streams {
            take_misuse(s, "aclrtSynchronizeDevice")?;
        }
        r
    })
}

/// `aclError aclrtGetRunMode(aclrtRunMode *runMode)`: `ACL_HOST` (1), an application on the
/// host CPU with the NPU on PCIe, as on an Atlas 800 A2.
#[no_mangle]
pub extern "C" fn aclrtGetRunMode(mode: *mut u32) -> i32 {
    call("aclrtGetRunMode", |_, _| {
        *out(mode, "aclrtGetRunMode")? = 1;
        Ok(())
    })
}

/// `aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total)`.
#[no_mangle]
pub extern "C" fn aclrtGetMemInfo(attr: u32, free: *mut usize, total: *mut usize) -> i32 {
    call("aclrtGetMemInfo", |g, _| {
        if attr > 17 {
            return fail(
                code::RT_INVALID_MEMORY_TYPE,
                format!("aclrtGetMemInfo: attr {attr} is not an aclrtMemAttr"),
            );
        }
        let info = g.devices[current_device()?]
            .memory_info()
            .map_err(|e| from_hal("aclrtGetMemInfo", e))?;
        *out(free, "aclrtGetMemInfo")? = info.free as usize;
        *out(total, "aclrtGetMemInfo")? = info.total as usize;
        Ok(())
    })
}

/// `aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)`.
#[no_mangle]
pub extern "C" fn aclrtMalloc(p: *mut *mut c_void, size: usize, _policy: u32) -> i32 {
    call("aclrtMalloc", |mut g, _| {
        let slot = out(p, "aclrtMalloc")?;
        if size == 0 {
            return fail(code::INVALID_PARAM, "aclrtMalloc: size 0");
        }
        let d = current_device()?;
        let memory = g.devices[d]
            .allocate(size)
            .map_err(|e| from_hal("aclrtMalloc", e))?;
        let addr = memory.ptr().0;
        g.device_memory.insert(addr, memory);
        *slot = addr as usize as *mut c_void;
        Ok(())
    })
}

/// `aclError aclrtFree(void *devPtr)` (needs no context).
#[no_mangle]
pub extern "C" fn aclrtFree(p: *mut c_void) -> i32 {
    call("aclrtFree", |mut g, _| {
        if p.is_null() {
            return fail(code::INVALID_PARAM, "aclrtFree: NULL");
        }
        match g.device_memory.remove(&(p as u64)) {
            Some(_) => Ok(()),
            None => fail(
                code::RT_PARAM_INVALID,
                format!("aclrtFree: {p:p} is not the start of a live aclrtMalloc allocation"),
            ),
        }
    })
}

/// `aclError aclrtMallocHost(void **hostPtr, size_t size)`.
#[no_mangle]
pub extern "C" fn aclrtMallocHost(p: *mut *mut c_void, size: usize) -> i32 {
    call("aclrtMallocHost", |mut g, _| {
        let slot = out(p, "aclrtMallocHost")?;
        if size == 0 {
            return fail(code::INVALID_PARAM, "aclrtMallocHost: size 0");
        }
        let d = current_device()?;
        let memory = g.devices[d]
            .allocate_host(size)
            .map_err(|e| from_hal("aclrtMallocHost", e))?;
        let addr = memory.as_ptr() as usize;
        g.host_memory.insert(addr, Arc::new(memory));
        *slot = addr as *mut c_void;
        Ok(())
    })
}

/// `aclError aclrtFreeHost(void *hostPtr)`. Freeing memory a queued copy still uses is
/// undefined in CANN; the fake keeps the memory until the copy is done and reports the misuse
/// at the stream's next synchronisation (`ACL_ERROR_RT_COPY_DATA`).
#[no_mangle]
pub extern "C" fn aclrtFreeHost(p: *mut c_void) -> i32 {
    call("aclrtFreeHost", |mut g, _| {
        if p.is_null() {
            return fail(code::INVALID_PARAM, "aclrtFreeHost: NULL");
        }
        let Some(memory) = g.host_memory.remove(&(p as usize)) else {
            return fail(
                code::RT_PARAM_INVALID,
                format!("aclrtFreeHost: {p:p} is not a live aclrtMallocHost allocation"),
            );
        };
        let streams: Vec<Arc<FakeStream>> = g
            .streams
            .values()
            .chain(&g.default_streams)
            .cloned()
            .collect();
        drop(g);
        for s in streams {
            s.prune();
            let busy = s
                .in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(m, _)| Arc::ptr_eq(m, &memory));
            if busy {
                s.misuse
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| {
                        format!(
                            "aclrtFreeHost freed {p:p} while an asynchronous copy queued on this \
                             stream still used it; synchronize the stream before freeing"
                        )
                    });
            }
        }
        Ok(())
    })
}

/// Which way a copy goes, after the documented checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    HostToHost,
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

fn direction(
    g: &Fake,
    function: &str,
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: u32,
) -> Outcome<Option<Direction>> {
    if dst.is_null() || src.is_null() {
        return fail(code::INVALID_PARAM, format!("{function}: NULL pointer"));
    }
    if kind > 5 {
        return fail(
            code::INVALID_PARAM,
            format!("{function}: memcpy kind {kind}"),
        );
    }
    if count == 0 || dest_max == 0 {
        return fail(
            code::RT_PARAM_INVALID,
            format!("{function}: count or destMax is 0"),
        );
    }
    if count > dest_max {
        return fail(
            code::RT_PARAM_INVALID,
            format!("{function}: count {count} exceeds destMax {dest_max}"),
        );
    }
    if std::ptr::eq(dst, src) {
        return Ok(None);
    }
    let dir = match kind {
        0 => Direction::HostToHost,
        1 | 5 => Direction::HostToDevice,
        2 => Direction::DeviceToHost,
        3 => Direction::DeviceToDevice,
        _ => match (is_device_address(src), is_device_address(dst)) {
            (false, false) => Direction::HostToHost,
            (false, true) => Direction::HostToDevice,
            (true, false) => Direction::DeviceToHost,
            (true, true) => Direction::DeviceToDevice,
        },
    };
    // The host side of a copy must be host memory (a device address there would be touched by
    // the host), and a pinned range must fit its allocation; the CPU backend checks the device
    // side against its live allocations.
    let (src_host, dst_host) = match dir {
        Direction::HostToHost => (true, true),
        Direction::HostToDevice => (true, false),
        Direction::DeviceToHost => (false, true),
        Direction::DeviceToDevice => (false, false),
    };
    for (p, host, what) in [(src, src_host, "src"), (dst.cast_const(), dst_host, "dst")] {
        if host && is_device_address(p) {
            return fail(
                code::RT_PARAM_INVALID,
                format!(
                    "{function}: {what} {p:p} is a device address, but memcpy kind {kind} says \
                     host memory"
                ),
            );
        }
        if host
            && g.pinned_of(p as usize, count)
                .is_some_and(|(_, fits)| !fits)
        {
            return fail(
                code::RT_PARAM_INVALID,
                format!("{function}: {what} {p:p} + {count} bytes overruns its aclrtMallocHost allocation"),
            );
        }
    }
    Ok(Some(dir))
}

/// Whether `p` is in the CPU backend's device address range (never a host pointer).
fn is_device_address(p: *const c_void) -> bool {
    p as u64 >= hal_mock::DEVICE_ADDRESS_FLOOR
}

/// The misuse a stream saw, as the failure its synchronisation returns.
fn take_misuse(s: &FakeStream, function: &str) -> Outcome {
    s.prune();
    match s.misuse.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(message) => fail(code::RT_COPY_DATA, format!("{function}: {message}")),
        None => Ok(()),
    }
}

/// Queues a copy on `stream`; pageable host memory makes it synchronous, as CANN 8.5 does.
/// Pinned host memory an asynchronous copy uses is remembered until the copy is done.
fn copy_on(
    s: &Arc<FakeStream>,
    pinned: Option<Arc<hal_mock::CpuHostMemory>>,
    dir: Direction,
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    function: &'static str,
) -> Outcome {
    let stream = &s.stream;
    let (d, sp) = (DevicePtr(dst as u64), DevicePtr(src as u64));
    let async_host = pinned.is_some();
    // SAFETY: the C API's contract: the caller keeps both ranges valid until the copy completes
    // (pageable host memory is copied before returning). Device addresses are checked by the
    // CPU backend, which rejects anything outside a live allocation of the stream's device.
    let r = unsafe {
        match (dir, async_host) {
            (Direction::HostToDevice, true) => stream.enqueue_copy_h2d(src.cast(), d, count),
            (Direction::HostToDevice, false) => stream.copy_h2d_blocking(src.cast(), d, count),
            (Direction::DeviceToHost, true) => stream.enqueue_copy_d2h(sp, dst.cast(), count),
            (Direction::DeviceToHost, false) => stream.copy_d2h_blocking(sp, dst.cast(), count),
            (Direction::DeviceToDevice, _) => stream.enqueue_copy_d2d(sp, d, count),
            (Direction::HostToHost, _) => {
                std::ptr::copy(src.cast::<u8>(), dst.cast::<u8>(), count);
                Ok(())
            }
        }
    };
    r.map_err(|e| from_hal(function, e))?;
    if let Some(memory) = pinned {
        let event = stream
            .device()
            .new_event()
            .and_then(|e| stream.record(&e).map(|()| e))
            .map_err(|e| from_hal(function, e))?;
        s.prune();
        s.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((memory, event));
    }
    Ok(())
}

/// `aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count,
/// aclrtMemcpyKind kind)`.
#[no_mangle]
pub extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: u32,
) -> i32 {
    call("aclrtMemcpy", |g, _| {
        let current = current_device()?;
        let Some(dir) = direction(&g, "aclrtMemcpy", dst, dest_max, src, count, kind)? else {
            return Ok(());
        };
        let device_side = match dir {
            Direction::DeviceToHost | Direction::DeviceToDevice => src as usize,
            _ => dst as usize,
        };
        let dev = g.device_of(device_side, count).unwrap_or(current);
        let s = Arc::clone(&g.sync_streams[dev.min(g.sync_streams.len() - 1)]);
        drop(g);
        copy_on(&s, None, dir, dst, src, count, "aclrtMemcpy")?;
        s.stream
            .synchronize()
            .map_err(|e| from_hal("aclrtMemcpy", e))
    })
}

/// Records an in-stream fault: the call succeeds, the stream's next synchronisation fails.
pub(crate) fn inject(s: &FakeStream, fault: Option<Fault>) -> bool {
    match fault {
        Some(f) => {
            s.injected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(f.code);
            true
        }
        None => false,
    }
}

/// `aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count,
/// aclrtMemcpyKind kind, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: u32,
    stream: *mut c_void,
) -> i32 {
    call("aclrtMemcpyAsync", |g, fault| {
        let Some(dir) = direction(&g, "aclrtMemcpyAsync", dst, dest_max, src, count, kind)? else {
            return Ok(());
        };
        if dir == Direction::HostToHost {
            return fail(
                code::RT_FEATURE_NOT_SUPPORT,
                "aclrtMemcpyAsync: host-to-host copies are not supported asynchronously",
            );
        }
        let s = g.stream(stream)?;
        if inject(&s, fault) {
            return Ok(());
        }
        let host_side = match dir {
            Direction::HostToDevice => src as usize,
            _ => dst as usize,
        };
        let pinned = match dir {
            Direction::DeviceToDevice => None,
            _ => g.pinned_of(host_side, count).map(|(m, _)| m),
        };
        drop(g);
        if dir == Direction::DeviceToDevice {
            // SAFETY: both sides are device addresses, which the CPU backend checks.
            return unsafe {
                s.stream
                    .enqueue_copy_d2d(DevicePtr(src as u64), DevicePtr(dst as u64), count)
            }
            .map_err(|e| from_hal("aclrtMemcpyAsync", e));
        }
        copy_on(&s, pinned, dir, dst, src, count, "aclrtMemcpyAsync")
    })
}

/// `aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count,
/// aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn aclrtMemsetAsync(
    p: *mut c_void,
    max: usize,
    value: i32,
    count: usize,
    stream: *mut c_void,
) -> i32 {
    call("aclrtMemsetAsync", |g, fault| {
        if p.is_null() {
            return fail(code::INVALID_PARAM, "aclrtMemsetAsync: NULL");
        }
        if count == 0 || count > max {
            return fail(
                code::RT_PARAM_INVALID,
                format!("aclrtMemsetAsync: count {count} with maxCount {max}"),
            );
        }
        let s = g.stream(stream)?;
        if inject(&s, fault) {
            return Ok(());
        }
        drop(g);
        // SAFETY: the CPU backend checks the range against its live allocations.
        unsafe {
            s.stream
                .enqueue_memset(DevicePtr(p as u64), value as u8, count)
        }
        .map_err(|e| from_hal("aclrtMemsetAsync", e))
    })
}

/// `aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)`: a byte
/// fill (the runtime casts `value` to `uint8`), synchronous; device or host memory by address
/// (on the host side, only `aclrtMallocHost` memory).
#[no_mangle]
pub extern "C" fn aclrtMemset(p: *mut c_void, max: usize, value: i32, count: usize) -> i32 {
    call("aclrtMemset", |g, _| {
        if p.is_null() {
            return fail(code::INVALID_PARAM, "aclrtMemset: NULL");
        }
        if count == 0 || count > max {
            return fail(
                code::RT_PARAM_INVALID,
                format!("aclrtMemset: count {count} with maxCount {max}"),
            );
        }
        let current = current_device()?;
        if !is_device_address(p) {
            // Host memory: the fake fills only what it can check, aclrtMallocHost memory (a
            // stray host pointer would crash the process instead of returning an error).
            return match g.pinned_of(p as usize, count) {
                Some((_, true)) => {
                    drop(g);
                    // SAFETY: `p..p + count` lies inside a live aclrtMallocHost allocation.
                    unsafe { std::ptr::write_bytes(p.cast::<u8>(), value as u8, count) };
                    Ok(())
                }
                _ => fail(
                    code::RT_PARAM_INVALID,
                    format!(
                        "aclrtMemset: {p:p} + {count} bytes is neither device memory nor inside \
                         an aclrtMallocHost allocation (the fake fills no other host memory)"
                    ),
                ),
            };
        }
        let dev = g.device_of(p as usize, count).unwrap_or(current);
        let s = Arc::clone(&g.sync_streams[dev.min(g.sync_streams.len() - 1)]);
        drop(g);
        // SAFETY: the CPU backend checks the range against its live allocations.
        unsafe {
            s.stream
                .enqueue_memset(DevicePtr(p as u64), value as u8, count)
        }
        .map_err(|e| from_hal("aclrtMemset", e))?;
        s.stream
            .synchronize()
            .map_err(|e| from_hal("aclrtMemset", e))
    })
}

/// `aclError aclrtCreateStream(aclrtStream *stream)`.
#[no_mangle]
pub extern "C" fn aclrtCreateStream(stream: *mut *mut c_void) -> i32 {
    call("aclrtCreateStream", |mut g, _| {
        let slot = out(stream, "aclrtCreateStream")?;
        let d = current_device()?;
        let s = g.devices[d]
            .new_stream()
            .map_err(|e| from_hal("aclrtCreateStream", e))?;
        *slot = g.add_stream(FakeStream::new(s, d));
        Ok(())
    })
}

/// `aclError aclrtDestroyStream(aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn aclrtDestroyStream(stream: *mut c_void) -> i32 {
    call("aclrtDestroyStream", |mut g, _| {
        if stream.is_null() {
            return fail(
                code::INVALID_PARAM,
                "aclrtDestroyStream: the default stream",
            );
        }
        let removed = g.streams.remove(&(stream as usize));
        drop(g); // dropping the stream waits for its worker
        match removed {
            Some(_) => Ok(()),
            None => fail(
                code::RT_INVALID_HANDLE,
                format!("aclrtDestroyStream: {stream:p} is not a live stream"),
            ),
        }
    })
}

fn sync_stream(s: &FakeStream, function: &'static str) -> Outcome {
    let r = s.stream.synchronize().map_err(|e| from_hal(function, e));
    let injected = s.injected.lock().unwrap_or_else(|p| p.into_inner()).take();
    take_misuse(s, function)?;
    match injected {
        Some(code) => fail(
            code,
            format!("{function}: injected fault: a queued task returned {code}"),
        ),
        None => r,
    }
}

/// `aclError aclrtSynchronizeStream(aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn aclrtSynchronizeStream(stream: *mut c_void) -> i32 {
    call("aclrtSynchronizeStream", |g, _| {
        let s = g.stream(stream)?;
        drop(g);
        sync_stream(&s, "aclrtSynchronizeStream")
    })
}

/// `aclError aclrtStreamQuery(aclrtStream stream, aclrtStreamStatus *status)`.
#[no_mangle]
pub extern "C" fn aclrtStreamQuery(stream: *mut c_void, status: *mut u32) -> i32 {
    call("aclrtStreamQuery", |g, _| {
        let s = g.stream(stream)?;
        drop(g);
        let done = s
            .stream
            .query()
            .map_err(|e| from_hal("aclrtStreamQuery", e))?;
        *out(status, "aclrtStreamQuery")? = if done { 0 } else { 1 };
        Ok(())
    })
}

/// `aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag)`.
#[no_mangle]
pub extern "C" fn aclrtCreateEventWithFlag(event: *mut *mut c_void, flag: u32) -> i32 {
    call("aclrtCreateEventWithFlag", |mut g, _| {
        let slot = out(event, "aclrtCreateEventWithFlag")?;
        if flag & !0x7f != 0 {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtCreateEventWithFlag: flag {flag:#x}"),
            );
        }
        let d = current_device()?;
        let e = g.devices[d]
            .new_event()
            .map_err(|e| from_hal("aclrtCreateEventWithFlag", e))?;
        *slot = g.add_event(e);
        Ok(())
    })
}

/// `aclError aclrtCreateEvent(aclrtEvent *event)`: a default event (timing and sync).
#[no_mangle]
pub extern "C" fn aclrtCreateEvent(event: *mut *mut c_void) -> i32 {
    call("aclrtCreateEvent", |mut g, _| {
        let slot = out(event, "aclrtCreateEvent")?;
        let d = current_device()?;
        let e = g.devices[d]
            .new_event()
            .map_err(|e| from_hal("aclrtCreateEvent", e))?;
        *slot = g.add_event(e);
        Ok(())
    })
}

/// `aclError aclrtDestroyEvent(aclrtEvent event)`.
#[no_mangle]
pub extern "C" fn aclrtDestroyEvent(event: *mut c_void) -> i32 {
    call("aclrtDestroyEvent", |mut g, _| {
        match g.events.remove(&(event as usize)) {
            Some(_) => Ok(()),
            None => fail(
                code::RT_INVALID_HANDLE,
                format!("aclrtDestroyEvent: {event:p} is not a live event"),
            ),
        }
    })
}

fn same_device(s: &FakeStream, e: &hal_mock::CpuEvent, function: &str) -> Outcome {
    if s.device == e.device_ordinal() {
        Ok(())
    } else {
        fail(
            code::RT_STREAM_CONTEXT,
            format!(
                "{function}: event of device {} with a stream of device {}",
                e.device_ordinal(),
                s.device
            ),
        )
    }
}

/// `aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn aclrtRecordEvent(event: *mut c_void, stream: *mut c_void) -> i32 {
    call("aclrtRecordEvent", |g, _| {
        let (e, s) = (g.event(event)?, g.stream(stream)?);
        drop(g);
        same_device(&s, &e, "aclrtRecordEvent")?;
        s.stream
            .record(&e)
            .map_err(|e| from_hal("aclrtRecordEvent", e))
    })
}

/// `aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event)`.
#[no_mangle]
pub extern "C" fn aclrtStreamWaitEvent(stream: *mut c_void, event: *mut c_void) -> i32 {
    call("aclrtStreamWaitEvent", |g, _| {
        let (e, s) = (g.event(event)?, g.stream(stream)?);
        drop(g);
        same_device(&s, &e, "aclrtStreamWaitEvent")?;
        s.stream
            .wait(&e)
            .map_err(|e| from_hal("aclrtStreamWaitEvent", e))
    })
}

/// `aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status)`.
#[no_mangle]
pub extern "C" fn aclrtQueryEventStatus(event: *mut c_void, status: *mut u32) -> i32 {
    call("aclrtQueryEventStatus", |g, _| {
        let e = g.event(event)?;
        drop(g);
        let done = e
            .query()
            .map_err(|err| from_hal("aclrtQueryEventStatus", err))?;
        *out(status, "aclrtQueryEventStatus")? = u32::from(done);
        Ok(())
    })
}

/// `aclError aclrtSynchronizeEvent(aclrtEvent event)`.
#[no_mangle]
pub extern "C" fn aclrtSynchronizeEvent(event: *mut c_void) -> i32 {
    call("aclrtSynchronizeEvent", |g, _| {
        let e = g.event(event)?;
        drop(g);
        e.synchronize()
            .map_err(|err| from_hal("aclrtSynchronizeEvent", err))
    })
}

/// `aclError aclrtEventElapsedTime(float *ms, aclrtEvent start, aclrtEvent end)`.
#[no_mangle]
pub extern "C" fn aclrtEventElapsedTime(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> i32 {
    call("aclrtEventElapsedTime", |g, _| {
        let (a, b) = (g.event(start)?, g.event(end)?);
        drop(g);
        let t = a
            .elapsed_ms(&b)
            .map_err(|err| from_hal("aclrtEventElapsedTime", err))?;
        *out(ms, "aclrtEventElapsedTime")? = t;
        Ok(())
    })
}

// ---- Virtual memory ----

const GRANULARITY: usize = hal_mock::VMM_GRANULARITY;

/// `aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop,
/// aclrtMemGranularityOptions option, size_t *granularity)`.
#[no_mangle]
pub extern "C" fn aclrtMemGetAllocationGranularity(
    prop: *mut ascend_prop::PhysicalMemProp,
    option: u32,
    granularity: *mut usize,
) -> i32 {
    call("aclrtMemGetAllocationGranularity", |_, _| {
        let p = *out(prop, "aclrtMemGetAllocationGranularity")?;
        if option > 1 || !matches!(p.mem_attr, 4 | 5) {
            return fail(
                code::INVALID_PARAM,
                format!(
                    "aclrtMemGetAllocationGranularity: option {option}, memAttr {}",
                    p.mem_attr
                ),
            );
        }
        *out(granularity, "aclrtMemGetAllocationGranularity")? = GRANULARITY;
        Ok(())
    })
}

/// `aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment, void
/// *expectPtr, uint64_t flags)`.
#[no_mangle]
pub extern "C" fn aclrtReserveMemAddress(
    va: *mut *mut c_void,
    size: usize,
    alignment: usize,
    expect: *mut c_void,
    flags: u64,
) -> i32 {
    call("aclrtReserveMemAddress", |mut g, _| {
        let slot = out(va, "aclrtReserveMemAddress")?;
        if size == 0 || alignment != 0 || !expect.is_null() || flags > 1 {
            return fail(
                code::INVALID_PARAM,
                format!(
                    "aclrtReserveMemAddress: size {size}, alignment {alignment}, expectPtr \
                     {expect:p}, flags {flags}"
                ),
            );
        }
        let d = current_device()?;
        let range = g.devices[d]
            .reserve_virtual(size.div_ceil(GRANULARITY) * GRANULARITY)
            .map_err(|e| from_hal("aclrtReserveMemAddress", e))?;
        let base = ascend_hal::VirtualRange::ptr(&range).0;
        g.ranges.insert(base, (d, range));
        *slot = base as usize as *mut c_void;
        Ok(())
    })
}

/// `aclError aclrtReleaseMemAddress(void *virPtr)`.
#[no_mangle]
pub extern "C" fn aclrtReleaseMemAddress(va: *mut c_void) -> i32 {
    call("aclrtReleaseMemAddress", |mut g, _| {
        let base = va as u64;
        if g.mappings.values().any(|&(r, _)| r == base) {
            return fail(
                code::RT_PARAM_INVALID,
                "aclrtReleaseMemAddress: the range is still mapped",
            );
        }
        match g.ranges.remove(&base) {
            Some(_) => Ok(()),
            None => fail(
                code::RT_PARAM_INVALID,
                format!("aclrtReleaseMemAddress: {va:p} is not a reserved range"),
            ),
        }
    })
}

/// `aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const
/// aclrtPhysicalMemProp *prop, uint64_t flags)`.
#[no_mangle]
pub extern "C" fn aclrtMallocPhysical(
    handle: *mut *mut c_void,
    size: usize,
    prop: *const ascend_prop::PhysicalMemProp,
    flags: u64,
) -> i32 {
    call("aclrtMallocPhysical", |mut g, _| {
        let slot = out(handle, "aclrtMallocPhysical")?;
        // SAFETY: a non-null property struct from the caller, by the C API's contract.
        let Some(p) = (unsafe { prop.as_ref() }).copied() else {
            return fail(code::INVALID_PARAM, "aclrtMallocPhysical: prop is NULL");
        };
        if size == 0
            || flags != 0
            || p.handle_type != 0
            || p.allocation_type != 0
            || p.location_type != 1
            || !matches!(p.mem_attr, 4 | 5)
        {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtMallocPhysical: size {size}, flags {flags}, prop {p:?}"),
            );
        }
        if !size.is_multiple_of(GRANULARITY) {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtMallocPhysical: {size} is not a multiple of the {GRANULARITY}-byte granularity"),
            );
        }
        let d = check_device(&g, p.location_id as i32, "aclrtMallocPhysical")?;
        let physical = g.devices[d]
            .allocate_physical(size)
            .map_err(|e| from_hal("aclrtMallocPhysical", e))?;
        let h = g.handle(crate::state::PHYSICAL_BASE);
        g.physical.insert(h, (d, physical));
        *slot = h as *mut c_void;
        Ok(())
    })
}

/// `aclError aclrtFreePhysical(aclrtDrvMemHandle handle)`.
#[no_mangle]
pub extern "C" fn aclrtFreePhysical(handle: *mut c_void) -> i32 {
    call("aclrtFreePhysical", |mut g, _| {
        match g.physical.remove(&(handle as usize)) {
            Some(_) => Ok(()),
            None => fail(
                code::RT_INVALID_HANDLE,
                format!("aclrtFreePhysical: {handle:p}"),
            ),
        }
    })
}

/// `aclError aclrtMapMem(void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle,
/// uint64_t flags)`.
#[no_mangle]
pub extern "C" fn aclrtMapMem(
    va: *mut c_void,
    size: usize,
    offset: usize,
    handle: *mut c_void,
    flags: u64,
) -> i32 {
    call("aclrtMapMem", |mut g, _| {
        let at = va as u64;
        let Some((&base, (d, range))) = g.ranges.range(..=at).next_back() else {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtMapMem: {va:p} is not in a reserved range"),
            );
        };
        let Some((pd, physical)) = g.physical.get(&(handle as usize)) else {
            return fail(
                code::RT_INVALID_HANDLE,
                format!("aclrtMapMem: handle {handle:p}"),
            );
        };
        if offset != 0
            || flags != 0
            || size != ascend_hal::PhysicalMemory::size(physical)
            || pd != d
        {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtMapMem: size {size}, offset {offset}, flags {flags} (the fake maps whole allocations)"),
            );
        }
        // SAFETY: the CPU backend checks that the target is inside the range and unmapped.
        unsafe { g.devices[*d].map(range, (at - base) as usize, physical) }
            .map_err(|e| from_hal("aclrtMapMem", e))?;
        g.mappings.insert(at, (base, (at - base) as usize));
        Ok(())
    })
}

/// `aclError aclrtUnmapMem(void *virPtr)`.
#[no_mangle]
pub extern "C" fn aclrtUnmapMem(va: *mut c_void) -> i32 {
    call("aclrtUnmapMem", |mut g, _| {
        let Some((base, offset)) = g.mappings.remove(&(va as u64)) else {
            return fail(
                code::INVALID_PARAM,
                format!("aclrtUnmapMem: nothing is mapped at {va:p}"),
            );
        };
        let (d, range) = &g.ranges[&base];
        // SAFETY: a mapping starts at `offset`; the caller made sure no work uses it.
        unsafe { g.devices[*d].unmap(range, offset) }.map_err(|e| from_hal("aclrtUnmapMem", e))
    })
}

/// The layout of `aclrtPhysicalMemProp`, as the fake reads it.
mod ascend_prop {
    /// `aclrtPhysicalMemProp` (32 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct PhysicalMemProp {
        pub handle_type: u32,
        pub allocation_type: u32,
        pub mem_attr: u32,
        pub location_id: u32,
        pub location_type: u32,
        pub reserve: u64,
    }
    const _: () = assert!(std::mem::size_of::<PhysicalMemProp>() == 32);
}

// ---- Control functions of the fake (not part of ACL) ----

pub(crate) fn c_str<'a>(p: *const c_char, function: &str) -> Outcome<&'a str> {
    if p.is_null() {
        return fail(code::INVALID_PARAM, format!("{function}: NULL string"));
    }
    // SAFETY: a non-null, NUL-terminated string from the caller, valid for this call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .or_else(|_| fail(code::INVALID_PARAM, format!("{function}: not UTF-8")))
}

/// Sets the simulated devices (`devices=N;memory=BYTES;soc=NAME`) before `aclInit`; returns
/// `ACL_ERROR_REPEAT_INITIALIZE` while initialised.
#[no_mangle]
pub extern "C" fn aclfakeConfigure(spec: *const c_char) -> i32 {
    call("aclfakeConfigure", |mut g, _| {
        // The spec is checked first: a bad one is refused whatever the state.
        let mut config = g.config.clone();
        config.apply(c_str(spec, "aclfakeConfigure")?)?;
        if g.initialized {
            return fail(
                code::REPEAT_INITIALIZE,
                "aclfakeConfigure: initialized; finalize first",
            );
        }
        g.config = config;
        g.reset_devices();
        Ok(())
    })
}

/// Replaces the fault plan: `function:n:code[:stream],...`, `n` counted from now on.
#[no_mangle]
pub extern "C" fn aclfakeSetFaults(spec: *const c_char) -> i32 {
    call("aclfakeSetFaults", |mut g, _| {
        let mut faults = crate::state::parse_faults(c_str(spec, "aclfakeSetFaults")?)?;
        for f in &mut faults {
            f.nth += g.calls.get(&f.function).copied().unwrap_or(0);
        }
        g.faults = faults;
        Ok(())
    })
}

/// How many times `function` was called in this process.
#[no_mangle]
pub extern "C" fn aclfakeCallCount(function: *const c_char) -> u64 {
    let Ok(name) = c_str(function, "aclfakeCallCount") else {
        return 0;
    };
    state().calls.get(name).copied().unwrap_or(0)
}

/// Marks a device lost: every later call on it fails with `ACL_ERROR_RT_LOST_HEARTBEAT`.
#[no_mangle]
pub extern "C" fn aclfakeLoseDevice(id: i32) -> i32 {
    call("aclfakeLoseDevice", |g, _| {
        let d = check_device(&g, id, "aclfakeLoseDevice")?;
        g.backend
            .lose_device(d)
            .map_err(|e| from_hal("aclfakeLoseDevice", e))
    })
}
