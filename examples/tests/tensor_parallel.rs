//! Tensor-parallel decode (`paged_decode --tp N`) on the CPU backend: heads and MLP columns split
//! over 2 and 4 ranks, all-reduces through the CPU communicator, one KV cache per rank; every
//! rank's tokens, and each rank's own contiguous-KV check, agree with the single-device run.

use ascend_examples::decode::{run, DecodeArgs, Outcome};
use ascend_examples::engine::{Preemption, Report};
use ascend_examples::model::ModelConfig;
use hal_mock::{CpuBackend, DeviceProfile};

fn args(tp: usize, preempt: Option<Preemption>) -> DecodeArgs {
    DecodeArgs {
        model: ModelConfig {
            heads: 8,
            kv_heads: 4,
            hidden: 256,
            intermediate: 512,
            ..ModelConfig::default()
        },
        tp,
        preempt,
        quiet: true,
        ..DecodeArgs::default()
    }
}

fn served(tp: usize, preempt: Option<Preemption>) -> (Report, Vec<String>) {
    let backend = CpuBackend::builder()
        .devices(4, DeviceProfile::custom("Rank", 1 << 30))
        .build();
    let mut lines = Vec::new();
    let outcome = run(backend, &args(tp, preempt), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    match outcome {
        Outcome::Checked { report, mismatches } => {
            assert_eq!(mismatches, 0, "tp {tp}:\n{}", lines.join("\n"));
            (report, lines)
        }
        Outcome::Skipped(r) => panic!("skipped: {r}"),
    }
}

#[test]
fn tp_2_and_4_generate_the_tokens_of_tp_1() {
    for preempt in [Some(Preemption::Swap), Some(Preemption::Recompute)] {
        let (one, _) = served(1, preempt);
        for tp in [2, 4] {
            let (many, lines) = served(tp, preempt);
            let text = lines.join("\n");
            assert!(
                text.contains(&format!("ranks: all {tp} generated the same tokens")),
                "{text}"
            );
            assert!(
                text.contains(&format!("rank 0 of {tp}, {} of 8 heads", 8 / tp)),
                "{text}"
            );
            assert_eq!(
                many.outputs, one.outputs,
                "tp {tp}, {preempt:?}: tokens differ"
            );
            assert_eq!(
                (many.steps, many.swaps, many.recomputes),
                (one.steps, one.swaps, one.recomputes),
                "tp {tp}: the schedule differs"
            );
        }
    }
}

#[test]
fn a_split_that_does_not_divide_is_refused_and_too_few_devices_named() {
    let bad = DecodeArgs {
        tp: 4,
        ..DecodeArgs::default()
    };
    let e = bad.validate().unwrap_err();
    assert!(
        e.contains("--tp 4: KV heads (2) do not split over 4 ranks"),
        "{e}"
    );
    let one_device = CpuBackend::new();
    let e = run(one_device, &args(2, None), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--tp 2 needs 2 devices; the cpu backend has 1"),
        "{e}"
    );
}

/// A fault on one rank's stream fails that rank; its peer hears at once (it does not wait for
/// its collective timeout), and the report names the faulted rank's own failure first.
#[test]
fn a_fault_on_one_rank_is_reported_first_and_at_once() {
    let backend = CpuBackend::builder()
        .devices(2, DeviceProfile::custom("Rank", 1 << 30))
        .build();
    // Part-way through the run: some rank's 400th kernel or host task fails.
    backend
        .faults()
        .fail_nth(hal_mock::MockOp::HostTask, 400)
        .unwrap();
    let start = std::time::Instant::now();
    let mut lines = Vec::new();
    let e = match run(backend, &args(2, None), &mut |l| lines.push(l.to_string())) {
        Ok(_) => panic!("the fault was not reported"),
        Err(e) => e.to_string(),
    };
    let text = lines.join("\n");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(e.contains("injected fault"), "{e}");
    assert!(
        !e.contains("cannot take part"),
        "the peer's failure came first: {e}"
    );
    assert!(text.contains("of 2 failed first: "), "{text}");
    assert!(
        text.contains("failed too (after rank") && text.contains("cannot take part"),
        "{text}"
    );
}

#[test]
fn the_root_failure_is_the_one_that_blames_no_peer() {
    use ascend_examples::decode::root_failure;
    use ascend_hal::Error;
    let secondary = Error::Collective {
        op: "all_reduce",
        rank: 0,
        size: 3,
        message: "rank 2 cannot take part in collective #4 (all_reduce(8 x F32, sum)): its \
                  stream failed before it: boom"
            .into(),
    };
    let left = Error::Collective {
        op: "all_reduce",
        rank: 1,
        size: 3,
        message: "rank(s) 2 left the group before collective #4".into(),
    };
    let own = Error::KernelFault {
        op: "matmul",
        message: "boom".into(),
    };
    let (rank, first, others) =
        root_failure(vec![(0, secondary.clone()), (1, left), (2, own.clone())], 3);
    assert_eq!((rank, first), (2, own));
    assert_eq!(others.len(), 2);
    assert_eq!(others[0], (0, secondary.clone()));
    // When every failure blames a peer, the lowest rank's comes first.
    let (rank, _, _) = root_failure(vec![(0, secondary.clone()), (1, secondary)], 3);
    assert_eq!(rank, 0);
}
