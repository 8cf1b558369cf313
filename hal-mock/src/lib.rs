//! # hal-mock
//!
//! A faithful CPU backend of the [`ascend_hal`] traits, so engines run and test everything
//! without an NPU, and the bugs an NPU would show (unordered streams, exhausted memory, freed
//! buffers, failed operations) show up on CI too.
//!
//! - Device memory lives on the host heap behind a per-device address space and is reachable only
//!   through the trait API; each device has a capacity ([`DeviceProfile`]: 910B 64 GiB / 32 GiB
//!   or any size), accounted with ACL's size rounding, and only allocated bytes are backed.
//! - Each stream runs its work in order on its own worker thread: the host really returns before
//!   the work is done. Events order work across streams and time it.
//! - [`FaultInjector`]: fail the Nth call of a [`MockOp`], fail allocations above a size;
//!   [`CpuBackend::lose_device`] makes every later call on a device fail.
//! - A failure inside a stream is reported at the next synchronisation, naming the operation.
//!
//! ```
//! use ascend_hal::prelude::*;
//! use hal_mock::CpuBackend;
//!
//! let backend = CpuBackend::new();
//! let device = backend.device(0)?;
//! let stream = device.new_stream()?;
//! let buf = DeviceBuffer::<CpuBackend, i32>::from_slice(&stream, &[1, 2, 3])?;
//! assert_eq!(stream.clone_to_host(&buf)?, [1, 2, 3]);
//! # Ok::<(), ascend_hal::Error>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod backend;
pub mod comm;
mod device;
mod event;
mod faults;
mod kernels;
mod memory;
mod regions;
mod stream;
mod sync;

/// Switches for the model check (feature `model-check`), which runs the streams and events on
/// shuttle's primitives.
#[cfg(feature = "model-check")]
pub mod model_check {
    use std::sync::atomic::{AtomicBool, Ordering};

    static OLD_RECORD_ORDER: AtomicBool = AtomicBool::new(false);

    /// Restores the record order that deadlocked (publish the event's signal, then queue its
    /// record), so that a test can show the checker finds it.
    pub fn use_old_record_order(old: bool) {
        OLD_RECORD_ORDER.store(old, Ordering::SeqCst);
    }

    pub(crate) fn old_record_order() -> bool {
        OLD_RECORD_ORDER.load(Ordering::SeqCst)
    }
}

pub use backend::{CpuBackend, CpuBackendBuilder, MAX_DEVICES};
pub use comm::CpuCommunicator;
pub use device::{CpuDevice, DeviceProfile, VMM_GRANULARITY};
pub use event::CpuEvent;
pub use faults::{FaultInjector, MockOp};
pub use memory::{CpuDeviceMemory, CpuHostMemory, CpuPhysicalMemory, CpuVirtualRange};
pub use regions::KernelArg;
pub use stream::{CpuStream, StreamHold};

/// Every device address the CPU backend hands out is at or above this (each device has its own
/// 2^48-byte range, from 2^48 up), and host pointers on 48-bit virtual-address machines are
/// below it, so a host-side fake can tell a device address from a host one.
pub const DEVICE_ADDRESS_FLOOR: u64 = 1 << 48;

/// Picks the best available backend with the CPU backend (one device sized from the host's
/// memory, [`DeviceProfile::host_sized`]) as the fallback; see [`ascend_hal::discover`].
/// Honours `ASCEND_HAL_BACKEND`. When the CPU backend is chosen, the reason says how its
/// device was sized.
pub fn discover() -> ascend_hal::Result<ascend_hal::Discovery<CpuBackend>> {
    discover_devices(1)
}

/// As [`discover`], with `count` CPU devices when the CPU backend is the one used: what an
/// example needs to run tensor-parallel without an NPU. The devices share the host, so each
/// has the host-sized memory divided by `count` (at least 1 GiB).
pub fn discover_devices(count: usize) -> ascend_hal::Result<ascend_hal::Discovery<CpuBackend>> {
    let count = count.max(1);
    let mut d = ascend_hal::discover(|| {
        let mut profile = DeviceProfile::host_sized();
        profile.total_memory = (profile.total_memory / count as u64).max(1 << 30);
        Ok(CpuBackend::builder().devices(count, profile).build())
    })?;
    if let ascend_hal::Discovered::Fallback(b) = &d.backend {
        let each = ascend_hal::Backend::device(b, 0)
            .map(|dev| ascend_hal::Bytes(dev.profile().total_memory).to_string())
            .unwrap_or_default();
        d.reason = if count == 1 {
            format!("{}; {}", d.reason, DeviceProfile::host_sizing())
        } else {
            format!(
                "{}; {count} devices of {each} each ({})",
                d.reason,
                DeviceProfile::host_sizing()
            )
        };
    }
    Ok(d)
}

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
