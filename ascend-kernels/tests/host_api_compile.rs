//! The host implementation of the Ascend C API against small kernels compiled here with the
//! compiler `build.rs` already needs: what it refuses at compile time, as CANN's headers do
//! (each case once as written, which must fail with the rule in the diagnostic, and once
//! corrected, which must compile), and what it accepts or refuses at run time where CANN's own
//! implementation decides (the reductions' built-in synchronisation).

use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_string())
}

/// Compiles `body` (inside a function, after `using namespace AscendC`) and returns the
/// diagnostics, or `None` if it compiled.
fn compile(name: &str, body: &str) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ascendc");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ascend-kernels-api-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("case.cpp");
    std::fs::write(
        &src,
        format!(
            "#include \"kernel_operator.h\"\nusing namespace AscendC;\nvoid kernel_case() {{\n{body}\n}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(compiler())
        .args(["-std=c++17", "-fsyntax-only", "-I"])
        .arg(root.join("host"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", compiler()));
    std::fs::remove_dir_all(&dir).ok();
    if out.status.success() {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Builds `body` into a one-core launch and runs it: `Ok` or the host implementation's message.
fn run(name: &str, body: &str) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ascendc");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ascend-kernels-run-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, exe) = (dir.join("case.cpp"), dir.join("case"));
    std::fs::write(
        &src,
        format!(
            "#include \"kernel_operator.h\"\n#include <cstdio>\nusing namespace AscendC;\n\
             void kernel_case() {{\n{body}\n}}\n\
             int main() {{ char err[512] = {{0}}; int rc = launch(\"case\", 1, err, sizeof err, [] {{ kernel_case(); }});\n\
             if (rc) std::fputs(err, stderr); return rc; }}\n"
        ),
    )
    .unwrap();
    let built = Command::new(compiler())
        .args(["-std=c++17", "-I"])
        .arg(root.join("host"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", compiler()));
    assert!(
        built.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    if ran.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&ran.stderr).into_owned())
    }
}

#[test]
fn reductions_synchronise_as_cann_implements_them() {
    let setup = "TPipe pipe; TBuf<TPosition::VECCALC> s, d; pipe.InitBuffer(s, 512); pipe.InitBuffer(d, 32);\n\
                 LocalTensor<float> src = s.Get<float>(), dst = d.Get<float>();\n\
                 Duplicate(src, 2.0f, 128);\n";
    // ReduceSum's count form ends with V_S, a scalar store and S_V on dav-c220, so its result
    // (and anything the vector unit wrote before) can be read at once; its work tensor is unused.
    run(
        "sum-then-read",
        &format!("{setup}ReduceSum(dst, src, dst, 128); if (dst.GetValue(0) != 256.0f) fail(\"sum\"); (void)src.GetValue(7);"),
    )
    .unwrap();
    // ReduceMax without an index ends the same way, and its work tensor may be the destination
    // when it has the documented size (8 floats for 128).
    run(
        "max-work-is-dst",
        &format!(
            "{setup}ReduceMax(dst, src, dst, 128); if (dst.GetValue(0) != 2.0f) fail(\"max\");"
        ),
    )
    .unwrap();
    // With calIndex the index lands through the vector unit: reading it needs a V_S flag.
    let unsynced = format!(
        "{setup}TBuf<TPosition::VECCALC> w; pipe.InitBuffer(w, 32);\n\
         ReduceMax(dst, src, w.Get<float>(), 128, true); (void)dst.GetValue(1);"
    );
    let e = run("max-index-unsynced", &unsynced).unwrap_err();
    assert!(
        e.contains("GetValue(1) (pipe S) reads UB bytes")
            && e.contains("that ReduceMax (pipe V) wrote with no V_S synchronisation"),
        "{e}"
    );
    let synced = unsynced.replace(
        "(void)dst.GetValue(1);",
        "SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0); (void)dst.GetValue(1);",
    );
    run("max-index-synced", &synced).unwrap();
}

fn refused(name: &str, wrong: &str, right: &str, rule: &str) {
    let diagnostics = compile(name, wrong).unwrap_or_else(|| panic!("{name}: compiled"));
    assert!(diagnostics.contains(rule), "{name}: {diagnostics}");
    if let Some(d) = compile(&format!("{name}-fixed"), right) {
        panic!("{name}: the corrected form does not compile: {d}");
    }
}

#[test]
fn a_queue_at_veccalc_is_a_compile_error() {
    refused(
        "veccalc-queue",
        "TPipe pipe; TQue<TPosition::VECCALC, 1> q; pipe.InitBuffer(q, 1, 256);",
        "TPipe pipe; TBuf<TPosition::VECCALC> b; pipe.InitBuffer(b, 256);",
        "TQue<TPosition::VECCALC>: a queue hands data between pipes",
    );
}

#[test]
fn the_forms_cann_declares_compile() {
    // A TQue with its mask argument, TQueBind, event_t from FetchEventID(HardEvent), and
    // ReduceMax with calIndex: all as CANN 8.1.RC1 declares them.
    let body = "TPipe pipe; TQue<TPosition::VECIN, 1, 0> q; TQueBind<TPosition::VECIN, TPosition::VECOUT, 2> b;\n\
                pipe.InitBuffer(q, 1, 256); pipe.InitBuffer(b, 2, 256);\n\
                event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(HardEvent::V_S));\n\
                SetFlag<HardEvent::V_S>(id); WaitFlag<HardEvent::V_S>(id);\n\
                TBuf<TPosition::VECCALC> s, d, w; pipe.InitBuffer(s, 256); pipe.InitBuffer(d, 32); pipe.InitBuffer(w, 32);\n\
                ReduceMax(d.Get<float>(), s.Get<float>(), w.Get<float>(), 64, true);";
    if let Some(d) = compile("cann-forms", body) {
        panic!("{d}");
    }
}

#[test]
fn level_0_forms_follow_the_repeat_rules() {
    let setup = "TPipe pipe; TBuf<TPosition::VECCALC> a, b, c; pipe.InitBuffer(a, 1024); pipe.InitBuffer(b, 1024); pipe.InitBuffer(c, 1024);\n\
                 LocalTensor<float> x = a.Get<float>(), y = b.Get<float>(), z = c.Get<float>();\n\
                 Duplicate(x, 1.0f, 256); Duplicate(y, 2.0f, 256); Duplicate(z, 0.0f, 256);\n";
    // Accumulation across repeats: dst and src1 with repeat stride 0 sum the 4 rows of x.
    run(
        "accumulate",
        &format!(
            "{setup}Add(z, x, z, 64, 4, BinaryRepeatParams(1, 1, 1, 0, 8, 0));\n\
             SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             if (z.GetValue(0) != 4.0f || z.GetValue(64) != 0.0f) fail(\"accumulated wrongly\");"
        ),
    )
    .unwrap();
    // Brcb then a block-broadcast Mul: row j of y times element j of x.
    run(
        "broadcast",
        &format!(
            "{setup}SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             x.SetValue(1, 3.0f); SetFlag<HardEvent::S_V>(EVENT_ID0); WaitFlag<HardEvent::S_V>(EVENT_ID0);\n\
             Brcb(z, x, 1, BrcbRepeatParams(1, 8));\n\
             Mul(y, y, z, 64, 2, BinaryRepeatParams(1, 1, 0, 8, 8, 1));\n\
             SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             if (y.GetValue(0) != 2.0f || y.GetValue(64) != 6.0f || y.GetValue(128) != 2.0f) fail(\"broadcast wrongly\");"
        ),
    )
    .unwrap();
    // What the attention kernel relies on: WholeReduceMax per repeat (value only), the bit-mask
    // Duplicate (lanes 3.. of one repeat), and MulAddDst of half sources into a float dst.
    run(
        "reduce-max",
        &format!(
            "{setup}SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             x.SetValue(5, 9.0f); x.SetValue(64 + 63, -3.0f); SetFlag<HardEvent::S_V>(EVENT_ID0); WaitFlag<HardEvent::S_V>(EVENT_ID0);\n\
             WholeReduceMax(z, x, 64, 2, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);\n\
             uint64_t bits[2] = {{~0ULL << 3, 0}}; Duplicate(y, -7.0f, bits, 1, 1, 8);\n\
             SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             if (z.GetValue(0) != 9.0f || z.GetValue(1) != 1.0f) fail(\"reduced wrongly\");\n\
             if (y.GetValue(2) != 2.0f || y.GetValue(3) != -7.0f || y.GetValue(63) != -7.0f || y.GetValue(64) != 2.0f) fail(\"masked wrongly\");"
        ),
    )
    .unwrap();
    run(
        "mixed-mul-add",
        &format!(
            "{setup}TBuf<TPosition::VECCALC> h; pipe.InitBuffer(h, 1024); LocalTensor<half> hx = h.Get<half>();\n\
             Duplicate(hx, static_cast<half>(1.5f), 128); Duplicate(hx[128], static_cast<half>(-2.0f), 128);\n\
             MulAddDst(y, hx, hx[128], 64, 2, BinaryRepeatParams(1, 1, 1, 8, 4, 4));\n\
             SetFlag<HardEvent::V_S>(EVENT_ID0); WaitFlag<HardEvent::V_S>(EVENT_ID0);\n\
             if (y.GetValue(0) != -1.0f || y.GetValue(127) != -1.0f || y.GetValue(128) != 2.0f) fail(\"multiplied wrongly\");"
        ),
    )
    .unwrap();
    let cases = [
        (
            "mask",
            "Mul(z, x, y, 65, 1, BinaryRepeatParams());",
            "Mul: continuous mask 65 outside 1..64",
        ),
        (
            "feed",
            "MulAddDst(x[8], x, y, 64, 2, BinaryRepeatParams());",
            "MulAddDst: dst overlaps src0",
        ),
        (
            "past",
            "Mul(z, x, y, 64, 5, BinaryRepeatParams());",
            "Mul: the dst repeats reach element 319 of a tensor of 256",
        ),
        (
            "brcb-alias",
            "Brcb(x, x, 1, BrcbRepeatParams(1, 8));",
            "Brcb: src0 and dst share memory",
        ),
    ];
    for (name, body, rule) in cases {
        let e = run(name, &format!("{setup}{body}")).unwrap_err();
        assert!(e.contains(rule), "{name}: {e}");
    }
}
