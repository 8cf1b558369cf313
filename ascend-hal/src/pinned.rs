//! Page-locked host buffers whose reuse is fenced, which is what makes asynchronous copies sound
//! in safe Rust.
//!
//! Every asynchronous copy that reads a [`PinnedBuffer`] records a *read fence* (an event) on its
//! stream after the copy; every copy that writes it records a *write fence*. Host access waits on
//! the fences that could conflict with it: [`PinnedBuffer::as_slice`] waits for pending writes,
//! [`PinnedBuffer::as_mut_slice`] for pending reads and writes, and `Drop` for everything. A copy
//! on stream S that touches the buffer first makes S wait (on the device, without blocking the
//! host) for the conflicting fences of other streams. The borrow checker does the rest: device
//! writes into the buffer need `&mut`, so no host slice can be alive while one is being enqueued.
//!
//! If a fence cannot be recorded after a copy was queued, the buffer falls back on synchronising
//! the stream; if that fails too, nothing proves the copy is done, so the buffer is *poisoned*:
//! host access returns [`Error::Poisoned`], and `Drop` leaks the memory (with a warning on
//! stderr) instead of freeing it under the queued copy.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Mutex, MutexGuard};

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::traits::{Backend, Device, Event, HostMemory, Stream, StreamId};

/// A typed page-locked host buffer for asynchronous copies.
///
/// ```
/// # fn demo<B: ascend_hal::Backend>(backend: &B) -> ascend_hal::Result<()> {
/// use ascend_hal::prelude::*;
/// let device = backend.device(0)?;
/// let stream = device.new_stream()?;
/// let host = PinnedBuffer::<B, i32>::from_slice(&device, &[1, 2, 3])?;
/// let mut dev = DeviceBuffer::<B, i32>::alloc(&device, 3)?;
/// stream.copy_h2d(&host, &mut dev)?; // returns at once
/// let mut back = PinnedBuffer::<B, i32>::new(&device, 3)?;
/// stream.copy_d2h(&dev, &mut back)?;
/// assert_eq!(back.as_slice()?, &[1, 2, 3]); // waits for the copy
/// # Ok(()) }
/// ```
pub struct PinnedBuffer<B: Backend, T: Element> {
    memory: Option<B::HostMemory>,
    len: usize,
    fences: Mutex<Fences<B>>,
    _element: PhantomData<T>,
}

/// Events recorded after the pending operations that read or write a pinned buffer, one per
/// stream and direction (an event re-recorded on the same stream covers the earlier records).
struct Fences<B: Backend> {
    reads: Vec<(StreamId, B::Event)>,
    writes: Vec<(StreamId, B::Event)>,
    /// Why a queued copy may still use the memory without a fence, if one may.
    poisoned: Option<String>,
}

/// Which pending device accesses a host access or a new copy conflicts with.
#[derive(Clone, Copy)]
pub(crate) enum Access {
    /// Reading the buffer conflicts with pending writes.
    Read,
    /// Writing the buffer conflicts with pending reads and writes.
    Write,
}

impl<B: Backend, T: Element> PinnedBuffer<B, T> {
    /// Allocates `len` zeroed elements of page-locked memory for copies on `device`'s streams.
    pub fn new(device: &B::Device, len: usize) -> Result<Self> {
        let bytes = crate::buffer::byte_len::<T>(len, "PinnedBuffer::new")?;
        let memory = if bytes == 0 {
            None
        } else {
            Some(device.allocate_host(bytes)?)
        };
        Ok(PinnedBuffer {
            memory,
            len,
            fences: Mutex::new(Fences {
                reads: Vec::new(),
                writes: Vec::new(),
                poisoned: None,
            }),
            _element: PhantomData,
        })
    }

    /// Allocates a pinned buffer holding a copy of `data`.
    pub fn from_slice(device: &B::Device, data: &[T]) -> Result<Self> {
        let mut buf = Self::new(device, data.len())?;
        buf.as_mut_slice()?.copy_from_slice(data);
        Ok(buf)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents, after waiting for pending device writes into the buffer.
    ///
    /// # Errors
    /// The failure of a pending copy into the buffer, if one failed.
    pub fn as_slice(&self) -> Result<&[T]> {
        self.wait_host(Access::Read)?;
        Ok(match &self.memory {
            None => &[],
            // SAFETY: by the `HostMemory` contract the pointer is valid for `size()` bytes,
            // 64-byte aligned (enough for every `Element`), and `size() == len * size_of::<T>()`
            // because `new` allocated exactly that. The device is not writing it: every pending
            // write was fenced and `wait_host` waited for those fences, and new device writes
            // need `&mut self`, which the returned borrow of `self` excludes.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr() as *const T, self.len) },
        })
    }

    /// The contents, writable, after waiting for every pending device access to the buffer.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.wait_host(Access::Write)?;
        Ok(match &self.memory {
            None => &mut [],
            // SAFETY: as in `as_slice`, plus: every pending device read was waited for too, and
            // `&mut self` excludes new device accesses and other host borrows while the slice
            // lives.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.as_ptr() as *mut T, self.len) },
        })
    }

    /// A copy of the contents in a `Vec`.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.as_slice()?.to_vec())
    }

    /// Host pointer for the backend, or `None` when empty.
    pub(crate) fn host_ptr(&self) -> Option<*mut u8> {
        self.memory.as_ref().map(|m| m.as_ptr())
    }

    /// Before a copy of kind `access` on `stream`: make the stream wait for conflicting fences
    /// of other streams, so the device orders the accesses without blocking the host. A
    /// poisoned buffer takes no more copies.
    pub(crate) fn order_before(&self, stream: &B::Stream, access: Access) -> Result<()> {
        let fences = self.lock_fences();
        if let Some(reason) = &fences.poisoned {
            return Err(Error::Poisoned {
                what: "a pinned host buffer",
                reason: reason.clone(),
            });
        }
        for (id, event) in conflicting(&fences, access) {
            if *id != stream.id() {
                stream.wait(event)?;
            }
        }
        Ok(())
    }

    /// After a copy of kind `access` was enqueued on `stream`: fence it.
    pub(crate) fn fence_after(&self, stream: &B::Stream, access: Access) -> Result<()> {
        let mut fences = self.lock_fences();
        let list = match access {
            Access::Read => &mut fences.reads,
            Access::Write => &mut fences.writes,
        };
        let id = stream.id();
        let recorded = match list.iter().position(|(s, _)| *s == id) {
            Some(i) => stream.record(&list[i].1),
            None => stream.device().new_event().and_then(|event| {
                stream.record(&event)?;
                list.push((id, event));
                Ok(())
            }),
        };
        if let Err(e) = &recorded {
            // Without a fence the host could touch memory the copy still uses: wait for the whole
            // stream instead. Only `Ok` proves the queue drained (the `Stream::synchronize`
            // contract); otherwise the buffer is poisoned and its memory never freed.
            if let Err(sync) = stream.synchronize() {
                fences.poisoned = Some(format!(
                    "recording a fence after a copy on {:?} failed ({e}), and synchronising the \
                     stream failed too ({sync})",
                    stream.id()
                ));
            }
        }
        recorded
    }

    fn wait_host(&self, access: Access) -> Result<()> {
        let mut fences = self.lock_fences();
        if let Some(reason) = &fences.poisoned {
            return Err(Error::Poisoned {
                what: "a pinned host buffer",
                reason: reason.clone(),
            });
        }
        let mut first_error = None;
        for (_, event) in conflicting(&fences, access) {
            if let Err(e) = event.synchronize() {
                first_error.get_or_insert(e);
            }
        }
        // Every conflicting fence has completed (with or without an error): forget them.
        fences.writes.clear();
        if matches!(access, Access::Write) {
            fences.reads.clear();
        }
        first_error.map_or(Ok(()), Err)
    }

    fn lock_fences(&self) -> MutexGuard<'_, Fences<B>> {
        // A panic while the lock was held cannot leave the lists inconsistent (each update is a
        // single push or clear), so a poisoned lock is still usable.
        self.fences.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn conflicting<B: Backend>(
    fences: &Fences<B>,
    access: Access,
) -> impl Iterator<Item = &(StreamId, B::Event)> {
    let reads: &[_] = match access {
        Access::Read => &[],
        Access::Write => &fences.reads,
    };
    fences.writes.iter().chain(reads.iter())
}

impl<B: Backend, T: Element> Drop for PinnedBuffer<B, T> {
    fn drop(&mut self) {
        // The memory must outlive every copy that uses it. A failed copy's error is reported by
        // its stream's next synchronize, so nothing is lost by ignoring it here.
        if let Err(Error::Poisoned { reason, .. }) = self.wait_host(Access::Write) {
            if let Some(memory) = self.memory.take() {
                eprintln!(
                    "ascend-hal: leaking a pinned host buffer of {} bytes: {reason}",
                    memory.size()
                );
                std::mem::forget(memory);
            }
        }
    }
}

impl<B: Backend, T: Element> fmt::Debug for PinnedBuffer<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("dtype", &T::DTYPE)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
