//! Extreme values fed to every public constructor and sizing function of `paged-kv`: each
//! returns an error or a sane value, never a panic or an abort.

use ascend_hal::DType;
use hal_mock::{CpuBackend, DeviceProfile};
use paged_kv::{
    BlockPool, KvCache, KvCacheConfig, KvCacheManager, KvCacheSpec, ManagerConfig, MemoryBudget,
    RequestId, RequestKeys,
};
use proptest::prelude::*;

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(3),
        Just(16),
        Just(128),
        Just(i32::MAX as usize),
        Just(u32::MAX as usize),
        Just(u32::MAX as usize - 1),
        Just(usize::MAX / 2),
        Just(usize::MAX),
        0usize..2_000,
    ]
}

fn bytes() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(64 << 20),
        Just(64 << 30),
        Just(u64::MAX / 2),
        Just(u64::MAX)
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(0.9),
        Just(1.0),
        Just(1.0 + f64::EPSILON),
    ]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F16), Just(DType::F32), Just(DType::BF16)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Spec arithmetic and sizing.
    #[test]
    fn sizing(layers in size(), heads in size(), head in size(), block in size(), dt in dtype(),
              total in bytes(), util in float(), peak in bytes(), len in size(), n in size()) {
        let spec = KvCacheSpec::new(layers, heads, head, dt).with_block_size(block);
        let _ = spec.bytes_per_block();
        let _ = spec.checked_bytes_per_block();
        let _ = spec.layer_elements(n);
        let _ = spec.blocks_for_model_len(len);
        if let Ok(s) = spec.size_for(&MemoryBudget { total_memory: total, utilization: util, non_kv_peak: peak, max_model_len: len }) {
            prop_assert!(s.num_blocks >= 2, "{s:?}");
            let _ = (s.to_string(), s.num_tokens(), s.total_bytes());
        }
    }

    /// Pools and managers of extreme sizes, and tables with extreme padding.
    #[test]
    fn pools_managers_tables(blocks in size(), block in size(), watermark in float(),
                             alloc in size(), pad in size(), width in size()) {
        // Small pools are built; ids past u32 are refused. (Sizes between would really
        // allocate gigabytes of bookkeeping, or fail to: `try_reserve` turns that into an
        // error too, but whether it fails depends on the machine.)
        if blocks >= u32::MAX as usize {
            prop_assert!(BlockPool::new(blocks).is_err());
        } else if let Ok(mut pool) = BlockPool::new(blocks.min(1 << 20)) {
            let free = pool.num_free();
            if pool.allocate(alloc).is_err() {
                prop_assert_eq!(pool.num_free(), free);
            }
        }
        let config = ManagerConfig::new(blocks, block).with_watermark(watermark);
        prop_assert!(config.watermark_blocks <= blocks);
        if blocks <= 1 << 20 || blocks >= u32::MAX as usize {
            if let Ok(mut kv) = KvCacheManager::new(config) {
                let id = RequestId(1);
                if kv.admit(id, &[1, 2, 3], &RequestKeys::default(), usize::MAX).is_ok() {
                    let _ = kv.batch_tables(&[(id, 3)], Some(pad), Some(width));
                    let _ = kv.batch_tables(&[(id, usize::MAX)], None, None);
                }
            }
        }
    }

    /// The device cache with extreme configurations on a small device.
    #[test]
    fn device_cache(layers in 0usize..4, block in size(), max_blocks in prop::option::of(size()),
                    len in size(), swap in size(), util in float(), peak in bytes()) {
        let backend = CpuBackend::builder()
            .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
            .build();
        let device = ascend_hal::Backend::device(&backend, 0).unwrap();
        let stream = ascend_hal::Device::new_stream(&device).unwrap();
        let spec = KvCacheSpec::new(layers, 2, 8, DType::F32).with_block_size(block);
        let config = KvCacheConfig {
            utilization: util,
            activation_peak: peak,
            max_model_len: len,
            max_blocks,
            enable_prefix_caching: true,
            swap_blocks: swap,
            enable_kv_cache_events: true,
        };
        let before = ascend_hal::Device::memory_info(&device).unwrap();
        match KvCache::<CpuBackend, f32>::new(&stream, spec, config) {
            Ok(kv) => prop_assert!(kv.sizing().num_blocks >= 2),
            Err(_) => prop_assert_eq!(ascend_hal::Device::memory_info(&device).unwrap(), before),
        }
    }
}
