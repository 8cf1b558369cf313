//! The Ascend C kernels (`ascendc/kernels/*.cpp`): real vector kernels for the NPU
//! (`__global__ __aicore__` entries, a `TPipe` with double-buffered `TQue`s, `DataCopy` between
//! global memory and the Unified Buffer, vector arithmetic, work split over cores by
//! `GetBlockIdx()` / `GetBlockNum()`), their host-side [`tiling`], and the [`host`] runners that
//! execute the very same sources on a host implementation of the Ascend C API, so `cargo test`
//! checks them against the [`reference`](crate::reference) on any machine.
//!
//! | kernel | source | host runner |
//! | --- | --- | --- |
//! | `reshape_and_cache` | `reshape_and_cache.cpp` | [`host::reshape_and_cache`] |
//! | decode `paged_attention` | `paged_attention.cpp` | [`host::paged_attention`] |
//! | `rotary_embedding` (NeoX, GPT-J) | `rotary_embedding.cpp` | [`host::rotary_embedding`] |
//! | `paged_prefill_attention` | `paged_attention.cpp` | [`host::paged_prefill_attention`] |
//! | `copy_blocks` | `copy_blocks.cpp` | [`host::copy_blocks`] |
//! | `rms_norm`, `fused_add_rms_norm` | `rms_norm.cpp` | [`host::rms_norm`], [`host::fused_add_rms_norm`] |
//!
//! ```
//! use ascend_kernels::{ascendc, reference, RmsNorm};
//! use half::f16;
//! let p = RmsNorm { num_tokens: 3, hidden: 64, eps: 1e-6 };
//! let x: Vec<f16> = (0..192).map(|i| f16::from_f32((i as f32 * 0.37).sin())).collect();
//! let w: Vec<f16> = (0..64).map(|i| f16::from_f32(1.0 + i as f32 / 64.0)).collect();
//! let (mut npu, mut oracle) = (vec![f16::ZERO; 192], vec![f16::ZERO; 192]);
//! ascendc::host::rms_norm(&p, &mut npu, &x, &w, 2)?; // two simulated vector cores
//! reference::rms_norm(&p, &mut oracle, &x, &w)?;
//! assert!(npu.iter().zip(&oracle).all(|(a, b)| (a.to_f32() - b.to_f32()).abs() < 4e-3));
//! # Ok::<(), ascend_hal::Error>(())
//! ```
//!
//! See `docs/kernels.md` for each kernel's tiling, Unified Buffer budget and bandwidth target.

pub mod cost;
pub mod host;
pub(crate) mod npu;
pub(crate) mod status;
pub mod tiling;

pub use npu::NOT_BUILT;

/// The host kernels library (`libascendc_kernels_host.so`, built by `build.rs` on every
/// machine): the same kernel sources compiled with the host implementation of the Ascend C API,
/// behind the `aclrtlaunch_*` stubs the CANN build exports. Its launches run on the streams of
/// the ACL fake (`libascendcl_fake.so` of `hal-mock`), in stream order and against the fake's
/// device memory, so the ACL backend's whole launch path runs without an NPU: point
/// `ASCEND_KERNELS_LIB` at this path and `ASCEND_HAL_ACL_LIB` at the fake. Over a real ACL
/// runtime its stubs refuse to launch (`ACL_ERROR_RT_FEATURE_NOT_SUPPORT`).
pub const HOST_KERNELS_LIB: &str = env!("ASCENDC_HOST_KERNELS_LIB");

pub use host::{run_violation, AscendCFloat, Violation};
