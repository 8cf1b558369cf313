//! ACL events, created with `ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE` so that one kind serves
//! cross-stream ordering and timing.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::backend::AclBackend;
use super::device::DeviceInner;
use super::result;
use super::sys::AclrtEvent;
use crate::error::{Error, Result};

/// An event of the ACL backend.
pub struct AclEvent {
    pub(crate) raw: AclrtEvent,
    pub(crate) device: Arc<DeviceInner>,
    /// Whether the event was ever recorded: the trait gives a never-recorded event defined
    /// answers (not complete; waits and synchronisation return at once) without asking ACL.
    recorded: AtomicBool,
}

// SAFETY: the event handle is an opaque runtime token usable from any thread whose current
// context is the event's device; every method binds that context first.
unsafe impl Send for AclEvent {}
// SAFETY: as for `Send`; the only host-side state is an atomic flag.
unsafe impl Sync for AclEvent {}

impl AclEvent {
    pub(crate) fn new(device: Arc<DeviceInner>) -> Result<Self> {
        device.bind()?;
        let raw = result::create_event(&device.rt.api)?;
        Ok(AclEvent {
            raw,
            device,
            recorded: AtomicBool::new(false),
        })
    }

    pub(crate) fn mark_recorded(&self) {
        self.recorded.store(true, Ordering::Release);
    }

    pub(crate) fn is_recorded(&self) -> bool {
        self.recorded.load(Ordering::Acquire)
    }
}

impl crate::Event for AclEvent {
    type Backend = AclBackend;

    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }

    fn query(&self) -> Result<bool> {
        if !self.is_recorded() {
            return Ok(false);
        }
        self.device.bind()?;
        // SAFETY: `raw` is live until `Drop`; the device's context is bound.
        unsafe { result::query_event(&self.device.rt.api, self.raw) }
    }

    fn synchronize(&self) -> Result<()> {
        if !self.is_recorded() {
            return Ok(());
        }
        self.device.bind()?;
        // SAFETY: as in `query`.
        unsafe { result::synchronize_event(&self.device.rt.api, self.raw) }
    }

    fn elapsed_ms(&self, end: &Self) -> Result<f32> {
        for e in [self, end] {
            if !e.is_recorded() {
                return Err(Error::NotReady {
                    what: "elapsed time",
                    reason: "an event was never recorded; record both events on a stream first",
                });
            }
            if !crate::Event::query(e)? {
                return Err(Error::NotReady {
                    what: "elapsed time",
                    reason: "an event has not completed yet; synchronize the end event first",
                });
            }
        }
        self.device.bind()?;
        // SAFETY: both events are live, created with ACL_EVENT_TIME_LINE, recorded and complete
        // (checked above).
        unsafe { result::event_elapsed(&self.device.rt.api, self.raw, end.raw) }
    }
}

impl Drop for AclEvent {
    fn drop(&mut self) {
        let raw = self.raw;
        // SAFETY: `raw` is live and destroyed only here.
        self.device
            .release_in_drop(|api| unsafe { result::destroy_event(api, raw) });
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
