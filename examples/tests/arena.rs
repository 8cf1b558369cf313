//! The example bump arena passes the allocator conformance suite, over a caching parent and over
//! a direct one, on the CPU backend; and rewinds per step.

use std::sync::Arc;

use ascend_examples::arena::BumpArena;
use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator};
use ascend_hal::conformance::allocator::AllocatorHarness;
use ascend_hal::prelude::*;
use hal_mock::{CpuBackend, CpuDevice, CpuStream, DeviceProfile};

fn backend() -> CpuBackend {
    CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 512 << 20))
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .poison_allocations(true)
        .build()
}

struct Arena {
    caching_parent: bool,
}

impl AllocatorHarness for Arena {
    type Backend = CpuBackend;
    type Allocator = BumpArena<CpuBackend>;
    fn backend(&self) -> CpuBackend {
        backend()
    }
    fn allocator(&self, device: &CpuDevice) -> BumpArena<CpuBackend> {
        let parent: Arc<dyn Allocator<CpuBackend>> = if self.caching_parent {
            Arc::new(CachingAllocator::new(device, Default::default()).unwrap())
        } else {
            Arc::new(DirectAllocator::new(device))
        };
        BumpArena::new(parent, 4 << 20)
    }
    fn hold_stream(&self, stream: &CpuStream) -> Option<Box<dyn FnOnce() + Send>> {
        let held = stream.hold().ok()?;
        Some(Box::new(move || held.release()))
    }
}

mod over_caching {
    ascend_hal::allocator_conformance_tests!(super::Arena {
        caching_parent: true
    });
}

mod over_direct {
    ascend_hal::allocator_conformance_tests!(super::Arena {
        caching_parent: false
    });
}

#[test]
fn a_step_reuses_the_previous_steps_memory() {
    let device = backend().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let arena = Arena {
        caching_parent: true,
    }
    .allocator(&device);
    let step = || {
        let a = DeviceBuffer::<CpuBackend, f32>::alloc_in(&arena, &stream, 1000).unwrap();
        let b = DeviceBuffer::<CpuBackend, f32>::alloc_in(&arena, &stream, 3000).unwrap();
        (a.block().unwrap().ptr(), b.block().unwrap().ptr())
    };
    let first = step();
    assert_eq!(
        first.1 .0 - first.0 .0,
        4096,
        "1000 f32 round up to 4096 bytes"
    );
    assert_eq!(step(), first, "the second step starts where the first did");
    let s = arena.stats();
    assert_eq!((s.num_allocs, s.cache_hits, s.segments), (4, 3, 1));
    assert_eq!((s.allocated, s.reserved), (0, 4 << 20));
    // A block used on another stream holds the lane back until that work is done.
    let other = device.new_stream().unwrap();
    let busy = other.hold().unwrap();
    let held = DeviceBuffer::<CpuBackend, u8>::alloc_in(&arena, &stream, 10).unwrap();
    let held_at = held.block().unwrap().ptr();
    held.record_stream(&other).unwrap();
    drop(held);
    let next = DeviceBuffer::<CpuBackend, u8>::alloc_in(&arena, &stream, 10).unwrap();
    assert_ne!(
        next.block().unwrap().ptr(),
        held_at,
        "rewound under queued work"
    );
    drop(next);
    busy.release();
    other.synchronize().unwrap();
    let after = DeviceBuffer::<CpuBackend, u8>::alloc_in(&arena, &stream, 10).unwrap();
    assert_eq!(
        after.block().unwrap().ptr(),
        held_at,
        "rewinds once the work is done"
    );
}

/// Every kernel op with its arguments from the arena over an expandable-segment parent, placed
/// across the parent's 2 MiB chunks (`ascend_kernels::conformance`).
#[test]
fn kernel_ops_across_seams_of_the_arena() {
    let backend = backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let parent: Arc<dyn Allocator<CpuBackend>> = Arc::new(
        CachingAllocator::new(&device, "expandable_segments:True".parse().unwrap()).unwrap(),
    );
    let arena = BumpArena::new(parent, 4 << 20);
    let report = ascend_kernels::conformance::every_op_across_seams::<CpuBackend>(&stream, &arena);
    assert_eq!(report.ops, 32);
    // A bump arena decides placement itself (a dropped probe can rewind its lane), so not
    // every argument lands across a seam; some must.
    assert!(
        report.straddling > 0,
        "arguments straddle chunk seams: {report:?}"
    );
}
