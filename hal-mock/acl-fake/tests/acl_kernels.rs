//! The ACL backend's kernel ops in a build without the NPU kernels library (no CANN here): every
//! op fails before anything is queued, with an error that says what to install and enable, and
//! the stream stays usable.

mod common;

use ascend_hal::acl::AclBackend;
use ascend_hal::prelude::*;
use ascend_hal::Error;
use ascend_kernels::{ascendc, KernelOps, RmsNorm};
use half::bf16;

#[test]
fn kernel_ops_say_how_to_get_the_npu_kernels() {
    assert!(
        std::env::var_os("ASCEND_KERNELS_LIB").is_none(),
        "this test checks the build without a kernels library; unset ASCEND_KERNELS_LIB"
    );
    let backend = common::backend();
    let stream = backend.device(0).unwrap().new_stream().unwrap();
    assert_eq!(AclBackend::kernels_available(), Err(ascendc::NOT_BUILT));

    let p = RmsNorm {
        num_tokens: 2,
        hidden: 64,
        eps: 1e-6,
    };
    // The fused norm is an Ascend C op by default (see acl::providers).
    let mut x = DeviceBuffer::<AclBackend, f32>::from_slice(&stream, &[1.0; 128]).unwrap();
    let w = DeviceBuffer::<AclBackend, f32>::from_slice(&stream, &[1.0; 64]).unwrap();
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 128).unwrap();
    let e = AclBackend::fused_add_rms_norm(&stream, &p, x.view_mut(), out.view_mut(), w.view())
        .unwrap_err();
    match &e {
        Error::KernelUnavailable {
            backend,
            op,
            reason,
        } => {
            assert_eq!((*backend, *op), ("acl", "fused_add_rms_norm"));
            assert_eq!(*reason, ascendc::NOT_BUILT);
        }
        other => panic!("expected KernelUnavailable, got {other:?}"),
    }
    let text = e.to_string();
    for needle in [
        "install the CANN toolkit",
        "set_env.sh",
        "`ascend-c` feature",
        "ASCEND_KERNELS_LIB",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    // Nothing was queued; the output is untouched and the stream still works.
    stream.synchronize().unwrap();
    assert_eq!(stream.clone_to_host(&out).unwrap(), vec![0.0; 128]);

    // bf16 is refused for its own reason only once a library exists; without one the reason is
    // still the missing build.
    let mut xb = DeviceBuffer::<AclBackend, bf16>::zeros(&stream, 128).unwrap();
    let wb = DeviceBuffer::<AclBackend, bf16>::zeros(&stream, 64).unwrap();
    let mut ob = DeviceBuffer::<AclBackend, bf16>::zeros(&stream, 128).unwrap();
    let e = AclBackend::fused_add_rms_norm(&stream, &p, xb.view_mut(), ob.view_mut(), wb.view())
        .unwrap_err();
    assert!(matches!(e, Error::KernelUnavailable { reason, .. } if reason == ascendc::NOT_BUILT));
}
