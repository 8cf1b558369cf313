//! Typed device memory: owned buffers and borrowed views of them.
//!
//! A [`DeviceBuffer`] owns `len` elements of memory on one device and frees it on drop: a raw
//! allocation of its own ([`DeviceBuffer::alloc`]) or a block of any
//! [`Allocator`](crate::alloc::Allocator) ([`DeviceBuffer::alloc_in`]).
//! [`DeviceSlice`] and [`DeviceSliceMut`] borrow a sub-range of one. Operations accept anything
//! that implements [`DeviceRepr`] (read) or [`DeviceReprMut`] (write), so a buffer and a view of
//! it are used the same way. The backend type is part of every type, so a CPU-backend buffer can
//! never reach an ACL stream.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use crate::alloc::{Allocator, MemoryBlock};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::traits::{Backend, Device, DeviceMemory, DevicePtr, Stream};

/// Read access to a typed range of device memory: what stream operations take as a source.
///
/// Sealed: only [`DeviceBuffer`], [`DeviceSlice`] and [`DeviceSliceMut`] implement it, because the
/// safe stream API hands the address and byte count it reports to the backends' `unsafe`
/// enqueue methods. A foreign implementation could report any address or size:
///
/// ```compile_fail
/// use ascend_hal::{Backend, DevicePtr, DeviceRepr, Element};
/// struct Liar;
/// impl<B: Backend, T: Element> DeviceRepr<B, T> for Liar {
///     fn device_ptr(&self) -> DevicePtr { DevicePtr(0x1000) }
///     fn len(&self) -> usize { 64 }
///     fn device_ordinal(&self) -> usize { 0 }
///     fn size_in_bytes(&self) -> usize { 1 << 20 }
/// }
/// ```
pub trait DeviceRepr<B: Backend, T: Element>: sealed::Sealed {
    /// Start address of the range.
    fn device_ptr(&self) -> DevicePtr;
    /// Number of elements.
    fn len(&self) -> usize;
    /// Ordinal of the device the memory lives on.
    fn device_ordinal(&self) -> usize;
    /// Whether the range is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Size of the range in bytes: `len() * size_of::<T>()`, always (the trait is sealed).
    fn size_in_bytes(&self) -> usize {
        self.len() * std::mem::size_of::<T>()
    }
}

mod sealed {
    /// Implemented only by this module's buffer and view types.
    pub trait Sealed {}
    impl<B: crate::Backend, T: crate::Element> Sealed for super::DeviceBuffer<B, T> {}
    impl<B: crate::Backend, T: crate::Element> Sealed for super::DeviceSlice<'_, B, T> {}
    impl<B: crate::Backend, T: crate::Element> Sealed for super::DeviceSliceMut<'_, B, T> {}
}

/// Write access to a typed range of device memory: what stream operations take as a destination.
///
/// Implemented only by types that hold exclusive access (an owned buffer or a `&mut` view), so
/// that two destinations of one operation can never alias; sealed like [`DeviceRepr`].
pub trait DeviceReprMut<B: Backend, T: Element>: DeviceRepr<B, T> {}

/// An owned, typed allocation of `len` elements on one device.
///
/// Contents start unspecified (on the NPU, whatever was there before); every bit pattern is a
/// valid `T` because `T: bytemuck::Pod`. Zero-length buffers allocate nothing.
///
/// ```
/// # fn demo<B: ascend_hal::Backend>(backend: &B) -> ascend_hal::Result<()> {
/// use ascend_hal::prelude::*;
/// let device = backend.device(0)?;
/// let stream = device.new_stream()?;
/// let buf = DeviceBuffer::<B, f32>::from_slice(&stream, &[1.0, 2.0, 3.0])?;
/// assert_eq!(stream.clone_to_host(&buf)?, vec![1.0, 2.0, 3.0]);
/// # Ok(()) }
/// ```
pub struct DeviceBuffer<B: Backend, T: Element> {
    storage: Storage<B>,
    len: usize,
    device: usize,
    _element: PhantomData<T>,
}

/// Where a buffer's memory comes from (an implementation detail: every kind behaves the same).
enum Storage<B: Backend> {
    /// An empty buffer: no memory.
    Empty,
    /// Its own raw allocation.
    Raw(B::DeviceMemory),
    /// A block of an allocator, returned to it on drop.
    Block(MemoryBlock<B>),
}

impl<B: Backend, T: Element> DeviceBuffer<B, T> {
    /// Allocates `len` elements on `device`, contents unspecified.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the device lacks the space; [`Error::InvalidArgument`] when
    /// `len * size_of::<T>()` overflows.
    pub fn alloc(device: &B::Device, len: usize) -> Result<Self> {
        let bytes = byte_len::<T>(len, "DeviceBuffer::alloc")?;
        let storage = if bytes == 0 {
            Storage::Empty
        } else {
            Storage::Raw(device.allocate(bytes)?)
        };
        Ok(DeviceBuffer {
            storage,
            len,
            device: device.ordinal(),
            _element: PhantomData,
        })
    }

    /// Allocates `len` elements from `alloc` for use on `stream`, contents unspecified. A
    /// zero-length buffer takes nothing from the allocator.
    ///
    /// # Errors
    /// What the allocator returns ([`Error::OutOfMemory`], [`Error::WrongDevice`]);
    /// [`Error::InvalidArgument`] when `len * size_of::<T>()` overflows.
    pub fn alloc_in(
        alloc: &(impl Allocator<B> + ?Sized),
        stream: &B::Stream,
        len: usize,
    ) -> Result<Self> {
        let bytes = byte_len::<T>(len, "DeviceBuffer::alloc_in")?;
        if bytes == 0 {
            return Ok(Self::empty(stream.device_ordinal()));
        }
        Self::from_block(alloc.allocate(bytes, stream)?, len)
    }

    /// A buffer of `len` elements over `block`, which returns to its allocator when the buffer
    /// drops.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (and `block` is released) when the block holds fewer than
    /// `len` elements.
    pub fn from_block(block: MemoryBlock<B>, len: usize) -> Result<Self> {
        let bytes = byte_len::<T>(len, "DeviceBuffer::from_block")?;
        if bytes > block.size() {
            return Err(Error::InvalidArgument {
                op: "DeviceBuffer::from_block",
                message: format!(
                    "{len} elements of {} take {bytes} bytes, but the block holds {}",
                    T::DTYPE,
                    block.size()
                ),
            });
        }
        Ok(DeviceBuffer {
            device: block.device_ordinal(),
            storage: Storage::Block(block),
            len,
            _element: PhantomData,
        })
    }

    fn empty(device: usize) -> Self {
        DeviceBuffer {
            storage: Storage::Empty,
            len: 0,
            device,
            _element: PhantomData,
        }
    }

    /// Allocates a buffer and fills it with zeros, in order on `stream`.
    pub fn zeros(stream: &B::Stream, len: usize) -> Result<Self> {
        Self::alloc(&stream.device(), len)?.zeroed_on(stream)
    }

    /// Allocates a buffer from `alloc` and fills it with zeros, in order on `stream`.
    pub fn zeros_in(
        alloc: &(impl Allocator<B> + ?Sized),
        stream: &B::Stream,
        len: usize,
    ) -> Result<Self> {
        Self::alloc_in(alloc, stream, len)?.zeroed_on(stream)
    }

    /// Allocates a buffer and copies `data` into it, in order on `stream`; returns when the copy
    /// is done, so `data` may be ordinary host memory.
    pub fn from_slice(stream: &B::Stream, data: &[T]) -> Result<Self> {
        Self::alloc(&stream.device(), data.len())?.filled_on(stream, data)
    }

    /// Allocates a buffer from `alloc` and copies `data` into it, as
    /// [`from_slice`](Self::from_slice) does.
    pub fn from_slice_in(
        alloc: &(impl Allocator<B> + ?Sized),
        stream: &B::Stream,
        data: &[T],
    ) -> Result<Self> {
        Self::alloc_in(alloc, stream, data.len())?.filled_on(stream, data)
    }

    fn zeroed_on(mut self, stream: &B::Stream) -> Result<Self> {
        crate::StreamExt::memset(stream, &mut self, 0)?;
        Ok(self)
    }

    fn filled_on(mut self, stream: &B::Stream, data: &[T]) -> Result<Self> {
        crate::StreamExt::copy_h2d_sync(stream, data, &mut self)?;
        Ok(self)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ordinal of the device the buffer lives on.
    pub fn device_ordinal(&self) -> usize {
        self.device
    }

    /// The allocator block behind the buffer, if it came from an allocator.
    pub fn block(&self) -> Option<&MemoryBlock<B>> {
        match &self.storage {
            Storage::Block(b) => Some(b),
            _ => None,
        }
    }

    /// Notes that the buffer is used on `stream` too, by the work enqueued there so far, so
    /// that its memory is not reused before that work completes once the buffer drops (see
    /// [`Allocator::record_stream`]). Buffers with their own raw allocation need nothing: a
    /// raw allocation is safe to drop with work queued.
    ///
    /// # Errors
    /// [`Error::WrongDevice`] for a stream of another device.
    pub fn record_stream(&self, stream: &B::Stream) -> Result<()> {
        match &self.storage {
            Storage::Block(b) => b.record_stream(stream),
            _ if stream.device_ordinal() != self.device => Err(Error::WrongDevice {
                op: "DeviceBuffer::record_stream",
                what: "the buffer",
                expected: stream.device_ordinal(),
                actual: self.device,
            }),
            _ => Ok(()),
        }
    }

    /// Borrows the whole buffer for reading.
    pub fn view(&self) -> DeviceSlice<'_, B, T> {
        DeviceSlice {
            ptr: self.base(),
            len: self.len,
            device: self.device,
            _borrow: PhantomData,
        }
    }

    /// Borrows the whole buffer for writing.
    pub fn view_mut(&mut self) -> DeviceSliceMut<'_, B, T> {
        DeviceSliceMut {
            ptr: self.base(),
            len: self.len,
            device: self.device,
            _borrow: PhantomData,
        }
    }

    /// Borrows elements `range` for reading.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<DeviceSlice<'_, B, T>> {
        let (start, end) = resolve_range(range, self.len, "DeviceBuffer::slice")?;
        Ok(DeviceSlice {
            ptr: self.base().add(start * std::mem::size_of::<T>()),
            len: end - start,
            device: self.device,
            _borrow: PhantomData,
        })
    }

    /// Borrows elements `range` for writing.
    pub fn slice_mut(
        &mut self,
        range: impl RangeBounds<usize>,
    ) -> Result<DeviceSliceMut<'_, B, T>> {
        let (start, end) = resolve_range(range, self.len, "DeviceBuffer::slice_mut")?;
        Ok(DeviceSliceMut {
            ptr: self.base().add(start * std::mem::size_of::<T>()),
            len: end - start,
            device: self.device,
            _borrow: PhantomData,
        })
    }

    fn base(&self) -> DevicePtr {
        match &self.storage {
            Storage::Empty => DevicePtr(0),
            Storage::Raw(m) => m.ptr(),
            Storage::Block(b) => b.ptr(),
        }
    }
}

impl<B: Backend, T: Element> fmt::Debug for DeviceBuffer<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("dtype", &T::DTYPE)
            .field("len", &self.len)
            .field("device", &self.device)
            .field("ptr", &self.base())
            .finish()
    }
}

impl<B: Backend, T: Element> DeviceRepr<B, T> for DeviceBuffer<B, T> {
    fn device_ptr(&self) -> DevicePtr {
        self.base()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn device_ordinal(&self) -> usize {
        self.device
    }
}

impl<B: Backend, T: Element> DeviceReprMut<B, T> for DeviceBuffer<B, T> {}

/// Marks a shared borrow of device elements of backend `B` (`fn() -> B` keeps the view `Send`
/// and `Sync` whatever `B` is).
type SharedBorrow<'a, B, T> = PhantomData<(&'a T, fn() -> B)>;
/// Marks an exclusive borrow of device elements of backend `B`.
type ExclusiveBorrow<'a, B, T> = PhantomData<(&'a mut T, fn() -> B)>;

/// A borrowed, read-only range of a [`DeviceBuffer`].
pub struct DeviceSlice<'a, B: Backend, T: Element> {
    ptr: DevicePtr,
    len: usize,
    device: usize,
    _borrow: SharedBorrow<'a, B, T>,
}

/// A borrowed, writable range of a [`DeviceBuffer`].
pub struct DeviceSliceMut<'a, B: Backend, T: Element> {
    ptr: DevicePtr,
    len: usize,
    device: usize,
    _borrow: ExclusiveBorrow<'a, B, T>,
}

impl<B: Backend, T: Element> Clone for DeviceSlice<'_, B, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend, T: Element> Copy for DeviceSlice<'_, B, T> {}

macro_rules! impl_view {
    ($name:ident) => {
        impl<B: Backend, T: Element> DeviceRepr<B, T> for $name<'_, B, T> {
            fn device_ptr(&self) -> DevicePtr {
                self.ptr
            }
            fn len(&self) -> usize {
                self.len
            }
            fn device_ordinal(&self) -> usize {
                self.device
            }
        }

        impl<B: Backend, T: Element> fmt::Debug for $name<'_, B, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("dtype", &T::DTYPE)
                    .field("len", &self.len)
                    .field("device", &self.device)
                    .field("ptr", &self.ptr)
                    .finish()
            }
        }
    };
}
impl_view!(DeviceSlice);
impl_view!(DeviceSliceMut);

impl<B: Backend, T: Element> DeviceReprMut<B, T> for DeviceSliceMut<'_, B, T> {}

impl<'a, B: Backend, T: Element> DeviceSlice<'a, B, T> {
    /// Elements `range` of this view.
    pub fn sub(&self, range: impl RangeBounds<usize>) -> Result<DeviceSlice<'a, B, T>> {
        let (start, end) = resolve_range(range, self.len, "DeviceSlice::sub")?;
        Ok(DeviceSlice {
            ptr: self.ptr.add(start * std::mem::size_of::<T>()),
            len: end - start,
            device: self.device,
            _borrow: PhantomData,
        })
    }

    /// This view as elements `..mid` and `mid..` (like `<[T]>::split_at`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] when `mid` is past the end.
    pub fn split_at(self, mid: usize) -> Result<(DeviceSlice<'a, B, T>, DeviceSlice<'a, B, T>)> {
        // Checked here so that the error names the call made, not `sub`.
        resolve_range(..mid, self.len, "DeviceSlice::split_at")?;
        Ok((self.sub(..mid)?, self.sub(mid..)?))
    }
}

impl<'a, B: Backend, T: Element> DeviceSliceMut<'a, B, T> {
    /// This view as two that do not overlap, elements `..mid` and `mid..`, both writable
    /// (like `<[T]>::split_at_mut`): how one allocation holds several outputs of one op.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] when `mid` is past the end.
    pub fn split_at(
        self,
        mid: usize,
    ) -> Result<(DeviceSliceMut<'a, B, T>, DeviceSliceMut<'a, B, T>)> {
        let (_, end) = resolve_range(..mid, self.len, "DeviceSliceMut::split_at")?;
        let head = DeviceSliceMut {
            ptr: self.ptr,
            len: end,
            device: self.device,
            _borrow: PhantomData,
        };
        let tail = DeviceSliceMut {
            ptr: self.ptr.add(end * std::mem::size_of::<T>()),
            len: self.len - end,
            device: self.device,
            _borrow: PhantomData,
        };
        Ok((head, tail))
    }

    /// Elements `range` of this view, for writing.
    pub fn sub_mut(&mut self, range: impl RangeBounds<usize>) -> Result<DeviceSliceMut<'_, B, T>> {
        let (start, end) = resolve_range(range, self.len, "DeviceSliceMut::sub_mut")?;
        Ok(DeviceSliceMut {
            ptr: self.ptr.add(start * std::mem::size_of::<T>()),
            len: end - start,
            device: self.device,
            _borrow: PhantomData,
        })
    }

    /// A read-only view of the same elements.
    pub fn as_view(&self) -> DeviceSlice<'_, B, T> {
        DeviceSlice {
            ptr: self.ptr,
            len: self.len,
            device: self.device,
            _borrow: PhantomData,
        }
    }
}

/// Size in bytes of `len` elements of `T`, or an error naming `op` when it overflows.
pub(crate) fn byte_len<T: Element>(len: usize, op: &'static str) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::InvalidArgument {
            op,
            message: format!("{len} elements of {} overflow usize bytes", T::DTYPE),
        })
}

/// Turns any `RangeBounds` into a checked `start..end` within `0..len`.
pub(crate) fn resolve_range(
    range: impl RangeBounds<usize>,
    len: usize,
    op: &'static str,
) -> Result<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    if start > end || end > len {
        return Err(Error::OutOfBounds {
            op,
            start,
            end,
            len,
        });
    }
    Ok((start, end))
}
