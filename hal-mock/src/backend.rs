//! The CPU backend value: its devices and its fault plan.

use std::fmt;
use std::sync::Arc;

use ascend_hal::{Error, Result};

use crate::device::{CpuDevice, DeviceProfile, DeviceShared};
use crate::event::CpuEvent;
use crate::faults::FaultInjector;
use crate::memory::{CpuDeviceMemory, CpuHostMemory, CpuPhysicalMemory, CpuVirtualRange};
use crate::stream::CpuStream;

/// The CPU backend: devices whose memory lives on the host heap, streams run by worker threads.
///
/// Cheap to clone; clones share devices and the fault plan. Each [`CpuBackend::new`] or
/// [`CpuBackendBuilder::build`] makes an independent set of devices.
#[derive(Clone)]
pub struct CpuBackend {
    devices: Arc<[Arc<DeviceShared>]>,
    faults: FaultInjector,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// One device with the profile of an Ascend 910B1, its memory sized from the host's
    /// ([`DeviceProfile::host_sized`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts a configuration with no devices (one [`DeviceProfile::host_sized`] device is
    /// added if none is given).
    pub fn builder() -> CpuBackendBuilder {
        CpuBackendBuilder::default()
    }

    /// The fault plan shared by every device of this backend.
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    /// Marks a device lost: every later call on it, and every queued operation, fails with
    /// [`Error::DeviceLost`]; nothing waits forever.
    pub fn lose_device(&self, ordinal: usize) -> Result<()> {
        self.shared(ordinal)?.mark_lost();
        Ok(())
    }

    fn shared(&self, ordinal: usize) -> Result<&Arc<DeviceShared>> {
        self.devices.get(ordinal).ok_or(Error::InvalidDevice {
            backend: "cpu",
            ordinal,
            count: self.devices.len(),
        })
    }
}

impl ascend_hal::Backend for CpuBackend {
    type Device = CpuDevice;
    type Stream = CpuStream;
    type Event = CpuEvent;
    type DeviceMemory = CpuDeviceMemory;
    type HostMemory = CpuHostMemory;
    type VirtualRange = CpuVirtualRange;
    type PhysicalMemory = CpuPhysicalMemory;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device_count(&self) -> Result<usize> {
        Ok(self.devices.len())
    }

    fn device(&self, ordinal: usize) -> Result<CpuDevice> {
        let shared = self.shared(ordinal)?;
        shared.check_alive("Backend::device")?;
        Ok(CpuDevice {
            shared: Arc::clone(shared),
        })
    }
}

impl fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBackend")
            .field(
                "devices",
                &self.devices.iter().map(|d| &d.profile).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The most devices one CPU backend has (each gets its own simulated address range).
pub const MAX_DEVICES: usize = 4096;

/// Configuration of a [`CpuBackend`].
///
/// ```
/// use hal_mock::{CpuBackend, DeviceProfile};
/// let backend = CpuBackend::builder()
///     .device(DeviceProfile::ascend_910b1())
///     .device(DeviceProfile::custom("Tiny", 1 << 20))
///     .poison_allocations(true)
///     .build();
/// # use ascend_hal::Backend;
/// assert_eq!(backend.device_count().unwrap(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CpuBackendBuilder {
    profiles: Vec<DeviceProfile>,
    poison: bool,
}

impl CpuBackendBuilder {
    /// Adds a device with this profile; ordinals follow the order of the calls (at most
    /// [`MAX_DEVICES`]).
    pub fn device(mut self, profile: DeviceProfile) -> Self {
        if self.profiles.len() < MAX_DEVICES {
            self.profiles.push(profile);
        }
        self
    }

    /// Adds `count` devices with the same profile, up to [`MAX_DEVICES`] devices in all (more
    /// than any machine has; the rest are not added).
    pub fn devices(mut self, count: usize, profile: DeviceProfile) -> Self {
        let room = MAX_DEVICES.saturating_sub(self.profiles.len());
        self.profiles
            .extend(std::iter::repeat_n(profile, count.min(room)));
        self
    }

    /// Fills new device allocations with `0xFF` bytes (NaN in every float type) instead of
    /// zeros, so reads of memory nobody wrote show up, as garbage would on a real device.
    pub fn poison_allocations(mut self, poison: bool) -> Self {
        self.poison = poison;
        self
    }

    /// Builds the backend.
    pub fn build(self) -> CpuBackend {
        let faults = FaultInjector::default();
        let mut profiles = self.profiles;
        if profiles.is_empty() {
            profiles.push(DeviceProfile::host_sized());
        }
        static NEXT_BACKEND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_BACKEND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let devices = profiles
            .into_iter()
            .enumerate()
            .map(|(i, p)| Arc::new(DeviceShared::new(i, id, p, faults.clone(), self.poison)))
            .collect();
        CpuBackend { devices, faults }
    }
}
