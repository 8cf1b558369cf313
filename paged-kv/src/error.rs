//! The error type of the paged KV cache.

use crate::ids::{BlockId, RequestId};

/// Result alias of this crate.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// Everything the KV cache can refuse. Every failed call leaves the cache as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// Not enough free blocks for an all-or-nothing allocation.
    #[error(
        "out of KV cache blocks: {requested} needed, {free} free{}{}; finish or preempt a \
         request, or give the cache more memory",
        if *reserved > 0 { format!(" ({reserved} of them kept free for running requests)") } else { String::new() },
        if *cached_tokens > 0 { format!(" ({cached_tokens} prompt tokens were found in the prefix cache)") } else { String::new() }
    )]
    OutOfBlocks {
        /// Blocks the call needed.
        requested: usize,
        /// Blocks free when it failed.
        free: usize,
        /// Blocks of the free ones the watermark keeps for running requests (new requests only).
        reserved: usize,
        /// Prompt tokens a failed `admit` found in the prefix cache (0 for other calls), so
        /// that the caller need not look them up again (which would count twice in the
        /// metrics).
        cached_tokens: usize,
    },

    /// A request id the manager does not know.
    #[error("unknown request {0}: it was never admitted, or was already freed")]
    UnknownRequest(RequestId),

    /// A request id already in use.
    #[error("request {0} already exists; free it before reusing the id")]
    DuplicateRequest(RequestId),

    /// A block released more times than it was taken.
    #[error("double free of block {0}: its reference count is already zero")]
    DoubleFree(BlockId),

    /// A block id outside the pool, or the reserved null block.
    #[error("block {block} is not an allocatable block of this pool (1..{total})")]
    InvalidBlock {
        /// The block.
        block: BlockId,
        /// Blocks in the pool, the null block 0 included.
        total: usize,
    },

    /// The device memory cannot hold even the cache this configuration needs.
    #[error(
        "not enough memory for the KV cache: {what}; {missing} more bytes are needed (lower \
         max_model_len, raise gpu_memory_utilization, or use fewer layers per device)"
    )]
    InsufficientMemory {
        /// What did not fit.
        what: String,
        /// How many more bytes would make it fit.
        missing: u64,
    },

    /// A device operation failed (allocation, copy, kernel).
    #[error("device operation failed: {0}")]
    Device(#[from] ascend_hal::Error),

    /// A configuration that cannot work.
    #[error("invalid KV cache configuration: {0}")]
    InvalidConfig(String),

    /// A call out of the step's order: the cache's kernels need the tables of the step that
    /// `begin_step` uploads, for the blocks as they are.
    #[error("KV cache step order: {0}")]
    StepOrder(String),
}
