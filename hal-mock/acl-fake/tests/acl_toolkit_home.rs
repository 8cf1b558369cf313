//! One variable is enough: with the fake laid out as a toolkit (`ascendcl_fake::toolkit`) and
//! `ASCEND_TOOLKIT_HOME` pointing at it, the ACL backend's loaders find the runtime, the ACLNN
//! libraries, HCCL and the Ascend C kernels library with no other setting, as on an NPU
//! machine after `source set_env.sh`.

use ascend_hal::acl::AclBackend;
use ascend_hal::comm::{CollectiveBackend, CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use ascend_kernels::{ascendc, reference, CacheShape, KernelOps, ReshapeAndCache, RmsNorm};

#[test]
fn ascend_toolkit_home_alone_points_every_loader_at_the_fake() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("acl-fake-toolkit");
    let fake = ascendcl_fake::library_path().expect("the fake is built with this crate's tests");
    let home = ascendcl_fake::toolkit::install(
        &dir,
        &fake,
        Some(std::path::Path::new(ascendc::HOST_KERNELS_LIB)),
    )
    .unwrap();
    // SAFETY: this test binary has one test, which sets the environment before anything loads.
    unsafe {
        for v in [
            "ASCEND_HAL_ACL_LIB",
            "ASCEND_HAL_NNOPBASE_LIB",
            "ASCEND_HAL_OPAPI_LIB",
            "ASCEND_HAL_HCCL_LIB",
            "ASCEND_KERNELS_LIB",
            "ASCEND_HOME_PATH",
        ] {
            std::env::remove_var(v);
        }
        std::env::set_var("ASCEND_TOOLKIT_HOME", &home);
        std::env::set_var("ACL_FAKE_DEVICES", "2");
        std::env::set_var("ACL_FAKE_MEMORY", "268435456");
    }
    let backend = AclBackend::load().unwrap();
    assert!(
        backend
            .library_path()
            .ends_with("acl-fake-toolkit/lib64/libascendcl.so"),
        "{}",
        backend.library_path()
    );
    assert_eq!(AclBackend::kernels_available(), Ok(()));
    let stream = backend.device(0).unwrap().new_stream().unwrap();

    // An ACLNN operator (RMSNorm's default provider) ...
    let norm = RmsNorm {
        num_tokens: 2,
        hidden: 64,
        eps: 1e-6,
    };
    let x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.3).sin()).collect();
    let w = vec![1.5f32; 64];
    let (dx, dw) = (
        DeviceBuffer::from_slice(&stream, &x).unwrap(),
        DeviceBuffer::from_slice(&stream, &w).unwrap(),
    );
    let mut dy = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 128).unwrap();
    AclBackend::rms_norm(&stream, &norm, dy.view_mut(), dx.view(), dw.view()).unwrap();
    let mut want = vec![0f32; 128];
    reference::rms_norm(&norm, &mut want, &x, &w).unwrap();
    let got = stream.clone_to_host(&dy).unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));

    // ... an Ascend C kernel from the kernels library beside the runtime ...
    let cache = CacheShape {
        num_blocks: 2,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 64,
    };
    let p = ReshapeAndCache {
        num_tokens: 2,
        cache,
    };
    let rows: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let slots = [3i32, 20];
    let (dr, ds) = (
        DeviceBuffer::from_slice(&stream, &rows).unwrap(),
        DeviceBuffer::from_slice(&stream, &slots).unwrap(),
    );
    let mut kc = DeviceBuffer::<AclBackend, f32>::zeros(&stream, cache.elements()).unwrap();
    let mut vc = DeviceBuffer::<AclBackend, f32>::zeros(&stream, cache.elements()).unwrap();
    AclBackend::reshape_and_cache(
        &stream,
        &p,
        dr.view(),
        dr.view(),
        kc.view_mut(),
        vc.view_mut(),
        ds.view(),
    )
    .unwrap();
    let (mut wk, mut wv) = (vec![0f32; cache.elements()], vec![0f32; cache.elements()]);
    reference::reshape_and_cache(&p, &rows, &rows, &mut wk, &mut wv, &slots).unwrap();
    assert_eq!(stream.clone_to_host(&kc).unwrap(), wk);

    // ... and HCCL, across the fake's two devices.
    let devices = [backend.device(0).unwrap(), backend.device(1).unwrap()];
    let comms = AclBackend::init_all(&devices).unwrap();
    let streams: Vec<_> = devices.iter().map(|d| d.new_stream().unwrap()).collect();
    let mut bufs: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(r, s)| DeviceBuffer::from_slice(s, &[r as f32 + 1.0; 4]).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for ((c, s), b) in comms.iter().zip(&streams).zip(bufs.iter_mut()) {
            scope.spawn(move || {
                c.all_reduce_in_place(s, b, ReduceOp::Sum).unwrap();
                s.synchronize().unwrap();
            });
        }
    });
    for (s, b) in streams.iter().zip(&bufs) {
        assert_eq!(s.clone_to_host(b).unwrap(), [3.0; 4]);
    }
}
