//! The device KV cache on the CPU backend: swapping restores contents exactly, a fork diverges
//! correctly after copy-on-write, and sizing follows the device's memory.

use ascend_hal::prelude::*;
use ascend_hal::DType;
use hal_mock::{CpuBackend, CpuStream, DeviceProfile};
use paged_kv::{KvCache, KvCacheConfig, KvCacheSpec, KvError, RequestId, RequestKeys};

type Cache = KvCache<CpuBackend, f32>;

const LAYERS: usize = 2;
const KV_HEADS: usize = 2;
const HEAD: usize = 8;
const BLOCK: usize = 4;
const ROW: usize = KV_HEADS * HEAD;

fn setup(max_blocks: usize) -> (CpuBackend, CpuStream, Cache) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 256 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let spec = KvCacheSpec::new(LAYERS, KV_HEADS, HEAD, DType::F32).with_block_size(BLOCK);
    let kv = Cache::new(
        &stream,
        spec,
        KvCacheConfig {
            max_blocks: Some(max_blocks),
            // The longest sequence the tests write (40 tokens) in 10 blocks of 4, + the null one.
            max_model_len: 44,
            swap_blocks: 16,
            ..KvCacheConfig::default()
        },
    )
    .unwrap();
    (backend, stream, kv)
}

/// Writes rows for `batch` (request, tokens) whose K value encodes (layer, token value, element)
/// and V its negation.
fn write(stream: &CpuStream, kv: &mut Cache, batch: &[(RequestId, Vec<u32>)]) {
    let plan: Vec<(RequestId, usize)> = batch.iter().map(|(id, t)| (*id, t.len())).collect();
    kv.begin_step(stream, &plan).unwrap();
    let tokens: Vec<u32> = batch.iter().flat_map(|(_, t)| t.iter().copied()).collect();
    for layer in 0..LAYERS {
        let k: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| (0..ROW).map(move |e| (layer * 1000 + t as usize * 10 + e) as f32))
            .collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let (dk, dv) = (
            DeviceBuffer::from_slice(stream, &k).unwrap(),
            DeviceBuffer::from_slice(stream, &v).unwrap(),
        );
        kv.write_kv(layer, stream, dk.view(), dv.view()).unwrap();
    }
}

/// The K rows of a request's tokens in `layer`, read back through its block table.
fn rows(stream: &CpuStream, kv: &Cache, layer: usize, id: RequestId) -> Vec<f32> {
    let (k, _) = kv.layer(layer).unwrap();
    let all = stream.clone_to_host(k).unwrap();
    let blocks = kv.manager().blocks(id).unwrap();
    let n = kv.manager().tokens(id).unwrap().len();
    (0..n)
        .flat_map(|t| {
            let at = (blocks[t / BLOCK].0 as usize * BLOCK + t % BLOCK) * ROW;
            all[at..at + ROW].to_vec()
        })
        .collect()
}

#[test]
fn swap_out_then_in_restores_identical_contents() {
    let (_b, stream, mut kv) = setup(12);
    let (a, b) = (RequestId(1), RequestId(2));
    let prompt: Vec<u32> = (1..=10).collect();
    kv.admit(a, &prompt, &RequestKeys::default(), usize::MAX)
        .unwrap();
    write(&stream, &mut kv, &[(a, prompt.clone())]);
    let before: Vec<Vec<f32>> = (0..LAYERS).map(|l| rows(&stream, &kv, l, a)).collect();
    let old_blocks = kv.manager().blocks(a).unwrap().to_vec();

    kv.swap_out(&stream, a).unwrap();
    assert!(kv.is_swapped(a) && !kv.manager().contains(a));
    // Another request takes the freed blocks and overwrites them.
    let other: Vec<u32> = (50..90).collect();
    kv.admit(b, &other, &RequestKeys::default(), usize::MAX)
        .unwrap();
    write(&stream, &mut kv, &[(b, other)]);
    assert!(
        old_blocks
            .iter()
            .any(|blk| kv.manager().blocks(b).unwrap().contains(blk)),
        "the freed blocks were not reused"
    );
    kv.free(b).unwrap();

    kv.swap_in(&stream, a).unwrap();
    assert!(!kv.is_swapped(a));
    assert_eq!(kv.manager().tokens(a).unwrap(), prompt.as_slice());
    for (l, want) in before.iter().enumerate() {
        assert_eq!(
            &rows(&stream, &kv, l, a),
            want,
            "layer {l} differs after the swap"
        );
    }
    // A swap-in that cannot fit changes nothing.
    kv.swap_out(&stream, a).unwrap();
    kv.admit(
        b,
        &(100..140).collect::<Vec<_>>(),
        &RequestKeys::default(),
        usize::MAX,
    )
    .unwrap();
    let err = kv.swap_in(&stream, a).unwrap_err();
    assert!(matches!(err, KvError::OutOfBlocks { .. }), "{err:?}");
    assert!(kv.is_swapped(a));
}

#[test]
fn fork_diverges_after_copy_on_write() {
    let (_b, stream, mut kv) = setup(12);
    let (a, b) = (RequestId(1), RequestId(2));
    let prompt: Vec<u32> = (1..=6).collect(); // one full block and half of the next
    kv.admit(a, &prompt, &RequestKeys::default(), usize::MAX)
        .unwrap();
    write(&stream, &mut kv, &[(a, prompt.clone())]);
    kv.fork(a, b).unwrap();
    assert_eq!(
        kv.manager().blocks(a).unwrap(),
        kv.manager().blocks(b).unwrap()
    );

    // Both write a different 7th token: the shared partial block is copied first.
    let ca = kv.allocate_slots(a, &[70]).unwrap();
    let cb = kv.allocate_slots(b, &[80]).unwrap();
    assert_eq!(
        ca.copies.len() + cb.copies.len(),
        1,
        "exactly one copy-on-write"
    );
    write(&stream, &mut kv, &[(a, vec![70]), (b, vec![80])]);
    for l in 0..LAYERS {
        let (ra, rb) = (rows(&stream, &kv, l, a), rows(&stream, &kv, l, b));
        // The shared prefix reads the same in both; the 7th token is each one's own.
        assert_eq!(ra[..6 * ROW], rb[..6 * ROW], "layer {l}: prefix differs");
        assert_eq!(
            ra[6 * ROW],
            (l * 1000 + 700) as f32,
            "layer {l}: a's own token"
        );
        assert_eq!(
            rb[6 * ROW],
            (l * 1000 + 800) as f32,
            "layer {l}: b's own token"
        );
    }
    assert_eq!(
        kv.manager().blocks(a).unwrap()[0],
        kv.manager().blocks(b).unwrap()[0],
        "the full block stays shared"
    );
    assert_ne!(
        kv.manager().blocks(a).unwrap()[1],
        kv.manager().blocks(b).unwrap()[1]
    );
}

#[test]
fn sizing_follows_the_device_memory() {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let spec = KvCacheSpec::new(LAYERS, KV_HEADS, HEAD, DType::F32).with_block_size(BLOCK);
    // Something else (the weights) already holds 16 MiB.
    let _weights = DeviceBuffer::<CpuBackend, u8>::alloc(&device, 16 << 20).unwrap();
    let stream = device.new_stream().unwrap();
    let used = device.memory_info().unwrap().used();
    let kv = Cache::new(
        &stream,
        spec,
        KvCacheConfig {
            max_model_len: 64,
            ..KvCacheConfig::default()
        },
    )
    .unwrap();
    let expected = (((64u64 << 20) as f64 * 0.9) as u64 - used) / spec.bytes_per_block();
    assert_eq!(kv.sizing().num_blocks as u64, expected);
    assert!(kv
        .sizing()
        .to_string()
        .starts_with("Available KV cache blocks: "));
    // Asking for more than exists says how much is missing.
    let err = Cache::new(
        &stream,
        spec,
        KvCacheConfig {
            max_model_len: 1 << 30,
            ..KvCacheConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, KvError::InsufficientMemory { .. }), "{err:?}");
}

#[test]
fn the_cache_takes_its_memory_from_the_chosen_allocator() {
    use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator};
    use std::sync::Arc;
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 256 << 20))
        .device(DeviceProfile::custom("Ascend910B4", 256 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let spec = KvCacheSpec::new(LAYERS, KV_HEADS, HEAD, DType::F32).with_block_size(BLOCK);
    let config = KvCacheConfig {
        max_blocks: Some(32),
        max_model_len: 64,
        swap_blocks: 4,
        ..KvCacheConfig::default()
    };
    let layer_bytes = (32 * BLOCK * ROW * 4) as u64;
    let allocators: [Arc<dyn Allocator<CpuBackend>>; 2] = [
        Arc::new(DirectAllocator::new(&device)),
        Arc::new(CachingAllocator::new(&device, Default::default()).unwrap()),
    ];
    for alloc in allocators {
        let mut kv = Cache::with_allocator(Arc::clone(&alloc), &stream, spec, config).unwrap();
        assert!(Arc::ptr_eq(kv.allocator(), &alloc));
        let name = alloc.name().to_string();
        let s = alloc.stats();
        // K and V of every layer, each rounded to the allocator's granularity.
        assert_eq!(s.num_allocs, 2 * LAYERS as u64, "{name}");
        assert!(
            s.allocated >= 2 * LAYERS as u64 * layer_bytes
                && s.allocated < 2 * LAYERS as u64 * (layer_bytes + 512),
            "{name}: {s:?}"
        );
        // A step's tables come from it too.
        let id = RequestId(1);
        kv.admit(id, &[1, 2, 3, 4, 5], &RequestKeys::default(), usize::MAX)
            .unwrap();
        write(&stream, &mut kv, &[(id, vec![1, 2, 3, 4, 5])]);
        stream.synchronize().unwrap();
        // (block tables, slot mapping, query starts, sequence lengths, positions)
        assert_eq!(alloc.stats().num_allocs, 2 * LAYERS as u64 + 5, "{name}");
        assert_eq!(rows(&stream, &kv, 1, id).len(), 5 * ROW);
        drop(kv);
        alloc.empty_cache().unwrap();
        let s = alloc.stats();
        assert_eq!((s.allocated, s.reserved), (0, 0), "{name}: {s:?}");
    }
    // An allocator of another device is refused, naming both devices.
    let far: Arc<dyn Allocator<CpuBackend>> =
        Arc::new(DirectAllocator::new(&backend.device(1).unwrap()));
    let err = Cache::with_allocator(far, &stream, spec, config)
        .err()
        .unwrap();
    assert!(matches!(err, KvError::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("serves device 1 but the stream runs on device 0"),
        "{err}"
    );
}

/// `KvCache::new` accepted a block cap below what `max_model_len` needs, although its docs said
/// it fails; a swap-block count past `u32` was truncated.
#[test]
fn a_block_cap_below_max_model_len_is_refused_before_any_allocation() {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let spec = KvCacheSpec::new(LAYERS, KV_HEADS, HEAD, DType::F32).with_block_size(BLOCK);
    let before = device.memory_info().unwrap();
    for (max_blocks, max_model_len, swap_blocks, needle) in [
        (
            Some(12),
            64,
            4,
            "max_blocks 12 cannot hold one sequence of max_model_len 64",
        ),
        (Some(0), 4, 4, "max_blocks 0 cannot hold"),
        (
            None,
            usize::MAX,
            4,
            "past what the kernels' i32 slot mapping addresses",
        ),
        (Some(8), 4, usize::MAX, "swap_blocks 18446744073709551615"),
    ] {
        let err = Cache::new(
            &stream,
            spec,
            KvCacheConfig {
                max_blocks,
                max_model_len,
                swap_blocks,
                ..KvCacheConfig::default()
            },
        )
        .err()
        .unwrap();
        assert!(matches!(err, KvError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(device.memory_info().unwrap(), before, "memory taken");
    }
}

fn step_order_error(r: paged_kv::Result<()>) -> String {
    match r {
        Err(e @ KvError::StepOrder(_)) => e.to_string(),
        other => panic!("expected a step-order error, got {other:?}"),
    }
}

#[test]
fn kernels_before_begin_step_or_after_a_change_are_refused_by_name() {
    let (_b, stream, mut kv) = setup(12);
    let (a, b) = (RequestId(1), RequestId(2));
    let rows = |n: usize| DeviceBuffer::<CpuBackend, f32>::zeros(&stream, n * ROW).unwrap();
    kv.admit(a, &[1, 2, 3], &RequestKeys::default(), usize::MAX)
        .unwrap();
    let (k, v) = (rows(3), rows(3));
    let e = step_order_error(kv.write_kv(0, &stream, k.view(), v.view()));
    assert!(e.contains("write_kv before begin_step"), "{e}");
    let mut out = DeviceBuffer::<CpuBackend, f32>::zeros(&stream, 3 * 2 * HEAD).unwrap();
    let q = DeviceBuffer::<CpuBackend, f32>::zeros(&stream, 3 * 2 * HEAD).unwrap();
    let e = step_order_error(kv.attention(0, &stream, 2, 0.1, out.view_mut(), q.view()));
    assert!(e.contains("attention before begin_step"), "{e}");
    assert!(kv.step_tables().is_err());

    kv.begin_step(&stream, &[(a, 3)]).unwrap();
    kv.write_kv(0, &stream, k.view(), v.view()).unwrap();
    // Rows for another number of tokens than the step's: named with begin_step.
    let e = kv
        .write_kv(1, &stream, rows(2).view(), rows(2).view())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key holds 32 elements, but the step begun by begin_step computes 3 tokens"),
        "{e}"
    );
    // A change of the blocks after begin_step makes the tables stale.
    kv.admit(b, &[4, 5], &RequestKeys::default(), usize::MAX)
        .unwrap();
    let e = step_order_error(kv.write_kv(1, &stream, k.view(), v.view()));
    assert!(e.contains("write_kv after admit"), "{e}");
    assert!(e.contains("call begin_step again"), "{e}");
    kv.begin_step(&stream, &[(a, 3), (b, 2)]).unwrap();
    kv.free(a).unwrap();
    let e = step_order_error(kv.attention(0, &stream, 2, 0.1, out.view_mut(), q.view()));
    assert!(e.contains("attention after free"), "{e}");
    stream.synchronize().unwrap();
}

#[test]
fn the_step_tables_give_query_starts_and_positions() {
    let (_b, stream, mut kv) = setup(12);
    let (a, b) = (RequestId(1), RequestId(2));
    kv.admit(a, &[1, 2, 3, 4, 5], &RequestKeys::default(), usize::MAX)
        .unwrap();
    kv.admit(b, &[6, 7], &RequestKeys::default(), usize::MAX)
        .unwrap();
    write(
        &stream,
        &mut kv,
        &[(a, vec![1, 2, 3, 4, 5]), (b, vec![6, 7])],
    );
    // One decode token for a, two more prompt tokens for b.
    let mut slots = Vec::new();
    kv.append_slots(a, &[8], &mut slots).unwrap();
    kv.append_slots(b, &[9, 10], &mut slots).unwrap();
    kv.begin_step(&stream, &[(a, 1), (b, 2)]).unwrap();
    let t = kv.step_tables().unwrap();
    assert_eq!((t.num_seqs, t.num_tokens), (2, 3));
    assert_eq!(stream.clone_to_host(t.query_start_loc).unwrap(), [0, 1, 3]);
    assert_eq!(stream.clone_to_host(t.positions).unwrap(), [5, 2, 3]);
    assert_eq!(stream.clone_to_host(t.seq_lens).unwrap(), [6, 4]);
    let host = kv
        .manager()
        .batch_tables(&[(a, 1), (b, 2)], Some(5), None)
        .unwrap();
    assert_eq!(host.query_start_loc, [0, 1, 3]);
    assert_eq!(host.positions, [5, 2, 3, 0, 0]);
    assert_eq!(host.slot_mapping.len(), 5);
    assert_eq!(host.num_tokens(), 5);
    let e = kv
        .manager()
        .batch_tables(&[(a, 1), (a, 1)], None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice in the batch"), "{e}");
}
