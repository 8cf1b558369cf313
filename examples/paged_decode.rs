//! End-to-end decode: a small Llama/Qwen-style model (GQA, RoPE, RMSNorm, SiLU MLP; random
//! weights from a fixed seed) serving requests that share a system prompt, with continuous
//! batching (requests arrive and finish at different steps), chunked prefill, prefix caching, and
//! a forced preemption part-way (swap out, swap back in). Every generated token is checked
//! against the same model run one request at a time over a plain contiguous KV cache; any
//! mismatch exits non-zero.
//!
//! ```text
//! cargo run --release --example paged_decode
//! cargo run --release --example paged_decode -- --requests 32 --layers 4 --block-size 128
//! cargo run --release --example paged_decode -- --preempt recompute
//! cargo run --release --example paged_decode -- --dtype f16 --block-size 128
//! ```
//! Options (defaults in brackets): `--layers` [2], `--hidden` [256], `--heads` [4],
//! `--kv-heads` [2], `--intermediate` [512], `--vocab` [512], `--requests` [12],
//! `--system-prompt` [40], `--max-new` [24], `--block-size` [16], `--utilization` [0.9],
//! `--max-blocks` [4096], `--max-model-len` [512], `--preempt` swap|recompute|none [swap],
//! `--allocator` caching|direct|arena [caching], `--seed` [7], `--tp` [1], `--dtype`
//! f32|f16|bf16 [f32], `--quiet`.
//!
//! `--tp N` serves the model tensor-parallel over N devices (attention heads and MLP columns
//! split, all-reduces through the backend's communicator: HCCL on NPUs, the CPU communicator
//! across the CPU backend's devices, which it then creates N of).

use std::process::ExitCode;

use ascend_examples::decode::{run, AllocatorChoice, DecodeArgs, Outcome, Precision};
use ascend_examples::engine::Preemption;
use ascend_kernels::{EngineBackend, EngineVisitor, RunEngine};

const USAGE: &str = "usage: paged_decode [options]

Serves requests with a small random-weight model over the paged KV cache on the default backend
and checks every token against a contiguous-KV run.

  --layers N           decoder layers [2]
  --hidden N           hidden size [256]
  --heads N            query heads [4]
  --kv-heads N         KV heads [2]
  --intermediate N     MLP intermediate size [512]
  --vocab N            vocabulary [512]
  --requests N         requests to serve [12]
  --system-prompt N    tokens of the shared system prompt [40]
  --max-new N          most tokens a request generates [24]
  --block-size N       tokens per KV block [16]
  --utilization F      fraction of device memory to use [0.9]
  --max-blocks N       cap on KV blocks [4096]
  --max-model-len N    longest sequence [512]
  --preempt MODE       swap | recompute | none [swap]
  --allocator KIND     caching | direct | arena [caching]
  --seed N             weights and workload seed [7]
  --tp N               tensor-parallel ranks (devices) [1]
  --dtype T            f32 | f16 | bf16: weights, activations and KV cache [f32]
  --quiet              no per-step lines
  --help               this text";

fn parse() -> std::result::Result<DecodeArgs, String> {
    let mut a = DecodeArgs::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            a.quiet = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} {v}: not a whole number"))
        };
        match flag.as_str() {
            "--layers" => a.model.layers = num(&value)?,
            "--hidden" => a.model.hidden = num(&value)?,
            "--heads" => a.model.heads = num(&value)?,
            "--kv-heads" => a.model.kv_heads = num(&value)?,
            "--intermediate" => a.model.intermediate = num(&value)?,
            "--vocab" => a.model.vocab = num(&value)?,
            "--requests" => a.requests = num(&value)?,
            "--system-prompt" => a.system_prompt = num(&value)?,
            "--max-new" => a.max_new = num(&value)?,
            "--block-size" => a.block_size = num(&value)?,
            "--max-blocks" => a.max_blocks = num(&value)?,
            "--max-model-len" => a.max_model_len = num(&value)?,
            "--seed" => a.seed = num(&value)? as u64,
            "--tp" => a.tp = num(&value)?,
            "--utilization" => {
                a.utilization = value
                    .parse()
                    .map_err(|_| format!("--utilization {value}: not a number"))?
            }
            "--dtype" => {
                a.precision = Precision::parse(&value)
                    .ok_or_else(|| format!("--dtype {value}: use f32, f16 or bf16"))?
            }
            "--allocator" => {
                a.allocator = AllocatorChoice::parse(&value)
                    .ok_or_else(|| format!("--allocator {value}: use caching, direct or arena"))?
            }
            "--preempt" => {
                a.preempt = match value.as_str() {
                    "swap" => Some(Preemption::Swap),
                    "recompute" => Some(Preemption::Recompute),
                    "none" => None,
                    v => return Err(format!("--preempt {v}: use swap, recompute or none")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    a.validate()?;
    a.model.max_position = a.max_model_len;
    Ok(a)
}

/// The generic body, entered with whichever backend was discovered.
struct Run<'a> {
    args: &'a DecodeArgs,
    say: &'a mut dyn FnMut(&str),
}

impl EngineVisitor for Run<'_> {
    type Output = ascend_hal::Result<Outcome>;
    fn visit<B: EngineBackend>(self, backend: B) -> Self::Output {
        run(backend, self.args, self.say)
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let discovery = match hal_mock::discover_devices(args.tp) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{discovery}");
    let mut say = |line: &str| println!("{line}");
    let result = discovery.run_engine(Run {
        args: &args,
        say: &mut say,
    });
    // Calls the ACL backend's default provider could not run, and who ran them instead.
    for f in ascend_kernels::acl::providers::fallbacks() {
        println!(
            "provider fallback: {} x{}: {:?} -> {:?}: {}",
            f.op.name(),
            f.count,
            f.from,
            f.to,
            f.reason
        );
    }
    match result {
        Ok(Outcome::Checked { mismatches: 0, .. } | Outcome::Skipped(_)) => ExitCode::SUCCESS,
        Ok(Outcome::Checked { .. }) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
