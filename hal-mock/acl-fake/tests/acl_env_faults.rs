//! Fault injection from the environment (`ACL_FAKE_FAULTS`), read when the fake is first used;
//! alone in its process because it sets the variable before that.

mod common;

use ascend_hal::acl::AclBackend;
use ascend_hal::prelude::*;

#[test]
fn faults_from_the_environment() {
    // Nothing in this process has touched the fake yet: its state is created on first use.
    std::env::set_var(
        "ACL_FAKE_FAULTS",
        "aclrtMalloc:2:207001,aclrtSynchronizeStream:2:507011",
    );
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let first = DeviceBuffer::<AclBackend, f32>::alloc(&device, 16).unwrap();
    let err = DeviceBuffer::<AclBackend, f32>::alloc(&device, 16).unwrap_err();
    assert!(err.is_out_of_memory(), "{err:?}");
    assert!(
        err.to_string().contains("ACL_ERROR_RT_MEMORY_ALLOCATION"),
        "{err}"
    );

    stream.synchronize().unwrap();
    let err = stream.synchronize().unwrap_err();
    assert_eq!(err.acl_code(), Some(507_011), "{err}");
    assert!(
        err.to_string().contains("ACL_ERROR_RT_MODEL_EXECUTE"),
        "{err}"
    );
    stream.synchronize().unwrap();
    drop(first);
}
