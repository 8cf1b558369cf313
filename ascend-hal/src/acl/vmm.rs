//! ACL virtual memory: reserved address ranges and physical allocations mapped into them
//! (`aclrtReserveMemAddress`, `aclrtMallocPhysical`, `aclrtMapMem`), the calls expandable
//! segments need. Present in CANN 7.x and later, and optional: the caching allocator falls back
//! to ordinary segments without them.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use super::device::DeviceInner;
use super::result;
use super::sys::{AclApi, AclrtDrvMemHandle};
use crate::{Bytes, DevicePtr};

/// Whether the runtime exports every VMM call the caching allocator uses.
pub(crate) fn has_vmm(api: &AclApi) -> bool {
    api.aclrtReserveMemAddress.is_some()
        && api.aclrtReleaseMemAddress.is_some()
        && api.aclrtMallocPhysical.is_some()
        && api.aclrtFreePhysical.is_some()
        && api.aclrtMapMem.is_some()
        && api.aclrtUnmapMem.is_some()
}

/// A reserved range of device virtual addresses; released on drop.
pub struct AclVirtualRange {
    pub(crate) va: *mut c_void,
    pub(crate) size: usize,
    pub(crate) device: Arc<DeviceInner>,
}

// SAFETY: the address is a device address, never dereferenced on the host; calls that use it
// bind the device's context first.
unsafe impl Send for AclVirtualRange {}
// SAFETY: shared access only reads the address and size.
unsafe impl Sync for AclVirtualRange {}

impl crate::VirtualRange for AclVirtualRange {
    fn ptr(&self) -> DevicePtr {
        DevicePtr(self.va as u64)
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl Drop for AclVirtualRange {
    fn drop(&mut self) {
        let va = self.va;
        // SAFETY: reserved in `AclDevice::reserve_virtual`, released only here; the caching
        // allocator unmaps every chunk before dropping the range.
        self.device
            .release_in_drop(|api| unsafe { result::release_address(api, va) });
    }
}

impl fmt::Debug for AclVirtualRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclVirtualRange")
            .field("ptr", &DevicePtr(self.va as u64))
            .field("size", &Bytes(self.size as u64))
            .finish()
    }
}

/// A physical HBM allocation (huge pages); freed on drop.
pub struct AclPhysicalMemory {
    pub(crate) handle: AclrtDrvMemHandle,
    pub(crate) size: usize,
    pub(crate) device: Arc<DeviceInner>,
}

// SAFETY: the handle is an opaque runtime token; calls that use it bind the device first.
unsafe impl Send for AclPhysicalMemory {}
// SAFETY: shared access only reads the handle and size.
unsafe impl Sync for AclPhysicalMemory {}

impl crate::PhysicalMemory for AclPhysicalMemory {
    fn size(&self) -> usize {
        self.size
    }
}

impl Drop for AclPhysicalMemory {
    fn drop(&mut self) {
        let handle = self.handle;
        // SAFETY: allocated in `AclDevice::allocate_physical`, freed only here, after the owner
        // unmapped it.
        self.device
            .release_in_drop(|api| unsafe { result::free_physical(api, handle) });
    }
}

impl fmt::Debug for AclPhysicalMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclPhysicalMemory")
            .field("size", &Bytes(self.size as u64))
            .finish()
    }
}
