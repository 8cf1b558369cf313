#!/usr/bin/env bash
# SmolLM2-135M-Instruct speed on this machine, side by side in one run: our engine on the
# default backend (examples/smollm2_speed.rs) and Hugging Face transformers (float32, CPU, as
# many threads as cores), each measuring prefill tokens/s of a 128-token prompt and decode
# tokens/s at batch 1 and batch 8. Prints both and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

model=$(scripts/fetch-smollm2.sh)
python=$(scripts/hf-venv.sh)
cargo build --quiet --release -p ascend-examples --example smollm2_speed
ours=$("$(scripts/target-dir.sh)/release/examples/smollm2_speed" --model "$model")
theirs=$("$python" scripts/hf_reference.py speed --model "$model" 2>/dev/null)
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, hf = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"SmolLM2-135M-Instruct, float32, {ours['threads']} cores; ours on the {ours['backend']} backend, "
      f"transformers with {hf['threads']} torch threads")
print(f"{'':<28}{'ours':>12}{'transformers':>14}{'ratio':>8}")
for key, name in [("prefill_tokens_per_s", "prefill tokens/s (128)"),
                  ("decode_b1_tokens_per_s", "decode tokens/s, batch 1"),
                  ("decode_b8_tokens_per_s", "decode tokens/s, batch 8")]:
    print(f"{name:<28}{ours[key]:>12.1f}{hf[key]:>14.1f}{ours[key] / hf[key]:>7.2f}x")
print(f"{'batch 8 / batch 1':<28}{ours['decode_b8_tokens_per_s'] / ours['decode_b1_tokens_per_s']:>11.2f}x"
      f"{hf['decode_b8_tokens_per_s'] / hf['decode_b1_tokens_per_s']:>13.2f}x")
PY
