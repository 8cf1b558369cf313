//! The shape of the KV cache and how many blocks fit in a device's memory, as vLLM sizes it.

use std::fmt;

use ascend_hal::DType;

use crate::error::{KvError, Result};

/// The shape of one model's paged KV cache.
///
/// Layout per layer, for K and for V alike: `[num_blocks, block_size, num_kv_heads, head_size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheSpec {
    /// Decoder layers.
    pub num_layers: usize,
    /// KV heads (fewer than query heads with grouped-query attention).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_size: usize,
    /// Element type of the cache.
    pub dtype: DType,
    /// Tokens per block: 128 by default (what Ascend's paged attention kernels want); 16 works.
    pub block_size: usize,
}

impl KvCacheSpec {
    /// The default block size.
    pub const DEFAULT_BLOCK_SIZE: usize = 128;

    /// A spec with the default block size.
    pub fn new(num_layers: usize, num_kv_heads: usize, head_size: usize, dtype: DType) -> Self {
        KvCacheSpec {
            num_layers,
            num_kv_heads,
            head_size,
            dtype,
            block_size: Self::DEFAULT_BLOCK_SIZE,
        }
    }

    /// The same spec with another block size.
    pub fn with_block_size(self, block_size: usize) -> Self {
        KvCacheSpec { block_size, ..self }
    }

    /// Bytes one block takes across all layers, K and V:
    /// `2 * layers * block_size * kv_heads * head_size * dtype_size`; `None` past `u64::MAX`.
    pub fn checked_bytes_per_block(&self) -> Option<u64> {
        [
            self.num_layers,
            self.block_size,
            self.num_kv_heads,
            self.head_size,
            self.dtype.size_in_bytes(),
        ]
        .iter()
        .try_fold(2u64, |n, &d| n.checked_mul(d as u64))
    }

    /// [`checked_bytes_per_block`](Self::checked_bytes_per_block), saturating at `u64::MAX`
    /// (sizing refuses such a spec).
    pub fn bytes_per_block(&self) -> u64 {
        self.checked_bytes_per_block().unwrap_or(u64::MAX)
    }

    /// Elements of one layer's K (or V) cache for `num_blocks` blocks, saturating at
    /// `usize::MAX` (which no allocation can have).
    pub fn layer_elements(&self, num_blocks: usize) -> usize {
        [self.block_size, self.num_kv_heads, self.head_size]
            .iter()
            .try_fold(num_blocks, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<()> {
        if self.num_layers == 0
            || self.num_kv_heads == 0
            || self.head_size == 0
            || self.block_size == 0
        {
            return Err(KvError::InvalidConfig(format!(
                "layers, KV heads, head size and block size must all be positive: {self:?}"
            )));
        }
        if self.checked_bytes_per_block().is_none() {
            return Err(KvError::InvalidConfig(format!(
                "one block of this spec takes more than u64::MAX bytes: {self:?}"
            )));
        }
        Ok(())
    }

    /// Blocks a pool needs to hold one sequence of `max_model_len` tokens: its blocks plus the
    /// null block 0.
    ///
    /// # Errors
    /// [`KvError::InvalidConfig`] for a zero block size, or a length past what the kernels'
    /// `i32` slot mapping can address.
    pub fn blocks_for_model_len(&self, max_model_len: usize) -> Result<usize> {
        if self.block_size == 0 {
            return Err(KvError::InvalidConfig("block_size must be positive".into()));
        }
        if max_model_len > i32::MAX as usize {
            return Err(KvError::InvalidConfig(format!(
                "max_model_len {max_model_len} is past what the kernels' i32 slot mapping \
                 addresses ({})",
                i32::MAX
            )));
        }
        Ok(max_model_len.div_ceil(self.block_size) + 1)
    }

    /// How many blocks fit: `floor((total * utilization - non_kv_peak) / bytes_per_block)`.
    ///
    /// # Errors
    /// [`KvError::InsufficientMemory`] when not even one block fits, or when the blocks cannot
    /// hold one sequence of `budget.max_model_len` tokens; both say how many bytes are missing.
    pub fn size_for(&self, budget: &MemoryBudget) -> Result<KvCacheSizing> {
        self.validate()?;
        if !(budget.utilization > 0.0 && budget.utilization <= 1.0) {
            return Err(KvError::InvalidConfig(format!(
                "utilization must be in (0, 1], got {}",
                budget.utilization
            )));
        }
        let per_block = self.bytes_per_block();
        let usable = (budget.total_memory as f64 * budget.utilization).floor() as u64;
        let available = usable.saturating_sub(budget.non_kv_peak);
        let num_blocks = (available / per_block) as usize;
        if num_blocks == 0 {
            return Err(KvError::InsufficientMemory {
                what: format!(
                    "{} of {} bytes usable at utilization {} leave {available} bytes after the \
                     {}-byte non-KV peak, less than one {per_block}-byte block",
                    usable, budget.total_memory, budget.utilization, budget.non_kv_peak
                ),
                missing: budget
                    .non_kv_peak
                    .saturating_add(per_block)
                    .saturating_sub(usable),
            });
        }
        let needed = self.blocks_for_model_len(budget.max_model_len)?;
        if num_blocks < needed {
            return Err(KvError::InsufficientMemory {
                what: format!(
                    "max_model_len {} needs {needed} blocks of {} tokens, only {num_blocks} fit",
                    budget.max_model_len, self.block_size
                ),
                missing: ((needed - num_blocks) as u64)
                    .saturating_mul(per_block)
                    .saturating_sub(available % per_block),
            });
        }
        Ok(KvCacheSizing {
            num_blocks,
            block_size: self.block_size,
            bytes_per_block: per_block,
        })
    }
}

/// Device memory available to the KV cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBudget {
    /// The device's total memory in bytes.
    pub total_memory: u64,
    /// Fraction of it the engine may use (vLLM's `gpu_memory_utilization`, 0.9 by default).
    pub utilization: f64,
    /// Peak bytes used by everything but the KV cache (weights, activations, workspaces).
    pub non_kv_peak: u64,
    /// The longest sequence the engine must be able to hold.
    pub max_model_len: usize,
}

/// The result of sizing: how many blocks to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheSizing {
    /// Blocks in the pool, the null block included.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Bytes per block across all layers.
    pub bytes_per_block: u64,
}

impl KvCacheSizing {
    /// Tokens the usable blocks hold (the null block excluded), saturating.
    pub fn num_tokens(&self) -> usize {
        self.num_blocks
            .saturating_sub(1)
            .saturating_mul(self.block_size)
    }

    /// Bytes of device memory all blocks take, saturating.
    pub fn total_bytes(&self) -> u64 {
        (self.num_blocks as u64).saturating_mul(self.bytes_per_block)
    }
}

impl fmt::Display for KvCacheSizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Available KV cache blocks: {} ({} tokens)",
            self.num_blocks.saturating_sub(1),
            self.num_tokens()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_matches_the_formula() {
        // Llama-3-8B-like: 32 layers, 8 KV heads, head 128, bf16: 128 KiB per token, 16 MiB per
        // 128-token block.
        let spec = KvCacheSpec::new(32, 8, 128, DType::BF16);
        assert_eq!(spec.bytes_per_block(), 2 * 32 * 128 * 8 * 128 * 2);
        let budget = MemoryBudget {
            total_memory: 64 << 30,
            utilization: 0.9,
            non_kv_peak: 18 << 30,
            max_model_len: 8192,
        };
        let s = spec.size_for(&budget).unwrap();
        let available = ((64u64 << 30) as f64 * 0.9) as u64 - (18 << 30);
        let expected = (available / (16 << 20)) as usize;
        assert_eq!(s.num_blocks, expected);
        assert_eq!(
            s.to_string(),
            format!(
                "Available KV cache blocks: {} ({} tokens)",
                expected - 1,
                (expected - 1) * 128
            )
        );
        let small = spec.with_block_size(16).size_for(&budget).unwrap();
        assert_eq!(small.num_blocks, (available / (2 << 20)) as usize);
    }

    #[test]
    fn too_little_memory_says_how_much_is_missing() {
        let spec = KvCacheSpec::new(2, 2, 64, DType::F16).with_block_size(16);
        let per_block = spec.bytes_per_block(); // 16 KiB
        let err = spec
            .size_for(&MemoryBudget {
                total_memory: 100 << 10,
                utilization: 1.0,
                non_kv_peak: 90 << 10,
                max_model_len: 16,
            })
            .unwrap_err();
        match err {
            KvError::InsufficientMemory { missing, .. } => {
                assert_eq!(missing, per_block - (10 << 10))
            }
            other => panic!("{other:?}"),
        }
        // 10 blocks fit but max_model_len 1024 needs 65: 55 blocks' worth is missing, less the
        // remainder already available.
        let err = spec
            .size_for(&MemoryBudget {
                total_memory: 10 * per_block + 100,
                utilization: 1.0,
                non_kv_peak: 0,
                max_model_len: 1024,
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_model_len 1024 needs 65 blocks"), "{msg}");
        assert_eq!(
            err,
            KvError::InsufficientMemory {
                what: "max_model_len 1024 needs 65 blocks of 16 tokens, only 10 fit".into(),
                missing: 55 * per_block - 100,
            }
        );
        assert!(spec
            .size_for(&MemoryBudget {
                total_memory: 1 << 30,
                utilization: 1.5,
                non_kv_peak: 0,
                max_model_len: 16
            })
            .is_err());
    }
}
