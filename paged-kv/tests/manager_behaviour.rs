//! Exact behaviour of the manager: the eviction order, prefix hits across requests sharing a
//! system prompt (partial blocks included), salts and adapters, copy-on-write forks, the
//! watermark, all-or-nothing failures, and the kernel tables.

use std::sync::Arc;

use paged_kv::{
    BlockCopy, BlockId, KvCacheManager, KvError, ManagerConfig, RequestId, RequestKeys,
};

const ALL: usize = usize::MAX;

fn manager(num_blocks: usize, block_size: usize) -> KvCacheManager {
    KvCacheManager::new(ManagerConfig {
        watermark_blocks: 0,
        ..ManagerConfig::new(num_blocks, block_size)
    })
    .unwrap()
}

fn ids(v: &[u32]) -> Vec<BlockId> {
    v.iter().map(|&b| BlockId(b)).collect()
}

fn r(n: u64) -> RequestId {
    RequestId(n)
}

#[test]
fn eviction_order_is_least_recently_freed_tail_first() {
    let mut kv = manager(9, 4); // blocks 1..=8
    let a: Vec<u32> = (100..112).collect(); // 3 full blocks
    kv.admit(r(1), &a, &RequestKeys::default(), ALL).unwrap();
    assert_eq!(kv.blocks(r(1)).unwrap(), ids(&[1, 2, 3]));
    assert_eq!(kv.pool().num_cached(), 3);
    kv.free_request(r(1)).unwrap();
    // Freed tail first: the prefix's head (block 1) is evicted last.
    assert_eq!(
        kv.pool().free_queue().collect::<Vec<_>>(),
        ids(&[4, 5, 6, 7, 8, 3, 2, 1])
    );

    // Never-used blocks go first: no eviction.
    let b: Vec<u32> = (200..220).collect(); // 5 blocks
    kv.admit(r(2), &b, &RequestKeys::default(), ALL).unwrap();
    assert_eq!(kv.blocks(r(2)).unwrap(), ids(&[4, 5, 6, 7, 8]));
    assert_eq!(kv.metrics().evictions, 0);

    // The next allocation takes A's tail block and evicts it from the cache.
    kv.admit(r(3), &[300, 301], &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(kv.blocks(r(3)).unwrap(), ids(&[3]));
    assert_eq!(kv.metrics().evictions, 1);

    // A's head survived: a new request with A's prompt hits blocks 1 and 2 (and takes block 3
    // back from the queue for its last block once r3 is done).
    kv.free_request(r(3)).unwrap();
    let again = kv.admit(r(4), &a, &RequestKeys::default(), ALL).unwrap();
    assert_eq!(again.num_cached_tokens, 8);
    assert_eq!(&kv.blocks(r(4)).unwrap()[..2], &ids(&[1, 2])[..]);
}

#[test]
fn prefix_hits_across_requests_sharing_a_system_prompt() {
    let mut kv = manager(32, 4);
    let system: Vec<u32> = (1..=10).collect(); // 2.5 blocks
    let with = |user: &[u32]| -> Vec<u32> { system.iter().chain(user).copied().collect() };

    let first = kv
        .admit(r(1), &with(&[50, 51, 52]), &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(first.num_cached_tokens, 0);
    // 13 tokens: three full blocks cached (the third holds 2 system and 2 user tokens).
    assert_eq!(kv.pool().num_cached(), 3);

    // Another user: the first two blocks are shared, the third differs in its user tokens.
    let second = kv
        .admit(r(2), &with(&[60, 61, 62]), &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(second.num_cached_tokens, 8);
    assert_eq!(kv.blocks(r(2)).unwrap()[..2], kv.blocks(r(1)).unwrap()[..2]);
    assert_eq!(kv.pool().ref_count(kv.blocks(r(1)).unwrap()[0]), 2);
    assert_eq!(
        second.allocation.slots.len(),
        5,
        "tokens 8..13 are computed"
    );

    // Same user tokens as the first: all three full blocks hit, the last token is recomputed.
    let third = kv
        .admit(r(3), &with(&[50, 51, 52]), &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(third.num_cached_tokens, 12);
    assert_eq!(third.allocation.slots.len(), 1);

    // A prompt of exactly two blocks: only one may hit, so the last token is computed.
    let exact = kv
        .admit(r(4), &system[..8], &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(exact.num_cached_tokens, 4);
    // Nine tokens: two blocks hit.
    let nine = kv
        .admit(r(5), &system[..9], &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(nine.num_cached_tokens, 8);
    // Shorter than a block: nothing to hit.
    let short = kv
        .admit(r(6), &system[..3], &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(short.num_cached_tokens, 0);

    let m = kv.metrics();
    assert_eq!(m.prefix_queries, 13 * 3 + 8 + 9 + 3);
    assert_eq!(m.prefix_hits, 8 + 12 + 4 + 8);
    assert!((m.prefix_hit_rate() - 32.0 / 59.0).abs() < 1e-12);
}

#[test]
fn salts_and_adapters_separate_tenants() {
    let mut kv = manager(32, 4);
    let prompt: Vec<u32> = (1..=9).collect();
    let salted = |s: &[u8]| RequestKeys {
        cache_salt: Some(Arc::from(s)),
        ..RequestKeys::default()
    };
    kv.admit(r(1), &prompt, &salted(b"tenant-a"), ALL).unwrap();
    assert_eq!(
        kv.admit(r(2), &prompt, &salted(b"tenant-b"), ALL)
            .unwrap()
            .num_cached_tokens,
        0
    );
    assert_eq!(
        kv.admit(r(3), &prompt, &RequestKeys::default(), ALL)
            .unwrap()
            .num_cached_tokens,
        0
    );
    assert_eq!(
        kv.admit(r(4), &prompt, &salted(b"tenant-a"), ALL)
            .unwrap()
            .num_cached_tokens,
        8
    );
    let lora = RequestKeys {
        adapter: Some(7),
        ..RequestKeys::default()
    };
    assert_eq!(
        kv.admit(r(5), &prompt, &lora, ALL)
            .unwrap()
            .num_cached_tokens,
        0
    );
    assert_eq!(
        kv.admit(r(6), &prompt, &lora, ALL)
            .unwrap()
            .num_cached_tokens,
        8
    );
}

#[test]
fn fork_shares_blocks_and_copies_a_shared_partial_block_on_write() {
    let mut kv = manager(16, 4);
    kv.admit(r(1), &[1, 2, 3, 4, 5, 6], &RequestKeys::default(), ALL)
        .unwrap();
    let parent = kv.blocks(r(1)).unwrap().to_vec();
    assert_eq!(parent.len(), 2);
    kv.fork(r(1), r(2)).unwrap();
    assert_eq!(kv.pool().ref_count(parent[0]), 2);
    assert_eq!(kv.pool().ref_count(parent[1]), 2);
    assert_eq!(
        kv.fork(r(1), r(2)).unwrap_err(),
        KvError::DuplicateRequest(r(2))
    );

    // The parent writes first: it gets a copy of the shared partial block.
    let a = kv.allocate_slots(r(1), &[70]).unwrap();
    assert_eq!(a.copies.len(), 1);
    let BlockCopy { src, dst } = a.copies[0];
    assert_eq!(src, parent[1]);
    assert_eq!(kv.blocks(r(1)).unwrap(), &[parent[0], dst]);
    assert_eq!(a.slots, vec![dst.0 as i32 * 4 + 2]);
    // The child now owns the original alone: no copy.
    let b = kv.allocate_slots(r(2), &[80]).unwrap();
    assert!(b.copies.is_empty());
    assert_eq!(b.slots, vec![parent[1].0 as i32 * 4 + 2]);
    assert_eq!(kv.tokens(r(1)).unwrap(), &[1, 2, 3, 4, 5, 6, 70]);
    assert_eq!(kv.tokens(r(2)).unwrap(), &[1, 2, 3, 4, 5, 6, 80]);
    // The full first block stays shared.
    assert_eq!(kv.pool().ref_count(parent[0]), 2);

    // Forking at a block boundary needs no copy: the next token opens a new block.
    kv.allocate_slots(r(1), &[71]).unwrap(); // r1 now has 8 tokens, 2 full blocks
    kv.fork(r(1), r(3)).unwrap();
    let c = kv.allocate_slots(r(3), &[90]).unwrap();
    assert!(c.copies.is_empty());
    assert_eq!(c.new_blocks, 1);
    kv.free_request(r(1)).unwrap();
    kv.free_request(r(2)).unwrap();
    kv.free_request(r(3)).unwrap();
    assert_eq!(kv.pool().num_free(), 15);
}

#[test]
fn failed_allocations_change_nothing_and_the_watermark_holds_for_admission() {
    let mut kv = KvCacheManager::new(ManagerConfig {
        watermark_blocks: 2,
        ..ManagerConfig::new(9, 4) // 8 usable
    })
    .unwrap();
    kv.admit(r(1), &[1; 16], &RequestKeys::default(), ALL)
        .unwrap(); // 4 blocks
    let queue: Vec<_> = kv.pool().free_queue().collect();
    // 3 more blocks would leave 1 < 2 free: refused for a new request.
    let err = kv
        .admit(r(2), &[2; 12], &RequestKeys::default(), ALL)
        .unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            requested: 3,
            free: 4,
            reserved: 2,
            cached_tokens: 0,
        }
    );
    assert!(
        err.to_string()
            .contains("2 of them kept free for running requests"),
        "{err}"
    );
    assert!(!kv.contains(r(2)));
    assert_eq!(kv.pool().free_queue().collect::<Vec<_>>(), queue);
    // Two blocks fit.
    kv.admit(r(2), &[2; 8], &RequestKeys::default(), ALL)
        .unwrap();
    // A running request may use the watermark...
    kv.allocate_slots(r(1), &[1; 8]).unwrap();
    assert_eq!(kv.pool().num_free(), 0);
    // ...and past it gets an error that changes nothing.
    let tokens_before = kv.tokens(r(2)).unwrap().to_vec();
    let blocks_before = kv.blocks(r(2)).unwrap().to_vec();
    let err = kv.allocate_slots(r(2), &[3]).unwrap_err();
    assert!(matches!(
        err,
        KvError::OutOfBlocks {
            requested: 1,
            free: 0,
            ..
        }
    ));
    assert_eq!(kv.tokens(r(2)).unwrap(), tokens_before);
    assert_eq!(kv.blocks(r(2)).unwrap(), blocks_before);
    assert_eq!(
        kv.allocate_slots(r(9), &[1]).unwrap_err(),
        KvError::UnknownRequest(r(9))
    );
    assert_eq!(
        kv.free_request(r(9)).unwrap_err(),
        KvError::UnknownRequest(r(9))
    );
}

#[test]
fn chunked_prefill_and_decode_fill_blocks_in_order() {
    let mut kv = manager(16, 4);
    let prompt: Vec<u32> = (0..10).collect();
    let first = kv.admit(r(1), &prompt, &RequestKeys::default(), 6).unwrap();
    assert_eq!(first.allocation.slots.len(), 6);
    let next = kv.allocate_slots(r(1), &prompt[6..]).unwrap();
    let decode = kv.allocate_slots(r(1), &[99]).unwrap();
    let blocks = kv.blocks(r(1)).unwrap().to_vec();
    let all: Vec<i32> = first
        .allocation
        .slots
        .iter()
        .chain(&next.slots)
        .chain(&decode.slots)
        .copied()
        .collect();
    let expected: Vec<i32> = (0..11)
        .map(|p| blocks[p / 4].0 as i32 * 4 + (p % 4) as i32)
        .collect();
    assert_eq!(all, expected);
}

#[test]
fn kernel_tables_pad_with_the_null_block_and_minus_one() {
    let mut kv = manager(32, 4);
    kv.admit(
        r(1),
        &(0..9).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    kv.admit(r(2), &[5, 6], &RequestKeys::default(), ALL)
        .unwrap();
    kv.allocate_slots(r(1), &[42]).unwrap(); // decode step: one token
    kv.allocate_slots(r(2), &[43]).unwrap();
    let t = kv
        .batch_tables(&[(r(1), 1), (r(2), 1)], Some(4), Some(4))
        .unwrap();
    let b1 = kv.blocks(r(1)).unwrap();
    let b2 = kv.blocks(r(2)).unwrap();
    assert_eq!(t.num_seqs, 2);
    assert_eq!(
        t.block_tables,
        vec![
            b1[0].0 as i32,
            b1[1].0 as i32,
            b1[2].0 as i32,
            0,
            b2[0].0 as i32,
            0,
            0,
            0
        ]
    );
    assert_eq!(t.seq_lens, vec![10, 3]);
    assert_eq!(t.query_lens, vec![1, 1]);
    assert_eq!(
        t.slot_mapping,
        vec![b1[2].0 as i32 * 4 + 1, b2[0].0 as i32 * 4 + 2, -1, -1]
    );
    let err = kv.batch_tables(&[(r(1), 1)], None, Some(2)).unwrap_err();
    assert!(err.to_string().contains("more than the 2 per row"), "{err}");
}

#[test]
fn reset_forgets_cached_prefixes_but_not_owners() {
    let mut kv = manager(16, 4);
    let p: Vec<u32> = (0..9).collect();
    kv.admit(r(1), &p, &RequestKeys::default(), ALL).unwrap();
    assert_eq!(kv.reset_prefix_cache(), 2);
    assert_eq!(kv.pool().num_cached(), 0);
    assert_eq!(kv.blocks(r(1)).unwrap().len(), 3);
    assert_eq!(
        kv.admit(r(2), &p, &RequestKeys::default(), ALL)
            .unwrap()
            .num_cached_tokens,
        0
    );
}

#[test]
fn a_failed_admission_reports_its_prefix_hits_and_counts_them_once() {
    let mut kv = manager(7, 4); // 6 usable
    let system: Vec<u32> = (0..8).collect(); // two full blocks
    let mut first = system.clone();
    first.extend([100, 101]);
    kv.admit(r(1), &first, &RequestKeys::default(), ALL)
        .unwrap(); // 3 blocks
    kv.admit(r(2), &[7; 8], &RequestKeys::default(), ALL)
        .unwrap(); // 2 more: 1 free
    let before = kv.metrics();
    let mut second = system.clone();
    second.extend(200..212); // 8 cached + 12 new tokens: 3 more blocks
    let err = kv
        .admit(r(3), &second, &RequestKeys::default(), ALL)
        .unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            requested: 3,
            free: 1,
            reserved: 0,
            cached_tokens: 8,
        }
    );
    assert!(
        err.to_string()
            .contains("8 prompt tokens were found in the prefix cache"),
        "{err}"
    );
    let after = kv.metrics();
    assert_eq!(
        after.prefix_queries - before.prefix_queries,
        20,
        "queried once"
    );
    assert_eq!(after.prefix_hits - before.prefix_hits, 8, "hit once");
    assert!(!kv.contains(r(3)));
}

#[test]
fn append_slots_matches_allocate_slots_and_reuses_the_callers_buffers() {
    let mut a = manager(16, 4);
    let mut b = manager(16, 4);
    let prompt: Vec<u32> = (0..6).collect();
    let first = a
        .admit(r(1), &prompt, &RequestKeys::default(), ALL)
        .unwrap();
    b.admit(r(1), &prompt, &RequestKeys::default(), ALL)
        .unwrap();
    a.fork(r(1), r(2)).unwrap();
    b.fork(r(1), r(2)).unwrap();
    assert_eq!(first.allocation.slots.len(), 6);
    let (mut slots, mut copies) = (Vec::with_capacity(64), Vec::with_capacity(8));
    let capacity = (slots.capacity(), copies.capacity());
    for step in 0..10u32 {
        for id in [r(1), r(2)] {
            let tok = [step * 10 + id.0 as u32];
            let want = a.allocate_slots(id, &tok).unwrap();
            let (s0, c0) = (slots.len(), copies.len());
            let new_blocks = b.append_slots(id, &tok, &mut slots, &mut copies).unwrap();
            assert_eq!(&slots[s0..], want.slots.as_slice(), "step {step} {id}");
            assert_eq!(&copies[c0..], want.copies.as_slice(), "step {step} {id}");
            assert_eq!(new_blocks, want.new_blocks, "step {step} {id}");
        }
        slots.clear();
        copies.clear();
    }
    assert_eq!(
        (slots.capacity(), copies.capacity()),
        capacity,
        "the buffers were reallocated"
    );
    assert_eq!(a.blocks(r(2)).unwrap(), b.blocks(r(2)).unwrap());
    // An error appends nothing.
    slots.push(-7);
    let err = b
        .append_slots(r(9), &[1], &mut slots, &mut copies)
        .unwrap_err();
    assert_eq!(err, KvError::UnknownRequest(r(9)));
    let err = b
        .append_slots(r(1), &[1; 4 * 16], &mut slots, &mut copies)
        .unwrap_err();
    assert!(matches!(err, KvError::OutOfBlocks { .. }), "{err:?}");
    assert_eq!((slots.as_slice(), copies.len()), (&[-7][..], 0));
}

#[test]
fn no_watermark_by_default_as_in_vllm_v1() {
    let config = ManagerConfig::new(1000, 16);
    assert_eq!(config.watermark_blocks, 0);
    assert_eq!(config.with_watermark(0.01).watermark_blocks, 10);
    for bad in [-0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(config.with_watermark(bad).watermark_blocks, 0, "{bad}");
    }
    // With no watermark a new request may take the last free block.
    let mut kv = KvCacheManager::new(ManagerConfig::new(3, 4)).unwrap(); // 2 usable
    kv.admit(r(1), &[1; 8], &RequestKeys::default(), ALL)
        .unwrap();
    assert_eq!(kv.pool().num_free(), 0);
}

/// vLLM 0.11's `BlockPool.free_blocks`: a finished request's blocks are freed tail first; those
/// without cached content (its partial last block) go to the head of the free queue in that
/// order (reused first), those with cached content to the tail in that order (evicted last).
/// Freeing every block to the tail, as before, evicted reusable prefixes while worthless
/// partial blocks waited.
#[test]
fn free_order_is_vllms_partial_blocks_first_cached_blocks_last() {
    let mut kv = manager(11, 4); // blocks 1..=10
                                 // A: 2 full blocks + a partial one (10 tokens).
    kv.admit(
        r(1),
        &(100..110).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    assert_eq!(kv.blocks(r(1)).unwrap(), ids(&[1, 2, 3]));
    // B: 1 full block + a partial one (6 tokens).
    kv.admit(
        r(2),
        &(200..206).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    assert_eq!(kv.blocks(r(2)).unwrap(), ids(&[4, 5]));
    assert_eq!(
        kv.pool().free_queue().collect::<Vec<_>>(),
        ids(&[6, 7, 8, 9, 10])
    );
    kv.free_request(r(1)).unwrap();
    // A's partial block 3 at the head; its cached blocks 2, 1 at the tail, tail block first.
    assert_eq!(
        kv.pool().free_queue().collect::<Vec<_>>(),
        ids(&[3, 6, 7, 8, 9, 10, 2, 1])
    );
    kv.free_request(r(2)).unwrap();
    assert_eq!(
        kv.pool().free_queue().collect::<Vec<_>>(),
        ids(&[5, 3, 6, 7, 8, 9, 10, 2, 1, 4])
    );
    // A request needing 9 blocks takes the 7 uncached ones before evicting any prefix:
    // exactly 2 evictions (blocks 2 and 1, A's prefix, the least recently freed).
    kv.admit(
        r(3),
        &(300..336).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    assert_eq!(kv.blocks(r(3)).unwrap(), ids(&[5, 3, 6, 7, 8, 9, 10, 2, 1]));
    assert_eq!(kv.metrics().evictions, 2);
    // B's prefix survived.
    kv.free_request(r(3)).unwrap();
    let b = kv
        .admit(
            r(4),
            &(200..206).collect::<Vec<_>>(),
            &RequestKeys::default(),
            ALL,
        )
        .unwrap();
    assert_eq!(b.num_cached_tokens, 4);
}

/// LFU with dynamic aging: uncached blocks go first; then the cached block with the fewest hits
/// (plus the age, the priority of the last eviction), whatever the order they were freed in.
#[test]
fn lfu_aging_evicts_the_least_hit_prefix_first() {
    use paged_kv::eviction::LfuAging;
    let mut kv =
        KvCacheManager::with_eviction_policy(ManagerConfig::new(9, 4), Box::new(LfuAging::new()))
            .unwrap(); // blocks 1..=8
    assert_eq!(kv.pool().policy_name(), "lfu-aging");
    let hot: Vec<u32> = (100..109).collect(); // 2 full blocks + 1 token
    let cold: Vec<u32> = (200..209).collect();
    kv.admit(r(1), &hot, &RequestKeys::default(), ALL).unwrap(); // blocks 1, 2, 3
    kv.admit(r(2), &cold, &RequestKeys::default(), ALL).unwrap(); // blocks 4, 5, 6
    kv.free_request(r(1)).unwrap();
    // Hit the hot prefix three times.
    for id in 3..6 {
        let a = kv.admit(r(id), &hot, &RequestKeys::default(), ALL).unwrap();
        assert_eq!(a.num_cached_tokens, 8);
        kv.free_request(r(id)).unwrap();
    }
    kv.free_request(r(2)).unwrap(); // the cold prefix is freed last
                                    // Uncached first (the partial blocks and the never-used 7, 8), then cold before hot.
    let order: Vec<BlockId> = kv.pool().free_queue().collect();
    assert_eq!(&order[order.len() - 4..], &ids(&[5, 4, 2, 1])[..]);
    // A request needing 6 blocks takes the 4 uncached ones and evicts the cold prefix.
    kv.admit(
        r(9),
        &(300..324).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    assert_eq!(kv.metrics().evictions, 2);
    kv.free_request(r(9)).unwrap();
    assert_eq!(
        kv.admit(r(10), &hot, &RequestKeys::default(), ALL)
            .unwrap()
            .num_cached_tokens,
        8,
        "the hot prefix survived"
    );
    // Under LRU the cold prefix, freed last, would have survived instead.
    let mut lru = manager(9, 4);
    lru.admit(r(1), &hot, &RequestKeys::default(), ALL).unwrap();
    lru.admit(r(2), &cold, &RequestKeys::default(), ALL)
        .unwrap();
    lru.free_request(r(1)).unwrap();
    for id in 3..6 {
        lru.admit(r(id), &hot, &RequestKeys::default(), ALL)
            .unwrap();
        lru.free_request(r(id)).unwrap();
    }
    lru.free_request(r(2)).unwrap();
    lru.admit(
        r(9),
        &(300..324).collect::<Vec<_>>(),
        &RequestKeys::default(),
        ALL,
    )
    .unwrap();
    lru.free_request(r(9)).unwrap();
    assert_eq!(
        lru.admit(r(10), &hot, &RequestKeys::default(), ALL)
            .unwrap()
            .num_cached_tokens,
        0
    );
}

/// Aging: a block hit often long ago does not stay forever. After an eviction, the cache's age
/// is the evicted block's priority, and newly freed blocks start from it.
#[test]
fn lfu_aging_ages_out_old_favourites() {
    use paged_kv::eviction::{EvictionPolicy, LfuAging};
    let mut p = LfuAging::new();
    p.reset(6); // blocks 1..=5 free, uncached
    let take = |p: &mut LfuAging| p.pop().unwrap();
    let all: Vec<BlockId> = (0..5).map(|_| take(&mut p)).collect();
    assert_eq!(all, ids(&[1, 2, 3, 4, 5]));
    for _ in 0..3 {
        p.hit(BlockId(1));
    }
    p.push_cached(BlockId(1)); // priority 0 + 3
    p.push_cached(BlockId(2)); // priority 0
    assert_eq!(p.pop(), Some(BlockId(2))); // age becomes 0
    p.hit(BlockId(3));
    p.push_cached(BlockId(3)); // priority 0 + 1
    assert_eq!(p.pop(), Some(BlockId(3))); // age 1
    for b in [4, 5] {
        p.push_cached(BlockId(b)); // priority 1 each: newer blocks start at the age
    }
    assert_eq!(p.pop(), Some(BlockId(4)));
    assert_eq!(p.pop(), Some(BlockId(5)));
    // Block 1 (priority 3) outlived them, but it is not immortal: once the age passes 3, new
    // blocks rank above it.
    assert_eq!(p.order(), ids(&[1]));
    p.push_uncached(BlockId(2));
    assert_eq!(p.order(), ids(&[2, 1]), "uncached blocks go first");
    p.remove(BlockId(1));
    assert_eq!(p.len(), 1);
}

/// The policies are public: calls the pool never makes (ids outside the pool, the null block,
/// a second push, removing a block that is not free, anything before `reset`) are ignored,
/// never a panic or a corrupted order.
#[test]
fn eviction_policies_ignore_calls_the_pool_never_makes() {
    use paged_kv::eviction::{EvictionPolicy, LfuAging, Lru};
    for mut p in [
        Box::new(Lru::new()) as Box<dyn EvictionPolicy>,
        Box::new(LfuAging::new()),
    ] {
        let name = p.name();
        for b in [0, 3, 99, u32::MAX] {
            p.push_cached(BlockId(b));
            p.push_uncached(BlockId(b));
            p.remove(BlockId(b));
            p.hit(BlockId(b));
        }
        assert_eq!((p.len(), p.pop()), (0, None), "{name}: before reset");
        p.reset(4); // 1, 2, 3 free
        p.push_uncached(BlockId(2)); // already free
        p.push_cached(BlockId(0)); // the null block
        p.push_cached(BlockId(7)); // outside
        p.remove(BlockId(9));
        assert_eq!(p.order(), ids(&[1, 2, 3]), "{name}");
        let b = p.pop().unwrap();
        p.remove(b); // not free any more
        assert_eq!(p.len(), 2, "{name}");
        p.push_cached(b);
        p.push_cached(b); // twice
        assert_eq!(p.len(), 3, "{name}");
        while p.pop().is_some() {}
        assert!(p.is_empty(), "{name}");
    }
}
