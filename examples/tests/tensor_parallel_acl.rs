//! Tensor-parallel decode over the ACL backend on the fake: four fake NPUs, HCCL (the fake's,
//! through `ascend_hal::acl::hccl`, loaded as `libhccl.so` is) for the all-reduces, ACLNN and the
//! host build of the Ascend C kernels for the rest; `--tp 2` and `--tp 4` give the CPU backend's
//! single-device tokens. Its own binary: the fake is configured with four devices before its
//! first `aclInit`.

use ascend_examples::decode::{run, DecodeArgs, Outcome};
use ascend_examples::engine::Preemption;
use ascend_examples::model::ModelConfig;
use hal_mock::CpuBackend;

mod common;

fn acl_backend_with_four_devices() -> ascend_hal::acl::AclBackend {
    common::configure_fake("devices=4;memory=1073741824;soc=Ascend910B4");
    common::acl_backend()
}

#[test]
fn tp_over_hccl_on_the_fake_generates_the_single_device_tokens() {
    let args = |tp| DecodeArgs {
        model: ModelConfig {
            heads: 8,
            kv_heads: 4,
            ..ModelConfig::default()
        },
        tp,
        preempt: Some(Preemption::Recompute),
        requests: 6,
        quiet: true,
        ..DecodeArgs::default()
    };
    let reference = match run(CpuBackend::new(), &args(1), &mut |_| {}).unwrap() {
        Outcome::Checked { report, .. } => report,
        Outcome::Skipped(r) => panic!("{r}"),
    };
    let backend = acl_backend_with_four_devices();
    for tp in [2, 4] {
        let mut lines = Vec::new();
        let outcome = run(backend.clone(), &args(tp), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        let text = lines.join("\n");
        let Outcome::Checked { report, mismatches } = outcome else {
            panic!("skipped:\n{text}")
        };
        assert_eq!(mismatches, 0, "{text}");
        assert!(text.contains("Ascend910B4"), "{text}");
        assert!(
            text.contains(&format!("ranks: all {tp} generated the same tokens")),
            "{text}"
        );
        assert_eq!(
            report.outputs, reference.outputs,
            "tp {tp} over HCCL on the fake"
        );
    }
}
