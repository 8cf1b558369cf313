#!/usr/bin/env bash
# The Ascend C kernels in the device configuration: no kernel may use a name that only a host
# build of the API defines (INFINITY, expf, printf, assert, ... come from the C and C++ libraries
# the host headers pull in; the device build includes only <cstdint> and <type_traits>).
# See scripts/ascendc_device_names.py for how the names are found.
#
#   scripts/check-ascendc-device.sh               # against this repository's host API header
#   CANN_HOME=... scripts/check-ascendc-device.sh # also against CANN's headers, CPU-debug vs device
#
# The first runs anywhere (CI); the second needs a toolkit's include trees (an installed toolkit,
# or the public CANN 8.1.RC1 tree, github.com/leideng/CANN-8.1.RC1, Ascend/ascend-toolkit/8.1.RC1).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
kernels="$root/ascend-kernels/ascendc/kernels"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

# check NAME HOST_FLAGS... -- DEVICE_FLAGS...: builds the poison header from the two
# configurations of `#include "kernel_operator.h"` and compiles every kernel after it.
check() {
    local name=$1; shift
    local host=() device=()
    while [ "$1" != "--" ]; do host+=("$1"); shift; done
    shift
    device=("$@")
    printf '#include "kernel_operator.h"\n' >"$work/api.cpp"
    g++ -std=c++17 -E "${host[@]}" "$work/api.cpp" >"$work/host.i"
    g++ -std=c++17 -E -dM "${host[@]}" "$work/api.cpp" >"$work/host.macros"
    g++ -std=c++17 -E "${device[@]}" "$work/api.cpp" >"$work/device.i"
    g++ -std=c++17 -E -dM "${device[@]}" "$work/api.cpp" >"$work/device.macros"
    if [ "$name" = host ]; then
        # The host API header's own macros (GM_ADDR, __aicore__, ...) are the API: the device
        # build has them from CANN's headers.
        sed -n 's/^#define \([A-Za-z_][A-Za-z0-9_]*\).*/#define \1/p' \
            "$root/ascend-kernels/ascendc/host/kernel_operator.h" >>"$work/device.macros"
    fi
    python3 "$root/scripts/ascendc_device_names.py" "$work/host.i" "$work/host.macros" \
        "$work/device.i" "$work/device.macros" >"$work/poison.h" 2>"$work/count"
    for k in "$kernels"/*.cpp; do
        printf '#include "common.h"\n#include "tiling.h"\n#include "%s"\n#include "%s"\n' \
            "$work/poison.h" "$k" >"$work/kernel.cpp"
        if g++ -std=c++17 -fsyntax-only "${host[@]}" -I"$kernels" "$work/kernel.cpp" \
            2>"$work/err"; then
            echo "ok ($name configuration, $(tr -d '/' <"$work/count" | xargs) poisoned): $(basename "$k")"
        else
            grep -E "error" "$work/err" | grep -v "^In file" >&2 || cat "$work/err" >&2
            echo "FAILED ($name): $(basename "$k") uses a name the device build does not define" >&2
            status=1
        fi
    done
}

# This repository's host implementation of the API; the device side is what CANN's device
# build of kernel_operator.h includes.
mkdir -p "$work/device"
printf '#include <cstdint>\n#include <type_traits>\n' >"$work/device/kernel_operator.h"
check host -I"$root/ascend-kernels/ascendc/host" -- -I"$work/device"

if [ -n "${CANN_HOME:-}" ]; then
    arch=""
    for a in aarch64-linux x86_64-linux; do
        if [ -d "$CANN_HOME/$a/ascendc/include" ]; then arch="$a"; break; fi
    done
    if [ -z "$arch" ]; then
        echo "error: no $CANN_HOME/{aarch64,x86_64}-linux/ascendc/include" >&2
        exit 2
    fi
    inc="$CANN_HOME/$arch/ascendc/include"
    api=(-I"$CANN_HOME/$arch/include" -I"$inc/basic_api" -I"$inc/basic_api/impl"
        -I"$inc/basic_api/interface" -I"$inc/highlevel_api" -I"$inc/highlevel_api/lib"
        -I"$inc/highlevel_api/impl" -I"$inc/highlevel_api/lib/matmul"
        -I"$inc/highlevel_api/kernel_tiling")
    # CPU debug as tikicpulib builds an ascend910B1 vector kernel; the device as ccec does
    # (dav-c220 vector core, no ASCENDC_CPU_DEBUG).
    check cann -D__CCE_AICORE__=220 -D__DAV_C220__ -D__CCE_KT_TEST__=1 -DASCENDC_CPU_DEBUG=1 \
        -DASCENDC_DEBUG=1 -D_GLIBCXX_USE_CXX11_ABI=0 -I"$CANN_HOME/tools/tikicpulib/lib/include" \
        "${api[@]}" -- -D__CCE_AICORE__=220 -D__DAV_C220_VEC__ "${api[@]}"
fi
exit $status
