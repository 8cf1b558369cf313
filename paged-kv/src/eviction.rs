//! Which free block the pool hands out next: the eviction policy.
//!
//! The pool keeps reference counts and the prefix cache; the policy keeps the set of free
//! blocks and decides their order. A free block *without* cached content costs nothing to
//! reuse; one *with* cached content is a prefix some later request may hit, and handing it out
//! evicts it. Two policies come with the crate:
//!
//! - [`Lru`] (the default): vLLM v1's `FreeKVCacheBlockQueue`, exactly. One queue: blocks
//!   without content join at the head (reused first), blocks with content at the tail (evicted
//!   last, least recently freed first); the head is handed out.
//! - [`LfuAging`]: least-frequently-used with dynamic aging (LFU-DA, as in web caches and
//!   SGLang's frequency-based policies). Blocks without content go first, in the order freed;
//!   then the cached block with the lowest priority, where a block's priority is its prefix
//!   hits since it was cached plus the cache's *age*, the priority of the last block evicted,
//!   so that blocks hit often long ago do not stay forever.
//!
//! A policy of your own implements [`EvictionPolicy`] and goes to
//! [`KvCacheManager::with_eviction_policy`](crate::KvCacheManager::with_eviction_policy).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use crate::ids::BlockId;

/// The free set of a block pool and the order blocks leave it.
///
/// The pool calls these with blocks `1..num_blocks` (block 0, the null block, is never free),
/// and keeps the invariants: a block is pushed only when not free, and removed only when free.
/// Implementations must not panic on other calls (a policy is public API): the two here ignore
/// ids outside the pool, pushes of a block already free and removals of one that is not.
pub trait EvictionPolicy: Send + Sync + fmt::Debug {
    /// A short name for logs and tables.
    fn name(&self) -> &'static str;

    /// Starts over for a pool of `num_blocks`, with blocks `1..num_blocks` free in id order.
    fn reset(&mut self, num_blocks: usize);

    /// `block`, holding no cached content, became free. The blocks of one free call arrive
    /// in *reverse* of their eviction-priority order (so that pushing each to the front keeps
    /// that order at the front).
    fn push_uncached(&mut self, block: BlockId);

    /// `block`, holding cached content, became free; the blocks of one free call arrive in
    /// eviction-priority order (first evicted first).
    fn push_cached(&mut self, block: BlockId);

    /// A prefix hit takes free `block` back.
    fn remove(&mut self, block: BlockId);

    /// The next block to hand out (its cached content, if any, is evicted), or `None` if none
    /// is free.
    fn pop(&mut self) -> Option<BlockId>;

    /// A prefix lookup hit `block` (free or not); frequency-based policies count it.
    fn hit(&mut self, block: BlockId) {
        let _ = block;
    }

    /// How many blocks are free.
    fn len(&self) -> usize;

    /// Whether no block is free.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The free blocks in the order [`pop`](Self::pop) would hand them out.
    fn order(&self) -> Vec<BlockId>;

    /// A copy, for cloning a pool.
    fn clone_box(&self) -> Box<dyn EvictionPolicy>;
}

const NIL: u32 = u32::MAX;

/// vLLM v1's free queue: a doubly linked list threaded through an array (indices, not
/// pointers), so a block leaves the middle in O(1) when a prefix hit revives it.
#[derive(Debug, Clone, Default)]
pub struct Lru {
    links: Vec<(u32, u32)>,
    /// Per block: whether it is in the queue.
    queued: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Lru {
    /// An empty queue (the pool resets it to its size).
    pub fn new() -> Self {
        Lru {
            links: Vec::new(),
            queued: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Whether `b` may join the queue: a block of the pool (not the null block) not queued yet.
    fn can_push(&self, b: u32) -> bool {
        b != 0 && self.queued.get(b as usize) == Some(&false)
    }

    fn push_tail(&mut self, b: u32) {
        if !self.can_push(b) {
            return;
        }
        self.queued[b as usize] = true;
        self.links[b as usize] = (self.tail, NIL);
        match self.tail {
            NIL => self.head = b,
            t => self.links[t as usize].1 = b,
        }
        self.tail = b;
        self.len += 1;
    }

    fn push_head(&mut self, b: u32) {
        if !self.can_push(b) {
            return;
        }
        self.queued[b as usize] = true;
        self.links[b as usize] = (NIL, self.head);
        match self.head {
            NIL => self.tail = b,
            h => self.links[h as usize].0 = b,
        }
        self.head = b;
        self.len += 1;
    }

    fn unlink(&mut self, b: u32) {
        if self.queued.get(b as usize) != Some(&true) {
            return;
        }
        self.queued[b as usize] = false;
        let (prev, next) = std::mem::replace(&mut self.links[b as usize], (NIL, NIL));
        match prev {
            NIL => self.head = next,
            p => self.links[p as usize].1 = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.links[n as usize].0 = prev,
        }
        self.len -= 1;
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn reset(&mut self, num_blocks: usize) {
        *self = Lru::new();
        self.links = vec![(NIL, NIL); num_blocks];
        self.queued = vec![false; num_blocks];
        for b in 1..num_blocks as u32 {
            self.push_tail(b);
        }
    }

    fn push_uncached(&mut self, block: BlockId) {
        self.push_head(block.0);
    }

    fn push_cached(&mut self, block: BlockId) {
        self.push_tail(block.0);
    }

    fn remove(&mut self, block: BlockId) {
        self.unlink(block.0);
    }

    fn pop(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        Some(BlockId(b))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn order(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.len);
        let mut at = self.head;
        while at != NIL {
            out.push(BlockId(at));
            at = self.links[at as usize].1;
        }
        out
    }

    fn clone_box(&self) -> Box<dyn EvictionPolicy> {
        Box::new(self.clone())
    }
}

/// Least-frequently-used with dynamic aging; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct LfuAging {
    /// Free blocks without content, in the order they are handed out.
    uncached: VecDeque<u32>,
    /// Free cached blocks by (priority, arrival, block).
    cached: BTreeSet<(u64, u64, u32)>,
    /// Per block: its key in `cached` while there.
    keys: Vec<Option<(u64, u64)>>,
    /// Per block: prefix hits since its content was cached.
    hits: Vec<u64>,
    /// Per block: whether it is free (in either set).
    free: Vec<bool>,
    /// The priority of the last cached block evicted.
    age: u64,
    arrivals: u64,
}

impl LfuAging {
    /// An empty policy (the pool resets it to its size).
    pub fn new() -> Self {
        LfuAging::default()
    }

    /// Marks `block` free if it is a block of the pool, not the null block, and not free yet.
    fn take_slot(&mut self, block: BlockId) -> bool {
        match self.free.get_mut(block.index()) {
            Some(f) if !*f && block.0 != 0 => {
                *f = true;
                true
            }
            _ => false,
        }
    }
}

impl EvictionPolicy for LfuAging {
    fn name(&self) -> &'static str {
        "lfu-aging"
    }

    fn reset(&mut self, num_blocks: usize) {
        *self = LfuAging::new();
        self.uncached = (1..num_blocks as u32).collect();
        self.keys = vec![None; num_blocks];
        self.hits = vec![0; num_blocks];
        self.free = vec![true; num_blocks];
        if let Some(null) = self.free.first_mut() {
            *null = false;
        }
    }

    fn push_uncached(&mut self, block: BlockId) {
        if !self.take_slot(block) {
            return;
        }
        // Arrivals are in reverse priority order; pushing to the front keeps a batch's order,
        // and uncached blocks of later frees go before older ones (as in `Lru`).
        self.hits[block.index()] = 0;
        self.uncached.push_front(block.0);
    }

    fn push_cached(&mut self, block: BlockId) {
        if !self.take_slot(block) {
            return;
        }
        let b = block.index();
        self.arrivals += 1;
        let key = (self.age.saturating_add(self.hits[b]), self.arrivals);
        self.keys[b] = Some(key);
        self.cached.insert((key.0, key.1, block.0));
    }

    fn remove(&mut self, block: BlockId) {
        let b = block.index();
        if self.free.get(b) != Some(&true) {
            return;
        }
        self.free[b] = false;
        match self.keys[b].take() {
            Some((p, a)) => {
                self.cached.remove(&(p, a, block.0));
            }
            None => self.uncached.retain(|&x| x != block.0),
        }
    }

    fn pop(&mut self) -> Option<BlockId> {
        if let Some(b) = self.uncached.pop_front() {
            self.free[b as usize] = false;
            return Some(BlockId(b));
        }
        let (priority, _, b) = self.cached.pop_first()?;
        self.free[b as usize] = false;
        self.keys[b as usize] = None;
        self.hits[b as usize] = 0; // its content is evicted
        self.age = priority;
        Some(BlockId(b))
    }

    fn hit(&mut self, block: BlockId) {
        if let Some(h) = self.hits.get_mut(block.index()) {
            *h = h.saturating_add(1);
        }
    }

    fn len(&self) -> usize {
        self.uncached.len() + self.cached.len()
    }

    fn order(&self) -> Vec<BlockId> {
        self.uncached
            .iter()
            .copied()
            .chain(self.cached.iter().map(|&(_, _, b)| b))
            .map(BlockId)
            .collect()
    }

    fn clone_box(&self) -> Box<dyn EvictionPolicy> {
        Box::new(self.clone())
    }
}
