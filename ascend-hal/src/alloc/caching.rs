//! The caching device allocator, after PyTorch's `CUDACachingAllocator` / torch_npu's
//! `NPUCachingAllocator`, for any backend.
//!
//! - Requests are rounded up to 512 bytes. Requests up to 1 MiB come from the small pool (2 MiB
//!   segments), larger ones from the large pool (20 MiB segments below 10 MiB, else the request
//!   rounded to 2 MiB). A request takes the best-fitting free block of its pool and stream;
//!   an oversized block is split, and a freed block merges with free neighbours of its segment.
//!   Blocks above `max_split_size` are never split, nor used for smaller requests.
//! - Reuse is stream-ordered: a block freed on stream S is reusable at once on S (later work on
//!   S runs after the earlier uses). If the block was also used on other streams
//!   ([`CachingAllocator::record_stream`]), it waits until events recorded on those streams
//!   complete.
//! - With expandable segments, each stream and pool has one reserved virtual range that grows by
//!   mapping physical chunks at its end, so freed memory in the middle of a range is reused in
//!   place instead of fragmenting into segments that no request fits.
//! - On out-of-memory the cache is released (after a device synchronisation) and the request
//!   retried once; then the error gives requested, allocated, reserved, free and total bytes.
//!
//! Segments of the ordinary kind ask the backend for `size - 512` bytes: `aclrtMalloc` pads
//! every request by 32 bytes before rounding it to 2 MiB huge pages, so asking for exactly 2 MiB
//! would cost 4.

// Block and segment indices are internal links kept consistent under the state lock; a
// missing one is a bug in this file, not bad input, so lookups `expect` them.
#![allow(clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::allocator::{check_stream_device, zero_size, Allocator, AllocatorStats, BlockOwner};
use super::config::AllocatorConfig;
use super::MemoryBlock;
use crate::error::{Bytes, Error, Result};
use crate::traits::{
    Backend, Device, DeviceMemory, DevicePtr, Event, MemoryInfo, Stream, StreamId, VirtualRange,
};

const MIN_BLOCK: usize = 512;
const SMALL_SIZE: usize = 1 << 20;
const SMALL_BUFFER: usize = 2 << 20;
const LARGE_BUFFER: usize = 20 << 20;
const MIN_LARGE_ALLOC: usize = 10 << 20;
const ROUND_LARGE: usize = 2 << 20;
/// What an ordinary segment leaves for `aclrtMalloc`'s padding (see the module docs).
const SEGMENT_SLACK: usize = MIN_BLOCK;

/// The two pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pool {
    /// Requests up to 1 MiB.
    Small,
    /// Larger requests.
    Large,
}

/// `bytes` rounded up to the block granularity, or `None` past `usize::MAX`.
fn round_size(bytes: usize) -> Option<usize> {
    bytes.div_ceil(MIN_BLOCK).checked_mul(MIN_BLOCK)
}

fn pool_of(size: usize) -> Pool {
    if size <= SMALL_SIZE {
        Pool::Small
    } else {
        Pool::Large
    }
}

fn segment_size(size: usize) -> usize {
    if size <= SMALL_SIZE {
        SMALL_BUFFER
    } else if size < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        // Past usize::MAX rounded, the request itself: the backend then refuses it.
        size.checked_next_multiple_of(ROUND_LARGE).unwrap_or(size)
    }
}

/// One block of a [`MemorySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Address.
    pub ptr: DevicePtr,
    /// Size in bytes.
    pub size: usize,
    /// `allocated`, `free`, or `pending` (freed, waiting on other streams).
    pub state: &'static str,
}

/// One segment of a [`MemorySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Start address.
    pub ptr: DevicePtr,
    /// Bytes held from the backend.
    pub size: usize,
    /// The stream whose blocks it holds.
    pub stream: StreamId,
    /// Its pool.
    pub pool: Pool,
    /// Whether it is an expandable range.
    pub expandable: bool,
    /// Its blocks, in address order.
    pub blocks: Vec<BlockInfo>,
}

/// Every segment and block, for debugging fragmentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// Segments in address order.
    pub segments: Vec<SegmentInfo>,
}

enum SegmentMemory<B: Backend> {
    Plain(B::DeviceMemory),
    Expandable {
        range: B::VirtualRange,
        /// Chunks mapped at `i * granularity`, in order.
        chunks: Vec<B::PhysicalMemory>,
        granularity: usize,
    },
}

struct Segment<B: Backend> {
    memory: SegmentMemory<B>,
    base: u64,
    /// Bytes of it in use as blocks (mapped, for an expandable range).
    size: usize,
    stream: StreamId,
    pool: Pool,
    /// The first block, in address order.
    head: usize,
}

#[derive(Debug, Clone)]
struct Block {
    segment: usize,
    addr: u64,
    size: usize,
    allocated: bool,
    /// Freed, waiting on other streams' events.
    pending: bool,
    stream: StreamId,
    pool: Pool,
    prev: Option<usize>,
    next: Option<usize>,
}

type FreeKey = (StreamId, usize, u64, usize);

/// Events recorded after a block's last use on each other stream.
type StreamUses<B> = Vec<(StreamId, <B as Backend>::Event)>;

struct State<B: Backend> {
    blocks: Vec<Option<Block>>,
    spare_blocks: Vec<usize>,
    segments: Vec<Option<Segment<B>>>,
    free: HashMap<Pool, BTreeSet<FreeKey>>,
    /// Per allocated block: events recorded on other streams that used it.
    uses: HashMap<usize, StreamUses<B>>,
    /// Freed blocks waiting on events.
    pending: Vec<(usize, StreamUses<B>)>,
    expandable: HashMap<(StreamId, Pool), usize>,
    stats: AllocatorStats,
}

struct Inner<B: Backend> {
    device: B::Device,
    config: AllocatorConfig,
    state: Mutex<State<B>>,
}

/// A caching allocator over one device of any backend. Cheap to clone; clones share the cache.
///
/// ```
/// # fn demo<B: ascend_hal::Backend>(device: &B::Device) -> ascend_hal::Result<()> {
/// use ascend_hal::prelude::*;
/// use ascend_hal::alloc::{AllocatorConfig, CachingAllocator};
/// let alloc = CachingAllocator::<B>::new(device, "expandable_segments:True".parse()?)?;
/// let stream = device.new_stream()?;
/// let buf = DeviceBuffer::<B, f32>::alloc_in(&alloc, &stream, 1 << 20)?; // 4 MiB, large pool
/// drop(buf); // back to the cache, reusable at once on `stream`
/// let again = DeviceBuffer::<B, f32>::alloc_in(&alloc, &stream, 1 << 20)?;
/// assert_eq!(alloc.stats().cache_hits, 1);
/// # Ok(()) }
/// ```
pub struct CachingAllocator<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for CachingAllocator<B> {
    fn clone(&self) -> Self {
        CachingAllocator {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: Backend> fmt::Debug for CachingAllocator<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingAllocator")
            .field("device", &self.inner.device.ordinal())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<B: Backend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // Every state change completes before anything that can panic; a poisoned lock is
        // still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B: Backend> CachingAllocator<B> {
    /// An allocator for `device`. Expandable segments fall back to ordinary ones on a backend
    /// without virtual memory.
    pub fn new(device: &B::Device, config: AllocatorConfig) -> Result<Self> {
        Ok(CachingAllocator {
            inner: Arc::new(Inner {
                device: device.clone(),
                config,
                state: Mutex::new(State {
                    blocks: Vec::new(),
                    spare_blocks: Vec::new(),
                    segments: Vec::new(),
                    free: HashMap::new(),
                    uses: HashMap::new(),
                    pending: Vec::new(),
                    expandable: HashMap::new(),
                    stats: AllocatorStats::default(),
                }),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.inner.config
    }

    /// Whether this allocator grows expandable ranges (configured, and the backend can).
    pub fn uses_expandable_segments(&self) -> bool {
        self.inner.config.expandable_segments
            && self.inner.device.virtual_memory_granularity().is_some()
    }

    /// Makes freed blocks whose other-stream uses have completed reusable now (allocation does
    /// this too); updates the statistics accordingly.
    pub fn process_events(&self) -> Result<()> {
        self.inner.lock().collect_pending()
    }

    /// Resets the peaks to the current values.
    pub fn reset_peak_stats(&self) {
        self.inner.lock().stats.reset_peaks();
    }

    /// Every segment and block.
    pub fn snapshot(&self) -> MemorySnapshot {
        let state = self.inner.lock();
        let mut segments: Vec<SegmentInfo> = state
            .segments
            .iter()
            .flatten()
            .map(|seg| {
                let mut blocks = Vec::new();
                let mut at = Some(seg.head).filter(|_| seg.size > 0);
                while let Some(i) = at {
                    let b = state.block(i);
                    blocks.push(BlockInfo {
                        ptr: DevicePtr(b.addr),
                        size: b.size,
                        state: if b.allocated {
                            "allocated"
                        } else if b.pending {
                            "pending"
                        } else {
                            "free"
                        },
                    });
                    at = b.next;
                }
                SegmentInfo {
                    ptr: DevicePtr(seg.base),
                    size: seg.size,
                    stream: seg.stream,
                    pool: seg.pool,
                    expandable: matches!(seg.memory, SegmentMemory::Expandable { .. }),
                    blocks,
                }
            })
            .collect();
        segments.sort_by_key(|s| s.ptr);
        MemorySnapshot { segments }
    }

    /// Finds room for `size` by growing: a new segment, or more of the stream's expandable
    /// range; on out-of-memory, releases the cache and tries once more.
    fn grow_and_take(&self, state: &mut State<B>, size: usize, stream: StreamId) -> Result<usize> {
        let device = &self.inner.device;
        let info = device.memory_info()?;
        if size as u64 > info.total {
            // No device of this size: fail before any segment arithmetic can overflow, and
            // without releasing the cache for nothing.
            state.stats.num_ooms += 1;
            return Err(self.oom(size, state, info, None));
        }
        let allowed = (info.total as f64 * self.inner.config.memory_fraction) as u64;
        if let Some(threshold) = self.inner.config.garbage_collection_threshold {
            if state.stats.reserved as f64 > threshold * allowed as f64 {
                device.synchronize()?;
                state.release_cached(device)?;
            }
        }
        let attempt = |state: &mut State<B>| -> Result<usize> {
            if self.uses_expandable_segments() {
                state.grow_expandable(device, size, stream, allowed)?;
            } else {
                state.new_segment(device, size, stream, allowed)?;
            }
            state
                .take_free(size, stream, &self.inner.config)
                .ok_or_else(|| Error::InvalidArgument {
                    op: "CachingAllocator::allocate",
                    message: "internal: grown memory did not fit the request".into(),
                })
        };
        let attempt = |state: &mut State<B>| {
            let result = attempt(state);
            if result.is_err() {
                // A range created for this request and left empty is not kept.
                state.drop_empty_ranges();
            }
            result
        };
        match attempt(state) {
            Ok(i) => Ok(i),
            Err(e) if e.is_out_of_memory() => {
                device.synchronize()?;
                state.release_cached(device)?;
                attempt(state).map_err(|e| {
                    if e.is_out_of_memory() {
                        state.stats.num_ooms += 1;
                        let info = device
                            .memory_info()
                            .unwrap_or(MemoryInfo { free: 0, total: 0 });
                        self.oom(size, state, info, Some(&e))
                    } else {
                        e
                    }
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The out-of-memory error for a request of `size`, after the cache was released and the
    /// growth retried (`cause`: why the retry failed). The advice follows the facts: a request
    /// past the device, the memory fraction's cap, a limit the device reported (an injected
    /// one, say), a cache that holds enough bytes only in pieces (fragmentation), or a device
    /// that is simply full.
    fn oom(&self, size: usize, state: &State<B>, info: MemoryInfo, cause: Option<&Error>) -> Error {
        let stats = &state.stats;
        let fraction = self.inner.config.memory_fraction;
        let cached = stats.reserved.saturating_sub(stats.allocated);
        let reported = match cause.map(Error::root) {
            Some(Error::OutOfMemory { detail, .. }) => detail.trim_start_matches("; "),
            _ => "",
        };
        let why = if size as u64 > info.total {
            format!(
                "the request is larger than the device's whole memory ({})",
                Bytes(info.total)
            )
        } else if reported.starts_with("the memory fraction") {
            format!(
                "{reported} (memory_fraction {fraction} of {}); raise memory_fraction or need \
                 less",
                Bytes(info.total)
            )
        } else if !reported.is_empty() {
            format!("the device refused it: {reported}")
        } else if cached >= size as u64 && !self.inner.config.expandable_segments {
            format!(
                "the cache holds {} unused, but in pieces smaller than the request (fragmented): \
                 enable expandable_segments:True, or set max_split_size_mb",
                Bytes(cached)
            )
        } else {
            format!(
                "the device is full: {} free, this allocator's live blocks hold {}",
                Bytes(info.free),
                Bytes(stats.allocated)
            )
        };
        Error::OutOfMemory {
            device: format!("device {}", self.inner.device.ordinal()),
            requested: size as u64,
            free: info.free,
            total: info.total,
            detail: format!(
                "; {why} (the caching allocator holds {} allocated of {} reserved)",
                Bytes(stats.allocated),
                Bytes(stats.reserved),
            ),
        }
    }
}

impl<B: Backend> Allocator<B> for CachingAllocator<B> {
    fn name(&self) -> &str {
        "caching"
    }

    fn device(&self) -> &B::Device {
        &self.inner.device
    }

    /// A block of at least `bytes` (rounded up to 512) for use on `stream`.
    ///
    /// # Errors
    /// As the trait says; [`Error::OutOfMemory`] comes after releasing the cache and retrying
    /// once, with requested, allocated, reserved, free and total bytes, and the allocator's
    /// blocks are then exactly as before.
    fn allocate(&self, bytes: usize, stream: &B::Stream) -> Result<MemoryBlock<B>> {
        const OP: &str = "CachingAllocator::allocate";
        let ordinal = self.inner.device.ordinal();
        check_stream_device::<B>(OP, ordinal, stream)?;
        if bytes == 0 {
            return Err(zero_size(OP));
        }
        let mut state = self.inner.lock();
        let Some(size) = round_size(bytes) else {
            state.stats.num_ooms += 1;
            let info = self.inner.device.memory_info()?;
            return Err(self.oom(bytes, &state, info, None));
        };
        state.collect_pending()?;
        let index = match state.take_free(size, stream.id(), &self.inner.config) {
            Some(i) => {
                state.stats.cache_hits += 1;
                i
            }
            None => self.grow_and_take(&mut state, size, stream.id())?,
        };
        let block = state.block_mut(index);
        block.allocated = true;
        let (ptr, size) = (DevicePtr(block.addr), block.size);
        state.stats.note_allocation(size as u64);
        drop(state);
        let owner: Arc<dyn BlockOwner<B>> = self.inner.clone();
        // SAFETY: (1) the block lies in a segment (an allocation, or mapped chunks of a range)
        // that is released only once no block of it is allocated or pending; (2) segment bases
        // are 64-byte aligned by the backend and blocks start at multiples of 512 from them;
        // (3) the block was free, and blocks of a segment never overlap; (4) a free block was
        // last used on its own stream `stream` (free sets are per stream), or on other streams
        // whose recorded events completed before it left the pending list.
        Ok(unsafe {
            MemoryBlock::from_raw_parts(ptr, size, ordinal, stream.id(), index as u64, owner)
        })
    }

    fn owns(&self, block: &MemoryBlock<B>) -> bool {
        block.is_owned_by(&self.inner)
    }

    fn stats(&self) -> AllocatorStats {
        let state = self.inner.lock();
        let mut s = state.stats;
        s.segments = state.segments.iter().flatten().count();
        s.largest_free_block = state
            .free
            .values()
            .flat_map(|set| set.iter().map(|k| k.1 as u64))
            .max()
            .unwrap_or(0);
        let free_reserved = s.reserved.saturating_sub(s.active);
        s.fragmentation = if free_reserved == 0 {
            0.0
        } else {
            1.0 - s.largest_free_block as f64 / free_reserved as f64
        };
        s
    }

    /// Returns every cached block that is not in use to the backend, after waiting for the
    /// device so that nothing queued still touches them. The lock is held across the wait, so
    /// a block freed meanwhile on another thread cannot be released under queued work.
    fn empty_cache(&self) -> Result<()> {
        let mut state = self.inner.lock();
        self.inner.device.synchronize()?;
        state.collect_pending()?;
        state.release_cached(&self.inner.device)
    }
}

impl<B: Backend> BlockOwner<B> for Inner<B> {
    fn record_stream(&self, block: &MemoryBlock<B>, stream: &B::Stream) -> Result<()> {
        let index = block.tag() as usize;
        let mut state = self.lock();
        let uses = state.uses.entry(index).or_default();
        match uses.iter().position(|(s, _)| *s == stream.id()) {
            Some(i) => stream.record(&uses[i].1),
            None => {
                let event = stream.device().new_event()?;
                stream.record(&event)?;
                uses.push((stream.id(), event));
                Ok(())
            }
        }
    }

    fn release(&self, block: &MemoryBlock<B>) {
        self.lock().release(block.tag() as usize);
    }
}

impl<B: Backend> State<B> {
    fn block(&self, i: usize) -> &Block {
        self.blocks[i].as_ref().expect("live block index")
    }

    fn block_mut(&mut self, i: usize) -> &mut Block {
        self.blocks[i].as_mut().expect("live block index")
    }

    fn new_block(&mut self, block: Block) -> usize {
        match self.spare_blocks.pop() {
            Some(i) => {
                self.blocks[i] = Some(block);
                i
            }
            None => {
                self.blocks.push(Some(block));
                self.blocks.len() - 1
            }
        }
    }

    fn drop_block(&mut self, i: usize) {
        self.blocks[i] = None;
        self.spare_blocks.push(i);
    }

    fn key(&self, i: usize) -> (Pool, FreeKey) {
        let b = self.block(i);
        (b.pool, (b.stream, b.size, b.addr, i))
    }

    fn insert_free(&mut self, i: usize) {
        let (pool, key) = self.key(i);
        self.free.entry(pool).or_default().insert(key);
    }

    fn remove_free(&mut self, i: usize) {
        let (pool, key) = self.key(i);
        if let Some(set) = self.free.get_mut(&pool) {
            set.remove(&key);
        }
    }

    /// Best fit from the free set, split if worth it; the block is left unallocated.
    fn take_free(
        &mut self,
        size: usize,
        stream: StreamId,
        config: &AllocatorConfig,
    ) -> Option<usize> {
        let pool = pool_of(size);
        let set = self.free.get(&pool)?;
        let &(_, found_size, _, i) = set
            .range((stream, size, 0, 0)..)
            .next()
            .filter(|k| k.0 == stream)?;
        if let Some(max) = config.max_split_size {
            if (size < max && found_size >= max)
                || (size >= max && found_size >= size.saturating_add(LARGE_BUFFER))
            {
                return None;
            }
        }
        self.remove_free(i);
        let remaining = found_size - size;
        let split = match pool {
            Pool::Small => remaining >= MIN_BLOCK,
            Pool::Large => {
                remaining > SMALL_SIZE && config.max_split_size.is_none_or(|max| found_size < max)
            }
        };
        if split {
            let b = self.block(i).clone();
            let rest = self.new_block(Block {
                segment: b.segment,
                addr: b.addr + size as u64,
                size: remaining,
                allocated: false,
                pending: false,
                stream: b.stream,
                pool: b.pool,
                prev: Some(i),
                next: b.next,
            });
            if let Some(n) = b.next {
                self.block_mut(n).prev = Some(rest);
            }
            let block = self.block_mut(i);
            block.size = size;
            block.next = Some(rest);
            self.insert_free(rest);
        }
        Some(i)
    }

    /// A block was dropped by its owner: free it now, or once other streams' uses complete.
    fn release(&mut self, i: usize) {
        let size = self.block(i).size as u64;
        let block = self.block_mut(i);
        block.allocated = false;
        self.stats.allocated -= size;
        match self.uses.remove(&i) {
            Some(uses) if !uses.is_empty() => {
                self.block_mut(i).pending = true;
                self.pending.push((i, uses));
            }
            _ => {
                self.stats.active -= size;
                self.free_and_merge(i);
            }
        }
    }

    /// Makes blocks whose events completed free again.
    fn collect_pending(&mut self) -> Result<()> {
        let mut still = Vec::new();
        for (i, uses) in std::mem::take(&mut self.pending) {
            let mut done = true;
            for (_, e) in &uses {
                // A failed stream still completes its events; its error belongs to its
                // synchronize, and the block is reusable.
                done &= e.query().unwrap_or(true);
            }
            if done {
                self.block_mut(i).pending = false;
                self.stats.active -= self.block(i).size as u64;
                self.free_and_merge(i);
            } else {
                still.push((i, uses));
            }
        }
        self.pending = still;
        Ok(())
    }

    fn is_mergeable(&self, i: Option<usize>) -> Option<usize> {
        i.filter(|&j| {
            let b = self.block(j);
            !b.allocated && !b.pending
        })
    }

    /// Puts a block back in its free set, merged with free neighbours of its segment.
    fn free_and_merge(&mut self, mut i: usize) {
        if let Some(p) = self.is_mergeable(self.block(i).prev) {
            self.absorb_next(p);
            i = p;
        }
        if self.is_mergeable(self.block(i).next).is_some() {
            self.absorb_next(i);
        }
        self.insert_free(i);
    }

    /// Merges the free block after `i` into `i`.
    fn absorb_next(&mut self, i: usize) {
        let Some(n) = self.block(i).next else { return };
        self.remove_free(i);
        self.remove_free(n);
        let next = self.block(n).clone();
        let block = self.block_mut(i);
        block.size += next.size;
        block.next = next.next;
        if let Some(nn) = next.next {
            self.block_mut(nn).prev = Some(i);
        }
        self.drop_block(n);
    }

    fn check_fraction(&self, extra: usize, allowed: u64, device: &B::Device) -> Result<()> {
        if self.stats.reserved.saturating_add(extra as u64) > allowed {
            let info = device.memory_info()?;
            // With the whole device allowed, the device is simply full.
            let detail = if allowed < info.total {
                format!(
                    "; the memory fraction allows {} and {} are reserved",
                    Bytes(allowed),
                    Bytes(self.stats.reserved)
                )
            } else {
                String::new()
            };
            return Err(Error::OutOfMemory {
                device: format!("device {}", device.ordinal()),
                requested: extra as u64,
                free: info.free,
                total: info.total,
                detail,
            });
        }
        Ok(())
    }

    fn push_segment(&mut self, segment: Segment<B>) -> usize {
        self.segments.push(Some(segment));
        self.segments.len() - 1
    }

    /// An ordinary segment sized for `size`, holding one free block.
    fn new_segment(
        &mut self,
        device: &B::Device,
        size: usize,
        stream: StreamId,
        allowed: u64,
    ) -> Result<()> {
        let seg_size = segment_size(size) - SEGMENT_SLACK;
        let seg_size = seg_size.max(size);
        self.check_fraction(seg_size, allowed, device)?;
        let memory = device.allocate(seg_size)?;
        let base = memory.ptr().0;
        let pool = pool_of(size);
        let seg = self.push_segment(Segment {
            memory: SegmentMemory::Plain(memory),
            base,
            size: seg_size,
            stream,
            pool,
            head: usize::MAX,
        });
        let head = self.new_block(Block {
            segment: seg,
            addr: base,
            size: seg_size,
            allocated: false,
            pending: false,
            stream,
            pool,
            prev: None,
            next: None,
        });
        if let Some(s) = self.segments[seg].as_mut() {
            s.head = head;
        }
        self.stats.reserved += seg_size as u64;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.insert_free(head);
        Ok(())
    }

    /// Maps enough chunks at the end of the stream's range for `size` to fit in its last free
    /// block (creating the range on first use).
    fn grow_expandable(
        &mut self,
        device: &B::Device,
        size: usize,
        stream: StreamId,
        allowed: u64,
    ) -> Result<()> {
        let pool = pool_of(size);
        let granularity = device.virtual_memory_granularity().unwrap_or(ROUND_LARGE);
        let seg = match self.expandable.get(&(stream, pool)) {
            Some(&s) => s,
            None => {
                let info = device.memory_info()?;
                // The whole device, in granules (the largest such span for an absurd total).
                let span = usize::try_from(info.total)
                    .ok()
                    .and_then(|t| t.checked_next_multiple_of(granularity))
                    .unwrap_or(usize::MAX / granularity * granularity);
                let range = device.reserve_virtual(span)?;
                let base = range.ptr().0;
                let s = self.push_segment(Segment {
                    memory: SegmentMemory::Expandable {
                        range,
                        chunks: Vec::new(),
                        granularity,
                    },
                    base,
                    size: 0,
                    stream,
                    pool,
                    head: usize::MAX,
                });
                self.expandable.insert((stream, pool), s);
                s
            }
        };
        // The last block, if free, grows; else a new free block starts at the end.
        let mapped = self.segments[seg].as_ref().expect("live segment").size;
        let last = self.last_block(seg);
        let tail_free = last.filter(|&i| self.is_mergeable(Some(i)).is_some());
        let have = tail_free.map_or(0, |i| self.block(i).size);
        let chunks_needed = (size - have.min(size)).div_ceil(granularity).max(1);
        let grow = chunks_needed.saturating_mul(granularity);
        self.check_fraction(grow, allowed, device)?;
        let segment = self.segments[seg].as_mut().expect("live segment");
        let SegmentMemory::Expandable { range, chunks, .. } = &mut segment.memory else {
            unreachable!("expandable map points at an expandable segment")
        };
        if mapped.saturating_add(grow) > range.size() {
            return Err(Error::OutOfMemory {
                device: format!("device {}", device.ordinal()),
                requested: size as u64,
                free: 0,
                total: range.size() as u64,
                detail: "; the expandable range is fully mapped".into(),
            });
        }
        let mut new_chunks: Vec<B::PhysicalMemory> = Vec::with_capacity(chunks_needed);
        for k in 0..chunks_needed {
            let offset = mapped + k * granularity;
            let mapped_chunk = device.allocate_physical(granularity).and_then(|physical| {
                // SAFETY: `offset` is granular, inside the range (checked above), and unmapped
                // (mappings only ever extend the mapped prefix); the chunk is fresh.
                unsafe { device.map(range, offset, &physical) }.map(|()| physical)
            });
            match mapped_chunk {
                Ok(physical) => new_chunks.push(physical),
                Err(e) => {
                    // Undo the chunks mapped so far: nothing changes on failure.
                    for j in (0..new_chunks.len()).rev() {
                        // SAFETY: mapped just above at this offset; no work can use it yet.
                        let _ = unsafe { device.unmap(range, mapped + j * granularity) };
                    }
                    return Err(e);
                }
            }
        }
        chunks.extend(new_chunks);
        segment.size += grow;
        let base = segment.base;
        self.stats.reserved += grow as u64;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        match tail_free {
            Some(i) => {
                self.remove_free(i);
                self.block_mut(i).size += grow;
                self.insert_free(i);
            }
            None => {
                let prev = last;
                let b = self.new_block(Block {
                    segment: seg,
                    addr: base + mapped as u64,
                    size: grow,
                    allocated: false,
                    pending: false,
                    stream,
                    pool,
                    prev,
                    next: None,
                });
                match prev {
                    Some(p) => self.block_mut(p).next = Some(b),
                    None => {
                        if let Some(s) = self.segments[seg].as_mut() {
                            s.head = b;
                        }
                    }
                }
                self.insert_free(b);
            }
        }
        Ok(())
    }

    /// Forgets expandable ranges with nothing mapped.
    fn drop_empty_ranges(&mut self) {
        for seg in 0..self.segments.len() {
            let empty = self.segments[seg]
                .as_ref()
                .filter(|s| s.size == 0 && matches!(s.memory, SegmentMemory::Expandable { .. }))
                .map(|s| (s.stream, s.pool));
            if let Some(key) = empty {
                self.expandable.remove(&key);
                self.segments[seg] = None;
            }
        }
    }

    fn last_block(&self, seg: usize) -> Option<usize> {
        let segment = self.segments[seg].as_ref()?;
        if segment.size == 0 {
            return None;
        }
        let mut at = segment.head;
        while let Some(n) = self.block(at).next {
            at = n;
        }
        Some(at)
    }

    /// Returns unused memory to the backend: whole free segments, and free chunks at the end
    /// of expandable ranges. The caller synchronised the device.
    fn release_cached(&mut self, device: &B::Device) -> Result<()> {
        for seg in 0..self.segments.len() {
            let Some(segment) = self.segments[seg].as_ref() else {
                continue;
            };
            let (head, seg_size) = (segment.head, segment.size);
            match &segment.memory {
                SegmentMemory::Plain(_) => {
                    let b = self.block(head);
                    if b.next.is_none() && !b.allocated && !b.pending {
                        self.remove_free(head);
                        self.drop_block(head);
                        self.stats.reserved -= seg_size as u64;
                        self.segments[seg] = None; // frees the backend memory
                    }
                }
                SegmentMemory::Expandable { granularity, .. } => {
                    let granularity = *granularity;
                    let Some(last) = self.last_block(seg) else {
                        continue;
                    };
                    if self.is_mergeable(Some(last)).is_none() {
                        continue;
                    }
                    let (addr, size) = (self.block(last).addr, self.block(last).size);
                    let base = segment.base;
                    let keep_bytes = ((addr - base) as usize).div_ceil(granularity) * granularity;
                    let mapped = segment.size;
                    if keep_bytes >= mapped {
                        continue;
                    }
                    let segment = self.segments[seg].as_mut().expect("live segment");
                    let SegmentMemory::Expandable { range, chunks, .. } = &mut segment.memory
                    else {
                        continue;
                    };
                    while chunks.len() * granularity > keep_bytes {
                        let offset = (chunks.len() - 1) * granularity;
                        // SAFETY: the chunk lies in a free, non-pending block and the device
                        // was synchronised, so no work uses it.
                        unsafe { device.unmap(range, offset)? };
                        chunks.pop(); // frees the physical memory
                    }
                    let released = mapped - keep_bytes;
                    segment.size = keep_bytes;
                    self.stats.reserved -= released as u64;
                    self.remove_free(last);
                    let remaining = size - released;
                    if remaining == 0 {
                        let prev = self.block(last).prev;
                        match prev {
                            Some(p) => self.block_mut(p).next = None,
                            None => {
                                if let Some(s) = self.segments[seg].as_mut() {
                                    s.head = usize::MAX;
                                }
                            }
                        }
                        self.drop_block(last);
                    } else {
                        self.block_mut(last).size = remaining;
                        self.insert_free(last);
                    }
                    if self.segments[seg].as_ref().is_some_and(|s| s.size == 0) {
                        let key = self.segments[seg]
                            .as_ref()
                            .map(|s| (s.stream, s.pool))
                            .expect("live segment");
                        self.expandable.remove(&key);
                        self.segments[seg] = None; // releases the virtual range
                    }
                }
            }
        }
        Ok(())
    }
}
