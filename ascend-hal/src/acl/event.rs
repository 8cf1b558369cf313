//! ACL events, created with `ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE` so that one kind serves
//! cross-stream ordering and timing.
//!
//! Two rules of `acl_rt.h` shape this file:
//! - *Re-recording.* The trait promises that a `wait` waits for the record current at the call,
//!   whatever is recorded later. CANN documents re-recording only for the events of
//!   `aclrtCreateEventExWithFlag`; so an `AclEvent` recorded a second time takes a fresh ACL
//!   event for the new record, and the old one is retired as below.
//! - *Destruction.* "Waits must have finished before an event is destroyed." A stream's queued
//!   `aclrtStreamWaitEvent` may still refer to an event the host no longer needs, so an event
//!   any stream waited on is not destroyed at once: it goes to its device's list of retired
//!   events with the streams that waited on it, and is destroyed once each of them has
//!   synchronised (or been destroyed), or at the next device synchronisation (as torch_npu
//!   destroys its events lazily).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::AclBackend;
use super::device::DeviceInner;
use super::result;
use super::sys::AclrtEvent;
use crate::error::{Error, Result};
use crate::traits::StreamId;

/// The ACL event behind the current record.
pub(crate) struct RawEvent {
    pub(crate) handle: AclrtEvent,
    /// Whether it was recorded: a never-recorded event has defined answers (not complete;
    /// waits and synchronisation return at once) without asking ACL.
    recorded: bool,
    /// Streams that queued a wait on it.
    pub(crate) waiters: Vec<StreamId>,
}

/// An event of the ACL backend.
pub struct AclEvent {
    raw: Mutex<RawEvent>,
    pub(crate) device: Arc<DeviceInner>,
}

// SAFETY: the event handles are opaque runtime tokens usable from any thread whose current
// context is the event's device; every method binds that context first.
unsafe impl Send for AclEvent {}
// SAFETY: as for `Send`; the host-side state is behind a mutex.
unsafe impl Sync for AclEvent {}

impl AclEvent {
    pub(crate) fn new(device: Arc<DeviceInner>) -> Result<Self> {
        device.bind()?;
        let handle = result::create_event(&device.rt.api)?;
        Ok(AclEvent {
            raw: Mutex::new(RawEvent {
                handle,
                recorded: false,
                waiters: Vec::new(),
            }),
            device,
        })
    }

    fn lock(&self) -> MutexGuard<'_, RawEvent> {
        // Every update completes before anything that can panic; a poisoned lock is consistent.
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records on `stream`: `record` gets the handle to record (a fresh one if this event was
    /// recorded before; the old one is retired). The device's context is bound by the caller.
    pub(crate) fn record_with(&self, record: impl FnOnce(AclrtEvent) -> Result<()>) -> Result<()> {
        let mut raw = self.lock();
        if raw.recorded {
            let fresh = result::create_event(&self.device.rt.api)?;
            let old = std::mem::replace(
                &mut *raw,
                RawEvent {
                    handle: fresh,
                    recorded: false,
                    waiters: Vec::new(),
                },
            );
            self.device.retire_event(old);
        }
        record(raw.handle)?;
        raw.recorded = true;
        Ok(())
    }

    /// Makes `stream` wait for the current record (nothing if never recorded): `wait` gets the
    /// handle. The device's context is bound by the caller.
    pub(crate) fn wait_with(
        &self,
        stream: StreamId,
        wait: impl FnOnce(AclrtEvent) -> Result<()>,
    ) -> Result<()> {
        let mut raw = self.lock();
        if !raw.recorded {
            return Ok(());
        }
        wait(raw.handle)?;
        if !raw.waiters.contains(&stream) {
            raw.waiters.push(stream);
        }
        Ok(())
    }

    /// The current handle, if recorded.
    fn recorded_handle(&self) -> Option<AclrtEvent> {
        let raw = self.lock();
        raw.recorded.then_some(raw.handle)
    }

    pub(crate) fn is_recorded(&self) -> bool {
        self.lock().recorded
    }
}

impl crate::Event for AclEvent {
    type Backend = AclBackend;

    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }

    fn query(&self) -> Result<bool> {
        let Some(handle) = self.recorded_handle() else {
            return Ok(false);
        };
        self.device.bind()?;
        // SAFETY: the handle is live (retired handles are destroyed only after every waiter
        // synchronised, and never while this event still names them); the context is bound.
        unsafe { result::query_event(&self.device.rt.api, handle) }
    }

    fn synchronize(&self) -> Result<()> {
        let Some(handle) = self.recorded_handle() else {
            return Ok(());
        };
        self.device.bind()?;
        // SAFETY: as in `query`.
        unsafe { result::synchronize_event(&self.device.rt.api, handle) }
    }

    fn elapsed_ms(&self, end: &Self) -> Result<f32> {
        let mut handles = [std::ptr::null_mut(); 2];
        for (slot, e) in handles.iter_mut().zip([self, end]) {
            let Some(handle) = e.recorded_handle() else {
                return Err(Error::NotReady {
                    what: "elapsed time",
                    reason: "an event was never recorded; record both events on a stream first",
                });
            };
            if !crate::Event::query(e)? {
                return Err(Error::NotReady {
                    what: "elapsed time",
                    reason: "an event has not completed yet; synchronize the end event first",
                });
            }
            *slot = handle;
        }
        self.device.bind()?;
        // SAFETY: both handles are live, created with ACL_EVENT_TIME_LINE, recorded and
        // complete (checked above).
        unsafe { result::event_elapsed(&self.device.rt.api, handles[0], handles[1]) }
    }
}

impl Drop for AclEvent {
    fn drop(&mut self) {
        let raw = std::mem::replace(
            &mut *self.lock(),
            RawEvent {
                handle: std::ptr::null_mut(),
                recorded: false,
                waiters: Vec::new(),
            },
        );
        self.device.retire_event(raw);
    }
}

impl fmt::Debug for AclEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclEvent")
            .field("device", &self.device.ordinal)
            .field("recorded", &self.is_recorded())
            .finish()
    }
}
