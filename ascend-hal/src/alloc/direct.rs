//! The direct allocator: every block is one [`Device::allocate`], released when the block drops.
//!
//! Nothing is cached, so `reserved == allocated` at all times and `empty_cache` has nothing to
//! do. Stream ordering needs no bookkeeping either: a backend's raw allocation is safe to drop
//! while work that uses it is still queued (the [`DeviceMemory`] contract: the ACL backend
//! synchronises before `aclrtFree`, the CPU backend keeps the storage alive for queued work and
//! never reuses an address), so `record_stream` only validates its arguments.
//!
//! It is the baseline the caching allocator is measured against, and the right choice for a
//! few long-lived allocations (weights, a KV cache) where caching buys nothing.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::allocator::{check_stream_device, zero_size, Allocator, AllocatorStats, BlockOwner};
use super::MemoryBlock;
use crate::error::Result;
use crate::traits::{Backend, Device, DeviceMemory, Stream};

/// An allocator whose every block is its own device allocation. Cheap to clone; clones share
/// the statistics.
///
/// ```
/// # fn demo<B: ascend_hal::Backend>(device: &B::Device) -> ascend_hal::Result<()> {
/// use ascend_hal::prelude::*;
/// use ascend_hal::alloc::DirectAllocator;
/// let alloc = DirectAllocator::<B>::new(device);
/// let stream = device.new_stream()?;
/// let block = alloc.allocate(1000, &stream)?;
/// assert_eq!((block.size(), alloc.stats().reserved), (1000, 1000));
/// drop(block); // the device memory is released now
/// assert_eq!(alloc.stats().reserved, 0);
/// # Ok(()) }
/// ```
pub struct DirectAllocator<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for DirectAllocator<B> {
    fn clone(&self) -> Self {
        DirectAllocator {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<B: Backend> {
    device: B::Device,
    state: Mutex<State<B>>,
}

struct State<B: Backend> {
    /// Live allocations; a block's tag is its index here.
    live: Vec<Option<B::DeviceMemory>>,
    spare: Vec<usize>,
    stats: AllocatorStats,
}

impl<B: Backend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // No state change can be interrupted by a panic; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B: Backend> DirectAllocator<B> {
    /// An allocator for `device`.
    pub fn new(device: &B::Device) -> Self {
        DirectAllocator {
            inner: Arc::new(Inner {
                device: device.clone(),
                state: Mutex::new(State {
                    live: Vec::new(),
                    spare: Vec::new(),
                    stats: AllocatorStats::default(),
                }),
            }),
        }
    }

    /// Resets the peaks to the current values.
    pub fn reset_peak_stats(&self) {
        self.inner.lock().stats.reset_peaks();
    }
}

impl<B: Backend> fmt::Debug for DirectAllocator<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectAllocator")
            .field("device", &self.inner.device.ordinal())
            .field("stats", &self.inner.lock().stats)
            .finish()
    }
}

impl<B: Backend> Allocator<B> for DirectAllocator<B> {
    fn name(&self) -> &str {
        "direct"
    }

    fn device(&self) -> &B::Device {
        &self.inner.device
    }

    fn allocate(&self, bytes: usize, stream: &B::Stream) -> Result<MemoryBlock<B>> {
        const OP: &str = "DirectAllocator::allocate";
        let ordinal = self.inner.device.ordinal();
        check_stream_device::<B>(OP, ordinal, stream)?;
        if bytes == 0 {
            return Err(zero_size(OP));
        }
        // The backend call runs outside the lock: it may synchronise or take long.
        let memory = match self.inner.device.allocate(bytes) {
            Ok(m) => m,
            Err(e) => {
                if e.is_out_of_memory() {
                    self.inner.lock().stats.num_ooms += 1;
                }
                return Err(e);
            }
        };
        let ptr = memory.ptr();
        let mut state = self.inner.lock();
        let index = match state.spare.pop() {
            Some(i) => {
                state.live[i] = Some(memory);
                i
            }
            None => {
                state.live.push(Some(memory));
                state.live.len() - 1
            }
        };
        state.stats.note_reserved(bytes as u64);
        state.stats.note_allocation(bytes as u64);
        state.stats.segments += 1;
        drop(state);
        let owner: Arc<dyn BlockOwner<B>> = self.inner.clone();
        // SAFETY: (1) the range is exactly the allocation kept in `live[index]` until `release`
        // takes it out; (2) `Device::allocate` aligns to at least 64 bytes; (3) a live
        // allocation overlaps no other; (4) the memory is fresh from the backend, so no earlier
        // work used it.
        Ok(unsafe {
            MemoryBlock::from_raw_parts(ptr, bytes, ordinal, stream.id(), index as u64, owner)
        })
    }

    fn owns(&self, block: &MemoryBlock<B>) -> bool {
        block.is_owned_by(&self.inner)
    }

    fn stats(&self) -> AllocatorStats {
        self.inner.lock().stats
    }

    fn empty_cache(&self) -> Result<()> {
        Ok(())
    }
}

impl<B: Backend> BlockOwner<B> for Inner<B> {
    fn record_stream(&self, _block: &MemoryBlock<B>, _stream: &B::Stream) -> Result<()> {
        // Dropping the raw allocation is safe with work queued on any stream (see the module
        // docs), so there is nothing to wait for.
        Ok(())
    }

    fn release(&self, block: &MemoryBlock<B>) {
        let memory = {
            let mut state = self.lock();
            let index = block.tag() as usize;
            let memory = state.live.get_mut(index).and_then(Option::take);
            if memory.is_some() {
                state.spare.push(index);
                let size = block.size() as u64;
                state.stats.allocated -= size;
                state.stats.active -= size;
                state.stats.reserved -= size;
                state.stats.segments -= 1;
            }
            memory
        };
        // Released outside the lock: the ACL backend synchronises the device here.
        drop(memory);
    }
}
