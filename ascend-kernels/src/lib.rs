//! # ascend-kernels
//!
//! The kernels an LLM decode step needs, each three times: a plain Rust reference written for
//! clarity ([`reference`](mod@reference), the oracle), a fast CPU kernel ([`cpu`], what the CPU
//! backend runs), and an Ascend C kernel for the NPU ([`ascendc`], also run on the host in tests).
//! Backends expose them through [`KernelOps`] on their streams.
//!
//! | op | what |
//! | --- | --- |
//! | `reshape_and_cache` | write the step's K/V rows into the paged caches at the slot mapping |
//! | `paged_attention` | decode attention (GQA, sliding window) over block tables |
//! | `paged_prefill_attention` | causal attention of a prefill chunk over the cached context |
//! | `rotary_embedding` | RoPE, NeoX and GPT-J styles, from a cos/sin cache |
//! | `rms_norm`, `fused_add_rms_norm` | RMSNorm, and residual add + RMSNorm |
//! | `silu_and_mul` | the SwiGLU activation |
//! | `matmul` | linear layers: `x · wᵀ` with `[out, in]` weights |
//! | `copy_blocks`, [`swap_out`] / [`swap_in`] | copy-on-write copies; device <-> pinned host swaps |
//!
//! Layouts: caches `[num_blocks, block_size, num_kv_heads, head_size]`, block tables
//! `[num_seqs, max_blocks]` `i32`, slot mapping `[num_tokens]` `i32` (`-1` skips), sequence
//! lengths `[num_seqs]` `i32`. Element types `f32`, `f16`, `bf16` ([`KvFloat`]), accumulated
//! in `f32`.
//!
//! ```
//! use ascend_kernels::{cpu, reference, CacheShape, PagedAttention};
//! let cache = CacheShape { num_blocks: 4, block_size: 16, num_kv_heads: 1, head_size: 64 };
//! let p = PagedAttention {
//!     num_seqs: 1, num_heads: 2, cache, max_blocks_per_seq: 2, scale: 0.125, sliding_window: None,
//! };
//! let q: Vec<f32> = (0..128).map(|i| (i as f32 * 0.1).sin()).collect();
//! let k: Vec<f32> = (0..cache.elements()).map(|i| (i as f32 * 0.01).cos()).collect();
//! let v: Vec<f32> = (0..cache.elements()).map(|i| (i as f32 * 0.02).sin()).collect();
//! let (tables, lens) = (vec![3, 1], vec![20]);
//! let (mut fast, mut slow) = (vec![0f32; 128], vec![0f32; 128]);
//! cpu::paged_attention(&p, &mut fast, &q, &k, &v, &tables, &lens)?;
//! reference::paged_attention(&p, &mut slow, &q, &k, &v, &tables, &lens)?;
//! assert!(fast.iter().zip(&slow).all(|(a, b)| (a - b).abs() < 1e-4));
//! # Ok::<(), ascend_hal::Error>(())
//! ```
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[allow(unsafe_code)] // launches through the NPU kernels library's C stubs.
pub mod acl;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // AMX and AVX-512 behind run-time detection; each block says why it holds.
mod amx;
#[allow(unsafe_code)] // FFI to the host build of the Ascend C kernels; each call says why it holds.
pub mod ascendc;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cpu;
mod engine;
mod float;
#[allow(unsafe_code)] // AVX2 intrinsics behind run-time detection; each block says why it holds.
mod i8dot;
pub mod interleaved;
mod ops;
#[allow(unsafe_code)] // AVX2 intrinsics behind run-time detection; each block says why it holds.
mod qdot;
pub mod quant;
pub mod reference;
mod rope;
mod shapes;
#[allow(unsafe_code)]
// SIMD intrinsics behind run-time CPU feature detection; each block says why it holds.
mod simd;
#[allow(unsafe_code)]
// a job's closure shared with the helper threads; each block says why it holds.
mod team;

pub use engine::{EngineBackend, EngineVisitor, RunEngine};
pub use float::{close, tolerance, KvFloat};
pub use ops::{
    copy_waves, device_arg, swap_in, swap_out, AddArgs, ArgmaxArgs, CopyBlocksArgs, EmbeddingArgs,
    FusedAddRmsNormArgs, In, KernelOps, MatmulArgs, Out, PagedAttentionArgs, PrefillAttentionArgs,
    QuantMatmulArgs, ReshapeAndCacheArgs, RmsNormArgs, RotaryArgs, SiluAndMulArgs, TopKArgs,
};
pub use quant::QuantFormat;
pub use rope::{RopeScaling, RopeTable};
pub use shapes::{
    expect_index_len, expect_len, Add, Argmax, CacheShape, Embedding, Matmul, PagedAttention,
    PrefillAttention, QuantMatmul, ReshapeAndCache, RmsNorm, RopeStyle, Rotary, SiluAndMul, TopK,
};

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
