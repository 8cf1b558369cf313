//! Devices of the CPU backend: a capacity profile, an address space, and its streams.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ascend_hal::{Error, MemoryInfo, Result};

use crate::backend::CpuBackend;
use crate::event::CpuEvent;
use crate::faults::{FaultInjector, MockOp};
use crate::memory::{
    accounted_size, AddressSpace, CpuDeviceMemory, CpuHostMemory, CpuPhysicalMemory,
    CpuVirtualRange, HostBytes,
};
use crate::stream::{CpuStream, StreamShared};

const GIB: u64 = 1 << 30;

/// What a simulated device looks like: the SoC name it reports and its memory capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProfile {
    /// The SoC name, as `aclrtGetSocName` would report it.
    pub soc_name: String,
    /// Device memory in bytes.
    pub total_memory: u64,
}

impl DeviceProfile {
    /// An Ascend 910B1 (Atlas 800 A2, 64 GiB HBM).
    pub fn ascend_910b1() -> Self {
        Self::custom("Ascend910B1", 64 * GIB)
    }

    /// An Ascend 910B2 (64 GiB HBM).
    pub fn ascend_910b2() -> Self {
        Self::custom("Ascend910B2", 64 * GIB)
    }

    /// An Ascend 910B3 (64 GiB HBM).
    pub fn ascend_910b3() -> Self {
        Self::custom("Ascend910B3", 64 * GIB)
    }

    /// An Ascend 910B4 (32 GiB HBM).
    pub fn ascend_910b4() -> Self {
        Self::custom("Ascend910B4", 32 * GIB)
    }

    /// The CPU backend's default device: an Ascend 910B1 whose memory is sized from this
    /// host's, so that sizing from device memory (the KV cache takes 90 % of it by default)
    /// asks for what the host can hold: half the host's physical memory, between 1 GiB and the
    /// 910B1's 64 GiB, in whole GiB; 8 GiB where the host's memory cannot be read.
    /// [`host_sizing`](Self::host_sizing) says how it was sized.
    pub fn host_sized() -> Self {
        Self::custom("Ascend910B1", Self::host_sized_memory(host_memory()))
    }

    /// The memory [`host_sized`](Self::host_sized) gives a host with `host` bytes (`None`:
    /// unknown).
    pub fn host_sized_memory(host: Option<u64>) -> u64 {
        match host {
            Some(h) => (h / 2 / GIB).clamp(1, 64) * GIB,
            None => 8 * GIB,
        }
    }

    /// How [`host_sized`](Self::host_sized) sized the device, for a log line.
    pub fn host_sizing() -> String {
        let host = host_memory();
        let total = Self::host_sized_memory(host);
        match host {
            Some(h) => format!(
                "its device has {} of memory, half of this host's {} (at most a 910B1's 64 GiB); \
                 build a CpuBackend with a DeviceProfile for another size",
                ascend_hal::Bytes(total),
                ascend_hal::Bytes(h)
            ),
            None => format!(
                "its device has {}: this host's memory could not be read; build a CpuBackend \
                 with a DeviceProfile for another size",
                ascend_hal::Bytes(total)
            ),
        }
    }

    /// Any name and capacity.
    pub fn custom(soc_name: impl Into<String>, total_memory: u64) -> Self {
        DeviceProfile {
            soc_name: soc_name.into(),
            total_memory,
        }
    }
}

/// The host's physical memory (`MemTotal` of `/proc/meminfo`), if it can be read.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Granularity of the CPU backend's virtual memory: ACL's huge pages.
pub const VMM_GRANULARITY: usize = 2 << 20;

fn check_granular(op: &'static str, bytes: usize) -> Result<()> {
    if bytes > 0 && bytes.is_multiple_of(VMM_GRANULARITY) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op,
            message: format!("{bytes} bytes is not a positive multiple of the {VMM_GRANULARITY}-byte granularity"),
        })
    }
}

/// State shared by every handle to one device, its streams and its allocations.
pub(crate) struct DeviceShared {
    pub(crate) ordinal: usize,
    /// Which `CpuBackend` the device belongs to (unique per built backend).
    pub(crate) backend: u64,
    pub(crate) profile: DeviceProfile,
    /// `cpu:N`, for errors.
    pub(crate) label: String,
    pub(crate) faults: FaultInjector,
    poison: bool,
    lost: AtomicBool,
    memory: Mutex<AddressSpace>,
    streams: Mutex<Vec<Weak<StreamShared>>>,
}

impl DeviceShared {
    pub(crate) fn new(
        ordinal: usize,
        backend: u64,
        profile: DeviceProfile,
        faults: FaultInjector,
        poison: bool,
    ) -> Self {
        DeviceShared {
            ordinal,
            backend,
            profile,
            label: format!("cpu:{ordinal}"),
            faults,
            poison,
            lost: AtomicBool::new(false),
            memory: Mutex::new(AddressSpace::new()),
            streams: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn memory(&self) -> MutexGuard<'_, AddressSpace> {
        // Address-space updates complete before any call that could panic; a poisoned lock is
        // still consistent.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// `Err(DeviceLost)` once the device is lost.
    pub(crate) fn check_alive(&self, op: &'static str) -> Result<()> {
        if self.is_lost() {
            Err(self.lost_error(op))
        } else {
            Ok(())
        }
    }

    pub(crate) fn lost_error(&self, op: &'static str) -> Error {
        Error::DeviceLost {
            device: self.label.clone(),
            op,
        }
    }

    /// Counts a call of `op` and checks the device: lost device first, then injected faults.
    pub(crate) fn enter(&self, op: MockOp) -> Result<()> {
        self.check_alive(op.name())?;
        self.faults.check(op)
    }

    fn live_streams(&self) -> Vec<Arc<StreamShared>> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.retain(|w| w.strong_count() > 0);
        streams.iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn register_stream(&self, stream: &Arc<StreamShared>) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.push(Arc::downgrade(stream));
    }

    /// Forgets a dropped stream, so that a server creating and dropping streams without ever
    /// synchronising the device keeps no trace of them.
    pub(crate) fn unregister_stream(&self, id: ascend_hal::StreamId) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.retain(|w| w.upgrade().is_some_and(|s| s.id() != id));
    }

    /// Streams registered and not yet dropped.
    pub(crate) fn registered_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What an allocation or reservation says when the device's simulated addresses run out.
const ADDRESSES_USED_UP: &str = "the CPU backend's simulated address space of this device is \
     used up (256 TiB of addresses, never reused); use a new backend";

/// A device of the CPU backend. Cheap to clone.
#[derive(Clone)]
pub struct CpuDevice {
    pub(crate) shared: Arc<DeviceShared>,
}

impl CpuDevice {
    /// The profile this device simulates.
    pub fn profile(&self) -> &DeviceProfile {
        &self.shared.profile
    }

    /// Whether the device has been marked lost.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// How many streams of this device the backend keeps track of: the live ones (a dropped
    /// stream leaves no trace).
    pub fn tracked_streams(&self) -> usize {
        self.shared.registered_streams()
    }

    /// As `Device::synchronize`, but a stream's failure is reported without being cleared: the
    /// stream's own next synchronisation still returns it. What the ACL fake's
    /// `aclrtSynchronizeDevice` does, so that a device-wide sync in one thread (the ACL backend
    /// frees memory after one) does not hide a kernel fault from the thread that owns the
    /// stream.
    pub fn synchronize_keeping_errors(&self) -> Result<()> {
        self.synchronize_with(false)
    }

    fn synchronize_with(&self, take: bool) -> Result<()> {
        self.shared.enter(MockOp::Synchronize)?;
        let mut first = None;
        for stream in self.shared.live_streams() {
            let r = if take {
                stream.wait_idle_and_take_error()
            } else {
                stream.wait_idle_keeping_error()
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        self.shared.check_alive("Device::synchronize")
    }
}

impl ascend_hal::Device for CpuDevice {
    type Backend = CpuBackend;

    fn ordinal(&self) -> usize {
        self.shared.ordinal
    }

    fn name(&self) -> String {
        format!("{} (CPU mock)", self.shared.profile.soc_name)
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        self.shared.check_alive("memory_info")?;
        let total = self.shared.profile.total_memory;
        let used = self.shared.memory().used();
        Ok(MemoryInfo {
            free: total.saturating_sub(used),
            total,
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.synchronize_with(true)
    }

    fn new_stream(&self) -> Result<CpuStream> {
        self.shared.enter(MockOp::NewStream)?;
        CpuStream::spawn(Arc::clone(&self.shared))
    }

    fn new_event(&self) -> Result<CpuEvent> {
        self.shared.enter(MockOp::NewEvent)?;
        Ok(CpuEvent::new(Arc::clone(&self.shared)))
    }

    fn allocate(&self, bytes: usize) -> Result<CpuDeviceMemory> {
        let d = &self.shared;
        d.enter(MockOp::Allocate)?;
        if bytes == 0 {
            return Err(Error::InvalidArgument {
                op: "allocate",
                message: "size 0 (ACL rejects it too; the typed buffers skip empty allocations)"
                    .into(),
            });
        }
        let total = d.profile.total_memory;
        let accounted = accounted_size(bytes);
        let oom = |used: u64, detail: String| Error::OutOfMemory {
            device: d.label.clone(),
            requested: bytes as u64,
            free: total.saturating_sub(used),
            total,
            detail,
        };
        if let Some(limit) = d.faults.allocation_limit() {
            if bytes as u64 > limit {
                let used = d.memory().used();
                return Err(oom(
                    used,
                    format!("; injected fault: allocations above {limit} bytes fail"),
                ));
            }
        }
        let mut memory = d.memory();
        let used = memory.used();
        if used.saturating_add(accounted) > total {
            let detail = if accounted != bytes as u64 {
                format!("; the allocation takes {accounted} bytes after ACL's size rounding")
            } else {
                String::new()
            };
            return Err(oom(used, detail));
        }
        let Some(mut data) = HostBytes::zeroed(bytes) else {
            return Err(oom(
                used,
                "; the host could not back the simulated device memory".into(),
            ));
        };
        if d.poison {
            data.as_mut_slice().fill(0xff);
        }
        let Some(allocation) = memory.insert(bytes, accounted, data) else {
            return Err(oom(used, format!("; {}", ADDRESSES_USED_UP)));
        };
        Ok(CpuDeviceMemory {
            allocation,
            device: Arc::clone(d),
        })
    }

    fn virtual_memory_granularity(&self) -> Option<usize> {
        Some(VMM_GRANULARITY)
    }

    fn reserve_virtual(&self, bytes: usize) -> Result<CpuVirtualRange> {
        self.shared.enter(MockOp::ReserveVirtual)?;
        check_granular("reserve_virtual", bytes)?;
        let Some(base) = self.shared.memory().reserve(bytes) else {
            return Err(Error::InvalidArgument {
                op: "reserve_virtual",
                message: format!("{bytes} bytes: {ADDRESSES_USED_UP}"),
            });
        };
        Ok(CpuVirtualRange {
            base,
            size: bytes,
            device: Arc::clone(&self.shared),
        })
    }

    fn allocate_physical(&self, bytes: usize) -> Result<CpuPhysicalMemory> {
        let d = &self.shared;
        d.enter(MockOp::AllocatePhysical)?;
        check_granular("allocate_physical", bytes)?;
        let total = d.profile.total_memory;
        let memory = d.memory();
        let limit = d.faults.allocation_limit();
        let used = memory.used();
        if used.saturating_add(bytes as u64) > total || limit.is_some_and(|l| bytes as u64 > l) {
            return Err(Error::OutOfMemory {
                device: d.label.clone(),
                requested: bytes as u64,
                free: total.saturating_sub(used),
                total,
                detail: if limit.is_some_and(|l| bytes as u64 > l) {
                    "; injected fault: allocations above the limit fail".into()
                } else {
                    String::new()
                },
            });
        }
        let data = HostBytes::zeroed(bytes).ok_or_else(|| Error::OutOfMemory {
            device: d.label.clone(),
            requested: bytes as u64,
            free: total.saturating_sub(used),
            total,
            detail: "; the host could not back the simulated device memory".into(),
        })?;
        Ok(CpuPhysicalMemory {
            storage: Arc::new(std::sync::Mutex::new(data)),
            size: bytes,
            _charge: memory.charge(bytes as u64),
        })
    }

    unsafe fn map(
        &self,
        range: &CpuVirtualRange,
        offset: usize,
        physical: &CpuPhysicalMemory,
    ) -> Result<()> {
        self.shared.enter(MockOp::Map)?;
        if !offset.is_multiple_of(VMM_GRANULARITY) {
            return Err(Error::InvalidArgument {
                op: "map",
                message: format!("offset {offset} is not a multiple of {VMM_GRANULARITY}"),
            });
        }
        if offset + physical.size > range.size {
            return Err(Error::InvalidArgument {
                op: "map",
                message: format!(
                    "{} bytes at offset {offset} run past the {}-byte range",
                    physical.size, range.size
                ),
            });
        }
        let base = range.base + offset as u64;
        let mut memory = self.shared.memory();
        if memory.overlaps(base, physical.size) {
            return Err(Error::InvalidArgument {
                op: "map",
                message: format!("offset {offset} of the range is already mapped"),
            });
        }
        memory.map_at(base, physical.size, Arc::clone(&physical.storage));
        Ok(())
    }

    unsafe fn unmap(&self, range: &CpuVirtualRange, offset: usize) -> Result<()> {
        self.shared.check_alive("unmap")?;
        if self.shared.memory().remove(range.base + offset as u64) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                op: "unmap",
                message: format!("nothing is mapped at offset {offset} of the range"),
            })
        }
    }

    fn allocate_host(&self, bytes: usize) -> Result<CpuHostMemory> {
        self.shared.enter(MockOp::AllocateHost)?;
        if bytes == 0 {
            return Err(Error::InvalidArgument {
                op: "allocate_host",
                message: "size 0".into(),
            });
        }
        let bytes = HostBytes::zeroed(bytes).ok_or_else(|| Error::InvalidArgument {
            op: "allocate_host",
            message: format!("the host could not allocate {bytes} bytes of pinned memory"),
        })?;
        Ok(CpuHostMemory { bytes })
    }
}

impl fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuDevice")
            .field("ordinal", &self.shared.ordinal)
            .field("profile", &self.shared.profile)
            .field("lost", &self.shared.is_lost())
            .finish()
    }
}
