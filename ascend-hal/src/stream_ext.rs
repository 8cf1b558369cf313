//! The safe, typed stream API, written once for every backend on top of the raw [`Stream`]
//! contract.

use crate::buffer::{DeviceRepr, DeviceReprMut};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::pinned::{Access, PinnedBuffer};
use crate::traits::{Backend, Device, Stream};

/// Safe operations on any backend's stream: typed copies of every kind, memset, and events.
///
/// Asynchronous copies take a [`PinnedBuffer`] for their host side (its reuse is fenced); the
/// `_sync` copies take ordinary slices and return when the data has moved. Every method checks
/// lengths and devices first and returns an error naming the argument, without enqueuing
/// anything. Zero-length operations succeed without reaching the backend.
///
/// Implemented for every [`Stream`]; bring it into scope with `use ascend_hal::prelude::*`.
pub trait StreamExt: Stream {
    /// Enqueues a copy of `src` (host) into `dst` (device); returns at once.
    fn copy_h2d<T, D>(&self, src: &PinnedBuffer<Self::Backend, T>, dst: &mut D) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized;

    /// Enqueues a copy of `src` (device) into `dst` (host); returns at once. `dst.as_slice()`
    /// waits for the copy.
    fn copy_d2h<T, S>(&self, src: &S, dst: &mut PinnedBuffer<Self::Backend, T>) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized;

    /// Enqueues a copy of `src` (device) into `dst[offset..offset + src.len()]` (host); returns at
    /// once.
    fn copy_d2h_at<T, S>(
        &self,
        src: &S,
        dst: &mut PinnedBuffer<Self::Backend, T>,
        offset: usize,
    ) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized;

    /// Enqueues a copy of `src[offset..offset + dst.len()]` (host) into `dst` (device); returns
    /// at once.
    fn copy_h2d_at<T, D>(
        &self,
        src: &PinnedBuffer<Self::Backend, T>,
        offset: usize,
        dst: &mut D,
    ) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized;

    /// Enqueues a copy of `src` into `dst`, both on this stream's device; returns at once.
    fn copy_d2d<T, S, D>(&self, src: &S, dst: &mut D) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized,
        D: DeviceReprMut<Self::Backend, T> + ?Sized;

    /// Enqueues a fill of every byte of `dst` with `byte`; returns at once.
    fn memset<T, D>(&self, dst: &mut D, byte: u8) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized;

    /// Copies `src` (ordinary host memory) into `dst` after the work already queued on this
    /// stream; returns when the copy is done.
    fn copy_h2d_sync<T, D>(&self, src: &[T], dst: &mut D) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized;

    /// Copies `src` into `dst` (ordinary host memory) after the work already queued on this
    /// stream; returns when the copy is done.
    fn copy_d2h_sync<T, S>(&self, src: &S, dst: &mut [T]) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized;

    /// Copies `src` into a new `Vec` after the work already queued on this stream.
    fn clone_to_host<T, S>(&self, src: &S) -> Result<Vec<T>>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized;

    /// Creates an event on this stream's device and records it here.
    fn record_new_event(&self) -> Result<<Self::Backend as Backend>::Event>;
}

fn check_len(op: &'static str, what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            op,
            what,
            expected,
            actual,
        })
    }
}

fn check_device(
    op: &'static str,
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::WrongDevice {
            op,
            what,
            expected,
            actual,
        })
    }
}

impl<S: Stream> StreamExt for S {
    fn copy_h2d<T, D>(&self, src: &PinnedBuffer<S::Backend, T>, dst: &mut D) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_h2d";
        check_device(OP, "dst", self.device_ordinal(), dst.device_ordinal())?;
        check_len(OP, "dst", src.len(), dst.len())?;
        let Some(host) = src.host_ptr() else {
            return Ok(());
        };
        src.order_before(self, Access::Read)?;
        // SAFETY: (1) the pinned buffer stays allocated and unwritten by the host until the
        // read fence recorded below completes: its host accessors and `Drop` wait for that
        // fence, and `order_before` made this stream wait for pending device writes into it.
        // (2) `host` comes from the buffer's `HostMemory`. (3) `dst` is a live device range of
        // `dst.len() * size_of::<T>()` bytes (a `DeviceReprMut` borrowed for this call) on this
        // stream's device (checked above), and backends keep freed memory valid for queued work.
        unsafe { self.enqueue_copy_h2d(host, dst.device_ptr(), dst.size_in_bytes())? };
        src.fence_after(self, Access::Read)
    }

    fn copy_d2h<T, Src>(&self, src: &Src, dst: &mut PinnedBuffer<S::Backend, T>) -> Result<()>
    where
        T: Element,
        Src: DeviceRepr<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_d2h";
        check_device(OP, "src", self.device_ordinal(), src.device_ordinal())?;
        check_len(OP, "dst", src.len(), dst.len())?;
        let Some(host) = dst.host_ptr() else {
            return Ok(());
        };
        dst.order_before(self, Access::Write)?;
        // SAFETY: (1) the host cannot read or write the pinned buffer until the write fence
        // recorded below completes (`as_slice`, `as_mut_slice` and `Drop` wait for it, and the
        // `&mut` borrow excludes live host slices now); `order_before` ordered this copy after
        // pending device accesses to it on other streams. (2) `host` is the buffer's
        // `HostMemory`. (3) `src` is a live device range on this stream's device (checked).
        unsafe { self.enqueue_copy_d2h(src.device_ptr(), host, src.size_in_bytes())? };
        dst.fence_after(self, Access::Write)
    }

    fn copy_d2h_at<T, Src>(
        &self,
        src: &Src,
        dst: &mut PinnedBuffer<S::Backend, T>,
        offset: usize,
    ) -> Result<()>
    where
        T: Element,
        Src: DeviceRepr<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_d2h_at";
        check_device(OP, "src", self.device_ordinal(), src.device_ordinal())?;
        offset
            .checked_add(src.len())
            .filter(|&e| e <= dst.len())
            .ok_or(Error::OutOfBounds {
                op: OP,
                start: offset,
                end: offset.saturating_add(src.len()),
                len: dst.len(),
            })?;
        let Some(host) = dst.host_ptr().filter(|_| !src.is_empty()) else {
            return Ok(());
        };
        dst.order_before(self, Access::Write)?;
        let host = host.wrapping_add(offset * std::mem::size_of::<T>());
        // SAFETY: as in `copy_d2h`; `host` points `offset` elements into the pinned buffer,
        // and `offset + src.len()` is within it (checked above).
        unsafe { self.enqueue_copy_d2h(src.device_ptr(), host, src.size_in_bytes())? };
        dst.fence_after(self, Access::Write)
    }

    fn copy_h2d_at<T, D>(
        &self,
        src: &PinnedBuffer<S::Backend, T>,
        offset: usize,
        dst: &mut D,
    ) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_h2d_at";
        check_device(OP, "dst", self.device_ordinal(), dst.device_ordinal())?;
        offset
            .checked_add(dst.len())
            .filter(|&e| e <= src.len())
            .ok_or(Error::OutOfBounds {
                op: OP,
                start: offset,
                end: offset.saturating_add(dst.len()),
                len: src.len(),
            })?;
        let Some(host) = src.host_ptr().filter(|_| !dst.is_empty()) else {
            return Ok(());
        };
        src.order_before(self, Access::Read)?;
        let host = host.wrapping_add(offset * std::mem::size_of::<T>());
        // SAFETY: as in `copy_h2d`; `host` points `offset` elements into the pinned buffer,
        // and `offset + dst.len()` is within it (checked above).
        unsafe { self.enqueue_copy_h2d(host, dst.device_ptr(), dst.size_in_bytes())? };
        src.fence_after(self, Access::Read)
    }

    fn copy_d2d<T, Src, D>(&self, src: &Src, dst: &mut D) -> Result<()>
    where
        T: Element,
        Src: DeviceRepr<S::Backend, T> + ?Sized,
        D: DeviceReprMut<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_d2d";
        check_device(OP, "src", self.device_ordinal(), src.device_ordinal())?;
        check_device(OP, "dst", self.device_ordinal(), dst.device_ordinal())?;
        check_len(OP, "dst", src.len(), dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: (1) both are live ranges on this stream's device (checked above). They do not
        // overlap: `dst` is held by exclusive borrow, which no shared view of the same memory
        // can coexist with.
        unsafe { self.enqueue_copy_d2d(src.device_ptr(), dst.device_ptr(), src.size_in_bytes()) }
    }

    fn memset<T, D>(&self, dst: &mut D, byte: u8) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<S::Backend, T> + ?Sized,
    {
        check_device("memset", "dst", self.device_ordinal(), dst.device_ordinal())?;
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: (1) `dst` is a live range on this stream's device (checked above).
        unsafe { self.enqueue_memset(dst.device_ptr(), byte, dst.size_in_bytes()) }
    }

    fn copy_h2d_sync<T, D>(&self, src: &[T], dst: &mut D) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_h2d_sync";
        check_device(OP, "dst", self.device_ordinal(), dst.device_ordinal())?;
        check_len(OP, "dst", src.len(), dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let bytes: &[u8] = bytemuck::cast_slice(src);
        // SAFETY: (1) `bytes` is borrowed for the whole call, which returns only when the copy
        // is done. (2) `dst` is a live range of the same size on this stream's device.
        unsafe { self.copy_h2d_blocking(bytes.as_ptr(), dst.device_ptr(), bytes.len()) }
    }

    fn copy_d2h_sync<T, Src>(&self, src: &Src, dst: &mut [T]) -> Result<()>
    where
        T: Element,
        Src: DeviceRepr<S::Backend, T> + ?Sized,
    {
        const OP: &str = "copy_d2h_sync";
        check_device(OP, "src", self.device_ordinal(), src.device_ordinal())?;
        check_len(OP, "dst", src.len(), dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        // SAFETY: (1) `bytes` is exclusively borrowed for the whole call, which returns only
        // when the copy is done. (2) `src` is a live range of the same size on this device.
        unsafe { self.copy_d2h_blocking(src.device_ptr(), bytes.as_mut_ptr(), bytes.len()) }
    }

    fn clone_to_host<T, Src>(&self, src: &Src) -> Result<Vec<T>>
    where
        T: Element,
        Src: DeviceRepr<S::Backend, T> + ?Sized,
    {
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); src.len()];
        self.copy_d2h_sync(src, &mut out)?;
        Ok(out)
    }

    fn record_new_event(&self) -> Result<<S::Backend as Backend>::Event> {
        let event = self.device().new_event()?;
        self.record(&event)?;
        Ok(event)
    }
}
