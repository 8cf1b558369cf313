//! ACL device and pinned host allocations.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use super::codes::is_out_of_memory;
use super::device::DeviceInner;
use super::result;
use crate::error::{Error, Result};
use crate::{Bytes, DevicePtr};

/// A raw `aclrtMalloc` allocation; freed on drop.
///
/// `aclrtFree` does not wait for queued work, so the drop synchronises the device first (as
/// `cudaFree` does implicitly): dropping a buffer that a queued copy still uses is safe. Engines
/// that allocate in hot paths use the caching allocator instead, which frees nothing per step.
pub struct AclDeviceMemory {
    ptr: *mut c_void,
    size: usize,
    device: Arc<DeviceInner>,
}

// SAFETY: the pointer is a device address, never dereferenced on the host; ACL calls that use it
// bind the owning device's context first, from whichever thread.
unsafe impl Send for AclDeviceMemory {}
// SAFETY: shared access only reads the address and size.
unsafe impl Sync for AclDeviceMemory {}

impl AclDeviceMemory {
    pub(crate) fn new(device: Arc<DeviceInner>, bytes: usize) -> Result<Self> {
        if bytes == 0 {
            return Err(Error::InvalidArgument {
                op: "allocate",
                message:
                    "size 0 (aclrtMalloc rejects it; the typed buffers skip empty allocations)"
                        .into(),
            });
        }
        device.bind()?;
        match result::malloc(&device.rt.api, bytes) {
            Ok(ptr) => Ok(AclDeviceMemory {
                ptr,
                size: bytes,
                device,
            }),
            Err(e) if e.acl_code().is_some_and(is_out_of_memory) => {
                let info = device
                    .memory_info()
                    .unwrap_or(crate::MemoryInfo { free: 0, total: 0 });
                Err(Error::OutOfMemory {
                    device: device.label(),
                    requested: bytes as u64,
                    free: info.free,
                    total: info.total,
                    detail: format!("; {e}"),
                })
            }
            Err(e) => Err(e),
        }
    }
}

impl crate::DeviceMemory for AclDeviceMemory {
    fn ptr(&self) -> DevicePtr {
        DevicePtr(self.ptr as u64)
    }
    fn size(&self) -> usize {
        self.size
    }
    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }
}

impl Drop for AclDeviceMemory {
    fn drop(&mut self) {
        let ptr = self.ptr;
        self.device.release_in_drop(|api| {
            result::synchronize_device(api)?;
            // SAFETY: `ptr` came from `aclrtMalloc` in `new` and is freed only here; the device
            // was just synchronised, so no queued work uses it any more.
            unsafe { result::free(api, ptr) }
        });
    }
}

impl fmt::Debug for AclDeviceMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclDeviceMemory")
            .field("device", &self.device.ordinal)
            .field("ptr", &DevicePtr(self.ptr as u64))
            .field("size", &Bytes(self.size as u64))
            .finish()
    }
}

/// A raw `aclrtMallocHost` allocation (page-locked host memory); freed on drop.
pub struct AclHostMemory {
    ptr: *mut u8,
    size: usize,
    device: Arc<DeviceInner>,
}

// SAFETY: the allocation is owned by this value alone; the HAL's pinned buffers fence every
// device access to it before handing out host slices.
unsafe impl Send for AclHostMemory {}
// SAFETY: as for `Send`; shared access only reads the pointer and size.
unsafe impl Sync for AclHostMemory {}

impl AclHostMemory {
    pub(crate) fn new(device: Arc<DeviceInner>, bytes: usize) -> Result<Self> {
        if bytes == 0 {
            return Err(Error::InvalidArgument {
                op: "allocate_host",
                message: "size 0".into(),
            });
        }
        device.bind()?;
        let ptr = result::malloc_host(&device.rt.api, bytes)?.cast::<u8>();
        if ptr.is_null() || !(ptr as usize).is_multiple_of(64) {
            let misplaced = AclHostMemory {
                ptr,
                size: bytes,
                device,
            };
            return Err(Error::InvalidArgument {
                op: "allocate_host",
                message: format!(
                    "aclrtMallocHost returned {:p}, not the documented 64-byte aligned pointer",
                    misplaced.ptr
                ),
            });
        }
        // SAFETY: `aclrtMallocHost` returned a host allocation of `bytes` bytes; zeroing it
        // gives the contents the `Device::allocate_host` contract promises.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes) };
        Ok(AclHostMemory {
            ptr,
            size: bytes,
            device,
        })
    }
}

// SAFETY: (1) `ptr` is the non-null, 64-byte aligned (checked in `new`) start of `size` bytes
// of host memory from `aclrtMallocHost`, valid until `aclrtFreeHost` in `Drop`; (2) owned by this
// value alone; (3) neither field changes.
unsafe impl crate::HostMemory for AclHostMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl Drop for AclHostMemory {
    fn drop(&mut self) {
        if self.ptr.is_null() {
            return;
        }
        let ptr = self.ptr.cast();
        // SAFETY: `ptr` came from `aclrtMallocHost` and is freed only here; the pinned buffer
        // owning this value waited for every copy using it before dropping it.
        self.device
            .release_in_drop(|api| unsafe { result::free_host(api, ptr) });
    }
}

impl fmt::Debug for AclHostMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclHostMemory")
            .field("size", &Bytes(self.size as u64))
            .finish()
    }
}
