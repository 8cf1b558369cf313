//! The kernels through the CPU backend's streams (`KernelOps`): stream order, device memory
//! (including caches from expandable segments that span mapped chunks), errors, swaps.

use ascend_hal::alloc::CachingAllocator;
use ascend_hal::prelude::*;
use ascend_hal::Error;
use ascend_kernels::{
    reference, swap_in, swap_out, CacheShape, KernelOps, KvFloat, PagedAttention, ReshapeAndCache,
};
use hal_mock::{CpuBackend, CpuDevice, CpuStream, DeviceProfile};
use half::f16;

type Buf<T> = DeviceBuffer<CpuBackend, T>;

fn setup() -> (CpuBackend, CpuDevice, CpuStream) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 512 << 20))
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    (backend, device, stream)
}

fn values<T: KvFloat>(n: usize, seed: u32) -> Vec<T> {
    (0..n)
        .map(|i| {
            T::from_f32(
                ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5,
            )
        })
        .collect()
}

#[test]
fn cache_write_then_decode_attention_in_stream_order() {
    let (_b, device, stream) = setup();
    // A cache from expandable segments, large enough to span several mapped 2 MiB chunks.
    let alloc =
        CachingAllocator::<CpuBackend>::new(&device, "expandable_segments:True".parse().unwrap())
            .unwrap();
    let c = CacheShape {
        num_blocks: 320,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 128,
    };
    let mut kc = DeviceBuffer::<CpuBackend, f16>::alloc_in(&alloc, &stream, c.elements()).unwrap();
    let mut vc = DeviceBuffer::<CpuBackend, f16>::alloc_in(&alloc, &stream, c.elements()).unwrap();
    assert!(c.elements() * 2 > 2 << 20, "the cache must span chunks");
    stream.memset(&mut kc, 0).unwrap();
    stream.memset(&mut vc, 0).unwrap();

    // Two sequences of 40 and 23 tokens, written through reshape_and_cache at shuffled slots.
    let lens = [40usize, 23];
    let tables: Vec<i32> = vec![9, 3, 50, 0, 17, 33, 0, 0];
    let mut slots = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        for t in 0..len {
            slots.push(tables[s * 4 + t / 16] * 16 + (t % 16) as i32);
        }
    }
    let n = slots.len();
    let key = values::<f16>(n * c.token_stride(), 1);
    let value = values::<f16>(n * c.token_stride(), 2);
    let (dk, dv) = (
        Buf::from_slice(&stream, &key).unwrap(),
        Buf::from_slice(&stream, &value).unwrap(),
    );
    let dslots = Buf::from_slice(&stream, &slots).unwrap();
    CpuBackend::reshape_and_cache(
        &stream,
        &ReshapeAndCache {
            num_tokens: n,
            cache: c,
        },
        dk.view(),
        dv.view(),
        kc.view_mut(),
        vc.view_mut(),
        dslots.view(),
    )
    .unwrap();

    let p = PagedAttention {
        num_seqs: 2,
        num_heads: 8,
        cache: c,
        max_blocks_per_seq: 4,
        scale: 0.088,
        sliding_window: None,
    };
    let q = values::<f16>(2 * 8 * 128, 3);
    let dq = Buf::from_slice(&stream, &q).unwrap();
    let dt = Buf::from_slice(&stream, &tables).unwrap();
    let dl = Buf::from_slice(&stream, &[40i32, 23]).unwrap();
    let mut out = Buf::<f16>::alloc(&device, q.len()).unwrap();
    // Queued behind the cache write on the same stream; no synchronisation in between.
    CpuBackend::paged_attention(
        &stream,
        &p,
        out.view_mut(),
        dq.view(),
        kc.view(),
        vc.view(),
        dt.view(),
        dl.view(),
        &[40, 23],
    )
    .unwrap();
    let got = stream.clone_to_host(&out).unwrap();

    // The reference, on host copies built the same way.
    let (mut hk, mut hv) = (vec![f16::ZERO; c.elements()], vec![f16::ZERO; c.elements()]);
    reference::reshape_and_cache(
        &ReshapeAndCache {
            num_tokens: n,
            cache: c,
        },
        &key,
        &value,
        &mut hk,
        &mut hv,
        &slots,
    )
    .unwrap();
    assert_eq!(stream.clone_to_host(&kc).unwrap(), hk, "cache contents");
    let mut want = vec![f16::ZERO; q.len()];
    reference::paged_attention(&p, &mut want, &q, &hk, &hv, &tables, &[40, 23]).unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!(
            ascend_kernels::close(ascend_hal::DType::F16, a.to_f32(), b.to_f32()),
            "{a} vs {b}"
        );
    }
}

#[test]
fn shape_errors_at_the_call_and_kernel_errors_at_synchronize() {
    let (backend, device, stream) = setup();
    let c = CacheShape {
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 64,
    };
    let mut kc = Buf::<f32>::zeros(&stream, c.elements()).unwrap();
    let mut vc = Buf::<f32>::zeros(&stream, c.elements()).unwrap();
    let key = Buf::<f32>::zeros(&stream, 2 * 64).unwrap();
    let bad_slots = Buf::from_slice(&stream, &[1i32, 64]).unwrap();
    let short = Buf::<f32>::zeros(&stream, 100).unwrap();
    let p = ReshapeAndCache {
        num_tokens: 2,
        cache: c,
    };

    // A shape mismatch is refused at the call, naming the argument.
    let err = CpuBackend::reshape_and_cache(
        &stream,
        &p,
        short.view(),
        key.view(),
        kc.view_mut(),
        vc.view_mut(),
        bad_slots.view(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "reshape_and_cache",
                arg: "key",
                ..
            }
        ),
        "{err:?}"
    );

    // A bad slot is found by the kernel on the stream: reported at synchronize, nothing written.
    let ones = Buf::from_slice(&stream, &[1f32; 128]).unwrap();
    CpuBackend::reshape_and_cache(
        &stream,
        &p,
        ones.view(),
        ones.view(),
        kc.view_mut(),
        vc.view_mut(),
        bad_slots.view(),
    )
    .unwrap();
    let err = stream.synchronize().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::StreamOperation {
                op: "reshape_and_cache",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("slot_mapping[1] = 64 is outside the cache's 64 slots"),
        "{err}"
    );
    assert!(stream.clone_to_host(&kc).unwrap().iter().all(|&x| x == 0.0));

    // Arguments on another device are refused.
    let other = backend.device(1).unwrap();
    let elsewhere = Buf::<f32>::zeros(&other.new_stream().unwrap(), 2 * 64).unwrap();
    let err = CpuBackend::reshape_and_cache(
        &stream,
        &p,
        elsewhere.view(),
        ones.view(),
        kc.view_mut(),
        vc.view_mut(),
        bad_slots.view(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::WrongDevice { what: "key", .. }),
        "{err:?}"
    );

    drop(device);
}

#[test]
fn copy_blocks_and_swaps_move_whole_blocks() {
    let (_b, device, stream) = setup();
    let c = CacheShape {
        num_blocks: 8,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
    };
    let n = c.block_stride();
    let init_k = values::<f32>(c.elements(), 5);
    let init_v = values::<f32>(c.elements(), 6);
    let mut kc = Buf::from_slice(&stream, &init_k).unwrap();
    let mut vc = Buf::from_slice(&stream, &init_v).unwrap();

    // Copy-on-write copies.
    CpuBackend::copy_blocks(&stream, &c, kc.view_mut(), vc.view_mut(), &[(1, 6), (2, 7)]).unwrap();
    let (mut want_k, mut want_v) = (init_k.clone(), init_v.clone());
    reference::copy_blocks(&c, &mut want_k, &mut want_v, &[(1, 6), (2, 7)]).unwrap();
    assert_eq!(stream.clone_to_host(&kc).unwrap(), want_k);
    assert_eq!(stream.clone_to_host(&vc).unwrap(), want_v);
    let err =
        CpuBackend::copy_blocks(&stream, &c, kc.view_mut(), vc.view_mut(), &[(1, 8)]).unwrap_err();
    assert!(err.to_string().contains("pair 1 -> 8"), "{err}");

    // Swap blocks 3 and 5 out to host blocks 0 and 1, wipe the device, swap them back in.
    let mut host = PinnedBuffer::<CpuBackend, f32>::new(&device, 2 * n).unwrap();
    swap_out(&stream, &c, kc.view(), &mut host, &[(3, 0), (5, 1)]).unwrap();
    stream.memset(&mut kc, 0).unwrap();
    swap_in(&stream, &c, &host, kc.view_mut(), &[(0, 3), (1, 5)]).unwrap();
    let back = stream.clone_to_host(&kc).unwrap();
    assert_eq!(&back[3 * n..4 * n], &want_k[3 * n..4 * n]);
    assert_eq!(&back[5 * n..6 * n], &want_k[5 * n..6 * n]);
    assert!(
        back[..3 * n].iter().all(|&x| x == 0.0),
        "other blocks were touched"
    );
    assert_eq!(&host.as_slice().unwrap()[..n], &want_k[3 * n..4 * n]);
    let err = swap_out(&stream, &c, kc.view(), &mut host, &[(3, 2)]).unwrap_err();
    assert!(err.to_string().contains("host block 2"), "{err}");
}

/// Zero-sized dimensions panicked inside rayon (RMSNorm hidden 0, SiLU d 0, RoPE 0 heads);
/// a sliding window of 0 returned zeros; a slot below -1 was an error although every negative
/// slot means "skip" (DESIGN, vLLM, the Ascend C kernel). Each is now refused or honoured at the
/// call, with nothing queued.
#[test]
fn degenerate_shapes_are_refused_and_negative_slots_skip() {
    use ascend_kernels::{Matmul, RmsNorm, RopeStyle, Rotary, SiluAndMul};
    let (_b, _device, stream) = setup();
    let mut out = Buf::<f32>::zeros(&stream, 8).unwrap();
    let x = Buf::<f32>::zeros(&stream, 8).unwrap();
    let w = Buf::<f32>::zeros(&stream, 8).unwrap();
    let positive = |e: Error, what: &str| {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&format!("{what} must be positive")),
            "{e}"
        );
    };
    let norm = RmsNorm {
        num_tokens: 4,
        hidden: 0,
        eps: 1e-6,
    };
    positive(
        CpuBackend::rms_norm::<f32>(&stream, &norm, out.view_mut(), x.view(), w.view())
            .unwrap_err(),
        "hidden",
    );
    let silu = SiluAndMul {
        num_tokens: 4,
        d: 0,
    };
    positive(
        CpuBackend::silu_and_mul::<f32>(&stream, &silu, out.view_mut(), x.view()).unwrap_err(),
        "d",
    );
    let mm = Matmul { m: 2, n: 0, k: 4 };
    positive(
        CpuBackend::matmul::<f32>(&stream, &mm, out.view_mut(), x.view(), w.view()).unwrap_err(),
        "n",
    );
    let rope = Rotary {
        num_tokens: 1,
        num_heads: 0,
        num_kv_heads: 1,
        head_size: 8,
        rotary_dim: 8,
        max_position: 1,
        style: RopeStyle::Neox,
    };
    let pos = Buf::<i64>::zeros(&stream, 1).unwrap();
    let mut k = Buf::<f32>::zeros(&stream, 8).unwrap();
    let mut q = Buf::<f32>::zeros(&stream, 0).unwrap();
    positive(
        CpuBackend::rotary_embedding::<f32>(
            &stream,
            &rope,
            pos.view(),
            q.view_mut(),
            k.view_mut(),
            x.view(),
        )
        .unwrap_err(),
        "num_heads",
    );
    // Shapes whose element counts overflow are a shape error, not a panic.
    let huge = RmsNorm {
        num_tokens: usize::MAX,
        hidden: 2,
        eps: 1e-6,
    };
    let e = CpuBackend::rms_norm::<f32>(&stream, &huge, out.view_mut(), x.view(), w.view())
        .unwrap_err();
    assert!(
        e.to_string().contains("more elements than usize counts"),
        "{e}"
    );

    // Sliding window 0.
    let c = CacheShape {
        num_blocks: 2,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 64,
    };
    let (kc, vc) = (
        Buf::<f32>::zeros(&stream, c.elements()).unwrap(),
        Buf::<f32>::zeros(&stream, c.elements()).unwrap(),
    );
    let attn = PagedAttention {
        num_seqs: 1,
        num_heads: 1,
        cache: c,
        max_blocks_per_seq: 1,
        scale: 1.0,
        sliding_window: Some(0),
    };
    let (qa, mut oa) = (
        Buf::<f32>::zeros(&stream, 64).unwrap(),
        Buf::<f32>::zeros(&stream, 64).unwrap(),
    );
    let (table, lens) = (
        Buf::<i32>::from_slice(&stream, &[1]).unwrap(),
        Buf::<i32>::from_slice(&stream, &[5]).unwrap(),
    );
    let e = CpuBackend::paged_attention::<f32>(
        &stream,
        &attn,
        oa.view_mut(),
        qa.view(),
        kc.view(),
        vc.view(),
        table.view(),
        lens.view(),
        &[5],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("sliding_window must be at least 1"),
        "{e}"
    );

    // Slots -1 and -7 both skip; 3 is written.
    let p = ReshapeAndCache {
        num_tokens: 3,
        cache: c,
    };
    let rows: Vec<f32> = (0..3 * 64).map(|i| i as f32 + 1.0).collect();
    let (key, value) = (
        Buf::<f32>::from_slice(&stream, &rows).unwrap(),
        Buf::<f32>::from_slice(&stream, &rows).unwrap(),
    );
    let (mut kc, mut vc) = (kc, vc);
    let slots = Buf::<i32>::from_slice(&stream, &[-1, -7, 3]).unwrap();
    CpuBackend::reshape_and_cache::<f32>(
        &stream,
        &p,
        key.view(),
        value.view(),
        kc.view_mut(),
        vc.view_mut(),
        slots.view(),
    )
    .unwrap();
    let cache = stream.clone_to_host(&kc).unwrap();
    assert_eq!(&cache[3 * 64..4 * 64], &rows[2 * 64..]);
    assert_eq!(
        cache.iter().filter(|&&v| v != 0.0).count(),
        64,
        "only slot 3 was written"
    );
}

/// An id outside the embedding table fails the stream; the synchronisation names the op and
/// the id (the CPU backend checks device-side ids when it runs the kernel).
#[test]
fn an_embedding_id_outside_the_table_fails_the_stream_by_name() {
    use ascend_kernels::Embedding;
    let backend = hal_mock::CpuBackend::new();
    let stream = backend.device(0).unwrap().new_stream().unwrap();
    let table = DeviceBuffer::<hal_mock::CpuBackend, f32>::zeros(&stream, 8 * 4).unwrap();
    let ids = DeviceBuffer::<hal_mock::CpuBackend, i32>::from_slice(&stream, &[1, -3]).unwrap();
    let mut rows = DeviceBuffer::<hal_mock::CpuBackend, f32>::zeros(&stream, 2 * 4).unwrap();
    let p = Embedding {
        num_tokens: 2,
        vocab: 8,
        hidden: 4,
    };
    hal_mock::CpuBackend::embedding(&stream, &p, rows.view_mut(), table.view(), ids.view())
        .unwrap();
    let e = stream.synchronize().unwrap_err().to_string();
    assert!(
        e.contains("embedding") && e.contains("ids[1] = -3 is outside"),
        "{e}"
    );
}

/// `quant_matmul` on the CPU backend's stream equals the kernel run on the host; a non-finite
/// activation fails the stream at synchronize, naming the op and the element.
#[test]
fn quant_matmul_runs_on_the_stream_and_names_a_bad_activation() {
    use ascend_kernels::quant::quantize;
    use ascend_kernels::{cpu, QuantFormat, QuantMatmul};
    let (_b, _d, stream) = setup();
    let (m, n, k) = (3, 5, 9 * 32); // one whole interleaved group of 8 blocks, and one more
    let x: Vec<f32> = values(m * k, 7);
    let wf: Vec<f32> = values(n * k, 9);
    for format in QuantFormat::ALL {
        let mut w = Vec::new();
        quantize(format, &wf, &mut w).unwrap();
        let p = QuantMatmul { m, n, k, format };
        let mut want = vec![0f32; m * n];
        cpu::quant_matmul(&p, &mut want, &x, &w).unwrap();
        // The backend's layout: the same bytes, rearranged, and the same bits out.
        let packed = CpuBackend::pack_quant_weight::<f32>(format, n, k, &w).unwrap();
        assert_eq!(packed.len(), w.len(), "{format}");
        let (xd, wd) = (
            Buf::<f32>::from_slice(&stream, &x).unwrap(),
            Buf::<u8>::from_slice(&stream, &packed).unwrap(),
        );
        let mut out = Buf::<f32>::zeros(&stream, m * n).unwrap();
        CpuBackend::quant_matmul(&stream, &p, out.view_mut(), xd.view(), wd.view()).unwrap();
        assert_eq!(stream.clone_to_host(&out).unwrap(), want, "{format}");
        let e = CpuBackend::quant_matmul(
            &stream,
            &p,
            out.view_mut(),
            xd.view(),
            wd.slice(0..1).unwrap(),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(e, Error::ShapeMismatch { arg: "weight", .. }),
            "{e}"
        );
        let e = CpuBackend::pack_quant_weight::<f32>(format, n, k, &w[1..]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    op: "pack_quant_weight",
                    ..
                }
            ) && e.to_string().contains(&format!(
                "{} bytes are not {n} rows of k = {k} values of {format}",
                w.len() - 1
            )),
            "{e}"
        );
    }
    let mut bad = x.clone();
    bad[k + 3] = f32::NAN;
    let (xd, mut wb) = (Buf::<f32>::from_slice(&stream, &bad).unwrap(), Vec::new());
    quantize(QuantFormat::Q8_0, &wf, &mut wb).unwrap();
    let wb = CpuBackend::pack_quant_weight::<f32>(QuantFormat::Q8_0, n, k, &wb).unwrap();
    let wd = Buf::<u8>::from_slice(&stream, &wb).unwrap();
    let mut out = Buf::<f32>::zeros(&stream, m * n).unwrap();
    let p = QuantMatmul {
        m,
        n,
        k,
        format: QuantFormat::Q8_0,
    };
    CpuBackend::quant_matmul(&stream, &p, out.view_mut(), xd.view(), wd.view()).unwrap();
    let e = stream.synchronize().unwrap_err().to_string();
    assert!(
        e.contains("quant_matmul") && e.contains("x[1, 3] = NaN"),
        "{e}"
    );
}
