//! The chat example as a library function, so that tests run exactly what the example runs:
//! a GGUF model answers prompts through the engine, its text streamed as it is generated.
//!
//! Several prompts are served together (continuous batching; the chat template's system prompt
//! is computed once and then found in the prefix cache). Their answers are printed in prompt
//! order: the oldest unfinished answer streams live, later ones are held until it ends and
//! then caught up, so the output reads like a transcript whatever the batch did.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use ascend_hal::prelude::*;
use ascend_hal::{Bytes, DType};
use ascend_kernels::{KernelOps, KvFloat};
use paged_kv::RequestId;

use crate::engine::{
    serve_observed, EngineConfig, Observer, Preemption, Report, Request, StepStats,
};
use crate::llama_gguf::Storage;
use crate::llm::{kv_cache, model_cache, smollm2_path, BoxError, Llm, SMOLLM2_FILE};
use crate::model::ModelMemory;
use crate::sampling::SamplingParams;
use crate::tokenizer::{Message, TextStream};

/// Settings of the chat example.
#[derive(Debug, Clone)]
pub struct ChatArgs {
    /// The GGUF file.
    pub model: PathBuf,
    /// A system message (else the template's default, if it has one).
    pub system: Option<String>,
    /// Most tokens per answer.
    pub max_new: usize,
    /// Sampling (greedy by default); each prompt's seed is this seed plus its index.
    pub sampling: SamplingParams,
    /// Longest sequence (prompt and answer).
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Cap on KV blocks.
    pub max_blocks: usize,
    /// Most requests in a step.
    pub max_batch: usize,
    /// Most tokens computed in a step (longer prompts are prefilled in chunks).
    pub max_tokens_per_step: usize,
    /// Print a progress line per step (on the error stream).
    pub progress: bool,
    /// How the file's block-quantized matrices are stored (kept as blocks by default,
    /// dequantized, or the linear layers requantized to W8A8).
    pub storage: Storage,
    /// What the model computes in and its KV cache holds: f32 (default), f16 or bf16. The ACL
    /// backend runs block-quantized weights with f16/bf16 only.
    pub dtype: DType,
}

impl ChatArgs {
    /// Defaults for `model`.
    pub fn new(model: PathBuf) -> Self {
        ChatArgs {
            model,
            system: None,
            max_new: 256,
            sampling: SamplingParams::default(),
            max_model_len: 2048,
            block_size: 16,
            max_blocks: 4096,
            max_batch: 8,
            max_tokens_per_step: 256,
            progress: true,
            storage: Storage::Quantized,
            dtype: DType::F32,
        }
    }

    /// Checks the values, saying which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.sampling.validate()?;
        for (name, v) in [
            ("--max-new", self.max_new),
            ("--max-model-len", self.max_model_len),
            ("--block-size", self.block_size),
            ("--max-blocks", self.max_blocks),
            ("--max-batch", self.max_batch),
            ("--max-tokens-per-step", self.max_tokens_per_step),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.max_model_len > 1 << 20 || self.max_blocks > 1 << 24 || self.block_size > 1024 {
            return Err("--max-model-len, --max-blocks or --block-size is beyond any model".into());
        }
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(format!("dtype {}: expected f32, f16 or bf16", self.dtype));
        }
        Ok(())
    }
}

/// The `chat` example's usage text.
pub const USAGE: &str = "usage: chat [options] [--] [PROMPT...]

Answers each prompt with a GGUF model on the default backend, streaming the text.
Prompts come from the arguments, else from standard input, one per line. A prompt that
starts with '-' goes after '--'.

  --model PATH             the .gguf file [SmolLM2-135M-Instruct in the model cache]
  --system TEXT            system message [the chat template's default]
  --max-new N              most tokens per answer [256]
  --temperature T          0 is greedy [0]
  --top-p P                nucleus sampling threshold [1]
  --seed N                 sampling seed (prompt i uses seed + i) [0]
  --max-model-len N        longest sequence, at most the model's context length [2048]
  --block-size N           tokens per KV block [16]
  --max-blocks N           cap on KV blocks [4096]
  --max-batch N            most requests in a step [8]
  --max-tokens-per-step N  most tokens computed in a step [256]
  --dequantize             dequantize Q4_0/Q4_1/Q8_0 weights to floats at load (exact float
                           products; 3.5-7x the memory) [kept as blocks]
  --w8a8                   requantize the linear layers to int8 per channel and multiply them
                           with int8 activations per token (W8A8) [kept as blocks]
  --dtype f32|f16|bf16     what the model computes in (the NPU runs blocks with f16/bf16) [f32]
  --no-progress            no per-step progress lines
  -h, --help               this text";

/// What the `chat` command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Print [`USAGE`].
    Help,
    /// Answer the prompts (none: read them from standard input).
    Run(ChatArgs, Vec<String>),
}

/// Parses the `chat` example's arguments (without the program name). Anything starting with
/// `-` before a `--` is an option: an unknown one is an error, not a prompt.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut model: Option<PathBuf> = None;
    let mut a = ChatArgs::new(PathBuf::new());
    let mut prompts = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            prompts.extend(it.by_ref());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            prompts.push(arg);
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--no-progress" => {
                a.progress = false;
                continue;
            }
            "--dequantize" | "--w8a8" => {
                if a.storage != Storage::Quantized {
                    return Err("--dequantize and --w8a8 are exclusive: choose one".into());
                }
                a.storage = if arg == "--w8a8" {
                    Storage::W8A8
                } else {
                    Storage::Dequantized
                };
                continue;
            }
            _ => {}
        }
        let known = [
            "--model",
            "--system",
            "--max-new",
            "--temperature",
            "--top-p",
            "--seed",
            "--max-model-len",
            "--block-size",
            "--max-blocks",
            "--max-batch",
            "--max-tokens-per-step",
            "--dtype",
        ];
        if !known.contains(&arg.as_str()) {
            return Err(format!(
                "unknown option {arg} (a prompt that starts with '-' goes after '--')"
            ));
        }
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{arg} {v}: not a whole number"))
        };
        let float = |v: &str| {
            v.parse::<f32>()
                .map_err(|_| format!("{arg} {v}: not a number"))
        };
        match arg.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--system" => a.system = Some(value),
            "--max-new" => a.max_new = num(&value)?,
            "--temperature" => a.sampling.temperature = float(&value)?,
            "--top-p" => a.sampling.top_p = float(&value)?,
            "--seed" => a.sampling.seed = num(&value)? as u64,
            "--max-model-len" => a.max_model_len = num(&value)?,
            "--block-size" => a.block_size = num(&value)?,
            "--max-blocks" => a.max_blocks = num(&value)?,
            "--max-batch" => a.max_batch = num(&value)?,
            "--dtype" => {
                a.dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    v => return Err(format!("--dtype {v}: expected f32, f16 or bf16")),
                }
            }
            _ => a.max_tokens_per_step = num(&value)?,
        }
    }
    a.model = match model.or_else(smollm2_path) {
        Some(m) => m,
        None => {
            return Err(format!(
                "no --model, and {SMOLLM2_FILE} is not in the model cache ({}); fetch it with \
                 scripts/fetch-smollm2.sh",
                model_cache().map_or("unset HOME".into(), |p| p.display().to_string())
            ))
        }
    };
    a.validate()?;
    Ok(Command::Run(a, prompts))
}

/// Prints answers in prompt order, streaming the oldest unfinished one.
struct Transcript<'a, 't> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    progress: bool,
    headers: Vec<String>,
    index: HashMap<RequestId, usize>,
    streams: Vec<TextStream<'t>>,
    held: Vec<String>,
    finished: Vec<bool>,
    head: usize,
    io_error: Option<std::io::Error>,
}

impl Transcript<'_, '_> {
    fn write(&mut self, text: &str) {
        if self.io_error.is_none() {
            if let Err(e) = self
                .out
                .write_all(text.as_bytes())
                .and_then(|_| self.out.flush())
            {
                self.io_error = Some(e);
            }
        }
    }

    /// Prints the head's header and held text, and moves past finished answers.
    fn catch_up(&mut self) {
        while self.head < self.headers.len() {
            let held = std::mem::take(&mut self.held[self.head]);
            self.write(&held);
            if !self.finished[self.head] {
                break;
            }
            self.write("\n");
            self.head += 1;
            if self.head < self.headers.len() {
                let header = self.headers[self.head].clone();
                self.write(&header);
            }
        }
    }
}

impl Observer for Transcript<'_, '_> {
    fn token(&mut self, id: RequestId, token: u32, finished: bool) {
        let Some(&i) = self.index.get(&id) else {
            return;
        };
        match self.streams[i].push(token) {
            Ok(text) => self.held[i].push_str(&text),
            Err(e) => self.held[i].push_str(&format!("[{e}]")),
        }
        self.finished[i] |= finished;
        if i == self.head {
            self.catch_up();
        }
    }

    fn step(&mut self, s: &StepStats) {
        if !self.progress {
            return;
        }
        let line = format!(
            "[step {:>4}] batch {} ({} prefill) | {:>3} tokens in {:>6.1} ms | {:>6.1} tok/s (avg {:.1}) | KV blocks {}/{} | prefix hit {:.1}%\n",
            s.step,
            s.batch,
            s.prefill,
            s.tokens,
            s.seconds * 1e3,
            s.sampled as f64 / s.seconds.max(1e-9),
            s.generated as f64 / s.elapsed.max(1e-9),
            s.kv_blocks_used,
            s.kv_blocks,
            100.0 * s.prefix_hit_rate
        );
        let _ = self.err.write_all(line.as_bytes());
    }
}

/// What a chat run did.
#[derive(Debug)]
pub struct ChatOutcome {
    /// The engine's report.
    pub report: Report,
    /// The answers, in prompt order (special tokens left out).
    pub answers: Vec<String>,
}

/// A model loaded on a device with its KV cache, answering prompts batch after batch (the cache
/// keeps what earlier batches computed, so a shared system prompt is computed once).
pub struct ChatSession<B: KernelOps, T: KvFloat = f32> {
    args: ChatArgs,
    llm: Llm<B, T>,
    kv: paged_kv::KvCache<B, T>,
    stream: B::Stream,
    next_id: u64,
}

impl<B: KernelOps, T: KvFloat> ChatSession<B, T> {
    /// Loads the model on `backend`'s first device, computing in `T`, writing what it did to
    /// `err`. `T` must be `args.dtype` ([`run`] picks it from there).
    pub fn open(backend: &B, args: &ChatArgs, err: &mut dyn Write) -> Result<Self, BoxError> {
        args.validate()?;
        if args.dtype != T::DTYPE {
            return Err(format!(
                "a ChatSession computing in {} was opened with dtype {}: open it with the dtype \
                 the arguments name",
                T::DTYPE,
                args.dtype
            )
            .into());
        }
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
        let started = std::time::Instant::now();
        let llm = Llm::<B, T>::load_with(
            &stream,
            &args.model,
            args.max_model_len,
            memory.clone(),
            args.storage,
        )?;
        let cfg = *llm.config();
        writeln!(
            err,
            "{} on {}: {} layers, hidden {}, {} heads / {} KV heads, vocab {}, weights {} \
             ({:.1} MB), loaded in {:.2} s",
            args.model.display(),
            device.name(),
            cfg.layers,
            cfg.hidden,
            cfg.heads,
            cfg.kv_heads,
            cfg.vocab,
            match args.storage {
                Storage::Quantized => "as blocks",
                Storage::Dequantized => "dequantized",
                Storage::W8A8 => "W8A8",
            },
            llm.model.weight_bytes() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        )?;
        let kv = kv_cache(
            &stream,
            Arc::clone(&memory.weights),
            &cfg,
            args.block_size,
            0.9,
            args.max_blocks,
        )?;
        writeln!(
            err,
            "KV cache: {} blocks of {} tokens ({}), sampling: {}",
            kv.sizing().num_blocks - 1,
            args.block_size,
            Bytes(kv.sizing().total_bytes()),
            args.sampling
        )?;
        Ok(ChatSession {
            args: args.clone(),
            llm,
            kv,
            stream,
            next_id: 1,
        })
    }

    /// The model and tokenizer.
    pub fn llm(&self) -> &Llm<B, T> {
        &self.llm
    }

    /// Answers `prompts` (served together), writing the answers to `out` as they are generated
    /// and progress lines to `err`.
    pub fn answer(
        &mut self,
        prompts: &[String],
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ChatOutcome, BoxError> {
        if prompts.is_empty() {
            return Err("no prompts".into());
        }
        let args = &self.args;
        let cfg = *self.llm.config();
        let tok = &self.llm.tokenizer;
        let eos = tok.eos();
        let mut requests = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(Message::system(s.clone()));
            }
            messages.push(Message::user(p.clone()));
            let ids = tok.encode(&tok.chat_prompt(&messages)?)?;
            let room = cfg.max_position.saturating_sub(ids.len());
            if room == 0 {
                return Err(format!(
                    "prompt {} is {} tokens, as long as --max-model-len {} allows",
                    i + 1,
                    ids.len(),
                    cfg.max_position
                )
                .into());
            }
            requests.push(Request {
                id: RequestId(self.next_id + i as u64),
                prompt: ids,
                max_new: args.max_new.min(room),
                arrival: 1,
                sampling: SamplingParams {
                    seed: args.sampling.seed.wrapping_add(self.next_id - 1 + i as u64),
                    ..args.sampling
                },
                stop: eos.into_iter().collect(),
            });
        }
        self.next_id += prompts.len() as u64;

        let n = prompts.len();
        let headers: Vec<String> = if n == 1 {
            vec![String::new()]
        } else {
            prompts
                .iter()
                .enumerate()
                .map(|(i, p)| format!("[{}] {p}\n", i + 1))
                .collect()
        };
        let mut transcript = Transcript {
            out,
            err,
            progress: args.progress,
            index: requests
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id, i))
                .collect(),
            streams: (0..n).map(|_| tok.stream(true)).collect(),
            held: vec![String::new(); n],
            finished: vec![false; n],
            headers,
            head: 0,
            io_error: None,
        };
        let first = transcript.headers[0].clone();
        transcript.write(&first);
        let engine = EngineConfig {
            max_batch: args.max_batch,
            max_tokens_per_step: args.max_tokens_per_step,
            preempt_at_step: None,
            preemption: Preemption::Recompute,
        };
        let report = serve_observed(
            &self.stream,
            &self.llm.model,
            &mut self.kv,
            &requests,
            engine,
            &mut transcript,
        )?;
        if let Some(e) = transcript.io_error.take() {
            return Err(e.into());
        }
        if args.progress {
            writeln!(
                transcript.err,
                "{} tokens in {:.2} s ({:.1} tokens/s) over {} steps, largest batch {}, prefix cache hit rate {:.1}%",
                report.generated,
                report.seconds,
                report.generated as f64 / report.seconds.max(1e-9),
                report.steps,
                report.max_batch_seen,
                100.0 * report.prefix_hit_rate
            )?;
        }
        let answers = requests
            .iter()
            .map(|r| {
                let ids: Vec<u32> = report.outputs[&r.id]
                    .iter()
                    .copied()
                    .filter(|t| Some(*t) != eos)
                    .collect();
                tok.decode(&ids)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChatOutcome { report, answers })
    }
}

/// Loads the model on `backend` and answers `prompts`, writing the answers to `out` and the
/// set-up and progress lines to `err`.
pub fn run<B: KernelOps>(
    backend: B,
    args: &ChatArgs,
    prompts: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ChatOutcome, BoxError> {
    match args.dtype {
        DType::F16 => {
            ChatSession::<B, half::f16>::open(&backend, args, err)?.answer(prompts, out, err)
        }
        DType::BF16 => {
            ChatSession::<B, half::bf16>::open(&backend, args, err)?.answer(prompts, out, err)
        }
        _ => ChatSession::<B, f32>::open(&backend, args, err)?.answer(prompts, out, err),
    }
}
