#!/usr/bin/env bash
# Compiles every C prototype this repository declares (the doc comment on each CANN binding of
# the ACL backend and on each function the ACL fake exports: ACL runtime, ACLNN, HCCL) against a
# CANN toolkit's own headers. A prototype that differs from the header's declaration is a
# "conflicting types" error, so a wrong binding cannot pass unnoticed.
#
#   CANN_HOME=/usr/local/Ascend/ascend-toolkit/latest scripts/check-cann-prototypes.sh
#
# CANN_HOME is a toolkit directory: an installed toolkit, or the public CANN 8.1.RC1 tree
# (github.com/leideng/CANN-8.1.RC1, Ascend/ascend-toolkit/8.1.RC1); nothing from it is copied
# here. Without CANN_HOME the script says so and exits 0, having still run the half that needs
# no toolkit: each prototype against its Rust signature (arity and ABI class of every
# parameter; `scripts/cann_prototypes.py check`), which CI runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

python3 "$root/scripts/cann_prototypes.py" check

if [ -z "${CANN_HOME:-}" ]; then
    echo "CANN_HOME is not set: the prototypes were checked against the Rust signatures only;" \
         "set it to a toolkit to compile them against CANN's headers"
    exit 0
fi
arch=""
for a in aarch64-linux x86_64-linux; do
    if [ -d "$CANN_HOME/$a/include/acl" ]; then arch="$a"; break; fi
done
[ -n "$arch" ] || { echo "error: no $CANN_HOME/{aarch64,x86_64}-linux/include/acl" >&2; exit 2; }
opapi="$CANN_HOME/opp/built-in/op_impl/ai_core/tbe/op_api/include"
[ -d "$opapi/aclnnop" ] || { echo "error: no $opapi/aclnnop (the ACLNN operator headers)" >&2; exit 2; }

unit="$(mktemp --suffix=.cpp)"
expanded="$(mktemp)"
trap 'rm -f "$unit" "$expanded"' EXIT
includes=(-I"$CANN_HOME/$arch/include" -I"$CANN_HOME/$arch/include/aclnn" -I"$opapi" -I"$opapi/aclnnop")
# Each prototype's function must be declared by the included headers, or its redeclaration
# would compile whatever its parameters and prove nothing.
python3 "$root/scripts/cann_prototypes.py" headers > "$unit"
g++ -x c++ -std=c++17 -E "${includes[@]}" "$unit" > "$expanded"
python3 "$root/scripts/cann_prototypes.py" covered "$expanded"
python3 "$root/scripts/cann_prototypes.py" c > "$unit"
# C++ (the ACLNN headers include <cstdint>); the prototypes are redeclared in extern "C", where
# another parameter list is a conflicting declaration of the C function, not an overload.
g++ -x c++ -std=c++17 -fsyntax-only "${includes[@]}" "$unit"
echo "ok: $(grep -c '^/\*' "$unit") prototypes match the headers of $CANN_HOME"
