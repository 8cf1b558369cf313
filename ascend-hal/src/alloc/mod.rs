//! Device memory allocators over any backend.
//!
//! [`CachingAllocator`] is what `PYTORCH_NPU_ALLOC_CONF=expandable_segments:True` gives
//! torch_npu users, as a Rust library: size classes, best fit, splitting and coalescing,
//! stream-ordered reuse, expandable segments, a memory-fraction cap, statistics and
//! `empty_cache()`.

mod caching;
mod config;

pub use caching::{
    AllocatorStats, BlockInfo, CachingAllocator, MemorySnapshot, Pool, PooledBlock, SegmentInfo,
};
pub use config::AllocatorConfig;
