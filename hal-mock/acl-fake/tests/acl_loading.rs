//! Loading the ACL runtime: the messages for a missing library and a missing symbol, the search
//! through `ASCEND_TOOLKIT_HOME`, and `aclInit`/`aclFinalize` reference counting.
//!
//! One test, in steps, alone in its process: it changes the environment and watches the
//! process-wide runtime come and go.

mod common;

use std::path::PathBuf;

use ascend_hal::acl::{AclBackend, LoadOptions};
use ascend_hal::prelude::*;
use ascend_hal::Error;

fn fake_call(function: &str) -> i32 {
    // SAFETY: the fake exports `aclInit(const char*)` and `aclFinalize()`; calling `aclFinalize`
    // through a pointer typed with an ignored argument is avoided by matching on the name.
    unsafe {
        let lib = common::library(&common::fake_path());
        if function == "aclInit" {
            let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
                lib.get(b"aclInit").unwrap();
            f(std::ptr::null())
        } else {
            let f: libloading::Symbol<'_, unsafe extern "C" fn() -> i32> =
                lib.get(b"aclFinalize").unwrap();
            f()
        }
    }
}

fn libc_path() -> PathBuf {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/usr/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a libc.so.6 to stand in for a library without the ACL symbols")
}

#[test]
fn loading_messages_search_order_and_init_refcount() {
    // 1. Nothing anywhere: every place is listed, with what to do.
    let empty = std::env::temp_dir().join(format!("acl-loading-empty-{}", std::process::id()));
    std::env::set_var("ASCEND_TOOLKIT_HOME", &empty);
    std::env::remove_var("ASCEND_HAL_ACL_LIB");
    std::env::remove_var("ASCEND_HOME_PATH");
    let err = AclBackend::load_with(&LoadOptions {
        path: Some("/nonexistent/explicit/libascendcl.so".into()),
        search: true,
    })
    .unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::LibraryNotFound { tried } => {
            assert_eq!(
                tried[0].place,
                "explicit path: /nonexistent/explicit/libascendcl.so"
            );
            assert_eq!(tried[0].outcome, "no such file");
            assert!(tried
                .iter()
                .any(|t| t.place.starts_with("ASCEND_TOOLKIT_HOME:")));
            assert!(tried
                .iter()
                .any(|t| t.place.starts_with("default install:")));
            let last = tried.last().unwrap();
            assert!(last.place.starts_with("system search path"), "{last:?}");
            assert!(last.outcome.contains("libascendcl.so"), "{last:?}");
        }
        other => panic!("expected LibraryNotFound, got {other:?}"),
    }
    assert!(msg.contains("source the CANN environment first"), "{msg}");
    assert!(
        msg.contains("set_env.sh") && msg.contains("ASCEND_HAL_ACL_LIB"),
        "{msg}"
    );

    // 2. A library without the ACL symbols: the first missing one is named.
    let err = AclBackend::load_from(libc_path()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::MissingSymbol {
                symbol: "aclInit",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("has no `aclInit`"), "{err}");
    assert!(err.to_string().contains("CANN 7.0 or later"), "{err}");

    // 3. Found through ASCEND_TOOLKIT_HOME/lib64, as with a real toolkit.
    let toolkit = std::env::temp_dir().join(format!("acl-loading-tk-{}", std::process::id()));
    std::fs::create_dir_all(toolkit.join("lib64")).unwrap();
    let link = toolkit.join("lib64/libascendcl.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(common::fake_path(), &link).unwrap();
    std::env::set_var("ASCEND_TOOLKIT_HOME", &toolkit);
    let inits = common::call_count("aclInit");
    let first = AclBackend::load().unwrap();
    assert_eq!(first.library_path(), link.display().to_string());
    assert_eq!(common::call_count("aclInit"), inits + 1);

    // 4. One aclInit per process, one aclFinalize when the last handle goes.
    let second = AclBackend::load_from(common::fake_path()).unwrap();
    let device = second.device(0).unwrap();
    assert_eq!(
        common::call_count("aclInit"),
        inits + 1,
        "a second backend re-initialised"
    );
    let finals = common::call_count("aclFinalize");
    drop(first);
    assert_eq!(common::call_count("aclFinalize"), finals);
    let stream = device.new_stream().unwrap();
    let b = DeviceBuffer::<AclBackend, i32>::from_slice(&stream, &[1, 2, 3]).unwrap();
    assert_eq!(stream.clone_to_host(&b).unwrap(), [1, 2, 3]);
    drop((b, stream, device));
    assert_eq!(
        common::call_count("aclFinalize"),
        finals,
        "a device still held the runtime"
    );
    drop(second);
    assert_eq!(common::call_count("aclFinalize"), finals + 1);

    // After finalisation a new backend initialises again.
    let again = AclBackend::load_from(common::fake_path()).unwrap();
    assert_eq!(common::call_count("aclInit"), inits + 2);
    assert_eq!(again.device_count().unwrap(), 2);
    drop(again);
    assert_eq!(common::call_count("aclFinalize"), finals + 2);

    // 5. Someone else initialised ACL first (as torch_npu may): finalising stays theirs.
    assert_eq!(fake_call("aclInit"), 0);
    let guest = AclBackend::load_from(common::fake_path()).unwrap();
    assert_eq!(guest.device_count().unwrap(), 2);
    drop(guest);
    assert_eq!(
        common::call_count("aclFinalize"),
        finals + 2,
        "finalised someone else's ACL"
    );
    assert_eq!(fake_call("aclFinalize"), 0);

    // 6. aclInit failing says what usually causes it.
    common::set_faults("aclInit:1:507033");
    let err = AclBackend::load_from(common::fake_path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Acl {
                function: "aclInit",
                code: 507_033,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("ACL_ERROR_RT_DEV_SETUP_ERROR"), "{msg}");
    assert!(
        msg.contains("driver is not mounted into the container"),
        "{msg}"
    );
    assert!(msg.contains("driver is older than the toolkit"), "{msg}");
    AclBackend::load_from(common::fake_path()).expect("the next aclInit succeeds");

    std::fs::remove_dir_all(&toolkit).unwrap();
}
