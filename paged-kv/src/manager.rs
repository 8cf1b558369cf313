//! The KV cache manager: the calls an engine's scheduler makes each step, after vLLM v1's
//! `KVCacheManager`.
//!
//! - [`KvCacheManager::admit`] finds the longest cached prefix of a new request (never the
//!   whole prompt: its last token is always recomputed so the model produces logits), takes
//!   those blocks, and allocates slots for the first chunk of the rest, all or nothing.
//! - [`KvCacheManager::allocate_slots`] gives a running request slots for its next tokens (a
//!   prefill chunk, or the decode token), all or nothing, copy-on-write included.
//! - Full blocks are hashed and cached as soon as their tokens are scheduled: within one step a
//!   batch writes every layer's KV before attention reads it, so later requests of the same
//!   step may already share them.
//! - [`KvCacheManager::fork`] shares every block of a request with a new one (parallel sampling,
//!   beam search); the first write into a shared partial block copies it, and the copy is
//!   returned for the engine to perform on the device.
//! - Optionally, a watermark of blocks stays free for running requests, so that admission fails
//!   before a running request would have to be preempted. vLLM v1's `KVCacheManager` has none,
//!   and neither does [`ManagerConfig::new`]; vLLM v0's block manager kept 1%
//!   ([`ManagerConfig::with_watermark`]).

use rustc_hash::FxHashMap;
use std::sync::Arc;

use crate::error::{KvError, Result};
use crate::events::{KvCacheEvent, KvEventBatch};
use crate::hash::{block_hash, BlockHash, RequestKeys};
use crate::ids::{BlockId, RequestId, TokenId};
use crate::pool::BlockPool;

/// How the manager is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Blocks in the pool, the null block 0 included.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Share full blocks between requests with equal prefixes.
    pub enable_prefix_caching: bool,
    /// Blocks that admission of new requests leaves free for running ones (0: none).
    pub watermark_blocks: usize,
    /// Record [`KvCacheEvent`]s for [`KvCacheManager::take_events`] (off by default: then
    /// nothing is recorded).
    pub enable_kv_cache_events: bool,
}

impl ManagerConfig {
    /// Prefix caching on and no watermark: the behaviour of vLLM v1's `KVCacheManager`.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        ManagerConfig {
            num_blocks,
            block_size,
            enable_prefix_caching: true,
            watermark_blocks: 0,
            enable_kv_cache_events: false,
        }
    }

    /// Keeps `fraction` of the blocks (rounded down) free for running requests when admitting
    /// new ones; vLLM v0's block manager used 0.01. A fraction outside `0..=1` (or NaN) keeps
    /// no watermark.
    pub fn with_watermark(self, fraction: f64) -> Self {
        let watermark_blocks = if (0.0..=1.0).contains(&fraction) {
            ((self.num_blocks as f64 * fraction) as usize).min(self.num_blocks)
        } else {
            0
        };
        ManagerConfig {
            watermark_blocks,
            ..self
        }
    }
}

/// A cached prefix found for a prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedPrefix {
    /// The cached blocks, in order.
    pub blocks: Vec<BlockId>,
    /// Their hashes.
    pub hashes: Vec<BlockHash>,
    /// Tokens they hold (`blocks.len() * block_size`).
    pub num_tokens: usize,
}

/// A block the engine must copy on the device before the step runs (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// Block to copy from.
    pub src: BlockId,
    /// Block to copy into.
    pub dst: BlockId,
}

/// Slots for the tokens of one step of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// One cache slot per new token: `block * block_size + offset`.
    pub slots: Vec<i32>,
    /// Copies to perform before writing (copy-on-write of a shared partial block).
    pub copies: Vec<BlockCopy>,
    /// Blocks newly taken from the pool (copies included).
    pub new_blocks: usize,
}

/// The result of admitting a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Prompt tokens served from the prefix cache (their KV need not be computed).
    pub num_cached_tokens: usize,
    /// Slots for the tokens scheduled in this step.
    pub allocation: Allocation,
}

/// Counters an engine logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Fraction of blocks in use.
    pub usage: f64,
    /// Free blocks (cached-but-unused included).
    pub free_blocks: usize,
    /// Blocks findable in the prefix cache.
    pub cached_blocks: usize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, tokens found.
    pub prefix_hits: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
    /// Requests currently holding blocks.
    pub requests: usize,
}

impl Metrics {
    /// `prefix_hits / prefix_queries` (0 with no queries).
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queries == 0 {
            0.0
        } else {
            self.prefix_hits as f64 / self.prefix_queries as f64
        }
    }
}

#[derive(Debug, Clone)]
struct Sequence {
    blocks: Vec<BlockId>,
    tokens: Vec<TokenId>,
    /// Hashes of the full blocks, in order.
    hashes: Vec<BlockHash>,
    keys: Arc<RequestKeys>,
}

/// The KV cache manager of one engine (one model, one block pool).
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    config: ManagerConfig,
    requests: FxHashMap<RequestId, Sequence>,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl KvCacheManager {
    /// A manager over a fresh pool.
    ///
    /// # Errors
    /// [`KvError::InvalidConfig`] for a zero block size, fewer than 2 blocks, or slots beyond
    /// `i32` (what the kernels take).
    pub fn new(config: ManagerConfig) -> Result<Self> {
        Self::with_eviction_policy(config, Box::new(crate::eviction::Lru::new()))
    }

    /// [`new`](Self::new) with another eviction policy than vLLM's LRU (see
    /// [`eviction`](crate::eviction)).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_eviction_policy(
        config: ManagerConfig,
        policy: Box<dyn crate::eviction::EvictionPolicy>,
    ) -> Result<Self> {
        if config.block_size == 0 {
            return Err(KvError::InvalidConfig("block_size must be positive".into()));
        }
        if config
            .num_blocks
            .checked_mul(config.block_size)
            .is_none_or(|slots| slots > i32::MAX as usize)
        {
            return Err(KvError::InvalidConfig(format!(
                "{} blocks of {} tokens overflow the i32 slot mapping the kernels take",
                config.num_blocks, config.block_size
            )));
        }
        let mut pool = BlockPool::with_policy(config.num_blocks, policy)?;
        pool.record_events(config.enable_kv_cache_events);
        Ok(KvCacheManager {
            pool,
            config,
            requests: FxHashMap::default(),
            prefix_queries: 0,
            prefix_hits: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    /// The block pool (read-only).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Whether the manager holds blocks for this request.
    pub fn contains(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    /// The requests holding blocks.
    pub fn request_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.requests.keys().copied()
    }

    /// A request's blocks, in token order.
    pub fn blocks(&self, id: RequestId) -> Result<&[BlockId]> {
        Ok(&self.seq(id)?.blocks)
    }

    /// A request's tokens so far (those with slots).
    pub fn tokens(&self, id: RequestId) -> Result<&[TokenId]> {
        Ok(&self.seq(id)?.tokens)
    }

    /// The counters.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            usage: self.pool.usage(),
            free_blocks: self.pool.num_free(),
            cached_blocks: self.pool.num_cached(),
            prefix_queries: self.prefix_queries,
            prefix_hits: self.prefix_hits,
            evictions: self.pool.evictions(),
            requests: self.requests.len(),
        }
    }

    fn seq(&self, id: RequestId) -> Result<&Sequence> {
        self.requests.get(&id).ok_or(KvError::UnknownRequest(id))
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// The longest cached prefix of `tokens` in whole blocks, leaving at least the last token
    /// to compute. Counts the lookup in the metrics.
    pub fn find_cached_prefix(&mut self, tokens: &[TokenId], keys: &RequestKeys) -> CachedPrefix {
        let prefix = self.lookup_prefix(tokens, keys);
        self.prefix_queries += tokens.len() as u64;
        self.prefix_hits += prefix.num_tokens as u64;
        prefix
    }

    fn lookup_prefix(&self, tokens: &[TokenId], keys: &RequestKeys) -> CachedPrefix {
        let mut prefix = CachedPrefix::default();
        if !self.config.enable_prefix_caching || tokens.is_empty() {
            return prefix;
        }
        let bs = self.config.block_size;
        let max_blocks = (tokens.len() - 1) / bs;
        let mut parent = None;
        for i in 0..max_blocks {
            let chunk = &tokens[i * bs..(i + 1) * bs];
            let block_keys = keys.for_block(i, i * bs, (i + 1) * bs);
            let hash = block_hash(parent, chunk, &block_keys);
            match self.pool.lookup(hash, parent, chunk, &block_keys) {
                Some(b) => {
                    prefix.blocks.push(b);
                    prefix.hashes.push(hash);
                    parent = Some(hash);
                }
                None => break,
            }
        }
        prefix.num_tokens = prefix.blocks.len() * bs;
        prefix
    }

    /// Admits a new request: takes its longest cached prefix and allocates slots for up to
    /// `max_new_tokens` of the rest of `prompt` (this step's prefill chunk), all or nothing,
    /// keeping the watermark free.
    ///
    /// # Errors
    /// [`KvError::DuplicateRequest`]; [`KvError::OutOfBlocks`] with `cached_tokens` set to the
    /// prompt tokens found in the prefix cache (nothing changed, except that the lookup counts
    /// in the metrics, once).
    pub fn admit(
        &mut self,
        id: RequestId,
        prompt: &[TokenId],
        keys: &RequestKeys,
        max_new_tokens: usize,
    ) -> Result<Admission> {
        if self.requests.contains_key(&id) {
            return Err(KvError::DuplicateRequest(id));
        }
        let prefix = self.find_cached_prefix(prompt, keys);
        let cached = prefix.num_tokens;
        let chunk = max_new_tokens.min(prompt.len() - cached);
        let needed = self.blocks_for(cached + chunk) - prefix.blocks.len();
        // Hit blocks that sit in the free queue leave it when taken.
        let revived = prefix
            .blocks
            .iter()
            .filter(|&&b| self.pool.is_free(b))
            .count();
        let free = self.pool.num_free() - revived;
        let reserved = self.config.watermark_blocks;
        if needed + reserved > free {
            return Err(KvError::OutOfBlocks {
                requested: needed,
                free,
                reserved,
                cached_tokens: cached,
            });
        }
        self.pool.touch(&prefix.blocks)?;
        self.pool.note_hits(&prefix.blocks);
        self.requests.insert(
            id,
            Sequence {
                blocks: prefix.blocks,
                tokens: prompt[..cached].to_vec(),
                hashes: prefix.hashes,
                keys: Arc::new(keys.clone()),
            },
        );
        let allocation = self.allocate_slots(id, &prompt[cached..cached + chunk])?;
        Ok(Admission {
            num_cached_tokens: cached,
            allocation,
        })
    }

    /// Gives a running request slots for `new_tokens` (its next prefill chunk, or the token it
    /// sampled last step), all or nothing; running requests may use the watermark.
    ///
    /// # Errors
    /// [`KvError::UnknownRequest`]; [`KvError::OutOfBlocks`] with nothing changed: the engine
    /// should preempt a request and retry.
    pub fn allocate_slots(&mut self, id: RequestId, new_tokens: &[TokenId]) -> Result<Allocation> {
        let mut allocation = Allocation::default();
        allocation.new_blocks = self.append_slots(
            id,
            new_tokens,
            &mut allocation.slots,
            &mut allocation.copies,
        )?;
        Ok(allocation)
    }

    /// [`allocate_slots`](Self::allocate_slots) into the caller's buffers, so a decode loop
    /// allocates nothing per step: appends one slot per new token to `slots` and the
    /// copy-on-write copies to `copies`, and returns the number of blocks newly taken from the
    /// pool. On error neither buffer changes.
    ///
    /// # Errors
    /// As [`allocate_slots`](Self::allocate_slots).
    pub fn append_slots(
        &mut self,
        id: RequestId,
        new_tokens: &[TokenId],
        slots: &mut Vec<i32>,
        copies: &mut Vec<BlockCopy>,
    ) -> Result<usize> {
        let bs = self.config.block_size;
        let seq = self.requests.get(&id).ok_or(KvError::UnknownRequest(id))?;
        let len = seq.tokens.len();
        let shared_partial = len % bs != 0
            && !new_tokens.is_empty()
            && seq
                .blocks
                .last()
                .is_some_and(|&b| self.pool.ref_count(b) > 1);
        let extra = self.blocks_for(len + new_tokens.len()) - seq.blocks.len();
        let needed = extra + usize::from(shared_partial);
        if needed > self.pool.num_free() {
            return Err(KvError::OutOfBlocks {
                requested: needed,
                free: self.pool.num_free(),
                reserved: 0,
                cached_tokens: 0,
            });
        }

        let seq = self
            .requests
            .get_mut(&id)
            .ok_or(KvError::UnknownRequest(id))?;
        // `needed <= num_free` was checked above, so neither allocation below fails.
        if shared_partial {
            let dst = self.pool.allocate_one()?;
            let last = seq.blocks.len() - 1;
            let src = seq.blocks[last];
            copies.push(BlockCopy { src, dst });
            seq.blocks[last] = dst;
            // Others still hold `src` (its count was above one), so this only drops ours.
            self.pool.free(&[src])?;
        }
        self.pool.allocate_into(extra, &mut seq.blocks)?;
        // Slot of position `pos`: `block * bs + pos % bs`; computed block by block, since a
        // prefill chunk spans many tokens of each block.
        let (mut pos, end) = (len, len + new_tokens.len());
        slots.reserve(new_tokens.len());
        while pos < end {
            let (block, offset) = (pos / bs, pos % bs);
            let run = (bs - offset).min(end - pos);
            let first = seq.blocks[block].0 as usize * bs + offset;
            slots.extend((first..first + run).map(|slot| slot as i32));
            pos += run;
        }
        seq.tokens.extend_from_slice(new_tokens);
        self.cache_full_blocks(id)?;
        Ok(needed)
    }

    /// Hashes and caches the request's blocks that became full; with events on, reports each
    /// run of newly findable blocks in one `BlockStored`.
    fn cache_full_blocks(&mut self, id: RequestId) -> Result<()> {
        if !self.config.enable_prefix_caching {
            return Ok(());
        }
        let bs = self.config.block_size;
        let seq = self
            .requests
            .get_mut(&id)
            .ok_or(KvError::UnknownRequest(id))?;
        let full = seq.tokens.len() / bs;
        let mut run: Option<KvCacheEvent> = None;
        for i in seq.hashes.len()..full {
            let parent = seq.hashes.last().copied();
            let tokens = &seq.tokens[i * bs..(i + 1) * bs];
            let keys = seq.keys.for_block(i, i * bs, (i + 1) * bs);
            let hash = block_hash(parent, tokens, &keys);
            seq.hashes.push(hash);
            // `false`: the block is shared and already cached, or an equal block is: either
            // way the content stays findable (and was reported when it became so).
            let stored = self
                .pool
                .cache_tokens(seq.blocks[i], hash, parent, tokens, keys)?;
            if !self.pool.records_events() {
                continue;
            }
            match (&mut run, stored) {
                (
                    Some(KvCacheEvent::BlockStored {
                        block_hashes,
                        token_ids,
                        ..
                    }),
                    true,
                ) => {
                    block_hashes.push(hash);
                    token_ids.extend_from_slice(tokens);
                }
                (_, true) => {
                    if let Some(done) = run.take() {
                        self.pool.push_event(|| done);
                    }
                    run = Some(KvCacheEvent::BlockStored {
                        block_hashes: vec![hash],
                        parent_block_hash: parent,
                        token_ids: tokens.to_vec(),
                        block_size: bs,
                        lora_id: seq.keys.adapter,
                    });
                }
                (_, false) => {
                    if let Some(done) = run.take() {
                        self.pool.push_event(|| done);
                    }
                }
            }
        }
        if let Some(done) = run {
            self.pool.push_event(|| done);
        }
        Ok(())
    }

    /// The [`KvCacheEvent`]s since the last call, in order (empty unless
    /// [`ManagerConfig::enable_kv_cache_events`]).
    pub fn take_events(&mut self) -> Vec<KvCacheEvent> {
        self.pool.take_events()
    }

    /// [`take_events`](Self::take_events) as a stamped batch (one per engine step), or `None`
    /// when nothing happened.
    pub fn take_event_batch(&mut self) -> Option<KvEventBatch> {
        let events = self.take_events();
        (!events.is_empty()).then(|| KvEventBatch::now(events))
    }

    /// The keys a request was admitted with.
    pub fn request_keys(&self, id: RequestId) -> Result<RequestKeys> {
        Ok((*self.seq(id)?.keys).clone())
    }

    /// Re-creates a request with exactly these tokens in fresh blocks (after its blocks were
    /// swapped out and are about to be copied back), all or nothing, without a prefix lookup.
    /// The full blocks are cached again once the caller has restored their contents.
    pub fn restore(
        &mut self,
        id: RequestId,
        tokens: &[TokenId],
        keys: RequestKeys,
    ) -> Result<Vec<BlockId>> {
        if self.requests.contains_key(&id) {
            return Err(KvError::DuplicateRequest(id));
        }
        let needed = self.blocks_for(tokens.len());
        if needed > self.pool.num_free() {
            return Err(KvError::OutOfBlocks {
                requested: needed,
                free: self.pool.num_free(),
                reserved: 0,
                cached_tokens: 0,
            });
        }
        let blocks = self.pool.allocate(needed)?;
        self.requests.insert(
            id,
            Sequence {
                blocks: blocks.clone(),
                tokens: tokens.to_vec(),
                hashes: Vec::new(),
                keys: Arc::new(keys),
            },
        );
        self.cache_full_blocks(id)?;
        Ok(blocks)
    }

    /// Releases a request's blocks, last block first, so that the head of a shared prefix
    /// stays cached longest.
    pub fn free_request(&mut self, id: RequestId) -> Result<()> {
        let seq = self.requests.get(&id).ok_or(KvError::UnknownRequest(id))?;
        let reversed: Vec<BlockId> = seq.blocks.iter().rev().copied().collect();
        self.pool.free(&reversed)?;
        self.requests.remove(&id);
        Ok(())
    }

    /// Makes `child` a copy of `parent` sharing all its blocks. A later write into a shared
    /// partial block by either copies that block first (see [`Allocation::copies`]).
    pub fn fork(&mut self, parent: RequestId, child: RequestId) -> Result<()> {
        if self.requests.contains_key(&child) {
            return Err(KvError::DuplicateRequest(child));
        }
        let seq = self.seq(parent)?.clone();
        self.pool.touch(&seq.blocks)?;
        self.requests.insert(child, seq);
        Ok(())
    }

    /// Forgets every cached prefix (after a weight update, say). Blocks in use stay with their
    /// requests. Returns how many cached blocks were forgotten.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_cache()
    }
}
