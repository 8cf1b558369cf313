//! Every kernel op of the ACL backend over the fake (ACLNN operators from the fake, Ascend C
//! kernels from the host kernels library) with its arguments across the seams of each
//! allocator's memory (`ascend_kernels::conformance`). With expandable segments every argument
//! straddles a 2 MiB chunk mapped by `aclrtMapMem`, so the fake must give a kernel one coherent
//! view of memory whose chunks are separate host allocations.

mod common;

use std::sync::{Mutex, Once};

use ascend_hal::acl::{AclBackend, AclDevice};
use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator};
use ascend_hal::prelude::*;
use ascend_kernels::ascendc;
use ascend_kernels::conformance::every_op_across_seams;

/// One process-wide fake: the runs take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(make: impl FnOnce(&AclDevice) -> Box<dyn Allocator<AclBackend>>) -> (usize, usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    static SET: Once = Once::new();
    SET.call_once(|| {
        let fake = common::fake_path();
        // SAFETY: every test of this binary starts here, under SERIAL, before the backend loads.
        unsafe {
            std::env::set_var("ASCEND_KERNELS_LIB", ascendc::HOST_KERNELS_LIB);
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &fake);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &fake);
        }
    });
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let alloc = make(&device);
    let report = every_op_across_seams::<AclBackend>(&stream, alloc.as_ref());
    assert_eq!(report.ops, 22, "every op ran, for f32 and f16");
    (report.arguments, report.straddling)
}

#[test]
fn direct_allocator() {
    run(|d| Box::new(DirectAllocator::new(d)));
}

#[test]
fn caching_allocator() {
    run(|d| Box::new(CachingAllocator::new(d, "".parse().unwrap()).unwrap()));
}

#[test]
fn caching_allocator_with_expandable_segments() {
    let (arguments, straddling) = run(|d| {
        Box::new(CachingAllocator::new(d, "expandable_segments:True".parse().unwrap()).unwrap())
    });
    assert_eq!(
        straddling, arguments,
        "every argument straddles a 2 MiB chunk of the expandable segment"
    );
}
