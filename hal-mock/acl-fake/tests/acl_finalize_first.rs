//! `aclFinalize` before any `aclInit`, in a process of its own: CANN 8.5's `acl.cpp` starts its
//! "finalized" flag false, so the first call runs and returns 0; a second returns
//! `ACL_ERROR_REPEAT_FINALIZE` (100037).

mod common;

#[test]
fn finalize_before_init_returns_success_then_repeat_finalize() {
    let lib = common::library(&common::fake_path());
    // SAFETY: `int aclFinalize(void)` / `int aclInit(const char*)` of the fake.
    unsafe {
        let finalize = lib
            .get::<unsafe extern "C" fn() -> i32>(b"aclFinalize")
            .unwrap();
        let init = lib
            .get::<unsafe extern "C" fn(*const i8) -> i32>(b"aclInit")
            .unwrap();
        assert_eq!(finalize(), 0);
        assert_eq!(finalize(), 100_037);
        assert_eq!(init(std::ptr::null()), 0);
        assert_eq!(finalize(), 0);
        assert_eq!(finalize(), 100_037);
    }
}
