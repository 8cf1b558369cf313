//! What several test binaries of the examples share: the ACL backend over the fake, and the
//! real model from the cache.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;

use hal_mock::CpuBackend;

/// Configures the fake (`aclfakeConfigure`, e.g. `devices=4`) before the binary's first
/// `aclInit`; call before [`acl_backend`].
pub fn configure_fake(spec: &str) {
    let path =
        ascendcl_fake::library_path().expect("libascendcl_fake.so is built as a dev-dependency");
    // SAFETY: the fake's initialisers only set up its own state; it stays loaded (leaked).
    let lib = Box::leak(Box::new(
        unsafe { libloading::Library::new(&path) }.unwrap(),
    ));
    let spec = std::ffi::CString::new(spec).unwrap();
    // SAFETY: `aclfakeConfigure` is `int32_t (*)(const char *)`.
    let code = unsafe {
        let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
            lib.get(b"aclfakeConfigure").unwrap();
        f(spec.as_ptr())
    };
    assert_eq!(code, 0, "aclfakeConfigure({spec:?})");
}

/// How many times the loaded fake's C function `name` has been called (`aclfakeCallCount`).
pub fn fake_call_count(name: &str) -> u64 {
    let path =
        ascendcl_fake::library_path().expect("libascendcl_fake.so is built as a dev-dependency");
    // SAFETY: loading an already loaded library returns the same instance; kept loaded.
    let lib = Box::leak(Box::new(
        unsafe { libloading::Library::new(&path) }.unwrap(),
    ));
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `aclfakeCallCount` is `uint64_t (*)(const char *)`.
    unsafe {
        let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> u64> =
            lib.get(b"aclfakeCallCount").unwrap();
        f(name.as_ptr())
    }
}

/// The ACL backend over the fake, with the host kernels library standing in for the CANN build
/// of the Ascend C kernels and the fake for the ACLNN and HCCL libraries: the whole NPU path of
/// a decode step.
pub fn acl_backend() -> ascend_hal::acl::AclBackend {
    let path =
        ascendcl_fake::library_path().expect("libascendcl_fake.so is built as a dev-dependency");
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        // SAFETY: set once, before the first ACL use of this test binary; the tests that read
        // the environment (the backend's loaders) all come through here first.
        unsafe {
            std::env::set_var(
                "ASCEND_KERNELS_LIB",
                ascend_kernels::ascendc::HOST_KERNELS_LIB,
            );
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &path);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &path);
            std::env::set_var("ASCEND_HAL_HCCL_LIB", &path);
        }
    });
    let discovery = ascend_hal::discover_using(
        ascend_hal::BackendPreference::Auto,
        || ascend_hal::acl::AclBackend::load_from(&path),
        || Ok(CpuBackend::new()),
    )
    .unwrap();
    assert_eq!(discovery.name(), "acl");
    match discovery.backend {
        ascend_hal::Discovered::Acl(b) => b,
        ascend_hal::Discovered::Fallback(_) => unreachable!("checked above"),
    }
}

/// SmolLM2-135M-Instruct from the model cache, or `None` (the test then skips, saying so)
/// unless `ASCEND_RS_REQUIRE_MODELS` is set, as `.ci/run` sets it: then a missing model fails.
pub fn smollm2_or_skip() -> Option<PathBuf> {
    let path = ascend_examples::llm::smollm2_path();
    if path.is_none() {
        assert!(
            std::env::var_os("ASCEND_RS_REQUIRE_MODELS").is_none(),
            "ASCEND_RS_REQUIRE_MODELS is set but the model is not in the cache; run \
             scripts/fetch-smollm2.sh"
        );
        eprintln!("skipped: no model; run scripts/fetch-smollm2.sh (as .ci/run does)");
    }
    path
}
