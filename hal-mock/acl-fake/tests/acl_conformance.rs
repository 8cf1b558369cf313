//! The backend-independent conformance suite, run on the ACL backend over the fake runtime,
//! through the same dynamic-loading path as the real `libascendcl.so`.

mod common;

use ascend_hal::acl::AclBackend;

struct Acl;

impl ascend_hal::conformance::Harness for Acl {
    type Backend = AclBackend;

    fn backend(&self) -> AclBackend {
        common::backend()
    }

    // Losing a device of the process-wide fake would break the other checks of this binary;
    // `acl_lost_device.rs` runs that check in a process of its own.

    fn serialize(&self) -> bool {
        true
    }
}

ascend_hal::conformance_tests!(Acl);
