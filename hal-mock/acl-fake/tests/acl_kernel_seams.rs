//! Every kernel op of the ACL backend over the fake (ACLNN operators from the fake, Ascend C
//! kernels from the host kernels library) with its arguments across the seams of each
//! allocator's memory (`ascend_kernels::conformance`). With expandable segments every argument
//! straddles a 2 MiB chunk mapped by `aclrtMapMem`, so the fake must give a kernel one coherent
//! view of memory whose chunks are separate host allocations.

mod common;

use std::sync::{Mutex, Once};

use ascend_hal::acl::{AclBackend, AclDevice};
use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator};
use ascend_hal::prelude::*;
use ascend_kernels::ascendc;
use ascend_kernels::conformance::every_op_across_seams;

/// One process-wide fake: the runs take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(make: impl FnOnce(&AclDevice) -> Box<dyn Allocator<AclBackend>>) -> (usize, usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    static SET: Once = Once::new();
    SET.call_once(|| {
        let fake = common::fake_path();
        // SAFETY: every test of this binary starts here, under SERIAL, before the backend loads.
        unsafe {
            std::env::set_var("ASCEND_KERNELS_LIB", ascendc::HOST_KERNELS_LIB);
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &fake);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &fake);
        }
    });
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let alloc = make(&device);
    let report = every_op_across_seams::<AclBackend>(&stream, alloc.as_ref());
    assert_eq!(report.ops, 32, "every op ran, for f32 and f16");
    (report.arguments, report.straddling)
}

#[test]
fn direct_allocator() {
    run(|d| Box::new(DirectAllocator::new(d)));
}

#[test]
fn caching_allocator() {
    run(|d| Box::new(CachingAllocator::new(d, "".parse().unwrap()).unwrap()));
}

#[test]
fn caching_allocator_with_expandable_segments() {
    let (arguments, straddling) = run(|d| {
        Box::new(CachingAllocator::new(d, "expandable_segments:True".parse().unwrap()).unwrap())
    });
    assert_eq!(
        straddling, arguments,
        "every argument straddles a 2 MiB chunk of the expandable segment"
    );
}

/// What CANN 8.1's operators cannot do is refused by name at the call (bf16 logits for
/// `aclnnArgMax` / `aclnnTopk`); an id outside the embedding table faults the stream, and the
/// next synchronisation names the operator and the id, on the ACL backend as on the CPU one.
#[test]
fn step_ops_refuse_what_the_provider_cannot_do() {
    use ascend_kernels::{Argmax, Embedding, KernelOps, TopK};
    use half::bf16;
    run(|d| Box::new(DirectAllocator::new(d)));
    let backend = common::backend();
    let stream = backend.device(0).unwrap().new_stream().unwrap();
    let x = DeviceBuffer::<AclBackend, bf16>::zeros(&stream, 64).unwrap();
    let mut out = DeviceBuffer::<AclBackend, i32>::zeros(&stream, 2).unwrap();
    let e = AclBackend::argmax(
        &stream,
        &Argmax { rows: 2, cols: 32 },
        out.view_mut(),
        x.view(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("aclnnArgMax of CANN 8.1 takes f32 or f16 values, not bf16"),
        "{e}"
    );
    let mut v = DeviceBuffer::<AclBackend, bf16>::zeros(&stream, 4).unwrap();
    let mut i = DeviceBuffer::<AclBackend, i64>::zeros(&stream, 4).unwrap();
    let p = TopK {
        rows: 2,
        cols: 32,
        k: 2,
    };
    let e = AclBackend::top_k(&stream, &p, v.view_mut(), i.view_mut(), x.view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("aclnnTopk"), "{e}");

    let table = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 8 * 64).unwrap();
    let ids = DeviceBuffer::<AclBackend, i32>::from_slice(&stream, &[1, 8]).unwrap();
    let mut rows = DeviceBuffer::<AclBackend, f32>::zeros(&stream, 2 * 64).unwrap();
    let p = Embedding {
        num_tokens: 2,
        vocab: 8,
        hidden: 64,
    };
    AclBackend::embedding(&stream, &p, rows.view_mut(), table.view(), ids.view()).unwrap();
    let e = stream.synchronize().unwrap_err().to_string();
    assert!(
        e.contains("indices[1] = 8 is outside the weight's 8 rows"),
        "{e}"
    );
}
