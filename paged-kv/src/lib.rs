//! # paged-kv
//!
//! The host side of PagedAttention, for any backend: the part every Rust inference engine would
//! otherwise write itself. Block management is plain Rust with no device in sight, ported from
//! vLLM v1's KV cache manager:
//!
//! - [`KvCacheSpec`] and [`MemoryBudget`]: how many blocks fit, logged as vLLM does
//!   (`Available KV cache blocks: N (M tokens)`).
//! - [`BlockPool`]: reference counts and a free set ordered by an [`eviction`] policy: vLLM's
//!   LRU queue by default (O(1) per block), LFU with aging, or your own.
//! - Automatic prefix caching: full blocks are identified by a chained 128-bit hash of parent,
//!   tokens and extra keys (adapter, multimodal content, cache salt), and a hit is confirmed by
//!   comparing content, so a collision is a miss, never someone else's KV.
//! - [`KvCacheManager`]: admit, allocate slots (all or nothing), fork with copy-on-write, free,
//!   watermark, reset, metrics.
//! - [`BatchTables`]: block tables and slot mappings for the kernels.
//! - [`KvCacheEvent`]s: which blocks were stored and evicted, batched per step
//!   ([`KvEventBatch`]), so a router can mirror the cache (off by default).
//! - [`KvCache`]: the device side, generic over any backend with the kernel ops: every layer's
//!   K and V caches sized from the device's memory, table uploads, `reshape_and_cache` and
//!   attention per layer, copy-on-write copies, swapping to pinned host memory, all in stream
//!   order.
//!
//! ```
//! use paged_kv::{KvCacheManager, ManagerConfig, RequestId, RequestKeys};
//!
//! let mut kv = KvCacheManager::new(ManagerConfig::new(64, 16))?;
//! let system: Vec<u32> = (0..40).collect();
//! let a = kv.admit(RequestId(1), &system, &RequestKeys::default(), usize::MAX)?;
//! assert_eq!(a.num_cached_tokens, 0);
//! // A second request with the same system prompt reuses its two full blocks.
//! let mut prompt = system.clone();
//! prompt.extend([900, 901]);
//! let b = kv.admit(RequestId(2), &prompt, &RequestKeys::default(), usize::MAX)?;
//! assert_eq!(b.num_cached_tokens, 32);
//! assert_eq!(b.allocation.slots.len(), 10); // tokens 32..42 are computed
//! let tables = kv.batch_tables(&[(RequestId(1), 40), (RequestId(2), 10)], None, None)?;
//! assert_eq!(tables.seq_lens, vec![40, 42]);
//! # Ok::<(), paged_kv::KvError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod device;
mod error;
mod events;
pub mod eviction;
mod hash;
mod ids;
mod manager;
mod pool;
mod spec;
mod tables;

pub use device::{KvCache, KvCacheConfig, LayerCaches, StepTablesView};
pub use error::{KvError, Result};
pub use events::{KvCacheEvent, KvEventBatch};
pub use hash::{block_hash, BlockHash, BlockKeys, MultimodalSpan, RequestKeys};
pub use ids::{BlockId, RequestId, TokenId};
pub use manager::{
    Admission, Allocation, BlockCopy, CachedPrefix, KvCacheManager, ManagerConfig, Metrics,
};
pub use pool::{BlockPool, CachedContent};
pub use spec::{KvCacheSizing, KvCacheSpec, MemoryBudget};
pub use tables::{BatchTables, MAX_PADDED_TOKENS};

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
