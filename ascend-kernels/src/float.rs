//! The floating-point element types of activations and caches.

use ascend_hal::{DType, Element};
use half::slice::HalfFloatSliceExt as _;
use half::{bf16, f16};

/// `f32`, `f16` or `bf16`: what activations and KV caches hold. Kernels accumulate in `f32`.
pub trait KvFloat: Element + Copy + PartialEq {
    /// To `f32`.
    fn to_f32(self) -> f32;
    /// From `f32`, rounding to nearest.
    fn from_f32(v: f32) -> Self;
    /// Converts a slice to `f32` (vectorised where the CPU allows).
    fn convert_to_f32(src: &[Self], dst: &mut [f32]);
    /// The slice itself when it already holds `f32` (no conversion needed), else `None`.
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        let _ = src;
        None
    }
    /// The slice's `f16` bits when it holds `f16` (read by the kernels without a converted
    /// copy), else `None`.
    fn as_f16_bits(src: &[Self]) -> Option<&[u16]> {
        let _ = src;
        None
    }
}

impl KvFloat for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }
}

impl KvFloat for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        crate::simd::f16_to_f32(src.reinterpret_cast(), dst);
    }
    fn as_f16_bits(src: &[Self]) -> Option<&[u16]> {
        Some(src.reinterpret_cast())
    }
}

impl KvFloat for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        crate::simd::bf16_to_f32(src.reinterpret_cast(), dst);
    }
}

/// The tolerance `(absolute, relative)` within which a fast kernel must match the reference for
/// a dtype: the reference computes in `f64`, the fast kernels accumulate in `f32` in another
/// order, and both round the result to the dtype, which can differ by one unit in the last
/// place (2^-10 relative for f16, 2^-7 for bf16).
pub fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F16 => (2e-3, 4e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        _ => (2e-5, 2e-4),
    }
}

/// Whether `got` is within the dtype's tolerance of `want`.
pub fn close(dtype: DType, got: f32, want: f32) -> bool {
    let (atol, rtol) = tolerance(dtype);
    (got - want).abs() <= atol + rtol * want.abs()
}
