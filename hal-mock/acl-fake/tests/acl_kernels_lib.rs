//! A kernels library that cannot be loaded is reported with its path and the loader's reason
//! (in a process of its own: the library is looked up once per process).

mod common;

use ascend_hal::acl::AclBackend;
use ascend_hal::prelude::*;
use ascend_hal::Error;
use ascend_kernels::{KernelOps, RmsNorm};

#[test]
fn an_unloadable_kernels_library_is_named() {
    let path = std::env::temp_dir().join("no-such-dir/libascendc_kernels.so");
    // SAFETY: the only test of this binary, run before any other thread reads the environment.
    unsafe { std::env::set_var("ASCEND_KERNELS_LIB", &path) };
    let backend = common::backend();
    let stream = backend.device(0).unwrap().new_stream().unwrap();
    let reason = AclBackend::kernels_available().unwrap_err();
    assert!(
        reason.starts_with(&format!(
            "could not load the Ascend C kernels library {}",
            path.display()
        )),
        "{reason}"
    );
    let p = RmsNorm {
        num_tokens: 1,
        hidden: 64,
        eps: 1e-6,
    };
    let w = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 64).unwrap();
    let mut x = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 64).unwrap();
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 64).unwrap();
    let e = AclBackend::fused_add_rms_norm(&stream, &p, x.view_mut(), out.view_mut(), w.view())
        .unwrap_err();
    assert!(
        matches!(e, Error::KernelUnavailable { op: "fused_add_rms_norm", reason: r, .. } if r == reason),
        "{e}"
    );
}
