//! The ACL backend: Ascend NPUs through the CANN runtime (`libascendcl.so`), loaded at run time
//! with `libloading`, so that building needs no CANN install and a binary runs anywhere.
//!
//! Three layers, imports one way (as cudarc does): `sys` declares the C types and the function
//! table; `result` has one function per C call returning `Result`; the safe types (`AclBackend`,
//! `AclDevice`, `AclStream`, `AclEvent`, allocations) call only `result`. Every safe entry point
//! binds the device's context to the calling thread first, so handles work from any thread.
//!
//! Loading searches, in order: an explicit path, `ASCEND_HAL_ACL_LIB`, `$ASCEND_TOOLKIT_HOME/lib64`,
//! `$ASCEND_HOME_PATH/lib64`, `/usr/local/Ascend/ascend-toolkit/latest/lib64`,
//! `/usr/local/Ascend/cann-<version>/lib64`, `~/Ascend/ascend-toolkit/latest/lib64`, and the system
//! search path. A failure lists every place and says to source `set_env.sh`.

pub mod aclnn;
mod backend;
#[cfg(feature = "bindgen")]
mod bindgen_check;
pub(crate) mod codes;
mod device;
pub mod doctor;
mod event;
pub mod hccl;
mod loader;
mod memory;
mod result;
mod runtime;
mod stream;
mod sys;
mod vmm;

pub use backend::{AclBackend, AclVersions};
pub use codes::describe_code;
pub use device::{AclDevice, CoreCountSource};
pub use event::AclEvent;
pub use loader::{LoadOptions, LIBRARY_NAME};
pub use memory::{AclDeviceMemory, AclHostMemory};
pub use stream::AclStream;
pub use vmm::{AclPhysicalMemory, AclVirtualRange};

/// Where the ACL runtime of this process was loaded from, while an [`AclBackend`] holds it:
/// libraries that belong beside it (ACLNN's, HCCL's, an Ascend C kernels library) are looked
/// for there.
pub fn loaded_runtime_path() -> Option<String> {
    runtime::Runtime::current().map(|rt| rt.path.clone())
}

/// The C functions the ACL backend cannot work without (a library lacking one fails to load
/// with [`Error::MissingSymbol`](crate::Error::MissingSymbol)); newer ones are optional.
pub fn required_symbols() -> &'static [&'static str] {
    sys::AclApi::REQUIRED
}
