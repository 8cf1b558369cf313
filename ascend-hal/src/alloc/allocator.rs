//! The [`Allocator`] trait, the [`MemoryBlock`] every allocator hands out, and the statistics
//! every allocator reports.
//!
//! The trait is small on purpose (as TGI's two-method allocator is): allocate for a stream,
//! mark a block as used on another stream, statistics, release of cached memory. A block goes
//! back to its allocator when it drops, through the [`BlockOwner`] it carries, so a block never
//! outlives the bookkeeping that must see it return, and code that holds a block needs no
//! handle to the allocator.
//!
//! Writing an allocator takes two impls: [`Allocator`] for the handle engines call, and
//! [`BlockOwner`] for the shared state blocks return to (usually the `Arc`'d inside of the
//! handle). The one `unsafe` step is [`MemoryBlock::from_raw_parts`], whose contract is what the
//! safe buffer API relies on. `examples/arena.rs` is a complete third-party allocator (a bump
//! arena per stream) in about 200 lines.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::traits::{Backend, DevicePtr, Stream, StreamId};

/// Counters of an allocator, in bytes unless named otherwise.
///
/// Every allocator keeps `allocated`, `reserved`, `active`, their peaks, `num_allocs` and
/// `num_ooms` (the allocator conformance suite, feature `conformance`, checks them after every
/// step); the others are zero where an allocator has no such notion.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AllocatorStats {
    /// Bytes in blocks handed out and not yet dropped: the sum of their [`MemoryBlock::size`].
    pub allocated: u64,
    /// Bytes held from the backend (or from a parent allocator), `>= active`.
    pub reserved: u64,
    /// Allocated bytes plus dropped blocks still waiting on other streams' work, `>= allocated`.
    pub active: u64,
    /// Peak of `allocated`.
    pub peak_allocated: u64,
    /// Peak of `reserved`.
    pub peak_reserved: u64,
    /// Peak of `active`.
    pub peak_active: u64,
    /// Successful allocations.
    pub num_allocs: u64,
    /// Allocations served from memory already held, without asking the backend.
    pub cache_hits: u64,
    /// Allocations that failed with out-of-memory.
    pub num_ooms: u64,
    /// Segments (or chunks) held from the backend.
    pub segments: usize,
    /// The largest free block.
    pub largest_free_block: u64,
    /// `1 - largest free block / free reserved bytes` (0 with nothing free).
    pub fragmentation: f64,
}

impl AllocatorStats {
    /// Adds `bytes` to `allocated` and `active` for one successful allocation, raising the
    /// peaks: the bookkeeping every allocator does the same way.
    pub fn note_allocation(&mut self, bytes: u64) {
        self.num_allocs += 1;
        self.allocated += bytes;
        self.active += bytes;
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        self.peak_active = self.peak_active.max(self.active);
    }

    /// Adds `bytes` to `reserved`, raising its peak.
    pub fn note_reserved(&mut self, bytes: u64) {
        self.reserved += bytes;
        self.peak_reserved = self.peak_reserved.max(self.reserved);
    }

    /// Resets the peaks to the current values.
    pub fn reset_peaks(&mut self) {
        self.peak_allocated = self.allocated;
        self.peak_reserved = self.reserved;
        self.peak_active = self.active;
    }
}

/// Where device memory comes from: the direct allocator, the caching allocator, or one an engine
/// writes (an arena reset per step, a budgeted pool shared by two models, a recorder for tests).
///
/// Blocks are allocated *for a stream*: a block may be used on that stream at once, and on
/// other streams after [`record_stream`](Allocator::record_stream) (or
/// [`MemoryBlock::record_stream`]) tells the allocator about it, so that its memory is not
/// handed out again before that work is done.
///
/// The trait is object safe: engines hold an `Arc<dyn Allocator<B>>` and decide per model or per
/// cache where memory comes from.
///
/// ```
/// # fn demo<B: ascend_hal::Backend>(device: &B::Device) -> ascend_hal::Result<()> {
/// use std::sync::Arc;
/// use ascend_hal::prelude::*;
/// use ascend_hal::alloc::{CachingAllocator, DirectAllocator};
/// let stream = device.new_stream()?;
/// let choices: [Arc<dyn Allocator<B>>; 2] = [
///     Arc::new(DirectAllocator::new(device)),
///     Arc::new(CachingAllocator::new(device, Default::default())?),
/// ];
/// for alloc in &choices {
///     let buf = DeviceBuffer::<B, f32>::alloc_in(alloc.as_ref(), &stream, 1024)?;
///     assert_eq!(alloc.stats().allocated, buf.block().map_or(0, |b| b.size() as u64));
/// }
/// # Ok(()) }
/// ```
pub trait Allocator<B: Backend>: Send + Sync + fmt::Debug {
    /// A short name for logs (`"caching"`, `"direct"`).
    fn name(&self) -> &str;

    /// The device the allocator serves.
    fn device(&self) -> &B::Device;

    /// A block of at least `bytes` bytes of `device()`'s memory, aligned to at least 64 bytes,
    /// for use on `stream`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `bytes == 0`; [`Error::WrongDevice`] for a stream of
    /// another device; [`Error::OutOfMemory`] (with requested, free and total bytes) when the
    /// memory cannot be had, `bytes` larger than any device included. A failed allocation
    /// leaves the allocator's blocks and counters as they were (a cache it released to make
    /// room aside; `num_ooms` counts the failure).
    fn allocate(&self, bytes: usize, stream: &B::Stream) -> Result<MemoryBlock<B>>;

    /// Whether `block` came from this allocator.
    fn owns(&self, block: &MemoryBlock<B>) -> bool;

    /// Notes that `block` is used on `stream` too, by the work enqueued there so far: once the
    /// block is dropped, its memory is not handed out again before that work completes. Call it
    /// after enqueueing the block's last use on `stream`. A no-op for the block's own stream.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a block of another allocator; [`Error::WrongDevice`] for
    /// a stream of another device.
    fn record_stream(&self, block: &MemoryBlock<B>, stream: &B::Stream) -> Result<()> {
        if !self.owns(block) {
            return Err(Error::InvalidArgument {
                op: "Allocator::record_stream",
                message: format!(
                    "the block at {:?} ({} bytes) comes from another allocator than this {} \
                     allocator; call record_stream on the block itself or on its own allocator",
                    block.ptr(),
                    block.size(),
                    self.name()
                ),
            });
        }
        block.record_stream(stream)
    }

    /// The counters.
    fn stats(&self) -> AllocatorStats;

    /// Returns cached memory that no block uses to the backend (waiting, where needed, for work
    /// still queued on it). Allocators that cache nothing return at once.
    fn empty_cache(&self) -> Result<()>;
}

/// An allocator shared by whatever takes memory from it: what `KvCache` and models hold.
pub type SharedAllocator<B> = Arc<dyn Allocator<B>>;

macro_rules! forward_allocator {
    ($($ptr:ty),*) => {$(
        impl<B: Backend, A: Allocator<B> + ?Sized> Allocator<B> for $ptr {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn device(&self) -> &B::Device {
                (**self).device()
            }
            fn allocate(&self, bytes: usize, stream: &B::Stream) -> Result<MemoryBlock<B>> {
                (**self).allocate(bytes, stream)
            }
            fn owns(&self, block: &MemoryBlock<B>) -> bool {
                (**self).owns(block)
            }
            fn record_stream(&self, block: &MemoryBlock<B>, stream: &B::Stream) -> Result<()> {
                (**self).record_stream(block, stream)
            }
            fn stats(&self) -> AllocatorStats {
                (**self).stats()
            }
            fn empty_cache(&self) -> Result<()> {
                (**self).empty_cache()
            }
        }
    )*};
}
forward_allocator!(Arc<A>, &A, Box<A>);

/// The state a [`MemoryBlock`] returns to: implemented by allocators, called by blocks.
pub trait BlockOwner<B: Backend>: Send + Sync {
    /// Notes that `block` (owned by `self`) is used on `stream`, which is not its allocation
    /// stream but is on its device (the block checked both).
    fn record_stream(&self, block: &MemoryBlock<B>, stream: &B::Stream) -> Result<()>;

    /// Takes `block` back. Called exactly once per block, from its `Drop`; must not panic.
    /// Errors the owner meets here are its own to keep and report later.
    fn release(&self, block: &MemoryBlock<B>);
}

/// An owned range of device memory from an [`Allocator`]; returns to it on drop.
///
/// A [`DeviceBuffer`](crate::DeviceBuffer) built with
/// [`alloc_in`](crate::DeviceBuffer::alloc_in) or [`from_block`](crate::DeviceBuffer::from_block)
/// holds one.
pub struct MemoryBlock<B: Backend> {
    ptr: DevicePtr,
    size: usize,
    device: usize,
    stream: StreamId,
    tag: u64,
    owner: Arc<dyn BlockOwner<B>>,
}

impl<B: Backend> MemoryBlock<B> {
    /// A block of `size` bytes at `ptr` on device `device`, allocated for `stream`, that
    /// returns to `owner` on drop. `tag` is the owner's own (an index into its tables).
    ///
    /// # Safety
    /// The safe buffer and stream API hands this range to the backend's `unsafe` enqueue
    /// methods on the strength of these, which the caller guarantees:
    /// 1. `ptr..ptr + size` lies inside memory of device `device` of backend `B` (one
    ///    allocation, or mapped chunks of one reserved range) that stays allocated, and mapped,
    ///    until `owner.release` has been called for this block;
    /// 2. `ptr` is aligned to at least 64 bytes;
    /// 3. no other live `MemoryBlock` overlaps the range, and `owner` hands out none that does
    ///    before `release` is called for this one;
    /// 4. any work enqueued before this call that used the range either ran on `stream` (so
    ///    later work on `stream` is ordered after it) or has completed.
    pub unsafe fn from_raw_parts(
        ptr: DevicePtr,
        size: usize,
        device: usize,
        stream: StreamId,
        tag: u64,
        owner: Arc<dyn BlockOwner<B>>,
    ) -> Self {
        MemoryBlock {
            ptr,
            size,
            device,
            stream,
            tag,
            owner,
        }
    }

    /// Start address.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Size in bytes (at least what was asked; allocators round up).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Ordinal of the device the memory lives on.
    pub fn device_ordinal(&self) -> usize {
        self.device
    }

    /// The stream the block was allocated for.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The owner's tag, as given to [`from_raw_parts`](Self::from_raw_parts).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Whether `owner` is this block's owner (compares the shared state's address).
    pub fn is_owned_by<O: BlockOwner<B>>(&self, owner: &Arc<O>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.owner), Arc::as_ptr(owner))
    }

    /// Notes that the block is used on `stream` too, by the work enqueued there so far (see
    /// [`Allocator::record_stream`]). A no-op for the block's own stream.
    ///
    /// # Errors
    /// [`Error::WrongDevice`] for a stream of another device.
    pub fn record_stream(&self, stream: &B::Stream) -> Result<()> {
        if stream.device_ordinal() != self.device {
            return Err(Error::WrongDevice {
                op: "MemoryBlock::record_stream",
                what: "the block",
                expected: stream.device_ordinal(),
                actual: self.device,
            });
        }
        if stream.id() == self.stream {
            return Ok(());
        }
        self.owner.record_stream(self, stream)
    }
}

impl<B: Backend> Drop for MemoryBlock<B> {
    fn drop(&mut self) {
        self.owner.release(self);
    }
}

impl<B: Backend> fmt::Debug for MemoryBlock<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBlock")
            .field("ptr", &self.ptr)
            .field("size", &self.size)
            .field("device", &self.device)
            .field("stream", &self.stream)
            .finish()
    }
}

/// Checks that `stream` runs on `device`, the allocator's device: the check every allocator's
/// `allocate` starts with.
///
/// # Errors
/// [`Error::WrongDevice`] naming `op`.
pub fn check_stream_device<B: Backend>(
    op: &'static str,
    device: usize,
    stream: &B::Stream,
) -> Result<()> {
    if stream.device_ordinal() != device {
        return Err(Error::WrongDevice {
            op,
            what: "the allocator's memory",
            expected: stream.device_ordinal(),
            actual: device,
        });
    }
    Ok(())
}

/// The error for a zero-byte request, which every allocator refuses.
pub fn zero_size(op: &'static str) -> Error {
    Error::InvalidArgument {
        op,
        message: "size 0: allocate at least one byte (typed buffers of length 0 allocate nothing)"
            .into(),
    }
}
