//! Extreme values (0, 1, `usize::MAX`, `u64::MAX`, NaN, ...) fed to every public constructor and
//! sizing function of `ascend-hal` and `hal-mock`: each returns an error or a sane value, never
//! a panic or an abort (a failed case would end the test process).

use std::sync::Arc;

use ascend_hal::alloc::{
    Allocator, AllocatorConfig, CachingAllocator, DirectAllocator, SharedAllocator,
};
use ascend_hal::prelude::*;
use hal_mock::{CpuBackend, DeviceProfile, MockOp, MAX_DEVICES};
use proptest::prelude::*;

/// Sizes that break careless arithmetic.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(511),
        Just(512),
        Just((2 << 20) - 1),
        Just(i32::MAX as usize),
        Just(u32::MAX as usize),
        Just(1 << 40),
        Just(usize::MAX / 2),
        Just(usize::MAX - 511),
        Just(usize::MAX - 1),
        Just(usize::MAX),
        0usize..100_000,
    ]
}

/// `len`, unless it is a size the mock could really allocate and fill (slow, and pointless
/// here): then a small one.
fn cheap(len: usize) -> usize {
    if len <= 1 << 16 || len >= 1 << 40 {
        len
    } else {
        1 << 16
    }
}

fn memory() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2 << 20),
        Just(64 << 20),
        Just(u64::MAX / 2),
        Just(u64::MAX),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1e-300),
        Just(0.5),
        Just(1.0),
        Just(1.5),
    ]
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        size().prop_map(|n| n.to_string()),
        float().prop_map(|f| f.to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("".to_string()),
        Just("True".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Buffers, pinned buffers and views of extreme lengths on a device of extreme size.
    #[test]
    fn buffers_and_views(total in memory(), len in size(), start in size(), end in size()) {
        let backend = CpuBackend::builder()
            .device(DeviceProfile::custom("Ascend910B4", total))
            .build();
        let device = backend.device(0).unwrap();
        let info = device.memory_info().unwrap();
        prop_assert!(info.free <= info.total);
        if let Ok(buf) = DeviceBuffer::<CpuBackend, f32>::alloc(&device, len) {
            prop_assert_eq!(buf.len(), len);
            let _ = buf.slice(start..end);
            let _ = buf.slice(start..);
        }
        let _ = PinnedBuffer::<CpuBackend, u8>::new(&device, len.min(1 << 36));
        let _ = PinnedBuffer::<CpuBackend, f32>::new(&device, len);
        let stream = device.new_stream().unwrap();
        let _ = DeviceBuffer::<CpuBackend, i64>::zeros(&stream, cheap(len));
        let _ = device.reserve_virtual(len);
        let _ = device.allocate_physical(len);
        let _ = ascend_hal::Device::allocate(&device, len);
        let _ = ascend_hal::Device::allocate_host(&device, len.min(1 << 36));
    }

    /// Every allocator with extreme requests and configurations.
    #[test]
    fn allocators(total in memory(), bytes in size(), len in size(), conf in number_text()) {
        let backend = CpuBackend::builder()
            .device(DeviceProfile::custom("Ascend910B4", total))
            .build();
        let device = backend.device(0).unwrap();
        let stream = device.new_stream().unwrap();
        for key in ["max_split_size_mb", "garbage_collection_threshold", "memory_fraction", "expandable_segments"] {
            let _ = format!("{key}:{conf}").parse::<AllocatorConfig>();
        }
        let mut allocators: Vec<SharedAllocator<CpuBackend>> = vec![Arc::new(DirectAllocator::new(&device))];
        for config in ["", "expandable_segments:True", "max_split_size_mb:20,garbage_collection_threshold:0.5"] {
            allocators.push(Arc::new(CachingAllocator::new(&device, config.parse().unwrap()).unwrap()));
        }
        for a in &allocators {
            let before = a.stats();
            match a.allocate(bytes, &stream) {
                Ok(block) => prop_assert!(block.size() >= bytes),
                Err(_) => {
                    let after = a.stats();
                    prop_assert_eq!(after.allocated, before.allocated);
                    prop_assert_eq!(after.num_allocs, before.num_allocs);
                }
            }
            let _ = DeviceBuffer::<CpuBackend, f32>::alloc_in(a.as_ref(), &stream, len);
            let _ = DeviceBuffer::<CpuBackend, u8>::zeros_in(a.as_ref(), &stream, cheap(len));
            a.empty_cache().unwrap();
        }
    }

    /// Backend construction and fault plans.
    #[test]
    fn backends_and_faults(count in size(), total in memory(), n in prop_oneof![Just(0u64), Just(1), Just(u64::MAX)]) {
        let backend = CpuBackend::builder()
            .devices(count.min(1 << 20), DeviceProfile::custom("x", total))
            .build();
        let devices = backend.device_count().unwrap();
        prop_assert!(devices <= MAX_DEVICES);
        let _ = backend.device(count);
        let _ = backend.lose_device(count);
        for op in [MockOp::Allocate, MockOp::Record, MockOp::Synchronize] {
            let _ = backend.faults().fail_nth(op, n);
        }
        backend.faults().fail_allocations_above(Some(n));
        backend.faults().clear();
    }
}
