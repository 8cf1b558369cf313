#!/usr/bin/env bash
# Makes (once) the Python environment the Hugging Face reference runs in and prints its python:
# torch (CPU use only; PyPI's Linux wheel, with the CUDA libraries it depends on), transformers,
# gguf and accelerate, at pinned versions so the reference ids do not move under us. It lives in
# $ASCEND_RS_VENV, else ~/.cache/ascend-rs/hf-venv; a second run finds it and does nothing.
# About 5.6 GB and two minutes from PyPI the first time.
set -euo pipefail

venv="${ASCEND_RS_VENV:-$HOME/.cache/ascend-rs/hf-venv}"
pins=(torch==2.15.0 transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 numpy==2.4.6)
stamp="$venv/.pins"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${pins[*]}" ]; then
    echo "$venv/bin/python"
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
echo "${pins[*]}" > "$stamp"
echo "$venv/bin/python"
