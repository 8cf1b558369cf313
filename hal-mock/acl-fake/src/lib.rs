//! # acl-fake
//!
//! A host-side fake of the ACL runtime C ABI, built from this repository as a shared library
//! (`libascendcl_fake.so`), so that CI drives the real ACL backend of `ascend-hal` through the
//! very loading path it uses for `libascendcl.so`, with no NPU and no CANN install.
//!
//! It implements every function the backend resolves, with the signatures of the CANN headers
//! and real semantics on host memory, by delegating to the CPU backend of `hal-mock`: separate
//! device arenas with capacities, asynchronous streams on worker threads, events, per-thread
//! current contexts (107002 without one), `aclInit`/`aclFinalize` reference counting
//! (100002/100037), the documented argument checks and error codes, and `aclGetRecentErrMsg`.
//!
//! Configuration, from the environment when the library is first used, or from
//! `aclfakeConfigure("devices=2;memory=268435456;soc=Ascend910B4")` before `aclInit`:
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `ACL_FAKE_DEVICES` | number of devices | 1 |
//! | `ACL_FAKE_MEMORY` | bytes per device | 34359738368 (32 GiB) |
//! | `ACL_FAKE_SOC` | `aclrtGetSocName()`, and `aclGetDeviceCapability`'s AI cores, vector cores and L2 bytes from CANN 8.1's platform description of that SoC: `Ascend910B1`, `B2`, `B2C` (48 vector cores), `Ascend910B3`, `B4`, `B4-1` (40) | `Ascend910B4` |
//! | `ACL_FAKE_FAULTS` | `function:n:code[:stream],...`: the n-th call of `function` returns `code`; with `:stream`, the call succeeds and the stream's next synchronisation returns `code` | none |
//!
//! Control functions (not ACL): `aclfakeConfigure`, `aclfakeSetFaults` (same syntax, counted
//! from the call), `aclfakeCallCount(name)`, `aclfakeLoseDevice(id)`.
//!
//! [`library_path`] finds the built library for tests; [`toolkit::install`] (or the
//! `acl-fake-toolkit` program) lays out a directory as a CANN toolkit over it, so that one
//! variable, `ASCEND_TOOLKIT_HOME`, points every loader of the ACL backend at the fake and at
//! the host build of the Ascend C kernels.

// The exported functions are C entry points with C's pointer contracts (each documents its C
// prototype); they stay safe `extern "C" fn`s, as every C ABI export is, and `abi` exposes
// them to Rust tests under the same contracts.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod aclnn;
mod aclnn_attention;
mod aclnn_quant;
mod aclnn_step_ops;
mod exports;
mod hccl;
mod launch;
mod state;
pub mod toolkit;

/// The exported C functions (ACL, ACLNN, HCCL and the `aclfake*` controls), callable from Rust
/// as C calls them: how tests drive the fake linked in, where a counting allocator or a
/// debugger sees its work. A program that loads `libascendcl_fake.so` and one that calls these
/// get separate fakes.
pub mod abi {
    pub use crate::aclnn::*;
    pub use crate::aclnn_attention::*;
    pub use crate::aclnn_step_ops::*;
    pub use crate::exports::*;
    pub use crate::hccl::*;
    pub use crate::launch::*;
}

/// The fake library's file name.
pub const LIBRARY_FILE: &str = "libascendcl_fake.so";

/// Where cargo put the fake library: next to the running test or example binary (in `deps/` or
/// its parent), or `None` if it was not built.
pub fn library_path() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.to_path_buf(),
        dir.parent()?.to_path_buf(),
        dir.join("deps"),
    ]
    .into_iter()
    .map(|d| d.join(LIBRARY_FILE))
    .find(|p| p.exists())
}
