#!/usr/bin/env bash
# Our engine against llama.cpp on the same GGUF, the same thread count, in one run: prompt
# processing tokens/s (60 and 512 tokens), decode tokens/s at batch 1 and batch 8, peak RSS,
# and the bytes of weights a decode step reads against this machine's read bandwidth (measured
# by smollm2_speed, from memory and over a buffer of one step's weights, which the caches may
# hold: the physical limit of batch-1 decode). Prints both and the ratios.
#
# llama.cpp comes from the llama-cpp-python source distribution on PyPI (it vendors llama.cpp),
# built once with cmake (from PyPI, in a venv) into $ASCEND_RS_CACHE (default
# ~/.cache/ascend-rs)/llama.cpp-<version>: llama-bench and llama-batched-bench, native CPU
# flags but no AMX (its tile kernels died with SIGILL on `tilezero` on a VM whose CPU flags list
# AMX: the hypervisor did not enable the tile state), no curl. Nothing of llama.cpp is written
# inside the repository.
#
#   scripts/llama-cpp-speed.sh [--model PATH] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.3.36 # llama-cpp-python, pinned so the baseline does not move under us
cache="${ASCEND_RS_CACHE:-$HOME/.cache/ascend-rs}"
model=""
threads=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        *) echo "usage: $0 [--model PATH] [--threads N]" >&2; exit 2 ;;
    esac
done
[ -n "$model" ] || model=$(scripts/fetch-smollm2.sh)

bin="$cache/llama.cpp-$version-noamx/bin"
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-batched-bench" ]; then
    echo "== building llama.cpp (llama-cpp-python $version from PyPI), once" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    python3 -m venv "$work/venv" >&2
    "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check cmake==4.2.1 >&2
    "$work/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work" >&2
    tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
    src="$work/llama_cpp_python-$version/vendor/llama.cpp"
    # GCC lets an explicit -mno-* win over -march=native in either order.
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    "$work/venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
        -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >&2
    "$work/venv/bin/cmake" --build "$work/build" -j "$(nproc)" \
        --target llama-bench llama-batched-bench >&2
    mkdir -p "$bin"
    cp "$work/build/bin/llama-bench" "$work/build/bin/llama-batched-bench" "$bin/"
fi

cargo build --quiet --release -p ascend-examples --example smollm2_speed
speed="$(scripts/target-dir.sh)/release/examples/smollm2_speed"
export RAYON_NUM_THREADS="$threads"

# Peak RSS in bytes of a command (GNU time's maximum resident set, in KiB), its stdout kept.
rss_of() {
    local out="$1"; shift
    local t; t=$(mktemp)
    /usr/bin/time -f "%M" -o "$t" "$@" > "$out"
    echo $(( $(tail -1 "$t") * 1024 ))
    rm -f "$t"
}

tmp=$(mktemp -d)
ours60=$("$speed" --model "$model" --prompt-len 60)
ours512=$("$speed" --model "$model" --prompt-len 512)
bench_rss=$(rss_of "$tmp/bench.json" "$bin/llama-bench" -m "$model" -t "$threads" \
    -p 60,512 -n 32 -r 3 -o json)
batched_rss=$(rss_of "$tmp/batched.txt" "$bin/llama-batched-bench" -m "$model" -t "$threads" \
    -c 2048 -b 2048 -ub 512 -npp 60 -ntg 32 -npl 1,8 --output-format jsonl)
python3 - "$ours60" "$ours512" "$tmp/bench.json" "$tmp/batched.txt" "$bench_rss" \
    "$batched_rss" "$threads" <<'PY'
import json, sys
ours60, ours512 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bench = json.load(open(sys.argv[3]))
batched = [json.loads(l) for l in open(sys.argv[4]) if l.startswith("{")]
bench_rss, batched_rss, threads = map(int, sys.argv[5:8])
bandwidth = ours60["read_bandwidth_bytes_per_s"]
pp = {b["n_prompt"]: b["avg_ts"] for b in bench if b["n_gen"] == 0}
tg1 = next(b["avg_ts"] for b in bench if b["n_prompt"] == 0)
tg = {b["pl"]: b["speed_tg"] for b in batched}
# The same work for both: 8 sequences of a 60-token prompt and 32 decoded tokens (llama.cpp's
# batched bench; ours is the prompt-60 run, whose batch-8 part is that work).
rss_theirs, rss_ours = batched_rss, ours60["peak_rss_bytes"]
rows = [
    ("prompt tokens/s (60)", ours60["prefill_tokens_per_s"], pp[60]),
    ("prompt tokens/s (512)", ours512["prefill_tokens_per_s"], pp[512]),
    ("decode tokens/s, batch 1", ours60["decode_b1_tokens_per_s"], tg1),
    ("decode tokens/s, batch 8", ours60["decode_b8_tokens_per_s"], tg[8]),
]
print(f"{ours60['storage']} weights of the same GGUF, {threads} threads; ours on the "
      f"{ours60['backend']} backend, llama.cpp's llama-bench / llama-batched-bench")
print(f"{'':<30}{'ours':>10}{'llama.cpp':>12}{'ratio':>8}")
for name, a, b in rows:
    print(f"{name:<30}{a:>10.1f}{b:>12.1f}{a / b:>7.2f}x")
print(f"{'batch 8 / batch 1':<30}{rows[3][1] / rows[2][1]:>9.2f}x{tg[8] / tg[1]:>11.2f}x")
print(f"{'peak RSS, 8 x (60 + 32) (MB)':<30}{rss_ours / 1e6:>10.1f}{rss_theirs / 1e6:>12.1f}"
      f"{rss_ours / rss_theirs:>7.2f}x")
print(f"peak RSS of the 512-token runs: ours {ours512['peak_rss_bytes'] / 1e6:.1f} MB "
      f"(8 x 512-token prompts, 512 tokens a step), llama-bench {bench_rss / 1e6:.1f} MB "
      f"(one 512-token prompt): not the same work")
step = ours60["weight_bytes_per_step"]
# Memory's bandwidth (1 GiB read) and the rate over one step's weight bytes: where the caches
# hold the weights (a last-level cache larger than the model), the second is the real limit.
warm = ours60.get("step_read_bandwidth_bytes_per_s", bandwidth)
print(f"weights read per decode step: {step / 1e6:.1f} MB; measured read bandwidth "
      f"{bandwidth / 1e9:.1f} GB/s from memory (batch-1 limit {bandwidth / step:.0f} tokens/s: "
      f"ours {ours60['decode_b1_tokens_per_s'] / (bandwidth / step):.0%} of it, "
      f"llama.cpp {tg1 / (bandwidth / step):.0%}), {warm / 1e9:.1f} GB/s over a buffer of "
      f"one step's weights (limit {warm / step:.0f} tokens/s: ours "
      f"{ours60['decode_b1_tokens_per_s'] / (warm / step):.0%}, llama.cpp {tg1 / (warm / step):.0%})")
PY
rm -rf "$tmp"
