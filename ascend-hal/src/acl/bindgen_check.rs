//! With the `bindgen` feature: the declarations bindgen generated from the installed toolkit's
//! headers (by `build.rs`), and compile-time comparisons with the hand-written ones in `sys.rs`.
//! Every required function is compared by the `acl_api!` macro; here are the optional functions
//! whose arguments are plain, and the struct layouts.

#[allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_docs,
    clippy::all
)]
pub(crate) mod generated {
    include!(concat!(env!("OUT_DIR"), "/acl_bindgen.rs"));
}

use super::sys;
use std::ffi::c_void;
use std::mem::size_of;

const _: unsafe extern "C" fn(sys::AclrtStream, *mut u32) -> i32 = generated::aclrtStreamQuery;
const _: unsafe extern "C" fn(*mut c_void) -> i32 = generated::aclrtReleaseMemAddress;
const _: unsafe extern "C" fn(*mut c_void) -> i32 = generated::aclrtUnmapMem;
const _: unsafe extern "C" fn(sys::AclrtDrvMemHandle) -> i32 = generated::aclrtFreePhysical;
const _: () =
    assert!(size_of::<generated::aclrtPhysicalMemProp>() == size_of::<sys::AclrtPhysicalMemProp>());
const _: () =
    assert!(size_of::<generated::aclrtMemLocation>() == size_of::<sys::AclrtMemLocation>());
const _: () = assert!(
    size_of::<generated::aclCANNPackageVersion>() == size_of::<sys::AclCannPackageVersion>()
);
const _: () = assert!(generated::ACL_MEM_MALLOC_HUGE_FIRST == sys::ACL_MEM_MALLOC_HUGE_FIRST);
const _: () = assert!(generated::ACL_MEMCPY_HOST_TO_DEVICE == sys::ACL_MEMCPY_HOST_TO_DEVICE);
const _: () = assert!(generated::ACL_MEMCPY_DEVICE_TO_HOST == sys::ACL_MEMCPY_DEVICE_TO_HOST);
const _: () = assert!(generated::ACL_MEMCPY_DEVICE_TO_DEVICE == sys::ACL_MEMCPY_DEVICE_TO_DEVICE);
const _: () = assert!(generated::ACL_HBM_MEM == sys::ACL_HBM_MEM);
