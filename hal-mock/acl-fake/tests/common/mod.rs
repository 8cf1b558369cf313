//! Shared by the ACL-over-fake test binaries: finding, configuring and loading the fake.
#![allow(dead_code)]

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

use ascend_hal::acl::AclBackend;

/// The fake's path; configures it once (two 256 MiB Ascend910B4 devices) before any `aclInit`.
pub fn fake_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = ascendcl_fake::library_path()
            .expect("libascendcl_fake.so is built with the acl-fake crate's tests");
        let code = call_str(
            &path,
            "aclfakeConfigure",
            "devices=2;memory=268435456;soc=Ascend910B4",
        );
        assert!(
            code == 0 || code == 100_002,
            "aclfakeConfigure returned {code}"
        );
        path
    })
    .clone()
}

/// Points the ACL backend's ACLNN libraries (`libnnopbase.so`, `libopapi.so`) at the fake,
/// once per test binary. Tests call it before anything reads the environment.
pub fn use_fake_aclnn() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let fake = fake_path();
        // SAFETY: set once, before any test of this binary reads the environment (the
        // caller's contract above).
        unsafe {
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &fake);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &fake);
        }
    });
}

/// The ACL backend over the fake.
pub fn backend() -> AclBackend {
    AclBackend::load_from(fake_path()).expect("the ACL backend loads the fake")
}

/// The fake, opened once for the control calls of the tests and kept loaded.
pub fn library(path: &PathBuf) -> &'static libloading::Library {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    // SAFETY: the fake's initialisers only set up its own state.
    LIB.get_or_init(|| unsafe { libloading::Library::new(path) }.unwrap())
}

/// Calls `int32_t f(const char*)` in the fake.
pub fn call_str(path: &PathBuf, function: &str, arg: &str) -> i32 {
    let arg = CString::new(arg).unwrap();
    // SAFETY: the fake exports `function` as `int32_t (*)(const char *)`, and stays loaded.
    unsafe {
        let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
            library(path).get(function.as_bytes()).unwrap();
        f(arg.as_ptr())
    }
}

/// Calls `uint64_t aclfakeCallCount(const char*)`.
pub fn call_count(function: &str) -> u64 {
    let arg = CString::new(function).unwrap();
    // SAFETY: as in `call_str`, for `uint64_t (*)(const char *)`.
    unsafe {
        let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> u64> =
            library(&fake_path()).get(b"aclfakeCallCount").unwrap();
        f(arg.as_ptr())
    }
}

/// Replaces the fake's fault plan.
pub fn set_faults(spec: &str) {
    assert_eq!(
        call_str(&fake_path(), "aclfakeSetFaults", spec),
        0,
        "fault spec {spec}"
    );
}

/// Deterministic values in [-1, 1).
pub fn values<T: ascend_kernels::KvFloat>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f32((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// The largest elementwise difference of two equally long results.
pub fn max_diff<T: ascend_kernels::KvFloat>(a: &[T], b: &[T]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f32() - y.to_f32()).abs())
        .fold(0.0, f32::max)
}

/// `v` on the device of `s`.
pub fn up<T: ascend_hal::Element>(
    s: &ascend_hal::acl::AclStream,
    v: &[T],
) -> ascend_hal::DeviceBuffer<AclBackend, T> {
    ascend_hal::DeviceBuffer::from_slice(s, v).unwrap()
}
