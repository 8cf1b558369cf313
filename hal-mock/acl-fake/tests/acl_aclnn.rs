//! The ACLNN binding (`ascend_hal::acl::aclnn`) over the fake's ACLNN functions: each operator
//! the backend uses matches the Rust reference, its workspace comes from the caller's allocator
//! and goes back to it, and for each entry point the fake refuses a wrong dtype, a NULL tensor,
//! a too-small workspace and a reused executor with the real `aclnnStatus`, which the binding
//! names.

mod common;

use common::{max_diff, up, values};

use std::ffi::c_void;
use std::sync::Arc;

use ascend_hal::acl::aclnn::{Aclnn, AclnnStatus, CubeMathType};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::alloc::{Allocator, CachingAllocator};
use ascend_hal::prelude::*;
use ascend_hal::{DType, Error};
use ascend_kernels::{reference, KvFloat, Matmul, RmsNorm, SiluAndMul};
use half::f16;

struct Setup {
    stream: AclStream,
    aclnn: Arc<Aclnn>,
    workspace: CachingAllocator<AclBackend>,
}

/// The backend, with the fake standing in for `libnnopbase.so` and `libopapi.so`; every test
/// calls this first, so no other thread reads the environment while it is set.
fn setup() -> Setup {
    common::use_fake_aclnn();
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let aclnn = Aclnn::load(&backend).unwrap();
    Setup {
        stream: device.new_stream().unwrap(),
        workspace: CachingAllocator::new(&device, Default::default()).unwrap(),
        aclnn,
    }
}

fn ptr<T: ascend_hal::Element>(b: &DeviceBuffer<AclBackend, T>) -> ascend_hal::DevicePtr {
    b.view().device_ptr()
}

fn operators_match<T: KvFloat>(tol: f32) {
    let Setup {
        stream: s,
        aclnn,
        workspace,
    } = setup();
    let (m, k, n) = (5usize, 96usize, 40usize);
    let before = workspace.stats().num_allocs;

    // Matmul with the [n, k] weight of a linear layer, seen as [k, n] through its strides.
    let x = values::<T>(m * k, 1);
    let w = values::<T>(n * k, 2);
    let (dx, dw) = (up(&s, &x), up(&s, &w));
    let dy = DeviceBuffer::<AclBackend, T>::zeros(&s, m * n).unwrap();
    let a = aclnn
        .contiguous(T::DTYPE, &[m as i64, k as i64], ptr(&dx))
        .unwrap();
    let b = aclnn
        .tensor(
            T::DTYPE,
            &[k as i64, n as i64],
            &[1, k as i64],
            0,
            &[n as i64, k as i64],
            ptr(&dw),
        )
        .unwrap();
    let o = aclnn
        .contiguous(T::DTYPE, &[m as i64, n as i64], ptr(&dy))
        .unwrap();
    // SAFETY: the tensors describe live buffers of this device, kept until the sync below.
    unsafe { aclnn.matmul(&s, &workspace, &a, &b, &o, CubeMathType::KeepDtype) }.unwrap();
    let mut want = vec![T::from_f32(0.0); m * n];
    reference::matmul(&Matmul { m, n, k }, &mut want, &x, &w).unwrap();
    assert!(max_diff(&s.clone_to_host(&dy).unwrap(), &want) < tol * 4.0);

    // SwiGLU over the last dim: silu of the first half times the second.
    let d = 48;
    let g = values::<T>(m * 2 * d, 3);
    let dg = up(&s, &g);
    let dout = DeviceBuffer::<AclBackend, T>::zeros(&s, m * d).unwrap();
    let tg = aclnn
        .contiguous(T::DTYPE, &[m as i64, 2 * d as i64], ptr(&dg))
        .unwrap();
    let tout = aclnn
        .contiguous(T::DTYPE, &[m as i64, d as i64], ptr(&dout))
        .unwrap();
    // SAFETY: as above.
    unsafe { aclnn.swi_glu(&s, &workspace, &tg, -1, &tout) }.unwrap();
    let mut want = vec![T::from_f32(0.0); m * d];
    reference::silu_and_mul(&SiluAndMul { num_tokens: m, d }, &mut want, &g).unwrap();
    assert!(max_diff(&s.clone_to_host(&dout).unwrap(), &want) < tol);

    // RMSNorm, with the reciprocal roots.
    let h = 128;
    let p = RmsNorm {
        num_tokens: m,
        hidden: h,
        eps: 1e-5,
    };
    let xs = values::<T>(m * h, 4);
    let gamma = values::<T>(h, 5);
    let (dxs, dgamma) = (up(&s, &xs), up(&s, &gamma));
    let dnorm = DeviceBuffer::<AclBackend, T>::zeros(&s, m * h).unwrap();
    let drstd = DeviceBuffer::<AclBackend, f32>::zeros(&s, m).unwrap();
    let shape = [m as i64, h as i64];
    let tx = aclnn.contiguous(T::DTYPE, &shape, ptr(&dxs)).unwrap();
    let tgamma = aclnn
        .contiguous(T::DTYPE, &[h as i64], ptr(&dgamma))
        .unwrap();
    let ty = aclnn.contiguous(T::DTYPE, &shape, ptr(&dnorm)).unwrap();
    let tr = aclnn
        .contiguous(DType::F32, &[m as i64, 1], ptr(&drstd))
        .unwrap();
    // SAFETY: as above.
    unsafe { aclnn.rms_norm(&s, &workspace, &tx, &tgamma, 1e-5, &ty, &tr) }.unwrap();
    let mut want = vec![T::from_f32(0.0); m * h];
    reference::rms_norm(&p, &mut want, &xs, &gamma).unwrap();
    assert!(max_diff(&s.clone_to_host(&dnorm).unwrap(), &want) < tol);
    let rstd = s.clone_to_host(&drstd).unwrap();
    for (r, got) in rstd.iter().enumerate() {
        let ms = xs[r * h..(r + 1) * h]
            .iter()
            .map(|v| (v.to_f32() as f64).powi(2))
            .sum::<f64>()
            / h as f64;
        assert!(
            (*got as f64 - 1.0 / (ms + 1e-5).sqrt()).abs() < 1e-4,
            "rstd[{r}]"
        );
    }

    // Add + RMSNorm as the fused residual op: x1 = hidden, x2 = residual, the sum back into the
    // residual and the norm into the hidden states (outputs over inputs, which the fake allows).
    let resid = values::<T>(m * h, 6);
    let (dh, dres) = (up(&s, &xs), up(&s, &resid));
    let t1 = aclnn.contiguous(T::DTYPE, &shape, ptr(&dh)).unwrap();
    let t2 = aclnn.contiguous(T::DTYPE, &shape, ptr(&dres)).unwrap();
    // SAFETY: as above.
    unsafe { aclnn.add_rms_norm(&s, &workspace, &t1, &t2, &tgamma, 1e-5, &t1, &tr, &t2) }.unwrap();
    let (mut wx, mut wr) = (xs.clone(), resid.clone());
    reference::fused_add_rms_norm(&p, &mut wx, &mut wr, &gamma).unwrap();
    assert!(max_diff(&s.clone_to_host(&dh).unwrap(), &wx) < tol);
    assert!(max_diff(&s.clone_to_host(&dres).unwrap(), &wr) < tol);

    // Four workspaces, each from the caller's allocator, all back in it.
    let stats = workspace.stats();
    assert_eq!(stats.num_allocs - before, 4);
    assert_eq!(stats.allocated, 0);
}

#[test]
fn the_operators_match_the_reference_with_workspaces_from_the_callers_allocator() {
    operators_match::<f32>(2e-5);
    operators_match::<f16>(8e-3);
}

fn invalid(e: &Error, function: &str) {
    match e {
        Error::Aclnn {
            function: f,
            code,
            name,
            ..
        } => {
            assert_eq!(
                (*f, *code, *name),
                (function, 161_002, "ACLNN_ERR_PARAM_INVALID"),
                "{e}"
            );
        }
        other => panic!("expected an ACLNN error, got {other}"),
    }
}

#[test]
fn a_wrong_dtype_is_a_named_error_for_each_operator() {
    let Setup {
        stream: s,
        aclnn,
        workspace,
    } = setup();
    let h16 = DeviceBuffer::<AclBackend, f16>::zeros(&s, 64).unwrap();
    let h32 = DeviceBuffer::<AclBackend, f32>::zeros(&s, 64).unwrap();
    let i32s = DeviceBuffer::<AclBackend, i32>::zeros(&s, 64).unwrap();
    let t16 = aclnn.contiguous(DType::F16, &[8, 8], ptr(&h16)).unwrap();
    let t32 = aclnn.contiguous(DType::F32, &[8, 8], ptr(&h32)).unwrap();
    let ti = aclnn.contiguous(DType::I32, &[8, 8], ptr(&i32s)).unwrap();
    let half16 = aclnn.contiguous(DType::F16, &[8, 4], ptr(&h16)).unwrap();
    let g16 = aclnn.contiguous(DType::F16, &[8], ptr(&h16)).unwrap();
    let r16 = aclnn.contiguous(DType::F16, &[8, 1], ptr(&h16)).unwrap();
    let r32 = aclnn.contiguous(DType::F32, &[8, 1], ptr(&h32)).unwrap();

    // SAFETY: nothing is queued; the planning call refuses first.
    let e = unsafe { aclnn.matmul(&s, &workspace, &t16, &t32, &t16, CubeMathType::KeepDtype) }
        .unwrap_err();
    invalid(&e, "aclnnMatmulGetWorkspaceSize");
    assert!(
        e.to_string()
            .contains("mat2 dtype DT_FLOAT should be the same"),
        "{e}"
    );

    // SAFETY: nothing is queued; the planning call refuses first.
    let e = unsafe { aclnn.swi_glu(&s, &workspace, &ti, -1, &half16) }.unwrap_err();
    invalid(&e, "aclnnSwiGluGetWorkspaceSize");
    assert!(e.to_string().contains("dtype support list"), "{e}");

    // SAFETY: nothing is queued; the planning call refuses first.
    let e = unsafe { aclnn.rms_norm(&s, &workspace, &t16, &g16, 1e-6, &t16, &r16) }.unwrap_err();
    invalid(&e, "aclnnRmsNormGetWorkspaceSize");
    assert!(
        e.to_string()
            .contains("rstdOut dtype DT_FLOAT16 should be DT_FLOAT"),
        "{e}"
    );

    // SAFETY: nothing is queued; the planning call refuses first.
    let e = unsafe { aclnn.add_rms_norm(&s, &workspace, &t16, &t32, &g16, 1e-6, &t16, &r32, &t16) }
        .unwrap_err();
    invalid(&e, "aclnnAddRmsNormGetWorkspaceSize");

    // Nothing was queued or allocated; the stream still works.
    assert_eq!(workspace.stats().num_allocs, 0);
    s.synchronize().unwrap();
}

type Run = unsafe extern "C" fn(*mut c_void, u64, *mut c_void, *mut c_void) -> AclnnStatus;
type Plan<'a> = Box<dyn Fn(*mut u64, *mut *mut c_void) -> AclnnStatus + 'a>;

/// For one operator, driven through the raw C functions the way a careless caller would:
/// a NULL tensor, a workspace one byte short, and an executor run twice.
fn misuse(setup: &Setup, op: &'static str, plan: Plan<'_>, plan_with_null: Plan<'_>) {
    let Setup {
        stream: s,
        aclnn,
        workspace,
    } = setup;
    let planner: &'static str = Box::leak(format!("{op}GetWorkspaceSize").into_boxed_str());
    // SAFETY: every launch call has this prototype.
    let run: Run = unsafe { aclnn.operator_symbol(op) }.unwrap();
    let (mut size, mut exec) = (0u64, std::ptr::null_mut());

    let code = plan_with_null(&mut size, &mut exec);
    assert_eq!(code, 161_001, "{op}: NULL tensor");
    match aclnn.check_status(planner, code).unwrap_err() {
        Error::Aclnn { name, recent, .. } => {
            assert_eq!(name, "ACLNN_ERR_PARAM_NULLPTR");
            assert!(recent.contains("got null"), "{recent}");
        }
        other => panic!("{other}"),
    }

    assert_eq!(plan(&mut size, &mut exec), 0, "{op}: plan");
    assert!(size > 0, "{op}: the fake always asks for a workspace");
    let ws = workspace.allocate(size as usize, s).unwrap();
    let wsp = ws.ptr().0 as usize as *mut c_void;
    // SAFETY: the handles are the fake's, the stream live; the workspace is device memory.
    let raw = unsafe {
        let mut raw = std::ptr::null_mut();
        s.launch_raw("capture", |r| {
            raw = r;
            0
        })
        .unwrap();
        raw
    };
    // SAFETY: as above.
    let code = unsafe { run(wsp, size - 1, exec, raw) };
    assert_eq!(code, 161_002, "{op}: short workspace");
    let e = aclnn.check_status(op, code).unwrap_err();
    invalid(&e, op);
    assert!(e.to_string().contains("smaller than"), "{e}");

    assert_eq!(plan(&mut size, &mut exec), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { run(wsp, size, exec, raw) }, 0, "{op}: run once");
    // SAFETY: as above; the executor was freed by the run, which the fake detects.
    let code = unsafe { run(wsp, size, exec, raw) };
    assert_eq!(code, 161_002, "{op}: executor reused");
    let e = aclnn.check_status(op, code).unwrap_err();
    invalid(&e, op);
    assert!(
        e.to_string()
            .contains("was consumed by an earlier launch (it ran)"),
        "{e}"
    );
    s.synchronize().unwrap();
}

type MatmulPlan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *mut c_void,
    i8,
    *mut u64,
    *mut *mut c_void,
) -> i32;
type SwiGluPlan =
    unsafe extern "C" fn(*const c_void, i64, *const c_void, *mut u64, *mut *mut c_void) -> i32;
type NormPlan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    f64,
    *const c_void,
    *const c_void,
    *mut u64,
    *mut *mut c_void,
) -> i32;
type AddNormPlan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    f64,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut u64,
    *mut *mut c_void,
) -> i32;

type WeightQuantPlan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    std::ffi::c_int,
    *const c_void,
    *mut u64,
    *mut *mut c_void,
) -> i32;
type DynamicQuantPlan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut u64,
    *mut *mut c_void,
) -> i32;
type QuantMatmulV4Plan = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    bool,
    bool,
    *const c_void,
    *mut u64,
    *mut *mut c_void,
) -> i32;

/// The quantized matmuls' entry points, driven as carelessly as the others below.
#[test]
fn the_quantized_entry_points_refuse_null_tensors_short_workspaces_and_reused_executors() {
    let setup = setup();
    let (s, aclnn) = (&setup.stream, &setup.aclnn);
    let h16 = DeviceBuffer::<AclBackend, f16>::zeros(s, 64).unwrap();
    let i8s = DeviceBuffer::<AclBackend, i8>::zeros(s, 64).unwrap();
    let f32s = DeviceBuffer::<AclBackend, f32>::zeros(s, 8).unwrap();
    let x = aclnn.contiguous(DType::F16, &[8, 8], ptr(&h16)).unwrap();
    let q = aclnn.contiguous(DType::I8, &[8, 8], ptr(&i8s)).unwrap();
    let channel16 = aclnn.contiguous(DType::F16, &[8], ptr(&h16)).unwrap();
    let scale = aclnn.contiguous(DType::F32, &[8], ptr(&f32s)).unwrap();
    let null = std::ptr::null::<c_void>();
    let (x, q, channel16, scale) = (x.as_raw(), q.as_raw(), channel16.as_raw(), scale.as_raw());
    // SAFETY: the symbols' prototypes are those of the CANN headers; the handles stay live.
    // Outputs over inputs are fine here (the values are not checked).
    unsafe {
        let f: WeightQuantPlan = aclnn
            .operator_symbol("aclnnWeightQuantBatchMatmulV2GetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnWeightQuantBatchMatmulV2",
            Box::new(move |w, e| f(x, q, channel16, null, null, null, null, 0, x, w, e)),
            Box::new(move |w, e| f(x, null, channel16, null, null, null, null, 0, x, w, e)),
        );
        let f: DynamicQuantPlan = aclnn
            .operator_symbol("aclnnDynamicQuantGetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnDynamicQuant",
            Box::new(move |w, e| f(x, null, q, scale, w, e)),
            Box::new(move |w, e| f(x, null, q, null, w, e)),
        );
        let f: QuantMatmulV4Plan = aclnn
            .operator_symbol("aclnnQuantMatmulV4GetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnQuantMatmulV4",
            Box::new(move |w, e| f(q, q, scale, null, scale, null, false, true, x, w, e)),
            Box::new(move |w, e| f(q, q, null, null, scale, null, false, true, x, w, e)),
        );
    }
}

#[test]
fn each_entry_point_refuses_null_tensors_short_workspaces_and_reused_executors() {
    let setup = setup();
    let (s, aclnn) = (&setup.stream, &setup.aclnn);
    let buf = DeviceBuffer::<AclBackend, f32>::zeros(s, 64).unwrap();
    let rstd = DeviceBuffer::<AclBackend, f32>::zeros(s, 8).unwrap();
    let sq = aclnn.contiguous(DType::F32, &[8, 8], ptr(&buf)).unwrap();
    let half = aclnn.contiguous(DType::F32, &[8, 4], ptr(&buf)).unwrap();
    let g = aclnn.contiguous(DType::F32, &[8], ptr(&buf)).unwrap();
    let r = aclnn.contiguous(DType::F32, &[8, 1], ptr(&rstd)).unwrap();
    let null = std::ptr::null::<c_void>();
    let (sq, half, g, r) = (sq.as_raw(), half.as_raw(), g.as_raw(), r.as_raw());
    // Outputs over inputs are fine for these tests (the values are not checked).
    // SAFETY: the symbols' prototypes are those of the CANN headers; the handles stay live.
    unsafe {
        let f: MatmulPlan = aclnn
            .operator_symbol("aclnnMatmulGetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnMatmul",
            Box::new(move |w, e| f(sq, sq, sq.cast_mut(), 0, w, e)),
            Box::new(move |w, e| f(sq, null, sq.cast_mut(), 0, w, e)),
        );
        let f: SwiGluPlan = aclnn
            .operator_symbol("aclnnSwiGluGetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnSwiGlu",
            Box::new(move |w, e| f(sq, -1, half, w, e)),
            Box::new(move |w, e| f(null, -1, half, w, e)),
        );
        let f: NormPlan = aclnn
            .operator_symbol("aclnnRmsNormGetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnRmsNorm",
            Box::new(move |w, e| f(sq, g, 1e-6, sq, r, w, e)),
            Box::new(move |w, e| f(sq, null, 1e-6, sq, r, w, e)),
        );
        let f: AddNormPlan = aclnn
            .operator_symbol("aclnnAddRmsNormGetWorkspaceSize")
            .unwrap();
        misuse(
            &setup,
            "aclnnAddRmsNorm",
            Box::new(move |w, e| f(sq, sq, g, 1e-6, sq, r, sq, w, e)),
            Box::new(move |w, e| f(sq, sq, g, 1e-6, sq, null, sq, w, e)),
        );
    }
}

#[test]
fn a_descriptor_destroyed_before_the_launch_is_refused() {
    let setup = setup();
    let (s, aclnn) = (&setup.stream, &setup.aclnn);
    let buf = DeviceBuffer::<AclBackend, f32>::zeros(s, 64).unwrap();
    let x = aclnn.contiguous(DType::F32, &[8, 8], ptr(&buf)).unwrap();
    let half = aclnn.contiguous(DType::F32, &[8, 4], ptr(&buf)).unwrap();
    // SAFETY: the prototypes of aclnn_swi_glu.h; the handles are live for the planning call.
    let (plan, run): (SwiGluPlan, Run) = unsafe {
        (
            aclnn
                .operator_symbol("aclnnSwiGluGetWorkspaceSize")
                .unwrap(),
            aclnn.operator_symbol("aclnnSwiGlu").unwrap(),
        )
    };
    let (mut size, mut exec) = (0u64, std::ptr::null_mut());
    // SAFETY: as above.
    let planned = unsafe { plan(x.as_raw(), -1, half.as_raw(), &mut size, &mut exec) };
    assert_eq!(planned, 0);
    // A careless caller destroys a descriptor between the two calls.
    drop(half);
    let ws = setup.workspace.allocate(size as usize, s).unwrap();
    // SAFETY: a live executor and stream, a workspace of `size` device bytes.
    let code = unsafe {
        let mut code = 0;
        s.launch_raw("aclnnSwiGlu", |raw| {
            code = run(ws.ptr().0 as usize as *mut c_void, size, exec, raw);
            0
        })
        .unwrap();
        code
    };
    let e = aclnn.check_status("aclnnSwiGlu", code).unwrap_err();
    invalid(&e, "aclnnSwiGlu");
    assert!(e.to_string().contains("destroyed before the launch"), "{e}");
    s.synchronize().unwrap();
}

#[test]
fn descriptors_that_cannot_be_made_are_errors_not_crashes() {
    let setup = setup();
    let (s, aclnn) = (&setup.stream, &setup.aclnn);
    let buf = DeviceBuffer::<AclBackend, f32>::zeros(s, 64).unwrap();
    // A stride-0 view of 2^40 elements over one float: refused by the fake, named by the binding.
    let e = aclnn
        .tensor(DType::F32, &[1 << 40], &[0], 0, &[1], ptr(&buf))
        .unwrap_err();
    match &e {
        Error::Aclnn {
            function, recent, ..
        } => {
            assert_eq!(*function, "aclCreateTensor");
            assert!(recent.contains("past what the fake computes"), "{recent}");
        }
        other => panic!("{other}"),
    }
    // Strides that overflow i64 are refused before the C call.
    let e = aclnn
        .contiguous(DType::F32, &[1 << 40, 1 << 40, 1 << 40], ptr(&buf))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "aclCreateTensor",
                ..
            }
        ),
        "{e}"
    );
    // Dims and strides of different lengths, and negative dims.
    assert!(aclnn
        .tensor(DType::F32, &[8, 8], &[8], 0, &[64], ptr(&buf))
        .is_err());
    assert!(aclnn
        .tensor(DType::F32, &[-1, 8], &[8, 1], 0, &[64], ptr(&buf))
        .is_err());
    // A broadcast view the fake can hold still works.
    let t = aclnn.tensor(DType::F32, &[4, 8], &[0, 1], 0, &[8], ptr(&buf));
    assert!(t.is_ok());
}
