//! The device side: each layer's K and V caches on a backend's device, and everything a step
//! does with them, in stream order.
//!
//! [`KvCache`] owns a [`KvCacheManager`] and mirrors its decisions on the device:
//! - [`begin_step`](KvCache::begin_step) performs the copy-on-write copies the manager asked for,
//!   and uploads the step's block tables, slot mapping, query starts and sequence lengths through
//!   double-buffered pinned staging, so the host does not wait for the device in the steady state;
//! - [`write_kv`](KvCache::write_kv) and [`attention`](KvCache::attention) run `reshape_and_cache`
//!   and paged (prefill-style, causal) attention for one layer;
//! - [`swap_out`](KvCache::swap_out) / [`swap_in`](KvCache::swap_in) move a preempted request's
//!   blocks to pinned host memory and back; [`preempt`](KvCache::preempt) drops them for
//!   recomputation.
//!
//! All of it is generic over any backend with the kernel ops. Device memory (the caches and the
//! per-step tables) comes from an [`Allocator`](ascend_hal::alloc::Allocator) the engine chooses
//! ([`KvCache::with_allocator`]); [`KvCache::new`] uses a caching allocator of its own.

use std::collections::HashMap;
use std::sync::Arc;

use ascend_hal::alloc::{CachingAllocator, SharedAllocator};
use ascend_hal::{Backend, Device, DeviceBuffer, DeviceRepr, PinnedBuffer, Stream, StreamExt};
use ascend_kernels::{
    swap_in, swap_out, CacheShape, In, KernelOps, KvFloat, Out, PrefillAttention, ReshapeAndCache,
};

use crate::error::{KvError, Result};
use crate::hash::RequestKeys;
use crate::ids::{BlockId, RequestId, TokenId};
use crate::manager::{Admission, Allocation, BlockCopy, KvCacheManager, ManagerConfig};
use crate::spec::{KvCacheSizing, KvCacheSpec, MemoryBudget};

/// How to size and run a device KV cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCacheConfig {
    /// Fraction of the device's memory the engine may use (0.9 by default).
    pub utilization: f64,
    /// Peak bytes the engine needs besides what is already allocated and the KV cache
    /// (activations, workspaces).
    pub activation_peak: u64,
    /// The longest sequence that must fit.
    pub max_model_len: usize,
    /// Use at most this many blocks (vLLM's `num_gpu_blocks_override`), if set.
    pub max_blocks: Option<usize>,
    /// Share full blocks between requests with equal prefixes.
    pub enable_prefix_caching: bool,
    /// Pinned host blocks for swapped-out requests.
    pub swap_blocks: usize,
    /// Record KV cache events ([`KvCache::take_event_batch`]).
    pub enable_kv_cache_events: bool,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        KvCacheConfig {
            utilization: 0.9,
            activation_peak: 0,
            max_model_len: 2048,
            max_blocks: None,
            enable_prefix_caching: true,
            swap_blocks: 64,
            enable_kv_cache_events: false,
        }
    }
}

/// One layer's K and V caches.
pub type LayerCaches<'a, B, T> = (&'a DeviceBuffer<B, T>, &'a DeviceBuffer<B, T>);

/// A request swapped out to host memory.
#[derive(Debug, Clone)]
struct Swapped {
    host_blocks: Vec<u32>,
    tokens: Vec<TokenId>,
    keys: RequestKeys,
}

/// The step's tables on the device, refreshed by `begin_step`.
struct StepTables<B: Backend> {
    block_tables: DeviceBuffer<B, i32>,
    slot_mapping: DeviceBuffer<B, i32>,
    query_start_loc: DeviceBuffer<B, i32>,
    seq_lens: DeviceBuffer<B, i32>,
    positions: DeviceBuffer<B, i64>,
    /// The step's query offsets and sequence lengths on the host too: what attention providers
    /// that take host lengths (CANN's fused attention) are given.
    host_query_start_loc: Vec<i32>,
    host_seq_lens: Vec<i32>,
    /// Two sets of pinned staging buffers used in turn.
    staging: [[PinnedBuffer<B, i32>; 4]; 2],
    staging_positions: [PinnedBuffer<B, i64>; 2],
    turn: usize,
    num_seqs: usize,
    num_tokens: usize,
    max_blocks_per_seq: usize,
    state: StepState,
}

/// Whether the device tables describe the blocks as they are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    /// No `begin_step` yet.
    NotBegun,
    /// `begin_step` ran, and nothing changed the blocks since.
    Ready,
    /// This call changed the blocks after `begin_step`.
    Stale(&'static str),
}

/// The current step's tables on the device, as [`KvCache::begin_step`] uploaded them: what
/// an engine passes to its own kernels (layouts as in [`BatchTables`](crate::BatchTables)).
pub struct StepTablesView<'a, B: Backend> {
    /// Sequences in the step.
    pub num_seqs: usize,
    /// Tokens computed in the step.
    pub num_tokens: usize,
    /// Width of each block-table row.
    pub max_blocks_per_seq: usize,
    /// `[num_seqs, max_blocks_per_seq]`.
    pub block_tables: &'a DeviceBuffer<B, i32>,
    /// `[num_tokens]`.
    pub slot_mapping: &'a DeviceBuffer<B, i32>,
    /// `[num_seqs + 1]`.
    pub query_start_loc: &'a DeviceBuffer<B, i32>,
    /// `[num_seqs]`, this step's tokens included.
    pub seq_lens: &'a DeviceBuffer<B, i32>,
    /// `[num_tokens]` positions.
    pub positions: &'a DeviceBuffer<B, i64>,
    /// `query_start_loc` on the host (the attention ops' `query_start_loc_host`).
    pub host_query_start_loc: &'a [i32],
    /// `seq_lens` on the host (the attention ops' `seq_lens_host`).
    pub host_seq_lens: &'a [i32],
}

/// A paged KV cache on a device: the block manager plus every layer's K and V caches.
pub struct KvCache<B: KernelOps, T: KvFloat> {
    spec: KvCacheSpec,
    shape: CacheShape,
    sizing: KvCacheSizing,
    manager: KvCacheManager,
    layers: Vec<(DeviceBuffer<B, T>, DeviceBuffer<B, T>)>,
    host: Vec<(PinnedBuffer<B, T>, PinnedBuffer<B, T>)>,
    free_host_blocks: Vec<u32>,
    swapped: HashMap<RequestId, Swapped>,
    pending_copies: Vec<BlockCopy>,
    tables: StepTables<B>,
    alloc: SharedAllocator<B>,
}

fn hal(e: ascend_hal::Error) -> KvError {
    KvError::Device(e)
}

impl<B: KernelOps, T: KvFloat> KvCache<B, T> {
    /// [`with_allocator`](Self::with_allocator) with a caching allocator of its own (default
    /// configuration) on `stream`'s device.
    ///
    /// # Errors
    /// As [`with_allocator`](Self::with_allocator).
    pub fn new(stream: &B::Stream, spec: KvCacheSpec, config: KvCacheConfig) -> Result<Self> {
        let alloc =
            CachingAllocator::<B>::new(&stream.device(), Default::default()).map_err(hal)?;
        Self::with_allocator(Arc::new(alloc), stream, spec, config)
    }

    /// Sizes the cache from the device's memory (total, what is already in use, the
    /// utilization and the activation peak) and allocates every layer's K and V caches from
    /// `alloc`, for use on `stream`; the per-step tables come from `alloc` too.
    ///
    /// # Errors
    /// [`KvError::InsufficientMemory`] when not enough memory remains (saying how much is
    /// missing), [`KvError::Device`] when an allocation fails (nothing stays allocated), and
    /// [`KvError::InvalidConfig`] for an allocator of another device than `stream`'s.
    pub fn with_allocator(
        alloc: SharedAllocator<B>,
        stream: &B::Stream,
        spec: KvCacheSpec,
        config: KvCacheConfig,
    ) -> Result<Self> {
        let device = &stream.device();
        if alloc.device().ordinal() != device.ordinal() {
            return Err(KvError::InvalidConfig(format!(
                "the {} allocator serves device {} but the stream runs on device {}",
                alloc.name(),
                alloc.device().ordinal(),
                device.ordinal()
            )));
        }
        if spec.dtype != T::DTYPE {
            return Err(KvError::InvalidConfig(format!(
                "the spec says {} but the cache holds {}",
                spec.dtype,
                T::DTYPE
            )));
        }
        let info = device.memory_info().map_err(hal)?;
        let sizing = spec.size_for(&MemoryBudget {
            total_memory: info.total,
            utilization: config.utilization,
            non_kv_peak: info.used().saturating_add(config.activation_peak),
            max_model_len: config.max_model_len,
        })?;
        let num_blocks = config
            .max_blocks
            .map_or(sizing.num_blocks, |m| m.min(sizing.num_blocks));
        let needed = spec.blocks_for_model_len(config.max_model_len)?;
        if num_blocks < needed {
            return Err(KvError::InvalidConfig(format!(
                "max_blocks {num_blocks} cannot hold one sequence of max_model_len {} tokens: \
                 that takes {needed} blocks of {} tokens (the null block included)",
                config.max_model_len, spec.block_size
            )));
        }
        let shape = CacheShape {
            num_blocks,
            block_size: spec.block_size,
            num_kv_heads: spec.num_kv_heads,
            head_size: spec.head_size,
        };
        // Everything that can be refused is checked before any memory is taken.
        let manager = KvCacheManager::new(ManagerConfig {
            enable_prefix_caching: config.enable_prefix_caching,
            enable_kv_cache_events: config.enable_kv_cache_events,
            ..ManagerConfig::new(num_blocks, spec.block_size)
        })?;
        let host_elems = u32::try_from(config.swap_blocks)
            .ok()
            .and_then(|_| config.swap_blocks.checked_mul(shape.block_stride()))
            .ok_or_else(|| {
                KvError::InvalidConfig(format!(
                    "swap_blocks {} is more host blocks than can be addressed",
                    config.swap_blocks
                ))
            })?;
        let layers = (0..spec.num_layers)
            .map(|_| {
                Ok((
                    DeviceBuffer::alloc_in(&alloc, stream, shape.elements()).map_err(hal)?,
                    DeviceBuffer::alloc_in(&alloc, stream, shape.elements()).map_err(hal)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let host = (0..spec.num_layers)
            .map(|_| {
                Ok((
                    PinnedBuffer::new(device, host_elems).map_err(hal)?,
                    PinnedBuffer::new(device, host_elems).map_err(hal)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let staging = || -> Result<[PinnedBuffer<B, i32>; 4]> {
            Ok([
                PinnedBuffer::new(device, 0).map_err(hal)?,
                PinnedBuffer::new(device, 0).map_err(hal)?,
                PinnedBuffer::new(device, 0).map_err(hal)?,
                PinnedBuffer::new(device, 0).map_err(hal)?,
            ])
        };
        let empty = || DeviceBuffer::alloc_in(&alloc, stream, 0).map_err(hal);
        Ok(KvCache {
            spec,
            shape,
            sizing: KvCacheSizing {
                num_blocks,
                ..sizing
            },
            manager,
            layers,
            host,
            free_host_blocks: (0..config.swap_blocks as u32).rev().collect(),
            swapped: HashMap::new(),
            pending_copies: Vec::new(),
            tables: StepTables {
                block_tables: empty()?,
                slot_mapping: empty()?,
                query_start_loc: empty()?,
                seq_lens: empty()?,
                positions: DeviceBuffer::alloc_in(&alloc, stream, 0).map_err(hal)?,
                host_query_start_loc: Vec::new(),
                host_seq_lens: Vec::new(),
                staging: [staging()?, staging()?],
                staging_positions: [
                    PinnedBuffer::new(device, 0).map_err(hal)?,
                    PinnedBuffer::new(device, 0).map_err(hal)?,
                ],
                turn: 0,
                num_seqs: 0,
                num_tokens: 0,
                max_blocks_per_seq: 0,
                state: StepState::NotBegun,
            },
            alloc,
        })
    }

    /// See [`KvCacheManager::take_event_batch`].
    pub fn take_event_batch(&mut self) -> Option<crate::KvEventBatch> {
        self.manager.take_event_batch()
    }

    /// The allocator the cache's memory comes from.
    pub fn allocator(&self) -> &SharedAllocator<B> {
        &self.alloc
    }

    /// The sizing actually used (`Display`: `Available KV cache blocks: N (M tokens)`).
    pub fn sizing(&self) -> &KvCacheSizing {
        &self.sizing
    }

    /// The cache's shape.
    pub fn shape(&self) -> &CacheShape {
        &self.shape
    }

    /// The spec.
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }

    /// The block manager (read-only; change it through this cache so the device follows).
    pub fn manager(&self) -> &KvCacheManager {
        &self.manager
    }

    /// Layer `i`'s K and V caches.
    pub fn layer(&self, i: usize) -> Option<LayerCaches<'_, B, T>> {
        self.layers.get(i).map(|(k, v)| (k, v))
    }

    /// Whether a request is swapped out.
    pub fn is_swapped(&self, id: RequestId) -> bool {
        self.swapped.contains_key(&id)
    }

    /// See [`KvCacheManager::admit`].
    pub fn admit(
        &mut self,
        id: RequestId,
        prompt: &[TokenId],
        keys: &RequestKeys,
        max_new_tokens: usize,
    ) -> Result<Admission> {
        let a = self.manager.admit(id, prompt, keys, max_new_tokens)?;
        self.pending_copies.extend(&a.allocation.copies);
        self.changed("admit");
        Ok(a)
    }

    /// See [`KvCacheManager::allocate_slots`]; copy-on-write copies run at the next
    /// [`begin_step`](Self::begin_step).
    pub fn allocate_slots(&mut self, id: RequestId, tokens: &[TokenId]) -> Result<Allocation> {
        let a = self.manager.allocate_slots(id, tokens)?;
        self.pending_copies.extend(&a.copies);
        self.changed("allocate_slots");
        Ok(a)
    }

    /// See [`KvCacheManager::append_slots`]: slots appended to the caller's buffer, nothing
    /// allocated per call; copy-on-write copies run at the next
    /// [`begin_step`](Self::begin_step). Returns the number of blocks newly taken.
    pub fn append_slots(
        &mut self,
        id: RequestId,
        tokens: &[TokenId],
        slots: &mut Vec<i32>,
    ) -> Result<usize> {
        let n = self
            .manager
            .append_slots(id, tokens, slots, &mut self.pending_copies)?;
        self.changed("append_slots");
        Ok(n)
    }

    /// See [`KvCacheManager::fork`].
    pub fn fork(&mut self, parent: RequestId, child: RequestId) -> Result<()> {
        self.manager.fork(parent, child)?;
        self.changed("fork");
        Ok(())
    }

    /// Frees a finished request.
    pub fn free(&mut self, id: RequestId) -> Result<()> {
        self.manager.free_request(id)?;
        self.changed("free");
        Ok(())
    }

    /// Preempts a request by dropping its blocks; the engine recomputes it later (its prefix
    /// may still be cached).
    pub fn preempt(&mut self, id: RequestId) -> Result<()> {
        self.manager.free_request(id)?;
        self.changed("preempt");
        Ok(())
    }

    /// Notes that `call` changed the blocks: the step's tables no longer describe them.
    fn changed(&mut self, call: &'static str) {
        if self.tables.state == StepState::Ready {
            self.tables.state = StepState::Stale(call);
        }
    }

    /// The step's device tables, or why there are none to use: no `begin_step` yet, or a call
    /// since it changed the blocks. `what` names the caller for the message.
    fn ready_tables(&self, what: &str) -> Result<&StepTables<B>> {
        match self.tables.state {
            StepState::Ready => Ok(&self.tables),
            StepState::NotBegun => Err(KvError::StepOrder(format!(
                "{what} before begin_step: call begin_step(stream, batch) for the step first; it \
                 uploads the block tables and slot mapping the kernels read"
            ))),
            StepState::Stale(call) => Err(KvError::StepOrder(format!(
                "{what} after {call}, which changed the blocks since begin_step: the step's \
                 tables describe the batch before it; call begin_step again"
            ))),
        }
    }

    /// The current step's tables on the device (see [`StepTablesView`]), for an engine's own
    /// kernels.
    ///
    /// # Errors
    /// [`KvError::StepOrder`] before [`begin_step`](Self::begin_step), or after a call that
    /// changed the blocks since.
    pub fn step_tables(&self) -> Result<StepTablesView<'_, B>> {
        let t = self.ready_tables("step_tables")?;
        Ok(StepTablesView {
            num_seqs: t.num_seqs,
            num_tokens: t.num_tokens,
            max_blocks_per_seq: t.max_blocks_per_seq,
            block_tables: &t.block_tables,
            slot_mapping: &t.slot_mapping,
            query_start_loc: &t.query_start_loc,
            seq_lens: &t.seq_lens,
            positions: &t.positions,
            host_query_start_loc: &t.host_query_start_loc,
            host_seq_lens: &t.host_seq_lens,
        })
    }

    /// Prepares a step for `batch` (request, tokens computed this step): runs pending
    /// copy-on-write copies and uploads the tables, in order on `stream`.
    pub fn begin_step(&mut self, stream: &B::Stream, batch: &[(RequestId, usize)]) -> Result<()> {
        let pairs: Vec<(u32, u32)> = self
            .pending_copies
            .drain(..)
            .map(|c| (c.src.0, c.dst.0))
            .collect();
        if !pairs.is_empty() {
            for (k, v) in &mut self.layers {
                B::copy_blocks::<T>(stream, &self.shape, k.view_mut(), v.view_mut(), &pairs)
                    .map_err(hal)?;
            }
        }
        let t = self.manager.batch_tables(batch, None, None)?;
        let device = ascend_hal::Stream::device(stream);
        let tables = &mut self.tables;
        // Until the new tables are all queued, there are none to use.
        tables.state = StepState::NotBegun;
        let staging = &mut tables.staging[tables.turn];
        let stage = &mut tables.staging_positions[tables.turn];
        tables.turn ^= 1;
        if stage.len() != t.positions.len() {
            *stage = PinnedBuffer::new(&device, t.positions.len()).map_err(hal)?;
        }
        stage
            .as_mut_slice()
            .map_err(hal)?
            .copy_from_slice(&t.positions);
        if tables.positions.len() != t.positions.len() {
            tables.positions =
                DeviceBuffer::alloc_in(&self.alloc, stream, t.positions.len()).map_err(hal)?;
        }
        stream.copy_h2d(stage, &mut tables.positions).map_err(hal)?;
        let data: [&[i32]; 4] = [
            &t.block_tables,
            &t.slot_mapping,
            &t.query_start_loc,
            &t.seq_lens,
        ];
        let targets = [
            &mut tables.block_tables,
            &mut tables.slot_mapping,
            &mut tables.query_start_loc,
            &mut tables.seq_lens,
        ];
        for ((stage, src), dst) in staging.iter_mut().zip(data).zip(targets) {
            if stage.len() != src.len() {
                *stage = PinnedBuffer::new(&device, src.len()).map_err(hal)?;
            }
            // Waits only for this staging buffer's copy of two steps ago.
            stage.as_mut_slice().map_err(hal)?.copy_from_slice(src);
            if dst.len() != src.len() {
                *dst = DeviceBuffer::alloc_in(&self.alloc, stream, src.len()).map_err(hal)?;
            }
            stream.copy_h2d(stage, dst).map_err(hal)?;
        }
        tables.host_query_start_loc.clone_from(&t.query_start_loc);
        tables.host_seq_lens.clone_from(&t.seq_lens);
        tables.num_seqs = t.num_seqs;
        tables.num_tokens = t.slot_mapping.len();
        tables.max_blocks_per_seq = t.max_blocks_per_seq;
        tables.state = StepState::Ready;
        Ok(())
    }

    /// Writes this step's K and V rows (`[num_tokens, kv_heads, head_size]`) of `layer` into the
    /// cache. They are views, so they may be parts of one buffer (a fused QKV projection's).
    pub fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: In<'_, B, T>,
        value: In<'_, B, T>,
    ) -> Result<()> {
        let t = self.ready_tables("write_kv")?;
        let num_tokens = t.num_tokens;
        let per_token = self.shape.token_stride();
        for (what, buf) in [("key", &key), ("value", &value)] {
            if buf.len() != num_tokens * per_token {
                return Err(KvError::InvalidConfig(format!(
                    "write_kv of layer {layer}: {what} holds {} elements, but the step begun by \
                     begin_step computes {num_tokens} tokens of {per_token} ([num_tokens, \
                     kv_heads, head_size])",
                    buf.len()
                )));
            }
        }
        let layers = self.layers.len();
        let (kc, vc) = self.layers.get_mut(layer).ok_or_else(|| {
            KvError::InvalidConfig(format!("no layer {layer}: the cache has {layers}"))
        })?;
        B::reshape_and_cache::<T>(
            stream,
            &ReshapeAndCache {
                num_tokens,
                cache: self.shape,
            },
            key,
            value,
            kc.view_mut(),
            vc.view_mut(),
            self.tables.slot_mapping.view(),
        )
        .map_err(hal)
    }

    /// Causal attention of this step's queries (`[num_tokens, num_heads, head_size]`) over each
    /// request's cached context, for `layer`.
    pub fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        num_heads: usize,
        scale: f32,
        out: Out<'_, B, T>,
        query: In<'_, B, T>,
    ) -> Result<()> {
        let t = self.ready_tables("attention")?;
        let (kc, vc) = self.layers.get(layer).ok_or_else(|| {
            KvError::InvalidConfig(format!(
                "no layer {layer}: the cache has {}",
                self.layers.len()
            ))
        })?;
        B::paged_prefill_attention::<T>(
            stream,
            &PrefillAttention {
                num_seqs: t.num_seqs,
                num_tokens: t.num_tokens,
                num_heads,
                cache: self.shape,
                max_blocks_per_seq: t.max_blocks_per_seq,
                scale,
                sliding_window: None,
            },
            out,
            query,
            kc.view(),
            vc.view(),
            t.block_tables.view(),
            t.query_start_loc.view(),
            t.seq_lens.view(),
            &t.host_query_start_loc,
            &t.host_seq_lens,
        )
        .map_err(hal)
    }

    /// Copies a request's blocks to pinned host memory and frees them on the device, all or
    /// nothing. Ordered on `stream`; the host memory is fenced, so nothing waits here.
    pub fn swap_out(&mut self, stream: &B::Stream, id: RequestId) -> Result<()> {
        let blocks: Vec<BlockId> = self.manager.blocks(id)?.to_vec();
        if blocks.len() > self.free_host_blocks.len() {
            return Err(KvError::OutOfBlocks {
                requested: blocks.len(),
                free: self.free_host_blocks.len(),
                reserved: 0,
                cached_tokens: 0,
            });
        }
        let tokens = self.manager.tokens(id)?.to_vec();
        let keys = self.manager.request_keys(id)?;
        let host_blocks: Vec<u32> = (0..blocks.len())
            .filter_map(|_| self.free_host_blocks.pop())
            .collect();
        let pairs: Vec<(u32, u32)> = blocks
            .iter()
            .zip(&host_blocks)
            .map(|(d, h)| (d.0, *h))
            .collect();
        for ((k, v), (hk, hv)) in self.layers.iter().zip(self.host.iter_mut()) {
            swap_out(stream, &self.shape, k.view(), hk, &pairs).map_err(hal)?;
            swap_out(stream, &self.shape, v.view(), hv, &pairs).map_err(hal)?;
        }
        // The device blocks may be reused by later work on this stream: the copies above run
        // first.
        self.manager.free_request(id)?;
        self.changed("swap_out");
        self.swapped.insert(
            id,
            Swapped {
                host_blocks,
                tokens,
                keys,
            },
        );
        Ok(())
    }

    /// Brings a swapped-out request back into fresh device blocks, all or nothing.
    pub fn swap_in(&mut self, stream: &B::Stream, id: RequestId) -> Result<()> {
        let s = self
            .swapped
            .get(&id)
            .ok_or(KvError::UnknownRequest(id))?
            .clone();
        let blocks = self.manager.restore(id, &s.tokens, s.keys.clone())?;
        let pairs: Vec<(u32, u32)> = s
            .host_blocks
            .iter()
            .zip(&blocks)
            .map(|(h, d)| (*h, d.0))
            .collect();
        for ((k, v), (hk, hv)) in self.layers.iter_mut().zip(self.host.iter()) {
            swap_in(stream, &self.shape, hk, k.view_mut(), &pairs).map_err(hal)?;
            swap_in(stream, &self.shape, hv, v.view_mut(), &pairs).map_err(hal)?;
        }
        self.swapped.remove(&id);
        self.free_host_blocks.extend(s.host_blocks);
        self.changed("swap_in");
        Ok(())
    }

    /// Whether a swapped-out request would fit back now.
    pub fn can_swap_in(&self, id: RequestId) -> bool {
        self.swapped.get(&id).is_some_and(|s| {
            s.tokens.len().div_ceil(self.spec.block_size) <= self.manager.pool().num_free()
        })
    }
}
