//! The caching allocator on the CPU backend: size classes, best fit, splitting and merging,
//! stream-ordered reuse, expandable segments, out-of-memory handling, and a property test of
//! random operation sequences against the allocator's own accounting.

use ascend_hal::alloc::{AllocatorStats, CachingAllocator, MemoryBlock, MemorySnapshot};
use ascend_hal::prelude::*;
use hal_mock::{CpuBackend, CpuDevice, CpuStream, DeviceProfile};
use proptest::prelude::*;

const MIB: usize = 1 << 20;

fn device(mib: u64) -> (CpuBackend, CpuDevice) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", mib << 20))
        .build();
    let device = backend.device(0).unwrap();
    (backend, device)
}

fn allocator(device: &CpuDevice, config: &str) -> CachingAllocator<CpuBackend> {
    CachingAllocator::new(device, config.parse().unwrap()).unwrap()
}

/// Checks that the snapshot and the stats tell the same story, and returns the live blocks.
fn check_accounting(a: &CachingAllocator<CpuBackend>) -> (AllocatorStats, MemorySnapshot) {
    let stats = a.stats();
    let snap = a.snapshot();
    let mut reserved = 0u64;
    let (mut allocated, mut pending, mut free) = (0u64, 0u64, 0u64);
    for seg in &snap.segments {
        reserved += seg.size as u64;
        let mut at = seg.ptr.0;
        for b in &seg.blocks {
            assert_eq!(
                b.ptr.0, at,
                "blocks of a segment must be contiguous: {seg:?}"
            );
            at += b.size as u64;
            match b.state {
                "allocated" => allocated += b.size as u64,
                "pending" => pending += b.size as u64,
                _ => free += b.size as u64,
            }
        }
        assert_eq!(
            at,
            seg.ptr.0 + seg.size as u64,
            "blocks must cover the segment"
        );
    }
    assert_eq!(stats.reserved, reserved, "reserved");
    assert_eq!(stats.allocated, allocated, "allocated");
    assert_eq!(stats.active, allocated + pending, "active");
    assert_eq!(
        reserved,
        allocated + pending + free,
        "every byte is in one state"
    );
    assert_eq!(stats.segments, snap.segments.len());
    (stats, snap)
}

#[test]
fn rounding_pools_reuse_and_cache_hits() {
    let (_b, device) = device(256);
    let a = allocator(&device, "");
    let s = device.new_stream().unwrap();
    let x = a.allocate(1, &s).unwrap();
    assert_eq!(x.size(), 512);
    let (stats, snap) = check_accounting(&a);
    assert_eq!(stats.reserved, (2 * MIB - 512) as u64, "one small segment");
    assert_eq!(snap.segments[0].blocks.len(), 2, "split off the rest");
    let y = a.allocate(1000, &s).unwrap();
    assert_eq!(y.size(), 1024);
    assert_eq!(
        y.ptr().0,
        x.ptr().0 + 512,
        "best fit takes the split remainder"
    );
    let big = a.allocate(5 * MIB, &s).unwrap();
    let (stats, _) = check_accounting(&a);
    assert_eq!(
        stats.reserved,
        (2 * MIB - 512 + 20 * MIB - 512) as u64,
        "a 20 MiB large segment"
    );
    assert_eq!(stats.cache_hits, 1);
    let big_ptr = big.ptr();
    drop(big);
    let again = a.allocate(5 * MIB, &s).unwrap();
    assert_eq!(
        again.ptr(),
        big_ptr,
        "freed on the same stream: reused at once"
    );
    assert_eq!(a.stats().cache_hits, 2);
    // Another stream does not take the first stream's free blocks.
    let other = device.new_stream().unwrap();
    drop(again);
    let theirs = a.allocate(5 * MIB, &other).unwrap();
    assert_ne!(theirs.ptr(), big_ptr);
    assert_eq!(a.stats().segments, 3);
    drop((x, y, theirs));
    a.empty_cache().unwrap();
    let (stats, _) = check_accounting(&a);
    assert_eq!((stats.reserved, stats.segments), (0, 0));
    assert_eq!(device.memory_info().unwrap().used(), 0);
    assert_eq!(stats.peak_allocated, (512 + 1024 + 5 * MIB) as u64);
}

#[test]
fn freed_neighbours_merge() {
    let (_b, device) = device(64);
    let a = allocator(&device, "");
    let s = device.new_stream().unwrap();
    let blocks: Vec<_> = (0..4).map(|_| a.allocate(100 << 10, &s).unwrap()).collect();
    let mut blocks: Vec<Option<MemoryBlock<CpuBackend>>> = blocks.into_iter().map(Some).collect();
    for i in [1, 3, 2, 0] {
        blocks[i] = None;
    }
    let (stats, snap) = check_accounting(&a);
    assert_eq!(stats.allocated, 0);
    assert_eq!(snap.segments[0].blocks.len(), 1, "all merged: {snap:?}");
    assert_eq!(stats.fragmentation, 0.0);
    assert_eq!(stats.largest_free_block, stats.reserved);
}

#[test]
fn blocks_used_on_other_streams_wait_for_their_events() {
    let (_b, device) = device(64);
    let a = allocator(&device, "");
    let s = device.new_stream().unwrap();
    let user = device.new_stream().unwrap();
    let block = a.allocate(256 << 10, &s).unwrap();
    let ptr = block.ptr();
    // The other stream is busy with (simulated) work on the block until the gate opens.
    let open = user.hold().unwrap();
    a.record_stream(&block, &user).unwrap();
    drop(block);
    let (stats, snap) = check_accounting(&a);
    assert_eq!(stats.active, (256 << 10) as u64, "pending, not free");
    assert!(snap.segments[0].blocks.iter().any(|b| b.state == "pending"));
    let meanwhile = a.allocate(256 << 10, &s).unwrap();
    assert_ne!(
        meanwhile.ptr(),
        ptr,
        "reused while another stream still used it"
    );
    open.release();
    user.synchronize().unwrap();
    drop(meanwhile);
    let later = a.allocate(256 << 10, &s).unwrap();
    assert_eq!(
        later.ptr(),
        ptr,
        "reusable once the other stream's work completed"
    );
    check_accounting(&a);
}

#[test]
fn out_of_memory_releases_the_cache_then_reports_everything() {
    let (_b, device) = device(64);
    let a = allocator(&device, "");
    let s1 = device.new_stream().unwrap();
    let s2 = device.new_stream().unwrap();
    // Fill most of the device through stream 1, then free it: cached, not returned.
    let held: Vec<_> = (0..2).map(|_| a.allocate(20 * MIB, &s1).unwrap()).collect();
    drop(held);
    assert_eq!(a.stats().reserved, 40 * MIB as u64);
    // Stream 2 cannot use stream 1's cache, and the device has 24 MiB left: the allocator
    // releases the cache and retries.
    let ok = a.allocate(40 * MIB, &s2).unwrap();
    assert_eq!(a.stats().reserved, 40 * MIB as u64);
    // Now a request that cannot fit at all.
    let (stats, snap) = check_accounting(&a);
    let err = a.allocate(48 * MIB, &s2).unwrap_err();
    assert!(err.is_out_of_memory(), "{err:?}");
    let msg = err.to_string();
    for needle in [
        "requested 50331648 B",
        "allocated",
        "reserved",
        "free of",
        "the device is full",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    let (after, snap_after) = check_accounting(&a);
    assert_eq!(snap_after, snap, "a failed allocation changed the segments");
    assert_eq!(
        AllocatorStats {
            num_ooms: 0,
            ..after
        },
        stats,
        "stats changed"
    );
    assert_eq!(after.num_ooms, 1);
    drop(ok);
}

#[test]
fn memory_fraction_caps_reservations() {
    let (_b, device) = device(100);
    let a = allocator(&device, "memory_fraction:0.5");
    let s = device.new_stream().unwrap();
    let _x = a.allocate(40 * MIB, &s).unwrap();
    let err = a.allocate(20 * MIB, &s).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert!(err.to_string().contains("memory_fraction 0.5"), "{err}");
}

#[test]
fn expandable_segments_grow_in_place_and_shrink_on_empty_cache() {
    let (_b, device) = device(256);
    let a = allocator(&device, "expandable_segments:True");
    assert!(a.uses_expandable_segments());
    let s = device.new_stream().unwrap();
    let x = a.allocate(9 * MIB / 2, &s).unwrap(); // 3 chunks; 1.5 MiB left is split off
    let y = a.allocate(7 * MIB, &s).unwrap(); // the free 1.5 MiB grows by 3 more chunks
    let (stats, snap) = check_accounting(&a);
    assert_eq!(snap.segments.len(), 1, "one range per stream and pool");
    assert!(snap.segments[0].expandable);
    assert_eq!(
        stats.reserved,
        12 * MIB as u64,
        "grew by exactly the 2 MiB chunks needed"
    );
    assert_eq!(
        y.ptr().0,
        x.ptr().0 + (9 * MIB / 2) as u64,
        "contiguous in the range"
    );
    // Data across chunk boundaries, through a typed buffer from the cache.
    let mut buf = DeviceBuffer::<CpuBackend, i32>::alloc_in(&a, &s, 3 * MIB).unwrap();
    let data: Vec<i32> = (0..3 * MIB as i32).collect();
    s.copy_h2d_sync(&data, &mut buf).unwrap();
    assert_eq!(s.clone_to_host(&buf).unwrap(), data);
    drop(buf);
    drop(x);
    check_accounting(&a);
    a.empty_cache().unwrap();
    let (stats, _) = check_accounting(&a);
    assert_eq!(
        stats.reserved,
        12 * MIB as u64,
        "y still holds the range up to its end"
    );
    drop(y);
    a.empty_cache().unwrap();
    let (stats, _) = check_accounting(&a);
    assert_eq!((stats.reserved, stats.segments), (0, 0));
    assert_eq!(device.memory_info().unwrap().used(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { stream: usize, size: usize },
    Free { pick: usize },
    RecordStream { pick: usize, stream: usize },
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..3, prop_oneof![1usize..4096, 4096usize..(2 * MIB), (2 * MIB)..(24 * MIB)])
            .prop_map(|(stream, size)| Op::Alloc { stream, size }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (any::<usize>(), 0usize..3).prop_map(|(pick, stream)| Op::RecordStream { pick, stream }),
        1 => Just(Op::EmptyCache),
    ]
}

fn run(ops: &[Op], config: &str) -> Result<(), TestCaseError> {
    let (_b, device) = device(96);
    let a = allocator(&device, config);
    let streams: Vec<CpuStream> = (0..3).map(|_| device.new_stream().unwrap()).collect();
    let mut live: Vec<MemoryBlock<CpuBackend>> = Vec::new();
    for op in ops {
        match *op {
            Op::Alloc { stream, size } => {
                // Settle what can settle, so that a failure can be compared exactly.
                for s in &streams {
                    s.synchronize().unwrap();
                }
                a.process_events().unwrap();
                let before = (a.stats(), a.snapshot());
                match a.allocate(size, &streams[stream]) {
                    Ok(b) => {
                        prop_assert!(b.size() >= size && b.size() % 512 == 0);
                        live.push(b);
                    }
                    Err(e) => {
                        prop_assert!(e.is_out_of_memory(), "{}", e);
                        let after = (a.stats(), a.snapshot());
                        // The retry may have released cached segments; nothing else changes.
                        prop_assert_eq!(after.0.allocated, before.0.allocated);
                        prop_assert_eq!(after.0.active, before.0.active);
                        if after.0.reserved == before.0.reserved {
                            prop_assert_eq!(
                                &after.1,
                                &before.1,
                                "failed allocation changed segments"
                            );
                        }
                    }
                }
            }
            Op::Free { pick } => {
                if !live.is_empty() {
                    live.swap_remove(pick % live.len());
                }
            }
            Op::RecordStream { pick, stream } => {
                if !live.is_empty() {
                    let b = &live[pick % live.len()];
                    a.record_stream(b, &streams[stream]).unwrap();
                }
            }
            Op::EmptyCache => a.empty_cache().unwrap(),
        }
        let (stats, _) = check_accounting(&a);
        // Live blocks never overlap.
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .map(|b| (b.ptr().0, b.ptr().0 + b.size() as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            prop_assert!(w[0].1 <= w[1].0, "overlapping blocks {:?}", w);
        }
        prop_assert_eq!(
            stats.allocated,
            live.iter().map(|b| b.size() as u64).sum::<u64>()
        );
        let used = device.memory_info().unwrap().used();
        prop_assert!(
            used >= stats.reserved,
            "the backend holds less than reserved"
        );
    }
    live.clear();
    for s in &streams {
        s.synchronize().unwrap();
    }
    a.empty_cache().unwrap();
    let (stats, _) = check_accounting(&a);
    prop_assert_eq!(stats.reserved, 0);
    prop_assert_eq!(
        device.memory_info().unwrap().used(),
        0,
        "memory left in the backend"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_accounting(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, "")?;
    }

    #[test]
    fn random_sequences_keep_the_accounting_with_expandable_segments(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, "expandable_segments:True")?;
    }

    #[test]
    fn random_sequences_keep_the_accounting_with_max_split(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, "max_split_size_mb:20,garbage_collection_threshold:0.5")?;
    }
}

/// The out-of-memory advice follows what actually failed: it blames the allocator's
/// configuration (fragmentation) only when the cache holds enough bytes in pieces.
#[test]
fn out_of_memory_names_the_cause_it_has() {
    use ascend_hal::alloc::Allocator;
    let message = |a: &CachingAllocator<CpuBackend>, s: &CpuStream, bytes: usize| {
        let e = a.allocate(bytes, s).unwrap_err();
        assert!(e.is_out_of_memory(), "{e:?}");
        e.to_string()
    };
    // Larger than the device.
    let (_b, d) = device(64);
    let s = d.new_stream().unwrap();
    let a = allocator(&d, "");
    let e = message(&a, &s, 100 * MIB);
    assert!(
        e.contains("larger than the device's whole memory (67108864 B"),
        "{e}"
    );
    assert!(!e.contains("expandable") && !e.contains("fragment"), "{e}");

    // A limit the device reports (an injected one): named, the allocator not blamed.
    let (b, d) = device(64);
    let s = d.new_stream().unwrap();
    b.faults().fail_allocations_above(Some(8 << 20));
    // (Expandable segments grow in 2 MiB chunks, which the limit lets through.)
    for config in ["", "max_split_size_mb:20"] {
        let a = allocator(&d, config);
        let e = message(&a, &s, 16 * MIB);
        assert!(
            e.contains(
                "the device refused it: injected fault: allocations above 8388608 bytes fail"
            ),
            "{config}: {e}"
        );
        assert!(!e.contains("fragment"), "{config}: {e}");
    }
    b.faults().fail_allocations_above(None);

    // The memory fraction's cap.
    let a = allocator(&d, "memory_fraction:0.25");
    let e = message(&a, &s, 32 * MIB);
    assert!(
        e.contains("the memory fraction allows 16777216 B (16.00 MiB)"),
        "{e}"
    );
    assert!(e.contains("raise memory_fraction"), "{e}");

    // A full device.
    let a = allocator(&d, "");
    let held = a.allocate(56 * MIB, &s).unwrap();
    let e = message(&a, &s, 16 * MIB);
    assert!(e.contains("the device is full"), "{e}");
    assert!(!e.contains("fragment"), "{e}");
    drop(held);
}
