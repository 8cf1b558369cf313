//! The fake under misuse through its C ABI: it validates pointers against its own address
//! spaces and returns CANN's codes instead of crashing, reports memory freed under a queued copy
//! at the next synchronisation, and exports the functions C programs use.

mod common;

use std::ffi::c_void;

type MemcpyFn = unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize, u32) -> i32;
type MemcpyAsyncFn =
    unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize, u32, *mut c_void) -> i32;

/// A function of the fake.
fn sym<T: Copy>(name: &str) -> T {
    let lib = common::library(&common::fake_path());
    // SAFETY: each caller names the function with its C signature from the CANN headers.
    unsafe { *lib.get::<T>(name.as_bytes()).unwrap() }
}

/// Runs `f` on a thread that has device 0 current (`aclrtSetDevice(0)`), serialised with the
/// other tests of this binary (the fake is process-wide).
fn on_device0<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    common::fake_path();
    std::thread::scope(|s| {
        s.spawn(|| {
            let init: unsafe extern "C" fn(*const i8) -> i32 = sym("aclInit");
            let set: unsafe extern "C" fn(i32) -> i32 = sym("aclrtSetDevice");
            // SAFETY: C calls with valid arguments; 100002 = already initialised.
            let code = unsafe { init(std::ptr::null()) };
            assert!(code == 0 || code == 100_002, "aclInit {code}");
            // SAFETY: as above.
            assert_eq!(unsafe { set(0) }, 0);
            f()
        })
        .join()
        .unwrap()
    })
}

fn malloc(size: usize) -> *mut c_void {
    let f: unsafe extern "C" fn(*mut *mut c_void, usize, u32) -> i32 = sym("aclrtMalloc");
    let mut p = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { f(&mut p, size, 0) }, 0);
    p
}

fn malloc_host(size: usize) -> *mut c_void {
    let f: unsafe extern "C" fn(*mut *mut c_void, usize) -> i32 = sym("aclrtMallocHost");
    let mut p = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { f(&mut p, size) }, 0);
    p
}

#[test]
fn a_host_to_host_copy_with_a_device_address_is_an_error_not_a_crash() {
    on_device0(|| {
        let memcpy: MemcpyFn = sym("aclrtMemcpy");
        let dev = malloc(4096);
        let mut host = vec![0u8; 4096];
        for (dst, src) in [
            (host.as_mut_ptr().cast::<c_void>(), dev.cast_const()),
            (dev, host.as_ptr().cast::<c_void>()),
        ] {
            // SAFETY: the fake validates the pointers; the host one is valid for 4096 bytes.
            let code = unsafe { memcpy(dst, 4096, src, 4096, 0) };
            assert_eq!(code, 107_000, "ACL_ERROR_RT_PARAM_INVALID");
        }
        // A freed device address on the host side of a host-to-device copy: refused.
        // SAFETY: as above.
        let code = unsafe { memcpy(dev, 4096, dev.wrapping_add(1 << 40).cast_const(), 16, 1) };
        assert_eq!(code, 107_000);
        // A pinned range that overruns its allocation.
        let pinned = malloc_host(64);
        // SAFETY: the fake checks the pinned range before touching it.
        let code = unsafe { memcpy(dev, 4096, pinned.cast_const(), 128, 1) };
        assert_eq!(code, 107_000);
    });
}

#[test]
fn freeing_pinned_memory_under_a_queued_copy_is_reported_at_synchronize() {
    on_device0(|| {
        let memcpy_async: MemcpyAsyncFn = sym("aclrtMemcpyAsync");
        let free_host: unsafe extern "C" fn(*mut c_void) -> i32 = sym("aclrtFreeHost");
        let sync: unsafe extern "C" fn(*mut c_void) -> i32 = sym("aclrtSynchronizeStream");
        let create: unsafe extern "C" fn(*mut *mut c_void) -> i32 = sym("aclrtCreateStream");
        let mut stream = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        assert_eq!(unsafe { create(&mut stream) }, 0);
        const N: usize = 16 << 20;
        let dev = malloc(N);
        let host = malloc_host(N);
        // Enough copies queued that the first is still running when the memory is freed.
        for _ in 0..8 {
            // SAFETY: both ranges are live allocations of N bytes.
            let code = unsafe { memcpy_async(host, N, dev.cast_const(), N, 2, stream) };
            assert_eq!(code, 0);
        }
        // SAFETY: a live aclrtMallocHost pointer.
        assert_eq!(unsafe { free_host(host) }, 0, "the free itself succeeds");
        // SAFETY: a live stream.
        let code = unsafe { sync(stream) };
        assert_eq!(
            code, 507_052,
            "ACL_ERROR_RT_COPY_DATA at the next synchronize"
        );
        let msg = recent_error();
        assert!(msg.contains("aclrtFreeHost freed"), "{msg}");
        // SAFETY: as above; the misuse was reported once.
        assert_eq!(unsafe { sync(stream) }, 0);
        // Freed after the copies are done: no error.
        let host = malloc_host(N);
        // SAFETY: as above.
        let code = unsafe { memcpy_async(host, N, dev.cast_const(), N, 2, stream) };
        assert_eq!(code, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { sync(stream) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { free_host(host) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { sync(stream) }, 0);
    });
}

fn recent_error() -> String {
    let f: unsafe extern "C" fn() -> *const std::ffi::c_char = sym("aclGetRecentErrMsg");
    // SAFETY: the fake returns NULL or a NUL-terminated string valid until the next call.
    unsafe {
        let p = f();
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

#[test]
fn codes_match_cann() {
    on_device0(|| {
        let mem_info: unsafe extern "C" fn(u32, *mut usize, *mut usize) -> i32 =
            sym("aclrtGetMemInfo");
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        assert_eq!(unsafe { mem_info(99, &mut free, &mut total) }, 107_016);
        // SAFETY: as above.
        assert_eq!(unsafe { mem_info(1, &mut free, &mut total) }, 0);
        assert!(total > 0 && free <= total);
        let set_ctx: unsafe extern "C" fn(*mut c_void) -> i32 = sym("aclrtSetCurrentContext");
        // SAFETY: NULL is checked by the fake.
        assert_eq!(unsafe { set_ctx(std::ptr::null_mut()) }, 100_000);
        // SAFETY: a bogus handle is checked by the fake.
        assert_eq!(unsafe { set_ctx(8 as *mut c_void) }, 107_000);
    });
    // A thread with no current context: aclrtMemcpy is ACL_ERROR_RT_CONTEXT_NULL.
    let memcpy: MemcpyFn = sym("aclrtMemcpy");
    let code = std::thread::spawn(move || {
        let (mut a, b) = ([0u8; 8], [1u8; 8]);
        // SAFETY: valid host buffers of 8 bytes.
        unsafe { memcpy(a.as_mut_ptr().cast(), 8, b.as_ptr().cast(), 8, 0) }
    })
    .join()
    .unwrap();
    assert_eq!(code, 107_002);
}

#[test]
fn the_functions_c_programs_use_are_exported() {
    on_device0(|| {
        let run_mode: unsafe extern "C" fn(*mut u32) -> i32 = sym("aclrtGetRunMode");
        let mut mode = 7u32;
        // SAFETY: a valid out-pointer.
        assert_eq!(unsafe { run_mode(&mut mode) }, 0);
        assert_eq!(mode, 1, "ACL_HOST");
        let create_event: unsafe extern "C" fn(*mut *mut c_void) -> i32 = sym("aclrtCreateEvent");
        let destroy_event: unsafe extern "C" fn(*mut c_void) -> i32 = sym("aclrtDestroyEvent");
        let mut e = std::ptr::null_mut();
        // SAFETY: a valid out-pointer, then the handle it returned.
        unsafe {
            assert_eq!(create_event(&mut e), 0);
            assert_eq!(destroy_event(e), 0);
        }
        let memset: unsafe extern "C" fn(*mut c_void, usize, i32, usize) -> i32 =
            sym("aclrtMemset");
        let memcpy: MemcpyFn = sym("aclrtMemcpy");
        let dev = malloc(256);
        let mut back = [0u8; 256];
        // SAFETY: a live device allocation of 256 bytes; `value` is cast to a byte as by CANN.
        unsafe {
            assert_eq!(memset(dev, 256, 0x1AB, 100), 0);
            assert_eq!(memcpy(back.as_mut_ptr().cast(), 256, dev, 256, 2), 0);
        }
        assert!(back[..100].iter().all(|&b| b == 0xAB));
        let pinned = malloc_host(64);
        // SAFETY: a live pinned allocation of 64 bytes.
        unsafe {
            assert_eq!(memset(pinned, 64, 7, 64), 0);
            assert_eq!(*pinned.cast::<u8>().add(63), 7);
            assert_eq!(memset(dev, 256, 0, 0), 107_000, "count 0");
            assert_eq!(memset(dev, 10, 0, 11), 107_000, "count > maxCount");
            assert_eq!(
                memset(pinned, 128, 0, 128),
                107_000,
                "overruns the allocation"
            );
            assert_eq!(memset(std::ptr::null_mut(), 1, 0, 1), 100_000);
        }
    });
}
