//! ACL devices: the primary context of each device, bound to the calling thread before every
//! call, so that every handle works from any thread.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::backend::AclBackend;
use super::event::{AclEvent, RawEvent};
use super::memory::{AclDeviceMemory, AclHostMemory};
use super::result;
use super::runtime::Runtime;
use super::stream::AclStream;
use super::sys::AclrtContext;
use super::vmm::{AclPhysicalMemory, AclVirtualRange};
use crate::error::{Error, Result};
use crate::traits::StreamId;
use crate::MemoryInfo;

/// State shared by every handle of one device.
pub(crate) struct DeviceInner {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) ordinal: usize,
    ctx: AclrtContext,
    soc: String,
    /// Vector cores, and where the count came from.
    vector_cores: (u32, CoreCountSource),
    /// The VMM granularity, if the runtime has the VMM calls.
    vmm_granularity: Option<usize>,
    /// Errors of releases done in `Drop` (free, destroy), returned by the next `synchronize`.
    deferred: Mutex<Vec<Error>>,
    /// Events no handle names any more that streams still may wait on (see `event.rs`).
    retired: Mutex<Vec<RawEvent>>,
}

// SAFETY: the context handle is an opaque token of the ACL runtime, which documents contexts as
// usable from any thread once made current there; `bind` does that before every use.
unsafe impl Send for DeviceInner {}
// SAFETY: as for `Send`; no method mutates the handle.
unsafe impl Sync for DeviceInner {}

impl DeviceInner {
    /// `aclrtSetDevice` (retaining the primary context) and remembering that context.
    pub(crate) fn open(rt: Arc<Runtime>, ordinal: usize) -> Result<Self> {
        let id = i32::try_from(ordinal).map_err(|_| Error::InvalidArgument {
            op: "AclBackend::device",
            message: format!("ordinal {ordinal} does not fit an ACL device id"),
        })?;
        result::set_device(&rt.api, id)?;
        let ctx = match result::current_context(&rt.api) {
            Ok(ctx) => ctx,
            Err(e) => {
                let _ = result::reset_device(&rt.api, id);
                return Err(e);
            }
        };
        let soc = result::soc_name(&rt.api).unwrap_or_else(|| "unknown Ascend SoC".into());
        let api = &rt.api;
        let has_vmm = super::vmm::has_vmm(api);
        // The documentation fixes huge-page granularity at 2 MiB; ask when the runtime can say.
        let vmm_granularity = has_vmm.then(|| {
            result::granularity(api, id as u32)
                .ok()
                .flatten()
                .filter(|&g| g > 0)
                .unwrap_or(2 << 20)
        });
        let vector_cores = vector_cores(api, id as u32, &soc);
        Ok(DeviceInner {
            rt,
            ordinal,
            ctx,
            soc,
            vector_cores,
            vmm_granularity,
            deferred: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
        })
    }

    /// Makes this device's context current on the calling thread. ACL binds the current
    /// context per thread, so every entry point calls this first.
    pub(crate) fn bind(&self) -> Result<()> {
        // SAFETY: `ctx` is the primary context retained by `aclrtSetDevice` in `open`; it lives
        // until `aclrtResetDevice` in `Drop`, which runs only once no handle needs it.
        unsafe { result::set_current_context(&self.rt.api, self.ctx) }
    }

    /// `backend:ordinal`, for errors.
    pub(crate) fn label(&self) -> String {
        format!("acl:{}", self.ordinal)
    }

    /// Runs a release from a `Drop` with this device's context bound; a failure is kept for
    /// the next `synchronize` instead of being lost.
    pub(crate) fn release_in_drop(&self, release: impl FnOnce(&super::sys::AclApi) -> Result<()>) {
        if let Err(e) = self.bind().and_then(|()| release(&self.rt.api)) {
            self.defer(e);
        }
    }

    /// Takes an event no handle names any more: destroyed now if no stream waited on it, else
    /// kept until every stream that did has drained.
    pub(crate) fn retire_event(&self, event: RawEvent) {
        if event.handle.is_null() {
            return;
        }
        if event.waiters.is_empty() {
            let handle = event.handle;
            // SAFETY: the handle is live, no stream waits on it, and nothing names it any more.
            self.release_in_drop(|api| unsafe { result::destroy_event(api, handle) });
        } else {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(event);
        }
    }

    /// `stream` has run all its queued work (or is gone): retired events that only it still
    /// waited on are destroyed.
    pub(crate) fn stream_drained(&self, stream: StreamId) {
        let done: Vec<RawEvent> = {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            for e in retired.iter_mut() {
                e.waiters.retain(|&s| s != stream);
            }
            let (done, keep) = std::mem::take(&mut *retired)
                .into_iter()
                .partition(|e| e.waiters.is_empty());
            *retired = keep;
            done
        };
        for e in done {
            self.retire_event(e);
        }
    }

    /// Every stream of the device has drained: every retired event goes.
    fn destroy_retired(&self) {
        let all = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        for mut e in all {
            e.waiters.clear();
            self.retire_event(e);
        }
    }

    /// How many retired events wait for their streams to drain.
    pub(crate) fn retired_events(&self) -> usize {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Keeps an error from a `Drop` for the next `synchronize`.
    pub(crate) fn defer(&self, error: Error) {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(error);
    }

    fn take_deferred(&self) -> Option<Error> {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_empty() {
            None
        } else {
            Some(d.remove(0))
        }
    }

    pub(crate) fn memory_info(&self) -> Result<MemoryInfo> {
        self.bind()?;
        let (free, total) = result::mem_info(&self.rt.api)?;
        Ok(MemoryInfo {
            free: free as u64,
            total: total as u64,
        })
    }
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // Every stream, event and allocation of the device held this value, so they are gone
        // (streams synchronised before their destruction): retired events can go. There is
        // nobody left to report a failed release to.
        self.destroy_retired();
        let _ = result::reset_device(&self.rt.api, self.ordinal as i32);
    }
}

/// Where [`AclDevice::vector_cores`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreCountSource {
    /// `aclGetDeviceCapability(ACL_DEVICE_INFO_VECTOR_CORE_NUM)`.
    Runtime,
    /// The runtime has no `aclGetDeviceCapability` or did not answer; the count is the
    /// `vector_core_cnt` of the SoC's platform description in CANN 8.1
    /// (`data/platform_config/<SoC>.ini`).
    SocTable,
    /// Neither: the smallest count of an Atlas A2 (40, a 910B3/B4), so a launch sized for it
    /// never runs a second wave.
    Fallback,
}

/// `vector_core_cnt` of CANN 8.1's platform descriptions of the Atlas A2 SoCs.
fn soc_vector_cores(soc: &str) -> Option<u32> {
    match soc {
        "Ascend910B1" | "Ascend910B2" | "Ascend910B2C" => Some(48),
        "Ascend910B3" | "Ascend910B4" | "Ascend910B4-1" => Some(40),
        _ => None,
    }
}

/// The device's vector cores: asked of the runtime, else from the SoC's platform table.
fn vector_cores(api: &super::sys::AclApi, device: u32, soc: &str) -> (u32, CoreCountSource) {
    let asked = result::device_capability(api, device, super::sys::ACL_DEVICE_INFO_VECTOR_CORE_NUM)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| (1..=4096).contains(&n));
    match (asked, soc_vector_cores(soc)) {
        (Some(n), _) => (n, CoreCountSource::Runtime),
        (None, Some(n)) => (n, CoreCountSource::SocTable),
        (None, None) => (40, CoreCountSource::Fallback),
    }
}

/// A device of the ACL backend. Cheap to clone.
#[derive(Clone)]
pub struct AclDevice {
    pub(crate) inner: Arc<DeviceInner>,
}

impl AclDevice {
    /// The SoC name the runtime reports (`Ascend910B1`, ...).
    pub fn soc_name(&self) -> &str {
        &self.inner.soc
    }

    /// The vector cores kernels can spread over (`ACL_DEVICE_INFO_VECTOR_CORE_NUM`: 48 on a
    /// 910B1/B2, 40 on a 910B3/B4). Launches use at most this many blocks, so none runs a
    /// second wave; see [`vector_core_source`](Self::vector_core_source).
    pub fn vector_cores(&self) -> u32 {
        self.inner.vector_cores.0
    }

    /// Where [`vector_cores`](Self::vector_cores) came from.
    pub fn vector_core_source(&self) -> CoreCountSource {
        self.inner.vector_cores.1
    }

    /// Events dropped while streams may still wait on them, kept until those streams drain
    /// (see the event module's notes on destruction).
    pub fn retired_events(&self) -> usize {
        self.inner.retired_events()
    }
}

impl crate::Device for AclDevice {
    type Backend = AclBackend;

    fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    fn name(&self) -> String {
        self.inner.soc.clone()
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        self.inner.memory_info()
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.bind()?;
        result::synchronize_device(&self.inner.rt.api)?;
        self.inner.destroy_retired();
        self.inner.take_deferred().map_or(Ok(()), Err)
    }

    fn new_stream(&self) -> Result<AclStream> {
        AclStream::new(Arc::clone(&self.inner))
    }

    fn new_event(&self) -> Result<AclEvent> {
        AclEvent::new(Arc::clone(&self.inner))
    }

    fn allocate(&self, bytes: usize) -> Result<AclDeviceMemory> {
        AclDeviceMemory::new(Arc::clone(&self.inner), bytes)
    }

    fn allocate_host(&self, bytes: usize) -> Result<AclHostMemory> {
        AclHostMemory::new(Arc::clone(&self.inner), bytes)
    }

    fn virtual_memory_granularity(&self) -> Option<usize> {
        self.inner.vmm_granularity
    }

    fn reserve_virtual(&self, bytes: usize) -> Result<AclVirtualRange> {
        self.inner.bind()?;
        let va = result::reserve_address(&self.inner.rt.api, bytes)?;
        Ok(AclVirtualRange {
            va,
            size: bytes,
            device: Arc::clone(&self.inner),
        })
    }

    fn allocate_physical(&self, bytes: usize) -> Result<AclPhysicalMemory> {
        self.inner.bind()?;
        match result::malloc_physical(&self.inner.rt.api, bytes, self.inner.ordinal as u32) {
            Ok(handle) => Ok(AclPhysicalMemory {
                handle,
                size: bytes,
                device: Arc::clone(&self.inner),
            }),
            Err(e) if e.acl_code().is_some_and(super::codes::is_out_of_memory) => {
                let info = self
                    .inner
                    .memory_info()
                    .unwrap_or(MemoryInfo { free: 0, total: 0 });
                Err(Error::OutOfMemory {
                    device: self.inner.label(),
                    requested: bytes as u64,
                    free: info.free,
                    total: info.total,
                    detail: format!("; {e}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    unsafe fn map(
        &self,
        range: &AclVirtualRange,
        offset: usize,
        physical: &AclPhysicalMemory,
    ) -> Result<()> {
        self.inner.bind()?;
        // SAFETY: the caller guarantees the target is inside the range and unmapped, and the
        // physical allocation is unmapped. The address is computed with `wrapping_add`: it is a
        // device address, not a host pointer into an allocation.
        unsafe {
            result::map_mem(
                &self.inner.rt.api,
                range.va.cast::<u8>().wrapping_add(offset).cast(),
                physical.size,
                physical.handle,
            )
        }
    }

    unsafe fn unmap(&self, range: &AclVirtualRange, offset: usize) -> Result<()> {
        self.inner.bind()?;
        // SAFETY: the caller guarantees a mapping starts at `offset` and no work uses it.
        unsafe {
            result::unmap_mem(
                &self.inner.rt.api,
                range.va.cast::<u8>().wrapping_add(offset).cast(),
            )
        }
    }
}

impl fmt::Debug for AclDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclDevice")
            .field("ordinal", &self.inner.ordinal)
            .field("soc", &self.inner.soc)
            .field("vector_cores", &self.inner.vector_cores)
            .finish()
    }
}
