//! The conformance suite's lost-device check on the ACL backend, alone in its process because
//! it breaks a device of the process-wide fake runtime.

mod common;

use ascend_hal::acl::AclBackend;

struct Acl;

impl ascend_hal::conformance::Harness for Acl {
    type Backend = AclBackend;

    fn backend(&self) -> AclBackend {
        common::backend()
    }

    fn lose_device(&self, _backend: &AclBackend, ordinal: usize) -> bool {
        lose(ordinal as i32);
        true
    }
}

fn lose(ordinal: i32) {
    // SAFETY: the fake exports `int32_t aclfakeLoseDevice(int32_t)`; the library stays loaded.
    let code = unsafe {
        let lib = common::library(&common::fake_path());
        let f: libloading::Symbol<'_, unsafe extern "C" fn(i32) -> i32> =
            lib.get(b"aclfakeLoseDevice").unwrap();
        f(ordinal)
    };
    assert_eq!(code, 0);
}

#[test]
fn lost_device() {
    ascend_hal::conformance::lost_device(&Acl);
}
