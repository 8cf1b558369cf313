//! The tables the attention and cache kernels take for a batch, in the layout ATB and torch_npu
//! use: block tables `[num_seqs, max_blocks]` of `i32` (padded with the null block 0), a slot
//! mapping `[num_tokens]` of `i32` (`block * block_size + offset`, `-1` for padding tokens that
//! the cache kernel must skip), sequence lengths `[num_seqs]`, query start offsets
//! `[num_seqs + 1]` of `i32`, and the step's token positions `[num_tokens]` of `i64` (what the
//! rotary kernel takes).

use crate::error::{KvError, Result};
use crate::ids::{BlockId, RequestId};
use crate::manager::KvCacheManager;

/// The most tokens a padded slot mapping may have: kernels count tokens in `i32`, and a larger
/// pad would only allocate padding.
pub const MAX_PADDED_TOKENS: usize = 1 << 24;

/// Kernel-facing tables for one step of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTables {
    /// Sequences in the batch.
    pub num_seqs: usize,
    /// Width of each block-table row.
    pub max_blocks_per_seq: usize,
    /// `[num_seqs, max_blocks_per_seq]`, row-major, padded with block 0.
    pub block_tables: Vec<i32>,
    /// `[num_tokens]`: slots of the tokens computed this step, sequence after sequence, then
    /// `-1` for padding.
    pub slot_mapping: Vec<i32>,
    /// `[num_seqs]`: tokens of each sequence including this step's.
    pub seq_lens: Vec<i32>,
    /// `[num_seqs]`: tokens of each sequence computed this step.
    pub query_lens: Vec<i32>,
    /// `[num_seqs + 1]`: where each sequence's tokens start in the step's token order (the
    /// prefix sums of `query_lens`, from 0), as the prefill attention kernel takes them.
    pub query_start_loc: Vec<i32>,
    /// `[num_tokens]`: the position of each token computed this step in its sequence (what
    /// RoPE rotates by), sequence after sequence, then `0` for padding (as the slot mapping's
    /// `-1`), as `i64` for the rotary kernel.
    pub positions: Vec<i64>,
}

impl BatchTables {
    /// Tokens computed this step, padding included (the slot mapping's length).
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }
}

impl KvCacheManager {
    /// Tables for a batch of `(request, tokens computed this step)`; the step's tokens are the
    /// last ones the request was given slots for. `pad_tokens_to` pads the slot mapping with
    /// `-1` (for a fixed-shape graph, at most [`MAX_PADDED_TOKENS`]); `max_blocks_per_seq`
    /// fixes the row width (else the longest row; at most the pool's block count).
    pub fn batch_tables(
        &self,
        batch: &[(RequestId, usize)],
        pad_tokens_to: Option<usize>,
        max_blocks_per_seq: Option<usize>,
    ) -> Result<BatchTables> {
        let bs = self.block_size();
        let mut rows: Vec<&[BlockId]> = Vec::with_capacity(batch.len());
        let mut seq_lens = Vec::with_capacity(batch.len());
        let mut query_lens = Vec::with_capacity(batch.len());
        let mut slot_mapping = Vec::new();
        let mut positions = Vec::new();
        let mut query_start_loc = Vec::with_capacity(batch.len() + 1);
        query_start_loc.push(0i32);
        let mut seen = rustc_hash::FxHashSet::default();
        for &(id, n) in batch {
            if !seen.insert(id) {
                return Err(KvError::InvalidConfig(format!(
                    "request {id} appears twice in the batch; a step computes each request's \
                     tokens in one entry"
                )));
            }
            let blocks = self.blocks(id)?;
            let len = self.tokens(id)?.len();
            if n > len {
                return Err(KvError::InvalidConfig(format!(
                    "request {id} computes {n} tokens this step but has only {len}"
                )));
            }
            slot_mapping.extend(
                (len - n..len).map(|pos| (blocks[pos / bs].0 as usize * bs + pos % bs) as i32),
            );
            positions.extend((len - n..len).map(|pos| pos as i64));
            rows.push(blocks);
            seq_lens.push(len as i32);
            query_lens.push(n as i32);
            query_start_loc.push(slot_mapping.len() as i32);
        }
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let width = max_blocks_per_seq.unwrap_or(longest);
        if width < longest {
            return Err(KvError::InvalidConfig(format!(
                "a sequence has {longest} blocks, more than the {width} per row requested"
            )));
        }
        if width > self.pool().num_blocks() {
            return Err(KvError::InvalidConfig(format!(
                "max_blocks_per_seq {width} is more than the pool's {} blocks",
                self.pool().num_blocks()
            )));
        }
        if let Some(total) = pad_tokens_to {
            if total > MAX_PADDED_TOKENS {
                return Err(KvError::InvalidConfig(format!(
                    "pad_tokens_to {total} is past the {MAX_PADDED_TOKENS} tokens a step may pad to"
                )));
            }
            if total < slot_mapping.len() {
                return Err(KvError::InvalidConfig(format!(
                    "{} tokens do not fit a padded length of {total}",
                    slot_mapping.len()
                )));
            }
            slot_mapping.resize(total, -1);
            positions.resize(total, 0);
        }
        let cells = rows.len().checked_mul(width).ok_or_else(|| {
            KvError::InvalidConfig(format!("{} rows of {width} blocks overflow", rows.len()))
        })?;
        let mut block_tables = vec![BlockId::NULL.0 as i32; cells];
        for (row, blocks) in block_tables.chunks_mut(width.max(1)).zip(&rows) {
            for (cell, b) in row.iter_mut().zip(blocks.iter()) {
                *cell = b.0 as i32;
            }
        }
        Ok(BatchTables {
            num_seqs: batch.len(),
            max_blocks_per_seq: width,
            block_tables,
            slot_mapping,
            seq_lens,
            query_lens,
            query_start_loc,
            positions,
        })
    }
}
