//! # ascend-hal
//!
//! The hardware-abstraction layer that lets Rust LLM inference engines run on Huawei Ascend NPUs
//! (Atlas 800 A2 / Ascend 910B) and test everything on machines without one.
//!
//! - [`Backend`], [`Device`], [`Stream`], [`Event`]: the trait set every backend implements
//!   (the CPU backend in `hal-mock`, the ACL backend over the CANN runtime). Hot paths are generic
//!   over `B: Backend`; [`discover`] picks one at run time.
//! - [`Allocator`](alloc::Allocator): where device memory comes from. [`alloc`] has the direct
//!   allocator, the caching allocator (expandable segments, stream-ordered reuse), and the
//!   pieces to write your own.
//! - [`DeviceBuffer`] and its views: typed device memory over [`Element`] types (`f32`, `f16`,
//!   `bf16`, `i8`, `u8`, `i32`, `i64`) with a run-time [`DType`], from any allocator.
//! - [`PinnedBuffer`]: page-locked host memory whose reuse is fenced, so asynchronous copies are
//!   sound in safe Rust.
//! - [`StreamExt`]: the safe stream API (copies of every kind, memset, events).
//! - [`Error`]: one error enum; every variant says what was asked, what was wrong, what to do.
//! - [`acl`]: the ACL backend over the CANN runtime, loaded at run time (no build-time CANN).
//! - `conformance` (feature `conformance`): a suite any backend runs against itself.
//!
//! ```
//! use ascend_hal::prelude::*;
//!
//! /// Round-trips data through device memory on any backend.
//! fn round_trip<B: Backend>(backend: &B) -> ascend_hal::Result<Vec<f32>> {
//!     let device = backend.device(0)?;
//!     let (copy, compute) = (device.new_stream()?, device.new_stream()?);
//!     let host = PinnedBuffer::<B, f32>::from_slice(&device, &[1.0, 2.0, 3.0])?;
//!     let mut a = DeviceBuffer::<B, f32>::alloc(&device, 3)?;
//!     let mut b = DeviceBuffer::<B, f32>::alloc(&device, 3)?;
//!     copy.copy_h2d(&host, &mut a)?;          // returns before the copy is done
//!     let uploaded = copy.record_new_event()?;
//!     compute.wait(&uploaded)?;               // orders `compute` after the upload
//!     compute.copy_d2d(&a, &mut b)?;
//!     compute.clone_to_host(&b)               // waits for `compute`
//! }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

pub mod acl;
pub mod alloc;
mod buffer;
pub mod comm;
mod discover;
mod dtype;
mod error;
mod pinned;
mod stream_ext;
mod traits;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use buffer::{DeviceBuffer, DeviceRepr, DeviceReprMut, DeviceSlice, DeviceSliceMut};
pub use discover::{
    discover, discover_using, discover_with, BackendPreference, BackendVisitor, Discovered,
    Discovery, BACKEND_ENV,
};
pub use dtype::{DType, Element};
pub use error::{Bytes, Error, LoadAttempt, Result};
pub use pinned::PinnedBuffer;
pub use stream_ext::StreamExt;
pub use traits::{
    Backend, Device, DeviceMemory, DevicePtr, Event, HostMemory, MemoryInfo, NoVirtualMemory,
    PhysicalMemory, Stream, StreamId, VirtualRange,
};

/// The traits and types most code needs: `use ascend_hal::prelude::*;`.
pub mod prelude {
    pub use crate::alloc::Allocator;
    pub use crate::{
        Backend, DType, Device, DeviceBuffer, DeviceRepr, DeviceReprMut, Element, Event,
        PinnedBuffer, Stream, StreamExt,
    };
}

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
