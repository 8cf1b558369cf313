//! The Ascend C kernels (`ascendc/kernels/*.cpp`): real vector kernels for the NPU
//! (`__global__ __aicore__` entries, a `TPipe` with double-buffered `TQue`s, `DataCopy` between
//! global memory and the Unified Buffer, vector arithmetic, work split over cores by
//! `GetBlockIdx()` / `GetBlockNum()`), their host-side [`tiling`], and, with the `host-kernels`
//! feature, the `host` runners that execute the very same sources on a host implementation of
//! the Ascend C API, so `cargo test` checks them against the [`reference`](crate::reference) on
//! any machine with a C++17 compiler.
//!
//! | kernel | source | host runner (`host-kernels`) |
//! | --- | --- | --- |
//! | `reshape_and_cache` | `reshape_and_cache.cpp` | `host::reshape_and_cache` |
//! | decode `paged_attention` | `paged_attention.cpp` | `host::paged_attention` |
//! | `rotary_embedding` (NeoX, GPT-J) | `rotary_embedding.cpp` | `host::rotary_embedding` |
//! | `paged_prefill_attention` | `paged_attention.cpp` | `host::paged_prefill_attention` |
//! | `copy_blocks` | `copy_blocks.cpp` | `host::copy_blocks` |
//! | `rms_norm`, `fused_add_rms_norm` | `rms_norm.cpp` | `host::rms_norm`, `host::fused_add_rms_norm` |
//!
//! Without the feature nothing here needs a C++ compiler: the tiling, the cost model's
//! arithmetic, and the NPU launch path (which loads the CANN build of the kernels at run time)
//! are plain Rust.
//!
//! See `docs/kernels.md` for each kernel's tiling, Unified Buffer budget and bandwidth target.

pub mod cost;
#[cfg(feature = "host-kernels")]
pub mod host;
pub(crate) mod npu;
pub(crate) mod status;
pub mod tiling;

pub use npu::{KERNELS_LIBRARY, NOT_BUILT};

/// The host kernels library (`libascendc_kernels_host.so`, built by `build.rs` with the
/// `host-kernels` feature): the same kernel sources compiled with the host implementation of the Ascend C API,
/// behind the `aclrtlaunch_*` stubs the CANN build exports. Its launches run on the streams of
/// the ACL fake (`libascendcl_fake.so` of `hal-mock`), in stream order and against the fake's
/// device memory, so the ACL backend's whole launch path runs without an NPU: point
/// `ASCEND_KERNELS_LIB` at this path and `ASCEND_HAL_ACL_LIB` at the fake. Over a real ACL
/// runtime its stubs refuse to launch (`ACL_ERROR_RT_FEATURE_NOT_SUPPORT`).
#[cfg(feature = "host-kernels")]
pub const HOST_KERNELS_LIB: &str = env!("ASCENDC_HOST_KERNELS_LIB");

#[cfg(feature = "host-kernels")]
pub use host::{run_violation, AscendCFloat, Violation};
