//! The block pool: reference counts, the free set (in the order of an [`EvictionPolicy`]), and
//! the prefix cache's hash table.
//!
//! This ports vLLM v1's `BlockPool`; with the default [`Lru`] policy the free set is vLLM's
//! `FreeKVCacheBlockQueue` and every operation is O(1) per block. Allocation takes the
//! policy's next block; if that block still held a cached prefix, the prefix is evicted. A
//! freed block with ref count zero keeps its cached content, and stays findable, until it is
//! evicted this way. Block 0 is the null block: never allocated, used to pad block tables.

use rustc_hash::FxHashMap;

use crate::error::{KvError, Result};
use crate::events::KvCacheEvent;
use crate::eviction::{EvictionPolicy, Lru};
use crate::hash::{BlockHash, BlockKeys};
use crate::ids::{BlockId, TokenId};

/// Block ids are `u32`s below this.
const MAX_BLOCKS: usize = u32::MAX as usize;

/// What a cached full block holds, kept to confirm hits (see [`block_hash`](crate::block_hash):
/// a hit compares this content, so a hash collision is a miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedContent {
    /// The block's hash.
    pub hash: BlockHash,
    /// Its parent's hash (`None` for a request's first block).
    pub parent: Option<BlockHash>,
    /// Its tokens.
    pub tokens: Box<[TokenId]>,
    /// Its extra keys.
    pub keys: BlockKeys,
}

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    in_free_queue: bool,
    cached: Option<Box<CachedContent>>,
}

/// A fixed set of KV cache blocks.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    policy: Box<dyn EvictionPolicy>,
    cache: FxHashMap<BlockHash, BlockId>,
    /// Contents of evicted blocks, reused by later caching instead of allocating anew (boxed:
    /// they move between here and `Block::cached` without reallocating).
    #[allow(clippy::vec_box)]
    recycled: Vec<Box<CachedContent>>,
    /// Recorded events, when enabled.
    events: Option<Vec<KvCacheEvent>>,
    evictions: u64,
}

impl Clone for BlockPool {
    fn clone(&self) -> Self {
        BlockPool {
            blocks: self.blocks.clone(),
            policy: self.policy.clone_box(),
            cache: self.cache.clone(),
            recycled: self.recycled.clone(),
            events: self.events.clone(),
            evictions: self.evictions,
        }
    }
}

impl BlockPool {
    /// A pool of `num_blocks` blocks, block 0 reserved as the null block, so `num_blocks - 1`
    /// are allocatable. All start free, in id order, under the [`Lru`] policy (vLLM's).
    pub fn new(num_blocks: usize) -> Result<Self> {
        Self::with_policy(num_blocks, Box::new(Lru::new()))
    }

    /// [`new`](Self::new) with another eviction policy.
    pub fn with_policy(num_blocks: usize, mut policy: Box<dyn EvictionPolicy>) -> Result<Self> {
        if !(2..=MAX_BLOCKS).contains(&num_blocks) {
            return Err(KvError::InvalidConfig(format!(
                "a pool needs 2..{MAX_BLOCKS} blocks (block 0 is reserved), got {num_blocks}"
            )));
        }
        // A pool too large for the host is an error, not an aborted process.
        let mut blocks = Vec::new();
        blocks.try_reserve_exact(num_blocks).map_err(|_| {
            KvError::InvalidConfig(format!(
                "a pool of {num_blocks} blocks does not fit in host memory ({} bytes of \
                 bookkeeping)",
                num_blocks.saturating_mul(std::mem::size_of::<Block>())
            ))
        })?;
        blocks.resize(
            num_blocks,
            Block {
                ref_cnt: 0,
                in_free_queue: true,
                cached: None,
            },
        );
        blocks[0].in_free_queue = false;
        policy.reset(num_blocks);
        Ok(BlockPool {
            blocks,
            policy,
            cache: FxHashMap::default(),
            recycled: Vec::new(),
            events: None,
            evictions: 0,
        })
    }

    /// The eviction policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Allocatable blocks (the null block excluded).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Blocks in the free queue (cached-but-unused ones included).
    pub fn num_free(&self) -> usize {
        self.policy.len()
    }

    /// Fraction of allocatable blocks in use.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free() as f64 / self.num_blocks() as f64
    }

    /// Cached prefixes evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Number of blocks findable by hash.
    pub fn num_cached(&self) -> usize {
        self.cache.len()
    }

    /// A block's reference count.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks.get(block.index()).map_or(0, |b| b.ref_cnt)
    }

    /// Whether a block is in the free queue.
    pub fn is_free(&self, block: BlockId) -> bool {
        self.blocks
            .get(block.index())
            .is_some_and(|b| b.in_free_queue)
    }

    /// What a block holds as a cached prefix, if anything.
    pub fn cached_content(&self, block: BlockId) -> Option<&CachedContent> {
        self.blocks.get(block.index())?.cached.as_deref()
    }

    /// The free blocks in the order they will be handed out (evicted first first).
    pub fn free_queue(&self) -> impl Iterator<Item = BlockId> {
        self.policy.order().into_iter()
    }

    /// Every `(hash, block)` of the prefix cache.
    pub fn cached_blocks(&self) -> impl Iterator<Item = (BlockHash, BlockId)> + '_ {
        self.cache.iter().map(|(h, b)| (*h, *b))
    }

    fn check(&self, block: BlockId) -> Result<()> {
        if block.0 == 0 || block.index() >= self.blocks.len() {
            return Err(KvError::InvalidBlock {
                block,
                total: self.blocks.len(),
            });
        }
        Ok(())
    }

    /// Takes `n` blocks from the head of the free queue, all or nothing, evicting any cached
    /// prefix they held. Each comes back with reference count 1.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>> {
        let mut out = Vec::new();
        self.allocate_into(n, &mut out)?;
        Ok(out)
    }

    /// One block, as [`allocate`](Self::allocate) takes it.
    pub fn allocate_one(&mut self) -> Result<BlockId> {
        let Some(b) = self.policy.pop() else {
            return Err(KvError::OutOfBlocks {
                requested: 1,
                free: 0,
                reserved: 0,
                cached_tokens: 0,
            });
        };
        self.take(b.0);
        Ok(b)
    }

    /// Block `b`, just taken from the free set: evicts its cached content and gives it
    /// reference count 1.
    fn take(&mut self, b: u32) {
        let block = &mut self.blocks[b as usize];
        block.in_free_queue = false;
        if let Some(content) = block.cached.take() {
            self.cache.remove(&content.hash);
            self.evictions += 1;
            if let Some(events) = &mut self.events {
                events.push(KvCacheEvent::BlockRemoved {
                    block_hashes: vec![content.hash],
                });
            }
            self.recycled.push(content);
        }
        block.ref_cnt = 1;
    }

    /// [`allocate`](Self::allocate), appending to `out` (nothing is appended on error).
    pub fn allocate_into(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<()> {
        if n > self.num_free() {
            return Err(KvError::OutOfBlocks {
                requested: n,
                free: self.num_free(),
                reserved: 0,
                cached_tokens: 0,
            });
        }
        out.reserve(n);
        for _ in 0..n {
            let Some(b) = self.policy.pop() else {
                break; // not reached: `n <= num_free` was checked
            };
            self.take(b.0);
            out.push(b);
        }
        Ok(())
    }

    /// Takes one more reference to each block (a prefix hit or a fork); a free block leaves the
    /// free queue, keeping its cached content.
    pub fn touch(&mut self, blocks: &[BlockId]) -> Result<()> {
        for &b in blocks {
            self.check(b)?;
        }
        for &b in blocks {
            if self.blocks[b.index()].in_free_queue {
                self.blocks[b.index()].in_free_queue = false;
                self.policy.remove(b);
            }
            self.blocks[b.index()].ref_cnt += 1;
        }
        Ok(())
    }

    /// Drops one reference to each block; `blocks` are in eviction priority order (first
    /// evicted first), as vLLM's `BlockPool.free_blocks` takes them. Blocks reaching zero join
    /// the free queue as vLLM 0.11's does: those without cached content at its head, in the
    /// given order (reused first: they hold nothing worth keeping), those with cached content
    /// at its tail, in the given order (evicted last). A double free (or a bad id) is an error
    /// and changes nothing.
    pub fn free(&mut self, blocks: &[BlockId]) -> Result<()> {
        for (i, &b) in blocks.iter().enumerate() {
            let fault = match self.check(b) {
                Err(e) => Some(e),
                Ok(()) if self.blocks[b.index()].ref_cnt == 0 => Some(KvError::DoubleFree(b)),
                Ok(()) => None,
            };
            if let Some(e) = fault {
                for &done in &blocks[..i] {
                    self.blocks[done.index()].ref_cnt += 1;
                }
                return Err(e);
            }
            self.blocks[b.index()].ref_cnt -= 1;
        }
        let freeable = |block: &Block| block.ref_cnt == 0 && !block.in_free_queue;
        // Without content: handed over in reverse, so a front-pushing policy keeps the order.
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b.index()];
            if freeable(block) && block.cached.is_none() {
                block.in_free_queue = true;
                self.policy.push_uncached(b);
            }
        }
        for &b in blocks {
            let block = &mut self.blocks[b.index()];
            if freeable(block) {
                block.in_free_queue = true;
                self.policy.push_cached(b);
            }
        }
        Ok(())
    }

    /// Finds the block cached under `hash` whose parent, tokens and keys are exactly these.
    pub fn lookup(
        &self,
        hash: BlockHash,
        parent: Option<BlockHash>,
        tokens: &[TokenId],
        keys: &BlockKeys,
    ) -> Option<BlockId> {
        let &b = self.cache.get(&hash)?;
        let content = self.blocks[b.index()].cached.as_deref()?;
        (content.parent == parent && *content.tokens == *tokens && content.keys == *keys)
            .then_some(b)
    }

    /// Tells the eviction policy that prefix lookups hit `blocks` (frequency-based policies
    /// count it).
    pub fn note_hits(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            self.policy.hit(b);
        }
    }

    /// Makes a full, in-use block findable by its content. Returns `false` (and caches
    /// nothing) if the block is already cached or another block holds that hash.
    pub fn cache(&mut self, block: BlockId, content: CachedContent) -> Result<bool> {
        self.check(block)?;
        if self.blocks[block.index()].cached.is_some() || self.cache.contains_key(&content.hash) {
            return Ok(false);
        }
        self.cache.insert(content.hash, block);
        self.blocks[block.index()].cached = Some(Box::new(content));
        Ok(true)
    }

    /// [`cache`](Self::cache) from borrowed tokens, reusing the storage of an evicted block's
    /// content where there is one (so caching allocates nothing in the steady state).
    pub fn cache_tokens(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: Option<BlockHash>,
        tokens: &[TokenId],
        keys: BlockKeys,
    ) -> Result<bool> {
        self.check(block)?;
        if self.blocks[block.index()].cached.is_some() || self.cache.contains_key(&hash) {
            return Ok(false);
        }
        let content = match self.recycled.pop() {
            Some(mut c) if c.tokens.len() == tokens.len() => {
                c.tokens.copy_from_slice(tokens);
                c.hash = hash;
                c.parent = parent;
                c.keys = keys;
                c
            }
            _ => Box::new(CachedContent {
                hash,
                parent,
                tokens: tokens.into(),
                keys,
            }),
        };
        self.cache.insert(hash, block);
        self.blocks[block.index()].cached = Some(content);
        Ok(true)
    }

    /// Starts (or stops, discarding what was recorded) recording [`KvCacheEvent`]s.
    pub fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// Whether events are recorded.
    pub fn records_events(&self) -> bool {
        self.events.is_some()
    }

    /// Records `event` if events are on.
    pub fn push_event(&mut self, event: impl FnOnce() -> KvCacheEvent) {
        if let Some(events) = &mut self.events {
            events.push(event());
        }
    }

    /// The events recorded since the last call (empty when off).
    pub fn take_events(&mut self) -> Vec<KvCacheEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Forgets every cached prefix; blocks keep their owners and queue positions. Returns how
    /// many were forgotten.
    pub fn reset_cache(&mut self) -> usize {
        let n = self.cache.len();
        for (_, b) in self.cache.drain() {
            if let Some(content) = self.blocks[b.index()].cached.take() {
                self.recycled.push(content);
            }
        }
        if let Some(events) = &mut self.events {
            events.push(KvCacheEvent::AllBlocksCleared);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<BlockId> {
        v.iter().map(|&b| BlockId(b)).collect()
    }

    #[test]
    fn allocation_order_and_all_or_nothing() {
        let mut pool = BlockPool::new(6).unwrap();
        assert_eq!(pool.num_blocks(), 5);
        assert_eq!(pool.allocate(2).unwrap(), ids(&[1, 2]));
        let before: Vec<_> = pool.free_queue().collect();
        let err = pool.allocate(4).unwrap_err();
        assert_eq!(
            err,
            KvError::OutOfBlocks {
                requested: 4,
                free: 3,
                reserved: 0,
                cached_tokens: 0,
            }
        );
        assert_eq!(
            pool.free_queue().collect::<Vec<_>>(),
            before,
            "a failed allocation moved blocks"
        );
        // Freed tail first, holding no cached content: 2 then 1 go to the head (vLLM 0.11),
        // reused before 3, 4, 5.
        pool.free(&ids(&[2, 1])).unwrap();
        assert_eq!(pool.free_queue().collect::<Vec<_>>(), ids(&[2, 1, 3, 4, 5]));
    }

    #[test]
    fn double_free_is_an_error_and_changes_nothing() {
        let mut pool = BlockPool::new(4).unwrap();
        let b = pool.allocate(2).unwrap();
        let err = pool.free(&[b[0], b[1], b[1]]).unwrap_err();
        assert_eq!(err, KvError::DoubleFree(b[1]));
        assert_eq!(
            pool.ref_count(b[0]),
            1,
            "the valid part of a failed free was applied"
        );
        assert_eq!(
            pool.free(&[BlockId(0)]).unwrap_err(),
            KvError::InvalidBlock {
                block: BlockId(0),
                total: 4
            }
        );
        pool.free(&b).unwrap();
        assert_eq!(pool.num_free(), 3);
    }

    #[test]
    fn cached_free_blocks_revive_and_are_evicted_from_the_head() {
        let mut pool = BlockPool::new(4).unwrap();
        let b = pool.allocate(1).unwrap()[0];
        let content = CachedContent {
            hash: BlockHash(7),
            parent: None,
            tokens: vec![1, 2].into(),
            keys: BlockKeys::default(),
        };
        assert!(pool.cache(b, content.clone()).unwrap());
        pool.free(&[b]).unwrap();
        // Still findable while free, and only with the same content.
        assert_eq!(
            pool.lookup(BlockHash(7), None, &[1, 2], &BlockKeys::default()),
            Some(b)
        );
        assert_eq!(
            pool.lookup(BlockHash(7), None, &[1, 3], &BlockKeys::default()),
            None
        );
        pool.touch(&[b]).unwrap();
        assert!(!pool.is_free(b));
        assert_eq!(pool.ref_count(b), 1);
        pool.free(&[b]).unwrap();
        // Allocating everything evicts it.
        pool.allocate(3).unwrap();
        assert_eq!(pool.evictions(), 1);
        assert_eq!(pool.num_cached(), 0);
        assert!(pool.cached_content(b).is_none());
    }
}
