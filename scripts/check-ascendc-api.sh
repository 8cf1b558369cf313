#!/usr/bin/env bash
# Compiles every Ascend C kernel in ascend-kernels/ascendc/kernels against the real CANN headers
# (syntax and types only: g++ -fsyntax-only in the CPU-debug configuration CANN's tikicpulib
# uses for an Ascend 910B vector core), so a call our host implementation accepts but CANN
# declares differently fails here; then the device-configuration check
# (scripts/check-ascendc-device.sh), so a name only the CPU-debug headers define fails too.
#
#   CANN_HOME=/usr/local/Ascend/ascend-toolkit/latest scripts/check-ascendc-api.sh
#
# CANN_HOME is a toolkit directory with aarch64-linux/ (or x86_64-linux/) include trees and
# tools/tikicpulib: an installed toolkit, or the public CANN 8.1.RC1 tree
# (github.com/leideng/CANN-8.1.RC1, Ascend/ascend-toolkit/8.1.RC1). Nothing from it is copied
# into this repository.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
: "${CANN_HOME:?set CANN_HOME to a CANN toolkit directory (e.g. /usr/local/Ascend/ascend-toolkit/latest)}"
arch=""
for a in aarch64-linux x86_64-linux; do
    if [ -d "$CANN_HOME/$a/ascendc/include" ]; then arch="$a"; break; fi
done
if [ -z "$arch" ]; then
    echo "error: no $CANN_HOME/{aarch64,x86_64}-linux/ascendc/include; is CANN_HOME a toolkit directory?" >&2
    exit 2
fi
inc="$CANN_HOME/$arch/ascendc/include"
flags=(
    -std=c++17 -fsyntax-only
    # The defines tikicpulib's cmake passes for ascend910B1 (dav-c220, vector core).
    -D__CCE_AICORE__=220 -D__DAV_C220__ -D_GLIBCXX_USE_CXX11_ABI=0
    -D__CCE_KT_TEST__=1 -DASCENDC_CPU_DEBUG=1 -DASCENDC_DEBUG=1
    -I"$CANN_HOME/tools/tikicpulib/lib/include" -I"$CANN_HOME/$arch/include"
    -I"$inc/basic_api" -I"$inc/basic_api/impl" -I"$inc/basic_api/interface"
    -I"$inc/highlevel_api" -I"$inc/highlevel_api/lib" -I"$inc/highlevel_api/impl"
    -I"$inc/highlevel_api/lib/matmul" -I"$inc/highlevel_api/kernel_tiling"
)
status=0
for k in "$root"/ascend-kernels/ascendc/kernels/*.cpp; do
    if g++ "${flags[@]}" "$k"; then
        echo "ok: $(basename "$k")"
    else
        echo "FAILED: $(basename "$k")" >&2
        status=1
    fi
done
# The same kernels in the device configuration (no ASCENDC_CPU_DEBUG), which g++ cannot parse:
# every name only the CPU-debug build defines is poisoned (scripts/check-ascendc-device.sh).
"$root/scripts/check-ascendc-device.sh" || status=1
exit $status
