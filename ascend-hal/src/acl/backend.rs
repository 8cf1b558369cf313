//! The ACL backend value: the loaded runtime and the devices opened through it.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use super::device::{AclDevice, DeviceInner};
use super::event::AclEvent;
use super::loader::LoadOptions;
use super::memory::{AclDeviceMemory, AclHostMemory};
use super::result;
use super::runtime::Runtime;
use super::stream::AclStream;
use super::sys;
use crate::error::{Error, Result};

/// The ACL backend: Ascend NPUs through the CANN runtime, loaded at run time.
///
/// Cheap to clone. Loading calls `aclInit` once per process, however many backends, devices and
/// threads there are; `aclFinalize` runs when the last handle is gone.
///
/// ```no_run
/// use ascend_hal::prelude::*;
/// use ascend_hal::acl::AclBackend;
/// let backend = AclBackend::load()?; // searches the usual CANN install places
/// let device = backend.device(0)?;
/// println!("{} with {:?}", device.name(), device.memory_info()?);
/// # Ok::<(), ascend_hal::Error>(())
/// ```
#[derive(Clone)]
pub struct AclBackend {
    rt: Arc<Runtime>,
    /// Devices opened so far, shared by every `device(i)` call while any handle lives.
    devices: Arc<Mutex<Vec<Weak<DeviceInner>>>>,
}

/// Versions the runtime reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclVersions {
    /// ACL API version (`aclrtGetVersion`, e.g. 1.16.0 for CANN 8.5).
    pub acl_api: (i32, i32, i32),
    /// CANN package version (`aclsysGetCANNVersion`), when the library has the call.
    pub cann: Option<String>,
    /// Driver package version, when the library reports it.
    pub driver: Option<String>,
}

impl AclBackend {
    /// Loads the CANN runtime from the first place that has it: `ASCEND_HAL_ACL_LIB`,
    /// `$ASCEND_TOOLKIT_HOME/lib64`, `$ASCEND_HOME_PATH/lib64`, the default install paths, then
    /// the system search path.
    ///
    /// # Errors
    /// [`Error::LibraryNotFound`] listing every place tried; [`Error::MissingSymbol`] for a
    /// CANN too old; [`Error::Acl`] if `aclInit` fails (with its usual causes).
    pub fn load() -> Result<Self> {
        Self::load_with(&LoadOptions {
            path: None,
            search: true,
        })
    }

    /// Loads the CANN runtime (or a compatible library) from exactly this path.
    pub fn load_from(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        Self::load_with(&LoadOptions {
            path: Some(path.into()),
            search: false,
        })
    }

    /// Loads with explicit options. If a runtime is already loaded in this process, it is
    /// shared, whatever the options say (ACL is initialised once per process).
    pub fn load_with(options: &LoadOptions) -> Result<Self> {
        let rt = Runtime::acquire(options, &|k| std::env::var(k).ok())?;
        Ok(AclBackend {
            rt,
            devices: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The loaded runtime.
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// The path of the loaded library.
    pub fn library_path(&self) -> &str {
        &self.rt.path
    }

    /// Runtime, CANN and driver versions.
    pub fn versions(&self) -> Result<AclVersions> {
        Ok(AclVersions {
            acl_api: result::version(&self.rt.api)?,
            cann: result::package_version(&self.rt.api, sys::ACL_PKG_NAME_CANN),
            driver: result::package_version(&self.rt.api, sys::ACL_PKG_NAME_DRIVER),
        })
    }

    /// Whether the library has the virtual-memory calls (reserve, physical allocation, map)
    /// that expandable segments need.
    pub fn supports_virtual_memory(&self) -> bool {
        super::vmm::has_vmm(&self.rt.api)
    }
}

impl crate::Backend for AclBackend {
    type Device = AclDevice;
    type Stream = AclStream;
    type Event = AclEvent;
    type DeviceMemory = AclDeviceMemory;
    type HostMemory = AclHostMemory;
    type VirtualRange = super::vmm::AclVirtualRange;
    type PhysicalMemory = super::vmm::AclPhysicalMemory;

    fn name(&self) -> &'static str {
        "acl"
    }

    fn device_count(&self) -> Result<usize> {
        Ok(result::device_count(&self.rt.api)? as usize)
    }

    fn device(&self, ordinal: usize) -> Result<AclDevice> {
        let count = self.device_count()?;
        if ordinal >= count {
            return Err(Error::InvalidDevice {
                backend: "acl",
                ordinal,
                count,
            });
        }
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if devices.len() < count {
            devices.resize_with(count, Weak::new);
        }
        if let Some(inner) = devices[ordinal].upgrade() {
            // A cheap query that fails on a device that has been lost since it was opened.
            inner.memory_info()?;
            return Ok(AclDevice { inner });
        }
        let inner = Arc::new(DeviceInner::open(Arc::clone(&self.rt), ordinal)?);
        devices[ordinal] = Arc::downgrade(&inner);
        Ok(AclDevice { inner })
    }
}

impl fmt::Debug for AclBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclBackend")
            .field("library", &self.rt.path)
            .finish()
    }
}
