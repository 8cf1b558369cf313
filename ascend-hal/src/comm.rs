//! Collective communication between devices: the [`Communicator`] trait a backend's
//! communicator implements (HCCL on Ascend, a thread-based one across the CPU backend's mock
//! devices), and [`CommunicatorExt`], its typed, checked API.
//!
//! A communicator is one rank of a group of `size` ranks, each on its own device. Collectives are
//! stream-ordered, as HCCL's are: a call enqueues the operation on a stream of the rank's device
//! and returns; the operation runs when the stream reaches it and every rank of the group has
//! reached the same collective (the `n`-th collective call of every rank is one operation, so
//! every rank must call the same collectives in the same order). A failure is reported by the
//! stream's next synchronisation, naming the collective, like any stream operation.
//!
//! ```
//! # fn demo<C: ascend_hal::comm::Communicator>(
//! #     comm: &C,
//! #     stream: &<C::Backend as ascend_hal::Backend>::Stream,
//! # ) -> ascend_hal::Result<()> {
//! use ascend_hal::comm::{CommunicatorExt, ReduceOp};
//! use ascend_hal::prelude::*;
//! // Every rank: its partial sums, summed over the group in place.
//! let mut partial = DeviceBuffer::from_slice(stream, &[1.0f32, 2.0, 3.0])?;
//! comm.all_reduce_in_place(stream, &mut partial, ReduceOp::Sum)?;
//! let total = stream.clone_to_host(&partial)?; // [size, 2 * size, 3 * size]
//! # Ok(()) }
//! ```

use std::fmt;

use crate::buffer::{DeviceRepr, DeviceReprMut};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::traits::{Backend, DevicePtr, Stream};

/// How a reduction combines the ranks' values (HCCL's `HcclReduceOp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Product.
    Prod,
    /// Largest.
    Max,
    /// Smallest.
    Min,
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        })
    }
}

/// A backend whose devices form communicator groups: what tensor-parallel code is generic over
/// (`B: CollectiveBackend`), so that it makes its group without naming HCCL or the CPU
/// communicator. The ACL backend's communicator is `HcclCommunicator`, the CPU backend's
/// `hal_mock::CpuCommunicator`.
pub trait CollectiveBackend: Backend {
    /// One rank of a group.
    type Communicator: Communicator<Backend = Self> + 'static;

    /// One communicator per device, rank `i` on `devices[i]`, for one process driving them all
    /// (HCCL's `HcclCommInitAll`).
    ///
    /// # Errors
    /// No device, the same device twice, devices the backend cannot group, or the
    /// collective library's own failure.
    fn init_all(devices: &[Self::Device]) -> Result<Vec<Self::Communicator>>;
}

impl CollectiveBackend for crate::acl::AclBackend {
    type Communicator = crate::acl::hccl::HcclCommunicator;

    fn init_all(devices: &[crate::acl::AclDevice]) -> Result<Vec<Self::Communicator>> {
        crate::acl::hccl::HcclCommunicator::init_all(devices)
    }
}

/// One rank of a communicator group, on one device.
///
/// The `enqueue_*` methods are the raw interface a backend implements; engines call the checked
/// ones of [`CommunicatorExt`]. Every method enqueues on `stream`, which must belong to the
/// rank's device, and returns before the operation runs.
pub trait Communicator: Send + Sync {
    /// The backend whose devices and streams the group uses.
    type Backend: Backend;

    /// This rank, `0..size()`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// Ordinal of this rank's device.
    fn device_ordinal(&self) -> usize;

    /// Every rank's `send` (`count` elements of `dtype`) combined by `op` into every rank's
    /// `recv`. `send == recv` is allowed (in place).
    ///
    /// # Safety
    /// 1. `send..send + count * dtype.size_in_bytes()` and the same span from `recv` each lie
    ///    inside one live allocation of this rank's device, until the operation completes;
    /// 2. the two spans are the same or do not overlap;
    /// 3. nothing else writes `send` or touches `recv` until the operation completes.
    unsafe fn enqueue_all_reduce(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()>;

    /// Every rank's `send` (`count` elements) laid end to end, in rank order, into every rank's
    /// `recv` (`count * size()` elements).
    ///
    /// # Safety
    /// As [`enqueue_all_reduce`](Self::enqueue_all_reduce), with `recv` spanning
    /// `count * size()` elements and not overlapping `send`.
    unsafe fn enqueue_all_gather(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
    ) -> Result<()>;

    /// Every rank's `send` (`count * size()` elements) combined by `op`; rank `r` receives
    /// elements `r * count..(r + 1) * count` of the result in `recv` (`count` elements).
    ///
    /// # Safety
    /// As [`enqueue_all_reduce`](Self::enqueue_all_reduce), with `send` spanning
    /// `count * size()` elements and not overlapping `recv`.
    unsafe fn enqueue_reduce_scatter(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()>;

    /// Rank `root`'s `buf` (`count` elements) copied into every other rank's `buf`.
    ///
    /// # Safety
    /// `buf..buf + count * dtype.size_in_bytes()` lies inside one live allocation of this rank's
    /// device until the operation completes, and nothing else touches it until then.
    unsafe fn enqueue_broadcast(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        root: usize,
    ) -> Result<()>;

    /// `buf` (`count` elements) sent to rank `peer`, which receives it with a matching
    /// [`enqueue_recv`](Self::enqueue_recv) (the `n`-th send to a peer matches the peer's `n`-th
    /// receive from this rank).
    ///
    /// # Safety
    /// As [`enqueue_broadcast`](Self::enqueue_broadcast); `buf` is only read.
    unsafe fn enqueue_send(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        peer: usize,
    ) -> Result<()>;

    /// `count` elements from rank `peer`'s matching send, into `buf`.
    ///
    /// # Safety
    /// As [`enqueue_broadcast`](Self::enqueue_broadcast).
    unsafe fn enqueue_recv(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        peer: usize,
    ) -> Result<()>;
}

fn check_stream<C: Communicator + ?Sized>(
    comm: &C,
    op: &'static str,
    stream: &<C::Backend as Backend>::Stream,
) -> Result<()> {
    if stream.device_ordinal() != comm.device_ordinal() {
        return Err(Error::WrongDevice {
            op,
            what: "stream",
            expected: comm.device_ordinal(),
            actual: stream.device_ordinal(),
        });
    }
    Ok(())
}

fn check_buffer<C, T, R>(comm: &C, op: &'static str, what: &'static str, buf: &R) -> Result<()>
where
    C: Communicator + ?Sized,
    T: Element,
    R: DeviceRepr<C::Backend, T> + ?Sized,
{
    if buf.device_ordinal() != comm.device_ordinal() {
        return Err(Error::WrongDevice {
            op,
            what,
            expected: comm.device_ordinal(),
            actual: buf.device_ordinal(),
        });
    }
    Ok(())
}

fn check_rank<C: Communicator + ?Sized>(
    comm: &C,
    op: &'static str,
    what: &str,
    rank: usize,
) -> Result<()> {
    if rank >= comm.size() {
        return Err(Error::InvalidArgument {
            op,
            message: format!(
                "{what} {rank} is not a rank of this group of {} (ranks 0..{})",
                comm.size(),
                comm.size()
            ),
        });
    }
    Ok(())
}

fn check_len(op: &'static str, what: &'static str, want: usize, got: usize) -> Result<()> {
    if want != got {
        return Err(Error::LengthMismatch {
            op,
            what,
            expected: want,
            actual: got,
        });
    }
    Ok(())
}

/// The typed, checked collectives: device, length and rank checks here, then the raw call.
pub trait CommunicatorExt: Communicator {
    /// Every rank's `send` combined by `op` into every rank's `recv` (same lengths).
    fn all_reduce<T, S, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: &S,
        recv: &mut D,
        op: ReduceOp,
    ) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "all_reduce";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "send", send)?;
        check_buffer(self, OP, "recv", recv)?;
        check_len(OP, "recv", send.len(), recv.len())?;
        // SAFETY: (1) both are live ranges on this rank's device (checked), held by the borrows
        // for as long as the caller keeps them, and buffers fence their frees behind queued
        // work; (2) `recv` is borrowed exclusively, so it cannot overlap `send`; (3) likewise.
        unsafe {
            self.enqueue_all_reduce(
                stream,
                send.device_ptr(),
                recv.device_ptr(),
                send.len(),
                T::DTYPE,
                op,
            )
        }
    }

    /// `buf` combined by `op` over every rank, in place.
    fn all_reduce_in_place<T, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: &mut D,
        op: ReduceOp,
    ) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "all_reduce";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "buf", buf)?;
        let p = buf.device_ptr();
        // SAFETY: (1) a live range on this rank's device (checked); (2) the same span;
        // (3) borrowed exclusively.
        unsafe { self.enqueue_all_reduce(stream, p, p, buf.len(), T::DTYPE, op) }
    }

    /// Every rank's `send` laid end to end in rank order into `recv` (`size()` times longer).
    fn all_gather<T, S, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: &S,
        recv: &mut D,
    ) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "all_gather";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "send", send)?;
        check_buffer(self, OP, "recv", recv)?;
        check_len(OP, "recv", send.len() * self.size(), recv.len())?;
        // SAFETY: as in `all_reduce`; `recv` spans `size()` times `send` (checked).
        unsafe {
            self.enqueue_all_gather(
                stream,
                send.device_ptr(),
                recv.device_ptr(),
                send.len(),
                T::DTYPE,
            )
        }
    }

    /// Every rank's `send` combined by `op`; this rank receives its `recv.len()`-element share
    /// (`send` is `size()` times longer than `recv`).
    fn reduce_scatter<T, S, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        send: &S,
        recv: &mut D,
        op: ReduceOp,
    ) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "reduce_scatter";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "send", send)?;
        check_buffer(self, OP, "recv", recv)?;
        check_len(OP, "send", recv.len() * self.size(), send.len())?;
        // SAFETY: as in `all_reduce`; `send` spans `size()` times `recv` (checked).
        unsafe {
            self.enqueue_reduce_scatter(
                stream,
                send.device_ptr(),
                recv.device_ptr(),
                recv.len(),
                T::DTYPE,
                op,
            )
        }
    }

    /// Rank `root`'s `buf` into every rank's `buf` (same lengths on every rank).
    fn broadcast<T, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: &mut D,
        root: usize,
    ) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "broadcast";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "buf", buf)?;
        check_rank(self, OP, "root", root)?;
        // SAFETY: a live range on this rank's device (checked), borrowed exclusively.
        unsafe { self.enqueue_broadcast(stream, buf.device_ptr(), buf.len(), T::DTYPE, root) }
    }

    /// `buf` to rank `peer` (matched by its `recv` from this rank).
    fn send<T, S>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: &S,
        peer: usize,
    ) -> Result<()>
    where
        T: Element,
        S: DeviceRepr<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "send";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "buf", buf)?;
        check_rank(self, OP, "peer", peer)?;
        if peer == self.rank() {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!("rank {peer} cannot send to itself; copy instead"),
            });
        }
        // SAFETY: a live range on this rank's device (checked), only read.
        unsafe { self.enqueue_send(stream, buf.device_ptr(), buf.len(), T::DTYPE, peer) }
    }

    /// Rank `peer`'s matching send, into `buf` (the lengths must agree).
    fn recv<T, D>(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
        buf: &mut D,
        peer: usize,
    ) -> Result<()>
    where
        T: Element,
        D: DeviceReprMut<Self::Backend, T> + ?Sized,
    {
        const OP: &str = "recv";
        check_stream(self, OP, stream)?;
        check_buffer(self, OP, "buf", buf)?;
        check_rank(self, OP, "peer", peer)?;
        if peer == self.rank() {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!("rank {peer} cannot receive from itself; copy instead"),
            });
        }
        // SAFETY: a live range on this rank's device (checked), borrowed exclusively.
        unsafe { self.enqueue_recv(stream, buf.device_ptr(), buf.len(), T::DTYPE, peer) }
    }
}

impl<C: Communicator + ?Sized> CommunicatorExt for C {}
