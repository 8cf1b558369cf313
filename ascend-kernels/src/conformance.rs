//! The kernel-op conformance suite: every [`KernelOps`] op of a backend, run with its
//! arguments in memory from a given [`Allocator`] and placed across the seams of that memory,
//! checked against the [`reference`](crate::reference).
//!
//! Why seams: the caching allocator's expandable segments map 2 MiB physical chunks side by
//! side into one virtual range, so a buffer can start in one chunk and end in the next, and
//! two buffers of one step can share a chunk. A backend that runs kernels on the host (the CPU
//! backend, the ACL fake) must then present the kernel one coherent view of every argument; a
//! backend that gets this wrong (a stale copy of an input written back over an output in the
//! same chunk) gives wrong numbers with no error, which only a test like this one sees.
//!
//! [`every_op_across_seams`] places each argument so that it straddles a seam of the
//! allocator's device granularity where the allocator lets it (it probes where the allocator
//! puts a block and pads in front until the block crosses the next seam), fills the padding
//! with a pattern, runs every op, and checks:
//! - every output against the reference within [`tolerance`](crate::tolerance);
//! - every input unchanged (bit for bit), and every padding block unchanged;
//!
//! and returns how many arguments it managed to place across a seam, for the caller to assert
//! on (all of them with expandable segments; possibly none with an allocator that gives every
//! block its own allocation).
//!
//! ```ignore
//! let backend = hal_mock::CpuBackend::new();
//! let device = backend.device(0)?;
//! let stream = device.new_stream()?;
//! let alloc = CachingAllocator::new(&device, "expandable_segments:True".parse()?)?;
//! let report = ascend_kernels::conformance::every_op_across_seams::<CpuBackend>(&stream, &alloc);
//! assert_eq!(report.straddling, report.arguments);
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ascend_hal::alloc::Allocator;
use ascend_hal::prelude::*;
use ascend_hal::Element;

use crate::{
    close, reference, swap_in, swap_out, Add, Argmax, CacheShape, Embedding, KernelOps, KvFloat,
    Matmul, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, RopeStyle, RopeTable,
    Rotary, SiluAndMul, TopK,
};

/// The allocation granularity the caching allocator rounds small blocks to; a block can only
/// start at such a boundary, so an argument no larger than this counts as at a seam when it
/// ends within this many bytes before one.
const ROUNDING: u64 = 512;
/// The byte the padding blocks are filled with.
const PAD_BYTE: u8 = 0x5a;

/// What [`every_op_across_seams`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeamReport {
    /// Op runs checked.
    pub ops: usize,
    /// Device arguments placed.
    pub arguments: usize,
    /// Of which straddle a seam (or, when no larger than the allocator's 512-byte rounding, end
    /// right before one).
    pub straddling: usize,
}

/// Places buffers from an allocator across the seams of its device's granularity.
struct Placer<'a, B: Backend> {
    alloc: &'a dyn Allocator<B>,
    stream: &'a B::Stream,
    seam: u64,
    pads: Vec<DeviceBuffer<B, u8>>,
    report: SeamReport,
}

impl<'a, B: Backend> Placer<'a, B> {
    fn new(alloc: &'a dyn Allocator<B>, stream: &'a B::Stream) -> Self {
        let seam = alloc
            .device()
            .virtual_memory_granularity()
            .unwrap_or(2 << 20) as u64;
        Placer {
            alloc,
            stream,
            seam,
            pads: Vec::new(),
            report: SeamReport::default(),
        }
    }

    fn at_seam(&self, start: u64, bytes: u64) -> bool {
        let next = (start / self.seam + 1) * self.seam;
        start + bytes > next || (bytes <= ROUNDING && next - (start + bytes) < ROUNDING)
    }

    /// A buffer holding `data`, placed across a seam if the allocator allows.
    fn put<T: Element>(&mut self, data: &[T]) -> DeviceBuffer<B, T> {
        let bytes = std::mem::size_of_val(data) as u64;
        let mut buf = None;
        for _ in 0..4 {
            let probe = DeviceBuffer::<B, T>::alloc_in(self.alloc, self.stream, data.len())
                .expect("the allocator has room for the suite's small buffers");
            let start = probe.device_ptr().0;
            if bytes == 0 || self.at_seam(start, bytes) {
                buf = Some(probe);
                break;
            }
            // Where it should start: half of it before the next seam (or right before the seam
            // when it is smaller than the rounding).
            let next = (start / self.seam + 1) * self.seam;
            let before = (bytes / 2)
                .max(ROUNDING)
                .next_multiple_of(ROUNDING)
                .min(next);
            let gap = (next - before).saturating_sub(start);
            drop(probe);
            if gap == 0 {
                continue;
            }
            // Pads no larger than the block itself's size class, so that they come from the
            // same pool (the caching allocator keeps blocks up to 1 MiB apart from larger ones).
            let piece = if bytes <= 1 << 20 { 256 << 10 } else { gap };
            let mut left = gap;
            while left > 0 {
                let n = left.min(piece);
                let mut pad = DeviceBuffer::<B, u8>::alloc_in(self.alloc, self.stream, n as usize)
                    .expect("the allocator has room for the suite's padding");
                self.stream.memset(&mut pad, PAD_BYTE).unwrap();
                self.pads.push(pad);
                left -= n;
            }
        }
        let mut buf = match buf {
            Some(b) => b,
            None => DeviceBuffer::<B, T>::alloc_in(self.alloc, self.stream, data.len()).unwrap(),
        };
        self.report.arguments += 1;
        if bytes > 0 && self.at_seam(buf.device_ptr().0, bytes) {
            self.report.straddling += 1;
        }
        self.stream.copy_h2d_sync(data, &mut buf).unwrap();
        buf
    }

    /// Checks that every padding block still holds the pattern, and frees them.
    fn check_pads(&mut self, op: &str) {
        for pad in self.pads.drain(..) {
            let bytes = self.stream.clone_to_host(&pad).unwrap();
            assert!(
                bytes.iter().all(|&b| b == PAD_BYTE),
                "{op}: memory between the arguments changed (a kernel wrote outside its outputs)"
            );
        }
    }
}

fn values<T: KvFloat>(n: usize, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            T::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn assert_close<T: KvFloat>(op: &str, what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{op}: {what} length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let (a, b) = (a.to_f32(), b.to_f32());
        assert!(
            close(T::DTYPE, a, b),
            "{op}: {what}[{i}] is {a}, the reference {b} (arguments across memory seams)"
        );
    }
}

fn assert_same<B: Backend, T: Element + PartialEq + std::fmt::Debug>(
    stream: &B::Stream,
    op: &str,
    what: &str,
    buf: &DeviceBuffer<B, T>,
    want: &[T],
) {
    let got = stream.clone_to_host(buf).unwrap();
    assert!(
        got == want,
        "{op}: input {what} changed (a kernel or the backend wrote over it)"
    );
}

/// The caches of the suite: 6 blocks of 16 tokens, 2 KV heads of 64.
const CACHE: CacheShape = CacheShape {
    num_blocks: 6,
    block_size: 16,
    num_kv_heads: 2,
    head_size: 64,
};

/// Runs every op of `B` with `f32` and `f16` data with its arguments from `alloc`, across
/// seams, on `stream`; panics with the op and argument on any difference (see the module
/// docs). Returns what it placed.
pub fn every_op_across_seams<B: KernelOps>(
    stream: &B::Stream,
    alloc: &dyn Allocator<B>,
) -> SeamReport {
    let mut total = SeamReport::default();
    for report in [
        ops_across_seams::<B, f32>(stream, alloc),
        ops_across_seams::<B, half::f16>(stream, alloc),
    ] {
        total.ops += report.ops;
        total.arguments += report.arguments;
        total.straddling += report.straddling;
    }
    total
}

/// As [`every_op_across_seams`], for one element type.
pub fn ops_across_seams<B: KernelOps, T: KvFloat + std::fmt::Debug>(
    stream: &B::Stream,
    alloc: &dyn Allocator<B>,
) -> SeamReport {
    let mut pl = Placer::<B>::new(alloc, stream);
    let mut ops = 0;
    let c = CACHE;
    let heads = 4;
    let hs = c.head_size;
    let zero = T::from_f32(0.0);

    // reshape_and_cache: five tokens, one skipped.
    {
        const OP: &str = "reshape_and_cache";
        let p = ReshapeAndCache {
            num_tokens: 5,
            cache: c,
        };
        let (key, value) = (
            values::<T>(5 * c.token_stride(), 1),
            values::<T>(5 * c.token_stride(), 2),
        );
        let slots = vec![3, 17, -1, 40, 95];
        let (k0, v0) = (values::<T>(c.elements(), 3), values::<T>(c.elements(), 4));
        let (dk, dv, ds) = (pl.put(&key), pl.put(&value), pl.put(&slots));
        let (mut dkc, mut dvc) = (pl.put(&k0), pl.put(&v0));
        B::reshape_and_cache(
            stream,
            &p,
            dk.view(),
            dv.view(),
            dkc.view_mut(),
            dvc.view_mut(),
            ds.view(),
        )
        .unwrap();
        let (mut wk, mut wv) = (k0.clone(), v0.clone());
        reference::reshape_and_cache(&p, &key, &value, &mut wk, &mut wv, &slots).unwrap();
        assert_close(OP, "key_cache", &stream.clone_to_host(&dkc).unwrap(), &wk);
        assert_close(OP, "value_cache", &stream.clone_to_host(&dvc).unwrap(), &wv);
        assert_same::<B, T>(stream, OP, "key", &dk, &key);
        assert_same::<B, T>(stream, OP, "value", &dv, &value);
        assert_same::<B, i32>(stream, OP, "slot_mapping", &ds, &slots);
        pl.check_pads(OP);
        ops += 1;
    }

    // The caches the attention ops read.
    let (kc, vc) = (values::<T>(c.elements(), 5), values::<T>(c.elements(), 6));

    // paged_attention: two sequences, one ending mid-block.
    {
        const OP: &str = "paged_attention";
        let p = PagedAttention {
            num_seqs: 2,
            num_heads: heads,
            cache: c,
            max_blocks_per_seq: 2,
            scale: 0.125,
            sliding_window: None,
        };
        let q = values::<T>(2 * heads * hs, 7);
        let (tables, lens) = (vec![5, 1, 0, 3], vec![20, 9]);
        let (dq, dkc, dvc) = (pl.put(&q), pl.put(&kc), pl.put(&vc));
        let (dt, dl) = (pl.put(&tables), pl.put(&lens));
        let mut dout = pl.put(&vec![zero; q.len()]);
        B::paged_attention(
            stream,
            &p,
            dout.view_mut(),
            dq.view(),
            dkc.view(),
            dvc.view(),
            dt.view(),
            dl.view(),
            &lens,
        )
        .unwrap();
        let mut want = vec![zero; q.len()];
        reference::paged_attention(&p, &mut want, &q, &kc, &vc, &tables, &lens).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "query", &dq, &q);
        assert_same::<B, T>(stream, OP, "key_cache", &dkc, &kc);
        assert_same::<B, T>(stream, OP, "value_cache", &dvc, &vc);
        assert_same::<B, i32>(stream, OP, "block_tables", &dt, &tables);
        assert_same::<B, i32>(stream, OP, "seq_lens", &dl, &lens);
        pl.check_pads(OP);
        ops += 1;
    }

    // paged_prefill_attention: chunks of 3 and 2 tokens over cached context.
    {
        const OP: &str = "paged_prefill_attention";
        let p = PrefillAttention {
            num_seqs: 2,
            num_tokens: 5,
            num_heads: heads,
            cache: c,
            max_blocks_per_seq: 2,
            scale: 0.125,
            sliding_window: None,
        };
        let q = values::<T>(5 * heads * hs, 8);
        let (tables, starts, lens) = (vec![5, 1, 0, 3], vec![0, 3, 5], vec![20, 9]);
        let (dq, dkc, dvc) = (pl.put(&q), pl.put(&kc), pl.put(&vc));
        let (dt, dst, dl) = (pl.put(&tables), pl.put(&starts), pl.put(&lens));
        let mut dout = pl.put(&vec![zero; q.len()]);
        B::paged_prefill_attention(
            stream,
            &p,
            dout.view_mut(),
            dq.view(),
            dkc.view(),
            dvc.view(),
            dt.view(),
            dst.view(),
            dl.view(),
            &starts,
            &lens,
        )
        .unwrap();
        let mut want = vec![zero; q.len()];
        reference::paged_prefill_attention(&p, &mut want, &q, &kc, &vc, &tables, &starts, &lens)
            .unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "query", &dq, &q);
        assert_same::<B, T>(stream, OP, "key_cache", &dkc, &kc);
        assert_same::<B, i32>(stream, OP, "query_start_loc", &dst, &starts);
        pl.check_pads(OP);
        ops += 1;
    }

    // rotary_embedding, both pairings.
    for style in [RopeStyle::Neox, RopeStyle::GptJ] {
        const OP: &str = "rotary_embedding";
        let p = Rotary {
            num_tokens: 3,
            num_heads: heads,
            num_kv_heads: c.num_kv_heads,
            head_size: hs,
            rotary_dim: hs,
            max_position: 32,
            style,
        };
        let positions: Vec<i64> = vec![0, 7, 31];
        let table = RopeTable::new(p.rotary_dim, p.max_position, 10_000.0)
            .build()
            .unwrap();
        let (q, k) = (
            values::<T>(3 * heads * hs, 9),
            values::<T>(3 * c.num_kv_heads * hs, 10),
        );
        let (dp, dtab) = (pl.put(&positions), pl.put(&table));
        let (mut dq, mut dk) = (pl.put(&q), pl.put(&k));
        B::rotary_embedding(
            stream,
            &p,
            dp.view(),
            dq.view_mut(),
            dk.view_mut(),
            dtab.view(),
        )
        .unwrap();
        let (mut wq, mut wk) = (q.clone(), k.clone());
        reference::rotary_embedding(&p, &positions, &mut wq, &mut wk, &table).unwrap();
        assert_close(OP, "query", &stream.clone_to_host(&dq).unwrap(), &wq);
        assert_close(OP, "key", &stream.clone_to_host(&dk).unwrap(), &wk);
        assert_same::<B, i64>(stream, OP, "positions", &dp, &positions);
        assert_same::<B, f32>(stream, OP, "cos_sin_cache", &dtab, &table);
        pl.check_pads(OP);
        ops += 1;
    }

    // rms_norm and fused_add_rms_norm.
    let norm = RmsNorm {
        num_tokens: 3,
        hidden: 256,
        eps: 1e-5,
    };
    let (x, w, resid) = (
        values::<T>(3 * 256, 11),
        values::<T>(256, 12),
        values::<T>(3 * 256, 13),
    );
    {
        const OP: &str = "rms_norm";
        let (dx, dw) = (pl.put(&x), pl.put(&w));
        let mut dout = pl.put(&vec![zero; x.len()]);
        B::rms_norm(stream, &norm, dout.view_mut(), dx.view(), dw.view()).unwrap();
        let mut want = vec![zero; x.len()];
        reference::rms_norm(&norm, &mut want, &x, &w).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "x", &dx, &x);
        assert_same::<B, T>(stream, OP, "weight", &dw, &w);
        pl.check_pads(OP);
        ops += 1;
    }
    {
        const OP: &str = "fused_add_rms_norm";
        let (mut dx, mut dr, dw) = (pl.put(&x), pl.put(&resid), pl.put(&w));
        B::fused_add_rms_norm(stream, &norm, dx.view_mut(), dr.view_mut(), dw.view()).unwrap();
        let (mut wx, mut wr) = (x.clone(), resid.clone());
        reference::fused_add_rms_norm(&norm, &mut wx, &mut wr, &w).unwrap();
        assert_close(OP, "x", &stream.clone_to_host(&dx).unwrap(), &wx);
        assert_close(OP, "residual", &stream.clone_to_host(&dr).unwrap(), &wr);
        assert_same::<B, T>(stream, OP, "weight", &dw, &w);
        pl.check_pads(OP);
        ops += 1;
    }

    // silu_and_mul.
    {
        const OP: &str = "silu_and_mul";
        let p = SiluAndMul {
            num_tokens: 3,
            d: 128,
        };
        let xs = values::<T>(3 * 256, 14);
        let dx = pl.put(&xs);
        let mut dout = pl.put(&[zero; 3 * 128]);
        B::silu_and_mul(stream, &p, dout.view_mut(), dx.view()).unwrap();
        let mut want = vec![zero; 3 * 128];
        reference::silu_and_mul(&p, &mut want, &xs).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "x", &dx, &xs);
        pl.check_pads(OP);
        ops += 1;
    }

    // matmul.
    {
        const OP: &str = "matmul";
        let p = Matmul {
            m: 3,
            n: 64,
            k: 128,
        };
        let (xs, ws) = (values::<T>(3 * 128, 15), values::<T>(64 * 128, 16));
        let (dx, dw) = (pl.put(&xs), pl.put(&ws));
        let mut dout = pl.put(&[zero; 3 * 64]);
        B::matmul(stream, &p, dout.view_mut(), dx.view(), dw.view()).unwrap();
        let mut want = vec![zero; 3 * 64];
        reference::matmul(&p, &mut want, &xs, &ws).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "x", &dx, &xs);
        assert_same::<B, T>(stream, OP, "weight", &dw, &ws);
        pl.check_pads(OP);
        ops += 1;
    }

    // embedding: rows of a table at token ids (repeated and last ids included).
    {
        const OP: &str = "embedding";
        let p = Embedding {
            num_tokens: 4,
            vocab: 50,
            hidden: 96,
        };
        let table = values::<T>(50 * 96, 17);
        let ids = vec![3, 49, 3, 0];
        let (dt, di) = (pl.put(&table), pl.put(&ids));
        let mut dout = pl.put(&[zero; 4 * 96]);
        B::embedding(stream, &p, dout.view_mut(), dt.view(), di.view()).unwrap();
        let mut want = vec![zero; 4 * 96];
        reference::embedding(&p, &mut want, &table, &ids).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "table", &dt, &table);
        assert_same::<B, i32>(stream, OP, "ids", &di, &ids);
        pl.check_pads(OP);
        ops += 1;
    }

    // add: a residual (same shape), then a bias (one row broadcast).
    for broadcast in [false, true] {
        const OP: &str = "add";
        let p = Add {
            rows: 3,
            cols: 160,
            broadcast,
        };
        let a = values::<T>(3 * 160, 18);
        let b = values::<T>(if broadcast { 160 } else { 3 * 160 }, 19);
        let (da, db) = (pl.put(&a), pl.put(&b));
        let mut dout = pl.put(&[zero; 3 * 160]);
        B::add(stream, &p, dout.view_mut(), da.view(), db.view()).unwrap();
        let mut want = vec![zero; 3 * 160];
        reference::add(&p, &mut want, &a, &b).unwrap();
        assert_close(OP, "out", &stream.clone_to_host(&dout).unwrap(), &want);
        assert_same::<B, T>(stream, OP, "a", &da, &a);
        assert_same::<B, T>(stream, OP, "b", &db, &b);
        pl.check_pads(OP);
        ops += 1;
    }

    // argmax and top_k over rows of logits (distinct values: no ties to break differently).
    let (rows, cols, k) = (3, 300, 5);
    let logits: Vec<T> = (0..rows * cols)
        .map(|i| T::from_f32(((i * 7919) % 1009) as f32 / 1009.0 - 0.5))
        .collect();
    {
        const OP: &str = "argmax";
        let p = Argmax { rows, cols };
        let dx = pl.put(&logits);
        let mut dout = pl.put(&[0i32; 3]);
        B::argmax(stream, &p, dout.view_mut(), dx.view()).unwrap();
        let mut want = vec![0i32; rows];
        reference::argmax(&p, &mut want, &logits).unwrap();
        assert_eq!(stream.clone_to_host(&dout).unwrap(), want, "{OP}: out");
        assert_same::<B, T>(stream, OP, "x", &dx, &logits);
        pl.check_pads(OP);
        ops += 1;
    }
    {
        const OP: &str = "top_k";
        let p = TopK { rows, cols, k };
        let dx = pl.put(&logits);
        let mut dv = pl.put(&vec![zero; rows * k]);
        let mut di = pl.put(&vec![0i64; rows * k]);
        B::top_k(stream, &p, dv.view_mut(), di.view_mut(), dx.view()).unwrap();
        let (mut wv, mut wi) = (vec![zero; rows * k], vec![0i64; rows * k]);
        reference::top_k(&p, &mut wv, &mut wi, &logits).unwrap();
        assert_close(OP, "values", &stream.clone_to_host(&dv).unwrap(), &wv);
        assert_eq!(stream.clone_to_host(&di).unwrap(), wi, "{OP}: indices");
        assert_same::<B, T>(stream, OP, "x", &dx, &logits);
        pl.check_pads(OP);
        ops += 1;
    }

    // copy_blocks, then a swap out and back in.
    {
        const OP: &str = "copy_blocks";
        let pairs = [(0u32, 3u32), (1, 2), (5, 4)];
        let (mut dkc, mut dvc) = (pl.put(&kc), pl.put(&vc));
        B::copy_blocks(stream, &c, dkc.view_mut(), dvc.view_mut(), &pairs).unwrap();
        let (mut wk, mut wv) = (kc.clone(), vc.clone());
        reference::copy_blocks(&c, &mut wk, &mut wv, &pairs).unwrap();
        assert_close(OP, "key_cache", &stream.clone_to_host(&dkc).unwrap(), &wk);
        assert_close(OP, "value_cache", &stream.clone_to_host(&dvc).unwrap(), &wv);

        const SWAP: &str = "swap_out / swap_in";
        let device = alloc.device();
        let mut host = PinnedBuffer::<B, T>::new(device, 2 * c.block_stride()).unwrap();
        swap_out::<B, T>(stream, &c, dkc.view(), &mut host, &[(4, 0), (2, 1)]).unwrap();
        swap_in::<B, T>(stream, &c, &host, dvc.view_mut(), &[(0, 0), (1, 5)]).unwrap();
        let n = c.block_stride();
        wv[..n].copy_from_slice(&wk[4 * n..5 * n]);
        wv[5 * n..6 * n].copy_from_slice(&wk[2 * n..3 * n]);
        assert_close(
            SWAP,
            "value_cache",
            &stream.clone_to_host(&dvc).unwrap(),
            &wv,
        );
        assert_close(SWAP, "key_cache", &stream.clone_to_host(&dkc).unwrap(), &wk);
        pl.check_pads(OP);
        ops += 2;
    }

    SeamReport { ops, ..pl.report }
}
