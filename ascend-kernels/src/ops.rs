//! The ops as backends expose them: called with device buffers on a stream, run in stream order.
//!
//! A backend implements [`KernelOps`]; the CPU backend (`hal-mock`) runs the fast CPU kernels on
//! the stream's worker thread, and the ACL backend launches the Ascend C kernels. Shapes are
//! checked before anything is queued, so a mismatch is an error naming the argument and the shape
//! it must have.

use ascend_hal::{
    Backend, DevicePtr, DeviceRepr, DeviceSlice, DeviceSliceMut, Element, Error, PinnedBuffer,
    Result, Stream, StreamExt,
};

use crate::float::KvFloat;
use crate::shapes::{
    Add, Argmax, CacheShape, Embedding, Matmul, PagedAttention, PrefillAttention, QuantMatmul,
    ReshapeAndCache, RmsNorm, Rotary, SiluAndMul, TopK,
};

/// Read-only device views of a backend.
pub type In<'a, B, T> = DeviceSlice<'a, B, T>;
/// Writable device views of a backend.
pub type Out<'a, B, T> = DeviceSliceMut<'a, B, T>;

/// The type of an op argument in an argument struct (`'a`, `B`) or in a `KernelOps` method
/// (`'_`, `Self`), by its role.
macro_rules! op_arg {
    ($l:lifetime, $b:ident, param $t:ty) => { &$l $t };
    ($l:lifetime, $b:ident, input $t:ty) => { In<$l, $b, $t> };
    ($l:lifetime, $b:ident, output $t:ty) => { Out<$l, $b, $t> };
    ($l:lifetime, $b:ident, host $t:ty) => { &$l $t };
}

/// The op surface, in one place: each entry is the op's description (its documentation, its
/// `KernelOps` method, the method a backend implements, and the argument struct that method
/// takes, with each argument's role and type). From it come the argument structs, the
/// positional `KernelOps` methods engines call, and the `launch_*` methods backends implement.
/// Adding an op is one entry here and one `launch_*` per backend; adding a provider is one
/// `launch_*` per op it serves.
macro_rules! kernel_ops {
    ($(
        $(#[$doc:meta])*
        fn $name:ident / $launch:ident ( $args:ident ) {
            $( $(#[$adoc:meta])* $arg:ident : $role:ident $ty:ty ),* $(,)?
        }
    )*) => {
        $(
            #[doc = concat!("The arguments of [`KernelOps::", stringify!($name), "`] (see there).")]
            pub struct $args<'a, B: Backend, T: KvFloat> {
                $( $(#[$adoc])* pub $arg: op_arg!('a, B, $role $ty), )*
            }
        )*

        /// The decode-step ops on a backend's streams.
        ///
        /// Engines call the positional methods (`B::paged_attention(stream, &p, out, q, ..)`);
        /// a backend implements one `launch_*` method per op, which gets the op's argument
        /// struct. Every op checks shapes before anything is queued and runs in stream order:
        /// the buffers must stay alive until the stream has finished the op.
        pub trait KernelOps: Backend {
            /// `Err` with the reason when this backend cannot run the kernels in this build
            /// (checked before a workload starts; every op then fails with
            /// [`Error::KernelUnavailable`]).
            ///
            /// [`Error::KernelUnavailable`]: ascend_hal::Error::KernelUnavailable
            fn kernels_available() -> std::result::Result<(), &'static str> {
                Ok(())
            }

            /// `Ok` when [`quant_matmul`](KernelOps::quant_matmul) runs weights of `format`
            /// with activations of `T` on this backend; otherwise why not, and what to do.
            /// A model loader asks this for each block-quantized weight, so that a format no
            /// provider runs is refused by tensor name before serving starts, never dequantized
            /// behind the caller's back. The default is no provider.
            fn quant_matmul_supported<T: KvFloat>(
                format: crate::quant::QuantFormat,
            ) -> std::result::Result<(), String> {
                Err(format!("this backend has no quant_matmul provider (for {format})"))
            }

            /// The bytes [`quant_matmul`](KernelOps::quant_matmul) reads for an `[n, k]`
            /// weight of `format` whose GGUF blocks are `blocks`, for activations of `T`: this
            /// backend's layout of the same matrix, the same number of bytes, made on the host
            /// once (at upload). The default is the blocks themselves; the CPU backend's is
            /// [`interleaved`](crate::interleaved), the ACL backend's
            /// [`acl::quant_layout`](crate::acl::quant_layout).
            ///
            /// # Errors
            /// [`Error::InvalidArgument`] when `blocks` is not `n` rows of `k / 32` blocks, or
            /// the backend does not run `T` activations with quantized weights.
            fn pack_quant_weight<'a, T: KvFloat>(
                format: crate::quant::QuantFormat,
                n: usize,
                k: usize,
                blocks: &'a [u8],
            ) -> Result<std::borrow::Cow<'a, [u8]>> {
                crate::quant::weight_row_bytes("pack_quant_weight", format, n, k, blocks.len())
                    .map(|_| std::borrow::Cow::Borrowed(blocks))
            }

            $(
                $(#[$doc])*
                #[allow(clippy::too_many_arguments)]
                fn $name<T: KvFloat>(
                    stream: &Self::Stream,
                    $( $arg: op_arg!('_, Self, $role $ty), )*
                ) -> Result<()> {
                    Self::$launch(stream, $args { $( $arg, )* })
                }

                #[doc = concat!("Runs [`KernelOps::", stringify!($name), "`]: what a backend implements.")]
                fn $launch<T: KvFloat>(stream: &Self::Stream, args: $args<'_, Self, T>) -> Result<()>;
            )*
        }
    };
}

kernel_ops! {
    /// See [`cpu::reshape_and_cache`](crate::cpu::reshape_and_cache).
    fn reshape_and_cache / launch_reshape_and_cache (ReshapeAndCacheArgs) {
        /// The shapes.
        p: param ReshapeAndCache,
        /// `[num_tokens, kv_heads, head_size]`.
        key: input T,
        /// `[num_tokens, kv_heads, head_size]`.
        value: input T,
        /// The paged K cache.
        key_cache: output T,
        /// The paged V cache.
        value_cache: output T,
        /// `[num_tokens]` slots; negative skips the token.
        slot_mapping: input i32,
    }

    /// See [`cpu::paged_attention`](crate::cpu::paged_attention).
    fn paged_attention / launch_paged_attention (PagedAttentionArgs) {
        /// The shapes.
        p: param PagedAttention,
        /// `[num_seqs, num_heads, head_size]`.
        out: output T,
        /// `[num_seqs, num_heads, head_size]`.
        query: input T,
        /// The paged K cache.
        key_cache: input T,
        /// The paged V cache.
        value_cache: input T,
        /// `[num_seqs, max_blocks_per_seq]`.
        block_tables: input i32,
        /// `[num_seqs]` context lengths.
        seq_lens: input i32,
        /// `seq_lens` on the host: what CANN's fused attention takes (`actualSeqLengthsKv` is a
        /// host array), and what every backend checks before queuing. The CPU backend also
        /// checks that the device copy holds the same values when the op runs.
        seq_lens_host: host [i32],
    }

    /// See [`cpu::paged_prefill_attention`](crate::cpu::paged_prefill_attention).
    fn paged_prefill_attention / launch_paged_prefill_attention (PrefillAttentionArgs) {
        /// The shapes.
        p: param PrefillAttention,
        /// `[num_tokens, num_heads, head_size]`.
        out: output T,
        /// `[num_tokens, num_heads, head_size]`.
        query: input T,
        /// The paged K cache.
        key_cache: input T,
        /// The paged V cache.
        value_cache: input T,
        /// `[num_seqs, max_blocks_per_seq]`.
        block_tables: input i32,
        /// `[num_seqs + 1]` offsets of each sequence's queries.
        query_start_loc: input i32,
        /// `[num_seqs]` context lengths, this chunk included.
        seq_lens: input i32,
        /// `query_start_loc` on the host (see `seq_lens_host`).
        query_start_loc_host: host [i32],
        /// `seq_lens` on the host: CANN's fused attention takes the lengths as host arrays,
        /// and every backend checks them before queuing (the CPU backend also checks that the
        /// device copies agree when the op runs).
        seq_lens_host: host [i32],
    }

    /// See [`cpu::rotary_embedding`](crate::cpu::rotary_embedding).
    fn rotary_embedding / launch_rotary_embedding (RotaryArgs) {
        /// The shapes and the pairing.
        p: param Rotary,
        /// `[num_tokens]` positions.
        positions: input i64,
        /// `[num_tokens, num_heads, head_size]`, rotated in place.
        query: output T,
        /// `[num_tokens, num_kv_heads, head_size]`, rotated in place.
        key: output T,
        /// `[max_position, rotary_dim]`: cosines, then sines.
        cos_sin_cache: input f32,
    }

    /// See [`cpu::rms_norm`](crate::cpu::rms_norm).
    fn rms_norm / launch_rms_norm (RmsNormArgs) {
        /// The shapes.
        p: param RmsNorm,
        /// `[num_tokens, hidden]`.
        out: output T,
        /// `[num_tokens, hidden]`.
        x: input T,
        /// `[hidden]`.
        weight: input T,
    }

    /// See [`cpu::fused_add_rms_norm`](crate::cpu::fused_add_rms_norm).
    fn fused_add_rms_norm / launch_fused_add_rms_norm (FusedAddRmsNormArgs) {
        /// The shapes.
        p: param RmsNorm,
        /// `[num_tokens, hidden]`: in, then the normalised sum.
        x: output T,
        /// `[num_tokens, hidden]`: in, then the sum.
        residual: output T,
        /// `[hidden]`.
        weight: input T,
    }

    /// See [`cpu::silu_and_mul`](crate::cpu::silu_and_mul).
    fn silu_and_mul / launch_silu_and_mul (SiluAndMulArgs) {
        /// The shapes.
        p: param SiluAndMul,
        /// `[num_tokens, d]`.
        out: output T,
        /// `[num_tokens, 2 d]`.
        x: input T,
    }

    /// See [`cpu::matmul`](crate::cpu::matmul).
    fn matmul / launch_matmul (MatmulArgs) {
        /// The shapes.
        p: param Matmul,
        /// `[m, n]`.
        out: output T,
        /// `[m, k]`.
        x: input T,
        /// `[n, k]` (PyTorch's `[out, in]`).
        weight: input T,
    }

    /// See [`cpu::quant_matmul`](crate::cpu::quant_matmul): `out = x · wᵀ` on a weight kept
    /// in its block format ([`QuantFormat`](crate::QuantFormat)), activations quantized to
    /// int8 blocks. A backend without a provider for the format is an error naming the weight's
    /// format and the backends that run it: never a dequantized copy.
    fn quant_matmul / launch_quant_matmul (QuantMatmulArgs) {
        /// The shapes and the weight's format.
        p: param QuantMatmul,
        /// `[m, n]`.
        out: output T,
        /// `[m, k]`.
        x: input T,
        /// `[n, k]` in the backend's layout of the format
        /// ([`KernelOps::pack_quant_weight`]): on the CPU backend `n` rows of `k / 32` blocks
        /// with each row's groups of 8 interleaved ([`crate::interleaved`]); the same number
        /// of bytes on every backend.
        weight: input u8,
    }

    /// See [`cpu::embedding`](crate::cpu::embedding). An id outside the table fails the
    /// stream (the CPU backend), or the kernel (a device).
    fn embedding / launch_embedding (EmbeddingArgs) {
        /// The shapes.
        p: param Embedding,
        /// `[num_tokens, hidden]`.
        out: output T,
        /// `[vocab, hidden]`.
        table: input T,
        /// `[num_tokens]` token ids.
        ids: input i32,
    }

    /// See [`cpu::add`](crate::cpu::add).
    fn add / launch_add (AddArgs) {
        /// The shapes.
        p: param Add,
        /// `[rows, cols]`.
        out: output T,
        /// `[rows, cols]`.
        a: input T,
        /// `[rows, cols]`, or `[cols]` with `broadcast`.
        b: input T,
    }

    /// See [`cpu::argmax`](crate::cpu::argmax): greedy sampling on the device.
    fn argmax / launch_argmax (ArgmaxArgs) {
        /// The shapes.
        p: param Argmax,
        /// `[rows]` indices.
        out: output i32,
        /// `[rows, cols]` (logits).
        x: input T,
    }

    /// See [`cpu::top_k`](crate::cpu::top_k): the candidates of top-k / top-p sampling.
    fn top_k / launch_top_k (TopKArgs) {
        /// The shapes.
        p: param TopK,
        /// `[rows, k]`, largest first.
        values: output T,
        /// `[rows, k]` indices of `values`.
        indices: output i64,
        /// `[rows, cols]` (logits).
        x: input T,
    }

    /// See [`cpu::copy_blocks`](crate::cpu::copy_blocks).
    fn copy_blocks / launch_copy_blocks (CopyBlocksArgs) {
        /// The caches' shape.
        cache: param CacheShape,
        /// The paged K cache.
        key_cache: output T,
        /// The paged V cache.
        value_cache: output T,
        /// `(source block, destination block)` pairs, in order.
        pairs: host [(u32, u32)],
    }
}

/// The device address of an op's argument `what`, after checking that it lives on the device of
/// the stream the op runs on ([`Error::WrongDevice`] otherwise). For backends' [`KernelOps`]
/// implementations.
pub fn device_arg<B: Backend, T: Element, R: DeviceRepr<B, T>>(
    op: &'static str,
    stream: &B::Stream,
    what: &'static str,
    view: &R,
) -> Result<DevicePtr> {
    if view.device_ordinal() != stream.device_ordinal() {
        return Err(Error::WrongDevice {
            op,
            what,
            expected: stream.device_ordinal(),
            actual: view.device_ordinal(),
        });
    }
    Ok(view.device_ptr())
}

/// Splits copy-on-write pairs into waves that a parallel kernel can run one after another with
/// the result of running the pairs in order: within a wave no block is both a source and a
/// destination, and no block is the destination of two pairs. Usually one wave (copy-on-write
/// copies a shared block into a fresh one).
pub fn copy_waves(pairs: &[(u32, u32)]) -> Vec<&[(u32, u32)]> {
    let mut waves = Vec::new();
    let (mut start, mut srcs, mut dsts) = (
        0,
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    for (i, &(s, d)) in pairs.iter().enumerate() {
        if dsts.contains(&s) || dsts.contains(&d) || srcs.contains(&d) {
            waves.push(&pairs[start..i]);
            start = i;
            srcs.clear();
            dsts.clear();
        }
        srcs.insert(s);
        dsts.insert(d);
    }
    if start < pairs.len() {
        waves.push(&pairs[start..]);
    }
    waves
}

/// Copies blocks of a device cache out to pinned host memory: `pairs` are `(device block, host
/// block)`. Any backend; ordered on `stream`, and the pinned buffer fences itself.
pub fn swap_out<B: Backend, T: KvFloat>(
    stream: &B::Stream,
    cache: &CacheShape,
    device: In<'_, B, T>,
    host: &mut PinnedBuffer<B, T>,
    pairs: &[(u32, u32)],
) -> Result<()> {
    let n = cache.block_stride();
    check_swap(
        cache,
        ascend_hal::DeviceRepr::len(&device),
        host.len(),
        pairs.iter().copied(),
    )?;
    for &(d, h) in pairs {
        let src = device.sub(d as usize * n..(d as usize + 1) * n)?;
        stream.copy_d2h_at(&src, host, h as usize * n)?;
    }
    Ok(())
}

/// Copies blocks of pinned host memory into a device cache: `pairs` are `(host block, device
/// block)`.
pub fn swap_in<B: Backend, T: KvFloat>(
    stream: &B::Stream,
    cache: &CacheShape,
    host: &PinnedBuffer<B, T>,
    mut device: Out<'_, B, T>,
    pairs: &[(u32, u32)],
) -> Result<()> {
    let n = cache.block_stride();
    check_swap(
        cache,
        ascend_hal::DeviceRepr::len(&device),
        host.len(),
        pairs.iter().map(|&(h, d)| (d, h)),
    )?;
    for &(h, d) in pairs {
        let mut dst = device.sub_mut(d as usize * n..(d as usize + 1) * n)?;
        stream.copy_h2d_at(host, h as usize * n, &mut dst)?;
    }
    Ok(())
}

fn check_swap(
    c: &CacheShape,
    device_len: usize,
    host_len: usize,
    pairs: impl Iterator<Item = (u32, u32)>,
) -> Result<()> {
    let n = c.block_stride();
    if device_len != c.elements() || !host_len.is_multiple_of(n) {
        return Err(ascend_hal::Error::ShapeMismatch {
            op: "swap_blocks",
            arg: "cache",
            expected: format!(
                "a device cache of {} elements and a host buffer of whole {n}-element blocks",
                c.elements()
            ),
            actual: format!("{device_len} and {host_len} elements"),
        });
    }
    let host_blocks = host_len / n;
    for (d, h) in pairs {
        if d as usize >= c.num_blocks || h as usize >= host_blocks {
            return Err(ascend_hal::Error::InvalidArgument {
                op: "swap_blocks",
                message: format!(
                    "device block {d} / host block {h}: the device has {} blocks, the host {host_blocks}",
                    c.num_blocks
                ),
            });
        }
    }
    Ok(())
}
