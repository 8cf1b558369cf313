//! Builds the Ascend C kernels (`ascendc/kernels/*.cpp`), each build behind a feature, so that a
//! build without them needs no C++ compiler:
//!
//! - `host-kernels`, for the host: the kernel sources with `ascendc/host/kernel_operator.h` (our host
//!   implementation of the Ascend C API) and the launch shims in `ascendc/host/launch.cpp`, with
//!   the system C++ compiler through `cc`. `cargo test` runs them one simulated core at a time.
//!   The same objects, with the `aclrtlaunch_*` stubs of `ascendc/host/fake_launch.cpp`, also
//!   make `libascendc_kernels_host.so`, which the ACL backend loads over the ACL fake.
//! - with the `ascend-c` feature, for the NPU: `ascendc/CMakeLists.txt` (CANN's
//!   `ascendc_library`) for the SoC named by `SOC_VERSION` (default `Ascend910B1`), from the
//!   toolkit at `ASCEND_TOOLKIT_HOME` (or `ASCEND_HOME_PATH`, as `set_env.sh` exports). The
//!   result, `libascendc_kernels.so`, is loaded at run time by the ACL backend; its path is baked
//!   in as `ASCENDC_KERNELS_LIB`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=ascendc");
    println!("cargo:rerun-if-env-changed=SOC_VERSION");
    println!("cargo:rerun-if-env-changed=ASCEND_TOOLKIT_HOME");
    println!("cargo:rerun-if-env-changed=ASCEND_HOME_PATH");
    if env::var_os("CARGO_FEATURE_HOST_KERNELS").is_some() {
        host_build();
    }
    if env::var_os("CARGO_FEATURE_ASCEND_C").is_some() {
        npu_build();
    }
}

fn host_build() {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .pic(true)
        .include("ascendc/host")
        .include("ascendc/kernels")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true);
    build
        .clone()
        .file("ascendc/host/launch.cpp")
        .compile("ascendc_host");
    host_kernels_library(&build);
}

/// The host kernels library, `libascendc_kernels_host.so`: the host build's kernels behind the
/// `aclrtlaunch_*` stubs of `ascendc/host/fake_launch.cpp`, for the ACL backend over the ACL
/// fake. Linked from the objects just built; its path is baked in as
/// `ASCENDC_HOST_KERNELS_LIB`.
fn host_kernels_library(build: &cc::Build) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let stubs = build
        .clone()
        .file("ascendc/host/fake_launch.cpp")
        .compile_intermediates();
    let lib = out.join("libascendc_kernels_host.so");
    let compiler = build.get_compiler();
    run(compiler
        .to_command()
        .arg("-shared")
        .arg("-o")
        .arg(&lib)
        .args(&stubs)
        .arg("-Wl,--whole-archive")
        .arg(out.join("libascendc_host.a"))
        .arg("-Wl,--no-whole-archive")
        // The library's own calls bind to its own definitions, whatever else is loaded.
        .arg("-Wl,-Bsymbolic")
        .arg("-ldl"));
    println!("cargo:rustc-env=ASCENDC_HOST_KERNELS_LIB={}", lib.display());
}

fn npu_build() {
    let toolkit = env::var_os("ASCEND_TOOLKIT_HOME")
        .or_else(|| env::var_os("ASCEND_HOME_PATH"))
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "the `ascend-c` feature compiles the Ascend C kernels with CANN, but neither \
                 ASCEND_TOOLKIT_HOME nor ASCEND_HOME_PATH names a toolkit directory. Install the \
                 CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`, or build \
                 without the feature (the host build of the kernels needs no CANN)."
            )
        });
    let soc = env::var("SOC_VERSION").unwrap_or_else(|_| "Ascend910B1".to_string());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (build, prefix) = (out.join("ascendc-build"), out.join("ascendc"));
    run(Command::new("cmake")
        .arg("-S")
        .arg("ascendc")
        .arg("-B")
        .arg(&build)
        .arg(format!("-DSOC_VERSION={soc}"))
        .arg(format!("-DASCEND_CANN_PACKAGE_PATH={}", toolkit.display()))
        .arg("-DCMAKE_BUILD_TYPE=Release")
        .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display())));
    run(Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .arg("--parallel"));
    run(Command::new("cmake").arg("--install").arg(&build));
    let lib = prefix.join("lib").join("libascendc_kernels.so");
    assert!(
        Path::new(&lib).is_file(),
        "cmake finished but {} is missing",
        lib.display()
    );
    println!("cargo:rustc-env=ASCENDC_KERNELS_LIB={}", lib.display());
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e} (is cmake installed?)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}
