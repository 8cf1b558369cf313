//! The backend trait set: what every backend (CPU, ACL, yours) implements.
//!
//! The traits are the *raw* layer, in the spirit of wgpu-hal: enqueue operations take device
//! addresses and host pointers and are `unsafe`, each with a `# Safety` list of checkable
//! preconditions. The safe, typed API ([`DeviceBuffer`](crate::DeviceBuffer),
//! [`PinnedBuffer`](crate::PinnedBuffer), [`StreamExt`](crate::StreamExt)) is written once on top
//! of them, generic over the backend, and is what engines call. A backend therefore implements a
//! small contract, and the soundness argument for asynchronous copies lives in one place.
//!
//! All traits point back to their [`Backend`] through an associated type, so generic code names
//! one parameter (`B: Backend`) and reaches every other type from it.

use std::fmt;

use crate::error::Result;

/// An address in a device's memory space.
///
/// It is a number, not a host pointer: dereferencing it on the host is meaningless. Backends
/// validate the addresses they are given as far as they can; the safe API only ever passes
/// addresses inside live allocations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    pub const fn add(self, bytes: usize) -> DevicePtr {
        DevicePtr(self.0 + bytes as u64)
    }
}

impl fmt::Debug for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePtr({:#x})", self.0)
    }
}

/// Free and total device memory, in bytes, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Bytes that can still be allocated.
    pub free: u64,
    /// Bytes the device has in all.
    pub total: u64,
}

impl MemoryInfo {
    /// Bytes in use (`total - free`).
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// A process-unique stream id, for logs and for per-stream bookkeeping in the safe layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

/// A backend: the bag of associated types that all other traits point back to, and the entry
/// point to its devices.
///
/// A `Backend` value is cheap to clone (a handle to shared state, such as a loaded runtime
/// library). Hot paths are generic over `B: Backend`; for a choice made at run time see
/// [`discover`](crate::discover).
pub trait Backend: Clone + Send + Sync + fmt::Debug + 'static {
    /// A device of this backend.
    type Device: Device<Backend = Self>;
    /// An in-order queue of operations on one device.
    type Stream: Stream<Backend = Self>;
    /// A marker in a stream, for ordering and timing.
    type Event: Event<Backend = Self>;
    /// An owned raw device allocation, released on drop.
    type DeviceMemory: DeviceMemory;
    /// An owned page-locked host allocation, released on drop.
    type HostMemory: HostMemory;
    /// A reserved range of device virtual addresses (for expandable segments).
    type VirtualRange: VirtualRange;
    /// A physical device allocation that can be mapped into a [`VirtualRange`].
    type PhysicalMemory: PhysicalMemory;

    /// The backend's short name (`"cpu"`, `"acl"`), used in device names and errors.
    fn name(&self) -> &'static str;

    /// How many devices the backend sees.
    fn device_count(&self) -> Result<usize>;

    /// The device with this ordinal.
    ///
    /// # Errors
    /// [`Error::InvalidDevice`](crate::Error::InvalidDevice) when `ordinal >= device_count()`;
    /// [`Error::DeviceLost`](crate::Error::DeviceLost) for a lost device.
    fn device(&self, ordinal: usize) -> Result<Self::Device>;
}

/// One device. Cheap to clone; every clone refers to the same device.
pub trait Device: Clone + Send + Sync + fmt::Debug {
    /// The backend this device belongs to.
    type Backend: Backend<Device = Self>;

    /// The device's ordinal within its backend.
    fn ordinal(&self) -> usize;

    /// A human-readable name, such as the SoC (`"Ascend910B1"`).
    fn name(&self) -> String;

    /// Free and total memory.
    fn memory_info(&self) -> Result<MemoryInfo>;

    /// Blocks until every stream of this device has finished its queued work, and returns the
    /// first error any of them hit.
    fn synchronize(&self) -> Result<()>;

    /// Creates a new stream on this device.
    fn new_stream(&self) -> Result<<Self::Backend as Backend>::Stream>;

    /// Creates a new event on this device, able to record timing.
    fn new_event(&self) -> Result<<Self::Backend as Backend>::Event>;

    /// Allocates `bytes > 0` bytes of device memory with unspecified contents, aligned to at least
    /// 64 bytes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory) with the requested, free and total
    /// bytes; [`Error::InvalidArgument`](crate::Error::InvalidArgument) for `bytes == 0`.
    fn allocate(&self, bytes: usize) -> Result<<Self::Backend as Backend>::DeviceMemory>;

    /// Allocates `bytes > 0` bytes of page-locked host memory, zero-filled, usable by
    /// asynchronous copies on this device's streams.
    fn allocate_host(&self, bytes: usize) -> Result<<Self::Backend as Backend>::HostMemory>;

    /// The mapping granularity of device virtual memory, or `None` if the device cannot reserve
    /// address ranges and map physical memory into them (then callers use ordinary
    /// allocations).
    fn virtual_memory_granularity(&self) -> Option<usize> {
        None
    }

    /// Reserves `bytes` (a multiple of the granularity) of device virtual addresses; nothing is
    /// backed until mapped. Released on drop (everything must be unmapped by then).
    fn reserve_virtual(&self, bytes: usize) -> Result<<Self::Backend as Backend>::VirtualRange> {
        let _ = bytes;
        Err(crate::Error::Unsupported {
            backend: "this",
            op: "reserve_virtual",
        })
    }

    /// Allocates `bytes` (a multiple of the granularity) of physical device memory, counted
    /// against the device's capacity. Freed on drop (it must be unmapped by then).
    fn allocate_physical(
        &self,
        bytes: usize,
    ) -> Result<<Self::Backend as Backend>::PhysicalMemory> {
        let _ = bytes;
        Err(crate::Error::Unsupported {
            backend: "this",
            op: "allocate_physical",
        })
    }

    /// Maps all of `physical` at `offset` into `range`.
    ///
    /// # Safety
    /// 1. `offset` is a multiple of the granularity and `offset + physical.size()` lies inside
    ///    `range`, in a part that is not mapped;
    /// 2. `physical` is not mapped anywhere else, and stays alive until unmapped.
    unsafe fn map(
        &self,
        range: &<Self::Backend as Backend>::VirtualRange,
        offset: usize,
        physical: &<Self::Backend as Backend>::PhysicalMemory,
    ) -> Result<()> {
        let _ = (range, offset, physical);
        Err(crate::Error::Unsupported {
            backend: "this",
            op: "map",
        })
    }

    /// Unmaps the physical allocation mapped at `offset` of `range`.
    ///
    /// # Safety
    /// 1. A physical allocation was mapped at exactly `offset` by [`Device::map`];
    /// 2. no queued or running work uses addresses in it.
    unsafe fn unmap(
        &self,
        range: &<Self::Backend as Backend>::VirtualRange,
        offset: usize,
    ) -> Result<()> {
        let _ = (range, offset);
        Err(crate::Error::Unsupported {
            backend: "this",
            op: "unmap",
        })
    }
}

/// A reserved range of device virtual addresses.
pub trait VirtualRange: Send + Sync + fmt::Debug {
    /// Start address.
    fn ptr(&self) -> DevicePtr;
    /// Size in bytes.
    fn size(&self) -> usize;
}

/// A physical device allocation for mapping into a [`VirtualRange`].
pub trait PhysicalMemory: Send + Sync + fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> usize;
}

/// The associated types of a backend that cannot map virtual memory.
#[derive(Debug)]
pub enum NoVirtualMemory {}

impl VirtualRange for NoVirtualMemory {
    fn ptr(&self) -> DevicePtr {
        match *self {}
    }
    fn size(&self) -> usize {
        match *self {}
    }
}

impl PhysicalMemory for NoVirtualMemory {
    fn size(&self) -> usize {
        match *self {}
    }
}

/// An owned raw device allocation.
///
/// Dropping it releases the memory. Implementations must make that safe while operations that
/// use the memory are still queued: either by synchronising before the release or by keeping the
/// storage alive until those operations finish. An error in the release is not lost: it is
/// reported by the device's next `synchronize()`.
pub trait DeviceMemory: Send + Sync + fmt::Debug {
    /// Start address.
    fn ptr(&self) -> DevicePtr;
    /// Size in bytes, as requested.
    fn size(&self) -> usize;
    /// Ordinal of the device the memory lives on.
    fn device_ordinal(&self) -> usize;
}

/// An owned page-locked host allocation.
///
/// # Safety
/// Implementors guarantee, for as long as the value is alive:
/// 1. `as_ptr()` is non-null, aligned to at least 64 bytes, and valid for reads and writes of
///    `size()` bytes;
/// 2. nothing but the holder of the value (and operations it enqueues) accesses that memory;
/// 3. `as_ptr()` and `size()` return the same values on every call.
pub unsafe trait HostMemory: Send + Sync + fmt::Debug {
    /// Start of the allocation.
    fn as_ptr(&self) -> *mut u8;
    /// Size in bytes.
    fn size(&self) -> usize;
}

/// An in-order queue of operations on one device.
///
/// Operations are enqueued and the call returns; they run later, in order. A failure inside the
/// stream is reported by the next [`synchronize`](Stream::synchronize) of the stream, of the
/// device, or of an event recorded after the failing operation, as an
/// [`Error::StreamOperation`](crate::Error::StreamOperation) naming the operation.
///
/// Engines use the safe methods of [`StreamExt`](crate::StreamExt); the `unsafe` methods here
/// are the backend's contract.
pub trait Stream: Send + Sync + fmt::Debug {
    /// The backend this stream belongs to.
    type Backend: Backend<Stream = Self>;

    /// A process-unique id.
    fn id(&self) -> StreamId;

    /// The device this stream runs on.
    fn device(&self) -> <Self::Backend as Backend>::Device;

    /// Ordinal of the device this stream runs on.
    fn device_ordinal(&self) -> usize {
        self.device().ordinal()
    }

    /// Enqueues a copy of `bytes > 0` bytes from host memory to the device.
    ///
    /// # Safety
    /// 1. `src` is valid for reads of `bytes` bytes until the operation completes, and the host
    ///    does not write it until then;
    /// 2. `src` points into a [`HostMemory`] allocation of this backend (page-locked memory);
    /// 3. `dst..dst + bytes` lies inside one live allocation of this stream's device.
    unsafe fn enqueue_copy_h2d(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()>;

    /// Enqueues a copy of `bytes > 0` bytes from the device to host memory.
    ///
    /// # Safety
    /// 1. `dst` is valid for writes of `bytes` bytes until the operation completes, and the host
    ///    neither reads nor writes it until then;
    /// 2. `dst` points into a [`HostMemory`] allocation of this backend;
    /// 3. `src..src + bytes` lies inside one live allocation of this stream's device.
    unsafe fn enqueue_copy_d2h(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()>;

    /// Enqueues a copy of `bytes > 0` bytes between two allocations of this stream's device.
    ///
    /// # Safety
    /// 1. `src..src + bytes` and `dst..dst + bytes` each lie inside one live allocation of this
    ///    stream's device, and the two ranges do not overlap.
    unsafe fn enqueue_copy_d2d(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()>;

    /// Enqueues a fill of `bytes > 0` bytes of device memory with `value`.
    ///
    /// # Safety
    /// 1. `dst..dst + bytes` lies inside one live allocation of this stream's device.
    unsafe fn enqueue_memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()>;

    /// Waits for all work queued on this stream so far, then copies `bytes > 0` bytes from
    /// ordinary (pageable) host memory to the device, and returns when the copy is done.
    ///
    /// # Safety
    /// 1. `src` is valid for reads of `bytes` bytes for the duration of the call;
    /// 2. `dst..dst + bytes` lies inside one live allocation of this stream's device.
    unsafe fn copy_h2d_blocking(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()>;

    /// Waits for all work queued on this stream so far, then copies `bytes > 0` bytes from the
    /// device to ordinary host memory, and returns when the copy is done.
    ///
    /// # Safety
    /// 1. `dst` is valid for writes of `bytes` bytes for the duration of the call;
    /// 2. `src..src + bytes` lies inside one live allocation of this stream's device.
    unsafe fn copy_d2h_blocking(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()>;

    /// Enqueues a record of `event`: the event completes when all work queued before it has.
    ///
    /// # Errors
    /// [`Error::WrongDevice`](crate::Error::WrongDevice) if the event belongs to another device.
    fn record(&self, event: &<Self::Backend as Backend>::Event) -> Result<()>;

    /// Makes all work queued on this stream after this call wait for the most recent record of
    /// `event` (a no-op if it was never recorded). The host does not block.
    fn wait(&self, event: &<Self::Backend as Backend>::Event) -> Result<()>;

    /// Blocks until all queued work has finished; returns the first failure since the last
    /// synchronisation.
    ///
    /// `Ok` promises that every operation queued before the call has finished. An `Err` does
    /// not: the call itself may have failed (an injected fault, a lost device) before the queue
    /// drained. Code that frees memory queued work uses must treat an error as "may still be
    /// running" (as [`PinnedBuffer`](crate::PinnedBuffer) does). Every backend returns `Ok` only
    /// after draining the queue.
    fn synchronize(&self) -> Result<()>;

    /// Whether all queued work has finished, without blocking.
    fn query(&self) -> Result<bool>;
}

/// A marker in a stream, for ordering work across streams and for timing.
pub trait Event: Send + Sync + fmt::Debug {
    /// The backend this event belongs to.
    type Backend: Backend<Event = Self>;

    /// Ordinal of the device this event belongs to.
    fn device_ordinal(&self) -> usize;

    /// Whether the most recent record has completed. An event never recorded is not complete
    /// (as in ACL).
    fn query(&self) -> Result<bool>;

    /// Blocks until the most recent record has completed (returns at once if never recorded).
    /// Returns the failure of the recording stream, if its work before the record failed.
    fn synchronize(&self) -> Result<()>;

    /// Milliseconds between the completion of `self` and of `end`, both recorded and complete.
    ///
    /// # Errors
    /// [`Error::NotReady`](crate::Error::NotReady) if either has not completed or was never
    /// recorded.
    fn elapsed_ms(&self, end: &Self) -> Result<f32>;
}
