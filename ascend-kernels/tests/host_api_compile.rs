//! What the host implementation of the Ascend C API refuses at compile time, as CANN's headers
//! do: each case is a small kernel compiled with the host header (`c++ -fsyntax-only`, the
//! compiler `build.rs` already needs), once as written (must fail, with the rule in the
//! diagnostic) and once corrected (must compile), so a case can fail in both directions.

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
