//! The ACL backend's kernel ops through the whole launch path, with no NPU: the backend loads
//! the host kernels library (`ascendc::HOST_KERNELS_LIB`, the Ascend C sources built with the
//! host implementation behind the `aclrtlaunch_*` stubs) through `ASCEND_KERNELS_LIB`, as it
//! loads the CANN build, and its launches run on the fake's streams against the fake's device
//! memory, and the fake serves the ACLNN operators. Results are compared with the Rust
//! reference; faults surface at the next synchronisation, naming the kernel.

mod common;

use common::{max_diff, up, values};

use std::sync::Once;

use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::prelude::*;
use ascend_hal::Error;
use ascend_kernels::{
    ascendc, reference, CacheShape, KernelOps, KvFloat, Matmul, PagedAttention, PrefillAttention,
    ReshapeAndCache, RmsNorm, RopeStyle, Rotary, SiluAndMul,
};
use half::f16;

/// Points the backend at the host kernels library; every test calls this first, so no other
/// thread reads the environment meanwhile.
fn stream() -> AclStream {
    static SET: Once = Once::new();
    SET.call_once(|| {
        let fake = common::fake_path();
        // SAFETY: see above; the tests of this binary all start here.
        unsafe {
            std::env::set_var("ASCEND_KERNELS_LIB", ascendc::HOST_KERNELS_LIB);
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &fake);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &fake);
        }
    });
    common::backend().device(0).unwrap().new_stream().unwrap()
}

/// f16 results differ from the f64-accumulating reference by the rounding of a few f16 steps;
/// f32 by accumulation order.
fn tolerance<T: KvFloat>() -> f32 {
    if std::mem::size_of::<T>() == 2 {
        8e-3
    } else {
        2e-5
    }
}

fn check_decode_step<T: KvFloat>(block_size: usize) {
    let s = stream();
    let cache = CacheShape {
        num_blocks: 6,
        block_size,
        num_kv_heads: 2,
        head_size: 64,
    };
    let (heads, seqs) = (6, 3);
    let lens = [1, block_size as i32 + 3, 2 * block_size as i32];
    let max_blocks = 2;
    let tables: Vec<i32> = vec![5, 0, 1, 3, 2, 4];

    // RMSNorm, then fused add + RMSNorm, over the hidden states.
    let norm = RmsNorm {
        num_tokens: seqs,
        hidden: heads * 64,
        eps: 1e-5,
    };
    let x = values::<T>(seqs * norm.hidden, 1);
    let w = values::<T>(norm.hidden, 2);
    let (dx, dw) = (up(&s, &x), up(&s, &w));
    let mut dn = DeviceBuffer::<AclBackend, T>::zeros(&s, x.len()).unwrap();
    AclBackend::rms_norm(&s, &norm, dn.view_mut(), dx.view(), dw.view()).unwrap();
    let mut want = vec![T::from_f32(0.0); x.len()];
    reference::rms_norm(&norm, &mut want, &x, &w).unwrap();
    assert!(max_diff(&s.clone_to_host(&dn).unwrap(), &want) < tolerance::<T>());

    let resid = values::<T>(x.len(), 3);
    let (mut dx2, mut dr) = (up(&s, &x), up(&s, &resid));
    AclBackend::fused_add_rms_norm(&s, &norm, dx2.view_mut(), dr.view_mut(), dw.view()).unwrap();
    let (mut wx, mut wr) = (x.clone(), resid.clone());
    reference::fused_add_rms_norm(&norm, &mut wx, &mut wr, &w).unwrap();
    assert!(max_diff(&s.clone_to_host(&dx2).unwrap(), &wx) < tolerance::<T>());
    assert!(max_diff(&s.clone_to_host(&dr).unwrap(), &wr) < tolerance::<T>());

    // RoPE on this step's queries and keys.
    let rope = Rotary {
        num_tokens: seqs,
        num_heads: heads,
        num_kv_heads: cache.num_kv_heads,
        head_size: 64,
        rotary_dim: 64,
        max_position: 4096,
        style: RopeStyle::Neox,
    };
    let cos_sin: Vec<f32> = (0..rope.max_position * 64)
        .map(|i| {
            let (pos, j) = ((i / 64) as f32, i % 64);
            let freq = 10000f32.powf(-((j % 32) as f32) / 32.0);
            if j < 32 {
                (pos * freq).cos()
            } else {
                (pos * freq).sin()
            }
        })
        .collect();
    let positions: Vec<i64> = lens.iter().map(|&l| l as i64 - 1).collect();
    let q = values::<T>(seqs * heads * 64, 4);
    let k = values::<T>(seqs * cache.num_kv_heads * 64, 5);
    let v = values::<T>(k.len(), 6);
    let (dpos, dcs) = (up(&s, &positions), up(&s, &cos_sin));
    let (mut dq, mut dk, dv) = (up(&s, &q), up(&s, &k), up(&s, &v));
    AclBackend::rotary_embedding(
        &s,
        &rope,
        dpos.view(),
        dq.view_mut(),
        dk.view_mut(),
        dcs.view(),
    )
    .unwrap();
    let (mut wq, mut wk) = (q.clone(), k.clone());
    reference::rotary_embedding(&rope, &positions, &mut wq, &mut wk, &cos_sin).unwrap();
    let (gq, gk) = (s.clone_to_host(&dq).unwrap(), s.clone_to_host(&dk).unwrap());
    assert!(max_diff(&gq, &wq) < tolerance::<T>());
    assert!(max_diff(&gk, &wk) < tolerance::<T>());

    // The caches hold earlier tokens; this step's K/V go to each sequence's last slot.
    let kc = values::<T>(cache.elements(), 7);
    let vc = values::<T>(cache.elements(), 8);
    let (mut dkc, mut dvc) = (up(&s, &kc), up(&s, &vc));
    let slots: Vec<i32> = (0..seqs)
        .map(|i| {
            let pos = lens[i] as usize - 1;
            tables[i * max_blocks + pos / block_size] * block_size as i32
                + (pos % block_size) as i32
        })
        .collect();
    let dslots = up(&s, &slots);
    let rc = ReshapeAndCache {
        num_tokens: seqs,
        cache,
    };
    AclBackend::reshape_and_cache(
        &s,
        &rc,
        dk.view(),
        dv.view(),
        dkc.view_mut(),
        dvc.view_mut(),
        dslots.view(),
    )
    .unwrap();
    let (mut wkc, mut wvc) = (kc.clone(), vc.clone());
    reference::reshape_and_cache(&rc, &gk, &v, &mut wkc, &mut wvc, &slots).unwrap();
    // Copies of values: exact.
    assert_eq!(max_diff(&s.clone_to_host(&dkc).unwrap(), &wkc), 0.0);
    assert_eq!(max_diff(&s.clone_to_host(&dvc).unwrap(), &wvc), 0.0);

    // Decode attention over the updated caches.
    let pa = PagedAttention {
        num_seqs: seqs,
        num_heads: heads,
        cache,
        max_blocks_per_seq: max_blocks,
        scale: 0.125,
        sliding_window: None,
    };
    let (dt, dl) = (up(&s, &tables), up(&s, &lens));
    let mut dout = DeviceBuffer::<AclBackend, T>::zeros(&s, q.len()).unwrap();
    AclBackend::paged_attention(
        &s,
        &pa,
        dout.view_mut(),
        dq.view(),
        dkc.view(),
        dvc.view(),
        dt.view(),
        dl.view(),
        &lens,
    )
    .unwrap();
    let mut wout = vec![T::from_f32(0.0); q.len()];
    reference::paged_attention(&pa, &mut wout, &gq, &wkc, &wvc, &tables, &lens).unwrap();
    let got = s.clone_to_host(&dout).unwrap();
    assert!(
        max_diff(&got, &wout) < tolerance::<T>(),
        "attention differs by {}",
        max_diff(&got, &wout)
    );
    s.synchronize().unwrap();
}

#[test]
fn a_decode_step_runs_on_the_fake_and_matches_the_reference() {
    for block_size in [16, 128] {
        check_decode_step::<f32>(block_size);
        check_decode_step::<f16>(block_size);
    }
}

/// Holds a fake stream busy: a host kernel that waits until released (through the fake's own
/// launch entry, as the host kernels library launches).
struct Hold(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Hold {
    fn new(s: &AclStream) -> Hold {
        type Kernel = unsafe extern "C" fn(
            *mut std::ffi::c_void,
            *const *mut std::ffi::c_void,
            *const usize,
            usize,
            *mut std::ffi::c_char,
            usize,
        ) -> i32;
        type Launch = unsafe extern "C" fn(
            *mut std::ffi::c_void,
            *const std::ffi::c_char,
            *const *mut std::ffi::c_void,
            usize,
            Kernel,
            *mut std::ffi::c_void,
            Option<unsafe extern "C" fn(*mut std::ffi::c_void)>,
        ) -> i32;
        unsafe extern "C" fn wait(
            ctx: *mut std::ffi::c_void,
            _: *const *mut std::ffi::c_void,
            _: *const usize,
            _: usize,
            _: *mut std::ffi::c_char,
            _: usize,
        ) -> i32 {
            // SAFETY: `ctx` is the `AtomicBool` leaked below, never freed.
            let open = unsafe { &*ctx.cast::<std::sync::atomic::AtomicBool>() };
            while !open.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            0
        }
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ctx = std::sync::Arc::into_raw(std::sync::Arc::clone(&open)) as *mut std::ffi::c_void;
        let lib = common::library(&common::fake_path());
        // SAFETY: the fake exports `aclfakeLaunchHostKernel` with this prototype; `wait` only
        // reads the flag, which the leaked `Arc` count keeps alive.
        unsafe {
            let launch: libloading::Symbol<'_, Launch> =
                lib.get(b"aclfakeLaunchHostKernel").unwrap();
            s.launch_raw("hold", |raw| {
                launch(raw, c"hold".as_ptr(), std::ptr::null(), 0, wait, ctx, None) as u32
            })
            .unwrap();
        }
        Hold(open)
    }

    fn release(self) {}
}

impl Drop for Hold {
    /// Also on a panic, so a failing test does not leave the stream's worker waiting forever.
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[test]
fn launches_run_in_stream_order_with_copies() {
    let s = stream();
    let p = RmsNorm {
        num_tokens: 4,
        hidden: 128,
        eps: 1e-6,
    };
    let x = values::<f32>(512, 9);
    let w = values::<f32>(128, 10);
    let (mut dx, dw) = (
        DeviceBuffer::<AclBackend, f32>::zeros(&s, 512).unwrap(),
        up(&s, &w),
    );
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&s, 512).unwrap();
    // Held stream: the upload, the kernel and the download queue up behind the hold, and run
    // in that order once it is released.
    let hold = Hold::new(&s);
    let staged = PinnedBuffer::<AclBackend, f32>::from_slice(&s.device(), &x).unwrap();
    s.copy_h2d(&staged, &mut dx).unwrap();
    AclBackend::rms_norm(&s, &p, out.view_mut(), dx.view(), dw.view()).unwrap();
    let mut host = PinnedBuffer::<AclBackend, f32>::new(&s.device(), 512).unwrap();
    s.copy_d2h(&out, &mut host).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    hold.release();
    s.synchronize().unwrap();
    let mut want = vec![0.0; 512];
    reference::rms_norm(&p, &mut want, &x, &w).unwrap();
    assert!(max_diff(host.as_slice().unwrap(), &want) < 2e-5);
}

#[test]
fn a_device_side_index_out_of_range_is_reported_at_the_next_sync() {
    let s = stream();
    let cache = CacheShape {
        num_blocks: 2,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 64,
    };
    let rc = ReshapeAndCache {
        num_tokens: 2,
        cache,
    };
    let k = up(&s, &values::<f16>(128, 11));
    let mut kc = DeviceBuffer::<AclBackend, f16>::zeros(&s, cache.elements()).unwrap();
    let mut vc = DeviceBuffer::<AclBackend, f16>::zeros(&s, cache.elements()).unwrap();
    // Slot 32 is one past the cache: refused on the device, the other token written.
    let slots = up(&s, &[3i32, 32]);
    AclBackend::reshape_and_cache(
        &s,
        &rc,
        k.view(),
        k.view(),
        kc.view_mut(),
        vc.view_mut(),
        slots.view(),
    )
    .unwrap();
    let e = s.synchronize().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { op: "reshape_and_cache", message } if message.contains('1')),
        "{e}"
    );
    let written = s.clone_to_host(&kc).unwrap();
    assert_eq!(written[3 * 64..4 * 64], s.clone_to_host(&k).unwrap()[..64]);
    assert!(written[..3 * 64].iter().all(|v| v.to_f32() == 0.0));
    s.synchronize().unwrap();
}

type RmsNormStub = unsafe extern "C" fn(
    u32,
    *mut std::ffi::c_void,
    *mut std::ffi::c_void,
    *mut std::ffi::c_void,
    *mut std::ffi::c_void,
    *mut std::ffi::c_void,
    *const ascendc::tiling::RmsNormTiling,
) -> u32;

/// Launches `aclrtlaunch_rms_norm_float` directly with the given addresses and row count.
fn raw_rms_norm(s: &AclStream, x: u64, out: u64, weight: u64, rows: u32) -> Result<(), Error> {
    // SAFETY: the host kernels library's initialisers do nothing; it stays loaded (leaked).
    let lib = Box::leak(Box::new(
        unsafe { libloading::Library::new(ascendc::HOST_KERNELS_LIB) }.unwrap(),
    ));
    // SAFETY: the stub's prototype (fake_launch.cpp).
    let stub: RmsNormStub = *unsafe { lib.get(b"aclrtlaunch_rms_norm_float\0") }.unwrap();
    let t = ascendc::tiling::RmsNormTiling {
        num_tokens: rows,
        hidden: 64,
        eps: 1e-6,
        fused: 0,
        buffers: 2,
    };
    let p = |a: u64| a as usize as *mut std::ffi::c_void;
    // SAFETY: the stub queues on `raw`; the addresses are device addresses of the fake, and
    // the fake resolves them when the kernel runs (faulting on what is not live memory).
    unsafe {
        s.launch_raw("rms_norm", |raw| {
            stub(1, raw, p(x), std::ptr::null_mut(), p(weight), p(out), &t)
        })
    }
}

#[test]
fn a_kernel_reaching_past_its_memory_faults_at_the_next_sync() {
    let s = stream();
    let x = up(&s, &values::<f32>(128, 12));
    let w = up(&s, &values::<f32>(64, 13));
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&s, 128).unwrap();
    let (px, pw, po) = (
        x.view().device_ptr().0,
        w.view().device_ptr().0,
        out.view_mut().device_ptr().0,
    );
    // Two rows fit; 64 rows reach far past the 512-byte allocations.
    raw_rms_norm(&s, px, po, pw, 2).unwrap();
    s.synchronize().unwrap();
    raw_rms_norm(&s, px, po, pw, 64).unwrap();
    let e = s.synchronize().unwrap_err();
    assert_eq!(e.acl_code(), Some(507_015), "{e}");
    let text = e.to_string();
    for needle in [
        "ACL_ERROR_RT_AICORE_EXCEPTION",
        "rms_norm",
        "SetGlobalBuffer",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    // The stream is usable again, and the failed launch wrote nothing.
    raw_rms_norm(&s, px, po, pw, 2).unwrap();
    s.synchronize().unwrap();

    // An address that is no live memory (freed) faults the same way.
    let gone = DeviceBuffer::<AclBackend, f32>::zeros(&s, 128).unwrap();
    let pg = gone.view().device_ptr().0;
    drop(gone);
    raw_rms_norm(&s, pg, po, pw, 1).unwrap();
    let e = s.synchronize().unwrap_err();
    assert_eq!(e.acl_code(), Some(507_015), "{e}");
    assert!(e.to_string().contains("not inside live memory"), "{e}");
}

#[test]
fn every_op_is_available_with_the_host_kernels_and_the_fake_aclnn() {
    let _s = stream();
    assert_eq!(AclBackend::kernels_available(), Ok(()));
}

fn check_remaining_ops<T: KvFloat>(block_size: usize) {
    let s = stream();
    let tol = tolerance::<T>();
    // Matmul (ACLNN) of a linear layer's [n, k] weight.
    let mm = Matmul { m: 3, n: 40, k: 64 };
    let (x, w) = (values::<T>(3 * 64, 20), values::<T>(40 * 64, 21));
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, 3 * 40).unwrap();
    AclBackend::matmul(
        &s,
        &mm,
        out.view_mut(),
        up(&s, &x).view(),
        up(&s, &w).view(),
    )
    .unwrap();
    let mut want = vec![T::from_f32(0.0); 3 * 40];
    reference::matmul(&mm, &mut want, &x, &w).unwrap();
    assert!(max_diff(&s.clone_to_host(&out).unwrap(), &want) < 4.0 * tol);

    // SiLU-and-mul (ACLNN SwiGlu).
    let sm = SiluAndMul {
        num_tokens: 3,
        d: 40,
    };
    let g = values::<T>(3 * 80, 22);
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, 3 * 40).unwrap();
    AclBackend::silu_and_mul(&s, &sm, out.view_mut(), up(&s, &g).view()).unwrap();
    let mut want = vec![T::from_f32(0.0); 3 * 40];
    reference::silu_and_mul(&sm, &mut want, &g).unwrap();
    assert!(max_diff(&s.clone_to_host(&out).unwrap(), &want) < tol);

    // Chunked prefill attention over a paged context (with its window and one-token chunk, the
    // Ascend C kernel's: CANN's fused operator ignores a window on a one-token query): the last 5 tokens of a
    // 2-block-and-a-bit context, a whole 3-token prompt, and one decode token.
    let cache = CacheShape {
        num_blocks: 8,
        block_size,
        num_kv_heads: 2,
        head_size: 64,
    };
    let lens = [2 * block_size as i32 + 3, 3, 9];
    let starts = [0i32, 5, 8, 9];
    let max_blocks = 3;
    let tables: Vec<i32> = vec![7, 2, 5, 0, 0, 0, 3, 0, 0];
    let p = PrefillAttention {
        num_seqs: 3,
        num_tokens: 9,
        num_heads: 6,
        cache,
        max_blocks_per_seq: max_blocks,
        scale: 0.125,
        sliding_window: Some(block_size + 2),
    };
    let q = values::<T>(9 * 6 * 64, 23);
    let (kc, vc) = (
        values::<T>(cache.elements(), 24),
        values::<T>(cache.elements(), 25),
    );
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, q.len()).unwrap();
    let (dkc, dvc) = (up(&s, &kc), up(&s, &vc));
    AclBackend::paged_prefill_attention(
        &s,
        &p,
        out.view_mut(),
        up(&s, &q).view(),
        dkc.view(),
        dvc.view(),
        up(&s, &tables).view(),
        up(&s, &starts).view(),
        up(&s, &lens).view(),
        &starts,
        &lens,
    )
    .unwrap();
    let mut want = vec![T::from_f32(0.0); q.len()];
    reference::paged_prefill_attention(&p, &mut want, &q, &kc, &vc, &tables, &starts, &lens)
        .unwrap();
    let got = s.clone_to_host(&out).unwrap();
    assert!(
        max_diff(&got, &want) < tol,
        "prefill differs by {}",
        max_diff(&got, &want)
    );

    // Copy-on-write with a chain (split into waves on the host), bit-exact.
    let pairs = [(7u32, 1u32), (1, 4), (2, 6)];
    let (mut dk, mut dv) = (up(&s, &kc), up(&s, &vc));
    AclBackend::copy_blocks(&s, &cache, dk.view_mut(), dv.view_mut(), &pairs).unwrap();
    let (mut wk, mut wv) = (kc.clone(), vc.clone());
    reference::copy_blocks(&cache, &mut wk, &mut wv, &pairs).unwrap();
    assert_eq!(max_diff(&s.clone_to_host(&dk).unwrap(), &wk), 0.0);
    assert_eq!(max_diff(&s.clone_to_host(&dv).unwrap(), &wv), 0.0);
    // A bad pair is refused before anything is queued.
    let e =
        AclBackend::copy_blocks(&s, &cache, dk.view_mut(), dv.view_mut(), &[(1, 8)]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "copy_blocks",
                ..
            }
        ),
        "{e}"
    );
    s.synchronize().unwrap();
}

#[test]
fn matmul_silu_prefill_and_block_copies_match_the_reference() {
    for block_size in [16, 128] {
        check_remaining_ops::<f32>(block_size);
        check_remaining_ops::<f16>(block_size);
    }
}

#[test]
fn providers_can_be_switched_per_op() {
    use ascend_kernels::acl::providers::{self, AclOp, Provider};
    let s = stream();
    assert_eq!(providers::provider(AclOp::Matmul), Provider::Aclnn);
    assert_eq!(
        providers::provider(AclOp::FusedAddRmsNorm),
        Provider::AscendC
    );
    let e = providers::set_provider(AclOp::Matmul, Provider::AscendC).unwrap_err();
    assert!(
        e.to_string()
            .contains("matmul has no AscendC implementation"),
        "{e}"
    );

    let p = RmsNorm {
        num_tokens: 4,
        hidden: 192,
        eps: 1e-6,
    };
    let (x, w, r) = (
        values::<f16>(4 * 192, 30),
        values::<f16>(192, 31),
        values::<f16>(4 * 192, 32),
    );
    let mut want = vec![f16::ZERO; x.len()];
    reference::rms_norm(&p, &mut want, &x, &w).unwrap();
    let (mut wx, mut wr) = (x.clone(), r.clone());
    reference::fused_add_rms_norm(&p, &mut wx, &mut wr, &w).unwrap();
    // Each op under each of its providers; the other tests of this binary pass under either.
    for choice in [Provider::AscendC, Provider::Aclnn] {
        providers::set_provider(AclOp::RmsNorm, choice).unwrap();
        providers::set_provider(AclOp::FusedAddRmsNorm, choice).unwrap();
        let mut out = DeviceBuffer::<AclBackend, f16>::zeros(&s, x.len()).unwrap();
        AclBackend::rms_norm(&s, &p, out.view_mut(), up(&s, &x).view(), up(&s, &w).view()).unwrap();
        assert!(
            max_diff(&s.clone_to_host(&out).unwrap(), &want) < 8e-3,
            "{choice:?}"
        );
        let (mut dx, mut dr) = (up(&s, &x), up(&s, &r));
        AclBackend::fused_add_rms_norm(&s, &p, dx.view_mut(), dr.view_mut(), up(&s, &w).view())
            .unwrap();
        assert!(
            max_diff(&s.clone_to_host(&dx).unwrap(), &wx) < 8e-3,
            "{choice:?}"
        );
        assert!(
            max_diff(&s.clone_to_host(&dr).unwrap(), &wr) < 8e-3,
            "{choice:?}"
        );
    }
    providers::reset_providers();
    assert_eq!(providers::provider(AclOp::RmsNorm), Provider::Aclnn);
}

#[test]
fn bad_host_kernel_launches_are_refused_with_nothing_queued() {
    type Launch = unsafe extern "C" fn(
        *mut std::ffi::c_void,
        *const std::ffi::c_char,
        *const *mut std::ffi::c_void,
        usize,
        Option<unsafe extern "C" fn()>,
        *mut std::ffi::c_void,
        Option<unsafe extern "C" fn(*mut std::ffi::c_void)>,
    ) -> i32;
    unsafe extern "C" fn never() {}
    let s = stream();
    let lib = common::library(&common::fake_path());
    let args = [std::ptr::null_mut::<std::ffi::c_void>(); 2];
    // SAFETY: the fake's prototype (the kernel pointer's type does not matter to the checks,
    // which refuse every call below before using it); nothing is dereferenced past `args`.
    unsafe {
        let launch: libloading::Symbol<'_, Launch> = lib.get(b"aclfakeLaunchHostKernel").unwrap();
        let mut codes = Vec::new();
        s.launch_raw("probe", |raw| {
            codes.push(launch(
                raw,
                std::ptr::null(),
                args.as_ptr(),
                2,
                Some(never),
                std::ptr::null_mut(),
                None,
            ));
            codes.push(launch(
                raw,
                c"k".as_ptr(),
                std::ptr::null(),
                2,
                Some(never),
                std::ptr::null_mut(),
                None,
            ));
            codes.push(launch(
                raw,
                c"k".as_ptr(),
                args.as_ptr(),
                1000,
                Some(never),
                std::ptr::null_mut(),
                None,
            ));
            codes.push(launch(
                raw,
                c"k".as_ptr(),
                args.as_ptr(),
                2,
                None,
                std::ptr::null_mut(),
                None,
            ));
            0
        })
        .unwrap();
        assert_eq!(codes, [100_000; 4]);
    }
    s.synchronize().unwrap();
}
