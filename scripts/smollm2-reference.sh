#!/usr/bin/env bash
# Hugging Face transformers' greedy ids for the SmolLM2 chats (float32, CPU), written to
# <target dir>/smollm2_reference.json (the path is printed last), and checked against the copy the repository keeps
# (examples/data/smollm2_reference.json, which the test reads when no fresh one is given).
# .ci/run then runs the reference test with SMOLLM2_REFERENCE pointing at the fresh file.
set -euo pipefail
cd "$(dirname "$0")/.."

model=$(scripts/fetch-smollm2.sh)
python=$(scripts/hf-venv.sh)
target=$(scripts/target-dir.sh)
mkdir -p "$target"
fresh="$target/smollm2_reference.json"
"$python" scripts/hf_reference.py tokens --model "$model" --out "$fresh" 2>/dev/null
python3 - "$fresh" examples/data/smollm2_reference.json <<'PY'
import json, sys
fresh, kept = (json.load(open(p)) for p in sys.argv[1:3])
for i, (a, b) in enumerate(zip(fresh["chats"], kept["chats"])):
    for key in ("prompt", "prompt_ids", "generated_ids"):
        if a[key] != b[key]:
            sys.exit(f"chat {i}: transformers' {key} differs from examples/data/smollm2_reference.json; "
                     "regenerate it with scripts/hf_reference.py tokens and review the change")
print(f"transformers {fresh['transformers']} (torch {fresh['torch']}): "
      f"{len(fresh['chats'])} chats, {sum(len(c['generated_ids']) for c in fresh['chats'])} greedy ids, "
      "the same as the kept reference")
PY
echo "$fresh"
