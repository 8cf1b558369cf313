//! The decode example's engine: preemption by recomputation gives the same tokens as none,
//! running out of blocks preempts instead of failing, and the example runs every step over the
//! ACL backend on the host-side fake (ACLNN operators and the host build of the Ascend C
//! kernels), printing the same steps and tokens as on the CPU backend.

use ascend_examples::decode::{run, AllocatorChoice, DecodeArgs, Outcome, Precision};
use ascend_examples::engine::Preemption;
use hal_mock::CpuBackend;

mod common;
use common::acl_backend;

fn quiet(preempt: Option<Preemption>, max_blocks: usize) -> DecodeArgs {
    DecodeArgs {
        preempt,
        max_blocks,
        quiet: true,
        ..DecodeArgs::default()
    }
}

fn checked(args: &DecodeArgs) -> ascend_examples::engine::Report {
    let mut lines = Vec::new();
    match run(CpuBackend::new(), args, &mut |l| lines.push(l.to_string())).unwrap() {
        Outcome::Checked { report, mismatches } => {
            assert_eq!(
                mismatches,
                0,
                "tokens differ from the contiguous run:\n{}",
                lines.join("\n")
            );
            report
        }
        Outcome::Skipped(r) => panic!("the CPU backend skipped compute: {r}"),
    }
}

#[test]
fn preemption_by_recomputation_gives_the_same_tokens_as_none() {
    let none = checked(&quiet(None, 4096));
    let recompute = checked(&quiet(Some(Preemption::Recompute), 4096));
    let swap = checked(&quiet(Some(Preemption::Swap), 4096));
    assert_eq!(recompute.recomputes, 1);
    assert_eq!(swap.swaps, 1);
    assert_eq!(none.recomputes + none.swaps, 0);
    assert_eq!(recompute.outputs, none.outputs);
    assert_eq!(swap.outputs, none.outputs);
    assert_eq!(
        none.generated,
        none.outputs.values().map(Vec::len).sum::<usize>()
    );
}

#[test]
fn running_out_of_blocks_preempts_instead_of_failing() {
    // 23 usable blocks of 16 tokens for 12 requests of ~70-110 tokens each (the cache must
    // hold one max_model_len sequence: 112 tokens take 8 blocks with the null one).
    let tight = checked(&DecodeArgs {
        max_model_len: 112,
        ..quiet(None, 24)
    });
    assert!(tight.recomputes > 0, "no preemption happened: {tight:?}");
    let roomy = checked(&quiet(None, 4096));
    assert_eq!(tight.outputs, roomy.outputs);
}

#[test]
fn every_allocator_gives_the_same_tokens_and_says_which_it_is() {
    let mut outputs = Vec::new();
    for (choice, name) in [
        (AllocatorChoice::Caching, "caching"),
        (AllocatorChoice::Direct, "direct"),
        (AllocatorChoice::Arena, "arena"),
    ] {
        let args = DecodeArgs {
            allocator: choice,
            ..quiet(Some(Preemption::Swap), 4096)
        };
        let mut lines = Vec::new();
        let outcome = run(CpuBackend::new(), &args, &mut |l| lines.push(l.to_string())).unwrap();
        let text = lines.join("\n");
        assert!(
            text.contains(&format!("allocator: {name} (")),
            "{name}: the run does not say its allocator:\n{text}"
        );
        let Outcome::Checked { report, mismatches } = outcome else {
            panic!("{name}: skipped")
        };
        assert_eq!(mismatches, 0, "{name}:\n{text}");
        // The per-allocator line: the KV cache's allocator holds at least the cache.
        let kv_line = lines
            .iter()
            .find(|l| l.contains("peak allocated") && l.contains("KV cache"))
            .unwrap_or_else(|| panic!("{name}: no allocator line for the KV cache:\n{text}"));
        assert!(kv_line.starts_with(match choice {
            AllocatorChoice::Direct => "direct allocator",
            _ => "caching allocator",
        }));
        if choice == AllocatorChoice::Arena {
            assert!(text.contains("arena allocator (activations)"), "{text}");
        }
        outputs.push(report.outputs);
    }
    assert_eq!(outputs[0], outputs[1], "direct differs from caching");
    assert_eq!(outputs[0], outputs[2], "arena differs from caching");
}

/// The lines a run prints about its work (the workload, steps, preemptions, the token check),
/// without the ones about the device, its memory or the time taken.
fn work_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("serving") || l.starts_with("step") || l.starts_with("check:"))
        .cloned()
        .collect()
}

#[test]
fn paged_decode_over_the_acl_backend_on_the_fake_matches_the_cpu_run() {
    for preempt in [Preemption::Swap, Preemption::Recompute] {
        let args = DecodeArgs {
            preempt: Some(preempt),
            max_blocks: 4096,
            ..DecodeArgs::default()
        };
        let (mut acl_lines, mut cpu_lines) = (Vec::new(), Vec::new());
        let acl = run(acl_backend(), &args, &mut |l| acl_lines.push(l.to_string())).unwrap();
        let cpu = run(CpuBackend::new(), &args, &mut |l| {
            cpu_lines.push(l.to_string())
        })
        .unwrap();
        let text = acl_lines.join("\n");
        assert!(text.contains("device 0: Ascend910B4"), "{text}");
        assert!(!text.contains("compute skipped"), "{text}");
        let (
            Outcome::Checked {
                report: on_acl,
                mismatches,
            },
            Outcome::Checked { report: on_cpu, .. },
        ) = (acl, cpu)
        else {
            panic!("a run skipped compute:\n{text}")
        };
        // Its own check against contiguous attention, on the ACL backend.
        assert_eq!(mismatches, 0, "{text}");
        assert_eq!(on_acl.outputs, on_cpu.outputs, "{preempt:?}: tokens differ");
        assert_eq!(
            work_lines(&acl_lines),
            work_lines(&cpu_lines),
            "{preempt:?}: the step lines differ"
        );
        assert!(on_acl.swaps + on_acl.recomputes >= 1, "{on_acl:?}");
        assert!(work_lines(&acl_lines).len() > 10, "{text}");
    }
}

#[test]
fn paged_decode_in_f16_takes_attention_from_cann_fused_operator_and_matches_the_cpu_run() {
    use ascend_kernels::acl::providers::{fallbacks, AclOp};
    // vllm-ascend's block size, and a system prompt that fills a block (prefix caching shares
    // whole blocks).
    let args = DecodeArgs {
        precision: Precision::F16,
        block_size: 128,
        system_prompt: 160,
        quiet: true,
        ..DecodeArgs::default()
    };
    let before = common::fake_call_count("aclnnFusedInferAttentionScoreV2");
    let mut acl_lines = Vec::new();
    let acl = run(acl_backend(), &args, &mut |l| acl_lines.push(l.to_string())).unwrap();
    let calls = common::fake_call_count("aclnnFusedInferAttentionScoreV2") - before;
    let cpu = run(CpuBackend::new(), &args, &mut |_| {}).unwrap();
    let text = acl_lines.join("\n");
    let (
        Outcome::Checked {
            report: on_acl,
            mismatches,
        },
        Outcome::Checked { report: on_cpu, .. },
    ) = (acl, cpu)
    else {
        panic!("a run skipped compute:\n{text}")
    };
    assert_eq!(mismatches, 0, "{text}");
    assert_eq!(
        on_acl.outputs, on_cpu.outputs,
        "f16 tokens differ from the CPU backend's"
    );
    assert!(on_acl.prefix_hit_rate > 0.0, "{text}");
    // Every layer of every step (and of the contiguous check) through the fused operator, and
    // no f16 call of attention fell back (other tests of this binary run f32, which does).
    assert!(
        calls >= (on_acl.steps * 2) as u64,
        "{calls} calls for {} steps",
        on_acl.steps
    );
    let declined: Vec<_> = fallbacks()
        .into_iter()
        .filter(|f| matches!(f.op, AclOp::PagedAttention | AclOp::PagedPrefillAttention))
        .filter(|f| !f.reason.contains("F32"))
        .collect();
    assert!(declined.is_empty(), "{declined:?}");
}

#[test]
fn bad_arguments_are_refused_before_anything_runs() {
    for (args, needle) in [
        (
            DecodeArgs {
                max_new: 1,
                ..DecodeArgs::default()
            },
            None,
        ),
        (
            DecodeArgs {
                max_model_len: 100,
                ..DecodeArgs::default()
            },
            Some("more than --max-model-len 100"),
        ),
        (
            DecodeArgs {
                model: ascend_examples::model::ModelConfig {
                    vocab: usize::MAX,
                    ..DecodeArgs::default().model
                },
                ..DecodeArgs::default()
            },
            Some("would have more than 1073741824 elements"),
        ),
        (
            DecodeArgs {
                max_model_len: usize::MAX,
                ..DecodeArgs::default()
            },
            Some("would have more than"),
        ),
    ] {
        match (args.validate(), needle) {
            (Ok(()), None) => {
                // --max-new 1 used to make requests of 0 new tokens that never ended.
                let report = checked(&DecodeArgs {
                    quiet: true,
                    ..args
                });
                assert_eq!(report.generated, args.requests, "one token per request");
            }
            (Err(e), Some(n)) => assert!(e.contains(n), "{e}"),
            (other, n) => panic!("{other:?} for {n:?}"),
        }
    }
}
