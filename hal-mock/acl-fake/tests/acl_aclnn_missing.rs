//! A missing ACLNN library is reported with every place tried and what to do (in a process of
//! its own: the environment names the libraries).

mod common;

use ascend_hal::acl::aclnn::Aclnn;
use ascend_hal::Error;

#[test]
fn a_missing_opapi_library_lists_every_place_tried() {
    let missing = std::env::temp_dir().join("no-such-dir/libopapi.so");
    // SAFETY: the only test of this binary, before any other thread reads the environment.
    unsafe {
        std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", common::fake_path());
        std::env::set_var("ASCEND_HAL_OPAPI_LIB", &missing);
    }
    let backend = common::backend();
    let e = Aclnn::load(&backend).unwrap_err();
    let Error::OpLibraryNotFound {
        library,
        variable,
        tried,
    } = &e
    else {
        panic!("expected OpLibraryNotFound, got {e}");
    };
    assert_eq!(
        (*library, *variable),
        ("libopapi.so", "ASCEND_HAL_OPAPI_LIB")
    );
    assert_eq!(
        tried[0].place,
        format!("ASCEND_HAL_OPAPI_LIB: {}", missing.display())
    );
    assert_eq!(tried[0].outcome, "no such file");
    let beside = std::path::Path::new(backend.library_path())
        .parent()
        .unwrap()
        .join("libopapi.so");
    assert_eq!(
        tried[1].place,
        format!("beside the ACL runtime: {}", beside.display())
    );
    assert!(tried
        .last()
        .unwrap()
        .place
        .starts_with("system search path"));
    let text = e.to_string();
    for needle in [
        "set_env.sh",
        "ASCEND_HAL_OPAPI_LIB",
        "Ascend-cann-kernels",
        "libopapi.so",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}
