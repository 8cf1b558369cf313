#!/usr/bin/env python3
"""The C prototypes this repository declares, as its doc comments state them.

Every binding of a CANN function (the ACL backend's `sys` declarations) and every function the
ACL fake exports carries its C prototype in a doc comment, copied from the CANN 8.1.RC1
headers: `/// \`aclnnStatus aclnnAddGetWorkspaceSize(const aclTensor *self, ...)\``. This
module finds them, next to the Rust signature they document:

- `prototypes()` yields (file, line, C prototype, Rust parameter types, Rust return type);
- as a program, `cann_prototypes.py c` prints a C++ translation unit that declares every
  prototype (in `extern "C"`) after including the CANN headers, which `scripts/check-cann-prototypes.sh` compiles
  against a toolkit (a prototype that differs from the header's is a "conflicting types" error),
  and `cann_prototypes.py check` compares each prototype with its Rust signature (the same
  number of parameters, and each of the same ABI class), which CI runs with no toolkit.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "ascend-hal/src/acl/aclnn.rs",
    "ascend-hal/src/acl/hccl.rs",
    "ascend-hal/src/acl/sys.rs",
    "hal-mock/acl-fake/src/exports.rs",
    "hal-mock/acl-fake/src/aclnn.rs",
    "hal-mock/acl-fake/src/aclnn_step_ops.rs",
    "hal-mock/acl-fake/src/aclnn_attention.rs",
    "hal-mock/acl-fake/src/aclnn_quant.rs",
    "hal-mock/acl-fake/src/hccl.rs",
]
PREFIXES = ("acl", "Hccl", "HcclGet")
DOC = re.compile(r"^\s*///\s?(.*)$")
RUST_FN = re.compile(
    r"(?:pub(?:\([a-z]+\))?\s+)?(?:type\s+\w+\s*=\s*unsafe\s+extern\s+\"C\"\s+fn|"
    r"extern\s+\"C\"\s+fn\s+(\w+))\s*\(", re.S)


def c_prototype(doc: str):
    """The C prototype in a doc comment's first backticked span, if it is one."""
    m = re.match(r"`([^`]*)`", doc)
    if not m:
        return None
    text = " ".join(m.group(1).split())
    f = re.match(r"^(?:(.+?)\s*\b)?((?:acl|Hccl)\w*)\s*\((.*)\)$", text)
    if not f or "Xxx" in f.group(2):
        return None
    ret = (f.group(1) or "").strip()
    if not ret:
        ret = "aclnnStatus"  # the planning calls are documented without their return type
    return ret, f.group(2), f.group(3)


def rust_signature(text: str, start: int):
    """The parameter types and return type of the Rust fn at `start` (`fn(` ... `) -> R`)."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                break
        i += 1
    params = text[start + 1:i]
    rest = text[i + 1:i + 200]
    r = re.match(r"\s*->\s*([^;{=]+?)\s*[;{]", rest)
    ret = r.group(1).strip() if r else "()"
    types = []
    depth, cur = 0, ""
    for ch in params + ",":
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            p = " ".join(cur.split())
            if p:
                types.append(p.split(":", 1)[1].strip() if ":" in p else p)
            cur = ""
        else:
            cur += ch
    return types, ret


def prototypes():
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        offsets = [0]
        for l in lines:
            offsets.append(offsets[-1] + len(l))
        i = 0
        while i < len(lines):
            m = DOC.match(lines[i])
            if not m or not m.group(1).startswith("`"):
                i += 1
                continue
            # The doc paragraph: continuation lines until the backtick closes.
            doc, j = m.group(1), i + 1
            while doc.count("`") < 2 and j < len(lines) and DOC.match(lines[j]):
                doc += " " + DOC.match(lines[j]).group(1)
                j += 1
            proto = c_prototype(doc)
            # The item the doc belongs to: the next non-doc, non-attribute line.
            k = j
            while k < len(lines) and (DOC.match(lines[k]) or lines[k].strip().startswith("#[")):
                k += 1
            i = j
            if proto is None or k >= len(lines):
                continue
            item = "".join(lines[k:k + 40])
            f = RUST_FN.match(item.strip())
            if not f:
                continue
            start = offsets[k] + (len(lines[k]) - len(lines[k].lstrip())) + f.end() - 1
            params, ret = rust_signature(text, start)
            yield rel, k + 1, proto, params, ret


# ABI classes: what a C type and a Rust type must agree on.
def c_class(t: str) -> str:
    t = " ".join(t.replace("const", " ").split())
    if "*" in t:
        return "ptr"
    words = t.split()
    base = " ".join(words[:-1]) if len(words) > 1 else t  # drop the parameter's name
    handles = ("aclrtStream", "aclrtEvent", "aclrtContext", "HcclComm", "aclrtDrvMemHandle")
    if base in handles:
        return "ptr"
    table = {
        "int8_t": "i8", "uint8_t": "u8", "int16_t": "i16", "uint16_t": "u16",
        "int32_t": "i32", "uint32_t": "u32", "int64_t": "i64", "uint64_t": "u64",
        "size_t": "u64", "bool": "bool", "double": "f64", "float": "f32", "int": "i32",
        "void": "()",
    }
    if base in table:
        return table[base]
    # CANN's enums (aclDataType, HcclReduceOp, aclrtMemcpyKind, ...) and status types.
    if re.match(r"^(acl|Hccl)\w*$", base):
        return "i32"
    return "?" + base


def rust_class(t: str) -> str:
    t = " ".join(t.split())
    if t.startswith("*") or t in ("AclrtStream", "AclrtContext", "AclrtEvent") \
            or t.startswith("Option<") or t.startswith("&"):
        return "ptr"
    table = {"i8": "i8", "u8": "u8", "i16": "i16", "u16": "u16", "i32": "i32", "u32": "u32",
             "i64": "i64", "u64": "u64", "usize": "u64", "bool": "bool", "f64": "f64",
             "f32": "f32", "()": "()", "AclnnStatus": "i32", "HcclResult": "i32",
             "AclError": "i32", "c_int": "i32"}
    return table.get(t, "?" + t)


def c_params(params: str):
    params = params.strip()
    if params in ("", "void"):
        return []
    return [p.strip() for p in params.split(",")]


def check() -> int:
    bad, n = 0, 0
    for rel, line, (ret, name, params), rparams, rret in prototypes():
        n += 1
        cp = c_params(params)
        where = f"{rel}:{line}: {name}"
        if len(cp) != len(rparams):
            print(f"{where}: C has {len(cp)} parameters, Rust {len(rparams)}")
            bad += 1
            continue
        pairs = [(c_class(c), rust_class(r), c, r) for c, r in zip(cp, rparams)]
        pairs.append((c_class(ret), rust_class(rret), ret, rret))
        for cc, rc, c, r in pairs:
            # A C enum is an int: passed as i32 or u32 alike.
            same_int = {cc, rc} <= {"i32", "u32"}
            if cc != rc and not same_int:
                print(f"{where}: C `{c}` ({cc}) against Rust `{r}` ({rc})")
                bad += 1
    print(f"{n} prototypes compared with their Rust signatures, {bad} mismatches")
    return 1 if bad or n == 0 else 0


HEADERS = [
    "acl/acl.h", "aclnn/acl_meta.h", "hccl/hccl.h", "hccl/hccl_types.h",
    "aclnnop/aclnn_matmul.h", "aclnnop/aclnn_swi_glu.h", "aclnnop/aclnn_rms_norm.h",
    "aclnnop/aclnn_add_rms_norm.h", "aclnnop/aclnn_embedding.h", "aclnnop/aclnn_add.h",
    "aclnnop/aclnn_argmax.h", "aclnnop/aclnn_topk.h",
    "aclnnop/aclnn_fused_infer_attention_score_v2.h",
    "aclnnop/level2/aclnn_rope_with_sin_cos_cache.h",
    "aclnnop/aclnn_weight_quant_batch_matmul_v2.h",
    "aclnnop/aclnn_dynamic_quant.h", "aclnnop/aclnn_quant_matmul_v4.h",
]


def uncovered(preprocessed: str):
    """The prototypes whose function the included headers (`preprocessed`: their text after
    the preprocessor) do not declare: a redeclaration of those would compile whatever its
    parameters, so the header check would prove nothing."""
    text = Path(preprocessed).read_text(errors="replace")
    missing = set()
    for _, _, (_, name, _), _, _ in prototypes():
        if not re.search(rf"\b{name}\s*\(", text):
            missing.add(name)
    return sorted(missing)


def headers_unit() -> str:
    """The includes alone."""
    return "\n".join(f"#include <{h}>" for h in HEADERS) + "\n"


def c_unit() -> str:
    """A C++ unit (the ACLNN headers include <cstdint>): each prototype redeclared inside
    `extern "C"`, where a different parameter list is a conflicting declaration, not an
    overload."""
    out = headers_unit().splitlines()
    out.append('extern "C" {')
    seen = set()
    for rel, line, (ret, name, params), _, _ in prototypes():
        decl = f"{ret} {name}({params});"
        if decl not in seen:
            seen.add(decl)
            out.append(f"/* {rel}:{line} */ {decl}")
    out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    if what == "c":
        sys.stdout.write(c_unit())
    elif what == "headers":
        sys.stdout.write(headers_unit())
    elif what == "covered":
        gaps = uncovered(sys.argv[2])
        for g in gaps:
            print(f"not declared by any included CANN header: {g}")
        sys.exit(1 if gaps else 0)
    else:
        sys.exit(check())
