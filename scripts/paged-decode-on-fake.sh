#!/usr/bin/env bash
# Runs the paged_decode example over the ACL backend with no NPU: the ACL fake stands in for
# libascendcl.so and for the ACLNN and HCCL libraries, and the host build of the Ascend C kernels
# for the CANN build of libascendc_kernels.so, laid out as a toolkit that one variable
# (ASCEND_TOOLKIT_HOME, from scripts/acl-fake-env.sh) points at. The example takes the very path
# it takes on an Atlas 800 A2; its tokens must equal the CPU backend's run, which this script
# checks. Extra arguments go to the example. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/acl-fake-env.sh release)"
cargo build --release -p ascend-examples --example paged_decode

run() { cargo run --quiet --release --example paged_decode -- "$@"; }
on_acl=$(ASCEND_HAL_BACKEND=acl run "$@")
echo "$on_acl"
on_cpu=$(ASCEND_HAL_BACKEND=cpu run "$@")
steps() { grep -E '^(serving|step|check:)' ; }
if [ "$(steps <<<"$on_acl")" != "$(steps <<<"$on_cpu")" ]; then
    echo "the ACL run's steps or tokens differ from the CPU run's:" >&2
    diff <(steps <<<"$on_acl") <(steps <<<"$on_cpu") >&2 || true
    exit 1
fi
grep -q "device 0: Ascend910B4" <<<"$on_acl"
echo "== same steps and tokens as the CPU backend"
