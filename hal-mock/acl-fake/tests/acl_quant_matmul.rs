//! `quant_matmul` on the ACL backend, through `aclnnWeightQuantBatchMatmulV2` over the fake:
//! each GGUF block format, packed by the backend's layout, against an f64 product of the
//! dequantized weights (the operator dequantizes the weights only, so the result is exact up to
//! the f16/bf16 roundings of the weights' scales and of the output); the per-channel path of
//! one group per row; refusals of f32 activations; and the operator's documented checks
//! (group size, scale shape and dtype) as `ACLNN_ERR_PARAM_INVALID` with the reason.

mod common;

use common::{up, values};

use ascend_hal::acl::aclnn::{data_type, Aclnn};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::alloc::CachingAllocator;
use ascend_hal::prelude::*;
use ascend_hal::{DType, Error};
use ascend_kernels::quant::{dequantize, quantize};
use ascend_kernels::{KernelOps, KvFloat, QuantFormat, QuantMatmul};
use half::{bf16, f16};

fn stream() -> AclStream {
    common::use_fake_aclnn();
    common::backend().device(0).unwrap().new_stream().unwrap()
}

/// `[n, k]` weights in blocks of `f` and their dequantized values.
fn weight(f: QuantFormat, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w: Vec<f32> = values::<f32>(n * k, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 0.5 + (i / k) as f32 * 0.01)
        .collect();
    let mut blocks = Vec::new();
    quantize(f, &w, &mut blocks).unwrap();
    let mut deq = vec![0f32; n * k];
    dequantize(f, &blocks, &mut deq).unwrap();
    (blocks, deq)
}

fn matches_reference<T: KvFloat>(rel: f64) {
    let s = stream();
    for f in QuantFormat::ALL {
        for (m, n, k) in [(1usize, 40usize, 96usize), (5, 24, 32), (3, 66, 160)] {
            let (blocks, deq) = weight(f, n, k, 7 + n as u64);
            let x = values::<T>(m * k, 3 + m as u64);
            let packed = AclBackend::pack_quant_weight::<T>(f, n, k, &blocks).unwrap();
            assert_eq!(packed.len(), blocks.len());
            let (dx, dw) = (up(&s, &x), up(&s, &packed));
            let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, m * n).unwrap();
            let p = QuantMatmul { m, n, k, format: f };
            AclBackend::quant_matmul::<T>(&s, &p, out.view_mut(), dx.view(), dw.view()).unwrap();
            let got = s.clone_to_host(&out).unwrap();
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    (0..k)
                        .map(|j| x[r * k + j].to_f32() as f64 * deq[c * k + j] as f64)
                        .sum()
                })
                .collect();
            let top = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (g.to_f32() as f64 - w).abs();
                assert!(
                    err <= rel * top,
                    "{f} {} m {m} n {n} k {k} [{i}]: {} vs {w} (tolerance {})",
                    T::DTYPE,
                    g.to_f32(),
                    rel * top
                );
            }
        }
    }
}

#[test]
fn each_format_matches_the_f64_product_of_its_dequantized_weights() {
    // f16: the operator dequantizes in f16 (2^-11 per step) and writes f16.
    matches_reference::<f16>(4e-3);
    // bf16: scales and output keep 8 bits.
    matches_reference::<bf16>(2e-2);
}

#[test]
fn f32_activations_are_refused_by_name_before_and_at_launch() {
    let why = AclBackend::quant_matmul_supported::<f32>(QuantFormat::Q4_0).unwrap_err();
    assert!(why.contains("f16 or bf16"), "{why}");
    assert!(why.contains("aclnnWeightQuantBatchMatmulV2"), "{why}");
    AclBackend::quant_matmul_supported::<f16>(QuantFormat::Q4_1).unwrap();
    AclBackend::quant_matmul_supported::<bf16>(QuantFormat::Q8_0).unwrap();
    let e = AclBackend::pack_quant_weight::<f32>(QuantFormat::Q8_0, 1, 32, &[0; 34]).unwrap_err();
    assert!(e.to_string().contains("f16 or bf16"), "{e}");

    let s = stream();
    let (x, w) = (up(&s, &[0f32; 32]), up(&s, &[0u8; 34]));
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&s, 1).unwrap();
    let p = QuantMatmul {
        m: 1,
        n: 1,
        k: 32,
        format: QuantFormat::Q8_0,
    };
    let e =
        AclBackend::quant_matmul::<f32>(&s, &p, out.view_mut(), x.view(), w.view()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "quant_matmul",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("f16 or bf16 activations, not f32"),
        "{e}"
    );
    // A weight of the wrong size is refused by the shared shape check first.
    let e = AclBackend::quant_matmul::<f16>(
        &s,
        &p,
        DeviceBuffer::<AclBackend, f16>::zeros(&s, 1)
            .unwrap()
            .view_mut(),
        up(&s, &[f16::ZERO; 32]).view(),
        up(&s, &[0u8; 33]).view(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("weight"), "{e}");
    s.synchronize().unwrap();
}

fn invalid(e: &Error, needle: &str) {
    match e {
        Error::Aclnn { function, code, .. } => {
            assert_eq!(
                (*function, *code),
                ("aclnnWeightQuantBatchMatmulV2GetWorkspaceSize", 161_002),
                "{e}"
            );
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
        other => panic!("expected an ACLNN error, got {other}"),
    }
}

#[test]
fn the_operator_refuses_what_its_documentation_refuses() {
    let s = stream();
    let aclnn = Aclnn::load(&common::backend()).unwrap();
    let ws = CachingAllocator::new(&s.device(), Default::default()).unwrap();
    let (m, k, n) = (2i64, 96i64, 8i64);
    let x = DeviceBuffer::<AclBackend, f16>::zeros(&s, 2 * 96).unwrap();
    let w = DeviceBuffer::<AclBackend, i8>::zeros(&s, 96 * 8).unwrap();
    let sc = DeviceBuffer::<AclBackend, f16>::zeros(&s, 3 * 8).unwrap();
    let sc32 = DeviceBuffer::<AclBackend, f32>::zeros(&s, 3 * 8).unwrap();
    let y = DeviceBuffer::<AclBackend, f16>::zeros(&s, 2 * 8).unwrap();
    let tx = aclnn
        .contiguous(DType::F16, &[m, k], x.view().device_ptr())
        .unwrap();
    let tw = aclnn
        .tensor_of(
            data_type::ACL_INT8,
            &[k, n],
            &[1, k],
            0,
            &[n, k],
            w.view().device_ptr(),
        )
        .unwrap();
    let ty = aclnn
        .contiguous(DType::F16, &[m, n], y.view().device_ptr())
        .unwrap();
    let groups = aclnn
        .tensor(
            DType::F16,
            &[3, n],
            &[1, 3],
            0,
            &[n, 3],
            sc.view().device_ptr(),
        )
        .unwrap();
    let groups32 = aclnn
        .tensor(
            DType::F32,
            &[3, n],
            &[1, 3],
            0,
            &[n, 3],
            sc32.view().device_ptr(),
        )
        .unwrap();
    let channel = aclnn
        .contiguous(DType::F16, &[n], sc.view().device_ptr())
        .unwrap();

    // SAFETY: the planning call refuses before anything is queued.
    let e =
        unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups, None, 48, &ty) }
            .unwrap_err();
    invalid(
        &e,
        "antiquantGroupSize 48 must be 0, or in [32, k - 1 = 95] and a multiple of 32",
    );
    // SAFETY: the planning call refuses before anything is queued.
    let e =
        unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups, None, 96, &ty) }
            .unwrap_err();
    invalid(&e, "antiquantGroupSize 96");
    // SAFETY: the planning call refuses before anything is queued.
    let e = unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups, None, 0, &ty) }
        .unwrap_err();
    invalid(&e, "with antiquantGroupSize 0, antiquantScale must be");
    // SAFETY: the planning call refuses before anything is queued.
    let e =
        unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &channel, None, 64, &ty) }
            .unwrap_err();
    invalid(&e, "antiquantScale must be [2, 8]");
    // SAFETY: the planning call refuses before anything is queued.
    let e =
        unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups32, None, 32, &ty) }
            .unwrap_err();
    invalid(
        &e,
        "antiquantScale dtype DT_FLOAT should be the same as x dtype DT_FLOAT16",
    );
    // SAFETY: the planning call refuses before anything is queued.
    let e = unsafe {
        aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups, Some(&channel), 32, &ty)
    }
    .unwrap_err();
    invalid(&e, "antiquantOffsetOptional");
    // f16 x against an f16 weight: the weight must be INT8 or INT4.
    // SAFETY: the planning call refuses before anything is queued.
    let e =
        unsafe { aclnn.weight_quant_batch_matmul_v2(&s, &ws, &tx, &tx, &groups, None, 32, &ty) }
            .unwrap_err();
    invalid(
        &e,
        "weight dtype DT_FLOAT16 should be in dtype support list [DT_INT8, DT_INT4]",
    );

    // The valid call runs, per channel and per group.
    // SAFETY: the descriptors cover live buffers of this stream's device, kept until the sync.
    unsafe {
        aclnn
            .weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &channel, None, 0, &ty)
            .unwrap();
        aclnn
            .weight_quant_batch_matmul_v2(&s, &ws, &tx, &tw, &groups, None, 32, &ty)
            .unwrap();
    }
    s.synchronize().unwrap();
    assert!(aclnn.operators().contains(&"aclnnWeightQuantBatchMatmulV2"));
}
