//! The allocator conformance suite on the ACL backend over the fake runtime: the direct and the
//! caching allocators (ordinary and expandable segments) through real ACL calls.

mod common;

use ascend_hal::acl::{AclBackend, AclDevice};
use ascend_hal::alloc::{CachingAllocator, DirectAllocator};
use ascend_hal::conformance::allocator::AllocatorHarness;

struct Direct;
impl AllocatorHarness for Direct {
    type Backend = AclBackend;
    type Allocator = DirectAllocator<AclBackend>;
    fn backend(&self) -> AclBackend {
        common::backend()
    }
    fn allocator(&self, device: &AclDevice) -> Self::Allocator {
        DirectAllocator::new(device)
    }
    // One process-wide fake: each check's memory accounting must not see another's.
    fn serialize(&self) -> bool {
        true
    }
}

struct Caching(&'static str);
impl AllocatorHarness for Caching {
    type Backend = AclBackend;
    type Allocator = CachingAllocator<AclBackend>;
    fn backend(&self) -> AclBackend {
        common::backend()
    }
    fn allocator(&self, device: &AclDevice) -> Self::Allocator {
        CachingAllocator::new(device, self.0.parse().unwrap()).unwrap()
    }
    fn serialize(&self) -> bool {
        true
    }
}

mod direct {
    ascend_hal::allocator_conformance_tests!(super::Direct);
}

mod caching {
    ascend_hal::allocator_conformance_tests!(super::Caching(""));
}

mod caching_expandable {
    ascend_hal::allocator_conformance_tests!(super::Caching("expandable_segments:True"));
}
