//! Device memory allocators over any backend.
//!
//! [`Allocator`] is where buffers come from: allocate bytes for use on a stream, get back a
//! [`MemoryBlock`] that returns on drop, mark it as used on other streams, read statistics,
//! release cached memory. Two implementations come with the HAL:
//!
//! - [`DirectAllocator`]: each block is one raw device allocation (the baseline);
//! - [`CachingAllocator`]: what `PYTORCH_NPU_ALLOC_CONF=expandable_segments:True` gives
//!   torch_npu users, as a Rust library: size classes, best fit, splitting and coalescing,
//!   stream-ordered reuse, expandable segments, a memory-fraction cap, statistics and
//!   `empty_cache()`.
//!
//! Engines write their own ([`BlockOwner`] and [`MemoryBlock::from_raw_parts`] are the pieces;
//! `examples/arena.rs` is a bump arena), and any implementation can run the allocator
//! conformance suite (`ascend_hal::conformance::allocator`, feature `conformance`).

mod allocator;
mod caching;
mod config;
mod direct;

pub use allocator::{
    check_stream_device, zero_size, Allocator, AllocatorStats, BlockOwner, MemoryBlock,
    SharedAllocator,
};
pub use caching::{BlockInfo, CachingAllocator, MemorySnapshot, Pool, SegmentInfo};
pub use config::AllocatorConfig;
pub use direct::DirectAllocator;
