//! Serving speed of a GGUF model through the engine on the default backend, measured as
//! `scripts/hf_reference.py speed` measures Hugging Face transformers and as llama.cpp's
//! `llama-bench` / `llama-batched-bench` measure themselves (`scripts/smollm2-speed.sh` and
//! `scripts/llama-cpp-speed.sh` run them side by side and print the ratios): prefill tokens/s of
//! one prompt in one step, and decode tokens/s at batch 1 and at batch 8 (32 timed decode steps
//! after an untimed one), each the mean over `--repeats` runs (3, as the script runs
//! `llama-bench -r 3`, whose figure is its runs' mean). Also the model's weight bytes, the bytes of weights a decode step
//! reads, the process's peak resident memory, and this machine's read bandwidth, from memory
//! (a 1 GiB buffer) and over a buffer of one step's weight bytes (the limit of batch-1 decode:
//! bandwidth / bytes per step; higher than memory's where the caches hold the weights), and, on
//! the CPU backend, which int8 loop its quantized GEMMs ran and whether AMX ran its batches of
//! 16 rows or more (`null` on other backends). Prints one JSON line.
//!
//! The matrices stay as the file's blocks unless `--dequantize` (floats) or `--w8a8` (the
//! linear layers requantized to int8 per channel, int8 activations per token) is given.
//!
//! ```text
//! cargo run --release --example smollm2_speed -- [--model PATH] [--prompt-len 128] [--decode-steps 32] [--repeats 3] [--dequantize | --w8a8]
//! ```

use std::process::ExitCode;

use ascend_examples::engine::{
    serve_observed, EngineConfig, Observer, Preemption, Request, StepStats,
};
use ascend_examples::llama_gguf::Storage;
use ascend_examples::llm::{kv_cache, smollm2_path, BoxError, Llm};
use ascend_examples::model::ModelMemory;
use ascend_hal::prelude::*;
use ascend_kernels::{EngineBackend, EngineVisitor, KernelOps, RunEngine};
use paged_kv::RequestId;

#[derive(Default)]
struct Steps(Vec<StepStats>);

impl Observer for Steps {
    fn step(&mut self, s: &StepStats) {
        self.0.push(*s);
    }
}

/// The generic body, entered with whichever backend was discovered.
struct Measure<'a> {
    path: &'a std::path::Path,
    prompt_len: usize,
    decode_steps: usize,
    repeats: usize,
    storage: Storage,
}

impl EngineVisitor for Measure<'_> {
    type Output = Result<String, BoxError>;
    fn visit<B: EngineBackend>(self, backend: B) -> Self::Output {
        measure(backend, self)
    }
}

/// Most tokens a step computes: llama.cpp's default micro-batch (`-ub 512`).
const TOKENS_PER_STEP: usize = 512;

/// The process's peak resident set (`VmHWM`), in bytes, where Linux reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This machine's read bandwidth in bytes/s over a buffer of `bytes`: the best of five passes
/// summing it, split over the same threads the kernels use. Over 1 GiB it is memory's; over a
/// decode step's weight bytes it is the rate at which a step can read them again when the
/// caches hold them (a last-level cache larger than the model makes it far higher). A weight
/// byte cannot be read faster, so `bandwidth / weight bytes per step` bounds batch-1 decode.
fn read_bandwidth(bytes: usize) -> f64 {
    let words = (bytes / 8).max(1);
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = words.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn measure<B: KernelOps>(backend: B, m: Measure<'_>) -> Result<String, BoxError> {
    let Measure {
        path,
        prompt_len,
        decode_steps,
        repeats,
        storage,
    } = m;
    if let Err(reason) = B::kernels_available() {
        return Err(format!(
            "the {} backend cannot run the kernels: {reason}",
            backend.name()
        )
        .into());
    }
    let device = backend.device(0)?;
    let stream = device.new_stream()?;
    let memory = ModelMemory::caching(&device)?;
    let max_len = prompt_len + decode_steps + 8;
    let llm = Llm::<B>::load_with(&stream, path, max_len, memory.clone(), storage)?;
    let cfg = *llm.config();
    let mut seed = 0x5eed_u64;
    let mut prompt = || -> Vec<u32> {
        (0..prompt_len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                100 + (seed % (cfg.vocab as u64 - 100)) as u32
            })
            .collect()
    };
    let engine = EngineConfig {
        max_batch: 8,
        // llama.cpp's default micro-batch: a step computes at most this many tokens (longer
        // prefills are chunked), so both engines hold the same activations at once.
        max_tokens_per_step: TOKENS_PER_STEP,
        preempt_at_step: None,
        preemption: Preemption::Recompute,
    };
    let mut run = |batch: usize| -> Result<Vec<StepStats>, BoxError> {
        // A fresh cache each time: random prompts share nothing, and no run helps the next.
        let mut kv = kv_cache(
            &stream,
            std::sync::Arc::clone(&memory.weights),
            &cfg,
            16,
            0.9,
            4096,
        )?;
        let requests: Vec<Request> = (0..batch)
            .map(|i| Request::greedy(RequestId(i as u64 + 1), prompt(), decode_steps + 2))
            .collect();
        let mut steps = Steps::default();
        serve_observed(&stream, &llm.model, &mut kv, &requests, engine, &mut steps)?;
        Ok(steps.0)
    };
    run(1)?; // warm-up: first touches of the weights and the allocator's pools
    let decode_rate = |steps: &[StepStats], batch: usize| -> f64 {
        let timed: Vec<&StepStats> = steps
            .iter()
            .filter(|s| s.prefill == 0 && s.batch == batch)
            .skip(1)
            .take(decode_steps)
            .collect();
        let secs: f64 = timed.iter().map(|s| s.seconds).sum();
        timed.iter().map(|s| s.sampled).sum::<usize>() as f64 / secs
    };
    // Each rate is the mean of `repeats` runs': one run's 32 steps take a fraction of a second,
    // so one noisy moment of a shared host moved a single run's batch-1 figure by 40%.
    let (mut prefill, mut b1, mut b8) = (0f64, 0f64, 0f64);
    for _ in 0..repeats {
        let one = run(1)?;
        prefill += one[0].tokens as f64 / one[0].seconds / repeats as f64;
        b1 += decode_rate(&one, 1) / repeats as f64;
        b8 += decode_rate(&run(8)?, 8) / repeats as f64;
    }
    let rss = peak_rss();
    // After the RSS reading: the measurements' buffers are not the engine's memory.
    let bandwidth = read_bandwidth(1 << 30);
    let step_bandwidth = read_bandwidth(llm.model.weight_bytes_per_step());
    let on_cpu = (backend.name() == "cpu").then(|| {
        (
            ascend_kernels::cpu::quant_matmul_loop().name(),
            ascend_kernels::cpu::amx_available(),
        )
    });
    Ok(format!(
        "{{\"backend\": \"{}\", \"threads\": {}, \"storage\": \"{}\", \"prompt_len\": {prompt_len}, \"repeats\": {repeats}, \"prefill_tokens_per_s\": {prefill:.2}, \"decode_b1_tokens_per_s\": {b1:.2}, \"decode_b8_tokens_per_s\": {b8:.2}, \"weight_bytes\": {}, \"weight_bytes_per_step\": {}, \"peak_rss_bytes\": {}, \"read_bandwidth_bytes_per_s\": {:.0}, \"step_read_bandwidth_bytes_per_s\": {:.0}, \"cpu_int8_loop\": {}, \"cpu_amx\": {}}}",
        backend.name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        match storage {
            Storage::Quantized => "quantized",
            Storage::Dequantized => "dequantized",
            Storage::W8A8 => "w8a8",
        },
        llm.model.weight_bytes(),
        llm.model.weight_bytes_per_step(),
        rss.map_or("null".to_string(), |b| b.to_string()),
        bandwidth,
        step_bandwidth,
        on_cpu.map_or("null".to_string(), |(int8, _)| format!("\"{int8}\"")),
        on_cpu.map_or("null".to_string(), |(_, amx)| amx.to_string()),
    ))
}

fn main() -> ExitCode {
    let mut path = smollm2_path();
    let (mut prompt_len, mut decode_steps, mut repeats) = (128usize, 32usize, 3usize);
    let mut storage = Storage::Quantized;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--dequantize" || a == "--w8a8" {
            storage = if a == "--w8a8" {
                Storage::W8A8
            } else {
                Storage::Dequantized
            };
            continue;
        }
        let value = args.next();
        let num = |v: Option<String>| {
            v.and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0 && n <= 4096)
        };
        match (a.as_str(), value) {
            ("--model", Some(v)) => path = Some(v.into()),
            ("--prompt-len", v) => match num(v) {
                Some(n) => prompt_len = n,
                None => return usage("--prompt-len takes a whole number from 1 to 4096"),
            },
            ("--decode-steps", v) => match num(v) {
                Some(n) => decode_steps = n,
                None => return usage("--decode-steps takes a whole number from 1 to 4096"),
            },
            ("--repeats", v) => match num(v).filter(|&n| n <= 100) {
                Some(n) => repeats = n,
                None => return usage("--repeats takes a whole number from 1 to 100"),
            },
            (other, _) => return usage(&format!("unknown option {other}")),
        }
    }
    let Some(path) = path else {
        return usage(
            "no --model, and SmolLM2 is not in the model cache (scripts/fetch-smollm2.sh)",
        );
    };
    let result = hal_mock::discover().map_err(BoxError::from).and_then(|d| {
        d.run_engine(Measure {
            path: &path,
            prompt_len,
            decode_steps,
            repeats,
            storage,
        })
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(e: &str) -> ExitCode {
    eprintln!(
        "error: {e}\nusage: smollm2_speed [--model PATH] [--prompt-len N] [--decode-steps N] \
         [--repeats N] [--dequantize | --w8a8]"
    );
    ExitCode::from(2)
}
