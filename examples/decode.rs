//! The decode example as a library function, so that tests run exactly what the example runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ascend_hal::alloc::{Allocator, CachingAllocator, DirectAllocator, SharedAllocator};
use ascend_hal::comm::Communicator;
use ascend_hal::prelude::*;
use ascend_hal::{Bytes, DType, Error, Result};
use ascend_kernels::{EngineBackend, KernelOps, KvFloat};
use paged_kv::{KvCache, KvCacheConfig, KvCacheSpec, RequestId};

use crate::arena::BumpArena;
use crate::engine::{contiguous_run, serve, EngineConfig, Preemption, Report, Request};
use crate::model::{Model, ModelConfig, ModelMemory, Weights};

/// Where the example's device memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorChoice {
    /// One caching allocator for weights, KV cache and activations (the default).
    Caching,
    /// Every buffer its own device allocation.
    Direct,
    /// Weights and KV cache from a caching allocator, activations from a bump arena per stream
    /// over it, rewound every step.
    Arena,
}

impl AllocatorChoice {
    /// Parses `caching`, `direct` or `arena`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "caching" => Some(AllocatorChoice::Caching),
            "direct" => Some(AllocatorChoice::Direct),
            "arena" => Some(AllocatorChoice::Arena),
            _ => None,
        }
    }

    /// The allocators for the model and for the KV cache on `device`.
    pub fn build<B: Backend>(
        self,
        device: &B::Device,
    ) -> Result<(ModelMemory<B>, SharedAllocator<B>)> {
        Ok(match self {
            AllocatorChoice::Caching => {
                let caching: SharedAllocator<B> =
                    Arc::new(CachingAllocator::new(device, Default::default())?);
                (ModelMemory::shared(Arc::clone(&caching)), caching)
            }
            AllocatorChoice::Direct => {
                let direct: SharedAllocator<B> = Arc::new(DirectAllocator::new(device));
                (ModelMemory::shared(Arc::clone(&direct)), direct)
            }
            AllocatorChoice::Arena => {
                let caching: SharedAllocator<B> =
                    Arc::new(CachingAllocator::new(device, Default::default())?);
                let arena = Arc::new(BumpArena::new(Arc::clone(&caching), 4 << 20));
                let memory = ModelMemory {
                    weights: Arc::clone(&caching),
                    activations: arena,
                };
                (memory, caching)
            }
        })
    }
}

impl fmt::Display for AllocatorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocatorChoice::Caching => {
                "caching (weights, KV cache and activations from one caching allocator)"
            }
            AllocatorChoice::Direct => {
                "direct (every buffer its own device allocation, nothing cached)"
            }
            AllocatorChoice::Arena => {
                "arena (activations from a per-step bump arena over the caching allocator that \
                 holds the weights and the KV cache)"
            }
        })
    }
}

/// The dtype the model computes in (its weights, activations and KV cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 everywhere (the default: every provider runs it).
    F32,
    /// f16, as NPU engines run: the ACL backend takes attention from CANN's fused operator.
    F16,
    /// bf16 (the ACL backend's Ascend C kernels have none; see `docs/kernels.md`).
    Bf16,
}

impl Precision {
    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Precision::F32),
            "f16" => Some(Precision::F16),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// The element type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// Settings of the decode example.
#[derive(Debug, Clone)]
pub struct DecodeArgs {
    /// Model sizes.
    pub model: ModelConfig,
    /// Requests to serve.
    pub requests: usize,
    /// Tokens of the shared system prompt.
    pub system_prompt: usize,
    /// Largest number of tokens a request generates.
    pub max_new: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Fraction of device memory the engine may use.
    pub utilization: f64,
    /// Cap on KV blocks (vLLM's `num_gpu_blocks_override`).
    pub max_blocks: usize,
    /// Longest sequence.
    pub max_model_len: usize,
    /// Forced preemption part-way, if any.
    pub preempt: Option<Preemption>,
    /// Weights and workload seed.
    pub seed: u64,
    /// Omit the per-step lines.
    pub quiet: bool,
    /// Where device memory comes from.
    pub allocator: AllocatorChoice,
    /// Tensor-parallel ranks (devices); 1 runs on one device.
    pub tp: usize,
    /// What the model computes in.
    pub precision: Precision,
}

impl Default for DecodeArgs {
    fn default() -> Self {
        DecodeArgs {
            model: ModelConfig::default(),
            requests: 12,
            system_prompt: 40,
            max_new: 24,
            block_size: 16,
            utilization: 0.9,
            max_blocks: 4096,
            max_model_len: 512,
            preempt: Some(Preemption::Swap),
            seed: 7,
            quiet: false,
            allocator: AllocatorChoice::Caching,
            tp: 1,
            precision: Precision::F32,
        }
    }
}

impl DecodeArgs {
    /// The most requests the example serves.
    pub const MAX_REQUESTS: usize = 10_000;

    /// Checks the sizes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let m = &self.model;
        if m.heads == 0 || m.kv_heads == 0 || m.layers == 0 || m.vocab == 0 || m.intermediate == 0 {
            return Err("layers, heads, kv-heads, vocab and intermediate must be positive".into());
        }
        if !m.hidden.is_multiple_of(m.heads)
            || !m.heads.is_multiple_of(m.kv_heads)
            || !m.head_size().is_multiple_of(2)
            || m.head_size() == 0
        {
            return Err(
                "hidden must split into heads of even size, and heads into kv-heads".into(),
            );
        }
        if self.block_size == 0 || self.requests == 0 || self.max_new == 0 {
            return Err("block-size, requests and max-new must be positive".into());
        }
        if self.tp == 0 || self.tp > 64 {
            return Err(format!("--tp {}: use 1 to 64 ranks", self.tp));
        }
        self.model
            .shard(0, self.tp)
            .map_err(|e| format!("--tp {}: {e}", self.tp))?;
        if self.requests > Self::MAX_REQUESTS {
            return Err(format!(
                "--requests {} is more than this example serves ({})",
                self.requests,
                Self::MAX_REQUESTS
            ));
        }
        let model = ModelConfig {
            max_position: self.max_model_len,
            ..*m
        };
        match model.elements() {
            Some(n) if n <= ModelConfig::MAX_ELEMENTS => {}
            _ => {
                return Err(format!(
                    "the model (vocab {}, hidden {}, {} layers, intermediate {}, max-model-len \
                     {}) would have more than {} elements; this example keeps to 4 GiB of f32",
                    m.vocab,
                    m.hidden,
                    m.layers,
                    m.intermediate,
                    self.max_model_len,
                    ModelConfig::MAX_ELEMENTS
                ))
            }
        }
        // The longest request: the system prompt, up to 47 user tokens, all its new tokens.
        let longest = self
            .system_prompt
            .checked_add(47)
            .and_then(|n| n.checked_add(self.max_new))
            .unwrap_or(usize::MAX);
        if longest > self.max_model_len {
            return Err(format!(
                "requests reach {longest} tokens (system prompt {} + up to 47 + max-new {}), \
                 more than --max-model-len {}",
                self.system_prompt, self.max_new, self.max_model_len
            ));
        }
        Ok(())
    }
}

/// How the example ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran; `mismatches` requests differ from the contiguous-KV run.
    Checked {
        /// The run.
        report: Report,
        /// Requests whose tokens differ.
        mismatches: usize,
    },
    /// The backend cannot run the kernels; nothing was computed.
    Skipped(&'static str),
}

/// A shared system prompt, then each user's own words; arrivals spread over the first steps.
/// The workload.
pub fn workload(a: &DecodeArgs) -> Vec<Request> {
    let mut x = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let vocab = a.model.vocab;
    let system: Vec<u32> = (0..a.system_prompt).map(|_| next(vocab) as u32).collect();
    (0..a.requests)
        .map(|r| {
            let mut prompt = system.clone();
            prompt.extend((0..8 + next(40)).map(|_| next(vocab) as u32));
            Request {
                id: RequestId(r as u64 + 1),
                prompt,
                // At least one new token: `--max-new 1` gave requests of 0, which never ended.
                max_new: (a.max_new / 2 + next(a.max_new / 2 + 1)).max(1),
                arrival: 1 + r / 3 * 2,
                sampling: Default::default(),
                stop: Vec::new(),
            }
        })
        .collect()
}

/// Of the failures of a group's ranks, `(rank, error)`, the one to report first: a rank's own
/// failure rather than the failures it caused in its peers (a collective that failed because
/// another rank could not take part, left the group, or never arrived). Returns it with its
/// rank, and the others in rank order.
pub fn root_failure(
    mut failures: Vec<(usize, Error)>,
    ranks: usize,
) -> (usize, Error, Vec<(usize, Error)>) {
    let blames_a_peer = |own: usize, e: &Error| {
        let text = e.to_string();
        (0..ranks).filter(|&r| r != own).any(|r| {
            [
                format!("rank {r} cannot take part"),
                format!("rank(s) {r} "),
                format!("rank {r} left the group"),
                format!("rank {r}'s matching send"),
                format!("rank {r} failed"),
                format!("nothing from rank {r}"),
            ]
            .iter()
            .any(|p| text.contains(p.as_str()))
        })
    };
    let at = failures
        .iter()
        .position(|(r, e)| !blames_a_peer(*r, e))
        .unwrap_or(0);
    let (rank, first) = failures.remove(at);
    (rank, first, failures)
}

/// Runs the example on `backend`, printing through `say`.
pub fn run<B: EngineBackend>(
    backend: B,
    a: &DecodeArgs,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    if a.tp <= 1 {
        return run_rank(&backend, a, say, None);
    }
    let count = backend.device_count()?;
    if count < a.tp {
        return Err(Error::InvalidArgument {
            op: "paged_decode",
            message: format!(
                "--tp {} needs {} devices; the {} backend has {count}",
                a.tp,
                a.tp,
                backend.name()
            ),
        });
    }
    let devices = (0..a.tp)
        .map(|i| backend.device(i))
        .collect::<Result<Vec<_>>>()?;
    let comms: Vec<Arc<dyn Communicator<Backend = B>>> = B::init_all(&devices)?
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Communicator<Backend = B>>)
        .collect();
    let weights = Weights::random(&a.model, a.seed);
    // One thread per rank, as one process per NPU would run it: every rank runs the same
    // scheduler over the same requests, so they take the same decisions (checked below), and
    // their collectives meet in the same order.
    let results: Vec<(Result<Outcome>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (backend, weights) = (&backend, &weights);
                scope.spawn(move || {
                    let mut lines = Vec::new();
                    let r = run_rank(
                        backend,
                        a,
                        &mut |l: &str| lines.push(l.to_string()),
                        Some((comm, weights)),
                    );
                    (r, lines)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Err(Error::InvalidArgument {
                            op: "paged_decode",
                            message: "a rank's thread panicked".into(),
                        }),
                        Vec::new(),
                    )
                })
            })
            .collect()
    });
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (rank, (result, lines)) in results.into_iter().enumerate() {
        if rank == 0 {
            for l in &lines {
                say(l);
            }
        }
        match result {
            Ok(o) => outcomes.push(o),
            Err(e) => failures.push((rank, e)),
        }
    }
    if !failures.is_empty() {
        let (rank, first, others) = root_failure(failures, a.tp);
        say(&format!("rank {rank} of {} failed first: {first}", a.tp));
        for (r, e) in others {
            let text = e.to_string();
            let short: String = text.chars().take(300).collect();
            let cut = if short.len() < text.len() { " ..." } else { "" };
            say(&format!(
                "rank {r} failed too (after rank {rank}): {short}{cut}"
            ));
        }
        return Err(first);
    }
    // Every rank made the same tokens (the same logits after the all-reduces).
    let reports: Vec<&Report> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Checked { report, .. } => Some(report),
            Outcome::Skipped(_) => None,
        })
        .collect();
    if let Some(first) = reports.first() {
        for (rank, r) in reports.iter().enumerate().skip(1) {
            if r.outputs != first.outputs {
                say(&format!(
                    "MISMATCH: rank {rank} generated other tokens than rank 0"
                ));
                return Ok(Outcome::Checked {
                    report: (*first).clone(),
                    mismatches: 1,
                });
            }
        }
        say(&format!("ranks: all {} generated the same tokens", a.tp));
    }
    Ok(outcomes.swap_remove(0))
}

/// One rank's run (the whole run without tensor parallelism), in the chosen precision.
fn run_rank<B: KernelOps>(
    backend: &B,
    a: &DecodeArgs,
    say: &mut dyn FnMut(&str),
    tp: Option<(Arc<dyn Communicator<Backend = B>>, &Weights)>,
) -> Result<Outcome> {
    match a.precision {
        Precision::F32 => run_typed::<B, f32>(backend, a, say, tp),
        Precision::F16 => run_typed::<B, half::f16>(backend, a, say, tp),
        Precision::Bf16 => run_typed::<B, half::bf16>(backend, a, say, tp),
    }
}

fn run_typed<B: KernelOps, T: KvFloat>(
    backend: &B,
    a: &DecodeArgs,
    say: &mut dyn FnMut(&str),
    tp: Option<(Arc<dyn Communicator<Backend = B>>, &Weights)>,
) -> Result<Outcome> {
    let rank = tp.as_ref().map_or(0, |(c, _)| c.rank());
    let device = backend.device(rank)?;
    let info = device.memory_info()?;
    say(&format!(
        "device {rank}: {} | memory free {} of {}",
        device.name(),
        Bytes(info.free),
        Bytes(info.total)
    ));
    let stream = device.new_stream()?;
    say(&format!("allocator: {}", a.allocator));
    let (memory, kv_alloc) = a.allocator.build::<B>(&device)?;
    let model = match tp {
        None => Model::<B, T>::new(&stream, a.model, a.seed, memory)?,
        Some((comm, weights)) => {
            say(&format!(
                "tensor parallel: rank {rank} of {}, {} of {} heads, {} of {} KV heads, {} of {} \
                 MLP columns",
                comm.size(),
                a.model.heads / comm.size(),
                a.model.heads,
                a.model.kv_heads / comm.size(),
                a.model.kv_heads,
                a.model.intermediate / comm.size(),
                a.model.intermediate
            ));
            Model::<B, T>::tensor_parallel(&stream, a.model, weights, memory, comm)?
        }
    };
    stream.synchronize()?;
    say(&format!("precision: {:?}", T::DTYPE));
    let spec = KvCacheSpec::new(
        a.model.layers,
        model.shard().kv_heads,
        a.model.head_size(),
        T::DTYPE,
    )
    .with_block_size(a.block_size);
    let config = KvCacheConfig {
        utilization: a.utilization,
        // Activations of a step, which the activation allocator keeps (a generous bound).
        activation_peak: 64 << 20,
        max_model_len: a.max_model_len,
        max_blocks: None,
        enable_prefix_caching: true,
        swap_blocks: 256,
        enable_kv_cache_events: false,
    };
    let kv_err = |e: paged_kv::KvError| Error::InvalidArgument {
        op: "KV cache",
        message: e.to_string(),
    };
    // Sizing first, as an engine logs it; the cache is then capped at --max-blocks.
    let full = spec
        .size_for(&paged_kv::MemoryBudget {
            total_memory: info.total,
            utilization: a.utilization,
            non_kv_peak: info.used() + config.activation_peak,
            max_model_len: a.max_model_len,
        })
        .map_err(kv_err)?;
    say(&format!("{full}"));
    let mut kv = KvCache::<B, T>::with_allocator(
        kv_alloc,
        &stream,
        spec,
        KvCacheConfig {
            max_blocks: Some(a.max_blocks),
            ..config
        },
    )
    .map_err(kv_err)?;
    if kv.sizing().num_blocks < full.num_blocks {
        say(&format!(
            "using {} blocks (--max-blocks), {} of KV cache",
            kv.sizing().num_blocks - 1,
            Bytes(kv.sizing().total_bytes())
        ));
    }
    if let Err(reason) = B::kernels_available() {
        say(&format!(
            "compute skipped: the {} backend cannot run the kernels: {reason}",
            backend.name()
        ));
        return Ok(Outcome::Skipped(reason));
    }

    let requests = workload(a);
    let prompt_tokens: usize = requests.iter().map(|r| r.prompt.len()).sum();
    say(&format!(
        "serving {} requests ({prompt_tokens} prompt tokens, a {}-token shared system prompt), model {} layers x {} hidden, {} heads / {} KV heads",
        requests.len(), a.system_prompt, a.model.layers, a.model.hidden, a.model.heads, a.model.kv_heads
    ));
    let cfg = EngineConfig {
        max_batch: 8,
        max_tokens_per_step: 96,
        preempt_at_step: a.preempt.map(|_| 6),
        preemption: a.preempt.unwrap_or(Preemption::Swap),
    };
    let quiet = a.quiet;
    let report = serve(&stream, &model, &mut kv, &requests, cfg, |line| {
        if !quiet {
            say(line);
        }
    })?;
    say(&format!(
        "done: {} steps, {} tokens generated in {:.2} s = {:.1} tokens/s, largest batch {}",
        report.steps,
        report.generated,
        report.seconds,
        report.generated as f64 / report.seconds,
        report.max_batch_seen
    ));
    say(&format!(
        "prefix cache hit rate {:.1}%, preemptions: {} by swapping, {} by recomputation",
        100.0 * report.prefix_hit_rate,
        report.swaps,
        report.recomputes
    ));
    // One line per allocator, naming what it holds.
    let mut groups: Vec<(Vec<&str>, &SharedAllocator<B>)> = Vec::new();
    for (what, alloc) in [
        ("weights", &model.memory().weights),
        ("activations", &model.memory().activations),
        ("KV cache", kv.allocator()),
    ] {
        match groups.iter_mut().find(|(_, a)| Arc::ptr_eq(a, alloc)) {
            Some((names, _)) => names.push(what),
            None => groups.push((vec![what], alloc)),
        }
    }
    for (names, alloc) in groups {
        let s = alloc.stats();
        say(&format!(
            "{} allocator ({}): peak allocated {}, peak reserved {}, {} allocations, {} from cache",
            alloc.name(),
            names.join(", "),
            Bytes(s.peak_allocated),
            Bytes(s.peak_reserved),
            s.num_allocs,
            s.cache_hits
        ));
    }

    // The check: the same model, one request at a time, over a contiguous KV cache.
    let expected: HashMap<RequestId, Vec<u32>> =
        contiguous_run(&stream, &model, &requests, a.block_size)?;
    let mut mismatches = 0;
    for r in &requests {
        let (got, want) = (&report.outputs[&r.id], &expected[&r.id]);
        if got != want {
            mismatches += 1;
            let at = got
                .iter()
                .zip(want)
                .position(|(x, y)| x != y)
                .unwrap_or(got.len().min(want.len()));
            say(&format!(
                "MISMATCH {}: paged {:?} vs contiguous {:?} (first difference at token {at})",
                r.id, got, want
            ));
        }
    }
    if mismatches == 0 {
        say(&format!(
            "check: all {} generated tokens match the contiguous-KV run",
            report.generated
        ));
    } else {
        say(&format!(
            "check FAILED: {mismatches} of {} requests differ",
            requests.len()
        ));
    }
    Ok(Outcome::Checked { report, mismatches })
}
