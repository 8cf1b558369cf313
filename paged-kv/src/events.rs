//! KV cache events: what a router needs to mirror which blocks an engine has cached, with the
//! fields of vLLM's `BlockStored` / `BlockRemoved` / `AllBlocksCleared` and `KVEventBatch`
//! (`vllm/distributed/kv_events.py`), as llm-d and Dynamo-style routers consume them.
//!
//! Off by default ([`ManagerConfig::enable_kv_cache_events`](crate::ManagerConfig)): then the
//! manager records nothing and pays one branch per cached or evicted block. On, every block that
//! becomes findable is reported once by a `BlockStored` (runs of consecutive blocks of one
//! request in one event, as vLLM does), every block evicted from the prefix cache by a
//! `BlockRemoved`, and a reset by `AllBlocksCleared`; replaying them in order into an empty set
//! gives exactly the set of cached hashes.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::BlockHash;
use crate::ids::TokenId;

/// One change to the set of cached blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCacheEvent {
    /// Blocks became findable in the prefix cache.
    BlockStored {
        /// Their hashes, in chain order.
        block_hashes: Vec<BlockHash>,
        /// The hash of the block before the first one (`None` for a request's first block).
        parent_block_hash: Option<BlockHash>,
        /// Their tokens, `block_hashes.len() * block_size` of them.
        token_ids: Vec<TokenId>,
        /// Tokens per block.
        block_size: usize,
        /// The LoRA adapter of the request that stored them.
        lora_id: Option<u64>,
    },
    /// Blocks left the prefix cache (evicted for reuse).
    BlockRemoved {
        /// Their hashes.
        block_hashes: Vec<BlockHash>,
    },
    /// Every cached block was forgotten.
    AllBlocksCleared,
}

/// The events of one step, stamped, as vLLM's `KVEventBatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventBatch {
    /// Seconds since the Unix epoch when the batch was taken.
    pub ts: f64,
    /// The events, in the order they happened.
    pub events: Vec<KvCacheEvent>,
    /// The data-parallel rank of the engine, if it has one.
    pub data_parallel_rank: Option<u32>,
}

impl KvEventBatch {
    pub(crate) fn now(events: Vec<KvCacheEvent>) -> Self {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        KvEventBatch {
            ts,
            events,
            data_parallel_rank: None,
        }
    }
}
