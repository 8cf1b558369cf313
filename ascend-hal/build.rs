//! With the `bindgen` feature: generates Rust declarations from the CANN toolkit's ACL headers
//! (`$ASCEND_TOOLKIT_HOME/include/acl/acl.h`, or `$ASCEND_HOME_PATH`) into
//! `$OUT_DIR/acl_bindgen.rs`, which `src/acl/bindgen_check.rs` compares with the hand-written
//! declarations. Without the feature it does nothing: building never needs CANN.

fn main() {
    #[cfg(feature = "bindgen")]
    generate();
}

#[cfg(feature = "bindgen")]
fn generate() {
    use std::path::PathBuf;

    for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let home = std::env::var("ASCEND_TOOLKIT_HOME")
        .or_else(|_| std::env::var("ASCEND_HOME_PATH"))
        .unwrap_or_else(|_| {
            panic!(
                "the `bindgen` feature of ascend-hal reads the ACL headers of an installed CANN \
                 toolkit: source its set_env.sh (which sets ASCEND_TOOLKIT_HOME), or build \
                 without the feature (the checked-in declarations need no toolkit)"
            )
        });
    let include = PathBuf::from(&home).join("include");
    let header = include.join("acl").join("acl.h");
    if !header.exists() {
        panic!(
            "the `bindgen` feature expected {} (ASCEND_TOOLKIT_HOME={home}); is that a CANN \
             toolkit with its development headers?",
            header.display()
        );
    }
    println!("cargo:rerun-if-changed={}", header.display());
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("acl(rt|sys)?[A-Z].*")
        .allowlist_type("aclrt.*|aclCANNPackageVersion")
        .allowlist_var("ACL_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .size_t_is_usize(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen could not parse {}: {e}", header.display()));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("acl_bindgen.rs"))
        .expect("writing the generated bindings into OUT_DIR");
}
