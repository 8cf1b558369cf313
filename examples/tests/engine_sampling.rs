//! The engine's sampling, stop tokens, observer and request checks, on the small random-weight
//! model (fast): seeded sampling is reproducible and batch-independent (the paged, batched run
//! equals each request alone over a contiguous cache), another seed changes it, a stop token
//! ends a request, and bad requests are refused by name before anything runs.

use ascend_examples::decode::{workload, DecodeArgs};
use ascend_examples::engine::{
    contiguous_run, serve, serve_observed, EngineConfig, Observer, Preemption, Report, Request,
    StepStats,
};
use ascend_examples::model::{Model, ModelMemory};
use ascend_examples::sampling::SamplingParams;
use ascend_hal::prelude::*;
use ascend_hal::DType;
use hal_mock::CpuBackend;
use paged_kv::{KvCache, KvCacheConfig, KvCacheSpec, RequestId};

struct Setup {
    stream: <CpuBackend as Backend>::Stream,
    model: Model<CpuBackend>,
    kv: KvCache<CpuBackend, f32>,
}

fn setup() -> Setup {
    let a = DecodeArgs::default();
    let backend = CpuBackend::new();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let model = Model::new(&stream, a.model, 7, ModelMemory::caching(&device).unwrap()).unwrap();
    let spec = KvCacheSpec::new(
        a.model.layers,
        a.model.kv_heads,
        a.model.head_size(),
        DType::F32,
    )
    .with_block_size(16);
    let kv = KvCache::new(
        &stream,
        spec,
        KvCacheConfig {
            max_blocks: Some(512),
            max_model_len: a.max_model_len,
            ..KvCacheConfig::default()
        },
    )
    .unwrap();
    Setup { stream, model, kv }
}

fn engine(preempt_at_step: Option<usize>) -> EngineConfig {
    EngineConfig {
        max_batch: 8,
        max_tokens_per_step: 96,
        preempt_at_step,
        preemption: Preemption::Recompute,
    }
}

fn sampled(seed: u64) -> Vec<Request> {
    workload(&DecodeArgs::default())
        .into_iter()
        .map(|r| Request {
            sampling: SamplingParams::sampled(0.8, 0.9, seed + r.id.0),
            ..r
        })
        .collect()
}

fn run(s: &mut Setup, requests: &[Request], preempt_at_step: Option<usize>) -> Report {
    serve(
        &s.stream,
        &s.model,
        &mut s.kv,
        requests,
        engine(preempt_at_step),
        |_| {},
    )
    .unwrap()
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_the_batch() {
    let mut s = setup();
    let requests = sampled(100);
    let batched = run(&mut s, &requests, Some(6));
    assert_eq!(batched.recomputes, 1);
    // Each request alone, whole prompt then token by token, over a contiguous cache: the same
    // logits, so the same draws from the same seeds.
    let alone = contiguous_run(&s.stream, &s.model, &requests, 16).unwrap();
    assert_eq!(batched.outputs, alone);
    // Again from the start: the same tokens.
    assert_eq!(run(&mut s, &requests, None).outputs, batched.outputs);
    // Other seeds: other tokens (for at least one request), and unlike greedy.
    let other = run(&mut s, &sampled(200), None);
    assert_ne!(other.outputs, batched.outputs);
    let greedy = run(&mut s, &workload(&DecodeArgs::default()), None);
    assert_ne!(greedy.outputs, batched.outputs);
}

#[test]
fn a_stop_token_ends_a_request_with_it() {
    let mut s = setup();
    let base = workload(&DecodeArgs::default());
    let free = run(&mut s, &base, None);
    // Stop each request at the third token it generates without a stop list.
    let stopped: Vec<Request> = base
        .iter()
        .map(|r| Request {
            stop: vec![free.outputs[&r.id][2]],
            ..r.clone()
        })
        .collect();
    let out = run(&mut s, &stopped, None);
    for r in &base {
        let full = &free.outputs[&r.id];
        let first = full.iter().position(|t| *t == full[2]).unwrap();
        assert_eq!(out.outputs[&r.id], full[..=first], "{}", r.id);
    }
    assert!(out.generated < free.generated);
}

#[derive(Default)]
struct Seen {
    steps: Vec<StepStats>,
    tokens: Vec<(RequestId, u32, bool)>,
    lines: usize,
}

impl Observer for Seen {
    fn log(&mut self, _line: &str) {
        self.lines += 1;
    }
    fn step(&mut self, s: &StepStats) {
        self.steps.push(*s);
    }
    fn token(&mut self, id: RequestId, token: u32, finished: bool) {
        self.tokens.push((id, token, finished));
    }
}

#[test]
fn the_observer_sees_every_step_and_token_in_order() {
    let mut s = setup();
    let requests = workload(&DecodeArgs::default());
    let mut seen = Seen::default();
    let report = serve_observed(
        &s.stream,
        &s.model,
        &mut s.kv,
        &requests,
        engine(None),
        &mut seen,
    )
    .unwrap();
    assert_eq!(seen.tokens.len(), report.generated);
    for r in &requests {
        let mine: Vec<_> = seen.tokens.iter().filter(|t| t.0 == r.id).collect();
        let ids: Vec<u32> = mine.iter().map(|t| t.1).collect();
        assert_eq!(ids, report.outputs[&r.id], "{}", r.id);
        // Finished on its last token only.
        assert!(mine[..mine.len() - 1].iter().all(|t| !t.2) && mine.last().unwrap().2);
    }
    // One step record per forward pass, numbered, with consistent totals.
    assert_eq!(seen.steps.len(), seen.lines);
    assert_eq!(seen.steps.last().unwrap().generated, report.generated);
    assert_eq!(
        seen.steps.iter().map(|s| s.sampled).sum::<usize>(),
        report.generated
    );
    for w in seen.steps.windows(2) {
        assert!(w[0].step < w[1].step && w[0].elapsed <= w[1].elapsed);
    }
    for st in &seen.steps {
        assert!(st.kv_blocks_used <= st.kv_blocks && st.batch >= st.prefill && st.tokens > 0);
    }
}

#[test]
fn bad_requests_are_refused_by_name_before_anything_runs() {
    let mut s = setup();
    let good = Request::greedy(RequestId(1), vec![1, 2, 3], 4);
    let cases: Vec<(Vec<Request>, &str)> = vec![
        (
            vec![Request {
                sampling: SamplingParams::sampled(-0.5, 1.0, 0),
                ..good.clone()
            }],
            "request r1: temperature -0.5 must be a finite number >= 0",
        ),
        (
            vec![Request {
                sampling: SamplingParams::sampled(1.0, 1.5, 0),
                ..good.clone()
            }],
            "request r1: top-p 1.5 must be in (0, 1]",
        ),
        (
            vec![Request::greedy(RequestId(1), vec![1, 512], 4)],
            "request r1: token 512 is outside the model's vocabulary of 512",
        ),
        (
            vec![Request {
                stop: vec![9999],
                ..good.clone()
            }],
            "token 9999 is outside",
        ),
        (
            vec![Request::greedy(RequestId(1), vec![], 4)],
            "request r1 has an empty prompt",
        ),
        (
            vec![good.clone(), good.clone()],
            "request id r1 is used twice",
        ),
        (
            vec![Request::greedy(RequestId(1), vec![1; 500], 20)],
            "more than the model's 512 positions",
        ),
    ];
    for (requests, want) in cases {
        let before = s.kv.manager().metrics().free_blocks;
        let e = serve(
            &s.stream,
            &s.model,
            &mut s.kv,
            &requests,
            engine(None),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}\n  wanted: {want}");
        assert_eq!(
            s.kv.manager().metrics().free_blocks,
            before,
            "nothing was taken"
        );
    }
}

#[test]
fn requests_arriving_at_step_zero_or_far_ahead_are_served() {
    let mut s = setup();
    let mut early = Request::greedy(RequestId(1), vec![1, 2, 3], 3);
    early.arrival = 0;
    let mut late = Request::greedy(RequestId(2), vec![4, 5, 6], 3);
    late.arrival = 1_000_000;
    let report = serve(
        &s.stream,
        &s.model,
        &mut s.kv,
        &[early.clone(), late.clone()],
        engine(None),
        |_| {},
    )
    .unwrap();
    assert_eq!(report.outputs[&RequestId(1)].len(), 3);
    assert_eq!(report.outputs[&RequestId(2)].len(), 3);
    // The idle steps before the late arrival are skipped, not run one by one.
    assert!(report.steps < 20, "{} steps", report.steps);
    // Each is served as it would be alone.
    let alone = contiguous_run(&s.stream, &s.model, &[early, late], 16).unwrap();
    assert_eq!(report.outputs, alone);
}

#[test]
fn a_scheduler_that_cannot_take_work_is_refused_by_name() {
    let mut s = setup();
    let req = [Request::greedy(RequestId(1), vec![1, 2, 3], 3)];
    for (cfg, want) in [
        (
            EngineConfig {
                max_batch: 0,
                ..engine(None)
            },
            "max_batch is 0",
        ),
        (
            EngineConfig {
                max_tokens_per_step: 0,
                ..engine(None)
            },
            "max_tokens_per_step is 0",
        ),
    ] {
        let e = serve(&s.stream, &s.model, &mut s.kv, &req, cfg, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains("KV cache"), "not blamed on the cache: {e}");
    }
}

#[test]
fn logits_that_are_not_finite_are_an_error_naming_the_step() {
    let a = DecodeArgs::default();
    let mut s = setup();
    let mut w = ascend_examples::model::Weights::random(&a.model, 7);
    w.final_norm[3] = f32::NAN;
    let device = s.stream.device();
    let model = Model::from_weights(
        &s.stream,
        a.model,
        w,
        ModelMemory::caching(&device).unwrap(),
    )
    .unwrap();
    let req = [Request::greedy(RequestId(4), vec![1, 2, 3], 3)];
    let e = serve(&s.stream, &model, &mut s.kv, &req, engine(None), |_| {})
        .err()
        .unwrap_or_else(|| panic!("NaN logits were sampled from"));
    assert!(
        matches!(e, ascend_hal::Error::NonFinite { op: "sampling", .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("step 1: the logits of request r4 are not finite (NaN at token"),
        "{e}"
    );
}
