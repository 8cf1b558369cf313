#!/usr/bin/env bash
# Runs the paged_decode example over the ACL backend with no NPU: the ACL fake
# (libascendcl_fake.so) stands in for libascendcl.so and for the ACLNN libraries
# (libnnopbase.so, libopapi.so), and the host build of the Ascend C kernels
# (libascendc_kernels_host.so) for the CANN build of libascendc_kernels.so. The example takes
# the very path it takes on an Atlas 800 A2; its tokens must equal the CPU backend's run, which
# this script checks. Extra arguments go to the example.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p acl-fake
cargo build --release -p ascend-examples --example paged_decode
fake="$PWD/target/release/libascendcl_fake.so"
kernels=$(ls -t target/release/build/ascend-kernels-*/out/libascendc_kernels_host.so | head -1)
for f in "$fake" "$kernels"; do
    [ -f "$f" ] || { echo "missing $f after the build" >&2; exit 1; }
done

run() { cargo run --quiet --release --example paged_decode -- "$@"; }
on_acl=$(ASCEND_HAL_BACKEND=acl ASCEND_HAL_ACL_LIB="$fake" ASCEND_HAL_NNOPBASE_LIB="$fake" \
    ASCEND_HAL_OPAPI_LIB="$fake" ASCEND_KERNELS_LIB="$PWD/$kernels" run "$@")
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
