//! W8A8 `quant_matmul` on the ACL backend: `aclnnDynamicQuant` (per-token int8 activations)
//! then `aclnnQuantMatmulV4` (int8 × int8 → int32, scaled per channel and per token) over the
//! fake. Checked against the CPU provider (the same numbers bit for bit: both follow CANN's
//! formulas) and against the f64 product of the dequantized operands; f32 activations refused
//! by name; `k` past 65535 (which the operator lifts for int8 operands with f32 scales); and the
//! two operators' documented refusals as `ACLNN_ERR_PARAM_INVALID` with the reason.

mod common;

use common::{up, values};

use ascend_hal::acl::aclnn::{AclTensor, Aclnn};
use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::alloc::CachingAllocator;
use ascend_hal::prelude::*;
use ascend_hal::{DType, DevicePtr, Error};
use ascend_kernels::quant::{dequantize, quantize, TokenQuant};
use ascend_kernels::{cpu, KernelOps, KvFloat, QuantFormat, QuantMatmul};
use half::{bf16, f16};

const W8A8: QuantFormat = QuantFormat::Int8PerChannel;

fn stream() -> AclStream {
    common::use_fake_aclnn();
    common::backend().device(0).unwrap().new_stream().unwrap()
}

/// `[n, k]` W8A8 rows (int8 values and an f32 scale each) and their dequantized values.
fn weight(n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w: Vec<f32> = values::<f32>(n * k, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (0.1 + (i / k) as f32 * 0.05))
        .collect();
    let (mut rows, mut deq) = (Vec::new(), vec![0f32; n * k]);
    for (r, d) in w.chunks(k).zip(deq.chunks_mut(k)) {
        let at = rows.len();
        quantize(W8A8, r, &mut rows).unwrap();
        dequantize(W8A8, &rows[at..], d).unwrap();
    }
    (rows, deq)
}

fn run<T: KvFloat>(s: &AclStream, p: &QuantMatmul, x: &[T], rows: &[u8]) -> Vec<T> {
    let packed = AclBackend::pack_quant_weight::<T>(W8A8, p.n, p.k, rows).unwrap();
    assert_eq!(packed.len(), rows.len(), "the layout takes the rows' bytes");
    let (dx, dw) = (up(s, x), up(s, &packed));
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(s, p.m * p.n).unwrap();
    AclBackend::quant_matmul::<T>(s, p, out.view_mut(), dx.view(), dw.view()).unwrap();
    s.clone_to_host(&out).unwrap()
}

fn matches_cpu_and_reference<T: KvFloat>(rel: f64) {
    let s = stream();
    // k = 40 and 200 have a tail past the last 32 values.
    for (m, n, k) in [(1usize, 40usize, 96usize), (5, 24, 40), (3, 66, 200)] {
        let (rows, deq) = weight(n, k, 7 + n as u64);
        let x = values::<T>(m * k, 3 + m as u64);
        let p = QuantMatmul {
            m,
            n,
            k,
            format: W8A8,
        };
        let got = run(&s, &p, &x, &rows);
        let mut cpu_out = vec![T::from_f32(f32::NAN); m * n];
        cpu::quant_matmul(&p, &mut cpu_out, &x, &rows).unwrap();
        for (i, (a, b)) in got.iter().zip(&cpu_out).enumerate() {
            assert_eq!(
                a.to_f32().to_bits(),
                b.to_f32().to_bits(),
                "{} m {m} n {n} k {k} [{i}]: the fake's operators vs the CPU provider",
                T::DTYPE
            );
        }
        // Against f64 of the dequantized weights and per-token dequantized activations: the
        // sums are exact, so only the f32 scaling and the rounding to T remain.
        let mut tq = TokenQuant::default();
        for r in 0..m {
            let xf: Vec<f32> = x[r * k..(r + 1) * k].iter().map(|v| v.to_f32()).collect();
            tq.quantize(&xf);
            let xq = tq.values();
            for c in 0..n {
                let want: f64 = (0..k).map(|j| xq[j] as f64 * deq[c * k + j] as f64).sum();
                let g = got[r * n + c].to_f32() as f64;
                assert!(
                    (g - want).abs() <= rel * want.abs() + 1e-6,
                    "{} m {m} n {n} k {k} ({r}, {c}): {g} vs {want}",
                    T::DTYPE
                );
            }
        }
    }
}

#[test]
fn w8a8_over_the_fake_equals_the_cpu_provider_and_the_f64_product() {
    // One rounding of the output to T (2^-11 for f16, 2^-8 for bf16), and f32 scaling.
    matches_cpu_and_reference::<f16>(1e-3);
    matches_cpu_and_reference::<bf16>(8e-3);
}

#[test]
fn k_past_65535_runs_since_int8_with_f32_scales_lifts_the_limit() {
    let s = stream();
    let (m, n, k) = (1, 2, 70_000);
    let (rows, _) = weight(n, k, 5);
    let x = values::<f16>(k, 9);
    let p = QuantMatmul {
        m,
        n,
        k,
        format: W8A8,
    };
    let got = run(&s, &p, &x, &rows);
    let mut want = vec![f16::ZERO; n];
    cpu::quant_matmul(&p, &mut want, &x, &rows).unwrap();
    assert_eq!(got, want);
    assert!(got.iter().all(|v| v.to_f32() != 0.0));
}

#[test]
fn f32_activations_are_refused_naming_both_operators() {
    let why = AclBackend::quant_matmul_supported::<f32>(W8A8).unwrap_err();
    assert!(
        why.contains("aclnnDynamicQuant + aclnnQuantMatmulV4")
            && why.contains("takes f16 or bf16 activations, not f32"),
        "{why}"
    );
    AclBackend::quant_matmul_supported::<bf16>(W8A8).unwrap();
    let e = AclBackend::pack_quant_weight::<f32>(W8A8, 1, 8, &[0; 12]).unwrap_err();
    assert!(
        e.to_string()
            .contains("aclnnDynamicQuant, which takes f16 or bf16, not f32"),
        "{e}"
    );
    let s = stream();
    let p = QuantMatmul {
        m: 1,
        n: 1,
        k: 8,
        format: W8A8,
    };
    let mut out = DeviceBuffer::<AclBackend, f32>::zeros(&s, 1).unwrap();
    let e = AclBackend::quant_matmul::<f32>(
        &s,
        &p,
        out.view_mut(),
        up(&s, &[1f32; 8]).view(),
        up(&s, &[0u8; 12]).view(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "quant_matmul",
                ..
            }
        ) && e.to_string().contains("aclnnDynamicQuant"),
        "{e}"
    );
    s.synchronize().unwrap();
}

fn invalid(e: &Error, function: &str, needle: &str) {
    match e {
        Error::Aclnn {
            function: f, code, ..
        } => {
            assert_eq!((*f, *code), (function, 161_002), "{e}");
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
        other => panic!("expected an ACLNN error, got {other}"),
    }
}

#[test]
fn the_operators_refuse_what_their_documentation_refuses() {
    let s = stream();
    let aclnn = Aclnn::load(&common::backend()).unwrap();
    let ws = CachingAllocator::new(&s.device(), Default::default()).unwrap();
    let (m, k, n) = (2i64, 64i64, 8i64);
    let x16 = DeviceBuffer::<AclBackend, f16>::zeros(&s, 2 * 64).unwrap();
    let x32 = DeviceBuffer::<AclBackend, f32>::zeros(&s, 2 * 64).unwrap();
    let q = DeviceBuffer::<AclBackend, i8>::zeros(&s, 64 * 8).unwrap();
    let sc = DeviceBuffer::<AclBackend, f32>::zeros(&s, 8).unwrap();
    let out = DeviceBuffer::<AclBackend, f16>::zeros(&s, 2 * 8).unwrap();
    let t = |d: DType, dims: &[i64], p: DevicePtr| aclnn.contiguous(d, dims, p).unwrap();
    let tx = t(DType::F16, &[m, k], x16.view().device_ptr());
    let tx32 = t(DType::F32, &[m, k], x32.view().device_ptr());
    let tq = t(DType::I8, &[m, k], q.view().device_ptr());
    let tq_short = t(DType::I8, &[m, k - 1], q.view().device_ptr());
    let ts = t(DType::F32, &[m], sc.view().device_ptr());
    let ts16 = t(DType::F16, &[m], x16.view().device_ptr());
    let tw = t(DType::I8, &[n, k], q.view().device_ptr());
    let tw16 = t(DType::F16, &[n, k], x16.view().device_ptr());
    let scale = t(DType::F32, &[n], sc.view().device_ptr());
    let scale2d = t(DType::F32, &[1, n], sc.view().device_ptr());
    let per_token = t(DType::F32, &[m], sc.view().device_ptr());
    let per_token_n = t(DType::F32, &[n], sc.view().device_ptr());
    let to = t(DType::F16, &[m, n], out.view().device_ptr());
    let to32 = t(DType::F32, &[m, n], x32.view().device_ptr());
    let dq = |x: &AclTensor<'_>, y: &AclTensor<'_>, sc: &AclTensor<'_>| {
        // SAFETY: the planning call refuses before anything is queued, which is what these
        // cases check (a call that planned would fail the `unwrap_err`).
        unsafe { aclnn.dynamic_quant(&s, &ws, x, y, sc) }.unwrap_err()
    };
    let qm = |w: &AclTensor<'_>,
              sc: &AclTensor<'_>,
              pt: &AclTensor<'_>,
              transpose: bool,
              o: &AclTensor<'_>| {
        // SAFETY: as in `dq`.
        unsafe { aclnn.quant_matmul_v4(&s, &ws, &tq, w, sc, pt, transpose, o) }.unwrap_err()
    };

    const DQ: &str = "aclnnDynamicQuantGetWorkspaceSize";
    invalid(
        &dq(&tx32, &tq, &ts),
        DQ,
        "x dtype DT_FLOAT should be in dtype support list [DT_FLOAT16, DT_BF16]",
    );
    invalid(
        &dq(&tx, &tq_short, &ts),
        DQ,
        "yOut must be a contiguous DT_INT8 tensor of x's shape",
    );
    invalid(
        &dq(&tx, &tq, &ts16),
        DQ,
        "scaleOut must be a contiguous DT_FLOAT tensor",
    );
    invalid(
        &dq(&tx, &tq, &scale),
        DQ,
        "x's shape without its last dim, [2]",
    );

    const QM: &str = "aclnnQuantMatmulV4GetWorkspaceSize";
    invalid(
        &qm(&tw16, &scale, &per_token, true, &to),
        QM,
        "x2 dtype DT_FLOAT16 should be DT_INT8",
    );
    // [n, k] without transposeX2 is (k = 8, n = 64): the k of x1 (64) differs.
    invalid(
        &qm(&tw, &scale, &per_token, false, &to),
        QM,
        "differ: 64 vs 8",
    );
    invalid(
        &qm(&tw, &scale2d, &per_token, true, &to),
        QM,
        "scale must be 1-D (1,) or (8,), got [1, 8]",
    );
    invalid(
        &qm(&tw, &scale, &per_token_n, true, &to),
        QM,
        "pertokenScaleOptional must be DT_FLOAT (2,)",
    );
    invalid(
        &qm(&tw, &scale, &per_token, true, &to32),
        QM,
        "out dtype DT_FLOAT is not implemented by the fake",
    );
    invalid(
        &qm(&tw, &ts16, &per_token, true, &to),
        QM,
        "scale dtype DT_FLOAT16 with out dtype DT_FLOAT16 is not a supported combination",
    );

    // The valid chain runs.
    // SAFETY: the descriptors cover live buffers of this stream's device, kept until the sync.
    unsafe {
        aclnn.dynamic_quant(&s, &ws, &tx, &tq, &ts).unwrap();
        aclnn
            .quant_matmul_v4(&s, &ws, &tq, &tw, &scale, &per_token, true, &to)
            .unwrap();
    }
    s.synchronize().unwrap();
    let ops = aclnn.operators();
    assert!(ops.contains(&"aclnnDynamicQuant") && ops.contains(&"aclnnQuantMatmulV4"));
}
