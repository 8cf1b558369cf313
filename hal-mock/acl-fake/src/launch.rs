//! Kernel launches for the host build of the Ascend C kernels (`ascend-kernels`' host kernels
//! library). The generated `aclrtlaunch_<kernel>` stubs of a CANN build queue the kernel's
//! device binary on an ACL stream; the host build's stubs call [`aclfakeLaunchHostKernel`]
//! instead, which queues the kernel's host code on the fake stream, in order with the stream's
//! copies and events, against the fake's device memory. A kernel that breaks a hardware rule, or
//! an argument outside live device memory, fails the stream like an AI Core exception
//! (`ACL_ERROR_RT_AICORE_EXCEPTION`, 507015, at the next synchronisation, with the kernel named
//! in `aclGetRecentErrMsg`).

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use ascend_hal::{DevicePtr, Error};

use crate::exports::{c_str, call, inject};
use crate::state::{code, fail, from_hal};

/// `int32_t kernel(void *ctx, void *const *hostArgs, const size_t *extents, size_t numArgs,
/// char *err, size_t errLen)`: runs the kernel over host copies of its arguments; non-zero with
/// a message in `err` when it broke a rule.
pub type HostKernel = unsafe extern "C" fn(
    *mut c_void,
    *const *mut c_void,
    *const usize,
    usize,
    *mut c_char,
    usize,
) -> i32;

/// A launch's context: released (by the library that made it) when the launch has run or was
/// dropped unrun (a stream that failed earlier skips it).
struct Context {
    ctx: *mut c_void,
    release: Option<unsafe extern "C" fn(*mut c_void)>,
}

// SAFETY: the context is owned by the launch (the caller of `aclfakeLaunchHostKernel` hands it
// over) and used by one thread at a time: the stream's worker, then whoever drops the task.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the launch's contract: `release(ctx)` is called exactly once.
            unsafe { release(self.ctx) }
        }
    }
}

/// The most arguments a launch passes (the kernels take at most 9 global-memory pointers).
const MAX_ARGS: usize = 64;

/// Kernel names live as long as the process (stream errors name their op with a `&'static str`);
/// there are a few dozen.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(&n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(n);
    n
}

/// `int32_t aclfakeLaunchHostKernel(aclrtStream stream, const char *name, void *const *args,
/// size_t numArgs, aclfakeHostKernel kernel, void *ctx, void (*release)(void *ctx))`.
///
/// Queues `kernel(ctx, ...)` on `stream` (NULL: the current device's default stream) with the
/// device addresses `args` translated to host pointers. `release(ctx)`, if given, is called
/// once the launch has run or will not run, also when this call fails.
#[no_mangle]
pub extern "C" fn aclfakeLaunchHostKernel(
    stream: *mut c_void,
    name: *const c_char,
    args: *const *mut c_void,
    num_args: usize,
    kernel: Option<HostKernel>,
    ctx: *mut c_void,
    release: Option<unsafe extern "C" fn(*mut c_void)>,
) -> i32 {
    const F: &str = "aclfakeLaunchHostKernel";
    let context = Context { ctx, release };
    call(F, move |g, fault| {
        let name = intern(c_str(name, F)?);
        let Some(kernel) = kernel else {
            return fail(code::INVALID_PARAM, format!("{F}: {name}: kernel is NULL"));
        };
        if args.is_null() && num_args > 0 {
            return fail(code::INVALID_PARAM, format!("{F}: {name}: args is NULL"));
        }
        if num_args > MAX_ARGS {
            return fail(
                code::INVALID_PARAM,
                format!("{F}: {name}: {num_args} arguments; a kernel takes at most {MAX_ARGS}"),
            );
        }
        let addresses: Vec<DevicePtr> = if num_args == 0 {
            Vec::new()
        } else {
            // SAFETY: the caller passes `num_args` readable pointers at `args`.
            unsafe { std::slice::from_raw_parts(args, num_args) }
                .iter()
                .map(|&p| DevicePtr(p as u64))
                .collect()
        };
        let s = g.stream(stream)?;
        drop(g);
        if inject(&s, fault) {
            return Ok(());
        }
        s.stream
            .enqueue_kernel(name, &addresses, move |host| {
                let context = context;
                let ptrs: Vec<*mut c_void> = host.iter().map(|a| a.ptr.cast()).collect();
                let extents: Vec<usize> = host.iter().map(|a| a.len).collect();
                let mut err = [0 as c_char; 512];
                // SAFETY: the launch's contract: `kernel` takes these arguments and stays
                // callable until `release`; every pointer covers its extent for this call.
                let status = unsafe {
                    kernel(
                        context.ctx,
                        ptrs.as_ptr(),
                        extents.as_ptr(),
                        ptrs.len(),
                        err.as_mut_ptr(),
                        err.len(),
                    )
                };
                if status == 0 {
                    return Ok(());
                }
                err[err.len() - 1] = 0;
                // SAFETY: NUL-terminated just above.
                let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
                Err(Error::KernelFault {
                    op: name,
                    message: format!("status {status}: {message}"),
                })
            })
            .map_err(|e| from_hal(F, e))
    })
}
