//! Every kernel op of the CPU backend with its arguments across the seams of each allocator's
//! memory (`ascend_kernels::conformance`): the direct allocator, the caching allocator, and the
//! caching allocator with expandable segments, whose 2 MiB chunks every argument straddles.

use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator};
use ascend_hal::prelude::*;
use ascend_kernels::conformance::every_op_across_seams;
use hal_mock::{CpuBackend, DeviceProfile};

fn run(
    make: impl FnOnce(&hal_mock::CpuDevice) -> Box<dyn Allocator<CpuBackend>>,
) -> (usize, usize) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 1 << 30))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let alloc = make(&device);
    let report = every_op_across_seams::<CpuBackend>(&stream, alloc.as_ref());
    assert_eq!(report.ops, 32, "every op ran, for f32 and f16");
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
