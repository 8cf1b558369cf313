#!/usr/bin/env bash
# Builds the ACL fake and the host build of the Ascend C kernels, lays out a directory as a CANN
# toolkit over them (lib64/ with libascendcl.so, libnnopbase.so, libopapi.so, libhccl.so and
# libascendc_kernels.so), and prints the one line that points the ACL backend at it:
#
#   eval "$(scripts/acl-fake-env.sh)"            # release build (default)
#   eval "$(scripts/acl-fake-env.sh debug)"
#   ASCEND_HAL_BACKEND=acl cargo run --release --example paged_decode
#
# Honours CARGO_TARGET_DIR (the toolkit goes to <target dir>/acl-fake-toolkit). Progress goes
# to standard error; standard output is only the export line.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-release}"
case "$profile" in
    release) flags=(--release) ;;
    debug) flags=() ;;
    *) echo "usage: $0 [release|debug]" >&2; exit 2 ;;
esac

target_dir=$(scripts/target-dir.sh)

# The host kernels library is in ascend-kernels' build-script output directory; cargo says where.
kernels=$(cargo build "${flags[@]}" -p ascend-kernels --features host-kernels \
        --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
out = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "ascend-kernels" in m.get("package_id", ""):
        out = m["out_dir"]
if out is None:
    sys.exit("cargo reported no build-script output for ascend-kernels")
print(out + "/libascendc_kernels_host.so")
')
[ -f "$kernels" ] || { echo "error: $kernels was not built" >&2; exit 1; }

cargo build "${flags[@]}" -p acl-fake >&2
"$target_dir/$profile/acl-fake-toolkit" --kernels "$kernels" "$target_dir/acl-fake-toolkit"
