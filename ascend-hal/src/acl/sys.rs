//! Raw declarations of the ACL runtime C API, written from the public CANN headers
//! (`acl/acl_base.h`, `acl/acl_base_rt.h`, `acl/acl_rt.h`, `error_codes/rt_error_codes.h`; CANN
//! 8.5.0, ACL API 1.16.0, cross-checked against the 1.15.0 copy torch_npu vendors), and the table
//! of function pointers resolved from a loaded `libascendcl.so`.
//!
//! Only this file and `result.rs` touch these items. Every handle is `void *` in C; every C enum
//! is 4 bytes and passed as `i32`/`u32` constants, so a value a newer CANN returns can never be an
//! invalid Rust enum. With the `bindgen` feature and a toolkit installed, the build script
//! generates bindings from `$ASCEND_TOOLKIT_HOME/include` and `bindgen_check` makes the build fail
//! if any declaration here disagrees with them.

use std::ffi::{c_char, c_void};

/// `typedef int aclError;` (0 is success).
pub type AclErrorCode = i32;
/// `aclrtStream` (NULL is the default stream of the current context).
pub type AclrtStream = *mut c_void;
/// `aclrtEvent`.
pub type AclrtEvent = *mut c_void;
/// `aclrtContext`.
pub type AclrtContext = *mut c_void;
/// `aclrtDrvMemHandle` (a physical allocation, for the VMM calls).
pub type AclrtDrvMemHandle = *mut c_void;

/// `ACL_SUCCESS`.
pub const ACL_SUCCESS: AclErrorCode = 0;
/// `ACL_ERROR_REPEAT_INITIALIZE`: `aclInit` while already initialised.
pub const ACL_ERROR_REPEAT_INITIALIZE: AclErrorCode = 100_002;
/// `ACL_ERROR_REPEAT_FINALIZE`: `aclFinalize` after finalisation.
pub const ACL_ERROR_REPEAT_FINALIZE: AclErrorCode = 100_037;

/// `aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST`: huge pages above 1 MiB, normal pages else.
pub const ACL_MEM_MALLOC_HUGE_FIRST: u32 = 0;

/// `aclrtMemcpyKind` values.
pub const ACL_MEMCPY_HOST_TO_DEVICE: u32 = 1;
/// Device to host.
pub const ACL_MEMCPY_DEVICE_TO_HOST: u32 = 2;
/// Device to device.
pub const ACL_MEMCPY_DEVICE_TO_DEVICE: u32 = 3;

/// `aclDeviceInfo::ACL_DEVICE_INFO_VECTOR_CORE_NUM` (for `aclGetDeviceCapability`; `AI_CORE_NUM`
/// is 0, `L2_SIZE` 2): the vector cores (`vector_core_cnt` of the
/// SoC's platform .ini: 48 on a 910B1/B2, 40 on a 910B3/B4).
pub const ACL_DEVICE_INFO_VECTOR_CORE_NUM: i32 = 1;
/// `aclrtMemAttr::ACL_HBM_MEM`: huge + normal pages of HBM, for `aclrtGetMemInfo`.
pub const ACL_HBM_MEM: u32 = 1;

/// `aclrtEventRecordedStatus`: `ACL_EVENT_RECORDED_STATUS_COMPLETE` is 1 (NOT_READY is 0).
pub const ACL_EVENT_RECORDED_STATUS_COMPLETE: u32 = 1;
/// `aclrtStreamStatus`: `ACL_STREAM_STATUS_COMPLETE` is 0 (inverted against the event enum).
pub const ACL_STREAM_STATUS_COMPLETE: u32 = 0;

/// `ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE`: an event usable by `aclrtStreamWaitEvent` that also
/// records timestamps for `aclrtEventElapsedTime`.
pub const ACL_EVENT_SYNC_AND_TIME_LINE: u32 = 0x1 | 0x8;

/// `aclrtMemAttr::ACL_HBM_MEM_HUGE`: huge pages of HBM, for physical allocations.
pub const ACL_HBM_MEM_HUGE: u32 = 4;
/// `aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE`.
pub const ACL_MEM_LOCATION_TYPE_DEVICE: u32 = 1;
/// `aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED`.
pub const ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED: u32 = 1;
/// `flags` of `aclrtReserveMemAddress`: 1 = huge pages (matching ACL_HBM_MEM_HUGE memory).
pub const ACL_RESERVE_HUGE_PAGE: u64 = 1;

/// `aclCANNPackageName::ACL_PKG_NAME_CANN`.
pub const ACL_PKG_NAME_CANN: u32 = 0;
/// `aclCANNPackageName::ACL_PKG_NAME_DRIVER`.
pub const ACL_PKG_NAME_DRIVER: u32 = 7;

/// `aclCANNPackageVersion`: five NUL-terminated strings and a reserved tail (512 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AclCannPackageVersion {
    /// Full version, e.g. `8.0.0`.
    pub version: [c_char; 128],
    /// Major part.
    pub major_version: [c_char; 64],
    /// Minor part.
    pub minor_version: [c_char; 64],
    /// Release part.
    pub release_version: [c_char; 64],
    /// Patch part.
    pub patch_version: [c_char; 64],
    /// Reserved.
    pub reserved: [c_char; 128],
}
const _: () = assert!(std::mem::size_of::<AclCannPackageVersion>() == 512);

/// `aclrtMemLocation { uint32_t id; aclrtMemLocationType type; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclrtMemLocation {
    /// Device id.
    pub id: u32,
    /// `ACL_MEM_LOCATION_TYPE_DEVICE` = 1.
    pub type_: u32,
}
const _: () = assert!(std::mem::size_of::<AclrtMemLocation>() == 8);

/// `aclrtPhysicalMemProp` (32 bytes; 4 bytes of padding before `reserve`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclrtPhysicalMemProp {
    /// `ACL_MEM_HANDLE_TYPE_NONE` = 0.
    pub handle_type: u32,
    /// `ACL_MEM_ALLOCATION_TYPE_PINNED` = 0.
    pub allocation_type: u32,
    /// An `aclrtMemAttr`, e.g. `ACL_HBM_MEM_HUGE` = 4.
    pub mem_attr: u32,
    /// Where the memory lives.
    pub location: AclrtMemLocation,
    /// Must be 0.
    pub reserve: u64,
}
const _: () = assert!(std::mem::size_of::<AclrtPhysicalMemProp>() == 32);

/// Declares the function table: required symbols are plain function pointers (loading fails
/// without them); optional ones, newer than the baseline CANN, are `Option`s.
macro_rules! acl_api {
    (
        required { $( $(#[$rdoc:meta])* $rname:ident : fn($($rarg:ty),* $(,)?) -> $rret:ty; )* }
        optional { $( $(#[$odoc:meta])* $oname:ident : fn($($oarg:ty),* $(,)?) -> $oret:ty; )* }
    ) => {
        /// Function pointers resolved from a loaded ACL library. Valid while the library that
        /// produced them stays loaded (the runtime keeps both together).
        #[allow(non_snake_case)]
        pub struct AclApi {
            $( $(#[$rdoc])* pub $rname: unsafe extern "C" fn($($rarg),*) -> $rret, )*
            $( $(#[$odoc])* pub $oname: Option<unsafe extern "C" fn($($oarg),*) -> $oret>, )*
        }

        /// With the `bindgen` feature: fails to compile if a required declaration differs from
        /// the one generated from the installed toolkit's headers.
        #[cfg(feature = "bindgen")]
        #[allow(dead_code, clippy::type_complexity)]
        fn compare_with_headers() {
            $( let _: unsafe extern "C" fn($($rarg),*) -> $rret = super::bindgen_check::generated::$rname; )*
        }

        impl AclApi {
            /// Every required symbol, in declaration order.
            pub const REQUIRED: &'static [&'static str] = &[$(stringify!($rname)),*];

            /// Resolves every symbol; `Err(name)` names the first required one missing.
            ///
            /// # Safety
            /// 1. `lib` is an ACL runtime library (or a fake of it) whose exported symbols of
            ///    these names have exactly the declared C signatures.
            pub unsafe fn resolve(lib: &libloading::Library) -> Result<Self, &'static str> {
                Ok(AclApi {
                    $(
                        // SAFETY: the caller guarantees the symbol has this signature.
                        $rname: unsafe {
                            *lib.get::<unsafe extern "C" fn($($rarg),*) -> $rret>(
                                concat!(stringify!($rname), "\0").as_bytes(),
                            )
                            .map_err(|_| stringify!($rname))?
                        },
                    )*
                    $(
                        // SAFETY: as above; a missing optional symbol is `None`.
                        $oname: unsafe {
                            lib.get::<unsafe extern "C" fn($($oarg),*) -> $oret>(
                                concat!(stringify!($oname), "\0").as_bytes(),
                            )
                            .ok()
                            .map(|s| *s)
                        },
                    )*
                })
            }
        }
    };
}

acl_api! {
    required {
        /// `aclError aclInit(const char *configPath)`.
        aclInit: fn(*const c_char) -> AclErrorCode;
        /// `aclError aclFinalize()`.
        aclFinalize: fn() -> AclErrorCode;
        /// `const char *aclGetRecentErrMsg()` (thread-local; may be NULL).
        aclGetRecentErrMsg: fn() -> *const c_char;
        /// `aclError aclrtGetVersion(int32_t *major, int32_t *minor, int32_t *patch)`.
        aclrtGetVersion: fn(*mut i32, *mut i32, *mut i32) -> AclErrorCode;
        /// `const char *aclrtGetSocName()` (NULL on failure).
        aclrtGetSocName: fn() -> *const c_char;
        /// `aclError aclrtGetDeviceCount(uint32_t *count)`.
        aclrtGetDeviceCount: fn(*mut u32) -> AclErrorCode;
        /// `aclError aclrtSetDevice(int32_t deviceId)`.
        aclrtSetDevice: fn(i32) -> AclErrorCode;
        /// `aclError aclrtResetDevice(int32_t deviceId)`.
        aclrtResetDevice: fn(i32) -> AclErrorCode;
        /// `aclError aclrtGetCurrentContext(aclrtContext *context)`.
        aclrtGetCurrentContext: fn(*mut AclrtContext) -> AclErrorCode;
        /// `aclError aclrtSetCurrentContext(aclrtContext context)`.
        aclrtSetCurrentContext: fn(AclrtContext) -> AclErrorCode;
        /// `aclError aclrtSynchronizeDevice(void)`.
        aclrtSynchronizeDevice: fn() -> AclErrorCode;
        /// `aclError aclrtCreateStream(aclrtStream *stream)`.
        aclrtCreateStream: fn(*mut AclrtStream) -> AclErrorCode;
        /// `aclError aclrtDestroyStream(aclrtStream stream)`.
        aclrtDestroyStream: fn(AclrtStream) -> AclErrorCode;
        /// `aclError aclrtSynchronizeStream(aclrtStream stream)`.
        aclrtSynchronizeStream: fn(AclrtStream) -> AclErrorCode;
        /// `aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event)`.
        aclrtStreamWaitEvent: fn(AclrtStream, AclrtEvent) -> AclErrorCode;
        /// `aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag)`.
        aclrtCreateEventWithFlag: fn(*mut AclrtEvent, u32) -> AclErrorCode;
        /// `aclError aclrtDestroyEvent(aclrtEvent event)`.
        aclrtDestroyEvent: fn(AclrtEvent) -> AclErrorCode;
        /// `aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream)`.
        aclrtRecordEvent: fn(AclrtEvent, AclrtStream) -> AclErrorCode;
        /// `aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status)`.
        aclrtQueryEventStatus: fn(AclrtEvent, *mut u32) -> AclErrorCode;
        /// `aclError aclrtSynchronizeEvent(aclrtEvent event)`.
        aclrtSynchronizeEvent: fn(AclrtEvent) -> AclErrorCode;
        /// `aclError aclrtEventElapsedTime(float *ms, aclrtEvent start, aclrtEvent end)`.
        aclrtEventElapsedTime: fn(*mut f32, AclrtEvent, AclrtEvent) -> AclErrorCode;
        /// `aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)`.
        aclrtMalloc: fn(*mut *mut c_void, usize, u32) -> AclErrorCode;
        /// `aclError aclrtFree(void *devPtr)`.
        aclrtFree: fn(*mut c_void) -> AclErrorCode;
        /// `aclError aclrtMallocHost(void **hostPtr, size_t size)`.
        aclrtMallocHost: fn(*mut *mut c_void, usize) -> AclErrorCode;
        /// `aclError aclrtFreeHost(void *hostPtr)`.
        aclrtFreeHost: fn(*mut c_void) -> AclErrorCode;
        /// `aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count,
        /// aclrtMemcpyKind kind)`.
        aclrtMemcpy: fn(*mut c_void, usize, *const c_void, usize, u32) -> AclErrorCode;
        /// `aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count,
        /// aclrtMemcpyKind kind, aclrtStream stream)`.
        aclrtMemcpyAsync: fn(*mut c_void, usize, *const c_void, usize, u32, AclrtStream) -> AclErrorCode;
        /// `aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count,
        /// aclrtStream stream)`.
        aclrtMemsetAsync: fn(*mut c_void, usize, i32, usize, AclrtStream) -> AclErrorCode;
        /// `aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total)`.
        aclrtGetMemInfo: fn(u32, *mut usize, *mut usize) -> AclErrorCode;
    }
    optional {
        /// `aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo deviceInfo,
        /// int64_t *value)` (acl_base.h).
        aclGetDeviceCapability: fn(u32, i32, *mut i64) -> AclErrorCode;
        /// `aclError aclrtStreamQuery(aclrtStream stream, aclrtStreamStatus *status)` (~2023,
        /// CANN 7.x).
        aclrtStreamQuery: fn(AclrtStream, *mut u32) -> AclErrorCode;
        /// `aclError aclsysGetCANNVersion(aclCANNPackageName name, aclCANNPackageVersion *v)`
        /// (CANN 7.x/8.x; deprecated in 8.5).
        aclsysGetCANNVersion: fn(u32, *mut AclCannPackageVersion) -> AclErrorCode;
        /// `aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment,
        /// void *expectPtr, uint64_t flags)` (VMM, CANN 7.x).
        aclrtReserveMemAddress: fn(*mut *mut c_void, usize, usize, *mut c_void, u64) -> AclErrorCode;
        /// `aclError aclrtReleaseMemAddress(void *virPtr)`.
        aclrtReleaseMemAddress: fn(*mut c_void) -> AclErrorCode;
        /// `aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size,
        /// const aclrtPhysicalMemProp *prop, uint64_t flags)`.
        aclrtMallocPhysical: fn(*mut AclrtDrvMemHandle, usize, *const AclrtPhysicalMemProp, u64) -> AclErrorCode;
        /// `aclError aclrtFreePhysical(aclrtDrvMemHandle handle)`.
        aclrtFreePhysical: fn(AclrtDrvMemHandle) -> AclErrorCode;
        /// `aclError aclrtMapMem(void *virPtr, size_t size, size_t offset,
        /// aclrtDrvMemHandle handle, uint64_t flags)`.
        aclrtMapMem: fn(*mut c_void, usize, usize, AclrtDrvMemHandle, u64) -> AclErrorCode;
        /// `aclError aclrtUnmapMem(void *virPtr)`.
        aclrtUnmapMem: fn(*mut c_void) -> AclErrorCode;
        /// `aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop,
        /// aclrtMemGranularityOptions option, size_t *granularity)` (CANN 8.x).
        aclrtMemGetAllocationGranularity: fn(*mut AclrtPhysicalMemProp, u32, *mut usize) -> AclErrorCode;
    }
}
