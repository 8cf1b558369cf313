//! ACL streams.
//!
//! A device-side failure surfaces from `aclrtSynchronizeStream` as a code, without saying which
//! task failed; the stream therefore remembers the operations queued since the last
//! synchronisation and names them in the error.

use std::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::backend::AclBackend;
use super::device::{AclDevice, DeviceInner};
use super::event::AclEvent;
use super::result;
use super::sys::{self, AclrtStream};
use crate::error::{Error, Result};
use crate::{DevicePtr, StreamId};

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// A check queued with [`AclStream::check_after_sync`].
type AfterSync = Box<dyn FnOnce(&AclStream) -> Result<()> + Send>;

/// A stream of the ACL backend.
pub struct AclStream {
    raw: AclrtStream,
    id: StreamId,
    device: Arc<DeviceInner>,
    /// Operations queued since the last synchronisation, for error messages.
    /// (the first 64 of them, and how many more).
    pending: Mutex<(Vec<&'static str>, usize)>,
    /// Checks to run once the work queued so far has completed.
    after_sync: Mutex<Vec<AfterSync>>,
}

// SAFETY: the stream handle is an opaque runtime token usable from any thread whose current
// context is the stream's device; every method binds that context first.
unsafe impl Send for AclStream {}
// SAFETY: as for `Send`; the ACL runtime serialises concurrent submissions to one stream, and
// the only host-side mutable state is behind a mutex.
unsafe impl Sync for AclStream {}

fn dev(ptr: DevicePtr) -> *mut c_void {
    ptr.0 as usize as *mut c_void
}

/// The operations queued since the last synchronisation (`queued`, then `more` not recorded),
/// as a short list: runs of one operation counted (`matmul x30`), at most eight runs, then how
/// many more operations.
pub(crate) fn queued_summary(queued: &[&'static str], more: usize) -> String {
    const RUNS: usize = 8;
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for &op in queued {
        match runs.last_mut() {
            Some((last, n)) if *last == op => *n += 1,
            _ => runs.push((op, 1)),
        }
    }
    let mut list: Vec<String> = runs
        .iter()
        .take(RUNS)
        .map(|&(op, n)| {
            if n == 1 {
                op.to_string()
            } else {
                format!("{op} x{n}")
            }
        })
        .collect();
    let rest: usize = runs.iter().skip(RUNS).map(|&(_, n)| n).sum::<usize>() + more;
    if rest > 0 {
        list.push(format!("and {rest} more"));
    }
    if list.is_empty() {
        "nothing".into()
    } else {
        list.join(", ")
    }
}

/// `source` with the queued operations appended to its advice, when it is an ACL error (what a
/// failed `aclrtSynchronizeStream` is).
fn with_queued(source: Error, queued: &[&'static str], more: usize) -> Error {
    match source {
        Error::Acl {
            function,
            code,
            name,
            meaning,
            recent,
            hint,
        } => Error::Acl {
            function,
            code,
            name,
            meaning,
            recent,
            hint: format!(
                "{hint}; queued on the stream since its last synchronize: {}",
                queued_summary(queued, more)
            ),
        },
        other => other,
    }
}

impl AclStream {
    pub(crate) fn new(device: Arc<DeviceInner>) -> Result<Self> {
        device.bind()?;
        let raw = result::create_stream(&device.rt.api)?;
        Ok(AclStream {
            raw,
            id: StreamId(NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed)),
            device,
            pending: Mutex::new((Vec::new(), 0)),
            after_sync: Mutex::new(Vec::new()),
        })
    }

    /// The raw `aclrtStream`.
    pub(crate) fn raw(&self) -> AclrtStream {
        self.raw
    }

    /// Makes the stream's device current on this thread.
    pub(crate) fn bind(&self) -> Result<()> {
        self.device.bind()
    }

    pub(crate) fn note(&self, op: &'static str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.0.len() < 64 {
            p.0.push(op);
        } else {
            p.1 += 1;
        }
    }

    fn label(&self) -> String {
        format!("{}/stream {}", self.device.label(), self.id.0)
    }

    /// `aclrtSynchronizeStream`, turning a failure into a `StreamOperation` error that lists
    /// the operations queued since the previous synchronisation.
    fn sync_raw(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: `raw` is live until `Drop`, and the device's context was just bound.
        let res = unsafe { result::synchronize_stream(&self.device.rt.api, self.raw) };
        let (queued, more) =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let checks =
            std::mem::take(&mut *self.after_sync.lock().unwrap_or_else(|e| e.into_inner()));
        if res.is_ok() {
            // Every check runs (each may own device memory its kernel wrote); the first error
            // is this synchronisation's.
            let mut first = Ok(());
            for check in checks {
                let r = check(self);
                if first.is_ok() {
                    first = r;
                }
            }
            return first;
        }
        drop(checks);
        res.map_err(|source| Error::StreamOperation {
            op: "queued work",
            stream: self.label(),
            // The failure first; what was queued (a hint at which operation it was) after it.
            source: Box::new(with_queued(source, &queued, more)),
        })
    }

    /// Queues a kernel launch on this stream: makes the stream's device current, hands
    /// `launch` the raw `aclrtStream`, and remembers `op` so that a fault while the kernel runs
    /// is reported by the next synchronisation with the kernel named. `launch` returns the
    /// launch call's status (an `aclError`; the `aclrtlaunch_*` stubs CANN generates return
    /// one), and a non-zero status becomes [`Error::Acl`] naming `op`.
    ///
    /// This is how kernel crates (`ascend-kernels`) launch on our streams without the HAL
    /// knowing their kernels.
    ///
    /// # Safety
    /// 1. `launch` only queues work on the stream it is given (no synchronisation, no other
    ///    stream), with arguments that stay valid until the work completes.
    pub unsafe fn launch_raw(
        &self,
        op: &'static str,
        launch: impl FnOnce(*mut c_void) -> u32,
    ) -> Result<()> {
        self.device.bind()?;
        let code = launch(self.raw);
        if code != 0 {
            return Err(result::error(
                &self.device.rt.api,
                op,
                code as sys::AclErrorCode,
            ));
        }
        self.note(op);
        Ok(())
    }

    /// Runs `check` once the work queued on this stream so far has completed: at the next
    /// synchronisation that succeeds (`synchronize`, or a blocking copy, which synchronises
    /// first), whose result is then the first error a check returns. A failed synchronisation
    /// drops the checks unrun (its own error says more). Kernels use this to report what they
    /// found on the device (device-side indices out of range) without a synchronisation of
    /// their own; `check` may copy from the device on the stream it is given.
    pub fn check_after_sync(&self, check: impl FnOnce(&AclStream) -> Result<()> + Send + 'static) {
        self.after_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(check));
    }

    /// `aclrtMemcpyAsync` on this stream, remembered under `op` for error messages.
    ///
    /// # Safety
    /// 1. `dst` and `src` stay valid for `bytes` bytes of the sides `kind` names until the copy
    ///    completes; host sides are `aclrtMallocHost` memory; device sides belong to this
    ///    stream's device.
    unsafe fn enqueue_copy(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        kind: u32,
        op: &'static str,
    ) -> Result<()> {
        self.device.bind()?;
        // SAFETY: the caller's contract; `raw` is a live stream of the bound context.
        unsafe { result::memcpy_async(&self.device.rt.api, dst, src, bytes, kind, self.raw) }?;
        self.note(op);
        Ok(())
    }

    /// Waits for this stream, then `aclrtMemcpy` (which is not ordered with streams).
    ///
    /// # Safety
    /// 1. `dst` and `src` are valid for `bytes` bytes of the sides `kind` names for the call.
    unsafe fn copy_blocking(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        kind: u32,
    ) -> Result<()> {
        self.sync_raw()?;
        // SAFETY: the caller's contract; the synchronous copy returns when done.
        unsafe { result::memcpy(&self.device.rt.api, dst, src, bytes, kind) }
    }

    fn check_event(&self, event: &AclEvent, op: &'static str) -> Result<()> {
        if event.device.ordinal == self.device.ordinal {
            Ok(())
        } else {
            Err(Error::WrongDevice {
                op,
                what: "event",
                expected: self.device.ordinal,
                actual: event.device.ordinal,
            })
        }
    }
}

impl crate::Stream for AclStream {
    type Backend = AclBackend;

    fn id(&self) -> StreamId {
        self.id
    }

    fn device(&self) -> AclDevice {
        AclDevice {
            inner: Arc::clone(&self.device),
        }
    }

    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }

    unsafe fn enqueue_copy_h2d(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: the caller's contract for this method is `enqueue_copy`'s.
        unsafe {
            self.enqueue_copy(
                dev(dst),
                src.cast(),
                bytes,
                sys::ACL_MEMCPY_HOST_TO_DEVICE,
                "copy_h2d",
            )
        }
    }

    unsafe fn enqueue_copy_d2h(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()> {
        // SAFETY: as above.
        unsafe {
            self.enqueue_copy(
                dst.cast(),
                dev(src),
                bytes,
                sys::ACL_MEMCPY_DEVICE_TO_HOST,
                "copy_d2h",
            )
        }
    }

    unsafe fn enqueue_copy_d2d(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: as above.
        unsafe {
            self.enqueue_copy(
                dev(dst),
                dev(src),
                bytes,
                sys::ACL_MEMCPY_DEVICE_TO_DEVICE,
                "copy_d2d",
            )
        }
    }

    unsafe fn enqueue_memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()> {
        self.device.bind()?;
        // SAFETY: `dst` is live device memory of this device (caller's contract).
        unsafe { result::memset_async(&self.device.rt.api, dev(dst), value, bytes, self.raw) }?;
        self.note("memset");
        Ok(())
    }

    unsafe fn copy_h2d_blocking(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: the caller's contract for this method is `copy_blocking`'s.
        unsafe { self.copy_blocking(dev(dst), src.cast(), bytes, sys::ACL_MEMCPY_HOST_TO_DEVICE) }
    }

    unsafe fn copy_d2h_blocking(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()> {
        // SAFETY: as above.
        unsafe { self.copy_blocking(dst.cast(), dev(src), bytes, sys::ACL_MEMCPY_DEVICE_TO_HOST) }
    }

    fn record(&self, event: &AclEvent) -> Result<()> {
        self.check_event(event, "record")?;
        self.device.bind()?;
        event.record_with(|handle| {
            // SAFETY: both handles are live and belong to the bound device (checked above).
            unsafe { result::record_event(&self.device.rt.api, handle, self.raw) }
        })?;
        self.note("record");
        Ok(())
    }

    fn wait(&self, event: &AclEvent) -> Result<()> {
        self.check_event(event, "wait")?;
        if !event.is_recorded() {
            return Ok(());
        }
        self.device.bind()?;
        event.wait_with(self.id, |handle| {
            // SAFETY: both handles are live and belong to the bound device (checked above).
            unsafe { result::stream_wait_event(&self.device.rt.api, self.raw, handle) }
        })?;
        self.note("wait");
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        let result = self.sync_raw();
        if result.is_ok() {
            // This stream's waits have run: retired events it waited on may go.
            self.device.stream_drained(self.id);
        }
        result
    }

    fn query(&self) -> Result<bool> {
        self.device.bind()?;
        // SAFETY: `raw` is live and the device's context is bound.
        match unsafe { result::query_stream(&self.device.rt.api, self.raw) }? {
            Some(done) => Ok(done),
            None => {
                // Older CANN without aclrtStreamQuery: ask an event recorded now.
                let event = AclEvent::new(Arc::clone(&self.device))?;
                crate::Stream::record(self, &event)?;
                crate::Event::query(&event)
            }
        }
    }
}

impl Drop for AclStream {
    fn drop(&mut self) {
        // The documentation asks for a synchronised stream before destruction; the handle is
        // destroyed even if the work failed, and the failure is kept for the device.
        if let Err(e) = self.sync_raw() {
            self.device.defer(e);
        }
        // SAFETY: `raw` is live, synchronised, and destroyed only here.
        if let Err(e) = unsafe { result::destroy_stream(&self.device.rt.api, self.raw) } {
            self.device.defer(e);
        }
        // A destroyed stream has no queued waits left.
        self.device.stream_drained(self.id);
    }
}

impl fmt::Debug for AclStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclStream")
            .field("stream", &self.label())
            .finish()
    }
}
