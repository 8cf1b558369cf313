//! A third-party allocator: a bump arena per stream, for activations that live one step.
//!
//! It shows what an engine writes to plug its own policy into [`Allocator`]: a handle, the
//! shared state blocks return to ([`BlockOwner`]), and one `unsafe` call,
//! [`MemoryBlock::from_raw_parts`], whose contract the arena keeps as follows.
//!
//! - Each stream has a *lane*: chunks taken from a parent allocator, and a cursor. A block is
//!   the next 512-byte aligned piece of the lane's current chunk (or of a new chunk).
//! - Blocks are never freed one by one: when a lane's last live block drops, the lane rewinds
//!   to its first chunk, so the next step's activations reuse the same memory. Reuse stays on
//!   the lane's own stream, whose later work is ordered after the earlier uses.
//! - A block used on another stream ([`Allocator::record_stream`]) holds its lane back: the lane
//!   rewinds only once the events recorded there have completed.
//! - `empty_cache` gives idle lanes' chunks back to the parent and empties the parent's cache.
//!
//! Run through the allocator conformance suite in `examples/tests/arena.rs`; `paged_decode
//! --allocator arena` takes its activations from it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use ascend_hal::alloc::{
    check_stream_device, zero_size, Allocator, AllocatorStats, BlockOwner, MemoryBlock,
};
use ascend_hal::{Backend, Device, DevicePtr, Error, Event, Result, Stream, StreamId};

/// Block alignment inside a chunk.
const ALIGN: usize = 512;

/// A bump arena per stream over a parent allocator. Cheap to clone; clones share the arena.
pub struct BumpArena<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for BumpArena<B> {
    fn clone(&self) -> Self {
        BumpArena {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<B: Backend> {
    parent: Arc<dyn Allocator<B>>,
    chunk_size: usize,
    state: Mutex<State<B>>,
}

struct State<B: Backend> {
    lanes: HashMap<StreamId, Lane<B>>,
    stats: AllocatorStats,
}

/// One stream's chunks and cursor.
struct Lane<B: Backend> {
    chunks: Vec<MemoryBlock<B>>,
    /// The chunk being filled, and the offset of its first free byte.
    at: (usize, usize),
    live: usize,
    /// Events recorded on other streams that used this lane's blocks since its last rewind.
    uses: Vec<B::Event>,
}

impl<B: Backend> Lane<B> {
    /// Rewinds if nothing is live and other streams' uses have completed.
    fn try_rewind(&mut self) {
        if self.live == 0 && self.uses.iter().all(|e| e.query().unwrap_or(true)) {
            self.uses.clear();
            self.at = (0, 0);
        }
    }
}

impl<B: Backend> BumpArena<B> {
    /// An arena that takes chunks of at least `chunk_size` bytes from `parent`.
    pub fn new(parent: Arc<dyn Allocator<B>>, chunk_size: usize) -> Self {
        BumpArena {
            inner: Arc::new(Inner {
                parent,
                chunk_size: chunk_size.max(ALIGN),
                state: Mutex::new(State {
                    lanes: HashMap::new(),
                    stats: AllocatorStats::default(),
                }),
            }),
        }
    }
}

impl<B: Backend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B: Backend> fmt::Debug for BumpArena<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BumpArena")
            .field("parent", &self.inner.parent.name())
            .field("chunk_size", &self.inner.chunk_size)
            .finish()
    }
}

impl<B: Backend> Allocator<B> for BumpArena<B> {
    fn name(&self) -> &str {
        "arena"
    }

    fn device(&self) -> &B::Device {
        self.inner.parent.device()
    }

    fn allocate(&self, bytes: usize, stream: &B::Stream) -> Result<MemoryBlock<B>> {
        const OP: &str = "BumpArena::allocate";
        check_stream_device::<B>(OP, self.device().ordinal(), stream)?;
        if bytes == 0 {
            return Err(zero_size(OP));
        }
        let Some(size) = bytes.checked_next_multiple_of(ALIGN) else {
            let info = self.device().memory_info()?;
            self.inner.lock().stats.num_ooms += 1;
            return Err(Error::OutOfMemory {
                device: format!("device {}", self.device().ordinal()),
                requested: bytes as u64,
                free: info.free,
                total: info.total,
                detail: "; no device has that much memory".into(),
            });
        };
        let mut state = self.inner.lock();
        let state = &mut *state;
        let lane = state.lanes.entry(stream.id()).or_insert_with(|| Lane {
            chunks: Vec::new(),
            at: (0, 0),
            live: 0,
            uses: Vec::new(),
        });
        lane.try_rewind();
        // The first chunk from the cursor on with room for `size`.
        let (mut chunk, mut offset) = lane.at;
        while chunk < lane.chunks.len() && lane.chunks[chunk].size() - offset < size {
            (chunk, offset) = (chunk + 1, 0);
        }
        if chunk == lane.chunks.len() {
            let want = size.max(self.inner.chunk_size);
            match self.inner.parent.allocate(want, stream) {
                Ok(block) => {
                    state.stats.note_reserved(block.size() as u64);
                    lane.chunks.push(block);
                }
                Err(e) => {
                    if e.is_out_of_memory() {
                        state.stats.num_ooms += 1;
                    }
                    return Err(e);
                }
            }
        } else {
            state.stats.cache_hits += 1;
        }
        let ptr: DevicePtr = lane.chunks[chunk].ptr().add(offset);
        lane.at = (chunk, offset + size);
        lane.live += 1;
        state.stats.note_allocation(size as u64);
        state.stats.segments = state.lanes.values().map(|l| l.chunks.len()).sum();
        let owner: Arc<dyn BlockOwner<B>> = self.inner.clone();
        // SAFETY: (1) the range lies in `chunks[chunk]`, a block of the parent that the lane
        // keeps until `empty_cache`, which drops only lanes with no live block; (2) chunks are
        // 64-byte aligned by the parent and offsets are multiples of 512; (3) the cursor only
        // moves forward past handed-out ranges and rewinds only with no block live; (4) the
        // range was last used by blocks of this lane, allocated for `stream`, and the lane
        // rewinds only after other streams' recorded uses completed.
        Ok(unsafe {
            MemoryBlock::from_raw_parts(ptr, size, self.device().ordinal(), stream.id(), 0, owner)
        })
    }

    fn owns(&self, block: &MemoryBlock<B>) -> bool {
        block.is_owned_by(&self.inner)
    }

    fn stats(&self) -> AllocatorStats {
        self.inner.lock().stats
    }

    fn empty_cache(&self) -> Result<()> {
        {
            let mut state = self.inner.lock();
            let mut released = 0u64;
            state.lanes.retain(|_, lane| {
                lane.try_rewind();
                let idle = lane.live == 0 && lane.uses.is_empty();
                if idle {
                    released += lane.chunks.iter().map(|c| c.size() as u64).sum::<u64>();
                }
                !idle // dropping an idle lane returns its chunks to the parent
            });
            state.stats.reserved -= released;
            state.stats.segments = state.lanes.values().map(|l| l.chunks.len()).sum();
        }
        self.inner.parent.empty_cache()
    }
}

impl<B: Backend> BlockOwner<B> for Inner<B> {
    fn record_stream(&self, block: &MemoryBlock<B>, stream: &B::Stream) -> Result<()> {
        let event = stream.device().new_event()?;
        stream.record(&event)?;
        let mut state = self.lock();
        if let Some(lane) = state.lanes.get_mut(&block.stream()) {
            lane.uses.push(event);
        }
        Ok(())
    }

    fn release(&self, block: &MemoryBlock<B>) {
        let mut state = self.lock();
        let size = block.size() as u64;
        state.stats.allocated -= size;
        state.stats.active -= size;
        if let Some(lane) = state.lanes.get_mut(&block.stream()) {
            lane.live -= 1;
            lane.try_rewind();
        }
    }
}
